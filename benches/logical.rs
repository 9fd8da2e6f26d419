//! Log-based capture (`postgres.capture: logical`) benchmarks, each throughput next to the
//! limit measured in the same run.
//!
//! * `bulk` (per run: a fresh memory-storage tansu, topic, slot and state; one table of
//!   `ORDERSTREAM_BENCH_ROWS` orders shared by the runs):
//!   1. snapshot: `orderstream produce` from process start until its state file says the
//!      snapshot is done (every row acknowledged by the broker); rows/s, peak RSS.
//!   2. one `UPDATE` of every row in a single transaction, with the producer stopped and a
//!      second, fresh slot made by `pg_recvlogical --create-slot` beforehand. Then both read
//!      the committed transaction from their slot, one after the other (the first alternates
//!      by run, as the second finds the WAL in the page cache): `pg_recvlogical --start
//!      --endpos=<LSN after the UPDATE> -f /dev/null` (the server's limit: decoding and
//!      sending, nothing done with the data), and `orderstream produce` from process start
//!      until its state file holds the transaction's last change; changes/s, peak RSS.
//!   3. the limits of the Kafka side, with the client settings orderstream uses:
//!      a raw rdkafka consumer that fetches the whole topic (snapshot and update messages) and
//!      discards it (no lake), then `orderstream consume` of the same topic into a lake from
//!      process start (group join included) until its checkpoint holds every message; and a
//!      raw rdkafka producer that sends the update messages read back from the topic,
//!      byte for byte with their headers, to a fresh topic until all are acknowledged.
//! * `live`: `orderstream run` (producer and consumer in one process), orders inserted one per
//!   transaction at `ORDERSTREAM_BENCH_RATE`/s (2,000) from `ORDERSTREAM_BENCH_CLIENTS`
//!   connections (4) for `ORDERSTREAM_BENCH_SECONDS` (60), for each `batch_interval` of
//!   `ORDERSTREAM_BENCH_INTERVALS` (`1,0.2`). Per order:
//!   * commit → in the topic: from the inserting client's `COMMIT` returning to a consumer
//!     tailing the topic (`fetch.wait.max.ms` 10) receiving the message. A message can be
//!     fetched only once the broker has stored it, so this is an upper bound of commit →
//!     broker acknowledgement (by at most a fetch wait). The broker's message timestamp cannot
//!     measure the acknowledgement: it is the producer's CreateTime, set when the message is
//!     queued. It is used for the breakdown instead: `orderstream.commit_ts` (the server's
//!     commit time) → CreateTime is the time the change took to reach the producer's queue.
//!   * commit → readable in the lake: a watcher lists the lake every 10 ms and reads each new
//!     file's ids (as in `benches/e2e.rs`).
//! * `wal`: the WAL an idle captured table makes the slot hold while another table writes
//!   about 200 MB (40 transactions of 5 MB, 0.5 s apart): the most the slot's confirmed position
//!   trailed the server's, the most it retained (current position minus `restart_lsn`), and what
//!   it retains once PostgreSQL has logged its next running-transactions record (every 15 s).
//!
//! `cargo bench --bench logical`. Needs the local stack's PostgreSQL (`make up`) and its
//! `pg_recvlogical` (`/usr/lib/postgresql/<server major>/bin`). Knobs: `ORDERSTREAM_BENCH_SCENARIOS`
//! (`bulk,live`; `wal` on request), `ORDERSTREAM_BENCH_ROWS` (1000000), `ORDERSTREAM_BENCH_RUNS`
//! (3, for every scenario), `ORDERSTREAM_BENCH_RATE`, `ORDERSTREAM_BENCH_SECONDS`, `ORDERSTREAM_BENCH_INTERVALS`,
//! `ORDERSTREAM_BENCH_BROKER` (another broker, e.g. the stack's durable one at 127.0.0.1:9092,
//! instead of a private memory-storage tansu per run), `ORDERSTREAM_BENCH_LAKE` (`parquet`;
//! `delta` for a local Delta table: readable once its commit exists; `delta-s3` for a table on
//! the stack's S3 server, where commit → lake is not measured). With a Delta lake the median
//! and p99 of the consumer's commits are printed too (from its debug log), with the table's data
//! files at the end and the consumer's compactions. `ORDERSTREAM__*` variables are passed to
//! `run` (`ORDERSTREAM__DATALAKE__COMPACT_MIN_FILES=0`: compaction off). A smoke run:
//! `ORDERSTREAM_BENCH_ROWS=20000 ORDERSTREAM_BENCH_RUNS=1 ORDERSTREAM_BENCH_SECONDS=5 cargo bench --bench logical`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{LakeWatcher, committed_rows, knob, median, percentile};

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::lake::committed_total;
use common::proc::{Proc, wait_for};
use common::{Broker, TestEnv, pg, pg_port};
use orderstream::wire::{COMMIT_TS_HEADER, Lsn, OP_HEADER, parse_commit_ts};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

