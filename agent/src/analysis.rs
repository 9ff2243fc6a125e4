//! The analysis loop shared by the service and `analyze`: pull a frame, recognise, track.
//!
//! Runs on its own OS thread (inference is CPU-bound and blocking); events leave through a
//! callback so the service can hand them to MQTT and `analyze` can print them.

use std::time::Duration;

use spotter_protocol::{OnScreen, ProductEvent};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Frame, Pipeline};
use crate::recognizer::{Backbone, Recognizer};
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
    /// A frame was analysed (after its events, if any): for callers that time the loop.
    Analysed(FrameTime),
}

/// Analyses frames until the stream ends or `shutdown` fires. Open appearances stay open: the
/// caller ends them with [`Tracker::finish`] when the show is over (a pipeline rebuilt after a
/// failure carries on with the same tracker).
///
/// Two stages, on two threads, one frame apart: a thread pulls each frame and runs the backbone
/// over it ([`Recognizer::backbone`]) while this one identifies the products of the frame before
/// ([`Recognizer::identify`]) and tracks them. Matching has serial parts that left a core idle
/// while the upload's encoder had the other; frames still reach the tracker one at a time, in
/// order, so the events are the same as one frame at a time.
pub fn run_loop(
    pipeline: &Pipeline,
    slowdown: Duration,
    recognizer: &Recognizer,
    tracker: &mut Tracker,
    shutdown: &CancellationToken,
    mut emit: impl FnMut(Output),
) -> LoopStats {
    let mut stats = LoopStats::default();
    // no slack: the backbone stage waits with its result until this stage takes it, so at most
    // two frames are in hand and the appsink keeps dropping the stale ones
    let (ready, backbones) = std::sync::mpsc::sync_channel::<(Frame, Result<Backbone, _>)>(0);
    std::thread::scope(|scope| {
        let stage = std::thread::Builder::new()
            .name("spotter-backbone".into())
            .spawn_scoped(scope, move || {
                while !shutdown.is_cancelled() {
                    let Some(frame) = pipeline.pull(Duration::from_millis(100)) else {
                        if pipeline.is_eos() {
                            break;
                        }
                        continue;
                    };
                    let backbone = recognizer.backbone(&frame.data, frame.stride);
                    if ready.send((frame, backbone)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = stage {
            tracing::error!(error = %e, "cannot start the backbone thread: analysis stopped");
            return;
        }
        while let Ok((frame, backbone)) = backbones.recv() {
            if shutdown.is_cancelled() {
                break;
            }
            let expected = tracker.expected();
            let result = backbone
                .and_then(|b| recognizer.identify(&b, &frame.data, frame.stride, &expected));
            match result {
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
                    emit(Output::Analysed(frame.time));
                }
                Err(e) => tracing::error!(error = %e, "recognition failed on a frame"),
            }
            stats.last = Some(frame.time);
        }
        // the backbone stage stops at its next hand-over
        drop(backbones);
    });
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
