//! A token bucket, as a pure value: the caller passes the time (ms). It paces the agent's publishes
//! within a broker's rate (AWS IoT Core allows 100 publishes a second a connection) and limits
//! chat on the bridge (per user and per stream), so both share one tested implementation.

/// Up to `burst` takes at once, refilled at `per_sec` a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`; a rate or burst of 0 counts as 1.
    pub fn new(per_sec: u32, burst: u32, now_ms: u64) -> Self {
        Self::with_rate(f64::from(per_sec.max(1)), burst, now_ms)
    }

    /// Like [`TokenBucket::new`] with a fractional rate (0.2 = one every 5 s); a rate that is not
    /// a positive finite number counts as one token an hour, so a bad value refuses rather than
    /// floods.
    pub fn with_rate(per_sec: f64, burst: u32, now_ms: u64) -> Self {
        let burst = f64::from(burst.max(1));
        let per_sec = if per_sec.is_finite() && per_sec > 0.0 {
            per_sec
        } else {
            1.0 / 3600.0
        };
        TokenBucket {
            burst,
            per_sec,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is available now, without taking it (to check several buckets before
    /// taking from any).
    pub fn has_token(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= 1.0
    }

    /// Milliseconds from `now_ms` until a token is available (0 if one is).
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / self.per_sec * 1000.0).ceil() as u64
        }
    }

    /// Whether the bucket is full at `now_ms`: one that is can be forgotten and recreated later
    /// without changing any decision (how callers bound per-user state).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces_at_the_rate() {
        let mut b = TokenBucket::new(100, 100, 0);
        let burst = (0..150).filter(|_| b.try_take(0)).count();
        assert_eq!(burst, 100);
        assert_eq!(b.wait_ms(0), 10);
        assert!(!b.try_take(5));
        assert!(b.try_take(10));
        // over one second, 100 more and no more
        let paced = (11..=1010).filter(|&t| b.try_take(t)).count();
        assert!((99..=100).contains(&paced), "{paced}");
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let mut b = TokenBucket::new(10, 5, 0);
        assert_eq!((0..20).filter(|_| b.try_take(60_000)).count(), 5);
        assert!(!b.is_full(60_000));
        assert!(b.is_full(61_000));
    }

    #[test]
    fn a_zero_rate_or_burst_counts_as_one() {
        let mut b = TokenBucket::new(0, 0, 0);
        assert!(b.try_take(0));
        assert!(!b.try_take(999));
        assert!(
            b.try_take(1000),
            "an integer rate of 0 refills one a second"
        );
    }

    #[test]
    fn fractional_rates_and_peeking() {
        let mut b = TokenBucket::with_rate(0.5, 1, 0);
        assert!(b.has_token(0));
        assert!(b.has_token(0), "peeking takes nothing");
        assert!(b.try_take(0));
        assert_eq!(b.wait_ms(1000), 1000);
        assert!(!b.has_token(1999));
        assert!(b.try_take(2000));
        let mut bad = TokenBucket::with_rate(f64::NAN, 1, 0);
        assert!(bad.try_take(0));
        assert!(!bad.try_take(60_000), "a bad rate refuses");
    }

    #[test]
    fn time_going_backwards_neither_refills_nor_panics() {
        let mut b = TokenBucket::new(1, 1, 10_000);
        assert!(b.try_take(10_000));
        assert!(!b.try_take(5_000));
        assert!(!b.try_take(10_500));
        assert!(b.try_take(11_000));
    }
}
