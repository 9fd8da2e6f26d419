//! The lake as a Delta Lake table (`datalake.format: delta`), on local disk or S3, exactly once
//! by the table's own log.
//!
//! # Exactly once
//!
//! kafka-delta-ingest's design: the Kafka positions live in the table's transaction log, so
//! data and positions commit in one atomic log append, and no local checkpoint, lock or shared
//! folder is needed. Each commit of a batch holds:
//!
//! * one `add` action per Parquet file (one per date of the batch, under `date=YYYY-MM-DD/`);
//! * one `txn` action per Kafka partition of the batch: app id
//!   `orderstream/<group>/<topic>/<partition>`, version = the **last offset written** (as
//!   kafka-delta-ingest); reading resumes at version + 1;
//! * in its `commitInfo`, under `orderstream`, each partition's complete state (the replay
//!   filter and counters, as the Parquet lake's checkpoint holds them), so that a new owner
//!   of the partition continues the filter where the last commit left it.
//!
//! A commit is a put-if-absent of `_delta_log/<version>.json` (a hard link on local disk,
//! `If-None-Match: *` on S3). Before it, the table's `txn` version of every partition in the
//! batch must still be the one this process read; delta-rs's conflict checker then refuses
//! the commit if a commit that landed since wrote a `txn` of the same app id. So of two
//! processes that both believe they own a partition (a member frozen past its session timeout,
//! whose partitions were given to another), at most one commits each offset. Any failed or
//! uncertain commit (a conflict, a timeout with unknown outcome) is settled the same way: the
//! table is read again, every owned partition takes the table's state, and reading resumes
//! after what the table holds. Nothing is retried blindly, so no row is written twice.
//!
//! Files of a batch that never committed (a crash between writing them and the commit) are in
//! no `add` action, so no Delta reader sees them; `orderstream vacuum` deletes them once they
//! are older than the retention.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{DataType as ArrowType, Field, Schema};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructField, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures_util::TryStreamExt;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::batch::DateBatch;
use super::checkpoint::PartitionState;
use super::compact::{set_properties, upkeep_properties};
use super::current::CurrentTable;
use crate::config::DatalakeConfig;
use crate::error::{Error, Result};
use crate::order::arrow_schema;

/// The partition column: the UTC day of `created_at`, `YYYY-MM-DD`, as the Parquet lake's
/// folder names.
pub const DATE_COLUMN: &str = "date";
/// The table property naming the topic whose changes the table holds.
const TOPIC_PROPERTY: &str = "orderstream.topic";
/// The table property naming the consumer group that writes it.
const GROUP_PROPERTY: &str = "orderstream.group";
/// The `commitInfo` key of the partition states.
const COMMIT_INFO_KEY: &str = "orderstream";
/// How many commits back a partition's state is looked for in `commitInfo`.
const STATE_LOOKBACK: usize = 2000;
/// Partitions in a row without a `txn` after which filling a new current table stops probing.
const PROBE_MISSES: i32 = 256;
/// How long one storage call may take before it counts as failed (its outcome settled by
/// reading the log again).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a commit wrote.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// The table version the commit created.
    pub version: i64,
    /// Data files added.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The partition states of one commit, as its `commitInfo` holds them.
#[derive(Serialize, Deserialize)]
struct CommitNote {
    partitions: Vec<PartitionState>,
}

/// An open Delta table, written by one consumer-group member.
pub struct DeltaLake {
    rt: tokio::runtime::Runtime,
    table: DeltaTable,
    /// The table's URL, for messages (never holds credentials: they come from options).
    location: String,
    group: String,
    topic: String,
    batches: i64,
    /// `datalake.current_path`: the current-state table, written before each commit here.
    current: Option<CurrentTable>,
}

