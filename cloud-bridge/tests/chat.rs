//! Component test of chat: the whole bridge in-process with its embedded broker on free loopback
//! ports, real WebSocket clients for two viewers and a moderator, and hostile input.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use spotter_bridge::chat::token::{sign, Capability, Claims};
use spotter_bridge::chat::ChatKey;
use spotter_protocol::chat::RefusalCode;
use spotter_protocol::viewer::ServerMessage;
use support::{http_get, recv, sample, ws_connect, Running, Ws, WAIT};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

/// Starts a chat-enabled bridge whose files (catalog, key, state) live in `dir`, with a fresh
/// embedded broker.
async fn start_bridge(dir: &Path) -> Running {
    std::fs::create_dir_all(dir.join("catalog")).expect("mkdir");
    std::fs::write(
        dir.join("catalog/catalog.toml"),
        "[[product]]\nsku = \"MUG-001\"\nname = \"Mug\"\nprice = \"1.00\"\ncurrency = \"USD\"\nurl = \"https://shop.example/m\"\nimages = []\n",
    )
    .expect("catalog");
    std::fs::write(dir.join("chat.key"), KEY).expect("key");
    support::start_bridge(dir, |broker_port| {
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
[mqtt]
embedded_listen = "127.0.0.1:{broker_port}"
[catalog]
dir = "catalog"
[[stream]]
studio = "demo"
stream = "main"
[chat]
key_file = "chat.key"
state_dir = "state"
guests = true
blocked_words = ["spam"]
"#
        )
    })
    .await
}

