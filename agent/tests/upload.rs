//! The upload never pays for analysis: with recognition slowed on purpose to about one frame a
//! second, the stream that reaches a real RTMP ingest (nginx with libnginx-mod-rtmp, writing
//! HLS) keeps the source's full 30 frames a second, and the stats say analysis skipped frames.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_protocol::Stats;
use support::{free_port, Mosquitto, STREAM, STUDIO};

const NGINX: &str = "/usr/sbin/nginx";
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx-rtmp on a free loopback port, writing HLS of every stream to `<dir>/hls`.
struct Ingest {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
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
        let child = Command::new(NGINX)
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &dir.path().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx libnginx-mod-rtmp)");
        support::wait_for_port(port, "nginx-rtmp", Duration::from_secs(10));
        Ingest { port, dir, child }
    }

    fn hls(&self) -> PathBuf {
        self.dir.path().join("hls")
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_analysis_never_costs_the_upload_a_frame() {
    let ingest = Ingest::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    std::fs::write(dir.path().join("key"), "teststream\n").expect("write key");
    let model = support::model_path();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "studio = \"{STUDIO}\"\nstream = \"{STREAM}\"\n[source]\nkind = \"test\"\n\
             [analysis]\ncatalog = \"{d}\"\nmodel = \"{m}\"\nfps = 5.0\nslowdown_ms = 1000\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{b}\"\nstats_interval_secs = 4.0\n\
             [outbox]\ndir = \"{d}/outbox\"\n\
             [upload]\nkind = \"rtmp\"\nurl = \"rtmp://127.0.0.1:{r}/app/\"\nstream_key_file = \"{d}/key\"\nbitrate_kbps = 1500\n",
            d = dir.path().display(),
            m = model.display(),
            b = broker.port,
            r = ingest.port,
        ),
    )
    .expect("write config");

    let mut opts = MqttOptions::new("upload-test", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("spotter/v1/{STUDIO}/stats"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");

    let log = dir.path().join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_spotter-agent"))
        .args(["--config", &config.display().to_string(), "run"])
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");

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
    let pid = agent.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let exit = agent.wait().expect("wait");
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
