use super::clients::{self, Client};
use super::postgres::*;
use super::streaming::*;
use super::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

mod kafka;
mod tls;

const GOOD: &str = r#"
postgres:
  jdbc_url: "jdbc:postgresql://127.0.0.1:55432/food_delivery_db"
  table: "ROLL001_orders"
  user: "student"
  password: "student123"
kafka:
  brokers: "127.0.0.1:9092"
  topic: "ROLL001_food_orders_raw"
datalake:
  path: "DIR/lake"
  format: "parquet"
streaming:
  checkpoint_location: "DIR/checkpoints"
  last_processed_timestamp_location: "DIR/lastprocess"
  batch_interval: 5
"#;

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orderstream-config-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn text(yaml: &str) -> String {
    yaml.replace("DIR", tmp().to_str().unwrap())
}

/// Held while a test builds Kafka clients, so that a test counting threads sees only its own
/// (nextest runs every test in a process of its own; `cargo test` runs them side by side).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let _serial = serial();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_parts("test.yml", &text(yaml), &env)
}

fn err(yaml: &str, env: &[(&str, &str)]) -> String {
    match load(yaml, env) {
        Ok(_) => panic!("expected a configuration error"),
        Err(e) => e.0,
    }
}

#[test]
fn seed_keys_load_with_defaults() {
    let cfg = load(GOOD, &[]).unwrap();
    assert_eq!(cfg.postgres.connect.get_dbname(), Some("food_delivery_db"));
    assert_eq!(cfg.postgres.connect.get_ports(), &[55432]);
    assert_eq!(cfg.postgres.connect.get_user(), Some("student"));
    assert_eq!(cfg.postgres.connect.get_password(), Some(&b"student123"[..]));
    assert_eq!(cfg.postgres.table, TableName { schema: None, name: "roll001_orders".into() });
    assert_eq!(cfg.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(cfg.kafka.topic, "ROLL001_food_orders_raw");
    assert_eq!(cfg.kafka.partitions, 3);
    assert_eq!(cfg.kafka.group_id, "orderstream_ROLL001_food_orders_raw");
    assert_eq!(cfg.kafka.dlq_topic, "ROLL001_food_orders_raw_dlq");
    assert!(cfg.kafka.properties.is_empty());
    assert_eq!(cfg.streaming.batch_interval, Duration::from_secs(5));
    assert_eq!(cfg.metrics.listen, Some(format!("127.0.0.1:{DEFAULT_METRICS_PORT}").parse().unwrap()));
    assert_eq!(cfg.streaming.max_batch_rows, DEFAULT_MAX_BATCH_ROWS);
    // Loading creates nothing; create_folders makes the three.
    let folders = [
        &cfg.datalake.path,
        &cfg.streaming.checkpoint_location,
        &cfg.streaming.last_processed_timestamp_location,
    ];
    assert!(folders.iter().all(|f| !f.exists()), "{folders:?}");
    cfg.create_folders().unwrap();
    assert!(folders.iter().all(|f| f.is_dir()), "{folders:?}");
}

#[test]
fn the_shipped_config_file_loads() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/orders_stream.yml")).unwrap();
    // Its paths are relative to the repository; resolve them in a scratch directory.
    let dir = tmp();
    let text = text.replace("datalake/", &format!("{}/datalake/", dir.display()));
    let cfg = {
        let _serial = serial();
        Config::from_parts("orders_stream.yml", &text, &[]).unwrap()
    };
    assert_eq!(cfg.kafka.topic, "ROLL001_food_orders_raw");
    assert_eq!(cfg.postgres.table.name, "roll001_orders");
}

#[test]
fn batch_interval_defaults_to_one_second() {
    let cfg = load(&GOOD.replace("  batch_interval: 5\n", ""), &[]).unwrap();
    assert_eq!(cfg.streaming.batch_interval, Duration::from_secs(1));
}

#[test]
fn plain_postgres_url_and_fractional_interval() {
    let yaml = GOOD
        .replace(
            "jdbc:postgresql://127.0.0.1:55432/food_delivery_db",
            "postgres://other@db.example:5433/orders",
        )
        .replace("batch_interval: 5", "batch_interval: 0.2");
    let cfg = load(&yaml, &[]).unwrap();
    assert_eq!(cfg.postgres.connect.get_ports(), &[5433]);
    assert_eq!(cfg.postgres.connect.get_dbname(), Some("orders"));
    // postgres.user wins over the URL's user.
    assert_eq!(cfg.postgres.connect.get_user(), Some("student"));
    assert_eq!(cfg.streaming.batch_interval, Duration::from_millis(200));
}

