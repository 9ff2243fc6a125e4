//! One worker process of the fan-out bench: a few thousand viewer WebSockets on one
//! current-thread runtime, driven by commands on stdin, reporting on stdout.
//!
//! The client is the least a viewer needs, so that the generator's CPU, which shares the machine
//! with the bridge, stays small: the upgrade request written once, one read buffer shared by all
//! connections (a connection keeps only a partial frame, when a read ends inside one), a text frame
//! classified by its first bytes and the bench's event id found in it without decoding the JSON,
//! pings answered, nothing allocated per message.
//!
//! Commands (one a line): `connect COUNT RATE CONCURRENCY A.B.C` opens COUNT viewers at RATE a
//! second (0: as fast as CONCURRENCY handshakes in flight allow) from source addresses A.B.C.x
//! and answers `connected ...`; `phase FIRST` starts counting events from sequence number FIRST
//! at every open viewer and answers `phase`; `drain END MILLIS` waits until every such viewer
//! has event END-1 (or MILLIS pass) and answers `result ...`; `quit` (or the end of stdin) exits.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead as _, ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{interval, timeout, MissedTickBehavior};

use crate::wire::{classify, encode_histogram, histogram, now_us, TextFrame};

/// The environment variable that makes the bench binary a worker: `TARGET PATH`, the bridge's
/// address and the WebSocket path.
pub const ENV: &str = "SPOTTER_BENCH_WORKER";

/// Connect, upgrade and `hello` must happen within this.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The read buffer all of a worker's connections share.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Larger frames end the connection (the bridge sends a few hundred bytes).
const MAX_FRAME_BYTES: usize = 1 << 20;
/// Connections from one source address (each address pair has ~28k ephemeral ports).
const PER_SOURCE: usize = 1000;

/// Runs a worker until `quit` or the end of stdin.
pub fn main(spec: &str) -> anyhow::Result<()> {
    let (target, path) = spec
        .split_once(' ')
        .with_context(|| format!("{ENV}={spec:?}: want \"ADDRESS PATH\""))?;
    let target: SocketAddr = target
        .parse()
        .with_context(|| format!("{ENV}: {target:?} is not an address"))?;
    crate::procs::raise_open_files_limit()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the worker's runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(Rc::new(Shared::new(target, request))))
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("the coordinator is gone (stdout closed)")
}

async fn run(shared: Rc<Shared>) -> anyhow::Result<()> {
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    // tokio's stdin needs a feature the workspace does not enable; a thread is as good here
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    say("ready")?;
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> anyhow::Result<u64> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| anyhow!("command {line:?}: word {i} should be a number"))
        };
        match words.first().copied() {
            Some("connect") => {
                let count = usize::try_from(num(1)?)?;
                let rate: f64 = words
                    .get(2)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| anyhow!("command {line:?}: bad rate"))?;
                let concurrency = usize::try_from(num(3)?)?;
                let net = words
                    .get(4)
                    .and_then(|w| format!("{w}.0").parse::<Ipv4Addr>().ok())
                    .ok_or_else(|| anyhow!("command {line:?}: bad source network"))?;
                let report = connect(&shared, count, rate, concurrency, net.octets()).await;
                say(&report)?;
            }
            Some("phase") => {
                shared.start_phase(num(1)?);
                say("phase")?;
            }
            Some("drain") => {
                let report = drain(&shared, num(1)?, Duration::from_millis(num(2)?)).await;
                say(&report)?;
            }
            Some("quit") => break,
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// One viewer's count of the current phase's events: distinct ones received, from the phase's
/// first sequence number on. Events arrive in order; `window` remembers the 64 before `next` so
/// that one arriving late is told from a duplicate.
#[derive(Debug, Default)]
struct Viewer {
    hello: Cell<bool>,
    open: Cell<bool>,
    in_phase: Cell<bool>,
    waiting: Cell<bool>,
    next: Cell<u64>,
    window: Cell<u64>,
    distinct: Cell<u64>,
    dups: Cell<u64>,
    late: Cell<u64>,
}

/// What all of a worker's connections share (one thread: cells, no locks).
struct Shared {
    target: SocketAddr,
    request: Vec<u8>,
    scratch: RefCell<Box<[u8]>>,
    viewers: RefCell<Vec<Rc<Viewer>>>,
    next_index: Cell<usize>,
    delay: RefCell<Histogram<u64>>,
    phase_first: Cell<u64>,
    drain_to: Cell<u64>,
    waiting: Cell<usize>,
    drained: Notify,
    stale: Cell<u64>,
    event_bytes: Cell<u64>,
    other_frames: Cell<u64>,
    closed: RefCell<BTreeMap<String, u64>>,
}

