//! Compaction of the Delta change table: a date partition's small files rewritten into files
//! of about `datalake.target_file_size`, in one commit that removes the old files and adds the
//! new ones, both marked `dataChange: false`.
//!
//! # Why no reader sees a row twice or misses one
//!
//! A Delta reader reads one version of the log. A version either holds the small files or the
//! compacted file that replaced them, never both and never neither: the removes and the adds
//! land in one atomic log append. The old files stay on disk until `vacuum` deletes them after
//! `datalake.retention_hours`, so a reader still on an older version finds them.
//!
//! # Races
//!
//! * **With appends.** A compaction rewrites only files of the version it read; an append that
//!   lands meanwhile adds new files, which the compaction neither removes nor rewrites. delta-rs
//!   lets a commit that changes no data pass over appends (snapshot isolation), and an append
//!   pass over a compaction (it read no file), so neither blocks nor retries the other for long.
//! * **With another compaction.** Two compactions of the same files would each add a copy of
//!   the rows: delta-rs does not treat two `dataChange: false` removes of one file as a
//!   conflict. So every compaction of a date also writes a `txn` action of the app id
//!   `orderstream/compact/<date>`, and delta-rs refuses a commit when a commit
//!   that landed after its read version wrote a `txn` of the same app id. The loser gives up
//!   (the files it wrote are left to `vacuum`); the next round starts from the new version.
//!
//! `vacuum` is here too: it deletes what compaction replaced, once past the retention; and the
//! table properties that keep the log short (checkpoints, log and tombstone retention).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Remove, Transaction};
use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt};
use deltalake::protocol::DeltaOperation;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::delta::{DATE_COLUMN, load, load_at, runtime, storage_error, timed, write_files};
use crate::config::{DatalakeConfig, Maintenance};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The date partitions of a table version and their files: how many, how many small.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionFiles {
    /// The partition's date.
    pub date: String,
    /// Data files in the version.
    pub files: usize,
    /// Of which below half of `datalake.target_file_size`.
    pub small: usize,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// What one compaction of a date partition did.
#[derive(Debug, Clone)]
pub struct Compaction {
    /// The partition's date.
    pub date: String,
    /// Small files removed.
    pub files_in: usize,
    /// Their bytes.
    pub bytes_in: u64,
    /// Files written in their place.
    pub files_out: usize,
    /// Their bytes.
    pub bytes_out: u64,
    /// Rows rewritten.
    pub rows: usize,
    /// The version the compaction committed.
    pub version: i64,
    /// How long it took, reading and writing included.
    pub elapsed: Duration,
}

/// How a compaction of one date partition ended.
#[derive(Debug)]
pub enum Outcome {
    /// Rewritten and committed.
    Done(Compaction),
    /// Another compaction of the same date committed first; nothing was committed.
    Lost,
    /// Fewer small files than asked for: nothing to do.
    Nothing,
}

/// One live data file of the table.
struct DataFile {
    remove: Remove,
    /// When it was written (ms since the epoch): compaction keeps commit order within a file.
    written: i64,
    location: StorePath,
    size: u64,
}

/// The live files of each date partition in the table's loaded version, oldest commit first.
fn files_by_date(table: &DeltaTable) -> Result<Vec<(String, Vec<DataFile>)>> {
    let snapshot = table.snapshot().map_err(|e| storage_error("", "cannot read", &e))?;
    let mut dates: Vec<(String, Vec<DataFile>)> = Vec::new();
    for file in snapshot.log_data().iter() {
        let date = file.partition_values_map().get(DATE_COLUMN).cloned().flatten().unwrap_or_default();
        let data = DataFile {
            remove: file.remove_action(false),
            written: file.modification_time(),
            location: file.object_store_path(),
            size: file.size().max(0) as u64,
        };
        match dates.iter_mut().find(|(d, _)| *d == date) {
            Some((_, files)) => files.push(data),
            None => dates.push((date, vec![data])),
        }
    }
    for (_, files) in &mut dates {
        files.sort_by_key(|f| f.written);
    }
    dates.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(dates)
}

/// Files, small files and bytes of each date partition in the table's loaded version.
pub fn partitions(table: &DeltaTable, target_file_size: u64) -> Result<Vec<PartitionFiles>> {
    Ok(files_by_date(table)?
        .into_iter()
        .map(|(date, files)| PartitionFiles {
            date,
            files: files.len(),
            small: files.iter().filter(|f| is_small(f.size, target_file_size)).count(),
            bytes: files.iter().map(|f| f.size).sum(),
        })
        .collect())
}

fn is_small(size: u64, target_file_size: u64) -> bool {
    size < target_file_size / 2
}

/// The dates whose small files number at least `min_small`, most small files first; only
/// `date` when given.
pub fn due(
    table: &DeltaTable,
    settings: &Maintenance,
    min_small: usize,
    date: Option<&str>,
) -> Result<Vec<String>> {
    let mut due: Vec<PartitionFiles> = partitions(table, settings.target_file_size)?
        .into_iter()
        .filter(|p| p.small >= min_small.max(2) && date.is_none_or(|d| d == p.date))
        .collect();
    due.sort_by_key(|p| std::cmp::Reverse(p.small));
    Ok(due.into_iter().map(|p| p.date).collect())
}

/// The small files of a date in groups of up to `target` bytes to rewrite together; a group of
/// one is left alone.
fn groups(files: Vec<DataFile>, target: u64, tiered: bool) -> Vec<Vec<DataFile>> {
    let mut small: Vec<DataFile> = files.into_iter().filter(|f| is_small(f.size, target)).collect();
    if tiered {
        // A file as large as all the others together (an earlier compaction's) waits until they
        // have grown to its size: each row is then rewritten a few times, not once per round.
        while let Some((i, largest)) =
            small.iter().enumerate().max_by_key(|(_, f)| f.size).map(|(i, f)| (i, f.size))
            && small.len() > 1
            && largest >= small.iter().map(|f| f.size).sum::<u64>() - largest
        {
            small.remove(i);
        }
    }
    let mut groups: Vec<Vec<DataFile>> = Vec::new();
    let mut size = 0u64;
    for file in small {
        match groups.last_mut() {
            Some(group) if size + file.size <= target => {
                size += file.size;
                group.push(file);
            }
            _ => {
                size = file.size;
                groups.push(vec![file]);
            }
        }
    }
    groups.retain(|g| g.len() > 1);
    groups
}

/// Compacts one date partition of the table's loaded version: its small files, in commit
/// order, packed into files of about `target_file_size` (a group of one file stays as it is).
/// `tiered` (the consumer's rounds): a file as large as the other small files together is left
/// out; `orderstream compact` packs them all.
// Over 80 lines on purpose: read, rewrite and one commit that removes exactly the files read,
// with the app transaction that makes a retried compaction idempotent, in one place.
pub async fn compact_date(
    table: &mut DeltaTable,
    location: &str,
    settings: &Maintenance,
    date: &str,
    tiered: bool,
) -> Result<Outcome> {
    let start = Instant::now();
    let target = settings.target_file_size;
    let Some((_, files)) = files_by_date(table)?.into_iter().find(|(d, _)| d == date) else {
        return Ok(Outcome::Nothing);
    };
    let groups = groups(files, target, tiered);
    if groups.is_empty() {
        return Ok(Outcome::Nothing);
    }
    let app_id = format!("orderstream/compact/{date}");
    let snapshot = table.snapshot().map_err(|e| storage_error(location, "cannot read", &e))?.clone();
    let last = timed(snapshot.transaction_version(table.log_store().as_ref(), app_id.clone()))
        .await
        .map_err(|e| storage_error(location, "cannot read the transactions of", &e))?;
    let store = table.log_store().object_store(None);
    let mut actions = Vec::new();
    let mut written = Vec::new();
    let (mut files_in, mut bytes_in, mut rows) = (0, 0, 0);
    for group in groups {
        let mut dates = Vec::new();
        for file in &group {
            for batch in read_file(store.as_ref(), &file.location, location).await? {
                rows += batch.num_rows();
                dates.push((date.to_string(), batch));
            }
        }
        let adds = write_files(table, dates, Some(target))
            .await
            .map_err(|e| storage_error(location, "cannot write to", &e))?;
        for mut add in adds {
            add.data_change = false;
            written.push(add.clone());
            actions.push(Action::Add(add));
        }
        for file in group {
            files_in += 1;
            bytes_in += file.size;
            actions.push(Action::Remove(file.remove));
        }
    }
    let bytes_out: u64 = written.iter().map(|a| a.size.max(0) as u64).sum();
    let figures = serde_json::json!({
        "date": date, "files_in": files_in, "files_out": written.len(), "bytes_in": bytes_in, "bytes_out": bytes_out,
    });
    let props = CommitProperties::default()
        .with_application_transactions(vec![Transaction::new(app_id, last.unwrap_or(0) + 1)])
        .with_metadata([(COMMIT_INFO_KEY.to_string(), figures)])
        .with_max_retries(15)
        .with_cleanup_expired_logs(Some(false));
    let operation = DeltaOperation::Optimize {
        predicate: Some(format!("{DATE_COLUMN} = '{date}'")),
        target_size: target as i64,
    };
    let commit =
        CommitBuilder::from(props).with_actions(actions).build(Some(&snapshot), table.log_store(), operation);
    let version = match timed(commit.into_future()).await {
        Ok(finalized) => finalized.version(),
        // The files written stay for `vacuum`: a store that retried a conditional put which had
        // landed reports our own commit as a conflict, and its files must not go.
        Err(DeltaTableError::Transaction { source: TransactionError::CommitConflict(_) }) => {
            return Ok(Outcome::Lost);
        }
        Err(e) => return Err(storage_error(location, "cannot commit a compaction to", &e)),
    };
    timed(table.update_incremental(Some(version)))
        .await
        .map_err(|e| storage_error(location, "cannot read", &e))?;
    Ok(Outcome::Done(Compaction {
        date: date.to_string(),
        files_in,
        bytes_in,
        files_out: written.len(),
        bytes_out,
        rows,
        version: version as i64,
        elapsed: start.elapsed(),
    }))
}

/// The rows of one data file.
pub(super) async fn read_file(
    store: &dyn ObjectStore,
    path: &StorePath,
    location: &str,
) -> Result<Vec<RecordBatch>> {
    let bad = |what: String| Error::Storage(format!("Delta table {location}: data file {path}: {what}"));
    let bytes =
        match tokio::time::timeout(Duration::from_secs(60), async { store.get(path).await?.bytes().await })
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(bad(format!("cannot read it: {e}"))),
            Err(_) => return Err(bad("no answer within 60 s".into())),
        };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(format!("cannot decode it: {e}")))
}

