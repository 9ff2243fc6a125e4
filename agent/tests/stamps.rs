//! Capture stamps in the uploaded video, with real GStreamer: the agent's own pipeline writes the
//! test pattern as local HLS, and every frame read back from the `.ts` segments carries exactly
//! one Spotter stamp, 33 ms after the one before (30 fps), within the run's wall-clock time, and
//! equal to the `captured_at_ms` of the analysed frame with the same running time. The AVC form
//! (FLV, as RTMP and IVS take it) goes through flvmux into a file and is read back the same way,
//! and the agent's RTMP upload through a real ingest (nginx-rtmp, which rewrites it as MPEG-TS
//! HLS and moves the stamp ahead of the parameter sets on keyframes) keeps every stamp.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use spotter_agent::config::{AnalysisConfig, RawConfig, Source, Upload};
use spotter_agent::encoder::EncoderChoice;
use spotter_agent::pipeline::{now_utc_ms, Mode, Pipeline};
use spotter_agent::sei::{find_stamps, Framing};
use spotter_agent::stamp::{framing, stamp_frames};
use spotter_agent::stats::Counters;

/// One test at a time: both encode on the 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test pattern's frame interval (30 fps), ms.
const FRAME_MS: f64 = 1000.0 / 30.0;

/// How far one stamp may be from the one before plus a frame interval, ms: the stamps come from
/// the frames' running times, so only reading the two clocks a moment apart moves them.
const STEP_TOLERANCE_MS: f64 = 3.0;

/// One access unit read back from a file: its presentation time and the stamps in it.
#[derive(Debug)]
struct ReadFrame {
    pts_ms: u64,
    stamps: Vec<u64>,
}

/// Demuxes `file` with `demux` (`tsdemux`, `flvdemux`) and returns its H.264 access units'
/// stamps, read in `framing`. No parser in between: a player reads each PES packet (MPEG-TS) or
/// tag (FLV) as one frame, whatever order its NAL units come in.
fn read_back(file: &Path, demux: &str, framing: Framing) -> Vec<ReadFrame> {
    gst::init().expect("gstreamer");
    let desc = format!(
        "filesrc location={} ! {demux} ! video/x-h264 ! appsink name=sink sync=false",
        file.display()
    );
    let p = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = p
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    p.set_state(gst::State::Playing).expect("play");
    let mut frames = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        let buffer = sample.buffer().expect("buffer");
        let map = buffer.map_readable().expect("readable");
        frames.push(ReadFrame {
            pts_ms: buffer.pts().expect("pts").mseconds(),
            stamps: find_stamps(map.as_slice(), framing).expect("well-formed access unit"),
        });
    }
    let error = p
        .bus()
        .expect("bus")
        .pop_filtered(&[gst::MessageType::Error]);
    p.set_state(gst::State::Null).expect("stop");
    assert!(
        sink.is_eos(),
        "{}: read to its end: {error:?}",
        file.display()
    );
    frames
}

/// Asserts that every frame of `parts` (files read one by one, in order) carries exactly one
/// stamp, each 33 ms after the one before, also from one part to the next (timestamps need not
/// run on across files: within a file each stamp also steps as the PTS does), all within
/// `[from_ms, to_ms]` of the wall clock.
fn assert_stamped_at_frame_rate(parts: &[Vec<ReadFrame>], from_ms: u64, to_ms: u64, what: &str) {
    let frames: Vec<&ReadFrame> = parts.iter().flatten().collect();
    assert!(frames.len() >= 30, "{what}: {} frames", frames.len());
    for f in &frames {
        assert_eq!(f.stamps.len(), 1, "{what}: frame at {} ms: {f:?}", f.pts_ms);
    }
    for pair in frames.windows(2) {
        let step = pair[1].stamps[0] as f64 - pair[0].stamps[0] as f64;
        assert!(
            (step - FRAME_MS).abs() <= STEP_TOLERANCE_MS,
            "{what}: stamps {} then {} ({step} ms apart)",
            pair[0].stamps[0],
            pair[1].stamps[0]
        );
    }
    for pair in parts.iter().flat_map(|p| p.windows(2)) {
        let step = pair[1].stamps[0] as f64 - pair[0].stamps[0] as f64;
        let pts_step = pair[1].pts_ms as f64 - pair[0].pts_ms as f64;
        assert!(
            (step - pts_step).abs() <= STEP_TOLERANCE_MS,
            "{what}: stamps {step} ms apart, PTS {pts_step} ms apart"
        );
    }
    for f in &frames {
        assert!(
            (from_ms..=to_ms).contains(&f.stamps[0]),
            "{what}: stamp {} outside the run's wall-clock time {from_ms}..={to_ms}",
            f.stamps[0]
        );
    }
}

