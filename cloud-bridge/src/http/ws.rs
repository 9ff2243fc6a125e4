//! The viewer WebSocket (`/ws/{studio}/{stream}?epoch=E&offset=N`): `hello`, then what the viewer
//! missed, then live events; small buffers, coalesced writes, and a viewer that falls behind or
//! stalls is closed rather than allowed to hold anything up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use spotter_protocol::viewer::{ClientMessage, ServerMessage};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::time::{interval_at, timeout, Instant};
use tracing::{debug, info};

use super::pages::not_found_json;
use super::AppState;
use crate::hub::{Frame, Hub, JoinOutcome, Joined, Resume};
use crate::metrics::Metrics;

/// tungstenite's read buffer (its default is 128 KiB a connection).
pub const READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before a write reaches the socket.
pub const WRITE_BUFFER: usize = 4 * 1024;
/// Cap on the write buffer; backpressure keeps it near `WRITE_BUFFER`, this only bounds mistakes.
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Frames written before one flush.
const MAX_BATCH: usize = 64;
/// How often a blocked write checks whether the viewer has fallen behind its queue.
const LAG_CHECK: Duration = Duration::from_millis(250);
/// A write (batch plus flush) that takes longer than this means a stalled viewer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the goodbye (error message and close frame) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Protocol-level ping interval; browsers answer pings on their own.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A viewer silent (no frame, not even a pong) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// WebSocket close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    /// The bridge is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame type the bridge does not accept (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// Oversize or unparsable frames, or silence.
    pub const POLICY: u16 = 1008;
    /// Fell behind: reconnect (with the cursor) to recover.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The query string of a (re)connection.
#[derive(Debug, Default, Deserialize)]
pub struct WsParams {
    /// The epoch of the hub the client last saw.
    pub epoch: Option<String>,
    /// The next offset it wants (kept as text so a bad number means "resync", not HTTP 400).
    pub offset: Option<String>,
}

impl WsParams {
    /// Where the client says it stopped.
    pub fn resume(&self) -> Resume {
        match (&self.epoch, &self.offset) {
            (None, None) => Resume::Fresh,
            (Some(epoch), Some(offset)) => match offset.parse::<u64>() {
                Ok(offset) if !epoch.is_empty() && epoch.len() <= 64 => Resume::From {
                    epoch: epoch.clone(),
                    offset,
                },
                _ => Resume::Unusable,
            },
            _ => Resume::Unusable,
        }
    }
}

/// Why a viewer connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The viewer closed it.
    ClientClosed,
    /// The connection failed or vanished.
    Gone,
    /// Fell more than the queue behind.
    Slow {
        /// Messages it missed.
        missed: u64,
    },
    /// A write did not complete in time.
    Stalled,
    /// Nothing heard from the viewer for too long.
    Idle,
    /// Sent something not allowed: tell it why, then close.
    BadInput {
        /// Close code.
        code: u16,
        /// The `error` message sent before closing.
        message: String,
    },
    /// The bridge is shutting down.
    Shutdown,
}

/// What to do with one frame received from a viewer.
pub fn judge_frame(msg: &Message, max_message_bytes: usize) -> Option<End> {
    match msg {
        Message::Text(text) => {
            if text.len() > max_message_bytes {
                return Some(End::BadInput {
                    code: close_code::POLICY,
                    message: format!(
                        "message of {} bytes is over the {max_message_bytes}-byte limit",
                        text.len()
                    ),
                });
            }
            match serde_json::from_str::<ClientMessage>(text.as_str()) {
                Ok(ClientMessage::Ping) => None,
                Err(e) => Some(End::BadInput {
                    code: close_code::POLICY,
                    message: format!("could not understand your message: {e}"),
                }),
            }
        }
        Message::Binary(_) => Some(End::BadInput {
            code: close_code::UNSUPPORTED,
            message: "binary frames are not accepted: send JSON text frames".into(),
        }),
        Message::Ping(_) | Message::Pong(_) => None,
        Message::Close(_) => Some(End::ClientClosed),
    }
}

