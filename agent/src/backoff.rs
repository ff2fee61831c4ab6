//! Exponential backoff with full jitter: the n-th wait in a row is uniform in
//! `[0, min(cap, base × 2ⁿ)]`, so many agents that lost the same proxy do not come back in step.
//!
//! The backoff spares a proxy that answers and refuses (TLS, the upgrade, a 503). A proxy that
//! cannot be reached at all (the TCP connection refused or timed out) costs nothing to try
//! again: such failures wait only a [`probe_delay`] and leave the ceiling where it was, so an
//! agent is back within about a second of its proxy, however long the proxy was away. A
//! connection the proxy accepted and that ended later is no refusal either: it starts the
//! backoff over and waits a [`probe_delay`].

use std::time::Duration;

use rand::Rng;

/// The first ceiling.
pub const BASE: Duration = Duration::from_millis(500);
/// The largest ceiling.
pub const CAP: Duration = Duration::from_secs(30);
/// A connection drained by the proxy after living longer than this is replaced at once; one
/// drained sooner after a [`probe_delay`].
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The longest wait before trying again a proxy that could not be reached.
pub const PROBE_CEILING: Duration = Duration::from_secs(1);

/// The wait before trying again a proxy whose address did not accept a TCP connection: uniform
/// in `[PROBE_CEILING / 4, PROBE_CEILING]`, never growing (a refused SYN costs the proxy's host
/// nothing; the jitter spreads thousands of agents over the interval).
pub fn probe_delay(rng: &mut impl Rng) -> Duration {
    let ceiling = u64::try_from(PROBE_CEILING.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(ceiling / 4..=ceiling))
}

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The ceiling of the next wait.
    pub fn ceiling(&self) -> Duration {
        // Saturating: the cap applies long before the factor could overflow anything.
        let factor = 1u32 << self.failures.min(31);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, drawn from `rng`; the ceiling after it doubles.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// Starts over from the base after a connection that worked.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_ceiling_doubles_from_the_base_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn every_delay_stays_within_its_ceiling_and_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let mut backoff = Backoff::default();
            for _ in 0..40 {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay(&mut rng);
                assert!(delay <= ceiling && delay <= CAP, "{delay:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn the_delays_are_spread_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(3);
        let delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::default().next_delay(&mut rng))
            .collect();
        assert!(delays.iter().any(|d| *d < BASE / 4));
        assert!(delays.iter().any(|d| *d > BASE * 3 / 4));
    }

    #[test]
    fn probe_delays_stay_within_a_second_and_are_spread_over_it() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: Vec<Duration> = (0..200).map(|_| probe_delay(&mut rng)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= PROBE_CEILING / 4 && *d <= PROBE_CEILING)
        );
        assert!(delays.iter().any(|d| *d < PROBE_CEILING / 2));
        assert!(delays.iter().any(|d| *d > PROBE_CEILING * 3 / 4));
    }

    #[test]
    fn a_reset_starts_over_from_the_base() {
        let mut backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..100 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
        assert!(backoff.next_delay(&mut rng) <= BASE);
    }
}
