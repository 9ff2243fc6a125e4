//! The server's half of the opening handshake (RFC 6455 section 4.2): which requests are
//! WebSocket upgrades the bridge accepts, and the `Sec-WebSocket-Accept` it answers with.

use axum::http::{header, HeaderMap, Method};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (section 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request is not a WebSocket upgrade the bridge can accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("a WebSocket opens with GET, not {0}")]
    Method(String),
    /// `Upgrade: websocket` or `Connection: upgrade` missing.
    #[error("not a WebSocket upgrade: send `Upgrade: websocket` and `Connection: Upgrade`")]
    NotUpgrade,
    /// A version other than 13.
    #[error("WebSocket version {0:?} is not supported: send `Sec-WebSocket-Version: 13`")]
    Version(String),
    /// No key, or one that is not 16 bytes in base64.
    #[error("`Sec-WebSocket-Key` is missing or not 16 bytes in base64")]
    Key,
}

/// Checks an upgrade request; its `Sec-WebSocket-Accept` when acceptable.
pub fn accept(method: &Method, headers: &HeaderMap) -> Result<String, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method(method.to_string()));
    }
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes() == b"13" => {}
        other => {
            return Err(HandshakeError::Version(
                other.map_or_else(String::new, |v| {
                    String::from_utf8_lossy(v.as_bytes()).into()
                }),
            ))
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .ok_or(HandshakeError::Key)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::Key);
    }
    Ok(accept_key(key))
}

/// `base64(SHA-1(key + GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn upgrade() -> Vec<(header::HeaderName, &'static str)> {
        vec![
            (header::UPGRADE, "websocket"),
            (header::CONNECTION, "keep-alive, Upgrade"),
            (header::SEC_WEBSOCKET_VERSION, "13"),
            (header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
    }

    #[test]
    fn the_rfc_example_key_gets_the_rfc_answer() {
        assert_eq!(
            accept(&Method::GET, &headers(&upgrade())),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned())
        );
    }

    #[test]
    fn requests_that_are_not_upgrades_are_refused_with_what_to_send() {
        assert!(matches!(
            accept(&Method::POST, &headers(&upgrade())),
            Err(HandshakeError::Method(_))
        ));
        let mut h = upgrade();
        h.remove(0);
        assert_eq!(
            accept(&Method::GET, &headers(&h)),
            Err(HandshakeError::NotUpgrade)
        );
        let mut h = upgrade();
        h[2].1 = "8";
        assert!(matches!(
            accept(&Method::GET, &headers(&h)),
            Err(HandshakeError::Version(v)) if v == "8"
        ));
        let mut h = upgrade();
        h[3].1 = "c2hvcnQ=";
        assert_eq!(accept(&Method::GET, &headers(&h)), Err(HandshakeError::Key));
    }
}