/// `GET /ws/{studio}/{stream}`
pub async fn upgrade(
    State(app): State<AppState>,
    Path((studio, stream)): Path<(String, String)>,
    Query(params): Query<WsParams>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = app.hubs.get(&studio, &stream).cloned() else {
        return not_found_json(&studio, &stream).into_response();
    };
    let resume = params.resume();
    let max = app.viewer.max_message_bytes;
    // Keeps the task tracker waiting for this connection at shutdown.
    let tracked = app.tracker.token();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            serve(socket, hub, resume, app).await;
        })
}

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

type Tx = SplitSink<WebSocket, Message>;
type Rx = SplitStream<WebSocket>;

async fn serve(socket: WebSocket, hub: Arc<Hub>, resume: Resume, app: AppState) {
    let metrics = app.metrics.clone();
    let _connected = Connected::new(metrics.clone());
    let Joined {
        hello,
        backlog,
        outcome,
        mut live,
    } = hub.join(&resume);
    match outcome {
        JoinOutcome::Recovered => Metrics::inc(&metrics.viewers_recovered),
        JoinOutcome::Resync => Metrics::inc(&metrics.viewers_resync),
        JoinOutcome::Fresh => {}
    }
    let (studio, stream) = (&hub.config.studio, &hub.config.stream);
    debug!(
        studio,
        stream,
        ?outcome,
        backlog = backlog.len(),
        "viewer joined"
    );

    let (mut tx, mut rx) = socket.split();
    let end = session(&mut tx, &mut rx, hello, backlog, &mut live, &app).await;
    match &end {
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
        End::Idle => debug!(studio, stream, "viewer silent too long, disconnected"),
        End::ClientClosed | End::Gone | End::Shutdown => {
            debug!(studio, stream, ?end, "viewer left");
        }
    }
    goodbye(&mut tx, &end, app.viewer.queue).await;
}

/// Sends what the end calls for (an error message, a close frame), bounded in time.
async fn goodbye(tx: &mut Tx, end: &End, queue: usize) {
    let (error, code, reason): (Option<&str>, u16, String) = match end {
        End::Gone => return,
        End::ClientClosed => {
            // tungstenite has queued the reply to the viewer's close: flush it.
            let _ = timeout(CLOSE_TIMEOUT, tx.close()).await;
            return;
        }
        End::Slow { .. } | End::Stalled => (
            None,
            close_code::TRY_AGAIN_LATER,
            format!("too slow: fell more than {queue} messages behind; reconnect to recover"),
        ),
        End::Idle => (None, close_code::POLICY, "idle: nothing received".into()),
        End::BadInput { code, message } => (Some(message), *code, truncate(message, 120)),
        End::Shutdown => (None, close_code::GOING_AWAY, "bridge shutting down".into()),
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        if let Some(message) = error {
            let msg = ServerMessage::Error {
                message: message.to_owned(),
            };
            tx.feed(Message::Text(Utf8Bytes::from(msg.encode())))
                .await?;
        }
        tx.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })))
        .await
    })
    .await;
}

/// A close reason must fit in a control frame (123 bytes).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

