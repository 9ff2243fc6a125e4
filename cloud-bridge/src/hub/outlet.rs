//! One viewer's way out: its socket, shared by the connection's own task (which reads it and
//! answers) and a fan-out lane (which writes every broadcast frame to it), and the frames that
//! could not be written at once, in order.
//!
//! A lane writes a frame straight to the socket when nothing is queued (the common case: one
//! non-blocking `write` per viewer, no task woken); otherwise it queues the frame behind the
//! others and the connection's task writes the queue as the socket drains. The queue is bounded:
//! past `limit` frames the viewer is cut off as too slow, so a viewer that stops reading costs at
//! most its queue.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Frames written by one vectored write.
const MAX_IOV: usize = 32;

/// Why the fan-out cut a viewer off; the connection's task says goodbye accordingly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// More than its queue of frames waited to be written.
    Slow {
        /// Frames it would have missed.
        missed: u64,
    },
    /// Its chat user was banned.
    Banned {
        /// End of the ban, UTC ms.
        until_ms: u64,
        /// The moderator's reason.
        reason: Option<String>,
    },
    /// Nothing heard from it (not even a pong) for too long.
    Idle,
    /// Writing to its socket failed: it is gone.
    Gone,
}

/// How a flush left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is written.
    Empty,
    /// The socket took what it could; wait until it is writable.
    Blocked {
        /// Whether anything was written this time.
        progress: bool,
    },
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Bytes>,
    /// The front frame is partly written (it must be finished before anything else, a close
    /// included, or the stream's framing breaks).
    head_partial: bool,
    limit: usize,
    cut: Option<Cut>,
    /// The connection is saying goodbye: no more broadcast frames.
    closing: bool,
    user: Option<Box<str>>,
    live_from: u64,
}

/// One viewer's socket and write queue.
#[derive(Debug)]
pub struct Outlet {
    socket: TcpStream,
    queue: Mutex<Queue>,
    wake: Notify,
    heard_ms: AtomicU64,
    /// Where the lane keeps it (its slab key), for a prompt removal.
    pub(crate) slot: AtomicUsize,
    /// Which lane holds it.
    pub(crate) lane: AtomicUsize,
}

