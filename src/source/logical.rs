//! Log-based capture: PostgreSQL's logical replication with the built-in `pgoutput` plugin (it
//! is what RDS, Cloud SQL and Azure allow), a publication for the one table, and a persistent
//! named slot. Every insert, update and delete arrives in commit order, whatever the clients'
//! clocks, time zones or transaction lengths.
//!
//! # Transport
//!
//! `pgwire-replication` speaks the streaming replication protocol (START_REPLICATION, keepalives,
//! standby status, SCRAM, TLS) and nothing else; the row messages are decoded by
//! [`pgoutput`], ours, a few documented message formats. The crate sends the slot
//! only the position we declare durable ([`Source::saved`]), never more.
//!
//! # Positions, and why each change is published once
//!
//! A change's position is `(commit LSN of its transaction, index within it)`; it only grows
//! along the stream. The state file holds the position of the last published change and the
//! LSN the slot may confirm (`flush`: the end of the last transaction published whole, or an
//! idle point). The slot's `confirmed_flush_lsn` is raised only after the state file that
//! covers it is saved, so after any crash PostgreSQL replays from at or before the saved
//! state: changes at or below the saved position are dropped here, and those of an unsaved
//! batch that already reached the topic are found there by the producer's recovery (keyed by
//! position) and not sent again.
//!
//! # The initial snapshot
//!
//! On the first start the slot is created on a replication session that exports its snapshot;
//! the table is read in that very snapshot in keyset pages of `max_batch_rows`, ordered by
//! `order_id`, as `r` changes at positions `(slot's consistent point, 0, 1, …)`, and streaming
//! starts at the consistent point: every transaction committed after the snapshot arrives
//! from the log, none before it, so nothing is lost or doubled at the seam. The slot confirms
//! nothing until the snapshot is complete.
//!
//! A crash during the snapshot loses the exported snapshot (it lives only as long as the
//! session that exported it). The state file says how far it got (last `order_id`, next index);
//! the rest is read in a new snapshot, still before any streamed change. A row changed after
//! the consistent point may then be read with its newer value; the change itself still
//! follows from the log, at a higher position, so the latest version of every order is
//! exact, and no order is read twice.
//!
//! # WAL retention
//!
//! While the table is idle the slot still advances: keepalives and a heartbeat message
//! (`pg_logical_emit_message`, every [`HEARTBEAT`]) give positions that are confirmed once no
//! change is pending.

mod monitor;
pub mod pgoutput;
mod preflight;
pub mod slot;
mod snapshot;
mod status;
mod stream;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use pgwire_replication::{PgWireError, ReplicationConfig, TlsConfig};
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_postgres::config::Host;

use super::{Batch, Change, Source};
use crate::config::PostgresConfig;
use crate::db::{self, pg_error};
use crate::error::{Error, Result};
use crate::order::Order;
use crate::wire::{ChangeMeta, Lsn, Op};
pub use monitor::run as monitor;
pub use preflight::writer_lock;
use preflight::{lock_writer, preflight};
pub use status::{LogicalStatus, SnapshotStatus, status};
use stream::Stream;

/// How often an idle stream writes a heartbeat into the log, so the slot can advance while
/// other tables fill the WAL.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The prefix of the heartbeat messages.
const HEARTBEAT_PREFIX: &str = "orderstream.heartbeat";
/// How long a slot held by a session that is going away may take to be released.
const SLOT_RELEASE: Duration = Duration::from_secs(10);
/// How long a batch waits for more changes once a transaction has committed.
const GATHER: Duration = Duration::from_millis(2);
/// A batch closes at the first commit after it has gathered this long: under a steady stream
/// of transactions there is never a [`GATHER`] pause, and latency must not wait for `limit`.
const GATHER_MAX: Duration = Duration::from_millis(10);

/// How far the initial snapshot has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Not started: no slot of ours yet.
    Pending,
    /// Reading: rows up to `after` published, at positions `(at, 0..next)`.
    Running {
        /// The slot's consistent point.
        at: Lsn,
        /// The last `order_id` published.
        after: Option<i64>,
        /// The next change index.
        next: i32,
    },
    /// Complete: the stream continues from the log.
    Done,
}

