//! The sink (`orderstream consume`): Kafka topic → date-partitioned Parquet lake, exactly once.
//!
//! A consumer-group member reads `kafka.topic` (`read_committed`, no auto-commit), reads each
//! message's change headers ([`Change::from_headers`](crate::order::Change::from_headers): op,
//! commit LSN, index in the transaction, commit time; a poll-mode message has none and is an
//! insert), parses its value with [`Order::parse`](crate::order::Order::parse) and groups the
//! valid rows into micro-batches that close every `streaming.batch_interval` or at
//! `streaming.max_batch_rows` rows. Each batch writes one Parquet file per date to
//! `<datalake.path>/date=YYYY-MM-DD/part-<uuid v7>.parquet`, with the seven order columns and
//! the four change columns. A delete's value is the row before it: a row with `op` `d`.
//! Rejected messages (malformed change headers included) go to the dead-letter topic
//! (`kafka.dlq_topic`, with reject and source headers, the lineage renamed
//! `orderstream.original.*`); tombstones (no value) are counted and skipped; replays are
//! dropped (below).
//!
//! # Exactly once
//!
//! The known designs: Spark Structured Streaming writes an *offset log* entry (the planned
//! offsets of batch N) before running it and a *commit log* entry after the sink finished; its
//! file sink adds a `_spark_metadata` log of the files of each batch, and only readers that
//! consult that log see exactly-once output (a directory glob also sees files of failed
//! batches). kafka-delta-ingest stores the Kafka offsets inside the table's own transaction
//! log (Delta `txn` actions), so data and offsets commit in one atomic log append.
//!
//! Plain Parquet has no table log, so here the *checkpoint* holds the offsets together with
//! the batch that produced them, and a batch's files become visible only by `rename` after
//! its commit point. Every reader (Spark, DuckDB's glob, pyarrow) then sees whole batches
//! only, with no log to consult:
//!
//! ```text
//! <checkpoint>/state/<topic>-<p>.json   partition p: next_offset, last seq per lineage, counters
//! <checkpoint>/state/<topic>-<p>.lock   flock of the process that owns partition p
//! <checkpoint>/commits/<batch>.json     manifest: new state of each partition + files to publish
//! <checkpoint>/lake_id                  the id of the lake this checkpoint writes
//! <lake>/_orderstream_checkpoint        the same id: which checkpoint writes this lake
//! <lake>/_temporary/<process>/…parquet.inprogress   files before publication
//! <lake>/_temporary/<process>.lock      flock: held while that process lives
//! ```
//!
//! The positions in a checkpoint hold only with its own lake and its own broker: at start the
//! lake and the checkpoint must name the same lake id ([`identity`]), and each partition's
//! state records the cluster id of the broker it was read from, which the broker must still
//! report when the partition is acquired.
//!
//! Commit of a batch, by the process that holds the locks of all its partitions:
//!
//! 1. write and fsync one temp file per date (the date folder is created first);
//! 2. wait until every dead letter of the batch is acknowledged;
//! 3. write the manifest (temp, fsync, rename, fsync folder): each partition's complete new
//!    state (not a delta) and the (temp, final) file pairs. **This rename is the commit
//!    point**: before it the batch never happened (its temp files are garbage), after it the
//!    batch happened, whatever crashes next;
//! 4. rename each temp file to its final name, fsync the folder (idempotent: skipped when the
//!    temp is gone and the final file exists);
//! 5. write each partition's state file (temp, fsync, rename) from the manifest;
//! 6. delete the manifest; refresh `_SUCCESS`;
//! 7. commit the group offsets to Kafka asynchronously, for lag monitoring only.
//!
//! Recovery. At start, every manifest is rolled forward (step 4: safe for anyone, any number
//! of times) and manifests whose partitions are all at or past them are deleted. At start and
//! on every assignment, temp folders of dead processes (lock free) lose the files no manifest
//! names. When a process is assigned a partition it takes the partition's lock (waiting, with
//! a log line every few seconds, while a live process still holds it), reads the state file
//! and applies every manifest that names the partition with a higher `next_offset` (renames,
//! then state file), and starts reading at that `next_offset` (the beginning when there is
//! none). A manifest is deleted by whoever finds every partition it names at or past it, after
//! rolling its files forward once more.
//!
//! Why it holds: a partition's effective checkpoint is the highest `next_offset` among its
//! state file and the manifests naming it, and each of those was written in the same atomic
//! rename as the list of files holding exactly the messages below it. Files get a final name
//! only from a manifest, so a batch that crashed before its commit point leaves nothing
//! visible, and one that crashed after it is published by whoever comes next. Only the lock
//! holder writes a partition's manifests, so two processes never commit the same offsets.
//!
//! Rebalances are eager: on revoke the in-flight batch is committed (the locks are still held,
//! so nobody else can have those partitions yet), then the locks are released; assignment
//! happens inside the rebalance callback with explicit offsets, so reading starts at the
//! checkpoint, never at the group's committed offsets. A process frozen past its session
//! timeout still holds its locks, so the new owner waits for it instead of writing twice; it
//! waits for those partitions only, reading its others meanwhile, and tries their locks again
//! every 200 ms. File names are uuid v7, so they never collide between processes.
//!
//! Replays. Messages may carry a lineage: `orderstream.source` (what the producer captures),
//! `orderstream.epoch` (the producer state that numbered them) and `orderstream.seq` (a decimal
//! u64, strictly increasing per lineage within a partition). Each partition state keeps, per
//! lineage, the seq of the last message that became a row; a message at or below it, and less
//! than 2^32 below, is a replay of a message already handled: dropped, counted, and named in a
//! warning when its batch commits. Rejects and tombstones are checked but never advance it, a
//! producer with a new state numbers a new lineage, and a seq 2^32 or more away from the last
//! (a copied header with a made-up seq) is compared with nothing, so no message can make the
//! orders after it look like replays for good ([`replay`] gives the reasoning and what it
//! cannot do). This second line of defence covers producer retries without broker
//! transactions. Messages without a source and a decimal seq are not deduplicated.
//!
//! Dead letters are at least once: a crash between their acknowledgement and the batch's
//! commit sends them again on re-reading; their source topic/partition/offset headers identify
//! repeats.
//!
//! Faults. A batch that cannot be written (lake unwritable, disk full, dead letters not
//! acknowledged) is not committed: one error line naming the path or topic, the partitions are
//! rewound to the checkpoint, and the batch is retried with capped exponential backoff.
//! SIGTERM/SIGINT commit the in-flight batch (or abandon it if that fails), release the locks
//! and return.

