//! The durable outbox: the pure [`Queue`] with each of its decisions applied to the on-disk
//! [`Log`]. An event is on disk before it can be sent and leaves the disk only when the broker
//! acknowledges it, or when it is dropped (counted, logged) to keep within the byte bound.
//!
//! Every call does blocking file I/O: async callers run it on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::log::{event_record_len, Log, LogError};
use super::queue::{Entry, Queue};

/// The log is compacted once it is larger than twice the live events plus this.
const COMPACT_SLACK_BYTES: u64 = 1 << 20;
/// While the outbox stays full, drops are logged at most this often (each with its count).
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The disk refused it; the event is not stored (and counted as dropped).
    #[error("the outbox cannot store events: {0}")]
    Log(#[from] LogError),
    /// Larger than the whole bound (counted as dropped).
    #[error(
        "event seq {seq} takes {size} bytes, over the outbox bound of {max_bytes} bytes: \
         dropped (raise `[outbox] max_bytes`)"
    )]
    TooLarge {
        /// The event's sequence number.
        seq: u64,
        /// Bytes it would take.
        size: u64,
        /// The bound.
        max_bytes: u64,
    },
}

/// Counters the service can read at any time (for stats).
#[derive(Debug, Default)]
pub struct OutboxStats {
    depth: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    acked: AtomicU64,
}

/// A reading of [`OutboxStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Events stored, waiting for the broker's acknowledgement.
    pub depth: u64,
    /// Bytes they take in the log.
    pub bytes: u64,
    /// Events dropped (the oldest, for room; or refused by the disk) since start-up.
    pub dropped: u64,
    /// Events acknowledged by the broker since start-up.
    pub acked: u64,
}

impl OutboxStats {
    /// The counters now.
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            depth: self.depth.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
        }
    }
}

