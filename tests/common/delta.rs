//! Delta-lake test helpers: a test world whose lake is a Delta table on local disk or on the
//! stack's S3 server, and readers other than our writer (`dev/delta_read.py`: DuckDB's delta
//! extension, a replay of the `_delta_log` with pyarrow, Python deltalake).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::TestEnv;
use super::lake::{LakeRow, python};
use super::proc::{run, wait_until};

/// The stack's S3 server port (`dev/stack.sh env`).
pub fn s3_port() -> u16 {
    std::env::var("ORDERSTREAM_S3_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9000)
}

/// The stack's S3 endpoint.
pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{}", s3_port())
}

/// The stack's S3 credentials (ministack's account; any other key id is refused).
pub const S3_KEY: (&str, &str) = ("test", "test");

/// Where a test's Delta table lives.
pub enum Store {
    /// `<test dir>/lake`, as a plain path.
    Local,
    /// `s3://<bucket>/<test name>` on the S3 server at `endpoint`.
    S3 { bucket: String, endpoint: String },
}

/// A reader's view of the table.
#[derive(Debug, Deserialize)]
pub struct DeltaRead {
    /// The rows, ordered by (order_id, created_at, lsn, change_index).
    pub rows: Vec<LakeRow>,
    /// The table version (log replay and deltalake only).
    #[serde(default)]
    pub version: Option<i64>,
    /// Live data files (log replay only).
    #[serde(default)]
    pub files: Option<usize>,
    /// `txn` app id → version (log replay only).
    #[serde(default)]
    pub txn: BTreeMap<String, i64>,
}

impl TestEnv {
    /// Makes this world's lake a Delta table at `store` (environment overrides on every later
    /// command; the S3 credentials as the standard AWS variables).
    pub fn use_delta(&mut self, store: &Store) {
        self.set("ORDERSTREAM__DATALAKE__FORMAT", "delta");
        match store {
            Store::Local => {
                let lake = self.lake().display().to_string();
                self.set("ORDERSTREAM__DATALAKE__PATH", &lake);
            }
            Store::S3 { bucket, endpoint } => {
                let uri = format!("s3://{bucket}/{}", self.name);
                self.set("ORDERSTREAM__DATALAKE__PATH", &uri);
                self.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_ENDPOINT_URL", endpoint);
                self.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_ALLOW_HTTP", "true");
                self.set("ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_S3_ADDRESSING_STYLE", "path");
                self.set("AWS_ACCESS_KEY_ID", S3_KEY.0);
                self.set("AWS_SECRET_ACCESS_KEY", S3_KEY.1);
                self.set("AWS_REGION", "us-east-1");
            }
        }
    }

    /// The Delta table's URI as the readers take it.
    pub fn delta_uri(&self) -> String {
        self.override_of("ORDERSTREAM__DATALAKE__PATH").unwrap_or_else(|| self.lake().display().to_string())
    }

