//! Component test: the whole bridge in-process on free loopback ports with its embedded broker,
//! fed by a real MQTT client and watched by real WebSocket and HTTP clients.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_protocol::status::{OnScreen, OnScreenProduct};
use spotter_protocol::viewer::{Card, ServerMessage};
use spotter_protocol::{BBox, EventType};
use support::{
    event, http_get, mqtt_client, publish_event, recv, sample, write_catalog, ws_connect, Running,
    Ws, PNG, WAIT,
};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The next message, skipping the chat's history too, which this file's tests do not look at.
async fn next_message(ws: &mut Ws) -> ServerMessage {
    loop {
        match recv(ws).await {
            ServerMessage::ChatHistory { .. } => continue,
            other => return other,
        }
    }
}

fn hello(msg: ServerMessage) -> (String, u64, bool, Vec<Card>) {
    match msg {
        ServerMessage::Hello {
            protocol,
            epoch,
            offset,
            resync,
            onscreen,
            ..
        } => {
            assert_eq!(protocol, 1);
            (epoch, offset, resync, onscreen)
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

fn event_msg(msg: ServerMessage) -> (u64, Card) {
    match msg {
        ServerMessage::Event { offset, card } => (offset, card),
        other => panic!("expected event, got {other:?}"),
    }
}

/// Polls `/metrics` until `series` reaches `want` (a bounded wait for a counter updated just
/// after the frame the test already saw).
async fn metric_reaches(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("utf8");
        if sample(&text, series) == want {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the bridge with the test catalog, its embedded broker and the viewer queue and
/// history sizes given; the files live as long as the returned directory.
async fn start_bridge(queue: usize, history: usize) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_catalog(&dir.path().join("catalog"));
    let bridge = support::start_bridge(dir.path(), |broker_port| {
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:{broker_port}"
client_id = "bridge-under-test"
[catalog]
dir = "catalog"
[[stream]]
studio = "demo"
stream = "main"
video_url = "/hls/index.m3u8"
[viewer]
queue = {queue}
max_message_bytes = 4096
history = {history}
"#
        )
    })
    .await;
    (dir, bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_viewers_enriched_once_and_garbage_is_counted() {
    let (_dir, bridge) = start_bridge(64, 16).await;
    let (http, broker_port) = (bridge.http, bridge.broker_port);

    // A viewer joins before anything happened.
    let mut viewer = ws_connect(http, "").await;
    let (epoch, _, resync, onscreen) = hello(next_message(&mut viewer).await);
    assert!(!resync);
    assert!(onscreen.is_empty());

    // Garbage, refused events, a valid event, its redelivery, and a follow-up.
    let (agent, agent_loop) = mqtt_client(broker_port, "test-agent");
    let events = "spotter/v1/demo/main/events";
    let publish = |topic: &str, payload: Vec<u8>| {
        let (agent, topic) = (agent.clone(), topic.to_owned());
        async move {
            agent
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queued");
        }
    };
    publish(events, b"not json at all".to_vec()).await;
    publish(events, br#"{"v":1,"type":"new"}"#.to_vec()).await;
    publish(events, vec![b'x'; 5000]).await;
    publish(events, event(EventType::New, "e-0", 1, "NOT-IN-CATALOG")).await;
    publish(
        "spotter/v1/elsewhere/main/events",
        event(EventType::New, "e-0", 1, "MUG-001"),
    )
    .await;
    publish(events, event(EventType::New, "e-1", 2, "MUG-001")).await;
    publish(events, event(EventType::New, "e-1", 2, "MUG-001")).await;
    publish(events, event(EventType::Update, "e-1", 3, "MUG-001")).await;

    // The first event names the agent's session: the viewer, which joined before this bridge knew
    // it, is given a new `hello` in that epoch (positions are the agent's seqs), then the event.
    let (epoch2, offset, resync, onscreen) = hello(next_message(&mut viewer).await);
    assert_ne!(
        epoch2, epoch,
        "the agent's session replaces the placeholder epoch"
    );
    assert_eq!(
        (epoch2.as_str(), offset, resync),
        (support::SESSION, 2, true)
    );
    assert!(onscreen.is_empty(), "{onscreen:?}");
    let (offset, card) = event_msg(next_message(&mut viewer).await);
    assert_eq!(offset, 2, "an event's offset is its seq");
    assert_eq!(
        (card.kind, card.event_id.as_str(), card.seq),
        (EventType::New, "e-1", 2)
    );
    assert_eq!(card.product.name, "Enamel camp mug");
    assert_eq!(card.product.price, "14.00");
    assert_eq!(card.product.currency, "USD");
    assert_eq!(card.bbox, BBox([0.25, 0.125, 0.75, 0.875]));
    // The redelivery is not shown: the next frame is the update, at its seq.
    let (offset2, card2) = event_msg(next_message(&mut viewer).await);
    assert_eq!(offset2, 3);
    assert_eq!((card2.kind, card2.seq), (EventType::Update, 3));
    // Both say when the appearance began: the capture time of its `new`.
    assert_eq!(card.appeared_at_ms, card.captured_at_ms);
    assert_eq!(card2.appeared_at_ms, card.captured_at_ms);
    assert_ne!(card2.captured_at_ms, card.captured_at_ms);

    // The card's image is served under its content hash, cacheable forever.
    let image = card.product.image.clone().expect("card image");
    assert!(
        image.starts_with("/img/") && image.ends_with("/mug.png"),
        "{image}"
    );
    let (status, headers, body) = http_get(http, &image).await;
    assert_eq!(status, 200);
    assert_eq!(body, PNG);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );

    // Garbage and refusals were counted, and the bridge is still up.
    let text = metric_reaches(http, "spotter_bridge_events_accepted_total", 2.0).await;
    let m = |series: &str| sample(&text, series);
    assert_eq!(
        m(r#"spotter_bridge_events_malformed_total{kind="events",reason="json"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        m(r#"spotter_bridge_events_malformed_total{kind="events",reason="too_large"}"#),
        1.0
    );
    assert_eq!(
        m(r#"spotter_bridge_events_rejected_total{kind="events",reason="unknown_sku"}"#),
        1.0
    );
    assert_eq!(
        m(r#"spotter_bridge_events_rejected_total{kind="events",reason="unknown_stream"}"#),
        1.0
    );
    assert_eq!(m("spotter_bridge_events_duplicate_total"), 1.0);
    assert_eq!(m("spotter_bridge_events_received_total"), 8.0);
    assert_eq!(m("spotter_bridge_viewers_connected"), 1.0);
    assert_eq!(m("spotter_bridge_mqtt_connected"), 1.0);
    let (status, _, body) = http_get(http, "/healthz").await;
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, body) = http_get(http, "/api/streams/demo/main").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(info["video_url"], "/hls/index.m3u8");

    // A viewer reconnecting from the first offset gets what it missed, in order.
    let mut back = ws_connect(http, &format!("?epoch={}&offset=2", support::SESSION)).await;
    let (_, offset, resync, onscreen) = hello(next_message(&mut back).await);
    assert_eq!((offset, resync), (2, false));
    assert_eq!(onscreen.len(), 1);
    assert_eq!((onscreen[0].event_id.as_str(), onscreen[0].seq), ("e-1", 3));
    assert_eq!(event_msg(next_message(&mut back).await).1.seq, 2);
    assert_eq!(event_msg(next_message(&mut back).await).1.seq, 3);
    // One from another epoch is told to resync.
    let mut stale = ws_connect(http, "?epoch=not-this-one&offset=0").await;
    let (_, _, resync, onscreen) = hello(next_message(&mut stale).await);
    assert!(resync);
    assert_eq!(onscreen.len(), 1);

    // An oversize client frame gets an error, then a policy-violation close.
    let mut rude = ws_connect(http, "").await;
    hello(next_message(&mut rude).await);
    rude.send(Message::Text("x".repeat(5000).into()))
        .await
        .expect("send");
    match next_message(&mut rude).await {
        ServerMessage::Error { message } => assert!(
            message.contains("too long") || message.contains("limit"),
            "{message}"
        ),
        other => panic!("expected error, got {other:?}"),
    }
    let close = timeout(WAIT, rude.next()).await.expect("close in time");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Garbage from a client: an error, the socket stays open, the other viewers are unaffected.
    let mut garbled = ws_connect(http, "").await;
    hello(next_message(&mut garbled).await);
    garbled
        .send(Message::Text("{nope".into()))
        .await
        .expect("send");
    assert!(matches!(
        next_message(&mut garbled).await,
        ServerMessage::Error { .. }
    ));

    // A retained on-screen snapshot newer than any event reconciles what viewers see...
    let snapshot = OnScreen {
        v: 1,
        session: Some(support::SESSION.into()),
        seq: 100,
        products: vec![OnScreenProduct {
            event_id: "e-9".into(),
            sku: "MUG-001".into(),
            score: 0.9,
            bbox: BBox::FULL,
            since_ms: 1_764_072_000_500,
        }],
    };
    agent
        .publish(
            "spotter/v1/demo/main/onscreen",
            QoS::AtLeastOnce,
            true,
            snapshot.encode(),
        )
        .await
        .expect("queued");
    let (_, ended) = event_msg(next_message(&mut viewer).await);
    assert_eq!(
        (ended.kind, ended.event_id.as_str()),
        (EventType::End, "e-1")
    );
    let (_, arrived) = event_msg(next_message(&mut viewer).await);
    assert_eq!(
        (arrived.kind, arrived.event_id.as_str()),
        (EventType::New, "e-9")
    );

    // ...and the embedded broker kept it for late subscribers.
    let mut opts = MqttOptions::new("late-subscriber", "127.0.0.1", broker_port);
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (late, mut late_loop) = AsyncClient::new(opts, 8);
    late.subscribe("spotter/v1/demo/main/onscreen", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let retained = timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = late_loop.poll().await.expect("poll") {
                return p;
            }
        }
    })
    .await
    .expect("retained message in time");
    assert!(retained.retain);
    assert_eq!(
        OnScreen::decode(&retained.payload).expect("onscreen"),
        snapshot
    );

    // Shutdown: viewers are told to reconnect (service restart) and run() returns cleanly.
    bridge.stop().await;
    loop {
        match timeout(WAIT, viewer.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1012);
                break;
            }
            Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
            other => panic!("expected a service-restart close, got {other:?}"),
        }
    }
    agent_loop.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_dropped_and_never_slows_the_others() {
    let (_dir, bridge) = start_bridge(64, 16).await;
    let http = bridge.http;
    // The show is on before the viewers come: the bridge knows the agent's session.
    let (agent, agent_loop) = mqtt_client(bridge.broker_port, "test-agent");
    publish_event(&agent, event(EventType::New, "e-0", 1, "MUG-001")).await;
    metric_reaches(http, "spotter_bridge_events_accepted_total", 1.0).await;
    let mut good = ws_connect(http, "").await;
    hello(next_message(&mut good).await);

    // The slow viewer reads nothing, through a small receive buffer so that its socket fills
    // after a few dozen kilobytes rather than megabytes.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(http).await.expect("connect");
    let (mut slow, _) =
        tokio_tungstenite::client_async(format!("ws://{http}/ws/demo/main"), stream)
            .await
            .expect("ws handshake");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seq = 1u64;
    let mut next_offset = None;
    let dropped = loop {
        // A round well within the queue, then the good viewer must have all of it.
        for _ in 0..32 {
            seq += 1;
            let kind = if seq % 2 == 1 {
                EventType::New
            } else {
                EventType::End
            };
            let payload = event(kind, &format!("e-{}", seq / 2), seq, "MUG-001");
            publish_event(&agent, payload).await;
        }
        for _ in 0..32 {
            let (offset, _) = event_msg(next_message(&mut good).await);
            if let Some(want) = next_offset {
                assert_eq!(offset, want, "the good viewer missed nothing");
            }
            next_offset = Some(offset + 1);
        }
        let (_, _, body) = http_get(http, "/metrics").await;
        let text = String::from_utf8(body).expect("utf8");
        if sample(&text, "spotter_bridge_viewers_dropped_slow_total") >= 1.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow viewer was never dropped after {seq} events:\n{text}"
        );
    };
    assert_eq!(
        sample(&dropped, "spotter_bridge_viewers_dropped_slow_total"),
        1.0
    );

    // The slow viewer's connection ends (after what was already in flight), it does not hang.
    let ended = timeout(WAIT, async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the slow viewer's connection ends");
    if let Some(code) = ended {
        assert_eq!(code, 1013, "try again later");
    }
    // The good one is still live.
    seq += 1;
    publish_event(&agent, event(EventType::New, "last", seq, "MUG-001")).await;
    let (_, card) = event_msg(next_message(&mut good).await);
    assert_eq!(card.event_id, "last");

    bridge.stop().await;
    agent_loop.abort();
}
