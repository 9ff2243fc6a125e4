//! The running agent publishes its health on the stats topic (frame rates from the pipeline,
//! inference time, memory) and says `stopped` on a clean shutdown. Real GStreamer test source,
//! real model, real Mosquitto.

mod support;

use std::time::Duration;

use rumqttc::{Event, Packet};
use spotter_protocol::{AgentState, Stats, Status, UploadState};
use support::{Mosquitto, STREAM, STUDIO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_arrive_with_real_frame_rates_and_status_says_stopped() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::agent_config(dir.path(), broker.port, 1.0, "", "");
    let (_client, mut eventloop) = support::watch(
        broker.port,
        "stats-test",
        &[
            format!("spotter/v1/{STUDIO}/stats"),
            format!("spotter/v1/{STUDIO}/{STREAM}/status"),
        ],
    )
    .await;
    let mut agent = support::spawn_agent(&config, &dir.path().join("agent.log"));

    // the second reading covers a whole interval of steady playing
    let mut readings: Vec<Stats> = Vec::new();
    let mut states = Vec::new();
    let got_stats = tokio::time::timeout(Duration::from_secs(60), async {
        while readings.len() < 2 {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/stats") => {
                    readings.push(serde_json::from_slice(&p.payload).expect("stats payload"));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    states.push(Status::decode(&p.payload).expect("status payload").state);
                }
                Ok(_) => {}
                Err(e) => panic!("test subscriber lost the broker: {e}"),
            }
        }
    })
    .await;
    if got_stats.is_err() {
        let _ = agent.kill();
        panic!("no stats within 60 s; broker log:\n{}", broker.log_tail());
    }
    let s = &readings[1];
    assert_eq!(s.stream, STREAM);
    assert!(
        (20.0..=40.0).contains(&s.camera_fps),
        "the test source runs at 30 fps: {s:?}"
    );
    assert!(
        s.analysed_fps > 1.0 && s.analysed_fps <= 6.0,
        "about 5 analysed a second: {s:?}"
    );
    assert!(s.inference_ms > 0.0, "{s:?}");
    assert!(
        s.memory_bytes > 10_000_000,
        "the model alone is 19 MB: {s:?}"
    );
    assert_eq!((s.outbox_depth, s.outbox_dropped), (0, 0), "{s:?}");
    assert_eq!(s.upload, UploadState::None, "no upload configured: {s:?}");

    // SIGTERM: a clean stop replaces the retained `online` with `stopped`
    let stopping = std::thread::spawn(move || support::terminate(&mut agent));
    let stopped = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if states.last() == Some(&AgentState::Stopped) {
                return;
            }
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/status") => {
                    states.push(Status::decode(&p.payload).expect("status payload").state);
                }
                Ok(_) => {}
                Err(e) => panic!("test subscriber lost the broker: {e}"),
            }
        }
    })
    .await;
    let exit = stopping.join().expect("the stopping thread");
    assert!(
        stopped.is_ok(),
        "no `stopped` status after SIGTERM; saw {states:?}"
    );
    assert!(exit.success(), "the agent exits 0 on SIGTERM: {exit:?}");
    assert!(states.contains(&AgentState::Online), "{states:?}");
}
