//! Kafka clients built from the configuration (rdkafka with its bundled librdkafka), and the
//! topic bootstrap of `init`. Only the standard Kafka protocol is used, so the same binary runs
//! against Apache Kafka, Redpanda, MSK or the local tansu broker.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// How long a metadata or admin request may take before the broker counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by every client: the brokers and the user's `kafka.properties`.
pub fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("client.id", "orderstream");
    // Resolve "localhost" to the address the broker actually listens on, not ::1 first.
    c.set("broker.address.family", "any");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// An admin client.
pub fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    base_config(cfg)
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
