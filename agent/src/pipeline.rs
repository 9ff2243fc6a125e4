//! The GStreamer pipeline: source, then a tee with the upload branch on one side and, on the
//! other, a leaky queue into an appsink that hands sampled, scaled RGB frames to recognition.
//!
//! ```text
//! source ─► videoconvert ─► [clocksync] ─► tee ─┬─► queue ─► H.264 encoder ─► h264parse ─►
//!                                               │     flvmux ─► rtmp2sink | mpegtsmux ─► srtsink
//!                                               │     | hlssink2 (or fakesink without upload)
//!                                               └─► queue(leaky) ─► videorate ─► videoscale ─►
//!                                                   videoconvert ─► RGB WxH@fps ─► appsink(drop)
//! source's audio, if any ─► queue ─► [clocksync] ─► AAC ─► aacparse ─► the same muxer
//! ```
//! Analysis can never stall the upload: its queue drops old frames when full and its appsink keeps
//! one buffer (`drop=true max-buffers=1`). Offline analysis (`analyze`) has no upload branch and
//! no dropping: every sampled frame is analysed, as fast as the model goes.
//!
//! The source is a camera (`v4l2src`, its mode checked first by [`crate::camera`]), a URI
//! (`uridecodebin`: file, RTSP, SRT...) or the test pattern. The encoder is chosen by
//! [`crate::encoder`]. Every element of the upload branch is named `upload-*`, so that an error
//! on the bus says which side failed ([`classify`]): the service drops a failed upload at once
//! and keeps analysing, but waits and reopens a failed source. A URI source's audio goes to the
//! upload when there is one ([`crate::audio`]); a camera's or the test pattern's comes from the
//! capture device configured beside it (`source.audio`), whose failure only takes the sound off
//! ([`Part::Audio`]); without either, the upload is video only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::audio::AudioInput;
use crate::camera::CameraError;
use crate::config::{AnalysisConfig, Source, Upload};
use crate::encoder::{EncoderChoice, EncoderError, EncoderKind};
use crate::stats::Counters;
use crate::supervisor::Part;
use crate::tracker::FrameTime;

/// Every element of the upload branch has a name starting with this, so that an error can be
/// told to be the upload's (analysis goes on without it) or the source's (everything waits).
const UPLOAD_PREFIX: &str = "upload-";

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
    /// The camera is missing, does not open, or cannot deliver the configured mode.
    #[error(transparent)]
    Camera(#[from] CameraError),
    /// No usable encoder (a forced one is missing).
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// Part of the pipeline failed while starting or running.
    #[error("{reason}")]
    Failed {
        /// The source's side or the upload's.
        part: Part,
        /// What GStreamer said, and from which element.
        reason: String,
    },
}

impl PipelineError {
    /// Whether rebuilding the pipeline cannot help: a plugin or encoder is missing.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PipelineError::MissingElement(..) | PipelineError::Encoder(_)
        )
    }

    /// Which side failed: the upload, or the source (anything else).
    pub fn part(&self) -> Part {
        match self {
            PipelineError::Failed { part, .. } => *part,
            _ => Part::Source,
        }
    }
}

/// Which side of the tee the element at `path` (`/GstPipeline:spotter/GstRtmp2Sink:upload-sink`)
/// is on.
pub fn classify(path: &str) -> Part {
    let mut names = path.split('/').filter_map(|seg| seg.rsplit(':').next());
    if names.clone().any(|name| name.starts_with(UPLOAD_PREFIX)) {
        Part::Upload
    } else if names.any(|name| name.starts_with(crate::audio::LIVE_PREFIX)) {
        Part::Audio
    } else {
        Part::Source
    }
}

