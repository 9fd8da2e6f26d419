//! SIGTERM/SIGINT end `produce`, `consume` and `run` whatever they are waiting for: start-up
//! retries against an unreachable broker or database, a snapshot, a slot held by another
//! process, a broker frozen mid-batch. Each stop is timed and the time printed; the only bound
//! asserted is a generous one that catches a hang (these machines are shared and noisy). Exit
//! codes: 0 for a clean stop, 3 when the in-flight batch was abandoned (redone by the next
//! start, checked here by reading everything back once).

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::lake::create_topic;
use common::proc::{Proc, wait_until};
use common::topic::read_topic;
use common::{Broker, ClosedPort, TestEnv};

/// A stop that takes longer than this is a hang, not a slow machine.
const HANG: Duration = Duration::from_secs(30);

/// Sends SIGTERM, waits for the exit and returns its code and how long the stop took.
fn stop_timed(p: &mut Proc, what: &str) -> (i32, Duration) {
    let started = Instant::now();
    common::signal(p.pid(), libc::SIGTERM);
    let code = p.wait(Duration::from_secs(120));
    let took = started.elapsed();
    eprintln!("{what}: stopped in {:.2} s with exit code {code}", took.as_secs_f64());
    assert!(took < HANG, "{what}: the stop took {took:?}:\n{}", p.log_text());
    (code, took)
}

/// Waits until `p` has logged `n` lines containing `text`.
fn wait_logged(p: &Proc, text: &str, n: usize) {
    wait_until(Duration::from_secs(90), &format!("{n} log lines with `{text}`"), || {
        p.log_text().matches(text).count() >= n
    });
}

/// Every message key of the topic with how many times it appears.
fn keys(brokers: &str, topic: &str) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for r in read_topic(brokers, topic) {
        if r.value.is_some()
            && let Some(id) = r.key_str().and_then(|k| k.parse::<i64>().ok())
        {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Asserts that the topic holds every order of the table exactly once.
fn assert_each_order_once(env: &TestEnv) {
    let ids = env.table_ids();
    let seen = keys(&env.brokers, &env.topic);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "orders published more than once: {twice:?}");
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids, "the topic's orders differ from the table's");
}

/// Waits until the topic holds every order of the table.
fn wait_all_published(env: &TestEnv, p: &Proc) {
    let want = env.table_ids().len();
    wait_until(Duration::from_secs(180), "every order in the topic", || {
        assert!(p.log_text().matches("ERROR").count() == 0, "{}", p.log_text());
        keys(&env.brokers, &env.topic).len() >= want
    });
}

/// A logical-capture test world on a private broker (the stack's is shared by every test).
fn logical_on(broker: &Broker, tag: &str) -> TestEnv {
    let mut env = TestEnv::with_brokers(tag, &broker.addr);
    env.capture = "logical";
    env.write_config("");
    env
}

fn stops_while_retrying_an_unreachable_broker(command: &str) {
    let closed = ClosedPort::new();
    let env = TestEnv::with_brokers(&format!("stop_nobroker_{command}"), &closed.addr());
    let mut p = env.spawn(&[command]);
    wait_logged(&p, "retrying in", 1);
    let (code, _) = stop_timed(&mut p, &format!("{command} retrying an unreachable broker"));
    assert_eq!(code, 0, "{}", p.log_text());
    assert!(p.log_text().contains("SIGTERM received"), "{}", p.log_text());
}

#[test]
fn produce_stops_promptly_while_retrying_an_unreachable_broker() {
    stops_while_retrying_an_unreachable_broker("produce");
}

#[test]
fn consume_stops_promptly_while_retrying_an_unreachable_broker() {
    stops_while_retrying_an_unreachable_broker("consume");
}

#[test]
fn run_stops_promptly_while_retrying_an_unreachable_broker() {
    stops_while_retrying_an_unreachable_broker("run");
}

#[test]
fn produce_stops_promptly_while_retrying_an_unreachable_database() {
    let closed = ClosedPort::new();
    let broker = Broker::start_memory();
    let mut env = logical_on(&broker, "stop_nodb");
    env.init();
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db", closed.port),
    );
    let mut p = env.spawn(&["produce"]);
    wait_logged(&p, "retrying in", 1);
    let (code, _) = stop_timed(&mut p, "produce retrying an unreachable database");
    assert_eq!(code, 0, "{}", p.log_text());
}