/// The `commitInfo` key of a compaction's figures (read by `status`).
pub const COMMIT_INFO_KEY: &str = "orderstream.compaction";

/// How often a compaction that lost to another one is tried again from the newer version.
const ATTEMPTS: usize = 3;

/// `orderstream compact [--date D]`: compacts every date partition holding two or more small
/// files (only `date` when given), each in its own commit. Returns what was done.
pub fn compact(cfg: &DatalakeConfig, date: Option<&str>) -> Result<Vec<Compaction>> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut table = load(cfg).await?;
        let mut done = Vec::new();
        for d in due(&table, &cfg.maintenance, 2, date)? {
            for _ in 0..ATTEMPTS {
                match compact_date(&mut table, &cfg.location, &cfg.maintenance, &d, false).await? {
                    Outcome::Done(c) => {
                        done.push(c);
                        break;
                    }
                    Outcome::Nothing => break,
                    Outcome::Lost => {
                        tracing::info!(
                            "date={d}: another compaction committed first; trying again from its version"
                        );
                        timed(table.update_state())
                            .await
                            .map_err(|e| storage_error(&cfg.location, "cannot read", &e))?;
                    }
                }
            }
        }
        Ok(done)
    })
}

/// The consumer's automatic compaction: a thread with its own handle on the table, so that a
/// compaction never holds up a batch. Every `every` it reads the table's newest version and
/// compacts the date partition with the most small files, when it has more than
/// `datalake.compact_min_files`; every minute it deletes both tables' expired commit files.
pub struct Compactor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    /// Starts it (with `datalake.compact_min_files` 0 it only cleans the log).
    pub fn start(
        cfg: &DatalakeConfig,
        every: Duration,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Result<Compactor> {
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg, flag) = (cfg.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                let stopped = || flag.load(Ordering::Relaxed) || shutdown.is_triggered();
                let rt = match runtime() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::warn!("compaction is off: {e}"),
                };
                let mut table = None;
                let mut cleaned: Option<Instant> = None;
                while !stopped() {
                    let wake = Instant::now() + every;
                    while !stopped() && Instant::now() < wake {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if stopped() {
                        break;
                    }
                    // compact_min_files 0: no automatic compaction, the log cleanup still.
                    let compacting = cfg.maintenance.compact_min_files > 0;
                    if compacting && let Err(e) = rt.block_on(round(&cfg, &mut table, &metrics)) {
                        // The next round reads the table afresh.
                        table = None;
                        tracing::warn!("compaction: {e}");
                    }
                    if cleaned.is_none_or(|at| at.elapsed() >= LOG_CLEANUP_EVERY) {
                        cleaned = Some(Instant::now());
                        match rt.block_on(clean_logs(&cfg)) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!("{n} expired commit files deleted from the log"),
                            Err(e) => tracing::warn!("log cleanup: {e}"),
                        }
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the compaction thread: {e}")))?;
        Ok(Compactor { stop, thread: Some(thread) })
    }
}

impl Drop for Compactor {
    /// Stops the thread, waiting a second at most: a compaction cut off commits nothing, and
    /// `vacuum` deletes the files it wrote.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(1);
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// One round of the automatic compaction.
async fn round(cfg: &DatalakeConfig, table: &mut Option<DeltaTable>, metrics: &Metrics) -> Result<()> {
    let table = match table {
        Some(t) => {
            timed(t.update_state()).await.map_err(|e| storage_error(&cfg.location, "cannot read", &e))?;
            t
        }
        None => table.insert(load(cfg).await?),
    };
    let settings = &cfg.maintenance;
    let parts = partitions(table, settings.target_file_size)?;
    let c = &metrics.consumer;
    c.small_files.set(parts.iter().map(|p| p.small as i64).sum());
    c.checkpoint_version.set(super::delta::last_checkpoint(table).await.unwrap_or(-1));
    let Some(date) = due(table, settings, settings.compact_min_files + 1, None)?.into_iter().next() else {
        return Ok(());
    };
    match compact_date(table, &cfg.location, settings, &date, true).await? {
        Outcome::Done(done) => {
            c.compactions.inc();
            c.compacted_files.inc_by(done.files_in as u64);
            c.compacted_bytes.inc_by(done.bytes_in);
            c.last_compaction.set(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
            tracing::info!("{}", done);
        }
        Outcome::Lost => tracing::debug!("date={date}: another compaction committed first"),
        Outcome::Nothing => {}
    }
    Ok(())
}

impl std::fmt::Display for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "compacted date={}: {} files ({} bytes) into {} ({} bytes), {} rows, version {}, in {:.2} s",
            self.date,
            self.files_in,
            self.bytes_in,
            self.files_out,
            self.bytes_out,
            self.rows,
            self.version,
            self.elapsed.as_secs_f64()
        )
    }
}

