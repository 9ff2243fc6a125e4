//! One viewer connection's own task: joins the hub, then reads the viewer's frames and answers
//! them, writes what the socket could not take at once, and says goodbye (an `error` message where
//! one explains, then a close frame) when the connection ends.
//!
//! Broadcast frames do not pass through here: the fan-out lanes write them to the socket. This
//! task wakes for the viewer's own frames, for a queue to write, and for a cut (too slow, banned,
//! idle). A close the bridge starts waits for the viewer's close, reading and discarding what it
//! still sends, so that the socket is not reset (RFC 6455's closing handshake).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spotter_protocol::viewer::ServerMessage;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info};

use super::chat::{error, ChatConn};
use super::{close_code, judge, unreadable, End, Incoming};
use crate::chat::room::rfc3339;
use crate::chat::{now_ms, FloodGuard};
use crate::http::AppState;
use crate::hub::{Cut, Flushed, Hub, JoinOutcome, Outlet, Resume};
use crate::metrics::Metrics;
use crate::websocket::{frame, Decoder};

/// A queue that makes no progress for this long means a stalled viewer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the goodbye (error message and close frame, then the viewer's close) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

struct Connected(Arc<Metrics>);

impl Connected {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.viewers_connected.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&metrics.viewers_accepted);
        Connected(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.viewers_connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl From<Cut> for End {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::Slow { missed } => End::Slow { missed },
            Cut::Banned { until_ms, reason } => End::Banned { until_ms, reason },
            Cut::Idle => End::Idle,
            Cut::Gone => End::Gone,
        }
    }
}

/// Serves one upgraded viewer socket until it ends; `early` is what the client sent right after
/// its request.
pub(super) async fn serve(
    socket: TcpStream,
    early: &[u8],
    hub: Arc<Hub>,
    resume: Resume,
    app: AppState,
) {
    let metrics = app.metrics.clone();
    let _connected = Connected::new(metrics.clone());
    // Small frames go out at once; the lanes never write less than a frame.
    let _ = socket.set_nodelay(true);
    let outlet = Arc::new(Outlet::new(socket, app.viewer.queue));
    let joined = hub.join(&resume, &outlet);
    match joined.outcome {
        JoinOutcome::Recovered => Metrics::inc(&metrics.viewers_recovered),
        JoinOutcome::Resync => Metrics::inc(&metrics.viewers_resync),
        JoinOutcome::Fresh => {}
    }
    let (studio, stream) = (&hub.config.studio, &hub.config.stream);
    debug!(studio, stream, outcome = ?joined.outcome, backlog = joined.backlog, "viewer joined");

    let mut decoder = Decoder::new(app.viewer.max_message_bytes);
    decoder.push(early);
    let end = session(&outlet, &mut decoder, &hub, &app).await;
    log_end(&end, &hub, &app);
    goodbye(&outlet, &mut decoder, &end, app.viewer.queue).await;
    // `joined.watching` drops here: the viewer leaves its count and its lane, and the socket
    // closes once the lane lets go of it.
    drop(joined);
}

fn log_end(end: &End, hub: &Hub, app: &AppState) {
    let metrics = &app.metrics;
    let (studio, stream) = (&hub.config.studio, &hub.config.stream);
    match end {
        End::Slow { missed } => {
            Metrics::inc(&metrics.viewers_dropped_slow);
            info!(
                studio,
                stream,
                missed,
                queue = app.viewer.queue,
                "viewer fell behind its queue, disconnected"
            );
        }
        End::Stalled => {
            Metrics::inc(&metrics.viewers_dropped_slow);
            info!(
                studio,
                stream,
                timeout_s = WRITE_TIMEOUT.as_secs(),
                "viewer stopped reading, disconnected"
            );
        }
        End::BadInput { code, message } => {
            Metrics::inc(&metrics.viewers_dropped_bad_input);
            info!(studio, stream, code, reason = %message, "viewer sent a frame not allowed, disconnected");
        }
        End::Flooding => {
            Metrics::inc(&metrics.viewers_dropped_bad_input);
            info!(
                studio,
                stream, "viewer earned too many refusals, disconnected"
            );
        }
        End::Banned { until_ms, .. } => {
            Metrics::inc(&metrics.chat_banned_closed);
            info!(studio, stream, until = %rfc3339(*until_ms), "banned viewer disconnected");
        }
        End::Idle => debug!(studio, stream, "viewer silent too long, disconnected"),
        End::ClientClosed | End::Gone | End::Shutdown => {
            debug!(studio, stream, ?end, "viewer left");
        }
    }
}

