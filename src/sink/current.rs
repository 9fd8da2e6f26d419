//! The current-state table (`datalake.current_path`): a second Delta table with one row per
//! order as it is now (the seven order columns, `lsn` and `committed_at`), kept up to date from
//! each batch of the change table.
//!
//! # Layout: buckets of order ids
//!
//! The table is partitioned by `order_bucket` = `order_id / 10000`, and each bucket is always
//! one file, sorted by `order_id`. A batch rewrites only the buckets its orders fall in: order
//! ids are a sequence, so new orders land in the newest bucket and updates of recent orders in
//! the few before it (at 100 orders/s, updates spread over the last 50,000 orders touch 5), each
//! at most 10,000 rows, whatever the table's size. This is the MERGE keyed by `order_id`, done
//! per bucket without a query engine: read the bucket's file,
//! replace or drop the rows of the batch's orders, write the bucket again, and commit the
//! removes and adds in one log entry. A reader sees either the bucket before or after.
//!
//! # Exactly once
//!
//! As the change table (see [`super::delta`]): each commit carries a `txn` action per Kafka
//! partition, app id `orderstream-current/<group>/<topic>/<partition>`, version = the last
//! offset applied. A batch goes to the current table **before** the change table. After a
//! crash between the two, the batch is read again from the change table's position, and the
//! current table skips every message at or below its own position: nothing is applied twice,
//! and nothing is skipped, since the change table never gets ahead of it. A member that lost
//! its partitions (frozen past its session) is refused as in the change table: its commit names
//! app ids that another member's commit wrote since.
//!
//! A truncate (op `t`) drops every row whose last change committed before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Remove, StructField, StructType, Transaction};
use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use super::batch::DateBatch;
use super::compact::read_file;
use super::delta::{storage_error, timed, writer_properties};
use crate::error::{Error, Result};
use crate::order::arrow_schema;

/// The partition column: `order_id / BUCKET_SIZE`.
pub const BUCKET_COLUMN: &str = "order_bucket";
/// Orders per bucket: a bucket's file is small enough to rewrite in each batch.
pub const BUCKET_SIZE: i64 = 10_000;
/// The change table's columns the current table keeps: the seven order columns, `lsn` and
/// `committed_at`.
const KEPT: [usize; 9] = [0, 1, 2, 3, 4, 5, 6, 8, 10];
const OP: usize = 7;
/// How often a commit that lost to another member's commit of the same buckets is redone.
const ATTEMPTS: usize = 16;

/// The current table's columns without the bucket: what its data files hold.
pub fn file_schema() -> SchemaRef {
    let all = arrow_schema();
    let fields: Vec<Field> = KEPT.iter().map(|&i| all.field(i).clone()).collect();
    Arc::new(Schema::new(fields))
}

/// The table's columns: [`file_schema`] and the bucket.
fn table_schema() -> Result<StructType> {
    let mut fields: Vec<Field> = file_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(BUCKET_COLUMN, ArrowType::Int64, false));
    StructType::try_from_arrow(&Schema::new(fields))
        .map_err(|e| Error::Storage(format!("cannot describe the current table's columns: {e}")))
}

/// One order's last change in a batch: where its row is, and whether it was a delete.
#[derive(Clone, Copy)]
struct Last {
    offset: i64,
    batch: usize,
    row: usize,
    delete: bool,
    lsn: i64,
}

/// What a batch does to the current table.
#[derive(Default)]
struct Changes {
    last: BTreeMap<i64, Last>,
    /// The newest truncate's commit LSN.
    truncate: Option<i64>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.last.is_empty() && self.truncate.is_none()
    }
}

/// The current-state table, written by one consumer-group member.
pub struct CurrentTable {
    table: DeltaTable,
    location: String,
    app: String,
    /// Each owned partition's last offset in the table, as this member knows it.
    applied: HashMap<i32, Option<i64>>,
}

