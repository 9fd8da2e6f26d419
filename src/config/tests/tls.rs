//! sslmode and the TLS parameters of postgres.jdbc_url.

use super::*;

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
