//! Running orderstream as a service: the metrics endpoint's listen address, the systemd unit.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::proc::wait_until;
use common::{ClosedPort, TestEnv};

/// Whether some socket listens on `0.0.0.0:<port>` (Linux `/proc/net/tcp`).
fn listens_on_any(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("00000000:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

#[test]
fn metrics_listen_serves_on_the_address_given() {
    // The endpoint is bound before anything else: an unreachable broker does not matter.
    let closed = ClosedPort::new();
    let env = TestEnv::with_brokers("service_listen", &closed.addr());
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    for _ in 0..5 {
        let port = common::port_to_try();
        let config =
            text.replace("metrics:\n  port: 0\n", &format!("metrics:\n  listen: \"0.0.0.0:{port}\"\n"));
        std::fs::write(env.config_path(), config).unwrap();
        let mut p = env.spawn(&["consume"]);
        let serving = format!("metrics on http://0.0.0.0:{port}/metrics");
        wait_until(Duration::from_secs(60), "the endpoint or an exit", || {
            p.log_text().contains(&serving) || !p.running()
        });
        if !p.log_text().contains(&serving) {
            assert!(p.log_text().contains("Address already in use"), "{}", p.log_text());
            continue;
        }
        assert!(listens_on_any(port), "nothing listens on 0.0.0.0:{port}");
        let (code, body) = common::http_get(port, "/metrics");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("# EOF"), "{body}");
        let (code, _) = common::http_get(port, "/health");
        assert!(code == 200 || code == 503, "{code}");
        assert_eq!(p.stop(), 0, "{}", p.log_text());
        return;
    }
    panic!("every port tried was taken");
}

/// The value of `key=` in the unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    unit.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn the_systemd_unit_verifies_and_waits_longer_than_orderstream_takes_to_stop() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/orderstream.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    // systemd's SIGKILL must come after orderstream's own bound on a stop.
    let timeout: u64 = unit_value(&unit, "TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(timeout > orderstream::shutdown::STOP_BOUND.as_secs() + 5, "TimeoutStopSec={timeout}");
    assert_eq!(unit_value(&unit, "SuccessExitStatus"), orderstream::shutdown::EXIT_ABANDONED.to_string());
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    assert!(unit_value(&unit, "ExecStart").ends_with("--config /etc/orderstream/orders_stream.yml run"));

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian package systemd); the unit was not verified"
        );
        return;
    };
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(common::unique("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("orderstream.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/orderstream", env!("CARGO_BIN_EXE_orderstream")))
        .unwrap();
    let mut cmd = std::process::Command::new(analyze);
    cmd.arg("verify").arg(&copy);
    let (code, out, err) = common::run_output(cmd);
    // verify exits 0 even for lines it ignores; what it says about the unit is the verdict.
    assert_eq!(code, 0, "{out}{err}");
    let complaints: Vec<&str> =
        out.lines().chain(err.lines()).filter(|l| l.contains("orderstream.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify:\n{}", complaints.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn an_outage_is_logged_when_it_begins_and_when_it_ends_in_json_lines() {
    let broker = common::Broker::start_memory();
    let proxy = common::proxy::Proxy::start(&broker.addr);
    let env = TestEnv::with_brokers("service_outage", &format!("127.0.0.1:{}", proxy.port));
    env.init();
    proxy.down();
    let mut cmd = env.orderstream(&["produce"]);
    cmd.env("ORDERSTREAM_LOG_FORMAT", "json");
    let mut p = env.spawn_cmd(cmd, "produce");
    wait_until(Duration::from_secs(60), "the outage's first line", || p.log_text().contains("outage began"));
    // Several attempts fail meanwhile (0.1 s, 0.2 s, 0.4 s … apart): none of them is a line.
    std::thread::sleep(Duration::from_secs(8));
    proxy.up();
    wait_until(Duration::from_secs(90), "the outage's end", || {
        p.log_text().contains("producer: recovered after")
    });
    assert_eq!(p.stop(), 0, "{}", p.log_text());
    let lines: Vec<serde_json::Value> = p
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "no {key} in {l}");
        }
    }
    let outage = |m: &str| {
        m.starts_with("producer: ")
            && ["outage began", "still failing", "recovered after", "retrying in"]
                .iter()
                .any(|w| m.contains(w))
    };
    let ours: Vec<&serde_json::Value> =
        lines.iter().filter(|l| outage(l["message"].as_str().unwrap())).collect();
    assert_eq!(ours.len(), 2, "one line when the outage begins, one when it ends: {ours:#?}");
    assert_eq!(ours[0]["level"], "WARN");
    assert!(
        ours[0]["message"]
            .as_str()
            .unwrap()
            .ends_with("retrying in 0.1 s (outage began; reminders every 60 s)")
    );
    assert_eq!(ours[0]["retry_in_s"], 0.1);
    assert_eq!(ours[1]["level"], "INFO");
    assert!(ours[1]["attempts"].as_u64().unwrap() >= 2, "{:#}", ours[1]);
    assert!(ours[1]["outage_s"].as_u64().is_some(), "{:#}", ours[1]);
}
