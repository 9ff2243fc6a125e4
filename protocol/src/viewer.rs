//! Messages on the viewer WebSocket (`/ws/<studio>/<stream>`), bridge to browser and back.
//!
//! The bridge sends `hello` first (the hub's epoch and offset, and what is on screen now), then one
//! `event` per product event with its offset. The epoch is the agent's session and an event's
//! offset is the agent's `seq` (see [`crate::event`]), so a position means the same on every
//! bridge replica. Offsets increase but may skip numbers (events a bridge refused). A client keeps
//! the epoch and one past the last offset it saw, and reconnects with `?epoch=..&offset=..`: it
//! gets what it missed, or `hello` with `resync: true` when that is not held.
//!
//! Chat shares the socket: `chat_history` follows `hello`, then `chat`, `chat_deleted`, `banned`
//! and `viewers` arrive among the events; a client authenticates with `auth` (or asks for a guest
//! token with `guest`) and posts with `say`. A malformed client message is answered with `error`
//! and the socket stays open.

use serde::{Deserialize, Serialize};

use crate::chat::{ChatAbility, ChatMessage, RefusalCode, SessionUser};
use crate::event::{BBox, EventType};

/// A catalog product as a viewer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductInfo {
    /// Catalog SKU.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price as written in the catalog (a decimal string, never a float).
    pub price: String,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Shop link.
    pub url: String,
    /// Content-hashed image URL on the bridge, if the product has an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A product event enriched with the catalog: what the viewer page renders as a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// Lifecycle step.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Stable id of the appearance.
    pub event_id: String,
    /// The agent's sequence number.
    pub seq: u64,
    /// Recognition confidence.
    pub score: f32,
    /// Where in the frame.
    pub bbox: BBox,
    /// Capture time, UTC ms.
    pub captured_at_ms: u64,
    /// Presentation time in the stream, ms.
    pub pts_ms: u64,
    /// Capture time of the frame in which this appearance was first recognised (its `new`), UTC
    /// ms, so a late joiner's page shows the card from the frame where it appeared. Set by the
    /// bridge's hub; 0 when decoded from a bridge that predates it.
    #[serde(default)]
    pub appeared_at_ms: u64,
    /// Catalog data.
    pub product: ProductInfo,
}

/// Bridge to browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on a connection, and after a resync.
    Hello {
        /// Wire version.
        protocol: u32,
        /// The hub's epoch: the agent session whose events follow (changes when its numbering
        /// restarts).
        epoch: String,
        /// The connection has every event before this offset (from this `hello` and its client's
        /// own history); every event it is sent has an offset at least this.
        offset: u64,
        /// Whether the client asked to recover and could not: drop local state.
        resync: bool,
        /// What is on screen now; on a recovery, possibly older than what the client holds, so
        /// a client applies it before the events that follow (empty when the client is ahead of
        /// the bridge).
        onscreen: Vec<Card>,
        /// Viewers of this stream on this bridge now.
        #[serde(default)]
        viewers: u64,
        /// What this connection may do in chat before it authenticates; absent when the stream
        /// has no chat (the page then shows none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<ChatAbility>,
    },
    /// One product event.
    Event {
        /// The event's position in the epoch: the agent's `seq`.
        offset: u64,
        /// The card.
        card: Card,
    },
    /// A problem with what the client sent (malformed message, refused token, ban); the
    /// connection may be closed after it.
    Error {
        /// Why.
        message: String,
    },
    /// The stream's viewer count changed (sent at most every 2 s a stream).
    Viewers {
        /// Viewers of this stream on this bridge now.
        count: u64,
    },
    /// The answer to `auth` or `guest`: who this connection is in chat.
    Session {
        /// The user and their capabilities.
        user: SessionUser,
        /// When the token expires, UTC ms.
        expires_at_ms: u64,
        /// A guest token this bridge issued (only in the answer to `guest`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// End of the user's ban from this stream's chat, UTC ms; present only while banned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        banned_until_ms: Option<u64>,
    },
    /// The stream's last messages, oldest first, without deleted ones (right after `hello`).
    ChatHistory {
        /// The messages.
        messages: Vec<ChatMessage>,
    },
    /// A new chat message.
    Chat {
        /// The message.
        message: ChatMessage,
    },
    /// To the sender only: its message was accepted (it also arrives as `chat`).
    Said {
        /// The client's nonce, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
        /// The accepted message's id.
        id: String,
    },
    /// A moderator deleted a message.
    ChatDeleted {
        /// The message's id.
        id: String,
    },
    /// A moderator banned a user.
    Banned {
        /// The user's id.
        user: String,
        /// End of the ban, UTC ms.
        until_ms: u64,
    },
    /// To the sender only: what it sent to the chat was refused (nobody else saw it).
    Refused {
        /// The client's nonce, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
        /// Why, for the page.
        code: RefusalCode,
        /// Why, for a person.
        message: String,
    },
}

