//! The studio video path under load: CPU cost and analysis rate while uploading 720p30 with the
//! upload's encoder (x264 here), and how long a frame takes from capture to a recognition
//! result (the moment its events go to the outbox and MQTT), as p50/p99.
//!
//! Two phases in one run, same pipeline (test pattern 1280x720 at 30 fps, encoded at 2500 kbit/s
//! CBR and written as HLS into a temporary directory, as the upload branch would send it):
//! 1. upload alone: the analysis branch is there but nobody takes its frames (the baseline);
//! 2. upload + analysis: recognition runs as fast as it can on the analysis branch.
//!
//! Reported: process CPU (cores' worth) in each phase and their ratio, analysed frames/s, frames
//! out of the source vs frames encoded (the upload must not drop any: target >= 10 analysed/s
//! with zero dropped on 2 cores), and capture-to-result latency.
//!
//! `cargo bench --profile dev -p spotter-agent --bench video` (needs `make setup`'s weights and
//! openclipart-png). `SPOTTER_VIDEO_BENCH_SECS` sets each phase's length (default 20).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use spotter_agent::config::{default_height, default_width, AnalysisConfig, Source, Upload};
use spotter_agent::encoder::EncoderChoice;
use spotter_agent::pipeline::{now_utc_ms, Mode, Pipeline};
use spotter_agent::recognizer::Recognizer;
use spotter_agent::stats::Counters;

/// This process's CPU time (user + system) so far. /proc counts in clock ticks, which Linux
/// fixes at 100 a second on every architecture the agent runs on.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // the command name may hold spaces: fields are counted after its closing parenthesis
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

struct Phase {
    cores: f64,
    source_frames: u64,
    encoded_frames: u64,
    analysed: u64,
    latencies_ms: Vec<u64>,
    secs: f64,
}

fn run_phase(
    analysis: &AnalysisConfig,
    recognizer: Option<&Recognizer>,
    secs: u64,
    hls: &Path,
) -> Phase {
    let counters = Arc::new(Counters::default());
    let upload = Upload::Hls {
        dir: hls.to_owned(),
        bitrate_kbps: 2500,
        keyframe_interval_secs: 2,
        encoder: EncoderChoice::Auto,
    };
    let p = Pipeline::build(
        &Source::Test,
        &upload,
        analysis,
        Mode::Live,
        counters.clone(),
        0,
    )
    .expect("pipeline");
    eprintln!("encoder: {:?}", p.encoder_kind());
    let encoded = Arc::new(AtomicU64::new(0));
    {
        let encoded = encoded.clone();
        p.pipeline
            .by_name("upload-parse")
            .and_then(|e| e.static_pad("src"))
            .expect("the upload's parser")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                encoded.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
    }
    p.start().expect("start");
    // let the encoder settle before measuring
    std::thread::sleep(Duration::from_secs(2));
    let (src0, enc0) = (
        counters.camera_frames.load(Ordering::Relaxed),
        encoded.load(Ordering::Relaxed),
    );
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let mut analysed = 0u64;
    let mut latencies_ms = Vec::new();
    let end = t0 + Duration::from_secs(secs);
    while Instant::now() < end {
        match recognizer {
            Some(r) => {
                if let Some(frame) = p.pull(Duration::from_millis(100)) {
                    r.recognise(&frame.data, frame.stride).expect("recognise");
                    latencies_ms.push(now_utc_ms().saturating_sub(frame.time.captured_at_ms));
                    analysed += 1;
                }
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let (src1, enc1) = (
        counters.camera_frames.load(Ordering::Relaxed),
        encoded.load(Ordering::Relaxed),
    );
    p.stop();
    Phase {
        cores: cpu / elapsed,
        source_frames: src1 - src0,
        encoded_frames: enc1 - enc0,
        analysed,
        latencies_ms,
        secs: elapsed,
    }
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it, as a
    // smoke test that should not cost CI 40 s
    gst::init().expect("gstreamer");
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("SPOTTER_VIDEO_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 3 } else { 20 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/weights/efficientnet-lite0.safetensors");
    assert!(model.is_file(), "{}: run `make setup`", model.display());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        "/usr/share/openclipart/png/food/beverages/mug.png",
        dir.path().join("mug.png"),
    )
    .expect("openclipart-png is installed");
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[[product]]\nsku = \"MUG-001\"\nname = \"Mug\"\nprice = \"1.00\"\ncurrency = \"USD\"\nurl = \"https://shop.example/m\"\nimages = [\"mug.png\"]\n",
    )
    .expect("catalog");
    let catalog = spotter_protocol::Catalog::load(dir.path()).expect("catalog loads");
    let analysis = AnalysisConfig {
        catalog: dir.path().to_owned(),
        model: model.clone(),
        // above what 2 cores can do: the analysis rate is the model's, not the setting's
        fps: 30.0,
        width: default_width(),
        height: default_height(),
        catalog_poll: Duration::from_secs(2),
        slowdown: Duration::ZERO,
    };
    let (recognizer, _) = Recognizer::load(
        &model,
        &catalog,
        default_width() as usize,
        default_height() as usize,
    )
    .expect("recognizer");

    let base = run_phase(&analysis, None, secs, &dir.path().join("hls-a"));
    let full = run_phase(
        &analysis,
        Some(&recognizer),
        secs,
        &dir.path().join("hls-b"),
    );
    let mut lat = full.latencies_ms.clone();
    lat.sort_unstable();
    let dropped = |p: &Phase| p.source_frames as i64 - p.encoded_frames as i64;
    println!(
        "720p30 test pattern, x264 2500 kbit/s CBR upload, analysis at {}x{}, {secs} s a phase",
        default_width(),
        default_height()
    );
    println!(
        "upload alone:        CPU {:.2} cores, source {:.1} fps, encoded {} of {} frames (difference {})",
        base.cores,
        base.source_frames as f64 / base.secs,
        base.encoded_frames,
        base.source_frames,
        dropped(&base)
    );
    println!(
        "upload + analysis:   CPU {:.2} cores, source {:.1} fps, encoded {} of {} frames (difference {}), analysed {:.1} frames/s",
        full.cores,
        full.source_frames as f64 / full.secs,
        full.encoded_frames,
        full.source_frames,
        dropped(&full),
        full.analysed as f64 / full.secs
    );
    println!(
        "CPU ratio (with analysis / upload alone): {:.2}",
        full.cores / base.cores.max(1e-9)
    );
    if !lat.is_empty() {
        println!(
            "capture to recognition result: p50 {} ms, p99 {} ms, max {} ms ({} frames)",
            percentile(&lat, 50),
            percentile(&lat, 99),
            lat[lat.len() - 1],
            lat.len()
        );
    }
}
