//! The upload never pays for analysis: with recognition slowed on purpose to about one frame a
//! second, the stream that reaches a real RTMP ingest (nginx with libnginx-mod-rtmp, writing
//! HLS) keeps the source's full 30 frames a second, and the stats say analysis skipped frames.
//! The ingest killed for 20 s comes back by itself while analysis goes on; and the SRT upload
//! reaches an SRT listener the test runs, at full rate with an IDR every 2 s, also from a looping
//! clip.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rumqttc::{Event, Packet};
use spotter_protocol::{SoundState, Stats, UploadState};
use support::ingest::Ingest;
use support::{Mosquitto, STUDIO};

/// One test at a time: each runs an agent with inference and x264 on the 2 cores, and the frame
/// count is only meaningful when the encoder is not starved by the other test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Frames and presentation-time span of every MPEG-TS segment in `dir` (each file's timestamps
/// are read on their own, so the spans add up; the gap between segments is one frame each).
fn count_frames(dir: &Path) -> (u64, Duration) {
    gst::init().expect("gstreamer");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("hls dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .collect();
    segments.sort();
    assert!(!segments.is_empty(), "the ingest wrote no segment");
    let (mut intervals, mut span) = (0u64, gst::ClockTime::ZERO);
    for seg in segments {
        let p = gst::parse::launch(&format!(
            "filesrc location=\"{}\" ! tsdemux ! h264parse ! appsink name=out sync=false",
            seg.display()
        ))
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let sink = p
            .by_name("out")
            .expect("appsink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink");
        p.set_state(gst::State::Playing).expect("play");
        let mut pts: Vec<gst::ClockTime> = Vec::new();
        while let Ok(sample) = sink.pull_sample() {
            if let Some(t) = sample.buffer().and_then(|b| b.pts()) {
                pts.push(t);
            }
        }
        p.set_state(gst::State::Null).expect("stop");
        if let (Some(first), Some(last)) = (pts.iter().min(), pts.iter().max()) {
            intervals += pts.len() as u64 - 1;
            span += *last - *first;
        }
    }
    (intervals, Duration::from_nanos(span.nseconds()))
}

/// An `[upload]` table for RTMP to `ingest` (stream key `teststream`, written to a file in
/// `dir`), with `upload` added to it.
fn rtmp_upload(dir: &Path, ingest: &Ingest, upload: &str) -> String {
    std::fs::write(dir.join("key"), "teststream\n").expect("write key");
    format!(
        "[upload]\nkind = \"rtmp\"\nurl = \"rtmp://127.0.0.1:{}/app/\"\nstream_key_file = \"{}/key\"\n{upload}\n",
        ingest.port,
        dir.display()
    )
}

/// The test agent's config with an RTMP upload to `ingest` ([`rtmp_upload`]).
fn rtmp_config(
    dir: &Path,
    ingest: &Ingest,
    broker_port: u16,
    stats_secs: f64,
    analysis: &str,
    upload: &str,
) -> PathBuf {
    let upload = rtmp_upload(dir, ingest, upload);
    support::agent_config(dir, broker_port, stats_secs, analysis, &upload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_analysis_never_costs_the_upload_a_frame() {
    let _serial = SERIAL.lock().await;
    let ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = rtmp_config(
        dir.path(),
        &ingest,
        broker.port,
        4.0,
        "slowdown_ms = 1000",
        "bitrate_kbps = 1500",
    );
    let (_client, mut eventloop) = support::watch(
        broker.port,
        "upload-test",
        &[format!("spotter/v1/{STUDIO}/stats")],
    )
    .await;
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);

    // two stats readings: the second covers a steady interval
    let mut readings: Vec<Stats> = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        while readings.len() < 2 {
            if let Ok(Event::Incoming(Packet::Publish(p))) = eventloop.poll().await {
                readings.push(serde_json::from_slice(&p.payload).expect("stats payload"));
            }
        }
    })
    .await;
    let exit = support::terminate(&mut agent);
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(got.is_ok(), "no stats within 60 s; agent log:\n{agent_log}");
    assert!(exit.success(), "agent exit {exit:?}; log:\n{agent_log}");
    assert!(
        !agent_log.contains("teststream"),
        "the stream key appeared in the log"
    );

    let s = &readings[1];
    assert!(
        s.analysed_fps <= 1.5,
        "analysis was slowed to about 1 frame/s: {s:?}"
    );
    assert!(
        s.skipped_frames > 0,
        "the analysis branch dropped frames: {s:?}"
    );
    assert!((28.0..=32.0).contains(&s.camera_fps), "{s:?}");
    assert_eq!(s.upload, UploadState::Live, "{s:?}");
    assert!(
        s.upload_kbps > 10.0,
        "encoded video flows to the ingest: {s:?}"
    );

    let (intervals, span) = count_frames(&ingest.hls());
    let secs = span.as_secs_f64();
    let listing: Vec<String> = std::fs::read_dir(ingest.hls())
        .map(|d| {
            d.flatten()
                .map(|e| format!("{:?} {:?}", e.file_name(), e.metadata().map(|m| m.len())))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        secs >= 5.0,
        "only {secs:.1} s reached the ingest: {listing:?}; agent log:\n{agent_log}"
    );
    let fps = intervals as f64 / secs;
    assert!(
        (29.5..=30.5).contains(&fps),
        "{intervals} frame intervals over {secs:.2} s at the ingest = {fps:.2} frames/s; the source sends 30"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_comes_back_after_the_ingest_does_and_analysis_never_stops() {
    let _serial = SERIAL.lock().await;
    let mut ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = rtmp_config(
        dir.path(),
        &ingest,
        broker.port,
        1.0,
        "",
        "bitrate_kbps = 1000\nkeyframe_interval_secs = 1",
    );
    let (_client, mut eventloop) = support::watch(
        broker.port,
        "outage-test",
        &[format!("spotter/v1/{STUDIO}/stats")],
    )
    .await;
    let readings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Stats>::new()));
    let collector = {
        let readings = readings.clone();
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    if let Ok(s) = serde_json::from_slice::<Stats>(&p.payload) {
                        readings.lock().expect("lock").push(s);
                    }
                }
            }
        })
    };

    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let until = |what: &str, secs: u64, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within {secs} s; agent log:\n{}",
                agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("a first segment at the ingest", 30, &|| {
        ingest.newest_segment().is_some()
    });

    ingest.stop();
    let down_at = spotter_agent::pipeline::now_utc_ms();
    // analysis goes on while the ingest is away
    until("stats showing analysis during the outage", 30, &|| {
        readings.lock().expect("lock").iter().any(|s| {
            s.at_ms > down_at + 2500 && s.analysed_fps > 1.0 && s.upload == UploadState::Down
        })
    });
    // the 20 s away; SPOTTER_QUICK_TESTS=1 shortens it to 5 s while iterating
    let quick = std::env::var("SPOTTER_QUICK_TESTS").is_ok_and(|v| v == "1");
    let outage_ms = if quick { 5_000 } else { 20_000 };
    let away_for = (down_at + outage_ms).saturating_sub(spotter_agent::pipeline::now_utc_ms());
    std::thread::sleep(Duration::from_millis(away_for)); // the outage itself, not a wait for an event
    {
        // analysis kept going through the whole outage: every reading in it says so
        let during: Vec<Stats> = readings
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.at_ms > down_at + 2500 && s.at_ms < down_at + outage_ms)
            .cloned()
            .collect();
        assert!(
            during.len() as u64 >= outage_ms / 1000 - 4,
            "stats kept coming during the outage: {} readings",
            during.len()
        );
        assert!(
            during
                .iter()
                .all(|s| s.analysed_fps > 1.0 && s.upload == UploadState::Down),
            "analysis went on and the upload was down throughout: {during:?}"
        );
    }
    let restarted = std::time::SystemTime::now();
    ingest.start_again();
    until("new segments after the ingest came back", 60, &|| {
        ingest
            .newest_segment()
            .is_some_and(|t| t > restarted + Duration::from_secs(1))
    });
    assert!(
        agent.try_wait().expect("try_wait").is_none(),
        "the agent exited; log:\n{}",
        agent_log()
    );

    let exit = support::terminate(&mut agent);
    collector.abort();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{}", agent_log());
    assert!(
        agent_log().contains("carrying on without the upload"),
        "{}",
        agent_log()
    );
}