impl ServerMessage {
    /// Encodes as one WebSocket text frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("ServerMessage always serializes")
    }
}

/// Browser to bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Keep-alive; answered by nothing.
    Ping,
    /// Presents a chat token; answered by `session` or `error`.
    Auth {
        /// The JWT.
        token: String,
    },
    /// Asks for a guest token; answered by `session` (with `token`) or `refused`.
    Guest {
        /// The display name wanted.
        name: String,
    },
    /// Posts a message; answered by `said` or `refused`.
    Say {
        /// The text.
        text: String,
        /// Echoed in `said`/`refused` so the page can match its pending message.
        #[serde(default)]
        nonce: Option<String>,
    },
    /// Moderator: deletes a message.
    Delete {
        /// The message's id.
        id: String,
    },
    /// Moderator: bans a user from this stream's chat.
    Ban {
        /// The user's id.
        user: String,
        /// How long, 1 s to 30 days.
        secs: u64,
        /// Why (at most 200 characters).
        #[serde(default)]
        reason: Option<String>,
    },
}

/// `GET /api/streams/<studio>/<stream>`: what the viewer page needs to play a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The studio.
    pub studio: String,
    /// The stream within the studio.
    pub stream: String,
    /// What the page plays (an HLS playlist URL), or `null` while the stream has none.
    pub video_url: Option<String>,
}

impl StreamInfo {
    /// Encodes as a JSON response body.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("StreamInfo always serializes")
    }
}

/// The JSON body of an HTTP API error (`404` for an unknown stream, and the like).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person to read.
    pub error: String,
}

