//! Capped exponential backoff for retrying after a service failure, and the outage log that
//! goes with it: one line when an outage begins, a reminder every [`REMINDER`] with the real
//! delay before the next attempt and how long the outage has lasted, one line when it ends.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Delays that double from a first one up to a cap (by default 0.1 s, 0.2 s, 0.4 s … 30 s);
/// `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

const FIRST: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(30);

impl Backoff {
    /// 0.1 s doubling up to 30 s.
    pub fn new() -> Backoff {
        Backoff::between(FIRST, CAP)
    }

    /// `first` doubling up to `cap`.
    pub fn between(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap, next: first }
    }

    /// The delay before the next retry; doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// A warning that repeats (librdkafka reports every failed reconnect) let through once per
/// growing interval, with a count of those held back meanwhile.
#[derive(Debug)]
pub struct Throttle {
    next: Instant,
    backoff: Backoff,
    held_back: u64,
}

impl Throttle {
    /// Lets the first line through, then waits `first` doubling up to `cap` between lines.
    pub fn new(first: Duration, cap: Duration) -> Throttle {
        Throttle { next: Instant::now(), backoff: Backoff::between(first, cap), held_back: 0 }
    }

    /// `Some((held back since the last line, wait before the next))` when a line may be
    /// written now; `None` (counted) when it is held back.
    pub fn pass(&mut self) -> Option<(u64, Duration)> {
        let now = Instant::now();
        if now < self.next {
            self.held_back += 1;
            return None;
        }
        let wait = self.backoff.next_delay();
        self.next = now + wait;
        Some((std::mem::take(&mut self.held_back), wait))
    }

    /// After a success: the next warning is news, let through at once.
    pub fn reset(&mut self) {
        self.backoff.reset();
        self.next = Instant::now();
    }

    /// After a success that does not make the next warning news (the consumer commits while
    /// librdkafka still reports a broker down): the intervals start over from the first, but
    /// the current wait stands.
    pub fn shorten(&mut self) {
        self.backoff.reset();
    }
}

/// How often a continuing outage is logged again.
pub const REMINDER: Duration = Duration::from_secs(60);

/// The log of one stage's outage (a stage retries one service, e.g. "producer").
#[derive(Debug)]
pub struct Outage {
    stage: &'static str,
    since: Option<Instant>,
    next_reminder: Instant,
    attempts: u64,
}

impl Outage {
    /// No outage yet.
    pub fn new(stage: &'static str) -> Outage {
        Outage { stage, since: None, next_reminder: Instant::now(), attempts: 0 }
    }

    /// Records a failed attempt followed by `delay` before the next one; logs it when the
    /// outage begins and every [`REMINDER`] while it lasts (the rest at debug level).
    pub fn failed(&mut self, error: &dyn Display, delay: Duration) {
        let now = Instant::now();
        self.attempts += 1;
        let Some(since) = self.since else {
            tracing::warn!(
                stage = self.stage,
                retry_in_s = delay.as_secs_f64(),
                "{}: {error}; retrying in {} (outage began; reminders every {} s)",
                self.stage,
                seconds(delay),
                REMINDER.as_secs()
            );
            self.since = Some(now);
            self.next_reminder = now + REMINDER;
            return;
        };
        if now >= self.next_reminder {
            let lasted = now - since;
            tracing::warn!(
                stage = self.stage,
                retry_in_s = delay.as_secs_f64(),
                outage_s = lasted.as_secs(),
                attempts = self.attempts,
                "{}: still failing after {} s and {} attempts: {error}; next attempt in {}",
                self.stage,
                lasted.as_secs(),
                self.attempts,
                seconds(delay)
            );
            self.next_reminder = now + REMINDER;
        } else {
            tracing::debug!("{}: {error}; retrying in {}", self.stage, seconds(delay));
        }
    }

    /// Records a success; logs the end of an outage, if one was going on.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            let lasted = since.elapsed();
            tracing::info!(
                stage = self.stage,
                outage_s = lasted.as_secs(),
                attempts = self.attempts,
                "{}: recovered after {} s and {} failed attempts",
                self.stage,
                lasted.as_secs(),
                self.attempts
            );
        }
        self.attempts = 0;
    }
}

/// A backoff and the outage log of one stage, used together.
#[derive(Debug)]
pub struct Retry {
    backoff: Backoff,
    outage: Outage,
}

impl Retry {
    /// `backoff`'s delays for `stage`.
    pub fn new(stage: &'static str, backoff: Backoff) -> Retry {
        Retry { backoff, outage: Outage::new(stage) }
    }

    /// Logs the failure as [`Outage::failed`] does and returns the delay before the next attempt.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        let delay = self.backoff.next_delay();
        self.outage.failed(error, delay);
        delay
    }

    /// After a success: the first delay again, and the outage's end logged.
    pub fn reset(&mut self) {
        self.backoff.reset();
        self.outage.recovered();
    }
}

/// `1 s`, `0.4 s`: whole seconds without decimals.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..12).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), FIRST);
    }

    #[test]
    fn a_throttle_counts_what_it_holds_back_and_shorten_keeps_the_wait_that_reset_ends() {
        let hour = Duration::from_secs(3600);
        let mut t = Throttle::new(hour, 2 * hour);
        assert_eq!(t.pass(), Some((0, hour)));
        assert_eq!((t.pass(), t.pass()), (None, None));
        t.shorten();
        assert_eq!(t.pass(), None, "shorten lets nothing through before the current wait ends");
        t.reset();
        assert_eq!(t.pass(), Some((3, hour)), "three held back, and the first interval again");
    }
}
