use super::*;

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

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
    assert_eq!(cfg.metrics.port, DEFAULT_METRICS_PORT);
    assert_eq!(cfg.streaming.max_batch_rows, DEFAULT_MAX_BATCH_ROWS);
    assert!(cfg.datalake.path.is_dir());
    assert!(cfg.streaming.checkpoint_location.is_dir());
    assert!(cfg.streaming.last_processed_timestamp_location.is_dir());
}

#[test]
fn the_shipped_config_file_loads() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/orders_stream.yml")).unwrap();
    // Its paths are relative to the repository; resolve them in a scratch directory.
    let dir = tmp();
    let text = text.replace("datalake/", &format!("{}/datalake/", dir.display()));
    let cfg = Config::from_parts("orders_stream.yml", &text, &[]).unwrap();
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
    assert_eq!(cfg.metrics.port, 0);
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
    assert!(e.contains("kafka.properties.no.such.thing") && e.contains("librdkafka"), "{e}");
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE", "false")]);
    assert!(e.contains("kafka.properties.enable.idempotence") && e.contains("set by orderstream"), "{e}");
}

#[test]
fn path_that_cannot_be_created_is_named() {
    let dir = tmp();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let yaml = GOOD.replace("DIR/lake", &format!("{}/lake", file.display()));
    let e = err(&yaml, &[]);
    assert!(e.starts_with("test.yml: datalake.path: cannot create directory"), "{e}");
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

/// A self-signed CA certificate, only parsed here (TLS itself is tested in tests/tls.rs).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUa5Dei2chZMmuaMho0ZoHHu6eLVUwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYb3JkZXJzdHJlYW0gdW5pdCB0ZXN0IENBMCAXDTI2MTEyNjA2
NTgxOFoYDzIxMjYxMTAyMDY1ODE4WjAjMSEwHwYDVQQDDBhvcmRlcnN0cmVhbSB1
bml0IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARGFuR3f4de6+gm
Gz7ON5/lZIYa9vrxeJzQ0dRo16jWYo7gmvwrDokAwLm8jZl2OMQVjdhwDPtwZKHj
2aPnfAd+o1MwUTAdBgNVHQ4EFgQUUnNkJdeoZpH2UVHMsLoFHc69RZwwHwYDVR0j
BBgwFoAUUnNkJdeoZpH2UVHMsLoFHc69RZwwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiBVs2cL0Blr54ThHLrnIOieET7NioBleBQHBfD1V1LT8QIh
AK+qAgtcgc9Z9gX4ozLc9uc5fvkiogDcv4bnEPted0HL
-----END CERTIFICATE-----
";

fn with_url(url: &str) -> String {
    GOOD.replace("jdbc:postgresql://127.0.0.1:55432/food_delivery_db", url)
}

fn ca_file() -> PathBuf {
    let path = tmp().join("ca.pem");
    std::fs::write(&path, CA_PEM).unwrap();
    path
}

#[test]
fn sslmode_defaults_to_prefer_as_libpq() {
    let cfg = load(GOOD, &[]).unwrap();
    assert_eq!(cfg.postgres.tls.mode, SslMode::Prefer);
    assert!(cfg.postgres.tls.rustls.is_some());
    assert_eq!(cfg.postgres.connect.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
}

#[test]
fn tls_parameters_are_read_from_jdbc_and_postgres_urls() {
    let ca = ca_file();
    for url in [
        format!(
            "jdbc:postgresql://db.example.com:5432/food?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ),
        format!("postgres://u:pw@db.example.com:5432/food?sslrootcert={}&sslmode=verify-full", ca.display()),
        format!("jdbc:postgresql://db.example.com:5432/food?ssl=true&sslrootcert={}", ca.display()),
    ] {
        let cfg = load(&with_url(&url), &[]).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(cfg.postgres.tls.mode, SslMode::VerifyFull, "{url}");
        assert_eq!(cfg.postgres.tls.root_cert.as_deref(), Some(ca.as_path()), "{url}");
        assert_eq!(cfg.postgres.connect.get_dbname(), Some("food"), "{url}");
        assert_eq!(cfg.postgres.connect.get_ssl_mode(), tokio_postgres::config::SslMode::Require, "{url}");
    }
    let cfg = load(&with_url("jdbc:postgresql://h:5432/db?sslmode=disable&connect_timeout=3"), &[]).unwrap();
    assert_eq!(cfg.postgres.tls.mode, SslMode::Disable);
    assert!(cfg.postgres.tls.rustls.is_none());
    assert_eq!(cfg.postgres.connect.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    let cfg = load(&with_url("jdbc:postgresql://h:5432/db?ssl=false"), &[]).unwrap();
    assert_eq!(cfg.postgres.tls.mode, SslMode::Prefer);
    // %-escapes in a path, and `require` with a root cert checks the chain (as libpq).
    let escaped = ca.display().to_string().replace('/', "%2F");
    let cfg =
        load(&with_url(&format!("postgres://h/db?sslmode=require&sslrootcert={escaped}")), &[]).unwrap();
    assert_eq!(cfg.postgres.tls.root_cert.as_deref(), Some(ca.as_path()));
    assert!(cfg.postgres.tls.verifies_chain());
}

#[test]
fn tls_parameter_errors_are_configuration_errors_naming_key_and_path() {
    let cases: &[(&str, &str)] = &[
        (
            "jdbc:postgresql://h:5432/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "test.yml: postgres.jdbc_url: sslrootcert /nonexistent/ca.pem: cannot read: No such file or directory (os error 2)",
        ),
        (
            "jdbc:postgresql://h:5432/db?sslmode=verify-all",
            "test.yml: postgres.jdbc_url: sslmode `verify-all` is not one of disable, prefer, require, verify-ca, verify-full",
        ),
        (
            "jdbc:postgresql://h:5432/db?sslmode=allow",
            "test.yml: postgres.jdbc_url: sslmode `allow` is not supported: use disable, prefer, require, verify-ca or verify-full",
        ),
        (
            "jdbc:postgresql://h:5432/db?sslcert=/c.pem",
            "test.yml: postgres.jdbc_url: sslcert is given without sslkey: a client certificate needs both",
        ),
        (
            "jdbc:postgresql://h:5432/db?ssl=yes",
            "test.yml: postgres.jdbc_url: ssl `yes` must be true or false",
        ),
        (
            "postgres://u:hunter2@h:5432/db?sslmode=require&sslfactory=x",
            "test.yml: postgres.jdbc_url: malformed URL: invalid connection string: unknown option `sslfactory`",
        ),
    ];
    for (url, want) in cases {
        assert_eq!(err(&with_url(url), &[]), *want, "{url}");
    }
    let not_pem = tmp().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let e =
        err(&with_url(&format!("postgres://h/db?sslmode=verify-ca&sslrootcert={}", not_pem.display())), &[]);
    assert_eq!(
        e,
        format!(
            "test.yml: postgres.jdbc_url: sslrootcert {}: no usable CA certificate in the file",
            not_pem.display()
        )
    );
    let e = err(GOOD, &[("ORDERSTREAM__POSTGRES__JDBC_URL", "postgres://h/db?sslrootcert=/nope.pem")]);
    assert_eq!(
        e,
        "ORDERSTREAM__POSTGRES__JDBC_URL (postgres.jdbc_url): sslrootcert /nope.pem: cannot read: No such file or \
         directory (os error 2)"
    );
}
