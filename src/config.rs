//! The configuration: `configs/orders_stream.yml` with the seed's sections and keys, a few
//! documented extras, `ORDERSTREAM__<SECTION>__<KEY>` environment overrides and validation.
//!
//! Everything is checked here, before any service is contacted, so that a wrong key or value is
//! one line naming the key (and the file or environment variable it came from), never a
//! connection error three layers down.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};

pub mod clients;
mod datalake;
pub use datalake::{DatalakeConfig, LakeFormat, Maintenance};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "ORDERSTREAM__";

pub use crate::error::ConfigError;
pub use crate::tls::{PgTls, SslMode};

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

/// `postgres.*`
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection settings parsed from `jdbc_url`, with `user` and `password` applied.
    pub connect: tokio_postgres::Config,
    /// The orders table (`postgres.table`).
    pub table: TableName,
    /// How changes are captured (`postgres.capture`).
    pub capture: Capture,
    /// The logical replication slot (`postgres.slot`).
    pub slot: String,
    /// The publication of the orders table (`postgres.publication`).
    pub publication: String,
    /// TLS to the server, from the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
    pub tls: PgTls,
    /// Poll mode: how often unpublished orders at or below the watermark are counted
    /// (`postgres.reconcile_interval`); `None`: never.
    pub reconcile_interval: Option<Duration>,
}

/// `postgres.capture`: how changes leave PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Logical replication (`pgoutput`): inserts, updates and deletes, from the write-ahead log.
    Logical,
    /// The seed's timestamp polling: inserts only.
    Poll,
}

/// The default slot and publication name for a table: `orderstream_<table>`, with every
/// character PostgreSQL does not allow in a slot name replaced by `_`; a name longer than 63
/// characters keeps its first 54 and ends with a hash of the whole, so two long table names
/// never share a slot.
pub fn default_replication_name(table: &TableName) -> String {
    let raw = format!("orderstream_{}", table.name);
    let name: String = raw
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' })
        .collect();
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let hash =
        raw.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{}_{:08x}", &name[..54], hash as u32)
}

/// Checks a slot or publication name: what PostgreSQL allows in a slot name (lower-case letters,
/// digits, `_`; at most 63).
fn validate_replication_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("`{name}` must have 1 to 63 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("`{name}` may hold only lower-case letters, digits and `_`"));
    }
    Ok(())
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug would print the password.
        f.debug_struct("PostgresConfig")
            .field("hosts", &self.connect.get_hosts())
            .field("ports", &self.connect.get_ports())
            .field("dbname", &self.connect.get_dbname())
            .field("user", &self.connect.get_user())
            .field("table", &self.table)
            .field("capture", &self.capture)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The orders table name.
///
/// Rule: the configured name is folded to lower case, exactly as PostgreSQL folds an unquoted
/// identifier, and then always used quoted. So `ROLL001_orders` in the config, `ROLL001_orders`
/// typed unquoted in psql and `roll001_orders` all name the same table, and no name can inject
/// SQL. An optional schema may be given as `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema, if the configured name had one.
    pub schema: Option<String>,
    /// The table itself, folded to lower case.
    pub name: String,
}

impl TableName {
    /// Parses and folds a configured table name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let fold = |part: &str| -> Result<String, String> {
            let part = part.trim();
            if part.is_empty() {
                return Err("must not be empty".into());
            }
            if part.len() > 63 {
                return Err(format!("`{part}` is longer than PostgreSQL's 63-byte identifier limit"));
            }
            if part.contains('\0') || part.contains('"') {
                return Err(format!("`{part}` contains a quote or NUL character"));
            }
            Ok(part.to_lowercase())
        };
        match raw.split_once('.') {
            Some((schema, name)) => Ok(TableName { schema: Some(fold(schema)?), name: fold(name)? }),
            None => Ok(TableName { schema: None, name: fold(raw)? }),
        }
    }

    /// The name as a quoted SQL identifier, e.g. `"public"."roll001_orders"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

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

// ---- The file form: exactly the keys a user may write. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    postgres: RawPostgres,
    kafka: RawKafka,
    datalake: datalake::RawDatalake,
    streaming: RawStreaming,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    jdbc_url: String,
    table: String,
    user: Option<String>,
    password: Option<String>,
    capture: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    #[serde(default, deserialize_with = "number")]
    reconcile_interval: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStreaming {
    checkpoint_location: PathBuf,
    last_processed_timestamp_location: PathBuf,
    #[serde(default, deserialize_with = "number")]
    batch_interval: Option<f64>,
    #[serde(default, deserialize_with = "number")]
    max_batch_rows: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default, deserialize_with = "number")]
    port: Option<u16>,
    #[serde(default)]
    listen: Option<String>,
}