impl ApiError {
    /// Encodes as a JSON response body.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("ApiError always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_message_golden() {
        let msg = ServerMessage::Event {
            offset: 9,
            card: Card {
                kind: EventType::New,
                event_id: "e-1".into(),
                seq: 9,
                score: 0.5,
                bbox: BBox::FULL,
                captured_at_ms: 1000,
                pts_ms: 40,
                appeared_at_ms: 960,
                product: ProductInfo {
                    sku: "MUG-001".into(),
                    name: "Enamel camp mug".into(),
                    price: "14.00".into(),
                    currency: "USD".into(),
                    url: "https://shop.example/mug-001".into(),
                    image: Some("/img/0123abcd/mug-front.png".into()),
                },
            },
        };
        let golden = include_str!("../tests/golden/viewer_event.json").trim();
        assert_eq!(msg.encode(), golden);
        let back: ServerMessage = serde_json::from_str(golden).expect("decodes");
        assert_eq!(back, msg);
    }

    fn golden(msg: &ServerMessage, text: &str) {
        let text = text.trim();
        assert_eq!(msg.encode(), text);
        let back: ServerMessage = serde_json::from_str(text).expect("decodes");
        assert_eq!(&back, msg);
    }

    fn chat_message() -> ChatMessage {
        ChatMessage {
            id: "m-1".into(),
            user: crate::chat::ChatUser {
                id: "u1".into(),
                name: "Alice".into(),
                moderator: false,
                guest: true,
            },
            text: "hi".into(),
            at_ms: 1_764_072_000_000,
        }
    }

    #[test]
    fn chat_server_messages_golden() {
        golden(
            &ServerMessage::Hello {
                protocol: 1,
                epoch: "5f3a9c0e7b1d2468".into(),
                offset: 4,
                resync: false,
                onscreen: Vec::new(),
                viewers: 12,
                chat: Some(ChatAbility { guests: true }),
            },
            include_str!("../tests/golden/viewer_hello.json"),
        );
        golden(
            &ServerMessage::Hello {
                protocol: 1,
                epoch: "5f3a9c0e7b1d2468".into(),
                offset: 4,
                resync: false,
                onscreen: Vec::new(),
                viewers: 12,
                chat: None,
            },
            include_str!("../tests/golden/viewer_hello_no_chat.json"),
        );
        golden(
            &ServerMessage::Viewers { count: 12 },
            include_str!("../tests/golden/viewer_viewers.json"),
        );
        golden(
            &ServerMessage::Session {
                user: SessionUser {
                    id: "guest-1f".into(),
                    name: "Alice".into(),
                    send: true,
                    moderate: false,
                    guest: true,
                },
                expires_at_ms: 1_764_115_200_000,
                token: Some("h.p.s".into()),
                banned_until_ms: None,
            },
            include_str!("../tests/golden/viewer_session.json"),
        );
        golden(
            &ServerMessage::Session {
                user: SessionUser {
                    id: "u1".into(),
                    name: "Alice".into(),
                    send: true,
                    moderate: false,
                    guest: false,
                },
                expires_at_ms: 1_764_115_200_000,
                token: None,
                banned_until_ms: Some(1_764_072_600_000),
            },
            include_str!("../tests/golden/viewer_session_banned.json"),
        );
        golden(
            &ServerMessage::ChatHistory {
                messages: vec![chat_message()],
            },
            include_str!("../tests/golden/viewer_chat_history.json"),
        );
        golden(
            &ServerMessage::Chat {
                message: chat_message(),
            },
            include_str!("../tests/golden/viewer_chat.json"),
        );
        golden(
            &ServerMessage::Said {
                nonce: Some("c1".into()),
                id: "m-1".into(),
            },
            include_str!("../tests/golden/viewer_said.json"),
        );
        golden(
            &ServerMessage::ChatDeleted { id: "m-1".into() },
            include_str!("../tests/golden/viewer_chat_deleted.json"),
        );
        golden(
            &ServerMessage::Banned {
                user: "u1".into(),
                until_ms: 1_764_072_600_000,
            },
            include_str!("../tests/golden/viewer_banned.json"),
        );
        golden(
            &ServerMessage::Refused {
                nonce: Some("c1".into()),
                code: RefusalCode::Rate,
                message: "slow down: at most 1 message a second".into(),
            },
            include_str!("../tests/golden/viewer_refused.json"),
        );
    }

    #[test]
    fn a_hello_from_an_older_bridge_still_decodes_as_one_without_chat() {
        let old =
            r#"{"kind":"hello","protocol":1,"epoch":"e","offset":0,"resync":false,"onscreen":[]}"#;
        match serde_json::from_str::<ServerMessage>(old).expect("decodes") {
            ServerMessage::Hello { viewers, chat, .. } => {
                assert_eq!((viewers, chat), (0, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_messages_decode_and_name_what_is_wrong() {
        let ok = |s: &str| serde_json::from_str::<ClientMessage>(s).expect(s);
        assert_eq!(
            ok(r#"{"kind":"auth","token":"a.b.c"}"#),
            ClientMessage::Auth {
                token: "a.b.c".into()
            }
        );
        assert_eq!(
            ok(r#"{"kind":"say","text":"hello","nonce":"c1"}"#),
            ClientMessage::Say {
                text: "hello".into(),
                nonce: Some("c1".into())
            }
        );
        assert_eq!(
            ok(r#"{"kind":"say","text":"hello"}"#),
            ClientMessage::Say {
                text: "hello".into(),
                nonce: None
            }
        );
        assert_eq!(
            ok(r#"{"kind":"ban","user":"u1","secs":600,"reason":"spam"}"#),
            ClientMessage::Ban {
                user: "u1".into(),
                secs: 600,
                reason: Some("spam".into())
            }
        );
        assert_eq!(
            ok(r#"{"kind":"guest","name":"Alice"}"#),
            ClientMessage::Guest {
                name: "Alice".into()
            }
        );
        assert_eq!(
            ok(r#"{"kind":"delete","id":"m-1"}"#),
            ClientMessage::Delete { id: "m-1".into() }
        );
        for (bad, names) in [
            (r#"{"kind":"say","txt":"x"}"#, "txt"),
            (r#"{"kind":"say","text":5}"#, "integer"),
            (r#"{"kind":"shout"}"#, "shout"),
            (r#"{"kind":"ban","user":"u1","secs":-1}"#, "-1"),
        ] {
            let err = serde_json::from_str::<ClientMessage>(bad).expect_err(bad);
            assert!(err.to_string().contains(names), "{bad}: {err}");
        }
    }

    #[test]
    fn stream_info_writes_null_video_url() {
        let info = StreamInfo {
            studio: "demo".into(),
            stream: "main".into(),
            video_url: None,
        };
        assert_eq!(
            info.encode(),
            r#"{"studio":"demo","stream":"main","video_url":null}"#
        );
        let back: StreamInfo = serde_json::from_str(&info.encode()).expect("decodes");
        assert_eq!(back, info);
        let err = ApiError {
            error: "no such stream".into(),
        };
        assert_eq!(err.encode(), r#"{"error":"no such stream"}"#);
    }
}
