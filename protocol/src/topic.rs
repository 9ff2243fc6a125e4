//! MQTT topic names: `spotter/v1/<studio>/<stream>/{status,events,onscreen,chat}`,
//! `spotter/v1/<studio>/<stream>/ban/<user>` and `spotter/v1/<studio>/stats`, kept within AWS IoT
//! Core's limit of 7 slashes (the deepest, a ban, has 5).

use std::fmt;

/// The fixed prefix of every Spotter topic.
pub const PREFIX: &str = "spotter/v1";

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Retained `online` / `offline` / `stopped`.
    Status,
    /// Product events (`new`, `update`, `end`).
    Events,
    /// Retained: what is on screen now.
    OnScreen,
    /// Periodic health of one studio box (no stream component).
    Stats,
    /// Chat messages and deletions (not retained).
    Chat,
    /// Retained: one user's ban (`.../ban/<user>`; the topic carries the user).
    Ban,
}

impl TopicKind {
    fn as_str(self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::Events => "events",
            TopicKind::OnScreen => "onscreen",
            TopicKind::Stats => "stats",
            TopicKind::Chat => "chat",
            TopicKind::Ban => "ban",
        }
    }
}

/// A parsed Spotter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The studio (for AWS IoT Core, usually the thing name).
    pub studio: String,
    /// The stream within the studio; `None` for [`TopicKind::Stats`].
    pub stream: Option<String>,
    /// What the topic carries.
    pub kind: TopicKind,
    /// The banned user, for [`TopicKind::Ban`] only.
    pub user: Option<String>,
}

/// Why a topic or a topic segment was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// A studio or stream name that cannot be a single topic level.
    #[error(
        "{field} {value:?} is not a valid topic segment: use 1-64 characters from [A-Za-z0-9_-]"
    )]
    BadSegment {
        /// `studio` or `stream`.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A user id that cannot be a single topic level.
    #[error("user id {0:?} is not valid: use 1-64 characters from [A-Za-z0-9_.@-]")]
    BadUser(String),
    /// A topic outside Spotter's namespace or of an unknown shape.
    #[error("topic {0:?} is not a spotter/v1 topic")]
    Foreign(String),
}

/// Checks one topic level: no wildcards, no slashes, nothing that needs escaping anywhere.
pub fn validate_segment(field: &'static str, value: &str) -> Result<(), TopicError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadSegment {
            field,
            value: value.to_owned(),
        })
    }
}

/// Checks a chat user id (a token's `sub`): one topic level, 1-64 characters of
/// `[A-Za-z0-9_.@-]`, so that no id can reach into another topic or be a wildcard.
pub fn validate_user_id(value: &str) -> Result<(), TopicError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadUser(value.to_owned()))
    }
}

impl Topic {
    /// A per-stream topic (status, events, onscreen, chat); for a ban, use [`Topic::ban`].
    pub fn stream(studio: &str, stream: &str, kind: TopicKind) -> Result<Self, TopicError> {
        validate_segment("studio", studio)?;
        validate_segment("stream", stream)?;
        Ok(Topic {
            studio: studio.to_owned(),
            stream: (kind != TopicKind::Stats).then(|| stream.to_owned()),
            kind,
            user: None,
        })
    }

    /// One user's retained ban topic in a stream.
    pub fn ban(studio: &str, stream: &str, user: &str) -> Result<Self, TopicError> {
        validate_user_id(user)?;
        let mut t = Topic::stream(studio, stream, TopicKind::Ban)?;
        t.user = Some(user.to_owned());
        Ok(t)
    }

    /// The studio's stats topic.
    pub fn stats(studio: &str) -> Result<Self, TopicError> {
        validate_segment("studio", studio)?;
        Ok(Topic {
            studio: studio.to_owned(),
            stream: None,
            kind: TopicKind::Stats,
            user: None,
        })
    }