impl DeltaLake {
    /// Opens the table at `cfg.location`, creating it when nothing is there. Refused, with one
    /// line: a Parquet lake of the other format at that path, a table whose columns are not
    /// ours (naming the first that differs), or a table another topic or group writes.
    pub fn open(cfg: &DatalakeConfig, group: &str, topic: &str) -> Result<DeltaLake> {
        let rt = runtime()?;
        let location = cfg.location.clone();
        if cfg.is_local() {
            refuse_parquet_lake(&cfg.path, &location)?;
        }
        let url = deltalake::ensure_table_uri(&location)
            .map_err(|e| Error::Setup(format!("datalake.path {location}: not a table location: {e}")))?;
        let options: HashMap<String, String> =
            cfg.storage_options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut table = DeltaTableBuilder::from_url(url)
            .and_then(|b| b.with_storage_options(options.clone()).build())
            .map_err(|e| storage_error(&location, "cannot open", &e))?;
        let upkeep = upkeep_properties(cfg);
        let loaded = rt.block_on(timed(table.load()));
        match loaded {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => {
                table = rt.block_on(create(&location, options.clone(), group, topic, &upkeep))?;
            }
            Err(e) => return Err(storage_error(&location, "cannot read", &e)),
        }
        let mut lake = DeltaLake {
            rt,
            table,
            location,
            group: group.to_string(),
            topic: topic.to_string(),
            batches: 0,
            current: None,
        };
        // Another's table is refused before anything of it changes.
        lake.check_table()?;
        lake.table = lake.rt.block_on(set_properties(lake.table.clone(), &lake.location, &upkeep))?;
        if let Some(at) = &cfg.current_location {
            lake.current = Some(lake.rt.block_on(CurrentTable::open(at, options, group, topic, &upkeep))?);
        }
        lake.fill_current()?;
        Ok(lake)
    }

    /// The table's URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The version of the table as this process last read or wrote it.
    pub fn version(&self) -> i64 {
        self.table.version().map_or(-1, |v| v as i64)
    }

    /// Reads the table's newest version (and the current table's).
    pub fn refresh(&mut self) -> Result<()> {
        let table = &mut self.table;
        self.rt
            .block_on(timed(table.update_state()))
            .map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        if let Some(current) = &mut self.current {
            self.rt.block_on(current.refresh())?;
        }
        Ok(())
    }

    /// Takes `partition` in the current table at the position its version last read holds
    /// (after [`DeltaLake::refresh`]: on assignment, and when a failed commit is settled).
    /// Refused when the current table holds less of the partition than this table: the
    /// changes between would never reach it (a current table left behind while it was off).
    pub fn own(&mut self, partition: i32) -> Result<()> {
        let Some(current) = self.current.as_ref() else { return Ok(()) };
        let location = current.location().to_string();
        let here = self.last_offset(partition)?;
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        self.rt.block_on(current.own(partition))?;
        let there = self.rt.block_on(current.last_offset(partition))?;
        if there.unwrap_or(-1) < here.unwrap_or(-1) {
            return Err(Error::Setup(format!(
                "datalake.current_path {location}: holds partition {}/{partition} up to offset {} and the change table \
                 {} up to {}: the changes between never reached it (was it off meanwhile?). Delete the current table; \
                 the consumer fills it again from the change table",
                self.topic,
                show(there),
                self.location,
                show(here)
            )));
        }
        Ok(())
    }

    /// The current table's URL and version, when there is one.
    pub fn current_version(&self) -> Option<i64> {
        self.current.as_ref().map(CurrentTable::version)
    }

    /// Whether the table holds any data file.
    pub fn has_files(&self) -> bool {
        self.table.snapshot().is_ok_and(|s| s.log_data().num_files() > 0)
    }

    /// The `txn` app id of a partition.
    fn app_id(&self, partition: i32) -> String {
        format!("orderstream/{}/{}/{partition}", self.group, self.topic)
    }

    /// The last offset of `partition` the table holds, in the version last read.
    pub fn last_offset(&self, partition: i32) -> Result<Option<i64>> {
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        let log_store = self.table.log_store();
        self.rt
            .block_on(timed(snapshot.transaction_version(log_store.as_ref(), self.app_id(partition))))
            .map_err(|e| storage_error(&self.location, "cannot read the transactions of", &e))
    }

    /// The committed state of `partition` in the version last read: `None` when the table
    /// holds nothing of it. Its position comes from the `txn` action; the replay filter and
    /// counters from the `commitInfo` of the commit that wrote that position (a fresh filter,
    /// with a warning, when that commit is too far back or its log entry expired).
    pub fn state(&self, partition: i32) -> Result<Option<PartitionState>> {
        let Some(last) = self.last_offset(partition)? else { return Ok(None) };
        let next = last + 1;
        let infos: Vec<_> = self
            .rt
            .block_on(timed(self.table.history(Some(STATE_LOOKBACK)).try_collect::<Vec<_>>()))
            .map_err(|e| storage_error(&self.location, "cannot read the history of", &e))?;
        let found = infos.iter().find_map(|info| {
            let note: CommitNote = serde_json::from_value(info.info.get(COMMIT_INFO_KEY)?.clone()).ok()?;
            note.partitions
                .into_iter()
                .find(|s| s.topic == self.topic && s.partition == partition && s.next_offset == next)
        });
        Ok(Some(found.unwrap_or_else(|| {
            tracing::warn!(
                "partition {}/{partition}: the table {} holds offsets up to {last}, but the commit that wrote \
                 them is not among its last {STATE_LOOKBACK} log entries: the replay filter starts afresh",
                self.topic,
                self.location
            );
            PartitionState { next_offset: next, ..PartitionState::empty(&self.topic, partition) }
        })))
    }

