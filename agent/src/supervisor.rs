//! What the service does when the pipeline fails, as pure state machines: [`Supervisor`] decides
//! whether the next pipeline carries the upload and how long to wait before building it, and says
//! which state changes to log and publish; [`Watchdog`] tells a stalled source (a network stream
//! that stopped sending, which GStreamer reports as nothing at all) from a flowing one. Time and
//! randomness are arguments; `service.rs` builds, sleeps and logs.

use std::time::{Duration, Instant};

use spotter_protocol::backoff::Backoff;
use spotter_protocol::{SourceState, UploadState};

/// A source or upload that worked at least this long before failing is failing anew: its backoff
/// starts again from the shortest wait instead of growing from the last outage.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Which side of the tee failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The source: camera, file, network stream (and anything that is not the upload).
    Source,
    /// The upload: encoder, muxer, the connection to the ingest.
    Upload,
    /// The live sound beside a camera (a capture card, a microphone): without it the show goes
    /// on silent.
    Audio,
}

/// A state change worth a log line and a field in the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Frames flow from the source; `after` is how long it had been down, if it had.
    SourceLive {
        /// The outage, when this ends one.
        after: Option<Duration>,
    },
    /// The source failed; the next pipeline is built after `retry_in`.
    SourceLost {
        /// What GStreamer (or the watchdog) said.
        reason: String,
        /// Wait before the next try.
        retry_in: Duration,
    },
    /// A pipeline carrying the upload is playing; `after` is how long the upload had been down.
    UploadLive {
        /// The outage, when this ends one.
        after: Option<Duration>,
    },
    /// The upload failed: analysis goes on in a pipeline without it, and the upload is tried
    /// again after `retry_in`.
    UploadLost {
        /// What GStreamer said.
        reason: String,
        /// Wait before the upload is tried again.
        retry_in: Duration,
    },
    /// A pipeline with the live sound has played for a while; `after` is how long it was off.
    AudioLive {
        /// The outage.
        after: Duration,
    },
    /// The live sound failed: the show goes on without it, and it is tried again after
    /// `retry_in`.
    AudioLost {
        /// What GStreamer said.
        reason: String,
        /// Wait before the sound is tried again.
        retry_in: Duration,
    },
}

/// The next pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Whether it carries the upload.
    pub with_upload: bool,
    /// Whether it carries the live sound configured beside the camera.
    pub with_audio: bool,
    /// For a pipeline without the upload or the sound that should have them: when to end it and
    /// try them again.
    pub rebuild_in: Option<Duration>,
}

/// How long a pipeline with the upload must play without an upload error before the upload
/// counts as live.
pub const UPLOAD_CONFIRM: Duration = Duration::from_secs(2);

/// The supervisor's memory between pipelines.
#[derive(Debug, Clone)]
pub struct Supervisor {
    upload_configured: bool,
    source: SourceState,
    source_since: Option<Instant>,
    upload: UploadState,
    upload_since: Option<Instant>,
    upload_retry_at: Option<Instant>,
    /// When a pipeline with the upload started playing: it is live once it has lasted
    /// [`UPLOAD_CONFIRM`] without failing.
    upload_pending: Option<Instant>,
    source_backoff: Backoff,
    upload_backoff: Backoff,
    audio_configured: bool,
    /// When the live sound failed, while it is off.
    audio_down_since: Option<Instant>,
    audio_retry_at: Option<Instant>,
    /// When a pipeline with the sound back started playing: it is back once that has lasted
    /// [`UPLOAD_CONFIRM`].
    audio_pending: Option<Instant>,
    audio_backoff: Backoff,
    /// When the sound last came back.
    audio_since: Option<Instant>,
    restarts: u64,
}