impl Shared {
    fn new(target: SocketAddr, request: String) -> Self {
        Shared {
            target,
            request: request.into_bytes(),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            viewers: RefCell::new(Vec::new()),
            next_index: Cell::new(0),
            delay: RefCell::new(histogram()),
            phase_first: Cell::new(u64::MAX),
            drain_to: Cell::new(u64::MAX),
            waiting: Cell::new(0),
            drained: Notify::new(),
            stale: Cell::new(0),
            event_bytes: Cell::new(0),
            other_frames: Cell::new(0),
            closed: RefCell::new(BTreeMap::new()),
        }
    }

    fn start_phase(&self, first: u64) {
        self.phase_first.set(first);
        for v in self.viewers.borrow().iter() {
            v.in_phase.set(v.open.get());
            v.next.set(first);
            v.window.set(0);
            v.distinct.set(0);
            v.dups.set(0);
            v.late.set(0);
            v.waiting.set(false);
        }
        self.delay.borrow_mut().reset();
        self.stale.set(0);
        self.event_bytes.set(0);
        self.other_frames.set(0);
        self.closed.borrow_mut().clear();
    }

    fn on_text(&self, v: &Viewer, payload: &[u8], now: u64) {
        match classify(payload) {
            TextFrame::Hello => v.hello.set(true),
            TextFrame::Other => self.other_frames.set(self.other_frames.get() + 1),
            TextFrame::Event { seq, publish_us } => {
                if !v.in_phase.get() || seq < self.phase_first.get() {
                    self.stale.set(self.stale.get() + 1);
                    return;
                }
                self.event_bytes
                    .set(self.event_bytes.get() + payload.len() as u64);
                let next = v.next.get();
                let fresh = if seq >= next {
                    let shift = seq + 1 - next;
                    let kept = if shift >= 64 {
                        0
                    } else {
                        v.window.get() << shift
                    };
                    v.window.set(kept | 1);
                    v.next.set(seq + 1);
                    true
                } else {
                    let back = next - 1 - seq;
                    let bit = if back < 64 { 1u64 << back } else { 0 };
                    if bit != 0 && v.window.get() & bit == 0 {
                        v.window.set(v.window.get() | bit);
                        v.late.set(v.late.get() + 1);
                        true
                    } else {
                        v.dups.set(v.dups.get() + 1);
                        false
                    }
                };
                if fresh {
                    v.distinct.set(v.distinct.get() + 1);
                    self.delay
                        .borrow_mut()
                        .saturating_record(now.saturating_sub(publish_us));
                }
                if v.waiting.get() && v.next.get() >= self.drain_to.get() {
                    self.stop_waiting(v);
                }
            }
        }
    }

    fn stop_waiting(&self, v: &Viewer) {
        v.waiting.set(false);
        let left = self.waiting.get().saturating_sub(1);
        self.waiting.set(left);
        if left == 0 {
            self.drained.notify_waiters();
        }
    }

    fn on_close(&self, v: &Viewer, why: String) {
        v.open.set(false);
        if v.in_phase.get() {
            *self.closed.borrow_mut().entry(why).or_default() += 1;
        }
        if v.waiting.get() {
            self.stop_waiting(v);
        }
    }
}

/// One server frame: what matters of it.
enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close(u16),
    Skip,
}

/// The frame at the start of `buf` and its length; `None` until it is all there.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
        return Err("the server sent a fragmented message".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME_BYTES)
        .ok_or_else(|| format!("the server sent a frame of {len} bytes"))?;
    let Some(payload) = buf.get(header..header + len) else {
        return Ok(None);
    };
    let frame = match b0 & 0x0f {
        1 => Frame::Text(payload),
        8 => Frame::Close(match payload {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 1005,
        }),
        9 => Frame::Ping(payload),
        _ => Frame::Skip,
    };
    Ok(Some((frame, header + len)))
}

