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
use super::checkpoint::{Checkpoint, Manifest, ManifestFile, PartitionLock, PartitionState};
use super::delta::DeltaLake;
use super::dlq::{DeadLetters, Quarantined};
use super::parquet;
use super::replay::{self, Notes};
use super::scratch::{self, Scratch};
use crate::durable::{io_error, sync_dir};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ReasonLabel};
use crate::order::{Change, Order};
use crate::wire::{Lineage, Op};

pub use crate::wire::{SEQ_HEADER, SOURCE_HEADER};

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
                        Ok(None) => {}
                        Ok(Some(failure)) => batch.quarantine.push(Quarantined::new(msg, &reject, &failure)),
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

    /// Commits the in-flight batch (steps 1-7 of the protocol in [`crate::sink`]). On an error
    /// nothing was committed; the caller abandons the batch.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<()> {
        if self.batch.messages == 0 {
            return Ok(());
        }
        if let Some(e) = self.batch.error.take() {
            return Err(e);
        }
        if self.delta.is_some() {
            return self.commit_delta(consumer);
        }
        let start = Instant::now();
        let batch_id = Uuid::now_v7().to_string();
        let Some(scratch) = self.scratch.as_ref() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        let process = scratch.id().to_string();
        let mut files = Vec::new();
        let written = self.write_files(&mut files).inspect(|()| super::failpoint(super::Failpoint::Files));
        let refused = written.and_then(|()| self.dlq.flush());
        let quarantined = refused.and_then(|refused| {
            self.batch.quarantine.extend(refused);
            self.write_quarantine()
        });
        let committed = quarantined.and_then(|()| {
            let partitions = self.new_states(&batch_id, &process);
            let m = Manifest { batch: batch_id.clone(), process, partitions, files: files.clone() };
            // The commit point.
            self.checkpoint.write_manifest(&m).map(|path| (path, m))
        });
        let (path, manifest) = match committed {
            Ok(c) => {
                super::failpoint(super::Failpoint::Manifest);
                c
            }
            Err(e) => {
                for f in &files {
                    let _ = fs::remove_file(self.checkpoint.lake().join(&f.temp));
                }
                return Err(e);
            }
        };

        // Committed: the in-memory state follows the manifest.
        let offsets = self.committed(&manifest.partitions, manifest.files.len());

        // Steps 4-6: idempotent; if they fail, the manifest finishes them later (here or at
        // the next start), so the batch stays committed.
        if let Err(e) = self.checkpoint.finish(&path, &manifest) {
            tracing::error!("batch {batch_id} is committed but not finished yet ({e}); will retry");
            self.pending.push((path, manifest));
        }
        self.retry_pending();
        let success = self.checkpoint.lake().join(SUCCESS_FILE);
        if let Err(e) = File::create(&success) {
            tracing::warn!("cannot refresh {}: {e}", success.display());
        }
        // Step 7: for lag monitoring only; the checkpoint is the truth.
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!("group offsets not committed to Kafka: {e}");
        }
        self.metrics.consumer.batch_duration.observe(start.elapsed().as_secs_f64());
        self.log_progress();
        Ok(())
    }

    /// The in-memory state follows a committed batch: counters, owned states, a fresh batch.
    /// Returns the group offsets to commit to Kafka (for lag monitoring only).
    fn committed(&mut self, partitions: &[PartitionState], files: usize) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        let metrics = self.metrics.clone();
        let c = &metrics.consumer;
        for new in partitions {
            let Some(owned) = self.owned.get_mut(&new.partition) else { continue };
            let old = &owned.committed;
            c.rows_written.inc_by(new.rows_written - old.rows_written);
            c.tombstones.inc_by(new.tombstones - old.tombstones);
            c.duplicates.inc_by(new.duplicates - old.duplicates);
            for (label, n) in &new.rejected {
                let before = old.rejected.get(label).copied().unwrap_or(0);
                c.rejected.get_or_create(&ReasonLabel { reason: label.clone() }).inc_by(n - before);
                self.progress.rejected += n - before;
            }
            self.progress.rows += new.rows_written - old.rows_written;
            owned.committed = new.clone();
            owned.working = None;
            owned.stored = true;
            let _ = offsets.add_partition_offset(&new.topic, new.partition, Offset::Offset(new.next_offset));
        }
        c.batches.inc();
        c.files_written.inc_by(files as u64);
        self.progress.batches += 1;
        self.batch.notes.log(&self.topic);
        self.batch = InFlight::default();
        offsets
    }

    /// The working state of every partition the batch advanced, stamped for the commit.
    fn new_states(&self, batch_id: &str, process: &str) -> Vec<PartitionState> {
        self.owned
            .values()
            .filter_map(|o| o.working.clone())
            .map(|mut s| {
                // A state of an older version (none recorded) is adopted here.
                if self.cluster.is_some() {
                    s.cluster.clone_from(&self.cluster);
                }
                s.batches += 1;
                s.last_batch = batch_id.to_string();
                s.last_process = process.to_string();
                s
            })
            .collect()
    }

    /// Commits the in-flight batch to the Delta table: files, `txn` actions and partition
    /// states in one log entry (see [`super::delta`]). On an error nothing is known to be
    /// committed: the caller abandons the batch, which settles it from the table.
    fn commit_delta<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<()> {
        let start = Instant::now();
        if self.unsettled && self.settle_from_table()? {
            return Err(Error::Storage(
                "the table holds more than this process knew (an earlier commit landed after all): the batch is \
                 read again from the table's positions"
                    .into(),
            ));
        }
        let batch_id = Uuid::now_v7().to_string();
        let refused = self.dlq.flush()?;
        self.batch.quarantine.extend(refused);
        self.write_quarantine()?;
        let dates = self.batch.rows.finish_sourced()?;
        let states = self.new_states(&batch_id, "delta");
        let expected: Vec<(i32, Option<i64>)> = states
            .iter()
            .filter_map(|s| self.owned.get(&s.partition))
            .map(|o| (o.committed.partition, o.stored.then(|| o.committed.next_offset - 1)))
            .collect();
        let Some(delta) = self.delta.as_mut() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        super::failpoint(super::Failpoint::Files);
        let commit_start = Instant::now();
        let committed = delta.commit(dates, states.clone(), &expected)?;
        let commit_secs = commit_start.elapsed().as_secs_f64();
        super::failpoint(super::Failpoint::Manifest);
        let c = &self.metrics.consumer;
        c.table_version.set(committed.version);
        c.last_commit.set(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
        let offsets = self.committed(&states, committed.files);
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!("group offsets not committed to Kafka: {e}");
        }
        // The benches read the commit's duration from this line (benches/logical.rs).
        tracing::debug!(
            "batch {batch_id} committed as version {} ({} bytes) in {commit_secs:.4} s",
            committed.version,
            committed.bytes
        );
        self.metrics.consumer.batch_duration.observe(start.elapsed().as_secs_f64());
        self.log_progress();
        Ok(())
    }

    /// Delta lake: reads the table again and gives every owned partition the table's state, so
    /// a batch whose commit failed, lost a race or timed out is settled by what the log holds.
    /// Returns whether any partition's position moved.
    fn settle_from_table(&mut self) -> Result<bool> {
        let Some(delta) = self.delta.as_mut() else { return Ok(false) };
        self.unsettled = true;
        delta.refresh()?;
        let mut moved = false;
        for (p, owned) in self.owned.iter_mut() {
            let state = delta.state(*p)?;
            delta.own(*p)?;
            let before = owned.committed.next_offset;
            owned.stored = state.is_some();
            owned.committed = state.unwrap_or_else(|| PartitionState::empty(&self.topic, *p));
            if owned.committed.next_offset != before {
                moved = true;
                self.metrics.consumer.commit_conflicts.inc();
                tracing::warn!(
                    "partition {}/{p}: the table {} holds offsets up to {} (this process had {}): reading on from there",
                    self.topic,
                    delta.location(),
                    owned.committed.next_offset - 1,
                    before - 1
                );
            }
        }
        self.unsettled = false;
        Ok(moved)
    }

    /// The rejects no dead letter can carry, each to its file under the checkpoint, before the
    /// commit point (so a committed batch has all of them).
    fn write_quarantine(&self) -> Result<()> {
        for q in &self.batch.quarantine {
            let path = q.write(self.checkpoint.dir())?;
            self.metrics.consumer.quarantined.inc();
            tracing::warn!(
                "a reject whose dead letter cannot be sent to {} was written to {} instead",
                self.dlq.topic(),
                path.display()
            );
        }
        Ok(())
    }

    /// Step 1: one fsynced temp file per date; the date folders exist before the commit point.
    fn write_files(&mut self, files: &mut Vec<ManifestFile>) -> Result<()> {
        let Some(scratch) = self.scratch.as_ref() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        let lake = self.checkpoint.lake();
        for (date, rows) in self.batch.rows.finish()? {
            let dir = lake.join(format!("date={date}"));
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|e| io_error("cannot create directory", &dir, e))?;
                sync_dir(lake)?;
            }
            let name = format!("part-{}", Uuid::now_v7());
            let (temp, temp_rel) = scratch.temp_file(&name);
            files.push(ManifestFile {
                temp: temp_rel,
                path: format!("date={date}/{name}.parquet"),
                rows: rows.num_rows() as u64,
            });
            parquet::write_file(&temp, &rows)?;
        }
        // The temp files' names must survive a power loss too: the manifest will point at them.
        if !files.is_empty() {
            sync_dir(scratch.dir())?;
        }
        Ok(())
    }

    /// Finishes committed manifests that could not be finished before.
    fn retry_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (path, m) in pending {
            let done = self.checkpoint.roll_forward(&m).and_then(|()| {
                for s in &m.partitions {
                    if s.topic == self.topic
                        && let Some(owned) = self.owned.get(&s.partition)
                    {
                        self.checkpoint.write_state(&owned.committed)?;
                    }
                }
                self.checkpoint.tidy(&path, &m)
            });
            match done {
                Ok(true) => {}
                Ok(false) => {
                    // Waits for the owner of another partition it names: keep it only while
                    // one of those partitions is ours, else that owner finishes it.
                    if m.partitions
                        .iter()
                        .any(|s| s.topic == self.topic && self.owned.contains_key(&s.partition))
                    {
                        self.pending.push((path, m));
                    }
                }
                Err(e) => {
                    tracing::error!("batch {} is committed but not finished yet ({e}); will retry", m.batch);
                    self.pending.push((path, m));
                }
            }
        }
    }

    /// Drops the in-flight batch; with `seek`, rewinds its partitions to the checkpoint.
    pub fn abandon<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>, seek: bool) -> Result<()> {
        self.batch = InFlight::default();
        if seek && let Err(e) = self.settle_from_table() {
            // Settled before the next commit instead; until then a commit of offsets the
            // table already holds still loses at the log (same txn app id).
            tracing::warn!("{e}; the batch is settled from the table before the next commit");
        }
        for (p, owned) in self.owned.iter_mut() {
            if owned.working.take().is_none() && owned.position == owned.committed.next_offset {
                continue;
            }
            owned.position = owned.committed.next_offset;
            owned.resumed_at = owned.stored.then_some(owned.position);
            if seek {
                let offset = if owned.stored {
                    Offset::Offset(owned.committed.next_offset)
                } else {
                    Offset::Beginning
                };
                consumer.seek(&self.topic, *p, offset, SEEK_TIMEOUT).map_err(|e| {
                    Error::Kafka(format!(
                        "cannot rewind {}/{p} to the checkpoint ({offset:?}): {e}",
                        self.topic
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Commits the in-flight batch, or abandons it (without seeking) if that fails; returns
    /// whether it was committed.
    pub fn commit_or_abandon<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> bool {
        match self.commit(consumer) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("{e}; the in-flight batch is abandoned (it will be read again)");
                let _ = self.abandon(consumer, false);
                false
            }
        }
    }

    /// Takes a newly assigned partition: its lock, its checkpoint and every committed manifest
    /// that is ahead of it. Returns where to start reading, or `None` while another live
    /// process still holds the partition's lock: the partition then waits (see
    /// [`Engine::retry_waiting`]) and the others are read meanwhile.
    pub fn acquire(&mut self, topic: &str, partition: i32) -> Result<Option<Offset>> {
        if let Some(o) = self.owned.get(&partition) {
            return Ok(Some(o.offset()));
        }
        if self.delta.is_some() {
            return self.acquire_delta(topic, partition).map(Some);
        }
        let lock = match self.checkpoint.try_lock_partition(topic, partition)? {
            Ok(lock) => lock,
            Err(path) => {
                let now = Instant::now();
                let w = self.waiting.entry(partition).or_insert(Waiting { since: now, next_log: now });
                if now >= w.next_log {
                    tracing::warn!(
                        "partition {topic}/{partition}: waiting for {} (another live process still owns \
                         the partition; waited {:.0} s); the other partitions are read meanwhile",
                        path.display(),
                        now.saturating_duration_since(w.since).as_secs_f64()
                    );
                    w.next_log += WAIT_LOG_EVERY;
                }
                return Ok(None);
            }
        };
        self.waiting.remove(&partition);
        let mut state = self.checkpoint.read_state(topic, partition)?;
        let mut from_manifest = false;
        for (path, m) in self.checkpoint.manifests()? {
            let Some(s) = m.state_of(topic, partition) else { continue };
            if state.as_ref().is_none_or(|c| s.next_offset > c.next_offset) {
                state = Some(s.clone());
                from_manifest = true;
            }
            if !self.pending.iter().any(|(p, _)| *p == path) {
                self.pending.push((path, m));
            }
        }
        let stored = state.is_some();
        let committed = state.unwrap_or_else(|| PartitionState::empty(topic, partition));
        self.same_cluster(&committed)?;
        if from_manifest {
            tracing::info!(
                "partition {topic}/{partition}: finishing a batch committed by a process that stopped \
                 (next offset {})",
                committed.next_offset
            );
        }
        self.owned.insert(
            partition,
            Owned {
                _lock: Some(lock),
                position: committed.next_offset,
                resumed_at: stored.then_some(committed.next_offset),
                committed,
                stored,
                working: None,
            },
        );
        // Renames, then this partition's state file, then manifests no one needs any more.
        self.retry_pending();
        Ok(Some(if stored {
            Offset::Offset(self.owned[&partition].committed.next_offset)
        } else {
            Offset::Beginning
        }))
    }

    /// Delta lake: takes a partition at the state the table's newest version holds (no lock:
    /// a second owner's commit loses at the log, see [`super::delta`]).
    fn acquire_delta(&mut self, topic: &str, partition: i32) -> Result<Offset> {
        let Some(delta) = self.delta.as_mut() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        delta.refresh()?;
        let state = delta.state(partition)?;
        delta.own(partition)?;
        let stored = state.is_some();
        let committed = state.unwrap_or_else(|| PartitionState::empty(topic, partition));
        self.same_cluster(&committed)?;
        let offset = if stored { Offset::Offset(committed.next_offset) } else { Offset::Beginning };
        self.owned.insert(
            partition,
            Owned {
                _lock: None,
                position: committed.next_offset,
                resumed_at: stored.then_some(committed.next_offset),
                committed,
                stored,
                working: None,
            },
        );
        Ok(offset)
    }

    /// Whether a partition's committed state was read from the broker's cluster: its offsets
    /// mean nothing on another one. Unknown on either side (a state of an older version, a
    /// broker that reports no id) passes.
    fn same_cluster(&self, state: &PartitionState) -> Result<()> {
        let (Some(theirs), Some(ours)) = (&state.cluster, &self.cluster) else { return Ok(()) };
        if theirs == ours {
            return Ok(());
        }
        Err(Error::Setup(format!(
            "partition {}/{}: the checkpoint {} was written from Kafka cluster {theirs}, but the broker at {} is \
             cluster {ours}: the checkpoint belongs to another broker, or the topic moved to another cluster. Point \
             kafka.brokers at cluster {theirs}; to start over from cluster {ours} deliberately, delete the \
             checkpoint folder {} and the lake {} (its rows came from the other cluster)",
            state.topic,
            state.partition,
            self.checkpoint.state_path(&state.topic, state.partition).display(),
            self.brokers,
            self.checkpoint.dir().display(),
            self.checkpoint.lake().display()
        )))
    }

    /// Where a newly acquired partition may start, checked against the topic, so that a
    /// checkpoint that does not fit the topic stops the consumer instead of skipping messages
    /// or writing the topic into the lake a second time (`--from-beginning` overrides the
    /// last two). `served_end(h)`: the partition's end as the broker serves it, read from its
    /// reported end `h` (`None` when that cannot be told).
    pub fn check_start<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        topic: &str,
        partition: i32,
        offset: Offset,
        served_end: impl Fn(i64) -> Option<i64>,
    ) -> Result<Offset> {
        let timeout = Duration::from_secs(10);
        let cp = self.checkpoint.dir().display();
        let lake = self.checkpoint.lake().display();
        let again = "--from-beginning (`orderstream consume --from-beginning`)";
        match offset {
            Offset::Offset(n) => {
                let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, timeout) else {
                    return Ok(offset);
                };
                if n < low {
                    if self.limits.from_beginning {
                        tracing::warn!(
                            "partition {topic}/{partition}: reading on from offset {low}: messages {n} to {} were \
                             deleted before the lake got them (--from-beginning)",
                            low - 1
                        );
                        return Ok(Offset::Offset(low));
                    }
                    return Err(Error::Storage(format!(
                        "partition {topic}/{partition}: the checkpoint's next offset {n} is below the partition's \
                         first offset {low}: messages {n} to {} were deleted (retention?) before the lake got them. \
                         To accept the loss and read on from {low}, start once with {again}",
                        low - 1
                    )));
                }
                // A broker may report an end below the last message (tansu does after a
                // producer retry): only the end it serves counts.
                if n > high && served_end(high).is_some_and(|end| n > end) {
                    return Err(Error::Storage(format!(
                        "partition {topic}/{partition}: the checkpoint's next offset {n} is beyond the partition's \
                         end {high}: the topic was deleted and recreated, or the checkpoint {cp} belongs to another \
                         topic or broker. To start over deliberately, delete the checkpoint folder {cp} and the lake \
                         {lake} (its rows came from the old topic)"
                    )));
                }
                Ok(offset)
            }
            // A Delta table names its group and topic, and holds a position for every partition
            // it has rows of: one without is new to the table.
            _ if self.delta.is_some() => Ok(offset),
            _ if self.limits.from_beginning || !self.checkpoint.lake_has_files() => Ok(offset),
            _ => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let group = consumer.committed_offsets(tpl, timeout).ok().and_then(|c| {
                    match c.find_partition(topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o > 0 => Some(o),
                        _ => None,
                    }
                });
                let why = match group {
                    Some(o) => format!("the group has committed offset {o} for it"),
                    None if !self.checkpoint.has_any_state(topic) => {
                        format!("the checkpoint holds no state of any partition of {topic}")
                    }
                    None => return Ok(offset),
                };
                Err(Error::Storage(format!(
                    "partition {topic}/{partition} has no checkpoint in {cp}, but the lake {lake} already holds \
                     files and {why}: the checkpoint folder was lost or the configuration points at another one, and \
                     reading from the beginning would write the topic into the lake again. Point \
                     streaming.checkpoint_location at the lake's checkpoint, or start once with {again} to do it \
                     deliberately"
                )))
            }
        }
    }

    /// Deletes what dead processes left in the temp area (see [`scratch::clean_dead`]).
    pub fn clean_dead(&self) {
        if let Some(scratch) = &self.scratch
            && let Err(e) = scratch::clean_dead(&self.checkpoint, scratch.id())
        {
            tracing::warn!("cannot clean the temp folders of stopped processes: {e}");
        }
    }

    /// Releases partitions (their locks, or their wait for one); their in-flight rows must be
    /// committed or abandoned.
    pub fn release(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(p);
            self.waiting.remove(p);
        }
    }

    /// Whether `partition` is assigned to this member but waits for its lock (so librdkafka
    /// was never told to read it).
    pub fn is_waiting(&self, partition: i32) -> bool {
        self.waiting.contains_key(&partition)
    }

    /// The partitions assigned to this member: owned, or waiting for their lock.
    pub fn owned(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self.owned.keys().chain(self.waiting.keys()).copied().collect();
        all.sort_unstable();
        all
    }

    /// Tries again to lock the partitions assigned while another live process held them; each
    /// one locked joins the consumer's assignment at its checkpoint. Called from the loop, so
    /// a member frozen past its session (SIGSTOP, a VM pause) stalls only its own partitions:
    /// it still holds their locks, and writes them until it learns that it lost them.
    pub fn retry_waiting<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        now: Instant,
    ) -> Result<()> {
        if self.waiting.is_empty() || now < self.next_lock_try {
            return Ok(());
        }
        self.next_lock_try = now + LOCK_RETRY;
        let topic = self.topic.clone();
        let mut added = TopicPartitionList::new();
        for p in self.waiting.keys().copied().collect::<Vec<_>>() {
            if let Some(offset) = self.acquire(&topic, p)? {
                tracing::info!("partition {topic}/{p}: its previous owner let go; reading from {offset:?}");
                added
                    .add_partition_offset(&topic, p, offset)
                    .map_err(|e| Error::Kafka(format!("cannot assign {topic}/{p}: {e}")))?;
            }
        }
        if added.count() == 0 {
            return Ok(());
        }
        let assigned = if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            consumer.incremental_assign(&added)
        } else {
            // Eager: assign() replaces the assignment, so it lists every owned partition at the
            // offset its next message must have.
            let mut all = TopicPartitionList::new();
            for (p, o) in &self.owned {
                all.add_partition_offset(&topic, *p, o.offset())
                    .map_err(|e| Error::Kafka(format!("cannot assign {topic}/{p}: {e}")))?;
            }
            consumer.assign(&all)
        };
        assigned.map_err(|e| Error::Kafka(format!("cannot apply the new assignment: {e}")))
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
