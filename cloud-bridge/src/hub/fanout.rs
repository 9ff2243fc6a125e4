//! The hubs as shared objects: a short lock around [`HubState`], and the fan-out lanes that write
//! every frame to every viewer.
//!
//! Each frame is encoded once, WebSocket header included, and the same bytes go to every socket
//! (see [`super::lanes`]). What a viewer gets first (`hello`, the chat's history, what it missed)
//! is queued on its [`Outlet`] and it is handed to a lane under the same locks that order the
//! stream's events and chat, so that it gets each one exactly once: in those first frames or
//! from its lane. A viewer whose queue overflows is cut off (it then reconnects and recovers from
//! the hub's history), so a slow viewer never slows the others.
//!
//! Chat rides the same lanes: each hub holds its stream's chat [`Room`], and what the broker
//! delivers is encoded once and sent to every viewer under the room's lock. A ban reaches the
//! lanes after its `banned` broadcast, and they cut the banned user's sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use spotter_protocol::chat::{Ban, ChatAbility, ChatEvent};
use spotter_protocol::viewer::{Card, ServerMessage};

use super::lanes::Lanes;
use super::outlet::Outlet;
use super::state::{Applied, HubState, Join, JoinOutcome, Origin, Resume};
use crate::chat::{now_ms, ChatConfig, Room};
use crate::config::{StreamConfig, ViewerConfig};
use crate::websocket::frame;

/// One stream's hub.
#[derive(Debug)]
pub struct Hub {
    /// The stream's configuration.
    pub config: StreamConfig,
    /// This hub's place in [`Hubs::all`], which the lanes know it by.
    index: usize,
    state: Mutex<HubState>,
    lanes: Arc<Lanes>,
    room: Mutex<Room>,
    /// `hello.chat`: `None` when chat is off.
    chat: Option<ChatAbility>,
    viewers: AtomicU64,
    viewers_sent: AtomicU64,
}

/// How a viewer's join went.
#[derive(Debug)]
pub struct Joined {
    /// How the resume went.
    pub outcome: JoinOutcome,
    /// Missed events queued after `hello`.
    pub backlog: usize,
    /// Counts the viewer, and keeps it on its lane, until dropped.
    pub watching: Watching,
}

/// One viewer counted in its hub's viewer count, and held by a lane, while this lives.
#[derive(Debug)]
pub struct Watching {
    hub: Arc<Hub>,
    outlet: Arc<Outlet>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.hub.viewers.fetch_sub(1, Ordering::Relaxed);
        self.hub.lanes.leave(self.hub.index, self.outlet.clone());
    }
}

fn text(message: &ServerMessage) -> Bytes {
    frame::text(&message.encode())
}