/// The outbox of one stream.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    log: Log,
    queue: Queue<Vec<u8>>,
    first_seq: u64,
    next_seq: u64,
    session: u64,
    stats: Arc<OutboxStats>,
    /// A write failed: rewrite the log from memory before trusting it again.
    needs_compaction: bool,
    /// When drops were last logged, and how many since.
    last_drop_warning: Option<Instant>,
    unreported_drops: Vec<u64>,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, bounded to `max_bytes` of events, with at most
    /// `window` events in flight. Events found there come first, in their order.
    pub fn open(dir: &Path, max_bytes: u64, window: usize) -> Result<Outbox, OutboxError> {
        let (mut log, recovered) = Log::open(dir)?;
        let mut queue = Queue::new(max_bytes, window);
        queue.advance_ids(recovered.next_id);
        let mut dropped = 0u64;
        for (id, seq, payload) in recovered.events {
            let size = event_record_len(payload.len());
            dropped += queue.restore(id, seq, size, payload).len() as u64;
        }
        // a sequence that restarts (a new outbox, or one whose counters were lost) gets a new
        // session; one that continues keeps its own
        let session = recovered.session.unwrap_or_else(new_session);
        log.compact(
            queue.next_id(),
            recovered.next_seq,
            session,
            queue.iter().map(|e| (e.id, e.seq, e.item.as_slice())),
        )?;
        let outbox = Outbox {
            dir: dir.to_owned(),
            log,
            queue,
            first_seq: recovered.next_seq,
            next_seq: recovered.next_seq,
            session,
            stats: Arc::new(OutboxStats::default()),
            needs_compaction: false,
            last_drop_warning: None,
            unreported_drops: Vec::new(),
        };
        outbox.stats.dropped.store(dropped, Ordering::Relaxed);
        outbox.publish_depth();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_bytes,
                dir = %dir.display(),
                "the outbox held more than its bound: dropped the oldest events"
            );
        }
        if !outbox.queue.is_empty() {
            tracing::info!(
                events = outbox.queue.len(),
                oldest_seq = outbox.queue.oldest_seq(),
                dir = %dir.display(),
                "events stored before the restart go out first"
            );
        }
        Ok(outbox)
    }

    /// The sequence number after the highest one ever stored here (1 for a new outbox), as it
    /// was when opened: where the tracker continues after a restart.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The session of the outbox's sequence, as 16 hex digits: created with the sequence and
    /// stored with it, so it changes exactly when the numbering restarts (a new or wiped outbox).
    pub fn session(&self) -> String {
        format_session(self.session)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters, shared.
    pub fn stats(&self) -> Arc<OutboxStats> {
        self.stats.clone()
    }

    /// Stores an event; it is on disk when this returns `Ok`. Drops the oldest events while the
    /// bound would be exceeded (logged at warn and counted).
    pub fn push(&mut self, seq: u64, payload: Vec<u8>) -> Result<(), OutboxError> {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        if self.needs_compaction {
            if let Err(e) = self.compact() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        let size = event_record_len(payload.len());
        let pushed = self.queue.push(seq, size, payload);
        let Some(id) = pushed.id else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(OutboxError::TooLarge {
                seq,
                size,
                max_bytes: self.queue.max_bytes(),
            });
        };
        let dropped: Vec<u64> = pushed.dropped.iter().map(|e| e.id).collect();
        let stored = self
            .queue
            .iter()
            .next_back()
            .expect("the entry was just pushed");
        let written = self
            .log
            .append_event(&dropped, id, seq, stored.item.as_slice());
        self.report_drops(&pushed.dropped);
        if let Err(e) = written {
            // never send what is not on disk
            self.queue.ack(id);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.needs_compaction = true;
            self.publish_depth();
            return Err(e.into());
        }
        self.publish_depth();
        self.maybe_compact();
        Ok(())
    }

    /// Counts drops, and logs them at warn: at once, then at most every
    /// [`DROP_WARNING_INTERVAL`] while the outbox stays full (so a long outage does not flood
    /// the journal), each time with the sequence numbers dropped since the last warning.
    fn report_drops(&mut self, dropped: &[Entry<Vec<u8>>]) {
        if dropped.is_empty() {
            return;
        }
        let total = self
            .stats
            .dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed)
            + dropped.len() as u64;
        self.unreported_drops.extend(dropped.iter().map(|e| e.seq));
        let due = self
            .last_drop_warning
            .is_none_or(|t| t.elapsed() >= DROP_WARNING_INTERVAL);
        if !due {
            return;
        }
        let seqs = std::mem::take(&mut self.unreported_drops);
        self.last_drop_warning = Some(Instant::now());
        tracing::warn!(
            dropped = seqs.len(),
            first_seq = seqs.first().copied(),
            last_seq = seqs.last().copied(),
            dropped_total = total,
            max_bytes = self.queue.max_bytes(),
            "outbox full: dropped the oldest events (raise `[outbox] max_bytes` to keep more)"
        );
    }

    /// The next event to hand to the broker (`id`, payload), if the in-flight window has room.
    pub fn next_to_send(&self) -> Option<(u64, &[u8])> {
        self.queue.next_to_send().map(|e| (e.id, e.item.as_slice()))
    }

    /// The event [`Outbox::next_to_send`] returned has been handed over.
    pub fn mark_sent(&mut self) {
        self.queue.mark_sent();
    }

    /// The broker acknowledged event `id`: removes it from memory and disk. False if it was no
    /// longer stored (dropped for room meanwhile).
    pub fn ack(&mut self, id: u64) -> bool {
        if self.queue.ack(id).is_none() {
            return false;
        }
        self.stats.acked.fetch_add(1, Ordering::Relaxed);
        self.publish_depth();
        if let Err(e) = self.log.append_removals(&[id]) {
            // the event stays on disk: sent again after a restart (a duplicate, dropped by the
            // bridge); the next compaction writes the log afresh
            tracing::warn!(error = %e, "cannot record an acknowledgement in the outbox");
            self.needs_compaction = true;
        }
        self.maybe_compact();
        true
    }

    /// The connection is gone: everything unacknowledged is sent again, oldest first.
    pub fn connection_lost(&mut self) {
        self.queue.connection_lost();
    }

    /// Events stored.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when every stored event has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events handed over and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    /// The oldest stored event's sequence number.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.queue.oldest_seq()
    }

    fn publish_depth(&self) {
        self.stats
            .depth
            .store(self.queue.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .store(self.queue.bytes(), Ordering::Relaxed);
    }

    fn maybe_compact(&mut self) {
        if self.needs_compaction || self.log.len() > 2 * self.queue.bytes() + COMPACT_SLACK_BYTES {
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "cannot compact the outbox log; will try again");
            }
        }
    }

    fn compact(&mut self) -> Result<(), OutboxError> {
        let queue = &self.queue;
        let result = self.log.compact(
            queue.next_id(),
            self.next_seq,
            self.session,
            queue.iter().map(|e| (e.id, e.seq, e.item.as_slice())),
        );
        self.needs_compaction = result.is_err();
        Ok(result?)
    }
}

