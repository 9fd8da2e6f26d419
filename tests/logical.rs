//! Log-based capture (`postgres.capture: logical`, the default) against the real PostgreSQL and
//! broker: snapshot reads, inserts, updates and deletes with their headers; every change once
//! across crashes; the faults that must stop the producer with one clear line.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions};
use common::lake::{LakeRow, current_state_duckdb, duckdb_query, read_duckdb};
use common::proc::{wait_for, wait_until};
use common::proxy::Proxy;
use common::topic::{Record, read_topic};
use common::{Broker, Rng, TestEnv};

const SEED_JSON: &str = r#"{"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}"#;

/// A message's position: (commit LSN as a number, change index, tombstone).
fn position(m: &Record) -> (u64, i32, bool) {
    let lsn = m.header("orderstream.lsn").unwrap_or_else(|| panic!("no lsn header: {m:?}"));
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let index: i32 = m.header("orderstream.change_index").unwrap().parse().unwrap();
    (lsn, index, m.header("orderstream.tombstone").as_deref() == Some("1"))
}

/// Every message of the test's topic in log order.
fn changes(env: &TestEnv) -> Vec<Record> {
    let mut msgs = read_topic(&env.brokers, &env.topic);
    msgs.sort_by_key(position);
    msgs
}

fn wait_changes(env: &TestEnv, n: usize, limit: Duration) -> Vec<Record> {
    wait_for(limit, &format!("{n} messages in {}", env.topic), || {
        let m = changes(env);
        (m.len() >= n).then_some(m)
    })
}

/// The latest version of every order in the topic, deletes removed: what the table must hold.
fn current_state(msgs: &[Record]) -> BTreeMap<i64, String> {
    let mut state = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.value.is_some()) {
        let id: i64 = m.key_str().unwrap().parse().unwrap();
        match m.header("orderstream.op").as_deref() {
            Some("d") => state.remove(&id),
            _ => state.insert(id, m.value_str().unwrap()),
        };
    }
    state
}

/// The table, one comparable line per order: every seed column as PostgreSQL renders it.
fn table_state(env: &TestEnv) -> BTreeMap<i64, String> {
    let sql = format!(
        "SELECT order_id::int8, customer_name::text, restaurant_name::text, item::text, amount::text, \
         order_status::text, to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM {}",
        env.t()
    );
    let text = |r: &postgres::Row, i: usize| format!("{:?}", r.get::<_, Option<String>>(i));
    env.pg()
        .query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            let line = (1..7).map(|i| text(r, i)).collect::<Vec<_>>().join("|");
            (r.get(0), line)
        })
        .collect()
}

/// The topic's current state in the same form as [`table_state`].
fn topic_state(msgs: &[Record]) -> BTreeMap<i64, String> {
    current_state(msgs)
        .into_iter()
        .map(|(id, json)| {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let text = |k: &str| format!("{:?}", v[k].as_str().map(str::to_string));
            // The amount as written (both decimals), not as a float.
            let amount = json.split("\"amount\": ").nth(1).and_then(|r| r.split(',').next()).unwrap();
            let amount = format!("{:?}", (amount != "null").then(|| amount.to_string()));
            let ts = v["created_at"].as_str().unwrap().trim_end_matches('Z');
            let ts = if ts.contains('.') { ts.to_string() } else { format!("{ts}.000000") };
            let line = [
                text("customer_name"),
                text("restaurant_name"),
                text("item"),
                amount,
                text("order_status"),
                format!("{:?}", Some(ts)),
            ]
            .join("|");
            (id, line)
        })
        .collect()
}

/// No two messages share a position, and sequence numbers grow within each partition.
fn assert_each_change_once(msgs: &[Record]) {
    let mut seen = BTreeSet::new();
    for m in msgs {
        assert!(seen.insert(position(m)), "position {:?} twice (key {:?})", position(m), m.key_str());
    }
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for m in msgs {
        by_partition.entry(m.partition).or_default().push(m);
    }
    for (p, mut list) in by_partition {
        list.sort_by_key(|m| m.offset);
        let seqs: Vec<u64> =
            list.iter().map(|m| m.header("orderstream.seq").unwrap().parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "partition {p}: sequence numbers do not grow");
    }
}

