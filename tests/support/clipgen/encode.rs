//! GStreamer ends of the generator: encoding rendered frames to an MP4 (H.264 the way IVS wants
//! it: IDR every 2 s, no B-frames) and decoding frames back for checks.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use image::RgbImage;

use super::error::ClipgenError;
use super::frame_code::{paint_frame_code, FRAME_CODE_MAX_FRAMES};
use super::scene::{ClipSpec, Scene};

/// Anything that renders numbered frames: the procedural set's [`Scene`] and the evaluation
/// set's photographic scenes share one encoder.
pub trait FrameSource {
    /// How many frames.
    fn frame_count(&self) -> u64;
    /// Renders frame `index` into `out` as packed RGBx (cleared first).
    fn render_frame(&self, index: u64, out: &mut Vec<u8>);
}

impl FrameSource for Scene {
    fn frame_count(&self) -> u64 {
        Scene::frame_count(self)
    }

    fn render_frame(&self, index: u64, out: &mut Vec<u8>) {
        self.render(index, out);
    }
}

/// x264's speed presets, fastest first.
pub const SPEED_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// How long to wait for the muxer to finish or a decoder to produce the next frame.
const STEP_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(60);

fn init() -> Result<(), ClipgenError> {
    gst::init().map_err(|e| ClipgenError::Gst(format!("cannot initialise: {e}")))
}

fn launch(desc: &str) -> Result<gst::Pipeline, ClipgenError> {
    let hint = "install GStreamer 1.22 with plugins base, good, bad and ugly (x264enc)";
    gst::parse::launch(desc)
        .map_err(|e| ClipgenError::Gst(format!("cannot build `{desc}`: {e} ({hint})")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| ClipgenError::Gst(format!("`{desc}` is not a pipeline")))
}

fn by_name<T: IsA<gst::Element>>(pipeline: &gst::Pipeline, name: &str) -> Result<T, ClipgenError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<T>().ok())
        .ok_or_else(|| {
            ClipgenError::Gst(format!(
                "pipeline has no element `{name}` of the expected type"
            ))
        })
}

fn error_text(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(err) => Some(format!(
            "{} reported: {} ({})",
            err.src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_else(|| "?".into()),
            err.error(),
            err.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Stops the pipeline however we leave: a pipeline left in Playing leaks its threads.
struct Running(gst::Pipeline);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

impl Running {
    fn start(pipeline: gst::Pipeline) -> Result<Self, ClipgenError> {
        let running = Running(pipeline);
        running.0.set_state(gst::State::Playing).map_err(|e| {
            ClipgenError::Gst(format!("cannot start: {e}{}", running.pending_error()))
        })?;
        Ok(running)
    }

    fn bus(&self) -> gst::Bus {
        self.0.bus().expect("a pipeline always has a bus")
    }

    /// The first error on the bus, if any, for error messages.
    fn pending_error(&self) -> String {
        self.bus()
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| error_text(&m))
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    }
}

/// Encodes every frame of `scene` to `out`: appsrc -> videoconvert -> x264enc (zerolatency,
/// IDR every 2 s, no B-frames) -> h264parse -> mp4mux -> filesink; with `spec.frame_code`, each
/// frame's index is painted into its corner first.
pub fn encode_clip(scene: &Scene, spec: &ClipSpec, out: &Path) -> Result<(), ClipgenError> {
    encode_frames(scene, spec, out, &mut |_| {})
}

/// Encodes every frame of `frames` to `out` as [`encode_clip`] does, calling `progress` with
/// the number of frames handed to the encoder so far (for progress bars).
pub fn encode_frames(
    frames: &dyn FrameSource,
    spec: &ClipSpec,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ClipgenError> {
    if !SPEED_PRESETS.contains(&spec.speed_preset.as_str()) {
        return Err(ClipgenError::Spec(format!(
            "speed preset {:?} is not one of x264's: {}",
            spec.speed_preset,
            SPEED_PRESETS.join(", ")
        )));
    }
    if spec.frame_code && frames.frame_count() > FRAME_CODE_MAX_FRAMES {
        return Err(ClipgenError::Spec(format!(
            "{} frames: the frame code counts at most {FRAME_CODE_MAX_FRAMES}",
            frames.frame_count()
        )));
    }
    init()?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(ClipgenError::io(dir))?;
    }
    let desc = format!(
        "appsrc name=src ! videoconvert ! video/x-raw,format=I420 ! \
         x264enc name=enc tune=zerolatency speed-preset={preset} key-int-max={gop} bframes=0 trellis=false \
         bitrate={kbps} ! video/x-h264,profile=high ! h264parse ! mp4mux ! filesink name=sink",
        preset = spec.speed_preset,
        gop = 2 * spec.fps,
        kbps = spec.bitrate_kbps,
    );
    let pipeline = launch(&desc)?;
    let src: gst_app::AppSrc = by_name(&pipeline, "src")?;
    let sink: gst::Element = by_name(&pipeline, "sink")?;
    sink.set_property("location", out.to_string_lossy().as_ref());

    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgbx, spec.width, spec.height)
        .fps(gst::Fraction::new(spec.fps as i32, 1))
        .build()
        .map_err(|e| ClipgenError::Gst(format!("bad video format: {e}")))?;
    let caps = info
        .to_caps()
        .map_err(|e| ClipgenError::Gst(format!("bad video caps: {e}")))?;
    src.set_caps(Some(&caps));
    src.set_format(gst::Format::Time);
    src.set_block(true);
    // A few frames of slack: enough to keep the encoder busy, little memory.
    src.set_max_bytes(u64::from(spec.width * spec.height * 4) * 8);

    let running = Running::start(pipeline)?;
    let frame_ns = 1_000_000_000u64 / u64::from(spec.fps);
    let mut frame = Vec::with_capacity((spec.width * spec.height * 4) as usize);
    for i in 0..frames.frame_count() {
        frames.render_frame(i, &mut frame);
        if spec.frame_code {
            let index = u16::try_from(i).expect("frame count checked against the code's range");
            paint_frame_code(&mut frame, spec.width, spec.height, index);
        }
        let mut buffer = gst::Buffer::from_mut_slice(frame.clone());
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(
                i * 1_000_000_000 / u64::from(spec.fps),
            ));
            b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
        }
        if let Err(flow) = src.push_buffer(buffer) {
            return Err(ClipgenError::Gst(format!(
                "encoder refused frame {i} ({flow:?}){}",
                running.pending_error()
            )));
        }
        progress(i + 1);
    }
    src.end_of_stream()
        .map_err(|flow| ClipgenError::Gst(format!("cannot end the stream ({flow:?})")))?;
    let msg = running.bus().timed_pop_filtered(
        STEP_TIMEOUT,
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match msg {
        None => Err(ClipgenError::Gst(format!(
            "muxer did not finish within {STEP_TIMEOUT}"
        ))),
        Some(m) => match error_text(&m) {
            Some(text) => Err(ClipgenError::Gst(text)),
            None => Ok(()),
        },
    }
}

