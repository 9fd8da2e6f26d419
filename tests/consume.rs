//! `orderstream consume` against a real broker: exact lake contents read back with DuckDB and
//! pyarrow, the dead-letter topic, replays, crashes at random moments, a rebalance after a
//! killed member, an unwritable lake and a clean stop.

mod common;

use std::time::Duration;

use common::TestEnv;
use common::lake::{
    Consume, LakeRow, Msg, Record, assert_clean_lake, create_topic, files, order_json, produce, read_duckdb,
    read_pyarrow, read_topic, states, wait_committed,
};

fn row(id: i64, customer: Option<&str>, amount: &str, created_at: &str, date: &str) -> LakeRow {
    LakeRow {
        order_id: id,
        customer_name: customer.map(str::to_string),
        restaurant_name: Some("Burger Junction".into()),
        item: Some("Veg Burger".into()),
        amount: amount.into(),
        order_status: Some("PLACED".into()),
        created_at: created_at.into(),
        date: date.into(),
    }
}

fn dlq(env: &TestEnv) -> Vec<Record> {
    read_topic(&env.brokers, &format!("{}_dlq", env.topic))
}

#[test]
fn valid_rows_land_exactly_and_every_bad_input_goes_to_the_dead_letter_topic() {
    let env = TestEnv::new("consume_bad");
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

    let mut c = Consume::start(&env);
    wait_committed(&env, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.stderr());

    let expected = vec![
        LakeRow {
            order_id: 101,
            customer_name: Some("John Doe".into()),
            restaurant_name: Some("Burger Junction".into()),
            item: Some("Veg Burger".into()),
            amount: "220.00".into(),
            order_status: Some("PLACED".into()),
            created_at: "2025-01-18T12:24:00.000000Z".into(),
            date: "2025-01-18".into(),
        },
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
    let env = TestEnv::new("consume_midnight");
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
    produce(&env.brokers, &env.topic, &msgs);
    let mut c = Consume::start(&env);
    wait_committed(&env, Duration::from_secs(60));
    assert_eq!(c.stop(), 0, "{}", c.stderr());

    let expected: Vec<LakeRow> = cases
        .iter()
        .map(|(id, _, utc, date)| row(*id, Some(&format!("Customer {id}")), "10.00", utc, date))
        .collect();
    assert_eq!(read_duckdb(&env.lake()).rows, expected);
    let arrow = read_pyarrow(&env.lake());
    assert_eq!(arrow.rows, expected);
    let types: Vec<String> = arrow.schema.iter().map(|(n, t)| format!("{n}:{t}")).collect();
    assert_eq!(
        types[..7],
        [
            "order_id:int64",
            "customer_name:string",
            "restaurant_name:string",
            "item:string",
            "amount:decimal128(10, 2)",
            "order_status:string",
            "created_at:timestamp[us, tz=UTC]",
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
