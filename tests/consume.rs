//! `orderstream consume` against a real broker: exact lake contents read back with DuckDB and
//! pyarrow, the dead-letter topic, replays, crashes at random moments, a rebalance after a
//! killed member, an unwritable lake and a clean stop.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::lake::{
    LakeRow, Msg, assert_clean_lake, committed_total, create_topic, files, order_json, produce, read_duckdb,
    read_pyarrow, states, wait_committed,
};
use common::proc::{wait_for, wait_until};
use common::topic::{Record, read_topic};
use common::volume::{assert_exactly_once, produce_paced, produce_until, volume_message, wait_assigned};
use common::{Broker, Rng, TestEnv};
use orderstream::sink::{FAILPOINT_VAR, Failpoint};

fn row(id: i64, customer: Option<&str>, amount: &str, created_at: &str, date: &str) -> LakeRow {
    LakeRow::polled(
        id,
        customer.map(str::to_string),
        Some("Burger Junction".into()),
        Some("Veg Burger".into()),
        amount.into(),
        Some("PLACED".into()),
        created_at.into(),
        date.into(),
    )
}

fn dlq(env: &TestEnv) -> Vec<Record> {
    read_topic(&env.brokers, &format!("{}_dlq", env.topic))
}

#[test]
fn valid_rows_land_exactly_and_every_bad_input_goes_to_the_dead_letter_topic() {
    let env = TestEnv::poll("consume_bad");
    create_topic(&env.brokers, &env.topic, 2);

    let seed = r#"{"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}"#;
    // (message, expected reject reason or None for valid/tombstone)
    let cases: Vec<(Msg, Option<&str>)> = vec![
        (Msg::value(seed).key("101").to(0), None),
        (Msg::value("{\"order_id\": 1,").key("k-invalid").to(0).header("trace", "t-1"), Some("invalid_json")),
        (Msg::value("[1, 2, 3]").key("k-array").to(1), Some("invalid_json")),
        (Msg::value(b"\xff\xfe not utf8").to(1), Some("invalid_json")),
        (Msg::value(order_json(0, "1.00", "2025-01-18T12:00:00Z").replace("\"order_id\": 0", "\"order_id\": null")), Some("null_order_id")),
        (Msg::value(r#"{"customer_name": "a", "restaurant_name": "b", "item": "c", "amount": 5.00, "order_status": "PLACED", "created_at": "2025-01-18T12:00:00Z"}"#).to(1), Some("null_order_id")),
        (Msg::value(order_json(2, "0", "2025-01-18T12:00:00Z")).to(0), Some("non_positive_amount")),
        (Msg::value(order_json(3, "-5.00", "2025-01-18T12:00:00Z")).to(1), Some("non_positive_amount")),
        (Msg::value(order_json(4, "\"220.00\"", "2025-01-18T12:00:00Z")).to(0), Some("wrong_type")),
        (Msg::value(order_json(5, "1.234", "2025-01-18T12:00:00Z")).to(1), Some("amount_out_of_range")),
        (Msg::value(order_json(6, "100000000.00", "2025-01-18T12:00:00Z")).to(0), Some("amount_out_of_range")),
        (Msg::value(order_json(7, "1.00", "yesterday")).to(1), Some("invalid_created_at")),
        (Msg::value(order_json(8, "1.00", "2025-01-18T12:00:00Z").replace(", \"item\": \"Veg Burger\"", "")).to(0), Some("missing_field")),
        (Msg::value(order_json(9, "null", "2025-01-18T12:00:00Z")).to(1), Some("null_amount")),
        (Msg { key: Some(b"gone".to_vec()), partition: Some(1), ..Msg::default() }, None),
        (Msg::value("").to(0), None),
        (
            Msg::value(r#"{"order_id": 102, "customer_name": null, "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 0.01, "order_status": "PLACED", "created_at": "2025-01-18T12:25:00.123456Z", "coupon": "X1", "nested": {"a": [1]}}"#).to(1),
            None,
        ),
        (Msg::value(order_json(103, "99999999.99", "2025-01-18 12:26:00")).to(0), None),
        (Msg::value(order_json(104, "12.5", "2025-01-19T01:00:00+02:00")).to(1), None),
    ];
    let msgs: Vec<Msg> = cases.iter().map(|(m, _)| m.clone()).collect();
    let positions = produce(&env.brokers, &env.topic, &msgs);

    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    let expected = vec![
        LakeRow::polled(
            101,
            Some("John Doe".into()),
            Some("Burger Junction".into()),
            Some("Veg Burger".into()),
            "220.00".into(),
            Some("PLACED".into()),
            "2025-01-18T12:24:00.000000Z".into(),
            "2025-01-18".into(),
        ),
        row(102, None, "0.01", "2025-01-18T12:25:00.123456Z", "2025-01-18"),
        row(103, Some("Customer 103"), "99999999.99", "2025-01-18T12:26:00.000000Z", "2025-01-18"),
        row(104, Some("Customer 104"), "12.50", "2025-01-18T23:00:00.000000Z", "2025-01-18"),
    ];
    let read = read_duckdb(&env.lake());
    assert_eq!(read.rows, expected);
    let schema: Vec<(&str, &str)> = read.schema.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        schema,
        [
            ("order_id", "BIGINT"),
            ("customer_name", "VARCHAR"),
            ("restaurant_name", "VARCHAR"),
            ("item", "VARCHAR"),
            ("amount", "DECIMAL(10,2)"),
            ("order_status", "VARCHAR"),
            ("created_at", "TIMESTAMP WITH TIME ZONE"),
            ("op", "VARCHAR"),
            ("lsn", "BIGINT"),
            ("change_index", "INTEGER"),
            ("committed_at", "TIMESTAMP WITH TIME ZONE"),
            ("date", "DATE"),
        ]
    );
    assert_clean_lake(&env.lake());
    assert!(env.lake().join("_SUCCESS").is_file());

    // Each reject once, with its reason, original key, bytes and headers, and where it was read.
    let letters = dlq(&env);
    let rejects: Vec<(usize, &str)> =
        cases.iter().enumerate().filter_map(|(i, (_, r))| r.map(|r| (i, r))).collect();
    assert_eq!(letters.len(), rejects.len(), "{letters:#?}");
    for (i, reason) in rejects {
        let (partition, offset) = positions[i];
        let found: Vec<&Record> = letters
            .iter()
            .filter(|r| {
                r.header("orderstream.source.partition") == Some(partition.to_string())
                    && r.header("orderstream.source.offset") == Some(offset.to_string())
            })
            .collect();
        assert_eq!(found.len(), 1, "dead letter of message {i} at {partition}/{offset}: {letters:#?}");
        let r = found[0];
        assert_eq!(r.header("orderstream.reject.reason").as_deref(), Some(reason), "message {i}");
        assert_eq!(r.header("orderstream.source.topic"), Some(env.topic.clone()));
        assert!(!r.header("orderstream.reject.detail").unwrap_or_default().is_empty());
        assert_eq!(r.value, cases[i].0.value, "message {i}");
        assert_eq!(r.key, cases[i].0.key, "message {i}");
    }
    let traced = letters.iter().find(|r| r.key.as_deref() == Some(b"k-invalid")).unwrap();
    assert_eq!(traced.headers[0], ("trace".to_string(), b"t-1".to_vec()));

    // The checkpoint's counters.
    let st = states(&env);
    assert_eq!(st.iter().map(|s| s.rows_written).sum::<u64>(), 4);
    assert_eq!(st.iter().map(|s| s.tombstones).sum::<u64>(), 2);
    let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
    for s in &st {
        for (k, v) in &s.rejected {
            *by_reason.entry(k.clone()).or_default() += v;
        }
    }
    let want: std::collections::BTreeMap<String, u64> = [
        ("amount_out_of_range", 2),
        ("invalid_created_at", 1),
        ("invalid_json", 3),
        ("missing_field", 1),
        ("non_positive_amount", 2),
        ("null_amount", 1),
        ("null_order_id", 2),
        ("wrong_type", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_reason, want);
}

#[test]
fn timestamps_near_midnight_in_other_zones_land_in_their_utc_day() {
    let env = TestEnv::poll("consume_midnight");
    create_topic(&env.brokers, &env.topic, 1);
    let cases = [
        (1, "2025-01-18T23:30:00-05:00", "2025-01-19T04:30:00.000000Z", "2025-01-19"),
        (2, "2025-01-19T00:30:00+01:00", "2025-01-18T23:30:00.000000Z", "2025-01-18"),
        (3, "2025-01-18T23:59:59.999999Z", "2025-01-18T23:59:59.999999Z", "2025-01-18"),
        (4, "2025-01-19T00:00:00Z", "2025-01-19T00:00:00.000000Z", "2025-01-19"),
        (5, "2024-12-31T20:00:00-08:00", "2025-01-01T04:00:00.000000Z", "2025-01-01"),
        (6, "2025-01-01T05:29:59+05:30", "2024-12-31T23:59:59.000000Z", "2024-12-31"),
        (7, "2025-01-18T23:30:00", "2025-01-18T23:30:00.000000Z", "2025-01-18"),
    ];
    let msgs: Vec<Msg> =
        cases.iter().map(|(id, ts, _, _)| Msg::value(order_json(*id, "10.00", ts))).collect();
    let positions = produce(&env.brokers, &env.topic, &msgs);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    let expected: Vec<LakeRow> = cases
        .iter()
        .map(|(id, _, utc, date)| row(*id, Some(&format!("Customer {id}")), "10.00", utc, date))
        .collect();
    assert_eq!(read_duckdb(&env.lake()).rows, expected);
    let arrow = read_pyarrow(&env.lake());
    assert_eq!(arrow.rows, expected);
    let types: Vec<String> = arrow.schema.iter().map(|(n, t)| format!("{n}:{t}")).collect();
    assert_eq!(
        types[..11],
        [
            "order_id:int64",
            "customer_name:string",
            "restaurant_name:string",
            "item:string",
            "amount:decimal128(10, 2)",
            "order_status:string",
            "created_at:timestamp[us, tz=UTC]",
            "op:string",
            "lsn:int64",
            "change_index:int32",
            "committed_at:timestamp[us, tz=UTC]",
        ]
    );
    let dates: Vec<String> = files(&env.lake())
        .iter()
        .filter_map(|f| f.split_once('/').map(|(d, _)| d.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(dates, ["date=2024-12-31", "date=2025-01-01", "date=2025-01-18", "date=2025-01-19"]);
    assert_clean_lake(&env.lake());
}

fn sourced(id: i64, partition: i32, source: &str, seq: &str) -> Msg {
    Msg::value(order_json(id, "5.00", "2025-01-18T10:00:00Z"))
        .to(partition)
        .header("orderstream.source", source)
        .header("orderstream.seq", seq)
}

#[test]
fn replays_are_dropped_by_source_and_seq_across_batches_and_restarts() {
    let env = TestEnv::poll("consume_replay");
    create_topic(&env.brokers, &env.topic, 2);
    let src = "poll:food_delivery_db.orders";
    let first = vec![
        sourced(1, 0, src, "1"),
        sourced(2, 0, src, "2"),
        sourced(3, 0, src, "3"),
        sourced(3, 0, src, "3"), // replay inside one batch
        sourced(4, 0, src, "4"),
        sourced(5, 0, src, "5"),
        sourced(6, 1, src, "1"), // each partition has its own sequence
        sourced(7, 1, src, "2"),
        sourced(8, 1, src, "3"),
        Msg::value(order_json(9, "5.00", "2025-01-18T10:00:00Z")).to(0), // no headers: kept twice
        Msg::value(order_json(9, "5.00", "2025-01-18T10:00:00Z")).to(0),
    ];
    let positions = produce(&env.brokers, &env.topic, &first);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    // After a restart: the filter comes from the checkpoint.
    let second = vec![
        sourced(4, 0, src, "4"),
        sourced(5, 0, src, "5"),
        sourced(10, 0, src, "6"),
        sourced(8, 1, src, "3"),
        sourced(7, 1, src, "1"), // older than the max: a replay too
        sourced(11, 1, "poll:other", "1"),
        sourced(12, 1, src, "not a number"), // unusable position: not filtered
    ];
    let positions = produce(&env.brokers, &env.topic, &second);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11, 12]);
    let st = states(&env);
    assert_eq!(st.iter().map(|s| s.duplicates).collect::<Vec<_>>(), [3, 2]);
    assert_eq!(st[0].sources.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [(src, 6)]);
    assert_eq!(
        st[1].sources.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
        [(src, 3), ("poll:other", 1)]
    );
    assert_eq!(st.iter().map(|s| s.rows_written).sum::<u64>(), 13);
}

/// Every message of the test's topic, once at least `n` are there.
fn wait_messages(env: &TestEnv, n: usize) -> Vec<Record> {
    wait_for(Duration::from_secs(60), &format!("{n} messages in {}", env.topic), || {
        let msgs = read_topic(&env.brokers, &env.topic);
        (msgs.len() >= n).then_some(msgs)
    })
}

/// A message read from a topic, to write again as it was: key, value, every header, partition.
fn copy(r: &Record) -> Msg {
    Msg {
        partition: Some(r.partition),
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
    }
}

/// `m` with header `name` set to `value`: replaced where present, else added.
fn set_header(mut m: Msg, name: &str, value: &str) -> Msg {
    match m.headers.iter_mut().find(|(k, _)| k == name) {
        Some(h) => h.1 = value.as_bytes().to_vec(),
        None => m.headers.push((name.to_string(), value.as_bytes().to_vec())),
    }
    m
}

fn seq_of(r: &Record) -> u64 {
    r.header("orderstream.seq").unwrap().parse().unwrap()
}

/// The order ids in the lake (DuckDB), and the same list read by pyarrow.
fn lake_ids(env: &TestEnv) -> Vec<i64> {
    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    let arrow: Vec<i64> = read_pyarrow(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, arrow, "DuckDB and pyarrow disagree");
    ids
}

#[test]
fn a_forged_huge_seq_with_the_producers_headers_does_not_turn_later_orders_into_replays() {
    let env = TestEnv::poll("consume_poison");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    let seed = wait_messages(&env, 10);
    assert_eq!(producer.stop(), 0, "{}", producer.log_text());
    let source = format!("poll:food_delivery_db.{}", env.table);
    assert_eq!(seed[0].header("orderstream.source"), Some(source.clone()));

    // In every partition, two orders numbered 2^64-1: a fixture with only the source header,
    // and one with every header of a real message (as mirrored data would carry them).
    let max = u64::MAX.to_string();
    let mut forged = Vec::new();
    let mut forged_ids = Vec::new();
    for p in 0..3 {
        let id = 900_000 + i64::from(p) * 10;
        let fixture = Msg::value(order_json(id, "1.00", "2025-01-17T09:00:00Z"))
            .key(id.to_string())
            .to(p)
            .header("orderstream.source", &source)
            .header("orderstream.seq", &max);
        let mut mirrored = set_header(copy(&seed[0]), "orderstream.seq", &max);
        mirrored.partition = Some(p);
        mirrored.key = Some((id + 1).to_string().into_bytes());
        mirrored.value = Some(order_json(id + 1, "1.00", "2025-01-17T09:00:00Z").into_bytes());
        forged.extend([fixture, mirrored]);
        forged_ids.extend([id, id + 1]);
    }
    produce(&env.brokers, &env.topic, &forged);

    // A restart reads them as the topic's tail; then real orders follow.
    let mut producer = env.spawn(&["produce"]);
    env.insert(20);
    let all = wait_messages(&env, 10 + 6 + 20);
    assert_eq!(producer.stop(), 0, "{}", producer.log_text());
    let is_forged = |r: &Record| forged_ids.iter().any(|id| r.key_str() == Some(id.to_string()));
    let seed_keys: Vec<Option<Vec<u8>>> = seed.iter().map(|r| r.key.clone()).collect();
    let live: Vec<&Record> = all.iter().filter(|r| !is_forged(r) && !seed_keys.contains(&r.key)).collect();
    assert_eq!(live.len(), 20);
    // True replays are still dropped: the last real message of each partition written again
    // with all its headers, and a seed message of the same partition.
    let mut replays: Vec<Msg> = Vec::new();
    for p in 0..3 {
        let Some(last) = live.iter().filter(|r| r.partition == p).max_by_key(|r| r.offset) else { continue };
        replays.push(copy(last));
        replays.extend(seed.iter().filter(|s| s.partition == p).take(1).map(copy));
    }
    let mut positions: Vec<(i32, i64)> = all.iter().map(|r| (r.partition, r.offset)).collect();
    positions.extend(produce(&env.brokers, &env.topic, &replays));

    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    let mut want = env.table_ids();
    want.extend(&forged_ids);
    want.sort();
    assert_eq!(lake_ids(&env), want);
    let st = states(&env);
    assert_eq!(st.iter().map(|s| s.duplicates).sum::<u64>(), replays.len() as u64, "{st:#?}");
    let log = c.log_text();
    let warned = log.lines().find(|l| l.contains("WARN") && l.contains("replay")).unwrap_or_default();
    assert!(warned.contains(&source), "no warning naming the source of the replays:\n{log}");
    // The forged seqs are reported where they are met.
    let leap = log.lines().find(|l| l.contains("WARN") && l.contains("leapt by")).unwrap_or_default();
    assert!(leap.contains(&format!("source {source}")) && leap.contains("18446744073709551615"), "{log}");
    assert!(
        producer.log_text().contains("was not numbered by this producer state"),
        "{}",
        producer.log_text()
    );

    // The producer numbered on from its own state: a forged seq found in the tail is not its own.
    let mut seqs: Vec<u64> = live.iter().map(|r| seq_of(r)).collect();
    seqs.sort();
    assert_eq!(seqs, (11..=30).collect::<Vec<u64>>(), "{}", producer.log_text());
}

#[test]
fn a_producer_that_lost_its_state_starts_a_new_lineage_whose_orders_are_not_replays() {
    let env = TestEnv::poll("consume_lost_state");
    env.init();
    let mut producer = env.spawn(&["produce"]);
    wait_messages(&env, 10);
    env.insert(10);
    let before = wait_messages(&env, 20);
    assert_eq!(producer.stop(), 0, "{}", producer.log_text());

    std::fs::remove_file(env.lastprocess().join("last_timestamp.txt")).unwrap();
    env.insert(15);
    let mut producer = env.spawn(&["produce"]);
    let all = wait_messages(&env, 35);
    assert_eq!(producer.stop(), 0, "{}", producer.log_text());
    let after: Vec<&Record> = all
        .iter()
        .filter(|r| !before.iter().any(|b| b.offset == r.offset && b.partition == r.partition))
        .collect();
    assert_eq!(after.len(), 15, "recovery found the 20 published orders in the topic");
    // A new state is a new lineage: every message names the state that numbered it.
    let epoch = |r: &Record| r.header("orderstream.epoch").expect("every message names its epoch");
    let old = epoch(&before[0]);
    let new = epoch(after[0]);
    assert_ne!(old, new);
    assert!(before.iter().all(|r| epoch(r) == old) && after.iter().all(|r| epoch(r) == new));

    // The same source numbered from 1 again under another epoch (a lost state whose old
    // messages the topic no longer holds): new orders, not replays. And a copy of one message
    // of each lineage: replays, dropped.
    let restarted = set_header(
        set_header(copy(after[0]), "orderstream.epoch", "0190f1d2-0000-7000-8000-000000000001"),
        "orderstream.seq",
        "1",
    );
    let restarted = Msg {
        key: Some(b"990000".to_vec()),
        value: Some(order_json(990_000, "9.00", "2025-01-17T09:00:00Z").into_bytes()),
        ..restarted
    };
    let extra = [restarted, copy(&before[0]), copy(after[0])];
    let mut positions: Vec<(i32, i64)> = all.iter().map(|r| (r.partition, r.offset)).collect();
    positions.extend(produce(&env.brokers, &env.topic, &extra));

    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let mut want = env.table_ids();
    want.push(990_000);
    want.sort();
    assert_eq!(lake_ids(&env), want);
    assert_eq!(states(&env).iter().map(|s| s.duplicates).sum::<u64>(), 2);
}

#[test]
fn only_valid_orders_advance_the_replay_filter_and_a_dead_letter_fixed_and_republished_lands() {
    let env = TestEnv::poll("consume_dlq_again");
    create_topic(&env.brokers, &env.topic, 1);
    let src = "poll:food_delivery_db.orders";
    let numbered =
        |m: Msg, seq: &str| m.to(0).header("orderstream.source", src).header("orderstream.seq", seq);
    let msgs = vec![
        sourced(1, 0, src, "1"),
        // A reject and a tombstone numbered ahead of the orders after them: they advance nothing.
        numbered(Msg::value("{\"order_id\": 50,"), "8"),
        numbered(Msg { key: Some(b"51".to_vec()), ..Msg::default() }, "9"),
        sourced(2, 0, src, "2"),
        numbered(Msg::value(order_json(3, "0", "2025-01-18T10:00:00Z")).key("3"), "3"),
        sourced(4, 0, src, "4"),
    ];
    let positions = produce(&env.brokers, &env.topic, &msgs);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(lake_ids(&env), [1, 2, 4]);

    // The dead letter keeps the lineage under other names, so that a fixed copy is new.
    let letters = dlq(&env);
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let letter = letters.iter().find(|r| r.key.as_deref() == Some(b"3")).unwrap();
    assert_eq!(letter.header("orderstream.reject.reason").as_deref(), Some("non_positive_amount"));
    assert_eq!(letter.header("orderstream.original.source").as_deref(), Some(src));
    assert_eq!(letter.header("orderstream.original.seq").as_deref(), Some("3"));
    assert_eq!(letter.header("orderstream.source"), None);
    assert_eq!(letter.header("orderstream.seq"), None);

    // Fixed and re-published with every header the dead letter carries.
    let fixed = Msg {
        partition: Some(0),
        key: letter.key.clone(),
        value: Some(order_json(3, "3.00", "2025-01-18T10:00:00Z").into_bytes()),
        headers: letter.headers.clone(),
    };
    let positions = produce(&env.brokers, &env.topic, &[fixed]);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(lake_ids(&env), [1, 2, 3, 4]);
    let st = states(&env);
    assert_eq!((st[0].rows_written, st[0].tombstones, st[0].duplicates), (4, 1, 0));
}

/// Issue 9 item 8, the partial case: recovery found the dead producer's share of its last
/// batch in partition 0 only, numbered the changes missing from partition 1 after the highest
/// seq it found, and the dead producer's request for partition 1 arrived late, *before* the
/// new copies. The seq rule lets the second new copy through (its number is above the late
/// ones); its log position, at or below the lineage's last one, marks it as a replay.
#[test]
fn a_late_partial_batch_and_its_renumbered_copies_land_once_by_log_position() {
    let env = TestEnv::poll("consume_partial");
    create_topic(&env.brokers, &env.topic, 2);
    let src = "logical:food_delivery_db.orders";
    let change = |id: i64, p: i32, seq: u64, lsn: &str, index: i32, op: &str| -> Msg {
        Msg::value(order_json(id, "5.00", "2025-01-18T10:00:00Z"))
            .key(id.to_string())
            .to(p)
            .header("orderstream.source", src)
            .header("orderstream.epoch", "01a21800-0000-7000-8000-000000000001")
            .header("orderstream.seq", seq.to_string())
            .header("orderstream.op", op)
            .header("orderstream.lsn", lsn)
            .header("orderstream.change_index", index.to_string())
            .header("orderstream.commit_ts", "2025-01-18T10:00:01Z")
    };
    let msgs = vec![
        // Saved before the crash.
        change(1, 0, 1, "0/100", 0, "r"),
        change(2, 1, 2, "0/100", 1, "r"),
        // The dead producer's last batch: partition 0's share was acknowledged and found.
        change(10, 0, 3, "0/200", 0, "c"),
        change(12, 0, 5, "0/200", 2, "c"),
        // Partition 1's share, late: seq 4 and 6 as the dead producer numbered them.
        change(11, 1, 4, "0/200", 1, "c"),
        change(13, 1, 6, "0/200", 3, "c"),
        // The new producer's copies of what it did not find, numbered after seq 5.
        change(11, 1, 6, "0/200", 1, "c"),
        change(13, 1, 7, "0/200", 3, "c"),
        // Then new changes, a delete and its tombstone (same position, not a replay).
        change(14, 1, 8, "0/300", 0, "c"),
        change(10, 0, 9, "0/400", 0, "d"),
        Msg { key: Some(b"10".to_vec()), ..Msg::default() }
            .to(0)
            .header("orderstream.source", src)
            .header("orderstream.epoch", "01a21800-0000-7000-8000-000000000001")
            .header("orderstream.seq", "10")
            .header("orderstream.op", "d")
            .header("orderstream.lsn", "0/400")
            .header("orderstream.change_index", "0")
            .header("orderstream.tombstone", "true"),
    ];
    let positions = produce(&env.brokers, &env.topic, &msgs);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let mut rows: Vec<(i64, String)> =
        read_duckdb(&env.lake()).rows.iter().map(|r| (r.order_id, r.op.clone())).collect();
    rows.sort();
    let want: Vec<(i64, String)> =
        [(1, "r"), (2, "r"), (10, "c"), (10, "d"), (11, "c"), (12, "c"), (13, "c"), (14, "c")]
            .iter()
            .map(|(i, o)| (*i, o.to_string()))
            .collect();
    assert_eq!(rows, want);
    let st = states(&env);
    let by_partition: Vec<(u64, u64, u64)> =
        st.iter().map(|s| (s.rows_written, s.duplicates, s.tombstones)).collect();
    assert_eq!(by_partition, [(4, 0, 1), (4, 2, 0)]);
    assert!(
        c.log_text().contains("1 message(s) of source logical:food_delivery_db.orders epoch 01a21800-0000-7000-8000-000000000001 dropped as replays by their log position")
            && c.log_text().contains("with seq 7 and position 0/200:3, at or below the last position 0/200:3"),
        "{}",
        c.log_text()
    );
}

#[test]
fn crash_loop_sigkill_at_random_moments_keeps_every_valid_message_exactly_once() {
    let mut rng = Rng::from_env("crash_loop");
    // The stack's kind of broker (PostgreSQL storage), the one users run the pipeline on.
    let broker = Broker::start_postgres();
    let mut env = TestEnv::with_brokers("consume_crash", &broker.addr);
    // Small batches: many commits, so kills land in every step of the protocol.
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "2000");
    // A killed member blocks the next assignment until its session expires.
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "3000");
    create_topic(&broker.addr, &env.topic, 4);
    const N: i64 = 120_000;
    // A backlog first, then a steady stream while the consumer is being killed.
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..40_000, 20_000, Duration::ZERO).join().unwrap();
    let stream = produce_paced(&broker.addr, &env.topic, 40_000..N, 4_000, Duration::from_millis(300));
    let mut kills = Vec::new();
    for _ in 0..12 {
        let mut c = env.spawn(&["consume"]);
        wait_assigned(&c, Duration::from_secs(60));
        let after = Duration::from_millis(rng.below(1_500));
        std::thread::sleep(after);
        c.kill();
        kills.push((after.as_millis(), committed_total(&env)));
        // At any instant, what a reader sees holds no partial batch and no row twice, and only
        // committed files match *.parquet.
        let stray: Vec<String> = files(&env.lake())
            .into_iter()
            .filter(|f| f.ends_with(".parquet") && !f.starts_with("date="))
            .collect();
        assert_eq!(stray, Vec::<String>::new());
        let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(ids.len(), distinct.len(), "a row is visible twice after a kill");
    }
    println!("killed after assignment +ms (checkpointed offsets at the kill): {kills:?}");
    positions.extend(stream.join().unwrap());
    let mut c = env.spawn(&["consume"]);
    // Assigned first: the kills may have left nothing to do, and a SIGTERM before the
    // handlers are installed would just kill it.
    wait_assigned(&c, Duration::from_secs(60));
    wait_committed(&env, &positions, Duration::from_secs(120));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert!(c.log_text().contains("stopped cleanly"), "{}", c.log_text());
    assert_exactly_once(&env, N, &positions);
}