/// The HLS segments in `dir`, in order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("hls dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .collect();
    segs.sort();
    segs
}

/// The upload parser's output caps and, for each frame, its running time (ms) and the stamps
/// it left the parser with.
#[derive(Debug, Default)]
struct Seen {
    caps: Option<String>,
    stamps: HashMap<u64, Vec<u64>>,
}

/// Records what leaves the upload's parser, after the agent's own probe has stamped it.
fn watch_upload(p: &Pipeline) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pad = p
        .pipeline
        .by_name("upload-parse")
        .and_then(|e| e.static_pad("src"))
        .expect("the upload's parser");
    let s = seen.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let caps = pad.current_caps().expect("negotiated before data flows");
        let framing = framing(&caps).expect("stampable caps");
        let segment = pad
            .sticky_event::<gst::event::Segment>(0)
            .expect("a segment before data");
        let segment = segment
            .segment()
            .downcast_ref::<gst::ClockTime>()
            .cloned()
            .expect("a time segment");
        let pts = buffer.pts().expect("pts");
        let running = segment.to_running_time(pts).expect("running time");
        let map = buffer.map_readable().expect("readable");
        let stamps = find_stamps(map.as_slice(), framing).expect("well-formed");
        let mut seen = s.lock().expect("lock");
        seen.caps.get_or_insert_with(|| caps.to_string());
        seen.stamps.insert(running.mseconds(), stamps);
        gst::PadProbeReturn::Ok
    });
    seen
}

/// What a run of the agent's pipeline left behind.
struct Run {
    /// Wall clock before it started and after it ended, UTC ms.
    from_ms: u64,
    to_ms: u64,
    /// The analysed frames' times.
    analysed: Vec<spotter_agent::tracker::FrameTime>,
    /// What left the upload's parser.
    seen: Arc<Mutex<Seen>>,
}

/// Runs the agent's pipeline with the test pattern (1280x720 at 30 fps) and `upload` for 2.5 s,
/// pulling analysis frames as the agent does, then ends the stream so that every file is
/// finished.
fn run_test_pattern(upload: &Upload, dir: &Path) -> Run {
    let analysis = AnalysisConfig {
        catalog: dir.to_owned(),
        model: dir.join("unused"),
        fps: 10.0,
        width: 320,
        height: 180,
        catalog_poll: Duration::from_secs(2),
        zoom: false,
        slowdown: Duration::ZERO,
    };
    let p = Pipeline::build(
        &Source::Test { audio: None },
        upload,
        &analysis,
        Mode::Live,
        Arc::new(Counters::default()),
        0,
    )
    .expect("pipeline");
    let seen = watch_upload(&p);

    let from_ms = now_utc_ms();
    p.start().expect("start");
    let mut analysed = Vec::new();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        if let Some(f) = p.pull(Duration::from_millis(200)) {
            analysed.push(f.time);
        }
    }
    p.pipeline.send_event(gst::event::Eos::new());
    let end = p.pipeline.bus().expect("bus").timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    p.stop();
    let to_ms = now_utc_ms();
    assert!(
        end.as_ref()
            .is_some_and(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "the pipeline did not end cleanly: {end:?}"
    );
    Run {
        from_ms,
        to_ms,
        analysed,
        seen,
    }
}

/// The frames of each of `segments`, read one by one as a player fetches them.
fn read_segments(segments: &[PathBuf]) -> Vec<Vec<ReadFrame>> {
    assert!(!segments.is_empty(), "no segments");
    segments
        .iter()
        .map(|s| read_back(s, "tsdemux", Framing::ByteStream))
        .collect()
}

