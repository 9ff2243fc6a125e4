//! What to do with one received MQTT payload: decode, check the stream and SKU, enrich, and hand
//! it to the stream's hub. No sockets here; the subscriber feeds it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spotter_protocol::event::{DecodeError, ProductEvent};
use spotter_protocol::status::OnScreen;
use spotter_protocol::topic::{Topic, TopicKind};
use spotter_protocol::viewer::Card;
use spotter_protocol::PROTOCOL_VERSION;
use tracing::{debug, info, warn};

use crate::hub::{Applied, Hub, Hubs, Origin};
use crate::metrics::{MalformedReason, Metrics, PayloadKind, RejectReason};
use crate::shelf::Shelf;

/// Largest on-screen snapshot accepted (a few dozen products fit in a few KB).
pub const MAX_ONSCREEN_BYTES: usize = 64 * 1024;

/// The verdict on one payload.
#[derive(Debug)]
pub enum Verdict {
    /// A valid event for a known stream and SKU.
    Event {
        /// The stream's hub.
        hub: Arc<Hub>,
        /// The enriched event.
        card: Card,
        /// The agent session its `seq` counts in (empty from an agent that predates sessions).
        session: String,
    },
    /// A valid on-screen snapshot for a known stream (products with unknown SKUs left out).
    Snapshot {
        /// The stream's hub.
        hub: Arc<Hub>,
        /// The last event seq it includes.
        seq: u64,
        /// Its products as cards.
        cards: Vec<Card>,
        /// The agent session its `seq` counts in (empty from an agent that predates sessions).
        session: String,
        /// SKUs left out because the catalog does not have them.
        unknown_skus: Vec<String>,
    },
    /// Could not be decoded.
    Malformed {
        /// Events or onscreen.
        kind: PayloadKind,
        /// The counter label.
        reason: MalformedReason,
        /// The decoder's message.
        message: String,
    },
    /// Decoded but refused.
    Rejected {
        /// Events or onscreen.
        kind: PayloadKind,
        /// The counter label.
        reason: RejectReason,
        /// What was refused (the stream or the SKU).
        what: String,
    },
    /// A topic the bridge does not consume (status, stats).
    Ignored,
}

fn malformed_reason(e: &DecodeError) -> MalformedReason {
    match e {
        DecodeError::TooLarge(_) => MalformedReason::TooLarge,
        DecodeError::Json(_) => MalformedReason::Json,
        DecodeError::Invalid { .. } => MalformedReason::Invalid,
    }
}