/// An error message from the bus as a classified failure.
pub fn failure_from(err: &gst::message::Error) -> PipelineError {
    let path = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    PipelineError::Failed {
        part: classify(&path),
        reason: format!("{} (from {path})", err.error()),
    }
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
    /// The upload's encoder, if it has one.
    encoder_kind: Option<EncoderKind>,
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

/// Keeps a looping source's first seek out of the upload's video behind `pad`: drops what
/// arrives before the seek (the preroll, which the seek replays) and the seek's flush itself.
/// GStreamer 1.22's srtsink sends nothing more after a flush, and the encoder and muxer gain
/// nothing from one: they see the stream start once, at the seek's segment. Later loops do not
/// flush. Not on the audio branch: its pad may be linked after the seek has gone by, and would
/// then drop every buffer waiting for a flush that never comes.
fn hide_first_flush(pad: &gst::Pad) {
    let seeked = AtomicBool::new(false);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST | gst::PadProbeType::EVENT_FLUSH,
        move |_, info| {
            if seeked.load(Ordering::Acquire) {
                return gst::PadProbeReturn::Ok;
            }
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if ev.type_() == gst::EventType::FlushStop {
                    seeked.store(true, Ordering::Release);
                }
                // the bindings release the event; `Drop` would have GStreamer 1.22 release it
                // twice (a CRITICAL, fixed in 1.24.8)
                return gst::PadProbeReturn::Handled;
            }
            gst::PadProbeReturn::Drop
        },
    );
}

/// The upload encoder after `q` (chosen by [`crate::encoder::choose_here`]), as IVS wants it:
/// H.264, constant bitrate, low latency, no B-frames, an IDR every `idr_secs` (set again from the
/// negotiated frame rate, as encoders count in frames), each frame stamped with its capture time
/// when `capture_stamps` ([`crate::stamp::stamp_frames`]). Returns the parser to link the muxer
/// or sink to, and the encoder used.
fn encoder(
    pipeline: &gst::Pipeline,
    q: &gst::Element,
    choice: EncoderChoice,
    bitrate_kbps: u32,
    idr_secs: u32,
    capture_stamps: bool,
) -> Result<(gst::Element, EncoderKind), PipelineError> {
    let kind = crate::encoder::choose_here(choice)?;
    let conv = named("videoconvert", "upload-convert", "base")?;
    let enc = gst::ElementFactory::make(kind.factory())
        .name("upload-encoder")
        .build()
        .map_err(|_| EncoderError::ForcedMissing {
            name: kind.factory(),
            hint: kind.package_hint(),
        })?;
    crate::encoder::apply(
        &enc,
        &crate::encoder::settings(kind, bitrate_kbps, 30 * idr_secs),
    );
    let enc_sink = enc
        .static_pad("sink")
        .ok_or_else(|| setup_err("the encoder has no sink pad"))?;
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
                    let frames = crate::encoder::gop_frames(fps, idr_secs);
                    for p in crate::encoder::gop_properties(kind) {
                        crate::encoder::apply(
                            &enc,
                            &[crate::encoder::Setting {
                                name: p,
                                value: frames.to_string(),
                            }],
                        );
                    }
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    let caps = gst::ElementFactory::make("capsfilter")
        .name("upload-h264caps")
        .property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("profile", "main")
                .build(),
        )
        .build()
        .map_err(|_| PipelineError::MissingElement("capsfilter", "core"))?;
    let parse = named("h264parse", "upload-parse", "bad")?;
    pipeline
        .add_many([&conv, &enc, &caps, &parse])
        .map_err(setup_err)?;
    // Jetson's encoder reads frames from NVMM memory: its converter puts them there
    let nvconv = match kind {
        EncoderKind::NvV4l2 => {
            let c = gst::ElementFactory::make("nvvidconv")
                .name("upload-nvvidconv")
                .build()
                .map_err(|_| EncoderError::ForcedMissing {
                    name: "nvvidconv",
                    hint: "NVIDIA JetPack's gstreamer1.0 plugins, Jetson only",
                })?;
            pipeline.add(&c).map_err(setup_err)?;
            Some(c)
        }
        _ => None,
    };
    match &nvconv {
        Some(c) => {
            gst::Element::link_many([q, &conv, c]).map_err(setup_err)?;
            let nvmm = gst::Caps::builder("video/x-raw")
                .features(["memory:NVMM"])
                .build();
            c.link_filtered(&enc, &nvmm).map_err(setup_err)?;
        }
        None => gst::Element::link_many([q, &conv, &enc]).map_err(setup_err)?,
    }
    gst::Element::link_many([&enc, &caps, &parse]).map_err(setup_err)?;
    if capture_stamps {
        crate::stamp::stamp_frames(&parse, pipeline).map_err(setup_err)?;
    }
    Ok((parse, kind))
}

