//! `datalake.*`: where the lake lives and in which format, validated on its own.
//!
//! The seed's lake is a folder of Parquet files (`format: parquet`). `format: delta` makes it a
//! Delta Lake table (see [`crate::sink::delta`]) on a local path, `file://` or `s3://` URL,
//! with `storage_options` handed to delta-rs's object store. Option values are never shown
//! in an error: some are credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_norway::Value;

/// The lake's format (`datalake.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LakeFormat {
    /// The seed's folder of date-partitioned Parquet change files, exactly once by the
    /// checkpoint folder.
    Parquet,
    /// A Delta Lake table, exactly once by the table's own log.
    Delta,
}

impl LakeFormat {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            LakeFormat::Parquet => "parquet",
            LakeFormat::Delta => "delta",
        }
    }
}

/// `datalake.*`
#[derive(Debug, Clone)]
pub struct DatalakeConfig {
    /// The root of the lake on local disk: the Parquet lake's folder, or a local Delta table's.
    /// For a Delta table on object storage, the URL as written (nothing local is made of it).
    pub path: PathBuf,
    /// `datalake.format`.
    pub format: LakeFormat,
    /// The Delta table's URL (`file:///abs/path` or `s3://bucket/prefix`); for a Parquet lake
    /// the path as written.
    pub location: String,
    /// `datalake.storage_options`: object-store settings for delta-rs (endpoint, region, ...).
    pub storage_options: BTreeMap<String, String>,
    /// `datalake.retention_hours`: how long `vacuum` keeps files no commit references.
    pub retention: std::time::Duration,
    /// Compaction and log checkpoints of a Delta table.
    pub maintenance: Maintenance,
    /// `datalake.current_path` as a table URL: the current-state table, when set.
    pub current_location: Option<String>,
}

/// `datalake.target_file_size`, `datalake.compact_min_files`, `datalake.checkpoint_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    /// Compaction rewrites a date partition's small files into files of about this many bytes;
    /// a file at or above half of it counts as compacted.
    pub target_file_size: u64,
    /// The consumer compacts a date partition once it holds more than this many small files;
    /// 0 leaves compaction to `orderstream compact`.
    pub compact_min_files: usize,
    /// A log checkpoint every this many commits (the table property `delta.checkpointInterval`).
    pub checkpoint_interval: u64,
}

/// Default `datalake.target_file_size`: 128 MiB, as Delta's OPTIMIZE.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 * 1024 * 1024;
/// Default `datalake.compact_min_files`: at one file a second, a compaction every 20 s or so
/// keeps a partition near 20 files, well below the 50 a reader should have to list.
pub const DEFAULT_COMPACT_MIN_FILES: usize = 20;
/// Default `datalake.checkpoint_interval`: Delta's own default.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 100;

impl Default for Maintenance {
    fn default() -> Maintenance {
        Maintenance {
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            compact_min_files: DEFAULT_COMPACT_MIN_FILES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

/// Default `datalake.retention_hours`: a week, Delta's own default, so that a reader of an older
/// version (time travel, a long query) still finds its files.
pub const DEFAULT_RETENTION_HOURS: f64 = 168.0;

impl DatalakeConfig {
    /// Whether the lake lives on the local filesystem (a folder orderstream may create).
    pub fn is_local(&self) -> bool {
        self.location.starts_with("file://") || self.format == LakeFormat::Parquet
    }
}

/// The section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatalake {
    path: PathBuf,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default)]
    storage_options: BTreeMap<String, Value>,
    #[serde(default, deserialize_with = "super::number")]
    retention_hours: Option<f64>,
    #[serde(default, deserialize_with = "super::number")]
    target_file_size: Option<u64>,
    #[serde(default, deserialize_with = "super::number")]
    compact_min_files: Option<usize>,
    #[serde(default, deserialize_with = "super::number")]
    checkpoint_interval: Option<u64>,
    #[serde(default)]
    current_path: Option<PathBuf>,
}

fn default_format() -> String {
    "parquet".into()
}

/// Storage options of delta-rs that are not object-store keys (its own S3 settings).
const DELTA_S3_OPTIONS: &[&str] = &[
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_S3_ADDRESSING_STYLE",
    "AWS_IAM_ROLE_ARN",
    "AWS_S3_ASSUME_ROLE_ARN",
    "AWS_IAM_ROLE_SESSION_NAME",
    "AWS_S3_ROLE_SESSION_NAME",
    "AWS_S3_POOL_IDLE_TIMEOUT_SECONDS",
    "AWS_STS_POOL_IDLE_TIMEOUT_SECONDS",
    "AWS_S3_GET_INTERNAL_SERVER_ERROR_RETRIES",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ALLOW_HTTP",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_TIMEOUT",
    "AWS_FORCE_CREDENTIAL_LOAD",
];

