//! The consumer's state machine: the partitions this process owns (locks and committed
//! states), the in-flight batch, and the steps that commit, abandon, acquire and release.
//! The Kafka loop ([`super::consume`]) and the rebalance callback ([`super::group`]) drive it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use uuid::Uuid;

use super::batch::{MAX_DATES, Rows};
use super::checkpoint::{Checkpoint, Locking, Manifest, ManifestFile, PartitionLock, PartitionState};
use super::delta::DeltaLake;
use super::dlq::{DeadLetter, DeadLetters, Quarantined};
use super::parquet;
use super::replay::{self, Notes};
use super::scratch::{self, Scratch};
use crate::durable::{io_error, sync_dir};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ReasonLabel};
use crate::order::{Change, Order};
use crate::wire::{Lineage, Op};

pub use crate::wire::{SEQ_HEADER, SOURCE_HEADER};

mod commit;
mod ownership;

/// What [`Engine::acquire`] got for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The partition is ours: read from here.
    From(Offset),
    /// Another live process still holds its lock: tried again later.
    Waiting,
}

/// The empty marker file at the lake root, refreshed after each committed batch.
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// How often the locks of partitions another live process holds are tried.
const LOCK_RETRY: Duration = Duration::from_millis(200);
/// How often a partition still waiting for its lock says so.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// How long a seek back to the checkpoint may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `streaming.batch_interval`, counted from the batch's first message.
    pub interval: Duration,
    /// `streaming.max_batch_rows`: valid rows (and, separately, dead letters) per batch.
    pub max_rows: usize,
    /// `--from-beginning`: a partition without a usable checkpoint is read from its start.
    pub from_beginning: bool,
}

/// A partition this process owns.
struct Owned {
    /// The partition's lock in the checkpoint (a Parquet lake); a Delta table needs none.
    _lock: Option<PartitionLock>,
    /// What the checkpoint holds.
    committed: PartitionState,
    /// Whether anything was ever committed (else reading starts at the beginning).
    stored: bool,
    /// The offset the next message must have at least (older ones were seen already).
    position: i64,
    /// The partition's state including the in-flight batch.
    working: Option<PartitionState>,
    /// The checkpoint offset reading resumed at, until the first message arrives.
    resumed_at: Option<i64>,
}

/// A partition assigned while another live process holds its lock.
struct Waiting {
    /// Since when.
    since: Instant,
    /// When the next "still waiting" line is due.
    next_log: Instant,
}

impl Owned {
    /// Where reading this partition goes on: after the messages already handled.
    fn offset(&self) -> Offset {
        if self.stored || self.working.is_some() { Offset::Offset(self.position) } else { Offset::Beginning }
    }
}

/// The in-flight batch.
#[derive(Default)]
struct InFlight {
    rows: Rows,
    messages: usize,
    rejects: usize,
    started: Option<Instant>,
    /// A dead letter that could not be queued: the batch cannot commit.
    error: Option<Error>,
    /// Replays dropped and seq leaps, logged when the batch commits.
    notes: Notes,
    /// Rejects whose dead letter can never be sent, written before the commit point.
    quarantine: Vec<Quarantined>,
}

/// Totals since the last progress line.
#[derive(Default)]
struct Progress {
    since: Option<Instant>,
    rows: u64,
    rejected: u64,
    batches: u64,
}

/// The state machine.
pub struct Engine {
    topic: String,
    limits: Limits,
    checkpoint: Checkpoint,
    scratch: Option<Scratch>,
    dlq: DeadLetters,
    metrics: Arc<Metrics>,
    owned: BTreeMap<i32, Owned>,
    /// Partitions assigned while another live process held their lock.
    waiting: BTreeMap<i32, Waiting>,
    /// When the waiting partitions' locks are tried next.
    next_lock_try: Instant,
    batch: InFlight,
    /// Committed manifests not yet finished (renames, states, deletion), retried after commits.
    pending: Vec<(PathBuf, Manifest)>,
    /// An error the rebalance callback met; the loop stops with it.
    fatal: Option<Error>,
    progress: Progress,
    /// The replay-filter key of the message being handled (kept to spare an allocation each).
    key: String,
    /// `kafka.brokers`, for messages.
    brokers: String,
    /// The broker's cluster id, read once at start (`None` when it reports none): recorded in
    /// every state written, and checked against every state read.
    cluster: Option<String>,
    /// The Delta table, when the lake is one: then the checkpoint folder is scratch space only
    /// (quarantined rejects), and positions, replay filter and counters live in the table.
    delta: Option<DeltaLake>,
    /// Delta lake: a failed commit could not be settled from the table yet (the store did not
    /// answer); done before the next commit.
    unsettled: bool,
}

