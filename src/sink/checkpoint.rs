//! The checkpoint under `streaming.checkpoint_location`: each partition's committed state, the
//! batch manifests (the commit log), the partition locks, and the recovery that rolls committed
//! batches forward after a crash. See the protocol in [`crate::sink`].
//!
//! ```text
//! <checkpoint>/state/<topic>-<partition>.json   committed state of one partition
//! <checkpoint>/state/<topic>-<partition>.lock   flock held by the process that owns it
//! <checkpoint>/commits/<batch-uuid>.json        manifest of a committed, unfinished batch
//! <checkpoint>/lake_id                          the id of the lake it writes (see `identity`)
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{io_error, sync_dir, write_atomic};
use crate::error::Result;

/// Folder of the partition states and locks.
const STATE_DIR: &str = "state";
/// Folder of the batch manifests.
const COMMITS_DIR: &str = "commits";

/// The committed state of one partition: where to resume, the replay filter, and cumulative
/// counters (`status` reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The cluster id of the broker the partition was read from, as the broker reports it.
    /// `None` in a state written before it was recorded (it gets one at the next commit), or
    /// when the broker reports none. A consumer on a broker of another cluster refuses the
    /// state: its offsets mean nothing there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Offset of the first message not yet in the lake.
    pub next_offset: i64,
    /// The replay filter: per lineage (`<source>#<epoch>`, or the source alone for messages
    /// without an epoch), the `orderstream.seq` of the last message that became a row (see
    /// `sink::replay`).
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
    /// The second half of the replay filter, for log-based capture: per lineage, the log
    /// position of the last message that became a row (see `sink::replay`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub positions: BTreeMap<String, crate::sink::replay::LastPosition>,
    /// Rows written to the lake.
    #[serde(default)]
    pub rows_written: u64,
    /// Messages sent to the dead-letter topic, by reason label.
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
    /// Empty (tombstone) values skipped.
    #[serde(default)]
    pub tombstones: u64,
    /// Replayed messages dropped.
    #[serde(default)]
    pub duplicates: u64,
    /// Batches committed that held messages of this partition.
    #[serde(default)]
    pub batches: u64,
    /// The last batch that advanced this partition.
    #[serde(default)]
    pub last_batch: String,
    /// The process (its temp folder id) that committed the last batch.
    #[serde(default)]
    pub last_process: String,
}

impl PartitionState {
    /// The state of a partition nothing was committed for yet.
    pub fn empty(topic: &str, partition: i32) -> PartitionState {
        PartitionState { topic: topic.to_string(), partition, ..PartitionState::default() }
    }
}

/// One Parquet file of a batch: where it is written and where it becomes visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The temp file, relative to the lake root (`_temporary/<process>/<name>.parquet.inprogress`).
    pub temp: String,
    /// The final file, relative to the lake root (`date=YYYY-MM-DD/part-<uuid>.parquet`).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
}

/// A committed batch: the complete new state of every partition it advanced, and its files.
/// Its presence in `commits/` is the commit; finishing it (renames, states) is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The batch id (uuid v7).
    pub batch: String,
    /// The process that wrote it.
    pub process: String,
    /// The new state of each partition of the batch.
    pub partitions: Vec<PartitionState>,
    /// The files to make visible.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The state this manifest gives `partition` of `topic`, if it names it.
    pub fn state_of(&self, topic: &str, partition: i32) -> Option<&PartitionState> {
        self.partitions.iter().find(|s| s.topic == topic && s.partition == partition)
    }
}

/// The exclusive lock of one partition; dropping it releases the partition.
#[derive(Debug)]
pub struct PartitionLock {
    _file: File,
}

/// The checkpoint folder of one consumer configuration.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    state: PathBuf,
    commits: PathBuf,
    lake: PathBuf,
}

/// Renames `temp` to `path` unless that already happened; false if neither file exists.
fn finalize_file(temp: &Path, path: &Path) -> Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("."));
    match fs::rename(temp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !temp.exists() {
                // Done before (by us, or by another process rolling the same manifest forward).
                return Ok(path.exists());
            }
            // The date folder is made before the commit point; someone removed it since.
            fs::create_dir_all(parent).map_err(|e| io_error("cannot create directory", parent, e))?;
            fs::rename(temp, path).map_err(|e| io_error("cannot rename a committed file into", path, e))?;
        }
        Err(e) => return Err(io_error("cannot rename a committed file into", path, e)),
    }
    sync_dir(parent)?;
    Ok(true)
}