    /// Commits one batch: its rows by date, and the new state of each partition it advanced.
    /// `expected`: each of those partitions' last offset as this process read it; if the table
    /// now says otherwise, another process wrote the partition and nothing is committed.
    pub fn commit(
        &mut self,
        dates: Vec<DateBatch>,
        states: Vec<PartitionState>,
        expected: &[(i32, Option<i64>)],
    ) -> Result<Committed> {
        for &(p, before) in expected {
            let now = self.last_offset(p)?;
            if now != before {
                return Err(Error::Storage(format!(
                    "partition {}/{p}: the table {} holds offsets up to {} where this process expected {}: another \
                     consumer wrote the partition (it was reassigned); the batch is not committed",
                    self.topic,
                    self.location,
                    show(now),
                    show(before)
                )));
            }
        }
        // The current table first: after a crash between the two, the batch is read again from
        // this table's position, and the current table skips what it holds (see super::current).
        if let Some(current) = &mut self.current {
            let offsets: Vec<(i32, i64)> = states.iter().map(|s| (s.partition, s.next_offset - 1)).collect();
            self.rt.block_on(current.apply(&dates, &offsets))?;
            super::failpoint(super::Failpoint::Current);
        }
        let dates: Vec<(String, RecordBatch)> = dates.into_iter().map(|d| (d.date, d.rows)).collect();
        self.batches += 1;
        let txns =
            states.iter().map(|s| Transaction::new(self.app_id(s.partition), s.next_offset - 1)).collect();
        let note = serde_json::to_value(CommitNote { partitions: states })
            .map_err(|e| Error::Storage(format!("cannot encode the partition states: {e}")))?;
        let props = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata([(COMMIT_INFO_KEY.to_string(), note)])
            // Appends of other members are merged in by the conflict checker; a conflict on a
            // partition is settled by the caller, never retried here.
            .with_max_retries(15)
            // Not on a batch's path: the upkeep thread and `vacuum` clean the log (see compact.rs).
            .with_cleanup_expired_logs(Some(false));
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: format!("orderstream/{}/{}", self.group, self.topic),
            epoch_id: self.batches,
        };
        let (location, table) = (&self.location, &mut self.table);
        self.rt.block_on(async {
            let adds = write_files(table, dates, None)
                .await
                .map_err(|e| storage_error(location, "cannot write to", &e))?;
            let files = adds.len();
            let bytes = adds.iter().map(|a| a.size.max(0) as u64).sum();
            let actions = adds.into_iter().map(Action::Add).collect();
            let snapshot = table.snapshot().map_err(|e| storage_error(location, "cannot read", &e))?;
            let commit = CommitBuilder::from(props).with_actions(actions).build(
                Some(snapshot),
                table.log_store(),
                operation,
            );
            let finalized = timed(commit.into_future()).await.map_err(|e| match e {
                DeltaTableError::Transaction {
                    source: deltalake::kernel::transaction::TransactionError::CommitConflict(_),
                } => Error::Storage(format!(
                    "Delta table {location}: another consumer committed offsets of this batch's partitions \
                     meanwhile (they were reassigned): the batch is not committed"
                )),
                e => storage_error(location, "cannot commit to", &e),
            })?;
            let version = finalized.version();
            timed(table.update_incremental(Some(version)))
                .await
                .map_err(|e| storage_error(location, "cannot read", &e))?;
            Ok(Committed { version: version as i64, files, bytes })
        })
    }

    /// A new current table beside a change table that holds rows starts from those rows.
    fn fill_current(&mut self) -> Result<()> {
        let Some(current) = self.current.as_ref() else { return Ok(()) };
        if !current.is_new() || self.version() <= 0 {
            return Ok(());
        }
        let infos: Vec<_> = self
            .rt
            .block_on(timed(self.table.history(Some(STATE_LOOKBACK)).try_collect::<Vec<_>>()))
            .map_err(|e| storage_error(&self.location, "cannot read the history of", &e))?;
        let mut partitions: Vec<i32> = infos
            .iter()
            .filter_map(|i| serde_json::from_value::<CommitNote>(i.info.get(COMMIT_INFO_KEY)?.clone()).ok())
            .flat_map(|n| n.partitions.into_iter().filter(|s| s.topic == self.topic).map(|s| s.partition))
            .collect();
        // A partition idle for longer than the lookback or the log's retention is in no commit
        // read above, but its `txn` is in every version: Kafka numbers partitions from 0, so
        // probe upwards until a long run of partitions the table has nothing of.
        let (mut p, mut misses) = (0, 0);
        while misses < PROBE_MISSES {
            if self.last_offset(p)?.is_some() {
                partitions.push(p);
                misses = 0;
            } else {
                misses += 1;
            }
            p += 1;
        }
        partitions.sort_unstable();
        partitions.dedup();
        let mut offsets = Vec::new();
        for p in partitions {
            if let Some(last) = self.last_offset(p)? {
                offsets.push((p, last));
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let (rt, table, location) = (&self.rt, &self.table, &self.location);
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        rt.block_on(current.fill(table, location, &offsets))
    }

    /// Refuses a table whose columns or owner are not ours.
    fn check_table(&self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| storage_error(&self.location, "cannot read", &e))?;
        let metadata = snapshot.metadata();
        let ours = table_schema()?;
        let theirs = snapshot.schema();
        let mut theirs_fields = theirs.fields();
        for want in ours.fields() {
            let got = theirs_fields.next();
            if got.is_none_or(|g| g.name() != want.name() || g.data_type() != want.data_type()) {
                let found =
                    got.map_or("nothing".to_string(), |g| format!("`{}` {}", g.name(), g.data_type()));
                return Err(Error::Setup(format!(
                    "datalake.path {}: this Delta table is not an orderstream change table: column `{}` ({}) was \
                     expected where the table has {found}. Point datalake.path at another location",
                    self.location,
                    want.name(),
                    want.data_type()
                )));
            }
        }
        if let Some(extra) = theirs_fields.next() {
            return Err(Error::Setup(format!(
                "datalake.path {}: this Delta table has a column `{}` an orderstream change table does not have",
                self.location,
                extra.name()
            )));
        }
        let config = metadata.configuration();
        for (key, ours, what) in
            [(TOPIC_PROPERTY, &self.topic, "kafka.topic"), (GROUP_PROPERTY, &self.group, "kafka.group_id")]
        {
            if let Some(theirs) = config.get(key)
                && theirs != ours
            {
                return Err(Error::Setup(format!(
                    "datalake.path {}: the table holds {what} `{theirs}`, and this consumer's {what} is `{ours}`: two \
                     streams in one table would mix (or double) their rows. Give each its own datalake.path",
                    self.location
                )));
            }
        }
        Ok(())
    }
}

