//! Consumer-test helpers: write to a topic directly (rdkafka producer) and read the lake with
//! readers other than our writer (DuckDB and pyarrow through `ORDERSTREAM_PYTHON`).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use orderstream::sink::PartitionState;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;

use super::TestEnv;
use super::proc::{run, wait_until};

/// The Python with DuckDB and pyarrow: `ORDERSTREAM_PYTHON`, else the one `dev/python.sh` sets up.
pub fn python() -> String {
    if let Ok(p) = std::env::var("ORDERSTREAM_PYTHON") {
        return p;
    }
    // It may create the venv (pip downloads); dev/test.sh runs it once before the tests.
    let (code, out, err) = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/python.sh")),
        None,
        Duration::from_secs(240),
    );
    assert_eq!(code, 0, "dev/python.sh failed: {err}");
    out.trim().to_string()
}

/// Creates a topic with `partitions` partitions.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt
        .block_on(admin.create_topics(
            [&NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// A message to write.
#[derive(Clone, Debug, Default)]
pub struct Msg {
    /// Explicit partition, or by key hash.
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    /// A message with this value.
    pub fn value(v: impl AsRef<[u8]>) -> Msg {
        Msg { value: Some(v.as_ref().to_vec()), ..Msg::default() }
    }

    /// To this partition.
    pub fn to(mut self, partition: i32) -> Msg {
        self.partition = Some(partition);
        self
    }

    /// With this key.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Msg {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// With one more header.
    pub fn header(mut self, k: &str, v: impl AsRef<[u8]>) -> Msg {
        self.headers.push((k.to_string(), v.as_ref().to_vec()));
        self
    }
}

/// A seed-format order.
pub fn order_json(id: i64, amount: &str, created_at: &str) -> String {
    format!(
        r#"{{"order_id": {id}, "customer_name": "Customer {id}", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": {amount}, "order_status": "PLACED", "created_at": "{created_at}"}}"#
    )
}

/// Where a message landed, or why not; `None` until reported.
type Delivery = Option<Result<(i32, i64), String>>;

#[derive(Default)]
struct Deliveries(Mutex<Vec<Delivery>>);

impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, i: usize) {
        let v = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap()[i] = Some(v);
    }
}

/// A producer for tests; reusable for many sends.
pub struct Writer {
    producer: ThreadedProducer<Deliveries>,
}

impl Writer {
    /// Connects to `brokers`.
    pub fn new(brokers: &str) -> Writer {
        Self::with_batch(brokers, 10_000)
    }

    /// Connects to `brokers`, putting at most `batch` messages in one record batch.
    pub fn with_batch(brokers: &str, batch: usize) -> Writer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("batch.num.messages", batch.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Deliveries::default())
            .unwrap();
        Writer { producer }
    }

    /// Writes messages and returns each one's (partition, offset).
    pub fn send(&self, topic: &str, msgs: &[Msg]) -> Vec<(i32, i64)> {
        *self.producer.context().0.lock().unwrap() = vec![None; msgs.len()];
        for (i, m) in msgs.iter().enumerate() {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &m.headers {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let mut rec: BaseRecord<'_, Vec<u8>, Vec<u8>, usize> =
                BaseRecord::with_opaque_to(topic, i).headers(headers);
            if let Some(k) = &m.key {
                rec = rec.key(k);
            }
            if let Some(v) = &m.value {
                rec = rec.payload(v);
            }
            if let Some(p) = m.partition {
                rec = rec.partition(p);
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        self.producer.flush(Duration::from_secs(120)).unwrap();
        let got = std::mem::take(&mut *self.producer.context().0.lock().unwrap());
        got.into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(Ok(po)) => po,
                other => panic!("message {i} to {topic} not delivered: {other:?}"),
            })
            .collect()
    }
}

/// Writes messages and returns each one's (partition, offset).
pub fn produce(brokers: &str, topic: &str, msgs: &[Msg]) -> Vec<(i32, i64)> {
    Writer::new(brokers).send(topic, msgs)
}

/// One row of the lake as another reader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LakeRow {
    /// order_id
    pub order_id: i64,
    /// customer_name
    pub customer_name: Option<String>,
    /// restaurant_name
    pub restaurant_name: Option<String>,
    /// item
    pub item: Option<String>,
    /// amount as its exact decimal text
    pub amount: String,
    /// order_status
    pub order_status: Option<String>,
    /// created_at, `YYYY-MM-DDTHH:MM:SS.ffffffZ`
    pub created_at: String,
    /// op: `c`, `u`, `d` or `r`
    pub op: String,
    /// lsn: the commit LSN as a number (null in poll mode)
    pub lsn: Option<i64>,
    /// change_index (null in poll mode)
    pub change_index: Option<i32>,
    /// committed_at, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (null in poll mode)
    pub committed_at: Option<String>,
    /// The `date` partition column (from the folder name).
    pub date: String,
}

