//! The counters of every stage, in one Prometheus registry: the logs, `/metrics` and
//! `orderstream status` all read these. Names follow Prometheus conventions (`orderstream_`
//! prefix, base units, counters ending in `_total`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::order::RejectReason;

/// A gauge holding a float.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A histogram of durations in seconds, 1 ms to about a minute.
#[derive(Clone)]
pub struct Durations(pub Histogram);

impl Default for Durations {
    fn default() -> Self {
        Durations(Histogram::new(exponential_buckets(0.001, 2.0, 17)))
    }
}

impl std::ops::Deref for Durations {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// The `reason` label of rejected messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A [`RejectReason`] label.
    pub reason: String,
}

/// The producer's counters.
#[derive(Default)]
pub struct ProducerMetrics {
    /// Orders published and acknowledged by the broker.
    pub orders_published: Counter,
    /// Bytes of message values published.
    pub bytes_published: Counter,
    /// Orders found already in the topic after a restart, so not published again.
    pub orders_recovered: Counter,
    /// Batches committed (published, acknowledged, position saved).
    pub batches: Counter,
    /// Time from the start of a poll to the saved position.
    pub batch_duration: Durations,
    /// created_at of the newest published order, as Unix seconds.
    pub watermark: FloatGauge,
    /// Now minus created_at of the newest published order, at the last poll.
    pub lag_seconds: FloatGauge,
    /// Retries after a failure of PostgreSQL or the broker.
    pub retries: Counter,
    /// Changes sent to the dead-letter topic instead (too large for the broker, or a
    /// `created_at` no message can carry).
    pub dead_letters: Counter,
    /// Poll mode: orders at or below the watermark that were never published (the last
    /// reconciliation's count; see `source::poll`).
    pub unpublished_below_watermark: Gauge,
}

/// The consumer's counters.
#[derive(Default)]
pub struct ConsumerMetrics {
    /// Messages read from the topic.
    pub messages: Counter,
    /// Rows written to the lake (committed).
    pub rows_written: Counter,
    /// Messages rejected, by reason (each copied to the dead-letter topic).
    pub rejected: Family<ReasonLabel, Counter>,
    /// Empty (tombstone) values skipped.
    pub tombstones: Counter,
    /// Messages dropped because their source position was already written (replays).
    pub duplicates: Counter,
    /// Lake batches committed.
    pub batches: Counter,
    /// Parquet files written.
    pub files_written: Counter,
    /// Time to write and commit one batch.
    pub batch_duration: Durations,
    /// Messages in the assigned partitions not yet committed to the lake.
    pub lag_messages: Gauge,
    /// Retries after a failure of the broker or the lake.
    pub retries: Counter,
    /// Rejects whose dead letter could never be sent, written under the checkpoint instead.
    pub quarantined: Counter,
    /// Times this member rejoined its group because partitions with messages had no progress
    /// and no holder it could see.
    pub rejoins: Counter,
    /// Delta lake: the table version of this member's last commit (0 for a Parquet lake).
    pub table_version: Gauge,
    /// Delta lake: when this member's last commit landed (Unix time; 0 before the first).
    pub last_commit: FloatGauge,
    /// Delta lake: commits that lost to another writer's commit (settled by reading the table).
    pub commit_conflicts: Counter,
    /// Delta lake: compactions this member committed.
    pub compactions: Counter,
    /// Delta lake: small files those compactions replaced.
    pub compacted_files: Counter,
    /// Delta lake: the bytes of those files.
    pub compacted_bytes: Counter,
    /// Delta lake: when this member's last compaction landed (Unix time; 0 before the first).
    pub last_compaction: FloatGauge,
    /// Delta lake: small files in the table's newest version, over all date partitions.
    pub small_files: Gauge,
    /// Delta lake: the version of the table's newest log checkpoint (-1 while it has none).
    pub checkpoint_version: Gauge,
}

/// The replication slot of logical capture, refreshed every few seconds by the running producer
/// (see [`crate::source::logical::monitor`]); all 0 in poll mode and while the slot does not exist.
#[derive(Default)]
pub struct SlotMetrics {
    /// 1 while a replication session uses the slot, else 0.
    pub active: Gauge,
    /// The slot's `confirmed_flush_lsn` as a number (the byte position in the WAL).
    pub confirmed_lsn: Gauge,
    /// WAL the slot keeps on the server: `pg_current_wal_lsn()` minus `restart_lsn`.
    pub retained_wal_bytes: Gauge,
    /// WAL not yet confirmed: `pg_current_wal_lsn()` minus `confirmed_flush_lsn`.
    pub lag_bytes: Gauge,
    /// How long ago the oldest WAL the slot has not confirmed was written, in seconds; 0 when
    /// the slot has confirmed the current position. A lower bound, short by at most one
    /// sampling interval; when that WAL predates the producer's start, it is dated by the
    /// commit time of the newest published change beyond the confirmed position (see
    /// [`crate::source::logical::slot::LagClock`]).
    pub lag_seconds: FloatGauge,
}

/// Which stages are currently failing (retrying), for `/health`.
#[derive(Default)]
pub struct Health {
    failing: std::sync::Mutex<std::collections::BTreeMap<&'static str, (String, std::time::Instant)>>,
}

impl Health {
    /// Marks `stage` as failing with `error` (keeps the time it started failing).
    pub fn fail(&self, stage: &'static str, error: &str) {
        if let Ok(mut f) = self.failing.lock() {
            let since = f.get(stage).map(|(_, t)| *t).unwrap_or_else(std::time::Instant::now);
            f.insert(stage, (error.to_string(), since));
        }
    }

    /// Marks `stage` as working.
    pub fn ok(&self, stage: &'static str) {
        if let Ok(mut f) = self.failing.lock() {
            f.remove(stage);
        }
    }

