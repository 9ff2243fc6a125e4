//! Chat tokens: HS256 JWTs (`header.payload.signature`, base64url without padding) signed with
//! the shop's key, or by this bridge for guests. Verification checks the algorithm before
//! anything else, compares the signature in constant time (`ring::hmac::verify`), and only then
//! reads the claims, so a token's capabilities are exactly what its signature covers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use spotter_protocol::chat::{check_name, SessionUser};
use spotter_protocol::topic::validate_user_id;

/// Shortest key accepted: HS256 wants at least as many bytes as its hash.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token looked at (a real one is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Prefix of every guest user id; other tokens may not use it.
pub const GUEST_PREFIX: &str = "guest-";

/// Why a token was refused; every message starts with "token refused" as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("token refused: malformed: {0}")]
    Malformed(String),
    /// Any algorithm but HS256 (`none` included).
    #[error("token refused: algorithm {0:?} is not accepted: only HS256")]
    Algorithm(String),
    /// Signed with another key, or changed after signing.
    #[error("token refused: signature does not match")]
    Signature,
    /// Past its `exp`.
    #[error("token refused: expired at {exp} (seconds since the epoch): get a new one")]
    Expired {
        /// The token's `exp`.
        exp: u64,
    },
    /// A signed claim that is not acceptable.
    #[error("token refused: claim `{field}`: {reason}")]
    Claim {
        /// The claim at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// This bridge has no key, so it can verify nothing.
    #[error("token refused: this bridge has no chat key (chat.key_file, the chat-key credential or SPOTTER_CHAT_KEY)")]
    NoKey,
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chat key is {0} bytes: use at least {MIN_KEY_BYTES} random bytes")]
pub struct ShortKey(pub usize);

/// The HMAC key; never printed.
#[derive(Clone)]
pub struct ChatKey(hmac::Key);

impl std::fmt::Debug for ChatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatKey(..)")
    }
}

impl ChatKey {
    /// A key from raw bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(bytes: &[u8]) -> Result<Self, ShortKey> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ShortKey(bytes.len()));
        }
        Ok(ChatKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }
}

/// A capability a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Post messages.
    Send,
    /// Delete messages and ban users.
    Moderate,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id: 1-64 characters of `[A-Za-z0-9_.@-]`.
    pub sub: String,
    /// Display name: 1-32 characters.
    pub name: String,
    /// What the holder may do.
    pub caps: Vec<Capability>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Set on guest tokens this bridge issued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
}

/// A verified token: who the holder is in chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user and capabilities.
    pub user: SessionUser,
    /// Expiry, UTC ms.
    pub expires_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs `claims` with `key`.
pub fn sign(key: &ChatKey, claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
    };
    let header = serde_json::to_vec(&header).expect("a JWT header always serializes");
    let payload = serde_json::to_vec(claims).expect("claims always serialize");
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let tag = hmac::sign(&key.0, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn part(name: &str, b64: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| TokenError::Malformed(format!("{name} is not base64url: {e}")))
}

fn claim(field: &'static str, reason: impl Into<String>) -> TokenError {
    TokenError::Claim {
        field,
        reason: reason.into(),
    }
}

