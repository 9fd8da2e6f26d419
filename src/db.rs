//! PostgreSQL: connecting (with TLS as the URL's `sslmode` says, see [`crate::tls`]), and the
//! schema bootstrap that `init` runs (`sql/orders.sql`).

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{Client, NoTls};

use crate::config::{CONNECT_TIMEOUT, PostgresConfig, TableName, quote_ident};
use crate::error::{Error, Result};
use crate::tls::{MakeRustls, SslMode, TlsError};

/// The schema and seed rows, written for the default table name `ROLL001_orders`.
pub const ORDERS_SQL: &str = include_str!("../sql/orders.sql");

/// The ids of the ten seed orders.
pub const SEED_ORDER_IDS: std::ops::RangeInclusive<i32> = 101..=110;

/// `host:port/database` of the configured server, for messages (never the password).
pub fn describe(cfg: &PostgresConfig) -> String {
    let host = match cfg.connect.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.connect.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.connect.get_dbname().unwrap_or("?"))
}

/// Opens one connection, with TLS as configured; the connection task runs on the current
/// tokio runtime.
///
/// A failure that retrying cannot mend (the certificate does not verify, the server has no TLS
/// under `require`, or it accepts only TLS under `disable`) is [`Error::Setup`]; the rest
/// (refused, timed out, authentication) stays [`Error::Postgres`].
pub async fn connect(cfg: &PostgresConfig) -> Result<Client> {
    // tokio-postgres bounds only the TCP connect by connect_timeout; libpq bounds the whole
    // start-up (TLS, authentication), which a server that accepts and never answers needs.
    let limit = cfg.connect.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
    match tokio::time::timeout(limit, connect_unbounded(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Postgres(format!(
            "cannot connect to {}: no answer within {} s (connect_timeout in postgres.jdbc_url sets this bound)",
            describe(cfg),
            limit.as_secs_f64()
        ))),
    }
}

async fn connect_unbounded(cfg: &PostgresConfig) -> Result<Client> {
    let client = match &cfg.tls.rustls {
        None => cfg.connect.connect(NoTls).await.map(|(client, connection)| {
            spawn_connection(connection);
            client
        }),
        Some(rustls) => {
            let tls = MakeRustls { config: rustls.clone(), tls: cfg.tls.clone() };
            cfg.connect.connect(tls).await.map(|(client, connection)| {
                spawn_connection(connection);
                client
            })
        }
    };
    client.map_err(|e| connect_error(cfg, &e))
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {}", error_text(&e));
        }
    });
}

/// The one line for a failed connect.
fn connect_error(cfg: &PostgresConfig, e: &tokio_postgres::Error) -> Error {
    let at = describe(cfg);
    let mode = cfg.tls.mode;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<TlsError>() {
            return Error::Setup(format!("PostgreSQL: cannot connect to {at}: TLS: {tls} (sslmode={mode})"));
        }
        cause = c.source();
    }
    // tokio-postgres's own TLS failures: the server answered the TLS request with "no".
    if e.to_string() == "error performing TLS handshake" {
        let why = std::error::Error::source(e).map(|c| c.to_string()).unwrap_or_default();
        return Error::Setup(format!("PostgreSQL: cannot connect to {at}: TLS: {why} (sslmode={mode})"));
    }
    if let Some(db) = e.as_db_error()
        && mode == SslMode::Disable
        && db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        && db.message().contains("no encryption")
    {
        return Error::Setup(format!(
            "PostgreSQL: cannot connect to {at}: {} ({}); the server accepts this connection only over TLS: \
             set sslmode=require or verify-full in postgres.jdbc_url",
            db.message(),
            db.code().code()
        ));
    }
    Error::Postgres(format!("cannot connect to {at}: {}", error_text(e)))
}

/// A tokio-postgres error with its cause and the server's message, on one line.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A PostgreSQL error: connection trouble is transient ([`Error::Postgres`], retried), a
/// missing table or column is not ([`Error::Setup`]).
pub fn pg_error(table: &TableName, e: &tokio_postgres::Error) -> Error {
    let fatal = e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        // 08 connection, 40 rollback (serialization, deadlock), 53 resources, 57 shutdown.
        !matches!(class, "08" | "40" | "53" | "57")
    });
    let text = error_text(e);
    if fatal {
        Error::Setup(format!("PostgreSQL: table {table}: {text}"))
    } else {
        Error::Postgres(format!("table {table}: {text}"))
    }
}

