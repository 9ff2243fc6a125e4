//! The viewer WebSocket (`/ws/{studio}/{stream}?epoch=E&offset=N`): `hello`, the chat's history,
//! then what the viewer missed, then live events and chat; small buffers, coalesced writes, and a
//! viewer that falls behind or stalls is closed rather than allowed to hold anything up.
//!
//! Chat requests (`auth`, `guest`, `say`, `delete`, `ban`) are judged by the stream's room and
//! published to the broker; the sender gets `said`/`refused`/`session`/`error` here, everyone
//! gets the result when it comes back from the broker. A malformed message is answered with
//! `error` and the socket stays open; a socket earning too many refusals is closed, and so are a
//! banned user's sockets (after the `banned` everyone gets). A close the bridge starts waits for
//! the viewer's close, reading and discarding what it still sends, so that it is not reset.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use spotter_protocol::chat::{RefusalCode, SessionUser};
use spotter_protocol::viewer::{ClientMessage, ServerMessage};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::time::{interval_at, timeout, Instant};
use tracing::{debug, info};

use super::admission::Refused;
use super::pages::{json_error, not_found_json};
use super::AppState;
use crate::chat::room::{check_nonce, rfc3339};
use crate::chat::token::{self, Capability, Claims, GUEST_PREFIX};
use crate::chat::{now_ms, Denied, FloodGuard, PublishError, Publisher, Verified};
use crate::hub::{Control, Frame, Hub, JoinOutcome, Joined, Resume};
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
    /// The page is leaving (browsers send it; the bridge does not).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame type the bridge does not accept (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text frames that are not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Oversize frames, silence, flooding.
    pub const POLICY: u16 = 1008;
    /// The bridge is stopping (a deploy, a scale-in): reconnect, to another replica behind the
    /// balancer, with the cursor.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Fell behind: reconnect (with the cursor) to recover.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The user was banned from the chat (application code).
    pub const BANNED: u16 = 4003;
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
    /// More than [`FloodGuard::MAX_REFUSALS`] refusals within [`FloodGuard::WINDOW_MS`].
    Flooding,
    /// The connection's user was banned from the chat.
    Banned {
        /// End of the ban, UTC ms.
        until_ms: u64,
        /// The moderator's reason.
        reason: Option<String>,
    },
}

/// What one frame received from a viewer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message to act on.
    Message(ClientMessage),
    /// JSON that is not a client message: answer `error`, keep the socket.
    Malformed(String),
    /// Nothing to do (a protocol-level ping or pong).
    Nothing,
    /// The connection ends.
    End(End),
}

/// What to do with one frame received from a viewer.
pub fn judge_frame(msg: &Message, max_message_bytes: usize) -> Incoming {
    match msg {
        Message::Text(text) => {
            if text.len() > max_message_bytes {
                return Incoming::End(End::BadInput {
                    code: close_code::POLICY,
                    message: format!(
                        "message of {} bytes is over the {max_message_bytes}-byte limit",
                        text.len()
                    ),
                });
            }
            match serde_json::from_str::<ClientMessage>(text.as_str()) {
                Ok(m) => Incoming::Message(m),
                Err(e) => Incoming::Malformed(format!("could not understand your message: {e}")),
            }
        }
        Message::Binary(_) => Incoming::End(End::BadInput {
            code: close_code::UNSUPPORTED,
            message: "binary frames are not accepted: send JSON text frames".into(),
        }),
        Message::Ping(_) | Message::Pong(_) => Incoming::Nothing,
        Message::Close(_) => Incoming::End(End::ClientClosed),
    }
}

/// The end for a frame tungstenite could not read: invalid UTF-8 (1007), else oversize or a
/// broken frame (1008). axum's error is opaque, so its message tells the two apart.
pub fn read_error(error: &str) -> End {
    let code = if error.contains("UTF-8") || error.contains("utf-8") {
        close_code::INVALID_PAYLOAD
    } else {
        close_code::POLICY
    };
    End::BadInput {
        code,
        message: format!("could not read your message: {error}"),
    }
}

