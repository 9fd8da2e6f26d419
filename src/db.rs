//! PostgreSQL: connecting, and the schema bootstrap that `init` runs (`sql/orders.sql`).

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::config::{PostgresConfig, TableName, quote_ident};
use crate::error::{Error, Result};

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

/// Opens one connection; the connection task runs on the current tokio runtime.
pub async fn connect(cfg: &PostgresConfig) -> Result<Client> {
    let (client, connection) =
        cfg.connect.connect(NoTls).await.map_err(|e| {
            Error::Postgres(format!("cannot connect to {}: {}", describe(cfg), error_text(&e)))
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {}", error_text(&e));
        }
    });
    Ok(client)
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

/// `sql/orders.sql` with the configured table in place of `ROLL001_orders`.
///
/// Only whole identifier tokens are replaced; inside a string literal the quoted identifier is
/// itself escaped as a literal (for `pg_get_serial_sequence('…')`). Comments are copied as is.
pub fn render_schema(table: &TableName) -> String {
    let ident = table.quoted();
    let index = quote_ident(&format!("{}_position_idx", table.name));
    let mut out = String::with_capacity(ORDERS_SQL.len() + 64);
    let mut rest = ORDERS_SQL;
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
    /// Seed orders inserted by this run (0 when they were all there).
    pub seed_rows_inserted: i64,
    /// Rows in the table afterwards.
    pub total_rows: i64,
}

/// Applies the schema and seed rows in one transaction; idempotent.
pub async fn bootstrap(client: &mut Client, table: &TableName) -> Result<BootstrapReport> {
    let pg = |e: tokio_postgres::Error| Error::Postgres(format!("table {table}: {}", error_text(&e)));
    let existed = table_exists(client, table).await?;
    let seed_before = if existed { count_seed_rows(client, table).await? } else { 0 };
    // A multi-statement simple query runs as one implicit transaction: all of it or nothing.
    client.batch_execute(&render_schema(table)).await.map_err(pg)?;
    let seed_after = count_seed_rows(client, table).await?;
    let total: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}", table.quoted()), &[]).await.map_err(pg)?.get(0);
    Ok(BootstrapReport {
        created_table: !existed,
        seed_rows_inserted: seed_after - seed_before,
        total_rows: total,
    })
}

/// Whether the table exists (as folded and quoted by our rule).
pub async fn table_exists(client: &Client, table: &TableName) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
        .await
        .map_err(|e| Error::Postgres(format!("table {table}: {}", error_text(&e))))?;
    Ok(row.get(0))
}

async fn count_seed_rows(client: &Client, table: &TableName) -> Result<i64> {
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
/// `Ok(Err(pid))` names the holder's backend PID (0 if it cannot be seen).
pub async fn lock_writer(
    client: &Client,
    name: &str,
    wait: Duration,
) -> Result<std::result::Result<(), i32>> {
    let err = |e: tokio_postgres::Error| Error::Postgres(format!("advisory lock {name}: {}", error_text(&e)));
    // FNV-1a, top bit clear: stable across releases, one key per name.
    let key =
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            >> 1;
    let key = key as i64;
    let deadline = Instant::now() + wait;
    loop {
        let locked: bool =
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.map_err(err)?.get(0);
        if locked {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let holder: Option<i32> = client
        .query_one(
            "SELECT (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND classid::bigint = $1 AND objid::bigint = $2 AND granted LIMIT 1)",
            &[&(key >> 32), &(key & 0xFFFF_FFFF)],
        )
        .await
        .map_err(err)?
        .get(0);
    Ok(Err(holder.unwrap_or(0)))
}