const MB: f64 = 1024.0 * 1024.0;

/// A test world capturing from the log, on `brokers`, optionally on an existing table.
fn logical_env(tag: &str, brokers: &str, table: Option<&str>) -> TestEnv {
    let mut env = TestEnv::with_brokers(tag, brokers);
    env.capture = "logical";
    if let Some(t) = table {
        env.table = t.to_string();
        env.owns_table = false;
    }
    env.write_config("");
    env
}

/// The env's configuration as orderstream reads it (for its Kafka client settings).
fn config(env: &TestEnv) -> orderstream::Config {
    orderstream::Config::load(&env.config_path())
        .unwrap_or_else(|e| panic!("{}: {e}", env.config_path().display()))
}

/// The producer's saved position `(last change, snapshot done)` from its state file.
fn saved(env: &TestEnv) -> (Option<(Lsn, i64)>, bool) {
    let text = std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap_or_default();
    let last = text
        .split_whitespace()
        .find_map(|f| f.strip_prefix("last="))
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(lsn, i)| Some((lsn.parse().ok()?, i.parse().ok()?)));
    (last, text.lines().any(|l| l.trim() == "snapshot=done"))
}

/// Waits (polling every 5 ms) until `done`, failing if the process exits first.
fn wait_proc(p: &mut Proc, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(p.running(), "{what}: the process exited early; log:\n{}", p.log_text());
        assert!(Instant::now() < deadline, "{what}: not done after {limit:?}; log {}", p.log.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Seconds from `since` to the first line of `p`'s log that contains `pattern` (from the
/// line's own timestamp: the breakdown of a run, from orderstream's logs).
fn log_secs(p: &Proc, since: SystemTime, pattern: &str) -> Option<f64> {
    let line = p.log_text().lines().find(|l| l.contains(pattern))?.to_string();
    let ts = chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
    let since = chrono::DateTime::<chrono::Utc>::from(since);
    Some((ts.to_utc() - since).as_seconds_f64())
}

/// CPU seconds (user + system, all threads) a running process has used so far.
fn cpu_secs(p: &Proc) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no memory effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `pg_recvlogical` of the server's major version.
fn pg_recvlogical() -> String {
    let num: String = pg().query_one("SHOW server_version_num", &[]).unwrap().get(0);
    let major = num.parse::<u32>().map(|n| n / 10000).unwrap_or(15);
    let path = format!("/usr/lib/postgresql/{major}/bin/pg_recvlogical");
    if Path::new(&path).exists() { path } else { "pg_recvlogical".into() }
}

/// `pg_recvlogical -d <the stack's database> --slot <slot> <args>`; the password through the
/// environment, never on the command line.
fn recvlogical(slot: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(pg_recvlogical());
    cmd.arg("-d")
        .arg(format!("host=127.0.0.1 port={} dbname=food_delivery_db user=student", pg_port()))
        .arg(format!("--slot={slot}"))
        .args(args)
        .env("PGPASSWORD", "student123");
    cmd
}

/// The slot of `pg_recvlogical`, dropped when this is, even after a failed run: an abandoned
/// slot would keep the stack's WAL forever.
struct RecvSlot(String);

impl Drop for RecvSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&common::pg_url(), postgres::NoTls) {
            let _ = c.execute("SELECT pg_drop_replication_slot($1)", &[&self.0]);
        }
    }
}

/// Runs a command to completion (killed after as long as orderstream gets for the same work),
/// panicking with its stderr unless it exits 0; returns the elapsed seconds.
fn run_timed(cmd: Command) -> f64 {
    let what = format!("{cmd:?}");
    let t0 = Instant::now();
    let (code, _, err) = common::proc::run(cmd, None, Duration::from_secs(1800));
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{what} failed: {err}");
    secs
}