/// How often the consumer's upkeep thread deletes expired commit files. delta-rs would do it
/// after every commit, listing the whole log on the batch's path, and two committers deleting
/// the same file would make a landed commit report an error.
const LOG_CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Deletes the commit files of both tables that are older than their log retention and that a
/// later checkpoint covers (delta-rs's `cleanup_metadata`). Returns how many.
pub async fn clean_logs(cfg: &DatalakeConfig) -> Result<usize> {
    let mut deleted = 0;
    for location in std::iter::once(&cfg.location).chain(cfg.current_location.iter()) {
        let table = load_at(location, &cfg.storage_options).await?;
        deleted += timed(deltalake::checkpoints::cleanup_metadata(&table, None))
            .await
            .map_err(|e| storage_error(location, "cannot clean the log of", &e))?;
    }
    Ok(deleted)
}

/// `orderstream vacuum`: the data files no commit of the table's current version references
/// (replaced by a rewrite, or written by a batch that crashed before its commit), older than
/// `retention`: listed with `dry_run`, else deleted, with the expired commit files
/// ([`clean_logs`]). Returns the data files' paths.
pub fn vacuum(cfg: &DatalakeConfig, retention: Duration, dry_run: bool) -> Result<Vec<String>> {
    let rt = runtime()?;
    let retention = chrono::Duration::from_std(retention)
        .map_err(|e| Error::Storage(format!("retention out of range: {e}")))?;
    rt.block_on(async {
        let mut files = Vec::new();
        // The current table's replaced buckets too, listed under its location.
        for (location, prefix) in std::iter::once((&cfg.location, None))
            .chain(cfg.current_location.iter().map(|c| (c, Some(c.trim_end_matches('/')))))
        {
            let table = load_at(location, &cfg.storage_options).await?;
            let (_, metrics) = table
                .vacuum()
                .with_retention_period(retention)
                // The retention is ours (datalake.retention_hours), checked when it is configured.
                .with_enforce_retention_duration(false)
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_dry_run(dry_run)
                .await
                .map_err(|e| storage_error(location, "cannot vacuum", &e))?;
            files.extend(metrics.files_deleted.into_iter().map(|f| match prefix {
                Some(p) => format!("{p}/{f}"),
                None => f,
            }));
        }
        if !dry_run {
            let n = clean_logs(cfg).await?;
            tracing::info!("{n} expired commit files deleted from the log");
        }
        Ok(files)
    })
}

