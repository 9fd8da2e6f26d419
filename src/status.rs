//! `orderstream status`: the seed's monitoring points on one screen, read from the live systems
//! (PostgreSQL, the producer's state file, the broker, the consumer's checkpoint, the lake).
//! It works whether or not the pipeline runs; a part it cannot reach says so and the rest is
//! still shown. `--json` prints the same as one object. With logical capture a sixth part, the
//! replication slot ([`crate::source::logical::slot`]), sits between the producer and the broker.

mod broker;
use broker::{kafka_status, mark_unread};
mod delta;
mod producer;
mod render;
mod running;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Capture, Config, LakeFormat};
use crate::error::Error;
use crate::order::format_ts;
use crate::sink::checkpoint;
use crate::source::logical::slot::{self, SlotStatus};
pub use crate::source::logical::{LogicalStatus, SnapshotStatus};
pub use crate::source::poll::PollStatus;
pub use producer::{CaptureStatus, ProducerStatus};

/// Each part of the status: whether it answered (and, for the producer and the consumer,
/// runs), why not, and what was read.
#[derive(Debug, Serialize)]
pub struct Part<T> {
    /// Whether the part answered; for the producer and the consumer also whether one runs.
    pub ok: bool,
    /// Why not (`None` when `ok`).
    pub error: Option<String>,
    /// What was read (`None` when nothing could be).
    #[serde(flatten)]
    pub value: Option<T>,
}

impl<T> Part<T> {
    /// A part that could not be read.
    fn down(error: String) -> Part<T> {
        Part { ok: false, error: Some(error), value: None }
    }

    /// A part that was read, but is not as it must be (a process not running).
    fn failing(value: T, error: String) -> Part<T> {
        Part { ok: false, error: Some(error), value: Some(value) }
    }
}

impl<T> From<Result<T, Error>> for Part<T> {
    fn from(r: Result<T, Error>) -> Part<T> {
        match r {
            Ok(v) => Part { ok: true, error: None, value: Some(v) },
            Err(e) => Part::down(e.to_string()),
        }
    }
}

/// How long each part may take; they are read side by side, so `status` ends within about
/// this long even when every server accepts connections and never answers.
pub const PART_TIMEOUT: Duration = Duration::from_millis(2500);

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// PostgreSQL: record count, insert rate.
    pub postgres: Part<PostgresStatus>,
    /// Producer: messages published, where capture stands (per capture mode), lag.
    pub producer: Part<ProducerStatus>,
    /// The replication slot (logical capture only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<Part<SlotStatus>>,
    /// Kafka: messages per partition, consumer-group lag.
    pub kafka: Part<KafkaStatus>,
    /// Consumer: rows written, rejected by reason, rate.
    pub consumer: Part<ConsumerStatus>,
    /// Lake: files and rows per date partition, newest file age.
    pub lake: Part<LakeStatus>,
}

/// PostgreSQL.
#[derive(Debug, Serialize)]
pub struct PostgresStatus {
    /// `host:port/database`.
    pub server: String,
    /// The orders table.
    pub table: String,
    /// Rows in the table.
    pub rows: i64,
    /// Rows with created_at in the last minute.
    pub inserted_last_minute: i64,
    /// The same per second.
    pub insert_rate_per_second: f64,
    /// The newest created_at.
    pub newest_created_at: Option<String>,
}

/// One partition of the topic.
#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    /// Partition id.
    pub partition: i32,
    /// Messages in it (end offset minus start offset).
    pub messages: i64,
    /// End offset.
    pub end_offset: i64,
    /// Offset committed by the consumer group, if any.
    pub committed: Option<i64>,
    /// End offset minus the committed offset.
    pub lag: Option<i64>,
    /// Seconds since the consumer last committed this partition to the lake (its checkpoint
    /// state's age), `None` before its first commit.
    pub seconds_since_commit: Option<f64>,
    /// Messages wait (lag) and nothing was committed for the stall window: no live member is
    /// reading the partition (none holds it, or the one that does is stuck).
    pub unread: bool,
}

/// The broker.
#[derive(Debug, Serialize)]
pub struct KafkaStatus {
    /// Bootstrap servers.
    pub brokers: String,
    /// The orders topic.
    pub topic: String,
    /// Messages in the topic.
    pub messages: i64,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// The consumer group.
    pub group_id: String,
    /// Messages the group has not committed yet.
    pub group_lag: i64,
    /// How long a partition with lag may go without a commit before it counts as unread: the
    /// consumer's stall window (twice `session.timeout.ms`, at least 10 s).
    pub stall_window_seconds: f64,
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Messages in it (`None` if it does not exist).
    pub dlq_messages: Option<i64>,
}