async fn session(
    tx: &mut Tx,
    rx: &mut Rx,
    hello: Frame,
    backlog: Vec<Frame>,
    live: &mut Receiver<Frame>,
    app: &AppState,
) -> End {
    let first = async {
        tx.feed(Message::Text(hello)).await?;
        for frame in backlog {
            tx.feed(Message::Text(frame)).await?;
        }
        tx.flush().await
    };
    match timeout(WRITE_TIMEOUT, first).await {
        Err(_) => return End::Stalled,
        Ok(Err(_)) => return End::Gone,
        Ok(Ok(())) => {}
    }

    let max = app.viewer.max_message_bytes;
    let mut last_heard = Instant::now();
    let mut pings = interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return End::Shutdown,
            incoming = rx.next() => match incoming {
                None => return End::Gone,
                Some(Err(e)) => {
                    // Oversize frames land here (tungstenite enforces the limit); a reset
                    // connection too, in which case the goodbye fails fast.
                    return End::BadInput {
                        code: close_code::POLICY,
                        message: format!("could not read your message: {e}"),
                    };
                }
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    if let Some(end) = judge_frame(&msg, max) {
                        return end;
                    }
                }
            },
            received = live.recv() => {
                let first = match received {
                    Ok(frame) => frame,
                    Err(RecvError::Lagged(missed)) => return End::Slow { missed },
                    Err(RecvError::Closed) => return End::Shutdown,
                };
                if let Err(end) = write_batch(tx, first, live, app.viewer.queue).await {
                    return end;
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    return End::Idle;
                }
                match timeout(WRITE_TIMEOUT, tx.send(Message::Ping(Default::default()))).await {
                    Err(_) => return End::Stalled,
                    Ok(Err(_)) => return End::Gone,
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once. While a
/// write waits on the socket, the viewer's backlog is watched: past the queue it is dropped then,
/// not only when the write finally completes or times out.
async fn write_batch(
    tx: &mut Tx,
    first: Frame,
    live: &mut Receiver<Frame>,
    queue: usize,
) -> Result<(), End> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match live.try_recv() {
            Ok(frame) => batch.push(frame),
            Err(TryRecvError::Lagged(missed)) => return Err(End::Slow { missed }),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    let write = async {
        for frame in batch {
            tx.feed(Message::Text(frame)).await?;
        }
        tx.flush().await
    };
    tokio::pin!(write);
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    let mut check = interval_at(Instant::now() + LAG_CHECK, LAG_CHECK);
    loop {
        tokio::select! {
            written = &mut write => return written.map_err(|_| End::Gone),
            () = &mut deadline => return Err(End::Stalled),
            _ = check.tick() => {
                let behind = live.len();
                if behind > queue {
                    return Err(End::Slow { missed: (behind - queue) as u64 });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_parsing() {
        let p = |e: Option<&str>, o: Option<&str>| WsParams {
            epoch: e.map(str::to_owned),
            offset: o.map(str::to_owned),
        };
        assert_eq!(p(None, None).resume(), Resume::Fresh);
        assert_eq!(
            p(Some("ab"), Some("7")).resume(),
            Resume::From {
                epoch: "ab".into(),
                offset: 7
            }
        );
        assert_eq!(p(Some("ab"), None).resume(), Resume::Unusable);
        assert_eq!(p(None, Some("7")).resume(), Resume::Unusable);
        assert_eq!(p(Some("ab"), Some("-1")).resume(), Resume::Unusable);
        assert_eq!(p(Some(""), Some("1")).resume(), Resume::Unusable);
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            judge_frame(&Message::Text(r#"{"kind":"ping"}"#.into()), 100),
            None
        );
        assert_eq!(judge_frame(&Message::Ping(Default::default()), 100), None);
        assert_eq!(
            judge_frame(&Message::Close(None), 100),
            Some(End::ClientClosed)
        );
        match judge_frame(&Message::Text("x".repeat(101).into()), 100) {
            Some(End::BadInput { code, message }) => {
                assert_eq!(code, close_code::POLICY);
                assert!(
                    message.contains("101 bytes") && message.contains("100-byte"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match judge_frame(&Message::Text(r#"{"kind":"chat"}"#.into()), 100) {
            Some(End::BadInput { code, message }) => {
                assert_eq!(code, close_code::POLICY);
                assert!(message.contains("chat"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge_frame(&Message::Binary(vec![1u8, 2].into()), 100),
            Some(End::BadInput {
                code: close_code::UNSUPPORTED,
                ..
            })
        ));
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let t = truncate(&long, 120);
        assert!(t.len() <= 120 && long.starts_with(&t));
        assert_eq!(truncate("short", 120), "short");
    }
}