/// Answers a ping (a client's frames are masked; a zero mask leaves the payload as it is). A
/// pong that does not fit the socket's buffer now is dropped: the next ping gets one.
fn pong(stream: &TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let len = payload.len().min(125);
    let mut frame = [0u8; 6 + 125];
    frame[0] = 0x8a;
    frame[1] = 0x80 | len as u8;
    frame[6..6 + len].copy_from_slice(&payload[..len]);
    match stream.try_write(&frame[..6 + len]) {
        Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// Hands every complete frame in `buf` to the viewer; how many bytes they took, and the close
/// code if the server closed.
fn frames(
    buf: &[u8],
    now: u64,
    shared: &Shared,
    v: &Viewer,
    stream: &TcpStream,
) -> std::io::Result<(usize, Option<u16>)> {
    let mut used = 0;
    while let Some((frame, len)) = parse_frame(&buf[used..]).map_err(std::io::Error::other)? {
        used += len;
        match frame {
            Frame::Text(text) => shared.on_text(v, text, now),
            Frame::Ping(payload) => pong(stream, payload)?,
            Frame::Close(code) => return Ok((used, Some(code))),
            Frame::Skip => {}
        }
    }
    Ok((used, None))
}

/// A viewer's socket and the start of a frame a read ended inside.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    /// Waits until the socket is readable and handles everything it holds; `Some(why)` when the
    /// connection ended.
    async fn pump(&mut self, shared: &Shared, v: &Viewer) -> Option<String> {
        if let Err(e) = self.stream.readable().await {
            return Some(format!("error-{:?}", e.kind()));
        }
        loop {
            let mut scratch = shared.scratch.borrow_mut();
            let mut short = false;
            // A read shorter than the buffer took all the socket held: clear the readiness then
            // (what arrives later sets it again) rather than pay a second read for `WouldBlock`.
            let read = self.stream.try_io(Interest::READABLE, || {
                let n = self.stream.try_read(&mut scratch)?;
                short = n > 0 && n < scratch.len();
                Ok(n)
            });
            let n = match read {
                Ok(0) => return Some("eof".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => return Some(format!("error-{:?}", e.kind())),
            };
            let now = now_us();
            let handled = if self.pending.is_empty() {
                frames(&scratch[..n], now, shared, v, &self.stream).map(|(used, close)| {
                    self.pending.extend_from_slice(&scratch[used..n]);
                    close
                })
            } else {
                self.pending.extend_from_slice(&scratch[..n]);
                self.take_pending(shared, v, now)
            };
            match handled {
                Ok(None) if short => {
                    let _ = self.stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(ErrorKind::WouldBlock.into())
                    });
                    return None;
                }
                Ok(None) => {}
                Ok(Some(code)) => return Some(format!("close-{code}")),
                Err(e) => return Some(format!("protocol: {e}").replace(' ', "_")),
            }
        }
    }

    fn take_pending(
        &mut self,
        shared: &Shared,
        v: &Viewer,
        now: u64,
    ) -> std::io::Result<Option<u16>> {
        let (used, close) = frames(&self.pending, now, shared, v, &self.stream)?;
        self.pending.drain(..used);
        Ok(close)
    }
}

/// How a viewer's join went.
enum Joined {
    Ok { handshake_us: u64 },
    Failed(String),
}

/// Connects from `source`, upgrades and waits for `hello`; the handshake's time (connect to the
/// `101` response), microseconds.
async fn join(shared: &Shared, source: Ipv4Addr) -> Result<(Conn, Rc<Viewer>, u64), String> {
    let started = Instant::now();
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket-{:?}", e.kind()))?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind-{:?}", e.kind()))?;
    let mut stream = socket
        .connect(shared.target)
        .await
        .map_err(|e| format!("connect-{:?}", e.kind()))?;
    stream
        .write_all(&shared.request)
        .await
        .map_err(|e| format!("write-{:?}", e.kind()))?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read-{:?}", e.kind()))?;
        if n == 0 {
            return Err("eof-in-handshake".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("oversize-response".into());
        }
    };
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .filter(|_| head.starts_with(b"HTTP/1.1 "))
        .unwrap_or("bad");
    if status != "101" {
        return Err(format!("status-{status}"));
    }
    let handshake_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let v = Rc::new(Viewer::default());
    v.open.set(true);
    let mut conn = Conn {
        stream,
        pending: head.split_off(end),
    };
    match conn.take_pending(shared, &v, now_us()) {
        Ok(None) => {}
        Ok(Some(code)) => return Err(format!("close-{code}-before-hello")),
        Err(e) => return Err(format!("protocol: {e}").replace(' ', "_")),
    }
    while !v.hello.get() {
        if let Some(why) = conn.pump(shared, &v).await {
            return Err(format!("{why}-before-hello"));
        }
    }
    Ok((conn, v, handshake_us))
}

