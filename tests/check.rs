//! `orderstream check`: one line per check with the fix, exit 0 or 1, and nothing created.

use crate::common;

use common::cluster::{Cluster, ClusterOptions};
use common::{TestEnv, pg};

/// `check`: exit code and stdout lines (stderr appended to any failure message).
fn check(env: &TestEnv) -> (i32, Vec<String>, String) {
    let (code, out, err) = env.run(&["check"]);
    (code, out.lines().map(str::to_string).collect(), err)
}

fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    lines
        .iter()
        .find(|l| l[6..].starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{}", lines.join("\n")))
}

fn topic_exists(brokers: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = c.fetch_metadata(None, std::time::Duration::from_secs(10)).unwrap();
    md.topics().iter().any(|t| t.name() == topic)
}

#[test]
fn check_creates_nothing_then_passes_after_init_and_names_a_role_without_replication_and_a_missing_topic() {
    let mut env = TestEnv::logical("check_roles");
    // Before init: every missing piece is named, and none of them is created.
    let (code, lines, err) = check(&env);
    assert_eq!(code, 1, "{lines:?}\n{err}");
    assert!(line(&lines, "postgres table").starts_with("FAIL  "), "{lines:?}");
    assert!(line(&lines, "kafka topic").ends_with("does not exist: run `orderstream init`"), "{lines:?}");
    assert!(line(&lines, "datalake.path").starts_with("ok    "), "{lines:?}");
    for dir in [env.lake(), env.checkpoints(), env.lastprocess()] {
        assert!(!dir.exists(), "check created {}", dir.display());
    }
    assert!(!topic_exists(&env.brokers, &env.topic), "check created the topic");
    let slots: i64 = pg()
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&env.slot()])
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "check created the slot");
    let publications: i64 = pg()
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = $1", &[&env.slot()])
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "check created the publication");

    env.init();
    let (code, lines, err) = check(&env);
    assert_eq!(code, 0, "{}\n{err}", lines.join("\n"));
    assert!(lines.iter().all(|l| l.starts_with("ok    ")), "{lines:?}");
    assert_eq!(lines.len(), 13, "{lines:?}");

    // A role without REPLICATION, and a topic nobody created.
    env.set("ORDERSTREAM__POSTGRES__USER", "student_norepl");
    let missing = format!("{}_missing", env.topic);
    env.set("ORDERSTREAM__KAFKA__TOPIC", &missing);
    let (code, lines, err) = check(&env);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        line(&lines, "postgres REPLICATION"),
        "FAIL  postgres REPLICATION: role student_norepl lacks the REPLICATION attribute: ALTER ROLE student_norepl \
         REPLICATION (as a superuser), or set postgres.capture: poll"
    );
    assert_eq!(
        line(&lines, "kafka topic"),
        format!("FAIL  kafka topic: kafka.topic {missing} does not exist: run `orderstream init`")
    );
    assert!(line(&lines, "postgres publication").starts_with("ok    "), "{lines:?}");
    assert_eq!(err.lines().last().unwrap(), "orderstream: check: 3 of 13 checks failed", "{lines:?}");
}

#[test]
fn check_names_a_wal_level_below_logical() {
    let cluster = Cluster::start(&ClusterOptions::default().set("wal_level", "replica"));
    let mut env = TestEnv::logical("check_wal");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/postgres", cluster.port),
    );
    env.set("ORDERSTREAM__POSTGRES__USER", "postgres");
    let (code, lines, _) = check(&env);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        line(&lines, "postgres wal_level"),
        "FAIL  postgres wal_level: is `replica`, logical capture needs `logical`: set wal_level = logical in \
         postgresql.conf and restart PostgreSQL, or set postgres.capture: poll"
    );
    assert!(line(&lines, "postgres REPLICATION").starts_with("ok    "), "{lines:?}");
}
