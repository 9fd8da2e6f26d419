//! The replication slot of logical capture as PostgreSQL reports it (`pg_replication_slots`):
//! what `orderstream status` shows and what the producer's monitor exports to `/metrics`.
//!
//! A slot holds WAL from its `restart_lsn` on until the client confirms it, so two numbers
//! matter to an operator: the WAL the slot keeps on the server's disk (*retained*) and the
//! WAL written since the last change the producer made durable (*lag*, from
//! `confirmed_flush_lsn`). Both are byte counts from the server's own positions. A lag in
//! seconds needs to know when WAL was written, which PostgreSQL does not record (without
//! `track_commit_timestamp`); [`LagClock`] dates positions from samples instead.

use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::wire::Lsn;

/// One reading of the slot, and of the server's WAL position at the same instant.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// The slot's name (`postgres.slot`).
    pub name: String,
    /// Whether the slot exists (the first `orderstream produce` creates it).
    pub exists: bool,
    /// The server's current WAL write position (`pg_current_wal_lsn()`).
    #[serde(serialize_with = "lsn_text")]
    pub current_wal_lsn: Lsn,
    /// What the slot says, when it exists.
    #[serde(flatten)]
    pub state: Option<SlotState>,
}

/// The columns of an existing slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotState {
    /// Whether a replication session is using it.
    pub active: bool,
    /// The walsender's PID while active.
    pub active_pid: Option<i32>,
    /// Everything before this LSN is confirmed by the producer and may be dropped.
    #[serde(serialize_with = "opt_lsn_text")]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL's `wal_status`).
    pub wal_status: Option<String>,
    /// WAL the slot keeps on the server: current position minus `restart_lsn` (`None` once lost).
    pub retained_wal_bytes: Option<i64>,
    /// WAL written since the confirmed position: current position minus `confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// The output plugin (ours is `pgoutput`).
    pub plugin: Option<String>,
    /// The slot's database.
    pub database: Option<String>,
    /// Whether it is a `pgoutput` slot of the configured database, i.e. one `produce` can use.
    pub usable: bool,
}

fn lsn_text<S: Serializer>(lsn: &Lsn, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(lsn)
}

fn opt_lsn_text<S: Serializer>(lsn: &Option<Lsn>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match lsn {
        Some(l) => s.collect_str(l),
        None => s.serialize_none(),
    }
}

/// One statement, so that every difference is taken against the same current position.
const QUERY: &str = "WITH w AS (SELECT pg_current_wal_lsn() AS lsn) \
     SELECT w.lsn::text, s.slot_name IS NOT NULL, s.active, s.active_pid, s.confirmed_flush_lsn::text, \
     s.wal_status, pg_wal_lsn_diff(w.lsn, s.restart_lsn)::int8, pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::int8, \
     s.plugin::text, s.database::text, coalesce(s.plugin = 'pgoutput' AND s.database = current_database(), false) \
     FROM w LEFT JOIN pg_replication_slots s ON s.slot_name = $1";

/// Reads slot `name`; a missing slot is a reading (`exists: false`), not an error.
pub async fn read(client: &Client, name: &str) -> Result<SlotStatus> {
    let err = |m: String| Error::Postgres(format!("replication slot {name}: {m}"));
    let row = client.query_one(QUERY, &[&name]).await.map_err(|e| err(crate::db::error_text(&e)))?;
    let lsn = |i: usize| -> Result<Option<Lsn>> {
        let text: Option<String> = row.get(i);
        text.map(|t| t.parse::<Lsn>().map_err(&err)).transpose()
    };
    let current_wal_lsn = lsn(0)?.ok_or_else(|| err("pg_current_wal_lsn() is NULL".into()))?;
    let exists: bool = row.get(1);
    let state = if exists {
        Some(SlotState {
            active: row.get::<_, Option<bool>>(2).unwrap_or(false),
            active_pid: row.get(3),
            confirmed_flush_lsn: lsn(4)?,
            wal_status: row.get(5),
            retained_wal_bytes: row.get::<_, Option<i64>>(6).map(|b| b.max(0)),
            // A confirmation can run ahead of the write position by the bytes not yet flushed.
            lag_bytes: row.get::<_, Option<i64>>(7).map(|b| b.max(0)),
            plugin: row.get(8),
            database: row.get(9),
            usable: row.get(10),
        })
    } else {
        None
    };
    Ok(SlotStatus { name: name.to_string(), exists, current_wal_lsn, state })
}

