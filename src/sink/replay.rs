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
//! What this cannot do: tell a forged message from a real one. A copy of a real message's
//! headers (epoch included) with a seq slightly above the real ones still makes the real
//! messages up to that seq look like replays; a copied epoch with a far seq, placed between an
//! original and its replay, lets that one replay through. Both need someone writing our
//! headers on purpose; every leap of 2^32 or more is logged with its offset.

use std::collections::BTreeMap;

use crate::wire::{Lineage, REPLAY_WINDOW};

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
