//! The hubs as shared objects: a short lock around [`HubState`] and a broadcast channel that hands
//! every connection the same encoded frames.
//!
//! The broadcast channel is the per-viewer queue: it holds the last `viewer.queue` frames once for
//! everybody, and a receiver that falls further behind sees `Lagged` and is disconnected (it then
//! reconnects and recovers from the hub's history), so a slow viewer never slows the others.
//!
//! Chat rides the same channel: each hub holds its stream's chat [`Room`], and what the broker
//! delivers is encoded once and sent to every viewer under the room's lock, so that a joining
//! viewer gets each message exactly once, in its `chat_history` or live. Bans also go to a
//! second channel that every connection watches, to close the banned user's sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spotter_protocol::chat::{Ban, ChatAbility, ChatEvent};
use spotter_protocol::viewer::{Card, ServerMessage};
use tokio::sync::broadcast;

use super::state::{Applied, Frame, HubState, JoinOutcome, Resume};
use crate::chat::{now_ms, ChatConfig, Room};
use crate::config::{StreamConfig, ViewerConfig};

/// Bans queued for connections to look at; a connection that misses some (lagged) rechecks the
/// room.
const CONTROL_QUEUE: usize = 64;

/// A signal to every connection of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A user was banned: their sockets close.
    Banned {
        /// The user's id.
        user: String,
        /// End of the ban, UTC ms.
        until_ms: u64,
        /// The moderator's reason.
        reason: Option<String>,
    },
}

/// One stream's hub.
#[derive(Debug)]
pub struct Hub {
    /// The stream's configuration.
    pub config: StreamConfig,
    state: Mutex<HubState>,
    tx: broadcast::Sender<Frame>,
    room: Mutex<Room>,
    control: broadcast::Sender<Control>,
    /// `hello.chat`: `None` when chat is off.
    chat: Option<ChatAbility>,
    viewers: AtomicU64,
    viewers_sent: AtomicU64,
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
    /// The encoded `chat_history`, when chat is on (send right after `hello`).
    pub chat_history: Option<Frame>,
    /// Bans, to close this connection if its user is banned.
    pub control: broadcast::Receiver<Control>,
    /// Counts this viewer until dropped.
    pub watching: Watching,
}

