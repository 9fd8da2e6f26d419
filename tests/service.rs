//! Running orderstream as a service: the metrics endpoint's listen address, the systemd unit.

mod common;

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