/// Default `kafka.partitions`.
pub const DEFAULT_PARTITIONS: i32 = 3;
/// Default `postgres.reconcile_interval` in seconds: a count over the rows at or below the
/// watermark once a minute.
const DEFAULT_RECONCILE_INTERVAL_SECS: f64 = 60.0;

/// Default `streaming.batch_interval` in seconds. The seed polls every 5 s; 1 s keeps the
/// end-to-end p99 near 2 s while a consumer writes at most one file per date per second (see
/// the README's benchmark section for the trade-off).
pub const DEFAULT_BATCH_INTERVAL_SECS: f64 = 1.0;
/// Default `streaming.max_batch_rows`.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 100_000;
/// Default port of `metrics.listen` (and `metrics.port`), on 127.0.0.1.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// Accepts a number, or a string holding one (environment overrides are always strings).
fn number<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr + DeserializeOwned,
{
    use serde::de::Error;
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| D::Error::custom(format!("expected a number, got `{s}`")))
        }
        Some(v @ Value::Number(_)) => serde_norway::from_value(v.clone())
            .map(Some)
            .map_err(|_| D::Error::custom(format!("number `{}` is out of range", show(&v)))),
        Some(v) => Err(D::Error::custom(format!("expected a number, got `{}`", show(&v)))),
    }
}

