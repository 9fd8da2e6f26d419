//! `cargo bench --bench current`: what keeping the current-state table up to date costs per
//! batch (src/sink/current.rs `CurrentTable::apply`, the MERGE by `order_id` done per bucket),
//! and whether that cost depends on the table's size.
//!
//! For each of two table sizes (`ORDERSTREAM_BENCH_ORDERS` orders, then 10,000), a local current
//! table is created under the system's temp dir (deleted at the end) with
//! `CurrentTable::open(location, {}, group, topic)` and `own(0)`, and filled by `apply` of
//! insert batches of 100,000 orders (ids 1..=N, one Kafka partition 0, offsets increasing, one
//! change per transaction with an increasing `lsn`; `created_at` 10 ms apart, 100 orders/s).
//! Then `ORDERSTREAM_BENCH_RUNS` batches are applied one after the other and timed, each what
//! one second of traffic at 100 orders/s brings in the change table: 100 changes, 50 new orders
//! (ids above the largest), 48 updates and 2 deletes of random orders among the last 50,000 ids
//! (the last ~8 minutes at that rate; an order deleted is not changed again). A run's time is the
//! wall time of the `apply` call (reading the touched buckets' files, merging, writing them, the
//! commit and reading the new version back; nothing is timed inside it). The buckets it
//! rewrote and the bytes it wrote are the `add` actions of its commit in `_delta_log` (and the
//! `remove`s, the files replaced). After the runs the live files are read back (Parquet footers)
//! and must hold every order not deleted.
//!
//! All in one process with a 2-thread tokio runtime and jemalloc, as the consumer. Prints every
//! run, then the medians per table size.
//!
//! A second use, for dev/bench_lake.py: with `ORDERSTREAM_BENCH_FILL_FROM=<change table path>`
//! and `ORDERSTREAM_BENCH_FILL_INTO=<new current table path>` it only fills a current table from
//! a change table with `CurrentTable::fill` (what the consumer does for a current table
//! configured on a change table that already holds rows), keeps it, and exits.
//!
//! Knobs: `ORDERSTREAM_BENCH_ORDERS` (1000000: the large table's orders; the small one always
//! has 10,000), `ORDERSTREAM_BENCH_RUNS` (20), `ORDERSTREAM_BENCH_FILL_FROM` and
//! `ORDERSTREAM_BENCH_FILL_INTO` (see above).

#[path = "../tests/common/bench.rs"]
#[allow(dead_code)]
mod bench;

use bench::{CUSTOMERS, ITEMS, RESTAURANTS, knob, median};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::DataType;
use deltalake::DeltaTableBuilder;
use orderstream::order::arrow_schema;
use orderstream::sink::DateBatch;
use orderstream::sink::current::{BUCKET_SIZE, CurrentTable};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// jemalloc, as the consumer process (src/main.rs).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Res<T> = Result<T, Box<dyn Error>>;

const GROUP: &str = "bench_current";
const TOPIC: &str = "orders";
const PARTITION: i32 = 0;
/// Orders per insert batch while filling the table.
const FILL_BATCH: i64 = 100_000;
/// The small table's orders.
const SMALL_ORDERS: i64 = 10_000;
/// One timed batch: new orders, updates and deletes (100 changes: one second at 100 orders/s).
const NEW: usize = 50;
const UPDATES: usize = 48;
const DELETES: usize = 2;
/// Updates and deletes pick among this many newest orders.
const RECENT: i64 = 50_000;
/// 2025-01-18T00:00:00Z, the first order's `created_at`, in µs.
const START_US: i64 = 1_737_158_400_000_000;
/// 100 orders/s.
const ORDER_EVERY_US: i64 = 10_000;

const LATER: [&str; 3] = ["PREPARING", "DELIVERED", "CANCELLED"];

/// One change of one order, as the consumer's batch holds it.
struct Change {
    id: i64,
    op: &'static str,
    status: &'static str,
    lsn: i64,
    committed_us: i64,
    offset: i64,
}

