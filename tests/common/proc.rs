//! Child processes of a test: orderstream commands in the background, signals, waiting.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process killed when dropped; its stderr goes to a log file kept for debugging.
pub struct Proc {
    child: Option<Child>,
    /// Where its stderr (the logs) went.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child: Some(child), log }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit code (60 s at most).
    pub fn stop(&mut self) -> i32 {
        self.terminate(Duration::from_secs(60))
    }

    /// Sends SIGTERM and waits for the exit code (panics after `limit`).
    pub fn terminate(&mut self, limit: Duration) -> i32 {
        super::signal(self.pid(), libc::SIGTERM);
        self.wait(limit)
    }

    /// Waits for the exit code (panics after `limit`).
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("process already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!("process {} did not exit within {limit:?}; log:\n{}", self.pid(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, panicking with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 50 ms until it holds, panicking with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    wait_for(limit, what, || check().then_some(()))
}

/// How a command that ran to the end finished: exit code (-1 when a signal ended it), stdout,
/// stderr.
pub type Finished = (i32, String, String);

/// Runs `cmd` to completion with `input` on its stdin (none: /dev/null) and at most `limit`;
/// an `Err` names the command and what it printed when it did not finish in time (it is then
/// killed, with everything it started) or could not be run. For `Drop`, which must not panic.
pub fn try_run(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Result<Finished, String> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    // A group of its own, so a timeout also kills what it started (Spark's JVM under Python,
    // pg_ctl under runuser), which would otherwise keep the output pipes open.
    cmd.process_group(0)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if let (Some(mut stdin), Some(bytes)) = (child.stdin.take(), input) {
        let bytes = bytes.to_vec();
        // A thread: a child that does not read its input must not block us past the limit.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: [Box<dyn Read + Send>; 2] =
        [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
    for (i, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, String::from_utf8_lossy(&buf).into_owned()));
        });
    }
    drop(tx);
    // A thread waits, so the exit is seen at once (the benchmarks time commands with this).
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done_rx.recv_timeout(limit) {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(format!("cannot wait for {cmd:?}: {e}")),
        Err(_) => {
            // The group's id is the child's PID, and the group lives while any of it runs.
            // SAFETY: kill(2) on a process group we created; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(format!("{cmd:?} did not finish within {limit:?} and survived SIGKILL"));
            }
            None
        }
    };
    // The pipes close when the last process holding them ends; one that escaped the group
    // (a daemon that did not redirect its output) must not hang us either.
    let mut out = [String::new(), String::new()];
    let grace = Instant::now() + Duration::from_secs(10);
    for _ in 0..2 {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((i, text)) => out[i] = text,
            Err(_) => {
                return Err(format!(
                    "{cmd:?} ended, but a process it started still holds its output open\nstdout: {}\nstderr: {}",
                    out[0], out[1]
                ));
            }
        }
    }
    let [stdout, stderr] = out;
    match status {
        Some(status) => Ok((status.code().unwrap_or(-1), stdout, stderr)),
        None => Err(format!(
            "{cmd:?} did not finish within {limit:?} and was killed\nstdout: {stdout}\nstderr: {stderr}"
        )),
    }
}

/// [`try_run`] that panics with its error.
pub fn run(cmd: Command, input: Option<&[u8]>, limit: Duration) -> Finished {
    try_run(cmd, input, limit).unwrap_or_else(|e| panic!("{e}"))
}
