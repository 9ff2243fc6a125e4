//! `[chat]`: limits, guests, where bans are kept, and the signing key, which is read from a file,
//! the systemd credential `chat-key` or `SPOTTER_CHAT_KEY`, never from the TOML.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::room::Limits;
use super::token::ChatKey;

/// The environment variable that may hold the key (raw bytes of its value).
pub const KEY_ENV: &str = "SPOTTER_CHAT_KEY";
/// The systemd credential's name, under `$CREDENTIALS_DIRECTORY`.
pub const KEY_CREDENTIAL: &str = "chat-key";

/// `[chat]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChat {
    /// Chat on the viewer socket at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Viewers may ask this bridge for a guest token with a name of their choice.
    #[serde(default)]
    pub guests: bool,
    /// Longest message, characters.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Each user's sustained rate, messages a second.
    #[serde(default = "default_user_rate")]
    pub user_rate_per_sec: f64,
    /// Messages a user may send at once before the rate applies.
    #[serde(default = "default_user_burst")]
    pub user_burst: u32,
    /// A stream's sustained rate, everybody's messages together.
    #[serde(default = "default_stream_rate")]
    pub stream_rate_per_sec: f64,
    /// A stream's burst.
    #[serde(default = "default_stream_burst")]
    pub stream_burst: u32,
    /// Words refused anywhere in a message (whole words, case-insensitive) and in guest names.
    #[serde(default)]
    pub blocked_words: Vec<String>,
    /// Messages kept per stream for late joiners.
    #[serde(default = "default_history")]
    pub history: usize,
    /// How long a guest token lasts, seconds.
    #[serde(default = "default_guest_ttl_secs")]
    pub guest_ttl_secs: u64,
    /// Where `bans.json` is kept (bans survive a restart with the embedded broker).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// A file holding the token key (raw bytes, at least 32); else the `chat-key` credential,
    /// else `SPOTTER_CHAT_KEY`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for RawChat {
    fn default() -> Self {
        RawChat {
            enabled: true,
            guests: false,
            max_chars: default_max_chars(),
            user_rate_per_sec: default_user_rate(),
            user_burst: default_user_burst(),
            stream_rate_per_sec: default_stream_rate(),
            stream_burst: default_stream_burst(),
            blocked_words: Vec::new(),
            history: default_history(),
            guest_ttl_secs: default_guest_ttl_secs(),
            state_dir: default_state_dir(),
            key_file: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_chars() -> usize {
    500
}
fn default_user_rate() -> f64 {
    1.0
}
fn default_user_burst() -> u32 {
    3
}
fn default_stream_rate() -> f64 {
    20.0
}
fn default_stream_burst() -> u32 {
    40
}
fn default_history() -> usize {
    50
}
fn default_guest_ttl_secs() -> u64 {
    43_200
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/spotter-bridge")
}

/// Where the key came from (for `validate`; the key itself is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `chat.key_file`.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/chat-key`.
    Credential(PathBuf),
    /// `SPOTTER_CHAT_KEY`.
    Env,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "chat.key_file {}", p.display()),
            KeySource::Credential(p) => write!(f, "credential {}", p.display()),
            KeySource::Env => write!(f, "{KEY_ENV}"),
        }
    }
}

/// Validated `[chat]`.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Chat on at all.
    pub enabled: bool,
    /// Guest tokens on request.
    pub guests: bool,
    /// Per-stream limits.
    pub limits: Limits,
    /// Guest token lifetime.
    pub guest_ttl: Duration,
    /// Where `bans.json` lives.
    pub state_dir: PathBuf,
    /// The token key, when one was found.
    pub key: Option<ChatKey>,
    /// Where it came from.
    pub key_source: Option<KeySource>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            enabled: true,
            guests: false,
            limits: Limits::default(),
            guest_ttl: Duration::from_secs(default_guest_ttl_secs()),
            state_dir: default_state_dir(),
            key: None,
            key_source: None,
        }
    }
}

impl ChatConfig {
    /// The path of the bans file.
    pub fn bans_path(&self) -> PathBuf {
        self.state_dir.join("bans.json")
    }
}

/// A `[chat]` value that is not acceptable: the key (as in the file) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct ChatConfigError {
    /// The key at fault (`chat.max_chars`, or `SPOTTER_CHAT_KEY` for the environment).
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> ChatConfigError {
    ChatConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

fn range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), ChatConfigError> {
    if v >= min && v <= max {
        Ok(())
    } else {
        Err(bad(key, format!("{v} is out of range: use {min}-{max}")))
    }
}

