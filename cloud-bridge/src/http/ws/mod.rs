//! The viewer WebSocket (`/ws/{studio}/{stream}?epoch=E&offset=N`): `hello`, the chat's history,
//! then what the viewer missed, then live events and chat.
//!
//! The bridge speaks WebSocket itself on the raw TCP stream (see [`crate::websocket`]): after the
//! handshake the socket goes to an [`Outlet`](crate::hub::Outlet) that the fan-out lanes write
//! to directly, and to the connection's own task (`session`), which reads the viewer's frames,
//! answers them and writes what the socket could not take at once. A viewer that falls behind or
//! stalls is closed rather than allowed to hold anything up.

mod chat;
mod session;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use spotter_protocol::viewer::ClientMessage;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::admission::Refused;
use super::pages::{json_error, not_found_json};
use super::AppState;
use crate::hub::Resume;
use crate::metrics::Metrics;
use crate::websocket::{self, ClientFrame, HandshakeError};

pub use chat::ChatConn;

/// WebSocket close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    /// The page is leaving (browsers send it; the bridge does not).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame no client may send (unmasked, reserved bits, unknown opcode).
    pub const PROTOCOL_ERROR: u16 = crate::websocket::frame::PROTOCOL_ERROR;
    /// A frame type the bridge does not accept (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text frames that are not UTF-8.
    pub const INVALID_PAYLOAD: u16 = crate::websocket::frame::INVALID_PAYLOAD;
    /// Oversize frames, silence, flooding.
    pub const POLICY: u16 = crate::websocket::frame::POLICY;
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
    /// A write made no progress in time.
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
    /// More than [`crate::chat::FloodGuard::MAX_REFUSALS`] refusals within its window.
    Flooding,
    /// The connection's user was banned from the chat.
    Banned {
        /// End of the ban, UTC ms.
        until_ms: u64,
        /// The moderator's reason.
        reason: Option<String>,
    },
}

/// What one message received from a viewer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message to act on.
    Message(ClientMessage),
    /// JSON that is not a client message: answer `error`, keep the socket.
    Malformed(String),
    /// A protocol-level ping: answer with a pong carrying its payload.
    Ping(Vec<u8>),
    /// Nothing to do (a pong).
    Nothing,
    /// The connection ends.
    End(End),
}

/// What to do with one message received from a viewer (its size was checked as it was read).
pub fn judge(frame: ClientFrame) -> Incoming {
    match frame {
        ClientFrame::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
            Ok(m) => Incoming::Message(m),
            Err(e) => Incoming::Malformed(format!("could not understand your message: {e}")),
        },
        ClientFrame::Binary => Incoming::End(End::BadInput {
            code: close_code::UNSUPPORTED,
            message: "binary frames are not accepted: send JSON text frames".into(),
        }),
        ClientFrame::Ping(payload) => Incoming::Ping(payload),
        ClientFrame::Pong => Incoming::Nothing,
        ClientFrame::Close(_) => Incoming::End(End::ClientClosed),
    }
}

/// The end for bytes that are not a WebSocket stream a client may send.
pub fn unreadable(error: &websocket::FrameError) -> End {
    End::BadInput {
        code: error.close_code(),
        message: format!("could not read your message: {error}"),
    }
}

/// `GET /ws/{studio}/{stream}`
pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((studio, stream)): Path<(String, String)>,
    Query(params): Query<WsParams>,
    mut req: Request,
) -> Response {
    let Some(hub) = app.hubs.get(&studio, &stream).cloned() else {
        return not_found_json(&studio, &stream).into_response();
    };
    let accept = match websocket::accept(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(e) => return not_websocket(&e),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded to a WebSocket (HTTP/1.1 is required)".into(),
        );
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
    // Tracked, so that shutdown waits for this viewer's goodbye.
    app.tracker.clone().spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%peer, "WebSocket upgrade failed: {e}");
                return;
            }
        };
        // serve.rs hands hyper the TCP stream itself; take it back, with any bytes hyper read
        // past the request (a client may send its first frame at once).
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => {
                warn!("WebSocket upgrade on a connection that is not plain TCP: closed");
                return;
            }
        };
        session::serve(parts.io.into_inner(), &parts.read_buf, hub, resume, app).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The answer to a request on the WebSocket path that is not an acceptable upgrade: 426 with the
/// version the bridge speaks, or 400 saying what is missing.
fn not_websocket(e: &HandshakeError) -> Response {
    match e {
        HandshakeError::Version(_) => {
            let mut resp = json_error(StatusCode::UPGRADE_REQUIRED, e.to_string());
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            resp
        }
        _ => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
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
    fn client_messages() {
        assert_eq!(
            judge(ClientFrame::Text(r#"{"kind":"ping"}"#.into())),
            Incoming::Message(ClientMessage::Ping)
        );
        assert_eq!(
            judge(ClientFrame::Ping(b"x".to_vec())),
            Incoming::Ping(b"x".to_vec())
        );
        assert_eq!(judge(ClientFrame::Pong), Incoming::Nothing);
        assert_eq!(
            judge(ClientFrame::Close(Some(1000))),
            Incoming::End(End::ClientClosed)
        );
        // A message the bridge does not understand is answered, not a reason to close.
        match judge(ClientFrame::Text(r#"{"kind":"chat"}"#.into())) {
            Incoming::Malformed(message) => assert!(message.contains("chat"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(ClientFrame::Binary),
            Incoming::End(End::BadInput {
                code: close_code::UNSUPPORTED,
                ..
            })
        ));
    }

    #[test]
    fn unreadable_frames_get_the_close_code_for_their_fault() {
        use crate::websocket::FrameError;
        assert!(matches!(
            unreadable(&FrameError::Utf8 { at: 3 }),
            End::BadInput {
                code: close_code::INVALID_PAYLOAD,
                ..
            }
        ));
        match unreadable(&FrameError::TooLarge {
            size: 5000,
            max: 4096,
        }) {
            End::BadInput { code, message } => {
                assert_eq!(code, close_code::POLICY);
                assert!(
                    message.contains("5000 bytes") && message.contains("4096-byte"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            unreadable(&FrameError::Unmasked { index: 0 }),
            End::BadInput {
                code: close_code::PROTOCOL_ERROR,
                ..
            }
        ));
    }
}
