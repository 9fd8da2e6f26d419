//! The wire contract between the producer and every reader of the topic: the message headers,
//! their values and parsers, in one place.
//!
//! A message's key is the `order_id` in decimal; its value is the seed's JSON (see
//! [`crate::order`]): the row after the change for an insert (`c`), an update (`u`) and a
//! snapshot read (`r`), the row before it for a delete (`d`). A delete is followed by a
//! tombstone: the same key, no value, the same headers plus [`TOMBSTONE_HEADER`].
//!
//! A `TRUNCATE` of the table (`t`, logical mode) is one message on *every* partition, each
//! numbered in its partition's sequence: key [`TRUNCATE_KEY`], value [`TRUNCATE_VALUE`], the
//! transaction's change headers. A reader of any partition thus sees it after every earlier
//! change of that partition and before every later one, whatever the order's key. The same
//! message opens a snapshot taken after the topic already held changes of an earlier capture
//! (a lost slot): the snapshot's reads then replace everything before them.
//!
//! | header | value |
//! |---|---|
//! | `orderstream.source` | what the producer captures, e.g. `logical:food_delivery_db.roll001_orders` |
//! | `orderstream.epoch` | the id of the producer state that numbered the message (a uuid, new with every new state file) |
//! | `orderstream.seq` | decimal u64, strictly increasing per source and epoch within a partition |
//! | `orderstream.op` | `c`, `u`, `d`, `r` or `t` (Debezium's letters); absent means `c` |
//! | `orderstream.lsn` | the commit LSN of the change's transaction, PostgreSQL's text form (`0/16B3748`); logical mode only |
//! | `orderstream.change_index` | the change's position within its transaction, from 0; logical mode only |
//! | `orderstream.commit_ts` | the commit time, RFC 3339 UTC with microseconds; logical mode only |
//! | `orderstream.tombstone` | `1` on the tombstone that follows a delete |
//!
//! Source, epoch and seq are the message's [`Lineage`]: the consumer drops a message whose
//! lineage already delivered its seq (see [`crate::sink`], "Replays"). Every other header
//! describes the change.
//!
//! A dead letter (a copy of a rejected message on `kafka.dlq_topic`) carries the original key,
//! value and headers, except that the lineage headers are renamed `orderstream.original.source`,
//! `orderstream.original.epoch` and `orderstream.original.seq` ([`original_name`]): a copy that
//! is fixed and published again is a new message, not a replay of the rejected one. It adds:
//!
//! | header | value |
//! |---|---|
//! | `orderstream.reject.reason` | the [`RejectReason`](crate::order::RejectReason) label |
//! | `orderstream.reject.detail` | what exactly was wrong, one line |
//! | `orderstream.source.topic`, `.partition`, `.offset` | where the rejected message was read |

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Header naming what the producer captures (`<mode>:<database>.<table>`).
pub const SOURCE_HEADER: &str = "orderstream.source";
/// Header with the id of the producer state that numbered the message: minted when the state
/// file is created, so a producer that lost its state numbers a new lineage.
pub const EPOCH_HEADER: &str = "orderstream.epoch";
/// Header with the message's sequence number: a decimal u64 that strictly increases, per
/// source and epoch, within each partition. The consumer drops replays by it.
pub const SEQ_HEADER: &str = "orderstream.seq";
/// Header with the change's operation letter ([`Op`]).
pub const OP_HEADER: &str = "orderstream.op";
/// Header with the commit LSN of the change's transaction ([`Lsn`]'s text form).
pub const LSN_HEADER: &str = "orderstream.lsn";
/// Header with the change's index within its transaction (decimal, from 0).
pub const CHANGE_INDEX_HEADER: &str = "orderstream.change_index";
/// Header with the commit time of the change's transaction, RFC 3339 UTC.
pub const COMMIT_TS_HEADER: &str = "orderstream.commit_ts";
/// Header marking the tombstone that follows a delete (value `1`).
pub const TOMBSTONE_HEADER: &str = "orderstream.tombstone";
/// The key of a truncate's messages: no order's (those are decimal), and one per partition, so
/// a compacted topic keeps the latest truncate.
pub const TRUNCATE_KEY: &str = "truncate";
/// The value of a truncate's messages: not empty, so that a compacted topic does not take it
/// for a tombstone, and a consumer that predates `t` sends it to its dead-letter topic
/// (`invalid_header`) instead of skipping it unseen.
pub const TRUNCATE_VALUE: &str = r#"{"op": "t"}"#;

/// Dead-letter header naming the reject reason.
pub const REASON_HEADER: &str = "orderstream.reject.reason";
/// Dead-letter header with the one-line detail of the reject.
pub const DETAIL_HEADER: &str = "orderstream.reject.detail";
/// Dead letters of the producer: the size in bytes of the message the change would have been.
pub const SIZE_HEADER: &str = "orderstream.reject.size";
/// Dead-letter header with the topic the message was read from.
pub const SOURCE_TOPIC_HEADER: &str = "orderstream.source.topic";
/// Dead-letter header with the partition the message was read from.
pub const SOURCE_PARTITION_HEADER: &str = "orderstream.source.partition";
/// Dead-letter header with the offset the message was read from.
pub const SOURCE_OFFSET_HEADER: &str = "orderstream.source.offset";