/// Two consumers in one group on a private broker (`session.timeout.ms` 6000), a stream of
/// `n` messages at `per_second` running, both owning partitions and having committed.
struct Pair {
    broker: Broker,
    env: TestEnv,
    stream: std::thread::JoinHandle<Vec<(i32, i64)>>,
    a: common::proc::Proc,
    b: common::proc::Proc,
}

impl Pair {
    fn start(tag: &str, partitions: i32, n: i64, per_second: i64, committed_at_least: i64) -> Pair {
        let broker = Broker::start_memory();
        let mut env = TestEnv::with_brokers(tag, &broker.addr);
        env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "2000");
        env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
        create_topic(&broker.addr, &env.topic, partitions);
        let chunk = (per_second / 5) as usize;
        let stream = produce_paced(&broker.addr, &env.topic, 0..n, chunk, Duration::from_millis(200));
        let a = env.spawn(&["consume"]);
        let b = env.spawn(&["consume"]);
        wait_assigned(&a, Duration::from_secs(60));
        wait_assigned(&b, Duration::from_secs(60));
        wait_until(Duration::from_secs(60), "both consumers to commit", || {
            let owners: std::collections::BTreeSet<String> =
                states(&env).into_iter().map(|s| s.last_process).collect();
            owners.len() == 2 && committed_total(&env) > committed_at_least
        });
        Pair { broker, env, stream, a, b }
    }
}