/// What a parser's output is, for the stats: the upload's bitrate counts both, the sound's only
/// the sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoded {
    Video,
    Sound,
}

/// Counts the encoded bytes leaving `parse` (the upload's and the sound's bitrates in the stats).
fn count_bytes(
    parse: &gst::Element,
    what: Encoded,
    counters: &Arc<Counters>,
) -> Result<(), PipelineError> {
    let pad = parse
        .static_pad("src")
        .ok_or_else(|| setup_err(format!("{} has no src pad", parse.name())))?;
    let counters = counters.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
            let size = b.size() as u64;
            counters.upload_bytes.fetch_add(size, Ordering::Relaxed);
            if what == Encoded::Sound {
                counters.sound_bytes.fetch_add(size, Ordering::Relaxed);
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Links what `uridecodebin` decodes as its pads appear: the first video stream to `video_in`,
/// the first audio stream to a new audio branch into the upload (when `audio` says where), and
/// nothing else. decodebin exposes all of a source's streams before any data flows, so the
/// muxer has its audio pad before it writes its header.
fn link_decoded(
    src: &gst::Element,
    video_in: gst::Pad,
    audio: Option<AudioInput>,
    counters: &Arc<Counters>,
) {
    let counters = counters.clone();
    let audio_linked = AtomicBool::new(false);
    src.connect_pad_added(move |_, pad| {
        let kind = pad
            .current_caps()
            .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
            .unwrap_or_default();
        if kind.starts_with("video/") && !video_in.is_linked() {
            if let Err(e) = pad.link(&video_in) {
                tracing::error!(error = ?e, "cannot link the decoded video");
            }
        } else if kind.starts_with("audio/") {
            let Some(audio) = &audio else { return };
            if audio_linked.swap(true, Ordering::Relaxed) {
                return; // one audio track is uploaded; the others are left out
            }
            match audio.attach(pad) {
                Ok(parse) => {
                    if let Err(e) = count_bytes(&parse, Encoded::Sound, &counters) {
                        tracing::warn!(error = %e, "the audio's bytes are not counted");
                    }
                    tracing::info!("the source has audio: passing it through to the upload");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot pass the source's audio through; the upload goes on without it"
                ),
            }
        }
    });
}

fn make(factory: &'static str, plugins: &'static str) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| PipelineError::MissingElement(factory, plugins))
}

