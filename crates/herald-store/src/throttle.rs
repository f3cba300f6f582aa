//! A log line that repeats at most once per interval. It exists because some conditions,
//! once they hold, hold on every request or every commit (a damaged record that every
//! listing passes over, an indexer that stays behind under sustained overload): logging each
//! would bury everything else, while staying silent would hide them. Each report says how
//! many it stood for since the last one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// When a repeated condition was last logged, and how many times it occurred since.
#[derive(Default)]
pub(crate) struct LogThrottle {
    /// When it was last logged: 1 + milliseconds on a monotonic clock (a wall clock set back
    /// would silence the log); 0 for never.
    logged_at_ms: AtomicU64,
    unlogged: AtomicU64,
}

impl LogThrottle {
    pub(crate) const EVERY_MS: u64 = 10_000;

    /// Records one occurrence. `Some(n)` when it is to be logged now, `n` being how many
    /// occurrences since the last report were not; `None` when it was logged less than
    /// [`Self::EVERY_MS`] ago (it is counted in the next report).
    pub(crate) fn due(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        self.due_at(START.get_or_init(Instant::now).elapsed().as_millis() as u64)
    }

    /// [`Self::due`] at `now` (milliseconds on a monotonic clock).
    fn due_at(&self, now: u64) -> Option<u64> {
        // Stored one past the time, so that 0 stays "never".
        let stamp = now + 1;
        let last = self.logged_at_ms.load(Relaxed);
        let due = last == 0 || stamp.saturating_sub(last) >= Self::EVERY_MS;
        if due
            && self
                .logged_at_ms
                .compare_exchange(last, stamp, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Relaxed))
        } else {
            self.unlogged.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_the_next_ones_are_counted_in_the_next_report() {
        let t = LogThrottle::default();
        assert_eq!(t.due_at(0), Some(0), "at the clock's start too");
        assert_eq!(t.due_at(5), None);
        assert_eq!(t.due_at(9_999), None);
        assert_eq!(t.due_at(10_000), Some(2));
        assert_eq!(t.due_at(10_001), None);
        assert_eq!(t.due_at(25_000), Some(1));
        assert_eq!(t.due_at(25_000), None);
    }
}