/// Verifies `token` at `now_ms`: HS256 only, signature, then expiry and claims.
pub fn verify(key: Option<&ChatKey>, token: &str, now_ms: u64) -> Result<Verified, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "{} bytes, over {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three parts separated by '.'".into(),
        ));
    };
    let header: Header = serde_json::from_slice(&part("header", h)?)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm(header.alg));
    }
    if header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(TokenError::Malformed("header `typ` must be \"JWT\"".into()));
    }
    let key = key.ok_or(TokenError::NoKey)?;
    let signature = part("signature", s)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    hmac::verify(&key.0, signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::Signature)?;

    let claims: Claims = serde_json::from_slice(&part("payload", p)?)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    if claims.exp.saturating_mul(1000) <= now_ms {
        return Err(TokenError::Expired { exp: claims.exp });
    }
    validate_user_id(&claims.sub).map_err(|e| claim("sub", e.to_string()))?;
    if claims.guest != claims.sub.starts_with(GUEST_PREFIX) {
        return Err(claim(
            "sub",
            format!("ids starting with {GUEST_PREFIX:?} are for guest tokens, and only they"),
        ));
    }
    check_name(&claims.name).map_err(|r| claim("name", r))?;
    Ok(Verified {
        user: SessionUser {
            id: claims.sub,
            name: claims.name,
            send: claims.caps.contains(&Capability::Send),
            moderate: claims.caps.contains(&Capability::Moderate),
            guest: claims.guest,
        },
        expires_at_ms: claims.exp.saturating_mul(1000),
    })
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (or bare seconds) for `--ttl`.
pub fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the time to live must be at least 1 s".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_764_072_000_000;

    fn key() -> ChatKey {
        ChatKey::new(&[7u8; 32]).expect("32 bytes")
    }

    fn claims(caps: Vec<Capability>) -> Claims {
        Claims {
            sub: "u1".into(),
            name: "Alice".into(),
            caps,
            exp: NOW_MS / 1000 + 3600,
            iat: Some(NOW_MS / 1000),
            guest: false,
        }
    }

    fn b64json(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    #[test]
    fn a_signed_token_verifies_with_its_capabilities() {
        let t = sign(&key(), &claims(vec![Capability::Send]));
        let v = verify(Some(&key()), &t, NOW_MS).expect("valid");
        assert_eq!(v.user.id, "u1");
        assert!(v.user.send && !v.user.moderate && !v.user.guest);
        assert_eq!(v.expires_at_ms, NOW_MS + 3_600_000);
        let m = sign(
            &key(),
            &claims(vec![Capability::Send, Capability::Moderate]),
        );
        assert!(
            verify(Some(&key()), &m, NOW_MS)
                .expect("valid")
                .user
                .moderate
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(ChatKey::new(&[1u8; 31]).err(), Some(ShortKey(31)));
        assert_eq!(format!("{:?}", key()), "ChatKey(..)", "never printed");
    }

    #[test]
    fn forged_with_another_key_is_refused() {
        let other = ChatKey::new(&[8u8; 32]).expect("key");
        let t = sign(
            &other,
            &claims(vec![Capability::Send, Capability::Moderate]),
        );
        assert_eq!(verify(Some(&key()), &t, NOW_MS), Err(TokenError::Signature));
    }

    #[test]
    fn moderate_claimed_without_the_key_is_refused() {
        // A viewer's genuine send-only token, its payload rewritten to add `moderate`, the
        // original signature kept.
        let t = sign(&key(), &claims(vec![Capability::Send]));
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = serde_json::to_value(claims(vec![Capability::Send])).expect("json");
        c["caps"] = serde_json::json!(["send", "moderate"]);
        let forged = format!("{}.{}.{}", parts[0], b64json(&c), parts[2]);
        assert_eq!(
            verify(Some(&key()), &forged, NOW_MS),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn tampered_signature_or_payload_is_refused() {
        let t = sign(&key(), &claims(vec![Capability::Send]));
        let mut bytes = t.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(bytes).expect("ascii");
        assert_eq!(verify(Some(&key()), &t, NOW_MS), Err(TokenError::Signature));
        let good = sign(&key(), &claims(vec![Capability::Send]));
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = serde_json::to_value(claims(vec![Capability::Send])).expect("json");
        c["exp"] = serde_json::json!(NOW_MS / 1000 + 10 * 365 * 86400);
        let longer = format!("{}.{}.{}", parts[0], b64json(&c), parts[2]);
        assert_eq!(
            verify(Some(&key()), &longer, NOW_MS),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused_before_the_signature() {
        let payload =
            b64json(&serde_json::to_value(claims(vec![Capability::Moderate])).expect("j"));
        for alg in ["none", "None", "HS512", "RS256", "hs256"] {
            let header = b64json(&serde_json::json!({"alg": alg, "typ": "JWT"}));
            for sig in ["", "c2ln"] {
                let t = format!("{header}.{payload}.{sig}");
                assert_eq!(
                    verify(Some(&key()), &t, NOW_MS),
                    Err(TokenError::Algorithm(alg.into())),
                    "{alg}"
                );
            }
        }
        // An HS256 header with extra parameters (`kid`, `jku`, `crit`) is not ours either.
        let header = b64json(&serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "x"}));
        assert!(matches!(
            verify(Some(&key()), &format!("{header}.{payload}.x"), NOW_MS),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn expired_is_refused() {
        let mut c = claims(vec![Capability::Send]);
        c.exp = NOW_MS / 1000;
        let t = sign(&key(), &c);
        assert_eq!(
            verify(Some(&key()), &t, NOW_MS),
            Err(TokenError::Expired { exp: c.exp })
        );
        assert!(verify(Some(&key()), &t, NOW_MS - 1).is_ok());
    }

    #[test]
    fn malformed_tokens_and_bad_claims_are_named() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(
                matches!(
                    verify(Some(&key()), t, NOW_MS),
                    Err(TokenError::Malformed(_))
                ),
                "{t}"
            );
        }
        let mut c = claims(vec![Capability::Send]);
        c.sub = "a/b".into();
        let t = sign(&key(), &c);
        assert!(matches!(
            verify(Some(&key()), &t, NOW_MS),
            Err(TokenError::Claim { field: "sub", .. })
        ));
        let mut c = claims(vec![Capability::Send]);
        c.sub = "guest-123".into();
        assert!(matches!(
            verify(Some(&key()), &sign(&key(), &c), NOW_MS),
            Err(TokenError::Claim { field: "sub", .. })
        ));
        c.guest = true;
        assert!(
            verify(Some(&key()), &sign(&key(), &c), NOW_MS)
                .expect("guest")
                .user
                .guest
        );
        let mut c = claims(vec![Capability::Send]);
        c.name = "x".repeat(33);
        assert!(matches!(
            verify(Some(&key()), &sign(&key(), &c), NOW_MS),
            Err(TokenError::Claim { field: "name", .. })
        ));
        let t = sign(&key(), &claims(vec![Capability::Send]));
        assert_eq!(verify(None, &t, NOW_MS), Err(TokenError::NoKey));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Ok(std::time::Duration::from_secs(172_800)));
        for bad in ["", "h", "1w", "0s", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
