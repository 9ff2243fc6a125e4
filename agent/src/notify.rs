//! The agent's side of systemd's notify protocol (`Type=notify`): `READY=1` once the pipeline
//! plays, a `STATUS=` line an operator reads in `systemctl status`, `STOPPING=1` at shutdown, and
//! `WATCHDOG=1` pings sent only while camera frames arrive and analysis makes progress, so that
//! systemd restarts a wedged pipeline or a stuck inference (`WatchdogSec=` in the unit).
//!
//! [`Liveness`] decides when to ping and is pure; [`Notifier`] and [`drive`] are the thin I/O
//! side. Without `NOTIFY_SOCKET` (not started by systemd) everything here does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use spotter_protocol::{SourceState, UploadState};
use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxCounts;
use crate::stats::{Counters, PipelineHealth, Rates, Reading};

/// How often the `STATUS=` line is refreshed: often enough to read, rarely enough to cost nothing.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Decides when a watchdog ping is due: every `every`, and only if both the camera frame counter
/// and the analysed-frame counter moved since the last ping (or since the start).
#[derive(Debug, Clone)]
pub struct Liveness {
    every: Duration,
    next_at: Instant,
    camera: u64,
    analysed: u64,
}

impl Liveness {
    /// Starts watching at `now` from the counters' current values; the first ping can be due
    /// `every` from now.
    pub fn new(every: Duration, now: Instant, camera: u64, analysed: u64) -> Self {
        Liveness {
            every,
            next_at: now + every,
            camera,
            analysed,
        }
    }

    /// Whether to ping now. A ping is due once `every` has passed since the last one, and sent
    /// only when frames arrived and were analysed since then; without progress the ping is held
    /// back (and stays due) until both counters move again.
    pub fn observe(&mut self, now: Instant, camera: u64, analysed: u64) -> bool {
        if now < self.next_at || camera <= self.camera || analysed <= self.analysed {
            return false;
        }
        self.next_at = now + self.every;
        self.camera = camera;
        self.analysed = analysed;
        true
    }

    /// The time between pings.
    pub fn every(&self) -> Duration {
        self.every
    }
}

/// The watchdog ping interval for a service manager timeout of `usec` microseconds: half of it,
/// as sd_watchdog_enabled(3) advises, so that one late ping does not cost a restart.
pub fn ping_interval(usec: u64) -> Duration {
    Duration::from_micros(usec / 2)
}

/// The `STATUS=` text: rates over the last interval, and where the source, upload and outbox stand.
pub fn status_line(rates: Rates, health: PipelineHealth, outbox: OutboxCounts) -> String {
    let source = match health.source {
        SourceState::Starting => "starting",
        SourceState::Live => "live",
        SourceState::Down => "down",
    };
    let upload = match health.upload {
        UploadState::None => "off",
        UploadState::Live => "live",
        UploadState::Down => "down",
    };
    format!(
        "camera {:.1} fps, analysed {:.1} fps, source {source}, upload {upload}, \
         broker: {} events waiting, {} acked, restarts {}",
        rates.camera_fps, rates.analysed_fps, outbox.depth, outbox.acked, health.restarts
    )
}