/// A connection's chat: who it is (once authenticated) and how often it was refused.
#[derive(Debug, Default)]
pub struct ChatConn {
    session: Option<Verified>,
    flood: FloodGuard,
}

/// Hands what a viewer's request came to (a message, a deletion, a ban) to the broker, which
/// brings it back to every bridge's viewers; the reason when it cannot (no broker, or away, or its
/// queue full: the socket never waits on it).
fn to_broker(
    app: &AppState,
    publish: impl FnOnce(&Publisher) -> Result<(), PublishError>,
) -> Result<(), String> {
    match &app.publisher {
        Some(p) => publish(p).map_err(|e| e.to_string()),
        None => Err("the chat is unavailable: no broker".into()),
    }
}

fn refusal(nonce: Option<String>, code: RefusalCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Refused {
        nonce,
        code,
        message: message.into(),
    }
}

fn error(message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        message: message.into(),
    }
}

fn denied(nonce: Option<String>, d: Denied) -> ServerMessage {
    match d {
        Denied::Refused { code, message } => refusal(nonce, code, message),
        Denied::Invalid(message) => error(message),
    }
}

fn message_id(now_ms: u64) -> String {
    format!("{now_ms:x}-{:016x}", fastrand::u64(..))
}

impl ChatConn {
    /// The authenticated user, while the token is valid.
    fn user(&self, now_ms: u64) -> Result<&SessionUser, (RefusalCode, &'static str)> {
        match &self.session {
            None => Err((
                RefusalCode::Unauthenticated,
                "sign in to chat: send auth with a token first",
            )),
            Some(v) if v.expires_at_ms <= now_ms => Err((
                RefusalCode::Unauthenticated,
                "your token expired: authenticate again",
            )),
            Some(v) => Ok(&v.user),
        }
    }

    /// Acts on one client message; returns what to send back to this connection only.
    fn handle(
        &mut self,
        msg: ClientMessage,
        hub: &Hub,
        app: &AppState,
        now: u64,
    ) -> Vec<ServerMessage> {
        if matches!(msg, ClientMessage::Ping) {
            return Vec::new();
        }
        if !hub.chat_enabled() {
            return vec![error("chat is off on this stream")];
        }
        let reply = match msg {
            ClientMessage::Ping => return Vec::new(),
            ClientMessage::Auth { token } => {
                match token::verify(app.chat.key.as_ref(), &token, now) {
                    Ok(v) => self.start_session(v, None, hub, now),
                    Err(e) => error(e.to_string()),
                }
            }
            ClientMessage::Guest { name } => self.guest(&name, hub, app, now),
            ClientMessage::Say { text, nonce } => {
                if let Err(d) = check_nonce(nonce.as_deref()) {
                    return vec![denied(None, d)];
                }
                let user = match self.user(now) {
                    Ok(u) => u,
                    Err((code, m)) => return vec![refusal(nonce, code, m)],
                };
                let id = message_id(now);
                let checked = hub.room().say(user, &text, id.clone(), now);
                match checked {
                    Err(d) => denied(nonce, d),
                    Ok(event) => {
                        let c = &hub.config;
                        match to_broker(app, |p| p.chat(&c.studio, &c.stream, &event)) {
                            Ok(()) => ServerMessage::Said { nonce, id },
                            Err(why) => refusal(nonce, RefusalCode::Unavailable, why),
                        }
                    }
                }
            }
            ClientMessage::Delete { id } => {
                let user = match self.user(now) {
                    Ok(u) => u,
                    Err((code, m)) => return vec![refusal(None, code, m)],
                };
                let checked = hub.room().delete(user, &id);
                match checked {
                    Err(d) => denied(None, d),
                    // what it comes to reaches everyone, this viewer too, from the broker
                    Ok(event) => {
                        let c = &hub.config;
                        match to_broker(app, |p| p.chat(&c.studio, &c.stream, &event)) {
                            Ok(()) => return Vec::new(),
                            Err(why) => refusal(None, RefusalCode::Unavailable, why),
                        }
                    }
                }
            }
            ClientMessage::Ban {
                user: target,
                secs,
                reason,
            } => {
                let user = match self.user(now) {
                    Ok(u) => u,
                    Err((code, m)) => return vec![refusal(None, code, m)],
                };
                let checked = hub.room().ban(user, &target, secs, reason, now);
                match checked {
                    Err(d) => denied(None, d),
                    Ok(ban) => {
                        let c = &hub.config;
                        match to_broker(app, |p| p.ban(&c.studio, &c.stream, &ban)) {
                            Ok(()) => return Vec::new(),
                            Err(why) => refusal(None, RefusalCode::Unavailable, why),
                        }
                    }
                }
            }
        };
        vec![reply]
    }

