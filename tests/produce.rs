//! `orderstream produce` against the real PostgreSQL and broker: exact messages, no loss in the
//! cases the seed's polling loses, no duplicates across restarts, crashes and outages.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions};
use common::proc::{wait_for, wait_until};
use common::proxy::Proxy;
use common::topic::{Record, read_topic};
use common::{Broker, Rng, TestEnv};

const SEED_JSON: &str = r#"{"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}"#;

fn messages(env: &TestEnv) -> Vec<Record> {
    read_topic(&env.brokers, &env.topic)
}

/// Order ids in the topic, with how often each occurs.
fn counts(msgs: &[Record]) -> BTreeMap<i64, usize> {
    let mut c = BTreeMap::new();
    for m in msgs {
        let id: i64 = m.key_str().unwrap().parse().unwrap();
        *c.entry(id).or_default() += 1;
    }
    c
}

/// Waits until the topic holds at least `n` messages and returns them.
fn wait_messages(env: &TestEnv, n: usize, limit: Duration) -> Vec<Record> {
    wait_for(limit, &format!("{n} messages in {}", env.topic), || {
        let m = messages(env);
        (m.len() >= n).then_some(m)
    })
}

/// Every row of the table is in the topic exactly once, and nothing else is.
fn assert_exactly_once(env: &TestEnv, msgs: &[Record]) {
    let counts = counts(msgs);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated order ids: {dups:?}");
    let in_topic: Vec<i64> = counts.keys().copied().collect();
    let in_table = env.table_ids();
    let missing: Vec<_> = in_table.iter().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} orders never published, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(in_topic, in_table);
}

/// Within each partition, sequence numbers only grow.
fn assert_sequences_grow(msgs: &[Record]) {
    let mut last: BTreeMap<i32, u64> = BTreeMap::new();
    let mut sorted: Vec<&Record> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    for m in sorted {
        let seq: u64 = m.header("orderstream.seq").unwrap().parse().unwrap();
        if let Some(prev) = last.insert(m.partition, seq) {
            assert!(seq > prev, "partition {} offset {}: seq {seq} after {prev}", m.partition, m.offset);
        }
    }
}