impl Supervisor {
    /// A supervisor for a configuration with (`upload_configured`) or without an upload.
    pub fn new(upload_configured: bool) -> Self {
        Supervisor {
            upload_configured,
            source: SourceState::Starting,
            source_since: None,
            upload: UploadState::None,
            upload_since: None,
            upload_retry_at: None,
            upload_pending: None,
            source_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            upload_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            audio_configured: false,
            audio_down_since: None,
            audio_retry_at: None,
            audio_pending: None,
            // every try rebuilds the pipeline, a glitch in the stream: try seldom
            audio_backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(120)),
            audio_since: None,
            restarts: 0,
        }
    }

    /// The source has live sound beside it (`source.audio`).
    pub fn with_live_audio(mut self) -> Self {
        self.audio_configured = true;
        self
    }

    /// What to build now.
    pub fn plan(&self, now: Instant) -> Plan {
        // a part that failed waits until its retry time; till then, the pipeline runs without it
        let waiting = |configured: bool, retry_at: Option<Instant>| match retry_at {
            _ if !configured => (false, None),
            Some(at) if at > now => (false, Some(at - now)),
            _ => (true, None),
        };
        let (with_upload, upload_in) = waiting(self.upload_configured, self.upload_retry_at);
        let (with_audio, audio_in) = waiting(self.audio_configured, self.audio_retry_at);
        // sound goes out with the upload only: without it, there is nothing to bring back
        let audio_in = audio_in.filter(|_| with_upload);
        Plan {
            with_upload,
            with_audio: with_audio && with_upload,
            rebuild_in: match (upload_in, audio_in) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// A pipeline started playing. With the upload, that is not yet proof that the ingest took
    /// the connection (RTMP and SRT sinks connect after the pipeline plays and fail a moment
    /// later): the upload is reported live by [`Supervisor::confirm_upload`] once it has lasted.
    pub fn started(&mut self, with_upload: bool, now: Instant) -> Option<Change> {
        if with_upload && self.upload != UploadState::Live {
            self.upload_pending = Some(now);
        }
        None
    }

    /// A pipeline carrying the live sound started playing: if the sound had been off, it counts
    /// as back once it has lasted ([`Supervisor::confirm_audio`]).
    pub fn started_audio(&mut self, now: Instant) {
        if self.audio_down_since.is_some() {
            self.audio_pending = Some(now);
        }
    }

    /// Called as time passes while a pipeline runs: sound that has played for
    /// [`UPLOAD_CONFIRM`] since it was off is back.
    pub fn confirm_audio(&mut self, now: Instant) -> Option<Change> {
        let since = self.audio_pending?;
        if now.saturating_duration_since(since) < UPLOAD_CONFIRM {
            return None;
        }
        self.audio_pending = None;
        self.audio_retry_at = None;
        self.audio_since = Some(since);
        let down = self.audio_down_since.take()?;
        Some(Change::AudioLive {
            after: since.saturating_duration_since(down),
        })
    }

    /// Called as time passes while the pipeline runs: an upload that has played for
    /// [`UPLOAD_CONFIRM`] without failing is live.
    pub fn confirm_upload(&mut self, now: Instant) -> Option<Change> {
        let since = self.upload_pending?;
        if now.saturating_duration_since(since) < UPLOAD_CONFIRM {
            return None;
        }
        self.upload_pending = None;
        let after = (self.upload == UploadState::Down)
            .then(|| {
                self.upload_since
                    .map(|t| since.saturating_duration_since(t))
            })
            .flatten();
        self.upload = UploadState::Live;
        self.upload_since = Some(since);
        self.upload_retry_at = None;
        Some(Change::UploadLive { after })
    }

    /// The watchdog saw frames from the source.
    pub fn flowing(&mut self, now: Instant) -> Option<Change> {
        if self.source == SourceState::Live {
            return None;
        }
        let after = (self.source == SourceState::Down)
            .then(|| self.source_since.map(|t| now.saturating_duration_since(t)))
            .flatten();
        self.source = SourceState::Live;
        self.source_since = Some(now);
        Some(Change::SourceLive { after })
    }

    /// The pipeline failed in `part`. Returns how long to wait before building the next one, and
    /// the change to report; `jitter` is uniform in `0.0..1.0`.
    pub fn failed(
        &mut self,
        part: Part,
        reason: &str,
        now: Instant,
        jitter: f64,
    ) -> (Duration, Change) {
        self.restarts += 1;
        let stable = |since: Option<Instant>| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= STABLE_AFTER)
        };
        if part == Part::Upload && self.upload_configured {
            self.upload_pending = None;
            if self.upload == UploadState::Live && stable(self.upload_since) {
                self.upload_backoff.reset();
            }
            if self.upload != UploadState::Down {
                self.upload = UploadState::Down;
                self.upload_since = Some(now);
            }
            let retry_in = self.upload_backoff.next_delay(jitter);
            self.upload_retry_at = Some(now + retry_in);
            // no wait: analysis goes on at once in a pipeline without the upload
            let change = Change::UploadLost {
                reason: reason.to_owned(),
                retry_in,
            };
            return (Duration::ZERO, change);
        }
        if part == Part::Audio && self.audio_configured {
            if self.audio_down_since.is_none() {
                if stable(self.audio_since) {
                    self.audio_backoff.reset();
                }
                self.audio_down_since = Some(now);
            }
            self.audio_pending = None;
            let retry_in = self.audio_backoff.next_delay(jitter);
            self.audio_retry_at = Some(now + retry_in);
            // no wait: the show goes on at once, silent
            return (
                Duration::ZERO,
                Change::AudioLost {
                    reason: reason.to_owned(),
                    retry_in,
                },
            );
        }
        if self.source == SourceState::Live && stable(self.source_since) {
            self.source_backoff.reset();
        }
        if self.source != SourceState::Down {
            self.source = SourceState::Down;
            self.source_since = Some(now);
        }
        let retry_in = self.source_backoff.next_delay(jitter);
        let change = Change::SourceLost {
            reason: reason.to_owned(),
            retry_in,
        };
        (retry_in, change)
    }

    /// Where the source stands.
    pub fn source(&self) -> SourceState {
        self.source
    }

    /// Whether the live sound is off after a failure, waiting to be tried again.
    pub fn audio_down(&self) -> bool {
        self.audio_down_since.is_some()
    }

    /// Where the upload stands.
    pub fn upload(&self) -> UploadState {
        if self.upload_configured {
            self.upload
        } else {
            UploadState::None
        }
    }

    /// Pipelines rebuilt after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
}