#[test]
fn two_consumers_in_one_group_one_killed_midway_keep_every_message_exactly_once() {
    const N: i64 = 60_000;
    let Pair { broker: _broker, env, stream, mut a, mut b } = Pair::start("consume_pair", 6, N, 5_000, N / 4);
    // What B logs from here on: its assignments after A's death.
    let b_before_kill = b.log_text().len();
    a.kill();
    // The partitions A committed last are A's at its death (only the owner commits one), with
    // the offsets A reached.
    let a_id = process_id(&a.log_text());
    let a_had: Vec<(i32, i64)> = states(&env)
        .iter()
        .filter(|s| s.last_process == a_id)
        .map(|s| (s.partition, s.next_offset))
        .collect();
    assert!(!a_had.is_empty(), "A owns no committed partition: {:?}", states(&env));
    let done_at_kill = committed_total(&env);
    println!("consumer A killed with {done_at_kill} of {N} messages checkpointed, owning {a_had:?}");
    let positions = stream.join().unwrap();
    let waited = std::panic::catch_unwind(|| wait_committed(&env, &positions, Duration::from_secs(120)));
    assert!(waited.is_ok(), "B did not finish; states {:?}\nB:\n{}", states(&env), b.log_text());
    // B took over each of A's partitions after the kill, from no earlier than where A stopped.
    let after_kill = String::from_utf8_lossy(&b.log_text().as_bytes()[b_before_kill..]).into_owned();
    let taken: Vec<(i32, i64)> = after_kill
        .lines()
        .filter_map(|l| l.split("partitions assigned: ").nth(1))
        // Partitions waiting for a lock (after `;`) are not read yet.
        .flat_map(|list| {
            list.split(';').next().unwrap_or("").split_whitespace().filter_map(|p| p.split_once('@'))
        })
        .filter_map(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .collect();
    for (partition, reached) in &a_had {
        assert!(
            taken.iter().any(|(p, from)| p == partition && from >= reached),
            "B did not take over partition {partition} at offset {reached} or later after A's death:\n{after_kill}"
        );
    }
    assert_eq!(b.stop(), 0, "{}", b.log_text());
    assert_exactly_once(&env, N, &positions);
}

/// The id a consumer gives itself in its first line (`… process <id>`), the `last_process` of
/// the partitions it commits.
fn process_id(log: &str) -> String {
    let line =
        log.lines().find(|l| l.contains("consuming ")).unwrap_or_else(|| panic!("no start line:\n{log}"));
    line.rsplit("process ").next().unwrap().trim().to_string()
}

#[test]
fn an_unwritable_lake_commits_nothing_and_everything_lands_once_after_the_fix() {
    let env = TestEnv::poll("consume_unwritable");
    create_topic(&env.brokers, &env.topic, 1);
    let msgs: Vec<Msg> = (0..40)
        .map(|i| {
            let day = if i % 2 == 0 { "18" } else { "19" };
            Msg::value(order_json(i, "7.25", &format!("2025-01-{day}T08:00:00Z")))
        })
        .collect();
    let positions = produce(&env.brokers, &env.topic, &msgs);
    // A file where the lake needs the folder of 2025-01-19: mkdir fails even for root.
    std::fs::create_dir_all(env.lake()).unwrap();
    let blocker = env.lake().join("date=2025-01-19");
    std::fs::write(&blocker, b"not a folder").unwrap();

    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(60), "two failed attempts", || {
        c.log_text().matches("batch not committed").count() >= 2
    });
    let err = c.log_text();
    let line = err.lines().find(|l| l.contains("batch not committed")).unwrap();
    assert!(
        line.contains(&format!("cannot create directory {}: File exists (os error 17)", blocker.display())),
        "{line}"
    );
    // Nothing committed: no state, no data file, no temp leftovers, no group offsets.
    assert_eq!(states(&env), vec![]);
    let data: Vec<String> = files(&env.lake()).into_iter().filter(|f| f.contains(".parquet")).collect();
    assert_eq!(data, Vec::<String>::new());
    assert_eq!(group_offset(&env), None);

    std::fs::remove_file(&blocker).unwrap();
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let rows = read_duckdb(&env.lake()).rows;
    let want: Vec<(i64, String)> =
        (0..40).map(|i| (i, if i % 2 == 0 { "2025-01-18" } else { "2025-01-19" }.to_string())).collect();
    assert_eq!(rows.iter().map(|r| (r.order_id, r.date.clone())).collect::<Vec<_>>(), want);
    assert!(rows.iter().all(|r| r.amount == "7.25"));
    assert_clean_lake(&env.lake());
    assert_eq!(group_offset(&env), Some(40));
}

