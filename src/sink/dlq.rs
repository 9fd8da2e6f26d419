//! The dead-letter topic (`kafka.dlq_topic`): every rejected message is copied there with its
//! original key, value and headers, plus
//!
//! * `orderstream.reject.reason`: the [`RejectReason`](crate::order::RejectReason) label,
//! * `orderstream.reject.detail`: what exactly was wrong, one line,
//! * `orderstream.source.topic`, `orderstream.source.partition`, `orderstream.source.offset`:
//!   where the message was read.
//!
//! The lineage headers (`orderstream.source`, `.epoch`, `.seq`) are copied under the names
//! `orderstream.original.source`, `.epoch`, `.seq` ([`original_name`]). Someone who fixes a
//! dead letter and publishes it again, headers and all, publishes a new message: under the
//! original names the replay filter would drop it as a replay of the reject (whose seq it
//! carries), or, with a made-up seq, it would be compared with the producer's numbering. The
//! change headers (op, LSN, index, commit time) keep their names: a fixed update lands as that
//! update.
//!
//! The producer is idempotent, and a batch commits only after every dead letter of it is
//! acknowledged, so a reject is never lost. Delivery is at least once: a crash (or a failed
//! lake write) between the acknowledgement and the batch's commit sends the batch's rejects
//! again when it is re-read; the source topic/partition/offset headers identify such repeats.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka;
use crate::order::Reject;
use crate::wire::original_name;

pub use crate::wire::{
    DETAIL_HEADER, REASON_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER,
};

/// How long a batch waits for its dead letters to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts failed deliveries, so the batch that sent them does not commit, and keeps the dead
/// letters the broker refused for good, to be quarantined instead.
#[derive(Default)]
struct DeliveryTracker {
    failures: AtomicU64,
    first_error: Mutex<Option<(String, bool)>>,
    refused: Mutex<Vec<Quarantined>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let Err((e, letter)) = result else { return };
        if let Some(code) = e.rdkafka_error_code()
            && refused_for_good(code)
            && let Some(q) = Quarantined::refused(letter, &e.to_string())
            && let Ok(mut refused) = self.refused.lock()
        {
            refused.push(q);
            return;
        }
        self.failures.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut first) = self.first_error.lock() {
            let missing = matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
            );
            first.get_or_insert_with(|| (e.to_string(), missing));
        }
    }
}

/// Broker answers that sending the same dead letter again cannot change: it is too large for
/// the broker or the topic, invalid, or the topic is not writable for this principal. Anything
/// else (timeouts, leader changes, a missing topic, which is created again) is retried.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::UnsupportedForMessageFormat
    )
}

/// The dead-letter producer.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryTracker>,
    topic: String,
    cfg: KafkaConfig,
}

/// What became of one dead letter handed to [`DeadLetters::send`].
#[derive(Debug)]
pub enum DeadLetter {
    /// Queued; the batch's flush waits for its acknowledgement.
    Queued,
    /// It can never be sent (why): the reject is quarantined instead.
    Undeliverable(String),
}

impl DeadLetters {
    /// Connects the idempotent producer of `kafka.dlq_topic`, creating the topic if missing
    /// (with `kafka.partitions`), so that a reject always has somewhere to go.
    pub fn new(cfg: &KafkaConfig) -> Result<DeadLetters> {
        let topic = cfg.dlq_topic.clone();
        let outcome = block_on(kafka::ensure_topic(cfg, &topic, cfg.partitions))??;
        if let kafka::TopicOutcome::Created(n) = outcome {
            tracing::info!("dead-letter topic {topic} created with {n} partitions");
        }
        let producer = kafka::Client::DeadLetters
            .config(cfg)
            .create_with_context(DeliveryTracker::default())
            .map_err(|e| Error::Kafka(format!("cannot create the dead-letter producer for {topic}: {e}")))?;
        Ok(DeadLetters { producer, topic, cfg: cfg.clone() })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The cluster id the broker reports (`None` if it reports none, or does not answer in 5 s).
    pub fn cluster_id(&self) -> Option<String> {
        self.producer.client().fetch_cluster_id(Duration::from_secs(5))
    }

    /// Queues a copy of `msg` (its lineage headers renamed) with the reject headers; waits
    /// while the local queue is full. [`DeadLetter::Undeliverable`]: the dead letter can never be sent
    /// (larger than the producer's `message.max.bytes`, or refused as invalid), so retrying the
    /// batch would fail again; the caller quarantines the reject instead.
    pub fn send(&self, msg: &BorrowedMessage<'_>, reject: &Reject) -> Result<DeadLetter> {
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers().map_or(0, |h| h.count()) + 5);
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                let key = original_name(h.key).unwrap_or(h.key);
                headers = headers.insert(Header { key, value: h.value });
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        for (key, value) in [
            (REASON_HEADER, reject.reason.as_str()),
            (DETAIL_HEADER, reject.detail.as_str()),
            (SOURCE_TOPIC_HEADER, msg.topic()),
            (SOURCE_PARTITION_HEADER, partition.as_str()),
            (SOURCE_OFFSET_HEADER, offset.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(value) = msg.payload() {
            record = record.payload(value);
        }
        let start = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(DeadLetter::Queued),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if start.elapsed() < FLUSH_TIMEOUT =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((
                    e @ KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidArgument,
                    ),
                    _,
                )) => return Ok(DeadLetter::Undeliverable(e.to_string())),
                Err((e, _)) => {
                    return Err(Error::Kafka(format!(
                        "cannot queue the dead letter of {}/{} offset {} for {}: {e}",
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        self.topic
                    )));
                }
            }
        }
    }

    /// Waits until every queued dead letter is acknowledged. An error if one failed in a way
    /// a retry can fix (the batch is then read again); a topic found missing is created again
    /// first. The dead letters the broker refused for good come back, to be quarantined.
    pub fn flush(&self) -> Result<Vec<Quarantined>> {
        let ctx = self.producer.context();
        let flushed = self.producer.flush(FLUSH_TIMEOUT);
        let refused = ctx.refused.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let failed = ctx.failures.swap(0, Ordering::SeqCst);
        let first = ctx.first_error.lock().ok().and_then(|mut f| f.take());
        flushed.map_err(|e| Error::Kafka(format!("dead letters to {} not acknowledged: {e}", self.topic)))?;
        if failed > 0 {
            let (first, missing) = first.unwrap_or_default();
            if missing {
                match block_on(kafka::ensure_topic(&self.cfg, &self.topic, self.cfg.partitions)) {
                    Ok(Ok(kafka::TopicOutcome::Created(n))) => tracing::warn!(
                        "the dead-letter topic {} was missing (deleted while the consumer ran?): created it again \
                         with {n} partitions",
                        self.topic
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) | Err(e) => tracing::warn!("{e}"),
                }
            }
            return Err(Error::Kafka(format!("dead letters to {} failed: {first}", self.topic)));
        }
        Ok(refused)
    }
}

