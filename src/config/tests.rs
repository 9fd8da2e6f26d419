use super::clients::{self, Client};
use super::*;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

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

// ---- kafka.properties: refused, honoured everywhere, checked by building every client ----

/// `GOOD` with these lines (`    name: value\n` each) as `kafka.properties`.
fn with_properties(lines: &str) -> String {
    GOOD.replace(
        "  topic: \"ROLL001_food_orders_raw\"\n",
        &format!("  topic: \"ROLL001_food_orders_raw\"\n  properties:\n{lines}"),
    )
}

/// What librdkafka itself will use for `name` in this client's settings.
fn effective(client: Client, cfg: &Config, name: &str) -> String {
    client.config(&cfg.kafka).create_native_config().unwrap().get(name).unwrap()
}

#[test]
fn refused_kafka_properties_are_named_with_the_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "bootstrap.servers",
            "other:9092",
            "orderstream sets this to kafka.brokers because every client must reach the brokers that key names; \
             delete it",
        ),
        (
            "group.id",
            "mine",
            "orderstream sets this to kafka.group_id (orderstream-reader for the producer's recovery reader) \
             because consume and status must use the group that key names; delete it",
        ),
        (
            "group.instance.id",
            "me",
            "orderstream sets this to kafka.member_name on the consumer alone because no other client may join \
             the group under the consumer's name (a second member with one instance id fences the first); \
             delete it",
        ),
        (
            "acks",
            "1",
            "orderstream sets this to all because both producers are idempotent, and a message acknowledged by \
             the leader alone is lost when that leader fails; delete it",
        ),
        (
            "enable.idempotence",
            "false",
            "orderstream sets this to true on both producers because a retried send must not write a message \
             twice or out of order; delete it",
        ),
        (
            "enable.gapless.guarantee",
            "false",
            "orderstream sets this to true on the orders producer because a message that fails inside a batch \
             must stop the producer, never leave a hole in a partition; delete it",
        ),
        (
            "partitioner",
            "consistent_random",
            "orderstream sets this to murmur2_random on the orders producer because an order id must stay in \
             the partition its earlier changes are in (the Java client's choice), or they lose their order; \
             delete it",
        ),
        (
            "transactional.id",
            "tx",
            "orderstream leaves this unset because exactly once comes from the idempotent producer and its \
             recovery, and a transactional producer cannot send outside a transaction; delete it",
        ),
        (
            "isolation.level",
            "read_uncommitted",
            "orderstream sets this to read_committed because no aborted message may reach the lake or the \
             producer's recovery; delete it",
        ),
        (
            "enable.auto.commit",
            "true",
            "orderstream sets this to false because the consumer commits offsets only together with a written \
             lake batch, and the readers commit nothing; delete it",
        ),
        (
            "enable.auto.offset.store",
            "true",
            "orderstream sets this to false because the consumer stores offsets only together with a written \
             lake batch; delete it",
        ),
        (
            "auto.offset.reset",
            "latest",
            "orderstream sets this to earliest because a new group or a recovery must start at the first \
             message, never skip to the end; delete it",
        ),
        (
            "enable.partition.eof",
            "true",
            "orderstream sets this to true on the producer's recovery reader and false on the consumer because \
             the recovery stops at the end of every partition and the consumer never does; delete it",
        ),
    ];
    for (name, value, why) in cases {
        let e = err(&with_properties(&format!("    {name}: \"{value}\"\n")), &[]);
        assert_eq!(e, format!("test.yml: kafka.properties.{name}: {why}"));
    }
    // Every refused property has its case above.
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    let refused: BTreeSet<&str> = clients::REFUSED.iter().map(|r| r.0).collect();
    assert_eq!(tested, refused);

    // The issue's example, from the environment: named by its variable.
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__ACKS", "1")]);
    assert_eq!(
        e,
        "ORDERSTREAM__KAFKA__PROPERTIES__ACKS (kafka.properties.acks): orderstream sets this to all because both \
         producers are idempotent, and a message acknowledged by the leader alone is lost when that leader \
         fails; delete it"
    );
}