fn created_us(id: i64) -> i64 {
    START_US + (id - 1) * ORDER_EVERY_US
}

/// The changes as the consumer's batch: one `DateBatch` per UTC date of `created_at`.
fn date_batches(changes: &[Change]) -> Res<Vec<DateBatch>> {
    let mut by_date: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        let date = chrono::DateTime::from_timestamp_micros(created_us(c.id))
            .ok_or("created_at out of range")?
            .format("%Y-%m-%d")
            .to_string();
        by_date.entry(date).or_default().push(c);
    }
    let schema = arrow_schema();
    let (precision, scale) = match schema.field(4).data_type() {
        DataType::Decimal128(p, s) => (*p, *s),
        t => return Err(format!("amount is {t}, not a decimal").into()),
    };
    let tz = match schema.field(6).data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        t => return Err(format!("created_at is {t}, not a timestamp").into()),
    };
    let mut out = Vec::new();
    for (date, rows) in by_date {
        let text = |f: &dyn Fn(&Change) -> &'static str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|c| f(c))))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|c| c.id))),
            text(&|c| CUSTOMERS[(c.id % 8) as usize]),
            text(&|c| RESTAURANTS[(c.id % 5) as usize]),
            text(&|c| ITEMS[(c.id % 6) as usize]),
            Arc::new(
                Decimal128Array::from_iter_values(rows.iter().map(|c| 5_000 + (c.id as i128 * 137) % 95_000))
                    .with_precision_and_scale(precision, scale)?,
            ),
            text(&|c| c.status),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|c| created_us(c.id)))
                    .with_timezone_opt(tz.clone()),
            ),
            text(&|c| c.op),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|c| c.lsn))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| 0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|c| c.committed_us))
                    .with_timezone_opt(tz.clone()),
            ),
        ];
        let sources = rows.iter().map(|c| (PARTITION, c.offset)).collect();
        out.push(DateBatch { date, rows: RecordBatch::try_new(schema.clone(), columns)?, sources });
    }
    Ok(out)
}

/// splitmix64: reproducible picks without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// The stream's position: the next order id, log position and Kafka offset.
struct Stream {
    next_id: i64,
    lsn: i64,
    offset: i64,
    deleted: HashSet<i64>,
    rng: Rng,
}

impl Stream {
    fn change(&mut self, id: i64, op: &'static str, status: &'static str, committed_us: i64) -> Change {
        self.lsn += 0x100;
        self.offset += 1;
        Change { id, op, status, lsn: self.lsn, committed_us, offset: self.offset }
    }

    /// Inserts of the next `n` orders.
    fn inserts(&mut self, n: i64) -> Vec<Change> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            out.push(self.change(id, "c", "PLACED", created_us(id)));
        }
        out
    }

    /// A random order among the last [`RECENT`], not deleted.
    fn recent(&mut self) -> i64 {
        let last = self.next_id - 1;
        loop {
            let id = self.rng.between((last - RECENT + 1).max(1), last);
            if !self.deleted.contains(&id) {
                return id;
            }
        }
    }

    /// One second of traffic: new orders, updates and deletes of recent ones, interleaved.
    fn second(&mut self) -> Vec<Change> {
        let mut ops: Vec<&'static str> = Vec::new();
        ops.extend(std::iter::repeat_n("c", NEW));
        ops.extend(std::iter::repeat_n("u", UPDATES));
        ops.extend(std::iter::repeat_n("d", DELETES));
        // A fixed shuffle (Fisher-Yates) so that the kinds interleave.
        for i in (1..ops.len()).rev() {
            ops.swap(i, self.rng.between(0, i as i64) as usize);
        }
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let now = created_us(self.next_id);
            match op {
                "c" => out.extend(self.inserts(1)),
                "u" => {
                    let id = self.recent();
                    let status = LATER[self.rng.between(0, 2) as usize];
                    out.push(self.change(id, "u", status, now));
                }
                _ => {
                    let id = self.recent();
                    self.deleted.insert(id);
                    out.push(self.change(id, "d", "CANCELLED", now));
                }
            }
        }
        out
    }
}