impl LakeRow {
    /// The row of an order captured by polling: an insert, no log position.
    #[allow(clippy::too_many_arguments)]
    pub fn polled(
        order_id: i64,
        customer_name: Option<String>,
        restaurant_name: Option<String>,
        item: Option<String>,
        amount: String,
        order_status: Option<String>,
        created_at: String,
        date: String,
    ) -> LakeRow {
        LakeRow {
            order_id,
            customer_name,
            restaurant_name,
            item,
            amount,
            order_status,
            created_at,
            op: "c".into(),
            lsn: None,
            change_index: None,
            committed_at: None,
            date,
        }
    }
}

/// What a reader returned: column types and rows ordered by (order_id, created_at, lsn,
/// change_index), nulls first.
#[derive(Debug, Deserialize)]
pub struct LakeRead {
    /// Column name → the reader's type name.
    pub schema: Vec<(String, String)>,
    /// The rows.
    pub rows: Vec<LakeRow>,
}

const DUCKDB: &str = r#"
import duckdb, glob, json, sys
lake = sys.argv[1]
out = {"schema": [], "rows": []}
if glob.glob(lake + "/**/*.parquet", recursive=True):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    # A query slower than 2 s (a loaded machine) prints a progress bar on stdout otherwise.
    con.execute("SET enable_progress_bar = false")
    src = f"read_parquet('{lake}/**/*.parquet', hive_partitioning=true)"
    out["schema"] = [[r[0], r[1]] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    q = f"""SELECT order_id, customer_name, restaurant_name, item, CAST(amount AS VARCHAR), order_status,
            strftime(created_at, '%Y-%m-%dT%H:%M:%S.%fZ'), op, lsn, change_index,
            strftime(committed_at, '%Y-%m-%dT%H:%M:%S.%fZ'), CAST(date AS VARCHAR)
            FROM {src} ORDER BY order_id, created_at, lsn NULLS FIRST, change_index NULLS FIRST"""
    cols = ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at",
            "op", "lsn", "change_index", "committed_at", "date"]
    out["rows"] = [dict(zip(cols, r)) for r in con.execute(q).fetchall()]
print(json.dumps(out))
"#;

const PYARROW: &str = r#"
import json, sys, datetime
import pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
out = {"schema": [[f.name, str(f.type)] for f in t.schema], "rows": []}
def utc(ts):
    return None if ts is None else ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
def nulls_first(v):
    return (v is not None, v or 0)
for r in t.to_pylist():
    r["created_at"] = utc(r["created_at"])
    r["committed_at"] = utc(r["committed_at"])
    r["amount"] = str(r["amount"])
    r["date"] = str(r["date"])
    out["rows"].append(r)
out["rows"].sort(key=lambda r: (r["order_id"], r["created_at"], nulls_first(r["lsn"]), nulls_first(r["change_index"])))
print(json.dumps(out))
"#;

const SPARK: &str = r#"
import json, os, sys, time
os.environ["TZ"] = "UTC"
time.tzset()
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").appName("orderstream-tests")
         .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.parquet(sys.argv[1])
