//! Chat on the viewer socket and through the broker: who wrote what, moderation, and the MQTT
//! payloads (`spotter/v1/<studio>/<stream>/chat`, retained `.../ban/<user>`) that carry chat
//! between bridge replicas.
//!
//! The viewer-side messages themselves are variants of [`crate::viewer::ServerMessage`] and
//! [`crate::viewer::ClientMessage`]; the types here are their parts and the broker's payloads.

use serde::{Deserialize, Serialize};

use crate::event::{check_id, DecodeError};
use crate::topic::validate_user_id;
use crate::PROTOCOL_VERSION;

/// Hard cap on a message's text in characters, whatever a bridge's `max_chars` (a decoder's bound
/// on what any replica may publish).
pub const MAX_TEXT_CHARS: usize = 2000;
/// Display names: 1 to this many characters.
pub const MAX_NAME_CHARS: usize = 32;
/// A ban's reason: at most this many characters.
pub const MAX_REASON_CHARS: usize = 200;
/// A client's nonce: 1 to this many characters.
pub const MAX_NONCE_CHARS: usize = 64;
/// Longest ban, seconds (30 days).
pub const MAX_BAN_SECS: u64 = 30 * 24 * 3600;
/// Largest chat or ban payload accepted from the broker.
pub const MAX_CHAT_BYTES: usize = 16 * 1024;

/// The author of a message, as every viewer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUser {
    /// User id (the token's `sub`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether the author may moderate (pages may badge them).
    pub moderator: bool,
    /// Whether the author is a guest (a name chosen on the page, not a shop account).
    pub guest: bool,
}

/// One accepted chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Unique id, chosen by the bridge that accepted it.
    pub id: String,
    /// Who wrote it.
    pub user: ChatUser,
    /// The text, verbatim: escaping is the page's job.
    pub text: String,
    /// When it was accepted, UTC ms.
    pub at_ms: u64,
}

/// What an authenticated connection may do (`session.user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionUser {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// May post.
    pub send: bool,
    /// May delete messages and ban users.
    pub moderate: bool,
    /// A guest of this bridge.
    pub guest: bool,
}

impl SessionUser {
    /// The author as shown on this user's messages.
    pub fn author(&self) -> ChatUser {
        ChatUser {
            id: self.id.clone(),
            name: self.name.clone(),
            moderator: self.moderate,
            guest: self.guest,
        }
    }
}

/// `hello.chat`: what a connection may do in chat before it authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatAbility {
    /// Whether `guest` is answered with a guest token.
    pub guests: bool,
}

/// Why something a viewer sent to the chat was refused (`refused.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// No `auth` yet.
    Unauthenticated,
    /// The token lacks the capability (`send` or `moderate`).
    NotAllowed,
    /// Over `max_chars`.
    TooLong,
    /// Nothing but white space.
    Empty,
    /// Control characters in the text.
    ControlChars,
    /// A blocked word.
    BlockedWord,
    /// The user's own rate.
    Rate,
    /// The stream's rate (everybody's messages together).
    StreamRate,
    /// The user is banned.
    Banned,
    /// `guest` while guests are off.
    GuestsOff,
    /// A guest name that is empty, too long, reserved or blocked.
    BadName,
    /// `delete` of a message the bridge does not hold.
    NoSuchMessage,
    /// The broker is away: nothing can be published now (an addition to the issue's list).
    Unavailable,
}

impl RefusalCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Unauthenticated => "unauthenticated",
            RefusalCode::NotAllowed => "not_allowed",
            RefusalCode::TooLong => "too_long",
            RefusalCode::Empty => "empty",
            RefusalCode::ControlChars => "control_chars",
            RefusalCode::BlockedWord => "blocked_word",
            RefusalCode::Rate => "rate",
            RefusalCode::StreamRate => "stream_rate",
            RefusalCode::Banned => "banned",
            RefusalCode::GuestsOff => "guests_off",
            RefusalCode::BadName => "bad_name",
            RefusalCode::NoSuchMessage => "no_such_message",
            RefusalCode::Unavailable => "unavailable",
        }
    }
}

