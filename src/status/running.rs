//! Whether the producer and the consumer run, as the systems they hold locks in see it: a
//! stopped pipeline must read as "not running", never as an idle one with zero rates.
//!
//! * The producer holds a PostgreSQL advisory lock for as long as it runs (the one-writer
//!   guarantee, [`crate::db::lock_writer`]); its holder is a live session.
//! * The consumer holds an `flock` on `<checkpoint>/state/<topic>-<partition>.lock` for every
//!   partition it owns; the kernel lists the holders in `/proc/locks`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tokio_postgres::Client;

use crate::config::{Capture, Config};
use crate::error::{Error, Result};
use crate::source::logical;
use crate::source::poll::PollSource;

/// The advisory lock a running producer of this configuration holds.
pub fn producer_lock(cfg: &Config) -> String {
    match cfg.postgres.capture {
        Capture::Logical => logical::writer_lock(&cfg.postgres),
        Capture::Poll => {
            PollSource::new(&cfg.postgres, &cfg.kafka.topic, Default::default()).writer_lock().to_string()
        }
    }
}

/// The backend PID of the session of a running producer, if one runs.
pub async fn producer(cfg: &Config, client: &Client) -> Result<Option<i32>> {
    crate::db::lock_holder(client, &producer_lock(cfg)).await
}

/// The PIDs of processes holding a partition lock of `topic` in the checkpoint (empty: no
/// consumer runs on this checkpoint).
pub fn consumer(checkpoint: &Path, topic: &str) -> Result<BTreeSet<u32>> {
    let state = checkpoint.join("state");
    let entries = match std::fs::read_dir(&state) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(Error::Storage(format!("checkpoint {}: {e}", state.display()))),
    };
    let prefix = format!("{topic}-");
    let mut files = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix)
            && name.ends_with(".lock")
            && let Ok(m) = entry.metadata()
        {
            files.insert(file_id(m.dev(), m.ino()));
        }
    }
    if files.is_empty() {
        return Ok(BTreeSet::new());
    }
    let locks = std::fs::read_to_string("/proc/locks")
        .map_err(|e| Error::Storage(format!("/proc/locks: {e} (cannot tell whether a consumer runs)")))?;
    Ok(holders(&locks, &files))
}

/// `/proc/locks` names a file `MAJOR:MINOR:INODE` (hex major and minor, decimal inode).
fn file_id(dev: u64, ino: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// PIDs of granted FLOCKs on `files` (waiters, marked `->`, hold nothing).
fn holders(locks: &str, files: &BTreeSet<String>) -> BTreeSet<u32> {
    locks
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`
            (f.len() >= 6 && f[1] == "FLOCK" && files.contains(f[5])).then(|| f[4].parse().ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_flocks_on_our_files_count() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:5678 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 fd:01:5678 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 4444 fd:01:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4545 fd:01:9999 0 EOF\n";
        let files: BTreeSet<String> = ["fd:01:5678".to_string()].into();
        assert_eq!(holders(locks, &files), [4242].into());
        assert_eq!(file_id(0xfd01, 5678), "fd:01:5678");
    }

    #[test]
    fn a_lock_held_by_this_process_is_seen() {
        let dir = std::env::temp_dir().join(format!("orderstream-running-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        assert!(consumer(&dir, "t").unwrap().is_empty());
        let file = std::fs::File::create(dir.join("state/t-0.lock")).unwrap();
        assert!(consumer(&dir, "t").unwrap().is_empty());
        file.try_lock().unwrap();
        assert_eq!(consumer(&dir, "t").unwrap(), [std::process::id()].into());
        assert!(consumer(&dir, "other").unwrap().is_empty());
        drop(file);
        assert!(consumer(&dir, "t").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
