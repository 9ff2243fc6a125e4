//! The GStreamer pipeline: source, then a tee with the upload branch on one side and, on the
//! other, a leaky queue into an appsink that hands sampled, scaled RGB frames to recognition.
//!
//! ```text
//! source ─► videoconvert ─► [clocksync] ─► tee ─┬─► queue ─► upload (x264 ─► HLS, or fakesink)
//!                                               └─► queue(leaky) ─► videorate ─► videoscale ─►
//!                                                   videoconvert ─► RGB WxH@fps ─► appsink(drop)
//! ```
//! Analysis can never stall the upload: its queue drops old frames when full and its appsink keeps
//! one buffer (`drop=true max-buffers=1`). Offline analysis (`analyze`) has no upload branch and
//! no dropping: every sampled frame is analysed, as fast as the model goes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{AnalysisConfig, Source, Upload};
use crate::stats::Counters;
use crate::tracker::FrameTime;

/// Why the pipeline could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// GStreamer itself failed to start.
    #[error("cannot initialise GStreamer: {0}")]
    Init(gst::glib::Error),
    /// A plugin is missing.
    #[error("GStreamer element `{0}` is missing: install the gstreamer1.0-plugins-{1} package")]
    MissingElement(&'static str, &'static str),
    /// Elements would not link or change state.
    #[error("pipeline: {0}")]
    Setup(String),
}

/// Live (paced, dropping analysis frames under load) or offline (every sampled frame, unpaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The service.
    Live,
    /// `spotter-agent analyze`.
    Offline,
}

/// One frame for recognition.
#[derive(Debug)]
pub struct Frame {
    /// Packed RGB.
    pub data: Vec<u8>,
    /// Bytes between rows.
    pub stride: usize,
    /// When it was captured.
    pub time: FrameTime,
}

/// A built pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// The GStreamer pipeline.
    pub pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    looping: bool,
    mode: Mode,
    /// Where seeks go: the sink pad that the decoded video enters; a seek pushed upstream from it
    /// reaches only the demuxer (a seek on the pipeline fans out to every sink and fails on some)
    seek_pad: Option<gst::Pad>,
    counters: Arc<Counters>,
    /// added to every frame's running time, so that `pts_ms` keeps increasing when the service
    /// rebuilds the pipeline (whose running time starts again at zero)
    pts_offset_ms: u64,
}