#[test]
fn seed_rows_are_snapshot_reads_and_every_change_follows_with_its_op() {
    let env = TestEnv::logical("lg_ops");
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "publication {} for table {} created; replica identity full",
            env.slot(),
            env.table
        )),
        "{out}"
    );
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_changes(&env, 10, Duration::from_secs(60));
    assert_eq!(msgs.len(), 10);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.header("orderstream.op").as_deref(), Some("r"));
        assert_eq!(m.key_str(), Some((101 + i).to_string()));
        assert_eq!(position(m).1, i as i32, "snapshot rows are indexed in order_id order");
    }
    assert_eq!(msgs[0].value_str().as_deref(), Some(SEED_JSON));
    assert_eq!(msgs[0].header("orderstream.source"), Some(format!("logical:food_delivery_db.{}", env.table)));
    let snapshot_lsn = position(&msgs[0]).0;

    let t = env.t();
    let mut pg = env.pg();
    pg.batch_execute(&format!("UPDATE {t} SET order_status = 'DELIVERED' WHERE order_id = 101")).unwrap();
    pg.batch_execute(&format!("DELETE FROM {t} WHERE order_id = 102")).unwrap();
    for zone in ["America/New_York", "Asia/Kolkata"] {
        pg.batch_execute(&format!(
            "SET TIME ZONE '{zone}'; INSERT INTO {t} (customer_name, amount, created_at) VALUES ('{zone}', 12.50, CURRENT_TIMESTAMP); RESET TIME ZONE"
        ))
        .unwrap();
    }
    pg.batch_execute(&format!(
        "INSERT INTO {t} (customer_name, amount, created_at) VALUES ('Backfill', 7.25, '2020-02-02 02:02:02')"
    ))
    .unwrap();
    let gid = format!("gid_{}", env.name);
    pg.batch_execute(&format!(
        "BEGIN; INSERT INTO {t} (customer_name, amount) VALUES ('Two phase', 3.00); PREPARE TRANSACTION '{gid}'"
    ))
    .unwrap();
    pg.batch_execute(&format!("COMMIT PREPARED '{gid}'")).unwrap();
    pg.batch_execute(&format!(
        "BEGIN; INSERT INTO {t} (customer_name, amount) VALUES ('Multi a', 1.00), ('Multi b', 2.00); \
         UPDATE {t} SET order_status = 'CANCELLED' WHERE customer_name = 'Multi a'; COMMIT"
    ))
    .unwrap();

    // 10 reads, 1 update, a delete and its tombstone, 4 single inserts, 3 changes in one transaction.
    let msgs = wait_changes(&env, 20, Duration::from_secs(30));
    assert_eq!(
        msgs.len(),
        20,
        "{:#?}",
        msgs.iter().map(|m| (m.key_str(), m.header("orderstream.op"))).collect::<Vec<_>>()
    );
    assert_each_change_once(&msgs);
    let live = &msgs[10..];
    assert!(live.iter().all(|m| position(m).0 > snapshot_lsn), "streamed changes follow the snapshot");
    let ops: Vec<String> = live.iter().map(|m| m.header("orderstream.op").unwrap()).collect();
    assert_eq!(ops, ["u", "d", "d", "c", "c", "c", "c", "c", "c", "u"]);

    assert_eq!(live[0].value_str().unwrap(), SEED_JSON.replace("PLACED", "DELIVERED"));
    assert_eq!(
        live[1].value_str().unwrap(),
        r#"{"order_id": 102, "customer_name": "Priya Sharma", "restaurant_name": "Spice Route", "item": "Paneer Tikka", "amount": 340.50, "order_status": "PLACED", "created_at": "2025-01-18T12:25:00Z"}"#
    );
    assert_eq!(
        (live[2].key_str().as_deref(), live[2].value.as_ref()),
        (Some("102"), None),
        "tombstone after the delete"
    );
    assert_eq!(position(&live[2]), (position(&live[1]).0, position(&live[1]).1, true));
    let names: Vec<String> =
        live[3..].iter().map(|m| m.json()["customer_name"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        ["America/New_York", "Asia/Kolkata", "Backfill", "Two phase", "Multi a", "Multi b", "Multi a"]
    );
    assert!(live[5].value_str().unwrap().contains(r#""created_at": "2020-02-02T02:02:02Z""#));
    // One transaction: one LSN, indexes 0, 1, 2.
    let multi: Vec<(u64, i32, bool)> = live[7..].iter().map(position).collect();
    assert_eq!(multi.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(multi.iter().all(|p| p.0 == multi[0].0));
    assert!(live[9].value_str().unwrap().contains("\"order_status\": \"CANCELLED\""));
    for m in &msgs {
        let ts = m.header("orderstream.commit_ts").unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(&ts).is_ok() && ts.ends_with('Z'), "{ts}");
    }
    assert_eq!(topic_state(&msgs), table_state(&env));

    // A clean stop and a restart publish nothing again; the next change follows.
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let state = std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap();
    assert!(state.starts_with("logical last="), "{state}");
    assert!(state.contains("snapshot=done"), "{state}");
    let mut producer = env.spawn(&["produce"]);
    pg.batch_execute(&format!("UPDATE {t} SET amount = 99.99 WHERE order_id = 103")).unwrap();
    let msgs = wait_changes(&env, 21, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let msgs = if msgs.len() == 21 { changes(&env) } else { msgs };
    assert_eq!(msgs.len(), 21);
    assert_each_change_once(&msgs);
    assert_eq!(topic_state(&msgs), table_state(&env));
}

/// Writes a mix of changes until `stop`: single-row inserts, updates and deletes, and
/// multi-row transactions. Returns how many row changes it committed.
fn write_mix(
    env: &TestEnv,
    stop: Arc<AtomicBool>,
    seed: u64,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let t = env.t();
    let mut pg = env.pg();
    std::thread::spawn(move || {
        let mut rng = Rng(seed.max(1));
        while !stop.load(Ordering::SeqCst) {
            let n = match rng.below(5) {
                0 | 1 => pg
                    .execute(&format!("INSERT INTO {t} (customer_name, amount) VALUES ('mix', 5.00)"), &[])
                    .unwrap(),
                2 => pg
                    .execute(
                        &format!(
                            "UPDATE {t} SET order_status = 'CONFIRMED', amount = amount + 1 WHERE order_id = \
                             (SELECT order_id FROM {t} ORDER BY random() LIMIT 1)"
                        ),
                        &[],
                    )
                    .unwrap(),
                3 => pg
                    .execute(
                        &format!("DELETE FROM {t} WHERE order_id = (SELECT order_id FROM {t} ORDER BY random() LIMIT 1)"),
                        &[],
                    )
                    .unwrap(),
                _ => {
                    let mut tx = pg.transaction().unwrap();
                    let a = tx
                        .execute(&format!("INSERT INTO {t} (customer_name, amount) SELECT 'multi', 2.00 FROM generate_series(1, 5)"), &[])
                        .unwrap();
                    let b = tx
                        .execute(&format!("UPDATE {t} SET order_status = 'PREPARING' WHERE customer_name = 'multi' AND order_status = 'PLACED'"), &[])
                        .unwrap();
                    tx.commit().unwrap();
                    a + b
                }
            };
            done.fetch_add(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(rng.range(1, 15)));
        }
    })
}

#[test]
fn crash_loop_publishes_every_change_exactly_once() {
    // The stack's kind of broker (PostgreSQL storage), the one users run the pipeline on.
    let broker = Broker::start_postgres();
    let mut env = TestEnv::logical("lg_crash");
    env.brokers = broker.addr.clone();
    env.write_config("");
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "2000");
    env.init();
    // The producer reaches PostgreSQL through a proxy: taking it down cuts every connection
    // and refuses new ones, as a PostgreSQL restart does, without disturbing the other tests.
    let proxy = Proxy::start(&format!("127.0.0.1:{}", common::pg_port()));
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db", proxy.port),
    );
    let mut rng = Rng::from_env("crash_loop_publishes_every_change_exactly_once");
    // The snapshot first (its rows are reads, one per row, not one per change), then the writers.
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    producer.kill();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2).map(|_| write_mix(&env, stop.clone(), rng.next(), done.clone())).collect();
    let t = env.t();
    for round in 0..22 {
        let mut producer = env.spawn(&["produce"]);
        if round == 5 {
            // One large transaction, published in many batches: killed somewhere inside it.
            let n = env
                .pg()
                .execute(
                    &format!("INSERT INTO {t} (customer_name, amount) SELECT 'bulk', 1.50 FROM generate_series(1, 100000)"),
                    &[],
                )
                .unwrap();
            done.fetch_add(n, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(rng.range(300, 2500)));
        if round == 15 {
            // PostgreSQL "restarts" under a running producer (in the middle of whatever it
            // was reading): it retries with backoff and resumes from its saved state.
            proxy.down();
            std::thread::sleep(Duration::from_millis(rng.range(1000, 3000)));
            proxy.up();
            std::thread::sleep(Duration::from_millis(rng.range(500, 2000)));
        }
        if round == 11 {
            // The replication connection is cut under the producer: it reconnects by itself.
            env.pg()
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&env.slot()],
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.range(500, 1500)));
        }
        assert!(producer.running(), "round {round}: producer exited early:\n{}", producer.log_text());
        if rng.below(3) == 0 {
            broker.freeze();
            std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
            producer.kill();
            std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
            broker.thaw();
        } else {
            producer.kill();
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let expected = 10 + done.load(Ordering::SeqCst) as usize;
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_for(Duration::from_secs(180), "the topic's state equal to the table", || {
        let m = changes(&env);
        (topic_state(&m) == table_state(&env)).then_some(m)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    let msgs = if msgs.len() == changes(&env).len() { msgs } else { changes(&env) };
    assert_each_change_once(&msgs);
    let rows = msgs.iter().filter(|m| m.value.is_some()).count();
    let deletes = msgs
        .iter()
        .filter(|m| m.header("orderstream.op").as_deref() == Some("d") && m.value.is_some())
        .count();
    if rows != expected {
        // Where the missing changes were: transactions whose indexes have gaps.
        let mut by_lsn: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
        for m in msgs.iter().filter(|m| m.value.is_some()) {
            let (lsn, i, _) = position(m);
            by_lsn.entry(lsn).or_default().insert(i);
        }
        let gaps: Vec<String> = by_lsn
            .iter()
            .filter(|(_, ix)| ix.iter().next_back().map_or(0, |l| *l as usize + 1) != ix.len())
            .map(|(l, ix)| format!("{l:X}: {} of 0..={}", ix.len(), ix.iter().next_back().unwrap()))
            .collect();
        eprintln!("{} transactions in the topic; with gaps: {gaps:?}", by_lsn.len());
    }
    assert_eq!(rows, expected, "every committed row change once (plus the 10 snapshot reads)");
    assert_eq!(msgs.len() - rows, deletes, "one tombstone per delete");
    let log = env.logs("produce");
    let recovered = log.lines().filter(|l| l.contains("recovery:") && !l.contains(" 0 orders of")).count();
    eprintln!("{expected} changes; {recovered} restarts found messages of an unsaved batch");
    assert!(
        recovered >= 1,
        "no restart had an unsaved batch to recover; the crash loop did not test recovery"
    );
    assert!(log.contains("retrying in"), "the PostgreSQL outage was not noticed");

    // The lake, read by DuckDB: every change once, and its current state is the table.
    let mut consumer = env.spawn(&["consume"]);
    let lake = wait_for(Duration::from_secs(180), "every change in the lake", || {
        let read = read_duckdb(&env.lake());
        (read.rows.len() >= rows).then_some(read.rows)
    });
    assert_eq!(consumer.terminate(Duration::from_secs(30)), 0, "{}", consumer.log_text());
    assert_eq!(lake.len(), rows);
    assert_eq!(lake_state(&lake), table_state(&env));
}

/// The current state of every order in lake rows (latest by lsn and change index, deletes
/// removed), in the form of [`table_state`].
fn lake_state(rows: &[LakeRow]) -> BTreeMap<i64, String> {
    let mut sorted: Vec<&LakeRow> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.lsn, r.change_index));
    let mut state = BTreeMap::new();
    for r in sorted {
        if r.op == "d" {
            state.remove(&r.order_id);
            continue;
        }
        let ts = r.created_at.trim_end_matches('Z').to_string();
        let amount = (r.amount != "None").then(|| r.amount.clone());
        let line = [
            format!("{:?}", r.customer_name),
            format!("{:?}", r.restaurant_name),
            format!("{:?}", r.item),
            format!("{amount:?}"),
            format!("{:?}", r.order_status),
            format!("{:?}", Some(ts)),
        ]
        .join("|");
        state.insert(r.order_id, line);
    }
    state
}

