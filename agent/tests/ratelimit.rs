//! A backlog is published no faster than `mqtt.max_publishes_per_sec` (AWS IoT Core refuses
//! more than 100 a second a connection): 60 events at 20 a second take at least 2 s.

mod support;

use std::time::{Duration, Instant};

use spotter_agent::mqtt;
use support::{event, publisher_settings, Mosquitto, Subscriber};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_paced_to_the_publish_rate() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(broker.port);
    sub.subscribed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cfg, topics, outbox) =
        publisher_settings(broker.port, "pub-rate", dir.path(), 1 << 20);
    cfg.max_publishes_per_sec = 20;
    let (publisher, connection) = mqtt::connect_with(&cfg, topics, &outbox).expect("connects");
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(mqtt::drive(connection, shutdown.clone()));

    let start = Instant::now();
    for seq in 1..=60 {
        publisher.event(&event(seq)).await.expect("stored");
    }
    sub.wait_until("all 60 events", Duration::from_secs(30), |got| {
        (1..=60).all(|s| got.iter().any(|e| e.seq == s))
    })
    .await;
    let took = start.elapsed();
    // a burst of 20 (less the status publish), then 20 a second: at least 2 s for the other 40
    assert!(
        took >= Duration::from_millis(1900),
        "60 events in {took:?}: faster than 20 a second"
    );
    publisher.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    shutdown.cancel();
}