impl RawChat {
    /// Checks every value, resolves paths against `base`, and finds the key (`env` looks up an
    /// environment variable: the process's own outside tests).
    pub fn validate(
        self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<ChatConfig, ChatConfigError> {
        range("chat.max_chars", self.max_chars, 1, 2000)?;
        range("chat.user_burst", self.user_burst, 1, 10_000)?;
        range("chat.stream_burst", self.stream_burst, 1, 100_000)?;
        range("chat.history", self.history, 0, 1000)?;
        range("chat.guest_ttl_secs", self.guest_ttl_secs, 60, 30 * 86_400)?;
        for (key, rate) in [
            ("chat.user_rate_per_sec", self.user_rate_per_sec),
            ("chat.stream_rate_per_sec", self.stream_rate_per_sec),
        ] {
            if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
                return Err(bad(
                    key,
                    format!("{rate} must be above 0 and at most 10000"),
                ));
            }
        }
        let mut blocked = Vec::with_capacity(self.blocked_words.len());
        for (i, w) in self.blocked_words.iter().enumerate() {
            if w.is_empty() || !w.chars().all(char::is_alphanumeric) {
                return Err(bad(
                    &format!("chat.blocked_words[{}]", i + 1),
                    format!("{w:?} must be one word of letters and digits"),
                ));
            }
            blocked.push(w.to_lowercase());
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let (key, key_source) = match find_key(self.key_file.map(resolve), env)? {
            Some((k, s)) => (Some(k), Some(s)),
            None => (None, None),
        };
        Ok(ChatConfig {
            enabled: self.enabled,
            guests: self.guests,
            limits: Limits {
                max_chars: self.max_chars,
                user_rate_per_sec: self.user_rate_per_sec,
                user_burst: self.user_burst,
                stream_rate_per_sec: self.stream_rate_per_sec,
                stream_burst: self.stream_burst,
                blocked_words: blocked,
                history: self.history,
            },
            guest_ttl: Duration::from_secs(self.guest_ttl_secs),
            state_dir: resolve(self.state_dir),
            key,
            key_source,
        })
    }
}

/// The key from `key_file`, else `$CREDENTIALS_DIRECTORY/chat-key`, else `SPOTTER_CHAT_KEY`.
pub fn find_key(
    key_file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<(ChatKey, KeySource)>, ChatConfigError> {
    let from_file = |key: &str, path: PathBuf, source: KeySource| {
        let bytes = std::fs::read(&path).map_err(|e| {
            bad(
                key,
                format!("cannot read the chat key from {}: {e}", path.display()),
            )
        })?;
        let k = ChatKey::new(&bytes).map_err(|e| bad(key, e.to_string()))?;
        Ok(Some((k, source)))
    };
    if let Some(path) = key_file {
        return from_file("chat.key_file", path.clone(), KeySource::File(path));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(KEY_CREDENTIAL);
        if path.exists() {
            return from_file(
                "CREDENTIALS_DIRECTORY/chat-key",
                path.clone(),
                KeySource::Credential(path),
            );
        }
    }
    if let Some(value) = env(KEY_ENV) {
        let bytes = value.into_encoded_bytes();
        let k = ChatKey::new(&bytes).map_err(|e| bad(KEY_ENV, e.to_string()))?;
        return Ok(Some((k, KeySource::Env)));
    }
    Ok(None)
}

/// Looks a variable up in the process environment.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn defaults_are_the_issues() {
        let c = RawChat::default()
            .validate(Path::new("/etc"), &no_env)
            .expect("valid");
        assert!(c.enabled && !c.guests);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.guest_ttl, Duration::from_secs(43_200));
        assert_eq!(
            c.bans_path(),
            Path::new("/var/lib/spotter-bridge/bans.json")
        );
        assert!(c.key.is_none());
    }

    #[test]
    fn key_from_file_then_credential_then_env() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("k"), [1u8; 32]).expect("write");
        std::fs::write(dir.path().join("chat-key"), [2u8; 40]).expect("write");
        std::fs::write(dir.path().join("short"), [2u8; 31]).expect("write");
        let creds = dir.path().as_os_str().to_owned();
        let env = move |n: &str| match n {
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            KEY_ENV => Some(OsString::from("x".repeat(32))),
            _ => None,
        };
        let raw = |file: Option<&str>| RawChat {
            key_file: file.map(PathBuf::from),
            ..RawChat::default()
        };
        let c = raw(Some("k")).validate(dir.path(), &env).expect("valid");
        assert_eq!(c.key_source, Some(KeySource::File(dir.path().join("k"))));
        let c = raw(None).validate(dir.path(), &env).expect("valid");
        assert!(matches!(c.key_source, Some(KeySource::Credential(_))));
        let only_env = |n: &str| (n == KEY_ENV).then(|| OsString::from("x".repeat(32)));
        let c = raw(None).validate(dir.path(), &only_env).expect("valid");
        assert_eq!(c.key_source, Some(KeySource::Env));

        let err = raw(Some("short"))
            .validate(dir.path(), &env)
            .expect_err("short");
        assert_eq!(err.key, "chat.key_file");
        assert!(err.reason.contains("31 bytes"), "{err}");
        let err = raw(Some("missing"))
            .validate(dir.path(), &env)
            .expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
        let short_env = |n: &str| (n == KEY_ENV).then(|| OsString::from("short"));
        let err = raw(None)
            .validate(dir.path(), &short_env)
            .expect_err("short env");
        assert_eq!(err.key, KEY_ENV);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(RawChat, &str); 4] = [
            (
                RawChat {
                    max_chars: 0,
                    ..RawChat::default()
                },
                "chat.max_chars",
            ),
            (
                RawChat {
                    user_rate_per_sec: 0.0,
                    ..RawChat::default()
                },
                "chat.user_rate_per_sec",
            ),
            (
                RawChat {
                    blocked_words: vec!["ok".into(), "two words".into()],
                    ..RawChat::default()
                },
                "chat.blocked_words[2]",
            ),
            (
                RawChat {
                    guest_ttl_secs: 1,
                    ..RawChat::default()
                },
                "chat.guest_ttl_secs",
            ),
        ];
        for (raw, key) in cases {
            let err = raw.validate(Path::new(""), &no_env).expect_err(key);
            assert_eq!(err.key, key);
        }
    }
}