/// Delta's table property: a log checkpoint every this many commits (delta-rs writes it after
/// the commit whose version + 1 is a multiple of it).
const CHECKPOINT_INTERVAL_PROPERTY: &str = "delta.checkpointInterval";
/// How long commit files are kept once a later checkpoint covers them.
const LOG_RETENTION_PROPERTY: &str = "delta.logRetentionDuration";
/// How long a checkpoint keeps the `remove` of a replaced file (a reader of an older version
/// may still read it).
const TOMBSTONE_RETENTION_PROPERTY: &str = "delta.deletedFileRetentionDuration";

/// The table properties orderstream keeps on its tables: a log checkpoint every
/// `datalake.checkpoint_interval` commits, and the log and the replaced files' tombstones kept
/// for `datalake.retention_hours` (Delta's defaults are 30 and 7 days). Opening a table lists
/// its whole log folder on local disk and reads every tombstone in the checkpoint, so these two
/// bound what an open costs, whatever the table's age.
pub(super) fn upkeep_properties(cfg: &DatalakeConfig) -> Vec<(&'static str, String)> {
    let retention = format!("interval {} seconds", cfg.retention.as_secs().max(1));
    vec![
        (CHECKPOINT_INTERVAL_PROPERTY, cfg.maintenance.checkpoint_interval.to_string()),
        (LOG_RETENTION_PROPERTY, retention.clone()),
        (TOMBSTONE_RETENTION_PROPERTY, retention),
    ]
}

/// Gives the table the `upkeep` properties it lacks or has with another value (a table made
/// before a key was set, or with another value): one metadata commit, which changes no data.
pub(super) async fn set_properties(
    table: DeltaTable,
    location: &str,
    upkeep: &[(&'static str, String)],
) -> Result<DeltaTable> {
    let have = table.snapshot().ok().map(|s| s.metadata().configuration().clone()).unwrap_or_default();
    let properties: HashMap<String, String> = upkeep
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(v))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if properties.is_empty() {
        return Ok(table);
    }
    let set = table.clone().set_tbl_properties().with_properties(properties.clone());
    match timed(set.into_future()).await {
        Ok(t) => {
            tracing::info!("Delta table {location}: properties set from now on: {properties:?}");
            Ok(t)
        }
        // Another member set them at the same moment: its values are ours too.
        Err(e) => {
            tracing::debug!("Delta table {location}: properties not set: {e}");
            let mut table = table;
            timed(table.update_state()).await.map_err(|e| storage_error(location, "cannot read", &e))?;
            Ok(table)
        }
    }
}
