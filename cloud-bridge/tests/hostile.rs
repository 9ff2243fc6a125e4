//! Component test: hostile clients against the whole bridge in-process — one address opening
//! more viewer sockets than its share, clients that send their request headers a byte at a time
//! or not at all, floods of malformed frames and frames no client may send — while ordinary
//! viewers keep getting their events.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::EventType;
use support::{
    event, http_get, mqtt_client, next_card, publish_event, recv, sample, ws_connect, Running, Ws,
    WAIT,
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

    // Meanwhile an ordinary viewer connects and gets its events. The show is on: the first
    // event names the agent's session, and the viewer's position counts in it.
    let (agent, agent_loop) = mqtt_client(bridge.broker_port, "agent");
    publish_event(&agent, event(EventType::New, "e-0", 1, "MUG-001")).await;
    let mut viewer = ws_connect(http, "").await;
    let e0 = next_card(&mut viewer).await.event_id;
    assert_eq!(e0, "e-0");
    publish_event(&agent, event(EventType::New, "e-1", 2, "MUG-001")).await;
    assert_eq!(next_event(&mut viewer).await, ("e-1".to_owned(), 2));

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
    publish_event(&agent, event(EventType::New, "e-2", 3, "MUG-001")).await;
    assert_eq!(next_event(&mut viewer).await, ("e-2".to_owned(), 3));
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

/// A WebSocket opened by hand on a raw socket, so that the test can send what no WebSocket
/// library would (unmasked frames, thousands of frames in one write).
async fn raw_upgrade(http: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(http).await.expect("connect");
    let request = format!(
        "GET /ws/demo/main HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        timeout(WAIT, s.read_exact(&mut b))
            .await
            .expect("response in time")
            .expect("read");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// A client frame: text, masked unless `mask` is `None`.
fn client_text(text: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut f = vec![0x81, text.len() as u8];
    match mask {
        Some(m) => {
            f[1] |= 0x80;
            f.extend_from_slice(&m);
            f.extend(text.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(text),
    }
    f
}

/// Reads server frames until the close frame: (text frames seen, the close code).
async fn until_close(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> (usize, Option<u16>) {
    let mut buf = Vec::new();
    let mut texts = 0;
    loop {
        while buf.len() >= 2 {
            let (len, at) = match buf[1] {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                126 => break,
                l => (usize::from(l), 2),
            };
            if buf.len() < at + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..at + len).collect();
            match frame[0] & 0x0F {
                0x1 => texts += 1,
                0x8 => {
                    let code = (len >= 2).then(|| u16::from_be_bytes([frame[at], frame[at + 1]]));
                    return (texts, code);
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 8192];
        match timeout(WAIT, s.read(&mut chunk)).await.expect("in time") {
            Ok(0) | Err(_) => return (texts, None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_malformed_and_forbidden_frames_close_their_senders_and_nobody_else() {
    let (_dir, bridge) = start("").await;
    let http = bridge.http;
    let (agent, agent_loop) = mqtt_client(bridge.broker_port, "agent");
    publish_event(&agent, event(EventType::New, "e-0", 1, "MUG-001")).await;
    let mut viewer = ws_connect(http, "").await;
    assert_eq!(next_card(&mut viewer).await.event_id, "e-0");

    // 10,000 frames of garbage in one write: answered with `error`s until the sender counts as
    // flooding, then closed with 1008.
    let flood = raw_upgrade(http).await;
    let garbage: Vec<u8> = (0..10_000u32)
        .flat_map(|i| client_text(b"{nope", Some(i.to_be_bytes())))
        .collect();
    let (mut read, mut write) = flood.into_split();
    let writer = tokio::spawn(async move {
        // The bridge may close before it has read everything: a failed write is expected.
        let _ = write.write_all(&garbage).await;
        write
    });
    let (errors, code) = until_close(&mut read).await;
    assert_eq!(code, Some(1008), "flooding closes with a policy violation");
    assert!(errors >= 2, "answered before closing ({errors} frames)");
    drop(writer.await);

    // An unmasked frame: a protocol error, 1002.
    let mut unmasked = raw_upgrade(http).await;
    unmasked
        .write_all(&client_text(br#"{"kind":"ping"}"#, None))
        .await
        .expect("write");
    assert_eq!(until_close(&mut unmasked).await.1, Some(1002));
    // Reserved bits without an extension: 1002 too.
    let mut reserved = raw_upgrade(http).await;
    let mut frame = client_text(br#"{"kind":"ping"}"#, Some([1, 2, 3, 4]));
    frame[0] |= 0x40;
    reserved.write_all(&frame).await.expect("write");
    assert_eq!(until_close(&mut reserved).await.1, Some(1002));

    // The ordinary viewer saw none of it and still gets events.
    publish_event(&agent, event(EventType::New, "e-1", 2, "MUG-001")).await;
    assert_eq!(next_event(&mut viewer).await, ("e-1".to_owned(), 2));
    let text = metrics(http).await;
    assert_eq!(
        sample(&text, "spotter_bridge_viewers_dropped_bad_input_total"),
        3.0,
        "{text}"
    );
    assert!(sample(&text, "spotter_bridge_chat_refused_total") >= 2.0);
    // The closed ones leave once their closing handshake is over (these clients never answer
    // it, so at its bound).
    let deadline = Instant::now() + WAIT;
    while sample(&metrics(http).await, "spotter_bridge_viewers_connected") != 1.0 {
        assert!(Instant::now() < deadline, "closed viewers still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    agent_loop.abort();
    drop(viewer);
    bridge.stop().await;
}