#[test]
fn a_second_producer_on_the_slot_is_refused_naming_the_holder() {
    let env = TestEnv::logical("lg_two");
    env.init();
    let mut first = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    let holder = wait_for(Duration::from_secs(30), "the slot held", || {
        env.pg()
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&env.slot()],
            )
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    });
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(line.contains(&format!("replication slot {} is in use by PID {holder}", env.slot())), "{err}");
    assert!(first.running());
    assert_eq!(first.terminate(Duration::from_secs(30)), 0);
    assert_eq!(changes(&env).len(), 10);
}

#[test]
fn two_producers_started_together_publish_the_snapshot_once() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::logical("lg_twin");
    env.brokers = broker.addr.clone();
    env.write_config("");
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "100");
    env.init();
    env.insert(3000);
    let mut a = env.spawn(&["produce"]);
    let mut b = env.spawn(&["produce"]);
    let a_lost = wait_for(Duration::from_secs(60), "one producer refused", || {
        if !a.running() {
            Some(true)
        } else if !b.running() {
            Some(false)
        } else {
            None
        }
    });
    let (loser, winner) = if a_lost {
        (a.wait(Duration::from_secs(5)), &mut b)
    } else {
        (b.wait(Duration::from_secs(5)), &mut a)
    };
    assert_eq!(loser, 1);
    let logs = env.logs("produce");
    assert!(logs.contains(&format!("replication slot {} is in use by PID", env.slot())), "{logs}");
    let msgs = wait_changes(&env, 3010, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(winner.terminate(Duration::from_secs(30)), 0);
    let msgs = if msgs.len() == 3010 { changes(&env) } else { msgs };
    assert_eq!(msgs.len(), 3010, "every row read once");
    assert_each_change_once(&msgs);
}