/// The partitions of `topic`.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    md.topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// A consumer of `topic` from its beginning, with the settings of `orderstream consume`
/// (`src/kafka.rs`) but no statistics, assigned rather than in a group.
fn raw_consumer(cfg: &orderstream::Config, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = orderstream::kafka::Client::Consumer
        .config(&cfg.kafka)
        .set("group.id", common::unique("bench_raw"))
        .remove("statistics.interval.ms")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// One message as the topic holds it.
struct Raw {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// Reads `n` messages of `topic`; keeps those `keep` selects. Returns them and the seconds
/// taken from the consumer's creation to the n-th message.
fn read_raw(
    cfg: &orderstream::Config,
    topic: &str,
    n: u64,
    keep: impl Fn(&BorrowedMessage<'_>) -> bool,
) -> (Vec<Raw>, f64) {
    let t0 = Instant::now();
    let consumer = raw_consumer(cfg, topic);
    let (mut got, mut kept) = (0u64, Vec::new());
    while got < n {
        assert!(t0.elapsed() < Duration::from_secs(600), "reading {topic}: {got} of {n} after 600 s");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        got += 1;
        if keep(&m) {
            kept.push(Raw {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m.headers().map(|h| h.detach()),
            });
        }
    }
    (kept, t0.elapsed().as_secs_f64())
}

/// Counts acknowledgements and failures of the raw producer.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `msgs` with orderstream's producer settings (`src/kafka.rs`) to a fresh topic of
/// `partition_count` partitions; the seconds from the first send to the last acknowledgement.
fn produce_raw(cfg: &orderstream::Config, brokers: &str, msgs: Vec<Raw>, partition_count: i32) -> f64 {
    let topic = common::unique("bench_raw");
    common::lake::create_topic(brokers, &topic, partition_count);
    let producer: ThreadedProducer<Acks> =
        orderstream::kafka::Client::Producer.config(&cfg.kafka).create_with_context(Acks::default()).unwrap();
    let n = msgs.len() as u64;
    // Connected before the clock starts, as orderstream's producer is before its first batch.
    producer.client().fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    for m in msgs {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic);
        if let Some(k) = &m.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &m.value {
            record = record.payload(v.as_slice());
        }
        if let Some(h) = m.headers {
            record = record.headers(h);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(600)).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let acks = producer.context();
    assert_eq!(acks.failed.load(Ordering::Relaxed), 0, "raw producer: failed deliveries");
    assert_eq!(acks.ok.load(Ordering::Relaxed), n, "raw producer: acknowledgements");
    secs
}

/// The values one `bulk` run measured.
#[derive(Default)]
struct Bulk {
    snapshot: f64,
    snapshot_rss: f64,
    update: f64,
    update_rss: f64,
    recvlogical: f64,
    raw_produce: f64,
    raw_consume: f64,
    consume: f64,
    consume_rss: f64,
}

fn bulk_run(run: usize, table: &str, rows: i64, given: Option<&str>) -> Bulk {
    let broker = given.is_none().then(Broker::start_memory);
    let brokers = given
        .map(str::to_string)
        .unwrap_or_else(|| broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default());
    let env = logical_env("lg_bulk_run", &brokers, Some(table));
    env.init();
    let cfg = config(&env);
    let mut out = Bulk::default();

    // 1. The snapshot.
    let (t0, wall) = (Instant::now(), SystemTime::now());
    let mut producer = env.spawn(&["produce"]);
    wait_proc(&mut producer, Duration::from_secs(1800), "snapshot", || saved(&env).1);
    let secs = t0.elapsed().as_secs_f64();
    out.snapshot = rows as f64 / secs;
    out.snapshot_rss = producer.peak_rss() as f64 / MB;
    let cpu = cpu_secs(&producer);
    assert_eq!(producer.terminate(Duration::from_secs(60)), 0, "{}", producer.log_text());
    let slot_at = log_secs(&producer, wall, "created at").unwrap_or(f64::NAN);
    eprintln!(
        "run {run}: snapshot of {rows} rows in {secs:.2} s, of which {slot_at:.2} s to the slot's creation; producer CPU \
         {cpu:.2} s (log {})",
        producer.log.display()
    );

    // 2. One UPDATE of every row, read by pg_recvlogical and by orderstream from their slots.
    let recv_slot = RecvSlot(common::unique("bench_recv"));
    let recv_slot = recv_slot.0.as_str();
    run_timed(recvlogical(recv_slot, &["--create-slot", "--plugin=pgoutput"]));
    let mut client = pg();
    let before: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let before: Lsn = before.parse().unwrap();
    let t0 = Instant::now();
    let updated = client.execute(&format!("UPDATE {} SET amount = amount + 1", env.t()), &[]).unwrap();
    let update_secs = t0.elapsed().as_secs_f64();
    assert_eq!(updated, rows as u64);
    let endpos: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let wal_mb = (endpos.parse::<Lsn>().unwrap().0 - before.0) as f64 / 1e6;
    eprintln!(
        "run {run}: UPDATE of {rows} rows took {update_secs:.2} s, {wal_mb:.0} MB of WAL, end {endpos}"
    );

    let publication = env.slot();
    let recv = || {
        let pub_opt = format!("publication_names={publication}");
        let endpos_opt = format!("--endpos={endpos}");
        let args = [
            "--start",
            "--no-loop",
            &endpos_opt,
            "--plugin=pgoutput",
            "-o",
            "proto_version=1",
            "-o",
            &pub_opt,
            "-f",
            "/dev/null",
        ];
        rows as f64 / run_timed(recvlogical(recv_slot, &args))
    };
    let ours = |out: &mut Bulk| {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut producer = env.spawn(&["produce"]);
        wait_proc(&mut producer, Duration::from_secs(1800), "the update", || {
            saved(&env).0.is_some_and(|(lsn, i)| lsn > before && i == rows - 1)
        });
        let secs = t0.elapsed().as_secs_f64();
        out.update = rows as f64 / secs;
        out.update_rss = producer.peak_rss() as f64 / MB;
        let cpu = cpu_secs(&producer);
        assert_eq!(producer.terminate(Duration::from_secs(60)), 0, "{}", producer.log_text());
        let streaming = log_secs(&producer, wall, "streaming ").unwrap_or(f64::NAN);
        let first = log_secs(&producer, wall, "batch published").unwrap_or(f64::NAN);
        eprintln!(
            "run {run}: update read by orderstream in {secs:.2} s: {streaming:.2} s to the stream's start (recovery \
             included), {first:.2} s to the first batch acknowledged; producer CPU {cpu:.2} s (log {})",
            producer.log.display()
        );
    };
    let first = if run % 2 == 1 {
        out.recvlogical = recv();
        ours(&mut out);
        "pg_recvlogical"
    } else {
        ours(&mut out);
        out.recvlogical = recv();
        "orderstream"
    };
    eprintln!(
        "run {run}: update: orderstream {:.0} changes/s, pg_recvlogical {:.0} changes/s ({first} read first)",
        out.update, out.recvlogical
    );

    // 3. The Kafka side: raw consumer, `orderstream consume`, raw producer.
    let total = 2 * rows as u64;
    let (_, secs) = read_raw(&cfg, &env.topic, total, |_| false);
    out.raw_consume = total as f64 / secs;
    let mut sink = TestEnv::with_brokers("lg_consume", &brokers);
    sink.topic = env.topic.clone();
    sink.write_config("");
    sink.set("ORDERSTREAM__KAFKA__GROUP_ID", &sink.name.clone());
    sink.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "5");
    let t0 = Instant::now();
    let mut consumer = sink.spawn(&["consume"]);
    wait_proc(&mut consumer, Duration::from_secs(1800), "consume", || committed_total(&sink) >= total as i64);
    out.consume = total as f64 / t0.elapsed().as_secs_f64();
    out.consume_rss = consumer.peak_rss() as f64 / MB;
    assert_eq!(consumer.terminate(Duration::from_secs(60)), 0, "{}", consumer.log_text());
    let _ = std::fs::remove_dir_all(sink.lake());

    let is_update = |m: &BorrowedMessage<'_>| {
        m.headers().is_some_and(|h| h.iter().any(|h| h.key == OP_HEADER && h.value == Some(b"u".as_slice())))
    };
    let (updates, _) = read_raw(&cfg, &env.topic, total, is_update);
    assert_eq!(updates.len() as i64, rows, "update messages in {}", env.topic);
    out.raw_produce = rows as f64 / produce_raw(&cfg, &brokers, updates, cfg.kafka.partitions);
    eprintln!(
        "run {run}: raw consumer {:.0} msgs/s, consume {:.0} msgs/s, raw producer {:.0} msgs/s",
        out.raw_consume, out.consume, out.raw_produce
    );
    // The next run's snapshot should not read this run's dead rows.
    client.batch_execute(&format!("VACUUM {}", env.t())).unwrap();
    out
}

/// `median of N: <median> (<each run>)`.
fn summary(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let each: Vec<String> = values.iter().map(|v| fmt(*v)).collect();
    format!("median of {} {} (runs: {})", values.len(), fmt(median(values.to_vec())), each.join(", "))
}

fn bulk(rows: i64, runs: usize, given: Option<&str>) {
    let setup_broker = given.is_none().then(Broker::start_memory);
    let brokers = given
        .map(str::to_string)
        .unwrap_or_else(|| setup_broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default());
    let table_env = logical_env("lg_bulk", &brokers, None);
    table_env.init();
    let t0 = Instant::now();
    // `init` keeps the ten seed orders in the table: exactly `rows` with them.
    table_env.insert(rows - 10);
    let count: i64 =
        table_env.pg().query_one(&format!("SELECT count(*) FROM {}", table_env.t()), &[]).unwrap().get(0);
    assert_eq!(count, rows, "rows in {}", table_env.table);
    eprintln!(
        "bench logical: {rows} orders in {} ({:.1} s to insert)",
        table_env.table,
        t0.elapsed().as_secs_f64()
    );
    drop(setup_broker);

    let results: Vec<Bulk> = (1..=runs).map(|run| bulk_run(run, &table_env.table, rows, given)).collect();
    let col = |f: fn(&Bulk) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let (snapshot, update, recv) = (col(|b| b.snapshot), col(|b| b.update), col(|b| b.recvlogical));
    let (raw_p, raw_c, consume) = (col(|b| b.raw_produce), col(|b| b.raw_consume), col(|b| b.consume));
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<f64>>();
    let rate = |v: f64| format!("{v:.0}/s");
    let x = |v: f64| format!("{v:.2}×");
    let mb = |v: f64| format!("{v:.0} MB");
    let mut broker = given.map(|b| format!("broker {b}")).unwrap_or_else(|| "memory-storage tansu".into());
    if std::env::var("ORDERSTREAM_BENCH_LAKE").is_ok_and(|l| l == "delta") {
        broker.push_str(", lake: a local Delta table");
    }
    println!("logical bulk ({rows} rows, {broker}, {runs} runs):");
    println!("  limit raw producer (update messages, orderstream's settings): {}", summary(&raw_p, rate));
    println!("  limit pg_recvlogical (the update, fresh slot, to /dev/null): {}", summary(&recv, rate));
    println!(
        "  limit raw consumer (snapshot + update messages, fetched and discarded): {}",
        summary(&raw_c, rate)
    );
    println!(
        "  snapshot → topic: {}; ratio to the raw producer {}; peak RSS {}",
        summary(&snapshot, rate),
        summary(&ratio(&snapshot, &raw_p), x),
        summary(&col(|b| b.snapshot_rss), mb)
    );
    println!(
        "  update (1 transaction) → topic, from process start: {}; ratio to pg_recvlogical {}; to the raw producer {}; peak RSS {}",
        summary(&update, rate),
        summary(&ratio(&update, &recv), x),
        summary(&ratio(&update, &raw_p), x),
        summary(&col(|b| b.update_rss), mb)
    );
    println!(
        "  topic → lake (`consume`, snapshot + update messages, from process start): {}; ratio to the raw consumer {}; peak RSS {}",
        summary(&consume, rate),
        summary(&ratio(&consume, &raw_c), x),
        summary(&col(|b| b.consume_rss), mb)
    );
}

/// When each order's message reached a consumer tailing the topic, and its commit_ts header
/// and CreateTime (both as Unix milliseconds).
type Tailed = HashMap<i64, (Instant, Option<f64>, Option<f64>)>;

fn tail(brokers: &str, topic: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tailed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", common::unique("bench_tail"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        let mut seen = Tailed::new();
        while !stop.load(Ordering::SeqCst) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) else { continue };
            let now = Instant::now();
            let Some(id) = m.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.parse().ok())
            else {
                continue;
            };
            let commit = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == COMMIT_TS_HEADER).and_then(|h| h.value))
                .and_then(|v| parse_commit_ts(&String::from_utf8_lossy(v)).ok())
                .map(|t| t.timestamp_micros() as f64 / 1000.0);
            let created = m.timestamp().to_millis().map(|ms| ms as f64);
            seen.entry(id).or_insert((now, commit, created));
        }
        seen
    })
}