/// Where the state file of a partition lives under the checkpoint folder `dir`.
pub fn state_file(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(STATE_DIR).join(format!("{topic}-{partition}.json"))
}

/// The committed state of every partition of `topic` under the checkpoint folder `checkpoint`:
/// the state files, or a committed manifest not yet applied to them (a consumer died between
/// the two), whichever is further. This is the rule the consumer's recovery applies by rolling
/// such manifests forward; read here without opening the checkpoint (nothing is created or
/// locked), for `status`.
pub fn committed_states(checkpoint: &Path, topic: &str) -> Result<Vec<PartitionState>> {
    let mut best: BTreeMap<i32, PartitionState> = BTreeMap::new();
    let mut consider = |s: PartitionState| {
        if s.topic == topic && best.get(&s.partition).is_none_or(|b| b.next_offset < s.next_offset) {
            best.insert(s.partition, s);
        }
    };
    for (dir, is_manifest) in [(STATE_DIR, false), (COMMITS_DIR, true)] {
        let dir = checkpoint.join(dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::error::Error::Storage(format!("checkpoint {}: {e}", dir.display()))),
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bad = |e: String| crate::error::Error::Storage(format!("checkpoint {}: {e}", path.display()));
            let bytes = fs::read(&path).map_err(|e| bad(e.to_string()))?;
            if is_manifest {
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                m.partitions.into_iter().for_each(&mut consider);
            } else {
                consider(serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?);
            }
        }
    }
    Ok(best.into_values().collect())
}

impl Checkpoint {
    /// Opens (creating if needed) the checkpoint folder of a lake.
    pub fn open(dir: &Path, lake: &Path) -> Result<Checkpoint> {
        let cp = Checkpoint { state: dir.join(STATE_DIR), commits: dir.join(COMMITS_DIR), lake: lake.into() };
        for d in [&cp.state, &cp.commits] {
            fs::create_dir_all(d).map_err(|e| io_error("cannot create directory", d, e))?;
        }
        Ok(cp)
    }

    /// The lake root.
    pub fn lake(&self) -> &Path {
        &self.lake
    }