/// What one commit did, from its `_delta_log` entry: (files added, files removed, bytes added).
fn commit_figures(table: &Path, version: i64) -> Res<(usize, usize, u64)> {
    let text = std::fs::read_to_string(table.join("_delta_log").join(format!("{version:020}.json")))?;
    let (mut adds, mut removes, mut bytes) = (0, 0, 0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(size) = v["add"]["size"].as_u64() {
            adds += 1;
            bytes += size;
        } else if v.get("remove").is_some() {
            removes += 1;
        }
    }
    Ok((adds, removes, bytes))
}

/// The live files of the table's newest version: (files, bytes, rows), rows from the footers.
async fn live(table: &Path) -> Res<(usize, u64, i64)> {
    let mut t =
        DeltaTableBuilder::from_url(deltalake::ensure_table_uri(table.to_str().ok_or("path")?)?)?.build()?;
    t.load().await?;
    let (mut files, mut bytes, mut rows) = (0, 0, 0);
    for f in t.snapshot()?.log_data().iter() {
        let path = table.join(f.object_store_path().as_ref());
        let reader = SerializedFileReader::new(std::fs::File::open(&path)?)?;
        rows += reader.metadata().file_metadata().num_rows();
        files += 1;
        bytes += f.size().max(0) as u64;
    }
    Ok((files, bytes, rows))
}

fn location(dir: &Path) -> Res<String> {
    Ok(format!("file://{}", dir.to_str().ok_or("the temp dir's path is not UTF-8")?))
}

/// The medians of one table size: (seconds per apply, buckets rewritten, bytes written).
struct Medians {
    seconds: f64,
    buckets: f64,
    bytes: f64,
    per_bucket: f64,
}

/// Fills a table of `orders` orders at `dir`, then times `runs` batches.
fn measure(rt: &tokio::runtime::Runtime, dir: &Path, orders: i64, runs: usize) -> Res<Medians> {
    std::fs::create_dir_all(dir)?;
    let at = location(dir)?;
    let mut table = rt.block_on(async {
        let mut t = CurrentTable::open(&at, HashMap::new(), GROUP, TOPIC, &[]).await?;
        t.own(PARTITION).await?;
        Ok::<_, orderstream::Error>(t)
    })?;
    let mut stream = Stream {
        next_id: 1,
        lsn: 0x1_6B37_4800,
        offset: -1,
        deleted: HashSet::new(),
        rng: Rng(orders as u64),
    };
    let start = Instant::now();
    let mut left = orders;
    while left > 0 {
        let n = left.min(FILL_BATCH);
        left -= n;
        let changes = stream.inserts(n);
        let batches = date_batches(&changes)?;
        rt.block_on(table.apply(&batches, &[(PARTITION, stream.offset)]))?;
    }
    let (files, bytes, rows) = rt.block_on(live(dir))?;
    println!(
        "{orders} orders: filled in {:.1} s (version {}): {files} files, {:.1} MB, {rows} rows",
        start.elapsed().as_secs_f64(),
        table.version(),
        bytes as f64 / 1e6
    );
    if rows != orders {
        return Err(format!("the filled table holds {rows} rows, not {orders}").into());
    }
    let (mut times, mut buckets, mut written, mut per_bucket) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        let changes = stream.second();
        let touched: BTreeSet<i64> = changes.iter().map(|c| c.id.div_euclid(BUCKET_SIZE)).collect();
        let batches = date_batches(&changes)?;
        let offsets = [(PARTITION, stream.offset)];
        let start = Instant::now();
        let version = rt.block_on(table.apply(&batches, &offsets))?;
        let seconds = start.elapsed().as_secs_f64();
        let version = version.ok_or("apply committed nothing")?;
        let (adds, removes, bytes) = commit_figures(dir, version)?;
        println!(
            "{orders} orders: run {i}: apply {seconds:.4} s, {adds} buckets rewritten ({} touched, {removes} files \
             replaced), {bytes} bytes written, version {version}",
            touched.len()
        );
        times.push(seconds);
        buckets.push(adds as f64);
        written.push(bytes as f64);
        per_bucket.push(seconds / adds.max(1) as f64);
    }
    let want = stream.next_id - 1 - stream.deleted.len() as i64;
    let (files, bytes, rows) = rt.block_on(live(dir))?;
    println!("{orders} orders: after the runs: {files} files, {:.1} MB, {rows} rows", bytes as f64 / 1e6);
    if rows != want {
        return Err(format!("the table holds {rows} rows after the runs, not {want}").into());
    }
    let m = Medians {
        seconds: median(times),
        buckets: median(buckets),
        bytes: median(written),
        per_bucket: median(per_bucket),
    };
    println!(
        "{orders} orders: median of {runs}: apply {:.4} s, {} buckets rewritten, {:.0} bytes written, {:.4} s per \
         bucket",
        m.seconds, m.buckets, m.bytes, m.per_bucket
    );
    Ok(m)
}

