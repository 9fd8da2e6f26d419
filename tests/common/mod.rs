//! The integration-test harness: the real local stack (`make up`), a scratch table, topic,
//! group and lake folder per test, the orderstream binary, and a private memory-storage broker
//! for tests that freeze or stop one.
#![allow(dead_code)]

pub mod bench;
pub mod cluster;
pub mod lake;
pub mod proc;
pub mod proxy;
pub mod topic;
pub mod volume;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL port of the local stack.
pub fn pg_port() -> u16 {
    std::env::var("ORDERSTREAM_PG_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(55432)
}

/// Broker of the local stack.
pub fn stack_brokers() -> String {
    let port = std::env::var("ORDERSTREAM_KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    format!("127.0.0.1:{port}")
}

/// A connection string for the stack's database.
pub fn pg_url() -> String {
    format!("postgres://student:student123@127.0.0.1:{}/food_delivery_db", pg_port())
}

/// A synchronous client on the stack's database.
pub fn pg() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap_or_else(|e| {
        panic!("the local stack's PostgreSQL is not reachable ({e}); run `make up` first")
    })
}

/// A name no other test or run uses: `<tag>_<pid>_<counter><time>`, lower case.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{tag}_{}_{}{:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 0xfffff)
        .to_lowercase()
}

/// One test's world: its own table, topics, group and folder, and a config file naming them.
pub struct TestEnv {
    /// The unique name everything is derived from.
    pub name: String,
    /// Scratch folder holding the config, the lake, checkpoints and producer state.
    pub dir: PathBuf,
    /// The broker this test uses.
    pub brokers: String,
    /// The orders table (already lower case).
    pub table: String,
    /// The orders topic.
    pub topic: String,
    /// Extra `ORDERSTREAM__*` variables for every orderstream command.
    pub env: Vec<(String, String)>,
    /// `postgres.capture` of this test's config: `poll` unless made with [`TestEnv::logical`].
    pub capture: &'static str,
    /// Whether the table (and its publication) is this world's own, dropped after a pass;
    /// `false` for a table shared by several worlds (the benchmarks').
    pub owns_table: bool,
}

impl TestEnv {
    /// A test world on the local stack's broker, capturing by polling.
    pub fn new(tag: &str) -> TestEnv {
        Self::with_brokers(tag, &stack_brokers())
    }

    /// A test world on the local stack's broker, capturing from the log (the default mode).
    /// Its replication slot is dropped when the test's `TestEnv` is dropped.
    pub fn logical(tag: &str) -> TestEnv {
        let mut env = Self::with_brokers(tag, &stack_brokers());
        env.capture = "logical";
        env.write_config("");
        env
    }

    /// The replication slot of a logical test world (the default name for its table).
    pub fn slot(&self) -> String {
        format!("orderstream_{}", self.table)
    }

