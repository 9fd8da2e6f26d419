//! `orderstream status`: the seed's monitoring points on one screen, read from the live systems
//! (PostgreSQL, the producer's state file, the broker, the consumer's checkpoint, the lake).
//! It works whether or not the pipeline runs; a part it cannot reach says so and the rest is
//! still shown. `--json` prints the same as one object. With logical capture a sixth part, the
//! replication slot ([`crate::source::slot`]), sits between the producer and the broker.

mod producer;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::config::{Capture, Config};
use crate::error::Error;
use crate::kafka;
use crate::sink::{Manifest, PartitionState};
use crate::source::poll::format_ts;
use crate::source::slot::{self, SlotStatus};
pub use producer::{CaptureStatus, LogicalStatus, PollStatus, ProducerStatus, SnapshotStatus};

/// Each part of the status, or why it could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Part<T> {
    /// What was read.
    Ok(T),
    /// Why it could not be read.
    Unreachable {
        /// One line.
        error: String,
    },
}

impl<T> From<Result<T, Error>> for Part<T> {
    fn from(r: Result<T, Error>) -> Part<T> {
        match r {
            Ok(v) => Part::Ok(v),
            Err(e) => Part::Unreachable { error: e.to_string() },
        }
    }
}

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
    /// Seconds since the newest file was written.
    pub newest_file_age_seconds: Option<f64>,
}

/// Reads every part.
pub async fn status(cfg: &Config) -> Status {
    let client = connect(cfg).await;
    let postgres = match &client {
        Ok(c) => postgres(cfg, c).await.into(),
        Err(e) => Part::Unreachable { error: e.clone() },
    };
    // The orders behind the watermark only when the table could be read.
    let table = client.as_ref().ok().filter(|_| matches!(postgres, Part::Ok(_)));
    let producer = producer::read(cfg, table).await.into();
    let slot = match (cfg.postgres.capture, &client) {
        (Capture::Poll, _) => None,
        (Capture::Logical, Ok(c)) => Some(slot::read(c, &cfg.postgres.slot).await.into()),
        (Capture::Logical, Err(e)) => Some(Part::Unreachable { error: e.clone() }),
    };
    let kafka_cfg = cfg.kafka.clone();
    let kafka = tokio::task::spawn_blocking(move || kafka_status(&kafka_cfg))
        .await
        .unwrap_or_else(|e| Err(Error::Kafka(format!("status task failed: {e}"))))
        .into();
    let mut kafka = kafka;
    if let Part::Ok(k) = &mut kafka {
        mark_unread(k, &cfg.streaming.checkpoint_location);
    }
    let lake = lake(&cfg.datalake.path);
    let consumer = consumer(cfg, lake.as_ref().ok()).into();
    Status { postgres, producer, slot, kafka, consumer, lake: lake.map(|(status, _)| status).into() }
}

/// One connection for every part that reads PostgreSQL; the error as the parts show it.
async fn connect(cfg: &Config) -> Result<tokio_postgres::Client, String> {
    let connecting = tokio::time::timeout(Duration::from_secs(5), crate::db::connect(&cfg.postgres));
    match connecting.await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            Err(Error::Postgres(format!("{}: no answer within 5 s", crate::db::describe(&cfg.postgres)))
                .to_string())
        }
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

fn kafka_status(cfg: &crate::config::KafkaConfig) -> Result<KafkaStatus, Error> {
    let timeout = Duration::from_secs(5);
    let consumer: BaseConsumer = kafka::Client::Status
        .config(cfg)
        .create()
        .map_err(|e| Error::Kafka(format!("{}: {e}", cfg.brokers)))?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| Error::Kafka(format!("broker {} unreachable: {e}", cfg.brokers)))?;
    let ids = |name: &str| -> Option<Vec<i32>> {
        md.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().iter().map(|p| p.id()).collect())
    };
    let out: Vec<PartitionStatus> = kafka::partition_progress(&consumer, &cfg.brokers, &cfg.topic, timeout)?
        .into_iter()
        .map(|p| PartitionStatus {
            partition: p.partition,
            messages: p.high - p.low,
            end_offset: p.high,
            committed: p.committed,
            lag: Some(p.lag()),
            seconds_since_commit: None,
            unread: false,
        })
        .collect();
    let dlq_messages = match ids(&cfg.dlq_topic) {
        None => None,
        Some(ps) => Some(ps.iter().try_fold(0i64, |sum, p| {
            consumer
                .fetch_watermarks(&cfg.dlq_topic, *p, timeout)
                .map(|(l, h)| sum + h - l)
                .map_err(|e| Error::Kafka(format!("{}/{p}: {e}", cfg.dlq_topic)))
        })?),
    };
    Ok(KafkaStatus {
        brokers: cfg.brokers.clone(),
        topic: cfg.topic.clone(),
        messages: out.iter().map(|p| p.messages).sum(),
        group_id: cfg.group_id.clone(),
        group_lag: out.iter().filter_map(|p| p.lag).sum(),
        stall_window_seconds: crate::sink::stall_window(cfg).as_secs_f64(),
        partitions: out,
        dlq_topic: cfg.dlq_topic.clone(),
        dlq_messages,
    })
}

/// Dates each partition's last commit (its checkpoint state file's age), and marks those with
/// lag that nobody committed for the stall window: the same rule as the consumer's group
/// watch, which also turns `/health` to 503 then, read from outside (so it holds when no
/// consumer runs at all).
fn mark_unread(k: &mut KafkaStatus, checkpoint: &Path) {
    let window = k.stall_window_seconds;
    for p in &mut k.partitions {
        let state = checkpoint.join("state").join(format!("{}-{}.json", k.topic, p.partition));
        p.seconds_since_commit = std::fs::metadata(&state)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs_f64());
        p.unread = p.lag.unwrap_or(0) > 0 && p.seconds_since_commit.is_none_or(|s| s >= window);
    }
}