/// A new random session id.
pub fn new_session() -> u64 {
    // 64 random bits: two outboxes of a stream never share one in practice
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// A session id as it goes on the wire: 16 lowercase hex digits.
pub fn format_session(session: u64) -> String {
    format!("{session:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq:04},\"pad\":\"{}\"}}", "x".repeat(50)).into_bytes()
    }

    #[test]
    fn the_session_lasts_as_long_as_the_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(dir.path(), 1 << 20, 4).expect("open");
        let session = ob.session();
        assert_eq!(session.len(), 16);
        assert!(session.bytes().all(|b| b.is_ascii_hexdigit()), "{session}");
        for seq in 1..=3 {
            ob.push(seq, payload(seq)).expect("push");
        }
        drop(ob);
        let ob = Outbox::open(dir.path(), 1 << 20, 4).expect("reopen");
        assert_eq!((ob.first_seq(), ob.session()), (4, session.clone()));
        drop(ob);

        // a wiped outbox starts the numbering again, in a new session
        std::fs::remove_file(dir.path().join(super::super::log::LOG_FILE)).expect("wipe");
        let ob = Outbox::open(dir.path(), 1 << 20, 4).expect("reopen");
        assert_eq!(ob.first_seq(), 1);
        assert_ne!(ob.session(), session);
    }

    #[test]
    fn unacknowledged_events_survive_a_reopen_in_order_and_the_sequence_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(dir.path(), 1 << 20, 4).expect("open");
        assert_eq!(ob.first_seq(), 1);
        for seq in 1..=6 {
            ob.push(seq, payload(seq)).expect("push");
        }
        let (id, _) = ob.next_to_send().expect("one to send");
        ob.mark_sent();
        assert!(ob.ack(id));
        drop(ob);

        let mut ob = Outbox::open(dir.path(), 1 << 20, 4).expect("reopen");
        assert_eq!(ob.first_seq(), 7);
        let mut sent = Vec::new();
        while let Some((id, p)) = ob.next_to_send() {
            sent.push((id, p.to_vec()));
            ob.mark_sent();
        }
        assert_eq!(sent.len(), 4, "the window");
        assert_eq!(sent[0].1, payload(2));
        for (id, _) in &sent {
            assert!(ob.ack(*id));
        }
        let (id, p) = ob.next_to_send().expect("the sixth");
        assert_eq!(p, payload(6).as_slice());
        ob.mark_sent();
        assert!(ob.ack(id));
        assert!(ob.is_empty());
        drop(ob);
        let ob = Outbox::open(dir.path(), 1 << 20, 4).expect("reopen");
        assert!(ob.is_empty());
        assert_eq!(
            ob.first_seq(),
            7,
            "all acknowledged, the sequence still continues"
        );
    }

    #[test]
    fn full_outbox_drops_the_oldest_counts_them_and_keeps_the_bound_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = event_record_len(payload(1).len());
        let mut ob = Outbox::open(dir.path(), size * 10, 4).expect("open");
        for seq in 1..=25 {
            ob.push(seq, payload(seq)).expect("push");
        }
        let counts = ob.stats().counts();
        assert_eq!((counts.depth, counts.dropped), (10, 15));
        assert_eq!(ob.oldest_seq(), Some(16));
        drop(ob);
        let ob = Outbox::open(dir.path(), size * 10, 4).expect("reopen");
        assert_eq!(ob.len(), 10);
        assert_eq!(ob.oldest_seq(), Some(16));
        let log_len = std::fs::metadata(dir.path().join(super::super::log::LOG_FILE))
            .expect("log")
            .len();
        assert!(
            log_len <= size * 10 + 64,
            "compacted at open: {log_len} bytes"
        );
        drop(ob);
        let smaller = Outbox::open(dir.path(), size * 4, 4).expect("reopen smaller");
        assert_eq!(smaller.len(), 4, "a smaller bound applies at start-up");
        assert_eq!(smaller.oldest_seq(), Some(22));
        assert_eq!(smaller.stats().counts().dropped, 6);
    }

    #[test]
    fn the_log_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(dir.path(), 1 << 20, 64).expect("open");
        let big = vec![b'x'; 4000];
        for seq in 1..=300 {
            ob.push(seq, big.clone()).expect("push");
            let (id, _) = ob.next_to_send().expect("just pushed");
            ob.mark_sent();
            assert!(ob.ack(id));
        }
        assert!(
            ob.log.len() <= COMPACT_SLACK_BYTES + 2 * 4100,
            "{} bytes for nothing stored",
            ob.log.len()
        );
        assert_eq!(ob.stats().counts().acked, 300);
    }
}
