//! Volume and fault-test helpers of the consumer tests: a deterministic
//! message stream with known rejects and tombstones, paced production, and the exactly-once
//! check of the whole lake.

use std::time::Duration;

use super::TestEnv;
use super::lake::{LakeRow, Msg, Writer, assert_clean_lake, files, order_json, read_duckdb, states};
use super::proc::Proc;
use super::topic::read_topic;

/// Message `i` of a volume test: valid orders over three dates, every 997th a reject
/// (amount 0), every 1009th a tombstone. Returns the message and its row if valid.
pub fn volume_message(i: i64) -> (Msg, Option<LakeRow>) {
    let key = format!("k{i}");
    if i % 1009 == 500 {
        return (Msg { key: Some(key.into_bytes()), ..Msg::default() }, None);
    }
    let id = 1_000 + i;
    let secs = 1_737_158_400 + i * 2; // from 2025-01-18T00:00:00Z, 2 s apart: three dates
    let ts = chrono::DateTime::from_timestamp(secs, 0).unwrap();
    let amount = if i % 997 == 3 { "0".to_string() } else { format!("{}.{:02}", 1 + i % 500, i % 100) };
    let msg = Msg::value(order_json(id, &amount, &ts.format("%Y-%m-%dT%H:%M:%SZ").to_string())).key(key);
    if i % 997 == 3 {
        return (msg, None);
    }
    let row = LakeRow::polled(
        id,
        Some(format!("Customer {id}")),
        Some("Burger Junction".into()),
        Some("Veg Burger".into()),
        amount,
        Some("PLACED".into()),
        ts.format("%Y-%m-%dT%H:%M:%S.000000Z").to_string(),
        ts.format("%Y-%m-%d").to_string(),
    );
    (msg, Some(row))
}

/// Produces messages `range` in chunks with a pause between chunks, on a thread; returns
/// every message's (partition, offset). One message per record batch: tansu's memory storage
/// skips the rest of a batch when a fetch starts inside it, and a restarted consumer resumes at
/// any offset (a Kafka broker serves such fetches correctly; see the consumer's warning).
pub fn produce_paced(
    brokers: &str,
    topic: &str,
    range: std::ops::Range<i64>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let w = Writer::with_batch(&brokers, 1);
        let all: Vec<i64> = range.collect();
        let mut positions = Vec::new();
        for ids in all.chunks(chunk) {
            let msgs: Vec<Msg> = ids.iter().map(|&i| volume_message(i).0).collect();
            positions.extend(w.send(&topic, &msgs));
            std::thread::sleep(pause);
        }
        positions
    })
}

/// Produces messages `from..` in chunks with a pause between chunks, on a thread, until `stop`
/// is set and one more chunk is written: messages are always written after `stop` was set.
/// Returns every message's (partition, offset), message `from + i` at index `i`.
pub fn produce_until(
    brokers: &str,
    topic: &str,
    from: i64,
    chunk: usize,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let w = Writer::with_batch(&brokers, 1);
        let mut positions = Vec::new();
        let mut next = from;
        loop {
            let last = stop.load(std::sync::atomic::Ordering::SeqCst);
            let msgs: Vec<Msg> = (next..next + chunk as i64).map(|i| volume_message(i).0).collect();
            positions.extend(w.send(&topic, &msgs));
            next += chunk as i64;
            if last {
                return positions;
            }
            std::thread::sleep(pause);
        }
    })
}

/// Waits until the consumer logs an assignment with at least one partition.
pub fn wait_assigned(c: &Proc, timeout: Duration) {
    let assigned = || {
        c.log_text()
            .lines()
            .any(|l| l.contains("partitions assigned: ") && !l.ends_with("partitions assigned: none"))
    };
    let deadline = std::time::Instant::now() + timeout;
    while !assigned() {
        assert!(
            std::time::Instant::now() < deadline,
            "no partition assigned after {timeout:?}; the consumer logged:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lake holds exactly the valid messages of `0..n`, each once; the dead-letter topic holds
/// every reject at least once; nothing else is in the lake.
pub fn assert_exactly_once(env: &TestEnv, n: i64, positions: &[(i32, i64)]) {
    let expected: Vec<LakeRow> = (0..n).filter_map(|i| volume_message(i).1).collect();
    let got = read_duckdb(&env.lake()).rows;
    if got != expected {
        let mut seen = std::collections::BTreeMap::<i64, usize>::new();
        for r in &got {
            *seen.entry(r.order_id).or_default() += 1;
        }
        let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
        let missing: Vec<_> = expected.iter().filter(|r| !seen.contains_key(&r.order_id)).take(10).collect();
        panic!(
            "lake holds {} rows, expected {}; duplicated (id, times): {dup:?}; missing: {missing:?}",
            got.len(),
            expected.len()
        );
    }
    assert_clean_lake(&env.lake());
    let manifests = files(&env.checkpoints().join("commits"));
    assert!(manifests.is_empty(), "manifests left: {manifests:?}");
    let letters = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
    let rejects: Vec<(i32, i64)> =
        (0..n).filter(|i| i % 997 == 3 && i % 1009 != 500).map(|i| positions[i as usize]).collect();
    for (p, o) in &rejects {
        assert!(
            letters.iter().any(|r| r.header("orderstream.source.partition") == Some(p.to_string())
                && r.header("orderstream.source.offset") == Some(o.to_string())
                && r.header("orderstream.reject.reason").as_deref() == Some("non_positive_amount")),
            "the reject at {p}/{o} is not in the dead-letter topic"
        );
    }
    let st = states(env);
    assert_eq!(st.iter().map(|s| s.rows_written).sum::<u64>(), expected.len() as u64);
}
