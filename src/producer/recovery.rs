//! What the topic already holds beyond the saved state: read at every (re)start of the
//! producer, partition by partition, from the offsets in the state file to the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
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
    let (consumer, partitions) = open_reader(cfg, offsets)?;
    let mut tail = Tail::default();
    let mut ours = Ours {
        topic: &cfg.topic,
        source: source.as_bytes(),
        epoch: epoch.as_bytes(),
        saved_seq,
        foreign: None,
        foreign_count: 0,
    };
    let mut settle = Settle { at_end: BTreeSet::new(), last_event: Instant::now(), first_end: None };
    loop {
        if settle.at_end.len() == partitions.len() {
            settle.first_end.get_or_insert_with(Instant::now);
        }
        if settle.first_end.is_some_and(|t| t.elapsed() >= SETTLE_MAX) {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(50)) else {
            if settle.at_end.len() == partitions.len() && settle.last_event.elapsed() >= SETTLE {
                break;
            }
            if settle.last_event.elapsed() > STALL_TIMEOUT {
                return Err(Error::Kafka(format!(
                    "{}: no data from {} for {STALL_TIMEOUT:?}",
                    cfg.brokers, cfg.topic
                )));
            }
            continue;
        };
        settle.last_event = Instant::now();
        let msg = match result {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                settle.at_end.insert(p);
                continue;
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)) => continue,
            Err(e) => return Err(kafka_error(cfg, &format!("cannot read {}", cfg.topic), e)),
        };
        settle.at_end.remove(&msg.partition());
        let end = tail.ends.entry(msg.partition()).or_insert(0);
        *end = (*end).max(msg.offset() + 1);
        tail.messages += 1;
        ours.take(&mut tail, &msg);
    }
    ours.warn_of_foreign();
    tail.partitions = partitions;
    Ok(tail)
}

fn kafka_error(cfg: &KafkaConfig, what: &str, e: KafkaError) -> Error {
    Error::Kafka(format!("{}: {what}: {e}", cfg.brokers))
}

/// A reader assigned to every partition of the topic from `offsets` (the whole partition where
/// unknown), and the partitions.
fn open_reader(cfg: &KafkaConfig, offsets: Option<&BTreeMap<i32, i64>>) -> Result<(BaseConsumer, Vec<i32>)> {
    let consumer: BaseConsumer = kafka::Client::Reader
        .config(cfg)
        .create()
        .map_err(|e| kafka_error(cfg, "cannot create a reader", e))?;
    let md = consumer
        .fetch_metadata(Some(&cfg.topic), REQUEST_TIMEOUT)
        .map_err(|e| kafka_error(cfg, "broker unreachable", e))?;
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
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let start = match offsets {
            None => Offset::Beginning,
            Some(m) => m.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o)),
        };
        tpl.add_partition_offset(&cfg.topic, *p, start).map_err(|e| kafka_error(cfg, "cannot assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_error(cfg, "cannot assign", e))?;
    Ok((consumer, partitions))
}

/// When the topic counts as read: see [`SETTLE`] and [`SETTLE_MAX`].
struct Settle {
    /// Partitions whose end was reported and that have had no message since.
    at_end: BTreeSet<i32>,
    /// The last poll that returned anything.
    last_event: Instant,
    /// When every partition was first at its end.
    first_end: Option<Instant>,
}

/// Picks this producer's messages out of the tail.
struct Ours<'a> {
    topic: &'a str,
    source: &'a [u8],
    epoch: &'a [u8],
    saved_seq: u64,
    /// Messages of our source numbered too far beyond the saved seq: the first one, and how many.
    foreign: Option<(i32, i64, u64)>,
    foreign_count: u64,
}

impl Ours<'_> {
    /// Adds `msg` to `tail` if this producer wrote it.
    fn take(&mut self, tail: &mut Tail, msg: &BorrowedMessage<'_>) {
        let Some(headers) = msg.headers() else { return };
        let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
        if header(SOURCE_HEADER) != Some(self.source) {
            return;
        }
        if let Some(seq) =
            header(SEQ_HEADER).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse::<u64>().ok())
        {
            if seq.saturating_sub(self.saved_seq) < REPLAY_WINDOW {
                tail.max_seq = tail.max_seq.max(seq);
            } else {
                self.foreign.get_or_insert((msg.partition(), msg.offset(), seq));
                self.foreign_count += 1;
            }
        }
        // Messages without an epoch come from producers before epochs existed.
        let other_epoch = header(EPOCH_HEADER).is_some_and(|e| e != self.epoch);
        tail.earlier += u64::from(other_epoch);
        let meta = match ChangeMeta::from_headers(headers.iter().map(|h| (h.key, h.value))) {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(
                    "{}/{} offset {}: a message of ours with {e}; ignored",
                    self.topic,
                    msg.partition(),
                    msg.offset()
                );
                return;
            }
        };
        if other_epoch && meta.op == Op::Read {
            // A snapshot read of another producer state (a lost slot's capture, before its state
            // file was removed) holds the order as it was at that snapshot: taking it for this
            // state's read would skip the order as it is now. A change from the log or a polled
            // order is the same message whichever state numbered it (its key is its position).
            return;
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
                    self.topic,
                    msg.partition(),
                    msg.offset()
                ),
            },
        }
    }

    /// One warning for the messages numbered by another producer state, if any.
    fn warn_of_foreign(&self) {
        if let Some((p, offset, seq)) = self.foreign {
            tracing::warn!(
                "{}/{p} offset {offset}: a message with our source and seq {seq}, 2^32 or more beyond the \
                 saved {}, was not numbered by this producer state (a copied header, or a lost \
                 state's numbering); numbering goes on without it ({} such message(s) in the \
                 topic's tail)",
                self.topic,
                self.saved_seq,
                self.foreign_count
            );
        }
    }
}
