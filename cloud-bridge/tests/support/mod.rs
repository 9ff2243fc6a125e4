//! What the bridge's component tests share: the test catalog and events, a bridge started
//! in-process on free loopback ports, and the MQTT, HTTP and WebSocket clients around it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use spotter_bridge::{run_with_ready, BridgeConfig};
use spotter_mqtt_link::testing::free_port;
use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::{BBox, EventType, ProductEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long any one step may take before the test fails rather than hangs.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A 1x1 PNG, the test catalog's one image.
#[allow(
    dead_code,
    reason = "the chat and service tests bring their own catalogs"
)]
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// Writes the test catalog in `dir`: one product, `MUG-001`, with [`PNG`] as its image.
#[allow(
    dead_code,
    reason = "the chat and service tests bring their own catalogs"
)]
pub fn write_catalog(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("mug.png"), PNG).expect("write png");
    std::fs::write(
        dir.join("catalog.toml"),
        r#"
[[product]]
sku = "MUG-001"
name = "Enamel camp mug"
price = "14.00"
currency = "USD"
url = "https://shop.example/mug-001"
images = ["mug.png"]
"#,
    )
    .expect("write catalog");
}

/// The agent session the test events carry.
#[allow(dead_code, reason = "the chat tests publish no events")]
pub const SESSION: &str = "5f3a9c0e7b1d2468";

/// An agent's event for `demo/main`, encoded as it goes on the wire.
#[allow(dead_code, reason = "the chat tests publish no events")]
pub fn event(kind: EventType, event_id: &str, seq: u64, sku: &str) -> Vec<u8> {
    ProductEvent {
        v: 1,
        kind,
        event_id: event_id.into(),
        seq,
        session: Some(SESSION.into()),
        sku: sku.into(),
        score: 0.875,
        bbox: BBox([0.25, 0.125, 0.75, 0.875]),
        captured_at_ms: 1_764_072_000_000 + seq,
        pts_ms: seq * 40,
    }
    .encode()
}

/// Publishes an encoded event on `demo/main`'s events topic, as the agent does.
#[allow(
    dead_code,
    reason = "the chat and service tests publish no events through it"
)]
pub async fn publish_event(agent: &AsyncClient, payload: Vec<u8>) {
    agent
        .publish(
            "spotter/v1/demo/main/events",
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("queued");
}

/// An MQTT client on the broker at `port` whose event loop runs in the background.
#[allow(dead_code, reason = "only the tests that publish to the broker use it")]
pub fn mqtt_client(port: u16, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 32);
    let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    (client, task)
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off")),
        )
        .try_init();
}

/// A bridge running in this process.
pub struct Running {
    pub http: SocketAddr,
    /// The embedded broker's port.
    #[allow(
        dead_code,
        reason = "only the tests that publish to the broker read it"
    )]
    pub broker_port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Cancels the bridge and requires `run` to return cleanly in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("clean shutdown");
    }
}

/// Starts the bridge from the TOML that `config` writes for a free embedded-broker port (paths
/// relative to `dir`) and waits until it is serving and subscribed.
pub async fn start_bridge(dir: &Path, config: impl FnOnce(u16) -> String) -> Running {
    init_logs();
    let broker_port = free_port();
    let config = BridgeConfig::from_toml(&config(broker_port), dir).expect("config");
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(run_with_ready(config, shutdown.clone(), ready_tx));
    let ready = timeout(WAIT, ready_rx)
        .await
        .expect("bridge ready in time")
        .expect("bridge started");
    Running {
        http: ready.http,
        broker_port,
        shutdown,
        task,
    }
}

/// A minimal HTTP/1.1 GET: status, headers (lowercased names), body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

/// The value of one metrics sample line (`name{labels}`), or 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A viewer's WebSocket on the `demo/main` stream, with `query` (`?epoch=..`, or empty).
pub async fn ws_connect(addr: SocketAddr, query: &str) -> Ws {
    let url = format!("ws://{addr}/ws/demo/main{query}");
    let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("ws connect in time")
        .expect("ws connect");
    ws
}

/// The next text frame as a ServerMessage, viewer counts and pings skipped.
pub async fn recv(ws: &mut Ws) -> ServerMessage {
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => match serde_json::from_str(t.as_str()).expect("a ServerMessage") {
                ServerMessage::Viewers { .. } => continue,
                other => return other,
            },
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The card the next product event brings, or the newest card of a `hello` that holds any (a
/// viewer that joined after the event reached the bridge finds it there). Chat and sessions are
/// skipped.
#[allow(
    dead_code,
    reason = "only the tests whose viewers wait for an event use it"
)]
pub async fn next_card(ws: &mut Ws) -> spotter_protocol::viewer::Card {
    loop {
        match recv(ws).await {
            ServerMessage::Event { card, .. } => return card,
            ServerMessage::Hello { onscreen, .. } => {
                if let Some(card) = onscreen.into_iter().max_by_key(|c| c.seq) {
                    return card;
                }
            }
            ServerMessage::ChatHistory { .. } | ServerMessage::Session { .. } => continue,
            other => panic!("expected a product event, got {other:?}"),
        }
    }
}
