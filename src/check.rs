//! `orderstream check`: whether this configuration will work, without starting anything and
//! without changing anything (no folder, topic, slot or publication is created; the folders'
//! write test is a probe file removed at once). One line per check, with what to do when it
//! fails.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_postgres::Client;

use crate::config::{Capture, Config};
use crate::db;
use crate::error::Error;
use crate::kafka;

/// How long each server may take to answer one check.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One check: what, whether it passed, and what was found or what to do.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or what to do.
    pub detail: String,
}

/// Every check, in pipeline order.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The checks.
    pub checks: Vec<Check>,
}

impl CheckReport {
    fn add(&mut self, name: &str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.checks.push(Check { name: name.to_string(), ok, detail });
    }

    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{:<4}  {}: {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail)?;
        }
        Ok(())
    }
}

/// Runs every check.
pub async fn check(cfg: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    report.add("configuration", Ok("valid".into()));
    postgres(cfg, &mut report).await;
    let kafka_cfg = cfg.kafka.clone();
    let checked =
        tokio::time::timeout(TIMEOUT * 2, tokio::task::spawn_blocking(move || kafka_checks(&kafka_cfg)));
    match checked.await {
        Ok(Ok(checks)) => report.checks.extend(checks),
        _ => report.add(
            "kafka broker",
            Err(format!("{}: no answer within {} s", cfg.kafka.brokers, TIMEOUT.as_secs() * 2)),
        ),
    }
    for (key, path) in [
        ("datalake.path", &cfg.datalake.path),
        ("streaming.checkpoint_location", &cfg.streaming.checkpoint_location),
        ("streaming.last_processed_timestamp_location", &cfg.streaming.last_processed_timestamp_location),
    ] {
        report.add(key, writable(path));
    }
    report
}

/// Runs one query-like step within [`TIMEOUT`].
async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", db::error_text(&e))),
        Err(_) => Err(format!("{what}: no answer within {} s", TIMEOUT.as_secs())),
    }
}

async fn postgres(cfg: &Config, report: &mut CheckReport) {
    let at = db::describe(&cfg.postgres);
    let client = match tokio::time::timeout(TIMEOUT, db::connect(&cfg.postgres)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return report
                .add("postgres connection", Err(format!("{e}; check postgres.jdbc_url, user and password")));
        }
        Err(_) => {
            return report
                .add("postgres connection", Err(format!("{at}: no answer within {} s", TIMEOUT.as_secs())));
        }
    };
    let user = bounded("current_user", client.query_one("SELECT current_user::text", &[])).await;
    let user: String = user.map(|r| r.get(0)).unwrap_or_else(|_| "?".into());
    report.add("postgres connection", Ok(format!("{at} as {user}")));
    let table = table(cfg, &client).await;
    let exists = table.is_ok();
    report.add("postgres table", table);
    match cfg.postgres.capture {
        Capture::Poll => {
            if exists {
                report.add("postgres read rights", select_right(cfg, &client).await);
            }
        }
        Capture::Logical => logical(cfg, &client, &user, exists, report).await,
    }
}

async fn table(cfg: &Config, client: &Client) -> Result<String, String> {
    let t = &cfg.postgres.table;
    match tokio::time::timeout(TIMEOUT, crate::source::table::check_table(client, t)).await {
        Ok(Ok(())) => Ok(format!("{t} has the order columns")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("table {t}: no answer within {} s", TIMEOUT.as_secs())),
    }
}

async fn select_right(cfg: &Config, client: &Client) -> Result<String, String> {
    let t = &cfg.postgres.table;
    let sql = "SELECT has_table_privilege(to_regclass($1), 'SELECT')";
    let row = bounded("privileges", client.query_one(sql, &[&t.quoted()])).await?;
    if row.get::<_, bool>(0) {
        Ok(format!("may read {t}"))
    } else {
        Err(format!("cannot read {t}: GRANT SELECT ON {} TO <role>", t.quoted()))
    }
}

async fn logical(cfg: &Config, client: &Client, user: &str, table: bool, report: &mut CheckReport) {
    let wal =
        bounded("wal_level", client.query_one("SHOW wal_level", &[])).await.map(|r| r.get::<_, String>(0));
    report.add(
        "postgres wal_level",
        match wal {
            Ok(level) if level == "logical" => Ok("logical".into()),
            Ok(level) => Err(format!(
                "is `{level}`, logical capture needs `logical`: set wal_level = logical in postgresql.conf and restart \
                 PostgreSQL, or set postgres.capture: poll"
            )),
            Err(e) => Err(e),
        },
    );
    let sql = "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user";
    let can = bounded("role", client.query_one(sql, &[])).await.map(|r| r.get::<_, bool>(0));
    report.add(
        "postgres REPLICATION",
        match can {
            Ok(true) => Ok(format!("role {user} may replicate")),
            Ok(false) => Err(format!(
                "role {user} lacks the REPLICATION attribute: ALTER ROLE {user} REPLICATION (as a superuser), or set \
                 postgres.capture: poll"
            )),
            Err(e) => Err(e),
        },
    );
    if table {
        report.add("postgres publication", publication(cfg, client, user).await);
    }
    report.add("postgres slot", slot(cfg, client).await);
}

