//! `datalake.format: delta`: the lake as a Delta table on local disk and on the stack's S3
//! server, read back by DuckDB's delta extension and by a replay of the table's log that uses
//! no Delta library; exactly once under SIGKILLs, frozen members, several consumers that share
//! nothing but the broker and the table, and an S3 outage; bad settings refused in one line.

use crate::common;

use std::time::Duration;

use common::delta::{Store, create_bucket, s3_endpoint, stack_s3};
use common::lake::{LakeRow, create_topic, python};
use common::proc::{wait_for, wait_until};
use common::topic::read_topic;
use common::volume::{produce_paced, volume_message, wait_assigned};
use common::{Broker, Rng, TestEnv};
use orderstream::sink::{FAILPOINT_VAR, Failpoint};

/// The table holds exactly the valid messages of `0..n` (read by DuckDB and by the log
/// replay, which must agree), and every reject is in the dead-letter topic.
fn assert_delta_exactly_once(env: &TestEnv, n: i64, positions: &[(i32, i64)]) {
    let expected: Vec<LakeRow> = (0..n).filter_map(|i| volume_message(i).1).collect();
    let duck = env.read_delta("duckdb", false).rows;
    if duck != expected {
        let mut seen = std::collections::BTreeMap::<i64, usize>::new();
        for r in &duck {
            *seen.entry(r.order_id).or_default() += 1;
        }
        let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|r| !seen.contains_key(&r.order_id))
            .map(|r| r.order_id)
            .take(10)
            .collect();
        panic!(
            "table holds {} rows, expected {}; duplicated: {dup:?}; missing: {missing:?}",
            duck.len(),
            expected.len()
        );
    }
    let replay = env.read_delta("replay", false).rows;
    assert!(replay == expected, "the log replay disagrees with DuckDB ({} rows)", replay.len());
    let letters = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
    for i in (0..n).filter(|i| i % 997 == 3 && i % 1009 != 500) {
        let (p, o) = positions[i as usize];
        assert!(
            letters.iter().any(|r| r.header("orderstream.source.partition") == Some(p.to_string())
                && r.header("orderstream.source.offset") == Some(o.to_string())),
            "the reject at {p}/{o} is not in the dead-letter topic"
        );
    }
}

/// A world on `brokers` whose lake is a Delta table at `store`, with small batches.
fn delta_env(tag: &str, brokers: &str, store: &Store) -> TestEnv {
    let mut env = TestEnv::with_brokers(tag, brokers);
    env.use_delta(store);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "2000");
    env
}

/// Captures inserts, updates, deletes and a multi-row transaction from the log into a Delta
/// table at `store`; the current state read by DuckDB and by the log replay equals the table,
/// a restart adds nothing, and Python deltalake and Polars read the same rows.
fn changes_land_once(env: &mut TestEnv) {
    env.init();
    let mut run = env.spawn(&["run"]);
    // The snapshot of the ten seed orders first, so that what follows arrives as changes.
    wait_until(Duration::from_secs(90), "the snapshot in the table", || {
        std::thread::sleep(Duration::from_millis(300));
        env.lake().join("_delta_log").is_dir() || env.delta_uri().starts_with("s3://")
    });
    wait_until(Duration::from_secs(90), "the ten seed orders in the table", || {
        std::thread::sleep(Duration::from_millis(300));
        env.read_delta("replay", false).rows.len() == 10
    });
    let ids = env.insert(30);
    let mut pg = env.pg();
    let t = env.t();
    pg.batch_execute(&format!(
        "BEGIN; UPDATE {t} SET order_status = 'DELIVERED' WHERE order_id IN ({}, {}, {});
         DELETE FROM {t} WHERE order_id = {}; INSERT INTO {t} (customer_name, restaurant_name, item, amount, order_status)
         VALUES ('Late', 'R', 'I', 9.99, 'PLACED'); COMMIT;
         UPDATE {t} SET amount = amount + 1 WHERE order_id = {};",
        ids[0], ids[1], ids[2], ids[3], ids[4]
    ))
    .unwrap();
    let table: Vec<(i64, String, String)> = pg
        .query(&format!("SELECT order_id::int8, order_status, amount::text FROM {t} ORDER BY 1"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let current = |how: &str| -> Vec<(i64, String, String)> {
        env.read_delta(how, true)
            .rows
            .into_iter()
            .map(|r| (r.order_id, r.order_status.unwrap_or_default(), r.amount))
            .collect()
    };
    wait_until(Duration::from_secs(90), "the table's current state to equal PostgreSQL's", || {
        std::thread::sleep(Duration::from_millis(500));
        current("replay") == table
    });
    assert_eq!(run.stop(), 0, "{}", run.log_text());
    assert_eq!(current("duckdb"), table, "DuckDB's delta extension disagrees with the log replay");
    let changes = env.read_delta("replay", false).rows.len();
    // The seed's ten, 30 inserts, 3 updates, a delete, an insert, an update.
    assert_eq!(changes, 10 + 30 + 3 + 1 + 1 + 1);

    let mut run = env.spawn(&["run"]);
    env.insert(2);
    wait_until(Duration::from_secs(60), "two more changes", || {
        std::thread::sleep(Duration::from_millis(500));
        env.read_delta("replay", false).rows.len() == changes + 2
    });
    assert_eq!(run.stop(), 0, "{}", run.log_text());
    let all = env.read_delta("deltalake", false).rows;
    assert_eq!(all.len(), changes + 2, "Python deltalake sees another number of rows");
    assert_eq!(env.read_delta("polars", false).rows, all, "Polars reads other rows than Python deltalake");
}

#[test]
fn a_local_delta_table_gets_every_change_once_read_by_duckdb_and_a_replay_of_its_log() {
    let mut env = TestEnv::logical("delta_local");
    env.use_delta(&Store::Local);
    changes_land_once(&mut env);
    assert!(env.lake().join("_delta_log").is_dir());
    let dates: Vec<String> = std::fs::read_dir(env.lake())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("date="))
        .collect();
    assert!(!dates.is_empty(), "no Hive-style date folder in {}", env.lake().display());
}

#[test]
fn a_delta_table_on_s3_gets_every_change_once_read_by_duckdb_and_a_replay_of_its_log() {
    let store = stack_s3("dlt-s3");
    let mut env = TestEnv::logical("delta_s3");
    env.use_delta(&store);
    changes_land_once(&mut env);
    assert!(!env.lake().exists(), "an S3 table must not make a local folder");
}

#[test]
fn put_if_absent_of_the_stack_s3_server_is_atomic_under_a_race_of_writers() {
    // Delta commits on S3 are a put-if-absent of the next log entry: of writers racing for one
    // key exactly one may succeed, and the object must hold that writer's bytes.
    let script = r#"
import sys, threading, uuid, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=64, retries={"max_attempts": 1}))
bucket = sys.argv[2]
run = uuid.uuid4().hex
broken = 0
for r in range(40):
    key, results, barrier = f"{run}/{r:05d}.json", [], threading.Barrier(24)
    def put(i):
        barrier.wait()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=(f"writer {i} " * 4000).encode(), IfNoneMatch="*")
            results.append(("ok", i))
        except botocore.exceptions.ClientError as e:
            results.append((e.response["Error"]["Code"], i))
    ts = [threading.Thread(target=put, args=(i,)) for i in range(24)]
    [t.start() for t in ts]; [t.join() for t in ts]
    oks = [i for c, i in results if c == "ok"]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    if len(oks) != 1 or not body.startswith(f"writer {oks[0]} ") or any(c not in ("ok", "PreconditionFailed") for c, _ in results):
        broken += 1
        print(f"round {r}: winners {oks}, object from {body[:10]!r}, answers {sorted(set(c for c, _ in results))}")