fn show(v: &Value) -> String {
    serde_norway::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Config {
    /// Reads `path`, applies the process environment's overrides and validates everything.
    /// Creates nothing: the commands that write call [`Config::create_folders`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, false)
    }

    /// Creates the lake, checkpoint and state folders if missing (`init`, `produce`,
    /// `consume`, `run`); an error names the key.
    pub fn create_folders(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("datalake.path", &self.datalake.path),
            ("streaming.checkpoint_location", &self.streaming.checkpoint_location),
            (
                "streaming.last_processed_timestamp_location",
                &self.streaming.last_processed_timestamp_location,
            ),
        ] {
            // A Delta table on object storage has no local folder.
            if key == "datalake.path" && !self.datalake.is_local() {
                continue;
            }
            ensure_dir(path, true).map_err(|m| ConfigError(format!("{key}: {m}")))?;
        }
        Ok(())
    }

    fn load_with(path: &Path, create: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config file: {e}", path.display())))?;
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.to_string_lossy().into_owned();
                k.starts_with(ENV_PREFIX).then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        Self::from_parts_with(&path.display().to_string(), &text, &env, create)
    }

    /// Builds the configuration from the file's text and `ORDERSTREAM__*` variables.
    /// `origin` names the file in error messages.
    pub fn from_parts(origin: &str, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        Self::from_parts_with(origin, text, env, true)
    }

    /// As [`Config::from_parts`]; `create`: whether to create the lake, checkpoint and state
    /// folders.
    pub fn from_parts_with(
        origin: &str,
        text: &str,
        env: &[(String, String)],
        create: bool,
    ) -> Result<Config, ConfigError> {
        // Whatever an error says, no secret of the file, the environment or the URL is in it.
        let mut secrets = Vec::new();
        Self::build(origin, text, env, create, &mut secrets)
            .map_err(|ConfigError(message)| ConfigError(scrub(message, &secrets)))
    }

    fn build(
        origin: &str,
        text: &str,
        env: &[(String, String)],
        create: bool,
        secrets: &mut Vec<String>,
    ) -> Result<Config, ConfigError> {
        let mut root: Value = serde_norway::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: not valid YAML: {e}")))?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        if !root.is_mapping() {
            return Err(ConfigError(format!(
                "{origin}: expected sections postgres, kafka, datalake, streaming at the top level"
            )));
        }
        // Which keys came from the environment, so an error can name the variable.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (var, value) in env {
            let key = apply_env_override(&mut root, var, value)?;
            from_env.push((key, var.clone()));
        }
        drop_file_counterpart(&mut root, &from_env);
        collect_secrets(&root, secrets);

        let raw: RawConfig = serde_path_to_error::deserialize(root).map_err(|e| {
            let path = e.path().to_string();
            let inner = if is_secret(&path) {
                // serde's message repeats the value (`invalid type: integer 12345678`).
                "must be one string (quote a value YAML reads as a number or a boolean: \
                 password: \"…\"); the value is not shown"
                    .to_string()
            } else {
                e.into_inner().to_string()
            };
            // serde_norway appends " at line N column M" for file positions; keep it.
            let source = from_env
                .iter()
                .find(|(key, _)| path == *key || path.starts_with(&format!("{key}.")))
                .map(|(_, var)| var.clone())
                .unwrap_or_else(|| origin.to_string());
            if path == "." || path.is_empty() {
                ConfigError(format!("{source}: {inner}"))
            } else {
                ConfigError(format!("{source}: {path}: {inner}"))
            }
        })?;

        let where_ = |key: &str| -> String {
            match from_env.iter().find(|(k, _)| k == key) {
                Some((_, var)) => format!("{var} ({key})"),
                None => format!("{origin}: {key}"),
            }
        };
        let bad = |key: &str, msg: String| ConfigError(format!("{}: {msg}", where_(key)));

        // postgres
        let (mut connect, tls) =
            parse_postgres_url(&raw.postgres.jdbc_url).map_err(|m| bad("postgres.jdbc_url", m))?;
        if let Some(user) = raw.postgres.user.as_deref() {
            if user.is_empty() {
                return Err(bad("postgres.user", "must not be empty".into()));
            }
            connect.user(user);
        }
        if connect.get_user().is_none() {
            return Err(bad("postgres.user", "missing (and the URL names no user)".into()));
        }
        if let Some(password) = raw.postgres.password.as_deref() {
            connect.password(password);
        }
        connect.application_name("orderstream");
        // The URL's connect_timeout wins, as in libpq; it bounds the whole start-up (db::connect).
        if connect.get_connect_timeout().is_none() {
            connect.connect_timeout(CONNECT_TIMEOUT);
        }
        let table = TableName::parse(&raw.postgres.table).map_err(|m| bad("postgres.table", m))?;
        let capture = match raw.postgres.capture.as_deref().map(str::trim) {
            None | Some("logical") => Capture::Logical,
            Some("poll") => Capture::Poll,
            Some(other) => {
                return Err(bad("postgres.capture", format!("must be `logical` or `poll`, got `{other}`")));
            }
        };
        let slot = raw.postgres.slot.unwrap_or_else(|| default_replication_name(&table));
        validate_replication_name(&slot).map_err(|m| bad("postgres.slot", m))?;
        let publication = raw.postgres.publication.unwrap_or_else(|| default_replication_name(&table));
        validate_replication_name(&publication).map_err(|m| bad("postgres.publication", m))?;
        let reconcile = raw.postgres.reconcile_interval.unwrap_or(DEFAULT_RECONCILE_INTERVAL_SECS);
        if !reconcile.is_finite() || !(reconcile == 0.0 || (0.1..=86_400.0).contains(&reconcile)) {
            return Err(bad(
                "postgres.reconcile_interval",
                format!("must be 0 (off) or between 0.1 and 86400 seconds, got {reconcile}"),
            ));
        }
        let reconcile_interval = (reconcile > 0.0).then(|| Duration::from_secs_f64(reconcile));

        // kafka
        let brokers = raw.kafka.brokers.trim().to_string();
        validate_brokers(&brokers).map_err(|m| bad("kafka.brokers", m))?;
        validate_topic(&raw.kafka.topic).map_err(|m| bad("kafka.topic", m))?;
        let partitions = raw.kafka.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=10_000).contains(&partitions) {
            return Err(bad("kafka.partitions", format!("must be between 1 and 10000, got {partitions}")));
        }
        let group_id = raw.kafka.group_id.unwrap_or_else(|| format!("orderstream_{}", raw.kafka.topic));
        if group_id.trim().is_empty() {
            return Err(bad("kafka.group_id", "must not be empty".into()));
        }
        let dlq_topic = raw.kafka.dlq_topic.unwrap_or_else(|| format!("{}_dlq", raw.kafka.topic));
        validate_topic(&dlq_topic).map_err(|m| bad("kafka.dlq_topic", m))?;
        if dlq_topic == raw.kafka.topic {
            return Err(bad("kafka.dlq_topic", "must differ from kafka.topic".into()));
        }
        let member_name = raw.kafka.member_name.map(|n| n.trim().to_string());
        if let Some(name) = &member_name {
            // The same rule as a topic name: it travels in the protocol and in logs.
            validate_topic(name)
                .map_err(|m| bad("kafka.member_name", m.replace("topic name", "member name")))?;
        }
        let properties = kafka_properties(&raw.kafka.properties, &bad)?;
        let kafka = KafkaConfig {
            brokers,
            topic: raw.kafka.topic,
            partitions,
            group_id,
            dlq_topic,
            member_name,
            properties,
        };
        clients::check_clients(&kafka).map_err(|why| {
            // Name the user's property that librdkafka's message mentions first, if any.
            let named =
                raw.kafka.properties.keys().filter_map(|name| Some((mention(&why, name)?, name))).min();
            match named {
                Some((_, name)) => bad(&format!("kafka.properties.{name}"), why),
                None => bad("kafka.properties", why),
            }
        })?;

        // datalake
        let datalake = raw.datalake.validate(create).map_err(|(key, m)| bad(key, m))?;

        // streaming
        let checkpoint = ensure_dir(&raw.streaming.checkpoint_location, create)
            .map_err(|m| bad("streaming.checkpoint_location", m))?;
        let last_ts = ensure_dir(&raw.streaming.last_processed_timestamp_location, create)
            .map_err(|m| bad("streaming.last_processed_timestamp_location", m))?;
        let secs = raw.streaming.batch_interval.unwrap_or(DEFAULT_BATCH_INTERVAL_SECS);
        if !secs.is_finite() || !(0.01..=3600.0).contains(&secs) {
            return Err(bad(
                "streaming.batch_interval",
                format!("must be between 0.01 and 3600 seconds, got {secs}"),
            ));
        }

        let max_batch_rows = raw.streaming.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS);
        if !(1..=10_000_000).contains(&max_batch_rows) {
            return Err(bad(
                "streaming.max_batch_rows",
                format!("must be between 1 and 10000000, got {max_batch_rows}"),
            ));
        }

        Ok(Config {
            postgres: PostgresConfig { connect, table, capture, slot, publication, tls, reconcile_interval },
            kafka,
            datalake,
            streaming: StreamingConfig {
                checkpoint_location: checkpoint,
                last_processed_timestamp_location: last_ts,
                batch_interval: Duration::from_secs_f64(secs),
                max_batch_rows,
                from_beginning: false,
            },
            metrics: MetricsConfig { listen: metrics_listen(&raw.metrics, &bad)? },
        })
    }
}

