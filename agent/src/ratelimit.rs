//! A token bucket, as a pure value: the caller passes the time. Keeps the agent within a broker's
//! publish rate (AWS IoT Core allows 100 publishes a second a connection) so that a replay of a
//! full outbox after an outage is paced instead of throttled or disconnected by the broker.

/// Up to `burst` publishes at once, refilled at `per_sec` a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(per_sec: u32, burst: u32, now_ms: u64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            burst,
            per_sec: f64::from(per_sec.max(1)),
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

    /// Milliseconds from `now_ms` until a token is available (0 if one is).
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / self.per_sec * 1000.0).ceil() as u64
        }
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
    }
}