/// What the watchdog makes of the frame counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// No frame yet, still within the grace period.
    Waiting,
    /// Frames are coming.
    Flowing,
    /// No frame for too long.
    Stalled,
}

/// Watches the count of frames leaving the source. A network source that stops sending (or
/// never starts) produces no error, only silence: after `timeout` without a new frame, or twice
/// that without a first one (connecting takes a while), the source counts as lost.
#[derive(Debug, Clone)]
pub struct Watchdog {
    timeout: Duration,
    last_count: u64,
    last_change: Instant,
    seen: bool,
}

impl Watchdog {
    /// Starts watching a pipeline that started at `now` with the counter at `count`.
    pub fn new(timeout: Duration, now: Instant, count: u64) -> Self {
        Watchdog {
            timeout,
            last_count: count,
            last_change: now,
            seen: false,
        }
    }

    /// Reads the counter at `now`.
    pub fn observe(&mut self, now: Instant, count: u64) -> Flow {
        if count != self.last_count {
            self.last_count = count;
            self.last_change = now;
            self.seen = true;
            return Flow::Flowing;
        }
        let limit = if self.seen {
            self.timeout
        } else {
            self.timeout * 2
        };
        if now.saturating_duration_since(self.last_change) >= limit {
            Flow::Stalled
        } else if self.seen {
            Flow::Flowing
        } else {
            Flow::Waiting
        }
    }

