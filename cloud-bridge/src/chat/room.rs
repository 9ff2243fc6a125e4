//! One stream's chat as a pure state machine, time passed in: what a viewer may post (capability,
//! bans, size, control characters, blocked words, per-user and per-stream rates), what a
//! moderator may do, and what the broker's messages change (history without deleted messages,
//! deduplicated by id). The caller publishes what it returns and fans out what `receive*` returns.

use std::collections::{HashMap, HashSet, VecDeque};

use spotter_protocol::chat::{
    check_name, Ban, ChatEvent, ChatMessage, RefusalCode, SessionUser, MAX_BAN_SECS,
    MAX_NONCE_CHARS, MAX_REASON_CHARS,
};
use spotter_protocol::ratelimit::TokenBucket;
use spotter_protocol::topic::validate_user_id;
use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::PROTOCOL_VERSION;

/// Message ids remembered for deduplication and deletions (far more than the history).
pub const ID_MEMORY: usize = 4096;
/// Per-user buckets kept before full ones (which decide nothing) are forgotten.
const MAX_USER_BUCKETS: usize = 10_000;
/// Names a guest may not take, whatever the blocked words.
pub const RESERVED_NAMES: &[&str] = &[
    "admin",
    "administrator",
    "moderator",
    "mod",
    "system",
    "spotter",
    "staff",
    "host",
];

/// The chat limits of every stream (`[chat]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest message, characters.
    pub max_chars: usize,
    /// Each user's sustained rate, messages a second.
    pub user_rate_per_sec: f64,
    /// Each user's burst.
    pub user_burst: u32,
    /// The whole stream's sustained rate.
    pub stream_rate_per_sec: f64,
    /// The whole stream's burst.
    pub stream_burst: u32,
    /// Refused as whole words, case-insensitively; kept lowercase.
    pub blocked_words: Vec<String>,
    /// Messages kept for late joiners.
    pub history: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chars: 500,
            user_rate_per_sec: 1.0,
            user_burst: 3,
            stream_rate_per_sec: 20.0,
            stream_burst: 40,
            blocked_words: Vec::new(),
            history: 50,
        }
    }
}

/// What a viewer sent that the chat refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Answered with `refused` (a chat rule).
    Refused {
        /// The code.
        code: RefusalCode,
        /// For a person.
        message: String,
    },
    /// Answered with `error` (a request no page should send, like a ban of 0 s).
    Invalid(String),
}

fn refused(code: RefusalCode, message: impl Into<String>) -> Denied {
    Denied::Refused {
        code,
        message: message.into(),
    }
}

/// A stream's chat.
#[derive(Debug)]
pub struct Room {
    limits: Limits,
    stream_bucket: TokenBucket,
    users: HashMap<String, TokenBucket>,
    bans: HashMap<String, Ban>,
    history: VecDeque<ChatMessage>,
    seen: IdMemory,
    deleted: IdMemory,
}

