//! `status` that scripts can trust: exit 0 only when every configured part answered and the
//! producer and the consumer run, 1 naming the others; every part read within a few seconds
//! even when servers accept connections and never answer. Times are printed, and asserted
//! only against a bound that catches a hang.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::proc::wait_for;
use common::{ClosedPort, TestEnv};

/// `status --json`: exit code, the parsed object, stderr; prints how long it took.
fn status(env: &TestEnv, what: &str) -> (i32, serde_json::Value, String) {
    let started = Instant::now();
    let (code, out, err) = env.run(&["status", "--json"]);
    let took = started.elapsed();
    eprintln!("status {what}: {:.2} s, exit {code}", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "status {what} took {took:?}");
    let s = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (code, s, err)
}

/// Which parts say `ok`.
fn oks(s: &serde_json::Value) -> Vec<(String, bool)> {
    s.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["ok"].as_bool().unwrap())).collect()
}

#[test]
fn with_nothing_running_status_exits_1_naming_the_producer_and_the_consumer() {
    let env = TestEnv::poll("status_idle");
    env.init();
    let (code, s, err) = status(&env, "with nothing running");
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(
        oks(&s),
        [("consumer", false), ("kafka", true), ("lake", true), ("postgres", true), ("producer", false)]
            .map(|(k, ok)| (k.to_string(), ok))
    );
    assert!(
        s["producer"]["error"].as_str().unwrap().starts_with("not running: no session holds its writer lock")
    );
    assert_eq!(s["producer"]["running"], false);
    assert!(
        s["consumer"]["error"]
            .as_str()
            .unwrap()
            .starts_with("not running: no process holds a partition lock")
    );
    assert_eq!(s["postgres"]["error"], serde_json::Value::Null);
    assert_eq!(s["postgres"]["rows"], 10);
    assert_eq!(
        err.lines().last().unwrap(),
        "orderstream: status: not answering or not running: producer, consumer (see each part's error)"
    );
    let (code, text, _) = env.run(&["status"]);
    assert_eq!(code, 1);
    assert!(text.contains("            NOT RUNNING: no session holds its writer lock"), "{text}");

    // Running, every part answers: exit 0.
    let mut run = env.spawn(&["run"]);
    let s = wait_for(Duration::from_secs(90), "status exit 0 with `run` running", || {
        let (code, s, _) = status(&env, "with `run` running");
        (code == 0).then_some(s)
    });
    assert!(oks(&s).iter().all(|(_, ok)| *ok), "{s:#}");
    assert_eq!(s["producer"]["running"], true);
    assert_eq!(s["consumer"]["running"], true);
    assert_eq!(s["consumer"]["pids"], serde_json::json!([run.pid()]));
    assert_eq!(run.stop(), 0, "{}", run.log_text());
}

#[test]
fn an_unreachable_database_or_broker_makes_status_exit_1_naming_it() {
    let mut env = TestEnv::poll("status_down");
    env.init();
    let closed = ClosedPort::new();
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db", closed.port),
    );
    let (code, s, err) = status(&env, "with PostgreSQL unreachable");
    assert_eq!(code, 1);
    assert_eq!(s["postgres"]["ok"], false);
    assert!(s["postgres"]["error"].as_str().unwrap().contains("cannot connect to 127.0.0.1:"), "{s:#}");
    assert!(s["producer"]["error"].as_str().unwrap().starts_with("cannot tell whether it runs"), "{s:#}");
    assert_eq!(s["kafka"]["ok"], true, "{s:#}");
    assert!(err.contains("not answering or not running: postgres, producer, consumer"), "{err}");

    let mut env = TestEnv::poll("status_down_kafka");
    env.init();
    env.set("ORDERSTREAM__KAFKA__BROKERS", &closed.addr());
    let (code, s, err) = status(&env, "with the broker unreachable");
    assert_eq!(code, 1);
    assert_eq!(s["kafka"]["ok"], false);
    assert!(s["kafka"]["error"].as_str().unwrap().contains("unreachable"), "{s:#}");
    assert_eq!(s["postgres"]["ok"], true, "{s:#}");
    assert!(err.contains("not answering or not running: producer, kafka, consumer"), "{err}");
}

#[test]
fn servers_that_accept_and_never_answer_do_not_hold_status_up() {
    // Listening, never accepting: connections complete and nothing is ever said.
    let silent_pg = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_kafka = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut env = TestEnv::logical("status_silent");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        &format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db", silent_pg.local_addr().unwrap().port()),
    );
    env.set("ORDERSTREAM__KAFKA__BROKERS", &silent_kafka.local_addr().unwrap().to_string());
    let (code, s, err) = status(&env, "against silent servers");
    assert_eq!(code, 1, "{err}");
    for part in ["postgres", "slot", "kafka"] {
        assert_eq!(s[part]["ok"], false, "{part}: {s:#}");
    }
    assert!(s["postgres"]["error"].as_str().unwrap().contains("no answer within 2.5 s"), "{s:#}");
    assert_eq!(s["lake"]["ok"], true, "{s:#}");
}
