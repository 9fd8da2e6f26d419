//! `orderstream init`: the table (with its ten seed orders when init creates it, or when asked
//! with `--seed-orders`), the publication, the topic and the dead-letter topic.

use std::fmt;

use crate::config::{Capture, Config};
use crate::db::{self, BootstrapReport, PublicationReport};
use crate::error::Result;
use crate::kafka::{self, TopicOutcome};

/// What `init` did, printed line by line.
#[derive(Debug, Clone)]
pub struct InitReport {
    table: String,
    database: String,
    db: BootstrapReport,
    publication: Option<PublicationReport>,
    topics: Vec<(String, i32, TopicOutcome)>,
}

/// Applies `sql/orders.sql` and creates the topics; safe to run any number of times, and on a
/// table with real orders: the seed orders go only into a table this run creates, or into any
/// table when `seed_orders` asks for them.
pub async fn init(cfg: &Config, seed_orders: bool) -> Result<InitReport> {
    let mut client = db::connect(&cfg.postgres).await?;
    let db = db::bootstrap(&mut client, &cfg.postgres.table, seed_orders).await?;
    let publication = match cfg.postgres.capture {
        Capture::Logical => {
            Some(db::ensure_publication(&client, &cfg.postgres.table, &cfg.postgres.publication).await?)
        }
        Capture::Poll => None,
    };
    let mut topics = Vec::new();
    for topic in [&cfg.kafka.topic, &cfg.kafka.dlq_topic] {
        let outcome = kafka::ensure_topic(&cfg.kafka, topic, cfg.kafka.partitions).await?;
        topics.push((topic.clone(), cfg.kafka.partitions, outcome));
    }
    Ok(InitReport {
        table: cfg.postgres.table.to_string(),
        database: db::describe(&cfg.postgres),
        db,
        publication,
        topics,
    })
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let created = if self.db.created_table { "created" } else { "already present" };
        writeln!(f, "postgres {}: table {} {created}", self.database, self.table)?;
        match (self.db.seed_rows_inserted, self.db.total_rows) {
            (Some(inserted), Some(total)) => writeln!(
                f,
                "postgres {}: {inserted} seed orders inserted (101-110), {total} rows in the table",
                self.database
            )?,
            _ => writeln!(
                f,
                "postgres {}: rows left untouched (no seed orders in a table init did not create; \
                 `init --seed-orders` adds them)",
                self.database
            )?,
        }
        if let Some(p) = &self.publication {
            let done = if p.created { "created" } else { "already present" };
            writeln!(
                f,
                "postgres {}: publication {} for table {} {done}; replica identity full",
                self.database, p.name, self.table
            )?;
        }
        for (topic, wanted, outcome) in &self.topics {
            match outcome {
                TopicOutcome::Created(n) => writeln!(f, "kafka: topic {topic} created with {n} partitions")?,
                TopicOutcome::Existed(n) if n == wanted => {
                    writeln!(f, "kafka: topic {topic} already present with {n} partitions")?
                }
                TopicOutcome::Existed(n) => writeln!(
                    f,
                    "kafka: topic {topic} already present with {n} partitions (kafka.partitions is {wanted}; left as is)"
                )?,
            }
        }
        Ok(())
    }
}
