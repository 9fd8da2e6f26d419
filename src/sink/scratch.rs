//! The process's temp folder in the lake, `<lake>/_temporary/<process-uuid>/`, where a batch's
//! Parquet files are written before the commit makes them visible by `rename` (same
//! filesystem, so atomic). Readers never see them: Spark and pyarrow skip folders starting with
//! `_`, and the `.parquet.inprogress` suffix keeps `**/*.parquet` globs (DuckDB) off them.
//!
//! Beside each folder, `<process-uuid>.lock` is flock-ed for the owner's lifetime, so another
//! process can tell a dead owner's leftovers (deletable unless a manifest still names them)
//! from a live owner's files in progress.

use std::collections::HashSet;
use std::fs::{self, File, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::checkpoint::Checkpoint;
use crate::durable::{io_error, sync_dir};
use crate::error::Result;

/// The lake's temp area (skipped by Spark, pyarrow and DuckDB's `**/*.parquet`).
pub const TEMP_DIR: &str = "_temporary";
/// Suffix of a Parquet file being written.
pub const SUFFIX: &str = ".parquet.inprogress";

/// This process's temp folder, held alive by its lock.
#[derive(Debug)]
pub struct Scratch {
    id: String,
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Scratch {
    /// Creates a fresh temp folder for this process: the lock first, then the folder, so a
    /// folder is never seen without its held lock.
    pub fn create(lake: &Path) -> Result<Scratch> {
        let root = lake.join(TEMP_DIR);
        fs::create_dir_all(&root).map_err(|e| io_error("cannot create directory", &root, e))?;
        let id = Uuid::now_v7().to_string();
        let lock_path = root.join(format!("{id}.lock"));
        let lock = File::create_new(&lock_path).map_err(|e| io_error("cannot create", &lock_path, e))?;
        // Blocking: a cleaner may be probing this brand-new lock for a moment.
        lock.lock().map_err(|e| io_error("cannot lock", &lock_path, e))?;
        let dir = root.join(&id);
        fs::create_dir(&dir).map_err(|e| io_error("cannot create directory", &dir, e))?;
        sync_dir(&root)?;
        Ok(Scratch { id, dir, lock_path, _lock: lock })
    }

    /// The process id used in temp names, manifests and state files.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new temp file: its absolute path and its path relative to the lake root.
    pub fn temp_file(&self, name: &str) -> (PathBuf, String) {
        let file = format!("{name}{SUFFIX}");
        (self.dir.join(&file), format!("{TEMP_DIR}/{}/{file}", self.id))
    }

    /// Removes the folder and its lock at a clean stop (files a manifest still names stay for
    /// the roll-forward).
    pub fn remove(self, checkpoint: &Checkpoint) {
        let referenced = referenced_temps(checkpoint).unwrap_or_default();
        remove_unreferenced(&self.dir, &format!("{TEMP_DIR}/{}", self.id), &referenced);
        if fs::remove_dir(&self.dir).is_ok() {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// Whether the process owning temp folder `id` of `lake` is alive (holds its lock).
pub fn is_alive(lake: &Path, id: &str) -> bool {
    let path = lake.join(TEMP_DIR).join(format!("{id}.lock"));
    match File::open(&path) {
        Err(e) => e.kind() != ErrorKind::NotFound,
        Ok(f) => matches!(f.try_lock(), Err(TryLockError::WouldBlock) | Err(TryLockError::Error(_))),
    }
}

fn referenced_temps(checkpoint: &Checkpoint) -> Result<HashSet<String>> {
    Ok(checkpoint.manifests()?.into_iter().flat_map(|(_, m)| m.files.into_iter().map(|f| f.temp)).collect())
}

fn remove_unreferenced(dir: &Path, rel: &str, referenced: &HashSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !referenced.contains(&format!("{rel}/{name}")) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Deletes what dead processes left in the temp area: files no manifest names (a batch that
/// never reached its commit point), then their folders and locks once empty.
pub fn clean_dead(checkpoint: &Checkpoint, own: &str) -> Result<()> {
    let root = checkpoint.lake().join(TEMP_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot list", &root, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == own || !entry.path().is_dir() {
            continue;
        }
        let lock_path = root.join(format!("{name}.lock"));
        let lock = match File::open(&lock_path) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(_) => continue, // alive (or unknowable): leave it alone
            },
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        // Dead, and ids are never reused, so it cannot write new manifests: list them now.
        let referenced = referenced_temps(checkpoint)?;
        let dir = entry.path();
        remove_unreferenced(&dir, &format!("{TEMP_DIR}/{name}"), &referenced);
        if fs::remove_dir(&dir).is_ok() {
            tracing::info!("removed the temp folder of a dead process: {}", dir.display());
            if lock.is_some() {
                let _ = fs::remove_file(&lock_path);
            }
        }
    }
    let lake = checkpoint.lake().to_path_buf();
    checkpoint.remove_dead_temp_manifests(|id| id == own || is_alive(&lake, id))
}