/// How far below the last seq of its lineage a seq may be and still count as a replay. A
/// replay is a message the producer sent again after a crash: one of its last unsaved batch,
/// at most a few `max_batch_rows` (≤ 10 million) below the newest seq of its lineage. A seq
/// `REPLAY_WINDOW` or more away from the last one comes from another numbering (a copied
/// header with a made-up seq, like `18446744073709551615`); comparing the real numbering with
/// it would make one forged message hide every later one. The producer applies the same bound
/// to what it finds in the topic beyond its saved seq.
pub const REPLAY_WINDOW: u64 = 1 << 32;

/// The name a dead letter gives a lineage header of the rejected message
/// (`orderstream.original.source`, `.epoch`, `.seq`); `None` for any other header, which keeps
/// its name.
pub fn original_name(header: &str) -> Option<&'static str> {
    match header {
        SOURCE_HEADER => Some("orderstream.original.source"),
        EPOCH_HEADER => Some("orderstream.original.epoch"),
        SEQ_HEADER => Some("orderstream.original.seq"),
        _ => None,
    }
}

/// Who numbered a message and its number: the headers the replay filter goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage<'a> {
    /// [`SOURCE_HEADER`].
    pub source: &'a str,
    /// [`EPOCH_HEADER`]; absent on messages of producers before it existed.
    pub epoch: Option<&'a str>,
    /// [`SEQ_HEADER`].
    pub seq: u64,
}

impl<'a> Lineage<'a> {
    /// The lineage of a message: `None` unless it has a UTF-8 source and a decimal seq (an
    /// unusable epoch counts as none).
    pub fn from_headers(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Option<Lineage<'a>> {
        let (mut source, mut epoch, mut seq) = (None, None, None);
        for (name, value) in headers {
            let text = || value.and_then(|v| std::str::from_utf8(v).ok()).filter(|t| !t.is_empty());
            match name {
                SOURCE_HEADER => source = text(),
                EPOCH_HEADER => epoch = text(),
                SEQ_HEADER => seq = text().and_then(|t| t.parse::<u64>().ok()),
                _ => {}
            }
        }
        Some(Lineage { source: source?, epoch, seq: seq? })
    }

    /// The key of the lineage in the consumer's replay filter, written into `buf`: the source,
    /// then `#` and the epoch when there is one.
    pub fn key_into(&self, buf: &mut String) {
        buf.clear();
        buf.push_str(self.source);
        if let Some(e) = self.epoch {
            buf.push('#');
            buf.push_str(e);
        }
    }
}

impl fmt::Display for Lineage<'_> {
    /// `source <source>` and `epoch <epoch>` when there is one, clipped for log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source {}", clip_to(self.source, 120))?;
        if let Some(e) = self.epoch {
            write!(f, " epoch {}", clip_to(e, 60))?;
        }
        Ok(())
    }
}

/// What a change did to its row (Debezium's letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `c`: inserted.
    Insert,
    /// `u`: updated.
    Update,
    /// `d`: deleted (the value is the row before).
    Delete,
    /// `r`: read by the initial snapshot.
    Read,
    /// `t`: the table was truncated (no row: every order before it is gone).
    Truncate,
}

impl Op {
    /// The one-letter form written in [`OP_HEADER`] and the lake's `op` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        match s {
            "c" => Ok(Op::Insert),
            "u" => Ok(Op::Update),
            "d" => Ok(Op::Delete),
            "r" => Ok(Op::Read),
            "t" => Ok(Op::Truncate),
            _ => Err(format!("`{}` is not an operation (c, u, d, r or t)", clip(s))),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's text form: two hexadecimal halves, `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("`{}` is not an LSN (like 0/16B3748)", clip(s));
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

/// The [`COMMIT_TS_HEADER`] form of a commit time: RFC 3339, UTC, microseconds.
pub fn format_commit_ts(ts: &DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a [`COMMIT_TS_HEADER`] value (any RFC 3339 offset is accepted and converted to UTC).
pub fn parse_commit_ts(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("`{}` is not an RFC 3339 time", clip(s)))
}

/// Parses a [`CHANGE_INDEX_HEADER`] value.
pub fn parse_change_index(s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .ok()
        .filter(|i| *i >= 0)
        .ok_or_else(|| format!("`{}` is not a change index (an integer ≥ 0)", clip(s)))
}

/// The change metadata a message carries in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeMeta {
    /// The operation ([`Op::Insert`] when the header is absent).
    pub op: Op,
    /// The commit LSN (logical mode).
    pub lsn: Option<Lsn>,
    /// The index within the transaction (logical mode).
    pub change_index: Option<i32>,
    /// The commit time (logical mode).
    pub commit_ts: Option<DateTime<Utc>>,
    /// Whether this is the tombstone that follows a delete.
    pub tombstone: bool,
}

impl Default for ChangeMeta {
    fn default() -> ChangeMeta {
        ChangeMeta { op: Op::Insert, lsn: None, change_index: None, commit_ts: None, tombstone: false }
    }
}