/// An SRT listener on a free loopback UDP port, as an SRT ingest: it demuxes what arrives and
/// records each video frame's PTS and whether it is a keyframe.
struct SrtIngest {
    port: u16,
    pipeline: gst::Pipeline,
    /// every video frame's PTS, and whether it is a keyframe
    frames: std::sync::Arc<std::sync::Mutex<Vec<(gst::ClockTime, bool)>>>,
    /// every AAC frame's PTS and duration
    sound: std::sync::Arc<std::sync::Mutex<Vec<(gst::ClockTime, gst::ClockTime)>>>,
}

impl SrtIngest {
    fn start() -> SrtIngest {
        gst::init().expect("gstreamer");
        let port = support::free_udp_port();
        // queues: tsdemux feeds both sinks from one thread; async=false: a stream without
        // sound never feeds the second, and the pipeline must play without its preroll
        let pipeline = gst::parse::launch(&format!(
            "srtsrc uri=\"srt://127.0.0.1:{port}?mode=listener\" ! tsdemux name=d ! queue ! h264parse \
             ! video/x-h264,alignment=au ! appsink name=out sync=false async=false \
             d. ! queue ! aacparse ! appsink name=aout sync=false async=false"
        ))
        .expect("listener pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let sink = pipeline
            .by_name("out")
            .expect("appsink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink");
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = frames.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(b) = sample.buffer() {
                        if let Some(pts) = b.pts() {
                            let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
                            out.lock().expect("frames lock").push((pts, key));
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let sound = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = sound.clone();
        pipeline
            .by_name("aout")
            .expect("audio appsink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink")
            .set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        if let Some((pts, dur)) = sample
                            .buffer()
                            .and_then(|b| Some((b.pts()?, b.duration()?)))
                        {
                            out.lock().expect("sound lock").push((pts, dur));
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        pipeline.set_state(gst::State::Playing).expect("listen");
        SrtIngest {
            port,
            pipeline,
            frames,
            sound,
        }
    }

    fn sound(&self) -> Vec<(gst::ClockTime, gst::ClockTime)> {
        self.sound.lock().expect("sound lock").clone()
    }

    fn frames(&self) -> Vec<(gst::ClockTime, bool)> {
        self.frames.lock().expect("frames lock").clone()
    }

    /// Waits until the frames received span more than `secs` of PTS; panics after 60 s with the
    /// agent's log at `log`.
    async fn wait_for_span(&self, secs: u64, log: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let f = self.frames();
            if f.len() > 1
                && f[f.len() - 1].0.saturating_sub(f[0].0) > gst::ClockTime::from_seconds(secs)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} frames at the SRT ingest within 60 s; agent log:\n{}",
                f.len(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SrtIngest {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_srt_upload_reaches_an_srt_ingest_at_full_rate_with_an_idr_every_2_s() {
    let _serial = SERIAL.lock().await;
    let ingest = SrtIngest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("key"), "srtsecretkey\n").expect("write key");
    let config = support::agent_config(
        dir.path(),
        broker.port,
        1.0,
        "",
        &format!(
            "[upload]\nkind = \"srt\"\nurl = \"srt://127.0.0.1:{}\"\nstream_key_file = \"{}/key\"\n\
             bitrate_kbps = 1500\nkeyframe_interval_secs = 2\nencoder = \"auto\"\n",
            ingest.port,
            dir.path().display()
        ),
    );
    let readings = support::collect_stats(broker.port, "srt-test").await;
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // 8 s of video at the ingest
    ingest.wait_for_span(8, &log).await;
    let exit = support::terminate(&mut agent);
    let log_text = agent_log();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{log_text}");
    assert!(
        !log_text.contains("srtsecretkey"),
        "the stream key appeared in the log"
    );
    assert!(
        log_text.contains("hardware_encoder") && log_text.contains("\"x264enc\""),
        "the encoder choice is logged:\n{log_text}"
    );

    let mut frames = ingest.frames();
    frames.sort();
    frames.dedup_by_key(|(t, _)| *t);
    let first = frames[0].0;
    let span = (frames[frames.len() - 1].0 - first).seconds_f64();
    let fps = (frames.len() - 1) as f64 / span;
    let gaps_ms: Vec<u64> = frames
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).mseconds())
        .filter(|g| *g > 40)
        .collect();
    assert!(
        (29.0..=31.0).contains(&fps) && gaps_ms.is_empty(),
        "{} frames over {span:.2} s at the ingest = {fps:.2} frames/s, gaps over 40 ms: \
         {gaps_ms:?}; the source sends 30",
        frames.len()
    );
    let keys: Vec<f64> = frames
        .iter()
        .filter(|(_, key)| *key)
        .map(|(t, _)| (*t - first).seconds_f64())
        .collect();
    let gaps: Vec<f64> = keys.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 3, "keyframes at {keys:?}");
    assert!(
        gaps.iter().all(|g| (1.9..=2.1).contains(g)),
        "an IDR every 2 s, as IVS asks: keyframes at {keys:?}"
    );
    let stats = readings.lock().expect("lock").clone();
    assert!(
        stats
            .iter()
            .any(|s| s.upload == UploadState::Live && s.upload_kbps > 100.0),
        "the stats show the upload live: {stats:?}"
    );
}

/// Writes a 5 s 640x360 30 fps H.264 clip to `path` (MP4), with a quiet 440 Hz stereo AAC track
/// when `audio`.
fn make_clip(path: &Path, audio: bool) {
    let mut desc = format!(
        "videotestsrc num-buffers=150 pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse \
         ! mp4mux name=mux ! filesink location=\"{}\"",
        path.display()
    );
    if audio {
        desc.push_str(
            " audiotestsrc num-buffers=150 samplesperbuffer=1600 freq=440 volume=0.1 \
             ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac ! aacparse ! mux.",
        );
    }
    support::run_to_end(&desc);
}

/// What one MPEG-TS segment holds.
#[derive(Debug, Clone, Copy, Default)]
struct Holds {
    /// H.264 frames.
    video_frames: u64,
    /// Seconds of AAC audio, or None when the segment declares no audio stream.
    audio_secs: Option<f64>,
}

/// Demuxes `seg` and says what streams it holds and how much of each.
fn segment_streams(seg: &Path) -> Holds {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    gst::init().expect("gstreamer");
    let p = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", seg.display().to_string())
        .build()
        .expect("filesrc");
    let demux = gst::ElementFactory::make("tsdemux")
        .build()
        .expect("tsdemux");
    p.add_many([&src, &demux]).expect("add");
    src.link(&demux).expect("link");
    let frames = Arc::new(AtomicU64::new(0));
    let audio_ns = Arc::new(AtomicU64::new(0));
    let has_audio = Arc::new(AtomicBool::new(false));
    {
        let (frames, audio_ns, has_audio) = (frames.clone(), audio_ns.clone(), has_audio.clone());
        demux.connect_pad_added(move |demux, pad| {
            let name = pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
                .unwrap_or_default();
            let audio = name.starts_with("audio/");
            if !audio && !name.starts_with("video/") {
                return;
            }
            has_audio.fetch_or(audio, Ordering::Relaxed);
            let bin = demux
                .parent()
                .and_downcast::<gst::Bin>()
                .expect("in the pipeline");
            let parse = gst::ElementFactory::make(if audio { "aacparse" } else { "h264parse" })
                .build()
                .expect("parser");
            let sink = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .build()
                .expect("fakesink");
            bin.add_many([&parse, &sink]).expect("add");
            parse.link(&sink).expect("link");
            let (frames, audio_ns) = (frames.clone(), audio_ns.clone());
            parse.static_pad("src").expect("src pad").add_probe(
                gst::PadProbeType::BUFFER,
                move |_, info| {
                    if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                        if audio {
                            let d = b.duration().map(|d| d.nseconds()).unwrap_or(0);
                            audio_ns.fetch_add(d, Ordering::Relaxed);
                        } else {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    gst::PadProbeReturn::Ok
                },
            );
            sink.sync_state_with_parent().expect("sink state");
            parse.sync_state_with_parent().expect("parser state");
            pad.link(&parse.static_pad("sink").expect("sink pad"))
                .expect("link the demuxed stream");
        });
    }
    support::play_to_eos(&p, 30, &seg.display().to_string());
    Holds {
        video_frames: frames.load(Ordering::Relaxed),
        audio_secs: has_audio
            .load(Ordering::Relaxed)
            .then(|| audio_ns.load(Ordering::Relaxed) as f64 / 1e9),
    }
}

/// One segment the ingest wrote: where, when, and what it holds.
type Segment = (PathBuf, std::time::SystemTime, Holds);

/// The ingest's segments, oldest first, with what each holds.
fn segments(ingest: &Ingest) -> Vec<Segment> {
    let mut segs: Vec<(PathBuf, std::time::SystemTime)> = std::fs::read_dir(ingest.hls())
        .expect("hls dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
        .collect();
    segs.sort_by_key(|(_, t)| *t);
    segs.into_iter()
        .map(|(p, t)| {
            let holds = segment_streams(&p);
            (p, t, holds)
        })
        .collect()
}

/// The test agent's config with the clip at `clip` (looped, at its own rate) as its source and
/// an RTMP upload to `ingest`.
fn clip_config(dir: &Path, clip: &Path, ingest: &Ingest, broker_port: u16) -> PathBuf {
    support::agent_config_with_source(
        dir,
        broker_port,
        1.0,
        &format!(
            "kind = \"uri\"\nuri = \"file://{}\"\nloop = true",
            clip.display()
        ),
        "",
        &rtmp_upload(dir, ingest, "bitrate_kbps = 1000"),
    )
}

/// Asserts that each of `segs` that the ingest finished (all but the last) holds as much sound
/// as video, give or take a quarter; `context` says which.
fn assert_sound_with_the_video(segs: &[&Segment], context: &str) {
    assert!(segs.len() >= 2, "segments {context}: {segs:?}");
    for (path, _, holds) in &segs[..segs.len() - 1] {
        let video_secs = holds.video_frames as f64 / 30.0;
        let audio_secs = holds.audio_secs.unwrap_or_else(|| {
            panic!(
                "{} ({context}) has no audio stream: {holds:?}",
                path.display()
            )
        });
        assert!(
            video_secs > 0.5 && (audio_secs - video_secs).abs() <= 0.25 * video_secs,
            "{} ({context}): {audio_secs:.2} s of audio for {video_secs:.2} s of video",
            path.display()
        );
    }
}

/// Waits until the ingest has written `n` segments after `since`; panics after `secs`.
fn wait_for_segments(
    ingest: &Ingest,
    since: std::time::SystemTime,
    n: usize,
    secs: u64,
    log: &Path,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let written = std::fs::read_dir(ingest.hls())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
                    .filter(|e| {
                        e.metadata()
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| t > since)
                    })
                    .count()
            })
            .unwrap_or(0);
        if written >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{written} of {n} segments at the ingest within {secs} s; agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_audio_reaches_the_ingest_with_its_audio_also_after_an_outage() {
    let _serial = SERIAL.lock().await;
    let mut ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("with-audio.mp4");
    make_clip(&clip, true);
    let config = clip_config(dir.path(), &clip, &ingest, broker.port);
    let log = dir.path().join("agent.log");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut agent = support::spawn_agent(&config, &log);
    let started = std::time::SystemTime::now();
    wait_for_segments(&ingest, started, 3, 60, &log);

    // the upload is rebuilt after the ingest comes back: its audio must come back with it
    ingest.stop();
    std::thread::sleep(Duration::from_secs(2)); // the outage itself, not a wait for an event
    let restarted = std::time::SystemTime::now();
    ingest.start_again();
    wait_for_segments(&ingest, restarted, 3, 60, &log);
    let exit = support::terminate(&mut agent);
    assert!(exit.success(), "agent exit {exit:?}; log:\n{}", agent_log());

    let segs = segments(&ingest);
    // each connection's last segment may be cut short: judge the ones nginx finished
    let after: Vec<_> = segs.iter().filter(|(_, t, _)| *t > restarted).collect();
    let before: Vec<_> = segs.iter().filter(|(_, t, _)| *t <= restarted).collect();
    assert_sound_with_the_video(&before, "before the outage");
    assert_sound_with_the_video(&after, "after the outage");
    assert!(
        agent_log().contains("the source has audio"),
        "{}",
        agent_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_audio_reaches_the_ingest_as_video_only_at_full_rate() {
    let _serial = SERIAL.lock().await;
    let ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("silent.mp4");
    make_clip(&clip, false);
    let config = clip_config(dir.path(), &clip, &ingest, broker.port);
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);
    wait_for_segments(&ingest, std::time::SystemTime::UNIX_EPOCH, 3, 60, &log);
    let exit = support::terminate(&mut agent);
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{agent_log}");

    let segs = segments(&ingest);
    // nginx-rtmp's segments always declare an audio stream in their program table: what counts
    // is that it carries nothing
    assert!(
        segs.iter()
            .all(|(_, _, h)| h.audio_secs.unwrap_or(0.0) == 0.0),
        "a source without audio uploads no audio: {segs:?}"
    );
    let (intervals, span) = count_frames(&ingest.hls());
    let fps = intervals as f64 / span.as_secs_f64();
    assert!(
        span.as_secs_f64() >= 3.0 && (29.5..=30.5).contains(&fps),
        "{intervals} frame intervals over {span:?} at the ingest = {fps:.2} frames/s; the clip has 30"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_clip_reaches_an_srt_ingest_past_its_end() {
    let _serial = SERIAL.lock().await;
    let ingest = SrtIngest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // with sound: the audio crosses the loops too, and the listener takes one caller only, so
    // an upload that fails at the start and is retried fails the test
    let clip = dir.path().join("looped.mp4");
    make_clip(&clip, true);
    let config = support::agent_config_with_source(
        dir.path(),
        broker.port,
        1.0,
        &format!(
            "kind = \"uri\"\nuri = \"file://{}\"\nloop = true",
            clip.display()
        ),
        "",
        &format!(
            "[upload]\nkind = \"srt\"\nurl = \"srt://127.0.0.1:{}\"\nbitrate_kbps = 1000\n",
            ingest.port
        ),
    );
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // the clip lasts 5 s: 12 s of video at the ingest is two loops and more
    ingest.wait_for_span(12, &log).await;
    let exit = support::terminate(&mut agent);
    assert!(exit.success(), "agent exit {exit:?}; log:\n{}", agent_log());

    // in arrival order: every frame later than the one before, none replayed, none missing
    let frames = ingest.frames();
    let backwards: Vec<_> = frames
        .windows(2)
        .filter(|w| w[1].0 <= w[0].0)
        .map(|w| (w[0].0.mseconds(), w[1].0.mseconds()))
        .collect();
    assert!(
        backwards.is_empty(),
        "frames that do not move forward at the ingest (ms): {backwards:?}"
    );
    let span = (frames[frames.len() - 1].0 - frames[0].0).seconds_f64();
    let fps = (frames.len() - 1) as f64 / span;
    assert!(
        (29.0..=31.0).contains(&fps),
        "{} frames over {span:.2} s = {fps:.2} frames/s across the loops; the clip has 30",
        frames.len()
    );
    // the sound: as long as the video, every AAC frame after the one before, no gap over 50 ms
    let sound = ingest.sound();
    let heard: f64 = sound.iter().map(|(_, d)| d.seconds_f64()).sum();
    assert!(
        heard >= span - 1.0,
        "{heard:.2} s of sound for {span:.2} s of video at the ingest; agent log:\n{}",
        agent_log()
    );
    let holes: Vec<_> = sound
        .windows(2)
        .filter(|w| {
            w[1].0 <= w[0].0 || w[1].0 > w[0].0 + w[0].1 + gst::ClockTime::from_mseconds(50)
        })
        .map(|w| (w[0].0.mseconds(), w[1].0.mseconds()))
        .collect();
    assert!(
        holes.is_empty(),
        "AAC frames that go back or leave a gap at the ingest (ms): {holes:?}"
    );
}

/// The test agent's config: the test pattern with `audio` (the `[source]` keys) beside it, and
/// an RTMP upload to `ingest`.
fn sound_config(dir: &Path, audio: &str, ingest: &Ingest, broker_port: u16) -> PathBuf {
    support::agent_config_with_source(
        dir,
        broker_port,
        1.0,
        &format!("kind = \"test\"\n{audio}"),
        "",
        &rtmp_upload(dir, ingest, "bitrate_kbps = 1000"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_with_a_sound_device_uploads_its_sound() {
    let _serial = SERIAL.lock().await;
    let ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sound_config(dir.path(), "audio = \"test\"", &ingest, broker.port);
    let readings = support::collect_stats(broker.port, "tone-test").await;
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);
    wait_for_segments(&ingest, std::time::SystemTime::UNIX_EPOCH, 3, 60, &log);
    let exit = support::terminate(&mut agent);
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{agent_log}");
    let segs = segments(&ingest);
    assert_sound_with_the_video(&segs.iter().collect::<Vec<_>>(), "the test tone");
    let stats = readings.lock().expect("lock").clone();
    assert!(
        stats
            .iter()
            .any(|s| s.sound == SoundState::Live && (100.0..=160.0).contains(&s.sound_kbps)),
        "the stats show the sound going out at about 128 kbit/s: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_device_that_fails_leaves_the_show_on_air_silent_and_is_retried() {
    let _serial = SERIAL.lock().await;
    let ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sound_config(
        dir.path(),
        "audio = \"alsa\"\naudio_device = \"hw:CARD=SpotterNoSuchCard\"",
        &ingest,
        broker.port,
    );
    let readings = support::collect_stats(broker.port, "sound-test").await;
    let log = dir.path().join("agent.log");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut agent = support::spawn_agent(&config, &log);
    wait_for_segments(&ingest, std::time::SystemTime::UNIX_EPOCH, 3, 60, &log);
    // the first retry comes 2.5-5 s after the first failure
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent_log().matches("sound lost").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sound device is tried again; log:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // each try rebuilds the pipeline: the stream goes on after it, silent
    wait_for_segments(&ingest, std::time::SystemTime::now(), 2, 30, &log);
    let exit = support::terminate(&mut agent);
    let text = agent_log();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{text}");
    assert!(
        text.contains("hw:CARD=SpotterNoSuchCard"),
        "the log names the device:\n{text}"
    );
    assert!(
        !text.contains("source down") && !text.contains("upload lost"),
        "a failed sound device is neither the camera's failure nor the upload's:\n{text}"
    );
    let stats = readings.lock().expect("lock").clone();
    assert!(
        stats.iter().any(|s| s.upload == UploadState::Live),
        "the stats show the upload live: {stats:?}"
    );
    assert!(
        stats.iter().any(|s| s.sound == SoundState::Down)
            && stats.iter().all(|s| s.sound != SoundState::Live),
        "the stats show the sound down, never live: {stats:?}"
    );
}