/// A payload on `spotter/v1/<studio>/<stream>/chat` (QoS 1, not retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChatEvent {
    /// A message a bridge accepted.
    Message {
        /// Wire version.
        v: u32,
        /// The message, its fields inline.
        #[serde(flatten)]
        message: ChatMessage,
    },
    /// A moderator deleted a message.
    Delete {
        /// Wire version.
        v: u32,
        /// The message's id.
        id: String,
        /// The moderator's user id.
        by: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_version(v: u32) -> Result<(), DecodeError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(invalid(
            "v",
            format!("version {v} is not supported (this build speaks {PROTOCOL_VERSION})"),
        ))
    }
}

fn check_user(field: &'static str, value: &str) -> Result<(), DecodeError> {
    validate_user_id(value).map_err(|e| invalid(field, e.to_string()))
}

/// Checks a display name: 1-[`MAX_NAME_CHARS`] characters, no control characters, not blank.
pub fn check_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > MAX_NAME_CHARS {
        return Err(format!(
            "must be 1-{MAX_NAME_CHARS} characters, not only spaces (got {n})"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

impl ChatMessage {
    /// Checks what serde cannot: ids, name, text bounds.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_id("id", &self.id)?;
        check_user("user.id", &self.user.id)?;
        check_name(&self.user.name).map_err(|r| invalid("user.name", r))?;
        let n = self.text.chars().count();
        if self.text.trim().is_empty() || n > MAX_TEXT_CHARS {
            return Err(invalid(
                "text",
                format!("must be 1-{MAX_TEXT_CHARS} characters, not only spaces (got {n})"),
            ));
        }
        if self.text.chars().any(char::is_control) {
            return Err(invalid("text", "must not contain control characters"));
        }
        Ok(())
    }
}

impl ChatEvent {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            ChatEvent::Message { v, message } => {
                check_version(*v)?;
                message.validate()
            }
            ChatEvent::Delete { v, id, by } => {
                check_version(*v)?;
                check_id("id", id)?;
                check_user("by", by)
            }
        }
    }

    /// Decodes and validates a payload received from the broker.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_CHAT_BYTES {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let event: ChatEvent = serde_json::from_slice(payload)?;
        event.validate()?;
        Ok(event)
    }

    /// Encodes for publishing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ChatEvent always serializes: no maps")
    }
}

/// The retained payload on `spotter/v1/<studio>/<stream>/ban/<user>`; an empty retained payload
/// clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// Wire version.
    pub v: u32,
    /// The banned user's id (also the topic's last level).
    pub user: String,
    /// End of the ban, UTC ms.
    pub until_ms: u64,
    /// Why, for moderators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The moderator's user id.
    pub by: String,
}

impl Ban {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.v)?;
        check_user("user", &self.user)?;
        check_user("by", &self.by)?;
        if let Some(reason) = &self.reason {
            let n = reason.chars().count();
            if n > MAX_REASON_CHARS {
                return Err(invalid(
                    "reason",
                    format!("must be at most {MAX_REASON_CHARS} characters (got {n})"),
                ));
            }
            if reason.chars().any(char::is_control) {
                return Err(invalid("reason", "must not contain control characters"));
            }
        }
        Ok(())
    }

    /// Decodes and validates a non-empty retained payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_CHAT_BYTES {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let ban: Ban = serde_json::from_slice(payload)?;
        ban.validate()?;
        Ok(ban)
    }

    /// Encodes for publishing (retained).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Ban always serializes: no maps")
    }
}

/// One stream's ban as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBan {
    /// The studio.
    pub studio: String,
    /// The stream.
    pub stream: String,
    /// The ban as published.
    pub ban: Ban,
}

/// The bridge's `bans.json`: the bans in force, republished (retained) at start so they survive
/// a restart of the embedded broker, whose retained messages die with the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanFile {
    /// File format version.
    pub v: u32,
    /// The bans.
    pub bans: Vec<StoredBan>,
}

