//! Publishing one batch: send every message, then wait until the broker acknowledged all of
//! them, keeping the highest offset per partition for the state file.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka;
use crate::retry::Throttle;
use crate::shutdown::Shutdown;
use crate::wire::{
    CHANGE_INDEX_HEADER, COMMIT_TS_HEADER, ChangeMeta, DETAIL_HEADER, EPOCH_HEADER, LSN_HEADER, Lsn,
    OP_HEADER, REASON_HEADER, SEQ_HEADER, SIZE_HEADER, SOURCE_HEADER, TOMBSTONE_HEADER, format_commit_ts,
    original_name,
};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// Room left in a message for its headers and librdkafka's framing.
const MESSAGE_OVERHEAD: usize = 2_048;

/// How long a stop request waits for outstanding acknowledgements before abandoning the batch.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Acknowledgements of the batch in flight.
#[derive(Default)]
struct Acks {
    outstanding: usize,
    error: Option<String>,
    /// Per partition, the offset after the highest acknowledged message.
    ends: BTreeMap<i32, i64>,
}

/// The producer's librdkafka callbacks.
pub struct Context {
    acks: Mutex<Acks>,
    /// The orders topic: only its acknowledgements move the saved offsets.
    topic: String,
    done: Notify,
    brokers: String,
    /// librdkafka reports every failed reconnect; we report them at growing intervals.
    errors: Mutex<Throttle>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(?level, fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries by itself; one line per growing interval (1 s doubling to 60 s),
        // not one per reconnect attempt.
        let Ok(mut r) = self.errors.lock() else { return };
        let Some((held_back, _)) = r.pass() else { return };
        let more = match held_back {
            0 => String::new(),
            n => format!(" ({n} similar reports since the last line)"),
        };
        tracing::warn!("Kafka {}: {error}: {reason}{more}; librdkafka keeps retrying", self.brokers);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let Ok(mut acks) = self.acks.lock() else { return };
        acks.outstanding = acks.outstanding.saturating_sub(1);
        match result {
            Ok(m) => {
                if m.topic() == self.topic {
                    let end = acks.ends.entry(m.partition()).or_insert(0);
                    *end = (*end).max(m.offset() + 1);
                }
                // The broker answers again: the next error is news.
                if let Ok(mut r) = self.errors.try_lock() {
                    r.reset();
                }
            }
            Err((e, m)) => {
                if acks.error.is_none() {
                    acks.error = Some(format!("{}/{}: {e}", m.topic(), m.partition()));
                }
            }
        }
        if acks.outstanding == 0 {
            self.done.notify_waiters();
        }
    }
}

/// An idempotent producer on the orders topic.
pub struct Publisher {
    producer: ThreadedProducer<Context>,
    topic: String,
    dlq_topic: String,
    /// `message.max.bytes`: librdkafka refuses a larger message at once.
    max_message: usize,
    source: String,
    epoch: String,
    /// The LSN and commit time headers of the last transaction, formatted once per transaction
    /// (every change carries both; chrono's formatting is the dearer part).
    txn_headers: Mutex<Option<(Lsn, String, String)>>,
    /// A send waiting for room in a full queue gives up on a stop.
    shutdown: Shutdown,
}

/// What [`Publisher::finish`] saw of a batch.
#[derive(Debug)]
pub enum Acked {
    /// Every message acknowledged: per partition, the offset after the highest one.
    Ends(BTreeMap<i32, i64>),
    /// A stop came and the broker did not acknowledge in time: the batch is not saved.
    Abandoned,
}