/// Where log-based capture stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalPosition {
    /// The initial snapshot's progress.
    pub snapshot: Snapshot,
    /// `(commit LSN, index)` of the last change published.
    pub last: Option<(Lsn, i32)>,
    /// What the slot may confirm.
    pub flush: Lsn,
}

/// What identifies a message of the logical source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogicalKey {
    /// A snapshot read of this `order_id`.
    Read(i64),
    /// A change at `(commit LSN, index)`; `true` for the tombstone after a delete.
    Change(Lsn, i32, bool),
}

/// The commit LSN and time of the newest change published from the log and saved (`None`
/// before the first, and during the snapshot, whose reads carry no commit time).
pub type Published = watch::Receiver<Option<(Lsn, DateTime<Utc>)>>;

/// The logical replication source on one table.
pub struct LogicalSource {
    pg: PostgresConfig,
    name: String,
    interval: Duration,
    sql: Option<Client>,
    /// The snapshot transaction is open on `sql`.
    in_snapshot: bool,
    stream: Option<Stream>,
    /// The position after the last batch returned; a poll from elsewhere restarts the stream.
    expected: Option<LogicalPosition>,
    /// Lowest snapshot index still free (from recovery).
    next_floor: i32,
    /// The walsender PID of our last replication session.
    own_pid: Option<i32>,
    /// The topic holds an earlier capture's messages (its state was removed, say after its slot
    /// was lost): a snapshot that begins now opens with a truncate, so that its reads replace
    /// every change before them, those of orders deleted while no slot existed included.
    supersede: bool,
    heartbeat_at: Instant,
    /// The commit of the last change of each streamed batch returned and not yet saved.
    returned: VecDeque<(Lsn, DateTime<Utc>)>,
    /// Where [`Source::saved`] hands on the newest of `returned` that the saved position covers.
    published: watch::Sender<Option<(Lsn, DateTime<Utc>)>>,
}

impl LogicalSource {
    /// A source on the configured table; connects on first use. `interval` bounds how long
    /// one poll waits on an idle stream.
    pub fn new(pg: &PostgresConfig, interval: Duration) -> LogicalSource {
        let db = pg.connect.get_dbname().unwrap_or("?");
        LogicalSource {
            pg: pg.clone(),
            name: format!("logical:{db}.{}", pg.table),
            interval,
            sql: None,
            in_snapshot: false,
            stream: None,
            expected: None,
            next_floor: 0,
            own_pid: None,
            supersede: false,
            heartbeat_at: Instant::now(),
            returned: VecDeque::new(),
            published: watch::Sender::new(None),
        }
    }

    /// The newest published change's commit, for the slot monitor.
    pub fn published(&self) -> Published {
        self.published.subscribe()
    }

    /// The SQL connection, checked: wal_level, REPLICATION, table, publication, and the
    /// single-writer lock.
    async fn sql(&mut self) -> Result<&Client> {
        if self.sql.is_none() {
            let client = db::connect(&self.pg).await?;
            preflight(&client, &self.pg).await?;
            lock_writer(&client, &self.pg).await?;
            self.sql = Some(client);
            self.in_snapshot = false;
        }
        self.sql.as_ref().ok_or_else(|| Error::Postgres("not connected".into()))
    }

    fn replication_config(&self, start: Lsn) -> Result<ReplicationConfig> {
        let c = &self.pg.connect;
        let host = match c.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let password = c.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        let lsn = pgwire_replication::Lsn::from_u64(start.0);
        let tls: TlsConfig = crate::tls::replication_tls(&self.pg.tls, &host);
        Ok(ReplicationConfig::new(
            host,
            c.get_user().unwrap_or_default(),
            password,
            c.get_dbname().unwrap_or_default(),
            self.pg.slot.clone(),
            self.pg.publication.clone(),
        )
        .with_port(port)
        .with_tls(tls)
        .with_start_lsn(lsn)
        .with_ack_lsn(lsn)
        .with_status_interval(Duration::from_millis(500))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_buffer_size(4096)
        .with_options("-c datestyle=ISO,MDY -c timezone=UTC -c extra_float_digits=3")
        .with_application_name("orderstream"))
    }