#[test]
fn seed_orders_are_published_once_with_the_seed_json_and_live_inserts_follow() {
    let env = TestEnv::poll("prod_seed");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_messages(&env, 10, Duration::from_secs(60));
    assert_eq!(msgs.len(), 10);
    let first = msgs.iter().find(|m| m.key_str().as_deref() == Some("101")).unwrap();
    assert_eq!(first.value_str().as_deref(), Some(SEED_JSON));
    assert_eq!(first.header("orderstream.source"), Some(format!("poll:food_delivery_db.{}", env.table)));
    // Every seed row, field by field, against the table.
    for m in &msgs {
        let id: i32 = m.key_str().unwrap().parse().unwrap();
        let row = env
            .pg()
            .query_one(
                &format!(
                    "SELECT customer_name, item, amount::text, to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM {} WHERE order_id = $1",
                    env.t()
                ),
                &[&id],
            )
            .unwrap();
        let v = m.json();
        assert_eq!(v["order_id"], id);
        assert_eq!(v["customer_name"], row.get::<_, String>(0));
        assert_eq!(v["item"], row.get::<_, String>(1));
        let amount: String = row.get(2);
        assert!(m.value_str().unwrap().contains(&format!("\"amount\": {amount},")), "{:?}", m.value_str());
        assert_eq!(v["created_at"], row.get::<_, String>(3));
    }

    // A live insert is published, once.
    let live = env.insert(1)[0];
    let msgs = wait_messages(&env, 11, Duration::from_secs(30));
    assert_eq!(counts(&msgs).get(&live), Some(&1));
    let m = msgs.iter().find(|m| m.key_str() == Some(live.to_string())).unwrap();
    assert!(
        m.value_str().unwrap().contains("\"amount\": 11.25, \"order_status\": \"PLACED\""),
        "{:?}",
        m.value_str()
    );

    // SIGTERM: clean exit, state saved in the seed's format.
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let state = std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap();
    let newest: String = env
        .pg()
        .query_one(
            &format!("SELECT to_char(max(created_at), 'YYYY-MM-DD HH24:MI:SS.US') FROM {}", env.t()),
            &[],
        )
        .unwrap()
        .get(0);
    // The seed's format: seconds, with the microseconds only when there are any.
    let watermark = newest.strip_suffix(".000000").unwrap_or(&newest);
    assert_eq!(state.lines().next(), Some(watermark), "{state}");
    assert!(state.contains(&format!("order_id={live}")), "{state}");

    // A restart publishes nothing again, and then the next insert.
    let mut producer = env.spawn(&["produce"]);
    let next = env.insert(1)[0];
    let msgs = wait_messages(&env, 12, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    let msgs = if msgs.len() == 12 { messages(&env) } else { msgs };
    assert_eq!(msgs.len(), 12, "{:?}", counts(&msgs));
    assert_eq!(counts(&msgs).get(&next), Some(&1));
    assert_exactly_once(&env, &msgs);
    assert_sequences_grow(&msgs);
}

#[test]
fn orders_sharing_one_created_at_are_split_across_polls_without_loss() {
    let mut env = TestEnv::poll("prod_sharedts");
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "3");
    env.init();
    let insert_at = |n: i64| {
        env.pg()
            .execute(
                &format!(
                    "INSERT INTO {} (customer_name, amount, created_at) \
                     SELECT 'same ' || g, 5, '2025-03-01 10:00:00' FROM generate_series(1, $1::int8) g",
                    env.t()
                ),
                &[&n],
            )
            .unwrap();
    };
    insert_at(10);
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 20, Duration::from_secs(60));
    // More orders at the very same created_at, after the watermark reached it.
    insert_at(5);
    let msgs = wait_messages(&env, 25, Duration::from_secs(30));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    assert_exactly_once(&env, &msgs);
    // Pages of at most three.
    let log = producer.log_text();
    let batches: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("rows=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(batches.len() >= 9, "{log}");
    assert!(batches.iter().all(|n| *n <= 3), "{batches:?}");
}

/// A connection whose open transaction inserted one order (returned), left open for 800 ms
/// so that later orders are published past its `created_at`; `COMMIT` on it finishes it.
fn insert_and_stay_open(env: &TestEnv) -> (postgres::Client, i64) {
    let mut slow = env.pg();
    slow.batch_execute("BEGIN").unwrap();
    let sql = format!(
        "INSERT INTO {} (customer_name, amount) VALUES ('slow', 7) RETURNING order_id::int8",
        env.t()
    );
    let late_id: i64 = slow.query_one(&sql, &[]).unwrap().get(0);
    std::thread::sleep(Duration::from_millis(800));
    (slow, late_id)
}

