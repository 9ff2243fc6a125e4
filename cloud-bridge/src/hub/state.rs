//! One stream's hub as a pure state machine: deduplication, positions in an epoch, the ring
//! buffer that lets a reconnecting viewer recover, and the on-screen snapshot for late joiners.
//!
//! Positions come from the agent, so they mean the same on every bridge replica: the epoch is the
//! agent's session and an event's offset is its `seq` (see `spotter_protocol::event`). Offsets
//! increase but may skip numbers: an event a bridge refuses (unknown SKU, malformed) leaves a gap,
//! the same gap on every replica. A client's position is "I have every event before offset N".
//!
//! A replica holds a *complete range* of the epoch: every offset from `complete_from` up to its
//! newest. The range starts at the first event received since the replica (re)subscribed with a
//! fresh MQTT session, or just after the retained snapshot's seq when the next event continues
//! from it; a later event that does not continue the sequence where a new subscription began, a
//! snapshot newer than every event held (the replica missed events), or the ring's eviction moves
//! the start up. Resuming from `(E, N)`:
//! - `E` is the epoch and `N` within the range (up to one past the newest): recovered, with the
//!   held events from `N` on;
//! - `E` is the epoch and `N` beyond the newest (the client saw events on another replica that
//!   this one has not received yet), or this replica has heard of no epoch yet: recovered with
//!   nothing to send, and no live event below `N` may be sent ([`Join::live_from`]);
//! - otherwise (another epoch, `N` before the range): resync, with what is on screen.
//!
//! A snapshot that shows the replica missed events is made true for viewers with synthetic `end`
//! and `new` events at the snapshot's seq: they bring a viewer to the state the snapshot
//! describes, which is the state after every event up to that seq; the complete range restarts
//! just after it, so nobody resumes from a position the synthetic events only summarised.
//!
//! The epoch changes when an event or snapshot of another agent session arrives (and the first
//! time one arrives, replacing the random epoch a replica starts with): connections that joined in
//! another epoch hold positions of that epoch and must resync (compare [`HubState::epoch`] before
//! and after [`HubState::apply`] and [`HubState::apply_snapshot`]).
//!
//! Each accepted event is encoded once, here, into a [`Frame`] that every connection shares.
//! Each card gets its appearance's `appeared_at_ms`: the capture time of its `new`, remembered
//! with the event id, so that an update (and a late joiner's `hello`) still says when the product
//! first appeared.

use std::collections::{HashMap, VecDeque};

use axum::extract::ws::Utf8Bytes;
use spotter_protocol::event::LEGACY_SESSION;
use spotter_protocol::viewer::{Card, ServerMessage};
use spotter_protocol::{EventType, PROTOCOL_VERSION};

/// One encoded text frame, cheap to clone (reference-counted bytes).
pub type Frame = Utf8Bytes;

/// Most cards kept on screen; beyond it the oldest is forgotten (a stuck agent cannot grow the
/// `hello` without bound).
pub const MAX_ONSCREEN: usize = 64;

/// Event ids remembered for deduplication beyond the history (an appearance lives far longer
/// than its events stay in the ring).
pub const MIN_DEDUP_MEMORY: usize = 4096;

/// What happened to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// New: encoded at this offset (the agent's seq), to be sent to every viewer whose
    /// `live_from` it reaches.
    Accepted {
        /// Its offset.
        offset: u64,
        /// The encoded `ServerMessage::Event`.
        frame: Frame,
    },
    /// Its `(event_id, seq)` was seen already, or an older seq for the same appearance.
    Duplicate,
}

/// Where a reconnecting client says it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A first connection.
    Fresh,
    /// `?epoch=E&offset=N`: the client has every event of epoch `E` before offset `N`.
    From {
        /// The epoch it saw.
        epoch: String,
        /// One past the last offset it saw.
        offset: u64,
    },
    /// Something was given but it is not a usable position (missing half, not a number).
    Unusable,
}

/// The answer to a connecting client.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The `hello` to send first.
    pub hello: ServerMessage,
    /// Missed events to send after it, in order.
    pub backlog: Vec<Frame>,
    /// How the resume went.
    pub outcome: JoinOutcome,
    /// The lowest offset of a live event this connection may be sent (the `hello`'s offset):
    /// the client has every event below it, from its own history or the backlog. A client
    /// ahead of this replica sets it above anything the replica has received yet.
    pub live_from: u64,
}