/// Decides what a payload is. Pure apart from looking up hubs.
pub fn classify(topic: &str, payload: &[u8], hubs: &Hubs, shelf: &Shelf) -> Verdict {
    let kind_of = |t: &Topic| match t.kind {
        TopicKind::OnScreen => PayloadKind::OnScreen,
        _ => PayloadKind::Events,
    };
    let parsed = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => {
            let kind = if topic.ends_with("/onscreen") {
                PayloadKind::OnScreen
            } else {
                PayloadKind::Events
            };
            return Verdict::Malformed {
                kind,
                reason: MalformedReason::Topic,
                message: e.to_string(),
            };
        }
    };
    if !matches!(parsed.kind, TopicKind::Events | TopicKind::OnScreen) {
        return Verdict::Ignored;
    }
    let kind = kind_of(&parsed);
    let stream = parsed.stream.as_deref().unwrap_or_default();
    let malformed = |e: DecodeError| Verdict::Malformed {
        kind,
        reason: malformed_reason(&e),
        message: e.to_string(),
    };
    // Decode before looking at the stream, so garbage is reported as garbage wherever it lands.
    match parsed.kind {
        TopicKind::Events => {
            let event = match ProductEvent::decode(payload) {
                Ok(e) => e,
                Err(e) => return malformed(e),
            };
            let Some(hub) = hubs.get(&parsed.studio, stream) else {
                return Verdict::Rejected {
                    kind,
                    reason: RejectReason::UnknownStream,
                    what: format!("{}/{stream}", parsed.studio),
                };
            };
            match shelf.card(&event) {
                Some(card) => Verdict::Event {
                    hub: hub.clone(),
                    card,
                    session: event.session().to_owned(),
                },
                None => Verdict::Rejected {
                    kind,
                    reason: RejectReason::UnknownSku,
                    what: event.sku,
                },
            }
        }
        _ => {
            if payload.len() > MAX_ONSCREEN_BYTES {
                return Verdict::Malformed {
                    kind,
                    reason: MalformedReason::TooLarge,
                    message: format!(
                        "payload is {} bytes, over the {MAX_ONSCREEN_BYTES}-byte limit",
                        payload.len()
                    ),
                };
            }
            let snapshot = match OnScreen::decode(payload) {
                Ok(s) => s,
                Err(e) => return malformed(e),
            };
            if let Err(message) = check_snapshot(&snapshot) {
                return Verdict::Malformed {
                    kind,
                    reason: MalformedReason::Invalid,
                    message,
                };
            }
            let Some(hub) = hubs.get(&parsed.studio, stream) else {
                return Verdict::Rejected {
                    kind,
                    reason: RejectReason::UnknownStream,
                    what: format!("{}/{stream}", parsed.studio),
                };
            };
            let mut cards = Vec::with_capacity(snapshot.products.len());
            let mut unknown_skus = Vec::new();
            for p in &snapshot.products {
                match shelf.snapshot_card(snapshot.seq, p) {
                    Some(c) => cards.push(c),
                    None => unknown_skus.push(p.sku.clone()),
                }
            }
            Verdict::Snapshot {
                hub: hub.clone(),
                seq: snapshot.seq,
                cards,
                session: snapshot.session().to_owned(),
                unknown_skus,
            }
        }
    }
}

/// What `OnScreen::decode` leaves to the reader: the version and the boxes.
fn check_snapshot(s: &OnScreen) -> Result<(), String> {
    if s.v != PROTOCOL_VERSION {
        return Err(format!(
            "field `v`: version {} is not supported (this build speaks {PROTOCOL_VERSION})",
            s.v
        ));
    }
    for p in &s.products {
        let [x0, y0, x1, y1] = p.bbox.0;
        let in_range = p
            .bbox
            .0
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v));
        if !in_range || x0 >= x1 || y0 >= y1 {
            return Err(format!(
                "field `products.bbox` of {:?}: needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {:?}",
                p.event_id, p.bbox.0
            ));
        }
    }
    Ok(())
}

/// Applies verdicts: counts, logs and publishes to hubs.
#[derive(Debug, Clone)]
pub struct Ingest {
    hubs: Arc<Hubs>,
    shelf: Arc<Shelf>,
    metrics: Arc<Metrics>,
    /// Counts broker connections that began without a stored session: each may have missed
    /// events, so its deliveries are stamped with it and the hubs check the sequence where it
    /// changes.
    subscription: Arc<AtomicU64>,
}

