//! `orderstream init` and the command line against the real local stack.

use crate::common;

use chrono::NaiveDateTime;
use common::{Broker, TestEnv, pg};
use orderstream::kafka::Client;
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
    let env = TestEnv::poll("init_twice");
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
            format!(
                "{db}: rows left untouched (no seed orders in a table init did not create; `init --seed-orders` adds them)"
            ),
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
fn init_on_an_existing_table_with_rows_touches_no_row_unless_asked_for_the_seed_orders() {
    let env = TestEnv::logical("init_existing");
    // A table of a real database: made by its owner, with its own orders.
    pg().batch_execute(&format!(
        "CREATE TABLE {t} (order_id serial PRIMARY KEY, customer_name varchar(255), restaurant_name varchar(255), \
         item varchar(255), amount numeric(10,2), order_status varchar(50), created_at timestamp NOT NULL DEFAULT now()); \
         INSERT INTO {t} (customer_name, restaurant_name, item, amount, order_status, created_at) VALUES \
         ('Real One', 'Place', 'Soup', 12.50, 'PLACED', '2026-03-01 10:00:00'), \
         ('Real Two', 'Place', 'Tea', 3.00, 'DELIVERED', '2026-03-01 10:05:00')",
        t = env.t()
    ))
    .unwrap();
    let before = rows(&env.table);
    assert_eq!(before.len(), 2);
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&format!("table {} already present", env.table)), "{out}");
    assert!(out.contains("rows left untouched"), "{out}");
    assert_eq!(rows(&env.table), before, "init changed the rows of an existing table");
    // The publication, the replica identity and the topics are there all the same.
    let mut c = pg();
    let published: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2)",
            &[&env.slot(), &env.table],
        )
        .unwrap()
        .get(0);
    assert!(published, "{out}");
    let identity: String = c
        .query_one("SELECT relreplident::text FROM pg_class WHERE oid = to_regclass($1)", &[&env.t()])
        .unwrap()
        .get(0);
    assert_eq!(identity, "f");
    assert_eq!(partitions(&env.brokers, &env.topic), Some(3));
    assert_eq!(partitions(&env.brokers, &format!("{}_dlq", env.topic)), Some(3));

    // Asked for, the seed orders join the existing rows, once.
    let (code, out, err) = env.run(&["init", "--seed-orders"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("10 seed orders inserted (101-110), 12 rows in the table"), "{out}");
    let after = rows(&env.table);
    assert_eq!(&after[..2], &before[..]);
    assert_eq!(
        after.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110]
    );
    let (code, out, _) = env.run(&["init", "--seed-orders"]);
    assert_eq!(code, 0);
    assert!(out.contains("0 seed orders inserted (101-110), 12 rows in the table"), "{out}");
}

#[test]
fn init_creates_the_configured_number_of_partitions() {
    let mut env = TestEnv::poll("init_parts");
    env.set("ORDERSTREAM__KAFKA__PARTITIONS", "6");
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(partitions(&env.brokers, &env.topic), Some(6));
}