/// `sql/orders.sql` with the configured table in place of `ROLL001_orders`.
///
/// Only whole identifier tokens are replaced; inside a string literal the quoted identifier is
/// itself escaped as a literal (for `pg_get_serial_sequence('…')`). Comments are copied as is.
pub fn render_schema(table: &TableName) -> String {
    render(ORDERS_SQL, table)
}

/// `sql/orders.sql` in two parts: the table and its index, then the seed orders (from the
/// first `INSERT INTO` on) with the sequence moved past them.
fn schema_and_seed() -> (&'static str, &'static str) {
    match ORDERS_SQL.find("\nINSERT INTO ") {
        Some(at) => ORDERS_SQL.split_at(at),
        None => (ORDERS_SQL, ""),
    }
}

fn render(sql: &str, table: &TableName) -> String {
    let ident = table.quoted();
    let index = quote_ident(&format!("{}_position_idx", table.name));
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    let mut in_literal = false;
    while let Some(c) = rest.chars().next() {
        if !in_literal && rest.starts_with("--") {
            let end = rest.find('\n').unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else if c == '\'' {
            in_literal = !in_literal;
            out.push(c);
            rest = &rest[1..];
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let word = &rest[..end];
            let replacement = match word {
                "ROLL001_orders" => Some(&ident),
                "ROLL001_orders_position_idx" => Some(&index),
                _ => None,
            };
            match replacement {
                Some(r) if in_literal => out.push_str(&r.replace('\'', "''")),
                Some(r) => out.push_str(r),
                None => out.push_str(word),
            }
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// What `init` found and did in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    /// Whether the table had to be created.
    pub created_table: bool,
    /// Seed orders inserted by this run (0 when they were all there); `None` when the seed
    /// was not applied (a table that already existed, without `--seed-orders`).
    pub seed_rows_inserted: Option<i64>,
    /// Rows in the table afterwards (counted only when the seed was applied: a count of a large
    /// table that init leaves alone is not worth a scan).
    pub total_rows: Option<i64>,
}

/// Creates the table and its index if missing, and inserts the seed orders only into a table
/// created by this call or when `seed_orders` asks for them: an existing table (a real
/// database) keeps its rows untouched. One transaction: all of it or nothing.
pub async fn bootstrap(client: &mut Client, table: &TableName, seed_orders: bool) -> Result<BootstrapReport> {
    let pg = |e: tokio_postgres::Error| Error::Postgres(format!("table {table}: {}", error_text(&e)));
    let existed = table_exists(client, table).await?;
    let (schema, seed) = schema_and_seed();
    let seeding = !existed || seed_orders;
    let tx = client.transaction().await.map_err(pg)?;
    if !existed {
        tx.batch_execute(&render(schema, table)).await.map_err(pg)?;
    }
    let mut report = BootstrapReport { created_table: !existed, seed_rows_inserted: None, total_rows: None };
    if seeding {
        let before = count_seed_rows(&tx, table).await?;
        tx.batch_execute(&render(seed, table)).await.map_err(pg)?;
        report.seed_rows_inserted = Some(count_seed_rows(&tx, table).await? - before);
        let total: i64 =
            tx.query_one(&format!("SELECT count(*) FROM {}", table.quoted()), &[]).await.map_err(pg)?.get(0);
        report.total_rows = Some(total);
    }
    tx.commit().await.map_err(pg)?;
    Ok(report)
}

/// Whether the table exists (as folded and quoted by our rule).
pub async fn table_exists(client: &Client, table: &TableName) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
        .await
        .map_err(|e| Error::Postgres(format!("table {table}: {}", error_text(&e))))?;
    Ok(row.get(0))
}

async fn count_seed_rows(client: &impl tokio_postgres::GenericClient, table: &TableName) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM {} WHERE order_id BETWEEN $1 AND $2", table.quoted());
    let row = client
        .query_one(&sql, &[SEED_ORDER_IDS.start(), SEED_ORDER_IDS.end()])
        .await
        .map_err(|e| Error::Postgres(format!("table {table}: {}", error_text(&e))))?;
    Ok(row.get(0))
}

/// What `init` did for logical capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationReport {
    /// The publication's name.
    pub name: String,
    /// Whether it had to be created (or the table added to it).
    pub created: bool,
}

