//! The replication stream: `START_REPLICATION` at the saved flush position, pgoutput messages
//! turned into changes beyond the cursor, batches closed at a commit, and heartbeats while idle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgwire_replication::{ReplicationClient, ReplicationEvent};

use super::pgoutput::{self, Layout, Message};
use super::{
    GATHER, GATHER_MAX, HEARTBEAT, HEARTBEAT_PREFIX, LogicalPosition, LogicalSource, replication_error,
};
use crate::config::PostgresConfig;
use crate::db;
use crate::error::{Error, Result};
use crate::source::{Batch, Change};
use crate::wire::{Lsn, Op};

/// An open replication session and what it has read so far.
pub(super) struct Stream {
    pub(super) client: ReplicationClient,
    /// Relation OID → the layout of our table (`None`: another table).
    layouts: HashMap<u32, Option<Layout>>,
    /// The transaction being read: commit LSN, commit time, next index.
    txn: Option<(Lsn, DateTime<Utc>, i32)>,
    /// The position as events are consumed.
    cursor: LogicalPosition,
}

impl LogicalSource {
    /// Opens the replication stream at `position.flush`.
    async fn start_stream(&mut self, position: &LogicalPosition) -> Result<()> {
        if let Some(old) = self.stream.take() {
            let mut client = old.client;
            let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
        }
        let slot = self.pg.slot.clone();
        if self.slot_free().await?.is_none() {
            return Err(Error::Setup(format!(
                "PostgreSQL: replication slot {slot} is missing, but the state file says capture was streaming \
                 (dropped, or lost in a failover): changes may have been missed. To start over on purpose, remove \
                 the producer's state file (last_timestamp.txt): a new slot and a full snapshot follow"
            )));
        }
        let mut client = ReplicationClient::connect_gated(self.replication_config(position.flush)?)
            .await
            .map_err(|e| replication_error(&slot, &e))?;
        let pid =
            client.simple_query("SELECT pg_backend_pid()").await.map_err(|e| replication_error(&slot, &e))?;
        self.own_pid = pid
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_ref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok());
        client.start().await.map_err(|e| replication_error(&slot, &e))?;
        client.wait_started().await.map_err(|e| replication_error(&slot, &e))?;
        tracing::info!("streaming {} from slot {slot} at {}", self.pg.table, position.flush);
        self.stream = Some(Stream { client, layouts: HashMap::new(), txn: None, cursor: position.clone() });
        self.heartbeat_at = Instant::now();
        Ok(())
    }

    pub(super) async fn poll_stream(
        &mut self,
        position: &LogicalPosition,
        limit: usize,
    ) -> Result<Batch<LogicalPosition>> {
        if self.stream.is_none() || self.expected.as_ref() != Some(position) {
            self.start_stream(position).await?;
        }
        let started = Instant::now();
        let mut first_change: Option<Instant> = None;
        let mut changes = Vec::new();
        loop {
            let Some(stream) = self.stream.as_mut() else { return Err(Error::Postgres("no stream".into())) };
            if first_change.is_none() && !changes.is_empty() {
                first_change = Some(Instant::now());
            }
            let wait = if changes.len() >= limit
                || (stream.txn.is_none() && first_change.is_some_and(|t| t.elapsed() >= GATHER_MAX))
            {
                break;
            } else if stream.txn.is_some() {
                Duration::from_secs(60)
            } else if !changes.is_empty() {
                GATHER
            } else {
                self.interval.saturating_sub(started.elapsed())
            };
            let event = match tokio::time::timeout(wait, stream.client.recv()).await {
                Err(_) if stream.txn.is_some() => {
                    return Err(Error::Postgres("no data from the replication stream for 60 s".into()));
                }
                Err(_) => break,
                Ok(Err(e)) => return Err(replication_error(&self.pg.slot, &e)),
                Ok(Ok(None)) => return Err(Error::Postgres("the replication stream ended".into())),
                Ok(Ok(Some(event))) => event,
            };
            stream.handle(event, &self.pg, &mut changes)?;
        }
        let Some(stream) = self.stream.as_mut() else { return Err(Error::Postgres("no stream".into())) };
        if changes.is_empty() && stream.txn.is_none() && self.heartbeat_at.elapsed() >= HEARTBEAT {
            self.heartbeat_at = Instant::now();
            if let Some(sql) = &self.sql
                && let Err(e) =
                    sql.execute("SELECT pg_logical_emit_message(false, $1, '')", &[&HEARTBEAT_PREFIX]).await
            {
                tracing::debug!("heartbeat: {}", db::error_text(&e));
            }
        }
        Ok(Batch { changes, position: stream.cursor.clone() })
    }
}

