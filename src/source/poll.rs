//! The seed's polling source ("SELECT * WHERE created_at > last_timestamp"), made lossless.
//!
//! The seed's query loses orders in two ways, and this source closes both:
//!
//! 1. **Orders sharing a `created_at`** split across polls: the position is the pair
//!    `(created_at, order_id)` (the *watermark*), read in that order through the index
//!    `(created_at, order_id)` that `init` creates, in pages of `max_batch_rows`.
//! 2. **Late commits.** `created_at` defaults to the transaction's *start* time, so a
//!    transaction that stays open while later orders are published commits rows below the
//!    watermark. Each poll first lists the start times of every open transaction of the
//!    database (`pg_stat_activity.xact_start`; the role needs `pg_read_all_stats` to see other
//!    roles' sessions) and then, in one `REPEATABLE READ` snapshot taken *after* that list,
//!    reads (a) the new rows above the watermark and (b) for every start time that was open at
//!    an earlier poll and now lies at or below the watermark, the rows with exactly that
//!    `created_at` that were not yet published. Such a start time stays tracked, with the ids
//!    already published at it, until a poll finds no open transaction with that start time: the
//!    snapshot of that poll sees everything those transactions committed, so (b) has picked up
//!    the rest. Later orders are published meanwhile; nothing waits for the open transaction.
//!
//! Rows newer than `now − 100 ms` wait for the next poll: a transaction reports its start in
//! `pg_stat_activity` a few microseconds after taking its start time, and this margin keeps a
//! transaction that starts during the listing from slipping under the watermark unseen.
//!
//! What polling cannot see at all, by construction: updates and deletes (a row is captured once,
//! as inserted), and rows inserted with an explicit `created_at` at or below the watermark (or
//! set from `clock_timestamp()` inside a transaction that stays open across polls). The
//! log-based source covers those.
//!
//! Such a loss is made visible: the position keeps the ids of every order published, as ranges
//! ([`IdRanges`]: ids come from a sequence, so a few ranges), and every
//! `postgres.reconcile_interval` a poll also counts, in its snapshot, the rows at or below the
//! watermark whose id is not among them and whose `created_at` is no tracked start time (those
//! are still picked up). That count is `unpublished_below_watermark` in `/metrics` and
//! `status`, and a warning names up to ten of the orders.

mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use prometheus_client::metrics::gauge::Gauge;

use tokio_postgres::{Client, GenericClient, IsolationLevel, Statement};

use super::ids::IdRanges;
use super::table::{SELECT_COLUMNS, check_table, to_order};
use super::{Batch, Change, Source};
use crate::config::{PostgresConfig, TableName};
use crate::db::{self, pg_error};
use crate::error::{Error, Result};
use crate::order::{Order, format_ts};
use crate::wire::ChangeMeta;
pub use status::{PollStatus, status};

/// How long a writer lock still held by a process that just died is waited for.
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// Rows younger than this stay for the next poll (see the module doc).
pub const START_REPORT_MARGIN: Duration = Duration::from_millis(100);

/// Where polling stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PollPosition {
    /// `(created_at, order_id)` of the last order published in watermark order; `None` before
    /// the first.
    pub watermark: Option<(NaiveDateTime, i64)>,
    /// Start times of transactions that were open at a poll, each with the ids already
    /// published at exactly that `created_at`.
    pub open: BTreeMap<NaiveDateTime, BTreeSet<i64>>,
    /// The ids of every order published; `None` in a state written before they were kept
    /// (adopted at the next poll from the rows then at or below the watermark).
    pub published: Option<IdRanges>,
}

/// Orders at or below the watermark that were never published, as one reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublished {
    /// How many.
    pub count: i64,
    /// The lowest ten ids.
    pub ids: Vec<i64>,
}

impl Unpublished {
    /// `5, 7, 9` or `5, 7, … and 12 more`.
    pub fn ids_text(&self) -> String {
        let shown: Vec<String> = self.ids.iter().map(i64::to_string).collect();
        let more = self.count - self.ids.len() as i64;
        if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
    }
}