/// The table's columns: the lake's eleven (see [`arrow_schema`]) and the `date` partition.
pub fn table_schema() -> Result<StructType> {
    let mut fields: Vec<Field> = arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DATE_COLUMN, ArrowType::Utf8, false));
    StructType::try_from_arrow(&Schema::new(fields))
        .map_err(|e| Error::Storage(format!("cannot describe the Delta table's columns: {e}")))
}

/// Creates the table; another member creating it at the same moment wins, and its table is
/// loaded instead.
async fn create(
    location: &str,
    options: HashMap<String, String>,
    group: &str,
    topic: &str,
    upkeep: &[(&'static str, String)],
) -> Result<DeltaTable> {
    let schema = table_schema()?;
    let columns: Vec<StructField> = schema.fields().cloned().collect();
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_location(location)
        .with_storage_options(options.clone())
        .with_columns(columns)
        .with_partition_columns([DATE_COLUMN])
        .with_configuration(
            [(TOPIC_PROPERTY, Some(topic)), (GROUP_PROPERTY, Some(group))]
                .into_iter()
                .chain(upkeep.iter().map(|(k, v)| (*k, Some(v.as_str())))),
        )
        .with_raise_if_key_not_exists(false)
        .with_comment("orderstream change table: one row per captured change of the orders table")
        .await;
    match created {
        Ok(t) => {
            tracing::info!("created the Delta table {location}");
            Ok(t)
        }
        Err(first) => {
            let url = deltalake::ensure_table_uri(location)
                .map_err(|e| Error::Setup(format!("datalake.path {location}: not a table location: {e}")))?;
            let mut table = DeltaTableBuilder::from_url(url)
                .and_then(|b| b.with_storage_options(options).build())
                .map_err(|e| storage_error(location, "cannot open", &e))?;
            match timed(table.load()).await {
                Ok(()) => Ok(table),
                Err(_) => Err(storage_error(location, "cannot create", &first)),
            }
        }
    }
}

/// Writes each date's rows as Parquet files of the table (zstd, as the Parquet lake) and
/// returns their `add` actions.
/// With `target_file_size`, a file that reaches it is closed and another begun.
pub(super) async fn write_files(
    table: &DeltaTable,
    dates: Vec<(String, RecordBatch)>,
    target_file_size: Option<u64>,
) -> Result<Vec<deltalake::kernel::Add>, DeltaTableError> {
    let mut writer = RecordBatchWriter::for_table(table)?.with_writer_properties(writer_properties());
    if let Some(size) = target_file_size {
        writer = writer.with_target_file_size(size);
    }
    for (date, rows) in dates {
        // The partition column, one value per file: the writer splits by it.
        let mut fields: Vec<Field> = rows.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(DATE_COLUMN, ArrowType::Utf8, false));
        let mut columns = rows.columns().to_vec();
        columns
            .push(std::sync::Arc::new(arrow_array::StringArray::from(vec![date.as_str(); rows.num_rows()])));
        let batch = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
            .map_err(|e| DeltaTableError::Generic(format!("cannot add the date column: {e}")))?;
        writer.write(batch).await?;
    }
    timed(writer.flush()).await
}

/// The Parquet settings of every data file: zstd, as the Parquet lake.
pub(super) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build()
}