/// How a join was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// No position given.
    Fresh,
    /// Everything since the position is sent, or the client is ahead of this replica.
    Recovered,
    /// The position cannot be served (another epoch, or before what is held): start over.
    Resync,
}

#[derive(Debug)]
struct Seen {
    seq: u64,
    touched: u64,
    /// Capture time of the appearance's `new` (or of the first event seen of it).
    appeared_at_ms: u64,
}

/// The hub's state.
#[derive(Debug)]
pub struct HubState {
    epoch: String,
    /// Whether `epoch` is an agent session (false until the first event or snapshot).
    known: bool,
    /// Every event of the epoch from this offset up to `next` is held (in `history`).
    complete_from: u64,
    /// One past the newest offset seen in the epoch (event, or snapshot seq).
    next: u64,
    /// The broker subscription whose deliveries continue the range; `None` until an event
    /// shows that the sequence continues across a new subscription (or restarts the range).
    subscription: Option<u64>,
    history: VecDeque<(u64, Frame)>,
    history_cap: usize,
    onscreen: Vec<Card>,
    seen: HashMap<String, Seen>,
    dedup_cap: usize,
    tick: u64,
}

/// Where an event came from: the agent session its `seq` counts in, and which of this bridge's
/// broker subscriptions delivered it (counted up on every broker connection that starts without
/// a stored session, so that the hub can tell where it may have missed events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The agent session `seq` counts in (empty for an agent that predates sessions): the hub's
    /// epoch.
    pub session: String,
    /// The broker subscription that delivered it.
    pub subscription: u64,
}

impl Origin {
    /// The epoch its events belong to: the session, or the legacy session when empty.
    fn epoch(&self) -> &str {
        if self.session.is_empty() {
            LEGACY_SESSION
        } else {
            &self.session
        }
    }
}

impl HubState {
    /// A hub keeping `history` events, in a placeholder `epoch` (random per process start) until
    /// the first event or snapshot names the agent's session.
    pub fn new(epoch: String, history: usize) -> Self {
        HubState {
            epoch,
            known: false,
            complete_from: 0,
            next: 0,
            subscription: None,
            history: VecDeque::with_capacity(history.min(4096)),
            history_cap: history,
            onscreen: Vec::new(),
            seen: HashMap::new(),
            dedup_cap: history.saturating_mul(2).max(MIN_DEDUP_MEMORY),
            tick: 0,
        }
    }

    /// The epoch: the agent session of the events held.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// One past the newest offset seen: where a fresh client starts.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The cards on screen now, oldest first.
    pub fn onscreen(&self) -> &[Card] {
        &self.onscreen
    }

    /// Applies one enriched event: starts a new epoch for a new session, checks the range where
    /// a new subscription began, drops redeliveries, sets `appeared_at_ms`, updates the
    /// on-screen map, and encodes it at its seq.
    pub fn apply(&mut self, card: Card, origin: &Origin) -> Applied {
        if !self.known || origin.epoch() != self.epoch {
            self.start_epoch(origin.epoch().to_owned(), card.seq);
            self.subscription = Some(origin.subscription);
        } else if self.subscription != Some(origin.subscription) {
            // The first event through a new subscription: had it missed events, the sequence
            // would not continue here.
            if card.seq != self.next {
                self.restart_range(card.seq);
            }
            self.subscription = Some(origin.subscription);
        }
        let offset = card.seq;
        let Some(frame) = self.accept(card) else {
            return Applied::Duplicate;
        };
        self.next = self.next.max(offset.saturating_add(1));
        self.keep(offset, &frame);
        Applied::Accepted { offset, frame }
    }