/// `kafka.properties` as strings, each under the name orderstream keeps its setting under
/// ([`clients::canonical`]). A refused setting, two names of one setting, or a name or
/// value librdkafka rejects is an error naming the key.
fn kafka_properties(
    raw: &BTreeMap<String, Value>,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut properties = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("kafka.properties.{name}");
        if let Some(why) = clients::refusal(name) {
            return Err(bad(&key, why));
        }
        if let Some(other) = clients::spellings(name).into_iter().find(|n| n != name && raw.contains_key(*n))
        {
            return Err(bad(&key, format!("names the same setting as kafka.properties.{other}; delete one")));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ if is_secret(&key) => {
                return Err(bad(&key, "expected a single value; the value is not shown".into()));
            }
            other => {
                return Err(bad(&key, format!("expected a single value, got `{}`", show(other))));
            }
        };
        let mut probe = rdkafka::ClientConfig::new();
        probe.set(name, &value);
        match probe.create_native_config() {
            Ok(_) => {}
            Err(rdkafka::error::KafkaError::ClientConfig(_, why, _, _)) => {
                return Err(bad(&key, format!("rejected by librdkafka: {why}")));
            }
            Err(e) => return Err(bad(&key, format!("rejected by librdkafka: {e}"))),
        }
        properties.insert(clients::canonical(name).to_string(), value);
    }
    Ok(properties)
}

/// Whether the dotted key holds a secret, whose value no message may repeat:
/// `postgres.password` and every Kafka property that names a password, a secret, a private key
/// or a token.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key.pem", "sslkey", "token", "oauthbearer.config", "jaas"]
        .iter()
        .any(|word| key.contains(word))
}