out = {"schema": [[f.name, f.dataType.simpleString()] for f in df.schema.fields], "rows": []}
for r in df.orderBy("order_id", "created_at", "lsn", "change_index").collect():
    d = r.asDict()
    d["created_at"] = d["created_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if d["committed_at"] is not None:
        d["committed_at"] = d["committed_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    d["amount"] = str(d["amount"])
    d["date"] = str(d["date"])
    out["rows"].append(d)
spark.stop()
print(json.dumps(out))
"#;

/// Runs a reader script on `lake`, for at most `limit`.
fn run_python(script: &str, lake: &Path, limit: Duration) -> LakeRead {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).arg(lake);
    let (code, out, err) = run(cmd, None, limit);
    assert_eq!(code, 0, "python failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("python printed something else ({e}): {out}"))
}

/// The whole lake through DuckDB's `read_parquet('<lake>/**/*.parquet', hive_partitioning=true)`.
pub fn read_duckdb(lake: &Path) -> LakeRead {
    run_python(DUCKDB, lake, Duration::from_secs(120))
}

/// The whole lake through Spark's `spark.read.parquet(lake)` (PySpark, local mode).
pub fn read_spark(lake: &Path) -> LakeRead {
    // A JVM starts first: tens of seconds on a busy 2-core machine.
    run_python(SPARK, lake, Duration::from_secs(240))
}

/// The whole lake through `pyarrow.dataset(lake, partitioning="hive")`.
pub fn read_pyarrow(lake: &Path) -> LakeRead {
    run_python(PYARROW, lake, Duration::from_secs(120))
}

/// Every file under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts that only committed data files (`date=YYYY-MM-DD/part-<uuid>.parquet`), `_SUCCESS`
/// and `_orderstream_checkpoint` (which checkpoint writes the lake) are in the lake, and
/// nothing is left in its temp area.
pub fn assert_clean_lake(lake: &Path) {
    for f in files(lake) {
        if f == "_SUCCESS" || f == "_orderstream_checkpoint" {
            continue;
        }
        let (dir, name) = f.rsplit_once('/').unwrap_or(("", &f));
        assert!(
            dir.starts_with("date=")
                && dir.len() == 15
                && name.starts_with("part-")
                && name.ends_with(".parquet"),
            "unexpected file in the lake: {f}"
        );
    }
    let temp = lake.join("_temporary");
    if temp.exists() {
        assert_eq!(files(&temp), Vec::<String>::new(), "leftovers in {}", temp.display());
    }
}

/// The partition states of the checkpoint, by partition.
pub fn states(env: &TestEnv) -> Vec<PartitionState> {
    let dir = env.checkpoints().join("state");
    let mut out: Vec<PartitionState> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .map(|b| serde_json::from_slice(&b).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|s| s.partition);
    out
}

/// Sum of the committed next offsets (= messages handled when the topic started empty).
pub fn committed_total(env: &TestEnv) -> i64 {
    states(env).iter().map(|s| s.next_offset).sum()
}

/// Waits until the checkpoint holds every message written: `positions` are the (partition,
/// offset) of all of them (the broker's watermarks are not used: tansu's memory storage reports
/// the base offset of the last record batch there).
pub fn wait_committed(env: &TestEnv, positions: &[(i32, i64)], timeout: Duration) {
    let mut ends = std::collections::BTreeMap::<i32, i64>::new();
    for (p, o) in positions {
        let e = ends.entry(*p).or_default();
        *e = (*e).max(o + 1);
    }
    wait_until(timeout, &format!("the checkpoint of {} to reach {ends:?}", env.topic), || {
        let s = states(env);
        ends.iter().all(|(p, end)| s.iter().any(|s| s.partition == *p && s.next_offset >= *end))
    });
}

/// The current state of every order by docs/lake.md's DuckDB query, its source replaced by
/// `{src}`: each order's last version by `(lsn, change_index)`, nulls first; an order whose
/// last version is a delete is gone, and so is every order whose last version precedes the last
/// truncate (`t`).
pub fn current_state_sql() -> String {
    let page = include_str!("../../docs/lake.md");
    let start =
        page.find("-- DuckDB: the current state of every order").expect("the query is in docs/lake.md");
    let end = start + page[start..].find("```").expect("the query's block ends");
    let source = "read_parquet('datalake/food/ROLL001/output/orders/*/*.parquet',\n                               hive_partitioning = true, union_by_name = true)";
    assert!(page[start..end].contains(source), "docs/lake.md's query reads another source");
    page[start..end].replace(source, "{src}")
}

const DUCKDB_QUERY: &str = r#"
import duckdb, glob, json, sys
lake, sql = sys.argv[1], sys.argv[2]
rows = []
if glob.glob(lake + "/*/*.parquet"):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    src = f"read_parquet('{lake}/*/*.parquet', hive_partitioning = true, union_by_name = true)"
    rows = con.execute(sql.replace("{src}", src)).fetchall()
print(json.dumps(rows, default=str))
"#;

/// The rows of a DuckDB query on the lake, `{src}` in `sql` standing for its files (none: no
/// rows).
pub fn duckdb_query(lake: &Path, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(DUCKDB_QUERY).arg(lake).arg(sql);
    let (code, out, err) = run(cmd, None, Duration::from_secs(120));
    assert_eq!(code, 0, "python failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("python printed something else ({e}): {out}"))
}

/// The lake's current state by [`current_state_sql`] in DuckDB: per order, its six other
/// columns as `Some("…")`/`None` joined by `|` (created_at `YYYY-MM-DDTHH:MM:SS.ffffff`).
pub fn current_state_duckdb(lake: &Path) -> std::collections::BTreeMap<i64, String> {
    let sql = format!(
        "SELECT order_id, customer_name, restaurant_name, item, CAST(amount AS VARCHAR), order_status, \
         strftime(created_at, '%Y-%m-%dT%H:%M:%S.%f') FROM ({}\n) ORDER BY order_id",
        current_state_sql()
    );
    duckdb_query(lake, &sql)
        .into_iter()
        .map(|cols| {
            let text: Vec<String> =
                cols[1..].iter().map(|v| format!("{:?}", v.as_str().map(str::to_string))).collect();
            (cols[0].as_i64().unwrap(), text.join("|"))
        })
        .collect()
}
