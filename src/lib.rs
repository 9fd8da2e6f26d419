//! orderstream: exactly-once change data capture of food-delivery orders from PostgreSQL,
//! through Kafka, into a date-partitioned Parquet lake that Spark, DuckDB, pyarrow or Polars
//! read directly.
//!
//! The pipeline is a line, and so is the code:
//!
//! ```text
//! PostgreSQL ──▶ source ──▶ producer ──▶ Kafka topic ──▶ sink ──▶ lake (date=YYYY-MM-DD/*.parquet)
//! ```
//!
//! # Layout
//!
//! * [`config`]: the YAML file with the seed's keys, `ORDERSTREAM__*` overrides, validation.
//! * [`order`]: THE order record: columns, JSON form, Arrow schema, validation.
//! * [`db`]: PostgreSQL connections and the schema bootstrap (`sql/orders.sql`).
//! * [`tls`]: TLS to PostgreSQL: libpq's `sslmode` rules as rustls settings.
//! * [`kafka`]: Kafka clients built from the configuration, topic bootstrap.
//! * [`source`]: how changes leave PostgreSQL, behind one trait ([`source::logical`],
//!   [`source::poll`]); [`source::logical::slot`] reads the replication slot for monitoring.
//! * [`producer`]: source → Kafka, exactly once (idempotent producer, state file, recovery).
//! * [`sink`]: the consumer: micro-batches into the Parquet lake, exactly once, dead letters.
//! * [`status`]: the `status` command: every stage's monitoring points, from the live systems.
//! * [`pipeline`]: the `run` command: producer and consumer in one process.
//! * [`metrics`]: the counters that `status`, the logs and `/metrics` read.
//! * [`http`]: `/metrics` and `/health`.
//! * [`init`]: the `init` command: table, seed orders and topics.
//! * [`check`]: the `check` command: whether a configuration will work, changing nothing.
//! * [`shutdown`]: SIGTERM/SIGINT as one flag every loop checks between batches.
//! * [`durable`]: atomic file replacement and folder fsync.
//! * [`retry`]: capped exponential backoff, and the outage log (begins, reminders, ends).
//! * [`logs`]: log lines as text or JSON.
//! * [`error`]: the error type; every error is one line naming what and where.
//! * [`wire`]: the message contract: header names, their values and parsers.

pub mod check;
pub mod config;
pub mod db;
pub mod durable;
pub mod error;
pub mod http;
pub mod init;
pub mod kafka;
pub mod logs;
pub mod metrics;
pub mod order;
pub mod pipeline;
pub mod producer;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