print(f"broken {broken}")
"#;
    let Store::S3 { bucket, endpoint } = stack_s3("dlt-race") else { unreachable!() };
    let mut cmd = std::process::Command::new(python());
    cmd.arg("-c").arg(script).arg(&endpoint).arg(&bucket);
    let (code, out, err) = common::proc::run(cmd, None, Duration::from_secs(300));
    assert_eq!(code, 0, "{err}");
    assert!(out.trim_end().ends_with("broken 0"), "put-if-absent is not atomic on {endpoint}:\n{out}");
}

/// SIGKILLs at random moments, and crashes right after the data files are written and right
/// after the commit: every valid message lands once, and files of an uncommitted batch are
/// never in the table.
fn crash_loop(store: &Store, tag: &str, kills: usize) {
    let mut rng = Rng::from_env(tag);
    let broker = Broker::start_memory();
    let mut env = delta_env(tag, &broker.addr, store);
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "3000");
    create_topic(&broker.addr, &env.topic, 3);
    const N: i64 = 30_000;
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..10_000, 10_000, Duration::ZERO).join().unwrap();
    let stream = produce_paced(&broker.addr, &env.topic, 10_000..N, 2_000, Duration::from_millis(300));
    let mut seen = Vec::new();
    for i in 0..kills {
        let mut cmd = env.orderstream(&["consume"]);
        // Every third round crashes inside the commit instead: after the files, or after it.
        if i % 3 == 1 {
            cmd.env(FAILPOINT_VAR, Failpoint::Files.armed(1 + rng.below(3)));
        } else if i % 3 == 2 {
            cmd.env(FAILPOINT_VAR, Failpoint::Manifest.armed(1 + rng.below(3)));
        }
        let mut c = env.spawn_cmd(cmd, "consume");
        wait_assigned(&c, Duration::from_secs(60));
        let after = Duration::from_millis(rng.below(2_000));
        std::thread::sleep(after);
        c.kill();
        let read = env.read_delta("replay", false);
        let ids: Vec<i64> = read.rows.iter().map(|r| r.order_id).collect();
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(ids.len(), distinct.len(), "a row is in the table twice after a kill");
        seen.push((after.as_millis(), read.version, ids.len()));
    }
    println!("killed after assignment +ms (version, rows): {seen:?}");
    positions.extend(stream.join().unwrap());
    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    env.wait_delta_committed(&positions, Duration::from_secs(180));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_delta_exactly_once(&env, N, &positions);
    if let Store::Local = store {
        // Files of batches that crashed before their commit stay on disk, in no commit, until
        // `vacuum` deletes them once older than the retention (here: made 3 hours old).
        let listed = env.read_delta("replay", false).files.unwrap_or_default();
        let on_disk = data_files(&env);
        println!("data files: {listed} in the table, {} on disk", on_disk.len());
        for f in &on_disk {
            let (code, _, err) = common::proc::run(
                {
                    let mut c = std::process::Command::new("touch");
                    c.args(["-d", "3 hours ago"]).arg(env.lake().join(f));
                    c
                },
                None,
                Duration::from_secs(10),
            );
            assert_eq!(code, 0, "{err}");
        }
        env.set("ORDERSTREAM__DATALAKE__RETENTION_HOURS", "2");
        let (code, out, err) = env.run(&["vacuum", "--dry-run"]);
        assert_eq!(code, 0, "{err}");
        let orphans = out.lines().count();
        assert_eq!(orphans, on_disk.len() - listed, "vacuum --dry-run listed:\n{out}");
        assert_eq!(data_files(&env).len(), on_disk.len(), "a dry run deleted files");
        let (code, _, err) = env.run(&["vacuum"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(data_files(&env).len(), listed, "vacuum left files no commit references");
        assert_delta_exactly_once(&env, N, &positions);
    }
}

#[test]
fn delta_crash_loop_on_local_disk_keeps_every_message_exactly_once() {
    crash_loop(&Store::Local, "delta_crash", 9);
}

#[test]
fn delta_crash_loop_on_s3_keeps_every_message_exactly_once() {
    let store = stack_s3("dlt-crash");
    crash_loop(&store, "delta_crash_s3", 6);
}

/// Three consumers in one group that share only the broker and the table (each its own
/// scratch folder, as on three machines): one is killed and restarted, one is frozen past its
/// session timeout while the others take its partitions (its late commit must lose), and every
/// message lands once.
#[test]
fn three_consumers_sharing_only_broker_and_table_write_it_once_while_killed_and_frozen() {
    let broker = Broker::start_memory();
    let mut env = delta_env("delta_three", &broker.addr, &Store::Local);
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
    create_topic(&broker.addr, &env.topic, 6);
    const N: i64 = 40_000;
    let stream = produce_paced(&broker.addr, &env.topic, 0..N, 400, Duration::from_millis(200));
    let member = |name: &str| {
        let mut cmd = env.orderstream(&["consume"]);
        let scratch = env.dir.join(format!("scratch-{name}"));
        cmd.env("ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION", &scratch);
        env.spawn_cmd(cmd, &format!("consume-{name}"))
    };
    let mut a = member("a");
    let mut b = member("b");
    let mut c = member("c");
    for m in [&a, &b, &c] {
        wait_assigned(m, Duration::from_secs(60));
    }
    wait_until(Duration::from_secs(60), "a first commit", || !env.delta_positions().is_empty());
    a.kill();
    std::thread::sleep(Duration::from_secs(2));
    // B frozen well past its session: the others get its partitions and commit them; B's
    // in-flight batch must lose when it wakes.
    common::signal(b.pid(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(12));
    common::signal(b.pid(), libc::SIGCONT);
    let mut a2 = member("a2");
    wait_assigned(&a2, Duration::from_secs(60));
    let positions = stream.join().unwrap();
    env.wait_delta_committed(&positions, Duration::from_secs(180));
    for m in [&mut a2, &mut b, &mut c] {
        assert_eq!(m.stop(), 0, "{}", m.log_text());
    }
    assert_delta_exactly_once(&env, N, &positions);
    let scratch: Vec<String> =
        common::lake::files(&env.dir).into_iter().filter(|f| f.contains(".lock")).collect();
    assert!(scratch.is_empty(), "a Delta consumer took a lock file: {scratch:?}");
    let logs = env.logs("consume-b");
    println!(
        "B after its freeze: {}",
        logs.lines().filter(|l| l.contains("the table")).take(5).collect::<Vec<_>>().join("\n")
    );
}

/// The S3 server frozen for 30 s in the middle of a stream: commits wait and retry, then the
/// table holds every message once.
#[test]
fn an_s3_server_stopped_for_30_s_delays_the_table_and_loses_nothing() {
    let s3 = common::delta::PrivateS3::start();
    create_bucket(&s3.endpoint, "outage");
    let broker = Broker::start_memory();
    let store = Store::S3 { bucket: "outage".into(), endpoint: s3.endpoint.clone() };
    let mut env = delta_env("delta_s3_outage", &broker.addr, &store);
    // Requests give up after 5 s and are not retried for long: the outage makes commits fail
    // (and the batch be settled from the table), not just wait.
    env.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__TIMEOUT", "5s");
    env.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__RETRY_TIMEOUT", "10s");
    create_topic(&broker.addr, &env.topic, 2);
    const N: i64 = 12_000;
    let stream = produce_paced(&broker.addr, &env.topic, 0..N, 300, Duration::from_millis(200));
    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "a first commit", || {
        std::thread::sleep(Duration::from_millis(300));
        !env.delta_positions().is_empty()
    });
    s3.freeze();
    std::thread::sleep(Duration::from_secs(30));
    s3.thaw();
    let positions = stream.join().unwrap();
    env.wait_delta_committed(&positions, Duration::from_secs(240));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_delta_exactly_once(&env, N, &positions);
    let log = c.log_text();
    assert!(log.contains("batch not committed"), "no failed commit during the outage:\n{log}");
}

/// One line, the right exit code, and nothing written, for each wrong lake setting.
#[test]
fn wrong_lake_settings_are_refused_in_one_line_and_write_nothing() {
    let broker = Broker::start_memory();
    let base = TestEnv::with_brokers("delta_bad", &broker.addr);
    create_topic(&broker.addr, &base.topic, 1);
    let check = |env: &TestEnv, code: i32, says: &[&str]| {
        let mut c = env.spawn(&["consume"]);
        let got = c.wait(Duration::from_secs(120));
        let log = c.log_text();
        assert_eq!(got, code, "{log}");
        for s in says {
            assert!(log.contains(s), "expected `{s}` in:\n{log}");
        }
        assert!(!log.contains("test-secret-do-not-print"), "a secret was printed:\n{log}");
    };
    // A bucket that does not exist.
    let mut env = TestEnv::with_brokers("delta_nobucket", &broker.addr);
    env.use_delta(&Store::S3 { bucket: "no-such-bucket-orderstream".into(), endpoint: s3_endpoint() });
    check(&env, 1, &["s3://no-such-bucket-orderstream/"]);
    // Credentials the server does not know.
    let Store::S3 { bucket, endpoint } = stack_s3("dlt-cred") else { unreachable!() };
    let mut env = TestEnv::with_brokers("delta_cred", &broker.addr);
    env.use_delta(&Store::S3 { bucket: bucket.clone(), endpoint: endpoint.clone() });
    env.set("AWS_ACCESS_KEY_ID", "AKIAORDERSTREAMWRONG");
    env.set("AWS_SECRET_ACCESS_KEY", "test-secret-do-not-print");
    check(&env, 1, &["Delta table s3://"]);
    // An option nobody knows: a configuration error.
    let mut env = TestEnv::with_brokers("delta_opt", &broker.addr);
    env.use_delta(&Store::Local);
    env.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_ENDPIONT_URL", "http://127.0.0.1:1");
    check(&env, 2, &["datalake.storage_options", "AWS_ENDPIONT_URL"]);
    assert!(!env.lake().join("_delta_log").exists());
    // A Parquet lake at the path.
    let mut env = TestEnv::with_brokers("delta_parquet", &broker.addr);
    std::fs::create_dir_all(env.lake().join("date=2026-01-01")).unwrap();
    env.use_delta(&Store::Local);
    check(&env, 1, &["lake of format `parquet`"]);
    assert!(!env.lake().join("_delta_log").exists());
    // A Delta table of other columns.
    let mut env = TestEnv::with_brokers("delta_schema", &broker.addr);
    let script = "import sys, pyarrow as pa\nfrom deltalake import write_deltalake\n\
                  write_deltalake(sys.argv[1], pa.table({'order_id': pa.array([1], pa.int64()), 'total': [2.5]}))";
    let mut cmd = std::process::Command::new(python());
    cmd.arg("-c").arg(script).arg(env.lake());
    assert_eq!(common::proc::run(cmd, None, Duration::from_secs(60)).0, 0);
    env.use_delta(&Store::Local);
    check(&env, 1, &["column `customer_name`", "`total`"]);
    // Two topics into one table.
    let first = delta_env("delta_first", &broker.addr, &Store::Local);
    create_topic(&broker.addr, &first.topic, 1);
    let mut c = first.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let mut second = TestEnv::with_brokers("delta_second", &broker.addr);
    second.set("ORDERSTREAM__DATALAKE__FORMAT", "delta");
    second.set("ORDERSTREAM__DATALAKE__PATH", &first.lake().display().to_string());
    check(&second, 1, &[&format!("kafka.topic `{}`", first.topic), &format!("`{}`", second.topic)]);
    drop(base);
}

#[test]
fn the_delta_consumer_reports_its_table_version_and_last_commit_in_metrics() {
    let broker = Broker::start_memory();
    let env = delta_env("delta_metrics", &broker.addr, &Store::Local);
    create_topic(&broker.addr, &env.topic, 1);
    let positions = produce_paced(&broker.addr, &env.topic, 0..100, 100, Duration::ZERO).join().unwrap();
    let (mut c, port) = env.spawn_serving(&["consume"]);
    env.wait_delta_committed(&positions, Duration::from_secs(60));
    let version = env.read_delta("replay", false).version.unwrap_or(-1);
    let text = wait_for(Duration::from_secs(30), "the table version in /metrics", || {
        let (_, body) = common::http_get(port, "/metrics");
        body.contains(&format!("orderstream_consumer_table_version {version}")).then_some(body)
    });
    assert!(text.contains("orderstream_consumer_last_commit_timestamp_seconds"), "{text}");
    assert_eq!(c.stop(), 0, "{}", c.log_text());
}

/// The consumer compacts the table by itself while it writes, `orderstream compact` races it,
/// and a reader loops over the table all along, in turn with DuckDB and with the log replay:
/// no read sees a row twice or misses one an earlier read saw, and the table ends with every
/// message once, in one file per date after a last `compact`.
#[test]
fn compaction_racing_appends_and_another_compaction_never_shows_a_reader_a_row_twice_or_misses_one() {
    let broker = Broker::start_memory();
    let mut env = delta_env("delta_compact", &broker.addr, &Store::Local);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "0.2");
    env.set("ORDERSTREAM__DATALAKE__COMPACT_MIN_FILES", "4");
    env.set("ORDERSTREAM__DATALAKE__TARGET_FILE_SIZE", "1048576");
    env.set("ORDERSTREAM__DATALAKE__CHECKPOINT_INTERVAL", "10");
    create_topic(&broker.addr, &env.topic, 3);
    const N: i64 = 6_000;
    let (mut c, port) = env.spawn_serving(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    let stream = produce_paced(&broker.addr, &env.topic, 0..N, 100, Duration::from_millis(300));
    let watcher = {
        let mut cmd = std::process::Command::new(python());
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/delta_read.py")).args([
            "watch",
            &env.delta_uri(),
            "25",
        ]);
        std::thread::spawn(move || common::proc::run(cmd, None, Duration::from_secs(120)))
    };
    let mut by_hand = Vec::new();
    while !stream.is_finished() {
        let (code, out, err) = env.run(&["compact"]);
        assert_eq!(code, 0, "orderstream compact failed: {err}");
        by_hand.extend(out.lines().map(str::to_string));
        // Seldom enough that the consumer's own compactions get their turn.
        std::thread::sleep(Duration::from_millis(2_500));
    }
    let positions = stream.join().unwrap();
    env.wait_delta_committed(&positions, Duration::from_secs(120));
    let (code, out, err) = watcher.join().unwrap();
    assert_eq!(code, 0, "the watching reader failed: {err}");
    let watched: serde_json::Value = serde_json::from_str(&out).unwrap();
    println!("reader: {watched}; compactions by hand: {}", by_hand.len());
    assert_eq!(watched["problems"], serde_json::json!([]), "a reader saw a row twice or lost one: {watched}");
    assert!(watched["reads"].as_u64().unwrap_or(0) >= 10, "too few reads to mean anything: {watched}");
    let log = c.log_text();
    assert!(log.contains("compacted date="), "the consumer never compacted:\n{log}");
    assert!(!by_hand.is_empty(), "orderstream compact never found anything to do");
    let (_, metrics) = common::http_get(port, "/metrics");
    let compactions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orderstream_consumer_compactions_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(compactions.is_some_and(|n| n >= 1.0), "no compaction counted in /metrics:\n{metrics}");
    for name in ["orderstream_consumer_small_files", "orderstream_consumer_checkpoint_version"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // A log checkpoint every 10 commits (the table property set at creation).
    let log = env.lake().join("_delta_log");
    let created = std::fs::read_to_string(log.join(format!("{:020}.json", 0))).unwrap();
    assert!(created.contains(r#""delta.checkpointInterval":"10""#), "{created}");
    // The log and the tombstones are kept for datalake.retention_hours (a week by default).
    for key in ["delta.logRetentionDuration", "delta.deletedFileRetentionDuration"] {
        assert!(created.contains(&format!(r#""{key}":"interval 604800 seconds""#)), "{created}");
    }
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap()).unwrap();
    let checkpoint = last["version"].as_i64().unwrap_or(-1);
    assert!(checkpoint >= 9 && checkpoint % 10 == 9, "last checkpoint at version {checkpoint}");

    let (code, out, err) = env.run(&["compact"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_delta_exactly_once(&env, N, &positions);
    let read = env.read_delta("replay", false);
    let dates: std::collections::BTreeSet<String> = read.rows.iter().map(|r| r.date.clone()).collect();
    assert_eq!(read.files, Some(dates.len()), "after a last compact, one file per date; it printed:\n{out}");

    let (code, _, err) = env.run(&["compact", "--date", "2025-13-01"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("--date") && err.contains("2025-13-01"), "{err}");
    let (code, out, err) = env.run(&["compact", "--date", "2030-01-01"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("0 date partitions compacted"), "{err}");
}

/// The table's data files on local disk (its log's checkpoints left out).
fn data_files(env: &TestEnv) -> Vec<String> {
    table_files(&env.lake())
}

/// An order as the comparisons see it: (order_id, customer_name, order_status, amount).
type OrderNow = (i64, String, String, String);

/// The current table (`datalake.current_path`) read by `how` (`state-duckdb`, `state-polars`):
/// (order_id, customer_name, order_status, amount) by order_id, and its data files.
fn current_table(env: &TestEnv, how: &str) -> (Vec<OrderNow>, Option<u64>) {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/delta_read.py")).arg(how).arg(env.dir.join("current"));
    let (code, out, err) = common::proc::run(cmd, None, Duration::from_secs(120));
    assert_eq!(code, 0, "dev/delta_read.py {how} failed: {err}");
    let read: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("NULL").to_string();
    let rows = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["order_id"].as_i64().unwrap(),
                text(&r["customer_name"]),
                text(&r["order_status"]),
                text(&r["amount"]),
            )
        })
        .collect();
    (rows, read["files"].as_u64())
}

/// The orders table as (order_id, customer_name, order_status, amount).
fn table_now(env: &TestEnv) -> Vec<OrderNow> {
    env.pg()
        .query(
            &format!(
                "SELECT order_id::int8, coalesce(customer_name, 'NULL'), coalesce(order_status, 'NULL'), amount::text \
                 FROM {} ORDER BY 1",
                env.t()
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Inserts, updates, deletes and multi-row transactions while `run` is SIGKILLed again and
/// again, in every step of a commit (after the current table's commit and before the change
/// table's among them): the current table then equals PostgreSQL's, read by DuckDB and by
/// Polars, with one file per bucket of order ids. The current table is configured on a change
/// table that already holds the seed orders, and starts from them. Replay with
/// ORDERSTREAM_TEST_SEED.
#[test]
fn the_current_table_equals_postgresql_after_a_mixed_workload_under_sigkills() {
    let tag = "delta_current";
    let mut rng = Rng::from_env(tag);
    let mut env = TestEnv::logical(tag);
    env.use_delta(&Store::Local);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "0.3");
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
    env.init();
    // A change table first, without a current table: the current table starts from its rows.
    let mut run = env.spawn(&["run"]);
    wait_until(Duration::from_secs(90), "the ten seed orders in the change table", || {
        std::thread::sleep(Duration::from_millis(300));
        env.lake().join("_delta_log").is_dir() && env.read_delta("replay", false).rows.len() == 10
    });
    assert_eq!(run.stop(), 0, "{}", run.log_text());
    let current = env.dir.join("current");
    env.set("ORDERSTREAM__DATALAKE__CURRENT_PATH", &current.display().to_string());
    let t = env.t();
    // Writes go on until the last kill: a member tansu leaves without partitions after a kill
    // then sees messages nobody reads and rejoins (sink::watch), as it would in production; with
    // nothing left to read it would wait for the broker alone.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let workload = {
        let (mut pg, mut rng, t) = (env.pg(), Rng(rng.below(u64::MAX)), t.clone());
        let writing = writing.clone();
        std::thread::spawn(move || {
            let mut statements = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<i64> = pg
                    .query(&format!("SELECT order_id::int8 FROM {t} ORDER BY random() LIMIT 5"), &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let pick = |i: usize| ids.get(i).copied().unwrap_or(0);
                let sql = match rng.below(5) {
                    0 => format!(
                        "INSERT INTO {t} (customer_name, restaurant_name, item, amount, order_status) \
                         SELECT 'c' || g, 'R', 'I', g + 0.5, 'PLACED' FROM generate_series(1, {}) g",
                        1 + rng.below(20)
                    ),
                    1 => format!(
                        "UPDATE {t} SET order_status = 'DELIVERED', amount = amount + 1 WHERE order_id = {}",
                        pick(0)
                    ),
                    2 => format!("DELETE FROM {t} WHERE order_id = {}", pick(1)),
                    3 => format!(
                        "BEGIN; UPDATE {t} SET order_status = 'PREPARING' WHERE order_id IN ({}, {}); \
                         DELETE FROM {t} WHERE order_id = {}; INSERT INTO {t} (customer_name, restaurant_name, item, amount, order_status) \
                         VALUES ('tx', 'R', 'I', 1.25, 'PLACED'); UPDATE {t} SET customer_name = 'renamed' WHERE order_id = {}; COMMIT;",
                        pick(2),
                        pick(3),
                        pick(4),
                        pick(2)
                    ),
                    _ => format!(
                        "BEGIN; INSERT INTO {t} (customer_name, restaurant_name, item, amount, order_status) \
                         VALUES ('gone', 'R', 'I', 2, 'PLACED'); DELETE FROM {t} WHERE customer_name = 'gone'; COMMIT;"
                    ),
                };
                pg.batch_execute(&sql).unwrap();
                statements += 1;
                std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
            }
            statements
        })
    };
    let mut kills = Vec::new();
    let points = [Failpoint::Current, Failpoint::Files, Failpoint::Manifest];
    for i in 0..6 {
        let mut cmd = env.orderstream(&["run"]);
        let armed = i % 2 == 1;
        if armed {
            cmd.env(FAILPOINT_VAR, points[(i / 2) % 3].armed(1 + rng.below(3)));
        }
        let mut run = env.spawn_cmd(cmd, "run");
        wait_assigned(&run, Duration::from_secs(60));
        let after = Duration::from_millis(500 + rng.below(3_000));
        if armed {
            // The workload keeps batches coming: the failpoint is reached within seconds.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while run.running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            std::thread::sleep(after);
        }
        run.kill();
        let log = run.log_text();
        let crashed =
            log.lines().find(|l| l.contains("failpoint") && l.contains("reached")).map(str::to_string);
        kills.push((after.as_millis(), crashed));
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let statements = workload.join().unwrap();
    println!("killed after assignment +ms (or crashed at a failpoint): {kills:?}; {statements} statements");
    assert!(
        kills.iter().any(|(_, c)| c.as_deref().is_some_and(|l| l.contains("current:"))),
        "no run crashed between the current table's commit and the change table's: {kills:?}"
    );
    let mut run = env.spawn(&["run"]);
    let want = table_now(&env);
    wait_until(Duration::from_secs(120), "the current table to equal PostgreSQL's", || {
        std::thread::sleep(Duration::from_millis(500));
        current_table(&env, "state-duckdb").0 == want
    });
    assert_eq!(run.stop(), 0, "{}", run.log_text());
    let (duck, files) = current_table(&env, "state-duckdb");
    assert_eq!(current_table(&env, "state-polars").0, duck, "Polars reads another current table than DuckDB");
    let buckets: std::collections::BTreeSet<i64> = want.iter().map(|r| r.0 / 10_000).collect();
    assert_eq!(files, Some(buckets.len() as u64), "one file per bucket of 10,000 order ids");
    // The change table's own current state (the documented window query) agrees.
    let from_changes: Vec<i64> = env.read_delta("replay", true).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(from_changes, want.iter().map(|r| r.0).collect::<Vec<_>>());
    // `status` shows the current table caught up (exit 1: nothing runs any more).
    let (_, out, err) = env.run(&["status"]);
    let line = out.lines().find(|l| l.starts_with("Current")).unwrap_or_else(|| panic!("{out}{err}"));
    assert!(line.contains("0 messages behind the change table"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Upkeep")), "{out}");
}

/// Makes what `vacuum` judges by age `hours` older in the local Delta table at `table`: its
/// data files' modification times and the `deletionTimestamp` of every `remove` in its commits.
/// Its checkpoints, which hold the same removes, are deleted (readers replay the commits). The
/// clock itself cannot move for one process: libfaketime hangs in jemalloc's start.
fn age_table(table: &std::path::Path, hours: u64) {
    let shift = (hours * 3_600_000) as i64;
    // Without its checkpoints a reader replays every commit from the first.
    assert!(
        table.join("_delta_log").join(format!("{:020}.json", 0)).is_file(),
        "a commit file was cleaned up"
    );
    for e in std::fs::read_dir(table.join("_delta_log")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".checkpoint.") || name == "_last_checkpoint" {
            std::fs::remove_file(e.path()).unwrap();
        } else if name.ends_with(".json") {
            let mut aged = String::new();
            for line in std::fs::read_to_string(e.path()).unwrap().lines() {
                let mut action: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(at) = action.pointer_mut("/remove/deletionTimestamp")
                    && let Some(ms) = at.as_i64()
                {
                    *at = (ms - shift).into();
                }
                aged += &format!("{action}\n");
            }
            std::fs::write(e.path(), aged).unwrap();
        }
    }
    let then = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
    for f in table_files(table) {
        std::fs::File::options().write(true).open(table.join(f)).unwrap().set_modified(then).unwrap();
    }
}

/// The data files of the local Delta table at `table` (its log's checkpoints left out).
fn table_files(table: &std::path::Path) -> Vec<String> {
    common::lake::files(table)
        .into_iter()
        .filter(|f| f.ends_with(".parquet") && !f.starts_with("_delta_log"))
        .collect()
}

/// `vacuum` keeps what compaction and the current table's MERGEs replaced while it is younger
/// than `datalake.retention_hours`, then deletes it from both tables, and both still read
/// whole. A current table left behind while the consumer ran without it is refused in one line
/// that says what to do, and once deleted it is filled again from the change table.
#[test]
fn vacuum_deletes_what_both_tables_replaced_and_a_current_table_left_behind_is_refused() {
    let broker = Broker::start_memory();
    let mut env = delta_env("delta_vacuum", &broker.addr, &Store::Local);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "0.2");
    env.set("ORDERSTREAM__DATALAKE__CHECKPOINT_INTERVAL", "100000");
    let current = env.dir.join("current");
    let current_path = current.display().to_string();
    env.set("ORDERSTREAM__DATALAKE__CURRENT_PATH", &current_path);
    create_topic(&broker.addr, &env.topic, 3);
    const N: i64 = 2_000;
    let valid =
        |to: i64| -> Vec<i64> { (0..to).filter_map(|i| volume_message(i).1).map(|r| r.order_id).collect() };
    let current_ids =
        |env: &TestEnv| -> Vec<i64> { current_table(env, "state-duckdb").0.iter().map(|r| r.0).collect() };

    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..N / 2, 50, Duration::from_millis(150)).join().unwrap();
    env.wait_delta_committed(&positions, Duration::from_secs(120));
    let (code, _, err) = env.run(&["compact"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(current_ids(&env), valid(N / 2));

    let listed =
        (env.read_delta("replay", false).files.unwrap_or_default(), current_table(&env, "state-duckdb").1);
    let on_disk = (data_files(&env).len(), table_files(&current).len());
    println!("data files referenced (change, current): {listed:?}; on disk: {on_disk:?}");
    assert!(on_disk.0 > listed.0, "compaction replaced no file of the change table");
    assert!(on_disk.1 as u64 > listed.1.unwrap_or_default(), "no MERGE replaced a file of the current table");
    env.set("ORDERSTREAM__DATALAKE__RETENTION_HOURS", "2");
    let (code, out, err) = env.run(&["vacuum", "--dry-run"]);
    assert_eq!((code, out.as_str()), (0, ""), "vacuum listed files younger than the retention: {err}");

    age_table(&env.lake(), 3);
    age_table(&current, 3);
    let (code, out, err) = env.run(&["vacuum", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let replaced = (on_disk.0 - listed.0) + (on_disk.1 - listed.1.unwrap_or_default() as usize);
    assert_eq!(out.lines().count(), replaced, "vacuum --dry-run listed:\n{out}");
    assert_eq!((data_files(&env).len(), table_files(&current).len()), on_disk, "a dry run deleted files");
    let (code, _, err) = env.run(&["vacuum"]);
    assert_eq!(code, 0, "{err}");
    let left = (data_files(&env).len(), table_files(&current).len() as u64);
    assert_eq!(
        left,
        (listed.0, listed.1.unwrap_or_default()),
        "vacuum left a replaced file or took a live one"
    );
    assert_delta_exactly_once(&env, N / 2, &positions);
    assert_eq!(current_ids(&env), valid(N / 2), "the current table after vacuum");

    // Without the current table for a while: it falls behind the change table.
    env.unset("ORDERSTREAM__DATALAKE__CURRENT_PATH");
    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    positions.extend(produce_paced(&broker.addr, &env.topic, N / 2..N, 200, Duration::ZERO).join().unwrap());
    env.wait_delta_committed(&positions, Duration::from_secs(120));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    env.set("ORDERSTREAM__DATALAKE__CURRENT_PATH", &current_path);
    let mut c = env.spawn(&["consume"]);
    let code = c.wait(Duration::from_secs(90));
    let log = c.log_text();
    let refusal: Vec<&str> = log.lines().filter(|l| l.contains("datalake.current_path")).collect();
    assert_eq!((code, refusal.len()), (1, 1), "{log}");
    assert!(refusal[0].contains("Delete the current table"), "{log}");
    assert_eq!(current_ids(&env), valid(N / 2), "a refused consumer changed the current table");

    std::fs::remove_dir_all(&current).unwrap();
    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(120), "the current table filled again from the change table", || {
        std::thread::sleep(Duration::from_millis(500));
        current.join("_delta_log").is_dir() && current_ids(&env) == valid(N)
    });
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_delta_exactly_once(&env, N, &positions);
    // Made with a week's retention, the change table has the 2 hours configured since; the
    // current table was made with them.
    for table in [env.lake(), current] {
        for key in ["delta.logRetentionDuration", "delta.deletedFileRetentionDuration"] {
            let value = table_property(&table, key);
            assert_eq!(value.as_deref(), Some("interval 7200 seconds"), "{key} of {}", table.display());
        }
    }
}

/// The value of the table property `key` in the newest `metaData` of the local table's commits
/// (a table without checkpoints).
fn table_property(table: &std::path::Path, key: &str) -> Option<String> {
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let mut value = None;
    for commit in commits {
        for line in std::fs::read_to_string(commit).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(config) = action.pointer("/metaData/configuration") {
                value = config.get(key).and_then(|v| v.as_str()).map(str::to_string);
            }
        }
    }
    value
}

/// The versions of the commit files in the local table's log.
fn commit_versions(table: &std::path::Path) -> Vec<u64> {
    let mut versions: Vec<u64> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json")?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// Makes every file of the local table's log `hours` older.
fn age_log(table: &std::path::Path, hours: u64) {
    let then = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
    for e in std::fs::read_dir(table.join("_delta_log")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::File::options().write(true).open(e.path()).unwrap().set_modified(then).unwrap();
        }
    }
}

/// Commit files older than the log's retention (`datalake.retention_hours`) that a checkpoint
/// covers are deleted by the running consumer's upkeep thread, and by `vacuum` (not by a dry
/// run); the table then reads whole and takes further batches exactly once.
#[test]
fn expired_commit_files_are_deleted_by_the_consumer_and_by_vacuum_and_the_table_reads_whole() {
    let broker = Broker::start_memory();
    let mut env = delta_env("delta_logclean", &broker.addr, &Store::Local);
    env.set("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "0.2");
    env.set("ORDERSTREAM__DATALAKE__CHECKPOINT_INTERVAL", "5");
    env.set("ORDERSTREAM__DATALAKE__RETENTION_HOURS", "1");
    env.set("ORDERSTREAM__DATALAKE__COMPACT_MIN_FILES", "0");
    create_topic(&broker.addr, &env.topic, 3);
    let lake = env.lake();
    let checkpoint = |lake: &std::path::Path| -> u64 {
        let text = std::fs::read_to_string(lake.join("_delta_log").join("_last_checkpoint")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["version"].as_u64().unwrap()
    };
    let rows = |env: &TestEnv| env.read_delta("replay", false).rows.len();
    let valid = |to: i64| (0..to).filter(|i| volume_message(*i).1.is_some()).count();

    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..1_000, 50, Duration::from_millis(150)).join().unwrap();
    env.wait_delta_committed(&positions, Duration::from_secs(120));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let first = checkpoint(&lake);
    let before = commit_versions(&lake);
    println!("commit files {}..={}, checkpoint at {first}", before[0], before[before.len() - 1]);
    assert!(first >= 9 && before.first() == Some(&0), "too few commits to mean anything: {before:?}");

    // Two hours later, by the files' times: a dry run keeps them, a running consumer does not.
    age_log(&lake, 2);
    let (code, _, err) = env.run(&["vacuum", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(commit_versions(&lake), before, "a dry run deleted commit files");
    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(60), "the consumer to delete the expired commit files", || {
        std::thread::sleep(Duration::from_millis(200));
        commit_versions(&lake).first().is_some_and(|v| *v >= first)
    });
    positions.extend(
        produce_paced(&broker.addr, &env.topic, 1_000..1_500, 50, Duration::from_millis(150)).join().unwrap(),
    );
    wait_until(Duration::from_secs(120), "the new batches in the table", || {
        std::thread::sleep(Duration::from_millis(300));
        rows(&env) == valid(1_500)
    });
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_delta_exactly_once(&env, 1_500, &positions);

    // And by `vacuum`, without a consumer.
    let second = checkpoint(&lake);
    assert!(second > first, "no checkpoint after the new batches");
    age_log(&lake, 2);
    let (code, _, err) = env.run(&["vacuum"]);
    assert_eq!(code, 0, "{err}");
    let after = commit_versions(&lake);
    assert!(
        after.first().is_some_and(|v| *v >= second),
        "vacuum left commit files before {second}: {after:?}"
    );
    assert_delta_exactly_once(&env, 1_500, &positions);
}