/// `fut`, failing with a timeout error after [`CALL_TIMEOUT`].
pub(super) async fn timed<T>(
    fut: impl Future<Output = Result<T, DeltaTableError>>,
) -> Result<T, DeltaTableError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(DeltaTableError::Generic(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

/// A folder of the Parquet lake's layout (date folders or its checkpoint marker) and no Delta
/// log: the other format. Writing a table there would mix both.
fn refuse_parquet_lake(path: &Path, location: &str) -> Result<()> {
    if path.join("_delta_log").is_dir() {
        return Ok(());
    }
    let parquet = std::fs::read_dir(path).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("date=") || name == "_orderstream_checkpoint" || name == "_SUCCESS"
        })
    });
    if parquet {
        return Err(Error::Setup(format!(
            "datalake.path {location}: the folder holds a lake of format `parquet` (date folders, no _delta_log); \
             datalake.format is `delta`. Point datalake.path at an empty location, or set datalake.format: parquet"
        )));
    }
    Ok(())
}

/// One line for a failed storage call: what, where, and delta-rs's reason.
pub(super) fn storage_error(location: &str, what: &str, e: &DeltaTableError) -> Error {
    Error::Storage(format!("Delta table {location}: {what} the table: {}", one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn show(o: Option<i64>) -> String {
    o.map_or("none".into(), |v| v.to_string())
}

/// A runtime for delta-rs calls. Multi-threaded: delta-kernel blocks on futures of its own
/// inside ours.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("delta")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the Delta table's runtime: {e}")))
}

/// Opens the existing table at `cfg.location` (one line when there is none).
pub(super) async fn load(cfg: &DatalakeConfig) -> Result<DeltaTable> {
    load_at(&cfg.location, &cfg.storage_options).await
}

/// The table at `location` with the lake's storage options, not read yet.
pub fn unloaded(
    location: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<DeltaTable, DeltaTableError> {
    let url = deltalake::ensure_table_uri(location)?;
    let options: HashMap<String, String> = options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    DeltaTableBuilder::from_url(url).and_then(|b| b.with_storage_options(options).build())
}

/// Opens the existing table at `location`.
pub(super) async fn load_at(
    location: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<DeltaTable> {
    let mut table = match unloaded(location, options) {
        Err(DeltaTableError::InvalidTableLocation(e)) => {
            return Err(Error::Setup(format!("{location}: not a table location: {e}")));
        }
        other => other.map_err(|e| storage_error(location, "cannot open", &e))?,
    };
    match timed(table.load()).await {
        Ok(()) => Ok(table),
        Err(DeltaTableError::NotATable(_)) => Err(Error::Setup(format!(
            "{location}: no Delta table there yet (`orderstream consume` creates it)"
        ))),
        Err(e) => Err(storage_error(location, "cannot read", &e)),
    }
}

/// The version of the table's newest log checkpoint (`_delta_log/_last_checkpoint`), if any.
pub async fn last_checkpoint(table: &DeltaTable) -> Option<i64> {
    use deltalake::logstore::object_store::ObjectStoreExt;
    let store = table.log_store().object_store(None);
    let path = deltalake::logstore::object_store::path::Path::from("_delta_log/_last_checkpoint");
    let bytes = store.get(&path).await.ok()?.bytes().await.ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("version")?.as_i64()
}