/// The polling source on one table.
pub struct PollSource {
    pg: PostgresConfig,
    name: String,
    /// The name of the advisory lock that makes this the one writer of (table → topic).
    lock: String,
    conn: Option<Connection>,
    /// `postgres.reconcile_interval`; `None`: off.
    reconcile_every: Option<Duration>,
    /// When the last reconciliation ran.
    reconciled: Option<Instant>,
    /// The count it last reported.
    reported: Option<i64>,
    /// `unpublished_below_watermark` in `/metrics`.
    gauge: Gauge,
}

struct Connection {
    client: Client,
    activity: Statement,
    late: Statement,
    first: Statement,
    after: Statement,
}

impl PollSource {
    /// The advisory lock that makes a producer the one writer of (table → topic): held while
    /// one runs.
    pub fn writer_lock(&self) -> &str {
        &self.lock
    }

    /// A source on the configured table, publishing to `topic`; connects on first use.
    /// `gauge` gets the count of each reconciliation.
    pub fn new(pg: &PostgresConfig, topic: &str, gauge: Gauge) -> PollSource {
        let db = pg.connect.get_dbname().unwrap_or("?");
        let name = format!("poll:{db}.{}", pg.table);
        PollSource {
            lock: format!("orderstream:{name}->{topic}"),
            pg: pg.clone(),
            name,
            conn: None,
            reconcile_every: pg.reconcile_interval,
            reconciled: None,
            reported: None,
            gauge,
        }
    }

    /// Connects (if not connected) and checks the table; a wrong table is a fatal error.
    pub async fn connect(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let client = db::connect(&self.pg).await?;
        check_polling_can_see(&client, &self.pg.table).await?;
        check_table(&client, &self.pg.table).await?;
        check_created_at_not_null(&client, &self.pg.table).await?;
        warn_of_unplaceable(&client, &self.pg.table).await?;
        check_visibility(&client).await;
        // One producer per table and topic: a second would publish every order again.
        if let db::WriterLock::HeldBy(pid) = db::lock_writer(&client, &self.lock, WRITER_WAIT).await? {
            return Err(Error::Setup(format!(
                "PostgreSQL: table {} is already captured into this topic by PID {pid} (another `orderstream \
                 produce` or `run`?): one producer per table and topic",
                self.pg.table
            )));
        }
        let t = self.pg.table.quoted();
        let table = &self.pg.table;
        let client_ref = &client;
        let prepare =
            |sql: String| async move { client_ref.prepare(&sql).await.map_err(|e| pg_error(table, &e)) };
        let activity = prepare(
            "SELECT statement_timestamp() AT TIME ZONE 'UTC', \
                    array_agg(DISTINCT xact_start AT TIME ZONE 'UTC') FILTER (WHERE xact_start IS NOT NULL) \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                .into(),
        )
        .await?;
        let late = prepare(format!(
            "SELECT {SELECT_COLUMNS} FROM {t} WHERE created_at = ANY($1::timestamp[]) \
             AND (created_at, order_id) <= ($2::timestamp, $3::int8) ORDER BY created_at, order_id"
        ))
        .await?;
        let first = prepare(format!(
            "SELECT {SELECT_COLUMNS} FROM {t} WHERE created_at < $1::timestamp AND created_at > '-infinity'::timestamp \
             ORDER BY created_at, order_id LIMIT $2::int8"
        ))
        .await?;
        let after = prepare(format!(
            "SELECT {SELECT_COLUMNS} FROM {t} WHERE (created_at, order_id) > ($1::timestamp, $2::int8) \
             AND created_at < $3::timestamp ORDER BY created_at, order_id LIMIT $4::int8"
        ))
        .await?;
        self.conn = Some(Connection { client, activity, late, first, after });
        Ok(())
    }

