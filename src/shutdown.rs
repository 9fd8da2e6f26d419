//! One shutdown signal for every task and thread of a command: SIGTERM or SIGINT (Ctrl-C)
//! trigger it; loops check it between units of work so that a batch is finished or abandoned
//! cleanly, never cut in half.
//!
//! Every wait of a long-running command goes through [`Shutdown::sleep`],
//! [`Shutdown::sleep_blocking`] or [`Shutdown::until`], so a stop is seen within moments
//! whatever the command is waiting for (a retry delay, a lock, a server that does not answer).
//! What cannot be interrupted (a librdkafka call blocking a thread, closing a consumer whose
//! broker is frozen) is bounded by [`Shutdown::on_signals`]: the process exits
//! [`STOP_BOUND`] after the first signal whatever it is doing, and at once on a second
//! signal. That is as safe as a crash, which the exactly-once design already covers: nothing
//! is saved before the broker or the lake has it, so an abandoned batch is read, published or
//! written again by the next start.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long after the first SIGTERM/SIGINT the process exits whatever it is doing.
pub const STOP_BOUND: Duration = Duration::from_secs(15);

/// Exit code of a stop that abandoned in-flight work (a batch not acknowledged or not
/// committed in time, or a second signal): nothing accepted is lost, the next start redoes it.
pub const EXIT_ABANDONED: u8 = 3;

/// A cloneable shutdown flag that async tasks can await and threads can poll or sleep on.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    abandoned: AtomicBool,
    notify: Notify,
    /// Threads sleep on the condition variable; the mutex only orders trigger and wait.
    lock: Mutex<()>,
    cond: Condvar,
}

impl Shutdown {
    /// A flag that is not triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
        // Taken so that a thread between its check and its wait cannot miss the wake-up.
        let _guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.cond.notify_all();
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Records that the stop left in-flight work undone (redone by the next start), so that
    /// the command exits with [`EXIT_ABANDONED`] rather than 0.
    pub fn abandon(&self) {
        self.inner.abandoned.store(true, Ordering::SeqCst);
    }

    /// Whether [`Shutdown::abandon`] was called.
    pub fn abandoned(&self) -> bool {
        self.inner.abandoned.load(Ordering::SeqCst)
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps `d`, or less when a stop is asked for; returns whether a stop was asked for.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_triggered(),
            _ = self.wait() => true,
        }
    }

    /// [`Shutdown::sleep`] for a thread outside the async runtime.
    pub fn sleep_blocking(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_triggered() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.inner.cond.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Runs `fut` to its end, or drops it when a stop is asked for first (`None`). Only for
    /// work whose result is not saved yet, so that dropping it halfway loses nothing.
    pub async fn until<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.wait() => None,
            v = fut => Some(v),
        }
    }

    /// Triggers on SIGTERM or SIGINT; must be called inside a tokio runtime. After the first
    /// signal the process exits with [`EXIT_ABANDONED`] if it still runs [`STOP_BOUND`] later;
    /// a second signal makes it exit so at once.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(
                "{name} received: finishing the current batch, then stopping (at most {} s; a second signal stops at once)",
                STOP_BOUND.as_secs()
            );
            me.trigger();
            // A thread, not a task: it must fire even when every runtime thread is blocked.
            std::thread::spawn(|| {
                std::thread::sleep(STOP_BOUND);
                tracing::error!(
                    "still running {} s after the stop signal: exiting now; the unfinished batch is redone at the next start",
                    STOP_BOUND.as_secs()
                );
                std::process::exit(i32::from(EXIT_ABANDONED));
            });
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!(
                "second signal ({name}): exiting now; the unfinished batch is redone at the next start"
            );
            std::process::exit(i32::from(EXIT_ABANDONED));
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_sleep_wakes_on_trigger_and_says_so() {
        let s = Shutdown::new();
        assert!(!s.sleep_blocking(Duration::from_millis(10)));
        let t = s.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t.trigger();
        });
        let started = Instant::now();
        assert!(s.sleep_blocking(Duration::from_secs(600)));
        assert!(started.elapsed() < Duration::from_secs(60));
        waker.join().unwrap();
        assert!(s.sleep_blocking(Duration::from_secs(600)));
    }

    #[tokio::test]
    async fn until_drops_the_work_once_a_stop_is_asked() {
        let s = Shutdown::new();
        assert_eq!(s.until(async { 7 }).await, Some(7));
        assert!(!s.sleep(Duration::from_millis(1)).await);
        s.trigger();
        assert_eq!(s.until(std::future::pending::<()>()).await, None);
        assert!(s.sleep(Duration::from_secs(600)).await);
    }
}