    fn guest(&mut self, name: &str, hub: &Hub, app: &AppState, now: u64) -> ServerMessage {
        let guests = hub.chat_ability().is_some_and(|c| c.guests);
        let key = match (&app.chat.key, guests) {
            (Some(key), true) => key,
            _ => {
                return refusal(
                    None,
                    RefusalCode::GuestsOff,
                    "guests cannot chat on this stream: sign in",
                )
            }
        };
        let name = match hub.room().guest_name(name) {
            Ok(n) => n,
            Err(d) => return denied(None, d),
        };
        let exp = (now / 1000).saturating_add(app.chat.guest_ttl.as_secs());
        let claims = Claims {
            sub: format!("{GUEST_PREFIX}{:016x}", fastrand::u64(..)),
            name,
            caps: vec![Capability::Send],
            exp,
            iat: Some(now / 1000),
            guest: true,
        };
        let signed = token::sign(key, &claims);
        match token::verify(Some(key), &signed, now) {
            Ok(v) => self.start_session(v, Some(signed), hub, now),
            Err(e) => error(e.to_string()),
        }
    }

    /// Takes a verified token as this connection's user; `session` tells the page who it is and,
    /// while the user is banned, until when (so it can say so before a `say` is refused).
    fn start_session(
        &mut self,
        v: Verified,
        token: Option<String>,
        hub: &Hub,
        now: u64,
    ) -> ServerMessage {
        let banned_until_ms = hub.room().banned_until(&v.user.id, now);
        let reply = ServerMessage::Session {
            user: v.user.clone(),
            expires_at_ms: v.expires_at_ms,
            token,
            banned_until_ms,
        };
        self.session = Some(v);
        reply
    }

    /// Whether a ban signal concerns this connection's user and is in force.
    fn banned_by(&self, signal: &Control, now: u64) -> Option<End> {
        let Control::Banned {
            user,
            until_ms,
            reason,
        } = signal;
        let mine = self.session.as_ref().is_some_and(|v| &v.user.id == user);
        (mine && *until_ms > now).then(|| End::Banned {
            until_ms: *until_ms,
            reason: reason.clone(),
        })
    }

    /// After missed ban signals: whether the room now bans this connection's user.
    fn banned_in(&self, hub: &Hub, now: u64) -> Option<End> {
        let user = &self.session.as_ref()?.user.id;
        let room = hub.room();
        let until_ms = room.banned_until(user, now)?;
        let reason = room
            .bans()
            .find(|b| &b.user == user)
            .and_then(|b| b.reason.clone());
        Some(End::Banned { until_ms, reason })
    }

    /// Counts the refusals and errors in `replies`; the end when the connection is flooding.
    fn count(&mut self, replies: &[ServerMessage], now: u64) -> Option<End> {
        let mut flooding = false;
        for r in replies {
            if matches!(
                r,
                ServerMessage::Refused { .. } | ServerMessage::Error { .. }
            ) {
                flooding |= self.flood.refused(now);
            }
        }
        flooding.then_some(End::Flooding)
    }
}