    /// Parses a topic name received from a broker.
    pub fn parse(name: &str) -> Result<Self, TopicError> {
        let foreign = || TopicError::Foreign(name.to_owned());
        let rest = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(foreign)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [studio, "stats"] => Topic::stats(studio),
            [studio, stream, kind] => {
                let kind = match *kind {
                    "status" => TopicKind::Status,
                    "events" => TopicKind::Events,
                    "onscreen" => TopicKind::OnScreen,
                    "chat" => TopicKind::Chat,
                    _ => return Err(foreign()),
                };
                Topic::stream(studio, stream, kind)
            }
            [studio, stream, "ban", user] => Topic::ban(studio, stream, user),
            _ => Err(foreign()),
        }
    }

    /// The subscription filter for one kind of per-stream topic across all studios and streams.
    pub fn filter_all(kind: TopicKind) -> String {
        match kind {
            TopicKind::Stats => format!("{PREFIX}/+/stats"),
            TopicKind::Ban => format!("{PREFIX}/+/+/ban/+"),
            other => format!("{PREFIX}/+/+/{}", other.as_str()),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.stream, &self.user) {
            (Some(stream), Some(user)) => write!(
                f,
                "{PREFIX}/{}/{}/{}/{}",
                self.studio,
                stream,
                self.kind.as_str(),
                user
            ),
            (Some(stream), None) => write!(
                f,
                "{PREFIX}/{}/{}/{}",
                self.studio,
                stream,
                self.kind.as_str()
            ),
            (None, _) => write!(f, "{PREFIX}/{}/{}", self.studio, self.kind.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_stays_within_iot_core_slash_limit() {
        for kind in [
            TopicKind::Status,
            TopicKind::Events,
            TopicKind::OnScreen,
            TopicKind::Chat,
        ] {
            let t = Topic::stream("studio-1", "main", kind).expect("valid");
            let s = t.to_string();
            assert!(s.matches('/').count() <= 7, "{s}");
            assert_eq!(Topic::parse(&s).expect("parses"), t);
        }
        let stats = Topic::stats("studio-1").expect("valid");
        assert_eq!(stats.to_string(), "spotter/v1/studio-1/stats");
        assert_eq!(
            Topic::parse("spotter/v1/studio-1/stats").expect("parses"),
            stats
        );
    }

    #[test]
    fn refuses_wildcards_and_foreign_topics() {
        assert!(Topic::stream("a+b", "main", TopicKind::Events).is_err());
        assert!(Topic::stream("a", "#", TopicKind::Events).is_err());
        assert!(Topic::parse("other/v1/a/b/events").is_err());
        assert!(Topic::parse("spotter/v1/a/b/c/events").is_err());
        assert!(Topic::parse("spotter/v1/a/b/nonsense").is_err());
        assert!(Topic::parse("spotter/v1/a/b/ban").is_err());
        assert!(Topic::parse("spotter/v1/a/b/ban/u/x").is_err());
        assert!(Topic::parse("spotter/v1/a/b/ban/+").is_err());
    }

    #[test]
    fn ban_topics_carry_one_user_level() {
        let longest = "u".repeat(64);
        let t = Topic::ban("studio-1", "main", &longest).expect("valid");
        let s = t.to_string();
        assert_eq!(s, format!("spotter/v1/studio-1/main/ban/{longest}"));
        assert!(s.matches('/').count() <= 7, "{s}");
        assert_eq!(Topic::parse(&s).expect("parses"), t);
        let t = Topic::ban("a", "b", "alice.smith@shop-1_x").expect("mail-like ids are fine");
        assert_eq!(t.user.as_deref(), Some("alice.smith@shop-1_x"));
        for bad in ["", "a/b", "+", "#", "a b", "é", &"u".repeat(65)] {
            assert_eq!(
                Topic::ban("a", "b", bad),
                Err(TopicError::BadUser(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(Topic::filter_all(TopicKind::Ban), "spotter/v1/+/+/ban/+");
        assert_eq!(Topic::filter_all(TopicKind::Chat), "spotter/v1/+/+/chat");
    }
}