/// The values of every secret in the tree: the secret keys' values (each element of a list,
/// the text of a number), and the password of `postgres.jdbc_url`, as written and decoded.
fn collect_secrets(root: &Value, out: &mut Vec<String>) {
    fn scalars(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Sequence(items) => items.iter().for_each(|i| scalars(i, out)),
            Value::Mapping(m) => m.values().for_each(|i| scalars(i, out)),
            Value::Tagged(t) => scalars(&t.value, out),
            Value::Null => {}
            Value::String(s) => out.push(s.clone()),
            other => out.push(show(other)),
        }
    }
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        let Value::Mapping(m) = v else { return };
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            let path = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
            if is_secret(&path) {
                scalars(v, out);
            } else if path == "postgres.jdbc_url"
                && let Some(url) = v.as_str()
            {
                out.extend(url_secrets(url));
            } else {
                walk(v, &path, out);
            }
        }
    }
    walk(root, "", out);
}

/// The password of a `[jdbc:]postgres[ql]://user:password@host/db?password=…` URL, as written
/// and %-decoded.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password.to_string());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret(k)
            {
                out.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = out.iter().filter_map(|p| percent_decode(p).ok()).collect();
    out.extend(decoded);
    out
}

/// `message` with every secret of three or more characters replaced by `***` (a shorter one
/// would blank out ordinary words).
fn scrub(mut message: String, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.chars().count() >= 3).collect();
    // The longest first, so a secret that contains another is blanked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
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

/// `metrics.port` and `metrics.listen` say the same thing: one set by the environment replaces
/// the other in the file (as any override replaces the file's value), so
/// `ORDERSTREAM__METRICS__PORT` works with a file that sets `listen`. Both from the environment
/// stay an error.
fn drop_file_counterpart(root: &mut Value, from_env: &[(String, String)]) {
    let by_env = |k: &str| from_env.iter().any(|(key, _)| key == k);
    let drop = match (by_env("metrics.port"), by_env("metrics.listen")) {
        (true, false) => "listen",
        (false, true) => "port",
        _ => return,
    };
    if let Some(metrics) = root.get_mut("metrics").and_then(Value::as_mapping_mut) {
        metrics.remove(drop);
    }
}

