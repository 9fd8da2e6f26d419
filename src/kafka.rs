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

/// Settings of the orders producer. Idempotence keeps every partition in publish order without
/// duplicates; the gapless guarantee turns any failure that could leave a hole into a fatal
/// error (the producer then starts over from what the topic holds); messages never time out
/// locally, so a broker outage only delays them.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        // The Java client's partitioner: one order id, one partition, whoever produces it.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000");
    c
}

/// Settings of a consumer that reads partitions directly (no group), e.g. to recover what a
/// crashed producer already published.
pub fn reader_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("group.id", "orderstream-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("auto.offset.reset", "earliest");
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