/// [`make`] with a name (the upload's elements are told apart by theirs).
fn named(
    factory: &'static str,
    name: &str,
    plugins: &'static str,
) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .name(name)
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
        let mut seek_pad: Option<gst::Pad> = None;
        // uridecodebin: its pads are linked once the upload (which may take audio) is built
        let mut decoder: Option<gst::Element> = None;
        match source {
            Source::Test { .. } => {
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
            Source::V4l2 { device, mode, .. } => {
                // ask the camera first: a mode it lacks fails here with what it offers, rather
                // than as GStreamer's "not-negotiated"
                crate::camera::check(device, mode)?;
                let src = gst::ElementFactory::make("v4l2src")
                    .name("source")
                    .property("device", device.display().to_string())
                    .build()
                    .map_err(|_| PipelineError::MissingElement("v4l2src", "good"))?;
                let filter = gst::ElementFactory::make("capsfilter")
                    .property("caps", mode.caps())
                    .build()
                    .map_err(|_| PipelineError::MissingElement("capsfilter", "core"))?;
                pipeline.add_many([&src, &filter]).map_err(setup_err)?;
                src.link(&filter).map_err(setup_err)?;
                if mode.is_jpeg() {
                    let dec = make("jpegdec", "good")?;
                    pipeline.add(&dec).map_err(setup_err)?;
                    gst::Element::link_many([&filter, &dec, &convert_in]).map_err(setup_err)?;
                } else {
                    filter.link(&convert_in).map_err(setup_err)?;
                }
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
                seek_pad = Some(sink_pad);
                decoder = Some(src);
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

        let mut encoder_kind = None;
        // where the source's audio goes: a URI source may have some, a camera or the test
        // pattern a capture device beside it, and only an upload that encodes takes it
        let has_audio = decoder.is_some() || source.live_audio().is_some();
        let aac = match upload {
            Upload::Hls { .. } | Upload::Rtmp { .. } | Upload::Srt { .. }
                if has_audio && mode == Mode::Live =>
            {
                crate::audio::choose_here()
            }
            _ => None,
        };
        let mut audio_input = None;
        if mode == Mode::Live {
            let q = named("queue", "upload-queue", "core")?;
            pipeline.add(&q).map_err(setup_err)?;
            tee.link(&q).map_err(setup_err)?;
            if looping {
                hide_first_flush(
                    &q.static_pad("sink")
                        .ok_or_else(|| setup_err("queue has no sink pad"))?,
                );
            }
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
                    encoder: choice,
                    capture_stamps,
                } => {
                    std::fs::create_dir_all(dir).map_err(|e| PipelineError::Failed {
                        part: Part::Upload,
                        reason: format!("cannot create {}: {e}", dir.display()),
                    })?;
                    let (parse, kind) = encoder(
                        &pipeline,
                        &q,
                        *choice,
                        *bitrate_kbps,
                        *keyframe_interval_secs,
                        *capture_stamps,
                    )?;
                    encoder_kind = Some(kind);
                    count_bytes(&parse, Encoded::Video, &counters)?;
                    let sink = gst::ElementFactory::make("hlssink2")
                        .name("upload-sink")
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
                    audio_input = aac.map(|a| AudioInput::new(&sink, "audio", a, pace));
                }
                Upload::Rtmp {
                    url,
                    key,
                    bitrate_kbps,
                    keyframe_interval_secs,
                    encoder: choice,
                    capture_stamps,
                } => {
                    let (parse, kind) = encoder(
                        &pipeline,
                        &q,
                        *choice,
                        *bitrate_kbps,
                        *keyframe_interval_secs,
                        *capture_stamps,
                    )?;
                    encoder_kind = Some(kind);
                    count_bytes(&parse, Encoded::Video, &counters)?;
                    let mux = gst::ElementFactory::make("flvmux")
                        .name("upload-mux")
                        .property("streamable", true)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("flvmux", "good"))?;
                    let location = format!("{}/{}", url.trim_end_matches('/'), key.expose());
                    let sink = gst::ElementFactory::make("rtmp2sink")
                        .name("upload-sink")
                        .property("location", location)
                        .property("async-connect", false)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("rtmp2sink", "bad"))?;
                    pipeline.add_many([&mux, &sink]).map_err(setup_err)?;
                    parse
                        .link_pads(Some("src"), &mux, Some("video"))
                        .map_err(setup_err)?;
                    mux.link(&sink).map_err(setup_err)?;
                    audio_input = aac.map(|a| AudioInput::new(&mux, "audio", a, pace));
                }
                Upload::Srt {
                    uri,
                    key,
                    passphrase,
                    bitrate_kbps,
                    keyframe_interval_secs,
                    encoder: choice,
                    capture_stamps,
                } => {
                    let (parse, kind) = encoder(
                        &pipeline,
                        &q,
                        *choice,
                        *bitrate_kbps,
                        *keyframe_interval_secs,
                        *capture_stamps,
                    )?;
                    encoder_kind = Some(kind);
                    count_bytes(&parse, Encoded::Video, &counters)?;
                    let mux = gst::ElementFactory::make("mpegtsmux")
                        .name("upload-mux")
                        // seven 188-byte packets a buffer: 1316 bytes, one SRT payload
                        .property("alignment", 7i32)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("mpegtsmux", "bad"))?;
                    let sink = gst::ElementFactory::make("srtsink")
                        .name("upload-sink")
                        .property("uri", uri)
                        // a missing ingest is an error to retry, not a pipeline that hangs
                        .property("wait-for-connection", false)
                        .build()
                        .map_err(|_| PipelineError::MissingElement("srtsink", "bad"))?;
                    if let Some(k) = key {
                        sink.set_property("streamid", k.expose());
                    }
                    if let Some(p) = passphrase {
                        sink.set_property("passphrase", p.expose());
                    }
                    pipeline.add_many([&mux, &sink]).map_err(setup_err)?;
                    parse.link(&mux).map_err(setup_err)?;
                    mux.link(&sink).map_err(setup_err)?;
                    audio_input = aac.map(|a| AudioInput::new(&mux, "sink_%d", a, pace));
                }
            }
        }

        if let (Some(src), Some(video_in)) = (&decoder, &seek_pad) {
            link_decoded(src, video_in.clone(), audio_input, &counters);
        } else if let (Some(live), Some(input)) = (source.live_audio(), audio_input) {
            let failed = |reason: String| PipelineError::Failed {
                part: Part::Audio,
                reason: format!("{live}: {reason}"),
            };
            let src = live.element().map_err(failed)?;
            pipeline.add(&src).map_err(|e| failed(e.to_string()))?;
            let pad = src
                .static_pad("src")
                .ok_or_else(|| failed("no src pad".into()))?;
            let parse = input.attach(&pad).map_err(failed)?;
            count_bytes(&parse, Encoded::Sound, &counters)?;
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
            encoder_kind,
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
    /// running time, hence every event's `pts_ms`, keeps increasing across loops. The upload
    /// never sees that first seek (a probe drops it, `hide_first_flush`): it starts at the
    /// seek's segment.
    pub fn start(&self) -> Result<(), PipelineError> {
        // the element that refused posted why on the bus: say it, and whose it was
        let refused = || {
            self.pipeline
                .bus()
                .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
                .and_then(|m| match m.view() {
                    gst::MessageView::Error(e) => Some(failure_from(e)),
                    _ => None,
                })
                .unwrap_or_else(|| PipelineError::Setup("the pipeline refused to start".into()))
        };
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

    /// The upload's encoder, when the pipeline has an upload that encodes.
    pub fn encoder_kind(&self) -> Option<EncoderKind> {
        self.encoder_kind
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

    /// Bytes the upload's sink has handed to the network so far (RTMP: written to the
    /// connection; SRT: sent), where the sink counts them: `None` for HLS or without an upload.
    /// Buffers reaching the sink are not proof: after a flush, GStreamer 1.22's srtsink took
    /// them and sent nothing.
    pub fn upload_sent_bytes(&self) -> Option<u64> {
        let sink = self.pipeline.by_name("upload-sink")?;
        let field = match sink.factory()?.name().as_str() {
            "rtmp2sink" => "out-bytes-total",
            "srtsink" => "bytes-sent-total",
            _ => return None,
        };
        // before the connection is up the field may be missing: nothing sent yet
        let stats = sink.property::<gst::Structure>("stats");
        Some(stats.get::<u64>(field).unwrap_or(0))
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
        // live: as the upload's stamp of the same frame says; offline: analysed now
        let captured_at_ms = match self.mode {
            Mode::Live => crate::stamp::captured_at_ms(&self.pipeline, running),
            Mode::Offline => None,
        }
        .unwrap_or_else(now_utc_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart_by_the_side_of_the_tee_they_come_from() {
        assert_eq!(
            classify("/GstPipeline:spotter/GstRtmp2Sink:upload-sink"),
            Part::Upload
        );
        assert_eq!(
            classify("/GstPipeline:spotter/GstX264Enc:upload-encoder"),
            Part::Upload
        );
        assert_eq!(
            classify("/GstPipeline:spotter/GstURIDecodeBin:uridecodebin0/GstSRTSrc:source"),
            Part::Source
        );
        assert_eq!(
            classify("/GstPipeline:spotter/GstV4l2Src:source"),
            Part::Source
        );
        assert_eq!(classify(""), Part::Source);
        assert_eq!(
            classify("/GstPipeline:spotter/GstAlsaSrc:live-audio"),
            Part::Audio
        );
        // the encoded sound on its way out is the upload's
        assert_eq!(
            classify("/GstPipeline:spotter/avenc_aac:upload-audio-encoder"),
            Part::Upload
        );
        // a source element whose own name merely contains the word is not the upload's
        assert_eq!(
            classify("/GstPipeline:spotter/GstFileSrc:my-upload-file"),
            Part::Source
        );
    }
}