/// The consumer, from its checkpoint.
#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    /// The checkpoint folder.
    pub checkpoint: String,
    /// Rows committed to the lake.
    pub rows_written: u64,
    /// Rejected messages by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Rejected messages in all.
    pub rejected_total: u64,
    /// Tombstones skipped.
    pub tombstones: u64,
    /// Replays dropped.
    pub duplicates: u64,
    /// Batches committed.
    pub batches: u64,
    /// Whether a consumer runs on this checkpoint (holds a partition lock).
    pub running: bool,
    /// The processes holding partition locks.
    pub pids: Vec<u32>,
    /// Rows per second over the last minute (from the lake files' times).
    pub rate_per_second: f64,
    /// Rejects no dead letter could carry, written under `<checkpoint>/quarantine`.
    pub quarantined: u64,
}

/// One date partition of the lake.
#[derive(Debug, Serialize)]
pub struct DateStatus {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Parquet files.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
}

/// The lake.
#[derive(Debug, Serialize)]
pub struct LakeStatus {
    /// The lake root.
    pub path: String,
    /// Parquet files.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Per date partition.
    pub partitions: Vec<DateStatus>,
    /// Seconds since the newest file was written (a Delta table: since the last commit).
    pub newest_file_age_seconds: Option<f64>,
    /// A Delta table's version (`None` for a Parquet lake, or a table not created yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// A Delta table's commits in the last minute.
    pub commits_last_minute: u64,
    /// A Delta table's compaction, vacuum, log checkpoint and current table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<TableMaintenance>,
}

/// A Delta table's upkeep, as its log tells it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableMaintenance {
    /// Files below half of `datalake.target_file_size`, over all date partitions.
    pub small_files: u64,
    /// The most small files of one date partition: the consumer compacts it when this exceeds
    /// `datalake.compact_min_files`.
    pub most_small_files_in_a_date: u64,
    /// The last compaction among the recent commits.
    pub last_compaction: Option<CompactionStatus>,
    /// Seconds since the last vacuum that deleted files, among the recent commits.
    pub last_vacuum_age_seconds: Option<f64>,
    /// The version of the newest log checkpoint.
    pub checkpoint_version: Option<i64>,
    /// `datalake.current_path`: the current-state table.
    pub current: Option<CurrentStatus>,
}

/// One compaction, from its commit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactionStatus {
    /// Seconds ago.
    pub age_seconds: f64,
    /// The date partition.
    pub date: String,
    /// Files removed.
    pub files_in: u64,
    /// Files added.
    pub files_out: u64,
    /// Bytes removed.
    pub bytes_in: u64,
    /// Bytes added.
    pub bytes_out: u64,
}

/// The current-state table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CurrentStatus {
    /// Its URL.
    pub path: String,
    /// Its version (`None`: not created yet).
    pub version: Option<i64>,
    /// Messages of the change table not yet applied to it, over all partitions.
    pub lag_messages: i64,
}

/// Reads every part, side by side, each within [`PART_TIMEOUT`].
pub async fn status(cfg: &Config) -> Status {
    let kafka_cfg = cfg.kafka.clone();
    let kafka = blocking(move || kafka_status(&kafka_cfg), "Kafka", &cfg.kafka.brokers);
    let files_cfg = cfg.clone();
    let lake_path = cfg.datalake.path.display().to_string();
    let files = blocking(
        move || {
            let lake = lake(&files_cfg.datalake.path);
            let consumer = consumer(&files_cfg, lake.as_ref().ok());
            Ok((lake, consumer))
        },
        "lake and checkpoint",
        &lake_path,
    );
    if cfg.datalake.format == LakeFormat::Delta {
        // The table's log is the consumer's checkpoint; the group's members say who runs.
        let table = async {
            match tokio::time::timeout(PART_TIMEOUT, delta::read(cfg)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Storage(format!(
                    "Delta table {}: no answer within {:.1} s",
                    cfg.datalake.location,
                    PART_TIMEOUT.as_secs_f64()
                ))),
            }
        };
        let group_cfg = cfg.kafka.clone();
        let members = blocking(move || delta::group_members(&group_cfg), "Kafka", &cfg.kafka.brokers);
        let ((postgres, producer, slot), kafka, table, members) =
            tokio::join!(database_parts(cfg), kafka, table, members);
        let (lake, consumer) = match table {
            Ok((lake, mut consumer)) => {
                consumer.running = members.as_ref().is_ok_and(|m| *m > 0);
                (Ok::<_, Error>(lake).into(), consumer_part(Ok(consumer)))
            }
            Err(e) => (Part::down(e.to_string()), Part::down(e.to_string())),
        };
        return Status { postgres, producer, slot, kafka: kafka.into(), consumer, lake };
    }
    let ((postgres, producer, slot), kafka, files) = tokio::join!(database_parts(cfg), kafka, files);
    let kafka = kafka.map(|mut k| {
        mark_unread(&mut k, &cfg.streaming.checkpoint_location);
        k
    });
    let (lake, consumer) = match files {
        Ok((lake, consumer)) => (lake.map(|(status, _)| status).into(), consumer_part(consumer)),
        Err(e) => (Part::down(e.to_string()), Part::down(e.to_string())),
    };
    Status { postgres, producer, slot, kafka: kafka.into(), consumer, lake }
}