/// A bounded set of ids, oldest forgotten first.
#[derive(Debug, Default)]
struct IdMemory {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl IdMemory {
    /// Adds `id`; false if it was there already.
    fn insert(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > ID_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// Whether `text` holds `word` (lowercase) as a whole word, case-insensitively.
fn has_word(text: &str, words: &[String]) -> Option<String> {
    if words.is_empty() {
        return None;
    }
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .find(|w| words.iter().any(|b| b == w))
}

impl Room {
    /// An empty room with full buckets at `now_ms`.
    pub fn new(mut limits: Limits, now_ms: u64) -> Self {
        for w in &mut limits.blocked_words {
            *w = w.to_lowercase();
        }
        let stream_bucket =
            TokenBucket::with_rate(limits.stream_rate_per_sec, limits.stream_burst, now_ms);
        Room {
            limits,
            stream_bucket,
            users: HashMap::new(),
            bans: HashMap::new(),
            history: VecDeque::new(),
            seen: IdMemory::default(),
            deleted: IdMemory::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// When `user`'s ban ends, if they are banned at `now_ms`.
    pub fn banned_until(&self, user: &str, now_ms: u64) -> Option<u64> {
        self.bans
            .get(user)
            .map(|b| b.until_ms)
            .filter(|until| *until > now_ms)
    }

    /// Checks a `say` and, when allowed, builds the message to publish with the given unique id.
    /// Takes a token from the user's and the stream's buckets only when it accepts.
    pub fn say(
        &mut self,
        user: &SessionUser,
        text: &str,
        id: String,
        now_ms: u64,
    ) -> Result<ChatEvent, Denied> {
        if !user.send {
            return Err(refused(
                RefusalCode::NotAllowed,
                "your token does not allow posting",
            ));
        }
        if let Some(until) = self.banned_until(&user.id, now_ms) {
            return Err(refused(
                RefusalCode::Banned,
                format!("you are banned from this chat until {}", rfc3339(until)),
            ));
        }
        if text.trim().is_empty() {
            return Err(refused(RefusalCode::Empty, "the message is empty"));
        }
        let chars = text.chars().count();
        if chars > self.limits.max_chars {
            return Err(refused(
                RefusalCode::TooLong,
                format!(
                    "the message is {chars} characters: at most {} are allowed",
                    self.limits.max_chars
                ),
            ));
        }
        if let Some(pos) = text.chars().position(char::is_control) {
            return Err(refused(
                RefusalCode::ControlChars,
                format!("character {} is a control character: remove it", pos + 1),
            ));
        }
        if has_word(text, &self.limits.blocked_words).is_some() {
            return Err(refused(
                RefusalCode::BlockedWord,
                "the message contains a word this chat does not allow",
            ));
        }
        let (rate, burst) = (self.limits.user_rate_per_sec, self.limits.user_burst);
        let bucket = self
            .users
            .entry(user.id.clone())
            .or_insert_with(|| TokenBucket::with_rate(rate, burst, now_ms));
        if !bucket.has_token(now_ms) {
            return Err(refused(
                RefusalCode::Rate,
                format!("slow down: at most {} a second", per_second(rate)),
            ));
        }
        if !self.stream_bucket.has_token(now_ms) {
            return Err(refused(
                RefusalCode::StreamRate,
                "the chat is busy: try again in a moment",
            ));
        }
        bucket.try_take(now_ms);
        self.stream_bucket.try_take(now_ms);
        if self.users.len() > MAX_USER_BUCKETS {
            self.users.retain(|_, b| !b.is_full(now_ms));
        }
        Ok(ChatEvent::Message {
            v: PROTOCOL_VERSION,
            message: ChatMessage {
                id,
                user: user.author(),
                text: text.to_owned(),
                at_ms: now_ms,
            },
        })
    }

    /// Checks a moderator's `delete` of a message this room holds.
    pub fn delete(&self, user: &SessionUser, id: &str) -> Result<ChatEvent, Denied> {
        if !user.moderate {
            return Err(refused(
                RefusalCode::NotAllowed,
                "only moderators may delete messages",
            ));
        }
        if !self.history.iter().any(|m| m.id == id) {
            return Err(refused(
                RefusalCode::NoSuchMessage,
                "no such message: it may be deleted already or too old",
            ));
        }
        Ok(ChatEvent::Delete {
            v: PROTOCOL_VERSION,
            id: id.to_owned(),
            by: user.id.clone(),
        })
    }

    /// Checks a moderator's `ban` and builds the retained ban to publish.
    pub fn ban(
        &self,
        user: &SessionUser,
        target: &str,
        secs: u64,
        reason: Option<String>,
        now_ms: u64,
    ) -> Result<Ban, Denied> {
        if !user.moderate {
            return Err(refused(
                RefusalCode::NotAllowed,
                "only moderators may ban users",
            ));
        }
        validate_user_id(target).map_err(|e| Denied::Invalid(format!("ban `user`: {e}")))?;
        if !(1..=MAX_BAN_SECS).contains(&secs) {
            return Err(Denied::Invalid(format!(
                "ban `secs`: {secs} is out of range: use 1-{MAX_BAN_SECS} (30 days)"
            )));
        }
        if let Some(r) = &reason {
            let n = r.chars().count();
            if n > MAX_REASON_CHARS || r.chars().any(char::is_control) {
                return Err(Denied::Invalid(format!(
                    "ban `reason`: at most {MAX_REASON_CHARS} characters without control characters (got {n})"
                )));
            }
        }
        Ok(Ban {
            v: PROTOCOL_VERSION,
            user: target.to_owned(),
            until_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
            reason: reason.filter(|r| !r.trim().is_empty()),
            by: user.id.clone(),
        })
    }

    /// Checks a guest's display name; returns it trimmed.
    pub fn guest_name(&self, name: &str) -> Result<String, Denied> {
        let name = name.trim();
        check_name(name).map_err(|r| refused(RefusalCode::BadName, format!("name {r}")))?;
        let lower = name.to_lowercase();
        let reserved = lower
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| RESERVED_NAMES.contains(&w));
        if reserved || has_word(name, &self.limits.blocked_words).is_some() {
            return Err(refused(
                RefusalCode::BadName,
                "that name is not available: choose another",
            ));
        }
        Ok(name.to_owned())
    }

    /// Applies a payload received from the broker; returns what to send to every viewer, or
    /// `None` for a redelivery or a message already deleted.
    pub fn receive(&mut self, event: ChatEvent) -> Option<ServerMessage> {
        match event {
            ChatEvent::Message { message, .. } => {
                if self.deleted.contains(&message.id) || !self.seen.insert(&message.id) {
                    return None;
                }
                if self.limits.history > 0 {
                    if self.history.len() == self.limits.history {
                        self.history.pop_front();
                    }
                    self.history.push_back(message.clone());
                }
                Some(ServerMessage::Chat { message })
            }
            ChatEvent::Delete { id, .. } => {
                if !self.deleted.insert(&id) {
                    return None;
                }
                self.history.retain(|m| m.id != id);
                Some(ServerMessage::ChatDeleted { id })
            }
        }
    }

    /// Applies a ban received from the broker; returns `banned` for every viewer when it is in
    /// force and news (not the same ban again).
    pub fn receive_ban(&mut self, ban: Ban, now_ms: u64) -> Option<ServerMessage> {
        if ban.until_ms <= now_ms {
            self.bans.remove(&ban.user);
            return None;
        }
        if self.bans.get(&ban.user) == Some(&ban) {
            return None;
        }
        let msg = ServerMessage::Banned {
            user: ban.user.clone(),
            until_ms: ban.until_ms,
        };
        self.bans.insert(ban.user.clone(), ban);
        Some(msg)
    }

    /// Lifts a ban (an empty retained payload); true if there was one.
    pub fn clear_ban(&mut self, user: &str) -> bool {
        self.bans.remove(user).is_some()
    }

    /// Removes the bans over at `now_ms` and returns them (to clear their retained topics).
    pub fn expire_bans(&mut self, now_ms: u64) -> Vec<String> {
        let over: Vec<String> = self
            .bans
            .values()
            .filter(|b| b.until_ms <= now_ms)
            .map(|b| b.user.clone())
            .collect();
        for u in &over {
            self.bans.remove(u);
        }
        over
    }

    /// The bans held (in force or not yet expired by [`Room::expire_bans`]).
    pub fn bans(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// The last messages, oldest first, without deleted ones.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.history.iter().cloned().collect()
    }
}

/// Checks a client's nonce (1-64 characters).
pub fn check_nonce(nonce: Option<&str>) -> Result<(), Denied> {
    match nonce {
        Some(n) if n.is_empty() || n.chars().count() > MAX_NONCE_CHARS => Err(Denied::Invalid(
            format!("`nonce` must be 1-{MAX_NONCE_CHARS} characters"),
        )),
        _ => Ok(()),
    }
}

fn per_second(rate: f64) -> String {
    if (rate - 1.0).abs() < f64::EPSILON {
        "1 message".into()
    } else {
        format!("{rate} messages")
    }
}

/// Counts a connection's refusals: more than [`FloodGuard::MAX_REFUSALS`] within
/// [`FloodGuard::WINDOW_MS`] is flooding.
#[derive(Debug, Default)]
pub struct FloodGuard {
    times: VecDeque<u64>,
}

impl FloodGuard {
    /// Refusals allowed within the window.
    pub const MAX_REFUSALS: usize = 20;
    /// The window, ms.
    pub const WINDOW_MS: u64 = 10_000;

    /// Records a refusal at `now_ms`; true when the connection is flooding.
    pub fn refused(&mut self, now_ms: u64) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= Self::WINDOW_MS)
        {
            self.times.pop_front();
        }
        self.times.push_back(now_ms);
        self.times.len() > Self::MAX_REFUSALS
    }
}

/// Formats UTC ms as RFC 3339 (`2026-12-07T21:50:09Z`), for ban messages and close reasons.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_072_000_000;

