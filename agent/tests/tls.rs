//! Mutual TLS to a real Mosquitto (certificates made by openssl for the test): the agent's
//! publisher connects with its certificate and its events arrive; a client without a
//! certificate is refused.

mod support;

use std::time::Duration;

use rumqttc::AsyncClient;
use spotter_agent::mqtt;
use spotter_mqtt_link::testing::{connack_or_failure, make_certificates, TlsMosquitto};
use spotter_mqtt_link::{Endpoint, TlsSettings};
use support::{event, publisher_settings, Subscriber};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_connects_with_its_certificate_and_a_client_without_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certificates(dir.path(), "studio-1");
    let broker = TlsMosquitto::start(dir.path(), &certs);
    let url = format!("mqtts://127.0.0.1:{}", broker.tls);

    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "spotter_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut sub = Subscriber::start(broker.plain);
    sub.subscribed().await;

    let outbox_dir = dir.path().join("outbox");
    let (mut cfg, topics, outbox) =
        publisher_settings(broker.tls, "studio-1", &outbox_dir, 1 << 20);
    let mutual = TlsSettings {
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(certs.client.0.clone()),
        key_file: Some(certs.client.1.clone()),
        alpn: None,
    };
    cfg.broker = Endpoint::from_settings(&url, &mutual, None).expect("mutual TLS settings");
    let (publisher, connection) = mqtt::connect_with(&cfg, topics, &outbox).expect("connects");
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(mqtt::drive(connection, shutdown.clone()));
    for seq in 1..=3 {
        publisher.event(&event(seq)).await.expect("stored");
    }
    let arrived = tokio::time::timeout(
        Duration::from_secs(20),
        sub.wait_until(
            "three events over mutual TLS",
            Duration::from_secs(20),
            |got| got.iter().filter(|e| (1..=3).contains(&e.seq)).count() >= 3,
        ),
    )
    .await;
    if arrived.is_err() {
        panic!(
            "no events over mutual TLS within 20 s; broker log:\n{}",
            broker.log()
        );
    }
    publisher.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    shutdown.cancel();

    // the same CA, no client certificate: the broker ends the handshake
    let server_only = TlsSettings {
        ca_file: Some(certs.ca.clone()),
        ..TlsSettings::default()
    };
    let endpoint = Endpoint::from_settings(&url, &server_only, None).expect("TLS settings");
    let mut opts = endpoint.options("no-certificate");
    opts.set_keep_alive(Duration::from_secs(5));
    let (_client, mut eventloop) = AsyncClient::new(opts, 4);
    let refused = tokio::time::timeout(Duration::from_secs(10), connack_or_failure(&mut eventloop))
        .await
        .expect("the broker answered within 10 s");
    assert!(
        refused.contains("the broker wants a client certificate: set mqtt.cert_file"),
        "a client without a certificate: {refused}"
    );
}