impl CurrentTable {
    /// Opens the table at `location`, creating it when nothing is there, with the `upkeep`
    /// table properties; refuses a table that is not an orderstream current table.
    pub async fn open(
        location: &str,
        options: HashMap<String, String>,
        group: &str,
        topic: &str,
        upkeep: &[(&'static str, String)],
    ) -> Result<CurrentTable> {
        let url = deltalake::ensure_table_uri(location).map_err(|e| {
            Error::Setup(format!("datalake.current_path {location}: not a table location: {e}"))
        })?;
        let mut table = DeltaTableBuilder::from_url(url)
            .and_then(|b| b.with_storage_options(options.clone()).build())
            .map_err(|e| storage_error(location, "cannot open", &e))?;
        match timed(table.load()).await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => {
                let columns: Vec<StructField> = table_schema()?.fields().cloned().collect();
                let created = deltalake::operations::create::CreateBuilder::new()
                    .with_location(location)
                    .with_storage_options(options)
                    .with_columns(columns)
                    .with_partition_columns([BUCKET_COLUMN])
                    .with_configuration(upkeep.iter().map(|(k, v)| (*k, Some(v.as_str()))))
                    .with_raise_if_key_not_exists(false)
                    .with_comment("orderstream current table: one row per order as it is now")
                    .await;
                match created {
                    Ok(t) => table = t,
                    // Another member created it at the same moment.
                    Err(first) => timed(table.load())
                        .await
                        .map_err(|_| storage_error(location, "cannot create", &first))?,
                }
                tracing::info!("created the current-state table {location}");
            }
            Err(e) => return Err(storage_error(location, "cannot read", &e)),
        }
        let mut current = CurrentTable {
            table,
            location: location.to_string(),
            app: format!("orderstream-current/{group}/{topic}"),
            applied: HashMap::new(),
        };
        // Another's table is refused before anything of it changes.
        current.check_columns()?;
        current.table = super::compact::set_properties(current.table.clone(), location, upkeep).await?;
        Ok(current)
    }

    /// The table's URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The version as this member last read or wrote it.
    pub fn version(&self) -> i64 {
        self.table.version().map_or(-1, |v| v as i64)
    }

    fn check_columns(&self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        let theirs: Vec<(String, String)> =
            snapshot.schema().fields().map(|f| (f.name().to_string(), f.data_type().to_string())).collect();
        let ours: Vec<(String, String)> =
            table_schema()?.fields().map(|f| (f.name().to_string(), f.data_type().to_string())).collect();
        if theirs != ours {
            let names: Vec<&str> = theirs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Setup(format!(
                "datalake.current_path {}: this Delta table is not an orderstream current table (its columns are {}); \
                 point datalake.current_path at another location",
                self.location,
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Reads the newest version.
    pub async fn refresh(&mut self) -> Result<()> {
        timed(self.table.update_state()).await.map_err(|e| storage_error(&self.location, "cannot read", &e))
    }

    fn app_id(&self, partition: i32) -> String {
        format!("{}/{partition}", self.app)
    }

    /// The last offset of `partition` the table holds, in the version last read.
    pub async fn last_offset(&self, partition: i32) -> Result<Option<i64>> {
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        timed(snapshot.transaction_version(self.table.log_store().as_ref(), self.app_id(partition)))
            .await
            .map_err(|e| storage_error(&self.location, "cannot read the transactions of", &e))
    }

    /// Takes `partition` at the position the version last read holds.
    pub async fn own(&mut self, partition: i32) -> Result<()> {
        let last = self.last_offset(partition).await?;
        self.applied.insert(partition, last);
        Ok(())
    }

    /// Applies one batch of the change table (`offsets`: each partition's last offset in it)
    /// and commits, unless the table holds all of it already. A batch of rejects only commits
    /// its positions, so that the table's lag behind the change table means orders not yet in it.
    /// Returns the version.
    pub async fn apply(&mut self, batches: &[DateBatch], offsets: &[(i32, i64)]) -> Result<Option<i64>> {
        let changes = self.changes(batches)?;
        let behind =
            offsets.iter().any(|(p, last)| self.applied.get(p).copied().flatten().is_none_or(|c| c < *last));
        if changes.is_empty() && !behind {
            return Ok(None);
        }
        // A position never goes back: after a crash between the two tables this one is ahead
        // of the change table, and the batch read again ends below it.
        let offsets: Vec<(i32, i64)> = offsets
            .iter()
            .map(|&(p, last)| (p, self.applied.get(&p).copied().flatten().map_or(last, |c| c.max(last))))
            .collect();
        let offsets = offsets.as_slice();
        for attempt in 1..=ATTEMPTS {
            self.check_owner(offsets).await?;
            match self.try_commit(batches, &changes, offsets).await? {
                Some(version) => {
                    for &(p, last) in offsets {
                        self.applied.insert(p, Some(last));
                    }
                    return Ok(Some(version));
                }
                // Another member committed first: read its version and merge again, after a
                // pause that grows and differs between members, so that they stop colliding.
                None if attempt < ATTEMPTS => {
                    let jitter = u64::from(std::process::id() % 7) * 15;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt as u64 + jitter)).await;
                    self.refresh().await?
                }
                None => {}
            }
        }
        Err(Error::Storage(format!(
            "current table {}: {ATTEMPTS} commits in a row lost to other members' commits; the batch is not committed",
            self.location
        )))
    }

    /// Refuses a batch of a partition another member has written since this one took it.
    async fn check_owner(&self, offsets: &[(i32, i64)]) -> Result<()> {
        for &(p, _) in offsets {
            let now = self.last_offset(p).await?;
            let mine = self.applied.get(&p).copied().flatten();
            if now != mine {
                return Err(Error::Storage(format!(
                    "current table {}: partition {p} holds offsets up to {} where this process expected {}: another \
                     consumer wrote the partition (it was reassigned); the batch is not committed",
                    self.location,
                    now.map_or("none".into(), |v| v.to_string()),
                    mine.map_or("none".into(), |v| v.to_string()),
                )));
            }
        }
        Ok(())
    }

    /// Each order's last change among the batch's messages the table does not hold yet.
    fn changes(&self, batches: &[DateBatch]) -> Result<Changes> {
        let mut out = Changes::default();
        for (bi, b) in batches.iter().enumerate() {
            let ids = int64(&b.rows, 0, "order_id")?;
            let ops = b.rows.column(OP).as_string_opt::<i32>().ok_or_else(|| not_ours("op"))?;
            let lsns = int64(&b.rows, 8, "lsn")?;
            for (row, &(p, offset)) in b.sources.iter().enumerate().take(b.rows.num_rows()) {
                if self.applied.get(&p).copied().flatten().is_some_and(|c| offset <= c) {
                    continue;
                }
                let lsn = if lsns.is_null(row) { -1 } else { lsns.value(row) };
                let op = ops.value(row);
                if op == "t" {
                    out.truncate = Some(out.truncate.map_or(lsn, |t| t.max(lsn)));
                    continue;
                }
                if ids.is_null(row) {
                    continue;
                }
                let change = Last { offset, batch: bi, row, delete: op == "d", lsn };
                // An order's changes all travel in one partition (keyed by order_id), in order.
                out.last
                    .entry(ids.value(row))
                    .and_modify(|l| {
                        if offset >= l.offset {
                            *l = change;
                        }
                    })
                    .or_insert(change);
            }
        }
        Ok(out)
    }

    /// One attempt: the touched buckets rewritten and committed. `None`: another member's
    /// commit of the same files came first (the files written are deleted again).
    async fn try_commit(
        &mut self,
        batches: &[DateBatch],
        changes: &Changes,
        offsets: &[(i32, i64)],
    ) -> Result<Option<i64>> {
        let location = self.location.clone();
        let files = self.files_by_bucket()?;
        let mut buckets: BTreeSet<i64> = changes.last.keys().map(|id| id.div_euclid(BUCKET_SIZE)).collect();
        if changes.truncate.is_some() {
            buckets.extend(files.keys());
        }
        let projected: Vec<RecordBatch> = batches
            .iter()
            .map(|b| b.rows.project(&KEPT))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Storage(format!("cannot take the current columns of a batch: {e}")))?;
        let store = self.table.log_store().object_store(None);
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(|e| storage_error(&location, "cannot write to", &e))?
            .with_writer_properties(writer_properties());
        let mut removes = Vec::new();
        for bucket in buckets {
            let mut sources: Vec<RecordBatch> = Vec::new();
            for (remove, path) in files.get(&bucket).into_iter().flatten() {
                sources.extend(read_file(store.as_ref(), path, &location).await?);
                removes.push(remove.clone());
            }
            let Some(rows) = merge_bucket(bucket, &sources, &projected, changes)? else { continue };
            writer.write(rows).await.map_err(|e| storage_error(&location, "cannot write to", &e))?;
        }
        let adds =
            timed(writer.flush()).await.map_err(|e| storage_error(&location, "cannot write to", &e))?;
        let written: Vec<String> = adds.iter().map(|a| a.path.clone()).collect();
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        actions.extend(removes.into_iter().map(Action::Remove));
        let txns = offsets.iter().map(|&(p, last)| Transaction::new(self.app_id(p), last)).collect();
        let props = CommitProperties::default()
            .with_application_transactions(txns)
            .with_max_retries(15)
            // Not on a batch's path: the upkeep thread and `vacuum` clean the log (see compact.rs).
            .with_cleanup_expired_logs(Some(false));
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Update,
            query_id: self.app.clone(),
            epoch_id: self.version() + 1,
        };
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&location, "cannot read", &e))?;
        let commit = CommitBuilder::from(props).with_actions(actions).build(
            Some(snapshot),
            self.table.log_store(),
            operation,
        );
        match timed(commit.into_future()).await {
            Ok(done) => {
                let version = done.version();
                timed(self.table.update_incremental(Some(version)))
                    .await
                    .map_err(|e| storage_error(&location, "cannot read", &e))?;
                Ok(Some(version as i64))
            }
            // The files written stay for `vacuum`: a store that retried a conditional put which
            // had landed reports our own commit as a conflict, and its files must not go.
            Err(DeltaTableError::Transaction { source: TransactionError::CommitConflict(c) }) => {
                tracing::debug!(
                    "current table {location}: commit lost ({c}, {} files left to vacuum); merging again",
                    written.len()
                );
                Ok(None)
            }
            Err(e) => Err(storage_error(&location, "cannot commit to", &e)),
        }
    }

    /// Whether the table is as created: no commit after its first.
    pub fn is_new(&self) -> bool {
        self.version() <= 0
    }

    /// Fills a new table from the change table `change` as it is now: each order's last change
    /// (by commit position), with the change table's positions `offsets`, so that the consumer
    /// goes on from there. For a current table configured on a change table that already holds
    /// rows; a member that fills it at the same moment loses at the log.
    pub async fn fill(
        &mut self,
        change: &DeltaTable,
        change_location: &str,
        offsets: &[(i32, i64)],
    ) -> Result<()> {
        let snapshot = change.snapshot().map_err(|e| storage_error(change_location, "cannot read", &e))?;
        let store = change.log_store().object_store(None);
        let mut files: Vec<(i64, StorePath, String)> = snapshot
            .log_data()
            .iter()
            .map(|f| {
                let date = f.partition_values_map().get("date").cloned().flatten().unwrap_or_default();
                (f.modification_time(), f.object_store_path(), date)
            })
            .collect();
        files.sort_by_key(|f| f.0);
        let mut batches = Vec::new();
        let mut rows = 0usize;
        for (_, path, date) in &files {
            for b in read_file(store.as_ref(), path, change_location).await? {
                rows += b.num_rows();
                batches.push(DateBatch { date: date.clone(), rows: b, sources: Vec::new() });
            }
        }
        // Commit order: the log position where there is one, else the order of the files.
        let mut order: Vec<(i64, i64, usize, usize)> = Vec::with_capacity(rows);
        for (bi, b) in batches.iter().enumerate() {
            let lsns = int64(&b.rows, 8, "lsn")?;
            let index = b
                .rows
                .column(9)
                .as_primitive_opt::<arrow_array::types::Int32Type>()
                .ok_or_else(|| not_ours("change_index"))?;
            for r in 0..b.rows.num_rows() {
                let lsn = if lsns.is_null(r) { -1 } else { lsns.value(r) };
                let i = if index.is_null(r) { -1 } else { i64::from(index.value(r)) };
                order.push((lsn, i, bi, r));
            }
        }
        order.sort();
        for b in &mut batches {
            b.sources = vec![(-1, 0); b.rows.num_rows()];
        }
        for (rank, &(_, _, bi, r)) in order.iter().enumerate() {
            batches[bi].sources[r] = (-1, rank as i64);
        }
        tracing::info!(
            "current table {}: filling it from the {rows} change rows of {change_location} (version {})",
            self.location,
            change.version().map_or(-1, |v| v as i64)
        );
        let filled = self.apply(&batches, offsets).await;
        self.applied.clear();
        match filled {
            Ok(_) => Ok(()),
            // Another member filled it first.
            Err(e) => {
                self.refresh().await?;
                if self.is_new() { Err(e) } else { Ok(()) }
            }
        }
    }

    /// The live files of each bucket in the version last read.
    fn files_by_bucket(&self) -> Result<BTreeMap<i64, Vec<(Remove, StorePath)>>> {
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        let mut out: BTreeMap<i64, Vec<(Remove, StorePath)>> = BTreeMap::new();
        for file in snapshot.log_data().iter() {
            let bucket = file
                .partition_values_map()
                .get(BUCKET_COLUMN)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    Error::Storage(format!(
                        "current table {}: data file {} has no {BUCKET_COLUMN}",
                        self.location,
                        file.path()
                    ))
                })?;
            out.entry(bucket).or_default().push((file.remove_action(true), file.object_store_path()));
        }
        Ok(out)
    }
}