#[test]
fn every_hls_frame_carries_one_capture_stamp_equal_to_its_analysed_frames_capture_time() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let hls = dir.path().join("hls");
    let upload = Upload::Hls {
        dir: hls.clone(),
        bitrate_kbps: 1500,
        keyframe_interval_secs: 1,
        encoder: EncoderChoice::Auto,
        capture_stamps: true,
    };
    let Run {
        from_ms,
        to_ms,
        analysed,
        seen,
    } = run_test_pattern(&upload, dir.path());

    let seen = seen.lock().expect("lock");
    let caps = seen.caps.as_deref().expect("frames left the parser");
    assert!(
        caps.contains("stream-format=(string)byte-stream") && caps.contains("alignment=(string)au"),
        "hlssink2's mpegtsmux takes byte-stream access units: {caps}"
    );

    // the frames as a player gets them: from the segments on disk
    let frames = read_segments(&segments(&hls));
    assert_stamped_at_frame_rate(&frames, from_ms, to_ms, "HLS");

    // an event's captured_at_ms is the stamp of the frame it was recognised in
    assert!(analysed.len() >= 10, "{} frames analysed", analysed.len());
    let mut compared = 0;
    for t in &analysed {
        let Some(stamps) = seen.stamps.get(&t.pts_ms) else {
            continue;
        };
        assert_eq!(
            stamps.len(),
            1,
            "upload frame at {} ms: {stamps:?}",
            t.pts_ms
        );
        assert!(
            stamps[0].abs_diff(t.captured_at_ms) <= 1,
            "frame at {} ms: stamped {}, analysed as captured at {}",
            t.pts_ms,
            stamps[0],
            t.captured_at_ms
        );
        compared += 1;
    }
    assert!(
        compared + 2 >= analysed.len(),
        "only {compared} of {} analysed frames met their upload frame",
        analysed.len()
    );
}

#[test]
fn an_flv_upload_carries_the_stamps_in_avc_form() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    gst::init().expect("gstreamer");
    let dir = tempfile::tempdir().expect("tempdir");
    let flv = dir.path().join("upload.flv");
    let desc = format!(
        "videotestsrc is-live=true num-buffers=45 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 ! video/x-h264,profile=main ! \
         h264parse name=parse ! flvmux streamable=true ! filesink location={}",
        flv.display()
    );
    let p = gst::parse::launch(&desc)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let parse = p.by_name("parse").expect("parser");
    stamp_frames(&parse, &p).expect("stamping probe");
    let caps = Arc::new(Mutex::new(None));
    let c = caps.clone();
    parse.static_pad("src").expect("src pad").add_probe(
        gst::PadProbeType::BUFFER,
        move |pad, _| {
            let mut c = c.lock().expect("lock");
            if c.is_none() {
                *c = pad.current_caps();
            }
            gst::PadProbeReturn::Ok
        },
    );
    let from_ms = now_utc_ms();
    support::play_to_eos(&p, 30, "the FLV upload");
    let to_ms = now_utc_ms();

    let caps = caps.lock().expect("lock").clone().expect("negotiated");
    assert!(
        matches!(framing(&caps), Ok(Framing::Avc { length_size: 4 })),
        "flvmux takes AVC access units with 4-byte lengths: {caps}"
    );
    let frames = read_back(&flv, "flvdemux", Framing::Avc { length_size: 4 });
    assert_eq!(frames.len(), 45, "every frame written");
    assert_stamped_at_frame_rate(&[frames], from_ms, to_ms, "FLV");
}

/// The segments nginx-rtmp lists in its playlist for stream `key` in `hls`, once it lists every
/// segment it has written: the last one is closed and listed when the stream ends.
fn listed_segments(hls: &Path, key: &str) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed: Vec<PathBuf> = std::fs::read_to_string(hls.join(format!("{key}.m3u8")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(".ts"))
            .map(|l| hls.join(l))
            .collect();
        let mut written = segments(hls);
        written.retain(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(key))
        });
        let mut sorted = listed.clone();
        sorted.sort();
        if !written.is_empty() && sorted == written {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "nginx-rtmp lists {listed:?} of {written:?} 10 s after the stream ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_stamps_survive_an_rtmp_ingest() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ingest = support::ingest::Ingest::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("key"), "stamps\n").expect("write key");
    let text = format!(
        "studio = \"s\"\n[analysis]\ncatalog = \"{d}\"\n[upload]\nkind = \"rtmp\"\n\
         url = \"rtmp://127.0.0.1:{port}/app/\"\nstream_key_file = \"{d}/key\"\n\
         bitrate_kbps = 1500\nkeyframe_interval_secs = 1\n",
        d = dir.path().display(),
        port = ingest.port
    );
    let raw: RawConfig = toml::from_str(&text).expect("config parses");
    let upload = raw.validate().expect("valid").upload;
    assert!(upload.capture_stamps(), "on by default");
    let run = run_test_pattern(&upload, dir.path());

    let seen = run.seen.lock().expect("lock");
    let caps = seen.caps.as_deref().expect("frames left the parser");
    assert!(
        caps.contains("stream-format=(string)avc") && caps.contains("alignment=(string)au"),
        "flvmux takes AVC access units: {caps}"
    );
    // what the ingest made of them: nginx-rtmp rewrites FLV into MPEG-TS, as IVS transcodes
    let segs = listed_segments(&ingest.hls(), "stamps");
    let frames = read_segments(&segs);
    assert_stamped_at_frame_rate(&frames, run.from_ms, run.to_ms, "RTMP ingest");
}