    /// The last value set for `key` with [`TestEnv::set`], if any.
    fn override_of(&self, key: &str) -> Option<String> {
        self.env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// The Delta table read by `how` (`duckdb`, `replay`, `deltalake`, `polars`); with `current`, each
    /// order's current state instead of every change.
    pub fn read_delta(&self, how: &str, current: bool) -> DeltaRead {
        let mut cmd = Command::new(python());
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/delta_read.py")).arg(how).arg(self.delta_uri());
        if current {
            cmd.arg("current");
        }
        for (k, v) in &self.env {
            if k.starts_with("AWS_") {
                cmd.env(k, v);
            }
        }
        if let Some((_, e)) = self.env.iter().find(|(k, _)| k.ends_with("STORAGE_OPTIONS__AWS_ENDPOINT_URL"))
        {
            cmd.env("AWS_ENDPOINT_URL", e);
        }
        let (code, out, err) = run(cmd, None, Duration::from_secs(180));
        assert_eq!(code, 0, "dev/delta_read.py {how} failed: {err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("delta_read.py printed something else ({e}): {out}"))
    }

    /// Each partition's next offset as the table's `txn` actions hold it: read from the
    /// commit files directly for a local table (a test's commit files stay for the retention, so the
    /// highest version per app id is the current one), by the log replay on S3.
    pub fn delta_positions(&self) -> BTreeMap<i32, i64> {
        // The topic and group of the config, or those set over it (the consume bench's).
        let topic = self.override_of("ORDERSTREAM__KAFKA__TOPIC").unwrap_or_else(|| self.topic.clone());
        let group = self
            .override_of("ORDERSTREAM__KAFKA__GROUP_ID")
            .unwrap_or_else(|| format!("orderstream_{topic}"));
        let prefix = format!("orderstream/{group}/{topic}/");
        let txn: BTreeMap<String, i64> = if self.delta_uri().starts_with("s3://") {
            self.read_delta("replay", false).txn
        } else {
            local_txns(&std::path::Path::new(&self.delta_uri()).join("_delta_log"))
        };
        txn.into_iter().filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse().ok()?, v + 1))).collect()
    }

    /// Waits until the table holds every message below `positions` (partition, offset of the
    /// last message).
    pub fn wait_delta_committed(&self, positions: &[(i32, i64)], timeout: Duration) {
        let mut want = BTreeMap::<i32, i64>::new();
        for (p, o) in positions {
            let e = want.entry(*p).or_default();
            *e = (*e).max(o + 1);
        }
        wait_until(timeout, "the Delta table to hold every message", || {
            let have = self.delta_positions();
            want.iter().all(|(p, o)| have.get(p).is_some_and(|h| h >= o))
        });
    }
}

/// The highest `txn` version per app id in a local table's commit files.
pub fn local_txns(log: &std::path::Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(log) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.contains(".tmp") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let (Some(app), Some(ver)) = (v["txn"]["appId"].as_str(), v["txn"]["version"].as_i64()) {
                let e = out.entry(app.to_string()).or_insert(ver);
                *e = (*e).max(ver);
            }
        }
    }
    out
}

/// Creates a bucket on the S3 server at `endpoint`.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let script = r#"
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket=sys.argv[2])
"#;
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).arg(endpoint).arg(bucket);
    let (code, _, err) = run(cmd, None, Duration::from_secs(60));
    assert_eq!(code, 0, "cannot create bucket {bucket} at {endpoint}: {err}");
}

/// The stack's S3 server, with a bucket of its own for this test binary's run.
pub fn stack_s3(tag: &str) -> Store {
    let bucket = super::unique(tag).replace('_', "-");
    create_bucket(&s3_endpoint(), &bucket);
    Store::S3 { bucket, endpoint: s3_endpoint() }
}

/// A private S3 server (ministack) on a port of its own, for a test that freezes it.
pub struct PrivateS3 {
    child: Option<std::process::Child>,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
}

impl PrivateS3 {
    /// Starts one and waits until it answers.
    pub fn start() -> PrivateS3 {
        let bin = std::path::Path::new(&python()).with_file_name("ministack");
        for _ in 0..5 {
            let port = super::port_to_try();
            let log = std::env::temp_dir().join(format!("{}.log", super::unique("ministack")));
            let file = std::fs::File::create(&log).unwrap();
            let child = Command::new(&bin)
                .env("SERVICES", "s3")
                .env("BIND_HOST", "127.0.0.1")
                .env("GATEWAY_PORT", port.to_string())
                .env("LOG_LEVEL", "WARNING")
                .stdin(std::process::Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e}); run `make up`", bin.display()));
            let mut s3 = PrivateS3 { child: Some(child), endpoint: format!("http://127.0.0.1:{port}") };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Some(c) = s3.child.as_mut()
                    && let Ok(Some(_)) = c.try_wait()
                {
                    break;
                }
                if super::listens_on(s3.pid() as u32, port) {
                    return s3;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            s3.child = None;
        }
        panic!("no private S3 server could be started");
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGSTOP: it stops answering, keeping its objects.
    pub fn freeze(&self) {
        super::signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        super::signal(self.pid(), libc::SIGCONT);
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.thaw();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
