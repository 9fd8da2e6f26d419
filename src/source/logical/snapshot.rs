//! The initial snapshot: the table read in the slot's exported snapshot (or, after a restart,
//! in a new one), in keyset pages ordered by `order_id`.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use pgwire_replication::ReplicationClient;
use tokio_postgres::types::ToSql;

use super::{LogicalPosition, LogicalSource, Snapshot, replication_error};
use crate::db::pg_error;
use crate::error::{Error, Result};
use crate::source::table::{SELECT_COLUMNS, to_order};
use crate::source::{Batch, Change};
use crate::wire::{Lsn, Op};

impl LogicalSource {
    /// Reads the next page of the initial snapshot.
    pub(super) async fn snapshot_page(
        &mut self,
        position: &LogicalPosition,
        limit: usize,
    ) -> Result<Batch<LogicalPosition>> {
        let table = self.pg.table.clone();
        let mut position = position.clone();
        let mut opening = None;
        if position.snapshot == Snapshot::Pending {
            position.snapshot = self.begin_snapshot().await?;
            if self.supersede
                && let Snapshot::Running { at, next, .. } = &mut position.snapshot
            {
                // First in the snapshot's order, before every read (`(at, 0)`, the reads from 1).
                opening = Some(Change::truncate((*at, *next), Utc::now()));
                *next += 1;
                tracing::info!(
                    "the topic holds changes of an earlier capture of {table} (another producer state): the new \
                     snapshot opens with a truncate, so that its reads replace every change before them"
                );
            }
        } else if !self.in_snapshot {
            self.open_new_snapshot().await?;
            tracing::warn!(
                "snapshot of {table}: resumed after a restart in a new snapshot; rows changed since the slot's \
                 consistent point are read with their newer values (the changes also follow from the log)"
            );
        }
        let Snapshot::Running { at, after, next } = position.snapshot else {
            return Ok(Batch { changes: Vec::new(), position });
        };
        let next = next.max(self.next_floor);
        let sql = format!(
            "SELECT {} FROM {} WHERE order_id > $1::int8 ORDER BY order_id LIMIT $2::int8",
            SELECT_COLUMNS,
            table.quoted()
        );
        let client = self.sql().await?;
        let (after_id, page) = (after.unwrap_or(i64::MIN), limit as i64);
        let params: [&(dyn ToSql + Sync); 2] = [&after_id, &page];
        // Each row becomes a change as it arrives, so a page is never held twice (as rows and
        // as changes): the snapshot's peak memory is one page of changes.
        let rows = client.query_raw(&sql, params).await.map_err(|e| pg_error(&table, &e))?;
        let mut rows = std::pin::pin!(rows);
        let ts: DateTime<Utc> = Utc::now();
        let mut changes = Vec::with_capacity(limit.min(100_000));
        changes.extend(opening);
        let opened = changes.len();
        while let Some(row) = rows.try_next().await.map_err(|e| pg_error(&table, &e))? {
            let (order, reject) = to_order(&row, &table)?;
            let index = next
                .checked_add((changes.len() - opened) as i32)
                .ok_or_else(|| Error::Setup(format!("snapshot of {table}: more than 2^31 rows")))?;
            changes.push(Change { order, op: Op::Read, at: Some((at, index)), commit_ts: Some(ts), reject });
        }
        let n = changes.len() - opened;
        let last_id = changes[opened..].last().map(|c| c.order.order_id).or(after);
        if n < limit {
            // Complete: close the snapshot; the stream starts at the consistent point.
            client.batch_execute("COMMIT").await.map_err(|e| pg_error(&table, &e))?;
            self.in_snapshot = false;
            position.snapshot = Snapshot::Done;
            position.flush = position.flush.max(at);
            tracing::info!("snapshot of {table} complete; streaming from {at}");
        } else {
            position.snapshot = Snapshot::Running { at, after: last_id, next: next + n as i32 };
        }
        if let Some(c) = changes.last() {
            position.last = c.at;
        }
        Ok(Batch { changes, position })
    }

    /// Opens a snapshot of the table's present state (not the slot's exported one, which died
    /// with the session that made it) for the rest of the initial read.
    async fn open_new_snapshot(&mut self) -> Result<()> {
        let table = self.pg.table.clone();
        let client = self.sql().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| pg_error(&table, &e))?;
        self.in_snapshot = true;
        Ok(())
    }

    /// Creates the slot with an exported snapshot and opens that snapshot (or, when the slot
    /// already exists, a new snapshot at or after its consistent point).
    async fn begin_snapshot(&mut self) -> Result<Snapshot> {
        let table = self.pg.table.clone();
        let slot = self.pg.slot.clone();
        if let Some(at) = self.slot_free().await? {
            self.open_new_snapshot().await?;
            tracing::warn!(
                "replication slot {slot} exists but the state file has no snapshot progress: reading {table} from the \
                 slot's position {at} in a new snapshot"
            );
            return Ok(Snapshot::Running { at, after: None, next: 0 });
        }
        let mut repl = ReplicationClient::connect_gated(self.replication_config(Lsn(0))?)
            .await
            .map_err(|e| replication_error(&slot, &e))?;
        let rows = repl
            .simple_query(&format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"))
            .await
            .map_err(|e| replication_error(&slot, &e))?;
        let text = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i))
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let (Some(at), Some(name)) = (text(1).and_then(|s| s.parse::<Lsn>().ok()), text(2)) else {
            return Err(Error::Postgres(format!("CREATE_REPLICATION_SLOT {slot}: unexpected answer")));
        };
        let client = self.sql().await?;
        // The exported snapshot lives while `repl` stays idle: import it first.
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                name.replace('\'', "''")
            ))
            .await
            .map_err(|e| pg_error(&table, &e))?;
        self.in_snapshot = true;
        drop(repl);
        tracing::info!("replication slot {slot} created at {at}; reading the snapshot of {table}");
        Ok(Snapshot::Running { at, after: None, next: 0 })
    }
}