/// delta-rs's own retry settings of object-store calls.
const DELTA_RETRY_OPTIONS: &[&str] = &["max_retries", "retry_timeout", "init_backoff", "max_backoff", "base"];

impl RawDatalake {
    /// Checks the section; `create`: whether a local lake folder may be created.
    pub(super) fn validate(self) -> Result<DatalakeConfig, (&'static str, String)> {
        let format = match self.format.as_str() {
            "parquet" => LakeFormat::Parquet,
            "delta" => LakeFormat::Delta,
            other => {
                return Err(("datalake.format", format!("expected `parquet` or `delta`, got `{other}`")));
            }
        };
        let written = self.path.to_string_lossy().into_owned();
        if written.is_empty() {
            return Err(("datalake.path", "must not be empty".into()));
        }
        let scheme = written.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let storage_options = storage_options(&self.storage_options)?;
        let hours = self.retention_hours.unwrap_or(DEFAULT_RETENTION_HOURS);
        // Below an hour a running reader (or a batch being committed) could lose its files.
        if !hours.is_finite() || !(1.0..=87_600.0).contains(&hours) {
            return Err((
                "datalake.retention_hours",
                format!("must be between 1 and 87600 hours, got {hours}"),
            ));
        }
        let retention = std::time::Duration::from_secs_f64(hours * 3600.0);
        let maintenance = self.maintenance()?;
        let current_path = self.current_path.clone();
        let mut cfg = match (format, scheme.as_deref()) {
            (LakeFormat::Parquet, Some(s)) => Err((
                "datalake.path",
                format!("a `parquet` lake is a local folder; `{s}://` needs datalake.format: delta"),
            )),
            (LakeFormat::Parquet, None) => {
                if !storage_options.is_empty() {
                    return Err((
                        "datalake.storage_options",
                        "only a `delta` lake takes storage options".into(),
                    ));
                }
                let path = super::checked_dir(&self.path).map_err(|m| ("datalake.path", m))?;
                Ok(DatalakeConfig {
                    location: written,
                    path,
                    format,
                    storage_options,
                    retention,
                    maintenance,
                    current_location: None,
                })
            }
            (LakeFormat::Delta, Some("s3" | "s3a")) => {
                check_commit_safety(&storage_options)?;
                Ok(DatalakeConfig {
                    path: self.path,
                    format,
                    location: written,
                    storage_options,
                    retention,
                    maintenance,
                    current_location: None,
                })
            }
            (LakeFormat::Delta, Some("file")) => {
                let local = PathBuf::from(&written["file://".len()..]);
                local_delta(&local, storage_options, retention, maintenance)
            }
            (LakeFormat::Delta, Some(other)) => Err((
                "datalake.path",
                format!("`{other}://` is not supported; use a local path, file:// or s3://bucket/prefix"),
            )),
            (LakeFormat::Delta, None) => local_delta(&self.path, storage_options, retention, maintenance),
        }?;
        if let Some(at) = current_path {
            cfg.current_location = Some(current_location(&cfg, &at)?);
        }
        Ok(cfg)
    }
}

/// `datalake.current_path` as a table URL: a Delta table of its own, beside the change table
/// (never inside it: the change table's vacuum would delete its files, and the reverse).
fn current_location(cfg: &DatalakeConfig, at: &Path) -> Result<String, (&'static str, String)> {
    const KEY: &str = "datalake.current_path";
    if cfg.format != LakeFormat::Delta {
        return Err((KEY, "the current-state table needs datalake.format: delta".into()));
    }
    let written = at.to_string_lossy().into_owned();
    let location = match written.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).as_deref() {
        Some("s3" | "s3a") => written.trim_end_matches('/').to_string(),
        Some("file") => {
            local_delta(
                Path::new(&written["file://".len()..]),
                BTreeMap::new(),
                cfg.retention,
                cfg.maintenance,
            )
            .map_err(|(_, m)| (KEY, m))?
            .location
        }
        Some(other) => {
            return Err((
                KEY,
                format!("`{other}://` is not supported; use a local path, file:// or s3://bucket/prefix"),
            ));
        }
        None if written.is_empty() => {
            return Err((KEY, "must not be empty (leave the key out to have no current table)".into()));
        }
        None => {
            local_delta(at, BTreeMap::new(), cfg.retention, cfg.maintenance)
                .map_err(|(_, m)| (KEY, m))?
                .location
        }
    };
    let (a, b) = (format!("{}/", cfg.location.trim_end_matches('/')), format!("{location}/"));
    if a.starts_with(&b) || b.starts_with(&a) {
        return Err((
            KEY,
            format!(
                "{location} is, or is inside or around, the change table {}: give it a location of its own",
                cfg.location
            ),
        ));
    }
    Ok(location)
}

