//! The outbox's decisions as a pure state machine: what to send next, what an acknowledgement
//! removes, what to drop when over the byte bound, and the replay order after a lost connection
//! or a restart. No I/O and no clock: [`super::Outbox`] applies each decision to the disk.
//!
//! Entries are kept in the order they were pushed (ids increase). The ones handed to the broker
//! and not yet acknowledged ("in flight") are always a prefix of the queue: sending takes the
//! oldest waiting entry, pushing appends, dropping removes from the front, and a lost connection
//! puts every in-flight entry back to waiting, so the replay starts again from the oldest.

use std::collections::VecDeque;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// Position in the outbox: increases with every push and survives restarts.
    pub id: u64,
    /// The event's own sequence number (kept to continue the sequence after a restart).
    pub seq: u64,
    /// Bytes it counts against the bound.
    pub size: u64,
    /// The payload.
    pub item: T,
}

/// What [`Queue::push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed<T> {
    /// The new entry's id; `None` when the entry alone is larger than the whole bound and was
    /// dropped itself (and counted).
    pub id: Option<u64>,
    /// Older entries dropped to make room, oldest first.
    pub dropped: Vec<Entry<T>>,
}

/// The queue of events waiting for the broker's acknowledgement, bounded in bytes.
#[derive(Debug, Clone)]
pub struct Queue<T> {
    max_bytes: u64,
    window: usize,
    entries: VecDeque<Entry<T>>,
    /// `entries[..in_flight]` have been handed to the broker and await its acknowledgement.
    in_flight: usize,
    bytes: u64,
    next_id: u64,
    dropped: u64,
}

impl<T> Queue<T> {
    /// An empty queue holding at most `max_bytes`, with at most `window` entries in flight.
    pub fn new(max_bytes: u64, window: usize) -> Self {
        Queue {
            max_bytes,
            window: window.max(1),
            entries: VecDeque::new(),
            in_flight: 0,
            bytes: 0,
            next_id: 1,
            dropped: 0,
        }
    }

    /// Puts back an entry found on disk at start-up; entries must come in id order. Applies the
    /// bound as `push` does (the bound may have shrunk since), returning what it dropped.
    pub fn restore(&mut self, id: u64, seq: u64, size: u64, item: T) -> Vec<Entry<T>> {
        let id = id.max(self.next_id);
        self.next_id = id + 1;
        self.insert(id, seq, size, item).dropped
    }

    /// The id the next push gets is at least `next_id` (after a restart, from the disk).
    pub fn advance_ids(&mut self, next_id: u64) {
        self.next_id = self.next_id.max(next_id);
    }

    /// Appends an entry, dropping the oldest entries (in flight or not) while the bound would
    /// be exceeded.
    pub fn push(&mut self, seq: u64, size: u64, item: T) -> Pushed<T> {
        let id = self.next_id;
        self.next_id += 1;
        self.insert(id, seq, size, item)
    }

