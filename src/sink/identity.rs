//! Which checkpoint writes a lake. A lake's rows and its checkpoint's positions are one record
//! of what was read: a second checkpoint writing the same lake writes the topic into it a
//! second time (and its recovery deletes the first one's unpublished files), and a checkpoint
//! pointed at another lake skips, in that lake, everything it read before. So the two are
//! paired once and checked at every start, before the consumer touches either:
//!
//! ```text
//! <checkpoint>/lake_id              the pair's id (a uuid v7), one line
//! <lake>/_orderstream_checkpoint    the same id, and where the pair last was (JSON)
//! ```
//!
//! The pair is recognised by the id, not by paths: moving (or renaming) the lake and its
//! checkpoint together keeps the id on both sides, so the consumer goes on and records the new
//! paths. The paths in the lake's file only name the checkpoint in messages, and tell a moved
//! checkpoint from a copy: a checkpoint whose id matches but which is not the folder the lake
//! names, while that folder still holds the same id and the lake has not moved, is a copy
//! writing the same lake, and is refused like any second checkpoint.
//!
//! The lake's file starts with `_`, so Spark, pyarrow and Hive-style readers skip it, and no
//! `*.parquet` glob (DuckDB) matches it.
//!
//! Pairs are made when neither side has an id: a new lake and checkpoint, or both written by a
//! version from before the pair existed. Except when the checkpoint is empty and the lake
//! already holds files: pairing them would make that lake belong to a folder that is not its
//! checkpoint; the partition check ([`super::engine::Engine::check_start`]) refuses that start
//! instead, and `--from-beginning` pairs them deliberately. The lake's file is written first:
//! a start stopped before the checkpoint's file leaves a lake naming this very folder, and a
//! checkpoint without an id in the folder the lake names is adopted (it is also what a lost
//! checkpoint folder made again looks like; the partition check refuses to write the topic
//! into the lake a second time from it).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use crate::durable::{io_error, sync_dir, write_atomic};
use crate::error::{Error, Result};

/// The file at the lake root naming the checkpoint that writes the lake.
pub const LAKE_FILE: &str = "_orderstream_checkpoint";
/// The file in the checkpoint folder holding the id of the lake it writes.
pub const CHECKPOINT_FILE: &str = "lake_id";

/// The content of [`LAKE_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LakeRecord {
    /// The pair's id, also in `<checkpoint>/lake_id`.
    lake_id: String,
    /// The checkpoint folder (canonical) when the pair was made or last seen moved.
    checkpoint: String,
    /// The lake root (canonical) at that time.
    lake: String,
}

/// The checkpoint and lake as configured, with their canonical paths.
struct Here<'a> {
    cp: &'a Checkpoint,
    checkpoint: String,
    lake: String,
}

/// Checks that the configured lake is the one the configured checkpoint writes, pairing them
/// when neither has an id yet. Refusals are one line naming both sides and how to start over.
pub fn check(cp: &Checkpoint, from_beginning: bool) -> Result<()> {
    // The members of a group share the checkpoint folder (and its flock): one at a time, so
    // members starting together on new folders pair them once, with one id.
    let folder = fs::File::open(cp.dir()).map_err(|e| io_error("cannot open", cp.dir(), e))?;
    folder.lock().map_err(|e| io_error("cannot lock", cp.dir(), e))?;
    let here = Here { cp, checkpoint: real(cp.dir()), lake: real(cp.lake()) };
    let id = read_id(cp.dir())?;
    let record = read_record(cp.lake())?;
    let empty = !cp.has_committed()?;
    match (id, record) {
        (Some(id), Some(r)) if id == r.lake_id => moved_or_copied(&here, &r),
        (Some(id), Some(r)) => Err(another_checkpoint(&here, &r, Some(&id), false)),
        // Paired, but nothing was ever committed: the lake cannot lack anything.
        (Some(id), None) if empty => write_record(&here, &id),
        (Some(id), None) => Err(Error::Setup(format!(
            "the checkpoint {} writes the lake with id {id}, but the lake {} has no {LAKE_FILE}: it is a new or \
             recreated folder, or datalake.path points at another one. The checkpoint holds the positions of what \
             its lake held, so writing on would leave this lake without those rows. Point datalake.path at the \
             checkpoint's lake; to rebuild the lake from the topic, delete the checkpoint folder {} too",
            here.checkpoint, here.lake, here.checkpoint
        ))),
        // The folder the lake names, without its id: recreated after a loss (the partition
        // check then refuses what would write the topic again), or a start that stopped
        // between writing the two files.
        (None, Some(r)) if r.checkpoint == here.checkpoint => {
            let got = install_id(cp.dir(), &r.lake_id)?;
            if got != r.lake_id {
                return Err(another_checkpoint(&here, &r, Some(&got), false));
            }
            Ok(())
        }
        (None, Some(r)) if from_beginning && empty => {
            tracing::warn!(
                "the lake {} was written by the checkpoint {}; it now belongs to {} (--from-beginning), and the \
                 old checkpoint will be refused",
                here.lake,
                r.checkpoint,
                here.checkpoint
            );
            pair(&here)
        }
        (None, Some(r)) => Err(another_checkpoint(&here, &r, None, empty)),
        (None, None) if empty && !from_beginning && cp.lake_has_files() => Ok(()),
        (None, None) => pair(&here),
    }
}