/// Runs blocking reads on a thread, given up after [`PART_TIMEOUT`] (the thread is left to
/// finish on its own).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    what: &str,
    at: &str,
) -> Result<T, Error> {
    match tokio::time::timeout(PART_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Error::Internal(format!("{what}: status task failed: {e}"))),
        Err(_) => {
            Err(Error::Storage(format!("{what} {at}: no answer within {:.1} s", PART_TIMEOUT.as_secs_f64())))
        }
    }
}

/// The consumer part: read, and running only if a process holds a partition lock.
fn consumer_part(read: Result<ConsumerStatus, Error>) -> Part<ConsumerStatus> {
    match read {
        Ok(c) if !c.running => {
            let why = if c.checkpoint.contains("://") {
                format!("not running: the consumer group has no member ({})", c.checkpoint)
            } else {
                format!("not running: no process holds a partition lock in {}/state", c.checkpoint)
            };
            Part::failing(c, why)
        }
        other => other.into(),
    }
}

/// What [`database_parts`] returns: PostgreSQL, the producer, the slot (logical capture).
type DatabaseParts = (Part<PostgresStatus>, Part<ProducerStatus>, Option<Part<SlotStatus>>);

/// PostgreSQL, the producer (its state file, and whether it runs) and the slot, on one
/// connection, within [`PART_TIMEOUT`].
async fn database_parts(cfg: &Config) -> DatabaseParts {
    let reading = async {
        let client = crate::db::connect(&cfg.postgres).await?;
        let postgres = postgres(cfg, &client).await;
        // The orders behind the watermark only when the table could be read.
        let table = postgres.is_ok().then_some(&client);
        let mut producer = producer::read(cfg, table).await;
        if let Ok(p) = &mut producer {
            p.running = Some(running::producer(cfg, &client).await?.is_some());
        }
        let slot = match cfg.postgres.capture {
            Capture::Poll => None,
            Capture::Logical => Some(slot::read(&client, &cfg.postgres.slot).await.into()),
        };
        Ok::<_, Error>((postgres.into(), producer, slot))
    };
    let failed = match tokio::time::timeout(PART_TIMEOUT, reading).await {
        Ok(Ok((postgres, producer, slot))) => return (postgres, producer_part(cfg, producer).await, slot),
        Ok(Err(e)) => e,
        Err(_) => Error::Postgres(format!(
            "{}: no answer within {:.1} s",
            crate::db::describe(&cfg.postgres),
            PART_TIMEOUT.as_secs_f64()
        )),
    };
    let text = failed.to_string();
    let slot = matches!(cfg.postgres.capture, Capture::Logical).then(|| Part::down(text.clone()));
    (Part::down(text), producer_part(cfg, Err(failed)).await, slot)
}

/// The producer part: its state file (read again without PostgreSQL when that failed), and
/// running only if its writer lock is held.
async fn producer_part(cfg: &Config, read: Result<ProducerStatus, Error>) -> Part<ProducerStatus> {
    let read = match read {
        Err(Error::Postgres(why)) => match producer::read(cfg, None).await {
            Ok(p) => return Part::failing(p, format!("cannot tell whether it runs: PostgreSQL: {why}")),
            Err(e) => Err(e),
        },
        other => other,
    };
    match read {
        Ok(p) if p.running == Some(false) => {
            let why = format!(
                "not running: no session holds its writer lock {} in PostgreSQL",
                running::producer_lock(cfg)
            );
            Part::failing(p, why)
        }
        other => other.into(),
    }
}

impl Status {
    /// The names of the parts that did not answer (or do not run); the parts say why.
    pub fn failures(&self) -> Vec<&'static str> {
        let slot = self.slot.as_ref().is_none_or(|s| s.ok);
        [
            ("postgres", self.postgres.ok),
            ("producer", self.producer.ok),
            ("slot", slot),
            ("kafka", self.kafka.ok),
            ("consumer", self.consumer.ok),
            ("lake", self.lake.ok),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect()
    }
}

