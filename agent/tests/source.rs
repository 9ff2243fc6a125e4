//! A studio's source going away does not end the show: a network source (SRT from a sender the
//! test runs on loopback) that stops sending is noticed, reopened with backoff, and the pipeline
//! comes back when the sender does; a file source that is missing is retried until it appears.
//! The process never exits, and the stats say what happened (source live / down, restarts).

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use spotter_protocol::{SourceState, Stats};
use support::Mosquitto;

/// Both tests run an agent with the model on the 2 cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A live 320x240 30 fps H.264 stream in MPEG-TS, served by an SRT listener on `port`.
fn srt_sender(port: u16) -> gst::Pipeline {
    gst::init().expect("gstreamer");
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! mpegtsmux alignment=7 \
         ! srtsink uri=\"srt://127.0.0.1:{port}?mode=listener\" wait-for-connection=false"
    ))
    .expect("sender pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    p.set_state(gst::State::Playing).expect("sender plays");
    p
}

/// Waits until `done` holds for the stats received so far; panics after `secs` with the agent's
/// log and what the stats said.
async fn until(
    what: &str,
    secs: u64,
    readings: &Arc<Mutex<Vec<Stats>>>,
    log: &Path,
    done: impl Fn(&[Stats]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if done(&readings.lock().expect("lock")) {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = readings
                .lock()
                .expect("lock")
                .iter()
                .map(|s| format!("{:?}/{:.0}fps/{}", s.source, s.camera_fps, s.restarts))
                .collect();
            panic!(
                "{what}: not within {secs} s; stats: {seen:?}; agent log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live_since(stats: &[Stats], since_ms: u64) -> bool {
    stats
        .iter()
        .any(|s| s.at_ms > since_ms && s.source == SourceState::Live && s.camera_fps > 20.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_source_that_stops_is_reopened_and_the_pipeline_comes_back() {
    let _serial = SERIAL.lock().await;
    let broker = Mosquitto::start();
    let port = support::free_udp_port();
    let mut sender = Some(srt_sender(port));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::agent_config_with_source(
        dir.path(),
        broker.port,
        1.0,
        &format!(
            "kind = \"uri\"\nuri = \"srt://127.0.0.1:{port}\"\nrealtime = false\nstall_timeout_secs = 1.5"
        ),
        "",
        "",
    );
    let readings = support::collect_stats(broker.port, "source-test").await;
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);

    until("the source live", 60, &readings, &log, |s| live_since(s, 0)).await;

    // the sender goes away: no error reaches the agent, only silence
    if let Some(p) = sender.take() {
        p.set_state(gst::State::Null).expect("sender stops");
    }
    let stopped = spotter_agent::pipeline::now_utc_ms();
    until("the source reported down", 20, &readings, &log, |s| {
        s.iter()
            .any(|s| s.at_ms > stopped && s.source == SourceState::Down)
    })
    .await;
    until("a second try while it is away", 20, &readings, &log, |s| {
        s.iter()
            .any(|s| s.source == SourceState::Down && s.restarts >= 2)
    })
    .await;
    assert!(
        agent.try_wait().expect("try_wait").is_none(),
        "the agent exited while the source was away"
    );

    let back = spotter_agent::pipeline::now_utc_ms();
    let sender = srt_sender(port);
    until("the source back at full rate", 60, &readings, &log, |s| {
        live_since(s, back)
    })
    .await;

    assert!(
        agent.try_wait().expect("try_wait").is_none(),
        "the agent exited"
    );
    let exit = support::terminate(&mut agent);
    sender.set_state(gst::State::Null).expect("sender stops");
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{agent_log}");
    for line in [
        "source live",
        "no frame from the source",
        "source down; reopening it with backoff",
        "source back",
    ] {
        assert!(
            agent_log.contains(line),
            "{line:?} not logged:\n{agent_log}"
        );
    }
}

/// Writes a 2-second 320x240 H.264 MP4 at `path`.
fn write_clip(path: &Path) {
    gst::init().expect("gstreamer");
    let tmp = path.with_extension("partial");
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location=\"{}\"",
        tmp.display()
    ))
    .expect("clip pipeline");
    let bus = p.bus().expect("bus");
    p.set_state(gst::State::Playing).expect("play");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the clip is written within 30 s");
    assert!(
        matches!(msg.view(), gst::MessageView::Eos(_)),
        "clip: {msg:?}"
    );
    p.set_state(gst::State::Null).expect("stop");
    // appear whole, as a file copied into place would
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_source_is_retried_until_it_appears() {
    let _serial = SERIAL.lock().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip.mp4");
    let config = support::agent_config_with_source(
        dir.path(),
        broker.port,
        1.0,
        &format!(
            "kind = \"uri\"\nuri = \"file://{}\"\nloop = true",
            clip.display()
        ),
        "",
        "",
    );
    let readings = support::collect_stats(broker.port, "file-source-test").await;
    let log = dir.path().join("agent.log");
    let mut agent = support::spawn_agent(&config, &log);

    until("retries of the missing file", 60, &readings, &log, |s| {
        s.iter()
            .any(|s| s.source == SourceState::Down && s.restarts >= 2)
    })
    .await;
    let written = spotter_agent::pipeline::now_utc_ms();
    write_clip(&clip);
    until("the file playing", 60, &readings, &log, |s| {
        live_since(s, written)
    })
    .await;

    assert!(
        agent.try_wait().expect("try_wait").is_none(),
        "the agent exited"
    );
    let exit = support::terminate(&mut agent);
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "agent exit {exit:?}; log:\n{agent_log}");
    assert!(
        agent_log.contains("source down; reopening it with backoff")
            && agent_log.contains("source back"),
        "{agent_log}"
    );
}