/// Bytes in a short human form (`512 B`, `1.5 MiB`).
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

impl fmt::Display for SlotStatus {
    /// The slot part of `status`: one line, two when the slot is not one `produce` can use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(s) = &self.state else {
            return writeln!(
                f,
                "{:<11} {} missing (the first `orderstream produce` creates it)   WAL at {}",
                "Slot", self.name, self.current_wal_lsn
            );
        };
        let active = match (s.active, s.active_pid) {
            (true, Some(pid)) => format!("active (PID {pid})"),
            (true, None) => "active".into(),
            (false, _) => "inactive".into(),
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "{:<11} {} {active}   confirmed {}   retained WAL {} ({})   lag {}",
            "Slot",
            self.name,
            opt(s.confirmed_flush_lsn.map(|l| l.to_string())),
            opt(s.retained_wal_bytes.map(bytes)),
            s.wal_status.as_deref().unwrap_or("-"),
            opt(s.lag_bytes.map(bytes)),
        )?;
        if !s.usable {
            writeln!(
                f,
                "{:<11} not a pgoutput slot of this database (plugin {}, database {}): `produce` refuses it",
                "",
                s.plugin.as_deref().unwrap_or("-"),
                s.database.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}

/// At most this many samples are kept (about 3 days at one per 5 s); dropping the oldest
/// only weakens the bound, it never makes it wrong.
const MAX_SAMPLES: usize = 50_000;

/// Dates WAL positions from samples of `pg_current_wal_lsn()`, to give a slot's lag in
/// seconds: how long ago the oldest WAL the slot has not confirmed was written.
///
/// Each reading adds the sample `(now, current position)`. The first unconfirmed byte (at
/// `confirmed_flush_lsn`) was written after the last sample at or below it and at or before
/// the first sample above it, so `now` minus that sample's time is a lower bound, short of the
/// truth by at most one sampling interval. When the unconfirmed WAL is older than every sample
/// (the producer just started on a slot that is behind), the bound is `now` minus the first
/// sample, or `now` minus the commit time of the newest change the producer published when
/// that change lies beyond the confirmed position (its commit came after the first
/// unconfirmed byte), whichever is larger. The result is 0 when the slot has confirmed the
/// current position: caught up.
#[derive(Debug, Default)]
pub struct LagClock {
    /// `(when, position)`, oldest first; only the last one at or below the confirmed position
    /// and those above it.
    samples: VecDeque<(DateTime<Utc>, Lsn)>,
}

impl LagClock {
    /// A clock with no samples yet.
    pub fn new() -> LagClock {
        LagClock::default()
    }

    /// Records the reading `(now, current)` and returns the lag in seconds of a slot confirmed
    /// up to `confirmed`; `newest`: the commit LSN and time of the newest published change.
    pub fn observe(
        &mut self,
        now: DateTime<Utc>,
        current: Lsn,
        confirmed: Lsn,
        newest: Option<(Lsn, DateTime<Utc>)>,
    ) -> f64 {
        self.samples.push_back((now, current));
        if confirmed >= current {
            self.samples.clear();
            self.samples.push_back((now, current));
            return 0.0;
        }
        while self.samples.len() > MAX_SAMPLES || self.samples.get(1).is_some_and(|s| s.1 <= confirmed) {
            self.samples.pop_front();
        }
        let age = |t: DateTime<Utc>| (now - t).as_seconds_f64().max(0.0);
        let from_samples = match (self.samples.front(), self.samples.get(1)) {
            // Written after the first sample, by the second.
            (Some((_, below)), Some((t, _))) if *below <= confirmed => age(*t),
            // Written before every sample.
            (Some((t, _)), _) => age(*t),
            (None, _) => 0.0,
        };
        let from_commit = newest.filter(|(lsn, _)| *lsn > confirmed).map_or(0.0, |(_, t)| age(t));
        from_samples.max(from_commit)
    }

    /// Forgets every sample (the slot is gone).
    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn caught_up_is_zero_and_a_stuck_slot_ages_from_the_first_sample_above_it() {
        let mut c = LagClock::new();
        assert_eq!(c.observe(at(0), Lsn(100), Lsn(100), None), 0.0);
        // WAL 100..150 was written between t=0 and t=5; the slot has not confirmed it.
        assert_eq!(c.observe(at(5), Lsn(150), Lsn(100), None), 0.0);
        assert_eq!(c.observe(at(10), Lsn(200), Lsn(100), None), 5.0);
        assert_eq!(c.observe(at(60), Lsn(900), Lsn(120), None), 55.0);
        // Confirmed past the t=5 sample: the first unconfirmed byte is from (5, 10].
        assert_eq!(c.observe(at(65), Lsn(950), Lsn(160), None), 55.0);
        assert_eq!(c.observe(at(70), Lsn(950), Lsn(950), None), 0.0);
    }

    #[test]
    fn a_backlog_older_than_the_samples_is_dated_by_the_newest_published_commit() {
        let mut c = LagClock::new();
        // Started behind: no sample dates the unconfirmed WAL, so the first one bounds it.
        assert_eq!(c.observe(at(100), Lsn(5000), Lsn(100), None), 0.0);
        assert_eq!(c.observe(at(105), Lsn(5000), Lsn(100), None), 5.0);
        // A change committed at t=40 beyond the confirmed position: the backlog is older.
        assert_eq!(c.observe(at(110), Lsn(5000), Lsn(100), Some((Lsn(300), at(40)))), 70.0);
        // A published change at or below the confirmed position says nothing.
        assert_eq!(c.observe(at(115), Lsn(5000), Lsn(300), Some((Lsn(300), at(40)))), 15.0);
    }

    #[test]
    fn a_slot_reads_as_one_line_and_a_foreign_one_says_produce_refuses_it() {
        let state = SlotState {
            active: false,
            active_pid: None,
            confirmed_flush_lsn: Some(Lsn(0x16B3748)),
            wal_status: Some("reserved".into()),
            retained_wal_bytes: Some(2048),
            lag_bytes: Some(0),
            plugin: Some("test_decoding".into()),
            database: Some("other".into()),
            usable: false,
        };
        let slot = SlotStatus {
            name: "s".into(),
            exists: true,
            current_wal_lsn: Lsn(0x16B3748),
            state: Some(state),
        };
        assert_eq!(
            slot.to_string(),
            "Slot        s inactive   confirmed 0/16B3748   retained WAL 2.0 KiB (reserved)   lag 0 B\n            \
             not a pgoutput slot of this database (plugin test_decoding, database other): `produce` refuses it\n"
        );
        let json = serde_json::to_value(&slot).unwrap();
        assert_eq!(
            (json["confirmed_flush_lsn"].as_str(), json["usable"].as_bool()),
            (Some("0/16B3748"), Some(false))
        );
        let missing = SlotStatus { name: "s".into(), exists: false, current_wal_lsn: Lsn(1), state: None };
        assert_eq!(
            serde_json::to_string(&missing).unwrap(),
            r#"{"name":"s","exists":false,"current_wal_lsn":"0/1"}"#
        );
    }

    #[test]
    fn bytes_read_as_a_person_would_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