mod batch;
pub mod checkpoint;
pub mod compact;
pub mod current;
pub use batch::DateBatch;
pub mod delta;
mod dlq;
mod engine;
mod group;
mod identity;
mod parquet;
mod replay;
mod scratch;
mod watch;

pub use checkpoint::{Manifest, ManifestFile, PartitionState};
pub use dlq::{
    DETAIL_HEADER, REASON_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER,
};
pub use engine::{SEQ_HEADER, SOURCE_HEADER, SUCCESS_FILE};
pub use watch::stall_window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;

use crate::config::{Config, LakeFormat};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::retry::{Backoff, Retry, Throttle};
use crate::shutdown::Shutdown;
use checkpoint::Checkpoint;
use engine::{Engine, Limits};
use scratch::Scratch;

/// Runs the consumer until `shutdown` triggers, then commits (or abandons) the in-flight batch,
/// releases the partitions and returns. Blocking: run it on a thread of its own.
pub fn consume(cfg: &Config, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    let lake = &cfg.datalake.path;
    let checkpoint = Checkpoint::open(&cfg.streaming.checkpoint_location, lake)?;
    let (scratch, delta) = match cfg.datalake.format {
        LakeFormat::Parquet => {
            // Before anything in the lake is touched: recovery deletes what no manifest of
            // this checkpoint names.
            identity::check(&checkpoint, cfg.streaming.from_beginning)?;
            let scratch = Scratch::create(lake)?;
            recover(&checkpoint, scratch.id());
            (Some(scratch), None)
        }
        LakeFormat::Delta => {
            (None, Some(delta::DeltaLake::open(&cfg.datalake, &cfg.kafka.group_id, &cfg.kafka.topic)?))
        }
    };
    let process = scratch.as_ref().map_or("delta".to_string(), |s| s.id().to_string());
    // The dead-letter topic must exist before anything is read: wait for the broker.
    let Some(dlq) = dead_letters(cfg, &shutdown)? else {
        if let Some(scratch) = scratch {
            scratch.remove(&checkpoint);
        }
        return Ok(());
    };
    let cluster = dlq.cluster_id();
    tracing::info!(
        "consuming {} (group {}, Kafka cluster {}) into {}, checkpoint {}, dead letters to {}, process {}",
        cfg.kafka.topic,
        cfg.kafka.group_id,
        cluster.as_deref().unwrap_or("unknown"),
        cfg.datalake.location,
        cfg.streaming.checkpoint_location.display(),
        dlq.topic(),
        process
    );
    let limits = Limits {
        interval: cfg.streaming.batch_interval,
        max_rows: cfg.streaming.max_batch_rows,
        from_beginning: cfg.streaming.from_beginning,
    };
    let mut engine = Engine::new(&cfg.kafka.topic, limits, checkpoint, scratch, dlq, metrics.clone())
        .with_broker(&cfg.kafka.brokers, cluster);
    if let Some(delta) = delta {
        metrics.consumer.table_version.set(delta.version());
        engine = engine.with_delta(delta);
    }
    // Its own thread and table handle: a compaction never holds up a batch.
    let compactor = match cfg.datalake.format {
        LakeFormat::Delta => Some(compact::Compactor::start(
            &cfg.datalake,
            (cfg.streaming.batch_interval * 5).max(Duration::from_secs(1)),
            metrics.clone(),
            shutdown.clone(),
        )?),
        LakeFormat::Parquet => None,
    };
    let consumer = group::consumer(cfg, engine, metrics.clone())?;
    consumer
        .subscribe(&[&cfg.kafka.topic])
        .map_err(|e| Error::Kafka(format!("cannot subscribe to {}: {e}", cfg.kafka.topic)))?;
    let watch = watch::Watch::start(&cfg.kafka)?;
    let result = run(&consumer, &metrics, &shutdown, &watch, &cfg.kafka.topic);
    drop(watch);
    let ctx = consumer.context().clone();
    {
        let mut engine = ctx.engine();
        if result.is_ok() && !engine.commit_or_abandon(&consumer) {
            shutdown.abandon();
        }
        engine.close();
    }
    // Leaves the group (the revoke callback finds nothing left to commit).
    drop(consumer);
    drop(compactor);
    if result.is_ok() {
        tracing::info!("stopped cleanly");
    }
    result
}