/// Percentiles of one live run, in seconds.
struct Live {
    topic: [f64; 3],
    /// NaN for a table on S3 (no watcher lists it).
    lake: [f64; 3],
    /// Delta lake: the consumer's commit of a batch (its own debug line), none for Parquet.
    commit: Option<[f64; 3]>,
    queued: [f64; 3],
    achieved: f64,
    files: usize,
    /// Delta lake: the data files of the table's last version, and the compactions that made it.
    table_files: Option<usize>,
    compactions: usize,
    rss: f64,
}

fn pcts(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    [percentile(&v, 0.5), percentile(&v, 0.99), v[v.len() - 1]]
}

/// Inserts `rate` orders a second for `seconds`, one transaction each, from `clients`
/// connections (one alone cannot commit 2,000 times a second on a busy machine: each commit
/// waits for its WAL flush). Returns when each order's `COMMIT` returned, and the rate achieved.
fn insert_paced(env: &TestEnv, rate: u64, seconds: u64, clients: u64) -> (HashMap<i64, Instant>, f64) {
    let sql = format!(
        "INSERT INTO {} (customer_name, restaurant_name, item, amount, order_status) \
         VALUES ('Live Customer', 'Burger Junction', 'Veg Burger', 220.00, 'PLACED') RETURNING order_id::int8",
        env.t()
    );
    let n = rate * seconds;
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let sql = sql.clone();
            std::thread::spawn(move || {
                let mut client = pg();
                let stmt = client.prepare(&sql).unwrap();
                let mut committed = Vec::new();
                // Client k inserts orders k, k + clients, …: together one every 1/rate s.
                for i in (k..n).step_by(clients as usize) {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let id: i64 = client.query_one(&stmt, &[]).unwrap().get(0);
                    committed.push((id, Instant::now()));
                }
                committed
            })
        })
        .collect();
    let committed: HashMap<i64, Instant> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    (committed, n as f64 / start.elapsed().as_secs_f64())
}