    /// Applies a retained on-screen snapshot covering every event up to `seq`, of `origin`'s
    /// session (an empty one is taken to be of the current epoch whatever `origin` says, and
    /// ignored before one is known). One that covers nothing new changes nothing; a newer one (the bridge missed
    /// events, e.g. while away from the broker or before it subscribed) is made true for viewers
    /// with `end` cards for what left and `new` cards for what arrived, all at offset `seq`, and
    /// the complete range restarts after `seq`.
    pub fn apply_snapshot(&mut self, seq: u64, cards: Vec<Card>, origin: &Origin) -> Vec<Frame> {
        let session = if !cards.is_empty() {
            origin.epoch().to_owned()
        } else if self.known {
            self.epoch.clone()
        } else {
            return Vec::new();
        };
        if self.known && session == self.epoch && seq < self.next {
            return Vec::new();
        }
        if !self.known || session != self.epoch {
            self.start_epoch(session, seq.saturating_add(1));
        } else {
            self.restart_range(seq.saturating_add(1));
        }
        // The next event decides whether the sequence continues after the snapshot.
        self.subscription = None;
        let mut frames = Vec::new();
        let gone: Vec<Card> = self
            .onscreen
            .iter()
            .filter(|c| !cards.iter().any(|n| n.event_id == c.event_id))
            .cloned()
            .collect();
        for mut card in gone {
            card.kind = EventType::End;
            card.seq = seq;
            frames.extend(self.accept(card));
        }
        for card in cards {
            if self.onscreen.iter().any(|c| c.event_id == card.event_id) {
                // Already shown: the snapshot covers every seq up to its own.
                let appeared = self
                    .seen
                    .get(&card.event_id)
                    .map_or(card.captured_at_ms, |s| s.appeared_at_ms);
                self.remember(&card.event_id, seq, appeared);
                continue;
            }
            frames.extend(self.accept(card));
        }
        frames
    }

