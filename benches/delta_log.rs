//! `cargo bench --bench delta_log`: how long opening the Delta change table takes as its log
//! grows, with and without log checkpoints.
//!
//! Opening is what the consumer does at start (src/sink/delta.rs `DeltaLake::open`):
//! `DeltaTableBuilder::from_url(url)?.build()?` then `table.load().await`; after it, the bench
//! also times reading the `txn` version of one app id from the loaded snapshot
//! (`snapshot.transaction_version(log_store, app_id)`), which the consumer does on every
//! partition assignment. Four cases (three tables) are opened, each `ORDERSTREAM_BENCH_RUNS`
//! times, on local disk (under `target/tmp`, deleted at the end), in one process with a 2-thread
//! tokio runtime and jemalloc, as the consumer:
//!
//! * 100 commits, with the log checkpoint delta-rs writes at version 99;
//! * `ORDERSTREAM_BENCH_COMMITS` commits without any checkpoint (every open replays every
//!   commit file);
//! * the same table after its checkpoint at the last version delta-rs would checkpoint with its
//!   default `delta.checkpointInterval` of 100 (the version v with v + 1 a multiple of 100, so
//!   99,999 for 100,000 commits, and one commit file after it);
//! * the same number of commits in a table with `delta.logRetentionDuration` and
//!   `delta.deletedFileRetentionDuration` of 1 hour (what orderstream sets from
//!   `datalake.retention_hours: 1`), after the log cleanup (delta-rs's `cleanup_metadata`,
//!   which the consumer's upkeep thread runs every minute): each commit file's modification
//!   time is its commit time, so the cleanup keeps the last hour's commits (back to the
//!   checkpoint before them, which is written too), and the checkpoint the last hour's
//!   tombstones.
//!
//! The table is created with deltalake's `CreateBuilder` (the consumer's columns, `date`
//! partition and table properties); commits 1..N are then written as `_delta_log/<version>.json`
//! files directly, with the bytes delta-rs's `CommitBuilder` would write for the consumer's
//! commit (`CommitData::get_bytes`): a `commitInfo` of a `STREAMING UPDATE` carrying the three
//! partitions' states under `orderstream`, one `add` of a small Parquet file under
//! `date=YYYY-MM-DD/` (the dates of one commit a second, ending now), and one `txn` per Kafka
//! partition (3 partitions, app id `orderstream/<group>/<topic>/<partition>`, version the last
//! offset, 100 more each commit). Only the first `add` is a real file (500 rows written by
//! delta-rs's `RecordBatchWriter`, zstd); the others are distinct names that do not exist on disk,
//! with that file's size and statistics (opening a table reads no data file). Compaction is
//! modelled by a `remove` (`dataChange: false`) in each commit after the 300th of the file
//! added 300 commits earlier, so the table's live file set stays at 300 files while the removes
//! (within the 7-day tombstone retention) accumulate as they would. Only the newest checkpoint is
//! written (with `_last_checkpoint`), by `deltalake::checkpoints::create_checkpoint`; opening
//! uses only the newest. The log is in the page cache (just written).
//!
//! Prints every open, the medians per table, and the setup (log size, checkpoint size).
//!
//! Knobs: `ORDERSTREAM_BENCH_RUNS` (5), `ORDERSTREAM_BENCH_COMMITS` (100000: the large table's
//! commits; the small one always has 100).

#[path = "../tests/common/bench.rs"]
#[allow(dead_code)]
mod bench;

use bench::{knob, median};

use std::collections::HashMap;
use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema};
use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add, Remove, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder};
use orderstream::sink::checkpoint::PartitionState;
use orderstream::sink::delta::{DATE_COLUMN, table_schema};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::json;

/// jemalloc, as the consumer process (src/main.rs).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Res<T> = Result<T, Box<dyn Error>>;

