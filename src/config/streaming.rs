//! `streaming.*` (state folders, batch interval and size) and `metrics.*` (the endpoint).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::raw::{Origin, number};

/// `streaming.*`
#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// The consumer's checkpoint directory.
    pub checkpoint_location: PathBuf,
    /// The directory of the producer's `last_timestamp.txt`.
    pub last_processed_timestamp_location: PathBuf,
    /// How often the producer polls and the consumer closes a lake batch.
    pub batch_interval: Duration,
    /// At most this many orders in one producer batch or one lake batch (bounds memory).
    pub max_batch_rows: usize,
    /// Not a configuration key: `consume --from-beginning` (and `run --from-beginning`) reads
    /// a partition without a usable checkpoint from its first offset even where that writes
    /// rows the lake may already hold, or skips messages retention deleted.
    pub from_beginning: bool,
}

/// `metrics.*`
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/health` listen: `metrics.listen`, or `127.0.0.1:<metrics.port>`
    /// (the older key); `None` (port 0) turns the endpoint off.
    pub listen: Option<SocketAddr>,
}

/// Default `streaming.batch_interval` in seconds. The seed polls every 5 s; 1 s keeps the
/// end-to-end p99 near 2 s while a consumer writes at most one file per date per second (see
/// the README's benchmark section for the trade-off).
pub const DEFAULT_BATCH_INTERVAL_SECS: f64 = 1.0;
/// Default `streaming.max_batch_rows`.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 100_000;
/// Default port of `metrics.listen` (and `metrics.port`), on 127.0.0.1.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// The file form of `streaming.*`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStreaming {
    checkpoint_location: PathBuf,
    last_processed_timestamp_location: PathBuf,
    #[serde(default, deserialize_with = "number")]
    batch_interval: Option<f64>,
    #[serde(default, deserialize_with = "number")]
    max_batch_rows: Option<usize>,
}

/// The file form of `metrics.*`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default, deserialize_with = "number")]
    port: Option<u16>,
    #[serde(default)]
    listen: Option<String>,
}

impl RawStreaming {
    /// The checked section; creates nothing (see [`create_dir`]).
    pub(super) fn validate(self, at: &Origin) -> Result<StreamingConfig, ConfigError> {
        let checkpoint =
            checked_dir(&self.checkpoint_location).map_err(|m| at.bad("streaming.checkpoint_location", m))?;
        let last_ts = checked_dir(&self.last_processed_timestamp_location)
            .map_err(|m| at.bad("streaming.last_processed_timestamp_location", m))?;
        let secs = self.batch_interval.unwrap_or(DEFAULT_BATCH_INTERVAL_SECS);
        if !secs.is_finite() || !(0.01..=3600.0).contains(&secs) {
            return Err(at.bad(
                "streaming.batch_interval",
                format!("must be between 0.01 and 3600 seconds, got {secs}"),
            ));
        }

        let max_batch_rows = self.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS);
        if !(1..=10_000_000).contains(&max_batch_rows) {
            return Err(at.bad(
                "streaming.max_batch_rows",
                format!("must be between 1 and 10000000, got {max_batch_rows}"),
            ));
        }
        Ok(StreamingConfig {
            checkpoint_location: checkpoint,
            last_processed_timestamp_location: last_ts,
            batch_interval: Duration::from_secs_f64(secs),
            max_batch_rows,
            from_beginning: false,
        })
    }
}

impl RawMetrics {
    /// The checked section.
    pub(super) fn validate(&self, at: &Origin) -> Result<MetricsConfig, ConfigError> {
        Ok(MetricsConfig { listen: metrics_listen(self, at)? })
    }
}

/// `metrics.listen` (an IP address and a port), else `127.0.0.1:<metrics.port>`; both set is
/// an error rather than one silently winning. Port 0 turns the endpoint off.
fn metrics_listen(raw: &RawMetrics, at: &Origin) -> Result<Option<SocketAddr>, ConfigError> {
    let addr = match (&raw.listen, raw.port) {
        (Some(_), Some(_)) => {
            return Err(at.bad(
                "metrics.listen",
                "metrics.port is set too: keep one (metrics.port p is metrics.listen 127.0.0.1:p)".into(),
            ));
        }
        (Some(listen), None) => listen.trim().parse::<SocketAddr>().map_err(|_| {
            at.bad(
                "metrics.listen",
                format!(
                    "expected an IP address and a port, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}, \
                     0.0.0.0:{DEFAULT_METRICS_PORT} or [::]:{DEFAULT_METRICS_PORT}; got `{listen}`"
                ),
            )
        })?,
        (None, port) => SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(DEFAULT_METRICS_PORT))),
    };
    Ok((addr.port() != 0).then_some(addr))
}

/// A configured folder: it must not be empty. Loading creates nothing: see [`create_dir`].
pub(super) fn checked_dir(path: &Path) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(path.to_path_buf())
}

/// Creates a configured folder if missing (the commands that write, through
/// [`crate::Config::create_folders`]).
pub(super) fn create_dir(path: &Path) -> Result<(), String> {
    checked_dir(path)?;
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create directory {}: {e}", path.display()))
}