#[test]
fn produce_stops_promptly_during_a_snapshot_and_the_next_start_publishes_every_order_once() {
    let broker = Broker::start_memory();
    let mut env = logical_on(&broker, "stop_snapshot");
    env.init();
    env.insert(5_000);
    // Small pages: the snapshot takes a while, and the stop lands inside it.
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "20");
    let mut p = env.spawn(&["produce"]);
    wait_logged(&p, "batch published", 3);
    assert!(
        !p.log_text().contains("complete; streaming from"),
        "the snapshot ended before the stop:\n{}",
        p.log_text()
    );
    let (code, _) = stop_timed(&mut p, "produce during a snapshot");
    assert_eq!(code, 0, "{}", p.log_text());
    let state = std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap();
    assert!(state.contains("snapshot=") && !state.contains("snapshot=done"), "{state}");

    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "10000");
    let mut again = env.spawn(&["produce"]);
    wait_until(Duration::from_secs(180), "the snapshot done", || {
        std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt"))
            .is_ok_and(|s| s.contains("snapshot=done"))
    });
    assert_eq!(again.stop(), 0, "{}", again.log_text());
    assert_each_order_once(&env);
}

#[test]
fn a_producer_waiting_for_a_slot_held_by_another_stops_promptly_and_cleanly() {
    let env = TestEnv::logical("stop_slot");
    env.init();
    let mut first = env.spawn(&["produce"]);
    wait_until(Duration::from_secs(60), "the first producer streaming", || {
        std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt"))
            .is_ok_and(|s| s.contains("snapshot=done"))
    });
    // The second waits up to 10 s for the writer lock, then would exit 1 naming the holder.
    let mut second = env.spawn(&["produce"]);
    wait_logged(&second, "producer: ", 1);
    std::thread::sleep(Duration::from_millis(500));
    let (code, _) = stop_timed(&mut second, "produce waiting for the slot's writer lock");
    assert_eq!(code, 0, "the wait did not end at the stop:\n{}", second.log_text());
    assert!(!second.log_text().contains("in use by PID"), "{}", second.log_text());
    assert_eq!(first.stop(), 0, "{}", first.log_text());
}

/// A producer on a private broker that is frozen (SIGSTOP) while a batch waits for its
/// acknowledgements; returns the test world, the broker and the producer.
fn producer_with_a_frozen_batch(tag: &str) -> (TestEnv, Broker, Proc) {
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers(tag, &broker.addr);
    env.init();
    let p = env.spawn(&["produce"]);
    wait_logged(&p, "batch published", 1);
    broker.freeze();
    env.insert(500);
    wait_logged(&p, "waiting for the broker to acknowledge", 1);
    (env, broker, p)
}

#[test]
fn produce_stops_within_the_bound_when_the_broker_froze_mid_batch_and_loses_nothing() {
    let (env, broker, mut p) = producer_with_a_frozen_batch("stop_frozen");
    let (code, _) = stop_timed(&mut p, "produce with a batch unacknowledged");
    assert_eq!(code, 3, "an abandoned batch exits 3:\n{}", p.log_text());
    broker.thaw();
    let mut again = env.spawn(&["produce"]);
    wait_all_published(&env, &again);
    assert_eq!(again.stop(), 0, "{}", again.log_text());
    assert_each_order_once(&env);
}

#[test]
fn a_second_signal_stops_at_once() {
    let (_env, broker, mut p) = producer_with_a_frozen_batch("stop_twice");
    let started = Instant::now();
    common::signal(p.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    common::signal(p.pid(), libc::SIGINT);
    let code = p.wait(Duration::from_secs(120));
    let took = started.elapsed();
    eprintln!("produce stopped by a second signal in {:.2} s, exit code {code}", took.as_secs_f64());
    assert!(took < HANG, "{took:?}");
    assert_eq!(code, 3, "{}", p.log_text());
    assert!(p.log_text().contains("second signal (SIGINT)"), "{}", p.log_text());
    broker.thaw();
}

#[test]
fn consume_stops_within_the_bound_when_the_broker_froze_mid_batch_and_loses_nothing() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("stop_consume_frozen", &broker.addr);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "1000");
    create_topic(&broker.addr, &env.topic, 3);
    let mut positions =
        common::volume::produce_paced(&broker.addr, &env.topic, 0..5_000, 5_000, Duration::ZERO)
            .join()
            .unwrap();
    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(60), "a first commit", || common::lake::committed_total(&env) > 0);
    broker.freeze();
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = stop_timed(&mut c, "consume with the broker frozen");
    assert!(code == 0 || code == 3, "exit {code}:\n{}", c.log_text());
    broker.thaw();
    positions.extend(
        common::volume::produce_paced(&broker.addr, &env.topic, 5_000..6_000, 1_000, Duration::ZERO)
            .join()
            .unwrap(),
    );
    let mut again = env.spawn(&["consume"]);
    common::lake::wait_committed(&env, &positions, Duration::from_secs(120));
    assert_eq!(again.stop(), 0, "{}", again.log_text());
    common::volume::assert_exactly_once(&env, 6_000, &positions);
}