/// The WAL other tables write passes through the slot while ours is idle: the heartbeat gives
/// the slot positions to confirm, so PostgreSQL can recycle that WAL. How much it retains on
/// the way is a figure of `cargo bench --bench logical` (scenario `wal`), not a bound here.
#[test]
fn an_idle_table_does_not_make_the_slot_retain_the_wal_of_other_tables() {
    let env = TestEnv::logical("lg_wal");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    let other = format!("other_{}", env.name);
    let mut pg = env.pg();
    pg.batch_execute(&format!("CREATE TABLE \"{other}\" (id int8, payload text)")).unwrap();
    // About 50 MB of WAL from another table, in 10 transactions.
    for _ in 0..10 {
        pg.batch_execute(&format!(
            "INSERT INTO \"{other}\" SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 4500) g"
        ))
        .unwrap();
    }
    let end: String = pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    pg.batch_execute(&format!("DROP TABLE \"{other}\"")).unwrap();
    // Confirmed within two heartbeats: nothing of ours is pending, so the slot may pass it all.
    let confirmed =
        wait_for(Duration::from_secs(60), "the slot confirming past the other table's WAL", || {
            let row = pg
                .query_one(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&env.slot(), &end],
                )
                .unwrap();
            row.get::<_, bool>(0).then(|| row.get::<_, String>(1))
        });
    eprintln!("the other table's WAL ended at {end}; the slot confirmed {confirmed}");
    assert!(producer.running(), "{}", producer.log_text());
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0);
}

#[test]
fn a_missing_slot_after_streaming_stops_instead_of_resnapshotting() {
    let env = TestEnv::logical("lg_noslot");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    env.pg().execute("SELECT pg_drop_replication_slot($1)", &[&env.slot()]).unwrap();
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "replication slot {} is missing, but the state file says capture was streaming",
            env.slot()
        )) && err.contains("remove the producer's state file"),
        "{err}"
    );
    assert_eq!(changes(&env).len(), 10, "nothing was published again");
}

#[test]
fn a_role_without_replication_and_a_missing_publication_are_named() {
    let mut env = TestEnv::logical("lg_role");
    env.init();
    env.set("ORDERSTREAM__POSTGRES__USER", "student_norepl");
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("role student_norepl lacks the REPLICATION attribute"), "{err}");
    assert!(err.contains("ALTER ROLE student_norepl REPLICATION"), "{err}");

    let mut env = TestEnv::logical("lg_nopub");
    env.init();
    env.set("ORDERSTREAM__POSTGRES__PUBLICATION", "orderstream_nothing_here");
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("publication orderstream_nothing_here does not exist (run `orderstream init`)"),
        "{err}"
    );
}

#[test]
fn added_columns_are_ignored_a_dropped_seed_column_stops_and_truncate_is_one_message_per_partition() {
    let env = TestEnv::logical("lg_ddl");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    let t = env.t();
    let mut pg = env.pg();
    pg.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN tip numeric(10,2) DEFAULT 1.00")).unwrap();
    pg.batch_execute(&format!("INSERT INTO {t} (customer_name, amount, tip) VALUES ('Tipper', 8.00, 2.00)"))
        .unwrap();
    let msgs = wait_changes(&env, 11, Duration::from_secs(30));
    assert!(msgs[10].value_str().unwrap().contains("\"customer_name\": \"Tipper\""));
    assert!(!msgs[10].value_str().unwrap().contains("tip"));

    pg.batch_execute(&format!("TRUNCATE {t}")).unwrap();
    let msgs = wait_changes(&env, 14, Duration::from_secs(30));
    let truncates: BTreeSet<i32> = msgs
        .iter()
        .filter(|m| m.header("orderstream.op").as_deref() == Some("t"))
        .map(|m| m.partition)
        .collect();
    assert_eq!((msgs.len(), truncates.len()), (14, 3), "TRUNCATE is one message on each of the 3 partitions");

    pg.batch_execute(&format!("ALTER TABLE {t} DROP COLUMN item")).unwrap();
    pg.batch_execute(&format!("INSERT INTO {t} (customer_name, amount) VALUES ('After', 1.00)")).unwrap();
    assert_eq!(producer.wait(Duration::from_secs(30)), 1, "{}", producer.log_text());
    let log = producer.log_text();
    assert!(log.contains(&format!("column item is gone from table public.{}", env.table)), "{log}");
}

