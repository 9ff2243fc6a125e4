//! Component test: hostile clients against the whole bridge in-process — one address opening
//! more viewer sockets than its share, and clients that send their request headers a byte at a
//! time or not at all — while ordinary viewers keep getting their events.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::EventType;
use support::{
    event, http_get, mqtt_client, publish_event, recv, sample, ws_connect, Running, Ws, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite;

/// The header bound the slow-client test configures, seconds.
const HEADER_TIMEOUT_SECS: u64 = 2;

/// The bridge with the test catalog; `extra` goes at the end of `[http]`.
async fn start(http_extra: &str) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().expect("tempdir");
    support::write_catalog(&dir.path().join("catalog"));
    let bridge = support::start_bridge(dir.path(), |broker_port| {
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
{http_extra}
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:{broker_port}"
client_id = "bridge-under-test"
[catalog]
dir = "catalog"
[[stream]]
studio = "demo"
stream = "main"
[chat]
enabled = false
"#
        )
    })
    .await;
    (dir, bridge)
}

/// Requires the greeting to come first (chat history may follow it).
async fn greeted(ws: &mut Ws) {
    let first = recv(ws).await;
    assert!(matches!(first, ServerMessage::Hello { .. }), "{first:?}");
}

/// The next message that is not the greeting or chat.
async fn next_event(ws: &mut Ws) -> (String, u64) {
    loop {
        match recv(ws).await {
            ServerMessage::Hello { .. } | ServerMessage::ChatHistory { .. } => continue,
            ServerMessage::Event { card, .. } => return (card.event_id, card.seq),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn metrics(addr: SocketAddr) -> String {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf8")
}

/// A viewer's WebSocket from the loopback address `from` (Linux routes all of 127/8 to lo).
async fn ws_connect_from(from: &str, http: SocketAddr) -> Result<Ws, tungstenite::Error> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind the client to its own loopback address");
    let stream = socket.connect(http).await.expect("connect");
    let url = format!("ws://{http}/ws/demo/main");
    let (ws, _) = timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake in time")?;
    Ok(ws)
}

#[tokio::test]
async fn one_address_over_its_share_gets_429_while_another_address_connects() {
    // The default share, 64 sockets per address.
    let (_dir, bridge) = start("").await;
    let http = bridge.http;

    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(
            ws_connect_from("127.0.0.1", http)
                .await
                .expect("within the share"),
        );
    }
    match ws_connect_from("127.0.0.1", http).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            assert!(resp.headers().contains_key("retry-after"));
            let body = resp.body().as_deref().expect("a body");
            let v: serde_json::Value = serde_json::from_slice(body).expect("json");
            let reason = v["error"].as_str().expect("error");
            assert!(reason.contains("this address (64)"), "{v}");
        }
        Err(other) => panic!("the 65th socket failed otherwise: {other}"),
        Ok(_) => panic!("the 65th socket from one address was admitted"),
    }

    let mut other = ws_connect_from("127.0.0.2", http)
        .await
        .expect("another address still connects");
    greeted(&mut other).await;
    // The admitted sockets are served.
    greeted(&mut held[0]).await;

    let text = metrics(http).await;
    assert_eq!(
        sample(&text, "spotter_bridge_viewers_refused_address_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "spotter_bridge_viewers_refused_full_total"),
        0.0
    );
    assert_eq!(sample(&text, "spotter_bridge_viewers_accepted_total"), 65.0);

    drop((held, other));
    bridge.stop().await;
}

/// Reads until the bridge closes the connection; what it sent.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("closed by the bridge in time");
    got
}

#[tokio::test]
async fn slow_and_silent_clients_are_closed_at_the_header_bound_while_viewers_get_events() {
    let (_dir, bridge) = start(&format!("header_timeout_secs = {HEADER_TIMEOUT_SECS}")).await;
    let http = bridge.http;
    let bound = Duration::from_secs(HEADER_TIMEOUT_SECS);

    // One header byte a second, a request that would take over a minute to finish.
    let request = format!(
        "GET /ws/demo/main HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let opened = Instant::now();
    let slow = TcpStream::connect(http).await.expect("connect");
    let (mut slow_read, mut slow_write) = slow.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let trickle = {
        let sent = sent.clone();
        let bytes = request.clone().into_bytes();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            for b in bytes {
                every.tick().await;
                if slow_write.write_all(&[b]).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut silent = TcpStream::connect(http).await.expect("connect");

    // Meanwhile an ordinary viewer connects and gets its events.
    let (agent, agent_loop) = mqtt_client(bridge.broker_port, "agent");
    let mut viewer = ws_connect(http, "").await;
    greeted(&mut viewer).await;
    publish_event(&agent, event(EventType::New, "e-1", 1, "MUG-001")).await;
    assert_eq!(next_event(&mut viewer).await, ("e-1".to_owned(), 1));

    let mut got = Vec::new();
    let _ = timeout(WAIT, slow_read.read_to_end(&mut got))
        .await
        .expect("the slow client is closed by the bridge in time");
    let slow_lasted = opened.elapsed();
    assert!(
        slow_lasted >= bound,
        "closed after {slow_lasted:?}, before the {bound:?} bound"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(" 101 "),
        "the slow client was never upgraded: {got:?}"
    );
    let silent_got = read_until_closed(&mut silent).await;
    assert!(opened.elapsed() >= bound);
    assert!(!String::from_utf8_lossy(&silent_got).contains(" 101 "));
    trickle.abort();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < request.len(),
        "cut off at {sent} of {} bytes",
        request.len()
    );

    // The viewer was not disturbed and still gets the next one.
    publish_event(&agent, event(EventType::New, "e-2", 2, "MUG-001")).await;
    assert_eq!(next_event(&mut viewer).await, ("e-2".to_owned(), 2));
    let text = metrics(http).await;
    assert_eq!(
        sample(&text, "spotter_bridge_http_header_timeouts_total"),
        2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "spotter_bridge_viewers_connected"), 1.0);

    agent_loop.abort();
    drop(viewer);
    bridge.stop().await;
}
