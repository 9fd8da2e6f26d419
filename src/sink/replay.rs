//! The replay filter: per partition, the last seq each producer lineage delivered as a row, and
//! the rule that drops a message as a replay of one already handled.
//!
//! A lineage is a message's `orderstream.source` and `orderstream.epoch` (see
//! [`Lineage`]); its `orderstream.seq` strictly increases within a partition. The filter is a
//! second line of defence: the producer's recovery already avoids sending a message twice, and
//! the filter catches what slips past it (a request of a crashed producer that the broker
//! appends after the new instance re-sent it). Three rules keep it from dropping new orders:
//!
//! * **Only a row advances it.** A lineage's last seq moves only when a message becomes a row
//!   (its change headers and its value are valid). A reject or a tombstone with a lineage is
//!   checked (a replayed one is dropped) but moves nothing: neither is something the lake
//!   holds, and a malformed message with a made-up seq must not hide the orders after it.
//! * **A new state is a new lineage.** The producer mints the epoch (a uuid v7) when it creates
//!   its state file and sends it with every message, so a producer that lost its state, or a
//!   staging producer whose messages are mirrored in, numbers a lineage of its own, compared
//!   with nothing before it. Messages without an epoch (producers before it existed, hand-made
//!   fixtures) form the lineage of their source alone.
//! * **A replay is near the last seq.** A message is a replay only if its seq is at or below
//!   the lineage's last and less than [`REPLAY_WINDOW`] (2^32) below it. A producer re-sends
//!   only its last unsaved batch, a few `max_batch_rows` at most, so a real replay is always
//!   that close. A seq 2^32 or more away from the last is from another numbering: a copied
//!   header with a made-up seq (`18446744073709551615`), or a producer numbering again from 1
//!   under the same lineage. Such a message is not a replay; it becomes a row and its seq the
//!   new last, and the next message of the real numbering, as far from it, is not a replay
//!   either and brings the last back. So one forged seq costs nothing, where comparing with
//!   the maximum would drop every later order of the partition forever.
//!
//! **Positions, for log-based capture.** A seq says which message of a numbering a copy is,
//! but a crashed producer's request that arrives late can carry changes its successor
//! numbered again: recovery found *part* of the dead producer's last batch (one partition's
//! share), numbered the missing changes after the highest seq it found, and the late request
//! with the original (lower) numbers reached the other partition first. Both copies then pass
//! the seq rule. The change's log position tells them apart: within one lineage, a partition
//! receives snapshot reads in `order_id` order and then changes in `(commit LSN, index)` order,
//! each position once. So a row whose position is at or below the last one its lineage
//! delivered to the partition ([`LastPosition`]) is a replay too. Polled orders carry no
//! position and are left to the seq rule.
//!
//! What this cannot do: tell a forged message from a real one. A copy of a real message's
//! headers (epoch included) with a seq slightly above the real ones still makes the real
//! messages up to that seq look like replays; a copied epoch with a far seq, placed between an
//! original and its replay, lets that one replay through. Both need someone writing our
//! headers on purpose; every leap of 2^32 or more is logged with its offset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::order::Change;
use crate::wire::{Lineage, Lsn, Op, REPLAY_WINDOW};

/// Where a lineage stands in one partition, by log position: the last snapshot read's
/// `order_id`, and the last change's `(commit LSN, index)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPosition {
    /// The last snapshot read (`op` `r`): its `order_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<i64>,
    /// The last change from the log: its commit LSN and index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<(u64, i32)>,
}

/// A row's log position: a snapshot read by `order_id`, a change by `(LSN, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A snapshot read.
    Read(i64),
    /// A change from the log.
    Change(u64, i32),
}