async fn publication(cfg: &Config, client: &Client, user: &str) -> Result<String, String> {
    let (t, name) = (&cfg.postgres.table, &cfg.postgres.publication);
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
               EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                       WHERE p.pubname = $1 AND r.prrelid = to_regclass($2)) \
               OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1 AND puballtables), \
               (SELECT relreplident::text FROM pg_class WHERE oid = to_regclass($2)), \
               (SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass($2))";
    let row = bounded("publication", client.query_one(sql, &[name, &t.quoted()])).await?;
    let (exists, has, identity, owner): (bool, bool, Option<String>, Option<bool>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let full = identity.as_deref() == Some("f");
    if exists && has && full {
        return Ok(format!("{name} publishes {t}; replica identity full"));
    }
    let missing = if !exists {
        format!("publication {name} does not exist")
    } else if !has {
        format!("publication {name} does not include {t}")
    } else {
        format!("{t} has no REPLICA IDENTITY FULL")
    };
    if owner == Some(true) {
        Err(format!("{missing}: run `orderstream init` (role {user} owns {t})"))
    } else {
        Err(format!(
            "{missing}, and role {user} does not own {t}: have its owner run `orderstream init`, or CREATE PUBLICATION \
             {name} FOR TABLE {} and ALTER TABLE {} REPLICA IDENTITY FULL",
            t.quoted(),
            t.quoted()
        ))
    }
}

async fn slot(cfg: &Config, client: &Client) -> Result<String, String> {
    let name = &cfg.postgres.slot;
    let sql = "SELECT plugin::text, database::text = current_database(), active_pid, wal_status \
               FROM pg_replication_slots WHERE slot_name = $1";
    let Some(row) = bounded("slot", client.query_opt(sql, &[name])).await? else {
        return Ok(format!("{name} does not exist yet; the first `orderstream produce` creates it"));
    };
    let (plugin, here, pid, wal): (Option<String>, Option<bool>, Option<i32>, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
        return Err(format!("{name} is not a pgoutput slot of this database: drop it or set postgres.slot"));
    }
    if wal.as_deref() == Some("lost") {
        return Err(format!("{name} lost the WAL it needs: drop it (a new slot and a full snapshot follow)"));
    }
    match pid {
        Some(pid) => {
            Err(format!("{name} is in use by PID {pid}: one producer per slot (stop the other one first)"))
        }
        None => Ok(format!("{name} exists and is free: capture resumes from it")),
    }
}

/// The broker, the topic and the dead-letter topic. Blocking.
fn kafka_checks(cfg: &crate::config::KafkaConfig) -> Vec<Check> {
    let check = |name: &str, r: Result<String, String>| Check {
        name: name.to_string(),
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
    };
    let metadata = kafka::Client::Status
        .config(cfg)
        .create::<BaseConsumer>()
        .map_err(|e| Error::Kafka(format!("{}: {e}", cfg.brokers)).to_string())
        .and_then(|c| {
            c.fetch_metadata(None, TIMEOUT).map_err(|e| format!("{} unreachable: {e}", cfg.brokers))
        });
    let md = match metadata {
        Ok(md) => md,
        Err(e) => return vec![check("kafka broker", Err(format!("{e}; check kafka.brokers")))],
    };
    let partitions = |name: &str| md.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
    let topic = |name: &str, key: &str| match partitions(name) {
        Some(n) if n as i32 == cfg.partitions => Ok(format!("{name} has {n} partitions")),
        Some(n) => {
            Ok(format!("{name} has {n} partitions (kafka.partitions says {}; left as is)", cfg.partitions))
        }
        None => Err(format!("{key} {name} does not exist: run `orderstream init`")),
    };
    vec![
        check("kafka broker", Ok(format!("{} answers ({} brokers)", cfg.brokers, md.brokers().len()))),
        check("kafka topic", topic(&cfg.topic, "kafka.topic")),
        check("kafka dead-letter topic", topic(&cfg.dlq_topic, "kafka.dlq_topic")),
    ]
}

/// Whether the folder (or, while it does not exist, its nearest existing parent, where it
/// would be created) takes a file: a probe file is created and removed at once.
fn writable(path: &Path) -> Result<String, String> {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        return Err(format!("{} is not a folder", at.display()));
    }
    let probe = at.join(format!(".orderstream-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            if at == path {
                Ok(format!("{} is writable", path.display()))
            } else {
                Ok(format!(
                    "{} does not exist yet; {} is writable, so it can be created",
                    path.display(),
                    at.display()
                ))
            }
        }
        Err(e) => {
            Err(format!("cannot write in {}: {e}; fix the folder's owner or permissions", at.display()))
        }
    }
}