impl Hub {
    /// A hub with a fresh random epoch, known to `lanes` as `index`.
    pub fn new(
        config: StreamConfig,
        viewer: &ViewerConfig,
        chat: &ChatConfig,
        index: usize,
        lanes: Arc<Lanes>,
    ) -> Self {
        let epoch = format!("{:016x}", fastrand::u64(..));
        Hub {
            config,
            index,
            state: Mutex::new(HubState::new(epoch, viewer.history)),
            lanes,
            room: Mutex::new(Room::new(chat.limits.clone(), now_ms())),
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
                self.lanes.frame(self.index, None, &text(&msg));
                true
            }
            None => false,
        }
    }

    /// Applies a ban from the broker: `banned` to every viewer and the banned user's sockets
    /// closed; false when it changes nothing (the same ban again, or over).
    pub fn receive_ban(&self, ban: Ban, now_ms: u64) -> bool {
        let mut room = self.room();
        let (user, until_ms, reason) = (ban.user.clone(), ban.until_ms, ban.reason.clone());
        match room.receive_ban(ban, now_ms) {
            Some(msg) => {
                if self.chat_enabled() {
                    self.lanes.frame(self.index, None, &text(&msg));
                }
                if until_ms > now_ms {
                    self.lanes.ban(self.index, &user, until_ms, reason);
                }
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
        self.lanes.frame(
            self.index,
            None,
            &text(&ServerMessage::Viewers { count: now }),
        );
        Some(now)
    }

    /// The hub's epoch.
    pub fn epoch(&self) -> String {
        self.lock().epoch().to_owned()
    }

    /// Applies an event from `origin` and, when new, sends it to every viewer.
    pub fn publish(&self, card: Card, origin: &Origin) -> Applied {
        let mut state = self.lock();
        let epoch = state.epoch().to_owned();
        let event_id = card.event_id.clone();
        let applied = state.apply(card, origin);
        // Sent under the lock: see the module's doc.
        if state.epoch() != epoch {
            match &applied {
                Applied::Accepted { offset, .. } => {
                    self.restart_viewers_before(&state, *offset, &event_id);
                }
                Applied::Duplicate => self.restart_viewers(&state),
            }
        }
        if let Applied::Accepted {
            offset,
            frame: json,
        } = &applied
        {
            self.lanes
                .frame(self.index, Some(*offset), &frame::text(json.as_str()));
        }
        applied
    }

    /// Applies an on-screen snapshot from `origin`; returns how many events it produced
    /// (synthetic `end`s and `new`s at the snapshot's seq, for a replica that missed events).
    pub fn apply_snapshot(&self, seq: u64, cards: Vec<Card>, origin: &Origin) -> usize {
        let mut state = self.lock();
        let epoch = state.epoch().to_owned();
        let frames = state.apply_snapshot(seq, cards, origin);
        if state.epoch() != epoch {
            self.restart_viewers(&state);
        }
        for f in &frames {
            self.lanes
                .frame(self.index, Some(seq), &frame::text(f.as_str()));
        }
        frames.len()
    }

    /// After the epoch changed (another agent session, or the first one this replica hears of):
    /// every viewer's position belongs to the old epoch, so each gets a new `hello` (resync, with
    /// what is on screen now) and the new epoch's events from its offset on.
    fn restart_viewers(&self, state: &HubState) {
        let join = state.join(&Resume::Unusable);
        let hello = self.hello(join.hello, self.viewer_count());
        self.lanes.restart(self.index, &hello, join.live_from);
    }

    /// As [`Self::restart_viewers`], when an event began the new epoch: the `hello` shows the
    /// epoch's state before that event and the event follows it as an event, so a viewer waiting
    /// for the show gets its first product's `new` as it would from an epoch already known.
    fn restart_viewers_before(&self, state: &HubState, offset: u64, event_id: &str) {
        let mut hello = state.join(&Resume::Unusable).hello;
        if let ServerMessage::Hello {
            offset: from,
            onscreen,
            ..
        } = &mut hello
        {
            *from = offset;
            onscreen.retain(|c| c.event_id != event_id);
        }
        let hello = self.hello(hello, self.viewer_count());
        self.lanes.restart(self.index, &hello, offset);
    }

    /// A `hello` with what the hub adds to the state's: the viewer count and the chat offer.
    fn hello(&self, mut hello: ServerMessage, count: u64) -> Bytes {
        if let ServerMessage::Hello { viewers, chat, .. } = &mut hello {
            *viewers = count;
            *chat = self.chat;
        }
        text(&hello)
    }

    /// What a viewer joining now from `resume` would be sent first, without joining.
    pub fn preview(&self, resume: &Resume) -> Join {
        self.lock().join(resume)
    }

    /// Serves a connecting viewer: queues `hello`, the chat's history and what it missed on its
    /// outlet and hands it to a lane for what follows. It is counted, and held by the lane, until
    /// `Joined::watching` is dropped.
    pub fn join(self: &Arc<Self>, resume: &Resume, outlet: &Arc<Outlet>) -> Joined {
        let viewers = self.viewers.fetch_add(1, Ordering::Relaxed) + 1;
        let watching = Watching {
            hub: self.clone(),
            outlet: outlet.clone(),
        };
        // Lock order: room, then state (`receive_chat` takes the room alone, `publish` the state
        // alone), so that no chat message or event falls between the first frames and the lane.
        let room = self.room();
        let state = self.lock();
        let join = state.join(resume);
        let hello = self.hello(join.hello, viewers);
        let history = self.chat_enabled().then(|| {
            text(&ServerMessage::ChatHistory {
                messages: room.history(),
            })
        });
        let backlog = join.backlog.len();
        let first = std::iter::once(hello)
            .chain(history)
            .chain(join.backlog.iter().map(|f| frame::text(f.as_str())));
        outlet.start_with(first, join.live_from);
        self.lanes.join(self.index, outlet.clone());
        drop(state);
        drop(room);
        Joined {
            outcome: join.outcome,
            backlog,
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

    /// One hub per configured stream, sharing one lane per core.
    pub fn with_chat(streams: &[StreamConfig], viewer: &ViewerConfig, chat: &ChatConfig) -> Self {
        let lanes = Arc::new(Lanes::start());
        let mut by_studio: HashMap<String, HashMap<String, Arc<Hub>>> = HashMap::new();
        let mut order = Vec::with_capacity(streams.len());
        for (index, s) in streams.iter().enumerate() {
            let hub = Arc::new(Hub::new(s.clone(), viewer, chat, index, lanes.clone()));
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
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

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

    /// Delivered in session "s" by the first subscription.
    fn origin() -> Origin {
        Origin {
            session: "s".into(),
            subscription: 0,
        }
    }

    fn stream() -> StreamConfig {
        StreamConfig {
            studio: "demo".into(),
            stream: "main".into(),
            video_url: None,
        }
    }

    fn viewer_config(queue: usize) -> ViewerConfig {
        ViewerConfig {
            queue,
            max_message_bytes: 4096,
            history: 16,
        }
    }

    fn hub_with(queue: usize, chat: &ChatConfig) -> Arc<Hub> {
        let lanes = Arc::new(Lanes::with(2));
        Arc::new(Hub::new(stream(), &viewer_config(queue), chat, 0, lanes))
    }

    fn hub(queue: usize) -> Arc<Hub> {
        hub_with(queue, &ChatConfig::default())
    }

    /// A viewer on a real loopback socket; the test plays its connection task's part (flush).
    struct Viewer {
        outlet: Arc<Outlet>,
        client: TcpStream,
        joined: Joined,
        buf: Vec<u8>,
    }

    async fn join(hub: &Arc<Hub>, resume: &Resume) -> Viewer {
        join_with(hub, resume, 8).await
    }

    async fn join_with(hub: &Arc<Hub>, resume: &Resume, queue: usize) -> Viewer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let outlet = Arc::new(Outlet::new(server, queue));
        let joined = hub.join(resume, &outlet);
        Viewer {
            outlet,
            client,
            joined,
            buf: Vec::new(),
        }
    }

    impl Viewer {
        /// The next text frame, parsed. Plays the connection task's part meanwhile: what a lane
        /// could not write at once waits on the outlet for it.
        async fn next(&mut self) -> ServerMessage {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if self.buf.len() >= 2 {
                    let len = usize::from(self.buf[1]);
                    let (len, at) = if len == 126 && self.buf.len() >= 4 {
                        (
                            usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                            4,
                        )
                    } else {
                        (len, 2)
                    };
                    if self.buf.len() >= at + len {
                        let payload: Vec<u8> = self.buf.drain(..at + len).skip(at).collect();
                        return serde_json::from_slice(&payload).expect("json");
                    }
                }
                self.outlet.flush().expect("flush");
                let mut chunk = [0; 4096];
                let read =
                    tokio::time::timeout(Duration::from_millis(20), self.client.read(&mut chunk))
                        .await;
                if let Ok(n) = read {
                    let n = n.expect("read");
                    assert!(n > 0, "closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                assert!(tokio::time::Instant::now() < deadline, "no frame in time");
            }
        }
    }

    /// The cut a lane makes, waiting for it.
    async fn cut_of(outlet: &Outlet) -> crate::hub::outlet::Cut {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(cut) = outlet.take_cut() {
                return cut;
            }
            assert!(tokio::time::Instant::now() < deadline, "never cut");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn offset_seq(m: &ServerMessage) -> (u64, u64) {
        match m {
            ServerMessage::Event { offset, card } => (*offset, card.seq),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[tokio::test]
    async fn joined_viewer_gets_each_event_once_across_backlog_and_live() {
        let hub = hub(8);
        hub.publish(card("a", 1), &origin());
        let epoch = hub.epoch();
        let mut v = join(&hub, &Resume::From { epoch, offset: 1 }).await;
        assert_eq!(v.joined.outcome, JoinOutcome::Recovered);
        assert_eq!(v.joined.backlog, 1);
        assert!(matches!(v.next().await, ServerMessage::Hello { .. }));
        assert!(matches!(v.next().await, ServerMessage::ChatHistory { .. }));
        assert_eq!(offset_seq(&v.next().await).1, 1, "backlog");
        hub.publish(card("b", 2), &origin());
        hub.publish(card("b", 2), &origin());
        hub.publish(card("c", 3), &origin());
        assert_eq!(offset_seq(&v.next().await).1, 2, "live");
        assert_eq!(
            offset_seq(&v.next().await).1,
            3,
            "the duplicate was not sent"
        );
    }

    #[tokio::test]
    async fn events_published_while_viewers_join_reach_each_exactly_once() {
        let hub = hub(256);
        // The agent's session becomes the epoch with the first event.
        hub.publish(card("e1", 1), &origin());
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for seq in 2..=200 {
                    hub.publish(card(&format!("e{seq}"), seq), &origin());
                }
            })
        };
        let mut viewers = Vec::new();
        for _ in 0..20 {
            // This test reads each viewer only once everything is published.
            viewers.push(join_with(&hub, &Resume::Fresh, 1024).await);
        }
        publisher.join().expect("publisher");
        hub.publish(card("last", 201), &origin());
        for v in &mut viewers {
            let mut seqs = Vec::new();
            loop {
                match v.next().await {
                    ServerMessage::Event { card, .. } => {
                        seqs.push(card.seq);
                        if card.seq == 201 {
                            break;
                        }
                    }
                    _ => continue,
                }
            }
            let want: Vec<u64> = (seqs[0]..=201).collect();
            assert_eq!(
                seqs, want,
                "each event once, in order, from where its backlog began"
            );
        }
    }

    #[tokio::test]
    async fn a_viewer_whose_queue_fills_is_cut_and_the_others_still_get_every_event() {
        let hub = hub(4);
        hub.publish(card("e1", 1), &origin());
        // Its connection task never writes: everything queues behind its `hello`.
        let stuck = join(&hub, &Resume::Fresh).await;
        let mut fine = join(&hub, &Resume::Fresh).await;
        for seq in 2..=50 {
            hub.publish(card(&format!("e{seq}"), seq), &origin());
            while !matches!(fine.next().await, ServerMessage::Event { card, .. } if card.seq == seq)
            {
            }
        }
        // Its lane is another thread, which may run behind the other's.
        assert_eq!(
            cut_of(&stuck.outlet).await,
            crate::hub::outlet::Cut::Slow { missed: 1 }
        );
        assert_eq!(fine.outlet.take_cut(), None);
    }

    #[tokio::test]
    async fn a_new_agent_session_sends_connected_viewers_a_new_hello_and_its_events() {
        let hub = hub(8);
        hub.publish(card("a", 7), &origin());
        let mut v = join(&hub, &Resume::Fresh).await;
        assert!(matches!(
            v.next().await,
            ServerMessage::Hello { offset: 8, .. }
        ));
        let _history = v.next().await;
        // The agent's outbox was wiped: a new session numbers from 1 again.
        let in_t = Origin {
            session: "t".into(),
            ..origin()
        };
        hub.publish(card("b", 1), &in_t);
        hub.publish(
            Card {
                kind: EventType::End,
                ..card("b", 2)
            },
            &in_t,
        );
        hub.publish(card("c", 3), &in_t);
        match v.next().await {
            ServerMessage::Hello {
                epoch,
                offset,
                resync,
                onscreen,
                ..
            } => {
                assert_eq!((epoch.as_str(), offset, resync), ("t", 1, true));
                // The state before the new session's first event, which follows as an event.
                assert!(!onscreen.iter().any(|c| c.event_id == "b"), "{onscreen:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            offset_seq(&v.next().await),
            (1, 1),
            "the new session's first event"
        );
        assert_eq!(offset_seq(&v.next().await), (2, 2));
        assert_eq!(offset_seq(&v.next().await), (3, 3));
    }

    #[tokio::test]
    async fn chat_reaches_each_viewer_once_across_history_and_live() {
        let hub = hub(8);
        assert!(hub.receive_chat(chat("m1"), || {}));
        let mut v = join(&hub, &Resume::Fresh).await;
        assert!(matches!(v.next().await, ServerMessage::Hello { .. }));
        match v.next().await {
            ServerMessage::ChatHistory { messages } => assert_eq!(messages.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(hub.receive_chat(chat("m2"), || {}));
        assert!(!hub.receive_chat(chat("m2"), || {}), "redelivery");
        assert!(hub.receive_chat(chat("m3"), || {}));
        assert!(matches!(v.next().await, ServerMessage::Chat { message } if message.id == "m2"));
        assert!(matches!(v.next().await, ServerMessage::Chat { message } if message.id == "m3"));
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

    #[tokio::test]
    async fn viewers_are_counted_and_announced_only_on_change() {
        let hub = hub(8);
        let mut a = join(&hub, &Resume::Fresh).await;
        match a.next().await {
            ServerMessage::Hello { viewers, .. } => assert_eq!(viewers, 1),
            other => panic!("{other:?}"),
        }
        let _history = a.next().await;
        let b = join(&hub, &Resume::Fresh).await;
        assert_eq!(hub.viewer_count(), 2);
        assert_eq!(hub.announce_viewers(), Some(2));
        assert_eq!(a.next().await, ServerMessage::Viewers { count: 2 });
        assert_eq!(hub.announce_viewers(), None, "unchanged");
        drop(b);
        assert_eq!(hub.announce_viewers(), Some(1));
        assert_eq!(a.next().await, ServerMessage::Viewers { count: 1 });
    }

    #[tokio::test]
    async fn a_ban_reaches_viewers_and_cuts_the_banned_users_sockets() {
        let hub = hub(8);
        let mut banned = join(&hub, &Resume::Fresh).await;
        banned.outlet.set_user("u1");
        let mut other = join(&hub, &Resume::Fresh).await;
        let ban = Ban {
            v: 1,
            user: "u1".into(),
            until_ms: u64::MAX,
            reason: Some("spam".into()),
            by: "m".into(),
        };
        assert!(hub.receive_ban(ban.clone(), 0));
        assert!(!hub.receive_ban(ban, 0), "the same ban again");
        for v in [&mut banned, &mut other] {
            let _hello = v.next().await;
            let _history = v.next().await;
            assert!(matches!(v.next().await, ServerMessage::Banned { user, .. } if user == "u1"));
        }
        assert_eq!(
            cut_of(&banned.outlet).await,
            crate::hub::outlet::Cut::Banned {
                until_ms: u64::MAX,
                reason: Some("spam".into())
            }
        );
        assert_eq!(other.outlet.take_cut(), None);
        assert!(hub.clear_ban("u1"));
    }

    #[tokio::test]
    async fn hello_offers_chat_only_when_it_is_on_and_guests_only_with_a_key() {
        async fn hello_with(chat: ChatConfig) -> (Option<ChatAbility>, bool) {
            let hub = hub_with(4, &chat);
            let mut v = join(&hub, &Resume::Fresh).await;
            let chat = match v.next().await {
                ServerMessage::Hello { chat, .. } => chat,
                other => panic!("{other:?}"),
            };
            // With chat on, the history follows; with it off, the next frame is this event.
            hub.publish(card("probe", 1), &origin());
            let history = matches!(v.next().await, ServerMessage::ChatHistory { .. });
            (chat, history)
        }
        let key = || Some(crate::chat::ChatKey::new(&[7; 32]).expect("32 bytes"));

        let off = hello_with(ChatConfig {
            enabled: false,
            guests: true,
            key: key(),
            ..ChatConfig::default()
        })
        .await;
        assert_eq!(off, (None, false));

        let no_key = hello_with(ChatConfig {
            guests: true,
            ..ChatConfig::default()
        })
        .await;
        assert_eq!(
            no_key,
            (Some(ChatAbility { guests: false }), true),
            "no key: read-only chat, no guests"
        );

        let (chat, _) = hello_with(ChatConfig {
            guests: true,
            key: key(),
            ..ChatConfig::default()
        })
        .await;
        assert_eq!(chat, Some(ChatAbility { guests: true }));
    }

    #[test]
    fn lookup_by_studio_and_stream() {
        let viewer = viewer_config(4);
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
