//! One stream's hub as a pure state machine: deduplication, offsets in an epoch, the ring buffer
//! that lets a reconnecting viewer recover, and the on-screen snapshot for late joiners.
//!
//! Each accepted event is encoded once, here, into a [`Frame`] that every connection shares.
//! Each card gets its appearance's `appeared_at_ms`: the capture time of its `new`, remembered
//! with the event id, so that an update (and a late joiner's `hello`) still says when the product
//! first appeared.

use std::collections::{HashMap, VecDeque};

use axum::extract::ws::Utf8Bytes;
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
    /// New: encoded at this offset, to be sent to every viewer.
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
    /// `?epoch=E&offset=N`: the next offset the client wants.
    From {
        /// The epoch it saw.
        epoch: String,
        /// The next offset it wants.
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
}

/// How a join was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// No position given.
    Fresh,
    /// Everything since the position was still held.
    Recovered,
    /// The position is gone (another epoch, or evicted from the ring): start over.
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
    next_offset: u64,
    history: VecDeque<(u64, Frame)>,
    history_cap: usize,
    onscreen: Vec<Card>,
    seen: HashMap<String, Seen>,
    dedup_cap: usize,
    tick: u64,
    max_seq: Option<u64>,
}

impl HubState {
    /// A hub with the given epoch (random per process start) keeping `history` events.
    pub fn new(epoch: String, history: usize) -> Self {
        HubState {
            epoch,
            next_offset: 0,
            history: VecDeque::with_capacity(history.min(4096)),
            history_cap: history,
            onscreen: Vec::new(),
            seen: HashMap::new(),
            dedup_cap: history.saturating_mul(2).max(MIN_DEDUP_MEMORY),
            tick: 0,
            max_seq: None,
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The offset the next accepted event will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The cards on screen now, oldest first.
    pub fn onscreen(&self) -> &[Card] {
        &self.onscreen
    }

    /// Applies one enriched event: drops redeliveries, sets `appeared_at_ms`, updates the
    /// on-screen map, and encodes it.
    pub fn apply(&mut self, mut card: Card) -> Applied {
        let seen = self.seen.get(&card.event_id);
        if seen.is_some_and(|s| card.seq <= s.seq) {
            return Applied::Duplicate;
        }
        card.appeared_at_ms = match (card.kind, seen) {
            (EventType::New, _) | (_, None) => card.captured_at_ms,
            (_, Some(s)) => s.appeared_at_ms,
        };
        self.remember(&card.event_id, card.seq, card.appeared_at_ms);
        self.max_seq = Some(self.max_seq.map_or(card.seq, |m| m.max(card.seq)));
        self.track_onscreen(&card);
        let (offset, frame) = self.push(card);
        Applied::Accepted { offset, frame }
    }

    /// Applies a retained on-screen snapshot. One no newer than the newest event seen changes
    /// nothing; a newer one (the bridge missed events, e.g. while away from the broker) is made
    /// true for viewers with `end` cards for what left and `new` cards for what arrived.
    pub fn apply_snapshot(&mut self, seq: u64, cards: Vec<Card>) -> Vec<Frame> {
        if self.max_seq.is_some_and(|m| seq <= m) {
            return Vec::new();
        }
        self.max_seq = Some(seq);
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
            if let Applied::Accepted { frame, .. } = self.apply(card) {
                frames.push(frame);
            }
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
            if let Applied::Accepted { frame, .. } = self.apply(card) {
                frames.push(frame);
            }
        }
        frames
    }

    /// Serves a connecting client: `hello` with what is on screen, plus what it missed.
    pub fn join(&self, resume: &Resume) -> Join {
        let (outcome, offset, backlog) = match resume {
            Resume::Fresh => (JoinOutcome::Fresh, self.next_offset, Vec::new()),
            Resume::Unusable => (JoinOutcome::Resync, self.next_offset, Vec::new()),
            Resume::From { epoch, offset } => match self.recover(epoch, *offset) {
                Some(backlog) => (JoinOutcome::Recovered, *offset, backlog),
                None => (JoinOutcome::Resync, self.next_offset, Vec::new()),
            },
        };
        Join {
            hello: ServerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                epoch: self.epoch.clone(),
                offset,
                resync: outcome == JoinOutcome::Resync,
                onscreen: self.onscreen.clone(),
                // The shared hub fills these in: they are not the event history's business.
                viewers: 0,
                chat: None,
            },
            backlog,
            outcome,
        }
    }