/// Milliseconds on a process-wide monotonic clock.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Outlet {
    /// An outlet queueing at most `limit` frames beyond those it starts with.
    pub fn new(socket: TcpStream, limit: usize) -> Self {
        Outlet {
            socket,
            queue: Mutex::new(Queue {
                limit: limit.max(1),
                ..Queue::default()
            }),
            wake: Notify::new(),
            heard_ms: AtomicU64::new(clock_ms()),
            slot: AtomicUsize::new(usize::MAX),
            lane: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every mutation completes before anything that could panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket, for reading and for waiting until it is writable.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Resolves when there is something for the connection's task to do: frames queued behind a
    /// full socket, or a cut. A wake-up sent before this is awaited is kept.
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Queues the frames a viewer gets first (`hello`, chat history, what it missed), unwritten:
    /// the connection's task writes them. Raises the bound by as many.
    pub fn start_with(&self, frames: impl IntoIterator<Item = Bytes>, live_from: u64) {
        let mut q = self.lock();
        let before = q.pending.len();
        q.pending.extend(frames);
        let added = q.pending.len() - before;
        q.limit += added;
        q.live_from = live_from;
        drop(q);
        self.wake.notify_one();
    }

    /// A broadcast frame from a lane: written now if nothing is queued, else queued; skipped
    /// below the viewer's `live_from` (it had that event in its backlog or before it came).
    pub fn deliver(&self, frame: &Bytes, offset: Option<u64>) {
        let mut q = self.lock();
        if q.cut.is_some() || q.closing || offset.is_some_and(|o| o < q.live_from) {
            return;
        }
        self.write_or_queue(&mut q, frame);
    }

    /// A new epoch's `hello` from a lane: the viewer's position now counts in that epoch, from
    /// `live_from`.
    pub fn restart(&self, hello: &Bytes, live_from: u64) {
        let mut q = self.lock();
        if q.cut.is_some() || q.closing {
            return;
        }
        q.live_from = live_from;
        self.write_or_queue(&mut q, hello);
    }

    /// A frame for this viewer alone (a reply, a pong), after everything queued.
    pub fn send(&self, frame: Bytes) {
        let mut q = self.lock();
        if q.cut.is_some() || q.closing {
            return;
        }
        self.write_or_queue(&mut q, &frame);
    }

    fn write_or_queue(&self, q: &mut Queue, frame: &Bytes) {
        if !q.pending.is_empty() {
            if q.pending.len() >= q.limit {
                let missed = (q.pending.len() + 1 - q.limit) as u64;
                self.cut_locked(q, Cut::Slow { missed });
                return;
            }
            q.pending.push_back(frame.clone());
            return;
        }
        match self.socket.try_write(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => {
                q.pending.push_back(frame.slice(n..));
                q.head_partial = n > 0;
                self.wake.notify_one();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                q.pending.push_back(frame.clone());
                self.wake.notify_one();
            }
            Err(_) => self.cut_locked(q, Cut::Gone),
        }
    }

    fn cut_locked(&self, q: &mut Queue, cut: Cut) {
        if q.cut.is_none() && !q.closing {
            q.cut = Some(cut);
            self.wake.notify_one();
        }
    }

    /// Cuts the viewer off (the first cut wins; none once it is saying goodbye).
    pub fn cut(&self, cut: Cut) {
        let mut q = self.lock();
        self.cut_locked(&mut q, cut);
    }

    /// The cut, if the fan-out made one (taken once).
    pub fn take_cut(&self) -> Option<Cut> {
        self.lock().cut.take()
    }

    /// Whether frames wait to be written.
    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Writes as much of the queue as the socket takes now, several frames a call.
    pub fn flush(&self) -> io::Result<Flushed> {
        let mut q = self.lock();
        let mut progress = false;
        while !q.pending.is_empty() {
            let slices: Vec<IoSlice<'_>> = q
                .pending
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            let wrote = match self.socket.try_write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed::Blocked { progress });
                }
                Err(e) => return Err(e),
            };
            if wrote == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            progress = true;
            let mut left = wrote;
            while left > 0 {
                let Some(front) = q.pending.front_mut() else {
                    break;
                };
                if left >= front.len() {
                    left -= front.len();
                    q.pending.pop_front();
                    q.head_partial = false;
                } else {
                    *front = front.slice(left..);
                    q.head_partial = true;
                    left = 0;
                }
            }
        }
        Ok(Flushed::Empty)
    }

    /// Starts the goodbye: no more broadcast frames; what is queued is kept (`keep_queued`) or
    /// dropped (a viewer too slow for it), but a partly written frame is always finished; then
    /// `last` (an error message, the close frame).
    pub fn goodbye(&self, keep_queued: bool, last: impl IntoIterator<Item = Bytes>) {
        let mut q = self.lock();
        q.closing = true;
        if !keep_queued {
            let keep = usize::from(q.head_partial);
            q.pending.truncate(keep);
        }
        q.pending.extend(last);
    }

    /// Sets the chat user this connection speaks as (bans cut its sockets).
    pub fn set_user(&self, user: &str) {
        self.lock().user = Some(user.into());
    }

    /// Whether this connection speaks as `user`.
    pub fn is_user(&self, user: &str) -> bool {
        self.lock().user.as_deref() == Some(user)
    }

    /// Notes that the viewer was heard from now.
    pub fn heard(&self) {
        self.heard_ms.store(clock_ms(), Ordering::Relaxed);
    }

    /// When the viewer was last heard from, on [`clock_ms`].
    pub fn heard_ms(&self) -> u64 {
        self.heard_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair(limit: usize) -> (Outlet, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Outlet::new(server, limit), client)
    }

    #[tokio::test]
    async fn first_frames_then_live_frames_in_order_and_below_live_from_skipped() {
        let (outlet, mut client) = pair(8).await;
        outlet.start_with([Bytes::from_static(b"hello,")], 5);
        outlet.deliver(&Bytes::from_static(b"old,"), Some(4));
        outlet.deliver(&Bytes::from_static(b"five,"), Some(5));
        outlet.send(Bytes::from_static(b"reply"));
        assert!(outlet.has_pending(), "the first frames wait for the task");
        assert_eq!(outlet.flush().expect("flush"), Flushed::Empty);
        let mut got = vec![0; 16];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello,five,reply");
    }

    #[tokio::test]
    async fn a_viewer_that_never_reads_is_cut_once_its_queue_is_full() {
        let (outlet, _client) = pair(4).await;
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while outlet.take_cut().is_none() {
            outlet.deliver(&big, None);
            sent += 1;
            assert!(sent < 10_000, "never cut");
        }
        assert!(outlet.lock().pending.len() <= 4);
        // Cut: nothing more is taken.
        outlet.deliver(&big, None);
        assert!(outlet.lock().pending.len() <= 4);
    }

    #[tokio::test]
    async fn goodbye_finishes_a_partly_written_frame_before_the_close() {
        let (outlet, mut client) = pair(64).await;
        let big = Bytes::from(vec![b'x'; 16 << 20]);
        outlet.deliver(&big, None);
        outlet.deliver(&Bytes::from_static(b"dropped"), None);
        assert!(outlet.lock().head_partial, "the socket took part of it");
        outlet.goodbye(false, [Bytes::from_static(b"CLOSE")]);
        outlet.deliver(&Bytes::from_static(b"late"), None);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.expect("read");
            all
        });
        loop {
            match outlet.flush().expect("flush") {
                Flushed::Empty => break,
                Flushed::Blocked { .. } => outlet.socket().writable().await.expect("writable"),
            }
        }
        drop(outlet);
        let all = reader.await.expect("reader");
        assert_eq!(all.len(), (16 << 20) + 5);
        assert!(all.ends_with(b"xCLOSE"));
    }
}