/// One bucket after the batch: its rows that the batch leaves alone, and the batch's new state
/// of its orders, sorted by `order_id`, with the bucket column; `None` when nothing is left.
fn merge_bucket(
    bucket: i64,
    existing: &[RecordBatch],
    batch: &[RecordBatch],
    changes: &Changes,
) -> Result<Option<RecordBatch>> {
    let cut = changes.truncate.unwrap_or(i64::MIN);
    // (order_id, source, row): sources are the existing batches, then the batch's.
    let mut keep: Vec<(i64, usize, usize)> = Vec::new();
    for (si, rows) in existing.iter().enumerate() {
        let ids = int64(rows, 0, "order_id")?;
        let lsns = int64(rows, 7, "lsn")?;
        for r in 0..rows.num_rows() {
            let lsn = if lsns.is_null(r) { -1 } else { lsns.value(r) };
            if ids.is_null(r) || changes.last.contains_key(&ids.value(r)) || lsn < cut {
                continue;
            }
            keep.push((ids.value(r), si, r));
        }
    }
    let range = bucket * BUCKET_SIZE..(bucket + 1) * BUCKET_SIZE;
    for (&id, last) in changes.last.range(range) {
        if !last.delete && last.lsn >= cut {
            keep.push((id, existing.len() + last.batch, last.row));
        }
    }
    if keep.is_empty() {
        return Ok(None);
    }
    keep.sort_unstable_by_key(|k| k.0);
    let sources: Vec<&RecordBatch> = existing.iter().chain(batch.iter()).collect();
    let indices: Vec<(usize, usize)> = keep.iter().map(|&(_, s, r)| (s, r)).collect();
    let schema = file_schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len() + 1);
    for c in 0..schema.fields().len() {
        let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(c).as_ref()).collect();
        let column = arrow_select::interleave::interleave(&arrays, &indices).map_err(|e| {
            Error::Storage(format!("cannot assemble bucket {bucket} of the current table: {e}"))
        })?;
        columns.push(column);
    }
    columns.push(Arc::new(Int64Array::from(vec![bucket; keep.len()])));
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(BUCKET_COLUMN, ArrowType::Int64, false));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map(Some)
        .map_err(|e| Error::Storage(format!("cannot assemble bucket {bucket} of the current table: {e}")))
}

/// Column `i` of `rows` as 64-bit integers: a file another tool wrote may hold another type.
fn int64<'a>(rows: &'a RecordBatch, i: usize, name: &str) -> Result<&'a Int64Array> {
    rows.column(i).as_primitive_opt::<Int64Type>().ok_or_else(|| not_ours(name))
}

fn not_ours(column: &str) -> Error {
    Error::Storage(format!(
        "a data file holds column `{column}` in another type than orderstream writes (written by another tool?)"
    ))
}
