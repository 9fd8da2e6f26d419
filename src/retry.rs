//! Capped exponential backoff for retrying after a service failure.

use std::time::Duration;

/// Delays of 0.1 s, 0.2 s, 0.4 s … capped at 30 s; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

const FIRST: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(30);

impl Backoff {
    /// A backoff at its first step.
    pub fn new() -> Backoff {
        Backoff { next: FIRST }
    }

    /// The delay before the next retry; doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(CAP);
        delay
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.next = FIRST;
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