    /// How long the source has been silent for the watchdog to give up: for the log.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn without_an_upload_only_the_source_matters() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(false);
        assert!(!s.plan(t0).with_upload);
        assert_eq!(s.started(false, t0), None);
        assert_eq!(s.upload(), UploadState::None);
        assert_eq!(s.source(), SourceState::Starting);
        assert_eq!(
            s.flowing(t0 + secs(1)),
            Some(Change::SourceLive { after: None })
        );
        assert_eq!(s.flowing(t0 + secs(2)), None, "reported once");
        // an upload failure cannot happen without an upload: it is the source's
        let (wait, change) = s.failed(Part::Upload, "x", t0 + secs(3), 0.0);
        assert!(matches!(change, Change::SourceLost { .. }), "{change:?}");
        assert!(wait > Duration::ZERO);
        assert_eq!(s.source(), SourceState::Down);
    }

    #[test]
    fn a_lost_source_is_retried_with_growing_waits_and_reported_back_with_its_outage() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true);
        s.started(true, t0);
        s.confirm_upload(t0 + secs(2));
        s.flowing(t0);
        let lost = t0 + secs(5);
        let waits: Vec<Duration> = (0..4)
            .map(|i| s.failed(Part::Source, "gone", lost + secs(i), 0.0).0)
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000].map(Duration::from_millis),
            "backoff grows"
        );
        assert_eq!(s.source(), SourceState::Down);
        assert_eq!(s.restarts(), 4);
        assert!(
            s.plan(lost).with_upload,
            "a lost source does not drop the upload"
        );
        assert_eq!(
            s.flowing(lost + secs(7)),
            Some(Change::SourceLive {
                after: Some(secs(7))
            }),
            "the outage runs from the first failure"
        );
        // it flowed for a while: the next failure starts the backoff over
        let (wait, _) = s.failed(Part::Source, "gone", lost + secs(60), 0.0);
        assert_eq!(wait, Duration::from_millis(250));
    }

    #[test]
    fn a_source_that_flaps_keeps_backing_off() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(false);
        let mut last = Duration::ZERO;
        for i in 0..5 {
            let at = t0 + secs(i * 2);
            s.flowing(at);
            let (wait, _) = s.failed(Part::Source, "gone", at + secs(1), 0.0);
            assert!(wait > last, "{wait:?} after {last:?}");
            last = wait;
        }
    }

    #[test]
    fn a_lost_upload_goes_on_without_it_then_tries_again() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true);
        assert_eq!(s.started(true, t0), None);
        assert_eq!(
            s.confirm_upload(t0 + secs(1)),
            None,
            "playing is not yet connected"
        );
        assert_eq!(s.upload(), UploadState::None);
        assert_eq!(
            s.confirm_upload(t0 + secs(2)),
            Some(Change::UploadLive { after: None })
        );
        assert_eq!(s.upload(), UploadState::Live);
        let down = t0 + secs(10);
        let (wait, change) = s.failed(Part::Upload, "ingest gone", down, 0.0);
        assert_eq!(wait, Duration::ZERO, "analysis resumes at once");
        assert_eq!(
            change,
            Change::UploadLost {
                reason: "ingest gone".into(),
                retry_in: Duration::from_millis(500)
            }
        );
        assert_eq!(s.upload(), UploadState::Down);
        assert_eq!(
            s.plan(down),
            Plan {
                with_upload: false,
                with_audio: false,
                rebuild_in: Some(Duration::from_millis(500))
            }
        );
        // a source failure meanwhile does not bring the upload back early
        s.failed(Part::Source, "blip", down + Duration::from_millis(100), 0.0);
        assert!(!s.plan(down + Duration::from_millis(200)).with_upload);
        let retry = down + Duration::from_millis(500);
        assert!(s.plan(retry).with_upload);
        // the ingest is still away: the next wait is longer
        let (_, change) = s.failed(Part::Upload, "refused", retry, 0.0);
        assert!(
            matches!(change, Change::UploadLost { retry_in, .. } if retry_in == secs(1)),
            "{change:?}"
        );
        // a retry that plays but fails within the grace period never showed as live
        s.started(true, down + secs(5));
        s.failed(Part::Upload, "refused", down + secs(6), 0.0);
        assert_eq!(s.confirm_upload(down + secs(8)), None);
        assert_eq!(s.upload(), UploadState::Down);
        s.started(true, down + secs(20));
        assert_eq!(
            s.confirm_upload(down + secs(22)),
            Some(Change::UploadLive {
                after: Some(secs(20))
            })
        );
        assert!(s.plan(down + secs(22)).with_upload);
        assert_eq!(s.restarts(), 4);
    }

    #[test]
    fn lost_sound_goes_on_silent_then_comes_back() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true).with_live_audio();
        let full = Plan {
            with_upload: true,
            with_audio: true,
            rebuild_in: None,
        };
        assert_eq!(s.plan(t0), full);
        s.started(true, t0);
        s.started_audio(t0);
        assert_eq!(s.confirm_audio(t0 + secs(3)), None, "it was never off");
        s.confirm_upload(t0 + secs(2));

        let down = t0 + secs(60);
        let (wait, change) = s.failed(Part::Audio, "unplugged", down, 0.0);
        assert_eq!(wait, Duration::ZERO, "the show goes on at once");
        assert_eq!(
            change,
            Change::AudioLost {
                reason: "unplugged".into(),
                retry_in: Duration::from_millis(2500)
            }
        );
        assert!(s.audio_down(), "the stats say the sound is down");
        assert_eq!(s.upload(), UploadState::Live, "the upload is not touched");
        assert_eq!(s.source(), SourceState::Starting, "nor the source");
        assert_eq!(
            s.plan(down),
            Plan {
                with_upload: true,
                with_audio: false,
                rebuild_in: Some(Duration::from_millis(2500))
            }
        );
        // still unplugged at the retry: the wait grows
        let retry = down + Duration::from_millis(2500);
        assert_eq!(s.plan(retry), full);
        s.started_audio(retry);
        let (_, change) = s.failed(Part::Audio, "unplugged", retry, 0.0);
        assert!(
            matches!(change, Change::AudioLost { retry_in, .. } if retry_in == secs(5)),
            "{change:?}"
        );
        // plugged back in
        let back = retry + secs(5);
        assert!(s.plan(back).with_audio);
        s.started_audio(back);
        assert_eq!(s.confirm_audio(back + secs(1)), None, "not yet");
        assert!(s.audio_down(), "not back before it has lasted");
        assert_eq!(
            s.confirm_audio(back + secs(2)),
            Some(Change::AudioLive {
                after: secs(7) + Duration::from_millis(500)
            })
        );
        assert_eq!(s.confirm_audio(back + secs(3)), None, "said once");
        assert!(!s.audio_down());
        // a later outage starts from the shortest wait again
        let (_, change) = s.failed(Part::Audio, "unplugged", back + secs(100), 0.0);
        assert!(
            matches!(change, Change::AudioLost { retry_in, .. } if retry_in == Duration::from_millis(2500)),
            "{change:?}"
        );
        // while the upload is away there is no sound to bring back
        s.failed(Part::Upload, "ingest gone", back + secs(101), 0.0);
        let p = s.plan(back + secs(101));
        assert!(!p.with_upload && !p.with_audio);
        assert_eq!(p.rebuild_in, Some(Duration::from_millis(500)));
        // without sound configured, its failure is the source's
        let mut plain = Supervisor::new(true);
        let (_, change) = plain.failed(Part::Audio, "x", t0, 0.0);
        assert!(matches!(change, Change::SourceLost { .. }), "{change:?}");
    }

    #[test]
    fn the_watchdog_tells_silence_from_frames() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(secs(2), t0, 100);
        assert_eq!(w.observe(t0 + ms(500), 100), Flow::Waiting);
        assert_eq!(
            w.observe(t0 + ms(3900), 100),
            Flow::Waiting,
            "a first frame gets twice the time"
        );
        assert_eq!(w.observe(t0 + ms(4000), 100), Flow::Stalled);
        let mut w = Watchdog::new(secs(2), t0, 100);
        assert_eq!(w.observe(t0 + ms(100), 101), Flow::Flowing);
        assert_eq!(w.observe(t0 + ms(2000), 101), Flow::Flowing);
        assert_eq!(w.observe(t0 + ms(2100), 101), Flow::Stalled);
        assert_eq!(w.observe(t0 + ms(2200), 150), Flow::Flowing);
    }
}