    /// Whether a state file of any partition of `topic` exists.
    pub fn has_any_state(&self, topic: &str) -> bool {
        let prefix = format!("{topic}-");
        fs::read_dir(&self.state).is_ok_and(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.strip_suffix(".json").is_some_and(|p| p.parse::<i32>().is_ok()))
            })
        })
    }

    /// Whether anything was ever committed here: a state file or a manifest of any topic.
    pub fn has_committed(&self) -> Result<bool> {
        for dir in [&self.state, &self.commits] {
            let entries = fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
                if entry.path().extension().is_some_and(|x| x == "json") {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether the lake holds a committed Parquet file (`date=*/*.parquet`).
    pub fn lake_has_files(&self) -> bool {
        let Ok(dates) = fs::read_dir(&self.lake) else { return false };
        dates.flatten().filter(|d| d.file_name().to_string_lossy().starts_with("date=")).any(|d| {
            fs::read_dir(d.path()).is_ok_and(|files| {
                files.flatten().any(|f| f.file_name().to_string_lossy().ends_with(".parquet"))
            })
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        self.state.parent().unwrap_or(&self.state)
    }

    /// Where the state of a partition lives.
    pub fn state_path(&self, topic: &str, partition: i32) -> PathBuf {
        state_file(self.dir(), topic, partition)
    }

    /// The committed state of a partition, `None` when nothing was committed yet.
    pub fn read_state(&self, topic: &str, partition: i32) -> Result<Option<PartitionState>> {
        let path = self.state_path(topic, partition);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read checkpoint", &path, e)),
        };
        let state: PartitionState = serde_json::from_slice(&bytes)
            .map_err(|e| io_error("checkpoint", &path, format!("not a partition state: {e}")))?;
        if state.topic != topic || state.partition != partition || state.next_offset < 0 {
            return Err(io_error("checkpoint", &path, "holds the state of another partition"));
        }
        Ok(Some(state))
    }

    /// Replaces the state file of a partition (atomically).
    pub fn write_state(&self, state: &PartitionState) -> Result<()> {
        let path = self.state_path(&state.topic, state.partition);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io_error("cannot encode", &path, e))?;
        write_atomic(&path, &tmp, &bytes)
    }

    /// Takes the exclusive lock of a partition without waiting: [`Locking::HeldElsewhere`]
    /// while another live process holds it (a member frozen past its session, or one finishing
    /// its batch), which the caller tries again later.
    pub fn try_lock_partition(&self, topic: &str, partition: i32) -> Result<Locking> {
        let path = self.state.join(format!("{topic}-{partition}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("cannot open lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Locking::Taken(PartitionLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(Locking::HeldElsewhere(path)),
            Err(TryLockError::Error(e)) => Err(io_error("cannot lock", &path, e)),
        }
    }

    /// Every manifest in `commits/`, oldest first (uuid v7 names sort by time).
    pub fn manifests(&self) -> Result<Vec<(PathBuf, Manifest)>> {
        let entries = fs::read_dir(&self.commits).map_err(|e| io_error("cannot list", &self.commits, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &self.commits, e))?;
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Finished and deleted by its owner meanwhile.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("cannot read manifest", &path, e)),
            };
            // A manifest is fsynced before its rename, so a bad one was damaged from outside:
            // skipping it could publish part of a batch twice, so stop and say where.
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| io_error("manifest", &path, format!("not a batch manifest: {e}")))?;
            out.push((path, m));
        }
        Ok(out)
    }

    /// Writes a manifest: temp file, fsync, rename, fsync. The rename is the commit point: once
    /// it succeeded the batch is committed for every process, so a failing fsync of the folder
    /// afterwards is logged, not returned (returning it would make the caller write the batch
    /// again).
    pub fn write_manifest(&self, m: &Manifest) -> Result<PathBuf> {
        let path = self.commits.join(format!("{}.json", m.batch));
        // The writer's id in the temp name lets recovery delete it once the writer is dead.
        let tmp = self.commits.join(format!("{}.json.{}.tmp", m.batch, m.process));
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| io_error("cannot encode", &path, e))?;
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| io_error("cannot write", &tmp, e))
            .and_then(|()| fs::rename(&tmp, &path).map_err(|e| io_error("cannot rename into", &path, e)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = sync_dir(&self.commits) {
            tracing::error!("batch {} is committed, but a power loss could undo it: {e}", m.batch);
        }
        Ok(path)
    }

    /// Makes every file of a committed batch visible (idempotent, safe for anyone to run).
    pub fn roll_forward(&self, m: &Manifest) -> Result<()> {
        for f in &m.files {
            let temp = self.lake.join(&f.temp);
            let path = self.lake.join(&f.path);
            if !finalize_file(&temp, &path)? {
                tracing::error!(
                    "batch {}: committed file {} is missing and so is its temp file {}",
                    m.batch,
                    path.display(),
                    temp.display()
                );
            }
        }
        Ok(())
    }

    /// Finishes a batch this process committed and still owns every partition of: renames,
    /// state files, then the manifest is deleted.
    pub fn finish(&self, path: &Path, m: &Manifest) -> Result<()> {
        self.roll_forward(m)?;
        super::failpoint(super::Failpoint::Renamed);
        for s in &m.partitions {
            self.write_state(s)?;
        }
        super::failpoint(super::Failpoint::States);
        remove_manifest(path)
    }

    /// Deletes a manifest once every partition it names has a state file at or past it (after
    /// rolling its files forward once more). True if it is gone.
    pub fn tidy(&self, path: &Path, m: &Manifest) -> Result<bool> {
        for s in &m.partitions {
            let current = self.read_state(&s.topic, s.partition)?;
            if current.is_none_or(|c| c.next_offset < s.next_offset) {
                return Ok(false);
            }
        }
        self.roll_forward(m)?;
        remove_manifest(path)?;
        Ok(true)
    }

    /// Deletes temp manifests left by processes that are no longer alive.
    pub fn remove_dead_temp_manifests(&self, alive: impl Fn(&str) -> bool) -> Result<()> {
        let entries = fs::read_dir(&self.commits).map_err(|e| io_error("cannot list", &self.commits, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".tmp") else { continue };
            let Some((_, process)) = stem.rsplit_once('.') else { continue };
            if !alive(process) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

fn remove_manifest(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot delete manifest", path, e)),
    }
    sync_dir(crate::durable::parent(path))
}

/// What [`Checkpoint::try_lock_partition`] got.
#[derive(Debug)]
pub enum Locking {
    /// The partition's lock, held until dropped.
    Taken(PartitionLock),
    /// Another live process holds it: the lock file.
    HeldElsewhere(PathBuf),
}
