//! Durable file writes shared by the producer's state file and the consumer's checkpoint and
//! lake: replace a file atomically, make a rename survive a power loss.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Turns an I/O error into one line naming what failed and the path.
pub fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

/// fsyncs a directory, so that a rename or create inside it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("cannot fsync directory", dir, e))
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp).map_err(|e| io_error("cannot create", tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io_error("cannot write", tmp, e))?;
    drop(f);
    fs::rename(tmp, path).map_err(|e| io_error("cannot rename into", path, e))?;
    sync_dir(parent(path))
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
