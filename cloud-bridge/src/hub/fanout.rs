//! The hubs as shared objects: a short lock around [`HubState`] and a broadcast channel that hands
//! every connection the same encoded frames.
//!
//! The broadcast channel is the per-viewer queue: it holds the last `viewer.queue` frames once for
//! everybody, and a receiver that falls further behind sees `Lagged` and is disconnected (it then
//! reconnects and recovers from the hub's history), so a slow viewer never slows the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spotter_protocol::viewer::Card;
use tokio::sync::broadcast;

use super::state::{Applied, Frame, HubState, JoinOutcome, Resume};
use crate::config::{StreamConfig, ViewerConfig};

/// One stream's hub.
#[derive(Debug)]
pub struct Hub {
    /// The stream's configuration.
    pub config: StreamConfig,
    state: Mutex<HubState>,
    tx: broadcast::Sender<Frame>,
}

/// What a connecting viewer gets: its first frames and its live feed.
#[derive(Debug)]
pub struct Joined {
    /// The encoded `hello`.
    pub hello: Frame,
    /// Missed events, in order.
    pub backlog: Vec<Frame>,
    /// How the resume went.
    pub outcome: JoinOutcome,
    /// Live events after the backlog, with no gap and no overlap.
    pub live: broadcast::Receiver<Frame>,
}

impl Hub {
    /// A hub with a fresh random epoch.
    pub fn new(config: StreamConfig, viewer: &ViewerConfig) -> Self {
        let epoch = format!("{:016x}", fastrand::u64(..));
        let (tx, _) = broadcast::channel(viewer.queue.max(1));
        Hub {
            config,
            state: Mutex::new(HubState::new(epoch, viewer.history)),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves a consistent state: every mutation completes
        // before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hub's epoch.
    pub fn epoch(&self) -> String {
        self.lock().epoch().to_owned()
    }

    /// Applies an event and, when new, sends it to every viewer.
    pub fn publish(&self, card: Card) -> Applied {
        let mut state = self.lock();
        let applied = state.apply(card);
        if let Applied::Accepted { frame, .. } = &applied {
            // Sent under the lock so that a joining viewer sees each frame exactly once, either
            // in its backlog or live. No receivers is not an error.
            let _ = self.tx.send(frame.clone());
        }
        applied
    }

    /// Applies an on-screen snapshot; returns how many events it produced.
    pub fn apply_snapshot(&self, seq: u64, cards: Vec<Card>) -> usize {
        let mut state = self.lock();
        let frames = state.apply_snapshot(seq, cards);
        for f in &frames {
            let _ = self.tx.send(f.clone());
        }
        frames.len()
    }

    /// Serves a connecting viewer.
    pub fn join(&self, resume: &Resume) -> Joined {
        let (join, live) = {
            let state = self.lock();
            (state.join(resume), self.tx.subscribe())
        };
        Joined {
            hello: Frame::from(join.hello.encode()),
            backlog: join.backlog,
            outcome: join.outcome,
            live,
        }
    }
}

/// Every configured stream's hub; fixed at start (events for other streams are refused).
#[derive(Debug)]
pub struct Hubs {
    by_studio: HashMap<String, HashMap<String, Arc<Hub>>>,
    order: Vec<Arc<Hub>>,
}

impl Hubs {
    /// One hub per configured stream.
    pub fn new(streams: &[StreamConfig], viewer: &ViewerConfig) -> Self {
        let mut by_studio: HashMap<String, HashMap<String, Arc<Hub>>> = HashMap::new();
        let mut order = Vec::with_capacity(streams.len());
        for s in streams {
            let hub = Arc::new(Hub::new(s.clone(), viewer));
            by_studio
                .entry(s.studio.clone())
                .or_default()
                .insert(s.stream.clone(), hub.clone());
            order.push(hub);
        }
        Hubs { by_studio, order }
    }

    /// The hub of a stream, if configured.
    pub fn get(&self, studio: &str, stream: &str) -> Option<&Arc<Hub>> {
        self.by_studio.get(studio)?.get(stream)
    }

    /// All hubs in configuration order.
    pub fn all(&self) -> &[Arc<Hub>] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotter_protocol::viewer::{ProductInfo, ServerMessage};
    use spotter_protocol::{BBox, EventType};
    use tokio::sync::broadcast::error::TryRecvError;

    fn card(event_id: &str, seq: u64) -> Card {
        Card {
            kind: EventType::New,
            event_id: event_id.into(),
            seq,
            score: 1.0,
            bbox: BBox::FULL,
            captured_at_ms: 0,
            pts_ms: 0,
            product: ProductInfo {
                sku: "S".into(),
                name: "n".into(),
                price: "1".into(),
                currency: "USD".into(),
                url: "https://x".into(),
                image: None,
            },
        }
    }

    fn hub(queue: usize) -> Hub {
        Hub::new(
            StreamConfig {
                studio: "demo".into(),
                stream: "main".into(),
                video_url: None,
            },
            &ViewerConfig {
                queue,
                max_message_bytes: 4096,
                history: 16,
            },
        )
    }

    #[test]
    fn joined_viewer_gets_each_event_once_across_backlog_and_live() {
        let hub = hub(8);
        hub.publish(card("a", 1));
        let epoch = hub.epoch();
        let mut j = hub.join(&Resume::From { epoch, offset: 0 });
        assert_eq!(j.outcome, JoinOutcome::Recovered);
        assert_eq!(j.backlog.len(), 1);
        hub.publish(card("b", 2));
        hub.publish(card("b", 2));
        let live = j.live.try_recv().expect("live event");
        match serde_json::from_str::<ServerMessage>(live.as_str()).expect("json") {
            ServerMessage::Event { offset, card } => assert_eq!((offset, card.seq), (1, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            j.live.try_recv(),
            Err(TryRecvError::Empty),
            "duplicate not sent"
        );
    }

    #[test]
    fn a_viewer_that_falls_behind_its_queue_is_told_so() {
        let hub = hub(2);
        let mut slow = hub.join(&Resume::Fresh);
        for i in 0..5 {
            hub.publish(card(&format!("e{i}"), i));
        }
        assert!(matches!(slow.live.try_recv(), Err(TryRecvError::Lagged(_))));
    }

    #[test]
    fn lookup_by_studio_and_stream() {
        let viewer = ViewerConfig {
            queue: 4,
            max_message_bytes: 4096,
            history: 4,
        };
        let streams = [
            StreamConfig {
                studio: "a".into(),
                stream: "x".into(),
                video_url: None,
            },
            StreamConfig {
                studio: "a".into(),
                stream: "y".into(),
                video_url: None,
            },
        ];
        let hubs = Hubs::new(&streams, &viewer);
        assert!(hubs.get("a", "y").is_some());
        assert!(hubs.get("a", "z").is_none());
        assert!(hubs.get("b", "x").is_none());
        assert_eq!(hubs.all()[0].config.stream, "x");
        assert_ne!(hubs.all()[0].epoch(), "", "random epoch");
    }
}