/// Sends to the service manager's notify socket; does nothing when there is none.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    ready: Arc<AtomicBool>,
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
            ready: Arc::default(),
            warned: Arc::default(),
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The ping interval, when the service manager asked for a watchdog.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
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

    /// `READY=1`, the first time only (a rebuilt pipeline is not a new start).
    pub fn ready(&self) {
        if self.enabled && !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("ready: told the service manager");
            self.send(&[NotifyState::Ready]);
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// Sends watchdog pings as [`Liveness`] decides and the `STATUS=` line every [`STATUS_EVERY`]
/// until `stop`; returns at once when no service manager listens.
pub async fn drive(
    notifier: Notifier,
    counters: Arc<Counters>,
    outbox: impl Fn() -> OutboxCounts + Send + 'static,
    stop: CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let reading = || counters.reading();
    let start = reading();
    let mut liveness = notifier
        .watchdog()
        .map(|every| Liveness::new(every, Instant::now(), start.camera_frames, start.analysed));
    // a quarter of the ping interval: a due ping goes out at most that late
    let tick_every = liveness
        .as_ref()
        .map_or(Duration::from_secs(1), |l| l.every() / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut before, mut status_at): (Reading, Instant) = (start, Instant::now());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let r = reading();
        if let Some(l) = &mut liveness {
            if l.observe(now, r.camera_frames, r.analysed) {
                notifier.ping();
            }
        }
        if now - status_at >= STATUS_EVERY {
            let rates = Rates::between(before, r, (now - status_at).as_secs_f64());
            notifier.status(&status_line(rates, counters.health(), outbox()));
            (before, status_at) = (r, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn pings_every_interval_while_both_counters_move() {
        let t0 = Instant::now();
        let mut l = Liveness::new(secs(1.0), t0, 0, 0);
        assert!(!l.observe(t0 + secs(0.5), 15, 2), "not due yet");
        assert!(l.observe(t0 + secs(1.0), 30, 5));
        assert!(
            !l.observe(t0 + secs(1.5), 45, 7),
            "due again only a second later"
        );
        assert!(l.observe(t0 + secs(2.0), 60, 10));
    }

    #[test]
    fn a_wedged_pipeline_stops_the_pings() {
        let t0 = Instant::now();
        let mut l = Liveness::new(secs(1.0), t0, 0, 0);
        assert!(l.observe(t0 + secs(1.0), 30, 5));
        for s in [2.0, 3.0, 10.0] {
            assert!(!l.observe(t0 + secs(s), 30, 5), "no frames at {s} s");
        }
    }

    #[test]
    fn a_stuck_inference_stops_the_pings_while_the_camera_runs() {
        let t0 = Instant::now();
        let mut l = Liveness::new(secs(1.0), t0, 0, 0);
        assert!(l.observe(t0 + secs(1.0), 30, 5));
        assert!(!l.observe(t0 + secs(2.0), 60, 5));
        assert!(!l.observe(t0 + secs(3.0), 90, 5));
    }

    #[test]
    fn a_camera_that_stops_while_old_frames_are_analysed_stops_the_pings() {
        let t0 = Instant::now();
        let mut l = Liveness::new(secs(1.0), t0, 0, 0);
        assert!(l.observe(t0 + secs(1.0), 30, 5));
        assert!(!l.observe(t0 + secs(2.0), 30, 6));
    }

    #[test]
    fn pings_resume_at_once_when_progress_does() {
        let t0 = Instant::now();
        let mut l = Liveness::new(secs(1.0), t0, 0, 0);
        assert!(l.observe(t0 + secs(1.0), 30, 5));
        assert!(!l.observe(t0 + secs(2.5), 30, 5));
        assert!(
            l.observe(t0 + secs(2.6), 33, 6),
            "overdue: sent at the first progress"
        );
        assert!(!l.observe(t0 + secs(3.0), 45, 8));
    }

    #[test]
    fn pings_at_half_the_managers_timeout() {
        assert_eq!(ping_interval(30_000_000), secs(15.0));
        assert_eq!(ping_interval(2_000_000), secs(1.0));
    }

    #[test]
    fn status_line_says_rates_upload_and_broker() {
        let line = status_line(
            Rates {
                camera_fps: 29.97,
                analysed_fps: 5.0,
                upload_kbps: 2500.0,
                sound_kbps: 0.0,
            },
            PipelineHealth {
                source: SourceState::Live,
                restarts: 1,
                upload: UploadState::Down,
                sound_down: false,
            },
            OutboxCounts {
                depth: 3,
                bytes: 900,
                dropped: 0,
                acked: 42,
            },
        );
        assert_eq!(
            line,
            "camera 30.0 fps, analysed 5.0 fps, source live, upload down, \
             broker: 3 events waiting, 42 acked, restarts 1"
        );
    }
}
