//! The producer's state file, `<last_processed_timestamp_location>/last_timestamp.txt`.
//!
//! The first line is the seed's content (`2025-01-18 12:33:00`, with microseconds when
//! needed), so a person or a script reading it as the seed did sees the watermark. The lines
//! after it say precisely where capture stands (`order_id=`, `open=`), the last sequence number
//! used (`seq=`), the epoch of the numbering (`epoch=`, a uuid v7 minted when the state is
//! created, sent as `orderstream.epoch`) and, per partition, the offset after the last message
//! of the last saved batch (`offsets=0:4,1:3,2:3`). It is replaced atomically (write a
//! temporary file, fsync, rename, fsync the folder) and only after the broker acknowledged
//! every message of the batch, so it is never ahead of Kafka.
//!
//! The epoch lives and dies with this file. A producer that starts without it (first start,
//! file lost or removed) mints a new one, and the consumer then compares its sequence numbers
//! with nothing published before: whatever the numbers, its orders are not taken for replays
//! of another state's. A file without `epoch=` (the seed's, or one from before epochs) gets a
//! new epoch too. The producer saves the state at every start, before any message carries its
//! epoch, so a crash before the first batch is saved finds the same epoch again: recovery takes
//! only this epoch's snapshot reads (and those without one) for its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::source::Source;

/// The file name, as in the seed.
pub const STATE_FILE: &str = "last_timestamp.txt";

/// What the producer has durably published.
#[derive(Debug, Clone, PartialEq)]
pub struct State<P> {
    /// The source position after the last saved batch.
    pub position: P,
    /// The last sequence number used.
    pub seq: u64,
    /// The epoch of the numbering ([`crate::wire::EPOCH_HEADER`]).
    pub epoch: String,
    /// Per partition, the offset after the last message of the last saved batch. `None` when
    /// unknown (no state file, or the seed's one-line file): recovery then reads the whole topic.
    pub offsets: Option<BTreeMap<i32, i64>>,
    /// What the state belongs to (`for=` line): the capture (mode, database, table), the topic
    /// and the broker's cluster id. `None` in a file from before it existed.
    pub owner: Option<Owner>,
}

/// The pipeline a state file belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `poll:<database>.<table>` or `logical:<database>.<table>`.
    pub source: String,
    /// The topic it publishes to.
    pub topic: String,
    /// The cluster id the broker reports, if it reports one.
    pub cluster: Option<String>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.source, self.topic)?;
        if let Some(c) = &self.cluster {
            write!(f, " @ {c}")?;
        }
        Ok(())
    }
}

impl Owner {
    fn parse(v: &str) -> Option<Owner> {
        let (source, rest) = v.split_once(" -> ")?;
        let (topic, cluster) = match rest.split_once(" @ ") {
            Some((t, c)) => (t, Some(c.to_string())),
            None => (rest, None),
        };
        Some(Owner { source: source.into(), topic: topic.into(), cluster })
    }

    /// Whether a state written for `self` may be used by `other` (a cluster id only one side
    /// knows does not count).
    pub fn fits(&self, other: &Owner) -> bool {
        self.source == other.source
            && self.topic == other.topic
            && (self.cluster.is_none() || other.cluster.is_none() || self.cluster == other.cluster)
    }
}

impl<P> State<P> {
    /// The state before anything was published.
    pub fn beginning<S: Source<Position = P>>() -> State<P> {
        State { position: S::beginning(), seq: 0, epoch: new_epoch(), offsets: None, owner: None }
    }
}

/// A new epoch: a uuid v7 (its time part says when the state was created; the random part keeps
/// two states from ever sharing one).
pub fn new_epoch() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The state file's path.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the state file; `Ok(None)` when there is none. A corrupt file is an error naming the
/// file and the line, never a silent restart from zero.
pub fn load<S: Source>(path: &Path) -> Result<Option<State<S::Position>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Storage(format!("{}: cannot read: {e}", path.display()))),
    };
    parse::<S>(&text).map(Some).map_err(|m| {
        Error::Storage(format!("{}: corrupt producer state ({m}); fix or remove the file", path.display()))
    })
}