    /// The slot's state: `None` when missing, else its confirmed LSN and active PID.
    async fn slot(&mut self) -> Result<Option<(Lsn, Option<i32>)>> {
        let slot = self.pg.slot.clone();
        let table = self.pg.table.clone();
        let row = self
            .sql()
            .await?
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid, plugin::text, database::text = current_database() \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error(&table, &e))?;
        let Some(row) = row else { return Ok(None) };
        let plugin: Option<String> = row.get(2);
        let here: Option<bool> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
            return Err(Error::Setup(format!(
                "PostgreSQL: replication slot {slot} exists but is not a pgoutput slot of this database; \
                 drop it or set postgres.slot to another name"
            )));
        }
        let lsn: Option<String> = row.get(0);
        let lsn = lsn.and_then(|s| s.parse::<Lsn>().ok()).unwrap_or_default();
        Ok(Some((lsn, row.get(1))))
    }

    /// The slot's confirmed LSN once no session holds it (`None`: no such slot). We hold the
    /// writer lock, so a holder is the walsender of a process that just died (or of our own
    /// previous session); it is given [`SLOT_RELEASE`] to go before this is an error.
    async fn slot_free(&mut self) -> Result<Option<Lsn>> {
        let slot = self.pg.slot.clone();
        let deadline = Instant::now() + SLOT_RELEASE;
        loop {
            match self.slot().await? {
                None => return Ok(None),
                Some((lsn, None)) => return Ok(Some(lsn)),
                Some((_, Some(pid))) if Instant::now() >= deadline => {
                    return Err(if Some(pid) == self.own_pid {
                        Error::Postgres(format!(
                            "replication slot {slot} is still held by our previous session (PID {pid})"
                        ))
                    } else {
                        slot_in_use(&slot, pid)
                    });
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

fn slot_in_use(slot: &str, pid: i32) -> Error {
    Error::Setup(format!(
        "PostgreSQL: replication slot {slot} is in use by PID {pid} (another `orderstream produce` or `run` on this \
         table?): one producer per slot"
    ))
}

/// A replication-protocol error: the server's refusals that retrying cannot fix are fatal.
fn replication_error(slot: &str, e: &PgWireError) -> Error {
    let text = e.to_string();
    if text.contains("is active for PID") {
        let pid = text
            .split("PID ")
            .nth(1)
            .and_then(|s| s.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok());
        return slot_in_use(slot, pid.unwrap_or(0));
    }
    let fatal = ["does not exist", "permission denied", "must be superuser or replication role", "wal_level"];
    if let PgWireError::Server(_) | PgWireError::Auth(_) = e
        && fatal.iter().any(|f| text.contains(f))
    {
        return Error::Setup(format!("PostgreSQL: replication slot {slot}: {text}"));
    }
    Error::Postgres(format!("replication slot {slot}: {text}"))
}

impl Source for LogicalSource {
    type Position = LogicalPosition;
    type Key = LogicalKey;

    const STREAMING: bool = true;

    fn name(&self) -> String {
        self.name.clone()
    }

    async fn poll(&mut self, position: &LogicalPosition, limit: usize) -> Result<Batch<LogicalPosition>> {
        let result = match position.snapshot {
            Snapshot::Done => self.poll_stream(position, limit).await,
            _ => self.snapshot_page(position, limit).await,
        };
        match &result {
            Ok(batch) => {
                self.expected = Some(batch.position.clone());
                if position.snapshot == Snapshot::Done
                    && let Some((at, ts)) = batch.changes.last().and_then(|c| Some((c.at?.0, c.commit_ts?)))
                {
                    self.returned.push_back((at, ts));
                }
            }
            Err(e) => {
                self.expected = None;
                self.stream = None;
                if e.is_transient() {
                    self.sql = None;
                    self.in_snapshot = false;
                }
            }
        }
        result
    }

    fn key(change: &Change, tombstone: bool) -> LogicalKey {
        match (change.op, change.at) {
            (Op::Read, _) | (_, None) => LogicalKey::Read(change.order.order_id),
            (_, Some((lsn, i))) => LogicalKey::Change(lsn, i, tombstone),
        }
    }

    fn key_of(meta: &ChangeMeta, order: Option<&Order<'_>>) -> Option<LogicalKey> {
        match (meta.op, meta.lsn, meta.change_index) {
            (Op::Read, _, _) => order.map(|o| LogicalKey::Read(o.order_id)),
            (_, Some(lsn), Some(i)) => Some(LogicalKey::Change(lsn, i, meta.tombstone)),
            _ => None,
        }
    }

    fn covers(position: &LogicalPosition, key: &LogicalKey) -> bool {
        match key {
            LogicalKey::Read(id) => match &position.snapshot {
                Snapshot::Done => true,
                Snapshot::Running { after, .. } => after.is_some_and(|a| *id <= a),
                Snapshot::Pending => false,
            },
            LogicalKey::Change(lsn, i, _) => position.last.is_some_and(|l| (*lsn, *i) <= l),
        }
    }

    fn saved(&mut self, position: &LogicalPosition) {
        if position.snapshot == Snapshot::Done
            && let Some(stream) = &self.stream
        {
            stream.client.update_applied_lsn(pgwire_replication::Lsn::from_u64(position.flush.0));
        }
        let Some((saved, _)) = position.last else { return };
        let mut newest = None;
        while let Some(&(lsn, ts)) = self.returned.front()
            && lsn <= saved
        {
            newest = Some((lsn, ts));
            self.returned.pop_front();
        }
        if newest.is_some() {
            self.published.send_replace(newest);
        }
    }

    fn recovered(&mut self, highest: Option<(Lsn, i32)>, earlier: bool) {
        self.next_floor = highest.map_or(0, |h| h.1.saturating_add(1));
        self.expected = None;
        self.supersede = earlier;
        self.returned.clear();
    }

    fn encode(position: &LogicalPosition) -> Vec<String> {
        let last = match position.last {
            Some((lsn, i)) => format!("{lsn}:{i}"),
            None => "none".into(),
        };
        let snapshot = match &position.snapshot {
            Snapshot::Pending => "snapshot=pending".to_string(),
            Snapshot::Done => "snapshot=done".to_string(),
            Snapshot::Running { at, after, next } => {
                let after = after.map_or("none".to_string(), |a| a.to_string());
                format!("snapshot={at} after={after} next={next}")
            }
        };
        vec![format!("logical last={last} flush={}", position.flush), snapshot]
    }

    fn decode(lines: &[&str]) -> std::result::Result<LogicalPosition, String> {
        let Some((first, rest)) = lines.split_first() else { return Err("empty".into()) };
        let Some(fields) = first.trim().strip_prefix("logical ") else {
            return Err(format!(
                "line 1: `{first}` was written by `postgres.capture: poll`, but capture is `logical`: set the capture \
                 back, or remove the file to start over with a snapshot"
            ));
        };
        let mut pos = LogicalPosition::beginning_value();
        for field in fields.split_whitespace() {
            if let Some(v) = field.strip_prefix("last=") {
                if v != "none" {
                    let (lsn, i) =
                        v.rsplit_once(':').ok_or_else(|| format!("line 1: `{v}` is not lsn:index"))?;
                    let lsn = lsn.parse::<Lsn>().map_err(|e| format!("line 1: {e}"))?;
                    let i = i.parse::<i32>().map_err(|_| format!("line 1: `{i}` is not an index"))?;
                    pos.last = Some((lsn, i));
                }
            } else if let Some(v) = field.strip_prefix("flush=") {
                pos.flush = v.parse().map_err(|e| format!("line 1: {e}"))?;
            } else {
                return Err(format!("line 1: unexpected `{field}`"));
            }
        }
        for (n, line) in rest.iter().enumerate() {
            let n = n + 2;
            let Some(v) = line.trim().strip_prefix("snapshot=") else {
                return Err(format!("line {n}: unexpected `{line}`"));
            };
            pos.snapshot = match v {
                "pending" => Snapshot::Pending,
                "done" => Snapshot::Done,
                v => {
                    let mut parts = v.split_whitespace();
                    let at =
                        parts.next().unwrap_or("").parse::<Lsn>().map_err(|e| format!("line {n}: {e}"))?;
                    let mut after = None;
                    let mut next = 0;
                    for p in parts {
                        if let Some(a) = p.strip_prefix("after=") {
                            if a != "none" {
                                after = Some(a.parse().map_err(|_| format!("line {n}: `{a}` is not an id"))?);
                            }
                        } else if let Some(x) = p.strip_prefix("next=") {
                            next = x.parse().map_err(|_| format!("line {n}: `{x}` is not an index"))?;
                        } else {
                            return Err(format!("line {n}: unexpected `{p}`"));
                        }
                    }
                    Snapshot::Running { at, after, next }
                }
            };
        }
        Ok(pos)
    }

    fn beginning() -> LogicalPosition {
        LogicalPosition::beginning_value()
    }
}

impl LogicalPosition {
    fn beginning_value() -> LogicalPosition {
        LogicalPosition { snapshot: Snapshot::Pending, last: None, flush: Lsn(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_state_lines() {
        let cases = [
            LogicalPosition::beginning_value(),
            LogicalPosition {
                snapshot: Snapshot::Running { at: Lsn(0x16B3748), after: Some(110), next: 10 },
                last: Some((Lsn(0x16B3748), 9)),
                flush: Lsn(0),
            },
            LogicalPosition {
                snapshot: Snapshot::Done,
                last: Some((Lsn(0x1_0000_0010), 3)),
                flush: Lsn(0x1_0000_0040),
            },
        ];
        for pos in cases {
            let lines = LogicalSource::encode(&pos);
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert_eq!(LogicalSource::decode(&lines).unwrap(), pos, "{lines:?}");
        }
        assert_eq!(
            LogicalSource::encode(&LogicalPosition {
                snapshot: Snapshot::Done,
                last: Some((Lsn(0x16B3748), 2)),
                flush: Lsn(0x16B3800)
            }),
            ["logical last=0/16B3748:2 flush=0/16B3800", "snapshot=done"]
        );
    }

    #[test]
    fn a_poll_state_file_is_named() {
        let e = LogicalSource::decode(&["2025-01-18 12:33:00", "order_id=110"]).unwrap_err();
        assert!(e.contains("postgres.capture: poll"), "{e}");
        assert!(LogicalSource::decode(&["logical last=zz flush=0/0"]).is_err());
        assert!(LogicalSource::decode(&["logical last=none flush=0/0", "snapshot=0/1 after=x"]).is_err());
    }

    #[test]
    fn covers_snapshot_rows_and_log_positions() {
        let pos = LogicalPosition {
            snapshot: Snapshot::Running { at: Lsn(100), after: Some(50), next: 5 },
            last: Some((Lsn(100), 4)),
            flush: Lsn(0),
        };
        assert!(LogicalSource::covers(&pos, &LogicalKey::Read(50)));
        assert!(!LogicalSource::covers(&pos, &LogicalKey::Read(51)));
        let pos = LogicalPosition { snapshot: Snapshot::Done, last: Some((Lsn(200), 3)), flush: Lsn(190) };
        assert!(LogicalSource::covers(&pos, &LogicalKey::Read(1_000_000)));
        assert!(LogicalSource::covers(&pos, &LogicalKey::Change(Lsn(200), 3, true)));
        assert!(!LogicalSource::covers(&pos, &LogicalKey::Change(Lsn(200), 4, false)));
        assert!(!LogicalSource::covers(&pos, &LogicalKey::Change(Lsn(201), 0, false)));
    }
}