/// One viewer counted in its hub's viewer count while this lives.
#[derive(Debug)]
pub struct Watching(Arc<Hub>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// A hub with a fresh random epoch.
    pub fn new(config: StreamConfig, viewer: &ViewerConfig, chat: &ChatConfig) -> Self {
        let epoch = format!("{:016x}", fastrand::u64(..));
        let (tx, _) = broadcast::channel(viewer.queue.max(1));
        let (control, _) = broadcast::channel(CONTROL_QUEUE);
        Hub {
            config,
            state: Mutex::new(HubState::new(epoch, viewer.history)),
            tx,
            room: Mutex::new(Room::new(chat.limits.clone(), now_ms())),
            control,
            // Chat on without a key is read-only: history and messages, no guests, no sign-in.
            chat: chat.enabled.then_some(ChatAbility {
                guests: chat.guests && chat.key.is_some(),
            }),
            viewers: AtomicU64::new(0),
            viewers_sent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves a consistent state: every mutation completes
        // before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stream's chat room, locked (keep it short: the broker's deliveries wait on it).
    pub fn room(&self) -> MutexGuard<'_, Room> {
        // As above: every room mutation completes before anything that could panic.
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether chat is on for this stream.
    pub fn chat_enabled(&self) -> bool {
        self.chat.is_some()
    }

    /// What a connection may do in chat before authenticating; `None` when chat is off.
    pub fn chat_ability(&self) -> Option<ChatAbility> {
        self.chat
    }

    /// Applies a chat payload from the broker and sends what it changes to every viewer; false
    /// for a redelivery, a deleted message, or chat off. `count` runs for what it sends, before
    /// any viewer can see it, so that whoever reads the counter after seeing a message finds it
    /// counted.
    pub fn receive_chat(&self, event: ChatEvent, count: impl FnOnce()) -> bool {
        if !self.chat_enabled() {
            return false;
        }
        let mut room = self.room();
        match room.receive(event) {
            Some(msg) => {
                count();
                // Under the room's lock: see the module's doc.
                let _ = self.tx.send(Frame::from(msg.encode()));
                true
            }
            None => false,
        }
    }

    /// Applies a ban from the broker: `banned` to every viewer and the banned user's sockets
    /// closed; false when it changes nothing (the same ban again, or over).
    pub fn receive_ban(&self, ban: Ban, now_ms: u64) -> bool {
        let mut room = self.room();
        let signal = Control::Banned {
            user: ban.user.clone(),
            until_ms: ban.until_ms,
            reason: ban.reason.clone(),
        };
        match room.receive_ban(ban, now_ms) {
            Some(msg) => {
                if self.chat_enabled() {
                    let _ = self.tx.send(Frame::from(msg.encode()));
                }
                let _ = self.control.send(signal);
                true
            }
            None => false,
        }
    }

    /// Lifts a ban (its retained message was cleared); true if there was one.
    pub fn clear_ban(&self, user: &str) -> bool {
        self.room().clear_ban(user)
    }

    /// Viewers connected to this stream now.
    pub fn viewer_count(&self) -> u64 {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Sends `viewers` to everyone if the count changed since the last one sent; called every
    /// 2 s, so viewers get at most one a stream every 2 s. Returns the count sent.
    pub fn announce_viewers(&self) -> Option<u64> {
        let now = self.viewer_count();
        let before = self.viewers_sent.swap(now, Ordering::Relaxed);
        if now == before {
            return None;
        }
        let _ = self
            .tx
            .send(Frame::from(ServerMessage::Viewers { count: now }.encode()));
        Some(now)
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

    /// Serves a connecting viewer, counted until `Joined::watching` is dropped.
    pub fn join(self: &Arc<Self>, resume: &Resume) -> Joined {
        let viewers = self.viewers.fetch_add(1, Ordering::Relaxed) + 1;
        let watching = Watching(self.clone());
        // Lock order: room, then state (`receive_chat` takes the room alone, `publish` the state
        // alone), so that no chat message or event falls between the snapshot and `live`.
        let room = self.room();
        let (mut join, live) = {
            let state = self.lock();
            (state.join(resume), self.tx.subscribe())
        };
        let control = self.control.subscribe();
        let chat_history = self.chat_enabled().then(|| {
            Frame::from(
                ServerMessage::ChatHistory {
                    messages: room.history(),
                }
                .encode(),
            )
        });
        drop(room);
        if let ServerMessage::Hello {
            viewers: v, chat, ..
        } = &mut join.hello
        {
            *v = viewers;
            *chat = self.chat;
        }
        Joined {
            hello: Frame::from(join.hello.encode()),
            backlog: join.backlog,
            outcome: join.outcome,
            live,
            chat_history,
            control,
            watching,
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
    /// One hub per configured stream, chat with the default settings.
    pub fn new(streams: &[StreamConfig], viewer: &ViewerConfig) -> Self {
        Self::with_chat(streams, viewer, &ChatConfig::default())
    }

    /// One hub per configured stream.
    pub fn with_chat(streams: &[StreamConfig], viewer: &ViewerConfig, chat: &ChatConfig) -> Self {
        let mut by_studio: HashMap<String, HashMap<String, Arc<Hub>>> = HashMap::new();
        let mut order = Vec::with_capacity(streams.len());
        for s in streams {
            let hub = Arc::new(Hub::new(s.clone(), viewer, chat));
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
            appeared_at_ms: 0,
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

    fn hub(queue: usize) -> Arc<Hub> {
        Arc::new(Hub::new(
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
            &ChatConfig::default(),
        ))
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

    fn next(rx: &mut broadcast::Receiver<Frame>) -> ServerMessage {
        serde_json::from_str(rx.try_recv().expect("a frame").as_str()).expect("json")
    }

    fn chat(id: &str) -> ChatEvent {
        ChatEvent::Message {
            v: 1,
            message: spotter_protocol::ChatMessage {
                id: id.into(),
                user: spotter_protocol::ChatUser {
                    id: "u1".into(),
                    name: "A".into(),
                    moderator: false,
                    guest: false,
                },
                text: "hi".into(),
                at_ms: 0,
            },
        }
    }

    #[test]
    fn chat_reaches_each_viewer_once_across_history_and_live() {
        let hub = hub(8);
        assert!(hub.receive_chat(chat("m1"), || {}));
        let mut j = hub.join(&Resume::Fresh);
        match serde_json::from_str(j.chat_history.as_ref().expect("history").as_str()) {
            Ok(ServerMessage::ChatHistory { messages }) => assert_eq!(messages.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(hub.receive_chat(chat("m2"), || {}));
        assert!(!hub.receive_chat(chat("m2"), || {}), "redelivery");
        assert!(matches!(next(&mut j.live), ServerMessage::Chat { message } if message.id == "m2"));
        assert_eq!(j.live.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn viewers_are_counted_and_announced_only_on_change() {
        let hub = hub(8);
        let mut a = hub.join(&Resume::Fresh);
        match serde_json::from_str(a.hello.as_str()) {
            Ok(ServerMessage::Hello { viewers, .. }) => assert_eq!(viewers, 1),
            other => panic!("{other:?}"),
        }
        let b = hub.join(&Resume::Fresh);
        assert_eq!(hub.viewer_count(), 2);
        assert_eq!(hub.announce_viewers(), Some(2));
        assert_eq!(next(&mut a.live), ServerMessage::Viewers { count: 2 });
        assert_eq!(hub.announce_viewers(), None, "unchanged");
        drop(b);
        assert_eq!(hub.announce_viewers(), Some(1));
        assert_eq!(next(&mut a.live), ServerMessage::Viewers { count: 1 });
    }

    #[test]
    fn a_ban_reaches_viewers_and_connections() {
        let hub = hub(8);
        let mut j = hub.join(&Resume::Fresh);
        let ban = Ban {
            v: 1,
            user: "u1".into(),
            until_ms: u64::MAX,
            reason: None,
            by: "m".into(),
        };
        assert!(hub.receive_ban(ban.clone(), 0));
        assert!(!hub.receive_ban(ban, 0), "the same ban again");
        assert!(matches!(next(&mut j.live), ServerMessage::Banned { user, .. } if user == "u1"));
        assert!(matches!(j.control.try_recv(), Ok(Control::Banned { user, .. }) if user == "u1"));
        assert!(hub.clear_ban("u1"));
    }

    #[test]
    fn hello_offers_chat_only_when_it_is_on_and_guests_only_with_a_key() {
        let hello_with = |chat: ChatConfig| {
            let hub = Arc::new(Hub::new(
                StreamConfig {
                    studio: "demo".into(),
                    stream: "main".into(),
                    video_url: None,
                },
                &ViewerConfig {
                    queue: 4,
                    max_message_bytes: 4096,
                    history: 4,
                },
                &chat,
            ));
            let j = hub.join(&Resume::Fresh);
            let text = j.hello.as_str().to_owned();
            let chat = match serde_json::from_str(&text) {
                Ok(ServerMessage::Hello { chat, .. }) => chat,
                other => panic!("{other:?}"),
            };
            (text, chat, j.chat_history.is_some())
        };
        let key = || Some(crate::chat::ChatKey::new(&[7; 32]).expect("32 bytes"));

        let (text, chat, history) = hello_with(ChatConfig {
            enabled: false,
            guests: true,
            key: key(),
            ..ChatConfig::default()
        });
        assert!(!text.contains("\"chat\""), "chat off: no `chat` in {text}");
        assert_eq!((chat, history), (None, false));

        let (text, chat, history) = hello_with(ChatConfig {
            guests: true,
            ..ChatConfig::default()
        });
        assert!(text.contains(r#""chat":{"guests":false}"#), "{text}");
        assert_eq!(
            (chat, history),
            (Some(ChatAbility { guests: false }), true),
            "no key: read-only chat, no guests"
        );

        let (_, chat, _) = hello_with(ChatConfig {
            guests: true,
            key: key(),
            ..ChatConfig::default()
        });
        assert_eq!(chat, Some(ChatAbility { guests: true }));
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
