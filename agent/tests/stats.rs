//! The running agent publishes its health on the stats topic (frame rates from the pipeline,
//! inference time, memory) and says `stopped` on a clean shutdown. Real GStreamer test source,
//! real model, real Mosquitto.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_protocol::{AgentState, Stats, Status, UploadState};
use support::{Mosquitto, STREAM, STUDIO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_arrive_with_real_frame_rates_and_status_says_stopped() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    let model = support::model_path();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "studio = \"{STUDIO}\"\nstream = \"{STREAM}\"\n[source]\nkind = \"test\"\n\
             [analysis]\ncatalog = \"{}\"\nmodel = \"{}\"\nfps = 5.0\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nstats_interval_secs = 1.0\n\
             [outbox]\ndir = \"{}\"\n",
            dir.path().display(),
            model.display(),
            broker.port,
            dir.path().join("outbox").display()
        ),
    )
    .expect("write config");

    let mut opts = MqttOptions::new("stats-test", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("spotter/v1/{STUDIO}/stats"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .subscribe(
            format!("spotter/v1/{STUDIO}/{STREAM}/status"),
            QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe");

    let mut agent = Command::new(env!("CARGO_BIN_EXE_spotter-agent"))
        .args(["--config", &config.display().to_string(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");

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
    let pid = agent.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
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
    let exit = agent.wait().expect("wait");
    assert!(
        stopped.is_ok(),
        "no `stopped` status after SIGTERM; saw {states:?}"
    );
    assert!(exit.success(), "the agent exits 0 on SIGTERM: {exit:?}");
    assert!(states.contains(&AgentState::Online), "{states:?}");
}
