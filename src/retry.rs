//! Capped exponential backoff for retrying after a service failure.

use std::time::Duration;

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
}