/// Puts one `ORDERSTREAM__SECTION__KEY[__PROPERTY]=value` into the YAML tree as a string and
/// returns the dotted key it set.
fn apply_env_override(root: &mut Value, var: &str, value: &str) -> Result<String, ConfigError> {
    let rest = &var[ENV_PREFIX.len()..];
    let parts: Vec<&str> = rest.split("__").collect();
    let bad = |m: &str| ConfigError(format!("{var}: {m}"));
    let (section, key, property) = match parts.as_slice() {
        [section, key] => (section.to_lowercase(), key.to_lowercase(), None),
        [section, key, property] => (section.to_lowercase(), key.to_lowercase(), Some(*property)),
        _ => {
            return Err(bad("expected ORDERSTREAM__<SECTION>__<KEY>, e.g. ORDERSTREAM__KAFKA__TOPIC"));
        }
    };
    if section.is_empty() || key.is_empty() {
        return Err(bad("expected ORDERSTREAM__<SECTION>__<KEY>, e.g. ORDERSTREAM__KAFKA__TOPIC"));
    }
    let map = root.as_mapping_mut().ok_or_else(|| bad("the config file has no top-level mapping"))?;
    let section_map =
        map.entry(Value::String(section.clone())).or_insert_with(|| Value::Mapping(Mapping::new()));
    let section_map = section_map
        .as_mapping_mut()
        .ok_or_else(|| bad(&format!("section `{section}` in the file is not a mapping")))?;
    match property {
        None => {
            section_map.insert(Value::String(key.clone()), Value::String(value.to_string()));
            Ok(format!("{section}.{key}"))
        }
        Some(property) if section == "kafka" && key == "properties" && !property.is_empty() => {
            // Shell variable names cannot hold dots: SESSION_TIMEOUT_MS means session.timeout.ms.
            let name = if property.contains('.') {
                property.to_string()
            } else {
                property.to_lowercase().replace('_', ".")
            };
            let props = section_map
                .entry(Value::String("properties".into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let props =
                props.as_mapping_mut().ok_or_else(|| bad("kafka.properties in the file is not a mapping"))?;
            props.insert(Value::String(name.clone()), Value::String(value.to_string()));
            Ok(format!("kafka.properties.{name}"))
        }
        Some(property) if section == "datalake" && key == "storage_options" && !property.is_empty() => {
            let opts = section_map
                .entry(Value::String("storage_options".into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let opts = opts
                .as_mapping_mut()
                .ok_or_else(|| bad("datalake.storage_options in the file is not a mapping"))?;
            // Upper case, as AWS names are written; the validation folds the case it needs.
            let name = property.to_ascii_uppercase();
            opts.insert(Value::String(name.clone()), Value::String(value.to_string()));
            Ok(format!("datalake.storage_options.{name}"))
        }
        Some(_) => Err(bad("only kafka.properties and datalake.storage_options take a third name part \
                 (ORDERSTREAM__KAFKA__PROPERTIES__<NAME>, ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__<NAME>)")),
    }
}

/// Parses `jdbc:postgresql://host:port/db` or `postgres[ql]://[user[:password]@]host:port/db[?k=v]`,
/// with the TLS parameters `sslmode`, `ssl`, `sslrootcert`, `sslcert`, `sslkey` (as libpq and
/// pgJDBC write them) taken out of the query and their files read. Every other parameter is
/// tokio-postgres's to accept or to reject by name. Errors never repeat the URL, which may hold
/// a password.
fn parse_postgres_url(url: &str) -> Result<(tokio_postgres::Config, PgTls), String> {
    let url = url.trim();
    let plain = url.strip_prefix("jdbc:").unwrap_or(url);
    if !(plain.starts_with("postgresql://") || plain.starts_with("postgres://")) {
        return Err("expected jdbc:postgresql://host:port/database or postgres://host:port/database".into());
    }
    let (rest, tls) = take_tls_params(plain)?;
    // The cause names the unknown or invalid parameter (never a value, so no password).
    let mut cfg =
        tokio_postgres::Config::from_str(&rest).map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => format!("malformed URL: {e}: {cause}"),
            None => format!("malformed URL: {e}"),
        })?;
    if cfg.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    match cfg.get_dbname() {
        Some(db) if !db.is_empty() => {}
        _ => return Err("the URL names no database (…/food_delivery_db)".into()),
    }
    cfg.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((cfg, tls))
}

/// Splits the TLS parameters off the URL's query; returns the URL without them.
fn take_tls_params(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut sslmode, mut ssl, mut root, mut cert, mut key) = (None, None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || percent_decode(v).map_err(|m| format!("query parameter {k}: {m}"));
        match k {
            "sslmode" => sslmode = Some(SslMode::parse(&value()?)?),
            "ssl" => ssl = Some(value()?),
            "sslrootcert" => root = Some(PathBuf::from(value()?)),
            "sslcert" => cert = Some(PathBuf::from(value()?)),
            "sslkey" => key = Some(PathBuf::from(value()?)),
            _ => kept.push(pair),
        }
    }
    // pgJDBC (since 42.2.5): `ssl=true`, or a bare `ssl`, without sslmode means verify-full.
    let mode = match (sslmode, ssl.as_deref()) {
        (Some(mode), _) => mode,
        (None, Some("true" | "")) => SslMode::VerifyFull,
        (None, None | Some("false")) => SslMode::Prefer,
        (None, Some(other)) => return Err(format!("ssl `{other}` must be true or false")),
    };
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err("sslcert is given without sslkey: a client certificate needs both".into());
        }
        (None, Some(_)) => {
            return Err("sslkey is given without sslcert: a client certificate needs both".into());
        }
    };
    let mut tls = PgTls { mode, root_cert: root, client_cert, rustls: None };
    tls.rustls = crate::tls::rustls_config(&tls)?;
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, tls))
}

/// `%XX` escapes of a URL query value (`+` stays `+`, as in libpq's URIs).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("a `%` not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding".into())
}

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

/// `metrics.listen` (an IP address and a port), else `127.0.0.1:<metrics.port>`; both set is
/// an error rather than one silently winning. Port 0 turns the endpoint off.
fn metrics_listen(
    raw: &RawMetrics,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<SocketAddr>, ConfigError> {
    let addr = match (&raw.listen, raw.port) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "metrics.listen",
                "metrics.port is set too: keep one (metrics.port p is metrics.listen 127.0.0.1:p)".into(),
            ));
        }
        (Some(listen), None) => listen.trim().parse::<SocketAddr>().map_err(|_| {
            bad(
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

/// Creates the directory if needed (and `create`) and returns it.
fn ensure_dir(path: &Path, create: bool) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    if !create {
        return Ok(path.to_path_buf());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create directory {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests;