fn token(user: &str, name: &str, moderator: bool) -> String {
    let mut caps = vec![Capability::Send];
    if moderator {
        caps.push(Capability::Moderate);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    sign(
        &ChatKey::new(&KEY).expect("key"),
        &Claims {
            sub: user.into(),
            name: name.into(),
            caps,
            exp: now + 3600,
            iat: Some(now),
            guest: false,
        },
    )
}

/// A viewer's socket, with what it got before the test looked.
struct Viewer {
    ws: Ws,
    viewers_in_hello: u64,
    history: Vec<spotter_protocol::ChatMessage>,
}

async fn connect(http: SocketAddr) -> Viewer {
    let mut ws = ws_connect(http, "").await;
    let viewers_in_hello = match recv(&mut ws).await {
        ServerMessage::Hello { viewers, chat, .. } => {
            assert!(chat.expect("chat is on: hello says so").guests);
            viewers
        }
        other => panic!("expected hello, got {other:?}"),
    };
    let history = match recv(&mut ws).await {
        ServerMessage::ChatHistory { messages } => messages,
        other => panic!("expected chat_history right after hello, got {other:?}"),
    };
    Viewer {
        ws,
        viewers_in_hello,
        history,
    }
}

async fn send(ws: &mut Ws, json: &str) {
    ws.send(Message::Text(json.into())).await.expect("send");
}

/// Reads until the close frame; returns its code and reason, and the messages before it.
async fn closed(ws: &mut Ws) -> (u16, String, Vec<ServerMessage>) {
    let mut before = Vec::new();
    loop {
        match timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string(), before)
            }
            Some(Ok(Message::Text(t))) => {
                before.push(serde_json::from_str(t.as_str()).expect("a ServerMessage"))
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Authenticates; returns the end of the user's ban when the session says they are banned.
async fn auth(ws: &mut Ws, user: &str, name: &str, moderator: bool) -> Option<u64> {
    send(
        ws,
        &format!(
            r#"{{"kind":"auth","token":"{}"}}"#,
            token(user, name, moderator)
        ),
    )
    .await;
    match recv(ws).await {
        ServerMessage::Session {
            user: u,
            token,
            banned_until_ms,
            ..
        } => {
            assert_eq!((u.id.as_str(), u.moderate, token), (user, moderator, None));
            banned_until_ms
        }
        other => panic!("expected session, got {other:?}"),
    }
}

/// Posts and waits for `said`; returns the message id.
async fn say(ws: &mut Ws, text: &str, nonce: &str) -> String {
    let msg = serde_json::json!({"kind": "say", "text": text, "nonce": nonce}).to_string();
    send(ws, &msg).await;
    loop {
        match recv(ws).await {
            ServerMessage::Said { nonce: n, id } => {
                assert_eq!(n.as_deref(), Some(nonce));
                return id;
            }
            // Its own message may come back from the broker first.
            ServerMessage::Chat { .. } => continue,
            other => panic!("expected said, got {other:?}"),
        }
    }
}

async fn next_chat(ws: &mut Ws) -> spotter_protocol::ChatMessage {
    match recv(ws).await {
        ServerMessage::Chat { message } => message,
        other => panic!("expected chat, got {other:?}"),
    }
}

async fn refused(ws: &mut Ws, json: &str) -> (Option<String>, RefusalCode) {
    send(ws, json).await;
    match recv(ws).await {
        ServerMessage::Refused { nonce, code, .. } => (nonce, code),
        other => panic!("expected refused for {json}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_moderation_and_bans_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let bridge = start_bridge(dir.path()).await;
    let http = bridge.http;

    let mut alice = connect(http).await;
    let mut bob = connect(http).await;
    let mut moder = connect(http).await;
    assert_eq!(moder.viewers_in_hello, 3);
    assert!(alice.history.is_empty());
    // The viewer count reaches those already watching (within the 2 s tick).
    loop {
        match timeout(WAIT, alice.ws.next()).await.expect("count in time") {
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerMessage::Viewers { count: 3 }) = serde_json::from_str(t.as_str()) {
                    break;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }

    // Not signed in: refused, nobody sees it.
    assert_eq!(
        refused(&mut alice.ws, r#"{"kind":"say","text":"hi","nonce":"n0"}"#).await,
        (Some("n0".into()), RefusalCode::Unauthenticated)
    );
    // A forged moderator token is an error, and the socket stays open.
    let forged = sign(
        &ChatKey::new(&[9u8; 32]).expect("key"),
        &Claims {
            sub: "alice".into(),
            name: "Alice".into(),
            caps: vec![Capability::Send, Capability::Moderate],
            exp: u64::MAX / 2000,
            iat: None,
            guest: false,
        },
    );
    send(
        &mut alice.ws,
        &format!(r#"{{"kind":"auth","token":"{forged}"}}"#),
    )
    .await;
    match recv(&mut alice.ws).await {
        ServerMessage::Error { message } => {
            assert_eq!(message, "token refused: signature does not match")
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(auth(&mut alice.ws, "alice", "Alice", false).await, None);
    auth(&mut bob.ws, "bob", "Bob", false).await;
    auth(&mut moder.ws, "mod1", "Mod", true).await;

    // A message reaches the other viewer and the moderator.
    let first = say(&mut alice.ws, "hello bob", "c1").await;
    for ws in [&mut bob.ws, &mut moder.ws] {
        let m = next_chat(ws).await;
        assert_eq!(
            (m.id.as_str(), m.text.as_str()),
            (first.as_str(), "hello bob")
        );
        assert_eq!(
            (m.user.id.as_str(), m.user.name.as_str()),
            ("alice", "Alice")
        );
        assert!(!m.user.moderator && !m.user.guest);
    }
    assert_eq!(
        next_chat(&mut alice.ws).await.id,
        first,
        "the sender gets it too"
    );

    // Markup is delivered as the text it is: escaping is the page's job.
    let script = "<script>alert(1)</script>";
    let second = say(&mut alice.ws, script, "c2").await;
    assert_eq!(next_chat(&mut bob.ws).await.text, script);
    assert_eq!(next_chat(&mut moder.ws).await.id, second);
    assert_eq!(next_chat(&mut alice.ws).await.id, second);

    // Only a moderator may delete; the deletion reaches everyone.
    assert_eq!(
        refused(
            &mut bob.ws,
            &format!(r#"{{"kind":"delete","id":"{first}"}}"#)
        )
        .await,
        (None, RefusalCode::NotAllowed)
    );
    send(
        &mut moder.ws,
        &format!(r#"{{"kind":"delete","id":"{first}"}}"#),
    )
    .await;
    for ws in [&mut alice.ws, &mut bob.ws, &mut moder.ws] {
        assert_eq!(
            recv(ws).await,
            ServerMessage::ChatDeleted { id: first.clone() }
        );
    }

    // A late joiner (a guest) gets the history without the deleted message.
    let mut carol = connect(http).await;
    let ids: Vec<&str> = carol.history.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [second.as_str()]);
    send(&mut carol.ws, r#"{"kind":"guest","name":"admin"}"#).await;
    assert!(matches!(
        recv(&mut carol.ws).await,
        ServerMessage::Refused {
            code: RefusalCode::BadName,
            ..
        }
    ));
    send(&mut carol.ws, r#"{"kind":"guest","name":"  Carol "}"#).await;
    match recv(&mut carol.ws).await {
        ServerMessage::Session { user, token, .. } => {
            assert!(user.guest && user.send && !user.moderate);
            assert!(user.id.starts_with("guest-"), "{}", user.id);
            assert_eq!(user.name, "Carol");
            assert!(token.is_some());
        }
        other => panic!("{other:?}"),
    }

    // A ban: everyone is told, the banned user's own socket too, then an error and 4003.
    send(
        &mut moder.ws,
        r#"{"kind":"ban","user":"alice","secs":600,"reason":"spam"}"#,
    )
    .await;
    let ban_end = match recv(&mut bob.ws).await {
        ServerMessage::Banned { user, until_ms } => {
            assert_eq!(user, "alice");
            assert!(until_ms > spotter_bridge::chat::now_ms() + 590_000);
            until_ms
        }
        other => panic!("{other:?}"),
    };
    let (code, reason, before) = closed(&mut alice.ws).await;
    assert_eq!(code, 4003);
    assert!(reason.starts_with("banned until 20"), "{reason}");
    let told = |m: &ServerMessage| matches!(m, ServerMessage::Banned { user, until_ms } if user == "alice" && *until_ms == ban_end);
    let banned_at = before.iter().position(told);
    let error_at = before.iter().position(|m| matches!(m, ServerMessage::Error { message } if message.contains("banned from this chat until 20") && message.ends_with(": spam")));
    assert!(
        matches!((banned_at, error_at), (Some(b), Some(e)) if b < e),
        "`banned` for herself, then the error: {before:?}"
    );
    // Back again: the session says she is banned and until when; reading is fine, posting is
    // refused.
    let mut alice = connect(http).await;
    assert_eq!(
        auth(&mut alice.ws, "alice", "Alice", false).await,
        Some(ban_end)
    );
    assert_eq!(
        refused(
            &mut alice.ws,
            r#"{"kind":"say","text":"let me in","nonce":"c3"}"#
        )
        .await,
        (Some("c3".into()), RefusalCode::Banned)
    );
    drop((alice, bob, moder, carol));
    bridge.stop().await;
    assert!(dir.path().join("state/bans.json").exists());

    // A new bridge with the same state_dir (and a new embedded broker, which lost its retained
    // messages) still refuses her.
    let bridge = start_bridge(dir.path()).await;
    let mut alice = connect(bridge.http).await;
    assert_eq!(
        auth(&mut alice.ws, "alice", "Alice", false).await,
        Some(ban_end)
    );
    assert_eq!(
        refused(
            &mut alice.ws,
            r#"{"kind":"say","text":"again","nonce":"c4"}"#
        )
        .await,
        (Some("c4".into()), RefusalCode::Banned)
    );
    let mut bob = connect(bridge.http).await;
    assert_eq!(auth(&mut bob.ws, "bob", "Bob", false).await, None);
    say(&mut bob.ws, "still here", "c5").await;
    drop((alice, bob));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_other_viewers_see_none_of_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let bridge = start_bridge(dir.path()).await;
    let http = bridge.http;
    let mut watcher = connect(http).await;
    let mut mallory = connect(http).await;
    auth(&mut mallory.ws, "mallory", "Mallory", false).await;

    let nope =
        |text: &str| serde_json::json!({"kind": "say", "text": text, "nonce": "x"}).to_string();
    for (text, code) in [
        ("x".repeat(501), RefusalCode::TooLong),
        ("bell\u{7} and\u{1b}[2J".into(), RefusalCode::ControlChars),
        ("null\u{0}byte".into(), RefusalCode::ControlChars),
        ("   ".into(), RefusalCode::Empty),
        ("buy SPAM now".into(), RefusalCode::BlockedWord),
    ] {
        assert_eq!(
            refused(&mut mallory.ws, &nope(&text)).await,
            (Some("x".into()), code)
        );
    }
    // A malformed message is answered and the socket stays open.
    send(&mut mallory.ws, r#"{"kind":"say","txt":"typo"}"#).await;
    match recv(&mut mallory.ws).await {
        ServerMessage::Error { message } => assert!(message.contains("txt"), "{message}"),
        other => panic!("{other:?}"),
    }
    // 500 characters is allowed (and her burst of 3 is now spent).
    let long = "é".repeat(500);
    say(&mut mallory.ws, &long, "ok1").await;
    say(&mut mallory.ws, "two", "ok2").await;
    say(&mut mallory.ws, "three", "ok3").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_chat(&mut watcher.ws).await.text);
    }
    assert_eq!(seen, [long.as_str(), "two", "three"]);

    // 10,000 messages written without reading a thing, then read: refused, then the error and
    // close 1008 "flooding" (the bridge reads the rest of the flood until the client's close,
    // rather than resetting the connection with it unread).
    for i in 0..10_000 {
        let m = Message::Text(nope(&format!("flood {i}")).into());
        mallory
            .ws
            .feed(m)
            .await
            .expect("the bridge reads the whole flood");
    }
    mallory.ws.flush().await.expect("flood flushed");
    let (code, reason, before) = closed(&mut mallory.ws).await;
    assert_eq!((code, reason.as_str()), (1008, "flooding"));
    let refusals = before
        .iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Refused {
                    code: RefusalCode::Rate,
                    ..
                }
            )
        })
        .count();
    // Closed at the 21st refusal or error within 10 s: the six above count too while they are
    // under 10 s old, so 14 of the flood's were refused, or up to 20 on a slow run.
    assert!((14..=20).contains(&refusals), "{refusals}: {before:?}");
    assert!(
        before
            .iter()
            .all(|m| !matches!(m, ServerMessage::Said { .. })),
        "a flood message was accepted: {before:?}"
    );
    assert!(
        matches!(before.last(), Some(ServerMessage::Error { message }) if message.starts_with("flooding")),
        "{before:?}"
    );

    // Invalid UTF-8 in a text frame: 1007.
    let mut bad = connect(http).await;
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    bad.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(closed(&mut bad.ws).await.0, 1007);
    // A binary frame: 1003.
    let mut bin = connect(http).await;
    bin.ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(closed(&mut bin.ws).await.0, 1003);

    // The bridge is up, and the watcher saw nothing of the flood: the next chat it gets is
    // this one.
    let mut carol = connect(http).await;
    auth(&mut carol.ws, "carol", "Carol", false).await;
    let id = say(&mut carol.ws, "after the storm", "c1").await;
    let next = next_chat(&mut watcher.ws).await;
    assert_eq!((next.id, next.text.as_str()), (id, "after the storm"));
    assert!(carol.history.iter().all(|m| !m.text.starts_with("flood")));
    // Counted for the operator (the flood closed the socket at the 21st refusal in 10 s).
    let (_, _, body) = http_get(http, "/metrics").await;
    let metrics = String::from_utf8(body).expect("utf8");
    assert!(
        sample(&metrics, "spotter_bridge_chat_refused_total") >= 21.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "spotter_bridge_chat_messages_total") >= 4.0,
        "{metrics}"
    );
    drop((watcher, mallory, bad, bin, carol));
    bridge.stop().await;
}
