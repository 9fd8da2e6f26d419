//! Producer catch-up benchmark: a table with a backlog of orders (default 1,000,000), a fresh
//! topic and state per run, `orderstream produce` started, time until the state file records
//! the last order; the median of several runs, and the peak RSS.
//!
//! `cargo bench --bench produce` (memory-storage tansu started by the bench), or with
//! `ORDERSTREAM_BENCH_BROKER=127.0.0.1:9092` against the local stack's durable broker.
//! `ORDERSTREAM_BENCH_ROWS` (1000000) and `ORDERSTREAM_BENCH_RUNS` (5) change the size and the
//! number of runs. Needs the local stack's PostgreSQL (`make up`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{knob, median};

use std::time::{Duration, Instant};

use common::proc::wait_for;
use common::{Broker, TestEnv};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let rows: i64 = knob("ORDERSTREAM_BENCH_ROWS", 1_000_000);
    let runs: usize = knob("ORDERSTREAM_BENCH_RUNS", 5);
    // Another broker (e.g. the local stack's durable one, 127.0.0.1:9092) instead of a private
    // memory-storage tansu.
    let given = std::env::var("ORDERSTREAM_BENCH_BROKER").ok();
    let broker = given.is_none().then(Broker::start_memory);
    let brokers =
        given.clone().unwrap_or_else(|| broker.as_ref().map(|b| b.addr.clone()).unwrap_or_default());

    let table_env = TestEnv::with_brokers("bench_produce", &brokers);
    table_env.init();
    let started = Instant::now();
    table_env.insert(rows);
    let last: i64 = table_env
        .pg()
        .query_one(&format!("SELECT max(order_id)::int8 FROM {}", table_env.t()), &[])
        .unwrap()
        .get(0);
    let total = rows + 10;
    eprintln!(
        "bench produce: {total} orders in {} ({:.1} s to insert)",
        table_env.table,
        started.elapsed().as_secs_f64()
    );

    let mut rates = Vec::new();
    let mut rss = Vec::new();
    for run in 1..=runs {
        let mut env = TestEnv::with_brokers("bench_produce_run", &brokers);
        env.table = table_env.table.clone();
        env.owns_table = false;
        env.write_config("");
        env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "1");
        // Extra producer settings to compare, e.g. ORDERSTREAM_BENCH_KAFKA_PROPERTIES=compression.type=lz4
        for kv in std::env::var("ORDERSTREAM_BENCH_KAFKA_PROPERTIES")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv.split_once('=').expect("ORDERSTREAM_BENCH_KAFKA_PROPERTIES is name=value,...");
            env.set(&format!("ORDERSTREAM__KAFKA__PROPERTIES__{k}"), v);
        }
        env.init();
        let state = env.lastprocess().join("last_timestamp.txt");
        let t0 = Instant::now();
        let mut producer = env.spawn(&["produce"]);
        wait_for(Duration::from_secs(1800), "the last order in the state file", || {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            text.contains(&format!("order_id={last}\n")).then_some(())
        });
        let took = t0.elapsed().as_secs_f64();
        let peak = producer.peak_rss() as f64 / (1024.0 * 1024.0);
        assert_eq!(producer.terminate(Duration::from_secs(60)), 0, "{}", producer.log_text());
        let rate = total as f64 / took;
        eprintln!("run {run}: {total} orders in {took:.2} s = {rate:.0} orders/s, peak RSS {peak:.0} MB");
        rates.push(rate);
        rss.push(peak);
    }
    println!(
        "produce catch-up ({}, {total} orders, {runs} runs): median {:.0} orders/s, median peak RSS {:.0} MB",
        given.map(|b| format!("broker {b}")).unwrap_or_else(|| "memory-storage tansu".into()),
        median(rates),
        median(rss)
    );
}