fn parse<S: Source>(text: &str) -> std::result::Result<State<S::Position>, String> {
    let mut source_lines = Vec::new();
    let mut seq = 0;
    let mut epoch = None;
    let mut offsets = None;
    let mut owner = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(v) = line.strip_prefix("seq=") {
            seq = v.parse().map_err(|_| format!("line {}: seq `{v}` is not a number", i + 1))?;
        } else if let Some(v) = line.strip_prefix("epoch=") {
            if v.is_empty() || v.contains(char::is_whitespace) {
                return Err(format!("line {}: epoch `{v}` is not an id", i + 1));
            }
            epoch = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("for=") {
            owner = Some(
                Owner::parse(v).ok_or_else(|| format!("line {}: `{v}` is not `source -> topic`", i + 1))?,
            );
        } else if let Some(v) = line.strip_prefix("offsets=") {
            let mut map = BTreeMap::new();
            for pair in v.split(',').filter(|s| !s.is_empty()) {
                let parsed = pair.split_once(':').and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
                let (p, o) =
                    parsed.ok_or_else(|| format!("line {}: `{pair}` is not partition:offset", i + 1))?;
                map.insert(p, o);
            }
            offsets = Some(map);
        } else {
            source_lines.push(line);
        }
    }
    if source_lines.is_empty() {
        return Err("the file is empty".into());
    }
    let position = S::decode(&source_lines)?;
    Ok(State { position, seq, epoch: epoch.unwrap_or_else(new_epoch), offsets, owner })
}

/// Writes the state file atomically.
pub fn save<S: Source>(path: &Path, state: &State<S::Position>) -> Result<()> {
    let mut text = S::encode(&state.position).join("\n");
    text.push_str(&format!("\nseq={}\nepoch={}\n", state.seq, state.epoch));
    if let Some(offsets) = &state.offsets {
        let list: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        text.push_str(&format!("offsets={}\n", list.join(",")));
    }
    if let Some(owner) = &state.owner {
        text.push_str(&format!("for={owner}\n"));
    }
    // A temp name of this process's own: a second writer (which the capture's writer lock
    // refuses) could never rename another's half-written file.
    write_atomic(path, &path.with_extension(format!("{}.tmp", std::process::id())), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::poll::PollSource;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("orderstream-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir);
        let text = "2025-01-18 12:33:00\norder_id=110\nseq=10\nepoch=0190f1d2-7c4e-7000-8000-00000000000a\n\
                    offsets=0:4,1:3,2:3\nfor=poll:food_delivery_db.roll001_orders -> orders @ cluster-1\n";
        std::fs::write(&p, text).unwrap();
        let state = load::<PollSource>(&p).unwrap().unwrap();
        assert_eq!(state.seq, 10);
        assert_eq!(state.epoch, "0190f1d2-7c4e-7000-8000-00000000000a");
        assert_eq!(state.offsets, Some([(0, 4), (1, 3), (2, 3)].into()));
        let owner = state.owner.clone().unwrap();
        assert_eq!(owner.to_string(), "poll:food_delivery_db.roll001_orders -> orders @ cluster-1");
        let elsewhere = |source: &str, topic: &str, cluster: Option<&str>| Owner {
            source: source.into(),
            topic: topic.into(),
            cluster: cluster.map(Into::into),
        };
        assert!(owner.fits(&elsewhere("poll:food_delivery_db.roll001_orders", "orders", None)));
        assert!(!owner.fits(&elsewhere("poll:food_delivery_db.roll001_orders", "orders", Some("cluster-2"))));
        assert!(!owner.fits(&elsewhere("poll:food_delivery_db.other", "orders", Some("cluster-1"))));
        assert!(!owner.fits(&elsewhere("poll:food_delivery_db.roll001_orders", "other", Some("cluster-1"))));
        save::<PollSource>(&p, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn the_seed_file_loads_with_unknown_offsets() {
        let state = parse::<PollSource>("2025-01-18 12:33:00\n").unwrap();
        assert_eq!(state.offsets, None);
        assert_eq!(state.seq, 0);
        // A new epoch each time: the numbering of a file without one is new.
        let again = parse::<PollSource>("2025-01-18 12:33:00\n").unwrap();
        assert_ne!(state.epoch, again.epoch);
        assert_eq!(uuid::Uuid::parse_str(&state.epoch).map(|u| u.get_version_num()), Ok(7));
    }

    #[test]
    fn corrupt_files_are_errors() {
        assert!(parse::<PollSource>("").is_err());
        assert!(parse::<PollSource>("garbage\n").is_err());
        assert!(parse::<PollSource>("2025-01-18 12:33:00\nseq=x\n").unwrap_err().contains("line 2"));
        assert!(parse::<PollSource>("2025-01-18 12:33:00\noffsets=0-4\n").unwrap_err().contains("line 2"));
        assert!(parse::<PollSource>("2025-01-18 12:33:00\nepoch=\n").unwrap_err().contains("line 2"));
        let dir = std::env::temp_dir().join(format!("orderstream-state-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(path(&dir), "\u{0}\u{1}junk").unwrap();
        let e = load::<PollSource>(&path(&dir)).unwrap_err().to_string();
        assert!(e.contains("last_timestamp.txt: corrupt producer state"), "{e}");
    }
}
