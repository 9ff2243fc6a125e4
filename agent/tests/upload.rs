//! The upload never pays for analysis: with recognition slowed on purpose to about one frame a
//! second, the stream that reaches a real RTMP ingest (nginx with libnginx-mod-rtmp, writing
//! HLS) keeps the source's full 30 frames a second, and the stats say analysis skipped frames.
//! The ingest killed for 20 s comes back by itself while analysis goes on; and the SRT upload
//! reaches an SRT listener the test runs, at full rate with an IDR every 2 s.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rumqttc::{Event, Packet};
use spotter_protocol::{Stats, UploadState};
use support::{free_port, Mosquitto, STUDIO};

const NGINX: &str = "/usr/sbin/nginx";

/// One test at a time: each runs an agent with inference and x264 on the 2 cores, and the frame
/// count is only meaningful when the encoder is not starved by the other test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx-rtmp on a free loopback port, writing HLS of every stream to `<dir>/hls`.
struct Ingest {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Ingest {
    fn start() -> Ingest {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::create_dir_all(dir.path().join("hls")).expect("mkdir");
        std::fs::write(
            &conf,
            format!(
                "load_module {RTMP_MODULE};\ndaemon off;\nmaster_process off;\nuser root;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                   application app {{ live on; record off; hls on; hls_path {d}/hls;\n\
                     hls_fragment 1s; hls_playlist_length 60s; hls_cleanup off; }} }} }}\n",
                d = dir.path().display()
            ),
        )
        .expect("write nginx.conf");
        let mut ingest = Ingest {
            port,
            dir,
            child: None,
        };
        ingest.start_again();
        ingest
    }

    /// Starts nginx (again) with the same configuration, port and HLS directory.
    fn start_again(&mut self) {
        let conf = self.dir.path().join("nginx.conf");
        let child = Command::new(NGINX)
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &self.dir.path().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx libnginx-mod-rtmp)");
        self.child = Some(child);
        support::wait_for_port(self.port, "nginx-rtmp", Duration::from_secs(10));
    }

    /// Kills it (the ingest goes away mid-stream).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The newest modification time of any segment.
    fn newest_segment(&self) -> Option<std::time::SystemTime> {
        std::fs::read_dir(self.hls())
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
    }

    fn hls(&self) -> PathBuf {
        self.dir.path().join("hls")
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop();
    }
}

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

/// The test agent's config with an RTMP upload to `ingest` (stream key `teststream`, from a file
/// in `dir`); `upload` is added to the `[upload]` table.
fn rtmp_config(
    dir: &Path,
    ingest: &Ingest,
    broker_port: u16,
    stats_secs: f64,
    analysis: &str,
    upload: &str,
) -> PathBuf {
    std::fs::write(dir.join("key"), "teststream\n").expect("write key");
    support::agent_config(
        dir,
        broker_port,
        stats_secs,
        analysis,
        &format!(
            "[upload]\nkind = \"rtmp\"\nurl = \"rtmp://127.0.0.1:{}/app/\"\nstream_key_file = \"{}/key\"\n{upload}\n",
            ingest.port,
            dir.display()
        ),
    )
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
    frames: std::sync::Arc<std::sync::Mutex<Vec<(gst::ClockTime, bool)>>>,
}

impl SrtIngest {
    fn start() -> SrtIngest {
        gst::init().expect("gstreamer");
        let port = support::free_udp_port();
        let pipeline = gst::parse::launch(&format!(
            "srtsrc uri=\"srt://127.0.0.1:{port}?mode=listener\" ! tsdemux ! h264parse \
             ! video/x-h264,alignment=au ! appsink name=out sync=false"
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
        pipeline.set_state(gst::State::Playing).expect("listen");
        SrtIngest {
            port,
            pipeline,
            frames,
        }
    }

    fn frames(&self) -> Vec<(gst::ClockTime, bool)> {
        self.frames.lock().expect("frames lock").clone()
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let f = ingest.frames();
        if f.len() > 1 && f[f.len() - 1].0.saturating_sub(f[0].0) > gst::ClockTime::from_seconds(8)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} frames at the SRT ingest within 60 s; agent log:\n{}",
            f.len(),
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