/// Reads what the socket has into the decoder: `Ok(false)` at the end of the stream.
fn read_some(outlet: &Outlet, decoder: &mut Decoder) -> io::Result<bool> {
    match outlet.socket().try_read_buf(decoder.buffer()) {
        Ok(0) => Ok(false),
        Ok(_) => {
            outlet.heard();
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}

async fn session(outlet: &Outlet, decoder: &mut Decoder, hub: &Hub, app: &AppState) -> End {
    let mut chat = ChatConn::default();
    // When a queue that stopped moving counts as stalled.
    let mut stall_at: Option<Instant> = None;
    loop {
        if let Some(end) = handle_buffered(outlet, decoder, &mut chat, hub, app) {
            return end;
        }
        let pending = outlet.has_pending();
        if !pending {
            stall_at = None;
        } else if stall_at.is_none() {
            stall_at = Some(Instant::now() + WRITE_TIMEOUT);
        }
        let stall = stall_at.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return End::Shutdown,
            () = outlet.notified() => {
                if let Some(cut) = outlet.take_cut() {
                    return cut.into();
                }
            }
            ready = outlet.socket().writable(), if pending => {
                if ready.is_err() {
                    return End::Gone;
                }
                match outlet.flush() {
                    Err(_) => return End::Gone,
                    Ok(Flushed::Empty) => stall_at = None,
                    Ok(Flushed::Blocked { progress: true }) => {
                        stall_at = Some(Instant::now() + WRITE_TIMEOUT);
                    }
                    Ok(Flushed::Blocked { progress: false }) => {}
                }
            }
            () = sleep_until(stall), if pending => return End::Stalled,
            ready = outlet.socket().readable() => {
                if ready.is_err() {
                    return End::Gone;
                }
                match read_some(outlet, decoder) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return End::Gone,
                }
            }
        }
    }
}

/// Acts on every whole message the decoder holds; the end when one ends the connection.
fn handle_buffered(
    outlet: &Outlet,
    decoder: &mut Decoder,
    chat: &mut ChatConn,
    hub: &Hub,
    app: &AppState,
) -> Option<End> {
    loop {
        let received = match decoder.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => return Some(unreadable(&e)),
        };
        let now = now_ms();
        let replies = match judge(received) {
            Incoming::End(end) => return Some(end),
            Incoming::Nothing => continue,
            Incoming::Ping(payload) => {
                outlet.send(frame::pong(&payload));
                continue;
            }
            Incoming::Malformed(message) => vec![error(message)],
            Incoming::Message(m) => {
                let replies = chat.handle(m, hub, app, now);
                if let Some(user) = chat.user_id() {
                    outlet.set_user(user);
                }
                replies
            }
        };
        let refusals = replies
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    ServerMessage::Refused { .. } | ServerMessage::Error { .. }
                )
            })
            .count();
        app.metrics
            .chat_refused
            .fetch_add(refusals as u64, Ordering::Relaxed);
        if let Some(end) = chat.count(&replies, now) {
            return Some(end);
        }
        for r in replies {
            outlet.send(frame::text(&r.encode()));
        }
    }
}

/// Sends what the end calls for (an error message, a close frame), bounded in time. After a close
/// the bridge starts, it reads on until the viewer's close: a socket dropped with the viewer's
/// frames unread is reset, and a flooding client would see 1006 instead of the close frame that
/// says why.
async fn goodbye(outlet: &Outlet, decoder: &mut Decoder, end: &End, queue: usize) {
    let (error, code, reason): (Option<String>, u16, String) = match end {
        End::Gone => return,
        End::ClientClosed => {
            outlet.goodbye(true, [frame::close_empty()]);
            let _ = timeout(CLOSE_TIMEOUT, drain(outlet)).await;
            return;
        }
        End::Slow { .. } | End::Stalled => (
            None,
            close_code::TRY_AGAIN_LATER,
            format!("too slow: fell more than {queue} messages behind; reconnect to recover"),
        ),
        End::Idle => (None, close_code::POLICY, "idle: nothing received".into()),
        End::BadInput { code, message } => (Some(message.clone()), *code, message.clone()),
        End::Shutdown => (None, close_code::SERVICE_RESTART, "service restart".into()),
        End::Flooding => (
            Some(format!(
                "flooding: more than {} refusals within {} s; reconnect and slow down",
                FloodGuard::MAX_REFUSALS,
                FloodGuard::WINDOW_MS / 1000
            )),
            close_code::POLICY,
            "flooding".into(),
        ),
        End::Banned { until_ms, reason } => {
            let until = rfc3339(*until_ms);
            let message = match reason {
                Some(r) => format!("you are banned from this chat until {until}: {r}"),
                None => format!("you are banned from this chat until {until}"),
            };
            (
                Some(message),
                close_code::BANNED,
                format!("banned until {until}"),
            )
        }
    };
    let keep_queued = !matches!(end, End::Slow { .. } | End::Stalled);
    let error = error.map(|message| frame::text(&ServerMessage::Error { message }.encode()));
    let close: Bytes = frame::close(code, &reason);
    outlet.goodbye(keep_queued, error.into_iter().chain([close]));
    if matches!(timeout(CLOSE_TIMEOUT, drain(outlet)).await, Ok(Ok(()))) {
        await_close(outlet, decoder).await;
    }
}

/// Writes the whole queue, waiting for the socket as needed.
async fn drain(outlet: &Outlet) -> io::Result<()> {
    loop {
        match outlet.flush()? {
            Flushed::Empty => return Ok(()),
            Flushed::Blocked { .. } => outlet.socket().writable().await?,
        }
    }
}

/// Reads and discards the viewer's frames until its close frame arrives, the connection ends, its
/// bytes stop making sense, or [`CLOSE_TIMEOUT`] passes.
async fn await_close(outlet: &Outlet, decoder: &mut Decoder) {
    let _ = timeout(CLOSE_TIMEOUT, async {
        loop {
            loop {
                match decoder.next_frame() {
                    Ok(Some(crate::websocket::ClientFrame::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            if decoder.is_failed() {
                decoder.discard();
            }
            if outlet.socket().readable().await.is_err() {
                return;
            }
            match read_some(outlet, decoder) {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
    })
    .await;
}
