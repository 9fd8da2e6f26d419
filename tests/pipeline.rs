//! The whole pipeline on the local stack: `orderstream run` from the table to the lake (read
//! back with DuckDB, pyarrow and Spark), `status --json` on a known state (polling, and logical
//! capture with its replication slot), and `/metrics`.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestEnv;
use common::lake::{LakeRow, python, read_duckdb, read_pyarrow, read_spark, states};
use common::proc::{wait_for, wait_until};
use common::topic::read_topic;

/// Rows committed to the lake, from the consumer's checkpoint.
fn committed_rows(env: &TestEnv) -> u64 {
    states(env).iter().map(|s| s.rows_written).sum()
}

fn wait_lake_rows(env: &TestEnv, n: u64) {
    wait_until(Duration::from_secs(90), &format!("{n} rows in the lake of {}", env.table), || {
        committed_rows(env) >= n
    });
}

/// The lake holds every row of the table exactly once, read by DuckDB and by pyarrow.
fn assert_lake_is_table(env: &TestEnv) -> Vec<LakeRow> {
    let duck = read_duckdb(&env.lake()).rows;
    let arrow = read_pyarrow(&env.lake()).rows;
    assert_eq!(duck, arrow, "DuckDB and pyarrow disagree");
    let ids: Vec<i64> = duck.iter().map(|r| r.order_id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "an order is in the lake twice");
    assert_eq!(ids, env.table_ids());
    duck
}

#[test]
fn run_lands_seed_and_live_orders_exactly_once_across_a_restart() {
    let env = TestEnv::poll("pipe_run");
    env.init();
    let mut run = env.spawn(&["run"]);
    wait_lake_rows(&env, 10);
    env.insert(25);
    wait_lake_rows(&env, 35);
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());

    // Orders committed while the pipeline is down arrive after the restart, once.
    env.insert(15);
    let mut run = env.spawn(&["run"]);
    wait_lake_rows(&env, 50);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());

    let rows = assert_lake_is_table(&env);
    assert_eq!(rows.len(), 50);
    // Spark reads the same rows, with the types the seed's consumer would have written.
    let spark = read_spark(&env.lake());
    assert_eq!(spark.rows, rows, "Spark and DuckDB disagree");
    let types: Vec<(&str, &str)> = spark.schema.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    assert_eq!(
        types,
        [
            ("order_id", "bigint"),
            ("customer_name", "string"),
            ("restaurant_name", "string"),
            ("item", "string"),
            ("amount", "decimal(10,2)"),
            ("order_status", "string"),
            ("created_at", "timestamp"),
            ("op", "string"),
            ("lsn", "bigint"),
            ("change_index", "int"),
            ("committed_at", "timestamp"),
            ("date", "date"),
        ]
    );
    let seed = &rows[0];
    assert_eq!(
        (seed.order_id, seed.customer_name.as_deref(), seed.item.as_deref(), seed.amount.as_str()),
        (101, Some("John Doe"), Some("Veg Burger"), "220.00")
    );
    assert_eq!((seed.created_at.as_str(), seed.date.as_str()), ("2025-01-18T12:24:00.000000Z", "2025-01-18"));
    let live = rows.iter().find(|r| r.order_id == 111).unwrap();
    assert_eq!(live.amount, "11.25");
    // Polled orders are inserts without a log position.
    let change: Vec<_> =
        rows.iter().map(|r| (r.op.as_str(), r.lsn, r.change_index, r.committed_at.as_deref())).collect();
    assert_eq!(change, vec![("c", None, None, None); 50]);
}