/// Counts the buffers crossing `pad` into `counter`.
fn count_buffers(pad: &gst::Pad, counters: &Arc<Counters>, counter: fn(&Counters) -> &AtomicU64) {
    let counters = counters.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        counter(&counters).fetch_add(1, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
}

/// The upload encoder after `q`, as IVS wants it: H.264, constant bitrate, zero-latency tuning,
/// no B-frames, an IDR every `idr_secs` (set from the negotiated frame rate, as x264 counts in
/// frames). Returns the parser to link the muxer or sink to.
fn encoder(
    pipeline: &gst::Pipeline,
    q: &gst::Element,
    bitrate_kbps: u32,
    idr_secs: u32,
) -> Result<gst::Element, PipelineError> {
    let conv = make("videoconvert", "base")?;
    let enc = gst::ElementFactory::make("x264enc")
        .property("bitrate", bitrate_kbps)
        .property_from_str("pass", "cbr")
        .property_from_str("tune", "zerolatency")
        .property_from_str("speed-preset", "veryfast")
        .property("key-int-max", 30 * idr_secs)
        .property("bframes", 0u32)
        .build()
        .map_err(|_| PipelineError::MissingElement("x264enc", "ugly"))?;
    let enc_sink = enc
        .static_pad("sink")
        .ok_or_else(|| setup_err("x264enc has no sink pad"))?;
    let weak = enc.downgrade();
    enc_sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Caps(c) = ev.view() {
                let fps = c
                    .caps()
                    .structure(0)
                    .and_then(|st| st.get::<gst::Fraction>("framerate").ok())
                    .filter(|f| f.numer() > 0 && f.denom() > 0);
                if let (Some(fps), Some(enc)) = (fps, weak.upgrade()) {
                    let frames = (f64::from(fps.numer()) / f64::from(fps.denom())
                        * f64::from(idr_secs))
                    .round()
                    .max(1.0) as u32;
                    enc.set_property("key-int-max", frames);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    let caps = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("profile", "main")
                .build(),
        )
        .build()
        .map_err(|_| PipelineError::MissingElement("capsfilter", "core"))?;
    let parse = make("h264parse", "bad")?;
    pipeline
        .add_many([&conv, &enc, &caps, &parse])
        .map_err(setup_err)?;
    gst::Element::link_many([q, &conv, &enc, &caps, &parse]).map_err(setup_err)?;
    Ok(parse)
}

/// Counts the encoded bytes leaving `parse` (the upload's bitrate in the stats).
fn count_bytes(parse: &gst::Element, counters: &Arc<Counters>) -> Result<(), PipelineError> {
    let pad = parse
        .static_pad("src")
        .ok_or_else(|| setup_err("h264parse has no src pad"))?;
    let counters = counters.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
            counters
                .upload_bytes
                .fetch_add(b.size() as u64, Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

fn make(factory: &'static str, plugins: &'static str) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| PipelineError::MissingElement(factory, plugins))
}

fn setup_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Setup(e.to_string())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_utc_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Expresses a frame rate as a GStreamer fraction.
fn fraction(fps: f64) -> gst::Fraction {
    let den = 1000;
    gst::Fraction::new((fps * f64::from(den)).round() as i32, den)
}

impl Pipeline {
    /// Builds the pipeline for a source, an upload and the analysis settings.
    pub fn build(
        source: &Source,
        upload: &Upload,
        analysis: &AnalysisConfig,
        mode: Mode,
        counters: Arc<Counters>,
        pts_offset_ms: u64,
    ) -> Result<Self, PipelineError> {
        gst::init().map_err(PipelineError::Init)?;
        let pipeline = gst::Pipeline::with_name("spotter");
        let convert_in = make("videoconvert", "base")?;
        pipeline.add(&convert_in).map_err(setup_err)?;

        let mut looping = false;
        let mut seek_pad = None;
        match source {
            Source::Test => {
                let src = gst::ElementFactory::make("videotestsrc")
                    .property("is-live", true)
                    .property_from_str("pattern", "ball")
                    .build()
                    .map_err(|_| PipelineError::MissingElement("videotestsrc", "base"))?;
                let caps = gst::Caps::builder("video/x-raw")
                    .field("width", 1280)
                    .field("height", 720)
                    .field("framerate", gst::Fraction::new(30, 1))
                    .build();
                let filter = gst::ElementFactory::make("capsfilter")
                    .property("caps", &caps)
                    .build()
                    .map_err(|_| PipelineError::MissingElement("capsfilter", "base"))?;
                pipeline.add_many([&src, &filter]).map_err(setup_err)?;
                gst::Element::link_many([&src, &filter, &convert_in]).map_err(setup_err)?;
            }
            Source::V4l2 { device } => {
                let src = gst::ElementFactory::make("v4l2src")
                    .property("device", device.display().to_string())
                    .build()
                    .map_err(|_| PipelineError::MissingElement("v4l2src", "good"))?;
                pipeline.add(&src).map_err(setup_err)?;
                src.link(&convert_in).map_err(setup_err)?;
            }
            Source::Uri {
                uri, looping: l, ..
            } => {
                looping = *l && mode == Mode::Live;
                let src = gst::ElementFactory::make("uridecodebin")
                    .property("uri", uri)
                    .build()
                    .map_err(|_| PipelineError::MissingElement("uridecodebin", "base"))?;
                pipeline.add(&src).map_err(setup_err)?;
                let sink_pad = convert_in
                    .static_pad("sink")
                    .ok_or_else(|| setup_err("videoconvert has no sink pad"))?;
                seek_pad = Some(sink_pad.clone());
                src.connect_pad_added(move |_, pad| {
                    let is_video = pad
                        .current_caps()
                        .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                        .unwrap_or(false);
                    if is_video && !sink_pad.is_linked() {
                        if let Err(e) = pad.link(&sink_pad) {
                            tracing::error!(error = ?e, "cannot link the decoded video");
                        }
                    }
                });
            }
        }

        let pace = match source {
            Source::Uri { realtime, .. } => *realtime && mode == Mode::Live,
            _ => false,
        };
        let tee = make("tee", "core")?;
        pipeline.add(&tee).map_err(setup_err)?;
        if pace {
            let clocksync = make("clocksync", "core")?;
            pipeline.add(&clocksync).map_err(setup_err)?;
            gst::Element::link_many([&convert_in, &clocksync, &tee]).map_err(setup_err)?;
        } else {
            convert_in.link(&tee).map_err(setup_err)?;
        }

        if mode == Mode::Live {
            let q = make("queue", "core")?;
            pipeline.add(&q).map_err(setup_err)?;
            tee.link(&q).map_err(setup_err)?;
            match upload {
                Upload::None => {
                    let sink = gst::ElementFactory::make("fakesink")
                        .property("sync", false)
                        .property("async", false)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("fakesink", "core"))?;
                    pipeline.add(&sink).map_err(setup_err)?;
                    q.link(&sink).map_err(setup_err)?;
                }
                Upload::Hls {
                    dir,
                    bitrate_kbps,
                    keyframe_interval_secs,
                } => {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| setup_err(format!("cannot create {}: {e}", dir.display())))?;
                    let parse = encoder(&pipeline, &q, *bitrate_kbps, *keyframe_interval_secs)?;
                    count_bytes(&parse, &counters)?;
                    let sink = gst::ElementFactory::make("hlssink2")
                        .property("location", dir.join("segment%05d.ts").display().to_string())
                        .property(
                            "playlist-location",
                            dir.join("index.m3u8").display().to_string(),
                        )
                        .property("target-duration", *keyframe_interval_secs)
                        .property("playlist-length", 6u32)
                        .property("max-files", 12u32)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("hlssink2", "bad"))?;
                    pipeline.add(&sink).map_err(setup_err)?;
                    parse
                        .link_pads(Some("src"), &sink, Some("video"))
                        .map_err(setup_err)?;
                }
                Upload::Rtmp {
                    url,
                    key,
                    bitrate_kbps,
                    keyframe_interval_secs,
                } => {
                    let parse = encoder(&pipeline, &q, *bitrate_kbps, *keyframe_interval_secs)?;
                    count_bytes(&parse, &counters)?;
                    let mux = gst::ElementFactory::make("flvmux")
                        .property("streamable", true)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("flvmux", "good"))?;
                    let location = format!("{}/{}", url.trim_end_matches('/'), key.expose());
                    let sink = gst::ElementFactory::make("rtmp2sink")
                        .property("location", location)
                        .property("async-connect", false)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("rtmp2sink", "bad"))?;
                    pipeline.add_many([&mux, &sink]).map_err(setup_err)?;
                    parse
                        .link_pads(Some("src"), &mux, Some("video"))
                        .map_err(setup_err)?;
                    mux.link(&sink).map_err(setup_err)?;
                }
            }
        }

        let q = gst::ElementFactory::make("queue")
            .property(
                "max-size-buffers",
                if mode == Mode::Live { 2u32 } else { 4u32 },
            )
            .property("max-size-bytes", 0u32)
            .property("max-size-time", 0u64)
            .build()
            .map_err(|_| PipelineError::MissingElement("queue", "core"))?;
        if mode == Mode::Live {
            q.set_property_from_str("leaky", "downstream");
        }
        let rate = gst::ElementFactory::make("videorate")
            .property("drop-only", true)
            .build()
            .map_err(|_| PipelineError::MissingElement("videorate", "base"))?;
        let scale = gst::ElementFactory::make("videoscale")
            .property("add-borders", false)
            .build()
            .map_err(|_| PipelineError::MissingElement("videoscale", "base"))?;
        let conv = make("videoconvert", "base")?;
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", analysis.width as i32)
            .field("height", analysis.height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .field("framerate", fraction(analysis.fps))
            .build();
        let appsink = gst_app::AppSink::builder()
            .caps(&caps)
            .max_buffers(if mode == Mode::Live { 1 } else { 2 })
            .drop(mode == Mode::Live)
            .sync(false)
            .build();
        pipeline
            .add_many([&q, &rate, &scale, &conv, appsink.upcast_ref()])
            .map_err(setup_err)?;
        gst::Element::link_many([&tee, &q, &rate, &scale, &conv, appsink.upcast_ref()])
            .map_err(setup_err)?;

        let pad = |e: &gst::Element, name: &str| {
            e.static_pad(name)
                .ok_or_else(|| setup_err(format!("{} has no {name} pad", e.name())))
        };
        count_buffers(&pad(&tee, "sink")?, &counters, |c| &c.camera_frames);
        count_buffers(&pad(&q, "sink")?, &counters, |c| &c.analysis_in);
        count_buffers(&pad(&q, "src")?, &counters, |c| &c.analysis_queued_out);
        count_buffers(&pad(appsink.upcast_ref(), "sink")?, &counters, |c| {
            &c.sink_in
        });

        Ok(Pipeline {
            pipeline,
            appsink,
            looping,
            mode,
            seek_pad,
            counters,
            pts_offset_ms,
        })
    }

    /// Starts playing. A looping source is first prerolled and given a flushing segment seek, so
    /// that its end posts `SegmentDone` (answered by [`Pipeline::loop_seek`]) instead of EOS and
    /// running time, hence every event's `pts_ms`, keeps increasing across loops.
    pub fn start(&self) -> Result<(), PipelineError> {
        let refused =
            || PipelineError::Setup("the pipeline refused to start: see the error above".into());
        if self.looping {
            self.pipeline
                .set_state(gst::State::Paused)
                .map_err(|_| refused())?;
            // the decoder's pad appears and negotiates asynchronously; seek once video flows
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while self
                .seek_pad
                .as_ref()
                .is_some_and(|p| p.current_caps().is_none())
            {
                if std::time::Instant::now() > deadline {
                    return Err(PipelineError::Setup(
                        "the source delivered no video within 30 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.seek_to_start(gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT)?;
        }
        self.pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| refused())?;
        Ok(())
    }

    /// Stops and releases everything (state Null).
    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }

    /// Whether the source should restart at its end.
    pub fn looping(&self) -> bool {
        self.looping
    }

    /// Seeks back to the start without flushing, for gapless looping (on `SegmentDone`).
    pub fn loop_seek(&self) -> Result<(), PipelineError> {
        self.seek_to_start(gst::SeekFlags::SEGMENT)
    }

    fn seek_to_start(&self, flags: gst::SeekFlags) -> Result<(), PipelineError> {
        let pad = self
            .seek_pad
            .as_ref()
            .ok_or_else(|| setup_err("only a file or URI source can loop"))?;
        let seek = gst::event::Seek::new(
            1.0,
            flags,
            gst::SeekType::Set,
            gst::ClockTime::ZERO,
            gst::SeekType::None,
            gst::ClockTime::NONE,
        );
        if pad.push_event(seek) {
            Ok(())
        } else {
            Err(setup_err(
                "the source refused to seek back to its start: it cannot loop",
            ))
        }
    }

    /// Frame counters (camera, analysis branch, analysed), for the stats topic.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Whether the analysis branch has reached the end of the stream.
    pub fn is_eos(&self) -> bool {
        self.appsink.is_eos()
    }

    /// Waits up to `timeout` for the next analysis frame.
    pub fn pull(&self, timeout: Duration) -> Option<Frame> {
        let sample = self
            .appsink
            .try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))?;
        let buffer = sample.buffer()?;
        let caps = sample.caps()?;
        let info = gst_video::VideoInfo::from_caps(caps).ok()?;
        let segment = sample.segment()?.downcast_ref::<gst::format::Time>()?;
        let pts = buffer.pts()?;
        let running = segment.to_running_time(pts).unwrap_or(pts);
        let now_ms = now_utc_ms();
        // live: the frame was captured (running_now - running) ago; offline: analysed now
        let captured_at_ms = match self.pipeline.current_running_time() {
            Some(running_now) if self.mode == Mode::Live => {
                now_ms.saturating_sub(running_now.saturating_sub(running).mseconds())
            }
            _ => now_ms,
        };
        self.counters.analysed.fetch_add(1, Ordering::Relaxed);
        let map = buffer.map_readable().ok()?;
        Some(Frame {
            data: map.as_slice().to_vec(),
            stride: usize::try_from(info.stride()[0]).ok()?,
            time: FrameTime {
                pts_ms: self.pts_offset_ms + running.mseconds(),
                captured_at_ms,
            },
        })
    }
}
