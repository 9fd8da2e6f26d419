//! `kafka.*`: brokers, topics, group, and the user's librdkafka properties, each checked by
//! librdkafka itself before any client connects.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_norway::Value;

use super::ConfigError;
use super::clients;
use super::raw::{Origin, number, show};
use super::secrets::is_secret;

/// `kafka.*`
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers` for every client.
    pub brokers: String,
    /// The topic the producer writes and the consumer reads.
    pub topic: String,
    /// Partitions given to the topic when `init` creates it.
    pub partitions: i32,
    /// The consumer group of `consume`.
    pub group_id: String,
    /// Where the consumer sends rejected messages.
    pub dlq_topic: String,
    /// The consumer's stable name in its group (`group.instance.id`: static membership), if set.
    pub member_name: Option<String>,
    /// The user's librdkafka settings for every client (TLS, SASL, timeouts), each under the
    /// name orderstream uses for its setting; none of them one that orderstream refuses (see
    /// [`crate::kafka`]).
    pub properties: BTreeMap<String, String>,
}

/// Default `kafka.partitions`.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// The file form of `kafka.*`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    brokers: String,
    topic: String,
    #[serde(default, deserialize_with = "number")]
    partitions: Option<i32>,
    group_id: Option<String>,
    dlq_topic: Option<String>,
    member_name: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
}

impl RawKafka {
    /// The checked section, with every client built once from it; an error names the key.
    pub(super) fn validate(self, at: &Origin) -> Result<KafkaConfig, ConfigError> {
        let brokers = self.brokers.trim().to_string();
        validate_brokers(&brokers).map_err(|m| at.bad("kafka.brokers", m))?;
        validate_topic(&self.topic).map_err(|m| at.bad("kafka.topic", m))?;
        let partitions = self.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=10_000).contains(&partitions) {
            return Err(at.bad("kafka.partitions", format!("must be between 1 and 10000, got {partitions}")));
        }
        let group_id = self.group_id.unwrap_or_else(|| format!("orderstream_{}", self.topic));
        if group_id.trim().is_empty() {
            return Err(at.bad("kafka.group_id", "must not be empty".into()));
        }
        let dlq_topic = self.dlq_topic.unwrap_or_else(|| format!("{}_dlq", self.topic));
        validate_topic(&dlq_topic).map_err(|m| at.bad("kafka.dlq_topic", m))?;
        if dlq_topic == self.topic {
            return Err(at.bad("kafka.dlq_topic", "must differ from kafka.topic".into()));
        }
        let member_name = self.member_name.map(|n| n.trim().to_string());
        if let Some(name) = &member_name {
            // The same rule as a topic name: it travels in the protocol and in logs.
            validate_topic(name)
                .map_err(|m| at.bad("kafka.member_name", m.replace("topic name", "member name")))?;
        }
        let properties = kafka_properties(&self.properties, at)?;
        let kafka = KafkaConfig {
            brokers,
            topic: self.topic,
            partitions,
            group_id,
            dlq_topic,
            member_name,
            properties,
        };
        clients::check_clients(&kafka).map_err(|why| {
            // Name the user's property that librdkafka's message mentions first, if any.
            let named = self.properties.keys().filter_map(|name| Some((mention(&why, name)?, name))).min();
            match named {
                Some((_, name)) => at.bad(&format!("kafka.properties.{name}"), why),
                None => at.bad("kafka.properties", why),
            }
        })?;
        Ok(kafka)
    }
}

/// `kafka.properties` as strings, each under the name orderstream keeps its setting under
/// ([`clients::canonical`]). A refused setting, two names of one setting, or a name or
/// value librdkafka rejects is an error naming the key.
fn kafka_properties(
    raw: &BTreeMap<String, Value>,
    at: &Origin,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut properties = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("kafka.properties.{name}");
        if let Some(why) = clients::refusal(name) {
            return Err(at.bad(&key, why));
        }
        if let Some(other) = clients::spellings(name).into_iter().find(|n| n != name && raw.contains_key(*n))
        {
            return Err(
                at.bad(&key, format!("names the same setting as kafka.properties.{other}; delete one"))
            );
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ if is_secret(&key) => {
                return Err(at.bad(&key, "expected a single value; the value is not shown".into()));
            }
            other => {
                return Err(at.bad(&key, format!("expected a single value, got `{}`", show(other))));
            }
        };
        let mut probe = rdkafka::ClientConfig::new();
        probe.set(name, &value);
        match probe.create_native_config() {
            Ok(_) => {}
            Err(rdkafka::error::KafkaError::ClientConfig(_, why, _, _)) => {
                return Err(at.bad(&key, format!("rejected by librdkafka: {why}")));
            }
            Err(e) => return Err(at.bad(&key, format!("rejected by librdkafka: {e}"))),
        }
        properties.insert(clients::canonical(name).to_string(), value);
    }
    Ok(properties)
}

/// Where `text` first names the setting `name` (under any of its names) as a whole word.
fn mention(text: &str, name: &str) -> Option<usize> {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_';
    clients::spellings(name)
        .into_iter()
        .flat_map(|n| text.match_indices(n).map(move |(at, _)| (at, n.len())))
        .filter(|&(at, len)| {
            !text[..at].ends_with(part_of_name) && !text[at + len..].starts_with(part_of_name)
        })
        .map(|(at, _)| at)
        .min()
}

/// `host:port[,host:port…]`, each with an optional protocol prefix.
fn validate_brokers(brokers: &str) -> Result<(), String> {
    if brokers.is_empty() {
        return Err("must list at least one host:port".into());
    }
    for broker in brokers.split(',') {
        let broker = broker.trim();
        let broker = broker
            .strip_prefix("PLAINTEXT://")
            .or_else(|| broker.strip_prefix("SSL://"))
            .or_else(|| broker.strip_prefix("SASL_SSL://"))
            .or_else(|| broker.strip_prefix("SASL_PLAINTEXT://"))
            .unwrap_or(broker);
        let Some((host, port)) = broker.rsplit_once(':') else {
            return Err(format!("`{broker}` is not host:port"));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("`{broker}` is not host:port"));
        }
    }
    Ok(())
}

/// Kafka's own rule for topic names.
fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a valid topic name"));
    }
    if topic.len() > 249 {
        return Err("a topic name is at most 249 characters".into());
    }
    if let Some(c) = topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("`{topic}` contains `{c}`; topic names use only a-z A-Z 0-9 . _ -"));
    }
    Ok(())
}
