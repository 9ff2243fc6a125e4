//! Jittered exponential backoff for reconnecting to the broker, the reconnect policy of both
//! MQTT clients (agent and bridge): a pure state machine; the caller supplies the randomness and
//! does the sleeping.

use std::time::Duration;

/// "Equal jitter" backoff: attempt `n` waits between half and all of `min(max, base * 2^n)`, so a
/// broker restart is not met by every replica at once and nobody retries in a tight loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never waiting more than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// How long to wait before the next attempt; `jitter` is uniform in `0.0..1.0`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        ceiling / 2 + ceiling.mul_f64(jitter / 2.0)
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(ms(500), ms(30_000));
        let lows: Vec<_> = (0..10).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(
            lows,
            [250, 500, 1000, 2000, 4000, 8000, 15_000, 15_000, 15_000, 15_000].map(ms)
        );
        let mut b = Backoff::new(ms(500), ms(30_000));
        let highs: Vec<_> = (0..8).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            highs,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000].map(ms)
        );
        assert_eq!(b.attempts(), 8);
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        let mut b = Backoff::new(ms(1000), ms(60_000));
        for (i, j) in [0.0, 0.25, 0.5, 0.75, 0.999]
            .iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let ceiling = ms(1000 * (1u64 << i.min(6))).min(ms(60_000));
            let d = b.next_delay(*j);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {i}: {d:?} vs {ceiling:?}"
            );
        }
    }

    #[test]
    fn never_zero_and_survives_bad_jitter_and_many_attempts() {
        let mut b = Backoff::new(ms(100), ms(1000));
        for _ in 0..10_000 {
            let d = b.next_delay(f64::NAN);
            assert!(d >= ms(50) && d <= ms(1000), "{d:?}");
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(-3.0), ms(50));
    }
}