/// The offset the consumer group committed to Kafka for partition 0 (lag monitoring).
fn group_offset(env: &TestEnv) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("orderstream_{}", env.topic))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&env.topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()[0].offset().to_raw().filter(|o| *o >= 0)
}

#[test]
fn sigterm_exits_0_with_a_consistent_checkpoint_and_a_restart_continues_exactly_once() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_sigterm", &broker.addr);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "500");
    create_topic(&broker.addr, &env.topic, 3);
    // A backlog, then a stream that goes on until after the consumer exited: the SIGTERM lands
    // while messages keep coming, and the stop is before the end of the topic by construction
    // (how far a first run gets before the signal is a matter of disk and CPU speed).
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..20_000, 20_000, Duration::ZERO).join().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stream =
        produce_until(&broker.addr, &env.topic, 20_000, 200, Duration::from_millis(100), stop.clone());

    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(60), "a first commit", || committed_total(&env) > 0);
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert!(c.log_text().contains("stopped cleanly"), "{}", c.log_text());
    stop.store(true, Ordering::SeqCst);
    positions.extend(stream.join().unwrap());
    let produced = positions.len() as i64;

    // Consistent: no manifest or temp file left, and the lake holds exactly the messages below
    // each partition's checkpoint.
    assert_clean_lake(&env.lake());
    assert_eq!(files(&env.checkpoints().join("commits")), Vec::<String>::new());
    let st = states(&env);
    let below: Vec<LakeRow> = (0..produced)
        .filter(|&i| {
            let (p, o) = positions[i as usize];
            st.iter().any(|s| s.partition == p && o < s.next_offset)
        })
        .filter_map(|i| volume_message(i).1)
        .collect();
    assert_eq!(read_duckdb(&env.lake()).rows, below);

    positions.extend(
        produce_paced(&broker.addr, &env.topic, produced..produced + 5_000, 5_000, Duration::ZERO)
            .join()
            .unwrap(),
    );
    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_exactly_once(&env, produced + 5_000, &positions);
}

