//! MQTT topic names: `spotter/v1/<studio>/<stream>/{status,events,onscreen}` and
//! `spotter/v1/<studio>/stats`, kept within AWS IoT Core's limit of 7 slashes.

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
}

impl TopicKind {
    fn as_str(self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::Events => "events",
            TopicKind::OnScreen => "onscreen",
            TopicKind::Stats => "stats",
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

impl Topic {
    /// A per-stream topic (status, events, onscreen).
    pub fn stream(studio: &str, stream: &str, kind: TopicKind) -> Result<Self, TopicError> {
        validate_segment("studio", studio)?;
        validate_segment("stream", stream)?;
        Ok(Topic {
            studio: studio.to_owned(),
            stream: (kind != TopicKind::Stats).then(|| stream.to_owned()),
            kind,
        })
    }

    /// The studio's stats topic.
    pub fn stats(studio: &str) -> Result<Self, TopicError> {
        validate_segment("studio", studio)?;
        Ok(Topic {
            studio: studio.to_owned(),
            stream: None,
            kind: TopicKind::Stats,
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
                    _ => return Err(foreign()),
                };
                Topic::stream(studio, stream, kind)
            }
            _ => Err(foreign()),
        }
    }

    /// The subscription filter for one kind of per-stream topic across all studios and streams.
    pub fn filter_all(kind: TopicKind) -> String {
        match kind {
            TopicKind::Stats => format!("{PREFIX}/+/stats"),
            other => format!("{PREFIX}/+/+/{}", other.as_str()),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stream {
            Some(stream) => write!(
                f,
                "{PREFIX}/{}/{}/{}",
                self.studio,
                stream,
                self.kind.as_str()
            ),
            None => write!(f, "{PREFIX}/{}/{}", self.studio, self.kind.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_stays_within_iot_core_slash_limit() {
        for kind in [TopicKind::Status, TopicKind::Events, TopicKind::OnScreen] {
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
    }
}