/// The committed state of every partition of `topic`: the state files, or a committed manifest
/// not yet applied to them (a consumer died between the two), whichever is further.
fn committed_states(checkpoint: &Path, topic: &str) -> Result<Vec<PartitionState>, Error> {
    let mut best: BTreeMap<i32, PartitionState> = BTreeMap::new();
    let mut consider = |s: PartitionState| {
        if s.topic == topic && best.get(&s.partition).is_none_or(|b| b.next_offset < s.next_offset) {
            best.insert(s.partition, s);
        }
    };
    for (dir, is_manifest) in [("state", false), ("commits", true)] {
        let dir = checkpoint.join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Storage(format!("checkpoint {}: {e}", dir.display()))),
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bad = |e: String| Error::Storage(format!("checkpoint {}: {e}", path.display()));
            let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            if is_manifest {
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                m.partitions.into_iter().for_each(&mut consider);
            } else {
                consider(serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?);
            }
        }
    }
    Ok(best.into_values().collect())
}

fn consumer(cfg: &Config, lake: Option<&(LakeStatus, Vec<LakeFile>)>) -> Result<ConsumerStatus, Error> {
    let states = committed_states(&cfg.streaming.checkpoint_location, &cfg.kafka.topic)?;
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
    };
    Ok((status, files))
}

impl Status {
    /// The one-screen text form.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let unreachable = |o: &mut String, title: &str, e: &str| {
            let _ = writeln!(o, "{title:<11} UNREACHABLE: {e}");
        };
        match &self.postgres {
            Part::Ok(p) => {
                let _ = writeln!(o, "{:<11} {} table {}", "PostgreSQL", p.server, p.table);
                let _ = writeln!(
                    o,
                    "{:<11} rows {}   inserted last minute {} ({:.1}/s)   newest created_at {}",
                    "",
                    p.rows,
                    p.inserted_last_minute,
                    p.insert_rate_per_second,
                    p.newest_created_at.as_deref().unwrap_or("-")
                );
            }
            Part::Unreachable { error } => unreachable(&mut o, "PostgreSQL", error),
        }
        match &self.producer {
            Part::Ok(p) => {
                let _ = write!(o, "{p}");
            }
            Part::Unreachable { error } => unreachable(&mut o, "Producer", error),
        }
        match &self.slot {
            None => {}
            Some(Part::Ok(s)) => {
                let _ = write!(o, "{s}");
            }
            Some(Part::Unreachable { error }) => unreachable(&mut o, "Slot", error),
        }
        match &self.kafka {
            Part::Ok(k) => {
                let _ =
                    writeln!(o, "{:<11} {} topic {} ({} messages)", "Kafka", k.brokers, k.topic, k.messages);
                for p in &k.partitions {
                    let committed = p.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                    let _ = writeln!(
                        o,
                        "{:<11} partition {}: {} messages, end {}, committed {committed}, lag {}",
                        "",
                        p.partition,
                        p.messages,
                        p.end_offset,
                        p.lag.unwrap_or(0)
                    );
                }
                let unread: Vec<&PartitionStatus> = k.partitions.iter().filter(|p| p.unread).collect();
                if !unread.is_empty() {
                    let since = unread
                        .iter()
                        .map(|p| p.seconds_since_commit)
                        .min_by(|a, b| a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY)));
                    let _ = writeln!(
                        o,
                        "{:<11} UNREAD: partitions {} hold {} messages and nothing was committed {}: no live \
                         member of group {} is reading them",
                        "",
                        unread.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>().join(" "),
                        unread.iter().filter_map(|p| p.lag).sum::<i64>(),
                        match since.flatten() {
                            Some(s) => format!("for {s:.0} s"),
                            None => "yet".to_string(),
                        },
                        k.group_id
                    );
                }
                let dlq = k.dlq_messages.map(|n| n.to_string()).unwrap_or_else(|| "no topic".into());
                let _ = writeln!(
                    o,
                    "{:<11} group {} lag {}   dead letters ({}) {dlq}",
                    "", k.group_id, k.group_lag, k.dlq_topic
                );
            }
            Part::Unreachable { error } => unreachable(&mut o, "Kafka", error),
        }
        match &self.consumer {
            Part::Ok(c) => {
                let _ = writeln!(o, "{:<11} checkpoint {}", "Consumer", c.checkpoint);
                let reasons: Vec<String> =
                    c.rejected.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
                let _ = writeln!(
                    o,
                    "{:<11} rows written {}   rate {:.1}/s   rejected {}{}   tombstones {}   replays dropped {}",
                    "",
                    c.rows_written,
                    c.rate_per_second,
                    c.rejected_total,
                    if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
                    c.tombstones,
                    c.duplicates
                );
                if c.quarantined > 0 {
                    let _ = writeln!(
                        o,
                        "{:<11} quarantined {} (rejects no dead letter could carry: {}/quarantine)",
                        "", c.quarantined, c.checkpoint
                    );
                }
            }
            Part::Unreachable { error } => unreachable(&mut o, "Consumer", error),
        }
        match &self.lake {
            Part::Ok(l) => {
                let age =
                    l.newest_file_age_seconds.map(|a| format!("{a:.0} s ago")).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    o,
                    "{:<11} {} ({} files, {} rows, newest file {age})",
                    "Lake", l.path, l.files, l.rows
                );
                for p in &l.partitions {
                    let _ = writeln!(o, "{:<11} date={}  {} files  {} rows", "", p.date, p.files, p.rows);
                }
            }
            Part::Unreachable { error } => unreachable(&mut o, "Lake", error),
        }
        o
    }
}

#[cfg(test)]
mod tests;