#[test]
fn a_transaction_open_across_polls_is_published_when_it_commits() {
    let env = TestEnv::poll("prod_late");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));

    // Case 1: the transaction inserts first, then stays open while later orders are published.
    let (mut slow, late_id) = insert_and_stay_open(&env);
    let later = env.insert(3);
    let msgs = wait_messages(&env, 13, Duration::from_secs(30));
    let c = counts(&msgs);
    assert!(
        later.iter().all(|id| c.get(id) == Some(&1)),
        "later orders not published while the transaction is open"
    );
    assert!(!c.contains_key(&late_id));
    std::thread::sleep(Duration::from_millis(600));
    slow.batch_execute("COMMIT").unwrap();
    let msgs = wait_messages(&env, 14, Duration::from_secs(30));
    assert_eq!(counts(&msgs).get(&late_id), Some(&1));

    // Case 2: the transaction starts, does nothing across polls, then inserts and commits.
    let mut idle = env.pg();
    let mut tx = idle.transaction().unwrap();
    tx.query_one("SELECT 1", &[]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    env.insert(2);
    wait_messages(&env, 16, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let idle_id: i64 = tx
        .query_one(
            &format!(
                "INSERT INTO {} (customer_name, amount) VALUES ('idle', 8) RETURNING order_id::int8",
                env.t()
            ),
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    let msgs = wait_messages(&env, 17, Duration::from_secs(30));
    assert_eq!(counts(&msgs).get(&idle_id), Some(&1));

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    assert_exactly_once(&env, &messages(&env));
}

/// Issue 9 item 1: a late-committing order published, acknowledged, and then its batch's state
/// save fails (a folder where the producer's temp state file goes, as a full or read-only disk
/// would). Every restarted session recovers the topic's tail: the order must not be published
/// again, while concurrent writers and slow transactions go on.
#[test]
fn a_late_order_whose_state_save_failed_is_not_published_again_by_any_restart() {
    // A memory-storage broker: the stack's durable one is too slow for the writers' pace.
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers("prod_late_save", &broker.addr);
    env.init();
    // Every attempt of an outage, not only its first line (the rest are debug lines).
    let mut cmd = env.orderstream(&["produce"]);
    cmd.env("RUST_LOG", "info,tokio_postgres=warn,orderstream::retry=debug");
    let mut producer = env.spawn_cmd(cmd, "produce");
    wait_messages(&env, 10, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = insert_continuously(&env, stop.clone(), Rng::from_env("late_save").next());

    // A transaction inserts, then stays open while later orders are published past it.
    let (mut slow, late_id) = insert_and_stay_open(&env);
    let later = env.insert(3);
    wait_for(Duration::from_secs(30), "the later orders in the topic", || {
        let c = counts(&messages(&env));
        later.iter().all(|id| c.contains_key(id)).then_some(())
    });

    // From now on every state save fails; then the transaction commits.
    let tmp = env.lastprocess().join(format!("last_timestamp.{}.tmp", producer.pid()));
    std::fs::create_dir_all(&tmp).unwrap();
    slow.batch_execute("COMMIT").unwrap();
    wait_for(Duration::from_secs(30), "the late order in the topic", || {
        counts(&messages(&env)).contains_key(&late_id).then_some(())
    });
    // Let sessions restart on the failed save, each recovering the late order, three times.
    let failed =
        |log: &str| log.lines().filter(|l| l.contains("cannot create") && l.contains("retrying in")).count();
    wait_for(Duration::from_secs(60), "three failed state saves", || {
        (failed(&producer.log_text()) >= 3).then_some(())
    });
    assert_eq!(counts(&messages(&env)).get(&late_id), Some(&1), "the late order was published again");

    std::fs::remove_dir(&tmp).unwrap();
    stop.store(true, Ordering::SeqCst);
    inserter.join().unwrap();
    let total = env.table_ids().len();
    let msgs = wait_messages(&env, total, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let msgs = if msgs.len() == total { messages(&env) } else { msgs };
    assert_exactly_once(&env, &msgs);
    assert_sequences_grow(&msgs);
}

#[test]
fn a_large_backlog_is_read_in_bounded_pages() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("prod_backlog", &broker.addr);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "20000");
    env.init();
    env.insert(200_000);
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_messages(&env, 200_010, Duration::from_secs(300));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    assert_exactly_once(&env, &msgs);
    // Memory is a benchmark's figure (peak RSS in `cargo bench --bench produce`), not a bound here.
    let log = producer.log_text();
    assert!(log.lines().filter(|l| l.contains("rows=20000")).count() >= 9, "{log}");
}

/// Inserts orders until stopped: single rows, small batches and slow transactions.
fn insert_continuously(env: &TestEnv, stop: Arc<AtomicBool>, seed: u64) -> std::thread::JoinHandle<usize> {
    let table = env.t();
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut client = common::pg();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            match rng.range(0, 10) {
                0 => {
                    // A transaction that stays open a while.
                    let mut tx = client.transaction().unwrap();
                    tx.execute(
                        &format!("INSERT INTO {table} (customer_name, amount) VALUES ('slow', 3)"),
                        &[],
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_millis(rng.range(100, 700)));
                    tx.commit().unwrap();
                    n += 1;
                }
                1..=3 => {
                    let k = rng.range(2, 50) as i64;
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {table} (customer_name, amount) SELECT 'batch', 4 FROM generate_series(1, $1::int8)"
                            ),
                            &[&k],
                        )
                        .unwrap();
                    n += k as usize;
                }
                _ => {
                    client
                        .execute(
                            &format!("INSERT INTO {table} (customer_name, amount) VALUES ('one', 5)"),
                            &[],
                        )
                        .unwrap();
                    n += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 15)));
        }
        n
    })
}