impl Publisher {
    /// Creates the producer; `source` and `epoch` are written in every message's
    /// [`SOURCE_HEADER`] and [`EPOCH_HEADER`];
    /// a send waiting for room in a full queue gives up once `shutdown` triggers.
    pub fn new(cfg: &KafkaConfig, source: &str, epoch: &str, shutdown: &Shutdown) -> Result<Publisher> {
        let context = Context {
            acks: Mutex::new(Acks::default()),
            topic: cfg.topic.clone(),
            done: Notify::new(),
            brokers: cfg.brokers.clone(),
            errors: Mutex::new(Throttle::new(Duration::from_secs(1), Duration::from_secs(60))),
        };
        let producer: ThreadedProducer<Context> = kafka::Client::Producer
            .config(cfg)
            .create_with_context(context)
            .map_err(|e| Error::Kafka(format!("cannot create producer for {}: {e}", cfg.brokers)))?;
        let max_message = cfg
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE);
        Ok(Publisher {
            producer,
            topic: cfg.topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            max_message,
            source: source.to_string(),
            epoch: epoch.to_string(),
            txn_headers: Mutex::new(None),
            shutdown: shutdown.clone(),
        })
    }

    /// The cluster id the broker reports (`None` if it reports none, or does not answer in 5 s).
    pub fn cluster_id(&self) -> Option<String> {
        self.producer.client().fetch_cluster_id(Duration::from_secs(5))
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        match self.producer.context().acks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts a new batch (forgets the previous batch's offsets).
    pub fn begin(&self) {
        let mut acks = self.acks();
        acks.ends.clear();
        acks.error = None;
    }

    /// Queues one message (`value` `None`: a tombstone) with the change's headers; waits while
    /// librdkafka's queue is full.
    pub async fn send(&self, key: &[u8], value: Option<&[u8]>, seq: u64, meta: &ChangeMeta) -> Result<()> {
        self.send_to(None, key, value, seq, meta).await
    }

    /// As [`Publisher::send`], to `partition` (`None`: the partition of the key).
    pub async fn send_to(
        &self,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
        seq: u64,
        meta: &ChangeMeta,
    ) -> Result<()> {
        let seq = seq.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header { key: SOURCE_HEADER, value: Some(self.source.as_bytes()) })
            .insert(Header { key: EPOCH_HEADER, value: Some(self.epoch.as_bytes()) })
            .insert(Header { key: SEQ_HEADER, value: Some(seq.as_bytes()) })
            .insert(Header { key: OP_HEADER, value: Some(meta.op.as_str()) });
        if let (Some(lsn), Some(ts)) = (meta.lsn, &meta.commit_ts) {
            let mut cache = match self.txn_headers.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if cache.as_ref().is_none_or(|c| c.0 != lsn) {
                *cache = Some((lsn, lsn.to_string(), format_commit_ts(ts)));
            }
            if let Some((_, lsn_text, ts_text)) = cache.as_ref() {
                headers = headers
                    .insert(Header { key: LSN_HEADER, value: Some(lsn_text) })
                    .insert(Header { key: COMMIT_TS_HEADER, value: Some(ts_text) });
            }
        }
        if let Some(i) = meta.change_index {
            headers = headers.insert(Header { key: CHANGE_INDEX_HEADER, value: Some(&i.to_string()) });
        }
        if meta.tombstone {
            headers = headers.insert(Header { key: TOMBSTONE_HEADER, value: Some("1") });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).key(key).headers(headers);
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.queue(record).await
    }

    /// Whether a message with this key and value would exceed `message.max.bytes`.
    pub fn too_large(&self, key: &[u8], value: &[u8]) -> Option<usize> {
        let size = key.len() + value.len();
        (size + MESSAGE_OVERHEAD > self.max_message).then_some(self.max_message)
    }

    /// Queues a dead letter for a change that cannot be published: to the dead-letter topic,
    /// with the change's key, `reason` and `detail` (the consumer's reject headers), the size
    /// of the message it would have been (`orderstream.reject.size`), the change's headers
    /// (its lineage under the `orderstream.original.*` names) and as much of `value` as fits.
    /// Acknowledged with the batch, like its messages.
    pub async fn dead_letter(
        &self,
        key: &[u8],
        value: &[u8],
        reason: &str,
        detail: &str,
        meta: &ChangeMeta,
    ) -> Result<()> {
        let size = (key.len() + value.len()).to_string();
        let mut cut =
            self.max_message.saturating_sub(MESSAGE_OVERHEAD + key.len() + detail.len()).min(value.len());
        // A cut inside a UTF-8 sequence would leave invalid text: back up to a boundary.
        while cut > 0 && cut < value.len() && (value[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        let original_source = original_name(SOURCE_HEADER).unwrap_or(SOURCE_HEADER);
        let original_epoch = original_name(EPOCH_HEADER).unwrap_or(EPOCH_HEADER);
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header { key: REASON_HEADER, value: Some(reason) })
            .insert(Header { key: DETAIL_HEADER, value: Some(detail) })
            .insert(Header { key: SIZE_HEADER, value: Some(&size) })
            .insert(Header { key: original_source, value: Some(self.source.as_bytes()) })
            .insert(Header { key: original_epoch, value: Some(self.epoch.as_bytes()) })
            .insert(Header { key: OP_HEADER, value: Some(meta.op.as_str()) });
        let lsn = meta.lsn.map(|l| l.to_string());
        if let Some(lsn) = &lsn {
            headers = headers.insert(Header { key: LSN_HEADER, value: Some(lsn) });
        }
        if let Some(ts) = &meta.commit_ts {
            headers = headers.insert(Header { key: COMMIT_TS_HEADER, value: Some(&format_commit_ts(ts)) });
        }
        if let Some(i) = meta.change_index {
            headers = headers.insert(Header { key: CHANGE_INDEX_HEADER, value: Some(&i.to_string()) });
        }
        let record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.dlq_topic).key(key).headers(headers).payload(&value[..cut]);
        self.queue(record).await
    }

    /// Queues `record`, counted as outstanding until acknowledged; waits while librdkafka's
    /// queue is full.
    async fn queue(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
        let topic = record.topic.to_string();
        self.acks().outstanding += 1;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if self.shutdown.is_triggered() =>
                {
                    // A broker that stopped answering keeps the queue full: the batch is given up.
                    self.acks().outstanding -= 1;
                    self.shutdown.abandon();
                    return Err(Error::Kafka(format!(
                        "stop requested while librdkafka's queue for {topic} is full: the batch is abandoned and \
                         recovered at the next start"
                    )));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    self.acks().outstanding -= 1;
                    return Err(Error::Kafka(format!("cannot queue a message for {topic}: {e}")));
                }
            }
        }
    }

    /// Waits until every queued message is acknowledged and returns, per partition, the offset
    /// after the highest one. On a stop request it waits a few seconds more, then gives up
    /// ([`Acked::Abandoned`]): the batch is not saved, and is recovered at the next start.
    pub async fn finish(&self, shutdown: &Shutdown) -> Result<Acked> {
        let started = Instant::now();
        let mut next_report = Duration::from_secs(2);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let notified = self.producer.context().done.notified();
            {
                let acks = self.acks();
                if let Some(e) = &acks.error {
                    return Err(Error::Kafka(format!("delivery to {} failed: {e}", self.topic)));
                }
                if acks.outstanding == 0 {
                    return Ok(Acked::Ends(acks.ends.clone()));
                }
            }
            if shutdown.is_triggered() {
                let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "stopping with {} messages unacknowledged: the batch is not saved and will be recovered at the next start",
                        self.acks().outstanding
                    );
                    shutdown.abandon();
                    return Ok(Acked::Abandoned);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if started.elapsed() >= next_report {
                tracing::warn!(
                    "waiting for the broker to acknowledge {} messages of the batch ({:.0} s so far)",
                    self.acks().outstanding,
                    started.elapsed().as_secs_f64()
                );
                next_report = (next_report * 2).min(next_report + Duration::from_secs(30));
            }
        }
    }
}