/// `orderstream status --json`, parsed.
fn status(env: &TestEnv) -> serde_json::Value {
    let (code, out, err) = env.run(&["status", "--json"]);
    assert!(code == 0 || code == 1, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// Issue 9 item 5 (status part): a row whose created_at is `infinity` or `-infinity` made
/// `status` panic. It now reports the table, the newest finite created_at, and the rows behind.
#[test]
fn status_reports_a_table_with_infinite_created_at_without_panicking() {
    let env = TestEnv::poll("pipe_status_inf");
    env.init();
    env.pg()
        .batch_execute(&format!(
            "INSERT INTO {t} (customer_name, amount, created_at) VALUES ('later', 5, 'infinity'), ('earlier', 6, '-infinity')",
            t = env.t()
        ))
        .unwrap();
    for args in [["status", "--json"].as_slice(), ["status"].as_slice()] {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 1, "{args:?}: nothing runs: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args.len() == 2 {
            let s: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(s["postgres"]["rows"], 12, "{s:#}");
            assert_eq!(s["postgres"]["newest_created_at"], "2025-01-18 12:33:00", "{s:#}");
            assert_eq!(s["producer"]["orders_behind"], 12, "{s:#}");
        } else {
            assert!(out.contains("newest created_at 2025-01-18 12:33:00"), "{out}");
        }
    }
}

#[test]
fn status_reports_the_seed_state_and_what_it_cannot_reach() {
    let env = TestEnv::poll("pipe_status");
    env.init();
    let mut run = env.spawn(&["run"]);
    wait_lake_rows(&env, 10);
    // The consumer commits the group's offsets to Kafka asynchronously, after the lake: wait
    // until they are there, then stop.
    wait_until(Duration::from_secs(30), "the group's offsets at the end of the topic", || {
        let s = status(&env);
        s["kafka"]["messages"] == 10 && s["kafka"]["group_lag"] == 0
    });
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());

    let s = status(&env);
    assert_eq!(s["postgres"]["rows"], 10, "{s:#}");
    assert_eq!(s["postgres"]["table"], env.table);
    assert_eq!(s["producer"]["published"], 10);
    assert_eq!(s["producer"]["watermark"], "2025-01-18 12:33:00");
    assert_eq!(s["producer"]["watermark_order_id"], 110);
    assert_eq!(s["producer"]["orders_behind"], 0);
    assert_eq!(s["producer"]["lag_seconds"], 0.0);
    assert_eq!(s["producer"]["capture"], "poll");
    assert!(s.get("slot").is_none(), "poll mode has no slot: {s:#}");
    assert_eq!(s["kafka"]["messages"], 10);
    assert_eq!(s["kafka"]["group_lag"], 0, "{s:#}");
    assert_eq!(s["kafka"]["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(s["kafka"]["dlq_messages"], 0);
    assert_eq!(s["consumer"]["rows_written"], 10);
    assert_eq!(s["consumer"]["rejected_total"], 0);
    assert_eq!(s["lake"]["rows"], 10);
    let parts = s["lake"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0]["date"].as_str(), parts[0]["rows"].as_u64()), (Some("2025-01-18"), Some(10)));

    // The text form names every stage.
    let (code, text, _) = env.run(&["status"]);
    assert_eq!(code, 1, "not every part runs");
    for stage in ["PostgreSQL", "Producer", "Kafka", "Consumer", "Lake", "date=2025-01-18"] {
        assert!(text.contains(stage), "{stage} missing:\n{text}");
    }
    assert!(
        text.contains("published 10   watermark 2025-01-18 12:33:00 #110   behind 0 orders, 0.0 s"),
        "{text}"
    );
    assert!(!text.contains("Slot"), "{text}");

    // A stopped broker: that part says so, the others are still read.
    let mut env = env;
    let closed = common::ClosedPort::new();
    env.set("ORDERSTREAM__KAFKA__BROKERS", &closed.addr());
    let s = status(&env);
    assert!(s["kafka"]["error"].as_str().unwrap().contains("unreachable"), "{s:#}");
    assert_eq!(s["postgres"]["rows"], 10);
    assert_eq!(s["lake"]["rows"], 10);
    let (code, text, _) = env.run(&["status"]);
    assert_eq!(code, 1, "not every part runs");
    assert!(text.contains("Kafka       UNREACHABLE: "), "{text}");
}

