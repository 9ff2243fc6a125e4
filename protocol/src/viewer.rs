//! Messages on the viewer WebSocket (`/ws/<studio>/<stream>`), bridge to browser and back.
//!
//! The bridge sends `hello` first (the hub's epoch and offset, and what is on screen now), then one
//! `event` per product event, each with the offset it has in the hub's ring buffer. A client that
//! reconnects with `?epoch=..&offset=..` gets what it missed, or `hello` with `resync: true` when
//! that is no longer held.

use serde::{Deserialize, Serialize};

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
    /// Catalog data.
    pub product: ProductInfo,
}

/// Bridge to browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServerMessage {
    /// First message on a connection, and after a resync.
    Hello {
        /// Wire version.
        protocol: u32,
        /// The hub's epoch: changes when the hub's history restarts.
        epoch: String,
        /// Offset of the next event this connection will receive.
        offset: u64,
        /// Whether the client asked to recover and could not: drop local state.
        resync: bool,
        /// What is on screen now.
        onscreen: Vec<Card>,
    },
    /// One product event.
    Event {
        /// Offset in the hub's history.
        offset: u64,
        /// The card.
        card: Card,
    },
    /// A problem with what the client sent; the connection may be closed after it.
    Error {
        /// Why.
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
            offset: 3,
            card: Card {
                kind: EventType::New,
                event_id: "e-1".into(),
                seq: 9,
                score: 0.5,
                bbox: BBox::FULL,
                captured_at_ms: 1000,
                pts_ms: 40,
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