/// Creates the publication of the table if missing (or adds the table to it) and sets
/// `REPLICA IDENTITY FULL`, so that a delete in the log carries the whole old row.
pub async fn ensure_publication(
    client: &Client,
    table: &TableName,
    publication: &str,
) -> Result<PublicationReport> {
    let pg = |e: tokio_postgres::Error| Error::Postgres(format!("table {table}: {}", error_text(&e)));
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", &[&publication])
        .await
        .map_err(pg)?
        .get(0);
    let has_table: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid = to_regclass($2)) \
             OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1 AND puballtables)",
            &[&publication, &table.quoted()],
        )
        .await
        .map_err(pg)?
        .get(0);
    let name = quote_ident(publication);
    let t = table.quoted();
    if !exists {
        client.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE {t}")).await.map_err(pg)?;
    } else if !has_table {
        client.batch_execute(&format!("ALTER PUBLICATION {name} ADD TABLE {t}")).await.map_err(pg)?;
    }
    let identity: String = client
        .query_one("SELECT relreplident::text FROM pg_class WHERE oid = to_regclass($1)", &[&t])
        .await
        .map_err(pg)?
        .get(0);
    if identity != "f" {
        client.batch_execute(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL")).await.map_err(pg)?;
    }
    Ok(PublicationReport { name: publication.to_string(), created: !exists || !has_table })
}

/// Takes the session-level advisory lock named `name` (held until the connection ends), the
/// guarantee of one writer per capture state across processes and hosts. A lock still held is
/// retried for `wait` (a process that just died leaves its session for a moment); then
/// [`WriterLock::HeldBy`] names the holder's backend PID (0 if it cannot be seen).
pub async fn lock_writer(client: &Client, name: &str, wait: Duration) -> Result<WriterLock> {
    let err = |e: tokio_postgres::Error| Error::Postgres(format!("advisory lock {name}: {}", error_text(&e)));
    let key = advisory_key(name);
    let deadline = Instant::now() + wait;
    loop {
        let locked: bool =
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.map_err(err)?.get(0);
        if locked {
            return Ok(WriterLock::Taken);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(WriterLock::HeldBy(lock_holder(client, name).await?.unwrap_or(0)))
}

/// What [`lock_writer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterLock {
    /// This session holds the lock now.
    Taken,
    /// Another session holds it: its backend PID (0 if it cannot be seen).
    HeldBy(i32),
}

/// The advisory lock key of `name`: FNV-1a, top bit clear, so stable across releases.
fn advisory_key(name: &str) -> i64 {
    let key =
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            >> 1;
    key as i64
}

/// The backend PID holding the advisory lock `name` (see [`lock_writer`]), if any holds it.
pub async fn lock_holder(client: &Client, name: &str) -> Result<Option<i32>> {
    let key = advisory_key(name);
    let row = client
        .query_one(
            "SELECT (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND classid::bigint = $1 AND objid::bigint = $2 AND granted LIMIT 1)",
            &[&(key >> 32), &(key & 0xFFFF_FFFF)],
        )
        .await
        .map_err(|e| Error::Postgres(format!("advisory lock {name}: {}", error_text(&e))))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_orders_are_apart_from_the_schema() {
        let (schema, seed) = schema_and_seed();
        assert!(schema.contains("CREATE TABLE IF NOT EXISTS ROLL001_orders"));
        assert!(schema.contains("CREATE INDEX IF NOT EXISTS ROLL001_orders_position_idx"));
        assert!(!schema.contains("INSERT") && !schema.contains("setval"));
        assert!(seed.trim_start().starts_with("INSERT INTO ROLL001_orders"));
        assert!(seed.contains("(110, 'Li Wei'") && seed.contains("setval("));
        assert_eq!(format!("{schema}{seed}"), ORDERS_SQL);
    }
}
