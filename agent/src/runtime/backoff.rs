//! Jittered exponential backoff for reopening a source that failed (a notification socket): the
//! first retry after `base`, doubling up to `max`, each delay spread by ±20 % so that a fleet of
//! agents restarted together does not retry in lockstep. Pure: time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    next_try: Option<Instant>,
    /// xorshift state for the jitter.
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
            next_try: None,
            seed: seed | 1,
        }
    }

    /// Whether a retry may happen at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|at| now >= at)
    }

    /// Records a failed attempt at `now` and returns the delay before the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        let capped = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64: good enough to spread retries.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let spread = (self.seed % 401) as f64 / 1000.0 - 0.2; // -0.2 ..= +0.2
        let delay = capped.mul_f64(1.0 + spread);
        self.next_try = Some(now + delay);
        delay
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next_try = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let start = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        assert!(b.ready(start));
        let expected = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
        for want in expected {
            let got = b.failed(start).as_secs_f64();
            assert!(
                got >= want * 0.8 - 1e-9 && got <= want * 1.2 + 1e-9,
                "{got} vs {want}"
            );
        }
        assert!(!b.ready(start));
        assert!(b.ready(start + Duration::from_secs(73)));
        b.succeeded();
        assert!(b.ready(start));
        let first = b.failed(start).as_secs_f64();
        assert!((0.8..=1.2).contains(&first));
    }

    #[test]
    fn two_agents_with_different_seeds_spread_their_retries() {
        let now = Instant::now();
        let mut a = Backoff::new(Duration::from_secs(10), Duration::from_secs(60), 1);
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(60), 2);
        let delays: Vec<(Duration, Duration)> =
            (0..4).map(|_| (a.failed(now), b.failed(now))).collect();
        assert!(delays.iter().any(|(x, y)| x != y));
    }
}