/// Lets the producer publish everything in the table, then stops it cleanly.
fn drain(env: &TestEnv) -> Vec<Record> {
    let mut producer = env.spawn(&["produce"]);
    let total = env.table_ids().len();
    let msgs = wait_messages(env, total, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    if msgs.len() == total { messages(env) } else { msgs }
}

#[test]
fn crash_loop_publishes_every_order_exactly_once() {
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers("prod_crash", &broker.addr);
    env.init();
    let mut rng = Rng::from_env("crash_loop_publishes_every_order_exactly_once");
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = insert_continuously(&env, stop.clone(), rng.next());
    for round in 0..24 {
        let mut producer = env.spawn(&["produce"]);
        std::thread::sleep(Duration::from_millis(rng.range(300, 3000)));
        assert!(producer.running(), "round {round}: producer exited early:\n{}", producer.log_text());
        if rng.range(0, 3) == 0 {
            // Kill it while a batch waits for the broker, then let the broker take what the dead
            // process had sent: a batch published but never saved. The kill waits until the
            // producer says it waits for acknowledgements (a batch is sent), so every such round
            // leaves a batch to recover, whatever the timing (once past its recovery, which
            // reads the topic and would just wait for the broker).
            wait_until(Duration::from_secs(30), "the producer past its recovery", || {
                producer.log_text().contains("batch published")
            });
            broker.freeze();
            let waiting = |p: &common::proc::Proc| {
                p.log_text().matches("waiting for the broker to acknowledge").count()
            };
            let before = waiting(&producer);
            wait_until(Duration::from_secs(30), "a batch waiting for the frozen broker", || {
                waiting(&producer) > before
            });
            std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
            producer.kill();
            std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
            broker.thaw();
        } else {
            // Kill it at any moment: start-up, recovery, a poll, a publish or a save.
            producer.kill();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let inserted = inserter.join().unwrap();
    assert!(inserted > 100, "only {inserted} orders inserted");
    let msgs = drain(&env);
    assert_exactly_once(&env, &msgs);
    assert_sequences_grow(&msgs);
    // The test proves something only if some restart found a published, unsaved batch.
    let log = env.logs("produce");
    let recovered = log.lines().filter(|l| l.contains("recovery:") && !l.contains(" 0 orders of")).count();
    eprintln!("{recovered} restarts recovered orders of an unsaved batch");
    assert!(
        recovered >= 1,
        "no restart had an unsaved batch to recover; the crash loop did not test recovery"
    );
}

#[test]
fn a_frozen_broker_delays_but_loses_and_duplicates_nothing() {
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers("prod_freeze", &broker.addr);
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = insert_continuously(&env, stop.clone(), 7);
    std::thread::sleep(Duration::from_millis(500));
    broker.freeze();
    // Several intervals (0.2 s each) without a broker.
    std::thread::sleep(Duration::from_secs(3));
    broker.thaw();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    inserter.join().unwrap();
    let total = env.table_ids().len();
    let msgs = wait_messages(&env, total, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    assert_exactly_once(&env, &if msgs.len() == total { messages(&env) } else { msgs });
    // One outage, a few lines: not one per reconnect attempt.
    let log = producer.log_text();
    let warnings = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    assert!(warnings <= 10, "{warnings} warning lines for a 3 s outage:\n{log}");
}

#[test]
fn a_broker_unresponsive_at_start_is_waited_for() {
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers("prod_nobroker", &broker.addr);
    env.init();
    broker.freeze();
    let mut producer = env.spawn(&["produce"]);
    // Metadata requests time out after 10 s; wait for the first retry line.
    wait_for(Duration::from_secs(30), "a retry line", || {
        producer.log_text().contains("retrying in").then_some(())
    });
    assert!(producer.running(), "{}", producer.log_text());
    broker.thaw();
    let msgs = wait_messages(&env, 10, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    assert_exactly_once(&env, &messages(&env));
    assert_eq!(msgs.len(), 10);
}

#[test]
fn a_postgres_outage_at_start_and_mid_run_is_retried_without_loss() {
    let mut env = TestEnv::poll("prod_pgdown");
    env.init();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", common::pg_port()));
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db", proxy.port),
    );

    // Down at start.
    proxy.down();
    // Every attempt of an outage, not only its first line (the rest are debug lines).
    let mut cmd = env.orderstream(&["produce"]);
    cmd.env("RUST_LOG", "info,tokio_postgres=warn,orderstream::retry=debug");
    let mut producer = env.spawn_cmd(cmd, "produce");
    wait_for(Duration::from_secs(30), "two retry lines", || {
        (producer.log_text().matches("retrying in").count() >= 2).then_some(())
    });
    let log = producer.log_text();
    assert!(
        log.lines().any(|l| l.contains("cannot connect to 127.0.0.1") && l.contains("retrying in")),
        "{log}"
    );
    proxy.up();
    wait_messages(&env, 10, Duration::from_secs(60));

    // Down mid-run, while orders keep arriving.
    proxy.down();
    env.insert(5);
    std::thread::sleep(Duration::from_secs(2));
    env.insert(5);
    proxy.up();
    let msgs = wait_messages(&env, 20, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
    assert_exactly_once(&env, &if msgs.len() == 20 { messages(&env) } else { msgs });
}

#[test]
fn a_missing_table_or_wrong_column_type_stops_with_exit_1() {
    let env = TestEnv::poll("prod_badtable");
    env.init();
    env.pg().execute(&format!("DROP TABLE {}", env.t()), &[]).unwrap();
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert_eq!(
        last,
        format!("orderstream: PostgreSQL: table {} does not exist (run `orderstream init`)", env.table),
        "{err}"
    );

    env.pg()
        .batch_execute(&format!(
            "CREATE TABLE {} (order_id serial PRIMARY KEY, customer_name text, restaurant_name text, item text, \
             amount float8, order_status text, created_at timestamp)",
            env.t()
        ))
        .unwrap();
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().last().unwrap().ends_with(&format!(
            "table {}: column amount is double precision, expected numeric(10,2)",
            env.table
        )),
        "{err}"
    );
}

/// Issue 9 item 6: the poll mode refuses what it would lose orders on, before anything starts.
#[test]
fn polling_refuses_a_nullable_created_at_and_a_hot_standby() {
    let env = TestEnv::poll("prod_nullable");
    env.init();
    env.pg()
        .batch_execute(&format!("ALTER TABLE {} ALTER COLUMN created_at DROP NOT NULL", env.t()))
        .unwrap();
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.lines().last().unwrap(),
        format!(
            "orderstream: PostgreSQL: table {t}: column created_at is nullable, and polling never reads a row \
             whose created_at is NULL (lost); run ALTER TABLE \"{t}\" ALTER COLUMN created_at SET NOT NULL, or set \
             postgres.capture: logical",
            t = env.table
        ),
        "{err}"
    );

    // A standby: a private cluster started with standby.signal and no primary (it accepts
    // read-only connections once consistent, which a cleanly stopped initdb cluster is at once).
    let standby = Cluster::start_with(&ClusterOptions::default(), |data| {
        std::fs::write(data.join("standby.signal"), "").unwrap();
    });
    let mut env = TestEnv::poll("prod_standby");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/postgres", standby.port),
    );
    env.set("ORDERSTREAM__POSTGRES__USER", "postgres");
    // `init` cannot create the table on a standby; the topic is made directly.
    common::lake::create_topic(&env.brokers, &env.topic, 3);
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.lines().last().unwrap(),
        "orderstream: PostgreSQL: the server is a hot standby (pg_is_in_recovery() is true): polling it loses \
         orders, since its pg_stat_activity does not list the primary's open transactions, whose rows can commit \
         below the watermark; point postgres.jdbc_url at the primary, or set postgres.capture: logical",
        "{err}\n{}",
        standby.log()
    );
}

#[test]
fn a_corrupt_state_file_is_an_error_not_a_restart_from_zero() {
    let env = TestEnv::poll("prod_corrupt");
    env.init();
    let path = env.lastprocess().join("last_timestamp.txt");
    std::fs::create_dir_all(env.lastprocess()).unwrap();
    std::fs::write(&path, "not a timestamp\n").unwrap();
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.contains(&format!("{}: corrupt producer state (line 1:", path.display())), "{err}");
    assert!(messages(&env).is_empty());
}

