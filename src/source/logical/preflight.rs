//! The checks and the lock a logical producer takes on its SQL connection before reading.

use tokio_postgres::Client;

use super::{SLOT_RELEASE, slot_in_use};
use crate::config::PostgresConfig;
use crate::db::{self, pg_error};
use crate::error::{Error, Result};
use crate::source::table::check_table;

/// The advisory lock that makes a producer the slot's one writer: held while one runs.
pub fn writer_lock(pg: &PostgresConfig) -> String {
    format!("orderstream:{}", pg.slot)
}

/// Takes the session-level lock that makes this process the slot's one writer, also while
/// the snapshot is read (when no replication session holds the slot yet). The error names the
/// slot's walsender if one runs, else the lock's holder.
pub(super) async fn lock_writer(client: &Client, pg: &PostgresConfig) -> Result<()> {
    let db::WriterLock::HeldBy(holder) = db::lock_writer(client, &writer_lock(pg), SLOT_RELEASE).await?
    else {
        return Ok(());
    };
    let active = client
        .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&pg.slot])
        .await
        .map_err(|e| pg_error(&pg.table, &e))?
        .and_then(|r| r.get::<_, Option<i32>>(0));
    Err(slot_in_use(&pg.slot, active.unwrap_or(holder)))
}

/// Checks once per connection what logical capture needs, each failure one line with its fix.
pub(super) async fn preflight(client: &Client, pg: &PostgresConfig) -> Result<()> {
    let table = &pg.table;
    let err = |e: tokio_postgres::Error| pg_error(table, &e);
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(err)?.get(0);
    if wal_level != "logical" {
        return Err(Error::Setup(format!(
            "PostgreSQL: wal_level is `{wal_level}`, logical capture needs `logical`: set wal_level = logical in \
             postgresql.conf and restart PostgreSQL, or set postgres.capture: poll"
        )));
    }
    let row = client
        .query_one("SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(err)?;
    let (user, can): (String, bool) = (row.get(0), row.get(1));
    if !can {
        return Err(Error::Setup(format!(
            "PostgreSQL: role {user} lacks the REPLICATION attribute that logical capture needs: \
             ALTER ROLE {user} REPLICATION (or set postgres.capture: poll)"
        )));
    }
    check_table(client, table).await?;
    let publication = client
        .query_opt(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = \
             (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($2)) \
             AND tablename = $3) FROM pg_publication WHERE pubname = $1",
            &[&pg.publication, &table.quoted(), &table.name],
        )
        .await
        .map_err(err)?;
    match publication.map(|r| r.get::<_, bool>(0)) {
        None => Err(Error::Setup(format!(
            "PostgreSQL: publication {} does not exist (run `orderstream init`)",
            pg.publication
        ))),
        Some(false) => Err(Error::Setup(format!(
            "PostgreSQL: publication {} does not include table {table} (run `orderstream init`)",
            pg.publication
        ))),
        Some(true) => Ok(()),
    }
}