/// An LSN in PostgreSQL's text form (`0/16B3748`) as a number.
fn lsn(text: &serde_json::Value) -> u64 {
    let text = text.as_str().unwrap_or_else(|| panic!("not an LSN: {text}"));
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("not an LSN: {text}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn status_and_metrics_show_logical_capture_and_its_slot() {
    let env = TestEnv::logical("pipe_slot");
    env.init();

    // Before the first `produce`: no slot, and a state file that does not exist yet.
    let s = status(&env);
    assert_eq!(s["slot"]["name"], env.slot(), "{s:#}");
    assert_eq!(s["slot"]["exists"], false, "{s:#}");
    assert!(s["slot"].get("active").is_none(), "{s:#}");
    assert_eq!(s["producer"]["capture"], "logical", "{s:#}");
    assert_eq!(s["producer"]["published"], 0);
    assert_eq!(s["producer"]["snapshot"]["state"], "pending");
    assert_eq!(s["producer"]["last_lsn"], serde_json::Value::Null);
    assert_eq!(s["producer"]["flush_lsn"], "0/0");
    let (code, text, _) = env.run(&["status"]);
    assert_eq!(code, 1, "not every part runs");
    let missing = format!("Slot        {} missing (the first `orderstream produce` creates it)", env.slot());
    assert!(text.contains(&missing), "{text}");
    assert!(text.contains("published 0 messages   last none yet   flush 0/0   snapshot pending"), "{text}");

    // The ten seed rows streamed: the snapshot is done at the slot's consistent point.
    let (mut producer, port) = env.spawn_serving(&["produce"]);
    let msgs = wait_for(Duration::from_secs(60), "the ten snapshot reads", || {
        let m = read_topic(&env.brokers, &env.topic);
        (m.len() >= 10).then_some(m)
    });
    assert_eq!(msgs.len(), 10);
    let at = msgs[0].header("orderstream.lsn").unwrap();
    let s = wait_for(Duration::from_secs(30), "the saved snapshot in status", || {
        let s = status(&env);
        (s["producer"]["published"] == 10 && s["slot"]["active"] == true).then_some(s)
    });
    let p = &s["producer"];
    assert_eq!(p["snapshot"]["state"], "done", "{s:#}");
    assert_eq!(
        (p["last_lsn"].as_str(), p["last_change_index"].as_i64()),
        (Some(at.as_str()), Some(9)),
        "{s:#}"
    );
    assert!(lsn(&p["flush_lsn"]) >= lsn(&p["last_lsn"]), "{s:#}");
    let slot = &s["slot"];
    let pid: i32 = env
        .pg()
        .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&env.slot()])
        .unwrap()
        .get(0);
    assert_eq!(
        (slot["exists"].as_bool(), slot["active_pid"].as_i64()),
        (Some(true), Some(pid.into())),
        "{s:#}"
    );
    assert_eq!((slot["plugin"].as_str(), slot["usable"].as_bool()), (Some("pgoutput"), Some(true)), "{s:#}");
    let confirmed = lsn(&slot["confirmed_flush_lsn"]);
    assert!(confirmed >= lsn(&serde_json::json!(at)), "{s:#}");
    assert!(confirmed <= lsn(&slot["current_wal_lsn"]), "{s:#}");
    assert!(slot["retained_wal_bytes"].as_i64().unwrap() >= 0, "{s:#}");
    assert!(slot["lag_bytes"].as_i64().unwrap() >= 0, "{s:#}");
    let (code, text, _) = env.run(&["status"]);
    assert_eq!(code, 1, "not every part runs");
    assert!(!text.contains("Producer    UNREACHABLE"), "{text}");
    assert!(text.contains(&format!("published 10 messages   last {at}:9")), "{text}");
    assert!(text.contains("snapshot done"), "{text}");
    assert!(text.contains(&format!("Slot        {} active (PID {pid})   confirmed ", env.slot())), "{text}");

    // The running producer's monitor exports the slot.
    let m = wait_for(Duration::from_secs(30), "orderstream_slot_active 1", || {
        let (code, body) = common::http_get(port, "/metrics");
        assert_eq!(code, 200);
        let m = parse_metrics(&body);
        (m.get("orderstream_slot_active") == Some(&1.0)).then_some(m)
    });
    assert!(m["orderstream_slot_confirmed_lsn"] >= lsn(&serde_json::json!(at)) as f64, "{m:#?}");
    assert!(m["orderstream_slot_retained_wal_bytes"] >= 0.0, "{m:#?}");
    assert!(m["orderstream_slot_lag_bytes"] >= 0.0, "{m:#?}");
    assert!(m["orderstream_slot_lag_seconds"] >= 0.0, "{m:#?}");
    assert_eq!(producer.terminate(Duration::from_secs(60)), 0, "{}", producer.log_text());

    // Stopped: the slot stays, inactive, holding WAL for the next start.
    let s = status(&env);
    assert_eq!(
        (s["slot"]["exists"].as_bool(), s["slot"]["active"].as_bool()),
        (Some(true), Some(false)),
        "{s:#}"
    );
    assert_eq!(s["slot"]["active_pid"], serde_json::Value::Null, "{s:#}");
}

