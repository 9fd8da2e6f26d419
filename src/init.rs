//! `orderstream init`: the table with its ten seed orders, the topic and the dead-letter topic.

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

/// Applies `sql/orders.sql` and creates the topics; safe to run any number of times.
pub async fn init(cfg: &Config) -> Result<InitReport> {
    let mut client = db::connect(&cfg.postgres).await?;
    let db = db::bootstrap(&mut client, &cfg.postgres.table).await?;
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
        writeln!(
            f,
            "postgres {}: {} seed orders inserted (101-110), {} rows in the table",
            self.database, self.db.seed_rows_inserted, self.db.total_rows
        )?;
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
