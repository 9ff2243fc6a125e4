//! The fan-out lanes: a few OS threads, each holding a share of every hub's viewers, that write
//! each broadcast frame to the viewers they hold.
//!
//! A frame is encoded once and handed to every lane; a lane writes it to each of its viewers'
//! sockets with one non-blocking write (see [`Outlet`]). No task is woken per viewer and no timer
//! is armed per write, so a delivered message costs little more than its `write`. Lanes are
//! threads, not tasks: a pass over thousands of sockets would hold up a runtime worker, and the
//! accept loop and the broker's deliveries run there. One lane per core shares a frame's pass.
//!
//! Order: what a hub sends to the lanes (frames, a viewer's arrival, bans) is sent under the lock
//! that orders it, and a lane's channel keeps that order, so a joining viewer gets each frame
//! exactly once: in what it is sent first, or from its lane. Every [`PING_INTERVAL`] a lane pings
//! its viewers and cuts those silent for [`IDLE_TIMEOUT`] (browsers answer pings on their own).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tracing::warn;

use super::outlet::{clock_ms, Cut, Outlet};
use crate::websocket::frame;

/// How often each viewer is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A viewer silent (no frame, not even a pong) for this long is cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Most lanes, whatever the core count.
pub const MAX_LANES: usize = 8;

enum Work {
    Join {
        hub: usize,
        outlet: Arc<Outlet>,
    },
    Leave {
        hub: usize,
        outlet: Arc<Outlet>,
    },
    Frame {
        hub: usize,
        offset: Option<u64>,
        frame: Bytes,
    },
    Ban {
        hub: usize,
        user: String,
        cut: Cut,
    },
    Restart {
        hub: usize,
        hello: Bytes,
        live_from: u64,
    },
}

/// The lanes; dropping this ends their threads.
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<mpsc::Sender<Work>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Work")
    }
}

impl Lanes {
    /// One lane per available core (at most [`MAX_LANES`]).
    pub fn start() -> Self {
        let n = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_LANES);
        Self::with(n)
    }

    /// `n` lanes.
    pub fn with(n: usize) -> Self {
        let lanes = (0..n.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name(format!("fanout-{i}"))
                    .spawn(move || run(rx));
                if let Err(e) = spawned {
                    warn!("could not start fan-out lane {i}: {e}");
                }
                tx
            })
            .collect();
        Lanes {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// How many lanes there are.
    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    fn send(&self, lane: usize, work: Work) {
        // A lane whose thread is gone has no viewers left to write to.
        let _ = self.lanes[lane % self.lanes.len()].send(work);
    }

    /// Hands a viewer of hub `hub` to the next lane (call under the lock that orders the hub's
    /// frames).
    pub fn join(&self, hub: usize, outlet: Arc<Outlet>) {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        outlet.lane.store(lane, Ordering::Relaxed);
        self.send(lane, Work::Join { hub, outlet });
    }

    /// Takes a viewer off its lane, so its socket closes as soon as its task is done.
    pub fn leave(&self, hub: usize, outlet: Arc<Outlet>) {
        let lane = outlet.lane.load(Ordering::Relaxed);
        self.send(lane, Work::Leave { hub, outlet });
    }

    /// Sends a frame to every viewer of hub `hub` (call under the lock that orders the hub's
    /// frames). `offset` is the event's offset, `None` for chat and counts.
    pub fn frame(&self, hub: usize, offset: Option<u64>, frame: &Bytes) {
        for lane in 0..self.lanes.len() {
            self.send(
                lane,
                Work::Frame {
                    hub,
                    offset,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Sends every viewer of hub `hub` a new `hello` for a new epoch and the live events from
    /// `live_from` on (call under the lock that orders the hub's frames).
    pub fn restart(&self, hub: usize, hello: &Bytes, live_from: u64) {
        for lane in 0..self.lanes.len() {
            self.send(
                lane,
                Work::Restart {
                    hub,
                    hello: hello.clone(),
                    live_from,
                },
            );
        }
    }

    /// Cuts the sockets of a banned user, after every frame sent before.
    pub fn ban(&self, hub: usize, user: &str, until_ms: u64, reason: Option<String>) {
        for lane in 0..self.lanes.len() {
            self.send(
                lane,
                Work::Ban {
                    hub,
                    user: user.to_owned(),
                    cut: Cut::Banned {
                        until_ms,
                        reason: reason.clone(),
                    },
                },
            );
        }
    }
}

fn run(rx: mpsc::Receiver<Work>) {
    let mut hubs: Vec<Slab<Arc<Outlet>>> = Vec::new();
    let ping = frame::ping();
    let mut next_ping = Instant::now() + PING_INTERVAL;
    loop {
        let wait = next_ping.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(work) => apply(&mut hubs, work),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_ping {
            let idle_ms = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            let now = clock_ms();
            for outlet in hubs.iter().flat_map(|h| h.iter().map(|(_, o)| o)) {
                if now.saturating_sub(outlet.heard_ms()) > idle_ms {
                    outlet.cut(Cut::Idle);
                } else {
                    outlet.deliver(&ping, None);
                }
            }
            next_ping = Instant::now() + PING_INTERVAL;
        }
    }
}

fn apply(hubs: &mut Vec<Slab<Arc<Outlet>>>, work: Work) {
    let hub = match &work {
        Work::Join { hub, .. }
        | Work::Leave { hub, .. }
        | Work::Frame { hub, .. }
        | Work::Ban { hub, .. }
        | Work::Restart { hub, .. } => *hub,
    };
    if hubs.len() <= hub {
        hubs.resize_with(hub + 1, Slab::new);
    }
    let viewers = &mut hubs[hub];
    match work {
        Work::Join { outlet, .. } => {
            let slot = viewers.insert(outlet.clone());
            outlet.slot.store(slot, Ordering::Relaxed);
        }
        Work::Leave { outlet, .. } => {
            let slot = outlet.slot.load(Ordering::Relaxed);
            if viewers.get(slot).is_some_and(|o| Arc::ptr_eq(o, &outlet)) {
                viewers.remove(slot);
            }
        }
        Work::Frame { offset, frame, .. } => {
            for (_, outlet) in viewers.iter() {
                outlet.deliver(&frame, offset);
            }
        }
        Work::Restart {
            hello, live_from, ..
        } => {
            for (_, outlet) in viewers.iter() {
                outlet.restart(&hello, live_from);
            }
        }
        Work::Ban { user, cut, .. } => {
            for (_, outlet) in viewers.iter() {
                if outlet.is_user(&user) {
                    outlet.cut(cut.clone());
                }
            }
        }
    }
}