    fn insert(&mut self, id: u64, seq: u64, size: u64, item: T) -> Pushed<T> {
        if size > self.max_bytes {
            self.dropped += 1;
            return Pushed {
                id: None,
                dropped: Vec::new(),
            };
        }
        let mut dropped = Vec::new();
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.in_flight = self.in_flight.saturating_sub(1);
            self.bytes -= old.size;
            self.dropped += 1;
            dropped.push(old);
        }
        self.bytes += size;
        self.entries.push_back(Entry {
            id,
            seq,
            size,
            item,
        });
        Pushed {
            id: Some(id),
            dropped,
        }
    }

    /// The entry to hand to the broker next, if the in-flight window has room: the oldest one
    /// not in flight. Call [`Queue::mark_sent`] once it has been handed over.
    pub fn next_to_send(&self) -> Option<&Entry<T>> {
        if self.in_flight >= self.window {
            return None;
        }
        self.entries.get(self.in_flight)
    }

    /// Records that the entry [`Queue::next_to_send`] returned is in flight; returns its id.
    pub fn mark_sent(&mut self) -> Option<u64> {
        let id = self.next_to_send()?.id;
        self.in_flight += 1;
        Some(id)
    }

    /// The broker acknowledged entry `id`: removes and returns it (`None` if it is gone already,
    /// dropped to make room or acknowledged before).
    pub fn ack(&mut self, id: u64) -> Option<Entry<T>> {
        let index = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        let entry = self.entries.remove(index)?;
        if index < self.in_flight {
            self.in_flight -= 1;
        }
        self.bytes -= entry.size;
        Some(entry)
    }

    /// The connection is gone, and with it every unacknowledged publish: all of them wait
    /// again, and the next send is the oldest entry.
    pub fn connection_lost(&mut self) {
        self.in_flight = 0;
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries handed to the broker and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Bytes stored, counted as the pushes said.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Entries dropped for room since this queue was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The id the next push will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The oldest entry's sequence number.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Entry<T>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids<T>(q: &Queue<T>) -> Vec<u64> {
        q.iter().map(|e| e.id).collect()
    }

    #[test]
    fn sends_in_order_within_the_window_and_replays_from_the_oldest_after_a_loss() {
        let mut q = Queue::new(1000, 2);
        for seq in 1..=4 {
            q.push(seq, 10, ());
        }
        assert_eq!(q.mark_sent(), Some(1));
        assert_eq!(q.mark_sent(), Some(2));
        assert_eq!(q.mark_sent(), None, "the window of 2 is full");
        assert!(q.ack(1).is_some());
        assert_eq!(q.mark_sent(), Some(3));
        q.connection_lost();
        assert_eq!(q.in_flight(), 0);
        assert_eq!(
            q.mark_sent(),
            Some(2),
            "replay starts from the oldest unacknowledged"
        );
        assert_eq!(q.mark_sent(), Some(3));
        assert_eq!(ids(&q), vec![2, 3, 4]);
    }

    #[test]
    fn over_the_bound_the_oldest_go_first_and_are_counted() {
        let mut q = Queue::new(30, 8);
        for seq in 1..=3 {
            assert!(q.push(seq, 10, seq).dropped.is_empty());
        }
        q.mark_sent();
        let pushed = q.push(4, 15, 4);
        let gone: Vec<u64> = pushed.dropped.iter().map(|e| e.seq).collect();
        assert_eq!(
            gone,
            vec![1, 2],
            "10 + 10 + 10 + 15 > 30: two oldest dropped"
        );
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.bytes(), 25);
        assert_eq!(q.in_flight(), 0, "the dropped entry was the one in flight");
        assert_eq!(q.oldest_seq(), Some(3));
        let huge = q.push(5, 31, 5);
        assert_eq!(huge.id, None, "larger than the whole bound: dropped itself");
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn an_ack_for_a_dropped_or_repeated_entry_changes_nothing() {
        let mut q = Queue::new(20, 8);
        q.push(1, 10, ());
        q.mark_sent();
        q.push(2, 10, ());
        q.push(3, 10, ()); // drops 1 while it is in flight
        assert!(q.ack(1).is_none());
        assert_eq!(q.mark_sent(), Some(2));
        assert!(q.ack(2).is_some());
        assert!(q.ack(2).is_none());
        assert_eq!((q.len(), q.in_flight(), q.bytes()), (1, 0, 10));
    }

    #[test]
    fn restore_keeps_ids_and_applies_a_smaller_bound() {
        let mut q = Queue::new(20, 8);
        assert!(q.restore(7, 70, 10, ()).is_empty());
        assert!(q.restore(9, 90, 10, ()).is_empty());
        let dropped = q.restore(12, 120, 10, ());
        assert_eq!(dropped.len(), 1);
        assert_eq!(ids(&q), vec![9, 12]);
        q.advance_ids(20);
        assert_eq!(q.push(130, 1, ()).dropped.len(), 1);
        assert_eq!(ids(&q), vec![12, 20]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        Send,
        Ack(usize),
        Lost,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..40).prop_map(Op::Push),
            3 => Just(Op::Send),
            3 => (0usize..16).prop_map(Op::Ack),
            1 => Just(Op::Lost),
        ]
    }

    proptest! {
        /// Any interleaving of pushes, sends, acknowledgements (in any order, of anything in
        /// flight) and lost connections keeps: the byte bound; push order; every entry either
        /// still stored, acknowledged or dropped (exactly one); drops only ever the oldest;
        /// sends in order within a connection and from the oldest after a loss.
        #[test]
        fn order_bound_and_accounting_hold(
            max_bytes in 40u64..200,
            window in 1usize..6,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut q: Queue<u64> = Queue::new(max_bytes, window);
            let mut pushed: Vec<u64> = Vec::new();
            let mut acked: Vec<u64> = Vec::new();
            let mut dropped: Vec<u64> = Vec::new();
            let mut in_flight: Vec<u64> = Vec::new();
            let mut last_sent: Option<u64> = None;
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Push(size) => {
                        seq += 1;
                        let oldest_before = q.iter().next().map(|e| e.id);
                        let result = q.push(seq, size, seq);
                        if let Some(first) = result.dropped.first() {
                            prop_assert_eq!(Some(first.id), oldest_before, "drops start at the oldest");
                        }
                        for w in result.dropped.windows(2) {
                            prop_assert!(w[0].id < w[1].id);
                        }
                        for e in &result.dropped {
                            dropped.push(e.item);
                            in_flight.retain(|&s| s != e.item);
                        }
                        match result.id {
                            Some(_) => pushed.push(seq),
                            None => {
                                prop_assert!(size > max_bytes);
                                dropped.push(seq);
                            }
                        }
                    }
                    Op::Send => {
                        let next = q.next_to_send().map(|e| (e.id, e.item));
                        let sent = q.mark_sent();
                        prop_assert_eq!(sent, next.map(|n| n.0));
                        if let Some((id, item)) = next {
                            if let Some(prev) = last_sent {
                                prop_assert!(id > prev, "sends go in push order");
                            } else {
                                prop_assert_eq!(Some(id), q.iter().next().map(|e| e.id),
                                    "the first send after a loss is the oldest entry");
                            }
                            last_sent = Some(id);
                            in_flight.push(item);
                        }
                    }
                    Op::Ack(i) => {
                        if !in_flight.is_empty() {
                            let item = in_flight.remove(i % in_flight.len());
                            let id = q.iter().find(|e| e.item == item).map(|e| e.id);
                            let id = id.expect("in flight means stored");
                            prop_assert_eq!(q.ack(id).map(|e| e.item), Some(item));
                            acked.push(item);
                        }
                    }
                    Op::Lost => {
                        q.connection_lost();
                        in_flight.clear();
                        last_sent = None;
                    }
                }
                prop_assert!(q.bytes() <= max_bytes);
                prop_assert_eq!(q.bytes(), q.iter().map(|e| e.size).sum::<u64>());
                prop_assert!(q.in_flight() <= window);
                prop_assert_eq!(q.in_flight(), in_flight.len());
                let stored: Vec<u64> = q.iter().map(|e| e.item).collect();
                prop_assert!(stored.windows(2).all(|w| w[0] < w[1]), "push order kept");
                prop_assert_eq!(q.dropped(), dropped.len() as u64);
                let mut all: Vec<u64> = stored.iter().chain(&acked).chain(&dropped).copied().collect();
                all.sort_unstable();
                let mut expected: Vec<u64> = (1..=seq).collect();
                expected.sort_unstable();
                prop_assert_eq!(all, expected, "each event stored, acknowledged or dropped, once");
                // what is in flight is a prefix of the queue
                let prefix: Vec<u64> = stored.iter().take(q.in_flight()).copied().collect();
                let mut flying = in_flight.clone();
                flying.sort_unstable();
                prop_assert_eq!(prefix, flying);
            }
        }
    }
}