#[test]
fn a_second_producer_on_the_same_table_and_topic_is_refused_naming_the_holder() {
    let env = TestEnv::poll("prod_twice");
    env.init();
    let mut first = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));
    let (code, _, err) = env.run(&["run"]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "orderstream: PostgreSQL: table {} is already captured into this topic by PID ",
            env.table
        )) && line.ends_with("one producer per table and topic"),
        "{err}"
    );
    // The PID named is the first producer's database session.
    let pid: i32 = line.split("by PID ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let app: String = env
        .pg()
        .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0);
    assert_eq!(app, "orderstream");
    assert!(first.running());
    env.insert(1);
    wait_messages(&env, 11, Duration::from_secs(30));
    assert_eq!(first.terminate(Duration::from_secs(30)), 0);
    assert_eq!(messages(&env).len(), 11, "nothing published twice");
}

#[test]
fn orders_with_an_infinite_created_at_are_skipped_with_a_warning_and_the_rest_flows() {
    let env = TestEnv::poll("prod_infinite");
    env.init();
    env.pg()
        .batch_execute(&format!(
            "INSERT INTO {t} (order_id, customer_name, amount, created_at) VALUES (700, 'later', 5, 'infinity'), \
             (701, 'earlier', 6, '-infinity')",
            t = env.t()
        ))
        .unwrap();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));
    let ids = env.insert(2);
    let msgs = wait_messages(&env, 12, Duration::from_secs(60));
    let keys: Vec<String> = msgs.iter().filter_map(|m| m.key_str()).collect();
    assert!(ids.iter().all(|i| keys.contains(&i.to_string())), "{keys:?}");
    assert!(!keys.iter().any(|k| k == "700" || k == "701"), "{keys:?}");
    assert!(
        producer.log_text().contains(
            "orders 700, 701 have a created_at of infinity, -infinity or beyond the year 9999, which has no place \
             in watermark order: polling does not publish them"
        ),
        "{}",
        producer.log_text()
    );
    let counts = counts(&msgs);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let expected: Vec<i64> = env.table_ids().into_iter().filter(|i| *i != 700 && *i != 701).collect();
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}

