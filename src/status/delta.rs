//! `status` of a Delta lake: the table's version, files and rows per date partition, the last
//! commit's age and the commit rate, and the consumer's counters, all from the table's log
//! (a Delta consumer keeps no checkpoint folder of its own).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::sink::delta::unloaded;
use futures_util::TryStreamExt;

use super::{
    CompactionStatus, ConsumerStatus, CurrentStatus, DateStatus, LakeFile, LakeStatus, TableMaintenance,
};
use crate::config::Config;
use crate::error::Error;
use crate::sink::PartitionState;

/// How many recent commits are read for the counters and the commit rate.
const RECENT_COMMITS: usize = 500;

/// The members of the consumer group (a Delta consumer holds no local lock that would say it
/// runs; any machine may run one).
pub fn group_members(cfg: &crate::config::KafkaConfig) -> Result<usize, Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = crate::kafka::Client::Status
        .config(cfg)
        .create()
        .map_err(|e| Error::Kafka(format!("{}: {e}", cfg.brokers)))?;
    let groups = consumer
        .fetch_group_list(Some(&cfg.group_id), super::PART_TIMEOUT - Duration::from_millis(300))
        .map_err(|e| {
            Error::Kafka(format!("broker {}: cannot describe group {}: {e}", cfg.brokers, cfg.group_id))
        })?;
    Ok(groups.groups().iter().filter(|g| g.name() == cfg.group_id).map(|g| g.members().len()).sum())
}

/// The lake and the consumer, read from the table's log. A table not created yet shows as
/// empty.
// Over 80 lines on purpose: one pass over the log's recent commits fills every figure.
pub async fn read(cfg: &Config) -> Result<(LakeStatus, ConsumerStatus), Error> {
    let location = &cfg.datalake.location;
    let bad = |e: deltalake::DeltaTableError| Error::Storage(format!("Delta table {location}: {e}"));
    let mut table = unloaded(location, &cfg.datalake.storage_options).map_err(bad)?;
    let mut lake = LakeStatus {
        path: location.clone(),
        files: 0,
        rows: 0,
        partitions: Vec::new(),
        newest_file_age_seconds: None,
        version: None,
        commits_last_minute: 0,
        maintenance: None,
    };
    let mut consumer = ConsumerStatus {
        checkpoint: format!("{location} (the table's log)"),
        rows_written: 0,
        rejected: BTreeMap::new(),
        rejected_total: 0,
        tombstones: 0,
        duplicates: 0,
        batches: 0,
        running: false,
        pids: Vec::new(),
        rate_per_second: 0.0,
        quarantined: 0,
    };
    match table.load().await {
        Ok(()) => {}
        Err(deltalake::DeltaTableError::NotATable(_)) => return Ok((lake, consumer)),
        Err(e) => return Err(bad(e)),
    }
    let snapshot = table.snapshot().map_err(bad)?;
    lake.version = table.version().map(|v| v as i64);
    let mut dates: BTreeMap<String, DateStatus> = BTreeMap::new();
    let mut files = Vec::new();
    for f in snapshot.log_data().iter() {
        let date = f.partition_values_map().remove("date").flatten().unwrap_or_default();
        let rows = f
            .stats()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["numRecords"].as_u64())
            .unwrap_or(0);
        let d = dates.entry(date.clone()).or_insert(DateStatus { date, files: 0, rows: 0 });
        d.files += 1;
        d.rows += rows;
        let modified = std::time::UNIX_EPOCH + Duration::from_millis(f.modification_time().max(0) as u64);
        files.push(LakeFile { rows, modified });
    }
    lake.files = files.len() as u64;
    lake.rows = files.iter().map(|f| f.rows).sum();
    lake.partitions = dates.into_values().collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let infos: Vec<_> = table.history(Some(RECENT_COMMITS)).try_collect().await.map_err(bad)?;
    let newest = infos.iter().filter_map(|i| i.timestamp).max();
    lake.newest_file_age_seconds = newest.map(|t| (now_ms - t).max(0) as f64 / 1000.0);
    lake.commits_last_minute =
        infos.iter().filter(|i| i.timestamp.is_some_and(|t| now_ms - t <= 60_000)).count() as u64;
    // The newest state of each partition (commit infos come newest first).
    let mut states: BTreeMap<i32, PartitionState> = BTreeMap::new();
    for info in &infos {
        let Some(note) = info.info.get("orderstream").and_then(|v| v.get("partitions")) else { continue };
        let Ok(list) = serde_json::from_value::<Vec<PartitionState>>(note.clone()) else { continue };
        for s in list.into_iter().filter(|s| s.topic == cfg.kafka.topic) {
            states.entry(s.partition).or_insert(s);
        }
    }
    for s in states.values() {
        consumer.rows_written += s.rows_written;
        consumer.tombstones += s.tombstones;
        consumer.duplicates += s.duplicates;
        consumer.batches += s.batches;
        for (reason, n) in &s.rejected {
            *consumer.rejected.entry(reason.clone()).or_insert(0) += n;
        }
    }
    consumer.rejected_total = consumer.rejected.values().sum();
    lake.maintenance = Some(maintenance(cfg, &table, &infos, &states).await?);
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    consumer.rate_per_second =
        files.iter().filter(|f| f.modified > minute_ago).map(|f| f.rows).sum::<u64>() as f64 / 60.0;
    Ok((lake, consumer))
}

