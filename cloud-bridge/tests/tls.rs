//! The bridge's broker link over mutual TLS, against a real Mosquitto that requires a client
//! certificate (certificates made by openssl for the test): it subscribes with its certificate
//! and an event published to the broker reaches a viewer; without a certificate it is refused
//! with an error that says what to set; and its ClientHello offers the ALPN protocol AWS IoT
//! Core wants on port 443 (`openssl s_server -alpn` reports what a client offers).

mod support;

use std::time::Duration;

use spotter_bridge::mqtt::subscriber;
use spotter_bridge::BridgeConfig;
use spotter_mqtt_link::testing::{
    connack_or_failure, make_certificates, AlpnServer, Certificates, TlsMosquitto,
};
use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::EventType;
use support::{
    event, http_get, mqtt_client, next_card, publish_event, recv, sample, ws_connect, WAIT,
};

/// The client id the bridge connects as (the certificate's common name too, as on IoT Core).
const CLIENT_ID: &str = "bridge-under-tls";

/// The bridge's configuration for the broker at `url`, with `tls` lines in `[mqtt]` (paths
/// relative to the test's directory, as an operator's would be to the file's).
fn bridge_toml(url: &str, tls: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [mqtt]\nembedded = false\nurl = \"{url}\"\nclient_id = \"{CLIENT_ID}\"\n{tls}\
         [catalog]\ndir = \"catalog\"\n\
         [[stream]]\nstudio = \"demo\"\nstream = \"main\"\n"
    )
}

const MUTUAL: &str =
    "ca_file = \"ca.crt\"\ncert_file = \"client.crt\"\nkey_file = \"client.key\"\n";

fn setup() -> (tempfile::TempDir, Certificates) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certificates(dir.path(), CLIENT_ID);
    support::write_catalog(&dir.path().join("catalog"));
    (dir, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_subscribes_with_its_certificate_and_an_event_reaches_a_viewer() {
    let (dir, certs) = setup();
    let broker = TlsMosquitto::start(dir.path(), &certs);
    let url = format!("mqtts://127.0.0.1:{}", broker.tls);
    let bridge = support::start_bridge(dir.path(), |_| bridge_toml(&url, MUTUAL)).await;

    // subscribed over mutual TLS, as the bridge's own gauge says
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(bridge.http, "/metrics").await;
        let text = String::from_utf8(body).expect("utf8");
        if sample(&text, "spotter_bridge_mqtt_connected") == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not subscribed over mutual TLS:\n{text}\nbroker log:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        broker.log().contains(&format!("as {CLIENT_ID}")),
        "the broker did not see the bridge connect:\n{}",
        broker.log()
    );

    let mut viewer = ws_connect(bridge.http, "").await;
    assert!(matches!(
        recv(&mut viewer).await,
        ServerMessage::Hello { .. }
    ));

    // the agent's side: an event published on the broker's plain listener
    let (agent, agent_task) = mqtt_client(broker.plain, "test-agent");
    publish_event(&agent, event(EventType::New, "over-tls", 1, "MUG-001")).await;

    let card = next_card(&mut viewer).await;
    assert_eq!(card.event_id, "over-tls");
    assert_eq!(card.product.sku, "MUG-001");
    assert_eq!(card.product.name, "Enamel camp mug");
    agent_task.abort();
    bridge.stop().await;
}

/// Polls the bridge's own broker connection (`subscriber::connect`, what `run` drives) until it
/// fails; the error as the bridge logs it.
async fn first_failure(config: &BridgeConfig) -> String {
    let (_client, mut eventloop) = subscriber::connect(&config.mqtt);
    tokio::time::timeout(WAIT, connack_or_failure(&mut eventloop))
        .await
        .expect("the broker answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_bridge_is_refused_with_what_to_set() {
    let (dir, certs) = setup();
    let broker = TlsMosquitto::start(dir.path(), &certs);
    let url = format!("mqtts://127.0.0.1:{}", broker.tls);
    let config = BridgeConfig::from_toml(&bridge_toml(&url, "ca_file = \"ca.crt\"\n"), dir.path())
        .expect("a TLS configuration without a client certificate is valid");
    assert!(
        config
            .mqtt
            .broker
            .to_string()
            .contains("no client certificate"),
        "{}",
        config.mqtt.broker
    );
    let refused = first_failure(&config).await;
    assert!(
        refused.contains(
            "the broker wants a client certificate: set mqtt.cert_file and mqtt.key_file"
        ),
        "without a certificate: {refused}"
    );

    // with it, the same broker lets the bridge in
    let config = BridgeConfig::from_toml(&bridge_toml(&url, MUTUAL), dir.path()).expect("valid");
    assert_eq!(first_failure(&config).await, "CONNACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_offers_the_alpn_protocol_iot_core_wants() {
    let (dir, certs) = setup();
    let server = AlpnServer::start(dir.path(), &certs, spotter_mqtt_link::ALPN_AWS_IOT);
    let url = format!("mqtts://127.0.0.1:{}", server.port);
    // port 443 would offer it by default; elsewhere it is set, as for a proxy in front of IoT Core
    let tls = format!("{MUTUAL}alpn = \"x-amzn-mqtt-ca\"\n");
    let config = BridgeConfig::from_toml(&bridge_toml(&url, &tls), dir.path()).expect("valid");
    assert!(
        config
            .mqtt
            .broker
            .to_string()
            .ends_with("ALPN x-amzn-mqtt-ca)"),
        "{}",
        config.mqtt.broker
    );
    let (_client, mut eventloop) = subscriber::connect(&config.mqtt);
    // s_server speaks no MQTT: the handshake is all there is to see
    let connecting = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let seen = tokio::task::spawn_blocking(move || {
        let seen = server.wait_for_output(
            "ALPN protocols advertised by the client: x-amzn-mqtt-ca",
            WAIT,
        );
        (seen, server.output())
    })
    .await
    .expect("join");
    connecting.abort();
    assert!(
        seen.0,
        "the ClientHello did not offer x-amzn-mqtt-ca:\n{}",
        seen.1
    );
}