    /// One poll: open start times, then in one snapshot the late rows and the new ones.
    // Over 80 lines on purpose: the steps share one REPEATABLE READ snapshot, and their order
    // (list open transactions, then read) is what makes polling lossless.
    async fn poll_once(&mut self, position: &PollPosition, limit: usize) -> Result<Batch<PollPosition>> {
        self.connect().await?;
        let table = self.pg.table.clone();
        let err = |e: tokio_postgres::Error| pg_error(&table, &e);
        let Some(conn) = self.conn.as_mut() else { return Err(Error::Postgres("not connected".into())) };

        // 1. Which transactions are open, and the database's clock, before the snapshot.
        let row = conn.client.query_one(&conn.activity, &[]).await.map_err(err)?;
        let now: NaiveDateTime = row.try_get(0).map_err(err)?;
        let open_now: BTreeSet<NaiveDateTime> = row
            .try_get::<_, Option<Vec<NaiveDateTime>>>(1)
            .map_err(err)?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let bound = now - START_REPORT_MARGIN;

        // 2. One snapshot, taken after that list, for the late rows and the new rows.
        let tx = conn
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(err)?;
        let mut changes = Vec::new();
        if let Some((wts, wid)) = position.watermark {
            let tracked: Vec<NaiveDateTime> = position.open.keys().filter(|t| **t <= wts).copied().collect();
            if !tracked.is_empty() {
                for row in tx.query(&conn.late, &[&tracked, &wts, &wid]).await.map_err(err)? {
                    let (order, reject) = to_order(&row, &table)?;
                    let published =
                        position.open.get(&order.created_at).is_some_and(|ids| ids.contains(&order.order_id));
                    if !published {
                        changes.push(Change { reject, ..Change::polled(order) });
                    }
                }
            }
        }
        let late = changes.len();
        let page = limit.saturating_sub(late).max(1) as i64;
        let rows = match position.watermark {
            None => tx.query(&conn.first, &[&bound, &page]).await,
            Some((wts, wid)) => tx.query(&conn.after, &[&wts, &wid, &bound, &page]).await,
        }
        .map_err(err)?;
        for row in rows {
            let (order, reject) = to_order(&row, &table)?;
            changes.push(Change { reject, ..Change::polled(order) });
        }
        let adopted = match (&position.published, position.watermark) {
            (None, Some(_)) => Some(adopt(&tx, &table, position).await?),
            _ => None,
        };
        let due =
            self.reconcile_every.is_some_and(|every| self.reconciled.is_none_or(|t| t.elapsed() >= every));
        let found =
            if due && adopted.is_none() { Some(unpublished(&tx, &table, position).await?) } else { None };
        tx.commit().await.map_err(err)?;
        if let Some(found) = found {
            self.reconciled = Some(Instant::now());
            self.report(found.as_ref());
        }

        // 3. The position after this batch.
        let mut next = position.clone();
        if let Some(ids) = adopted {
            next.published = Some(ids);
        }
        if let Some(published) = next.published.as_mut() {
            for c in &changes {
                published.insert(c.order.order_id);
            }
        }
        if let Some(last) = changes[late..].last() {
            next.watermark = Some((last.order.created_at, last.order.order_id));
        }
        for t in &open_now {
            next.open.entry(*t).or_default();
        }
        for c in &changes {
            if let Some(ids) = next.open.get_mut(&c.order.created_at) {
                ids.insert(c.order.order_id);
            }
        }
        // A start time no longer open: this poll's snapshot saw all its rows (the late read
        // above if it lies at or below the old watermark, the new-row read otherwise).
        next.open.retain(|t, _| open_now.contains(t));
        Ok(Batch { changes, position: next })
    }
}