    /// The frames from `offset` on, or `None` when they are no longer all held ("resync").
    pub fn recover(&self, epoch: &str, offset: u64) -> Option<Vec<Frame>> {
        if epoch != self.epoch || offset > self.next_offset {
            return None;
        }
        if offset == self.next_offset {
            return Some(Vec::new());
        }
        let oldest = self.history.front()?.0;
        if offset < oldest {
            return None;
        }
        let skip = usize::try_from(offset - oldest).ok()?;
        Some(
            self.history
                .iter()
                .skip(skip)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }

    fn push(&mut self, card: Card) -> (u64, Frame) {
        let offset = self.next_offset;
        self.next_offset += 1;
        let frame = Frame::from(ServerMessage::Event { offset, card }.encode());
        if self.history_cap > 0 {
            if self.history.len() == self.history_cap {
                self.history.pop_front();
            }
            self.history.push_back((offset, frame.clone()));
        }
        (offset, frame)
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

    fn decode(frame: &Frame) -> ServerMessage {
        serde_json::from_str(frame.as_str()).expect("frames are ServerMessages")
    }

    fn accepted(a: Applied) -> (u64, Frame) {
        match a {
            Applied::Accepted { offset, frame } => (offset, frame),
            Applied::Duplicate => panic!("expected accepted"),
        }
    }

    #[test]
    fn offsets_increase_and_frames_are_event_messages() {
        let mut h = HubState::new("ep".into(), 8);
        let (o0, f0) = accepted(h.apply(card(EventType::New, "a", 1)));
        let (o1, _) = accepted(h.apply(card(EventType::New, "b", 2)));
        assert_eq!((o0, o1, h.next_offset()), (0, 1, 2));
        match decode(&f0) {
            ServerMessage::Event { offset, card: c } => {
                assert_eq!(offset, 0);
                let mut want = card(EventType::New, "a", 1);
                want.appeared_at_ms = want.captured_at_ms;
                assert_eq!(c, want);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redeliveries_and_older_seqs_are_dropped() {
        let mut h = HubState::new("ep".into(), 8);
        accepted(h.apply(card(EventType::New, "a", 5)));
        assert_eq!(h.apply(card(EventType::New, "a", 5)), Applied::Duplicate);
        assert_eq!(h.apply(card(EventType::New, "a", 4)), Applied::Duplicate);
        accepted(h.apply(card(EventType::Update, "a", 7)));
        // A late `new` cannot resurrect an ended card.
        accepted(h.apply(card(EventType::End, "a", 9)));
        assert_eq!(h.apply(card(EventType::New, "a", 5)), Applied::Duplicate);
        assert!(h.onscreen().is_empty());
        // The same seq under another event id is a different event.
        accepted(h.apply(card(EventType::New, "b", 5)));
        assert_eq!(h.next_offset(), 4);
    }

    #[test]
    fn onscreen_follows_new_update_end() {
        let mut h = HubState::new("ep".into(), 8);
        accepted(h.apply(card(EventType::New, "a", 1)));
        accepted(h.apply(card(EventType::New, "b", 2)));
        let mut moved = card(EventType::Update, "a", 3);
        moved.score = 0.5;
        accepted(h.apply(moved.clone()));
        moved.appeared_at_ms = 1001;
        let mut b = card(EventType::New, "b", 2);
        b.appeared_at_ms = 1002;
        assert_eq!(h.onscreen(), &[moved, b]);
        accepted(h.apply(card(EventType::End, "b", 4)));
        assert_eq!(h.onscreen().len(), 1);
        assert_eq!(h.onscreen()[0].event_id, "a");
        // An update for something never seen as new is on screen all the same.
        accepted(h.apply(card(EventType::Update, "c", 5)));
        assert_eq!(h.onscreen().len(), 2);
        // An end for something not on screen is still forwarded.
        accepted(h.apply(card(EventType::End, "zz", 6)));
        assert_eq!(h.onscreen().len(), 2);
    }

    #[test]
    fn onscreen_is_bounded() {
        let mut h = HubState::new("ep".into(), 8);
        for i in 0..(MAX_ONSCREEN as u64 + 5) {
            accepted(h.apply(card(EventType::New, &format!("e{i}"), i)));
        }
        assert_eq!(h.onscreen().len(), MAX_ONSCREEN);
        assert_eq!(h.onscreen()[0].event_id, "e5");
    }

    #[test]
    fn recover_returns_what_was_missed() {
        let mut h = HubState::new("ep".into(), 8);
        let frames: Vec<Frame> = (0..5)
            .map(|i| accepted(h.apply(card(EventType::New, &format!("e{i}"), i))).1)
            .collect();
        assert_eq!(h.recover("ep", 2).expect("held"), frames[2..].to_vec());
        assert_eq!(h.recover("ep", 0).expect("held"), frames);
        assert_eq!(h.recover("ep", 5).expect("up to date"), Vec::<Frame>::new());
        assert_eq!(h.recover("ep", 6), None, "from the future");
        assert_eq!(h.recover("other", 2), None, "another epoch");
    }

    #[test]
    fn ring_wraps_and_evicted_offsets_need_resync() {
        let mut h = HubState::new("ep".into(), 3);
        let frames: Vec<Frame> = (0..7)
            .map(|i| accepted(h.apply(card(EventType::New, &format!("e{i}"), i))).1)
            .collect();
        assert_eq!(h.recover("ep", 4).expect("held"), frames[4..].to_vec());
        assert_eq!(h.recover("ep", 3), None, "evicted");
        assert_eq!(h.recover("ep", 0), None, "evicted");
        let offsets: Vec<u64> = h
            .recover("ep", 4)
            .expect("held")
            .iter()
            .map(|f| match decode(f) {
                ServerMessage::Event { offset, .. } => offset,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(offsets, [4, 5, 6]);
    }

    #[test]
    fn zero_history_recovers_only_when_up_to_date() {
        let mut h = HubState::new("ep".into(), 0);
        accepted(h.apply(card(EventType::New, "a", 1)));
        assert_eq!(h.recover("ep", 1), Some(Vec::new()));
        assert_eq!(h.recover("ep", 0), None);
    }

    #[test]
    fn join_says_fresh_recovered_or_resync() {
        let mut h = HubState::new("ep".into(), 2);
        for i in 0..4 {
            accepted(h.apply(card(EventType::New, &format!("e{i}"), i)));
        }
        let fresh = h.join(&Resume::Fresh);
        assert_eq!(fresh.outcome, JoinOutcome::Fresh);
        match &fresh.hello {
            ServerMessage::Hello {
                protocol,
                epoch,
                offset,
                resync,
                onscreen,
                ..
            } => {
                assert_eq!(
                    (*protocol, epoch.as_str(), *offset, *resync),
                    (1, "ep", 4, false)
                );
                assert_eq!(onscreen.len(), 4);
            }
            other => panic!("{other:?}"),
        }
        assert!(fresh.backlog.is_empty());

        let back = h.join(&Resume::From {
            epoch: "ep".into(),
            offset: 3,
        });
        assert_eq!(back.outcome, JoinOutcome::Recovered);
        assert_eq!(back.backlog.len(), 1);
        assert!(matches!(
            back.hello,
            ServerMessage::Hello {
                offset: 3,
                resync: false,
                ..
            }
        ));

        for resume in [
            Resume::From {
                epoch: "ep".into(),
                offset: 1,
            },
            Resume::From {
                epoch: "old".into(),
                offset: 3,
            },
            Resume::Unusable,
        ] {
            let j = h.join(&resume);
            assert_eq!(j.outcome, JoinOutcome::Resync, "{resume:?}");
            assert!(j.backlog.is_empty());
            assert!(matches!(
                j.hello,
                ServerMessage::Hello {
                    offset: 4,
                    resync: true,
                    ..
                }
            ));
        }
    }

    #[test]
    fn newer_snapshot_reconciles_and_older_one_is_ignored() {
        let mut h = HubState::new("ep".into(), 16);
        accepted(h.apply(card(EventType::New, "a", 1)));
        accepted(h.apply(card(EventType::New, "b", 2)));
        // Not newer than what was seen: nothing changes.
        assert!(h
            .apply_snapshot(2, vec![card(EventType::New, "x", 2)])
            .is_empty());
        assert_eq!(h.onscreen().len(), 2);

        // Newer: "a" left, "b" stays, "c" arrived.
        let frames = h.apply_snapshot(
            10,
            vec![card(EventType::New, "b", 10), card(EventType::New, "c", 10)],
        );
        let kinds: Vec<(EventType, String)> = frames
            .iter()
            .map(|f| match decode(f) {
                ServerMessage::Event { card, .. } => (card.kind, card.event_id),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [(EventType::End, "a".into()), (EventType::New, "c".into())]
        );
        let ids: Vec<&str> = h.onscreen().iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        // Events the snapshot already covers are redeliveries.
        assert_eq!(h.apply(card(EventType::Update, "b", 9)), Applied::Duplicate);
        assert_eq!(h.apply(card(EventType::New, "c", 10)), Applied::Duplicate);
        accepted(h.apply(card(EventType::Update, "b", 11)));
    }

    #[test]
    fn first_snapshot_seeds_a_fresh_hub() {
        let mut h = HubState::new("ep".into(), 16);
        let frames = h.apply_snapshot(7, vec![card(EventType::New, "a", 7)]);
        assert_eq!(frames.len(), 1);
        assert_eq!(h.onscreen().len(), 1);
        assert_eq!(h.apply(card(EventType::Update, "a", 6)), Applied::Duplicate);
    }

    fn appeared(frame: &Frame) -> u64 {
        match decode(frame) {
            ServerMessage::Event { card, .. } => card.appeared_at_ms,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn appeared_at_is_the_capture_time_of_the_new() {
        let mut h = HubState::new("ep".into(), 8);
        // `new` at seq 1 was captured at 1001: its updates and end carry that time.
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::New, "a", 1))).1),
            1001
        );
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "a", 5))).1),
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
                epoch: "ep".into(),
                offset: 2,
                resync: false,
                onscreen: vec![want],
                viewers: 0,
                chat: None,
            }
        });
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::End, "a", 7))).1),
            1001
        );
        // One whose `new` was never seen: its own capture time.
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 9))).1),
            1009
        );
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 10))).1),
            1009
        );
        // A snapshot's card already on screen keeps its appearance time.
        let frames = h.apply_snapshot(20, vec![card(EventType::New, "b", 20)]);
        assert!(frames.is_empty());
        assert_eq!(h.onscreen()[0].appeared_at_ms, 1009);
        assert_eq!(
            appeared(&accepted(h.apply(card(EventType::Update, "b", 21))).1),
            1009
        );
    }

    #[test]
    fn dedup_memory_is_bounded_but_keeps_onscreen_ids() {
        let mut h = HubState::new("ep".into(), 1);
        accepted(h.apply(card(EventType::New, "stays", 0)));
        let n = MIN_DEDUP_MEMORY as u64 * 3;
        for i in 1..=n {
            let id = format!("e{i}");
            accepted(h.apply(card(EventType::New, &id, i)));
            accepted(h.apply(card(EventType::End, &id, i + 1)));
        }
        assert!(h.seen.len() <= MIN_DEDUP_MEMORY * 2 + 1, "{}", h.seen.len());
        // The long-lived appearance is still protected from redelivery.
        assert_eq!(
            h.apply(card(EventType::New, "stays", 0)),
            Applied::Duplicate
        );
        // Recent ones too.
        assert_eq!(
            h.apply(card(EventType::End, &format!("e{n}"), n + 1)),
            Applied::Duplicate
        );
    }
}