#[test]
fn unquoted_psql_name_and_configured_name_are_the_same_table() {
    let mut env = TestEnv::poll("init_case");
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
    let mut env = TestEnv::poll("init_nodb");
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
    let env = TestEnv::poll("init_badcfg");
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

/// `orderstream <command>` with `extra_kafka` in the kafka section and a database nobody
/// listens on (so a run that got past the configuration would fail differently, with exit 1).
fn config_error(env: &TestEnv, extra_kafka: &str, command: &str) -> (i32, String) {
    env.write_config(extra_kafka);
    let mut cmd = env.orderstream(&[command]);
    cmd.env("ORDERSTREAM__POSTGRES__JDBC_URL", "jdbc:postgresql://127.0.0.1:1/x");
    let (code, _, err) = common::run_output(cmd);
    (code, err)
}

#[test]
fn a_kafka_property_orderstream_sets_exits_2_naming_it_and_why() {
    let env = TestEnv::poll("init_acks");
    // `consume` used to retry the dead-letter producer this breaks forever; `produce` used to
    // overwrite it silently. Both now stop at the configuration.
    for command in ["init", "produce", "consume", "status"] {
        let (code, err) = config_error(&env, "  properties:\n    acks: \"1\"", command);
        assert_eq!(code, 2, "{command}: {err}");
        assert_eq!(
            err,
            format!(
                "orderstream: configuration error: {}: kafka.properties.acks: orderstream sets this to all because \
                 both producers are idempotent, and a message acknowledged by the leader alone is lost when that \
                 leader fails; delete it\n",
                env.config_path().display()
            ),
            "{command}"
        );
    }
    let (code, err) = config_error(&env, "  properties:\n    partitioner: murmur2", "produce");
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        format!(
            "orderstream: configuration error: {}: kafka.properties.partitioner: orderstream sets this to \
             murmur2_random on the orders producer because an order id must stay in the partition its earlier \
             changes are in (the Java client's choice), or they lose their order; delete it\n",
            env.config_path().display()
        )
    );
}

#[test]
fn kafka_settings_no_client_can_be_built_with_exit_2_before_anything_runs() {
    let env = TestEnv::poll("init_linger");
    // `produce` makes no dead-letter producer, yet every client is built at load.
    let (code, err) = config_error(&env, "  properties:\n    linger.ms: 400000", "produce");
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        format!(
            "orderstream: configuration error: {}: kafka.properties.linger.ms: librdkafka cannot build the \
             dead-letter producer: `message.timeout.ms` must be greater than `linger.ms`\n",
            env.config_path().display()
        )
    );
}

#[test]
fn an_honoured_kafka_property_reaches_every_client() {
    let env = TestEnv::poll("init_honoured");
    env.write_config(
        "  properties:\n    linger.ms: 20\n    message.timeout.ms: 60000\n    fetch.wait.max.ms: 200\n    \
         client.id: init_honoured",
    );
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&format!("topic {} created with 3 partitions", env.topic)), "{out}");

    let cfg = orderstream::Config::load(&env.config_path()).unwrap();
    for client in Client::ALL {
        let native = client.config(&cfg.kafka).create_native_config().unwrap();
        for (name, value) in [
            ("linger.ms", "20"),
            ("message.timeout.ms", "60000"),
            ("fetch.wait.max.ms", "200"),
            ("client.id", "init_honoured"),
        ] {
            assert_eq!(native.get(name).unwrap(), value, "{name} of the {}", client.name());
        }
        // What orderstream fixes stays fixed beside them.
        assert_eq!(native.get("bootstrap.servers").unwrap(), env.brokers, "{}", client.name());
    }
}

