//! The integration-test harness: the real local stack (`make up`), a scratch table, topic,
//! group and lake folder per test, the orderstream binary, and a private memory-storage broker
//! for tests that freeze or stop one.
#![allow(dead_code)]

pub mod bench;
pub mod cluster;
pub mod delta;
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
    /// A test world on the local stack's broker, capturing by polling (the seed's mode, not
    /// the default: its tests say so by calling this).
    pub fn poll(tag: &str) -> TestEnv {
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

    /// A test world on the given broker, capturing by polling.
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

    /// Takes back every [`TestEnv::set`] of `var`: the config file's value holds again.
    pub fn unset(&mut self, var: &str) {
        self.env.retain(|(k, _)| k != var);
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
    pub fn spawn_cmd(&self, cmd: Command, name: &str) -> proc::Proc {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        proc::Proc::spawn(cmd, self.dir.join(format!("{name}-{n}.log")))
    }

    /// Starts `orderstream <args>` with `/metrics` on a port of its own, and returns it with
    /// that port once it serves there.
    ///
    /// `metrics.port: 0` turns the endpoint off, so the port is one that was free a moment
    /// ago; orderstream binds it before anything else and either logs that it serves there or
    /// exits naming the port it cannot listen on. The second is a port another process took in
    /// between, and another port is tried.
    pub fn spawn_serving(&self, args: &[&str]) -> (proc::Proc, u16) {
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            let port = port_to_try();
            let mut cmd = self.orderstream(args);
            cmd.env("ORDERSTREAM__METRICS__PORT", port.to_string());
            let mut p = self.spawn_cmd(cmd, &args.join("-"));
            let serving = format!("metrics on http://127.0.0.1:{port}/metrics");
            let started = proc::wait_for(Duration::from_secs(60), &serving, || {
                // Whether it still runs first: a log read after that holds its last line.
                let running = p.running();
                let log = p.log_text();
                if log.contains(&serving) {
                    Some(true)
                } else if running {
                    None
                } else if log.contains(&format!("cannot listen on 127.0.0.1:{port}: Address already in use"))
                {
                    Some(false)
                } else {
                    panic!("orderstream {args:?} exited before serving metrics:\n{log}")
                }
            });
            if started {
                return (p, port);
            }
        }
        panic!("orderstream {args:?} found its metrics port taken {TRIES} times in a row");
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

/// A port that was free a moment ago, for a program that binds its port itself and cannot be
/// given a listener. Another process may take it before that program binds it: use it only
/// where the collision is detected and another port tried ([`Broker::start_memory`],
/// [`TestEnv::spawn_serving`], the private clusters). A port that must stay closed is a
/// [`ClosedPort`].
pub fn port_to_try() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback port nobody can listen on while this lives: a socket bound to it that never
/// listens. Connections are refused, and without SO_REUSEADDR no other socket can bind the
/// port (nor get it as the source port of a connection) until this is dropped.
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    /// The port.
    pub port: u16,
}

impl ClosedPort {
    /// Binds a fresh loopback port without listening.
    pub fn new() -> ClosedPort {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; the descriptor is owned right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value (port 0: any).
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        // SAFETY: `sa` points to a sockaddr_in of `len` bytes that outlives both calls.
        let bound = unsafe { libc::bind(fd, sa, len) == 0 && libc::getsockname(fd, sa, &mut len) == 0 };
        assert!(bound, "bind 127.0.0.1:0: {}", std::io::Error::last_os_error());
        ClosedPort { _socket: socket, port: u16::from_be(addr.sin_port) }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux `/proc`).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // `sl local_address rem_address st … inode`: local 127.0.0.1 is `0100007F`, LISTEN is `0A`.
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// A private tansu broker, for tests that stop, freeze or kill their broker: memory storage,
/// or the stack broker's kind (PostgreSQL storage, in a database of its own).
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:<port>`
    pub addr: String,
    /// The cluster id it was started with (and reports).
    pub cluster: String,
    /// What tansu printed.
    log: PathBuf,
    /// `--storage-engine`.
    storage: String,
    /// The database holding its log (PostgreSQL storage), dropped with the broker.
    database: Option<String>,
}

/// The stack broker's storage cluster (`dev/stack.sh`): where private PostgreSQL-storage
/// brokers get a database each.
fn storage_url(database: &str) -> String {
    let port = std::env::var("ORDERSTREAM_KAFKA_PG_PORT").unwrap_or_else(|_| "55433".into());
    format!("postgres://tansu:tansu@127.0.0.1:{port}/{database}")
}

impl Broker {
    /// Starts a memory-storage tansu on a port of its own and waits until it answers.
    ///
    /// tansu binds the port its command line names: it cannot take port 0 and report the one
    /// it got, nor be handed a listener, so the port is one that was free a moment ago and
    /// another process may bind it first. That is seen, not guessed: tansu then exits with
    /// "Address already in use", and until it is the one listening (its own socket, read in
    /// /proc) the broker is not taken as ready, since whatever else answers on the port is
    /// not it. A taken port means another try on another port.
    pub fn start_memory() -> Broker {
        Self::start_memory_advertising(None)
    }

    /// As [`Broker::start_memory`], telling clients (in metadata) to connect to 127.0.0.1:
    /// `advertised` instead of its own port: a proxy there then sees every client's traffic.
    pub fn start_memory_advertising(advertised: Option<u16>) -> Broker {
        Self::start_on("memory://tansu/", None, advertised)
    }

    /// Starts a tansu like the stack's, storing its log in PostgreSQL: a new database on the
    /// stack broker's storage cluster, with the tables `dev/stack.sh` creates. Unlike a memory
    /// broker, it keeps every acknowledged message across [`Broker::kill`] and
    /// [`Broker::restart`].
    pub fn start_postgres() -> Broker {
        let database = unique("tansu");
        let mut admin =
            postgres::Client::connect(&storage_url("tansu"), postgres::NoTls).unwrap_or_else(|e| {
                panic!("the stack broker's storage cluster is not reachable ({e}); run `make up` first")
            });
        admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
        let mut db = postgres::Client::connect(&storage_url(&database), postgres::NoTls).unwrap();
        db.batch_execute(include_str!("../../dev/tansu-pg-schema.sql")).unwrap();
        Self::start_on(&storage_url(&database), Some(database), None)
    }

    fn start_on(storage: &str, database: Option<String>, advertised: Option<u16>) -> Broker {
        const TRIES: usize = 5;
        let mut database = database;
        for _ in 0..TRIES {
            if let Some(mut broker) = Self::try_start(port_to_try(), advertised, storage, unique("broker")) {
                broker.database = database.take();
                return broker;
            }
        }
        panic!("tansu found its port taken {TRIES} times in a row");
    }

    /// After [`Broker::kill`]: the same broker (port, cluster id, storage) started again.
    pub fn restart(&mut self) {
        self.kill();
        let port: u16 = self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mut b) = Self::try_start(port, None, &self.storage, self.cluster.clone()) {
                self.child = b.child.take();
                let _ = std::fs::remove_file(&self.log);
                self.log = std::mem::take(&mut b.log);
                return;
            }
            assert!(Instant::now() < deadline, "port of {} still taken 30 s after the kill", self.addr);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A started broker, or `None` when another process had the port.
    fn try_start(port: u16, advertised: Option<u16>, storage: &str, cluster: String) -> Option<Broker> {
        let tansu = std::env::var("ORDERSTREAM_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("CARGO_HOME")
                .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
            format!("{home}/bin/tansu")
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let public = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let log = std::env::temp_dir().join(format!("{}.log", unique("tansu")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &public])
            .args(["--storage-engine", storage, "--cluster-id", &cluster])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {tansu} ({e}); run `make up` to install it"));
        let mut broker = Broker {
            child: Some(child),
            addr: format!("127.0.0.1:{port}"),
            cluster,
            log,
            storage: storage.to_string(),
            database: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let child = broker.child.as_mut().unwrap();
            if let Ok(Some(status)) = child.try_wait() {
                broker.child = None;
                let text = broker.log_text();
                if text.contains("Address already in use") {
                    return None;
                }
                panic!("tansu on {} exited ({status}):\n{text}", broker.addr);
            }
            if listens_on(child.id(), port) {
                return Some(broker);
            }
            if Instant::now() > deadline {
                panic!("tansu did not listen on {} within 20 s:\n{}", broker.addr, broker.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What tansu printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// SIGKILL: a memory broker's data is gone, a PostgreSQL-storage broker's is kept.
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
        let _ = std::fs::remove_file(&self.log);
        if let Some(db) = self.database.take()
            && let Ok(mut admin) = postgres::Client::connect(&storage_url("tansu"), postgres::NoTls)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
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

/// `GET path` on orderstream's metrics endpoint: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}
