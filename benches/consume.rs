//! `cargo bench --bench consume`: catch-up throughput and peak memory of `orderstream consume`.
//!
//! Starts a private memory-storage tansu, pre-fills a topic with 1,000,000 seed-format orders,
//! then runs `orderstream consume` (the release binary) from an empty checkpoint several times,
//! each with its own group, lake and checkpoint. A run's time is from the spawn of the process
//! until the checkpoint holds every message (the state files are watched; nothing is timed
//! inside the consumer); its peak RSS is the process's VmHWM (`/proc/<pid>/status`) when the
//! last message is committed. Prints every run and the medians.
//!
//! Knobs: `ORDERSTREAM_BENCH_MESSAGES` (1000000), `ORDERSTREAM_BENCH_RUNS` (5),
//! `ORDERSTREAM_BENCH_PARTITIONS` (3), `ORDERSTREAM_BENCH_BROKER` (another broker instead of a
//! private tansu), `ORDERSTREAM_BENCH_TOPIC` (an already pre-filled topic),
//! `ORDERSTREAM_BENCH_HEADERS` (default none; `poll`: the headers the polling producer sends,
//! source and seq; `logical`: those of log-based capture, source, seq, op, lsn, change_index
//! and commit_ts); `ORDERSTREAM_BENCH_LAKES` (`parquet,delta`: each run consumes the topic into
//! a Parquet lake and into a local Delta table, in turn, and the medians of each and their ratio
//! are printed); `ORDERSTREAM__*` variables are passed to the consumer.

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{CUSTOMERS, ITEMS, RESTAURANTS, knob, median};

use std::time::{Duration, Instant};

use common::lake::{Msg, committed_total, create_topic, files, produce};
use common::{Broker, TestEnv};

const STATUSES: [&str; 4] = ["PLACED", "PREPARING", "DELIVERED", "CANCELLED"];

/// Order `i` in the seed's message format; created_at walks through two days in 0.1 s steps.
fn order(i: usize) -> String {
    let secs = 1_737_202_440 + (i as i64) / 10; // 2025-01-18T12:14:00Z onwards
    let ts = chrono::DateTime::from_timestamp(secs, ((i % 10) * 100_000_000) as u32).unwrap_or_default();
    format!(
        r#"{{"order_id": {}, "customer_name": "{}", "restaurant_name": "{}", "item": "{}", "amount": {}.{:02}, "order_status": "{}", "created_at": "{}"}}"#,
        1000 + i,
        CUSTOMERS[i % 8],
        RESTAURANTS[i % 5],
        ITEMS[i % 6],
        50 + i % 950,
        i % 100,
        STATUSES[i % 4],
        ts.format("%Y-%m-%dT%H:%M:%S%.fZ"),
    )
}

/// Which headers the pre-filled messages carry (`ORDERSTREAM_BENCH_HEADERS`).
#[derive(Clone, Copy, PartialEq)]
enum Headers {
    None,
    Poll,
    Logical,
}

/// Message `i` with the headers of `kind`; log-based capture has 4 changes per transaction.
fn with_headers(msg: Msg, i: usize, kind: Headers) -> Msg {
    use orderstream::wire::*;
    let source = if kind == Headers::Poll { "poll:" } else { "logical:" };
    let msg = match kind {
        Headers::None => return msg,
        _ => msg
            .header(SOURCE_HEADER, format!("{source}food_delivery_db.roll001_orders"))
            .header(SEQ_HEADER, (i + 1).to_string()),
    };
    if kind == Headers::Poll {
        return msg;
    }
    let lsn = Lsn(0x1_6B37_4800 + (i as u64 / 4) * 0x100);
    let ts = chrono::DateTime::from_timestamp(1_764_136_800 + (i as i64) / 40, 0).unwrap_or_default();
    msg.header(OP_HEADER, ["c", "u", "u", "d"][i % 4])
        .header(LSN_HEADER, lsn.to_string())
        .header(CHANGE_INDEX_HEADER, (i % 4).to_string())
        .header(COMMIT_TS_HEADER, format_commit_ts(&ts))
}

struct Run {
    secs: f64,
    steady_secs: f64,
    rss_mb: f64,
    cpu_secs: f64,
    lake_mb: f64,
    files: usize,
}

