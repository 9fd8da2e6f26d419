//! The Kafka side of the consumer: the group member (its settings are in `kafka.rs`), and the
//! rebalance callback that hands partitions to and from the [`Engine`] so that a partition is
//! read only under its lock and always from its checkpoint.

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::Offset;
use rdkafka::Statistics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;

use super::engine::{Acquired, Engine};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kafka;
use crate::metrics::Metrics;

/// The consumer-group member for `kafka.topic`.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// Creates the group member (not yet subscribed).
pub fn consumer(cfg: &Config, engine: Engine, metrics: Arc<Metrics>) -> Result<GroupConsumer> {
    kafka::Client::Consumer
        .config(&cfg.kafka)
        .create_with_context(GroupContext {
            engine: Mutex::new(engine),
            metrics,
            topic: cfg.kafka.topic.clone(),
            kafka: cfg.kafka.clone(),
        })
        .map_err(|e| Error::Kafka(format!("cannot create the consumer for {}: {e}", cfg.kafka.brokers)))
}

/// Holds the engine, so the rebalance callback (run inside `poll`) can commit and acquire.
pub struct GroupContext {
    engine: Mutex<Engine>,
    metrics: Arc<Metrics>,
    topic: String,
    /// For the reader that checks a checkpoint against the topic.
    kafka: crate::config::KafkaConfig,
}

impl GroupContext {
    /// The end of `topic`/`partition` as the broker serves it: read from `from` (its reported
    /// end) until the partition's end; `None` when that cannot be told within 5 s.
    fn served_end(&self, topic: &str, partition: i32, from: i64) -> Option<i64> {
        use rdkafka::message::Message;
        let reader: BaseConsumer = kafka::Client::Reader.config(&self.kafka).create().ok()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from)).ok()?;
        reader.assign(&tpl).ok()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut end = from;
        while std::time::Instant::now() < deadline {
            match reader.poll(std::time::Duration::from_millis(100)) {
                Some(Ok(m)) => end = end.max(m.offset() + 1),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Some(end),
                _ => {}
            }
        }
        None
    }

    /// The engine; never held across `poll`, which may run the rebalance callback.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding it cannot leave a half-committed batch on disk (the commit
        // point is a rename), so the state inside is still usable.
        self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's periodic statistics: messages of the assigned partitions not yet committed
    /// to the lake (end offset minus the committed offset), for the lag gauge.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let lag: i64 = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
            .map(|p| {
                let done = if p.committed_offset >= 0 { p.committed_offset } else { p.lo_offset.max(0) };
                (p.hi_offset - done).max(0)
            })
            .sum();
        self.metrics.consumer.lag_messages.set(lag);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let mut engine = self.engine();
        let listed: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let result: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = TopicPartitionList::new();
                let mut from = Vec::new();
                let mut waiting = Vec::new();
                for (topic, partition) in &listed {
                    let served_end = |from: i64| self.served_end(topic, *partition, from);
                    let acquired = engine.acquire(topic, *partition).and_then(|a| match a {
                        Acquired::From(o) => {
                            engine.check_start(consumer, topic, *partition, o, served_end).map(Acquired::From)
                        }
                        Acquired::Waiting => Ok(Acquired::Waiting),
                    });
                    match acquired {
                        Ok(Acquired::From(offset)) => {
                            let at = match offset {
                                Offset::Offset(n) => n.to_string(),
                                _ => "beginning".to_string(),
                            };
                            from.push(format!("{partition}@{at}"));
                            let _ = assigned.add_partition_offset(topic, *partition, offset);
                        }
                        // Locked by a live process: read later, when it lets go.
                        Ok(Acquired::Waiting) => waiting.push(partition.to_string()),
                        Err(e) => engine.set_fatal(e),
                    }
                }
                let waiting = if waiting.is_empty() {
                    String::new()
                } else {
                    format!("; waiting for the lock of {}", waiting.join(" "))
                };
                tracing::info!(
                    "partitions assigned: {}{waiting}",
                    if from.is_empty() { "none".into() } else { from.join(" ") }
                );
                // A member that died left its temp folder behind; its partitions may be ours now.
                engine.clean_dead();
                if cooperative { consumer.incremental_assign(&assigned) } else { consumer.assign(&assigned) }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!("rebalance error {other:?}: releasing every partition");
                }
                // The locks are still ours, so committing the in-flight batch is safe even when
                // the group already gave the partitions away (assignment lost).
                engine.commit_or_abandon(consumer);
                let incremental =
                    cooperative && other == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
                let revoked: Vec<i32> =
                    if incremental { listed.iter().map(|(_, p)| *p).collect() } else { engine.owned() };
                // Only what librdkafka reads: a partition still waiting for its lock never was.
                let mut reading = TopicPartitionList::new();
                for (topic, p) in listed.iter().filter(|(_, p)| !engine.is_waiting(*p)) {
                    let _ = reading.add_partition(topic, *p);
                }
                engine.release(&revoked);
                tracing::info!("partitions revoked: {revoked:?}");
                if !incremental {
                    consumer.unassign()
                } else if reading.count() > 0 {
                    consumer.incremental_unassign(&reading)
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            engine.set_fatal(Error::Kafka(format!("cannot apply the new assignment: {e}")));
        }
    }
}
