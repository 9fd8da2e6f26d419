//! End-to-end benchmark: PostgreSQL → producer → broker → consumer → lake.
//!
//! * catch-up: `ORDERSTREAM_BENCH_ROWS` orders (default 1,000,000) already in the table; `produce` and
//!   `consume` started as separate processes; time until the consumer's checkpoint has them
//!   all; peak RSS of each process.
//! * live: orders inserted one per transaction at `ORDERSTREAM_BENCH_RATE` per second (default 2,000) for
//!   `ORDERSTREAM_BENCH_SECONDS` (default 60) with `orderstream run`, for each batch interval of
//!   `ORDERSTREAM_BENCH_INTERVALS` (default `1,0.2`); latency from the commit returning to the order being
//!   readable in the lake (a watcher lists the lake every 10 ms and reads each new file's ids),
//!   p50/p95/p99; files written; peak RSS.
//!
//! `cargo bench --bench e2e` (needs the local stack's PostgreSQL; the broker is a private
//! memory-storage tansu). `ORDERSTREAM_BENCH_SCENARIOS=catchup,live` selects scenarios; `ORDERSTREAM_BENCH_RUNS` the
//! catch-up repetitions (median reported). `ORDERSTREAM_BENCH_BROKER` runs `live` on another broker
//! instead (e.g. the stack's durable one at 127.0.0.1:9092); orders still missing from the lake
//! `ORDERSTREAM_BENCH_DRAIN` seconds (default 120) after the last insert are counted, not waited for.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{LakeWatcher, committed_rows, knob, median, percentile};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::proc::{Proc, wait_for};
use common::{Broker, TestEnv};

fn catch_up(rows: i64, runs: usize) {
    let broker = Broker::start_memory();
    let table_env = TestEnv::with_brokers("bench_e2e", &broker.addr);
    table_env.init();
    table_env.insert(rows);
    let total = (rows + 10) as u64;
    let (mut rates, mut rss_p, mut rss_c) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let mut env = TestEnv::with_brokers("bench_e2e_run", &broker.addr);
        env.table = table_env.table.clone();
        env.owns_table = false;
        env.write_config("");
        env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "1");
        env.init();
        let t0 = Instant::now();
        let mut consumer = env.spawn(&["consume"]);
        let mut producer = env.spawn(&["produce"]);
        wait_for(Duration::from_secs(1800), "every order in the lake", || {
            (committed_rows(&env.checkpoints()) >= total).then_some(())
        });
        let took = t0.elapsed().as_secs_f64();
        let (p, c) = (producer.peak_rss() as f64 / 1048576.0, consumer.peak_rss() as f64 / 1048576.0);
        assert_eq!(producer.terminate(Duration::from_secs(60)), 0, "{}", producer.log_text());
        assert_eq!(consumer.terminate(Duration::from_secs(60)), 0, "{}", consumer.log_text());
        let rate = total as f64 / took;
        eprintln!(
            "catch-up run {run}: {total} orders table → lake in {took:.2} s = {rate:.0} orders/s; peak RSS producer {p:.0} MB, consumer {c:.0} MB"
        );
        rates.push(rate);
        rss_p.push(p);
        rss_c.push(c);
    }
    println!(
        "e2e catch-up ({total} orders, memory broker, separate produce/consume, {runs} runs): median {:.0} orders/s; \
         median peak RSS producer {:.0} MB, consumer {:.0} MB",
        median(rates),
        median(rss_p),
        median(rss_c)
    );
}

fn live(interval: &str, rate: u64, seconds: u64, given: Option<&str>) {
    let broker = given.is_none().then(Broker::start_memory);
    let addr =
        given.map_or_else(|| broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default(), str::to_string);
    let mut env = TestEnv::with_brokers("bench_live", &addr);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", interval);
    env.init();
    let mut pipeline: Proc = env.spawn(&["run"]);
    // Let it start up and publish the seed rows first.
    wait_for(Duration::from_secs(60), "the seed orders in the lake", || {
        (committed_rows(&env.checkpoints()) >= 10).then_some(())
    });

    // Watcher: new lake files, and when each order became readable.
    let mut watcher = LakeWatcher::start(env.lake());

    // Inserts, one transaction each, at a steady rate.
    let mut client = env.pg();
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {} (customer_name, restaurant_name, item, amount, order_status) \
             VALUES ('Live Customer', 'Burger Junction', 'Veg Burger', 220.00, 'PLACED') RETURNING order_id::int8",
            env.t()
        ))
        .unwrap();
    let mut committed: HashMap<i64, Instant> = HashMap::new();
    let start = Instant::now();
    let n = rate * seconds;
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id: i64 = client.query_one(&stmt, &[]).unwrap().get(0);
        committed.insert(id, Instant::now());
    }
    let achieved = n as f64 / start.elapsed().as_secs_f64();
    // A broker that cannot keep up is measured too: what is missing after the drain is counted.
    let drain = Instant::now() + Duration::from_secs(knob("ORDERSTREAM_BENCH_DRAIN", 120));
    while Instant::now() < drain && !committed.keys().all(|id| watcher.seen.lock().unwrap().contains_key(id))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let files = watcher.stop();
    let rss = pipeline.peak_rss() as f64 / 1048576.0;
    assert_eq!(pipeline.terminate(Duration::from_secs(60)), 0, "{}", pipeline.log_text());

    let seen = watcher.seen.lock().unwrap();
    let missing = committed.keys().filter(|id| !seen.contains_key(id)).count();
    // A missing order counts as never arriving (infinite latency), so it weighs on the percentiles.
    let mut lat: Vec<f64> = committed
        .iter()
        .map(|(id, t)| seen.get(id).map_or(f64::INFINITY, |s| s.saturating_duration_since(*t).as_secs_f64()))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let on = given.unwrap_or("a memory broker");
    println!(
        "e2e live (batch_interval {interval} s, {n} orders at {achieved:.0}/s for {seconds} s, `run`, {on}): {missing} missing; \
         latency commit → lake p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s; {files} files; peak RSS {rss:.0} MB",
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
}

fn main() {
    let scenarios = std::env::var("ORDERSTREAM_BENCH_SCENARIOS").unwrap_or_else(|_| "catchup,live".into());
    if scenarios.contains("catchup") {
        catch_up(knob("ORDERSTREAM_BENCH_ROWS", 1_000_000), knob("ORDERSTREAM_BENCH_RUNS", 3));
    }
    if scenarios.contains("live") {
        let intervals = std::env::var("ORDERSTREAM_BENCH_INTERVALS").unwrap_or_else(|_| "1,0.2".into());
        let given = std::env::var("ORDERSTREAM_BENCH_BROKER").ok();
        for interval in intervals.split(',') {
            let (rate, seconds) =
                (knob("ORDERSTREAM_BENCH_RATE", 2000), knob("ORDERSTREAM_BENCH_SECONDS", 60));
            live(interval, rate, seconds, given.as_deref());
        }
    }
}
