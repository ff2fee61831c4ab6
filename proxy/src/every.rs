//! "At most once a minute" without a timer task: maps that grow on use (closed tunnel streams,
//! login state, opened session cookies) are swept of what has expired by whichever caller finds
//! the interval over. A leaf module: it uses nothing else of the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Says yes to one caller per `SECONDS`.
#[derive(Debug, Default)]
pub(crate) struct Every<const SECONDS: u64> {
    /// Unix second of the last yes.
    last: AtomicU64,
}

impl<const SECONDS: u64> Every<SECONDS> {
    /// Whether the interval since the last yes is over at `now` (Unix seconds). Of callers
    /// that ask at once, one gets yes; a clock stepped back waits for the interval again.
    pub(crate) fn due(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        now >= last.saturating_add(SECONDS)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Makes the next [`Every::due`] say yes (tests).
    #[cfg(test)]
    pub(crate) fn expire(&self) {
        self.last.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_says_yes_once_per_interval() {
        let every = Every::<60>::default();
        assert!(every.due(1_000));
        assert!(!every.due(1_000));
        assert!(!every.due(1_059));
        assert!(every.due(1_060));
        every.expire();
        assert!(every.due(1_061));
    }
}