#[test]
fn a_crash_inside_every_step_of_the_commit_loses_and_duplicates_nothing() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_failpoints", &broker.addr);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "1000");
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "3000");
    create_topic(&broker.addr, &env.topic, 3);
    const N: i64 = 12_000;
    let positions = produce_paced(&broker.addr, &env.topic, 0..N, N as usize, Duration::ZERO).join().unwrap();
    // Each run crashes in its second (the first run: third) commit, one step further each time.
    for (point, nth) in Failpoint::ALL.into_iter().zip([3, 2, 2, 2]) {
        let step = point.name();
        let before = committed_total(&env);
        let mut cmd = env.orderstream(&["consume"]);
        cmd.env(FAILPOINT_VAR, point.armed(nth));
        let mut c = env.spawn_cmd(cmd, "consume");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while c.running() {
            assert!(std::time::Instant::now() < deadline, "no crash at {step}:{nth}:\n{}", c.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(c.log_text().contains(&format!("failpoint {step}:{nth} reached")), "{}", c.log_text());
        let after = committed_total(&env);
        println!("crashed at {step}:{nth}: checkpoint {before} -> {after}");
        assert!(after > before, "no progress before the crash at {step}");
    }
    let mut c = env.spawn(&["consume"]);
    wait_assigned(&c, Duration::from_secs(60));
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_exactly_once(&env, N, &positions);
}

#[test]
fn a_broker_outage_delays_the_lake_but_loses_and_duplicates_nothing() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_outage", &broker.addr);
    env.set("ORDERSTREAM__STREAMING__MAX_BATCH_ROWS", "1000");
    create_topic(&broker.addr, &env.topic, 3);
    let mut positions =
        produce_paced(&broker.addr, &env.topic, 0..10_000, 10_000, Duration::ZERO).join().unwrap();
    let mut c = env.spawn(&["consume"]);
    wait_until(Duration::from_secs(60), "a first commit", || committed_total(&env) > 0);
    // SIGSTOP: connections stay open, nothing answers (the in-flight batch's dead letters wait).
    broker.freeze();
    std::thread::sleep(Duration::from_secs(8));
    assert!(c.running(), "the consumer died during the outage:\n{}", c.log_text());
    broker.thaw();
    positions.extend(
        produce_paced(&broker.addr, &env.topic, 10_000..15_000, 5_000, Duration::ZERO).join().unwrap(),
    );
    wait_committed(&env, &positions, Duration::from_secs(120));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_exactly_once(&env, 15_000, &positions);
    let warnings = c.log_text().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    assert!(warnings <= 10, "{warnings} warning lines for one outage:\n{}", c.log_text());
}

#[test]
fn an_unreachable_broker_at_start_is_retried_with_growing_intervals_until_sigterm() {
    // Held closed until the end: the consumer keeps retrying it.
    let closed = common::ClosedPort::new();
    let env = TestEnv::with_brokers("consume_nobroker", &closed.addr());
    let mut c = env.spawn(&["consume"]);
    // One line when the outage begins; the next attempts are logged again only every minute.
    wait_until(Duration::from_secs(60), "a retry", || c.log_text().matches("retrying in").count() >= 1);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let err = c.log_text();
    let retries: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(retries.len(), 1, "{err}");
    assert!(retries[0].contains(&format!("broker {} unreachable", env.brokers)), "{err}");
    assert!(retries[0].contains("retrying in 1 s (outage began; reminders every 60 s)"), "{err}");
    assert_clean_lake(&env.lake());
}

/// A logical-mode message: the order's JSON with its change headers, as the producer writes them.
fn change(id: i64, amount: &str, created_at: &str, seq: u64, headers: &[(&str, &str)]) -> Msg {
    let mut m = Msg::value(order_json(id, amount, created_at))
        .key(id.to_string())
        .to(0)
        .header("orderstream.source", "logical:food_delivery_db.orders")
        .header("orderstream.seq", seq.to_string());
    for (k, v) in headers {
        m = m.header(k, v);
    }
    m
}