    fn viewer(id: &str) -> SessionUser {
        SessionUser {
            id: id.into(),
            name: id.to_uppercase(),
            send: true,
            moderate: false,
            guest: false,
        }
    }

    fn moderator() -> SessionUser {
        SessionUser {
            moderate: true,
            ..viewer("mod1")
        }
    }

    fn code(r: Result<ChatEvent, Denied>) -> RefusalCode {
        match r {
            Err(Denied::Refused { code, .. }) => code,
            other => panic!("{other:?}"),
        }
    }

    fn room(limits: Limits) -> Room {
        Room::new(limits, T0)
    }

    fn said(room: &mut Room, user: &SessionUser, text: &str, id: &str, at: u64) -> ChatMessage {
        let ev = room.say(user, text, id.into(), at).expect("accepted");
        match room.receive(ev) {
            Some(ServerMessage::Chat { message }) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepted_text_is_kept_verbatim() {
        let mut r = room(Limits::default());
        let m = said(&mut r, &viewer("u1"), "<script>alert(1)</script>", "m1", T0);
        assert_eq!(m.text, "<script>alert(1)</script>");
        assert_eq!(m.user.name, "U1");
        assert_eq!(m.at_ms, T0);
    }

    #[test]
    fn size_emptiness_control_chars_and_capability() {
        let mut r = room(Limits::default());
        let u = viewer("u1");
        assert_eq!(
            code(r.say(&u, &"x".repeat(501), "a".into(), T0)),
            RefusalCode::TooLong
        );
        assert!(
            r.say(&u, &"é".repeat(500), "b".into(), T0).is_ok(),
            "chars, not bytes"
        );
        assert_eq!(
            code(r.say(&u, "  \u{3000} ", "c".into(), T0)),
            RefusalCode::Empty
        );
        for bad in [
            "a\u{0}b",
            "line\nbreak",
            "bell\u{7}",
            "esc\u{1b}[2J",
            "del\u{7f}",
        ] {
            assert_eq!(
                code(r.say(&u, bad, "d".into(), T0)),
                RefusalCode::ControlChars,
                "{bad:?}"
            );
        }
        let reader = SessionUser {
            send: false,
            ..viewer("r")
        };
        assert_eq!(
            code(r.say(&reader, "hi", "e".into(), T0)),
            RefusalCode::NotAllowed
        );
    }

    #[test]
    fn blocked_words_are_whole_words_case_insensitive() {
        let mut r = room(Limits {
            blocked_words: vec!["Spam".into()],
            user_burst: 100,
            ..Limits::default()
        });
        let u = viewer("u1");
        for bad in ["spam", "SPAM!", "buy: Spam, now", "(spam)"] {
            assert_eq!(
                code(r.say(&u, bad, "x".into(), T0)),
                RefusalCode::BlockedWord,
                "{bad}"
            );
        }
        for ok in ["spammy", "antispam", "s p a m"] {
            assert!(r.say(&u, ok, "y".into(), T0).is_ok(), "{ok}");
        }
    }

    #[test]
    fn user_rate_bursts_then_paces_and_refusals_cost_nothing() {
        let mut r = room(Limits::default());
        let u = viewer("u1");
        for i in 0..3 {
            assert!(r.say(&u, "hi", format!("m{i}"), T0).is_ok());
        }
        assert_eq!(code(r.say(&u, "hi", "m3".into(), T0)), RefusalCode::Rate);
        assert_eq!(
            code(r.say(&u, "hi", "m4".into(), T0 + 999)),
            RefusalCode::Rate
        );
        assert!(r.say(&u, "hi", "m5".into(), T0 + 1000).is_ok());
        // Another user has their own bucket.
        assert!(r.say(&viewer("u2"), "hi", "n".into(), T0 + 1000).is_ok());
        // A refused message (too long) takes no token.
        let v = viewer("u3");
        for _ in 0..10 {
            r.say(&v, &"x".repeat(600), "z".into(), T0)
                .expect_err("too long");
        }
        assert!(r.say(&v, "hi", "ok".into(), T0).is_ok());
    }

    #[test]
    fn stream_rate_caps_everybody_together() {
        let mut r = room(Limits {
            stream_rate_per_sec: 2.0,
            stream_burst: 4,
            ..Limits::default()
        });
        let ok = (0..10)
            .filter(|i| {
                r.say(&viewer(&format!("u{i}")), "hi", "m".into(), T0)
                    .is_ok()
            })
            .count();
        assert_eq!(ok, 4);
        assert_eq!(
            code(r.say(&viewer("late"), "hi", "m".into(), T0)),
            RefusalCode::StreamRate
        );
        // The late user's own bucket was not charged for the stream's refusal.
        let late = viewer("late");
        let taken = (0..3)
            .filter(|_| r.say(&late, "hi", "m".into(), T0 + 10_000).is_ok())
            .count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn bans_refuse_until_they_expire() {
        let mut r = room(Limits::default());
        let m = moderator();
        assert_eq!(
            r.ban(&viewer("u2"), "u1", 60, None, T0).map(|_| ()),
            Err(refused(
                RefusalCode::NotAllowed,
                "only moderators may ban users"
            ))
        );
        assert!(matches!(
            r.ban(&m, "u1", 0, None, T0),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            r.ban(&m, "u1", MAX_BAN_SECS + 1, None, T0),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            r.ban(&m, "a/b", 60, None, T0),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            r.ban(&m, "u1", 60, Some("x".repeat(201)), T0),
            Err(Denied::Invalid(_))
        ));
        let ban = r.ban(&m, "u1", 60, Some("spam".into()), T0).expect("ban");
        assert_eq!((ban.until_ms, ban.by.as_str()), (T0 + 60_000, "mod1"));
        // Nothing changes until the ban comes back from the broker.
        assert!(r.say(&viewer("u1"), "hi", "a".into(), T0).is_ok());
        assert_eq!(
            r.receive_ban(ban.clone(), T0),
            Some(ServerMessage::Banned {
                user: "u1".into(),
                until_ms: T0 + 60_000
            })
        );
        assert_eq!(r.receive_ban(ban.clone(), T0), None, "the same ban again");
        assert_eq!(
            code(r.say(&viewer("u1"), "hi", "b".into(), T0 + 1000)),
            RefusalCode::Banned
        );
        assert_eq!(r.banned_until("u1", T0 + 59_999), Some(T0 + 60_000));
        assert_eq!(r.banned_until("u1", T0 + 60_000), None);
        assert!(r.say(&viewer("u1"), "hi", "c".into(), T0 + 60_000).is_ok());
        assert_eq!(r.expire_bans(T0 + 59_000), Vec::<String>::new());
        assert_eq!(r.expire_bans(T0 + 60_000), vec!["u1".to_owned()]);
        assert_eq!(r.bans().count(), 0);
        // An expired ban from the broker is not applied; a cleared one is lifted.
        assert_eq!(r.receive_ban(ban.clone(), T0 + 70_000), None);
        r.receive_ban(ban, T0);
        assert!(r.clear_ban("u1"));
        assert_eq!(r.banned_until("u1", T0), None);
    }

    #[test]
    fn deletions_leave_the_history_and_redeliveries_are_dropped() {
        let mut r = room(Limits {
            history: 3,
            user_burst: 100,
            ..Limits::default()
        });
        let u = viewer("u1");
        for i in 0..5 {
            said(&mut r, &u, &format!("t{i}"), &format!("m{i}"), T0);
        }
        let ids = |r: &Room| r.history().iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&r), ["m2", "m3", "m4"]);
        // A redelivery of m4 is not shown twice.
        let again = r.say(&u, "t4", "m4".into(), T0).expect("accepted");
        assert_eq!(r.receive(again), None);

        assert!(matches!(
            r.delete(&u, "m3"),
            Err(Denied::Refused {
                code: RefusalCode::NotAllowed,
                ..
            })
        ));
        assert!(matches!(
            r.delete(&moderator(), "m0"),
            Err(Denied::Refused {
                code: RefusalCode::NoSuchMessage,
                ..
            })
        ));
        let del = r.delete(&moderator(), "m3").expect("delete");
        assert_eq!(
            r.receive(del.clone()),
            Some(ServerMessage::ChatDeleted { id: "m3".into() })
        );
        assert_eq!(r.receive(del), None, "the same deletion again");
        assert_eq!(ids(&r), ["m2", "m4"]);
        // A deleted message that arrives (again, or late) is never shown.
        let late = r.say(&u, "t3", "m3".into(), T0).expect("accepted");
        assert_eq!(r.receive(late), None);
        assert_eq!(ids(&r), ["m2", "m4"]);
    }

    #[test]
    fn guest_names() {
        let r = room(Limits {
            blocked_words: vec!["spam".into()],
            ..Limits::default()
        });
        assert_eq!(r.guest_name("  Alice  "), Ok("Alice".into()));
        for bad in [
            "",
            "   ",
            &"x".repeat(33),
            "Admin",
            "the moderator",
            "SPAM king",
            "a\u{7}",
        ] {
            assert!(
                matches!(
                    r.guest_name(bad),
                    Err(Denied::Refused {
                        code: RefusalCode::BadName,
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn flooding_is_more_than_20_refusals_in_10_s() {
        let mut f = FloodGuard::default();
        for i in 0..20 {
            assert!(!f.refused(T0 + i), "{i}");
        }
        assert!(f.refused(T0 + 20));
        let mut slow = FloodGuard::default();
        // One refusal every 500 ms: 20 in any 10 s, never more.
        assert!((0..100).all(|i| !slow.refused(T0 + i * 500)));
    }

    #[test]
    fn nonces() {
        assert!(check_nonce(None).is_ok());
        assert!(check_nonce(Some("c1")).is_ok());
        assert!(check_nonce(Some("")).is_err());
        assert!(check_nonce(Some(&"n".repeat(65))).is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_072_000_999), "2025-11-25T12:00:00Z");
    }
}