    /// Serves a connecting client: `hello` with what is on screen, plus what it missed.
    pub fn join(&self, resume: &Resume) -> Join {
        let hello = |epoch: &str, offset: u64, resync: bool, onscreen: Vec<Card>| {
            ServerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                epoch: epoch.to_owned(),
                offset,
                resync,
                onscreen,
                // The shared hub fills these in: they are not the event history's business.
                viewers: 0,
                chat: None,
            }
        };
        let (outcome, epoch, offset, backlog, onscreen) = match resume {
            Resume::Fresh => (
                JoinOutcome::Fresh,
                self.epoch.as_str(),
                self.next,
                Vec::new(),
                self.onscreen.clone(),
            ),
            Resume::From { epoch, offset } => match self.recover(epoch, *offset) {
                // Ahead of what this replica has received: what it has on screen is older than
                // what the client shows.
                Some(_) if !self.known || *offset > self.next => (
                    JoinOutcome::Recovered,
                    epoch.as_str(),
                    *offset,
                    Vec::new(),
                    Vec::new(),
                ),
                Some(backlog) => (
                    JoinOutcome::Recovered,
                    epoch.as_str(),
                    *offset,
                    backlog,
                    self.onscreen.clone(),
                ),
                None => (
                    JoinOutcome::Resync,
                    self.epoch.as_str(),
                    self.next,
                    Vec::new(),
                    self.onscreen.clone(),
                ),
            },
            Resume::Unusable => (
                JoinOutcome::Resync,
                self.epoch.as_str(),
                self.next,
                Vec::new(),
                self.onscreen.clone(),
            ),
        };
        Join {
            hello: hello(epoch, offset, outcome == JoinOutcome::Resync, onscreen),
            backlog,
            outcome,
            live_from: offset,
        }
    }

    /// The held frames from `offset` on, empty for a client ahead of this replica (or when no
    /// epoch is known yet), or `None` when the position cannot be served ("resync").
    pub fn recover(&self, epoch: &str, offset: u64) -> Option<Vec<Frame>> {
        if !self.known {
            return Some(Vec::new());
        }
        if epoch != self.epoch || offset < self.complete_from {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|(o, _)| *o >= offset)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }

    /// Starts epoch `session` with nothing held and the range starting at `from`; what is on
    /// screen stays until a snapshot or the events say otherwise.
    fn start_epoch(&mut self, session: String, from: u64) {
        self.epoch = session;
        self.known = true;
        // Seqs of another numbering say nothing about this one's; the cards on screen keep
        // their appearance times, and can still be ended.
        let onscreen = &self.onscreen;
        self.seen
            .retain(|id, _| onscreen.iter().any(|c| &c.event_id == id));
        for s in self.seen.values_mut() {
            s.seq = 0;
        }
        self.next = from;
        self.restart_range(from);
    }

    /// Nothing before `from` can be served any more.
    fn restart_range(&mut self, from: u64) {
        self.complete_from = from;
        self.next = self.next.max(from);
        self.history.clear();
    }

    /// Deduplicates, stamps `appeared_at_ms`, tracks the screen and encodes; `None` for a
    /// duplicate.
    fn accept(&mut self, mut card: Card) -> Option<Frame> {
        let seen = self.seen.get(&card.event_id);
        if seen.is_some_and(|s| card.seq <= s.seq) {
            return None;
        }
        card.appeared_at_ms = match (card.kind, seen) {
            (EventType::New, _) | (_, None) => card.captured_at_ms,
            (_, Some(s)) => s.appeared_at_ms,
        };
        self.remember(&card.event_id, card.seq, card.appeared_at_ms);
        self.track_onscreen(&card);
        let offset = card.seq;
        Some(Frame::from(ServerMessage::Event { offset, card }.encode()))
    }

    /// Keeps an accepted event in the ring, in offset order (one that arrives late goes where
    /// it belongs); the oldest leaves when the ring is full, and the range starts after it.
    fn keep(&mut self, offset: u64, frame: &Frame) {
        if offset < self.complete_from {
            return;
        }
        let at = self.history.partition_point(|(o, _)| *o <= offset);
        self.history.insert(at, (offset, frame.clone()));
        while self.history.len() > self.history_cap {
            match self.history.pop_front() {
                Some((o, _)) => self.complete_from = self.complete_from.max(o.saturating_add(1)),
                None => break,
            }
        }
    }

    fn track_onscreen(&mut self, card: &Card) {
        let pos = self
            .onscreen
            .iter()
            .position(|c| c.event_id == card.event_id);
        match (card.kind, pos) {
            (EventType::End, Some(i)) => {
                self.onscreen.remove(i);
            }
            (EventType::End, None) => {}
            (_, Some(i)) => self.onscreen[i] = card.clone(),
            (_, None) => {
                if self.onscreen.len() == MAX_ONSCREEN {
                    self.onscreen.remove(0);
                }
                self.onscreen.push(card.clone());
            }
        }
    }

    fn remember(&mut self, event_id: &str, seq: u64, appeared_at_ms: u64) {
        self.tick += 1;
        let tick = self.tick;
        match self.seen.get_mut(event_id) {
            Some(s) => {
                s.seq = s.seq.max(seq);
                s.touched = tick;
                s.appeared_at_ms = appeared_at_ms;
            }
            None => {
                self.seen.insert(
                    event_id.to_owned(),
                    Seen {
                        seq,
                        touched: tick,
                        appeared_at_ms,
                    },
                );
            }
        }
        if self.seen.len() > self.dedup_cap.saturating_mul(2) {
            self.forget_oldest();
        }
    }

    /// Forgets the least recently touched event ids down to the cap, never one on screen.
    /// Runs once per `dedup_cap` insertions, so it costs O(log n) per event amortised.
    fn forget_oldest(&mut self) {
        let mut ticks: Vec<u64> = self
            .seen
            .iter()
            .filter(|(id, _)| !self.onscreen.iter().any(|c| &c.event_id == *id))
            .map(|(_, s)| s.touched)
            .collect();
        let excess = self.seen.len().saturating_sub(self.dedup_cap);
        if excess == 0 || ticks.is_empty() {
            return;
        }
        let cut = excess.min(ticks.len()) - 1;
        let (_, threshold, _) = ticks.select_nth_unstable(cut);
        let threshold = *threshold;
        let onscreen = &self.onscreen;
        self.seen
            .retain(|id, s| s.touched > threshold || onscreen.iter().any(|c| &c.event_id == id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotter_protocol::viewer::ProductInfo;
    use spotter_protocol::BBox;

    const S: &str = "5f3a9c0e7b1d2468";

    fn card(kind: EventType, event_id: &str, seq: u64) -> Card {
        Card {
            kind,
            event_id: event_id.into(),
            seq,
            score: 0.9,
            bbox: BBox::FULL,
            captured_at_ms: 1000 + seq,
            pts_ms: seq * 40,
            appeared_at_ms: 0,
            product: ProductInfo {
                sku: "MUG-001".into(),
                name: "Enamel camp mug".into(),
                price: "14.00".into(),
                currency: "USD".into(),
                url: "https://shop.example/mug-001".into(),
                image: None,
            },
        }
    }

    /// Delivered in session `S` by the first subscription.
    fn origin() -> Origin {
        via(S, 1)
    }

    fn via(session: &str, subscription: u64) -> Origin {
        Origin {
            session: session.into(),
            subscription,
        }
    }

    fn new(event_id: &str, seq: u64) -> Card {
        card(EventType::New, event_id, seq)
    }

    fn decode(frame: &Frame) -> ServerMessage {
        serde_json::from_str(frame.as_str()).expect("frames are ServerMessages")
    }

    fn offsets(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| match decode(f) {
                ServerMessage::Event { offset, .. } => offset,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn accepted(a: Applied) -> (u64, Frame) {
        match a {
            Applied::Accepted { offset, frame } => (offset, frame),
            Applied::Duplicate => panic!("expected accepted"),
        }
    }

    fn hub(history: usize) -> HubState {
        HubState::new(format!("{:016x}", fastrand::u64(..)), history)
    }

    fn from(epoch: &str, offset: u64) -> Resume {
        Resume::From {
            epoch: epoch.into(),
            offset,
        }
    }

    /// (outcome, hello's epoch, hello's offset, hello's resync, backlog offsets, live_from)
    fn served(h: &HubState, r: &Resume) -> (JoinOutcome, String, u64, bool, Vec<u64>, u64) {
        let j = h.join(r);
        match j.hello {
            ServerMessage::Hello {
                epoch,
                offset,
                resync,
                ..
            } => {
                assert_eq!(offset, j.live_from, "live_from is the hello's offset");
                (
                    j.outcome,
                    epoch,
                    offset,
                    resync,
                    offsets(&j.backlog),
                    j.live_from,
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offsets_are_the_agent_seq_and_the_epoch_its_session() {
        let mut h = hub(8);
        let (o0, f0) = accepted(h.apply(new("a", 7), &origin()));
        let (o1, _) = accepted(h.apply(new("b", 8), &origin()));
        assert_eq!((o0, o1, h.next_offset(), h.epoch()), (7, 8, 9, S));
        match decode(&f0) {
            ServerMessage::Event { offset, card: c } => {
                assert_eq!(offset, 7);
                let mut want = new("a", 7);
                want.appeared_at_ms = want.captured_at_ms;
                assert_eq!(c, want);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_without_a_session_is_in_the_legacy_epoch() {
        let mut h = hub(8);
        accepted(h.apply(new("a", 1), &via("", 1)));
        assert_eq!(h.epoch(), LEGACY_SESSION);
    }

    #[test]
    fn another_replica_that_saw_the_same_events_serves_a_resume_the_same_way() {
        let (mut a, mut b) = (hub(16), hub(16));
        for seq in 1..=5 {
            let e = card(EventType::Update, "x", seq);
            accepted(a.apply(e.clone(), &origin()));
            accepted(b.apply(e, &origin()));
        }
        // b has seen one more event
        accepted(b.apply(card(EventType::End, "x", 6), &origin()));
        assert_eq!(a.epoch(), b.epoch());
        let resume = from(a.epoch(), 3);
        let on_a = served(&a, &resume);
        let on_b = served(&b, &resume);
        assert_eq!(
            on_a,
            (JoinOutcome::Recovered, S.into(), 3, false, vec![3, 4, 5], 3)
        );
        assert_eq!(
            on_b,
            (
                JoinOutcome::Recovered,
                S.into(),
                3,
                false,
                vec![3, 4, 5, 6],
                3
            )
        );
        // The frames are byte for byte the same on both.
        assert_eq!(a.join(&resume).backlog[..], b.join(&resume).backlog[..3]);
    }

    #[test]
    fn refused_events_leave_the_same_gap_on_every_replica() {
        let mut h = hub(16);
        for seq in [1, 2, 4, 5] {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        assert_eq!(served(&h, &from(S, 3)).4, [4, 5], "3 was refused");
        assert_eq!(served(&h, &from(S, 4)).4, [4, 5]);
        assert_eq!(served(&h, &from(S, 6)).4, Vec::<u64>::new(), "up to date");
        assert_eq!(served(&h, &Resume::Fresh).2, 6);
    }

    #[test]
    fn a_client_ahead_of_this_replica_recovers_nothing_and_lives_from_its_position() {
        let mut h = hub(16);
        for seq in 1..=3 {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        let j = h.join(&from(S, 10));
        assert_eq!(j.outcome, JoinOutcome::Recovered);
        assert_eq!(j.live_from, 10);
        assert!(j.backlog.is_empty());
        match j.hello {
            ServerMessage::Hello {
                offset,
                resync,
                onscreen,
                ..
            } => {
                assert_eq!((offset, resync), (10, false));
                assert!(onscreen.is_empty(), "older than what the client shows");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_replica_that_knows_no_epoch_yet_takes_the_client_at_its_word() {
        let h = hub(16);
        assert_eq!(
            served(&h, &from(S, 40)),
            (JoinOutcome::Recovered, S.into(), 40, false, vec![], 40)
        );
        let fresh = served(&h, &Resume::Fresh);
        assert_eq!((fresh.0, fresh.2), (JoinOutcome::Fresh, 0));
        assert_ne!(fresh.1, S, "a placeholder epoch until the agent's is known");
    }

    #[test]
    fn a_new_agent_session_starts_a_new_epoch_and_old_positions_resync() {
        let mut h = hub(16);
        for seq in 1..=4 {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        let restarted = via("00000000000000aa", 1);
        let (offset, _) = accepted(h.apply(new("f1", 1), &restarted));
        assert_eq!(
            (offset, h.epoch(), h.next_offset()),
            (1, "00000000000000aa", 2)
        );
        let old = served(&h, &from(S, 5));
        assert_eq!(
            (old.0, old.1.as_str(), old.2, old.3),
            (JoinOutcome::Resync, "00000000000000aa", 2, true)
        );
        assert_eq!(served(&h, &from("00000000000000aa", 1)).4, [1]);
    }

    #[test]
    fn a_range_starts_where_the_replica_began_receiving() {
        // This replica subscribed while the agent was at seq 5: it cannot answer for 3 and 4.
        let mut h = hub(16);
        for seq in 5..=7 {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        assert_eq!(served(&h, &from(S, 3)).0, JoinOutcome::Resync);
        assert_eq!(served(&h, &from(S, 5)).4, [5, 6, 7]);
    }

    #[test]
    fn a_new_subscription_keeps_the_range_only_if_the_sequence_continues() {
        let mut h = hub(16);
        for seq in 1..=3 {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        accepted(h.apply(new("e4", 4), &via(S, 2)));
        assert_eq!(
            served(&h, &from(S, 1)).4,
            [1, 2, 3, 4],
            "nothing was missed"
        );

        // While away, events 5 and 6 went by.
        accepted(h.apply(new("e7", 7), &via(S, 3)));
        assert_eq!(served(&h, &from(S, 4)).0, JoinOutcome::Resync);
        assert_eq!(served(&h, &from(S, 7)).4, [7]);
    }

    #[test]
    fn ring_wraps_and_evicted_offsets_need_resync() {
        let mut h = hub(3);
        for seq in 0..7 {
            accepted(h.apply(new(&format!("e{seq}"), seq), &origin()));
        }
        assert_eq!(served(&h, &from(S, 4)).4, [4, 5, 6]);
        assert_eq!(served(&h, &from(S, 3)).0, JoinOutcome::Resync, "evicted");
        assert_eq!(served(&h, &from(S, 0)).0, JoinOutcome::Resync, "evicted");
    }

    #[test]
    fn zero_history_recovers_only_when_up_to_date() {
        let mut h = hub(0);
        accepted(h.apply(new("a", 1), &origin()));
        assert_eq!(h.recover(S, 2), Some(Vec::new()));
        assert_eq!(h.recover(S, 1), None);
    }

    #[test]
    fn redeliveries_and_older_seqs_are_dropped() {
        let mut h = hub(8);
        accepted(h.apply(new("a", 5), &origin()));
        assert_eq!(h.apply(new("a", 5), &origin()), Applied::Duplicate);
        assert_eq!(h.apply(new("a", 4), &origin()), Applied::Duplicate);
        accepted(h.apply(card(EventType::Update, "a", 7), &origin()));
        // A late `new` cannot resurrect an ended card.
        accepted(h.apply(card(EventType::End, "a", 9), &origin()));
        assert_eq!(h.apply(new("a", 5), &origin()), Applied::Duplicate);
        assert!(h.onscreen().is_empty());
        assert_eq!(h.next_offset(), 10);
        assert_eq!(served(&h, &from(S, 5)).4, [5, 7, 9]);
    }

    #[test]
    fn an_event_that_arrives_late_takes_its_place_in_the_history() {
        let mut h = hub(8);
        accepted(h.apply(new("a", 1), &origin()));
        accepted(h.apply(new("c", 3), &origin()));
        accepted(h.apply(new("b", 2), &origin()));
        assert_eq!(served(&h, &from(S, 1)).4, [1, 2, 3]);
        assert_eq!(h.next_offset(), 4);
    }

    #[test]
    fn onscreen_follows_new_update_end() {
        let mut h = hub(8);
        accepted(h.apply(new("a", 1), &origin()));
        accepted(h.apply(new("b", 2), &origin()));
        let mut moved = card(EventType::Update, "a", 3);
        moved.score = 0.5;
        accepted(h.apply(moved.clone(), &origin()));
        moved.appeared_at_ms = 1001;
        let mut b = new("b", 2);
        b.appeared_at_ms = 1002;
        assert_eq!(h.onscreen(), &[moved, b]);
        accepted(h.apply(card(EventType::End, "b", 4), &origin()));
        assert_eq!(h.onscreen().len(), 1);
        assert_eq!(h.onscreen()[0].event_id, "a");
        // An update for something never seen as new is on screen all the same.
        accepted(h.apply(card(EventType::Update, "c", 5), &origin()));
        assert_eq!(h.onscreen().len(), 2);
        // An end for something not on screen is still forwarded.
        accepted(h.apply(card(EventType::End, "zz", 6), &origin()));
        assert_eq!(h.onscreen().len(), 2);
    }

    #[test]
    fn onscreen_is_bounded() {
        let mut h = hub(8);
        for i in 0..(MAX_ONSCREEN as u64 + 5) {
            accepted(h.apply(new(&format!("e{i}"), i), &origin()));
        }
        assert_eq!(h.onscreen().len(), MAX_ONSCREEN);
        assert_eq!(h.onscreen()[0].event_id, "e5");
    }

    fn kinds(frames: &[Frame]) -> Vec<(EventType, String, u64)> {
        frames
            .iter()
            .map(|f| match decode(f) {
                ServerMessage::Event { card, offset } => (card.kind, card.event_id, offset),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_newer_snapshot_is_made_true_at_its_seq_and_the_range_restarts_after_it() {
        let mut h = hub(16);
        accepted(h.apply(new("a", 1), &origin()));
        accepted(h.apply(new("b", 2), &origin()));
        // Not newer than what was seen: nothing changes.
        assert!(h.apply_snapshot(2, vec![new("x", 2)], &origin()).is_empty());
        assert_eq!(h.onscreen().len(), 2);

        // Newer: the replica missed 3..=10. "a" left, "b" stays, "c" arrived.
        let frames = h.apply_snapshot(10, vec![new("b", 10), new("c", 10)], &origin());
        assert_eq!(
            kinds(&frames),
            [
                (EventType::End, "a".into(), 10),
                (EventType::New, "c".into(), 10)
            ]
        );
        let ids: Vec<&str> = h.onscreen().iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        // Nobody resumes into what the synthetic events summarised.
        assert_eq!(served(&h, &from(S, 3)).0, JoinOutcome::Resync);
        assert_eq!(served(&h, &from(S, 10)).0, JoinOutcome::Resync);
        assert_eq!(served(&h, &from(S, 11)).4, Vec::<u64>::new());
        assert_eq!(served(&h, &Resume::Fresh).2, 11);
        // Events the snapshot already covers are redeliveries.
        assert_eq!(
            h.apply(card(EventType::Update, "b", 9), &origin()),
            Applied::Duplicate
        );
        assert_eq!(h.apply(new("c", 10), &origin()), Applied::Duplicate);
        accepted(h.apply(card(EventType::Update, "b", 11), &origin()));
        assert_eq!(served(&h, &from(S, 11)).4, [11]);
    }

    #[test]
    fn a_snapshot_seeds_a_fresh_replica_and_the_next_event_confirms_the_range() {
        let mut h = hub(16);
        let frames = h.apply_snapshot(7, vec![new("a", 7)], &origin());
        assert_eq!(kinds(&frames), [(EventType::New, "a".into(), 7)]);
        assert_eq!((h.epoch(), h.next_offset()), (S, 8));
        assert_eq!(h.onscreen().len(), 1);
        assert_eq!(
            h.apply(card(EventType::Update, "a", 6), &origin()),
            Applied::Duplicate
        );
        accepted(h.apply(card(EventType::Update, "a", 8), &origin()));
        assert_eq!(served(&h, &from(S, 8)).4, [8]);

        // Events went by between the snapshot and the subscription: the range starts later.
        let mut g = hub(16);
        g.apply_snapshot(7, vec![new("a", 7)], &origin());
        accepted(g.apply(card(EventType::Update, "a", 10), &origin()));
        assert_eq!(served(&g, &from(S, 8)).0, JoinOutcome::Resync);
        assert_eq!(served(&g, &from(S, 10)).4, [10]);
    }

    #[test]
    fn a_snapshot_of_another_session_starts_its_epoch() {
        let mut h = hub(16);
        accepted(h.apply(new("a", 30), &origin()));
        let fresh = via("00000000000000bb", 1);
        let frames = h.apply_snapshot(2, vec![new("n", 2)], &fresh);
        assert_eq!(
            kinds(&frames),
            [
                (EventType::End, "a".into(), 2),
                (EventType::New, "n".into(), 2)
            ]
        );
        assert_eq!((h.epoch(), h.next_offset()), ("00000000000000bb", 3));
        assert_eq!(served(&h, &from(S, 31)).0, JoinOutcome::Resync);
        // An empty snapshot tells no session: it belongs to the current epoch.
        let frames = h.apply_snapshot(5, Vec::new(), &fresh);
        assert_eq!(kinds(&frames), [(EventType::End, "n".into(), 5)]);
        assert_eq!(h.epoch(), "00000000000000bb");
        assert!(
            hub(4).apply_snapshot(5, Vec::new(), &origin()).is_empty(),
            "no epoch yet"
        );
    }

    fn appeared(frame: &Frame) -> u64 {
        match decode(frame) {
            ServerMessage::Event { card, .. } => card.appeared_at_ms,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn appeared_at_is_the_capture_time_of_the_new() {
        let mut h = hub(8);
        // `new` at seq 1 was captured at 1001: its updates and end carry that time.
        assert_eq!(appeared(&accepted(h.apply(new("a", 1), &origin())).1), 1001);
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "a", 5), &origin())).1),
            1001
        );
        assert_eq!(
            h.onscreen()[0].appeared_at_ms,
            1001,
            "late joiners see it too"
        );
        assert_eq!(h.join(&Resume::Fresh).hello, {
            let mut want = card(EventType::Update, "a", 5);
            want.appeared_at_ms = 1001;
            ServerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                epoch: S.into(),
                offset: 6,
                resync: false,
                onscreen: vec![want],
                viewers: 0,
                chat: None,
            }
        });
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::End, "a", 7), &origin())).1),
            1001
        );
        // One whose `new` was never seen: its own capture time.
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 9), &origin())).1),
            1009
        );
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 10), &origin())).1),
            1009
        );
        // A snapshot's card already on screen keeps its appearance time.
        let frames = h.apply_snapshot(20, vec![new("b", 20)], &origin());
        assert!(frames.is_empty());
        assert_eq!(h.onscreen()[0].appeared_at_ms, 1009);
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 21), &origin())).1),
            1009
        );
    }

    #[test]
    fn dedup_memory_is_bounded_but_keeps_onscreen_ids() {
        let mut h = hub(1);
        accepted(h.apply(new("stays", 0), &origin()));
        let n = MIN_DEDUP_MEMORY as u64 * 3;
        for i in 1..=n {
            let id = format!("e{i}");
            accepted(h.apply(new(&id, 2 * i), &origin()));
            accepted(h.apply(card(EventType::End, &id, 2 * i + 1), &origin()));
        }
        assert!(h.seen.len() <= MIN_DEDUP_MEMORY * 2 + 1, "{}", h.seen.len());
        // The long-lived appearance is still protected from redelivery.
        assert_eq!(h.apply(new("stays", 0), &origin()), Applied::Duplicate);
        // Recent ones too.
        assert_eq!(
            h.apply(card(EventType::End, &format!("e{n}"), 2 * n + 1), &origin()),
            Applied::Duplicate
        );
    }
}
