//! TLS to PostgreSQL: a private cluster with `ssl=on` that accepts TCP connections only over
//! TLS (`hostssl`), with a CA and a server certificate made by the test, and the stack's
//! cluster (no TLS) for `require`.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions, as_pg_user, must};
use common::proc::wait_for;
use common::topic::read_topic;
use common::{TestEnv, pg_port};

/// A TLS-only cluster: its CA, a second CA that signed nothing of it, and the cluster.
struct TlsCluster {
    ca: PathBuf,
    other_ca: PathBuf,
    cluster: Cluster,
}

/// Runs `openssl <args>` (split at spaces) as the cluster's OS user, so the files it writes
/// belong to the server.
fn openssl(args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    must(as_pg_user("openssl", &args), &format!("openssl {}", args.join(" ")));
}

/// Makes a self-signed CA `<name>.pem` (key `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let d = dir.display();
    openssl(&format!(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
         -subj /CN=orderstream-test-{name} -keyout {d}/{name}.key -out {d}/{name}.pem"
    ));
}

/// The server's key and certificate, signed by `ca`, for 127.0.0.1 and localhost only.
fn make_server_cert(dir: &Path) {
    let d = dir.display();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(&format!(
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
         -keyout {d}/server.key -out {d}/server.csr"
    ));
    openssl(&format!(
        "x509 -req -in {d}/server.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 \
         -extfile {d}/server.ext -out {d}/server.pem"
    ));
    // PostgreSQL refuses a key file others can read.
    must(as_pg_user("chmod", &["0600", &format!("{d}/server.key")]), "chmod server.key");
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let mut dir = PathBuf::new();
        let settings = [
            ("wal_level", "logical"),
            ("ssl", "on"),
            ("ssl_cert_file", "server.pem"),
            ("ssl_key_file", "server.key"),
        ];
        let options = ClusterOptions {
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            // TCP only over TLS; the socket stays for the cluster's own tools.
            hba: Some(vec![
                "local all all trust".into(),
                "hostssl all all 127.0.0.1/32 trust".into(),
                "hostssl all all 127.0.0.2/32 trust".into(),
            ]),
            listen: Some("127.0.0.1,127.0.0.2".into()),
        };
        let cluster = Cluster::start_with(&options, |data| {
            make_ca(data, "ca");
            make_ca(data, "other-ca");
            make_server_cert(data);
            dir = data.to_path_buf();
        });
        TlsCluster { ca: dir.join("ca.pem"), other_ca: dir.join("other-ca.pem"), cluster }
    }

    /// (backend type, encrypted) of orderstream's sessions, read over the Unix socket.
    fn sessions(&self) -> Vec<(String, bool)> {
        let socket = self.cluster.dir.display();
        let url = format!("host={socket} port={} user=postgres dbname=postgres", self.cluster.port);
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .query(
                "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'orderstream' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// A logical test world whose database is this cluster's `postgres`, reached at `host`
    /// with the given URL parameters.
    fn env(&self, tag: &str, host: &str, query: &str) -> TestEnv {
        let mut env = TestEnv::logical(tag);
        env.set(
            "ORDERSTREAM__POSTGRES__JDBC_URL",
            &format!("jdbc:postgresql://{host}:{}/postgres?{query}", self.cluster.port),
        );
        env.set("ORDERSTREAM__POSTGRES__USER", "postgres");
        env
    }
}

/// The last line orderstream wrote to stderr.
fn last_line(err: &str) -> &str {
    err.lines().last().unwrap_or_default()
}

#[test]
fn verify_full_runs_init_produce_and_status_over_tls() {
    let tls = TlsCluster::start();
    let query = format!("sslmode=verify-full&sslrootcert={}", tls.ca.display());
    let env = tls.env("tls_full", "127.0.0.1", &query);
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}\n{}", tls.cluster.log());
    assert!(out.contains("10 seed orders inserted (101-110), 10 rows in the table"), "{out}");

    // Logical capture: the SQL connection and the replication connection, both over TLS
    // (pg_hba.conf admits nothing else over TCP).
    let mut producer = env.spawn(&["produce"]);
    let msgs = wait_for(Duration::from_secs(60), "the 10 seed rows in the topic", || {
        let m = read_topic(&env.brokers, &env.topic);
        (m.len() >= 10).then_some(m)
    });
    let mut keys: Vec<String> = msgs.iter().filter_map(|m| m.key_str()).collect();
    keys.sort();
    assert_eq!(keys, (101..=110).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(msgs.iter().all(|m| m.header("orderstream.op").as_deref() == Some("r")));
    assert_eq!(
        msgs[0].header("orderstream.source").unwrap_or_default(),
        format!("logical:postgres.{}", env.table)
    );
    // Every session of orderstream's, the walsender among them, is encrypted.
    let sessions = tls.sessions();
    assert!(sessions.contains(&("walsender".to_string(), true)), "{sessions:?}");
    assert!(sessions.contains(&("client backend".to_string(), true)), "{sessions:?}");
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");
    assert_eq!(producer.terminate(Duration::from_secs(30)), 0, "{}", producer.log_text());

    let (code, out, err) = env.run(&["status", "--json"]);
    assert_eq!(code, 1, "nothing runs: {err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(s["postgres"]["rows"], 10, "{s:#}");
    assert_eq!(s["postgres"]["server"], format!("127.0.0.1:{}/postgres", tls.cluster.port), "{s:#}");
}

#[test]
fn certificate_and_encryption_failures_are_one_line_naming_the_cause() {
    let tls = TlsCluster::start();
    let port = tls.cluster.port;
    let ca = tls.ca.display().to_string();

    // A host name the certificate does not list.
    let env = tls.env("tls_host", "127.0.0.2", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.2:{port}/postgres: TLS: certificate not valid for \
             host name 127.0.0.2 (sslmode=verify-full)"
        )
    );

    // verify-ca checks the chain only: the same host is fine.
    let env = tls.env("tls_ca", "127.0.0.2", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    // A CA that did not sign the server's certificate.
    let other = tls.other_ca.display().to_string();
    let env = tls.env("tls_unknown_ca", "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={other}"));
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{port}/postgres: TLS: certificate not signed by a \
             CA in sslrootcert {other} (sslmode=verify-full)"
        )
    );
    // require with a root certificate checks the chain too (as libpq).
    let env = tls.env("tls_req_ca", "127.0.0.1", &format!("sslmode=require&sslrootcert={other}"));
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{port}/postgres: TLS: certificate not signed by a \
             CA in sslrootcert {other} (sslmode=require)"
        )
    );

    // disable against a server that takes TCP only over TLS.
    let env = tls.env("tls_disable", "127.0.0.1", "sslmode=disable");
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{port}/postgres: no pg_hba.conf entry for host \
             \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption (28000); the server accepts this \
             connection only over TLS: set sslmode=require or verify-full in postgres.jdbc_url"
        )
    );

    // The default (prefer) and require without a root certificate encrypt without checking.
    for query in ["", "sslmode=require"] {
        let env = tls.env("tls_prefer", "127.0.0.1", query);
        let (code, out, err) = env.run(&["init"]);
        assert_eq!(code, 0, "{query}: stdout: {out}\nstderr: {err}");
    }
}

