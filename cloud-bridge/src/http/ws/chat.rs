//! A viewer connection's chat: who it speaks as (once authenticated) and what its requests
//! (`auth`, `guest`, `say`, `delete`, `ban`) come to. Accepted requests go to the broker, which
//! brings them back to every bridge's viewers; the sender gets `said`/`refused`/`session`/`error`.

use spotter_protocol::chat::{RefusalCode, SessionUser};
use spotter_protocol::viewer::{ClientMessage, ServerMessage};

use super::End;
use crate::chat::room::check_nonce;
use crate::chat::token::{self, Capability, Claims, GUEST_PREFIX};
use crate::chat::{Denied, FloodGuard, PublishError, Publisher, Verified};
use crate::http::AppState;
use crate::hub::Hub;

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

pub(super) fn error(message: impl Into<String>) -> ServerMessage {
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
    pub(super) fn handle(
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

    /// The user this connection speaks as, once authenticated.
    pub(super) fn user_id(&self) -> Option<&str> {
        self.session.as_ref().map(|v| v.user.id.as_str())
    }

    /// Counts the refusals and errors in `replies`; the end when the connection is flooding.
    pub(super) fn count(&mut self, replies: &[ServerMessage], now: u64) -> Option<End> {
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