/// Issue 21 item 3, poll mode: a BC `created_at` has its place in watermark order (before every
/// other), so it becomes a dead letter in its turn (reason `unencodable`, the raw value); a year
/// beyond 9999 is never reached by the watermark, so it is named like `infinity`. The rest flows.
#[test]
fn a_bc_created_at_is_dead_lettered_and_one_beyond_9999_named_while_the_rest_flows() {
    let env = TestEnv::poll("prod_bcdate");
    env.init();
    env.pg()
        .batch_execute(&format!(
            "INSERT INTO {t} (order_id, customer_name, amount, created_at) VALUES (700, 'later', 5, '12345-06-07'), \
             (701, 'earlier', 6, '0044-03-15 12:00:00 BC')",
            t = env.t()
        ))
        .unwrap();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));
    let ids = env.insert(2);
    let msgs = wait_messages(&env, 12, Duration::from_secs(60));
    let counts = counts(&msgs);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let expected: Vec<i64> = env.table_ids().into_iter().filter(|i| *i != 700 && *i != 701).collect();
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    assert!(ids.iter().all(|i| counts.contains_key(i)), "{counts:?}");
    let dlq = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
    let got: Vec<[Option<String>; 4]> = dlq
        .iter()
        .map(|d| {
            [
                d.key_str(),
                d.header("orderstream.reject.reason"),
                d.header("orderstream.reject.detail"),
                d.json()["created_at"].as_str().map(str::to_string),
            ]
        })
        .collect();
    let want = [
        "701",
        "unencodable",
        "order 701: created_at `0044-03-15 12:00:00 BC` is not a time a message can carry",
        "0044-03-15 12:00:00 BC",
    ];
    assert_eq!(got, [want.map(|s| Some(s.to_string()))]);
    assert!(
        producer.log_text().contains(
            "orders 700 have a created_at of infinity, -infinity or beyond the year 9999, which has no place \
             in watermark order"
        ),
        "{}",
        producer.log_text()
    );
    // A restart (the BC watermark read back from the state file) publishes nothing twice.
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let mut producer = env.spawn(&["produce"]);
    let more = env.insert(1);
    let msgs = wait_messages(&env, 13, Duration::from_secs(60));
    let counts = self::counts(&msgs);
    assert!(more.iter().all(|i| counts.contains_key(i)), "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(read_topic(&env.brokers, &format!("{}_dlq", env.topic)).len(), 1);
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}