/// Runs a future of the Kafka admin API from this blocking thread.
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
            .map_err(|e| Error::Internal(format!("cannot start a runtime for the Kafka admin client: {e}"))),
    }
}

/// A reject whose dead letter can never be sent, kept in the batch until its commit.
pub struct Quarantined {
    topic: String,
    partition: i32,
    offset: i64,
    text: String,
}

impl Quarantined {
    /// Everything the dead letter would have carried, as one JSON document: where the message
    /// was read, the reject, why the dead letter failed, the key, value and headers (text
    /// when they are UTF-8, else hexadecimal under `*_hex`).
    pub fn new(msg: &BorrowedMessage<'_>, reject: &Reject, failure: &str) -> Quarantined {
        let source = (msg.topic().to_string(), msg.partition(), msg.offset());
        Quarantined::document(source, reject.reason.as_str(), &reject.detail, failure, msg)
    }

    /// A dead letter the broker refused for good (`letter`, as sent: the original key, value
    /// and headers, lineage renamed, plus the reject and source headers); `None` if it lacks
    /// the source headers, which every dead letter of ours carries.
    fn refused(letter: &BorrowedMessage<'_>, failure: &str) -> Option<Quarantined> {
        let header = |name: &str| -> Option<String> {
            let h = letter.headers()?.iter().find(|h| h.key == name)?;
            Some(String::from_utf8_lossy(h.value?).into_owned())
        };
        let source = (
            header(SOURCE_TOPIC_HEADER)?,
            header(SOURCE_PARTITION_HEADER)?.parse().ok()?,
            header(SOURCE_OFFSET_HEADER)?.parse().ok()?,
        );
        let (reason, detail) =
            (header(REASON_HEADER).unwrap_or_default(), header(DETAIL_HEADER).unwrap_or_default());
        Some(Quarantined::document(source, &reason, &detail, failure, letter))
    }

    fn document(
        (topic, partition, offset): (String, i32, i64),
        reason: &str,
        detail: &str,
        failure: &str,
        msg: &BorrowedMessage<'_>,
    ) -> Quarantined {
        fn bytes(doc: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: Option<&[u8]>) {
            let v = match b.map(std::str::from_utf8) {
                None => serde_json::Value::Null,
                Some(Ok(t)) => t.into(),
                Some(Err(_)) => {
                    let hex: String = b.unwrap_or_default().iter().map(|x| format!("{x:02x}")).collect();
                    doc.insert(format!("{name}_hex"), hex.into());
                    return;
                }
            };
            doc.insert(name.to_string(), v);
        }
        let mut doc = serde_json::Map::new();
        doc.insert("topic".into(), topic.clone().into());
        doc.insert("partition".into(), partition.into());
        doc.insert("offset".into(), offset.into());
        doc.insert("reason".into(), reason.into());
        doc.insert("detail".into(), detail.into());
        doc.insert("dead_letter_error".into(), failure.into());
        bytes(&mut doc, "key", msg.key());
        bytes(&mut doc, "value", msg.payload());
        let headers: Vec<serde_json::Value> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        serde_json::json!([h.key, h.value.map(|v| String::from_utf8_lossy(v).into_owned())])
                    })
                    .collect()
            })
            .unwrap_or_default();
        doc.insert("headers".into(), headers.into());
        Quarantined { topic, partition, offset, text: serde_json::Value::Object(doc).to_string() }
    }

    /// Writes it durably to `<checkpoint>/quarantine/<topic>-<partition>-<offset>.json`. The
    /// name is the message's position: a batch read again after a crash writes the same file
    /// again, so each reject is there once.
    pub fn write(&self, checkpoint: &Path) -> Result<PathBuf> {
        let dir = checkpoint.join("quarantine");
        std::fs::create_dir_all(&dir)
            .map_err(|e| crate::durable::io_error("cannot create directory", &dir, e))?;
        let name = format!("{}-{}-{}.json", self.topic, self.partition, self.offset);
        let path = dir.join(&name);
        crate::durable::write_atomic(&path, &dir.join(format!("{name}.tmp")), self.text.as_bytes())?;
        Ok(path)
    }
}
