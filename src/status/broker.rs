//! The Kafka part of `status`: the topic's partitions, the group's committed offsets and lag,
//! the dead-letter topic, and partitions nobody reads.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::*;
use crate::kafka;

/// The topic, the group and the dead-letter topic, read from the broker.
pub(super) fn kafka_status(cfg: &crate::config::KafkaConfig) -> Result<KafkaStatus, Error> {
    // Below the part's deadline, so a broker that refuses is reported as such.
    let timeout = PART_TIMEOUT - Duration::from_millis(300);
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
pub(super) fn mark_unread(k: &mut KafkaStatus, checkpoint: &Path) {
    let window = k.stall_window_seconds;
    for p in &mut k.partitions {
        let state = checkpoint::state_file(checkpoint, &k.topic, p.partition);
        p.seconds_since_commit = std::fs::metadata(&state)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs_f64());
        p.unread = p.lag.unwrap_or(0) > 0 && p.seconds_since_commit.is_none_or(|s| s >= window);
    }
}