#[test]
fn a_state_file_of_another_table_topic_or_cluster_is_refused_naming_both() {
    let mut env = TestEnv::poll("prod_owner");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10, Duration::from_secs(60));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let state = std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap();
    let owner = format!("poll:food_delivery_db.{} -> {}", env.table, env.topic);
    assert!(state.contains(&format!("for={owner} @ ")), "{state}");

    // The same state, another topic: refused, nothing published there.
    env.set("ORDERSTREAM__KAFKA__TOPIC", &format!("{}_other", env.topic));
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("this state belongs to {owner} @ "))
            && err.contains(&format!(
                "but this configuration is poll:food_delivery_db.{} -> {}_other",
                env.table, env.topic
            ))
            && err.contains("remove the file to start over"),
        "{err}"
    );

    // The same state and topic name on another cluster: refused too.
    let broker = Broker::start_memory();
    env.set("ORDERSTREAM__KAFKA__TOPIC", &env.topic.clone());
    env.set("ORDERSTREAM__KAFKA__BROKERS", &broker.addr);
    common::lake::create_topic(&broker.addr, &env.topic, 3);
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("but this configuration is {owner} @ ")), "{err}");
    assert!(read_topic(&broker.addr, &env.topic).is_empty(), "nothing published on the other cluster");
}

