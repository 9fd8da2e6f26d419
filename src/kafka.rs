//! Kafka clients built from the configuration (rdkafka with its bundled librdkafka), and the
//! topic bootstrap of `init`. Only the standard Kafka protocol is used, so the same binary runs
//! against Apache Kafka, Redpanda, MSK or the local tansu broker.
//!
//! Which settings each client gets is configuration: [`crate::config::clients`].

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

pub use crate::config::KafkaConfig;
pub use crate::config::clients::{
    COMMON_DEFAULTS, Client, REFUSED, canonical, check_clients, refusal, spellings,
};
use crate::error::{Error, Result};

/// How long a metadata or admin request may take before the broker counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin client.
pub fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    Client::Admin
        .config(cfg)
        .create()
        .map_err(|e| Error::Kafka(format!("cannot create admin client for {}: {e}", cfg.brokers)))
}

/// What `ensure_topic` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was created with this many partitions.
    Created(i32),
    /// The topic was there already, with this many partitions.
    Existed(i32),
}

/// The topic's partition count, or `None` if the broker does not have it.
pub fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topic: &str,
) -> Result<Option<i32>> {
    // Metadata for all topics: asking for one by name may auto-create it on some brokers.
    let md = admin
        .inner()
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| Error::Kafka(format!("broker {brokers} unreachable: {e}")))?;
    Ok(md.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len() as i32))
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(cfg: &KafkaConfig, topic: &str, partitions: i32) -> Result<TopicOutcome> {
    let admin = admin(cfg)?;
    if let Some(n) = partition_count(&admin, &cfg.brokers, topic)? {
        return Ok(TopicOutcome::Existed(n));
    }
    // Replication -1 = the broker's default.replication.factor (KIP-464).
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| Error::Kafka(format!("cannot create topic {topic}: {e}")))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let n = partition_count(&admin, &cfg.brokers, topic)?.unwrap_or(partitions);
                return Ok(TopicOutcome::Existed(n));
            }
            Err((name, code)) => {
                return Err(Error::Kafka(format!("cannot create topic {name}: {code}")));
            }
        }
    }
    Ok(TopicOutcome::Created(partitions))
}

/// One partition of a topic as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition's number.
    pub partition: i32,
    /// The first offset the broker still has.
    pub low: i64,
    /// The reported end.
    pub high: i64,
    /// The offset the client's group committed, if any.
    pub committed: Option<i64>,
}

impl PartitionProgress {
    /// Messages beyond the committed offset (all of them when the group committed none).
    pub fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low)).max(0)
    }
}

/// Every partition of `topic` with its offsets and the committed offset of `client`'s group
/// (`None` for all when the group's offsets cannot be read). An error when the broker does not
/// answer or the topic does not exist.
pub fn partition_progress(
    client: &rdkafka::consumer::BaseConsumer,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionProgress>> {
    use rdkafka::consumer::Consumer;
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::Kafka(format!("broker {brokers} unreachable: {e}")))?;
    let ids: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(Error::Kafka(format!("topic {topic} does not exist (run `orderstream init`)")));
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &ids {
        tpl.add_partition(topic, *p);
    }
    let committed = client.committed_offsets(tpl, timeout).ok();
    ids.into_iter()
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| Error::Kafka(format!("{topic}/{p}: {e}")))?;
            let committed =
                committed.as_ref().and_then(|c| c.find_partition(topic, p)).and_then(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(o),
                    _ => None,
                });
            Ok(PartitionProgress { partition: p, low, high, committed })
        })
        .collect()
}