/// One HTTP/1.0 GET on loopback: (status code, body).
/// Parses exposition text with the Prometheus project's own parser (prometheus_client,
/// OpenMetrics) and returns every sample as name{labels} → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", script]);
    let (code, out, err) = common::proc::run(cmd, Some(text.as_bytes()), Duration::from_secs(60));
    assert_eq!(code, 0, "not valid exposition text: {err}\n{text}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_was_processed() {
    let env = TestEnv::poll("pipe_metrics");
    env.init();
    let (mut run, port) = env.spawn_serving(&["run"]);
    wait_lake_rows(&env, 10);
    env.insert(5);
    wait_lake_rows(&env, 15);

    let (code, body) = common::http_get(port, "/health");
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"], "ok");

    // The producer saves its batch after publishing; the counters follow the lake.
    let m = wait_for(Duration::from_secs(30), "counters of 15 orders", || {
        let (code, body) = common::http_get(port, "/metrics");
        assert_eq!(code, 200);
        let m = parse_metrics(&body);
        (m.get("orderstream_consumer_rows_written_total") == Some(&15.0)).then_some(m)
    });
    assert_eq!(m["orderstream_producer_orders_published_total"], 15.0, "{m:#?}");
    assert_eq!(m["orderstream_consumer_messages_total"], 15.0, "{m:#?}");
    // Every reason is exported from the start.
    for reason in ["invalid_json", "invalid_header"] {
        assert_eq!(m[&format!("orderstream_consumer_rejected_total{{reason=\"{reason}\"}}")], 0.0, "{m:#?}");
    }
    assert!(m["orderstream_producer_batches_total"] >= 2.0);
    assert!(m["orderstream_consumer_batches_total"] >= 2.0);
    assert!(m.contains_key("orderstream_producer_batch_duration_seconds_count"));
    assert!(m["orderstream_producer_watermark_timestamp_seconds"] > 1.7e9);
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());
}

#[test]
fn status_creates_no_folder() {
    let env = TestEnv::poll("pipe_status_ro");
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 1, "nothing runs: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for dir in [env.lake(), env.checkpoints(), env.lastprocess()] {
        assert!(!dir.exists(), "status created {}:\n{out}", dir.display());
    }
    assert!(out.contains(&format!("Lake        {} (0 files, 0 rows", env.lake().display())), "{out}");
    // The commands that write them still create them.
    env.init();
    assert!(env.lake().is_dir() && env.checkpoints().is_dir() && env.lastprocess().is_dir());
    // Only the consumer pairs the lake with its checkpoint; status reads.
    let (code, _, err) = env.run(&["status"]);
    assert_eq!(code, 1, "nothing runs: {err}");
    assert!(
        !env.lake().join("_orderstream_checkpoint").exists() && !env.checkpoints().join("lake_id").exists()
    );
}