/// Small files, the last compaction and vacuum among `infos` (newest first), the newest log
/// checkpoint, and the current table's version and lag behind `states`.
async fn maintenance(
    cfg: &Config,
    table: &deltalake::DeltaTable,
    infos: &[deltalake::kernel::CommitInfo],
    states: &BTreeMap<i32, PartitionState>,
) -> Result<TableMaintenance, Error> {
    let parts = crate::sink::compact::partitions(table, cfg.datalake.maintenance.target_file_size)
        .map_err(|e| Error::Storage(e.to_string()))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let age = |t: Option<i64>| t.map(|t| (now_ms - t).max(0) as f64 / 1000.0);
    let last_compaction = infos.iter().find_map(|i| {
        let c = i.info.get(crate::sink::compact::COMMIT_INFO_KEY)?;
        let n = |k: &str| c.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some(CompactionStatus {
            age_seconds: age(i.timestamp).unwrap_or(0.0),
            date: c.get("date").and_then(|d| d.as_str()).unwrap_or_default().to_string(),
            files_in: n("files_in"),
            files_out: n("files_out"),
            bytes_in: n("bytes_in"),
            bytes_out: n("bytes_out"),
        })
    });
    let last_vacuum_age_seconds =
        infos.iter().find(|i| i.operation.as_deref() == Some("VACUUM END")).and_then(|i| age(i.timestamp));
    let current = match &cfg.datalake.current_location {
        None => None,
        Some(at) => Some(current_status(cfg, at, states).await?),
    };
    Ok(TableMaintenance {
        small_files: parts.iter().map(|p| p.small as u64).sum(),
        most_small_files_in_a_date: parts.iter().map(|p| p.small as u64).max().unwrap_or(0),
        last_compaction,
        last_vacuum_age_seconds,
        checkpoint_version: crate::sink::delta::last_checkpoint(table).await,
        current,
    })
}

/// The current table's version, and the messages of the change table's partitions (`states`)
/// it has not applied.
async fn current_status(
    cfg: &Config,
    at: &str,
    states: &BTreeMap<i32, PartitionState>,
) -> Result<CurrentStatus, Error> {
    let bad = |e: deltalake::DeltaTableError| Error::Storage(format!("current table {at}: {e}"));
    let mut table = unloaded(at, &cfg.datalake.storage_options).map_err(bad)?;
    let mut status = CurrentStatus { path: at.to_string(), version: None, lag_messages: 0 };
    match table.load().await {
        Ok(()) => {}
        Err(deltalake::DeltaTableError::NotATable(_)) => {
            status.lag_messages = states.values().map(|s| s.next_offset).sum();
            return Ok(status);
        }
        Err(e) => return Err(bad(e)),
    }
    status.version = table.version().map(|v| v as i64);
    let snapshot = table.snapshot().map_err(bad)?;
    for (p, s) in states {
        let app = format!("orderstream-current/{}/{}/{p}", cfg.kafka.group_id, cfg.kafka.topic);
        let applied = snapshot.transaction_version(table.log_store().as_ref(), app).await.map_err(bad)?;
        status.lag_messages += (s.next_offset - 1 - applied.unwrap_or(-1)).max(0);
    }
    Ok(status)
}