/// dev/bench_lake.py's use: a current table at `into` filled from the change table at `from`.
fn fill(rt: &tokio::runtime::Runtime, from: &str, into: &str) -> Res<()> {
    let start = Instant::now();
    rt.block_on(async {
        let mut change = DeltaTableBuilder::from_url(deltalake::ensure_table_uri(from)?)?.build()?;
        change.load().await?;
        let mut current = CurrentTable::open(into, HashMap::new(), GROUP, TOPIC, &[]).await?;
        if !current.is_new() {
            return Err(format!("{into} already holds a current table").into());
        }
        current.fill(&change, from, &[]).await?;
        Ok::<_, Box<dyn Error>>(())
    })?;
    println!("filled the current table {into} from {from} in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn run(rt: &tokio::runtime::Runtime, root: &Path) -> Res<()> {
    let orders: i64 = knob("ORDERSTREAM_BENCH_ORDERS", 1_000_000).max(1);
    let runs: usize = knob("ORDERSTREAM_BENCH_RUNS", 20).max(1);
    let large = measure(rt, &root.join("large"), orders, runs)?;
    let small = measure(rt, &root.join("small"), SMALL_ORDERS, runs)?;
    let changes = NEW + UPDATES + DELETES;
    println!(
        "medians of {runs} batches of {changes} changes ({NEW} new, {UPDATES} updates, {DELETES} deletes):"
    );
    for (n, m) in [(orders, &large), (SMALL_ORDERS, &small)] {
        println!(
            "  {n} orders: apply {:.4} s, {} buckets rewritten, {:.0} bytes written, {:.4} s per bucket",
            m.seconds, m.buckets, m.bytes, m.per_bucket
        );
    }
    println!("  apply time, {orders} / {SMALL_ORDERS} orders: {:.2}x", large.seconds / small.seconds);
    Ok(())
}

fn main() -> Res<()> {
    // `cargo bench` passes --bench; `cargo test --benches` would run this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    // As the consumer's (src/sink/delta.rs): delta-kernel blocks on futures inside ours.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if let (Ok(from), Ok(into)) =
        (std::env::var("ORDERSTREAM_BENCH_FILL_FROM"), std::env::var("ORDERSTREAM_BENCH_FILL_INTO"))
    {
        return fill(&rt, &from, &into);
    }
    let root = std::env::temp_dir().join(format!("orderstream_bench_current_{}", std::process::id()));
    let result = run(&rt, &root);
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("cannot delete {}: {e}", root.display());
    }
    result
}