/// The id matches: the same pair, perhaps moved (the lake's file then learns the new paths),
/// unless this checkpoint is a copy of the one the lake names, writing the same lake.
fn moved_or_copied(here: &Here<'_>, r: &LakeRecord) -> Result<()> {
    if r.checkpoint == here.checkpoint && r.lake == here.lake {
        return Ok(());
    }
    let original = Path::new(&r.checkpoint);
    if r.checkpoint != here.checkpoint
        && r.lake == here.lake
        && read_id(original).ok().flatten().is_some_and(|id| id == r.lake_id)
    {
        return Err(Error::Setup(format!(
            "the lake {} is written by the checkpoint {}, and the checkpoint {} has the same lake id {} (a copy of \
             it?): two checkpoints writing one lake would write the topic into it twice. Point \
             streaming.checkpoint_location at {}; to start over deliberately, use a new checkpoint folder and a new \
             lake folder",
            here.lake, r.checkpoint, here.checkpoint, r.lake_id, r.checkpoint
        )));
    }
    tracing::info!(
        "the lake or its checkpoint moved (lake id {}): lake {} and checkpoint {} are now {} and {}",
        r.lake_id,
        r.lake,
        r.checkpoint,
        here.lake,
        here.checkpoint
    );
    write_record(here, &r.lake_id)
}

/// The refusal of a checkpoint that is not the one the lake names: `id` is the lake id the
/// configured checkpoint has, if any; `empty` whether it holds no state (then
/// `--from-beginning` may take the lake over).
fn another_checkpoint(here: &Here<'_>, r: &LakeRecord, id: Option<&str>, empty: bool) -> Error {
    let (what, deliberately) = match id {
        Some(id) => (
            format!("writes another lake (lake id {id})"),
            "use a new checkpoint folder and a new lake folder".to_string(),
        ),
        None if empty => (
            "is a new checkpoint".to_string(),
            "use a new lake folder, or start once with --from-beginning (`orderstream consume --from-beginning`) \
             to write the topic into this lake again from this checkpoint"
                .to_string(),
        ),
        None => (
            "holds another lake's positions (it has no lake id)".to_string(),
            "use a new checkpoint folder and a new lake folder".to_string(),
        ),
    };
    Error::Setup(format!(
        "the lake {} is written by the checkpoint {} (lake id {} in {}), but streaming.checkpoint_location {} \
         {what}: two checkpoints writing one lake would write the topic into it twice. Point \
         streaming.checkpoint_location at {}; to start over deliberately, {deliberately}",
        here.lake,
        r.checkpoint,
        r.lake_id,
        here.cp.lake().join(LAKE_FILE).display(),
        here.checkpoint,
        r.checkpoint
    ))
}

/// Pairs the checkpoint and the lake with a new id: the lake's file first, so that a start
/// stopped in between leaves a lake naming this folder, which the next start adopts.
fn pair(here: &Here<'_>) -> Result<()> {
    let id = uuid::Uuid::now_v7().to_string();
    write_record(here, &id)?;
    let got = install_id(here.cp.dir(), &id)?;
    if got != id {
        // Installed meanwhile by a process that does not share this folder's lock.
        write_record(here, &got)?;
    }
    Ok(())
}

/// The canonical path, or the absolute one while the folder does not exist.
fn real(path: &Path) -> String {
    fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// The lake id of a checkpoint folder; `None` when it has none.
fn read_id(checkpoint: &Path) -> Result<Option<String>> {
    let path = checkpoint.join(CHECKPOINT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read", &path, e)),
    };
    let id = text.trim();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(io_error(
            "checkpoint",
            &path,
            "not a lake id (one line); restore it, or delete it together with the lake's _orderstream_checkpoint \
             to pair the two folders again",
        ));
    }
    Ok(Some(id.to_string()))
}

/// Gives the checkpoint `id` unless it already has one (another process of the group won):
/// written beside it and hard-linked into place, which never replaces a file. Returns the id
/// the checkpoint has now.
fn install_id(checkpoint: &Path, id: &str) -> Result<String> {
    let path = checkpoint.join(CHECKPOINT_FILE);
    let tmp = checkpoint.join(format!("{CHECKPOINT_FILE}.{}.tmp", std::process::id()));
    fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(checkpoint)?;
            Ok(id.to_string())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_id(checkpoint)?
            .ok_or_else(|| io_error("cannot read", &path, "it vanished while being written")),
        Err(e) => Err(io_error("cannot create", &path, e)),
    }
}

/// The lake's record of its checkpoint; `None` when it has none.
fn read_record(lake: &Path) -> Result<Option<LakeRecord>> {
    let path = lake.join(LAKE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read", &path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        io_error(
            "lake",
            &path,
            format!(
                "not a record of the lake's checkpoint ({e}); restore it, or delete it together with the \
                 checkpoint's {CHECKPOINT_FILE} to pair the two folders again"
            ),
        )
    })
}

/// Writes the lake's record (creating the lake folder if needed).
fn write_record(here: &Here<'_>, id: &str) -> Result<()> {
    let lake = here.cp.lake();
    fs::create_dir_all(lake).map_err(|e| io_error("cannot create directory", lake, e))?;
    // The lake's canonical path, now that it surely exists.
    let record =
        LakeRecord { lake_id: id.to_string(), checkpoint: here.checkpoint.clone(), lake: real(lake) };
    let path = lake.join(LAKE_FILE);
    let mut bytes = serde_json::to_vec_pretty(&record).map_err(|e| io_error("cannot encode", &path, e))?;
    bytes.push(b'\n');
    write_atomic(&path, &lake.join(format!("{LAKE_FILE}.{}.tmp", std::process::id())), &bytes)
}