impl BanFile {
    /// Decodes and validates the file's contents (every ban as if received from the broker).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let file: BanFile = serde_json::from_slice(bytes)?;
        check_version(file.v)?;
        for b in &file.bans {
            crate::topic::validate_segment("studio", &b.studio)
                .map_err(|e| invalid("bans.studio", e.to_string()))?;
            crate::topic::validate_segment("stream", &b.stream)
                .map_err(|e| invalid("bans.stream", e.to_string()))?;
            b.ban.validate()?;
        }
        Ok(file)
    }

    /// Encodes, pretty-printed for people who look at the file.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a BanFile always serializes: no maps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn message() -> ChatMessage {
        ChatMessage {
            id: "m-1".into(),
            user: ChatUser {
                id: "u1".into(),
                name: "Alice".into(),
                moderator: false,
                guest: true,
            },
            text: "hi <b>there</b>".into(),
            at_ms: 1_764_072_000_000,
        }
    }

    #[test]
    fn chat_message_payload_golden() {
        let ev = ChatEvent::Message {
            v: 1,
            message: message(),
        };
        let golden = include_str!("../tests/golden/chat_message.json").trim();
        assert_eq!(String::from_utf8(ev.encode()).expect("utf8"), golden);
        assert_eq!(ChatEvent::decode(golden.as_bytes()).expect("decodes"), ev);
    }

    #[test]
    fn chat_delete_and_ban_payload_golden() {
        let del = ChatEvent::Delete {
            v: 1,
            id: "m-1".into(),
            by: "mod1".into(),
        };
        let golden = include_str!("../tests/golden/chat_delete.json").trim();
        assert_eq!(String::from_utf8(del.encode()).expect("utf8"), golden);
        assert_eq!(ChatEvent::decode(golden.as_bytes()).expect("decodes"), del);

        let ban = Ban {
            v: 1,
            user: "u1".into(),
            until_ms: 1_764_072_600_000,
            reason: Some("spam".into()),
            by: "mod1".into(),
        };
        let golden = include_str!("../tests/golden/chat_ban.json").trim();
        assert_eq!(String::from_utf8(ban.encode()).expect("utf8"), golden);
        assert_eq!(Ban::decode(golden.as_bytes()).expect("decodes"), ban);
    }

    #[test]
    fn decoders_name_the_field_at_fault() {
        let field = |r: Result<ChatEvent, DecodeError>| match r {
            Err(DecodeError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut m = message();
        m.text = "a\u{7}b".into();
        let enc = |m: ChatMessage, v: u32| ChatEvent::Message { v, message: m }.encode();
        assert_eq!(field(ChatEvent::decode(&enc(m, 1))), "text");
        assert_eq!(field(ChatEvent::decode(&enc(message(), 2))), "v");
        let mut m = message();
        m.user.id = "a/b".into();
        assert_eq!(field(ChatEvent::decode(&enc(m, 1))), "user.id");
        let mut m = message();
        m.user.name = "x".repeat(33);
        assert_eq!(field(ChatEvent::decode(&enc(m, 1))), "user.name");
        let mut m = message();
        m.text = "x".repeat(MAX_TEXT_CHARS + 1);
        assert!(ChatEvent::decode(&enc(m, 1)).is_err());
        match ChatEvent::decode(br#"{"v":1,"kind":"delete","id":"m"}"#) {
            Err(DecodeError::Json(e)) => assert!(e.to_string().contains("by"), "{e}"),
            other => panic!("{other:?}"),
        }
        match Ban::decode(br#"{"v":1,"user":"u+1","until_ms":1,"by":"m"}"#) {
            Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "user"),
            other => panic!("{other:?}"),
        }
        assert!(Ban::decode(&vec![b' '; MAX_CHAT_BYTES + 1]).is_err());
    }

    #[test]
    fn refusal_codes_are_written_as_the_wire_says() {
        for code in [
            RefusalCode::Unauthenticated,
            RefusalCode::NotAllowed,
            RefusalCode::TooLong,
            RefusalCode::ControlChars,
            RefusalCode::BlockedWord,
            RefusalCode::StreamRate,
            RefusalCode::GuestsOff,
            RefusalCode::BadName,
            RefusalCode::NoSuchMessage,
            RefusalCode::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&code).expect("json"),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn ban_file_round_trips_and_refuses_bad_entries() {
        let file = BanFile {
            v: 1,
            bans: vec![StoredBan {
                studio: "demo".into(),
                stream: "main".into(),
                ban: Ban {
                    v: 1,
                    user: "u1".into(),
                    until_ms: 5,
                    reason: None,
                    by: "m".into(),
                },
            }],
        };
        assert_eq!(BanFile::decode(&file.encode()).expect("decodes"), file);
        let mut bad = file.clone();
        bad.bans[0].stream = "a/b".into();
        assert!(BanFile::decode(&bad.encode()).is_err());
        assert!(BanFile::decode(b"{}").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("Alice").is_ok());
        assert!(check_name(&"é".repeat(32)).is_ok());
        assert!(check_name(&"é".repeat(33)).is_err());
        assert!(check_name("   ").is_err());
        assert!(check_name("a\nb").is_err());
    }
}