const GROUP: &str = "bench_delta_log";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;
/// The replay filter's lineage (`<source>#<epoch>`) in the partitions' states.
const LINEAGE: &str = "logical:food_delivery_db.roll001_orders#7509463310528282624";
/// Messages per partition per commit: each `txn` version is 100 above the last.
const PER_COMMIT: i64 = 100;
/// The live data files: each commit past this many removes the file added this many commits
/// earlier (compaction's removes, folded into the appends).
const LIVE_FILES: u64 = 300;
/// Rows in the one real data file.
const ROWS: usize = 500;
/// delta-rs's default `delta.checkpointInterval`.
const CHECKPOINT_INTERVAL: u64 = 100;
/// One commit a second.
const COMMIT_EVERY_MS: i64 = 1000;

/// A table being built: where, and what each commit's `add` copies.
struct Table {
    /// The table's location (a local path), as `datalake.path`.
    location: String,
    log: std::path::PathBuf,
    commits: u64,
    /// The real file's `add` (commit 1), whose size and statistics every other `add` copies.
    real: Add,
    /// The time of the last commit, in ms since the epoch.
    end_ms: i64,
}

/// The `txn` app id of a partition, as src/sink/delta.rs `app_id`.
fn app_id(partition: i32) -> String {
    format!("orderstream/{GROUP}/{TOPIC}/{partition}")
}

impl Table {
    fn commit_ms(&self, v: u64) -> i64 {
        self.end_ms - (self.commits - v) as i64 * COMMIT_EVERY_MS
    }

    fn date(&self, v: u64) -> String {
        chrono::DateTime::from_timestamp_millis(self.commit_ms(v))
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string()
    }

    /// The data file commit `v` adds: the real file for commit 1, else a distinct name.
    fn file(&self, v: u64) -> (String, String) {
        if v == 1 {
            let date = self.real.partition_values.get(DATE_COLUMN).cloned().flatten().unwrap_or_default();
            return (self.real.path.clone(), date);
        }
        let date = self.date(v);
        (format!("{DATE_COLUMN}={date}/part-00000-{v:08x}-0000-7000-8000-{v:012x}-c000.zstd.parquet"), date)
    }

    /// The bytes of commit `v` (>= 1), as `CommitBuilder` writes them for the consumer.
    fn commit_bytes(&self, v: u64) -> Res<Vec<u8>> {
        let ms = self.commit_ms(v);
        let (path, date) = self.file(v);
        let mut actions = vec![Action::Add(Add {
            path,
            partition_values: HashMap::from([(DATE_COLUMN.to_string(), Some(date))]),
            modification_time: ms,
            ..self.real.clone()
        })];
        if v > LIVE_FILES {
            let (path, date) = self.file(v - LIVE_FILES);
            actions.push(Action::Remove(Remove {
                path,
                data_change: false,
                deletion_timestamp: Some(ms),
                extended_file_metadata: Some(true),
                partition_values: Some(HashMap::from([(DATE_COLUMN.to_string(), Some(date))])),
                size: Some(self.real.size),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            }));
        }
        let offset = v as i64 * PER_COMMIT;
        let txns = (0..PARTITIONS).map(|p| Transaction::new(app_id(p), offset - 1)).collect();
        let mut states = Vec::new();
        for p in 0..PARTITIONS {
            // Through the consumer's own type, so the note has its shape (positions included).
            let state: PartitionState = serde_json::from_value(json!({
                "topic": TOPIC,
                "partition": p,
                "cluster": "5L6g3nShT-eMCtK--X86sw",
                "next_offset": offset,
                "sources": {LINEAGE: offset * 3 + p as i64},
                "positions": {LINEAGE:
                    {"change": [0x1_6B37_4800u64 + v * 0x4000, p]}},
                "rows_written": offset,
                "batches": v,
                "last_batch": format!("0197{v:04x}-0000-7000-8000-{v:012x}"),
                "last_process": "delta",
            }))?;
            states.push(state);
        }
        let note = HashMap::from([("orderstream".to_string(), json!({ "partitions": states }))]);
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: format!("orderstream/{GROUP}/{TOPIC}"),
            epoch_id: v as i64,
        };
        Ok(CommitData::new(actions, operation, note, txns).get_bytes()?.to_vec())
    }
}

