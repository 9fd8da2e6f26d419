//! `orderstream init` and the command line against the real local stack.

mod common;

use chrono::NaiveDateTime;
use common::{Broker, TestEnv, pg};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

fn partitions(brokers: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len())
}

type SeedRow = (i32, String, String, String, String, String, NaiveDateTime);

fn rows(table: &str) -> Vec<SeedRow> {
    pg().query(
        &format!(
            "SELECT order_id, customer_name, restaurant_name, item, amount::text, order_status, created_at \
             FROM \"{table}\" ORDER BY order_id"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
    .collect()
}

#[test]
fn init_twice_leaves_exactly_the_ten_seed_orders_and_the_topics() {
    let env = TestEnv::new("init_twice");
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&format!("table {} created", env.table)), "{out}");
    assert!(out.contains("10 seed orders inserted (101-110), 10 rows in the table"), "{out}");
    assert!(out.contains(&format!("topic {} created with 3 partitions", env.topic)), "{out}");
    assert!(out.contains(&format!("topic {}_dlq created with 3 partitions", env.topic)), "{out}");

    // The second time, every line says what was already there.
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let db = format!("postgres 127.0.0.1:{}/food_delivery_db", common::pg_port());
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("{db}: table {} already present", env.table),
            format!("{db}: 0 seed orders inserted (101-110), 10 rows in the table"),
            format!("kafka: topic {} already present with 3 partitions", env.topic),
            format!("kafka: topic {}_dlq already present with 3 partitions", env.topic),
        ]
    );

    let got = rows(&env.table);
    assert_eq!(got.len(), 10);
    let first = &got[0];
    assert_eq!(
        (first.0, first.1.as_str(), first.2.as_str(), first.3.as_str(), first.4.as_str(), first.5.as_str()),
        (101, "John Doe", "Burger Junction", "Veg Burger", "220.00", "PLACED")
    );
    for (i, row) in got.iter().enumerate() {
        assert_eq!(row.0, 101 + i as i32);
        let expected = NaiveDateTime::parse_from_str("2025-01-18 12:24:00", "%Y-%m-%d %H:%M:%S").unwrap()
            + chrono::Duration::minutes(i as i64);
        assert_eq!(row.6, expected, "created_at of order {}", row.0);
    }
    assert_eq!(partitions(&env.brokers, &env.topic), Some(3));
    assert_eq!(partitions(&env.brokers, &format!("{}_dlq", env.topic)), Some(3));

    // The serial continues after the seed rows, and created_at defaults to now in UTC.
    let row = pg()
        .query_one(
            &format!(
                "INSERT INTO \"{}\" (customer_name, amount) VALUES ('next', 1.50) \
                 RETURNING order_id, extract(epoch from (now() AT TIME ZONE 'UTC') - created_at)::float8",
                env.table
            ),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 111);
    assert!(row.get::<_, f64>(1).abs() < 1.0);
}

#[test]
fn init_creates_the_configured_number_of_partitions() {
    let mut env = TestEnv::new("init_parts");
    env.set("ORDERSTREAM__KAFKA__PARTITIONS", "6");
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(partitions(&env.brokers, &env.topic), Some(6));
}

#[test]
fn unquoted_psql_name_and_configured_name_are_the_same_table() {
    let mut env = TestEnv::new("init_case");
    // The configured name in upper case folds to the same table the harness names in lower case.
    env.set("ORDERSTREAM__POSTGRES__TABLE", &env.table.to_uppercase());
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 0, "{err}");
    let n: i64 =
        pg().query_one(&format!("SELECT count(*) FROM {}", env.table.to_uppercase()), &[]).unwrap().get(0);
    assert_eq!(n, 10);
}

#[test]
fn init_against_a_stopped_database_fails_with_one_line() {
    let mut env = TestEnv::new("init_nodb");
    let closed = common::ClosedPort::new();
    let port = closed.port;
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{port}/food_delivery_db"),
    );
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{port}/food_delivery_db"
        )),
        "{err}"
    );
    assert!(!err.contains("student123"), "{err}");
}

#[test]
fn init_against_a_stopped_broker_fails_with_one_line() {
    let mut broker = Broker::start_memory();
    let env = TestEnv::with_brokers("init_nobroker", &broker.addr);
    broker.kill();
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("orderstream: Kafka: broker {} unreachable", broker.addr)), "{err}");
}

#[test]
fn configuration_errors_exit_2_before_contacting_anything() {
    let env = TestEnv::new("init_badcfg");
    // An unreachable database proves nothing was contacted: the config error comes first.
    let mut cmd = env.orderstream(&["init"]);
    cmd.env("ORDERSTREAM__POSTGRES__JDBC_URL", "jdbc:postgresql://127.0.0.1:1/x");
    cmd.env("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "fast");
    let (code, _, err) = common::run_output(cmd);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("orderstream: configuration error: ORDERSTREAM__STREAMING__BATCH_INTERVAL: streaming.batch_interval: expected a number, got `fast`"),
        "{err}"
    );

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orderstream"));
    cmd.args(["--config", "/nonexistent/orders.yml", "init"]);
    let (code, _, err) = common::run_output(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("orderstream: configuration error: /nonexistent/orders.yml: cannot read config file"),
        "{err}"
    );

    let (code, _, err) = env.run(&["no-such-command"]);
    assert_eq!(code, 2, "{err}");
}