impl RawDatalake {
    /// The compaction and checkpoint keys, each within its range.
    fn maintenance(&self) -> Result<Maintenance, (&'static str, String)> {
        let d = Maintenance::default();
        let target_file_size = self.target_file_size.unwrap_or(d.target_file_size);
        // Below 1 MiB a "compacted" file is still a small file; above 4 GiB one rewrite holds
        // more than a consumer should keep in memory.
        if !(1 << 20..=4 << 30).contains(&target_file_size) {
            return Err((
                "datalake.target_file_size",
                format!(
                    "must be between 1048576 (1 MiB) and 4294967296 (4 GiB) bytes, got {target_file_size}"
                ),
            ));
        }
        let compact_min_files = self.compact_min_files.unwrap_or(d.compact_min_files);
        if compact_min_files == 1 || compact_min_files > 10_000 {
            return Err((
                "datalake.compact_min_files",
                format!(
                    "must be 0 (no automatic compaction) or between 2 and 10000, got {compact_min_files}"
                ),
            ));
        }
        let checkpoint_interval = self.checkpoint_interval.unwrap_or(d.checkpoint_interval);
        if !(1..=100_000).contains(&checkpoint_interval) {
            return Err((
                "datalake.checkpoint_interval",
                format!("must be between 1 and 100000 commits, got {checkpoint_interval}"),
            ));
        }
        Ok(Maintenance { target_file_size, compact_min_files, checkpoint_interval })
    }
}

/// A Delta table on local disk: its folder, and its URL (delta-rs needs an absolute one).
fn local_delta(
    path: &Path,
    storage_options: BTreeMap<String, String>,
    retention: std::time::Duration,
    maintenance: Maintenance,
) -> Result<DatalakeConfig, (&'static str, String)> {
    let path = super::checked_dir(path).map_err(|m| ("datalake.path", m))?;
    let absolute = std::path::absolute(&path)
        .map_err(|e| ("datalake.path", format!("cannot make {} absolute: {e}", path.display())))?;
    let location = format!("file://{}", absolute.display());
    Ok(DatalakeConfig {
        path,
        format: LakeFormat::Delta,
        location,
        storage_options,
        retention,
        maintenance,
        current_location: None,
    })
}

/// The options as strings under their upper-case names. A key neither delta-rs nor its object
/// store knows is refused (a typo would otherwise be ignored); values are never shown.
fn storage_options(
    raw: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, String>, (&'static str, String)> {
    use deltalake::logstore::object_store::ClientConfigKey;
    use deltalake::logstore::object_store::aws::AmazonS3ConfigKey;
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let upper = name.to_ascii_uppercase();
        let lower = name.to_ascii_lowercase();
        let known = DELTA_S3_OPTIONS.contains(&upper.as_str())
            || DELTA_RETRY_OPTIONS.contains(&lower.as_str())
            || AmazonS3ConfigKey::from_str(&lower).is_ok()
            || ClientConfigKey::from_str(&lower).is_ok();
        if !known {
            return Err((
                "datalake.storage_options",
                format!(
                    "unknown storage option `{name}`: expected an S3 or client setting of delta-rs, such as \
                     AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP, AWS_S3_ADDRESSING_STYLE, timeout or max_retries"
                ),
            ));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(("datalake.storage_options", format!("`{name}`: expected a single value"))),
        };
        // delta-rs's own AWS keys in upper case; object-store and retry keys as it parses them.
        out.insert(if DELTA_S3_OPTIONS.contains(&upper.as_str()) { upper } else { lower }, value);
    }
    Ok(out)
}

/// Refuses settings under which delta-rs cannot commit to S3 atomically: commits rely on
/// put-if-absent (`If-None-Match: *`), and the DynamoDB lock of older releases is gone.
fn check_commit_safety(options: &BTreeMap<String, String>) -> Result<(), (&'static str, String)> {
    if options.contains_key("AWS_S3_LOCKING_PROVIDER") || options.contains_key("AWS_S3_ALLOW_UNSAFE_RENAME") {
        return Err((
            "datalake.storage_options",
            "AWS_S3_LOCKING_PROVIDER and AWS_S3_ALLOW_UNSAFE_RENAME are not used: delta-rs commits to S3 by \
             put-if-absent (If-None-Match), which the store must support; delete the option"
                .into(),
        ));
    }
    if options.get("AWS_CONDITIONAL_PUT").is_some_and(|v| v.eq_ignore_ascii_case("disabled")) {
        return Err((
            "datalake.storage_options",
            "AWS_CONDITIONAL_PUT=disabled would let two writers overwrite each other's commits: a Delta table \
             on S3 needs put-if-absent"
                .into(),
        ));
    }
    Ok(())
}