impl PollSource {
    /// Publishes one reconciliation: the gauge, and a line whenever the count changes.
    fn report(&mut self, found: Option<&Unpublished>) {
        let count = found.map_or(0, |u| u.count);
        self.gauge.set(count);
        if self.reported == Some(count) {
            return;
        }
        match found {
            Some(u) if u.count > 0 => tracing::warn!(
                "table {}: {} orders at or below the watermark were never published (order_id {}): each \
                 committed with a created_at the watermark had already passed (an explicit or application-clock \
                 created_at, CURRENT_TIMESTAMP from a session not in UTC, a prepared transaction), which polling \
                 cannot see; postgres.capture: logical captures every change",
                self.pg.table,
                u.count,
                u.ids_text()
            ),
            _ if self.reported.is_some_and(|n| n > 0) => {
                tracing::info!(
                    "table {}: no unpublished order at or below the watermark any more",
                    self.pg.table
                )
            }
            _ => {}
        }
        self.reported = Some(count);
    }
}

/// The rows at or below `position`'s watermark that it does not record as published, leaving
/// out those at a tracked start time (the late read still picks them up). `None` when nothing
/// can be said: no watermark yet, published ids not recorded, or a server before PostgreSQL 14
/// (the query needs `int8multirange`).
pub async fn unpublished(
    client: &impl GenericClient,
    table: &TableName,
    position: &PollPosition,
) -> Result<Option<Unpublished>> {
    let err = |e: tokio_postgres::Error| pg_error(table, &e);
    let (Some((wts, wid)), Some(published)) = (position.watermark, position.published.as_ref()) else {
        return Ok(None);
    };
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    if version < 140000 {
        return Ok(None);
    }
    let tracked: Vec<NaiveDateTime> = position.open.keys().copied().collect();
    // The set is parsed once, in a subquery: as a plain cast PostgreSQL parses it again for
    // every row (measured: 7.5 minutes instead of 65 ms for 200,000 rows and 5,000 ranges).
    let sql = format!(
        "SELECT count(*), (array_agg(id ORDER BY id))[1:10] FROM ( \
           SELECT order_id::int8 AS id FROM {} \
           WHERE (created_at, order_id) <= ($1::timestamp, $2::int8) \
             AND NOT (created_at = ANY($3::timestamp[])) \
             AND NOT ((SELECT $4::text::int8multirange) @> order_id::int8)) s",
        table.quoted()
    );
    let row =
        client.query_one(&sql, &[&wts, &wid, &tracked, &published.to_multirange()]).await.map_err(err)?;
    let count: i64 = row.try_get(0).map_err(err)?;
    let ids: Vec<i64> = row.try_get::<_, Option<Vec<i64>>>(1).map_err(err)?.unwrap_or_default();
    Ok(Some(Unpublished { count, ids }))
}

/// The published ids of a state that does not record them (written by an older version, or
/// the seed's one-line file): every row at or below the watermark counts as published, plus
/// the ids recorded at tracked start times.
async fn adopt(client: &impl GenericClient, table: &TableName, position: &PollPosition) -> Result<IdRanges> {
    let err = |e: tokio_postgres::Error| pg_error(table, &e);
    let mut ids = IdRanges::default();
    let Some((wts, wid)) = position.watermark else { return Ok(ids) };
    let tracked: Vec<NaiveDateTime> = position.open.keys().copied().collect();
    // Runs of consecutive ids, one row each.
    let sql = format!(
        "SELECT min(id), max(id) FROM ( \
           SELECT order_id::int8 AS id, order_id::int8 - row_number() OVER (ORDER BY order_id) AS run FROM {} \
           WHERE (created_at, order_id) <= ($1::timestamp, $2::int8) AND NOT (created_at = ANY($3::timestamp[]))) s \
         GROUP BY run ORDER BY 1",
        table.quoted()
    );
    let rows = client.query(&sql, &[&wts, &wid, &tracked]).await.map_err(err)?;
    let mut n = 0i64;
    for row in &rows {
        let (first, last): (i64, i64) = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
        n += last - first + 1;
        ids.insert_range(first, last);
    }
    for id in position.open.values().flatten() {
        ids.insert(*id);
    }
    tracing::info!(
        "table {table}: the state file does not record which orders were published (written by an older \
         version or the seed): the {n} orders now at or below the watermark count as published"
    );
    Ok(ids)
}

