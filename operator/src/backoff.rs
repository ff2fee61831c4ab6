//! Failures in a row, per object, and how long to wait before the next try: the first retry
//! after `first`, each further one twice as long, up to `most`. Both controllers use it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub(crate) struct Backoff {
    first: Duration,
    most: Duration,
    /// By `(namespace, name)`.
    failures: Mutex<BTreeMap<(String, String), u32>>,
}

impl Backoff {
    pub(crate) fn new(first: Duration, most: Duration) -> Self {
        Self {
            first,
            most,
            failures: Mutex::default(),
        }
    }

    /// Counts a failure of `object`; the delay before its next try.
    pub(crate) fn failed(&self, object: (String, String)) -> Duration {
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let count = failures.entry(object).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        self.first
            .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
            .min(self.most)
    }

    /// `object` succeeded: its next failure waits `first` again.
    pub(crate) fn succeeded(&self, object: &(String, String)) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_most_and_start_over_after_a_success() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
        let key = || ("ns".to_owned(), "a".to_owned());
        let delays: Vec<u64> = (0..5).map(|_| backoff.failed(key()).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
        assert_eq!(
            backoff.failed(("ns".into(), "b".into())).as_secs(),
            2,
            "per object"
        );
        backoff.succeeded(&key());
        assert_eq!(backoff.failed(key()).as_secs(), 2);
    }
}
