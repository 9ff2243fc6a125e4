//! Product events: what the agent's tracker says about one appearance of one product.
//!
//! One appearance has one stable `event_id`; its events go `new`, then any number of `update`,
//! then `end`. `seq` increases by one for every event a stream publishes, so a consumer can drop
//! duplicates (same `event_id` and a `seq` it has already seen) after redelivery.
//!
//! `session` names the numbering `seq` belongs to: the agent creates it with its outbox's
//! sequence and keeps it as long as the sequence continues (across restarts), so a new session
//! means the numbering restarted. Together they are a position that means the same to every
//! consumer: the bridge's replicas use the session as their hub's epoch and `seq` as the offset.
//! Agents that predate it send no session; their events belong to [`LEGACY_SESSION`].

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// The session of events and snapshots that carry none (an agent that predates sessions).
pub const LEGACY_SESSION: &str = "legacy";

/// Largest payload accepted on an event topic (AWS IoT Core's limit is 128 KB; events are tiny).
pub const MAX_EVENT_BYTES: usize = 4096;

/// Where an event is in the appearance's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The product has been confirmed on screen.
    New,
    /// Its box or score changed significantly, or a heartbeat while it stays.
    Update,
    /// It has been gone long enough to end the appearance.
    End,
}

/// A bounding box `[x0, y0, x1, y1]` in coordinates normalised to the frame (0..=1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox(pub [f32; 4]);

impl BBox {
    /// The whole frame.
    pub const FULL: BBox = BBox([0.0, 0.0, 1.0, 1.0]);

    fn validate(&self) -> Result<(), String> {
        let [x0, y0, x1, y1] = self.0;
        if !self
            .0
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
        {
            return Err(format!(
                "coordinates must be within 0..=1, got {:?}",
                self.0
            ));
        }
        if x0 >= x1 || y0 >= y1 {
            return Err(format!("needs x0 < x1 and y0 < y1, got {:?}", self.0));
        }
        Ok(())
    }
}

/// One product event, as published on `spotter/v1/<studio>/<stream>/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductEvent {
    /// Payload version, always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Lifecycle step.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Stable id of this appearance (the same for its `new`, `update` and `end`).
    pub event_id: String,
    /// Per-stream sequence number, increasing by one for each event published.
    pub seq: u64,
    /// The agent session `seq` counts in: changes exactly when the numbering restarts (a new or
    /// wiped outbox). Always sent by this agent; absent from older agents' events, which belong
    /// to [`LEGACY_SESSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The catalog product.
    pub sku: String,
    /// Recognition confidence, 0..=1.
    pub score: f32,
    /// Where in the frame.
    pub bbox: BBox,
    /// Capture time of the frame this came from, UTC milliseconds since the Unix epoch.
    pub captured_at_ms: u64,
    /// Presentation time of that frame in the stream, milliseconds.
    pub pts_ms: u64,
}

/// Why a payload is not a valid event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Over [`MAX_EVENT_BYTES`].
    #[error("payload is {0} bytes, over the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not JSON of the right shape; serde's message names the field, line and column.
    #[error("malformed payload: {0}")]
    Json(serde_json::Error),
    /// JSON of the right shape with a value out of range.
    #[error("field `{field}`: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Json(e)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks an identifier-like field: printable ASCII, no spaces, 1-64 bytes.
pub(crate) fn check_id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() || value.len() > 64 {
        return Err(invalid(
            field,
            format!("must be 1-64 bytes, got {}", value.len()),
        ));
    }
    if let Some(pos) = value.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            format!("byte {pos} is not printable ASCII (no spaces or control characters)"),
        ));
    }
    Ok(())
}