/// Decodes `clip` and returns, for each requested time, the frame whose presentation time is
/// closest to it, with that time in milliseconds.
pub fn decode_frames(clip: &Path, at_ms: &[u64]) -> Result<Vec<(u64, RgbImage)>, ClipgenError> {
    init()?;
    if !clip.is_file() {
        return Err(ClipgenError::Io {
            path: clip.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such clip"),
        });
    }
    let pipeline = launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGBx ! \
         appsink name=sink sync=false",
    )?;
    let src: gst::Element = by_name(&pipeline, "src")?;
    src.set_property("location", clip.to_string_lossy().as_ref());
    let sink: gst_app::AppSink = by_name(&pipeline, "sink")?;
    let running = Running::start(pipeline)?;

    let mut best: Vec<Option<(u64, RgbImage)>> = vec![None; at_ms.len()];
    loop {
        let Some(sample) = sink.try_pull_sample(STEP_TIMEOUT) else {
            if sink.is_eos() {
                break;
            }
            return Err(ClipgenError::Gst(format!(
                "no frame from {} within {STEP_TIMEOUT}{}",
                clip.display(),
                running.pending_error()
            )));
        };
        let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
            continue;
        };
        let pts = buffer.pts().map(|t| t.mseconds()).unwrap_or_default();
        let closer = |slot: &Option<(u64, RgbImage)>, want: u64| match slot {
            None => true,
            Some((have, _)) => pts.abs_diff(want) < have.abs_diff(want),
        };
        if !best
            .iter()
            .zip(at_ms)
            .any(|(slot, &want)| closer(slot, want))
        {
            continue;
        }
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| ClipgenError::Gst(format!("decoded caps: {e}")))?;
        let vframe = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|e| ClipgenError::Gst(format!("cannot map frame: {e}")))?;
        let data = vframe
            .plane_data(0)
            .map_err(|e| ClipgenError::Gst(format!("cannot read frame: {e}")))?;
        let stride = vframe.plane_stride()[0] as usize;
        let (w, h) = (info.width(), info.height());
        let img = RgbImage::from_fn(w, h, |x, y| {
            let o = y as usize * stride + x as usize * 4;
            image::Rgb([data[o], data[o + 1], data[o + 2]])
        });
        for (slot, &want) in best.iter_mut().zip(at_ms) {
            if closer(slot, want) {
                *slot = Some((pts, img.clone()));
            }
        }
    }
    if let Some(text) = running
        .bus()
        .pop_filtered(&[gst::MessageType::Error])
        .and_then(|m| error_text(&m))
    {
        return Err(ClipgenError::Gst(text));
    }
    best.into_iter()
        .zip(at_ms)
        .map(|(slot, want)| {
            slot.ok_or_else(|| {
                ClipgenError::Gst(format!("{}: no frame near {want} ms", clip.display()))
            })
        })
        .collect()
}