impl Ingest {
    /// An ingest over these hubs and this catalog.
    pub fn new(hubs: Arc<Hubs>, shelf: Arc<Shelf>, metrics: Arc<Metrics>) -> Self {
        Ingest {
            hubs,
            shelf,
            metrics,
            subscription: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The broker accepted a connection; `session_present` says whether it kept the
    /// subscription's session (and so queued what was published meanwhile). Without one, what
    /// follows is a new subscription that may have missed events.
    pub fn connected(&self, session_present: bool) {
        if !session_present {
            self.subscription.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles one payload received on `topic`. Never fails: bad input is counted and logged.
    pub fn handle(&self, topic: &str, payload: &[u8]) {
        let verdict = classify(topic, payload, &self.hubs, &self.shelf);
        let m = &self.metrics;
        let subscription = self.subscription.load(Ordering::Relaxed);
        match verdict {
            Verdict::Event { hub, card, session } => {
                let origin = Origin {
                    session,
                    subscription,
                };
                m.received(PayloadKind::Events);
                let (event_id, seq) = (card.event_id.clone(), card.seq);
                match hub.publish(card, &origin) {
                    Applied::Accepted { offset, .. } => {
                        Metrics::inc(&m.events_accepted);
                        debug!(topic, event_id, seq, offset, "event accepted");
                    }
                    Applied::Duplicate => {
                        Metrics::inc(&m.events_duplicate);
                        debug!(topic, event_id, seq, "duplicate event dropped");
                    }
                }
            }
            Verdict::Snapshot {
                hub,
                seq,
                cards,
                session,
                unknown_skus,
            } => {
                let origin = Origin {
                    session,
                    subscription,
                };
                m.received(PayloadKind::OnScreen);
                for sku in &unknown_skus {
                    m.rejected(PayloadKind::OnScreen, RejectReason::UnknownSku);
                    warn!(topic, sku, "on-screen product not in the catalog, left out");
                }
                let products = cards.len();
                let changes = hub.apply_snapshot(seq, cards, &origin);
                if changes > 0 {
                    Metrics::inc(&m.onscreen_applied);
                    info!(
                        topic,
                        seq,
                        products,
                        changes,
                        "on-screen snapshot newer than the events seen, applied"
                    );
                }
            }
            Verdict::Malformed {
                kind,
                reason,
                message,
            } => {
                m.received(kind);
                m.malformed(kind, reason);
                warn!(topic, bytes = payload.len(), reason = reason.as_str(), error = %message, "malformed payload dropped");
            }
            Verdict::Rejected { kind, reason, what } => {
                m.received(kind);
                m.rejected(kind, reason);
                match reason {
                    RejectReason::UnknownStream => {
                        warn!(topic, stream = %what, "payload for a stream not in the configuration dropped: add a [[stream]] to serve it")
                    }
                    RejectReason::UnknownSku => {
                        warn!(topic, sku = %what, "event for a SKU not in the catalog dropped")
                    }
                }
            }
            Verdict::Ignored => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StreamConfig, ViewerConfig};
    use spotter_protocol::status::OnScreenProduct;
    use spotter_protocol::{BBox, EventType};
    use std::sync::atomic::Ordering;

    struct Fixture {
        _dir: tempfile::TempDir,
        ingest: Ingest,
        hubs: Arc<Hubs>,
        metrics: Arc<Metrics>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mug.png"), b"img").expect("write");
        let text = r#"
[[product]]
sku = "MUG-001"
name = "Enamel camp mug"
price = "14.00"
currency = "USD"
url = "https://shop.example/mug-001"
images = ["mug.png"]
"#;
        let catalog =
            spotter_protocol::Catalog::parse(dir.path(), &dir.path().join("c.toml"), text)
                .expect("catalog");
        let shelf = Arc::new(Shelf::build(&catalog).expect("shelf"));
        let viewer = ViewerConfig {
            queue: 8,
            max_message_bytes: 4096,
            history: 8,
        };
        let hubs = Arc::new(Hubs::new(
            &[StreamConfig {
                studio: "demo".into(),
                stream: "main".into(),
                video_url: None,
            }],
            &viewer,
        ));
        let metrics = Arc::new(Metrics::default());
        Fixture {
            _dir: dir,
            ingest: Ingest::new(hubs.clone(), shelf, metrics.clone()),
            hubs,
            metrics,
        }
    }

    fn event(sku: &str, event_id: &str, seq: u64) -> Vec<u8> {
        ProductEvent {
            v: 1,
            kind: EventType::New,
            event_id: event_id.into(),
            seq,
            session: Some("5f3a9c0e7b1d2468".into()),
            sku: sku.into(),
            score: 0.9,
            bbox: BBox::FULL,
            captured_at_ms: 1,
            pts_ms: 2,
        }
        .encode()
    }

    const EVENTS: &str = "spotter/v1/demo/main/events";

    #[test]
    fn garbage_is_counted_by_reason_and_nothing_reaches_the_hub() {
        let f = fixture();
        f.ingest.handle(EVENTS, b"not json");
        f.ingest.handle(EVENTS, br#"{"v":1,"type":"new"}"#);
        f.ingest.handle(EVENTS, &vec![b'x'; 5000]);
        let mut bad_score = event("MUG-001", "e", 1);
        bad_score = String::from_utf8(bad_score)
            .expect("utf8")
            .replace("\"score\":0.9", "\"score\":7")
            .into_bytes();
        f.ingest.handle(EVENTS, &bad_score);
        f.ingest
            .handle("spotter/v1/de.mo/main/events", &event("MUG-001", "e", 1));
        let m = &f.metrics;
        assert_eq!(
            m.malformed_count(PayloadKind::Events, MalformedReason::Json),
            2
        );
        assert_eq!(
            m.malformed_count(PayloadKind::Events, MalformedReason::TooLarge),
            1
        );
        assert_eq!(
            m.malformed_count(PayloadKind::Events, MalformedReason::Invalid),
            1
        );
        assert_eq!(
            m.malformed_count(PayloadKind::Events, MalformedReason::Topic),
            1
        );
        assert_eq!(m.events_accepted.load(Ordering::Relaxed), 0);
        let hub = f.hubs.get("demo", "main").expect("hub");
        assert_eq!(hub.preview(&crate::hub::Resume::Fresh).backlog.len(), 0);
    }

    #[test]
    fn unknown_stream_and_sku_are_rejected_duplicates_counted() {
        let f = fixture();
        f.ingest
            .handle("spotter/v1/other/main/events", &event("MUG-001", "e", 1));
        f.ingest.handle(EVENTS, &event("NOPE-1", "e", 1));
        f.ingest.handle(EVENTS, &event("MUG-001", "e", 1));
        f.ingest.handle(EVENTS, &event("MUG-001", "e", 1));
        f.ingest.handle(
            "spotter/v1/demo/main/status",
            br#"{"v":1,"state":"online"}"#,
        );
        let text = f.metrics.render();
        assert!(
            text.contains(
                "spotter_bridge_events_rejected_total{kind=\"events\",reason=\"unknown_stream\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "spotter_bridge_events_rejected_total{kind=\"events\",reason=\"unknown_sku\"} 1"
        ));
        assert!(text.contains("spotter_bridge_events_accepted_total 1\n"));
        assert!(text.contains("spotter_bridge_events_duplicate_total 1\n"));
        assert!(text.contains("spotter_bridge_events_received_total 4\n"));
    }

    #[test]
    fn snapshot_seeds_the_hub_and_leaves_out_unknown_skus() {
        let f = fixture();
        let product = |event_id: &str, sku: &str| OnScreenProduct {
            event_id: event_id.into(),
            sku: sku.into(),
            score: 0.8,
            bbox: BBox::FULL,
            since_ms: 5,
        };
        let snapshot = OnScreen {
            v: 1,
            seq: 9,
            session: Some("5f3a9c0e7b1d2468".into()),
            products: vec![product("e-1", "MUG-001"), product("e-2", "NOPE")],
        };
        f.ingest
            .handle("spotter/v1/demo/main/onscreen", &snapshot.encode());
        let hub = f.hubs.get("demo", "main").expect("hub");
        match hub.preview(&crate::hub::Resume::Fresh).hello {
            spotter_protocol::ServerMessage::Hello { onscreen, .. } => {
                assert_eq!(onscreen.len(), 1);
                assert_eq!(onscreen[0].product.name, "Enamel camp mug");
                assert_eq!(onscreen[0].seq, 9);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.metrics.onscreen_applied.load(Ordering::Relaxed), 1);
        let text = f.metrics.render();
        assert!(
            text.contains("{kind=\"onscreen\",reason=\"unknown_sku\"} 1"),
            "{text}"
        );

        let mut bad = snapshot.clone();
        bad.v = 2;
        f.ingest
            .handle("spotter/v1/demo/main/onscreen", &bad.encode());
        let mut bad = snapshot;
        bad.products[0].bbox = BBox([0.5, 0.0, 0.2, 1.0]);
        f.ingest
            .handle("spotter/v1/demo/main/onscreen", &bad.encode());
        assert_eq!(
            f.metrics
                .malformed_count(PayloadKind::OnScreen, MalformedReason::Invalid),
            2
        );
    }
}