impl Source for PollSource {
    type Position = PollPosition;
    /// `(created_at, order_id)`: polling publishes each order once.
    type Key = (NaiveDateTime, i64);

    const STREAMING: bool = false;

    fn name(&self) -> String {
        self.name.clone()
    }

    async fn poll(&mut self, position: &PollPosition, limit: usize) -> Result<Batch<PollPosition>> {
        let result = self.poll_once(position, limit).await;
        if let Err(e) = &result
            && e.is_transient()
        {
            // Start from a fresh connection next time.
            self.conn = None;
        }
        result
    }

    fn key(change: &Change, _tombstone: bool) -> Self::Key {
        (change.order.created_at, change.order.order_id)
    }

    fn key_of(_meta: &ChangeMeta, order: Option<&Order<'_>>) -> Option<Self::Key> {
        order.map(|o| (o.created_at, o.order_id))
    }

    /// Exactly the orders the next polls from `position` will not read again. A tracked start
    /// time at or below the watermark is read again (the late read) for every id it has not
    /// published, so such an order is covered only by its id: covering it by the watermark alone
    /// let a restart publish a late order again.
    fn covers(position: &PollPosition, key: &Self::Key) -> bool {
        let (created_at, order_id) = *key;
        let at_or_below = position.watermark.is_some_and(|w| (created_at, order_id) <= w);
        match position.open.get(&created_at) {
            Some(ids) => ids.contains(&order_id),
            None => at_or_below,
        }
    }

    fn encode(position: &PollPosition) -> Vec<String> {
        let mut lines = Vec::new();
        match position.watermark {
            Some((ts, id)) => {
                lines.push(format_ts(&ts));
                lines.push(format!("order_id={id}"));
            }
            None => lines.push("none".into()),
        }
        for (ts, ids) in &position.open {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            lines.push(format!("open={} ids={}", format_ts(ts), ids.join(",")));
        }
        if let Some(published) = &position.published {
            lines.push(format!("published={published}"));
        }
        lines
    }

    fn decode(lines: &[&str]) -> std::result::Result<PollPosition, String> {
        let mut pos = PollPosition::default();
        let Some((first, rest)) = lines.split_first() else { return Err("empty".into()) };
        let mut order_id = None;
        let ts = match first.trim() {
            "none" => None,
            s if s.starts_with("logical") => {
                return Err("written by `postgres.capture: logical`, but capture is `poll`: set the \
                            capture back, or remove the file to start polling from the beginning"
                    .into());
            }
            s => Some(
                parse_ts(s)
                    .ok_or_else(|| format!("line 1: `{s}` is not a timestamp like 2025-01-18 12:33:00"))?,
            ),
        };
        for (i, line) in rest.iter().enumerate() {
            let n = i + 2;
            if let Some(v) = line.strip_prefix("order_id=") {
                order_id = Some(
                    v.parse::<i64>().map_err(|_| format!("line {n}: order_id `{v}` is not an integer"))?,
                );
            } else if let Some(v) = line.strip_prefix("open=") {
                let (t, ids) = v
                    .split_once(" ids=")
                    .ok_or_else(|| format!("line {n}: expected open=<timestamp> ids=<ids>"))?;
                let t = parse_ts(t).ok_or_else(|| format!("line {n}: `{t}` is not a timestamp"))?;
                let ids = ids
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<i64>().map_err(|_| format!("line {n}: id `{s}` is not an integer")))
                    .collect::<std::result::Result<BTreeSet<i64>, String>>()?;
                pos.open.insert(t, ids);
            } else if let Some(v) = line.strip_prefix("published=") {
                pos.published =
                    Some(IdRanges::parse(v).map_err(|m| format!("line {n}: published ids: {m}"))?);
            } else {
                return Err(format!("line {n}: unexpected `{line}`"));
            }
        }
        // The seed's file holds only the timestamp and means "everything at or before it".
        pos.watermark = ts.map(|ts| (ts, order_id.unwrap_or(i64::MAX)));
        if pos.watermark.is_none() && pos.published.is_none() {
            // Nothing published yet: nothing to adopt.
            pos.published = Some(IdRanges::default());
        }
        Ok(pos)
    }

    fn beginning() -> PollPosition {
        PollPosition { published: Some(IdRanges::default()), ..PollPosition::default() }
    }
}

