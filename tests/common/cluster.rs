//! A private PostgreSQL cluster for tests that need settings the stack's cluster must not get
//! (a lower wal_level, TLS only): initdb and pg_ctl as the stack's OS user (`runuser` when the
//! tests run as root), on a port of its own, removed on drop. The binaries come from
//! `ORDERSTREAM_PG_BIN` and the user from `ORDERSTREAM_PG_OSUSER` (`dev/stack.sh env`, exported
//! by dev/test.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to change from initdb's defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `postgresql.conf` settings appended as `name = 'value'` (e.g. `wal_level`, `ssl`).
    pub settings: Vec<(String, String)>,
    /// Replaces pg_hba.conf when given, e.g. `hostssl all all 127.0.0.1/32 trust`.
    pub hba: Option<Vec<String>>,
    /// `listen_addresses` (default `127.0.0.1`).
    pub listen: Option<String>,
}

impl ClusterOptions {
    /// Adds one postgresql.conf setting.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running private cluster; superuser `postgres`, database `postgres`.
pub struct Cluster {
    /// Holds `data/`, the server log and the socket.
    pub dir: PathBuf,
    /// The TCP port.
    pub port: u16,
}

/// The PostgreSQL binaries' folder: `ORDERSTREAM_PG_BIN`, else the newest major version
/// installed under `/usr/lib/postgresql` (where Debian puts each), the one a new stack gets.
pub fn pg_bin() -> String {
    if let Ok(bin) = std::env::var("ORDERSTREAM_PG_BIN")
        && !bin.is_empty()
    {
        return bin;
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|major| Path::new(&format!("/usr/lib/postgresql/{major}/bin/initdb")).exists())
        .max()
        .expect("no PostgreSQL in /usr/lib/postgresql/<major>/bin: run `make up`, or set ORDERSTREAM_PG_BIN");
    format!("/usr/lib/postgresql/{newest}/bin")
}

/// The OS user the clusters run as.
pub fn os_user() -> String {
    std::env::var("ORDERSTREAM_PG_OSUSER").unwrap_or_else(|_| "postgres".into())
}

/// `program args…` as the cluster's OS user (PostgreSQL refuses to run as root).
pub fn as_pg_user(program: &str, args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", &os_user(), "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir("/");
    cmd
}

/// Runs a command that must succeed.
pub fn must(cmd: Command, what: &str) {
    let (code, out, err) = super::run_output(cmd);
    assert_eq!(code, 0, "{what}: {out}{err}");
}

impl Cluster {
    /// initdb, then `prepare(data dir)` (to add files the settings name, such as certificates),
    /// then the options, then pg_ctl start.
    pub fn start_with(options: &ClusterOptions, prepare: impl FnOnce(&Path)) -> Cluster {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(super::unique("pg_cluster"));
        let data = dir.join("data");
        let d = data.to_string_lossy().to_string();
        must(
            as_pg_user(&format!("{bin}/initdb"), &["-D", &d, "-U", "postgres", "--auth=trust", "--no-sync"]),
            "initdb",
        );
        // The port is known once the server runs.
        let mut cluster = Cluster { dir, port: 0 };
        prepare(&data);
        if !options.settings.is_empty() {
            let extra: String = options
                .settings
                .iter()
                .map(|(k, v)| format!("{k} = '{}'\n", v.replace('\'', "''")))
                .collect();
            let conf = data.join("postgresql.conf");
            let text = std::fs::read_to_string(&conf).unwrap();
            // Rewriting in place keeps the file's owner.
            std::fs::write(&conf, format!("{text}\n{extra}")).unwrap();
        }
        if let Some(lines) = &options.hba {
            std::fs::write(data.join("pg_hba.conf"), lines.join("\n") + "\n").unwrap();
        }
        // PostgreSQL binds the port it is told and cannot be handed a listener, so the port is
        // one that was free a moment ago. Another process may take it first: the postmaster
        // then logs "Address already in use" (and, with two listen addresses, may even run on
        // the other one), which is seen in its log, not guessed, and means another port.
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            let port = super::port_to_try();
            if cluster.try_start(options, port) {
                cluster.port = port;
                return cluster;
            }
        }
        panic!("the private cluster found its port taken {TRIES} times in a row");
    }

    /// pg_ctl start on `port`: `false` when another process had the port (the cluster is then
    /// stopped and its log removed), a panic on any other failure.
    fn try_start(&self, options: &ClusterOptions, port: u16) -> bool {
        let d = self.dir.join("data").to_string_lossy().to_string();
        let listen = options.listen.as_deref().unwrap_or("127.0.0.1");
        let opts = format!(
            "-p {port} -c listen_addresses={listen} -c unix_socket_directories={}",
            self.dir.display()
        );
        let log = self.dir.join("log");
        let log_arg = log.to_string_lossy().to_string();
        let (code, out, err) = super::run_output(as_pg_user(
            &format!("{}/pg_ctl", pg_bin()),
            &["-D", &d, "-o", &opts, "-l", &log_arg, "-w", "start"],
        ));
        if self.log().contains("Address already in use") {
            if code == 0 {
                self.stop();
            }
            let _ = std::fs::remove_file(&log);
            return false;
        }
        assert_eq!(code, 0, "pg_ctl start: {out}{err}\n{}", self.log());
        true
    }

    /// pg_ctl stop, immediate; never panics (it runs in `drop`).
    fn stop(&self) {
        let d = self.dir.join("data").to_string_lossy().to_string();
        let _ = super::proc::try_run(
            as_pg_user(&format!("{}/pg_ctl", pg_bin()), &["-D", &d, "-m", "immediate", "stop"]),
            None,
            std::time::Duration::from_secs(60),
        );
    }

    /// A cluster with initdb's defaults plus `options`.
    pub fn start(options: &ClusterOptions) -> Cluster {
        Self::start_with(options, |_| {})
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
