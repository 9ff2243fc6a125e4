//! The broker side of chat: messages, deletions and bans that come back from the broker are
//! applied to their stream's room and fanned out (the only path to viewers, so every replica
//! shows the same thing in the broker's order); bans are kept in `bans.json`, republished at
//! start, and cleared from the broker when they run out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use spotter_protocol::chat::{Ban, ChatEvent, StoredBan};
use spotter_protocol::topic::{Topic, TopicKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::chat::{now_ms, store, Publisher};
use crate::hub::{Hub, Hubs};
use crate::metrics::Metrics;

/// How often viewer counts are announced (when changed) and expired bans cleared.
pub const TICK: Duration = Duration::from_secs(2);

/// Applies chat and ban payloads from the broker.
#[derive(Debug, Clone)]
pub struct ChatIngest {
    hubs: Arc<Hubs>,
    bans_changed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl ChatIngest {
    /// `bans_changed` is notified whenever the set of bans changes (to rewrite `bans.json`).
    pub fn new(hubs: Arc<Hubs>, bans_changed: Arc<Notify>, metrics: Arc<Metrics>) -> Self {
        ChatIngest {
            hubs,
            bans_changed,
            metrics,
        }
    }

    /// Handles a payload on a chat or ban topic; returns false for any other topic.
    pub fn handle(&self, topic: &str, payload: &[u8]) -> bool {
        let Ok(parsed) = Topic::parse(topic) else {
            return false;
        };
        if !matches!(parsed.kind, TopicKind::Chat | TopicKind::Ban) {
            return false;
        }
        let stream = parsed.stream.as_deref().unwrap_or_default();
        let Some(hub) = self.hubs.get(&parsed.studio, stream) else {
            debug!(
                topic,
                "chat for a stream this bridge does not serve, ignored"
            );
            return true;
        };
        match (parsed.kind, parsed.user) {
            (TopicKind::Chat, _) => match ChatEvent::decode(payload) {
                Ok(event) => {
                    let metrics = &self.metrics;
                    if hub.receive_chat(event, || Metrics::inc(&metrics.chat_messages)) {
                        debug!(topic, "chat delivered");
                    }
                }
                Err(e) => warn!(topic, error = %e, "chat payload refused"),
            },
            (TopicKind::Ban, Some(user)) if payload.is_empty() => self.lift(hub, topic, &user),
            (TopicKind::Ban, Some(user)) => match Ban::decode(payload) {
                Ok(ban) if ban.user != user => {
                    warn!(topic, user = %ban.user, "ban payload names another user than its topic, ignored");
                }
                Ok(ban) => {
                    let until_ms = ban.until_ms;
                    if hub.receive_ban(ban, now_ms()) {
                        info!(topic, user, until_ms, "user banned");
                        self.bans_changed.notify_one();
                    }
                }
                Err(e) => warn!(topic, error = %e, "ban payload refused"),
            },
            _ => {}
        }
        true
    }
}

impl ChatIngest {
    /// An empty retained payload: the ban is over.
    fn lift(&self, hub: &Hub, topic: &str, user: &str) {
        if hub.clear_ban(user) {
            info!(topic, user, "ban lifted");
            self.bans_changed.notify_one();
        }
    }
}

/// Every stream's bans, as kept on disk.
pub fn all_bans(hubs: &Hubs) -> Vec<StoredBan> {
    let mut out = Vec::new();
    for hub in hubs.all() {
        let room = hub.room();
        let mut bans: Vec<StoredBan> = room
            .bans()
            .map(|b| StoredBan {
                studio: hub.config.studio.clone(),
                stream: hub.config.stream.clone(),
                ban: b.clone(),
            })
            .collect();
        bans.sort_by(|a, b| a.ban.user.cmp(&b.ban.user));
        out.extend(bans);
    }
    out
}

/// Loads `bans.json`, applies the bans still in force to their rooms, and queues them (retained)
/// for the broker; returns how many.
pub fn restore_bans(path: &std::path::Path, hubs: &Hubs, publisher: &Publisher) -> usize {
    let stored = match store::load(path) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "cannot read the saved bans, starting without them");
            return 0;
        }
    };
    let now = now_ms();
    let mut restored = 0;
    for s in stored {
        let Some(hub) = hubs.get(&s.studio, &s.stream) else {
            continue;
        };
        if s.ban.until_ms <= now {
            continue;
        }
        hub.receive_ban(s.ban.clone(), now);
        if let Err(e) = publisher.ban_at_start(&s.studio, &s.stream, &s.ban) {
            warn!(user = %s.ban.user, error = %e, "cannot republish a saved ban");
        }
        restored += 1;
    }
    restored
}

/// Rewrites `bans.json` whenever `changed` is notified, one write at a time, until `shutdown`;
/// a change not yet written then is written before it returns.
pub async fn persist_bans(
    hubs: Arc<Hubs>,
    path: PathBuf,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = changed.notified() => false,
        };
        // `notify_one` leaves a permit when nobody waits: a pending change completes at once.
        if stopping && changed.notified().now_or_never().is_none() {
            break;
        }
        let bans = all_bans(&hubs);
        let target = path.clone();
        match tokio::task::spawn_blocking(move || store::save(&target, bans)).await {
            Ok(Ok(())) => debug!(path = %path.display(), "bans saved"),
            Ok(Err(e)) => warn!(error = %e, "cannot save bans: they will not survive a restart"),
            Err(e) => warn!(error = %e, "the bans-saving task failed"),
        }
        if stopping {
            break;
        }
    }
}

/// Every [`TICK`]: announces changed viewer counts and clears expired bans from the broker.
pub async fn tick(
    hubs: Arc<Hubs>,
    publisher: Publisher,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        let now = now_ms();
        for hub in hubs.all() {
            hub.announce_viewers();
            let expired = hub.room().expire_bans(now);
            for user in &expired {
                let (studio, stream) = (&hub.config.studio, &hub.config.stream);
                if let Err(e) = publisher.clear_ban(studio, stream, user) {
                    debug!(user, error = %e, "cannot clear an expired ban's retained message yet");
                }
                info!(studio, stream, user, "ban expired");
            }
            if !expired.is_empty() {
                changed.notify_one();
            }
        }
    }
}
