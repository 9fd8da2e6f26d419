//! `status` of a Delta lake: the table's version, files and rows per date partition, the last
//! commit's age and the commit rate, and the consumer's counters, all from the table's log
//! (a Delta consumer keeps no checkpoint folder of its own).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deltalake::DeltaTableBuilder;
use futures_util::TryStreamExt;

use super::{ConsumerStatus, DateStatus, LakeFile, LakeStatus};
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
pub async fn read(cfg: &Config) -> Result<(LakeStatus, ConsumerStatus), Error> {
    let location = &cfg.datalake.location;
    let bad = |e: deltalake::DeltaTableError| Error::Storage(format!("Delta table {location}: {e}"));
    let url = deltalake::ensure_table_uri(location).map_err(bad)?;
    let options: HashMap<String, String> =
        cfg.datalake.storage_options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut table = DeltaTableBuilder::from_url(url)
        .and_then(|b| b.with_storage_options(options).build())
        .map_err(bad)?;
    let mut lake = LakeStatus {
        path: location.clone(),
        files: 0,
        rows: 0,
        partitions: Vec::new(),
        newest_file_age_seconds: None,
        version: None,
        commits_last_minute: 0,
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
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    consumer.rate_per_second =
        files.iter().filter(|f| f.modified > minute_ago).map(|f| f.rows).sum::<u64>() as f64 / 60.0;
    Ok((lake, consumer))
}