/// The dead-letter producer, once the broker answers and the topic exists; `None` when a stop
/// came first.
fn dead_letters(cfg: &Config, shutdown: &Shutdown) -> Result<Option<dlq::DeadLetters>> {
    let mut retry = Retry::new("consumer", Backoff::between(Duration::from_secs(1), Duration::from_secs(30)));
    loop {
        // On a thread of its own: its metadata request may wait out a broker that does not
        // answer, and a stop must not wait with it.
        let kafka = cfg.kafka.clone();
        let attempt = std::thread::spawn(move || dlq::DeadLetters::new(&kafka));
        while !attempt.is_finished() {
            if shutdown.sleep_blocking(Duration::from_millis(50)) {
                return Ok(None);
            }
        }
        let made = attempt
            .join()
            .map_err(|_| Error::Internal("the dead-letter producer's set-up panicked".into()))?;
        match made {
            Ok(d) => {
                // Logs the outage's end, if there was one.
                retry.reset();
                return Ok(Some(d));
            }
            Err(e) if e.is_transient() => {
                if shutdown.sleep_blocking(retry.failed(&e)) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The poll loop.
// Over 80 lines on purpose: one pass of the loop (poll, orphan check, handle, commit or
// rewind) reads top to bottom as the order of events; the per-message clock and the error
// report are its only state.
fn run(
    consumer: &group::GroupConsumer,
    metrics: &Metrics,
    shutdown: &Shutdown,
    watch: &watch::Watch,
    topic: &str,
) -> Result<()> {
    let ctx = consumer.context();
    let mut orphans = watch::Orphans::new();
    let mut next_look = Instant::now();
    let mut backoff = Backoff::between(Duration::from_secs(1), Duration::from_secs(30));
    let mut kafka_errors = Throttle::new(Duration::from_secs(1), Duration::from_secs(60));
    // Reading the clock for every message costs more than handling some of them: during a
    // catch-up the clock is read every CLOCK_EVERY messages, and whenever the queue runs dry.
    const CLOCK_EVERY: u32 = 64;
    let mut now = Instant::now();
    let mut unclocked = 0u32;
    while !shutdown.is_triggered() {
        let polled = match consumer.poll(Duration::ZERO) {
            Some(m) => Some(m),
            None => {
                now = Instant::now();
                unclocked = 0;
                let timeout = ctx.engine().poll_timeout(now);
                consumer.poll(timeout)
            }
        };
        unclocked += 1;
        if unclocked >= CLOCK_EVERY {
            now = Instant::now();
            unclocked = 0;
        }
        if now >= next_look {
            next_look = now + Duration::from_secs(1);
            let held = ctx.engine().owned();
            rejoin_if_orphaned(consumer, metrics, &mut orphans, watch, &held, topic, now)?;
        }
        // One lock per message: handle it and check the batch under the same guard.
        let mut engine = ctx.engine();
        match polled {
            Some(Ok(msg)) => engine.handle(&msg, now),
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                return Err(Error::Kafka(format!("fatal consumer error: {code}")));
            }
            Some(Err(e)) => {
                // librdkafka retries by itself; one line per growing interval, not per retry.
                if let Some((held_back, next)) = kafka_errors.pass() {
                    let more = match held_back {
                        0 => String::new(),
                        n => format!(" ({n} similar errors since the last line)"),
                    };
                    tracing::warn!(
                        "Kafka: {e}{more}; librdkafka retries, next report in {} s at most",
                        next.as_secs()
                    );
                }
            }
            None => {}
        }
        if let Some(e) = engine.take_fatal() {
            return Err(e);
        }
        engine.retry_waiting(consumer, now)?;
        if !engine.batch_due(now) {
            continue;
        }
        engine.lake_still_there()?;
        match engine.commit(consumer) {
            Ok(()) => {
                backoff.reset();
                kafka_errors.shorten();
                metrics.health.ok("consumer");
            }
            Err(e) => {
                metrics.health.fail("consumer", &e.to_string());
                let delay = backoff.next_delay();
                tracing::error!(
                    "{e}; batch not committed, partitions rewound to the checkpoint, retrying in {} s",
                    delay.as_secs()
                );
                metrics.consumer.retries.inc();
                engine.abandon(consumer, true)?;
                drop(engine);
                shutdown.sleep_blocking(delay);
            }
        }
    }
    Ok(())
}

/// The `/health` stage of partitions nobody holds (see [`watch`]).
const GROUP_STAGE: &str = "consumer group";

/// Reports partitions that have messages and no progress while this member does not hold them,
/// and rejoins the group when the back-off allows. Called without the engine's lock: the
/// revoke that leaving the group causes runs the rebalance callback, which takes it.
fn rejoin_if_orphaned(
    consumer: &group::GroupConsumer,
    metrics: &Metrics,
    orphans: &mut watch::Orphans,
    watch: &watch::Watch,
    held: &[i32],
    topic: &str,
    now: Instant,
) -> Result<()> {
    match orphans.judge(watch, held, now) {
        watch::Verdict::Nothing => {}
        watch::Verdict::Clear => {
            metrics.health.ok(GROUP_STAGE);
            tracing::info!("every partition with messages beyond its committed offset is held again");
        }
        watch::Verdict::Report(m) => metrics.health.fail(GROUP_STAGE, &m),
        watch::Verdict::Rejoin(m, unread) => {
            metrics.health.fail(GROUP_STAGE, &m);
            tracing::warn!("{m}: rejoining the group");
            watch.nudge(&unread);
            metrics.consumer.rejoins.inc();
            consumer.unsubscribe();
            consumer
                .subscribe(&[topic])
                .map_err(|e| Error::Kafka(format!("cannot subscribe to {topic} again: {e}")))?;
        }
    }
    Ok(())
}

/// Startup recovery: publish every committed batch, drop manifests nobody needs, delete what
/// dead processes left unfinished. Problems are logged; partition acquisition retries them.
fn recover(checkpoint: &Checkpoint, own: &str) {
    let manifests = match checkpoint.manifests() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    for (path, m) in &manifests {
        let done = checkpoint.roll_forward(m).and_then(|()| checkpoint.tidy(path, m));
        if let Err(e) = done {
            tracing::error!("cannot finish committed batch {} yet: {e}", m.batch);
        }
    }
    if let Err(e) = scratch::clean_dead(checkpoint, own) {
        tracing::warn!("cannot clean the temp folders of stopped processes: {e}");
    }
}

/// The environment variable that arms a [`Failpoint`]: `<name>:<n>` (n defaults to 1).
pub const FAILPOINT_VAR: &str = "ORDERSTREAM_FAILPOINT";

/// Test hook: the steps of a commit where, armed through [`FAILPOINT_VAR`], the process exits
/// at once (no cleanup, as in a crash) the n-th time a commit reaches the step. Lets tests
/// crash inside every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The batch's files are written (temp files in Parquet mode, data files in Delta mode).
    Files,
    /// Just after the commit point (the manifest renamed into place, or the Delta commit).
    Manifest,
    /// Delta mode with a current table: its commit done, the change table's not yet.
    Current,
    /// Parquet mode: files published, partition states not written.
    Renamed,
    /// Parquet mode: states written, manifest not deleted.
    States,
}

impl Failpoint {
    /// Every failpoint of a Parquet lake's commit, in the order it reaches them.
    pub const ALL: [Failpoint; 4] =
        [Failpoint::Files, Failpoint::Manifest, Failpoint::Renamed, Failpoint::States];

    /// Its name in [`FAILPOINT_VAR`].
    pub const fn name(self) -> &'static str {
        match self {
            Failpoint::Files => "files",
            Failpoint::Manifest => "manifest",
            Failpoint::Current => "current",
            Failpoint::Renamed => "renamed",
            Failpoint::States => "states",
        }
    }

    /// The value of [`FAILPOINT_VAR`] that crashes the n-th time a commit reaches this step.
    pub fn armed(self, n: u64) -> String {
        format!("{}:{n}", self.name())
    }
}

/// Exits like a crash if [`FAILPOINT_VAR`] armed `step` and this is its n-th visit.
pub(crate) fn failpoint(step: Failpoint) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var(FAILPOINT_VAR).ok()?;
        let (s, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((s.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((s, n)) = at
        && s == step.name()
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("failpoint {}:{n} reached: exiting like a crash", step.name());
        std::process::exit(137);
    }
}