impl Engine {
    /// A state machine owning nothing yet.
    pub fn new(
        topic: &str,
        limits: Limits,
        checkpoint: Checkpoint,
        scratch: Option<Scratch>,
        dlq: DeadLetters,
        metrics: Arc<Metrics>,
    ) -> Engine {
        Engine {
            topic: topic.to_string(),
            limits,
            checkpoint,
            scratch,
            dlq,
            metrics,
            owned: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_lock_try: Instant::now(),
            batch: InFlight::default(),
            pending: Vec::new(),
            fatal: None,
            progress: Progress::default(),
            key: String::new(),
            brokers: String::new(),
            cluster: None,
            delta: None,
            unsettled: false,
        }
    }

    /// Writes into a Delta table instead of the Parquet lake.
    pub fn with_delta(mut self, delta: DeltaLake) -> Engine {
        self.delta = Some(delta);
        self
    }

    /// The broker read from (`kafka.brokers`) and the cluster id it reports, if any.
    pub fn with_broker(mut self, brokers: &str, cluster: Option<String>) -> Engine {
        self.brokers = brokers.to_string();
        self.cluster = cluster;
        self
    }

    /// Records an error that must stop the consumer.
    pub fn set_fatal(&mut self, e: Error) {
        self.fatal.get_or_insert(e);
    }

    /// The error that must stop the consumer, if any.
    pub fn take_fatal(&mut self) -> Option<Error> {
        self.fatal.take()
    }