impl ProductEvent {
    /// Checks the values serde cannot: version, ids, score and box ranges.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.v != PROTOCOL_VERSION {
            return Err(invalid(
                "v",
                format!(
                    "version {} is not supported (this build speaks {PROTOCOL_VERSION})",
                    self.v
                ),
            ));
        }
        check_id("event_id", &self.event_id)?;
        if let Some(session) = &self.session {
            check_id("session", session)?;
        }
        check_id("sku", &self.sku)?;
        if !(self.score.is_finite() && (0.0..=1.0).contains(&self.score)) {
            return Err(invalid(
                "score",
                format!("must be within 0..=1, got {}", self.score),
            ));
        }
        self.bbox.validate().map_err(|r| invalid("bbox", r))
    }

    /// The session `seq` counts in, [`LEGACY_SESSION`] for an event that names none.
    pub fn session(&self) -> &str {
        self.session.as_deref().unwrap_or(LEGACY_SESSION)
    }

    /// Decodes and validates a payload received from the broker.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let event: ProductEvent = serde_json::from_slice(payload)?;
        event.validate()?;
        Ok(event)
    }

    /// Encodes for publishing (compact JSON, one line).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a ProductEvent always serializes: no maps with non-string keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> ProductEvent {
        ProductEvent {
            v: 1,
            kind: EventType::New,
            event_id: "01J9ZKX3T1V2Q8M4N5P6R7S8T9".into(),
            seq: 42,
            session: Some("5f3a9c0e7b1d2468".into()),
            sku: "MUG-001".into(),
            score: 0.875,
            bbox: BBox([0.25, 0.125, 0.75, 0.875]),
            captured_at_ms: 1_764_072_000_123,
            pts_ms: 4_000,
        }
    }

    #[test]
    fn golden_json_is_stable() {
        let golden = include_str!("../tests/golden/event_new.json").trim();
        assert_eq!(String::from_utf8(sample().encode()).expect("utf8"), golden);
        assert_eq!(
            ProductEvent::decode(golden.as_bytes()).expect("decodes"),
            sample()
        );
    }

    #[test]
    fn an_event_without_a_session_is_a_legacy_one() {
        let golden = include_str!("../tests/golden/event_new.json").trim();
        let old = golden.replace(r#""session":"5f3a9c0e7b1d2468","#, "");
        assert_ne!(old, golden, "the golden event carries a session");
        let e = ProductEvent::decode(old.as_bytes()).expect("an older agent's event decodes");
        assert_eq!((e.session.as_deref(), e.session()), (None, LEGACY_SESSION));
        assert!(!String::from_utf8(e.encode())
            .expect("utf8")
            .contains("session"));
        assert_eq!(sample().session(), "5f3a9c0e7b1d2468");
    }

    #[test]
    fn names_the_bad_field() {
        let mut e = sample();
        e.score = 1.5;
        let err = ProductEvent::decode(&e.encode()).expect_err("score out of range");
        assert!(err.to_string().contains("score"), "{err}");

        let mut e = sample();
        e.bbox = BBox([0.5, 0.1, 0.4, 0.9]);
        let err = ProductEvent::decode(&e.encode()).expect_err("inverted box");
        assert!(err.to_string().contains("bbox"), "{err}");

        let mut e = sample();
        e.sku = "MUG 001".into();
        let err = ProductEvent::decode(&e.encode()).expect_err("space in sku");
        assert!(
            err.to_string().contains("sku") && err.to_string().contains("byte 3"),
            "{err}"
        );

        let mut e = sample();
        e.session = Some(String::new());
        let err = ProductEvent::decode(&e.encode()).expect_err("empty session");
        assert!(err.to_string().contains("session"), "{err}");

        let err = ProductEvent::decode(br#"{"v":1,"type":"new"}"#).expect_err("missing fields");
        assert!(err.to_string().contains("missing field"), "{err}");

        let err = ProductEvent::decode(br#"{"v":2}"#).expect_err("wrong version");
        assert!(err.to_string().contains("malformed") || err.to_string().contains("version"));
    }

    #[test]
    fn refuses_unknown_version_and_oversize() {
        let mut e = sample();
        e.v = 2;
        let err = ProductEvent::decode(&e.encode()).expect_err("v2");
        assert!(err.to_string().contains("version 2"), "{err}");
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            ProductEvent::decode(&big),
            Err(DecodeError::TooLarge(_))
        ));
    }

    proptest! {
        // thousands of random and truncated payloads, as a hostile or broken publisher sends
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ProductEvent::decode(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_truncated_events(cut in 0usize..200) {
            let full = sample().encode();
            let cut = cut.min(full.len());
            let result = ProductEvent::decode(&full[..cut]);
            prop_assert_eq!(result.is_ok(), cut == full.len());
        }

        #[test]
        fn valid_events_round_trip(
            seq in any::<u64>(),
            score in 0.0f32..=1.0,
            x0 in 0.0f32..0.5, y0 in 0.0f32..0.5, w in 0.01f32..0.5, h in 0.01f32..0.5,
            pts in any::<u32>(),
        ) {
            let mut e = sample();
            e.seq = seq;
            e.score = score;
            e.bbox = BBox([x0, y0, x0 + w, y0 + h]);
            e.pts_ms = u64::from(pts);
            prop_assert_eq!(ProductEvent::decode(&e.encode()).expect("round trip"), e);
        }
    }
}