/// One viewer, from its join until the connection ends (or the process exits).
async fn viewer(
    shared: Rc<Shared>,
    source: Ipv4Addr,
    permit: OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<Joined>,
) {
    let (mut conn, v) = match timeout(JOIN_TIMEOUT, join(&shared, source)).await {
        Err(_) => {
            let _ = done.send(Joined::Failed("timeout".into()));
            return;
        }
        Ok(Err(why)) => {
            let _ = done.send(Joined::Failed(why));
            return;
        }
        Ok(Ok((conn, v, handshake_us))) => {
            shared.viewers.borrow_mut().push(v.clone());
            let _ = done.send(Joined::Ok { handshake_us });
            (conn, v)
        }
    };
    drop(permit);
    drop(done);
    let why = loop {
        if let Some(why) = conn.pump(&shared, &v).await {
            break why;
        }
    };
    shared.on_close(&v, why);
}

/// Opens `count` viewers; the `connected` report.
async fn connect(
    shared: &Rc<Shared>,
    count: usize,
    rate: f64,
    concurrency: usize,
    net: [u8; 4],
) -> String {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spawner = {
        let shared = shared.clone();
        let slots = std::sync::Arc::new(Semaphore::new(concurrency.max(1)));
        tokio::task::spawn_local(async move {
            let mut pace = (rate > 0.0).then(|| {
                let mut pace = interval(Duration::from_secs_f64(1.0 / rate));
                // behind schedule (a slow handshake), catch up: the rate is the target
                pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
                pace
            });
            for _ in 0..count {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let index = shared.next_index.get();
                shared.next_index.set(index + 1);
                let host = u8::try_from(1 + index / PER_SOURCE).unwrap_or(u8::MAX);
                let source = Ipv4Addr::new(net[0], net[1], net[2], host);
                tokio::task::spawn_local(viewer(shared.clone(), source, permit, tx.clone()));
            }
        })
    };
    let mut handshake = histogram();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut why: BTreeMap<String, u64> = BTreeMap::new();
    let mut elapsed_us = 0;
    for _ in 0..count {
        match rx.recv().await {
            Some(Joined::Ok { handshake_us }) => {
                ok += 1;
                handshake.saturating_record(handshake_us);
            }
            Some(Joined::Failed(reason)) => {
                failed += 1;
                *why.entry(reason).or_default() += 1;
            }
            None => break,
        }
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    }
    let _ = spawner.await;
    format!(
        "connected ok={ok} failed={failed} why={} elapsed_us={elapsed_us} handshake={}",
        counts(&why),
        encode_histogram(&handshake)
    )
}

/// Waits for every viewer of the phase to have event `end - 1`, at most `wait`; the `result`
/// report.
async fn drain(shared: &Shared, end: u64, wait: Duration) -> String {
    shared.drain_to.set(end);
    let mut waiting = 0;
    for v in shared.viewers.borrow().iter() {
        if v.in_phase.get() && v.open.get() && v.next.get() < end {
            v.waiting.set(true);
            waiting += 1;
        }
    }
    shared.waiting.set(waiting);
    let complete = waiting == 0 || timeout(wait, shared.drained.notified()).await.is_ok();
    shared.drain_to.set(u64::MAX);
    shared.waiting.set(0);

    let first = shared.phase_first.get();
    let each = end.saturating_sub(first);
    let (mut viewers, mut open, mut delivered, mut lost, mut dups, mut late) = (0, 0, 0, 0, 0, 0);
    for v in shared.viewers.borrow().iter() {
        v.waiting.set(false);
        if !v.in_phase.get() {
            continue;
        }
        viewers += 1;
        open += u64::from(v.open.get());
        delivered += v.distinct.get();
        lost += each.saturating_sub(v.distinct.get());
        dups += v.dups.get();
        late += v.late.get();
    }
    format!(
        "result viewers={viewers} open={open} expected={} delivered={delivered} lost={lost} \
         dups={dups} late={late} stale={} event_bytes={} other_frames={} complete={} closed={} \
         delay={}",
        viewers * each,
        shared.stale.get(),
        shared.event_bytes.get(),
        shared.other_frames.get(),
        u8::from(complete),
        counts(&shared.closed.borrow()),
        encode_histogram(&shared.delay.borrow()),
    )
}

/// `reason:count,...` (`-` when empty).
fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}