fn logical(op: &str, lsn: &str, index: &str, commit_ts: &str) -> [(&'static str, String); 4] {
    [
        ("orderstream.op", op.to_string()),
        ("orderstream.lsn", lsn.to_string()),
        ("orderstream.change_index", index.to_string()),
        ("orderstream.commit_ts", commit_ts.to_string()),
    ]
}

fn pairs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The DuckDB query of docs/lake.md for the current state of every order, on `lake`: its rows as
/// (order_id, amount).
fn current_state(lake: &std::path::Path) -> Vec<(i64, String)> {
    let page = include_str!("../docs/lake.md");
    let start =
        page.find("-- DuckDB: the current state of every order").expect("the query is in docs/lake.md");
    let end = start + page[start..].find("```").unwrap();
    let sql = page[start..end].replace("datalake/food/ROLL001/output/orders", &lake.display().to_string());
    let script = "import duckdb, json, sys\nrows = duckdb.sql(sys.argv[1]).fetchall()\n\
                  print(json.dumps([[r[0], str(r[4])] for r in rows]))";
    let mut cmd = std::process::Command::new(common::lake::python());
    cmd.arg("-c").arg(script).arg(&sql);
    let (code, out, err) = common::run_output(cmd);
    assert_eq!(code, 0, "{sql}\n{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn changes_land_with_op_lsn_index_and_commit_time_and_bad_change_headers_go_to_the_dead_letter_topic() {
    let env = TestEnv::poll("consume_changes");
    create_topic(&env.brokers, &env.topic, 1);
    let day = "2025-01-18T12:00:00Z";
    let delete = logical("d", "1/0", "0", "2026-11-26T06:00:02Z");
    let mut tombstone = Msg { key: Some(b"202".to_vec()), partition: Some(0), ..Msg::default() }
        .header("orderstream.source", "logical:food_delivery_db.orders")
        .header("orderstream.seq", "5");
    for (k, v) in &delete {
        tombstone = tombstone.header(k, v);
    }
    let msgs = vec![
        change(201, "10.00", day, 1, &pairs(&logical("c", "0/16B3748", "0", "2026-11-26T06:00:00.000001Z"))),
        change(201, "12.50", day, 2, &pairs(&logical("u", "0/16B3800", "0", "2026-11-26T06:00:01Z"))),
        change(202, "20.00", day, 3, &pairs(&logical("c", "0/16B3800", "1", "2026-11-26T06:00:01Z"))),
        // A delete carries the row before it.
        change(202, "20.00", day, 4, &pairs(&delete)),
        tombstone.header("orderstream.tombstone", "1"),
        // A snapshot read; the commit time given with an offset.
        change(
            203,
            "30.00",
            "2025-01-19T08:00:00Z",
            6,
            &pairs(&logical("r", "0/1000000", "5", "2026-11-26T07:59:59.5+02:00")),
        ),
        // Poll style: no change header.
        Msg::value(order_json(204, "40.00", day))
            .key("204")
            .to(0)
            .header("orderstream.source", "poll:food_delivery_db.orders")
            .header("orderstream.seq", "1"),
        change(205, "50.00", day, 7, &pairs(&logical("c", "0/xyz", "0", "2026-11-26T06:00:03Z"))),
        // A valid LSN that the lake's int64 column cannot hold.
        change(206, "60.00", day, 8, &pairs(&logical("c", "80000000/0", "0", "2026-11-26T06:00:03Z"))),
    ];
    let positions = produce(&env.brokers, &env.topic, &msgs);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    let with = |id: i64, amount: &str, op: &str, lsn: i64, index: i32, committed: &str| LakeRow {
        op: op.into(),
        lsn: Some(lsn),
        change_index: Some(index),
        committed_at: Some(committed.into()),
        ..row(id, Some(&format!("Customer {id}")), amount, "2025-01-18T12:00:00.000000Z", "2025-01-18")
    };
    let mut snapshot = with(203, "30.00", "r", 0x100_0000, 5, "2026-11-26T05:59:59.500000Z");
    (snapshot.created_at, snapshot.date) = ("2025-01-19T08:00:00.000000Z".into(), "2025-01-19".into());
    let expected = vec![
        with(201, "10.00", "c", 0x16B_3748, 0, "2026-11-26T06:00:00.000001Z"),
        with(201, "12.50", "u", 0x16B_3800, 0, "2026-11-26T06:00:01.000000Z"),
        with(202, "20.00", "c", 0x16B_3800, 1, "2026-11-26T06:00:01.000000Z"),
        with(202, "20.00", "d", 1 << 32, 0, "2026-11-26T06:00:02.000000Z"),
        snapshot,
        row(204, Some("Customer 204"), "40.00", "2025-01-18T12:00:00.000000Z", "2025-01-18"),
    ];
    assert_eq!(read_duckdb(&env.lake()).rows, expected);
    let arrow = read_pyarrow(&env.lake());
    assert_eq!(arrow.rows, expected);
    let types: Vec<String> = arrow.schema.iter().map(|(n, t)| format!("{n}:{t}")).collect();
    assert_eq!(
        types[7..11],
        ["op:string", "lsn:int64", "change_index:int32", "committed_at:timestamp[us, tz=UTC]"]
    );
    assert_clean_lake(&env.lake());

    // The malformed ones are dead letters naming the header; the tombstone is counted, not a row.
    let letters = dlq(&env);
    let got: Vec<String> = letters
        .iter()
        .map(|r| {
            let h = |name: &str| r.header(name).unwrap_or_default();
            let key = r.key_str().unwrap_or_default();
            format!(
                "{key} @{}: {} {}",
                h("orderstream.source.offset"),
                h("orderstream.reject.reason"),
                h("orderstream.reject.detail")
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            format!(
                "205 @{}: invalid_header header orderstream.lsn: `0/xyz` is not an LSN (like 0/16B3748)",
                positions[7].1
            ),
            format!(
                "206 @{}: invalid_header header orderstream.lsn: 80000000/0 is beyond the lake's int64 lsn column",
                positions[8].1
            ),
        ]
    );
    assert_eq!(letters[0].value, msgs[7].value);
    assert_eq!(letters[0].header("orderstream.lsn").as_deref(), Some("0/xyz"));
    let st = states(&env);
    assert_eq!((st[0].rows_written, st[0].tombstones, st[0].duplicates), (6, 1, 0));
    let rejected: Vec<(&str, u64)> = st[0].rejected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(rejected, [("invalid_header", 2)]);

    // docs/lake.md's current-state query: the last version of each order, deletes removed.
    assert_eq!(
        current_state(&env.lake()),
        [(201, "12.50".to_string()), (203, "30.00".to_string()), (204, "40.00".to_string())]
    );
}

/// The partitions a consumer holds the locks of, by its log: those of its last assignment
/// (not the ones waiting for a lock), or none when its last rebalance line is a revoke.
fn held_by(log: &str) -> Vec<i32> {
    let Some(line) =
        log.lines().rev().find(|l| l.contains("partitions assigned: ") || l.contains("partitions revoked: "))
    else {
        return Vec::new();
    };
    let Some(list) = line.split("partitions assigned: ").nth(1) else { return Vec::new() };
    list.split(';')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| t.split('@').next()?.parse().ok())
        .collect()
}

/// Issue 9 item 7: a member frozen (SIGSTOP) mid-batch for longer than its session. The other
/// member gets its partitions but must not write them while the frozen one still holds their
/// locks (it may wake up and commit its batch), and must not stall its own partitions while it
/// waits. After SIGCONT every message is in the lake exactly once.
#[test]
fn a_frozen_consumer_is_fenced_and_the_other_keeps_reading_its_own_partitions() {
    // 2,000 messages/s for 30 s: the stream outlasts the freeze, the session expiry and the
    // wait, and stays small (tansu's memory storage slows down as partitions grow).
    const N: i64 = 60_000;
    let Pair { broker: _broker, env, stream, mut a, mut b } = Pair::start("consume_frozen", 4, N, 2_000, 0);
    // Freeze A while it holds some partitions (tansu rebalances every few seconds here, and a
    // member frozen between a revoke and the next assignment holds nothing): A's log, final
    // while it is stopped, says what it holds.
    let mut tries = 0;
    let frozen = loop {
        wait_until(Duration::from_secs(30), "A to hold partitions", || !held_by(&a.log_text()).is_empty());
        common::signal(a.pid(), libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(100));
        let held = held_by(&a.log_text());
        // Some, not all: B must have partitions of its own to go on with.
        if !held.is_empty() && held.len() < 4 {
            break held;
        }
        common::signal(a.pid(), libc::SIGCONT);
        tries += 1;
        assert!(tries < 20, "A never held partitions when frozen:\n{}", a.log_text());
    };

    // B gets every partition once A's session expires, and waits for the locks A still holds.
    let waiting_line = wait_for(Duration::from_secs(60), "B to wait for A's partitions", || {
        b.log_text().lines().find(|l| l.contains("another live process still owns")).map(str::to_string)
    });
    println!("A owned {frozen:?} when frozen; B: {waiting_line}");
    // While A stays frozen, B's own partitions move on.
    let own = |env: &TestEnv| -> Vec<(i32, i64)> {
        states(env)
            .into_iter()
            .filter(|s| !frozen.contains(&s.partition))
            .map(|s| (s.partition, s.next_offset))
            .collect()
    };
    let before = own(&env);
    let moved = std::panic::catch_unwind(|| {
        wait_until(Duration::from_secs(20), "B's own partitions to advance while A is frozen", || {
            let now = own(&env);
            now.len() == before.len() && now.iter().zip(&before).all(|(n, b)| n.1 > b.1)
        })
    });
    let frozen_states: Vec<(i32, i64)> = states(&env)
        .into_iter()
        .filter(|s| frozen.contains(&s.partition))
        .map(|s| (s.partition, s.next_offset))
        .collect();
    common::signal(a.pid(), libc::SIGCONT);
    assert!(
        moved.is_ok(),
        "B stalled while A was frozen: before {before:?}, states {:?}\nB:\n{}",
        states(&env),
        b.log_text()
    );
    println!("A's partitions at SIGCONT: {frozen_states:?}");

    let positions = stream.join().unwrap();
    let waited = std::panic::catch_unwind(|| wait_committed(&env, &positions, Duration::from_secs(120)));
    assert!(
        waited.is_ok(),
        "not everything landed; states {:?}\nA:\n{}\nB:\n{}",
        states(&env),
        a.log_text(),
        b.log_text()
    );
    assert_eq!(b.stop(), 0, "{}", b.log_text());
    assert_eq!(a.stop(), 0, "{}", a.log_text());
    assert_exactly_once(&env, N, &positions);
}

/// A group member that takes its partitions and never commits: a hung process that still
/// heartbeats, or what a broker that keeps counting a killed member looks like from outside.
/// Its client id sorts first, so the range assignor gives it partition 0. Leaves when dropped.
struct Ghost {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ghost {
    fn join(brokers: &str, group: &str, topic: &str) -> Ghost {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", "aaa-ghost")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                consumer.unsubscribe();
                let _ = consumer.poll(Duration::from_millis(500));
            })
        };
        Ghost { stop, thread: Some(thread) }
    }
}

