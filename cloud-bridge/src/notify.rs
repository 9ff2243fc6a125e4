//! The bridge's side of systemd's notify protocol (`Type=notify`): `READY=1` once it listens and
//! is subscribed to the broker (what `/readyz` says), a `STATUS=` line an operator reads in
//! `systemctl status`, `STOPPING=1` at shutdown, and `WATCHDOG=1` pings from a runtime task, so
//! that a runtime that stops scheduling tasks is restarted by systemd (`WatchdogSec=` in the unit).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) everything here does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the `STATUS=` line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The watchdog ping interval for a service manager timeout of `usec` microseconds: half of it,
/// as sd_watchdog_enabled(3) advises, so that one late ping does not cost a restart.
pub fn ping_interval(usec: u64) -> Duration {
    Duration::from_micros(usec / 2)
}

/// The `STATUS=` text.
pub fn status_line(viewers: i64, subscribed: bool, accepted: u64, events_per_s: f64) -> String {
    let broker = if subscribed {
        "subscribed"
    } else {
        "not subscribed"
    };
    format!("viewers {viewers}, broker {broker}, events {events_per_s:.1}/s ({accepted} accepted)")
}

/// Sends to the service manager's notify socket; does nothing when there is none.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    warned: Arc<AtomicBool>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| ping_interval(usec));
        Notifier {
            enabled,
            watchdog,
            warned: Arc::default(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            // once: a broken socket would otherwise log every few seconds
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        if self.enabled {
            tracing::info!("ready: told the service manager");
        }
        self.send(&[NotifyState::Ready]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Pings the watchdog from a runtime task and refreshes the `STATUS=` line until `stop`;
    /// returns at once when no service manager listens.
    pub async fn drive(self, metrics: Arc<Metrics>, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        let every = self
            .watchdog
            .unwrap_or(STATUS_EVERY)
            .clamp(Duration::from_millis(50), STATUS_EVERY);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let accepted = || metrics.events_accepted.load(Ordering::Relaxed);
        let (mut before, mut status_at) = (accepted(), None::<Instant>);
        let mut shown_subscribed = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.watchdog.is_some() {
                self.send(&[NotifyState::Watchdog]);
            }
            let now = Instant::now();
            let subscribed = metrics.mqtt_connected.load(Ordering::Relaxed) > 0;
            // at once when the broker comes or goes, else every STATUS_EVERY
            if shown_subscribed != Some(subscribed)
                || status_at.is_none_or(|at| now - at >= STATUS_EVERY)
            {
                let (n, secs) = (
                    accepted(),
                    status_at.map_or(0.0, |at| (now - at).as_secs_f64()),
                );
                let rate = if secs > 0.0 {
                    n.saturating_sub(before) as f64 / secs
                } else {
                    0.0
                };
                let line = status_line(
                    metrics.viewers_connected.load(Ordering::Relaxed),
                    subscribed,
                    n,
                    rate,
                );
                self.send(&[NotifyState::Status(&line)]);
                (before, status_at, shown_subscribed) = (n, Some(now), Some(subscribed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_says_viewers_broker_and_events() {
        assert_eq!(
            status_line(12, true, 340, 2.25),
            "viewers 12, broker subscribed, events 2.2/s (340 accepted)"
        );
        assert_eq!(
            status_line(0, false, 0, 0.0),
            "viewers 0, broker not subscribed, events 0.0/s (0 accepted)"
        );
    }

    #[test]
    fn pings_at_half_the_managers_timeout() {
        assert_eq!(ping_interval(20_000_000), Duration::from_secs(10));
    }
}