fn live_run(interval: &str, rate: u64, seconds: u64, clients: u64, given: Option<&str>) -> Live {
    let broker = given.is_none().then(Broker::start_memory);
    let brokers = given
        .map(str::to_string)
        .unwrap_or_else(|| broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default());
    let mut env = logical_env("lg_live", &brokers, None);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", interval);
    // E.g. ORDERSTREAM__DATALAKE__COMPACT_MIN_FILES=0: the same run with compaction off.
    for (k, v) in std::env::vars() {
        if k.starts_with("ORDERSTREAM__") {
            env.set(&k, &v);
        }
    }
    let kind = std::env::var("ORDERSTREAM_BENCH_LAKE").unwrap_or_default();
    let (delta, s3) = (kind.starts_with("delta"), kind == "delta-s3");
    if s3 {
        env.use_delta(&common::delta::stack_s3("lg-live"));
    } else if delta {
        env.use_delta(&common::delta::Store::Local);
    }
    if delta {
        // Each commit's duration is on a debug line of the consumer's.
        env.set("RUST_LOG", "info,orderstream=debug,deltalake=warn,deltalake_core=warn,delta_kernel=warn");
    }
    env.init();
    let mut pipeline = env.spawn(&["run"]);
    wait_proc(&mut pipeline, Duration::from_secs(60), "the seed orders in the lake", || {
        if delta {
            std::thread::sleep(Duration::from_millis(100));
            env.delta_positions().values().sum::<i64>() >= 10
        } else {
            committed_rows(&env.checkpoints()) >= 10
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tailer = tail(&brokers, &env.topic, stop.clone());
    // No watcher lists a table on S3: its orders are awaited by the table's positions.
    let mut watcher = match (delta, s3) {
        (_, true) => None,
        (true, false) => Some(LakeWatcher::start_delta(env.lake())),
        (false, _) => Some(LakeWatcher::start(env.lake())),
    };

    let (committed, achieved) = insert_paced(&env, rate, seconds, clients);
    wait_for(Duration::from_secs(120), "every live order in the lake", || match &watcher {
        Some(w) => {
            let seen = w.seen.lock().unwrap();
            committed.keys().all(|id| seen.contains_key(id)).then_some(())
        }
        None => {
            std::thread::sleep(Duration::from_millis(500));
            (env.delta_positions().values().sum::<i64>() >= 10 + committed.len() as i64).then_some(())
        }
    });
    let files = match watcher.as_mut() {
        Some(w) => w.stop(),
        None => env.read_delta("replay", false).files.unwrap_or(0),
    };
    // What a reader lists at the end: the table's files, after the consumer's compactions.
    let table_files = delta.then(|| env.read_delta("replay", false).files.unwrap_or(0));
    stop.store(true, Ordering::SeqCst);
    let tailed = tailer.join().unwrap();
    let rss = pipeline.peak_rss() as f64 / MB;
    assert_eq!(pipeline.terminate(Duration::from_secs(60)), 0, "{}", pipeline.log_text());
    let commits: Vec<f64> = pipeline
        .log_text()
        .lines()
        .filter(|l| l.contains(" committed as version "))
        .filter_map(|l| l.trim_end().strip_suffix(" s")?.rsplit(' ').next()?.parse().ok())
        .collect();

    let since = |t: &Instant, c: &Instant| t.saturating_duration_since(*c).as_secs_f64();
    let lake = match &watcher {
        Some(w) => {
            let seen = w.seen.lock().unwrap();
            pcts(committed.iter().map(|(id, c)| since(&seen[id], c)).collect())
        }
        None => [f64::NAN; 3],
    };
    let topic = committed
        .iter()
        .map(|(id, c)| since(&tailed.get(id).unwrap_or_else(|| panic!("order {id} not in the topic")).0, c))
        .collect();
    let queued = committed
        .keys()
        .filter_map(|id| match tailed.get(id) {
            Some((_, Some(commit), Some(created))) => Some((created - commit) / 1000.0),
            _ => None,
        })
        .collect();
    let commit = (!commits.is_empty()).then(|| pcts(commits));
    let compactions = pipeline.log_text().lines().filter(|l| l.contains("compacted date=")).count();
    Live {
        topic: pcts(topic),
        lake,
        commit,
        queued: pcts(queued),
        achieved,
        files,
        table_files,
        compactions,
        rss,
    }
}

fn live(interval: &str, rate: u64, seconds: u64, clients: u64, runs: usize, given: Option<&str>) {
    let broker = given.map(|b| format!("broker {b}")).unwrap_or_else(|| "memory-storage tansu".into());
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = live_run(interval, rate, seconds, clients, given);
        eprintln!(
            "run {run}: {:.0} orders/s; commit → topic p50 {:.3} p99 {:.3} max {:.3} s; commit → lake p50 {:.3} p99 {:.3} \
             max {:.3} s; commit_ts → CreateTime p50 {:.3} p99 {:.3} s; {} files; peak RSS {:.0} MB",
            r.achieved,
            r.topic[0],
            r.topic[1],
            r.topic[2],
            r.lake[0],
            r.lake[1],
            r.lake[2],
            r.queued[0],
            r.queued[1],
            r.files,
            r.rss
        );
        if let Some(c) = r.commit {
            eprintln!("run {run}: Delta commit p50 {:.4} p99 {:.4} max {:.4} s", c[0], c[1], c[2]);
        }
        if let Some(t) = r.table_files {
            eprintln!(
                "run {run}: {t} data files in the table at the end, after {} compactions",
                r.compactions
            );
        }
        results.push(r);
    }
    let col = |f: fn(&Live) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let s = |v: f64| format!("{v:.3} s");
    println!(
        "logical live (batch_interval {interval} s, {rate} single-row transactions/s from {clients} connections for {seconds} \
         s, `run`, {broker}, {runs} runs; \
         achieved {}):",
        summary(&col(|r| r.achieved), |v| format!("{v:.0}/s"))
    );
    println!(
        "  commit → seen by a consumer tailing the topic (upper bound of commit → broker ack): p50 {}; p99 {}",
        summary(&col(|r| r.topic[0]), s),
        summary(&col(|r| r.topic[1]), s)
    );
    if results.iter().any(|r| r.lake[0].is_nan()) {
        println!(
            "  commit → readable in the lake: not measured (a table on S3); files {}",
            summary(&col(|r| r.files as f64), |v| format!("{v:.0}"))
        );
    } else {
        println!(
            "  commit → readable in the lake: p50 {}; p99 {}; files {}",
            summary(&col(|r| r.lake[0]), s),
            summary(&col(|r| r.lake[1]), s),
            summary(&col(|r| r.files as f64), |v| format!("{v:.0}"))
        );
    }
    println!(
        "  of which commit_ts header → producer CreateTime (change reached the producer's queue): p50 {}; p99 {}; peak RSS {}",
        summary(&col(|r| r.queued[0]), s),
        summary(&col(|r| r.queued[1]), s),
        summary(&col(|r| r.rss), |v| format!("{v:.0} MB"))
    );
    if results.iter().all(|r| r.commit.is_some()) {
        let s4 = |v: f64| format!("{v:.4} s");
        println!(
            "  Delta commit of a batch (the consumer's debug line): p50 {}; p99 {}",
            summary(&col(|r| r.commit.map_or(f64::NAN, |c| c[0])), s4),
            summary(&col(|r| r.commit.map_or(f64::NAN, |c| c[1])), s4)
        );
    }
    if results.iter().all(|r| r.table_files.is_some()) {
        println!(
            "  data files in the table at the end: {}; compactions {}",
            summary(&col(|r| r.table_files.unwrap_or(0) as f64), |v| format!("{v:.0}")),
            summary(&col(|r| r.compactions as f64), |v| format!("{v:.0}"))
        );
    }
}

/// One `wal` run: `(trailed, retained while writing, retained after, written)`, in bytes.
fn wal_run(given: Option<&str>) -> (i64, i64, i64, i64) {
    let broker = given.is_none().then(Broker::start_memory);
    let brokers = given
        .map(str::to_string)
        .unwrap_or_else(|| broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default());
    let env = logical_env("bench_wal", &brokers, None);
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_proc(&mut producer, Duration::from_secs(60), "the snapshot", || saved(&env).1);
    let other = format!("other_{}", env.name);
    let mut pg = env.pg();
    pg.batch_execute(&format!("CREATE TABLE \"{other}\" (id int8, payload text)")).unwrap();
    let slot = env.slot();
    let held = |pg: &mut postgres::Client| -> (i64, i64) {
        let row = pg
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (mut retained, mut trailed) = (0, 0);
    for _ in 0..40 {
        pg.batch_execute(&format!(
            "INSERT INTO \"{other}\" SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 4500) g"
        ))
        .unwrap();
        let (r, u) = held(&mut pg);
        retained = retained.max(r);
        trailed = trailed.max(u);
        std::thread::sleep(Duration::from_millis(500));
    }
    let written: i64 =
        pg.query_one(&format!("SELECT pg_total_relation_size('\"{other}\"')::int8"), &[]).unwrap().get(0);
    pg.batch_execute(&format!("DROP TABLE \"{other}\"")).unwrap();
    // Two running-transactions records (logged every 15 s) let restart_lsn move.
    std::thread::sleep(Duration::from_secs(35));
    let (after, _) = held(&mut pg);
    let _ = producer.terminate(Duration::from_secs(30));
    (trailed, retained, after, written)
}

/// The `wal` scenario: medians of `runs`.
fn wal(runs: usize, given: Option<&str>) {
    let mut all = Vec::new();
    for run in 1..=runs {
        let (t, r, a, w) = wal_run(given);
        eprintln!(
            "wal run {run}: {:.0} MB written to another table; the slot's confirmed position trailed by at most \
             {:.0} MB, it retained at most {:.0} MB while writing and {:.0} MB 35 s after",
            w as f64 / MB,
            t as f64 / MB,
            r as f64 / MB,
            a as f64 / MB
        );
        all.push((t as f64 / MB, r as f64 / MB, a as f64 / MB));
    }
    println!(
        "wal: median of {runs}: trailed at most {:.0} MB, retained at most {:.0} MB while writing, {:.0} MB after",
        median(all.iter().map(|x| x.0).collect()),
        median(all.iter().map(|x| x.1).collect()),
        median(all.iter().map(|x| x.2).collect())
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would run this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let scenarios = std::env::var("ORDERSTREAM_BENCH_SCENARIOS").unwrap_or_else(|_| "bulk,live".into());
    let given = std::env::var("ORDERSTREAM_BENCH_BROKER").ok();
    let runs: usize = knob("ORDERSTREAM_BENCH_RUNS", 3);
    if scenarios.contains("bulk") {
        bulk(knob("ORDERSTREAM_BENCH_ROWS", 1_000_000), runs, given.as_deref());
    }
    if scenarios.contains("wal") {
        wal(runs, given.as_deref());
    }
    if scenarios.contains("live") {
        let intervals = std::env::var("ORDERSTREAM_BENCH_INTERVALS").unwrap_or_else(|_| "1,0.2".into());
        for interval in intervals.split(',') {
            let (rate, seconds) =
                (knob("ORDERSTREAM_BENCH_RATE", 2000), knob("ORDERSTREAM_BENCH_SECONDS", 60));
            live(interval, rate, seconds, knob("ORDERSTREAM_BENCH_CLIENTS", 4), runs, given.as_deref());
        }
    }
}