    /// How long the loop may wait for the next message, at time `now`.
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        const MAX: Duration = Duration::from_millis(100);
        match self.batch.started {
            Some(t) => (t + self.limits.interval).saturating_duration_since(now).min(MAX),
            None => MAX,
        }
    }

    /// Whether the in-flight batch must close at time `now`.
    pub fn batch_due(&self, now: Instant) -> bool {
        let b = &self.batch;
        b.messages > 0
            && (b.rows.len() >= self.limits.max_rows
                || b.rejects >= self.limits.max_rows
                || b.rows.dates() >= MAX_DATES
                || b.error.is_some()
                || b.started.is_some_and(|t| now.saturating_duration_since(t) >= self.limits.interval))
    }

    /// Takes one message into the in-flight batch; `now` is a recent time (the batch's start).
    // Over 80 lines on purpose: the hot path of every message (lineage, both replay checks,
    // the row or its reject) in the order the exactly-once argument states it.
    pub fn handle(&mut self, msg: &BorrowedMessage<'_>, now: Instant) {
        let offset = msg.offset();
        let Some(owned) = self.owned.get_mut(&msg.partition()) else { return };
        if msg.topic() != self.topic || offset < owned.position {
            // Not ours any more, or read already (a fetch that raced a seek).
            return;
        }
        if let Some(at) = owned.resumed_at.take()
            && offset > at + 1
        {
            // One offset is a transaction marker; more is compaction, aborted transactions, or
            // a broker that skips the rest of a record batch a fetch starts inside of (tansu
            // 0.6's memory storage does): worth a line, since it would lose messages.
            tracing::warn!(
                "partition {}/{}: resumed at offset {at}, but the broker's first message is at \
                 offset {offset} ({} offsets skipped)",
                self.topic,
                msg.partition(),
                offset - at
            );
        }
        owned.position = offset + 1;
        let state = owned.working.get_or_insert_with(|| owned.committed.clone());
        state.next_offset = offset + 1;
        self.metrics.consumer.messages.inc();
        let batch = &mut self.batch;
        batch.messages += 1;
        batch.started.get_or_insert(now);

        // The replay filter (see `replay`): checked for every message of a lineage, advanced
        // only by one that becomes a row.
        let headers = msg.headers();
        let lineage = headers.and_then(|h| Lineage::from_headers(h.iter().map(|h| (h.key, h.value))));
        if let Some(l) = &lineage {
            l.key_into(&mut self.key);
            if let Some(last) = replay::replay_of(&state.sources, &self.key, l.seq) {
                state.duplicates += 1;
                batch.notes.replay(msg.partition(), &self.key, l, offset, last);
                return;
            }
        }

        let value = match msg.payload() {
            Some(v) if !v.is_empty() => v,
            _ => {
                state.tombstones += 1;
                return;
            }
        };
        // The change headers first: a row is written with its change columns or not at all.
        let change = match headers {
            Some(h) => Change::from_headers(h.iter().map(|h| (h.key, h.value))),
            None => Ok(Change::default()),
        };
        // A truncate has no row of an order: its value is not one.
        let parsed = change.and_then(|c| match c.op {
            Op::Truncate => c.check_truncate().map(|()| (None, c)),
            _ => Order::parse(value).map(|o| (Some(o), c)),
        });
        match parsed {
            Ok((order, change)) => {
                // The position half of the replay filter (log-based capture).
                let order_id = order.as_ref().map_or(0, |o| o.order_id);
                if let Some(l) = &lineage
                    && let Some(at) = replay::Position::of(&change, order_id)
                {
                    if let Some(last) = replay::position_replay(&state.positions, &self.key, at) {
                        state.duplicates += 1;
                        batch.notes.position_replay(msg.partition(), &self.key, l, offset, (at, last));
                        return;
                    }
                    replay::advance_position(&mut state.positions, &self.key, at);
                }
                batch.rows.push(order.as_ref(), &change, (msg.partition(), offset));
                state.rows_written += 1;
                if let Some(l) = &lineage
                    && let Some(from) = replay::advance(&mut state.sources, &self.key, l.seq)
                {
                    batch.notes.leap(msg.partition(), &self.key, l, offset, from);
                }
            }
            Err(reject) => {
                *state.rejected.entry(reject.reason.as_str().to_string()).or_default() += 1;
                batch.rejects += 1;
                if batch.error.is_none() {
                    match self.dlq.send(msg, &reject) {
                        Ok(DeadLetter::Queued) => {}
                        Ok(DeadLetter::Undeliverable(why)) => {
                            batch.quarantine.push(Quarantined::new(msg, &reject, &why))
                        }
                        Err(e) => batch.error = Some(e),
                    }
                }
            }
        }
    }

    /// Whether the lake and this process's temp folder still exist. Someone deleted them while
    /// the consumer ran: retrying would only fail again, and recreating the lake would leave a
    /// lake without its history behind a checkpoint that says it is complete. So the consumer
    /// stops, naming what is gone; the in-flight batch is not committed.
    pub fn lake_still_there(&self) -> Result<()> {
        if self.delta.is_some() {
            // A table on object storage has no folder to lose; its log is checked at commit.
            return Ok(());
        }
        let lake = self.checkpoint.lake();
        if !lake.is_dir() {
            return Err(Error::Storage(format!(
                "the lake folder {} is gone (deleted while the consumer ran?): stopping without committing the \
                 batch in flight. The checkpoint {} still holds the positions of what the lake held, so a restart \
                 would write only what comes after them; to rebuild the lake from the topic, delete the checkpoint \
                 folder too",
                lake.display(),
                self.checkpoint.dir().display()
            )));
        }
        if let Some(scratch) = &self.scratch
            && !scratch.dir().is_dir()
        {
            return Err(Error::Storage(format!(
                "the consumer's temp folder {} is gone (deleted while the consumer ran?): stopping without \
                 committing the batch in flight; a restart makes a new one and continues from the checkpoint",
                scratch.dir().display()
            )));
        }
        Ok(())
    }

    /// Releases everything and removes this process's temp folder (a clean stop).
    pub fn close(&mut self) {
        self.owned.clear();
        // Dead letters of a batch that did not commit: it is read again, and they are resent.
        if let Err(e) = self.dlq.flush() {
            tracing::warn!("{e}");
        }
        if let Some(scratch) = self.scratch.take() {
            scratch.remove(&self.checkpoint);
        }
    }

    fn log_progress(&mut self) {
        let p = &mut self.progress;
        let since = *p.since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(10) {
            return;
        }
        let positions: Vec<String> =
            self.owned.iter().map(|(k, o)| format!("{k}@{}", o.committed.next_offset)).collect();
        tracing::info!(
            "{} rows written and {} messages rejected in {} batches over {:.0} s; next offsets {}",
            p.rows,
            p.rejected,
            p.batches,
            since.elapsed().as_secs_f64(),
            positions.join(" ")
        );
        *p = Progress { since: Some(Instant::now()), ..Progress::default() };
    }
}