impl ChangeMeta {
    /// Reads the change headers from `(name, value)` pairs; other headers are ignored. A
    /// present but malformed value is an error naming the header.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<ChangeMeta, String> {
        let mut meta = ChangeMeta::default();
        for (name, value) in headers {
            let known = [OP_HEADER, LSN_HEADER, CHANGE_INDEX_HEADER, COMMIT_TS_HEADER, TOMBSTONE_HEADER];
            if !known.contains(&name) {
                continue;
            }
            let text = value
                .map(std::str::from_utf8)
                .transpose()
                .map_err(|_| format!("header {name} is not UTF-8"))?
                .unwrap_or("");
            let with_name = |e: String| format!("header {name}: {e}");
            match name {
                OP_HEADER => meta.op = text.parse().map_err(with_name)?,
                LSN_HEADER => meta.lsn = Some(text.parse().map_err(with_name)?),
                CHANGE_INDEX_HEADER => meta.change_index = Some(parse_change_index(text).map_err(with_name)?),
                COMMIT_TS_HEADER => meta.commit_ts = Some(parse_commit_ts(text).map_err(with_name)?),
                _ => meta.tombstone = text == "1",
            }
        }
        Ok(meta)
    }
}

fn clip(s: &str) -> &str {
    clip_to(s, 40)
}

/// At most the first `n` characters of `s`, for a log line.
pub fn clip_to(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form_round_trips() {
        let lsn: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16B3748));
        assert_eq!(lsn.to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert_eq!("1/ff".parse::<Lsn>().unwrap(), Lsn(0x1_0000_00FF));
        for bad in ["", "0", "/1", "1/", "x/1", "1/123456789", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ops_parse_and_print() {
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Read, Op::Truncate] {
            assert_eq!(op.as_str().parse::<Op>().unwrap(), op);
        }
        assert!("x".parse::<Op>().unwrap_err().contains("not an operation"));
    }

    #[test]
    fn headers_give_the_lineage() {
        let h = |pairs: &[(&'static str, &'static str)]| -> Option<Lineage<'static>> {
            Lineage::from_headers(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect::<Vec<_>>())
        };
        let l = h(&[(SOURCE_HEADER, "poll:db.t"), (SEQ_HEADER, "7"), (OP_HEADER, "c")]).unwrap();
        assert_eq!(l, Lineage { source: "poll:db.t", epoch: None, seq: 7 });
        let mut key = String::from("old");
        l.key_into(&mut key);
        assert_eq!(key, "poll:db.t");
        let l =
            h(&[(EPOCH_HEADER, "e1"), (SOURCE_HEADER, "poll:db.t"), (SEQ_HEADER, "18446744073709551615")]);
        let l = l.unwrap();
        assert_eq!((l.epoch, l.seq), (Some("e1"), u64::MAX));
        l.key_into(&mut key);
        assert_eq!(key, "poll:db.t#e1");
        assert_eq!(l.to_string(), "source poll:db.t epoch e1");
        assert_eq!(h(&[(SOURCE_HEADER, "poll:db.t"), (SEQ_HEADER, "x")]), None);
        assert_eq!(h(&[(SOURCE_HEADER, "poll:db.t"), (SEQ_HEADER, "-1")]), None);
        assert_eq!(h(&[(SEQ_HEADER, "1")]), None);
        assert_eq!(h(&[(SOURCE_HEADER, ""), (SEQ_HEADER, "1")]), None);
        assert_eq!(original_name(SEQ_HEADER), Some("orderstream.original.seq"));
        assert_eq!(original_name(OP_HEADER), None);
        assert_eq!(original_name(SOURCE_TOPIC_HEADER), None);
    }

    #[test]
    fn headers_give_the_change() {
        let h: Vec<(&str, Option<&[u8]>)> = vec![
            (SOURCE_HEADER, Some(b"logical:x".as_slice())),
            (OP_HEADER, Some(b"u".as_slice())),
            (LSN_HEADER, Some(b"0/16B3748".as_slice())),
            (CHANGE_INDEX_HEADER, Some(b"3".as_slice())),
            (COMMIT_TS_HEADER, Some(b"2026-11-26T06:00:00.000001Z".as_slice())),
        ];
        let m = ChangeMeta::from_headers(h).unwrap();
        assert_eq!(m.op, Op::Update);
        assert_eq!(m.lsn, Some(Lsn(0x16B3748)));
        assert_eq!(m.change_index, Some(3));
        assert_eq!(format_commit_ts(&m.commit_ts.unwrap()), "2026-11-26T06:00:00.000001Z");
        assert_eq!(ChangeMeta::from_headers(vec![]).unwrap(), ChangeMeta::default());
        let e = ChangeMeta::from_headers(vec![(LSN_HEADER, Some(b"zz".as_slice()))]).unwrap_err();
        assert_eq!(e, "header orderstream.lsn: `zz` is not an LSN (like 0/16B3748)");
        assert!(ChangeMeta::from_headers(vec![(CHANGE_INDEX_HEADER, Some(b"-1".as_slice()))]).is_err());
    }
}