/// 500 rows of the lake's columns and the `date` column, for the one real file.
fn sample_rows(date: &str, ms: i64) -> Res<RecordBatch> {
    let mut fields: Vec<Field> =
        orderstream::order::arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DATE_COLUMN, DataType::Utf8, false));
    let n = ROWS;
    let us = ms * 1000;
    let text = |values: &[&str]| -> ArrayRef {
        Arc::new(StringArray::from_iter_values((0..n).map(|i| values[i % values.len()])))
    };
    let mut columns: Vec<ArrayRef> = Vec::new();
    for f in &fields {
        let column: ArrayRef = match (f.name().as_str(), f.data_type()) {
            ("order_id", _) => Arc::new(Int64Array::from_iter_values((0..n).map(|i| 1000 + i as i64))),
            ("customer_name", _) => text(&["John Doe", "Jane Smith", "Amit Kumar", "Zoë Müller"]),
            ("restaurant_name", _) => text(&["Burger Junction", "Pizza Palace", "Sushi Central"]),
            ("item", _) => text(&["Veg Burger", "Margherita", "California Roll", "Fries"]),
            ("amount", DataType::Decimal128(precision, scale)) => Arc::new(
                Decimal128Array::from_iter_values((0..n).map(|i| 5000 + (i as i128 * 137) % 95_000))
                    .with_precision_and_scale(*precision, *scale)?,
            ),
            ("order_status", _) => text(&["PLACED", "PREPARING", "DELIVERED", "CANCELLED"]),
            ("created_at" | "committed_at", DataType::Timestamp(_, tz)) => Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|i| us - 1_000_000 + i as i64 * 2000))
                    .with_timezone_opt(tz.clone()),
            ),
            ("op", _) => text(&["c", "u", "u", "d"]),
            ("lsn", _) => {
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| 0x1_6B37_4800 + i as i64 * 0x100)))
            }
            ("change_index", _) => Arc::new(Int32Array::from_iter_values((0..n).map(|i| (i % 4) as i32))),
            (DATE_COLUMN, _) => text(&[date]),
            (name, t) => {
                return Err(format!("the bench has no values for the lake column `{name}` ({t})").into());
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Creates the table at `dir` as src/sink/delta.rs `create` does (with `retention` as its
/// log and tombstone retention, else Delta's defaults), writes its one real data file, then
/// commits 1..=`commits` as log files, each with its commit time as its modification time.
async fn build(dir: &Path, commits: u64, retention: Option<&str>) -> Res<Table> {
    std::fs::create_dir_all(dir)?;
    let location = dir.to_str().ok_or("the temp dir's path is not UTF-8")?;
    let columns: Vec<StructField> = table_schema()?.fields().cloned().collect();
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_location(location)
        .with_columns(columns)
        .with_partition_columns([DATE_COLUMN])
        .with_configuration(
            [("orderstream.topic", Some(TOPIC)), ("orderstream.group", Some(GROUP))].into_iter().chain(
                retention.into_iter().flat_map(|r| {
                    [("delta.logRetentionDuration", Some(r)), ("delta.deletedFileRetentionDuration", Some(r))]
                }),
            ),
        )
        .with_raise_if_key_not_exists(false)
        .with_comment("orderstream change table: one row per captured change of the orders table")
        .await?;
    let end_ms = chrono::Utc::now().timestamp_millis();
    let first_ms = end_ms - (commits as i64 - 1) * COMMIT_EVERY_MS;
    let first_date =
        chrono::DateTime::from_timestamp_millis(first_ms).unwrap_or_default().format("%Y-%m-%d").to_string();
    // zstd, as the consumer's files (src/sink/delta.rs `write_files`).
    let props =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
    let mut writer = RecordBatchWriter::for_table(&created)?.with_writer_properties(props);
    writer.write(sample_rows(&first_date, first_ms)?).await?;
    let real = writer.flush().await?.into_iter().next().ok_or("the writer wrote no file")?;
    let table = Table { location: location.to_string(), log: dir.join("_delta_log"), commits, real, end_ms };
    for v in 0..=commits {
        let path = table.log.join(format!("{v:020}.json"));
        if v > 0 {
            std::fs::write(&path, table.commit_bytes(v)?)?;
        }
        // The log cleanup goes by the files' modification times.
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(table.commit_ms(v).max(0) as u64);
        std::fs::File::options().write(true).open(&path)?.set_modified(at)?;
    }
    Ok(table)
}

/// The checkpoint delta-rs would have written last for a table at version `version` (the
/// version v <= `version` with v + 1 a multiple of the interval), if any.
fn checkpoint_version(version: u64) -> Option<u64> {
    ((version + 1) / CHECKPOINT_INTERVAL).checked_mul(CHECKPOINT_INTERVAL)?.checked_sub(1)
}

/// Writes the checkpoint at `version` (and `_last_checkpoint`); returns its size in bytes.
async fn checkpoint(table: &Table, version: u64) -> Res<u64> {
    let mut t = DeltaTableBuilder::from_url(deltalake::ensure_table_uri(&table.location)?)?.build()?;
    t.load_version(version).await?;
    deltalake::checkpoints::create_checkpoint(&t, None).await?;
    let file = table.log.join(format!("{version:020}.checkpoint.parquet"));
    Ok(std::fs::metadata(&file).map_err(|e| format!("no checkpoint file {}: {e}", file.display()))?.len())
}

/// One open: (seconds to build and load, seconds to read one app id's `txn` version).
async fn open(table: &Table) -> Res<(f64, f64)> {
    let start = Instant::now();
    let mut t: DeltaTable =
        DeltaTableBuilder::from_url(deltalake::ensure_table_uri(&table.location)?)?.build()?;
    t.load().await?;
    let opened = start.elapsed().as_secs_f64();
    let snapshot = t.snapshot()?;
    let log_store = t.log_store();
    let start = Instant::now();
    let txn = snapshot.transaction_version(log_store.as_ref(), app_id(0)).await?;
    let read = start.elapsed().as_secs_f64();
    // A bench that opened the wrong thing would time nothing useful.
    let want = table.commits as i64 * PER_COMMIT - 1;
    let files = snapshot.log_data().num_files() as u64;
    if snapshot.version() != table.commits || txn != Some(want) || files != table.commits.min(LIVE_FILES) {
        return Err(format!(
            "the table opened at version {} with {files} files and txn {txn:?}; expected {}, {}, Some({want})",
            snapshot.version(),
            table.commits,
            table.commits.min(LIVE_FILES)
        )
        .into());
    }
    Ok((opened, read))
}

/// Opens `table` `runs` times; prints each open and the medians, returns them.
fn measure(rt: &tokio::runtime::Runtime, what: &str, table: &Table, runs: usize) -> Res<(f64, f64)> {
    let (mut opens, mut reads) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let (o, r) = rt.block_on(open(table))?;
        println!("{what}: run {i}: open {o:.4} s, txn version {r:.4} s");
        opens.push(o);
        reads.push(r);
    }
    let (o, r) = (median(opens), median(reads));
    println!("{what}: median of {runs}: open {o:.4} s, txn version {r:.4} s");
    Ok((o, r))
}

/// The log's commit files: how many bytes.
fn log_bytes(table: &Table) -> u64 {
    std::fs::read_dir(&table.log)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Builds a table of `commits` commits and reports how long that took.
fn setup(rt: &tokio::runtime::Runtime, dir: &Path, commits: u64, retention: Option<&str>) -> Res<Table> {
    let start = Instant::now();
    let table = rt.block_on(build(dir, commits, retention))?;
    println!(
        "{commits} commits written in {:.1} s: {:.1} MB of commit JSON, {} live files, real file {} bytes",
        start.elapsed().as_secs_f64(),
        log_bytes(&table) as f64 / 1e6,
        commits.min(LIVE_FILES),
        table.real.size
    );
    Ok(table)
}

/// Writes the checkpoint delta-rs would have written last and reports it; `None` if none.
fn add_checkpoint(rt: &tokio::runtime::Runtime, table: &Table) -> Res<Option<u64>> {
    let Some(version) = checkpoint_version(table.commits) else {
        println!("{} commits: too few for a checkpoint", table.commits);
        return Ok(None);
    };
    let start = Instant::now();
    let bytes = rt.block_on(checkpoint(table, version))?;
    println!(
        "checkpoint at version {version} written in {:.1} s: {:.1} KB",
        start.elapsed().as_secs_f64(),
        bytes as f64 / 1e3
    );
    Ok(Some(version))
}

/// Deletes the commit files the table's log retention lets go (as the consumer's upkeep thread
/// does every minute); returns how many commit files are left.
fn clean_log(rt: &tokio::runtime::Runtime, table: &Table) -> Res<usize> {
    let start = Instant::now();
    let deleted = rt.block_on(async {
        let t = DeltaTableBuilder::from_url(deltalake::ensure_table_uri(&table.location)?)?.load().await?;
        deltalake::checkpoints::cleanup_metadata(&t, None).await
    })?;
    let left = std::fs::read_dir(&table.log)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    println!(
        "log cleanup in {:.1} s: {deleted} commit files deleted, {left} left",
        start.elapsed().as_secs_f64()
    );
    Ok(left)
}

fn run(root: &Path) -> Res<()> {
    let runs: usize = knob("ORDERSTREAM_BENCH_RUNS", 5).max(1);
    let commits: u64 = knob("ORDERSTREAM_BENCH_COMMITS", 100_000).max(1);
    // As the consumer's (src/sink/delta.rs): delta-kernel blocks on futures inside ours.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let small = setup(&rt, &root.join("small"), 100, None)?;
    let small_at = add_checkpoint(&rt, &small)?;
    let small_what =
        format!("100 commits, checkpoint at {}", small_at.map_or("none".into(), |v| v.to_string()));
    let (small_open, small_txn) = measure(&rt, &small_what, &small, runs)?;

    let large = setup(&rt, &root.join("large"), commits, None)?;
    let bare_what = format!("{commits} commits, no checkpoint");
    let (bare_open, bare_txn) = measure(&rt, &bare_what, &large, runs)?;
    let large_at = add_checkpoint(&rt, &large)?;
    let large_what =
        format!("{commits} commits, checkpoint at {}", large_at.map_or("none".into(), |v| v.to_string()));
    let (large_open, large_txn) = measure(&rt, &large_what, &large, runs)?;

    std::fs::remove_dir_all(root.join("large"))?;

    // As orderstream's tables with `datalake.retention_hours: 1`: the log and the tombstones
    // of the last hour only (3,600 commits at one a second), the rest cleaned up.
    let kept = setup(&rt, &root.join("kept"), commits, Some("interval 3600 seconds"))?;
    // The cleanup deletes only what a checkpoint older than the hour covers: the one the
    // checkpoint interval put there.
    if let Some(older) = commits.checked_sub(3600).and_then(checkpoint_version) {
        rt.block_on(checkpoint(&kept, older))?;
    }
    let kept_at = add_checkpoint(&rt, &kept)?;
    let left = clean_log(&rt, &kept)?;
    let kept_what = format!(
        "{commits} commits, checkpoint at {}, log and tombstones kept 1 h ({left} commit files)",
        kept_at.map_or("none".into(), |v| v.to_string())
    );
    let (kept_open, kept_txn) = measure(&rt, &kept_what, &kept, runs)?;

    println!("medians of {runs} opens (open = build + load; txn = one app id's version after it):");
    for (what, o, r) in [
        (&small_what, small_open, small_txn),
        (&large_what, large_open, large_txn),
        (&bare_what, bare_open, bare_txn),
        (&kept_what, kept_open, kept_txn),
    ] {
        println!("  {what}: open {o:.4} s, txn version {r:.4} s");
    }
    Ok(())
}

fn main() -> Res<()> {
    // `cargo bench` passes --bench; `cargo test --benches` would run this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench_delta_log_{}", std::process::id()));
    let result = run(&root);
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("cannot delete {}: {e}", root.display());
    }
    result
}