impl Position {
    /// The position of a row with these change headers; `None` for a polled order.
    pub fn of(change: &Change, order_id: i64) -> Option<Position> {
        match (change.op, change.lsn, change.change_index) {
            (Op::Read, _, _) => Some(Position::Read(order_id)),
            (_, Some(lsn), Some(i)) => Some(Position::Change(lsn.cast_unsigned(), i)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Read(id) => write!(f, "snapshot order_id {id}"),
            Position::Change(lsn, i) => write!(f, "{}:{i}", Lsn(*lsn)),
        }
    }
}

/// The last position of `key` if a row at `p` is a replay of one already delivered.
pub fn position_replay(
    positions: &BTreeMap<String, LastPosition>,
    key: &str,
    p: Position,
) -> Option<Position> {
    let last = positions.get(key)?;
    match p {
        Position::Read(id) => last.read.filter(|l| id <= *l).map(Position::Read),
        Position::Change(lsn, i) => {
            last.change.filter(|l| (lsn, i) <= *l).map(|(l, li)| Position::Change(l, li))
        }
    }
}

/// Records that a row at `p` of lineage `key` was delivered.
pub fn advance_position(positions: &mut BTreeMap<String, LastPosition>, key: &str, p: Position) {
    let last = positions.entry(key.to_string()).or_default();
    match p {
        Position::Read(id) => last.read = Some(id),
        Position::Change(lsn, i) => last.change = Some((lsn, i)),
    }
}

/// The last seq of `key` if the message numbered `seq` is a replay of one already handled.
pub fn replay_of(sources: &BTreeMap<String, u64>, key: &str, seq: u64) -> Option<u64> {
    sources.get(key).copied().filter(|last| seq <= *last && last - seq < REPLAY_WINDOW)
}

/// Records that message `seq` of lineage `key` became a row. Returns the previous last seq when
/// the new one is [`REPLAY_WINDOW`] or more away from it (a leap: see the module doc).
pub fn advance(sources: &mut BTreeMap<String, u64>, key: &str, seq: u64) -> Option<u64> {
    match sources.get_mut(key) {
        Some(last) => {
            let before = std::mem::replace(last, seq);
            (before.abs_diff(seq) >= REPLAY_WINDOW).then_some(before)
        }
        None => {
            sources.insert(key.to_string(), seq);
            None
        }
    }
}

/// What the filter met during one batch, logged once the batch commits: one warning per
/// partition and lineage, so that `consumer_duplicates_total` above zero names its source.
#[derive(Default)]
pub struct Notes(BTreeMap<(i32, String), Note>);

/// One partition's and lineage's share of [`Notes`].
#[derive(Default)]
struct Note {
    /// The lineage, as log lines show it.
    lineage: String,
    replays: u64,
    /// Offset, seq and the lineage's last seq of the first replay.
    first_replay: (i64, u64, u64),
    /// Rows dropped by their log position, and the first: offset, seq, position, last position.
    positions: u64,
    first_position: Option<(i64, u64, Position, Position)>,
    leaps: u64,
    /// Offset, previous last and new seq of the first leap, and of the last.
    first_leap: (i64, u64, u64),
    last_leap: (i64, u64, u64),
}

impl Notes {
    fn note(&mut self, partition: i32, key: &str, lineage: &Lineage<'_>) -> &mut Note {
        self.0
            .entry((partition, key.to_string()))
            .or_insert_with(|| Note { lineage: lineage.to_string(), ..Note::default() })
    }

    /// A replay of `lineage` (filter key `key`) dropped at `offset`; `last` is the lineage's
    /// last seq.
    pub fn replay(&mut self, partition: i32, key: &str, lineage: &Lineage<'_>, offset: i64, last: u64) {
        let n = self.note(partition, key, lineage);
        if n.replays == 0 {
            n.first_replay = (offset, lineage.seq, last);
        }
        n.replays += 1;
    }

    /// A row of `lineage` at `offset` dropped because its position `at` is at or below the
    /// lineage's `last`.
    pub fn position_replay(
        &mut self,
        partition: i32,
        key: &str,
        lineage: &Lineage<'_>,
        offset: i64,
        (at, last): (Position, Position),
    ) {
        let n = self.note(partition, key, lineage);
        n.first_position.get_or_insert((offset, lineage.seq, at, last));
        n.positions += 1;
    }

    /// A leap of `lineage` from `from` to its seq at `offset`.
    pub fn leap(&mut self, partition: i32, key: &str, lineage: &Lineage<'_>, offset: i64, from: u64) {
        let n = self.note(partition, key, lineage);
        n.last_leap = (offset, from, lineage.seq);
        if n.leaps == 0 {
            n.first_leap = n.last_leap;
        }
        n.leaps += 1;
    }