#[test]
fn environment_overrides_every_section() {
    let cfg = load(
        GOOD,
        &[
            ("ORDERSTREAM__KAFKA__TOPIC", "other_topic"),
            ("ORDERSTREAM__KAFKA__PARTITIONS", "6"),
            ("ORDERSTREAM__POSTGRES__JDBC_URL", "postgres://127.0.0.1:6543/x"),
            ("ORDERSTREAM__POSTGRES__PASSWORD", "s3cret"),
            ("ORDERSTREAM__STREAMING__BATCH_INTERVAL", "0.5"),
            ("ORDERSTREAM__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000"),
            ("ORDERSTREAM__METRICS__PORT", "0"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.kafka.topic, "other_topic");
    assert_eq!(cfg.kafka.dlq_topic, "other_topic_dlq");
    assert_eq!(cfg.kafka.partitions, 6);
    assert_eq!(cfg.postgres.connect.get_ports(), &[6543]);
    assert_eq!(cfg.postgres.connect.get_password(), Some(&b"s3cret"[..]));
    assert_eq!(cfg.streaming.batch_interval, Duration::from_millis(500));
    assert_eq!(cfg.kafka.properties.get("session.timeout.ms").map(String::as_str), Some("6000"));
    assert_eq!(cfg.metrics.listen, None);
}

#[test]
fn kafka_properties_pass_through() {
    let yaml = GOOD.replace(
        "  topic: \"ROLL001_food_orders_raw\"\n",
        "  topic: \"ROLL001_food_orders_raw\"\n  properties:\n    security.protocol: plaintext\n    session.timeout.ms: 6000\n",
    );
    let cfg = load(&yaml, &[]).unwrap();
    assert_eq!(cfg.kafka.properties.get("security.protocol").map(String::as_str), Some("plaintext"));
    assert_eq!(cfg.kafka.properties.get("session.timeout.ms").map(String::as_str), Some("6000"));
}

#[test]
fn table_names_fold_like_unquoted_postgres_identifiers() {
    let t = TableName::parse("ROLL001_orders").unwrap();
    assert_eq!(t.quoted(), "\"roll001_orders\"");
    let t = TableName::parse("Sales.ROLL001_orders").unwrap();
    assert_eq!(t.quoted(), "\"sales\".\"roll001_orders\"");
    assert!(TableName::parse("a\"b").is_err());
    assert!(TableName::parse("").is_err());
}

#[test]
fn unknown_key_is_named() {
    let e = err(&GOOD.replace("  format: \"parquet\"", "  format: \"parquet\"\n  compression: zstd"), &[]);
    assert!(e.starts_with("test.yml: datalake"), "{e}");
    assert!(e.contains("unknown field `compression`"), "{e}");
}

#[test]
fn unknown_env_key_names_the_variable() {
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__TOPICS", "x")]);
    assert!(e.starts_with("ORDERSTREAM__KAFKA__TOPICS"), "{e}");
    assert!(e.contains("unknown field `topics`"), "{e}");
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA", "x")]);
    assert!(e.starts_with("ORDERSTREAM__KAFKA: expected ORDERSTREAM__<SECTION>__<KEY>"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = err(&GOOD.replace("batch_interval: 5", "batch_interval: soon"), &[]);
    assert!(e.starts_with("test.yml: streaming.batch_interval"), "{e}");
    assert!(e.contains("expected a number, got `soon`"), "{e}");
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PARTITIONS", "three")]);
    assert!(e.starts_with("ORDERSTREAM__KAFKA__PARTITIONS"), "{e}");
    assert!(e.contains("kafka.partitions"), "{e}");
    let e = err(&GOOD.replace("  topic: \"ROLL001_food_orders_raw\"", "  topic: [a, b]"), &[]);
    assert!(e.starts_with("test.yml: kafka.topic"), "{e}");
}

#[test]
fn missing_key_is_named() {
    let e = err(&GOOD.replace("  topic: \"ROLL001_food_orders_raw\"\n", ""), &[]);
    assert!(e.starts_with("test.yml: kafka"), "{e}");
    assert!(e.contains("missing field `topic`"), "{e}");
}

#[test]
fn malformed_urls_are_named_without_the_password() {
    for url in [
        "mysql://127.0.0.1/db",
        "jdbc:postgresql://127.0.0.1:notaport/db",
        "jdbc:postgresql://127.0.0.1:5432/",
        "postgres://u:hunter2@127.0.0.1:5432/db?bogus=1",
    ] {
        let e = err(&GOOD.replace("jdbc:postgresql://127.0.0.1:55432/food_delivery_db", url), &[]);
        assert!(e.starts_with("test.yml: postgres.jdbc_url: "), "{url}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    let e = err(GOOD, &[("ORDERSTREAM__POSTGRES__JDBC_URL", "nonsense")]);
    assert!(e.starts_with("ORDERSTREAM__POSTGRES__JDBC_URL (postgres.jdbc_url): "), "{e}");
}

#[test]
fn bad_values_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        ("brokers: \"127.0.0.1:9092\"", "brokers: \"localhost\"", "kafka.brokers"),
        ("topic: \"ROLL001_food_orders_raw\"", "topic: \"has space\"", "kafka.topic"),
        ("batch_interval: 5", "batch_interval: 0", "streaming.batch_interval"),
        ("batch_interval: 5", "batch_interval: -1", "streaming.batch_interval"),
        ("batch_interval: 5", "batch_interval: 5\n  max_batch_rows: 0", "streaming.max_batch_rows"),
        ("format: \"parquet\"", "format: \"csv\"", "datalake.format"),
        ("table: \"ROLL001_orders\"", "table: \"\"", "postgres.table"),
    ];
    for (from, to, key) in cases {
        let e = err(&GOOD.replace(from, to), &[]);
        assert!(e.starts_with(&format!("test.yml: {key}: ")), "{to}: {e}");
    }
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PARTITIONS", "0")]);
    assert!(e.contains("kafka.partitions"), "{e}");
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__DLQ_TOPIC", "ROLL001_food_orders_raw")]);
    assert!(e.contains("kafka.dlq_topic") && e.contains("must differ"), "{e}");
}

#[test]
fn bad_kafka_properties_are_named() {
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__NO_SUCH_THING", "1")]);
    assert_eq!(
        e,
        "ORDERSTREAM__KAFKA__PROPERTIES__NO_SUCH_THING (kafka.properties.no.such.thing): rejected by librdkafka: \
         No such configuration property: \"no.such.thing\""
    );
    let e = err(&with_properties("    linger.ms: soon\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.linger.ms: rejected by librdkafka: Invalid value for configuration property \
         \"queue.buffering.max.ms\""
    );
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE", "false")]);
    assert!(
        e.starts_with(
            "ORDERSTREAM__KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE (kafka.properties.enable.idempotence): orderstream \
             sets this to true on both producers because"
        ),
        "{e}"
    );
}

#[test]
fn path_that_cannot_be_created_is_named() {
    let dir = tmp();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let yaml = GOOD.replace("DIR/lake", &format!("{}/lake", file.display()));
    // Loading creates nothing; the commands that write create the folders, naming the key.
    let cfg = load(&yaml, &[]).unwrap();
    let e = cfg.create_folders().unwrap_err().to_string();
    assert!(e.starts_with("datalake.path: cannot create directory"), "{e}");
}

#[test]
fn invalid_yaml_is_reported_with_position() {
    let e = err("postgres: [unclosed", &[]);
    assert!(e.starts_with("test.yml: not valid YAML"), "{e}");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn password_never_shows_in_debug() {
    let cfg = load(GOOD, &[]).unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("student123"), "{debug}");
}

#[test]
fn missing_file_is_a_config_error() {
    let e = Config::load(Path::new("/nonexistent/orders_stream.yml")).unwrap_err();
    assert!(e.0.starts_with("/nonexistent/orders_stream.yml: cannot read config file"), "{}", e.0);
}

/// `GOOD` with these lines (`    name: value\n` each) as `kafka.properties`.
fn with_properties(lines: &str) -> String {
    GOOD.replace(
        "  topic: \"ROLL001_food_orders_raw\"\n",
        &format!("  topic: \"ROLL001_food_orders_raw\"\n  properties:\n{lines}"),
    )
}

/// Issue 21 item 5: a secret of any type, from the file, the environment or the URL, is never
/// in an error.
#[test]
fn no_error_repeats_a_secret_of_any_type() {
    let swap = |from: &str, to: &str| GOOD.replace(from, to);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (swap("password: \"student123\"", "password: 12345678"), vec![], "12345678"),
        (swap("password: \"student123\"", "password: 1234.5678"), vec![], "1234.5678"),
        (swap("password: \"student123\"", "password: [hunter22, 98765432]"), vec![], "98765432"),
        (swap("password: \"student123\"", "password: {a: hunter22}"), vec![], "hunter22"),
        (swap("password: \"student123\"", "password: true"), vec![], "true"),
        // The URL's password, with another key wrong in the URL.
        (
            swap(
                "jdbc:postgresql://127.0.0.1:55432/food_delivery_db",
                "postgres://student:hunter22@127.0.0.1:notaport/food_delivery_db",
            ),
            vec![],
            "hunter22",
        ),
        (
            swap(
                "jdbc:postgresql://127.0.0.1:55432/food_delivery_db",
                "postgres://student:hunter22@127.0.0.1:55432/food_delivery_db?sslmode=hunter22",
            ),
            vec![],
            "hunter22",
        ),
        // A Kafka secret given as a list, and one given in the environment with another error.
        (
            swap(
                "topic: \"ROLL001_food_orders_raw\"",
                "topic: \"ROLL001_food_orders_raw\"\n  properties:\n    sasl.password: [hunter22]",
            ),
            vec![],
            "hunter22",
        ),
        (
            GOOD.to_string(),
            vec![
                ("ORDERSTREAM__KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "hunter22"),
                ("ORDERSTREAM__KAFKA__BROKERS", "hunter22"),
            ],
            "hunter22",
        ),
    ];
    for (yaml, env, secret) in cases {
        let e = err(&yaml, &env);
        assert!(!e.contains(secret), "{secret} in: {e}");
        assert!(!e.is_empty());
    }
    let e = err(&swap("password: \"student123\"", "password: 12345678"), &[]);
    assert!(e.starts_with("test.yml: postgres.password: must be one string (quote a value"), "{e}");
    // An env override of the password is a string: accepted as is.
    let cfg = load(GOOD, &[("ORDERSTREAM__POSTGRES__PASSWORD", "12345678")]).unwrap();
    assert_eq!(cfg.postgres.connect.get_password(), Some(&b"12345678"[..]));
}

#[test]
fn metrics_listen_takes_an_address_and_metrics_port_still_works() {
    let listen = |env: &[(&str, &str)]| load(GOOD, env).unwrap().metrics.listen.map(|a| a.to_string());
    assert_eq!(listen(&[("ORDERSTREAM__METRICS__LISTEN", "0.0.0.0:9500")]).as_deref(), Some("0.0.0.0:9500"));
    assert_eq!(listen(&[("ORDERSTREAM__METRICS__LISTEN", "[::]:9501")]).as_deref(), Some("[::]:9501"));
    assert_eq!(listen(&[("ORDERSTREAM__METRICS__LISTEN", "127.0.0.1:0")]), None);
    assert_eq!(listen(&[("ORDERSTREAM__METRICS__PORT", "9502")]).as_deref(), Some("127.0.0.1:9502"));
    assert_eq!(
        err(GOOD, &[("ORDERSTREAM__METRICS__LISTEN", "localhost")]),
        "ORDERSTREAM__METRICS__LISTEN (metrics.listen): expected an IP address and a port, e.g. 127.0.0.1:9464, \
         0.0.0.0:9464 or [::]:9464; got `localhost`"
    );
    let both = format!("{GOOD}metrics:\n  port: 9503\n  listen: \"0.0.0.0:9503\"\n");
    assert_eq!(
        err(&both, &[]),
        "test.yml: metrics.listen: metrics.port is set too: keep one (metrics.port p is metrics.listen 127.0.0.1:p)"
    );
    // One from the environment replaces the other in the file (the demo's Delta consumer turns
    // its endpoint off with ORDERSTREAM__METRICS__PORT=0 over the shipped file's listen).
    let in_file = |key: &str, env: &[(&str, &str)]| {
        let text = format!("{GOOD}metrics:\n  {key}\n");
        load(&text, env).unwrap().metrics.listen.map(|a| a.to_string())
    };
    assert_eq!(in_file("listen: \"0.0.0.0:9504\"", &[("ORDERSTREAM__METRICS__PORT", "0")]), None);
    assert_eq!(
        in_file("listen: \"0.0.0.0:9504\"", &[("ORDERSTREAM__METRICS__PORT", "9505")]).as_deref(),
        Some("127.0.0.1:9505")
    );
    assert_eq!(
        in_file("port: 9506", &[("ORDERSTREAM__METRICS__LISTEN", "0.0.0.0:9507")]).as_deref(),
        Some("0.0.0.0:9507")
    );
    assert!(
        err(
            GOOD,
            &[("ORDERSTREAM__METRICS__PORT", "9508"), ("ORDERSTREAM__METRICS__LISTEN", "0.0.0.0:9508")]
        )
        .contains("metrics.port is set too"),
        "both from the environment stay an error"
    );
}