/// The stack's broker kind (tansu storing its log in PostgreSQL) SIGKILLed twice, at random
/// moments, while orders are committed one per transaction and `run` captures them from the
/// log; restarted each time on its storage. Every order lands exactly once: nothing the broker
/// acknowledged is lost with it, and nothing is written twice by the producer's recovery.
#[test]
fn a_durable_broker_killed_mid_run_and_restarted_loses_and_duplicates_nothing() {
    let mut rng = common::Rng::from_env("broker_kill");
    let mut broker = common::Broker::start_postgres();
    let mut env = TestEnv::with_brokers("pipe_broker_kill", &broker.addr);
    env.capture = "logical";
    env.write_config("");
    env.init();
    let mut run = env.spawn(&["run"]);
    wait_lake_rows(&env, 10);
    // 50 orders/s, one transaction each, from another thread for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserter = {
        let (stop, table) = (stop.clone(), env.t());
        std::thread::spawn(move || {
            let mut c = common::pg();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.batch_execute(&format!(
                    "INSERT INTO {table} (customer_name, restaurant_name, item, amount, order_status) \
                     VALUES ('Kill Customer', 'Kill Restaurant', 'Item', 12.50, 'PLACED')"
                ))
                .unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let mut kills = Vec::new();
    for _ in 0..2 {
        let after = Duration::from_millis(1_000 + rng.below(4_000));
        std::thread::sleep(after);
        broker.kill();
        let down = Duration::from_millis(200 + rng.below(2_000));
        std::thread::sleep(down);
        broker.restart();
        kills.push((after.as_millis(), down.as_millis(), committed_rows(&env)));
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let inserted = inserter.join().unwrap();
    println!(
        "broker killed after +ms, down ms (rows in the lake then): {kills:?}; {inserted} orders inserted"
    );
    let total = 10 + inserted;
    wait_until(Duration::from_secs(120), &format!("{total} rows in the lake"), || {
        committed_rows(&env) >= total
    });
    // A late duplicate would show in the next batches.
    std::thread::sleep(Duration::from_secs(2));
    assert!(run.running(), "run exited after a broker restart:\n{}", run.log_text());
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());
    let rows = assert_lake_is_table(&env);
    assert_eq!(rows.len() as u64, total);
}

/// Issue 21 item 1, as reported: `run` capturing from the log at 100 orders/s on the stack's
/// broker kind, the broker frozen (SIGSTOP) for 15 s, longer than the consumer's session (6 s).
/// Every order lands exactly once, within a bounded time of the thaw (the consumer's nudge
/// brings tansu's wedged group back; without it nothing lands again).
#[test]
fn a_15_s_broker_freeze_under_load_delays_run_but_every_order_lands_once() {
    let broker = common::Broker::start_postgres();
    let mut env = TestEnv::with_brokers("pipe_freeze", &broker.addr);
    // A freeze longer than the session: what wedged tansu's group for good (see sink::watch).
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
    env.capture = "logical";
    env.write_config("");
    env.init();
    let (mut run, port) = env.spawn_serving(&["run"]);
    wait_lake_rows(&env, 10);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserter = {
        let (stop, table) = (stop.clone(), env.t());
        std::thread::spawn(move || {
            let mut c = common::pg();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.batch_execute(&format!(
                    "INSERT INTO {table} (customer_name, restaurant_name, item, amount, order_status) \
                     VALUES ('Freeze Customer', 'Freeze Restaurant', 'Item', 12.50, 'PLACED')"
                ))
                .unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    broker.freeze();
    std::thread::sleep(Duration::from_secs(15));
    broker.thaw();
    let thawed = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = 10 + inserter.join().unwrap();
    let ended = std::time::Instant::now();
    let landed = std::panic::catch_unwind(|| {
        wait_until(Duration::from_secs(120), &format!("{total} rows in the lake"), || {
            committed_rows(&env) >= total
        })
    });
    for l in run
        .log_text()
        .lines()
        .filter(|l| l.contains("partitions") || l.contains("WARN") || l.contains("ERROR"))
    {
        println!("run: {l}");
    }
    assert!(landed.is_ok(), "not every order landed; /health: {:?}", common::http_get(port, "/health"));
    println!(
        "{total} orders in the lake {:.1} s after the thaw, {:.1} s after the last insert",
        thawed.elapsed().as_secs_f64(),
        ended.elapsed().as_secs_f64()
    );
    assert_eq!(run.terminate(Duration::from_secs(60)), 0, "{}", run.log_text());
    let rows = assert_lake_is_table(&env);
    assert_eq!(rows.len() as u64, total);
}