async fn postgres(cfg: &Config, client: &tokio_postgres::Client) -> Result<PostgresStatus, Error> {
    let t = cfg.postgres.table.quoted();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE created_at > (now() AT TIME ZONE 'UTC') - interval '1 minute' \
                 AND isfinite(created_at)), \
                 max(created_at) FILTER (WHERE isfinite(created_at)) FROM {t}"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::Postgres(format!("table {}: {}", cfg.postgres.table, crate::db::error_text(&e))))?;
    let unreadable = |e: tokio_postgres::Error| {
        Error::Postgres(format!("table {}: {}", cfg.postgres.table, crate::db::error_text(&e)))
    };
    let last_minute: i64 = row.try_get(1).map_err(unreadable)?;
    Ok(PostgresStatus {
        server: crate::db::describe(&cfg.postgres),
        table: cfg.postgres.table.to_string(),
        rows: row.try_get(0).map_err(unreadable)?,
        inserted_last_minute: last_minute,
        insert_rate_per_second: last_minute as f64 / 60.0,
        // `infinity` rows are left out: no date to show (and none chrono can hold).
        newest_created_at: row
            .try_get::<_, Option<chrono::NaiveDateTime>>(2)
            .map_err(unreadable)?
            .map(|t| format_ts(&t)),
    })
}

fn consumer(cfg: &Config, lake: Option<&(LakeStatus, Vec<LakeFile>)>) -> Result<ConsumerStatus, Error> {
    let states = checkpoint::committed_states(&cfg.streaming.checkpoint_location, &cfg.kafka.topic)?;
    let pids = running::consumer(&cfg.streaming.checkpoint_location, &cfg.kafka.topic)?;
    let mut rejected = BTreeMap::new();
    for s in &states {
        for (reason, n) in &s.rejected {
            *rejected.entry(reason.clone()).or_insert(0) += n;
        }
    }
    let minute_ago = SystemTime::now() - Duration::from_secs(60);
    let recent: u64 = lake
        .map(|(_, files)| files.iter().filter(|f| f.modified > minute_ago).map(|f| f.rows).sum())
        .unwrap_or(0);
    Ok(ConsumerStatus {
        checkpoint: cfg.streaming.checkpoint_location.display().to_string(),
        rows_written: states.iter().map(|s| s.rows_written).sum(),
        rejected_total: rejected.values().sum(),
        rejected,
        tombstones: states.iter().map(|s| s.tombstones).sum(),
        duplicates: states.iter().map(|s| s.duplicates).sum(),
        batches: states.iter().map(|s| s.batches).sum(),
        running: !pids.is_empty(),
        pids: pids.into_iter().collect(),
        rate_per_second: recent as f64 / 60.0,
        quarantined: std::fs::read_dir(cfg.streaming.checkpoint_location.join("quarantine"))
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count() as u64
            })
            .unwrap_or(0),
    })
}

/// A committed lake file.
#[derive(Debug, Clone)]
pub struct LakeFile {
    /// Rows in it.
    pub rows: u64,
    /// When it was written.
    pub modified: SystemTime,
}

/// Rows in a Parquet file, from its footer.
fn row_count(path: &Path) -> Result<u64, Error> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: String| Error::Storage(format!("lake file {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

fn lake(root: &Path) -> Result<(LakeStatus, Vec<LakeFile>), Error> {
    let io = |p: &Path, e: std::io::Error| Error::Storage(format!("lake {}: {e}", p.display()));
    let mut partitions = Vec::new();
    let mut files = Vec::new();
    // No folder yet: nothing was written (status does not create it).
    let listing = match std::fs::read_dir(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        other => Some(other.map_err(|e| io(root, e))?),
    };
    let mut dirs: Vec<_> = listing.into_iter().flatten().filter_map(|e| e.ok()).collect();
    dirs.sort_by_key(|e| e.file_name());
    for dir in dirs {
        let name = dir.file_name().to_string_lossy().into_owned();
        let Some(date) = name.strip_prefix("date=") else { continue };
        let mut part = DateStatus { date: date.to_string(), files: 0, rows: 0 };
        for f in std::fs::read_dir(dir.path()).map_err(|e| io(&dir.path(), e))?.filter_map(|e| e.ok()) {
            let fname = f.file_name().to_string_lossy().into_owned();
            if !fname.ends_with(".parquet") || fname.starts_with(['.', '_']) {
                continue;
            }
            let path = f.path();
            let rows = row_count(&path)?;
            let modified = f.metadata().and_then(|m| m.modified()).map_err(|e| io(&path, e))?;
            part.files += 1;
            part.rows += rows;
            files.push(LakeFile { rows, modified });
        }
        partitions.push(part);
    }
    let newest = files.iter().map(|f| f.modified).max();
    let status = LakeStatus {
        path: root.display().to_string(),
        files: files.len() as u64,
        rows: files.iter().map(|f| f.rows).sum(),
        partitions,
        newest_file_age_seconds: newest.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
        version: None,
        commits_last_minute: 0,
        maintenance: None,
    };
    Ok((status, files))
}

#[cfg(test)]
mod tests;
