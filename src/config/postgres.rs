//! `postgres.*`: the connection (from `jdbc_url`, `user`, `password`, with its TLS), the table,
//! the capture mode and the slot and publication names.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Origin, number};
use super::{CONNECT_TIMEOUT, ConfigError, PgTls, SslMode};

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

/// Default `postgres.reconcile_interval` in seconds: a count over the rows at or below the
/// watermark once a minute.
const DEFAULT_RECONCILE_INTERVAL_SECS: f64 = 60.0;

/// The file form of `postgres.*`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
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

impl RawPostgres {
    /// The checked section; an error names the key.
    pub(super) fn validate(self, at: &Origin) -> Result<PostgresConfig, ConfigError> {
        let (mut connect, tls) =
            parse_postgres_url(&self.jdbc_url).map_err(|m| at.bad("postgres.jdbc_url", m))?;
        if let Some(user) = self.user.as_deref() {
            if user.is_empty() {
                return Err(at.bad("postgres.user", "must not be empty".into()));
            }
            connect.user(user);
        }
        if connect.get_user().is_none() {
            return Err(at.bad("postgres.user", "missing (and the URL names no user)".into()));
        }
        if let Some(password) = self.password.as_deref() {
            connect.password(password);
        }
        connect.application_name("orderstream");
        // The URL's connect_timeout wins, as in libpq; it bounds the whole start-up (db::connect).
        if connect.get_connect_timeout().is_none() {
            connect.connect_timeout(CONNECT_TIMEOUT);
        }
        let table = TableName::parse(&self.table).map_err(|m| at.bad("postgres.table", m))?;
        let capture = match self.capture.as_deref().map(str::trim) {
            None | Some("logical") => Capture::Logical,
            Some("poll") => Capture::Poll,
            Some(other) => {
                return Err(at.bad("postgres.capture", format!("must be `logical` or `poll`, got `{other}`")));
            }
        };
        let slot = self.slot.unwrap_or_else(|| default_replication_name(&table));
        validate_replication_name(&slot).map_err(|m| at.bad("postgres.slot", m))?;
        let publication = self.publication.unwrap_or_else(|| default_replication_name(&table));
        validate_replication_name(&publication).map_err(|m| at.bad("postgres.publication", m))?;
        let reconcile = self.reconcile_interval.unwrap_or(DEFAULT_RECONCILE_INTERVAL_SECS);
        if !reconcile.is_finite() || !(reconcile == 0.0 || (0.1..=86_400.0).contains(&reconcile)) {
            return Err(at.bad(
                "postgres.reconcile_interval",
                format!("must be 0 (off) or between 0.1 and 86400 seconds, got {reconcile}"),
            ));
        }
        let reconcile_interval = (reconcile > 0.0).then(|| Duration::from_secs_f64(reconcile));
        Ok(PostgresConfig { connect, table, capture, slot, publication, tls, reconcile_interval })
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
pub(super) fn percent_decode(s: &str) -> Result<String, String> {
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