#[test]
fn a_snapshot_killed_midway_under_writes_ends_with_the_table_and_no_row_read_twice() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::logical("lg_snap");
    env.brokers = broker.addr.clone();
    env.write_config("");
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "200");
    env.init();
    env.insert(20_000);
    let mut rng =
        Rng::from_env("a_snapshot_killed_midway_under_writes_ends_with_the_table_and_no_row_read_twice");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = write_mix(&env, stop.clone(), rng.next(), done.clone());
    let state = || std::fs::read_to_string(env.lastprocess().join("last_timestamp.txt")).unwrap_or_default();
    let mut kills = 0;
    for round in 0..4 {
        let mut producer = env.spawn(&["produce"]);
        if round == 0 {
            // Anywhere in the start: before the slot, during recovery or in the first pages.
            std::thread::sleep(Duration::from_millis(rng.range(50, 800)));
        } else {
            // Once the snapshot has made progress (a start takes ~0.5 s, the pages far less).
            wait_until(Duration::from_secs(60), "snapshot progress or its end", || {
                let s = state();
                s.contains(" after=") || s.contains("snapshot=done")
            });
            std::thread::sleep(Duration::from_millis(rng.range(0, 60)));
        }
        producer.kill();
        if !state().contains("snapshot=done") {
            kills += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(kills >= 1, "no kill landed during the snapshot; the test proved nothing");
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_for(Duration::from_secs(120), "the topic's state equal to the table", || {
        let m = changes(&env);
        (topic_state(&m) == table_state(&env)).then_some(m)
    });
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
    assert_each_change_once(&msgs);
    let mut reads = BTreeSet::new();
    for m in msgs.iter().filter(|m| m.header("orderstream.op").as_deref() == Some("r")) {
        assert!(reads.insert(m.key_str()), "order {:?} read twice by the snapshot", m.key_str());
    }
    eprintln!("{kills} kills during the snapshot; {} snapshot reads", reads.len());
}

#[test]
fn a_wal_level_below_logical_is_named_with_both_fixes() {
    let cluster = Cluster::start(&ClusterOptions::default().set("wal_level", "replica"));
    let mut env = TestEnv::logical("lg_wallvl");
    env.init();
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/postgres", cluster.port),
    );
    env.set("ORDERSTREAM__POSTGRES__USER", "postgres");
    let (code, _, err) = env.run(&["produce"]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert_eq!(
        line,
        "orderstream: PostgreSQL: wal_level is `replica`, logical capture needs `logical`: set wal_level = logical in \
         postgresql.conf and restart PostgreSQL, or set postgres.capture: poll"
    );
}

/// Issue 9 item 8: the dead producer's last request, held in a TCP proxy, reaches the broker
/// only after a new producer recovered and published the same changes. Without broker
/// transactions nothing fences it, so the topic then holds those changes twice, with the same
/// source, epoch and seq; the consumer's replay filter keeps the lake exact.
#[test]
fn a_dead_producers_request_delivered_after_the_restart_lands_in_the_lake_once() {
    // Every client reaches the broker through the proxy: the broker advertises the proxy.
    let proxy = Proxy::start("127.0.0.1:9");
    let broker = Broker::start_memory_advertising(Some(proxy.port));
    proxy.set_target(&broker.addr);
    let mut env = TestEnv::logical("lg_held");
    env.brokers = format!("127.0.0.1:{}", proxy.port);
    env.write_config("");
    env.init();
    let mut first = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));

    // The first producer's connections are held from now on; it sends the next changes and dies.
    proxy.hold();
    let ids = env.insert(20);
    wait_until(Duration::from_secs(30), "the first producer's produce request held", || {
        proxy.held_bytes() > 20 * 150
    });
    std::thread::sleep(Duration::from_millis(300));
    first.kill();
    let held = proxy.held_bytes();

    // A new producer recovers (it cannot see the held request) and publishes the changes.
    let mut second = env.spawn(&["produce"]);
    let once = wait_changes(&env, 30, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the second producer to save its state", || {
        second.log_text().contains("batch published")
    });
    // Then the dead producer's request reaches the broker.
    proxy.release();
    let twice = wait_changes(&env, 50, Duration::from_secs(30));
    assert_eq!(second.terminate(Duration::from_secs(30)), 0, "{}", second.log_text());
    println!("held {held} bytes; the topic holds {} messages after the release", twice.len());

    // What the topic holds: the 20 changes twice, identical in position, source, epoch and seq.
    let lineage = |m: &Record| {
        let h = |k: &str| m.header(k).unwrap_or_default();
        (position(m), h("orderstream.source"), h("orderstream.epoch"), h("orderstream.seq"))
    };
    let mut copies: BTreeMap<(u64, i32, bool), Vec<_>> = BTreeMap::new();
    for m in &twice {
        copies.entry(position(m)).or_default().push(lineage(m));
    }
    let doubled: Vec<_> = copies.iter().filter(|(_, v)| v.len() == 2).collect();
    assert_eq!(doubled.len(), 20, "changes in the topic twice: {doubled:?}");
    assert!(doubled.iter().all(|(_, v)| v[0] == v[1]), "the two copies differ: {doubled:?}");
    assert_eq!(copies.len(), once.len());

    // The lake holds every change once, and its current state is the table.
    let mut consumer = env.spawn(&["consume"]);
    let lake = wait_for(Duration::from_secs(60), "30 changes in the lake", || {
        let read = read_duckdb(&env.lake());
        (read.rows.len() >= 30).then_some(read.rows)
    });
    wait_until(Duration::from_secs(30), "the consumer to read the whole topic", || {
        common::lake::states(&env).iter().map(|s| s.next_offset).sum::<i64>() >= 50
    });
    let dropped: u64 = common::lake::states(&env).iter().map(|s| s.duplicates).sum();
    assert_eq!(consumer.terminate(Duration::from_secs(30)), 0, "{}", consumer.log_text());
    let lake =
        if read_duckdb(&env.lake()).rows.len() == lake.len() { lake } else { read_duckdb(&env.lake()).rows };
    assert_eq!(lake.len(), 30, "the lake holds a change twice");
    assert_eq!(dropped, 20, "replays dropped by the consumer");
    assert!(ids.iter().all(|id| lake.iter().any(|r| r.order_id == *id)));
    assert_eq!(lake_state(&lake), table_state(&env));
}