impl Drop for Ghost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_consumer_holding_nothing_while_a_partition_stalls_says_so_rejoins_and_takes_it_over() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_orphan", &broker.addr);
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "3000");
    create_topic(&broker.addr, &env.topic, 1);
    let positions = produce_paced(&broker.addr, &env.topic, 0..1_000, 1_000, Duration::ZERO).join().unwrap();
    let ghost = Ghost::join(&broker.addr, &format!("orderstream_{}", env.topic), &env.topic);
    let (mut c, port) = env.spawn_serving(&["consume"]);
    // The ghost holds partition 0 and never commits: after the stall window (10 s here) the
    // consumer says so, and rejoins; the ghost, alive, gets the partition again.
    wait_until(Duration::from_secs(60), "/health to report the stalled partition", || {
        let (code, body) = common::http_get(port, "/health");
        code == 503
            && body.contains("this member holds no partitions; partitions 0 have 1000 messages beyond their committed offsets")
    });
    wait_until(Duration::from_secs(30), "a rejoin", || c.log_text().contains("rejoining the group"));
    let metrics = common::http_get(port, "/metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("orderstream_consumer_rejoins_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(ghost);
    wait_committed(&env, &positions, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "/health to pass again", || {
        common::http_get(port, "/health").0 == 200
    });
    assert!(c.log_text().contains("every partition with messages beyond its committed offset is held again"));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_exactly_once(&env, 1_000, &positions);
}

#[test]
fn a_temp_folder_or_lake_deleted_while_running_stops_with_exit_1_naming_it_and_commits_nothing() {
    let env = TestEnv::poll("consume_deleted");
    create_topic(&env.brokers, &env.topic, 1);
    let batch = |from: i64| -> Vec<Msg> {
        (from..from + 10).map(|i| Msg::value(order_json(i, "3.50", "2025-01-18T08:00:00Z"))).collect()
    };
    let mut positions = produce(&env.brokers, &env.topic, &batch(0));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));

    // Only the temp area: a restart makes a new temp folder and goes on.
    std::fs::remove_dir_all(env.lake().join("_temporary")).unwrap();
    let more = produce(&env.brokers, &env.topic, &batch(10));
    assert_eq!(c.wait(Duration::from_secs(60)), 1, "{}", c.log_text());
    let log = c.log_text();
    assert!(
        log.contains("temp folder")
            && log.contains("is gone (deleted while the consumer ran?): stopping without committing"),
        "{log}"
    );
    assert_eq!(committed_total(&env), 10, "nothing committed after the deletion");
    let mut c = env.spawn(&["consume"]);
    positions.extend(more);
    wait_committed(&env, &positions, Duration::from_secs(60));
    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());

    // The whole lake: the consumer stops, names the lake and the checkpoint, and recreates
    // nothing (a lake rebuilt from here would lack orders 0-19 behind a checkpoint past them).
    std::fs::remove_dir_all(env.lake()).unwrap();
    produce(&env.brokers, &env.topic, &batch(20));
    assert_eq!(c.wait(Duration::from_secs(60)), 1, "{}", c.log_text());
    let log = c.log_text();
    let line = log.lines().find(|l| l.contains("is gone")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("the lake folder {} is gone", env.lake().display()))
            && line.contains(&format!("The checkpoint {}", env.checkpoints().display()))
            && line.contains("delete the checkpoint folder too"),
        "{line}"
    );
    assert_eq!(committed_total(&env), 20, "nothing committed after the deletion");
    assert!(!env.lake().join("date=2025-01-18").exists(), "no lake folder was recreated");
}

#[test]
fn a_reject_no_dead_letter_can_carry_is_quarantined_under_the_checkpoint_and_the_rest_lands() {
    let mut env = TestEnv::poll("consume_quarantine");
    // Dead letters above 3,000 bytes can never be sent.
    env.set("ORDERSTREAM__KAFKA__PROPERTIES__MESSAGE_MAX_BYTES", "3000");
    create_topic(&env.brokers, &env.topic, 1);
    let big = format!("not an order {}", "x".repeat(5_000));
    let mut msgs: Vec<Msg> =
        (0..5).map(|i| Msg::value(order_json(i, "4.00", "2025-01-18T08:00:00Z")).to(0)).collect();
    msgs.push(Msg::value(big.as_str()).key("k-big").to(0).header("trace", "t-9"));
    msgs.extend((5..10).map(|i| Msg::value(order_json(i, "4.00", "2025-01-18T08:00:00Z")).to(0)));
    msgs.push(Msg::value("{\"order_id\": 1,").key("k-small").to(0));
    let positions = produce(&env.brokers, &env.topic, &msgs);
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    // The small reject is a dead letter; the big one is in the quarantine, once.
    let dlq = read_topic(&env.brokers, &format!("{}_dlq", env.topic));
    assert_eq!(dlq.iter().map(|d| d.key_str().unwrap()).collect::<Vec<_>>(), ["k-small"]);
    let dir = env.checkpoints().join("quarantine");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{}-0-5.json", env.topic)]);
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(&names[0])).unwrap()).unwrap();
    assert_eq!(
        (q["offset"].as_i64(), q["reason"].as_str(), q["key"].as_str()),
        (Some(5), Some("invalid_json"), Some("k-big"))
    );
    assert_eq!(q["value"].as_str(), Some(big.as_str()));
    assert_eq!(q["headers"][0], serde_json::json!(["trace", "t-9"]));
    assert!(q["dead_letter_error"].as_str().unwrap().contains("too large"), "{q}");
    assert!(
        c.log_text().contains(&format!("was written to {} instead", dir.join(&names[0]).display())),
        "{}",
        c.log_text()
    );
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 1, "the consumer is not running: {err}");
    assert!(out.contains("quarantined 1 (rejects no dead letter could carry:"), "{out}");
}

#[test]
fn a_checkpoint_that_does_not_fit_the_topic_stops_the_consumer_instead_of_skipping_or_rereading() {
    let env = TestEnv::poll("consume_misfit");
    create_topic(&env.brokers, &env.topic, 1);
    let batch = |from: i64, n: i64| -> Vec<Msg> {
        (from..from + n).map(|i| Msg::value(order_json(i, "2.00", "2025-01-18T08:00:00Z")).to(0)).collect()
    };
    let mut positions = produce(&env.brokers, &env.topic, &batch(0, 10));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());

    // A checkpoint ahead of the topic (another topic's, or the topic was recreated).
    let state = env.checkpoints().join("state").join(format!("{}-0.json", env.topic));
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("\"next_offset\": 10"), "{saved}");
    std::fs::write(&state, saved.replace("\"next_offset\": 10", "\"next_offset\": 1000")).unwrap();
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "partition {}/0: the checkpoint's next offset 1000 is beyond the partition's end 10: the topic was \
             deleted and recreated",
            env.topic
        )),
        "{err}"
    );
    std::fs::write(&state, &saved).unwrap();

    // A lost checkpoint folder while the lake holds files: not the whole topic again.
    let lost = env.dir.join("checkpoints-lost");
    std::fs::rename(env.checkpoints(), &lost).unwrap();
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "partition {}/0 has no checkpoint in {}",
            env.topic,
            env.checkpoints().display()
        )) && err.contains("already holds files and the group has committed offset 10 for it")
            && err.contains("--from-beginning"),
        "{err}"
    );
    assert_eq!(read_duckdb(&env.lake()).rows.len(), 10, "nothing written twice");
    std::fs::remove_dir_all(env.checkpoints()).unwrap();
    std::fs::rename(&lost, env.checkpoints()).unwrap();

    // With the checkpoint back, the consumer goes on exactly once.
    positions.extend(produce(&env.brokers, &env.topic, &batch(10, 5)));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, (0..15).collect::<Vec<_>>());

    // --from-beginning does what it says, deliberately: every message once more.
    std::fs::remove_dir_all(env.checkpoints()).unwrap();
    let mut c = env.spawn(&["consume", "--from-beginning"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(read_duckdb(&env.lake()).rows.len(), 30);
}

/// `n` orders on partition 0, from order `from` on.
fn orders(from: i64, n: i64) -> Vec<Msg> {
    (from..from + n).map(|i| Msg::value(order_json(i, "2.00", "2025-01-18T08:00:00Z")).to(0)).collect()
}

/// The canonical path, as the lake's `_orderstream_checkpoint` records it.
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

/// The lake's `_orderstream_checkpoint`.
fn lake_record(lake: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(lake.join("_orderstream_checkpoint")).unwrap()).unwrap()
}