#[test]
fn require_against_a_server_without_tls_fails() {
    // The stack's cluster runs without TLS.
    let mut env = TestEnv::poll("tls_plain");
    let url = format!("jdbc:postgresql://127.0.0.1:{}/food_delivery_db?sslmode=require", pg_port());
    env.set("ORDERSTREAM__POSTGRES__JDBC_URL", &url);
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "orderstream: PostgreSQL: cannot connect to 127.0.0.1:{}/food_delivery_db: TLS: server does not support \
             TLS (sslmode=require)",
            pg_port()
        )
    );
    // prefer (the default) falls back to plain text there.
    let (code, out, err) = TestEnv::poll("tls_plain_prefer").run(&["init"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

#[test]
fn an_unreadable_root_certificate_is_a_configuration_error() {
    let mut env = TestEnv::poll("tls_noca");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        "jdbc:postgresql://127.0.0.1:5432/food_delivery_db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let (code, _, err) = env.run(&["status"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        last_line(&err),
        "orderstream: configuration error: ORDERSTREAM__POSTGRES__JDBC_URL (postgres.jdbc_url): sslrootcert \
         /nonexistent/ca.pem: cannot read: No such file or directory (os error 2)"
    );
    let mut env = TestEnv::poll("tls_unknown");
    env.set(
        "ORDERSTREAM__POSTGRES__JDBC_URL",
        "jdbc:postgresql://127.0.0.1:5432/food_delivery_db?sslfactory=x",
    );
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        last_line(&err),
        "orderstream: configuration error: ORDERSTREAM__POSTGRES__JDBC_URL (postgres.jdbc_url): malformed URL: \
         invalid connection string: unknown option `sslfactory`"
    );
}
