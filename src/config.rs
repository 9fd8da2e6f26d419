//! The configuration: `configs/orders_stream.yml` with the seed's sections and keys, a few
//! documented extras, `ORDERSTREAM__<SECTION>__<KEY>` environment overrides and validation.
//!
//! Everything is checked here, before any service is contacted, so that a wrong key or value is
//! one line naming the key (and the file or environment variable it came from), never a
//! connection error three layers down.

use std::time::Duration;

pub mod clients;
mod datalake;
mod env;
mod kafka;
mod load;
mod postgres;
mod raw;
mod secrets;
mod streaming;

pub use crate::error::ConfigError;
pub use crate::tls::{PgTls, SslMode};
pub use datalake::{DatalakeConfig, LakeFormat, Maintenance};
pub use kafka::{DEFAULT_PARTITIONS, KafkaConfig};
pub use postgres::{Capture, PostgresConfig, TableName, default_replication_name, quote_ident};
use raw::number;
pub use secrets::is_secret;
use streaming::checked_dir;
pub use streaming::{
    DEFAULT_BATCH_INTERVAL_SECS, DEFAULT_MAX_BATCH_ROWS, DEFAULT_METRICS_PORT, MetricsConfig, StreamingConfig,
};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "ORDERSTREAM__";

/// How long connecting to PostgreSQL may take when postgres.jdbc_url sets no `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the orders table lives.
    pub postgres: PostgresConfig,
    /// The broker, topics and client settings.
    pub kafka: KafkaConfig,
    /// Where the lake is written, and in which format.
    pub datalake: DatalakeConfig,
    /// State locations and the batch interval.
    pub streaming: StreamingConfig,
    /// The `/metrics` and `/health` endpoint.
    pub metrics: MetricsConfig,
}

#[cfg(test)]
mod tests;
