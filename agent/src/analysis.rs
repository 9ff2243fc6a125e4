//! The analysis loop shared by the service and `analyze`: pull a frame, recognise, track.
//!
//! Runs on its own OS thread (inference is CPU-bound and blocking); events leave through a
//! callback so the service can hand them to MQTT and `analyze` can print them.

use std::time::Duration;

use spotter_protocol::{OnScreen, ProductEvent};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::recognizer::Recognizer;
use crate::tracker::{FrameTime, Tracker};

/// What the loop reports besides events.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    /// Frames analysed.
    pub frames: u64,
    /// Sum of inference times, ms.
    pub inference_ms_total: f64,
    /// Time of the last frame analysed, if any.
    pub last: Option<FrameTime>,
}

/// Output of one step of the loop.
#[derive(Debug)]
pub enum Output {
    /// Events caused by a frame, with the on-screen snapshot after them.
    Events(Vec<ProductEvent>, OnScreen),
}

/// Analyses frames until the stream ends or `shutdown` fires. Open appearances stay open: the
/// caller ends them with [`Tracker::finish`] when the show is over (a pipeline rebuilt after a
/// failure carries on with the same tracker).
pub fn run_loop(
    pipeline: &Pipeline,
    slowdown: Duration,
    recognizer: &Recognizer,
    tracker: &mut Tracker,
    shutdown: &CancellationToken,
    mut emit: impl FnMut(Output),
) -> LoopStats {
    let mut stats = LoopStats::default();
    while !shutdown.is_cancelled() {
        let Some(frame) = pipeline.pull(Duration::from_millis(100)) else {
            if pipeline.is_eos() {
                break;
            }
            continue;
        };
        match recognizer.recognise(&frame.data, frame.stride) {
            Ok(r) => {
                stats.frames += 1;
                stats.inference_ms_total += f64::from(r.inference_ms);
                if !slowdown.is_zero() {
                    std::thread::sleep(slowdown);
                }
                pipeline.counters().record_inference(r.inference_ms);
                tracing::debug!(
                    pts_ms = frame.time.pts_ms,
                    inference_ms = r.inference_ms,
                    forward_ms = r.forward_ms,
                    best = ?r.detections.first().map(|d| (&d.sku, d.score)),
                    "frame analysed"
                );
                let events = tracker.observe(frame.time, &r.detections);
                if !events.is_empty() {
                    emit(Output::Events(events, tracker.onscreen()));
                }
            }
            Err(e) => tracing::error!(error = %e, "recognition failed on a frame"),
        }
        stats.last = Some(frame.time);
    }
    stats
}

/// Ends every open appearance at `last` (or now) and emits the events.
pub fn finish(tracker: &mut Tracker, last: Option<FrameTime>, mut emit: impl FnMut(Output)) {
    let at = last.unwrap_or(FrameTime {
        pts_ms: 0,
        captured_at_ms: crate::pipeline::now_utc_ms(),
    });
    let events = tracker.finish(at);
    if !events.is_empty() {
        emit(Output::Events(events, tracker.onscreen()));
    }
}