    /// A test world on the given broker.
    pub fn with_brokers(tag: &str, brokers: &str) -> TestEnv {
        let name = unique(tag);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runs").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let env = TestEnv {
            table: format!("orders_{name}"),
            topic: format!("orders_{name}"),
            brokers: brokers.to_string(),
            name,
            dir,
            env: Vec::new(),
            capture: "poll",
            owns_table: true,
        };
        env.write_config("");
        env
    }

    /// The config file of this test.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("orders_stream.yml")
    }

    /// The lake root.
    pub fn lake(&self) -> PathBuf {
        self.dir.join("lake")
    }

    /// The consumer checkpoint folder.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The producer state folder (holding last_timestamp.txt).
    pub fn lastprocess(&self) -> PathBuf {
        self.dir.join("lastprocess")
    }

    /// (Re)writes the config file; `extra_kafka` is appended to the kafka section.
    pub fn write_config(&self, extra_kafka: &str) {
        let text = format!(
            r#"postgres:
  jdbc_url: "jdbc:postgresql://127.0.0.1:{port}/food_delivery_db"
  table: "{table}"
  user: "student"
  password: "student123"
  capture: "{capture}"
kafka:
  brokers: "{brokers}"
  topic: "{topic}"
{extra_kafka}
datalake:
  path: "{dir}/lake"
  format: "parquet"
streaming:
  checkpoint_location: "{dir}/checkpoints"
  last_processed_timestamp_location: "{dir}/lastprocess"
  batch_interval: 0.2
metrics:
  port: 0
"#,
            port = pg_port(),
            capture = self.capture,
            table = self.table,
            brokers = self.brokers,
            topic = self.topic,
            dir = self.dir.display(),
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Adds an `ORDERSTREAM__*` override for every later command.
    pub fn set(&mut self, var: &str, value: &str) {
        self.env.push((var.to_string(), value.to_string()));
    }

    /// `orderstream --config <this test's file> <args>`.
    pub fn orderstream(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderstream"));
        cmd.arg("--config").arg(self.config_path()).args(args);
        // Keep the developer's own settings out of the tests: overrides, hooks, log levels.
        for (k, _) in std::env::vars() {
            if k.starts_with("ORDERSTREAM") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs a command to completion and returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        run_output(self.orderstream(args))
    }

    /// `orderstream init`, which must succeed.
    pub fn init(&self) {
        let (code, out, err) = self.run(&["init"]);
        assert_eq!(code, 0, "init failed\nstdout: {out}\nstderr: {err}");
    }

    /// Starts `orderstream <args>` in the background, logging to its own file
    /// `<dir>/<command>-<n>.log`.
    pub fn spawn(&self, args: &[&str]) -> proc::Proc {
        self.spawn_cmd(self.orderstream(args), &args.join("-"))
    }

    /// Starts a prepared command in the background, logging to `<dir>/<name>-<n>.log`.
    pub fn spawn_cmd(&self, cmd: std::process::Command, name: &str) -> proc::Proc {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        proc::Proc::spawn(cmd, self.dir.join(format!("{name}-{n}.log")))
    }

    /// Everything the `<name>` processes of this test logged, in start order.
    pub fn logs(&self, name: &str) -> String {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let f = p.file_name().unwrap().to_string_lossy();
                f.starts_with(&format!("{name}-")) && f.ends_with(".log")
            })
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.created()).ok());
        files.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect()
    }

    /// A client on the stack's database.
    pub fn pg(&self) -> postgres::Client {
        pg()
    }

    /// The table name quoted for SQL.
    pub fn t(&self) -> String {
        format!("\"{}\"", self.table)
    }

    /// Every order id in the table, ascending.
    pub fn table_ids(&self) -> Vec<i64> {
        pg().query(&format!("SELECT order_id::int8 FROM {} ORDER BY 1", self.t()), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Inserts `n` orders (default created_at) in one statement and returns their ids.
    pub fn insert(&self, n: i64) -> Vec<i64> {
        pg().query(
            &format!(
                "INSERT INTO {} (customer_name, restaurant_name, item, amount, order_status) \
                 SELECT 'Customer ' || g, 'Restaurant ' || (g % 7), 'Item ' || (g % 13), 10 + (g % 500) + 0.25, 'PLACED' \
                 FROM generate_series(1, $1::int8) g RETURNING order_id::int8",
                self.t()
            ),
            &[&n],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

impl Drop for TestEnv {
    /// A passed test leaves little behind: its slot, publication, table and folder go.
    /// A failed one keeps them for a look (except a logical test's slot, which would keep the
    /// stack's WAL forever).
    fn drop(&mut self) {
        let passed = !std::thread::panicking();
        if let Ok(mut c) = postgres::Client::connect(&pg_url(), postgres::NoTls) {
            if self.capture == "logical" || passed {
                let _ = c.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[&self.slot()],
                );
            }
            if passed && self.owns_table {
                let _ = c.batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{}\"", self.slot()));
                let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.t()));
            }
        }
        // Topics stay: tansu 0.6 with SQLite storage (the stack's broker) stops answering
        // metadata requests after a DeleteTopics (seen here), which would take every later
        // test down with it.
        if passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A small deterministic random generator for fault tests (xorshift64*), seeded from
/// `ORDERSTREAM_TEST_SEED` when set so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeds from the environment or the clock, and prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed =
            std::env::var("ORDERSTREAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
        eprintln!("{test}: random seed {seed} (replay with ORDERSTREAM_TEST_SEED={seed})");
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.range(0, n)
    }
}

/// Runs a command with a 120 s limit (killed and a panic after it) and returns (exit code,
/// stdout, stderr).
pub fn run_output(cmd: Command) -> (i32, String, String) {
    proc::run(cmd, None, Duration::from_secs(120))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private tansu broker with memory storage, for tests that stop or freeze their broker.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:<port>`
    pub addr: String,
}

impl Broker {
    /// Starts a memory-storage tansu on a free port and waits until it answers.
    pub fn start_memory() -> Broker {
        Self::start_memory_on(free_port())
    }

    /// Starts a memory-storage tansu on `port` and waits until it answers.
    pub fn start_memory_on(port: u16) -> Broker {
        let tansu = std::env::var("ORDERSTREAM_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("CARGO_HOME")
                .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
            format!("{home}/bin/tansu")
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--cluster-id", &unique("broker")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {tansu} ({e}); run `make up` to install it"));
        let broker = Broker { child: Some(child), addr: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&broker.addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {}", broker.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// The broker's PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGSTOP: the broker stops answering but keeps its data.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Kills the broker (its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// Sends a signal to a process.
pub fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a PID we own; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