fn parse_ts(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// Polling a hot standby loses orders silently: the late-commit tracking reads the open
/// transactions in `pg_stat_activity`, and a standby's lists none of the primary's, so a
/// transaction that commits below the watermark is never picked up.
async fn check_polling_can_see(client: &Client, table: &TableName) -> Result<()> {
    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| pg_error(table, &e))?;
    if row.try_get::<_, bool>(0).map_err(|e| pg_error(table, &e))? {
        return Err(Error::Setup(
            "PostgreSQL: the server is a hot standby (pg_is_in_recovery() is true): polling it loses \
             orders, since its pg_stat_activity does not list the primary's open transactions, whose \
             rows can commit below the watermark; point postgres.jdbc_url at the primary, or set \
             postgres.capture: logical"
                .into(),
        ));
    }
    Ok(())
}

/// Rows whose `created_at` is `infinity`, `-infinity` or beyond the year 9999 have no place in
/// watermark order (the first would end it, the clock never reaches the last): polling skips
/// them, and says so at every connection. (A BC time has one: it is sent to the dead-letter
/// topic in its turn.)
async fn warn_of_unplaceable(client: &Client, table: &TableName) -> Result<()> {
    let sql = format!(
        "SELECT count(*), array_agg(order_id::int8 ORDER BY order_id) \
         FROM (SELECT order_id FROM {} WHERE created_at = '-infinity' OR created_at >= '10000-01-01' ORDER BY order_id LIMIT 11) s",
        table.quoted()
    );
    let row = client.query_one(&sql, &[]).await.map_err(|e| pg_error(table, &e))?;
    let n: i64 = row.try_get(0).map_err(|e| pg_error(table, &e))?;
    if n > 0 {
        let ids: Vec<i64> =
            row.try_get::<_, Option<Vec<i64>>>(1).map_err(|e| pg_error(table, &e))?.unwrap_or_default();
        let shown: Vec<String> = ids.iter().take(10).map(|i| i.to_string()).collect();
        let more = if n > 10 { " and more" } else { "" };
        tracing::warn!(
            "table {table}: orders {}{more} have a created_at of infinity, -infinity or beyond the year \
             9999, which has no place in watermark order: polling does not publish them (logical capture sends \
             them to the dead-letter topic)",
            shown.join(", ")
        );
    }
    Ok(())
}

/// A row with a NULL `created_at` is below or above no watermark: polling never reads it.
async fn check_created_at_not_null(client: &Client, table: &TableName) -> Result<()> {
    let row = client
        .query_one(
            "SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = 'created_at'",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| pg_error(table, &e))?;
    if !row.try_get::<_, bool>(0).map_err(|e| pg_error(table, &e))? {
        return Err(Error::Setup(format!(
            "PostgreSQL: table {table}: column created_at is nullable, and polling never reads a row whose \
             created_at is NULL (lost); run ALTER TABLE {} ALTER COLUMN created_at SET NOT NULL, or set \
             postgres.capture: logical",
            table.quoted()
        )));
    }
    Ok(())
}

/// Warns when this role cannot see other roles' open transactions: their late commits could
/// then be missed.
async fn check_visibility(client: &Client) {
    let sql = "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') FROM pg_roles WHERE rolname = current_user";
    match client.query_one(sql, &[]).await.map(|r| r.get::<_, bool>(0)) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "this role cannot see other roles' transactions in pg_stat_activity: grant it pg_read_all_stats, \
             or orders committed late by other roles can be missed"
        ),
        Err(e) => tracing::warn!("cannot check pg_read_all_stats: {}", db::error_text(&e)),
    }
}

#[cfg(test)]
mod tests;