impl Stream {
    /// Applies one replication event; changes beyond the cursor go to `out`.
    fn handle(&mut self, event: ReplicationEvent, pg: &PostgresConfig, out: &mut Vec<Change>) -> Result<()> {
        match event {
            ReplicationEvent::Begin { final_lsn, commit_time_micros, .. } => {
                let ts = pg_time(commit_time_micros);
                self.txn = Some((Lsn(final_lsn.as_u64()), ts, 0));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.txn = None;
                self.cursor.flush = self.cursor.flush.max(Lsn(end_lsn.as_u64()));
            }
            // Everything before the server's sent position has reached us.
            ReplicationEvent::KeepAlive { wal_end, .. }
                if self.txn.is_none() && self.cursor.last.is_none_or(|l| l.0.0 <= wal_end.as_u64()) =>
            {
                self.cursor.flush = self.cursor.flush.max(Lsn(wal_end.as_u64()));
            }
            ReplicationEvent::Message { transactional: false, lsn, prefix, .. }
                if self.txn.is_none() && prefix == HEARTBEAT_PREFIX =>
            {
                self.cursor.flush = self.cursor.flush.max(Lsn(lsn.as_u64()));
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data).map_err(|e| {
                    Error::Postgres(format!("replication slot {}: undecodable message: {e}", pg.slot))
                })?;
                self.apply(msg, pg, out)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn apply(&mut self, msg: Message, pg: &PostgresConfig, out: &mut Vec<Change>) -> Result<()> {
        let table = &pg.table;
        let (rel, op, tuple, old) = match msg {
            Message::Relation(rel) => {
                let ours =
                    rel.name == table.name && table.schema.as_deref().is_none_or(|s| s == rel.namespace);
                let layout = if ours {
                    Some(Layout::of(&rel).map_err(|e| Error::Setup(format!("PostgreSQL: {e}")))?)
                } else {
                    None
                };
                self.layouts.insert(rel.id, layout);
                return Ok(());
            }
            Message::Insert { rel, new } => (rel, Op::Insert, new, None),
            Message::Update { rel, old, new } => (rel, Op::Update, new, old),
            Message::Delete { rel, old } => (rel, Op::Delete, old, None),
            Message::Truncate { rels } => {
                if !rels.iter().any(|r| matches!(self.layouts.get(r), Some(Some(_)))) {
                    return Ok(());
                }
                let Some((lsn, ts, index)) = self.txn.as_mut() else {
                    return Err(Error::Postgres("a truncate outside a transaction".into()));
                };
                let at = (*lsn, *index);
                *index += 1;
                if self.cursor.last.is_none_or(|last| at > last) {
                    tracing::info!("TRUNCATE of {table} at {}: published to every partition", at.0);
                    self.cursor.last = Some(at);
                    out.push(Change::truncate(at, *ts));
                }
                return Ok(());
            }
            Message::Other(_) => return Ok(()),
        };
        let Some(layout) = self.layouts.get(&rel) else {
            return Err(Error::Postgres(format!("a change of relation {rel} came before its description")));
        };
        let Some(layout) = layout else { return Ok(()) };
        let Some((lsn, ts, index)) = self.txn.as_mut() else {
            return Err(Error::Postgres("a change outside a transaction".into()));
        };
        let at = (*lsn, *index);
        *index += 1;
        if self.cursor.last.is_some_and(|last| at <= last) {
            return Ok(());
        }
        let (order, reject) = layout
            .order(tuple, old.as_ref())
            .map_err(|e| Error::Setup(format!("PostgreSQL: table {table}: change at {}: {e}", at.0)))?;
        self.cursor.last = Some(at);
        out.push(Change { order, op, at: Some(at), commit_ts: Some(*ts), reject });
        Ok(())
    }
}

/// PostgreSQL's timestamps count microseconds from 2000-01-01.
fn pg_time(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_OFFSET: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_OFFSET)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_time_is_from_2000() {
        assert_eq!(pg_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
    }
}
