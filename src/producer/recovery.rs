//! What the topic already holds beyond the saved state: read at every (re)start of the
//! producer, partition by partition, from the offsets in the state file to the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::{self, REQUEST_TIMEOUT};
use crate::order::{Order, parse_position};
use crate::source::{SEQ_HEADER, SOURCE_HEADER};
use crate::wire::EPOCH_HEADER;
use crate::wire::{ChangeMeta, Lsn, Op, REPLAY_WINDOW};

/// Give up reading when the broker returns nothing for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The topic counts as read once every partition reported its end and nothing came for this
/// long: long enough for the requests of a dead producer that the broker may still append.
const SETTLE: Duration = Duration::from_millis(300);
/// While messages keep coming (another writer), reading stops this long after every partition
/// first reported its end, with what it read by then.
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Messages of this producer found after the saved offsets: published, but not yet recorded in
/// the state file.
#[derive(Debug, Default)]
pub struct Tail {
    /// The messages found: their change headers and order (text fields dropped: only the
    /// position matters; `None` for a tombstone).
    pub found: Vec<(ChangeMeta, Option<Order<'static>>)>,
    /// The highest sequence number found (of those within reach of the saved one).
    pub max_seq: u64,
    /// Per partition, the offset after the last message read (absent when none was read).
    pub ends: BTreeMap<i32, i64>,
    /// Messages read.
    pub messages: u64,
    /// The truncates found, each as `(commit LSN, index, partition)`: a truncate is one message
    /// per partition, and a crash may have left it on some of them only.
    pub truncates: Vec<(Lsn, i32, i32)>,
    /// The topic's partitions.
    pub partitions: Vec<i32>,
    /// Messages of our source numbered by another producer state (an earlier capture whose
    /// state was removed); its snapshot reads are never taken for this state's.
    pub earlier: u64,
}

/// Reads every partition of the topic from `offsets` (the whole partition where unknown) to its
/// end and collects the messages `source` wrote (snapshot reads only under `epoch`; those of
/// other epochs are counted). `saved_seq` is the state file's: a sequence
/// number [`REPLAY_WINDOW`] or more beyond it cannot be one this producer used since (it
/// re-sends at most a few batches before saving), so it is not continued from: a copied header
/// with a made-up seq (`18446744073709551615`) would otherwise make every later number wrap
/// or repeat. One reader for the whole wait: creating and closing one costs ~0.1 s each.
/// Blocking.
pub fn read_tail(
    cfg: &KafkaConfig,
    source: &str,
    epoch: &str,
    saved_seq: u64,
    offsets: Option<&BTreeMap<i32, i64>>,
) -> Result<Tail> {
    let kafka_err = |what: &str, e: KafkaError| Error::Kafka(format!("{}: {what}: {e}", cfg.brokers));
    let consumer: BaseConsumer =
        kafka::Client::Reader.config(cfg).create().map_err(|e| kafka_err("cannot create a reader", e))?;
    let md = consumer
        .fetch_metadata(Some(&cfg.topic), REQUEST_TIMEOUT)
        .map_err(|e| kafka_err("broker unreachable", e))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == cfg.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::Setup(format!(
            "Kafka: topic {} does not exist (run `orderstream init`)",
            cfg.topic
        )));
    }

    // Read to the end as the broker serves it, not to the high watermark it reports: tansu
    // 0.6 was seen reporting a high watermark below the last message after a producer retry.
    let mut tail = Tail::default();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let start = match offsets {
            None => Offset::Beginning,
            Some(m) => m.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o)),
        };
        tpl.add_partition_offset(&cfg.topic, *p, start).map_err(|e| kafka_err("cannot assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_err("cannot assign", e))?;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut last_event = Instant::now();
    let mut first_end: Option<Instant> = None;
    // Messages of our source numbered too far beyond the saved seq: the first one, and how many.
    let mut foreign: Option<(i32, i64, u64)> = None;
    let mut foreign_count = 0u64;
    loop {
        if at_end.len() == partitions.len() {
            first_end.get_or_insert_with(Instant::now);
        }
        if first_end.is_some_and(|t| t.elapsed() >= SETTLE_MAX) {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(50)) else {
            if at_end.len() == partitions.len() && last_event.elapsed() >= SETTLE {
                break;
            }
            if last_event.elapsed() > STALL_TIMEOUT {
                return Err(Error::Kafka(format!(
                    "{}: no data from {} for {STALL_TIMEOUT:?}",
                    cfg.brokers, cfg.topic
                )));
            }
            continue;
        };
        last_event = Instant::now();
        let msg = match result {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                continue;
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)) => continue,
            Err(e) => return Err(kafka_err(&format!("cannot read {}", cfg.topic), e)),
        };
        at_end.remove(&msg.partition());
        let end = tail.ends.entry(msg.partition()).or_insert(0);
        *end = (*end).max(msg.offset() + 1);
        tail.messages += 1;
        let Some(headers) = msg.headers() else { continue };
        let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        if header(SOURCE_HEADER) != Some(source.as_bytes()) {
            continue;
        }
        if let Some(seq) =
            header(SEQ_HEADER).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse::<u64>().ok())
        {
            if seq.saturating_sub(saved_seq) < REPLAY_WINDOW {
                tail.max_seq = tail.max_seq.max(seq);
            } else {
                foreign.get_or_insert((msg.partition(), msg.offset(), seq));
                foreign_count += 1;
            }
        }
        // Messages without an epoch come from producers before epochs existed.
        let other_epoch = header(EPOCH_HEADER).is_some_and(|e| e != epoch.as_bytes());
        tail.earlier += u64::from(other_epoch);
        let meta = match ChangeMeta::from_headers(headers.iter().map(|h| (h.key, h.value))) {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(
                    "{}/{} offset {}: a message of ours with {e}; ignored",
                    cfg.topic,
                    msg.partition(),
                    msg.offset()
                );
                continue;
            }
        };
        if other_epoch && meta.op == Op::Read {
            // A snapshot read of another producer state (a lost slot's capture, before its state
            // file was removed) holds the order as it was at that snapshot: taking it for this
            // state's read would skip the order as it is now. A change from the log or a polled
            // order is the same message whichever state numbered it (its key is its position).
            continue;
        }
        match msg.payload() {
            None if meta.tombstone => tail.found.push((meta, None)),
            _ if meta.op == Op::Truncate => {
                if let (Some(lsn), Some(i)) = (meta.lsn, meta.change_index) {
                    tail.truncates.push((lsn, i, msg.partition()));
                }
                tail.found.push((meta, None));
            }
            payload => match payload.and_then(parse_position) {
                Some(position) => tail.found.push((meta, Some(position))),
                None => tracing::warn!(
                    "{}/{} offset {}: a message of ours that is not an order; ignored",
                    cfg.topic,
                    msg.partition(),
                    msg.offset()
                ),
            },
        }
    }
    if let Some((p, offset, seq)) = foreign {
        tracing::warn!(
            "{}/{p} offset {offset}: a message with our source and seq {seq}, 2^32 or more beyond the \
             saved {saved_seq}, was not numbered by this producer state (a copied header, or a lost \
             state's numbering); numbering goes on without it ({foreign_count} such message(s) in the \
             topic's tail)",
            cfg.topic
        );
    }
    tail.partitions = partitions;
    Ok(tail)
}