/// The value of one metric on `/metrics`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let (code, body) = common::http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Issue 9 item 6: rows committed below the watermark after it passed them are lost to polling
/// by design; a reconciliation counts and names them (`/metrics`, a warning, `status`), keeps
/// counting them after a restart, and does not count a late transaction's rows, which polling
/// still picks up.
#[test]
fn orders_committed_below_the_watermark_are_counted_and_named_as_unpublished() {
    const GAUGE: &str = "orderstream_producer_unpublished_below_watermark";
    let mut env = TestEnv::poll("prod_reconcile");
    env.set("ORDERSTREAM__POSTGRES__RECONCILE_INTERVAL", "0.3");
    env.init();
    let (mut producer, port) = env.spawn_serving(&["produce"]);
    env.insert(2);
    wait_messages(&env, 12, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the gauge at 0", || metric(port, GAUGE) == Some(0.0));

    // A late transaction: open while later orders pass the watermark, then committed. Polling
    // publishes it; it is never counted as lost.
    let (mut slow, late_id) = insert_and_stay_open(&env);
    env.insert(1);
    wait_messages(&env, 13, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    slow.batch_execute("COMMIT").unwrap();
    wait_messages(&env, 14, Duration::from_secs(30));

    // Two orders committed below the watermark: an explicit past created_at, and the seed's
    // insert path (CURRENT_TIMESTAMP) from a session in New York, five hours behind UTC.
    // One transaction, so that no reconciliation sees one without the other.
    let mut pg = env.pg();
    let mut tx = pg.transaction().unwrap();
    tx.batch_execute("SET LOCAL TIME ZONE 'America/New_York'").unwrap();
    let mut insert = |name: &str, created_at: &str| -> i64 {
        let sql = format!(
            "INSERT INTO {} (customer_name, amount, created_at) VALUES ('{name}', 5, {created_at}) RETURNING order_id::int8",
            env.t()
        );
        tx.query_one(&sql, &[]).unwrap().get(0)
    };
    let past = insert("backfill", "'2025-01-01 10:00:00'");
    let ny = insert("new york", "CURRENT_TIMESTAMP");
    tx.commit().unwrap();
    let (first, second) = (past.min(ny), past.max(ny));
    wait_until(Duration::from_secs(30), "the gauge at 2", || metric(port, GAUGE) == Some(2.0));
    let warning = format!(
        "2 orders at or below the watermark were never published (order_id {first}, {second}): each committed \
         with a created_at the watermark had already passed"
    );
    assert!(producer.log_text().contains(&warning), "{}", producer.log_text());
    // Each count was reported once, as it changed: only the two lost orders were ever named.
    let named: Vec<String> = producer
        .log_text()
        .lines()
        .filter_map(|l| {
            l.split_once("never published (order_id ")?.1.split_once(')').map(|(ids, _)| ids.to_string())
        })
        .collect();
    assert_eq!(named, [format!("{first}, {second}")], "late order {late_id}: {}", producer.log_text());
    assert!(!counts(&messages(&env)).contains_key(&past));

    // `status` counts them itself, from the state file and the table.
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 1, "the consumer is not running: {err}");
    assert!(
        out.contains(&format!("unpublished below watermark 2 (order_id {first}, {second}): lost to polling")),
        "{out}"
    );
    let (code, json, err) = env.run(&["status", "--json"]);
    assert_eq!(code, 1, "the consumer is not running: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["producer"]["unpublished_below_watermark"], 2, "{json}");
    assert_eq!(v["producer"]["unpublished_order_ids"], serde_json::json!([first, second]), "{json}");

    // The published ids are saved: a restarted producer counts the same two.
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let (mut producer, port) = env.spawn_serving(&["produce"]);
    wait_until(Duration::from_secs(30), "the gauge at 2 again", || metric(port, GAUGE) == Some(2.0));
    assert!(producer.log_text().contains(&warning), "{}", producer.log_text());
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());

    // A state without the published ids (the seed's one-line file) adopts the rows then at or
    // below its watermark as published.
    let state = env.lastprocess().join("last_timestamp.txt");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.lines().any(|l| l.starts_with("published=")), "{text}");
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("published=")).collect();
    std::fs::write(&state, kept.join("\n") + "\n").unwrap();
    let (mut producer, port) = env.spawn_serving(&["produce"]);
    wait_until(Duration::from_secs(30), "the adoption", || {
        producer.log_text().contains("count as published")
    });
    // Reconciliations from then on count none (all of them, the lost two too, were adopted).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(metric(port, GAUGE), Some(0.0));
    assert!(!producer.log_text().contains("never published"), "{}", producer.log_text());
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.lines().any(|l| l.starts_with("published=")), "{text}");
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}