    /// Failing stages with their error and how long they have been failing.
    pub fn failing(&self) -> Vec<(String, serde_json::Value)> {
        let Ok(f) = self.failing.lock() else { return Vec::new() };
        f.iter()
            .map(|(stage, (error, since))| {
                let value = serde_json::json!({ "error": error, "seconds": since.elapsed().as_secs() });
                (stage.to_string(), value)
            })
            .collect()
    }
}

/// Registers a table of `(name, help, metric)` rows, each metric a clone sharing its value.
macro_rules! register {
    ($registry:expr, $(($name:literal, $help:literal, $metric:expr)),* $(,)?) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

impl ProducerMetrics {
    /// Registers every metric as `orderstream_producer_*`.
    fn register(&self, registry: &mut Registry) {
        register! {
            registry,
            ("orders_published", "Orders published and acknowledged", self.orders_published),
            ("bytes_published", "Bytes of message values published", self.bytes_published),
            ("orders_recovered", "Orders found already in the topic after a restart", self.orders_recovered),
            ("batches", "Batches published and saved", self.batches),
            ("batch_duration_seconds", "Poll to saved position", self.batch_duration.0),
            ("watermark_timestamp_seconds", "created_at of the newest published order (Unix time)", self.watermark),
            ("lag_seconds", "Now minus created_at of the newest published order", self.lag_seconds),
            ("retries", "Retries after PostgreSQL or broker failures", self.retries),
            ("dead_letters", "Changes sent to the dead-letter topic instead (too large or unencodable)", self.dead_letters),
            ("unpublished_below_watermark", "Poll mode: orders at or below the watermark never published (lost to polling)", self.unpublished_below_watermark),
        }
    }
}

impl ConsumerMetrics {
    /// Registers every metric as `orderstream_consumer_*`.
    fn register(&self, registry: &mut Registry) {
        register! {
            registry,
            ("messages", "Messages read from the topic", self.messages),
            ("rows_written", "Rows committed to the lake", self.rows_written),
            ("rejected", "Messages rejected, by reason", self.rejected),
            ("tombstones", "Empty values skipped", self.tombstones),
            ("duplicates", "Replayed messages dropped", self.duplicates),
            ("batches", "Lake batches committed", self.batches),
            ("files_written", "Parquet files written", self.files_written),
            ("table_version", "Delta lake: table version of the last commit", self.table_version),
            ("last_commit_timestamp_seconds", "Delta lake: when the last commit landed (Unix time)", self.last_commit),
            ("commit_conflicts", "Delta lake: commits that lost to another writer and were settled from the table", self.commit_conflicts),
            ("compactions", "Delta lake: compactions committed", self.compactions),
            ("compacted_files", "Delta lake: small files replaced by compactions", self.compacted_files),
            ("compacted_bytes", "Delta lake: bytes of the small files replaced by compactions", self.compacted_bytes),
            ("last_compaction_timestamp_seconds", "Delta lake: when the last compaction landed (Unix time)", self.last_compaction),
            ("small_files", "Delta lake: small files in the newest version", self.small_files),
            ("checkpoint_version", "Delta lake: version of the newest log checkpoint (-1: none)", self.checkpoint_version),
            ("batch_duration_seconds", "Write and commit of one batch", self.batch_duration.0),
            ("lag_messages", "Messages not yet in the lake", self.lag_messages),
            ("retries", "Retries after broker or lake failures", self.retries),
            ("quarantined", "Rejects written under the checkpoint because no dead letter could carry them", self.quarantined),
            ("rejoins", "Group rejoins because stalled partitions had no holder", self.rejoins),
        }
    }
}

impl SlotMetrics {
    /// Registers every metric as `orderstream_slot_*`.
    fn register(&self, registry: &mut Registry) {
        register! {
            registry,
            ("active", "1 while a replication session uses the slot", self.active),
            ("confirmed_lsn", "The slot's confirmed_flush_lsn as a number", self.confirmed_lsn),
            ("retained_wal_bytes", "WAL the slot keeps: current WAL position minus restart_lsn", self.retained_wal_bytes),
            ("lag_bytes", "WAL not yet confirmed: current WAL position minus confirmed_flush_lsn", self.lag_bytes),
            ("lag_seconds", "Age of the oldest WAL the slot has not confirmed (0 when caught up)", self.lag_seconds),
        }
    }
}

/// All counters, and the registry that exports them.
pub struct Metrics {
    /// Failing stages, for `/health`.
    pub health: Health,
    /// Producer side.
    pub producer: ProducerMetrics,
    /// Consumer side.
    pub consumer: ConsumerMetrics,
    /// The replication slot (logical capture).
    pub slot: SlotMetrics,
    registry: Registry,
}

impl Metrics {
    /// Fresh counters, registered.
    pub fn new() -> Metrics {
        let producer = ProducerMetrics::default();
        let consumer = ConsumerMetrics::default();
        let slot = SlotMetrics::default();
        for reason in RejectReason::ALL {
            // Every reason is exported from the start, at 0.
            let _ = consumer.rejected.get_or_create(&ReasonLabel { reason: reason.as_str().into() });
        }
        let mut registry = Registry::with_prefix("orderstream");
        producer.register(registry.sub_registry_with_prefix("producer"));
        consumer.register(registry.sub_registry_with_prefix("consumer"));
        slot.register(registry.sub_registry_with_prefix("slot"));
        Metrics { health: Health::default(), producer, consumer, slot, registry }
    }

    /// The Prometheus text exposition of every counter.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one rejected message.
    pub fn reject(&self, reason: RejectReason) {
        self.consumer.rejected.get_or_create(&ReasonLabel { reason: reason.as_str().into() }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