#[test]
fn a_change_too_large_for_the_broker_is_dead_lettered_and_later_changes_flow() {
    let env = TestEnv::logical("lg_large");
    env.init();
    let t = env.t();
    // The seed's item is VARCHAR(255); a user's table may hold more.
    env.pg().batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN item TYPE text")).unwrap();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    // 1.2 MB of two-byte characters: beyond librdkafka's message.max.bytes (1,000,000).
    env.pg()
        .batch_execute(&format!(
            "INSERT INTO {t} (order_id, customer_name, restaurant_name, item, amount, order_status) \
             VALUES (500, 'Big', 'Bistro', repeat('é', 600000), 10, 'PLACED'); \
             INSERT INTO {t} (order_id, customer_name, restaurant_name, item, amount, order_status) \
             VALUES (501, 'After', 'Bistro', 'Soup', 5, 'PLACED'); \
             UPDATE {t} SET item = 'Small' WHERE order_id = 500;"
        ))
        .unwrap();
    let msgs = wait_changes(&env, 12, Duration::from_secs(60));
    let ops: Vec<(String, String)> =
        msgs[10..].iter().map(|m| (m.key_str().unwrap(), m.header("orderstream.op").unwrap())).collect();
    assert_eq!(ops, [("501".to_string(), "c".to_string()), ("500".to_string(), "u".to_string())]);
    assert!(msgs[11].value_str().unwrap().contains(r#""item": "Small""#));
    let dlq = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let d = &dlq[0];
    assert_eq!(d.key_str().as_deref(), Some("500"));
    assert_eq!(d.header("orderstream.reject.reason").as_deref(), Some("too_large"));
    assert_eq!(d.header("orderstream.op").as_deref(), Some("c"));
    let size: usize = d.header("orderstream.reject.size").unwrap().parse().unwrap();
    assert!(size > 1_200_000, "{size}");
    let detail = d.header("orderstream.reject.detail").unwrap();
    assert_eq!(detail, format!("order 500: its message of {size} bytes exceeds message.max.bytes 1000000"));
    // As much of the row as fits, cut on a character boundary.
    let value = String::from_utf8(d.value.clone().unwrap()).expect("the cut keeps UTF-8 whole");
    assert!(value.starts_with(
        r#"{"order_id": 500, "customer_name": "Big", "restaurant_name": "Bistro", "item": "éé"#
    ));
    assert!(value.len() > 990_000 && value.len() < 1_000_000, "{}", value.len());
    assert!(producer.running(), "{}", producer.log_text());
    assert!(
        producer.log_text().contains(&format!(
            "order 500: its message of {size} bytes exceeds message.max.bytes 1000000: sent to the dead-letter topic {}_dlq instead",
            env.topic
        )),
        "{}",
        producer.log_text()
    );
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}

#[test]
fn a_created_at_no_message_can_carry_is_dead_lettered_from_the_snapshot_and_the_stream() {
    let env = TestEnv::logical("lg_infinite");
    env.init();
    let t = env.t();
    let insert = |id: i64, ts: &str| {
        format!(
            "INSERT INTO {t} (order_id, customer_name, restaurant_name, item, amount, order_status, created_at) \
             VALUES ({id}, 'Cust {id}', 'Bistro', 'Soup', 5, 'PLACED', '{ts}');"
        )
    };
    // Read by the snapshot.
    env.pg().batch_execute(&insert(600, "infinity")).unwrap();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    // Read from the log; the update gives order 600 a real time, and it is published.
    env.pg()
        .batch_execute(&format!(
            "{}{}UPDATE {t} SET created_at = '2025-02-01 10:00:00' WHERE order_id = 600;",
            insert(601, "-infinity"),
            insert(602, "2025-02-01 09:00:00")
        ))
        .unwrap();
    let msgs = wait_changes(&env, 12, Duration::from_secs(60));
    let ops: Vec<(String, String)> = msgs
        .iter()
        .map(|m| (m.key_str().unwrap(), m.header("orderstream.op").unwrap()))
        .filter(|(k, _)| k.starts_with("60"))
        .collect();
    assert_eq!(ops, [("602".to_string(), "c".to_string()), ("600".to_string(), "u".to_string())]);
    let dlq = wait_for(Duration::from_secs(30), "two dead letters", || {
        let d = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
        (d.len() >= 2).then_some(d)
    });
    let mut got: Vec<(String, String, String, serde_json::Value)> = dlq
        .iter()
        .map(|d| {
            (
                d.key_str().unwrap(),
                d.header("orderstream.op").unwrap(),
                d.header("orderstream.reject.detail").unwrap(),
                d.json(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (&got[0].0, &got[0].1, &got[0].2),
        (
            &"600".to_string(),
            &"r".to_string(),
            &"order 600: created_at `infinity` is not a time a message can carry".to_string()
        )
    );
    assert_eq!(
        (&got[1].0, &got[1].1, &got[1].2),
        (
            &"601".to_string(),
            &"c".to_string(),
            &"order 601: created_at `-infinity` is not a time a message can carry".to_string()
        )
    );
    assert_eq!(
        (got[0].3["customer_name"].as_str(), got[0].3["created_at"].as_str()),
        (Some("Cust 600"), Some("infinity"))
    );
    assert!(dlq.iter().all(|d| d.header("orderstream.reject.reason").as_deref() == Some("unencodable")));
    assert!(producer.running(), "{}", producer.log_text());
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}

/// Issue 21 item 3: a year beyond 9999 and a BC date are valid in PostgreSQL but no message can
/// carry them: dead letters (reason `unencodable`, the raw value), from the snapshot and the
/// stream, and later changes flow.
#[test]
fn dates_beyond_9999_and_bc_are_dead_lettered_and_later_changes_flow() {
    let env = TestEnv::logical("lg_bcdate");
    env.init();
    let t = env.t();
    let insert = |id: i64, ts: &str| {
        format!(
            "INSERT INTO {t} (order_id, customer_name, restaurant_name, item, amount, order_status, created_at) \
             VALUES ({id}, 'Cust {id}', 'Bistro', 'Soup', 5, 'PLACED', '{ts}');"
        )
    };
    // Read by the snapshot.
    env.pg().batch_execute(&format!("{}{}", insert(610, "12345-06-07"), insert(613, "0001-01-01"))).unwrap();
    let mut producer = env.spawn(&["produce"]);
    wait_changes(&env, 11, Duration::from_secs(60));
    // Read from the log; the update gives order 610 a time a message carries, and it is published.
    env.pg()
        .batch_execute(&format!(
            "{}{}UPDATE {t} SET created_at = '2025-02-01 10:00:00' WHERE order_id = 610;",
            insert(611, "0044-03-15 12:00:00 BC"),
            insert(612, "2025-02-01 09:00:00")
        ))
        .unwrap();
    let msgs = wait_changes(&env, 13, Duration::from_secs(60));
    let ops: Vec<(String, String, String)> = msgs
        .iter()
        .map(|m| {
            let created_at = m.json()["created_at"].as_str().unwrap().to_string();
            (m.key_str().unwrap(), m.header("orderstream.op").unwrap(), created_at)
        })
        .filter(|(k, _, _)| k.starts_with("61"))
        .collect();
    let op = |k: &str, o: &str, c: &str| (k.to_string(), o.to_string(), c.to_string());
    assert_eq!(
        ops,
        [
            op("613", "r", "0001-01-01T00:00:00Z"),
            op("612", "c", "2025-02-01T09:00:00Z"),
            op("610", "u", "2025-02-01T10:00:00Z")
        ]
    );
    let dlq = wait_for(Duration::from_secs(30), "two dead letters", || {
        let d = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
        (d.len() >= 2).then_some(d)
    });
    let mut got: Vec<(String, String, String, String, String)> = dlq
        .iter()
        .map(|d| {
            (
                d.key_str().unwrap(),
                d.header("orderstream.op").unwrap(),
                d.header("orderstream.reject.reason").unwrap(),
                d.header("orderstream.reject.detail").unwrap(),
                d.json()["created_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let dead = |k: &str, o: &str, raw: &str| {
        (
            k.to_string(),
            o.to_string(),
            "unencodable".to_string(),
            format!("order {k}: created_at `{raw}` is not a time a message can carry"),
            raw.to_string(),
        )
    };
    assert_eq!(got, [dead("610", "r", "12345-06-07 00:00:00"), dead("611", "c", "0044-03-15 12:00:00 BC")]);
    assert!(producer.running(), "{}", producer.log_text());
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());
}

/// Issue 21 item 5: an amount that is present but unusable goes to the dead-letter topic under
/// a reason that says what is wrong: a NULL amount reaches the consumer, which rejects it as
/// `null_amount`; JSON has no NaN, so the producer sends a NaN amount there itself as
/// `unencodable`, naming it.
#[test]
fn a_null_or_nan_amount_is_dead_lettered_under_a_reason_that_names_it() {
    let env = TestEnv::logical("lg_nanamount");
    env.init();
    let t = env.t();
    let mut run = env.spawn(&["run"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    env.pg()
        .batch_execute(&format!(
            "INSERT INTO {t} (order_id, customer_name, amount) VALUES (620, 'null', NULL), (621, 'nan', 'NaN'), \
             (622, 'fine', 5)"
        ))
        .unwrap();
    let dlq = wait_for(Duration::from_secs(60), "two dead letters", || {
        let d = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
        (d.len() >= 2).then_some(d)
    });
    let mut got: Vec<(String, String, String)> = dlq
        .iter()
        .map(|d| {
            (
                d.key_str().unwrap(),
                d.header("orderstream.reject.reason").unwrap(),
                d.header("orderstream.reject.detail").unwrap(),
            )
        })
        .collect();
    got.sort();
    let row = |k: &str, r: &str, d: &str| (k.to_string(), r.to_string(), d.to_string());
    assert_eq!(
        got,
        [
            row("620", "null_amount", "amount is null"),
            row("621", "unencodable", "order 621: amount `NaN` is not a number a message can carry")
        ]
    );
    wait_until(Duration::from_secs(60), "order 622 in the lake", || {
        read_duckdb(&env.lake()).rows.iter().any(|r| r.order_id == 622)
    });
    assert_eq!(run.terminate(Duration::from_secs(30)), 0, "{}", run.log_text());
}

/// Issue 21 item 4: a TRUNCATE reaches the lake. It is one message on every partition (key
/// `truncate`, op `t`, its log position), once each across a SIGKILL of the pipeline; the lake
/// holds a `t` row per partition; and the README's current-state query, run by DuckDB, drops
/// every order whose last change precedes it: the lake's current state equals the table.
#[test]
fn a_truncate_reaches_every_partition_and_the_lakes_current_state() {
    let env = TestEnv::logical("lg_truncate");
    env.init();
    let t = env.t();
    let mut run = env.spawn(&["run"]);
    wait_changes(&env, 10, Duration::from_secs(60));
    env.insert(3);
    env.pg()
        .batch_execute(&format!(
            "UPDATE {t} SET order_status = 'DELIVERED' WHERE order_id = (SELECT min(order_id) FROM {t})"
        ))
        .unwrap();
    wait_changes(&env, 14, Duration::from_secs(60));
    // One truncate alone, then one inside a transaction between an insert it removes and one
    // it keeps.
    env.pg().batch_execute(&format!("TRUNCATE {t}")).unwrap();
    wait_until(Duration::from_secs(60), "the first truncate", || {
        changes(&env).iter().any(|m| m.header("orderstream.op").as_deref() == Some("t"))
    });
    // A crash right after: what the topic holds is recovered, nothing is sent twice.
    run.kill();
    let truncated = env.insert(2);
    env.pg()
        .batch_execute(&format!(
            "BEGIN; \
             INSERT INTO {t} (customer_name, amount, created_at) VALUES ('gone', 5, '2025-03-01 10:00:00'); \
             TRUNCATE {t}; \
             INSERT INTO {t} (customer_name, amount, created_at) VALUES ('kept', 6, '2025-03-01 11:00:00'); \
             COMMIT"
        ))
        .unwrap();
    env.insert(2);
    let mut run = env.spawn(&["run"]);
    let table = table_state(&env);
    assert_eq!(table.len(), 3, "{table:?}");
    assert!(!table.contains_key(&truncated[0]));
    wait_until(Duration::from_secs(120), "the lake's current state to equal the table", || {
        current_state_duckdb(&env.lake()) == table
    });
    assert_eq!(run.terminate(Duration::from_secs(30)), 0, "{}", run.log_text());

    let msgs = changes(&env);
    let truncates: Vec<&Record> =
        msgs.iter().filter(|m| m.header("orderstream.op").as_deref() == Some("t")).collect();
    let mut per_position: BTreeMap<(u64, i32), BTreeSet<i32>> = BTreeMap::new();
    for m in &truncates {
        assert_eq!(
            (m.key_str().as_deref(), m.value_str().as_deref()),
            (Some("truncate"), Some(r#"{"op": "t"}"#))
        );
        let (lsn, i, _) = position(m);
        assert!(
            per_position.entry((lsn, i)).or_default().insert(m.partition),
            "a truncate twice on one partition"
        );
    }
    assert_eq!(per_position.len(), 2, "{per_position:?}");
    assert!(per_position.values().all(|p| p.len() == 3), "{per_position:?}");
    assert_eq!(truncates.len(), 6);
    // The lake: a `t` row per partition and truncate, order columns null, filed by commit date.
    let rows = duckdb_query(
        &env.lake(),
        "SELECT count(*), count(DISTINCT lsn), count(order_id), count(amount), count(created_at), \
         bool_and(CAST(date AS VARCHAR) = strftime(committed_at, '%Y-%m-%d')) FROM {src} WHERE op = 't'",
    );
    assert_eq!(
        rows,
        [vec![serde_json::json!(6), serde_json::json!(2), 0.into(), 0.into(), 0.into(), true.into()]]
    );
}

/// Issue 21 item 2: a lost slot costs no change. The slot is dropped; while none exists orders
/// are updated, deleted and inserted; the producer exits 1 naming the slot; the README's fix
/// (remove the producer's state file) brings a new slot and a full snapshot, whose reads are a
/// new lineage (never taken for the old capture's reads) opened by a truncate on every
/// partition (so the orders deleted meanwhile leave the current state). The lake's current
/// state, by DuckDB, then equals the table.
#[test]
fn after_a_lost_slot_and_the_documented_recovery_the_lakes_current_state_is_the_table() {
    let env = TestEnv::logical("lg_lostslot");
    env.init();
    let t = env.t();
    let mut run = env.spawn(&["run"]);
    env.insert(2);
    wait_until(Duration::from_secs(120), "the lake's current state to equal the table", || {
        current_state_duckdb(&env.lake()) == table_state(&env)
    });
    assert_eq!(run.terminate(Duration::from_secs(30)), 0, "{}", run.log_text());

    env.pg().execute("SELECT pg_drop_replication_slot($1)", &[&env.slot()]).unwrap();
    env.pg()
        .batch_execute(&format!(
            "UPDATE {t} SET order_status = 'CHANGED', amount = 99.5 \
               WHERE order_id IN (SELECT order_id FROM {t} ORDER BY order_id LIMIT 3); \
             DELETE FROM {t} WHERE order_id IN (SELECT order_id FROM {t} ORDER BY order_id DESC LIMIT 2);"
        ))
        .unwrap();
    env.insert(2);

    let mut produce = env.spawn(&["produce"]);
    assert_eq!(produce.wait(Duration::from_secs(60)), 1, "{}", produce.log_text());
    let slot_missing = format!("replication slot {} is missing", env.slot());
    assert!(produce.log_text().contains(&slot_missing), "{}", produce.log_text());

    std::fs::remove_file(env.lastprocess().join("last_timestamp.txt")).unwrap();
    let mut run = env.spawn(&["run"]);
    wait_until(Duration::from_secs(60), "the new snapshot", || {
        changes(&env).iter().any(|m| m.header("orderstream.op").as_deref() == Some("t"))
    });
    env.pg()
        .batch_execute(&format!(
            "UPDATE {t} SET item = 'after' WHERE order_id = (SELECT min(order_id) FROM {t})"
        ))
        .unwrap();
    let table = table_state(&env);
    assert_eq!(table.len(), 12, "{table:?}");
    wait_until(Duration::from_secs(180), "the lake's current state to equal the table", || {
        current_state_duckdb(&env.lake()) == table
    });
    assert_eq!(run.terminate(Duration::from_secs(30)), 0, "{}", run.log_text());
    let opening: Vec<i32> = changes(&env)
        .iter()
        .filter(|m| m.header("orderstream.op").as_deref() == Some("t"))
        .map(|m| m.partition)
        .collect();
    assert_eq!(opening.len(), 3, "one truncate per partition: {opening:?}");
}