    /// Logs one warning per partition and lineage of `topic`.
    pub fn log(&self, topic: &str) {
        for ((p, _), n) in &self.0 {
            if n.replays > 0 {
                let (offset, seq, last) = n.first_replay;
                tracing::warn!(
                    "{topic}/{p}: {} replayed message(s) of {} dropped (counted in consumer_duplicates_total), \
                     the first at offset {offset} with seq {seq}, at or below the last seq {last} of that \
                     lineage: its producer sent them again after a crash, or its messages were published \
                     again with their headers",
                    n.replays,
                    n.lineage
                );
            }
            if let Some((offset, seq, at, last)) = n.first_position {
                tracing::warn!(
                    "{topic}/{p}: {} message(s) of {} dropped as replays by their log position (counted in \
                     consumer_duplicates_total), the first at offset {offset} with seq {seq} and position {at}, at or \
                     below the last position {last} of that lineage: a crashed producer's request that arrived late, \
                     whose changes its successor had sent again under new numbers",
                    n.positions,
                    n.lineage
                );
            }
            if n.leaps > 0 {
                let leap =
                    |(offset, from, to): (i64, u64, u64)| format!("at offset {offset} from {from} to {to}");
                let last =
                    if n.leaps > 1 { format!(", the last {}", leap(n.last_leap)) } else { String::new() };
                tracing::warn!(
                    "{topic}/{p}: the seq of {} leapt by 2^32 or more {} time(s), the first {}{last}: not one \
                     producer's numbering (a copied header with a made-up seq, or a producer numbering \
                     again under the same lineage); replays are checked against the newest",
                    n.lineage,
                    n.leaps,
                    leap(n.first_leap),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(seq: u64) -> Lineage<'static> {
        Lineage { source: "poll:db.t", epoch: Some("e"), seq }
    }

    #[test]
    fn replays_are_near_and_at_or_below_the_last_seq() {
        let mut f = BTreeMap::new();
        assert_eq!(replay_of(&f, "k", 5), None);
        assert_eq!(advance(&mut f, "k", 5), None);
        assert_eq!(replay_of(&f, "k", 5), Some(5));
        assert_eq!(replay_of(&f, "k", 1), Some(5));
        assert_eq!(replay_of(&f, "k", 6), None);
        assert_eq!(replay_of(&f, "other", 1), None);
        assert_eq!(advance(&mut f, "k", 9), None);
        assert_eq!(replay_of(&f, "k", 0), Some(9));
        // A far-away seq is another numbering: compared with nothing, and it becomes the last.
        let far = 9 + REPLAY_WINDOW;
        assert_eq!(replay_of(&f, "k", far), None);
        assert_eq!(advance(&mut f, "k", far), Some(9));
        assert_eq!(replay_of(&f, "k", 9), None);
        assert_eq!(replay_of(&f, "k", 10), Some(far));
    }

    #[test]
    fn a_forged_maximum_does_not_hide_the_orders_after_it() {
        let mut f = BTreeMap::new();
        advance(&mut f, "k", 10);
        assert_eq!(replay_of(&f, "k", u64::MAX), None);
        assert_eq!(advance(&mut f, "k", u64::MAX), Some(10));
        // The real numbering goes on: not replays, and the filter follows it again.
        assert_eq!(replay_of(&f, "k", 11), None);
        assert_eq!(advance(&mut f, "k", 11), Some(u64::MAX));
        assert_eq!(replay_of(&f, "k", 12), None);
        assert_eq!(advance(&mut f, "k", 12), None);
        assert_eq!(replay_of(&f, "k", 11), Some(12));
        assert_eq!(replay_of(&f, "k", u64::MAX), None);
    }

    #[test]
    fn rows_at_or_below_the_last_position_are_replays() {
        let mut f = BTreeMap::new();
        let change = |lsn, i| Position::Change(lsn, i);
        assert_eq!(position_replay(&f, "k", Position::Read(5)), None);
        advance_position(&mut f, "k", Position::Read(5));
        assert_eq!(position_replay(&f, "k", Position::Read(5)), Some(Position::Read(5)));
        assert_eq!(position_replay(&f, "k", Position::Read(6)), None);
        // Changes follow the snapshot; reads and changes are compared each with their kind.
        assert_eq!(position_replay(&f, "k", change(100, 0)), None);
        advance_position(&mut f, "k", change(100, 1));
        assert_eq!(position_replay(&f, "k", change(100, 1)), Some(change(100, 1)));
        assert_eq!(position_replay(&f, "k", change(90, 7)), Some(change(100, 1)));
        assert_eq!(position_replay(&f, "k", change(100, 2)), None);
        assert_eq!(position_replay(&f, "k", change(101, 0)), None);
        assert_eq!(position_replay(&f, "other", change(1, 0)), None);
        let polled = Change::default();
        assert_eq!(Position::of(&polled, 3), None);
        let read = Change { op: Op::Read, lsn: Some(100), change_index: Some(0), ..polled };
        assert_eq!(Position::of(&read, 3), Some(Position::Read(3)));
        let update = Change { op: Op::Update, ..read };
        assert_eq!(Position::of(&update, 3), Some(change(100, 0)));
        assert_eq!(change(0x16B3748, 2).to_string(), "0/16B3748:2");
    }

    #[test]
    fn notes_keep_the_first_of_each_kind() {
        let mut notes = Notes::default();
        notes.replay(0, "k", &lineage(3), 40, 7);
        notes.replay(0, "k", &lineage(4), 41, 7);
        notes.leap(0, "k", &lineage(u64::MAX), 42, 7);
        notes.replay(1, "k", &lineage(1), 5, 2);
        let n = &notes.0[&(0, "k".to_string())];
        assert_eq!((n.replays, n.first_replay, n.leaps, n.first_leap), (2, (40, 3, 7), 1, (42, 7, u64::MAX)));
        notes.leap(0, "k", &lineage(8), 43, u64::MAX);
        let n = &notes.0[&(0, "k".to_string())];
        assert_eq!((n.leaps, n.first_leap, n.last_leap), (2, (42, 7, u64::MAX), (43, u64::MAX, 8)));
        assert_eq!(n.lineage, "source poll:db.t epoch e");
        assert_eq!(notes.0[&(1, "k".to_string())].replays, 1);
    }
}