#[test]
fn member_name_is_the_consumers_group_instance_id_and_no_other_clients() {
    let cfg = load(
        &GOOD.replace(
            "  topic: \"ROLL001_food_orders_raw\"\n",
            "  topic: \"ROLL001_food_orders_raw\"\n  member_name: \" orders-host-1 \"\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.kafka.member_name.as_deref(), Some("orders-host-1"));
    assert_eq!(effective(Client::Consumer, &cfg, "group.instance.id"), "orders-host-1");
    for client in [Client::Reader, Client::Status] {
        assert_eq!(client.config(&cfg.kafka).get("group.instance.id"), None, "{client:?}");
    }
    // Without it: dynamic membership.
    assert_eq!(Client::Consumer.config(&load(GOOD, &[]).unwrap().kafka).get("group.instance.id"), None);
    let e = err(
        &GOOD.replace(
            "  topic: \"ROLL001_food_orders_raw\"\n",
            "  topic: \"ROLL001_food_orders_raw\"\n  member_name: \"a b\"\n",
        ),
        &[],
    );
    assert_eq!(e, "test.yml: kafka.member_name: `a b` contains ` `; member names use only a-z A-Z 0-9 . _ -");
}

#[test]
fn another_name_of_a_refused_property_is_refused_too() {
    let e = err(&with_properties("    request.required.acks: 1\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.request.required.acks: is another name for acks: orderstream sets this to \
         all because both producers are idempotent, and a message acknowledged by the leader alone is lost \
         when that leader fails; delete it"
    );
    let e = err(&with_properties("    metadata.broker.list: \"other:9092\"\n"), &[]);
    assert!(
        e.starts_with(
            "test.yml: kafka.properties.metadata.broker.list: is another name for bootstrap.servers: "
        ),
        "{e}"
    );
    let e = err(&with_properties("    auto.commit.enable: \"true\"\n"), &[]);
    assert!(e.starts_with(
        "test.yml: kafka.properties.auto.commit.enable: is another name for enable.auto.commit: "
    ));
}

#[test]
fn two_names_of_one_setting_are_refused() {
    let e = err(&with_properties("    linger.ms: 10\n    queue.buffering.max.ms: 20\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.linger.ms: names the same setting as kafka.properties.queue.buffering.max.ms; \
         delete one"
    );
    let e = err(&with_properties("    compression.codec: lz4\n    compression.type: zstd\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.compression.codec: names the same setting as kafka.properties.compression.type; \
         delete one"
    );
}

/// Every property orderstream chooses but lets `kafka.properties` change, with a valid value
/// different from ours.
const HONOURED: &[(&str, &str)] = &[
    ("client.id", "mine"),
    ("broker.address.family", "v4"),
    ("message.timeout.ms", "60000"),
    ("linger.ms", "20"),
    ("batch.num.messages", "500"),
    ("queue.buffering.max.messages", "1000"),
    ("fetch.wait.max.ms", "200"),
    ("partition.assignment.strategy", "roundrobin"),
    ("fetch.queue.backoff.ms", "30"),
    ("queued.max.messages.kbytes", "4096"),
    ("statistics.interval.ms", "0"),
    ("heartbeat.interval.ms", "1000"),
];

#[test]
fn honoured_kafka_properties_reach_every_client() {
    let lines: String = HONOURED.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let cfg = load(&with_properties(&lines), &[]).unwrap();
    for client in Client::ALL {
        for (name, value) in HONOURED {
            assert_eq!(effective(client, &cfg, name), *value, "{name} of the {}", client.name());
        }
    }
    // Every choice of ours that a user may change is in HONOURED, so none is left untested.
    let ours: BTreeSet<&str> = clients::COMMON_DEFAULTS
        .iter()
        .chain(Client::ALL.iter().flat_map(|c| c.defaults()))
        .map(|d| d.0)
        .chain(["heartbeat.interval.ms"])
        .collect();
    let tested: BTreeSet<&str> = HONOURED.iter().map(|h| h.0).collect();
    assert_eq!(ours, tested);
}

#[test]
fn without_kafka_properties_each_client_gets_our_choices() {
    let cfg = load(GOOD, &[]).unwrap();
    let cases: &[(Client, &str, &str)] = &[
        (Client::Producer, "linger.ms", "5"),
        (Client::Producer, "message.timeout.ms", "0"),
        (Client::Producer, "batch.num.messages", "10000"),
        (Client::Producer, "acks", "-1"),
        (Client::Producer, "partitioner", "murmur2_random"),
        (Client::Producer, "enable.gapless.guarantee", "true"),
        (Client::DeadLetters, "linger.ms", "5"),
        (Client::DeadLetters, "message.timeout.ms", "300000"),
        (Client::DeadLetters, "acks", "-1"),
        (Client::DeadLetters, "partitioner", "consistent_random"),
        (Client::Reader, "fetch.wait.max.ms", "100"),
        (Client::Reader, "enable.partition.eof", "true"),
        (Client::Reader, "group.id", "orderstream-reader"),
        (Client::Consumer, "fetch.wait.max.ms", "50"),
        (Client::Consumer, "enable.partition.eof", "false"),
        (Client::Consumer, "isolation.level", "read_committed"),
        (Client::Consumer, "statistics.interval.ms", "5000"),
        (Client::Consumer, "group.id", "orderstream_ROLL001_food_orders_raw"),
        (Client::Status, "group.id", "orderstream_ROLL001_food_orders_raw"),
        (Client::Admin, "client.id", "orderstream"),
        (Client::Admin, "bootstrap.servers", "127.0.0.1:9092"),
    ];
    for (client, name, value) in cases {
        assert_eq!(effective(*client, &cfg, name), *value, "{name} of the {}", client.name());
    }
    // Every setting orderstream makes on any client is either refused or one a user may change.
    let changeable: BTreeSet<&str> = HONOURED.iter().map(|h| h.0).collect();
    for client in Client::ALL {
        for name in client.config(&cfg.kafka).config_map().keys() {
            assert!(
                clients::refusal(name).is_some() || changeable.contains(name),
                "{name} of the {} is neither refused nor honoured",
                client.name()
            );
        }
    }
}

#[test]
fn the_heartbeat_follows_a_shortened_session_unless_set() {
    let cfg = load(&with_properties("    session.timeout.ms: 3000\n"), &[]).unwrap();
    assert_eq!(effective(Client::Consumer, &cfg, "heartbeat.interval.ms"), "1500");
    assert_eq!(effective(Client::Consumer, &cfg, "session.timeout.ms"), "3000");
    let cfg = load(&with_properties("    session.timeout.ms: 3000\n    heartbeat.interval.ms: 500\n"), &[])
        .unwrap();
    assert_eq!(effective(Client::Consumer, &cfg, "heartbeat.interval.ms"), "500");
}

#[test]
fn another_name_of_an_honoured_property_replaces_our_choice() {
    let cfg = load(&with_properties("    queue.buffering.max.ms: 20\n    delivery.timeout.ms: 60000\n"), &[])
        .unwrap();
    assert_eq!(cfg.kafka.properties.get("linger.ms").map(String::as_str), Some("20"));
    assert_eq!(cfg.kafka.properties.get("message.timeout.ms").map(String::as_str), Some("60000"));
    for client in [Client::Producer, Client::DeadLetters] {
        assert_eq!(effective(client, &cfg, "linger.ms"), "20", "{}", client.name());
        assert_eq!(effective(client, &cfg, "message.timeout.ms"), "60000", "{}", client.name());
    }
}

#[test]
fn transport_properties_pass_through_to_every_client() {
    let cfg = load(
        &with_properties(
            "    security.protocol: sasl_plaintext\n    sasl.mechanism: PLAIN\n    sasl.username: u\n    \
             sasl.password: p\n    socket.keepalive.enable: true\n",
        ),
        &[],
    )
    .unwrap();
    for client in Client::ALL {
        assert_eq!(effective(client, &cfg, "security.protocol"), "sasl_plaintext", "{}", client.name());
        assert_eq!(effective(client, &cfg, "sasl.mechanisms"), "PLAIN", "{}", client.name());
        assert_eq!(effective(client, &cfg, "sasl.username"), "u", "{}", client.name());
        assert_eq!(effective(client, &cfg, "socket.keepalive.enable"), "true", "{}", client.name());
    }
}

#[test]
fn settings_librdkafka_refuses_together_are_configuration_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "    message.timeout.ms: 3\n",
            "test.yml: kafka.properties.message.timeout.ms: librdkafka cannot build the orders producer: \
             `message.timeout.ms` must be greater than `linger.ms`",
        ),
        (
            "    max.in.flight.requests.per.connection: 10\n",
            "test.yml: kafka.properties.max.in.flight.requests.per.connection: librdkafka cannot build the orders \
             producer: `max.in.flight` must be set <= 5 when `enable.idempotence` is true",
        ),
        (
            "    retries: 0\n",
            "test.yml: kafka.properties.retries: librdkafka cannot build the orders producer: `retries` must be \
             set >= 1 when `enable.idempotence` is true",
        ),
    ];
    for (lines, want) in cases {
        assert_eq!(err(&with_properties(lines), &[]), *want, "{lines}");
    }
    // Only the dead-letter producer keeps librdkafka's 300 s message timeout; named by variable.
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__LINGER_MS", "400000")]);
    assert_eq!(
        e,
        "ORDERSTREAM__KAFKA__PROPERTIES__LINGER_MS (kafka.properties.linger.ms): librdkafka cannot build the \
         dead-letter producer: `message.timeout.ms` must be greater than `linger.ms`"
    );
    let e =
        err(&with_properties("    security.protocol: ssl\n    ssl.ca.location: /nonexistent/ca.pem\n"), &[]);
    let want = "test.yml: kafka.properties.ssl.ca.location: librdkafka cannot build the orders producer: \
                ssl.ca.location failed: ";
    assert!(e.starts_with(want), "{e}");
}

#[test]
fn building_the_clients_leaves_no_thread_behind() {
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let cfg = load(GOOD, &[]).unwrap();
    let _serial = serial();
    let before = threads();
    for _ in 0..10 {
        clients::check_clients(&cfg.kafka).unwrap();
    }
    assert_eq!(threads(), before);
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