fn run_once(brokers: &str, topic: &str, n: usize, lake: &str) -> Run {
    let mut env = TestEnv::with_brokers("bench_consume", brokers);
    if lake == "delta" {
        env.use_delta(&common::delta::Store::Local);
    }
    env.set("ORDERSTREAM__KAFKA__TOPIC", topic);
    env.set("ORDERSTREAM__KAFKA__GROUP_ID", &env.name.clone());
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "5");
    for (k, v) in std::env::vars() {
        if k.starts_with("ORDERSTREAM__") {
            env.set(&k, &v);
        }
    }
    let start = Instant::now();
    let mut child = env
        .orderstream(&["consume"])
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("consume.log")).expect("cannot create the consumer's log"))
        .spawn()
        .expect("cannot start orderstream consume");
    let mut first = None;
    let delta = lake == "delta";
    loop {
        // A Delta table's positions are in its log (the commit files are read each time).
        let done = if delta { env.delta_positions().values().sum::<i64>() } else { committed_total(&env) };
        if done > 0 && first.is_none() {
            first = Some((start.elapsed(), done));
        }
        if done >= n as i64 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(env.dir.join("consume.log")).unwrap_or_default();
            panic!("orderstream consume exited early: {status}\n{log}");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "not done after 600 s: {done} of {n}");
        std::thread::sleep(Duration::from_millis(if delta { 50 } else { 5 }));
    }
    let secs = start.elapsed().as_secs_f64();
    let (first_at, first_n) = first.unwrap_or_default();
    // The high-water mark of this process image (ru_maxrss would also count the memory of
    // the bench itself, which the child shared between fork and exec).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmHWM in /proc/<pid>/status");
    common::signal(child.id() as i32, libc::SIGTERM);
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // SAFETY: wait4 on our own child with valid out-pointers.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
        if pid == child.id() as i32 {
            break;
        }
        assert_eq!(pid, 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            panic!("orderstream consume did not exit within 60 s of SIGTERM; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "consume did not exit 0: {status}");
    let data: Vec<String> = files(&env.lake())
        .into_iter()
        .filter(|f| f.ends_with(".parquet") && !f.starts_with("_delta_log"))
        .collect();
    let lake_bytes: u64 =
        data.iter().map(|f| std::fs::metadata(env.lake().join(f)).map(|m| m.len()).unwrap_or(0)).sum();
    let _ = std::fs::remove_dir_all(&env.dir);
    Run {
        secs,
        steady_secs: (secs - first_at.as_secs_f64()) * n as f64 / (n as f64 - first_n as f64).max(1.0),
        rss_mb: hwm_kb / 1024.0,
        cpu_secs: tv(usage.ru_utime) + tv(usage.ru_stime),
        lake_mb: lake_bytes as f64 / 1e6,
        files: data.len(),
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would run this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = knob("ORDERSTREAM_BENCH_MESSAGES", 1_000_000);
    let runs: usize = knob("ORDERSTREAM_BENCH_RUNS", 5);
    let partitions: i32 = knob("ORDERSTREAM_BENCH_PARTITIONS", 3);
    let headers = match std::env::var("ORDERSTREAM_BENCH_HEADERS").as_deref() {
        Ok("") | Err(_) => Headers::None,
        Ok("poll") => Headers::Poll,
        Ok("logical") => Headers::Logical,
        Ok(other) => panic!("ORDERSTREAM_BENCH_HEADERS={other}: expected poll, logical or nothing"),
    };
    // Another broker (e.g. a real Kafka) and an already pre-filled topic can be given.
    let own_broker = match std::env::var("ORDERSTREAM_BENCH_BROKER") {
        Ok(_) => None,
        Err(_) => Some(Broker::start_memory()),
    };
    let brokers = match &own_broker {
        Some(b) => b.addr.clone(),
        None => std::env::var("ORDERSTREAM_BENCH_BROKER").unwrap_or_default(),
    };
    let topic = match std::env::var("ORDERSTREAM_BENCH_TOPIC") {
        Ok(t) => t,
        Err(_) => {
            let topic = common::unique("bench_orders");
            create_topic(&brokers, &topic, partitions);
            let t = Instant::now();
            let mut bytes = 0;
            for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
                let msgs: Vec<Msg> = chunk
                    .iter()
                    .map(|&i| with_headers(Msg::value(order(i)).key((1000 + i).to_string()), i, headers))
                    .collect();
                bytes += msgs.iter().map(|m| m.value.as_ref().map_or(0, Vec::len)).sum::<usize>();
                produce(&brokers, &topic, &msgs);
            }
            println!(
                "pre-filled {topic} on {brokers}: {n} messages{}, {partitions} partitions, {:.0} MB of values, in {:.1} s",
                match headers {
                    Headers::None => "",
                    Headers::Poll => " with poll headers",
                    Headers::Logical => " with logical-capture headers",
                },
                bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            topic
        }
    };

    let lakes: Vec<String> = std::env::var("ORDERSTREAM_BENCH_LAKES")
        .unwrap_or_else(|_| "parquet,delta".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let mut by_lake: Vec<(String, Vec<Run>)> = lakes.iter().map(|l| (l.clone(), Vec::new())).collect();
    for i in 1..=runs {
        for (lake, results) in by_lake.iter_mut() {
            let r = run_once(&brokers, &topic, n, lake);
            println!(
                "run {i} {lake}: {:.2} s, {:.0} msgs/s (after the first commit: {:.0} msgs/s), peak RSS {:.0} MB, CPU {:.2} s, lake {:.1} MB in {} files",
                r.secs,
                n as f64 / r.secs,
                n as f64 / r.steady_secs,
                r.rss_mb,
                r.cpu_secs,
                r.lake_mb,
                r.files
            );
            results.push(r);
        }
    }
    let mut medians = Vec::new();
    for (lake, results) in &by_lake {
        if results.is_empty() {
            continue;
        }
        let rate = median(results.iter().map(|r| n as f64 / r.secs).collect());
        println!(
            "{lake}: median of {runs}: {rate:.0} msgs/s from process start ({:.0} msgs/s after the first commit), peak RSS {:.0} MB",
            median(results.iter().map(|r| n as f64 / r.steady_secs).collect()),
            median(results.iter().map(|r| r.rss_mb).collect()),
        );
        medians.push((lake.clone(), rate));
    }
    if let [(a, ra), (b, rb)] = medians.as_slice() {
        println!("{b} / {a}: {:.2}x", rb / ra);
    }
}