/// Issue 21 item 5: a password is in no output of the binary, whatever its form: wrong (the
/// server refuses it), numeric or a list in the file, in the environment, in the URL. Every
/// output is searched: stdout, stderr, and `/metrics` and `/health` of a process serving them.
#[test]
fn no_output_holds_the_password_in_any_form() {
    let secret = "73918264";
    let url_with = |port: &str| format!("postgres://student:{secret}@127.0.0.1:{port}/food_delivery_db");
    let with_password = |env: &TestEnv, form: &str| {
        let file = std::fs::read_to_string(env.config_path()).unwrap();
        std::fs::write(env.config_path(), file.replace("password: \"student123\"", form)).unwrap();
    };
    // Configuration errors: numeric, decimal, list and mapping in the file; a malformed URL
    // holding it; a Kafka secret beside a refused value. Each exits 2 at once.
    let env = TestEnv::poll("init_secret");
    let mut cases: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    for form in [
        format!("password: {secret}"),
        format!("password: {secret}.5"),
        format!("password: [{secret}]"),
        format!("password: {{x: {secret}}}"),
    ] {
        cases.push((form, vec![]));
    }
    cases.push(("password: \"student123\"".into(), vec![("ORDERSTREAM__POSTGRES__JDBC_URL", url_with("x"))]));
    cases.push((
        "password: \"student123\"".into(),
        vec![
            ("ORDERSTREAM__KAFKA__PROPERTIES__SASL_PASSWORD", secret.to_string()),
            ("ORDERSTREAM__KAFKA__PROPERTIES__SASL_MECHANISM", secret.to_string()),
        ],
    ));
    for (form, vars) in &cases {
        with_password(&env, form);
        for command in ["init", "produce", "consume", "run", "status"] {
            let mut cmd = env.orderstream(&[command]);
            cmd.envs(vars.iter().map(|(k, v)| (k, v)));
            let (code, out, err) = common::run_output(cmd);
            assert!(!format!("{out}{err}").contains(secret), "{form} {vars:?} {command}: {out}\n{err}");
            assert_eq!(code, 2, "{form} {vars:?} {command}: {out}\n{err}");
        }
        with_password(&env, "password: \"student123\"");
    }
    let with_numeric = {
        with_password(&env, &format!("password: {secret}"));
        let (_, _, err) = env.run(&["produce"]);
        with_password(&env, "password: \"student123\"");
        err
    };
    assert!(with_numeric.contains("postgres.password: must be one string"), "{with_numeric}");

    // Wrong (the server refuses it, unless it trusts local connections), in the file, the
    // environment and the URL: the producer serves /metrics and /health meanwhile; `status`
    // reports and exits.
    let mut wrong: Vec<(&str, String)> = vec![
        ("ORDERSTREAM__POSTGRES__PASSWORD", secret.to_string()),
        ("ORDERSTREAM__POSTGRES__JDBC_URL", url_with(&common::pg_port().to_string())),
    ];
    wrong.push(("", String::new()));
    for (var, value) in wrong {
        let mut env = TestEnv::poll("init_secret_wrong");
        // The table and topic exist, so the producer gets as far as PostgreSQL's refusal.
        env.init();
        if var.is_empty() {
            with_password(&env, &format!("password: \"{secret}\""));
        } else {
            env.set(var, &value);
        }
        for command in ["produce", "run"] {
            env.insert(1);
            let (mut p, port) = env.spawn_serving(&[command]);
            // The stack's server may trust local connections: refused or accepted, the
            // producer gets to PostgreSQL and logs it.
            common::proc::wait_until(Duration::from_secs(60), "PostgreSQL's answer in the log", || {
                let log = p.log_text();
                log.contains("password authentication failed") || log.contains("batch published")
            });
            for path in ["/metrics", "/health"] {
                let (_, body) = common::http_get(port, path);
                assert!(!body.is_empty(), "{path}");
                assert!(!body.contains(secret), "{var} {command} {path}:\n{body}");
            }
            p.kill();
            assert!(!p.log_text().contains(secret), "{var} {command}:\n{}", p.log_text());
        }
        let (_, out, err) = env.run(&["status"]);
        assert!(!format!("{out}{err}").contains(secret), "{var} status:\n{out}\n{err}");
        let (_, out, err) = env.run(&["init"]);
        assert!(!format!("{out}{err}").contains(secret), "{var} init:\n{out}\n{err}");
    }
}

#[test]
fn init_against_a_database_that_never_answers_fails_within_connect_timeout() {
    // Listening, never accepting: the connection completes and nothing is ever said.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut env = TestEnv::poll("init_silent");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{port}/food_delivery_db?connect_timeout=2"),
    );
    let started = std::time::Instant::now();
    let (code, out, err) = env.run(&["init"]);
    eprintln!("init against a silent server: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(
        err.lines().last().unwrap_or_default(),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{port}/food_delivery_db: no answer within 2 s \
             (connect_timeout in postgres.jdbc_url sets this bound)"
        )
    );
}