/// Waits until partition 0 of the checkpoint folder `checkpoint` is at `end`.
fn wait_partition_0(checkpoint: &std::path::Path, topic: &str, end: i64) {
    let path = checkpoint.join("state").join(format!("{topic}-0.json"));
    wait_until(Duration::from_secs(60), &format!("{} to reach {end}", path.display()), || {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<orderstream::sink::PartitionState>(&b).ok())
            .is_some_and(|s| s.next_offset >= end)
    });
}

#[test]
fn a_checkpoint_read_from_another_kafka_cluster_stops_the_consumer_naming_both_cluster_ids() {
    let broker = Broker::start_memory();
    let env = TestEnv::with_brokers("consume_cluster", &broker.addr);
    create_topic(&env.brokers, &env.topic, 1);
    let mut positions = produce(&env.brokers, &env.topic, &orders(0, 10));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(
        states(&env)[0].cluster.as_deref(),
        Some(broker.cluster.as_str()),
        "the state records the cluster"
    );

    // A state written before the cluster was recorded is adopted, and gets it at the next commit.
    let state = env.checkpoints().join("state").join(format!("{}-0.json", env.topic));
    let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("cluster");
    std::fs::write(&state, old.to_string()).unwrap();
    positions.extend(produce(&env.brokers, &env.topic, &orders(10, 5)));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(states(&env)[0].cluster.as_deref(), Some(broker.cluster.as_str()));

    // The same checkpoint as if read from another cluster: refused before anything is read.
    let other = format!("{}_other", broker.cluster);
    let saved = std::fs::read_to_string(&state).unwrap();
    let ours = format!("\"cluster\": \"{}\"", broker.cluster);
    assert!(saved.contains(&ours), "{saved}");
    std::fs::write(&state, saved.replace(&ours, &format!("\"cluster\": \"{other}\""))).unwrap();
    produce(&env.brokers, &env.topic, &orders(15, 5));
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    let line =
        err.lines().find(|l| l.contains("was written from Kafka cluster")).unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!(
            "partition {}/0: the checkpoint {} was written from Kafka cluster {other}, but the broker at {} is \
             cluster {}: the checkpoint belongs to another broker",
            env.topic,
            state.display(),
            broker.addr,
            broker.cluster
        )) && line.contains(&format!(
            "delete the checkpoint folder {} and the lake {}",
            env.checkpoints().display(),
            env.lake().display()
        )),
        "{line}"
    );
    let ids: Vec<i64> = read_duckdb(&env.lake()).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, (0..15).collect::<Vec<_>>(), "nothing written from the other cluster");
    assert_eq!(states(&env)[0].next_offset, 15);
}

#[test]
fn a_second_checkpoint_pointed_at_a_lake_another_checkpoint_writes_is_refused_naming_both() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_second_cp", &broker.addr);
    create_topic(&env.brokers, &env.topic, 1);
    let positions = produce(&env.brokers, &env.topic, &orders(0, 10));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let (lake, first) = (canonical(&env.lake()), canonical(&env.checkpoints()));
    let record = lake_record(&env.lake());
    let id = std::fs::read_to_string(env.checkpoints().join("lake_id")).unwrap().trim().to_string();
    assert_eq!(record["lake_id"], id.as_str());
    assert_eq!(record["checkpoint"], first.as_str());

    // A new checkpoint folder on the same lake: refused, naming both and the way out.
    let second_dir = env.dir.join("checkpoints-second");
    env.set("ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION", &second_dir.display().to_string());
    produce(&env.brokers, &env.topic, &orders(10, 5));
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    let second = canonical(&second_dir);
    let line =
        err.lines().find(|l| l.contains("is written by the checkpoint")).unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!(
            "the lake {lake} is written by the checkpoint {first} (lake id {id} in {}/_orderstream_checkpoint), but \
             streaming.checkpoint_location {second} is a new checkpoint: two checkpoints writing one lake would \
             write the topic into it twice. Point streaming.checkpoint_location at {first}",
            env.lake().display()
        )) && line.contains("--from-beginning"),
        "{line}"
    );
    assert_eq!(read_duckdb(&env.lake()).rows.len(), 10, "nothing written");
    assert_eq!(lake_record(&env.lake()), record, "the lake still belongs to the first checkpoint");

    // --from-beginning takes the lake over deliberately (the topic once more from the new
    // checkpoint), and the first checkpoint is refused from then on.
    let mut c = env.spawn(&["consume", "--from-beginning"]);
    wait_partition_0(&second_dir, &env.topic, 15);
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    assert_eq!(read_duckdb(&env.lake()).rows.len(), 25);
    let taken = std::fs::read_to_string(second_dir.join("lake_id")).unwrap().trim().to_string();
    assert_ne!(taken, id);
    assert_eq!(lake_record(&env.lake())["lake_id"], taken.as_str());
    env.env.retain(|(k, _)| k != "ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION");
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the lake {lake} is written by the checkpoint {second} (lake id {taken} in {}/_orderstream_checkpoint), \
             but streaming.checkpoint_location {first} writes another lake (lake id {id})",
            env.lake().display()
        )) && err.contains("use a new checkpoint folder and a new lake folder"),
        "{err}"
    );

    // The first checkpoint on a new lake folder: refused (that lake lacks what the checkpoint
    // read before), and nothing is written there.
    let new_lake = env.dir.join("lake-new");
    env.set("ORDERSTREAM__DATALAKE__PATH", &new_lake.display().to_string());
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the checkpoint {first} writes the lake with id {id}, but the lake {} has no _orderstream_checkpoint",
            new_lake.display()
        )) && err.contains(&format!("delete the checkpoint folder {first} too")),
        "{err}"
    );
    assert_eq!(files(&new_lake), Vec::<String>::new(), "a refused start writes nothing");
    assert_eq!(read_duckdb(&env.lake()).rows.len(), 25);
}

#[test]
fn a_lake_and_its_checkpoint_moved_together_go_on_exactly_once_and_a_copy_of_the_checkpoint_is_refused() {
    let broker = Broker::start_memory();
    let mut env = TestEnv::with_brokers("consume_moved", &broker.addr);
    create_topic(&env.brokers, &env.topic, 1);
    let positions = produce(&env.brokers, &env.topic, &orders(0, 10));
    let mut c = env.spawn(&["consume"]);
    wait_committed(&env, &positions, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let id = lake_record(&env.lake())["lake_id"].clone();

    // Both folders somewhere else: the same pair, so the consumer goes on from the checkpoint.
    let moved = env.dir.join("moved");
    std::fs::create_dir(&moved).unwrap();
    let (lake, checkpoint) = (moved.join("lake"), moved.join("checkpoints"));
    std::fs::rename(env.lake(), &lake).unwrap();
    std::fs::rename(env.checkpoints(), &checkpoint).unwrap();
    env.set("ORDERSTREAM__DATALAKE__PATH", &lake.display().to_string());
    env.set("ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION", &checkpoint.display().to_string());
    produce(&env.brokers, &env.topic, &orders(10, 5));
    let mut c = env.spawn(&["consume"]);
    wait_partition_0(&checkpoint, &env.topic, 15);
    assert_eq!(c.stop(), 0, "{}", c.log_text());
    let ids: Vec<i64> = read_duckdb(&lake).rows.iter().map(|r| r.order_id).collect();
    assert_eq!(ids, (0..15).collect::<Vec<_>>());
    let record = lake_record(&lake);
    assert_eq!(record["lake_id"], id, "still the same pair");
    assert_eq!(record["checkpoint"], canonical(&checkpoint).as_str(), "the record follows the move");
    assert!(!env.lake().exists() && !env.checkpoints().exists(), "nothing made at the old places");

    // A copy of the checkpoint on the same lake is a second checkpoint: refused.
    let copy = env.dir.join("checkpoints-copy");
    let status = std::process::Command::new("cp").arg("-r").arg(&checkpoint).arg(&copy).status().unwrap();
    assert!(status.success());
    env.set("ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION", &copy.display().to_string());
    produce(&env.brokers, &env.topic, &orders(15, 5));
    let (code, _, err) = env.run(&["consume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the lake {} is written by the checkpoint {}, and the checkpoint {} has the same lake id {} (a copy of \
             it?)",
            canonical(&lake),
            canonical(&checkpoint),
            canonical(&copy),
            id.as_str().unwrap()
        )),
        "{err}"
    );
    assert_eq!(read_duckdb(&lake).rows.len(), 15, "nothing written");
}