/// `GET /ws/{studio}/{stream}`
pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((studio, stream)): Path<(String, String)>,
    Query(params): Query<WsParams>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = app.hubs.get(&studio, &stream).cloned() else {
        return not_found_json(&studio, &stream).into_response();
    };
    let slot = match app.admission.try_admit(peer.ip()) {
        Ok(slot) => slot,
        Err(Refused::Full) => {
            Metrics::inc(&app.metrics.viewers_refused_full);
            debug!(
                budget = app.admission.budget(),
                "viewer refused: this bridge is full"
            );
            return full(app.admission.budget());
        }
        Err(Refused::Address) => {
            Metrics::inc(&app.metrics.viewers_refused_address);
            debug!(
                %peer,
                per_address = app.admission.per_address(),
                "viewer refused: too many viewers from its address"
            );
            return too_many_from_address(app.admission.per_address());
        }
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
            let _slot = slot;
            serve(socket, hub, resume, app).await;
        })
}

/// The 503 for a viewer over the budget: the balancer or the page's backoff tries again.
fn full(budget: usize) -> Response {
    let mut resp = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("this bridge is full ({budget} viewers): try again shortly"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The 429 for an address that already holds its share of viewers.
fn too_many_from_address(per_address: usize) -> Response {
    let mut resp = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many viewers from this address ({per_address}): close a tab or try again shortly"
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
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
        chat_history,
        mut control,
        watching: _watching,
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
    let mut first = vec![hello];
    first.extend(chat_history);
    first.extend(backlog);
    let mut feeds = Feeds {
        live: &mut live,
        control: &mut control,
    };
    let end = session(&mut tx, &mut rx, first, &mut feeds, &hub, &app).await;
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
    goodbye(&mut tx, &mut rx, &end, app.viewer.queue).await;
}

/// Sends what the end calls for (an error message, a close frame), bounded in time. After a close
/// the bridge starts, it reads on until the viewer's close (RFC 6455's closing handshake): a
/// socket dropped with the viewer's frames unread is reset, and a flooding client would see 1006
/// instead of the close frame that says why.
async fn goodbye(tx: &mut Tx, rx: &mut Rx, end: &End, queue: usize) {
    let flood_message: String;
    let ban_message: String;
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
        End::Shutdown => (None, close_code::SERVICE_RESTART, "service restart".into()),
        End::Flooding => {
            flood_message = format!(
                "flooding: more than {} refusals within {} s; reconnect and slow down",
                FloodGuard::MAX_REFUSALS,
                FloodGuard::WINDOW_MS / 1000
            );
            (
                Some(flood_message.as_str()),
                close_code::POLICY,
                "flooding".into(),
            )
        }
        End::Banned { until_ms, reason } => {
            let until = rfc3339(*until_ms);
            ban_message = match reason {
                Some(r) => format!("you are banned from this chat until {until}: {r}"),
                None => format!("you are banned from this chat until {until}"),
            };
            (
                Some(ban_message.as_str()),
                close_code::BANNED,
                format!("banned until {until}"),
            )
        }
    };
    let sent = timeout(CLOSE_TIMEOUT, async {
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
    if matches!(sent, Ok(Ok(()))) {
        await_close(rx).await;
    }
}

/// Reads and discards the viewer's frames until its close frame arrives, the connection ends or
/// [`CLOSE_TIMEOUT`] passes.
async fn await_close(rx: &mut Rx) {
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = rx.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Writes what is already queued for this viewer, bounded in time: before a banned user's socket
/// is closed, so that it gets the `banned` broadcast (queued before the ban's signal) first.
async fn write_queued(tx: &mut Tx, live: &mut Receiver<Frame>) {
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Ok(frame) = live.try_recv() {
            tx.feed(Message::Text(frame)).await?;
        }
        tx.flush().await
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

/// What a connection listens to besides its socket.
struct Feeds<'a> {
    live: &'a mut Receiver<Frame>,
    control: &'a mut Receiver<Control>,
}

/// Sends replies to this connection alone, bounded in time.
async fn reply(tx: &mut Tx, replies: Vec<ServerMessage>) -> Result<(), End> {
    if replies.is_empty() {
        return Ok(());
    }
    let write = async {
        for r in replies {
            tx.feed(Message::Text(Utf8Bytes::from(r.encode()))).await?;
        }
        tx.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(End::Stalled),
        Ok(Err(_)) => Err(End::Gone),
        Ok(Ok(())) => Ok(()),
    }
}

async fn session(
    tx: &mut Tx,
    rx: &mut Rx,
    first: Vec<Frame>,
    feeds: &mut Feeds<'_>,
    hub: &Hub,
    app: &AppState,
) -> End {
    let first = async {
        for frame in first {
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
    let mut chat = ChatConn::default();
    let live = &mut *feeds.live;
    let control = &mut *feeds.control;
    let mut last_heard = Instant::now();
    let mut pings = interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return End::Shutdown,
            incoming = rx.next() => match incoming {
                None => return End::Gone,
                Some(Err(e)) => {
                    // Oversize frames and invalid UTF-8 land here (tungstenite checks both); a
                    // reset connection too, in which case the goodbye fails fast.
                    return read_error(&e.to_string());
                }
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    let now = now_ms();
                    let replies = match judge_frame(&msg, max) {
                        Incoming::End(end) => return end,
                        Incoming::Nothing => continue,
                        Incoming::Malformed(message) => vec![error(message)],
                        Incoming::Message(m) => chat.handle(m, hub, app, now),
                    };
                    let refusals = replies
                        .iter()
                        .filter(|r| matches!(r, ServerMessage::Refused { .. } | ServerMessage::Error { .. }))
                        .count();
                    app.metrics.chat_refused.fetch_add(refusals as u64, Ordering::Relaxed);
                    if let Some(end) = chat.count(&replies, now) {
                        return end;
                    }
                    if let Err(end) = reply(tx, replies).await {
                        return end;
                    }
                }
            },
            signal = control.recv() => {
                let now = now_ms();
                let end = match signal {
                    Ok(signal) => chat.banned_by(&signal, now),
                    Err(RecvError::Lagged(_)) => chat.banned_in(hub, now),
                    Err(RecvError::Closed) => return End::Shutdown,
                };
                if let Some(end) = end {
                    write_queued(tx, live).await;
                    return end;
                }
            }
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
            Incoming::Message(ClientMessage::Ping)
        );
        assert_eq!(
            judge_frame(&Message::Ping(Default::default()), 100),
            Incoming::Nothing
        );
        assert_eq!(
            judge_frame(&Message::Close(None), 100),
            Incoming::End(End::ClientClosed)
        );
        match judge_frame(&Message::Text("x".repeat(101).into()), 100) {
            Incoming::End(End::BadInput { code, message }) => {
                assert_eq!(code, close_code::POLICY);
                assert!(
                    message.contains("101 bytes") && message.contains("100-byte"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A message the bridge does not understand is answered, not a reason to close.
        match judge_frame(&Message::Text(r#"{"kind":"chat"}"#.into()), 100) {
            Incoming::Malformed(message) => assert!(message.contains("chat"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge_frame(&Message::Binary(vec![1u8, 2].into()), 100),
            Incoming::End(End::BadInput {
                code: close_code::UNSUPPORTED,
                ..
            })
        ));
    }

    #[test]
    fn unreadable_frames_get_the_close_code_for_their_fault() {
        assert!(matches!(
            read_error("Utf8 error: invalid UTF-8 encoding"),
            End::BadInput {
                code: close_code::INVALID_PAYLOAD,
                ..
            }
        ));
        assert!(matches!(
            read_error("Space limit exceeded: Message too long: 5000 > 4096"),
            End::BadInput {
                code: close_code::POLICY,
                ..
            }
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
