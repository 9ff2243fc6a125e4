//! Publishing to the MQTT broker with rumqttc: product events through the durable outbox (QoS 1,
//! persistent session), the retained on-screen snapshot, and the retained status with its last
//! will (`offline`).
//!
//! Two tasks run a connection (see [`drive`]). `poll` owns rumqttc's event loop: it reconnects
//! after a jittered, exponentially growing delay (rumqttc alone retries in a tight loop), and
//! forwards connects, packet ids and PUBACKs. `pump` owns the outbox and is the only code that
//! hands publishes to rumqttc, so each PUBACK can be paired with the event it acknowledges
//! ([`PacketIds`]). When a connection fails, rumqttc's own copies of unacknowledged publishes
//! are discarded (with a clean session it would drop them anyway) and the outbox sends every
//! unacknowledged event again, oldest first, on the next connection: duplicates are possible,
//! loss is not; the bridge drops duplicates by event id and sequence.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use spotter_protocol::backoff::Backoff;
use spotter_protocol::ratelimit::TokenBucket;
use spotter_protocol::{AgentState, OnScreen, ProductEvent, Stats, Status, Topic, TopicKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, MqttConfig, OutboxConfig};
use crate::outbox::{Outbox, OutboxCounts, OutboxError, OutboxStats, PacketIds};
use crate::pipeline::now_utc_ms;

/// Events handed to rumqttc and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 32;

/// Topics of one stream.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Product events.
    pub events: String,
    /// Retained on-screen snapshot.
    pub onscreen: String,
    /// Retained status.
    pub status: String,
    /// Periodic health of the studio box.
    pub stats: String,
}

impl Topics {
    /// The topics for the configured studio and stream.
    pub fn new(cfg: &AgentConfig) -> anyhow::Result<Self> {
        Self::for_stream(&cfg.studio, &cfg.stream)
    }

    /// The topics of `studio`/`stream`.
    pub fn for_stream(studio: &str, stream: &str) -> anyhow::Result<Self> {
        let t = |k| Topic::stream(studio, stream, k).map(|t| t.to_string());
        Ok(Topics {
            events: t(TopicKind::Events)?,
            onscreen: t(TopicKind::OnScreen)?,
            status: t(TopicKind::Status)?,
            stats: Topic::stats(studio)?.to_string(),
        })
    }
}

/// Why the publisher refused something.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event could not be stored.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The connection's tasks have ended (shutdown).
    #[error("the MQTT publisher has stopped")]
    Stopped,
}

enum Command {
    Event(ProductEvent, oneshot::Sender<Result<(), OutboxError>>),
    OnScreen(OnScreen),
    Status(AgentState),
    Stats(Vec<u8>),
    Finish,
}

/// The handle the service publishes through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<OutboxStats>,
    first_seq: u64,
    session: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Event(e, _) => write!(f, "Event(seq {})", e.seq),
            Command::OnScreen(s) => write!(f, "OnScreen(seq {})", s.seq),
            Command::Status(s) => write!(f, "Status({s:?})"),
            Command::Stats(_) => write!(f, "Stats"),
            Command::Finish => write!(f, "Finish"),
        }
    }
}

/// A connection not yet driven: pass it to [`drive`].
pub struct Connection {
    client: AsyncClient,
    eventloop: EventLoop,
    outbox: Outbox,
    topics: Topics,
    commands: mpsc::UnboundedReceiver<Command>,
    max_rate: u32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("topics", &self.topics)
            .field("outbox", &self.outbox.dir())
            .finish_non_exhaustive()
    }
}

/// Opens the outbox (blocking file I/O) and creates the client; nothing is sent before [`drive`].
pub fn connect(cfg: &AgentConfig) -> anyhow::Result<(Publisher, Connection)> {
    connect_with(&cfg.mqtt, Topics::new(cfg)?, &cfg.outbox)
}

/// [`connect`] from the parts of the configuration it uses.
pub fn connect_with(
    mqtt: &MqttConfig,
    topics: Topics,
    outbox: &OutboxConfig,
) -> anyhow::Result<(Publisher, Connection)> {
    use anyhow::Context as _;
    let outbox = Outbox::open(&outbox.dir, outbox.max_bytes, MAX_IN_FLIGHT)
        .with_context(|| format!("cannot open the outbox in {}", outbox.dir.display()))?;
    // plain, TLS or mutual TLS, set up once with the bridge's (`spotter-mqtt-link`)
    let mut opts = mqtt.broker.options(&mqtt.client_id);
    opts.set_keep_alive(mqtt.keepalive);
    opts.set_clean_session(false);
    // room for every outstanding event plus the status and snapshot, so rumqttc never holds
    // a publish back for lack of packet ids in normal operation
    opts.set_inflight(MAX_IN_FLIGHT as u16 + 8);
    opts.set_last_will(LastWill::new(
        &topics.status,
        Status::new(AgentState::Offline, None).encode(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, eventloop) = AsyncClient::new(opts, MAX_IN_FLIGHT + 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = Publisher {
        commands: tx,
        stats: outbox.stats(),
        first_seq: outbox.first_seq(),
        session: outbox.session(),
    };
    Ok((
        publisher,
        Connection {
            client,
            eventloop,
            outbox,
            topics,
            commands: rx,
            max_rate: mqtt.max_publishes_per_sec,
        },
    ))
}

impl Publisher {
    /// The sequence number the stream's next event should carry: one past the highest the
    /// outbox has ever stored, so a restarted agent continues the sequence.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The session [`Publisher::first_seq`] belongs to: the outbox's, stored with its sequence.
    /// Every event and snapshot carries it.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The outbox's counters now (depth, dropped, acknowledged).
    pub fn outbox_counts(&self) -> OutboxCounts {
        self.stats.counts()
    }

    /// Stores one product event in the outbox; it is on disk when this returns `Ok`, and is
    /// published (QoS 1) as soon as the broker is reachable.
    pub async fn event(&self, e: &ProductEvent) -> Result<(), PublishError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Event(e.clone(), tx))?;
        Ok(rx.await.map_err(|_| PublishError::Stopped)??)
    }

    /// Replaces the retained on-screen snapshot. It is published once every event it covers
    /// (sequence up to its own) has been acknowledged, so it never runs ahead of the events.
    pub async fn onscreen(&self, s: &OnScreen) -> Result<(), PublishError> {
        self.send(Command::OnScreen(s.clone()))
    }

    /// Replaces the retained status (published again on every reconnect).
    pub async fn status(&self, state: AgentState) -> Result<(), PublishError> {
        self.send(Command::Status(state))
    }

    /// Publishes one stats reading (QoS 1, not stored: a reading that cannot go out now is
    /// replaced by the next one).
    pub fn stats(&self, s: &Stats) -> Result<(), PublishError> {
        self.send(Command::Stats(s.encode()))
    }

    /// Asks the connection to finish: deliver what is stored, then disconnect cleanly (no last
    /// will). [`drive`] returns once done; events not acknowledged by then stay on disk.
    pub async fn disconnect(&self) {
        let _ = self.send(Command::Finish);
    }

    fn send(&self, c: Command) -> Result<(), PublishError> {
        self.commands.send(c).map_err(|_| PublishError::Stopped)
    }
}

/// What `poll` tells `pump`, in rumqttc's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Connected { epoch: u64, session_present: bool },
    Published(u16),
    HeldBack(u16),
    Acked(u16),
    Lost,
    Disconnected,
}

/// Counts connections. `pump` hands rumqttc a publish only while holding this lock and only if
/// the count is the one its `Connected` carried; `poll` bumps it, under the lock, when it
/// discards rumqttc's unacknowledged publishes. So no publish slips into a later connection
/// behind `pump`'s back.
type Gate = Arc<Mutex<u64>>;

/// Drives the connection until the publisher finishes (see [`Publisher::disconnect`]) or
/// `shutdown` is cancelled; publishes `online` on every connect.
pub async fn drive(conn: Connection, shutdown: CancellationToken) {
    let Connection {
        client,
        eventloop,
        outbox,
        topics,
        commands,
        max_rate,
    } = conn;
    let gate: Gate = Arc::new(Mutex::new(0));
    let (links_tx, links_rx) = mpsc::unbounded_channel();
    let pump = Pump {
        client,
        gate: gate.clone(),
        topics,
        outbox: Some(outbox),
        pkids: PacketIds::new(),
        connected: None,
        status: AgentState::Online,
        status_state: Delivery::Due,
        snapshot: None,
        snapshot_state: Delivery::Done,
        stats_due: None,
        bucket: TokenBucket::new(max_rate, max_rate, 0),
        started: tokio::time::Instant::now(),
        retry_at: None,
        finishing: false,
        disconnect_sent: false,
    };
    tokio::join!(
        poll(eventloop, gate, links_tx, shutdown.clone()),
        pump.run(links_rx, commands, shutdown),
    );
}

async fn poll(
    mut eventloop: EventLoop,
    gate: Gate,
    links: mpsc::UnboundedSender<Link>,
    shutdown: CancellationToken,
) {
    // capped at 10 s: a studio wants its events flowing soon after the broker returns
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return,
            () = links.closed() => return,
            p = eventloop.poll() => p,
        };
        let link = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                backoff.reset();
                Link::Connected {
                    epoch: *gate.lock().unwrap_or_else(PoisonError::into_inner),
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = links.send(Link::Disconnected);
                return;
            }
            Ok(event) => match link_for(&event) {
                Some(link) => link,
                None => continue,
            },
            Err(e) => {
                let stale: Vec<Event> = {
                    let mut epoch = gate.lock().unwrap_or_else(PoisonError::into_inner);
                    *epoch += 1;
                    // rumqttc keeps unacknowledged publishes (and whatever is still in its
                    // channel) in `pending` to resend on a resumed session, or drops them on a
                    // new one; the outbox resends events itself, and `pump` asks again for the
                    // status, snapshot or disconnect it still needs
                    eventloop.clean();
                    eventloop.pending.clear();
                    // rumqttc also keeps a publish held back for a busy packet id, which would
                    // block the next connection, and events it has not yet reported
                    eventloop.state.collision = None;
                    eventloop.state.events.drain(..).collect()
                };
                // reported before `Lost`: they belong to the connection that just ended
                for link in stale.iter().filter_map(link_for) {
                    let _ = links.send(link);
                }
                let _ = links.send(Link::Lost);
                let delay = backoff.next_delay(rand_unit());
                let error = spotter_mqtt_link::explain(&e);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if links.send(link).is_err() {
            return;
        }
    }
}

/// What `pump` needs to hear of an event (connects and disconnects aside).
fn link_for(event: &Event) -> Option<Link> {
    match event {
        Event::Incoming(Packet::PubAck(ack)) => Some(Link::Acked(ack.pkid)),
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(Link::Published(*pkid)),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => Some(Link::HeldBack(*pkid)),
        _ => None,
    }
}

/// Where a retained message stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// To publish.
    Due,
    /// Published, PUBACK awaited.
    Sent,
    /// Acknowledged (or nothing to publish).
    Done,
}

/// What a publish handed to rumqttc was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Event(u64),
    Status(AgentState),
    OnScreen(u64),
    Stats,
}

struct Pump {
    client: AsyncClient,
    gate: Gate,
    topics: Topics,
    /// Away only while a blocking call runs.
    outbox: Option<Outbox>,
    pkids: PacketIds<Tag>,
    /// The epoch of the current connection, if connected.
    connected: Option<u64>,
    status: AgentState,
    status_state: Delivery,
    snapshot: Option<OnScreen>,
    snapshot_state: Delivery,
    /// the latest stats reading not yet handed to rumqttc
    stats_due: Option<Vec<u8>>,
    /// the broker's publish rate (IoT Core: 100 a second a connection)
    bucket: TokenBucket,
    started: tokio::time::Instant,
    /// when `send_due` should run again because the bucket was empty
    retry_at: Option<tokio::time::Instant>,
    finishing: bool,
    disconnect_sent: bool,
}

impl Pump {
    fn outbox(&self) -> &Outbox {
        self.outbox
            .as_ref()
            .expect("the outbox is only away during a blocking call")
    }

    fn outbox_mut(&mut self) -> &mut Outbox {
        self.outbox
            .as_mut()
            .expect("the outbox is only away during a blocking call")
    }

    /// Runs `f` on the outbox on a blocking thread (file I/O, fsync).
    async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Outbox) -> R + Send + 'static,
    ) -> R {
        let mut outbox = self
            .outbox
            .take()
            .expect("the outbox is only away during a blocking call");
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&mut outbox);
            (outbox, r)
        })
        .await;
        match joined {
            Ok((outbox, r)) => {
                self.outbox = Some(outbox);
                r
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn run(
        mut self,
        mut links: mpsc::UnboundedReceiver<Link>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut commands_open = true;
        loop {
            self.send_due();
            if self.finishing && !self.disconnect_sent && self.delivered() {
                if let Some(epoch) = self.connected {
                    let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
                    if *gate == epoch && self.client.try_disconnect().is_ok() {
                        self.disconnect_sent = true;
                    }
                }
            }
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until_some(retry_at) => self.retry_at = None,
                link = links.recv() => match link {
                    Some(Link::Disconnected) | None => break,
                    Some(link) => self.on_link(link).await,
                },
                command = commands.recv(), if commands_open => match command {
                    Some(c) => self.on_command(c).await,
                    None => {
                        commands_open = false;
                        self.finishing = true;
                    }
                },
            }
        }
        let left = self.outbox().len();
        if left > 0 {
            tracing::warn!(
                events = left,
                dir = %self.outbox().dir().display(),
                "events not yet acknowledged stay in the outbox for the next start"
            );
        } else {
            tracing::info!("every event was acknowledged by the broker");
        }
    }

    /// Everything stored was acknowledged, and the retained messages too.
    fn delivered(&self) -> bool {
        self.outbox().is_empty()
            && self.status_state == Delivery::Done
            && self.snapshot_state == Delivery::Done
    }

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Event(e, reply) => {
                let payload = e.encode();
                let seq = e.seq;
                let stored = self.blocking(move |o| o.push(seq, payload)).await;
                let _ = reply.send(stored);
            }
            Command::OnScreen(s) => {
                self.snapshot = Some(s);
                self.snapshot_state = Delivery::Due;
            }
            Command::Status(state) => {
                self.status = state;
                self.status_state = Delivery::Due;
            }
            Command::Stats(payload) => self.stats_due = Some(payload),
            Command::Finish => self.finishing = true,
        }
    }

    async fn on_link(&mut self, link: Link) {
        match link {
            Link::Connected {
                epoch,
                session_present,
            } => {
                self.connected = Some(epoch);
                // the broker published our last will if the previous connection died
                self.status_state = Delivery::Due;
                let stored = self.outbox().len();
                if stored > 0 {
                    tracing::info!(
                        events = stored,
                        session_present,
                        "sending stored events, oldest first"
                    );
                }
            }
            Link::Published(pkid) => {
                if let Err(e) = self.pkids.published(pkid) {
                    tracing::error!(error = %e, "cannot pair an MQTT packet id with its event");
                }
            }
            Link::HeldBack(pkid) => {
                if let Err(e) = self.pkids.held_back(pkid) {
                    tracing::error!(error = %e, "cannot pair an MQTT packet id with its event");
                }
            }
            Link::Acked(pkid) => match self.pkids.acked(pkid) {
                Some(Tag::Event(id)) => {
                    self.blocking(move |o| o.ack(id)).await;
                }
                Some(Tag::Status(state)) => {
                    if state == self.status && self.status_state == Delivery::Sent {
                        self.status_state = Delivery::Done;
                    }
                }
                Some(Tag::OnScreen(seq)) => {
                    if self.snapshot.as_ref().is_some_and(|s| s.seq == seq)
                        && self.snapshot_state == Delivery::Sent
                    {
                        self.snapshot_state = Delivery::Done;
                    }
                }
                Some(Tag::Stats) => {}
                None => tracing::debug!(pkid, "PUBACK for a publish no longer tracked"),
            },
            Link::Lost => {
                self.connected = None;
                self.disconnect_sent = false;
                self.outbox_mut().connection_lost();
                self.pkids.reset();
                if self.status_state == Delivery::Sent {
                    self.status_state = Delivery::Due;
                }
                if self.snapshot_state == Delivery::Sent {
                    self.snapshot_state = Delivery::Due;
                }
            }
            Link::Disconnected => {}
        }
    }

    /// Hands rumqttc whatever is due, while connected: the status, stored events in order
    /// within the in-flight window, then the snapshot once the events it covers are through.
    fn send_due(&mut self) {
        let Some(epoch) = self.connected else {
            return;
        };
        let gate = self.gate.clone();
        let current = gate.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != epoch {
            return; // the connection is gone; `Link::Lost` is on its way
        }
        if self.status_state == Delivery::Due {
            let payload = Status::new(self.status, Some(now_utc_ms())).encode();
            if self.hand_over(Tag::Status(self.status), true, payload) {
                self.status_state = Delivery::Sent;
            }
        }
        if let Some(payload) = self.stats_due.take() {
            // ephemeral: if rumqttc cannot take it now, the next reading replaces it
            self.hand_over(Tag::Stats, false, payload);
        }
        while let Some((id, payload)) = self.outbox().next_to_send() {
            let payload = payload.to_vec();
            if !self.hand_over(Tag::Event(id), false, payload) {
                break;
            }
            self.outbox_mut().mark_sent();
        }
        if self.snapshot_state == Delivery::Due {
            if let Some(snapshot) = &self.snapshot {
                let covered = self.outbox().oldest_seq().is_none_or(|s| s > snapshot.seq);
                if covered {
                    let (seq, payload) = (snapshot.seq, snapshot.encode());
                    if self.hand_over(Tag::OnScreen(seq), true, payload) {
                        self.snapshot_state = Delivery::Sent;
                    }
                }
            }
        }
    }

    /// Hands one QoS 1 publish to rumqttc, within the publish rate; the caller holds the gate.
    fn hand_over(&mut self, tag: Tag, retain: bool, payload: Vec<u8>) -> bool {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if !self.bucket.try_take(now_ms) {
            let wait = Duration::from_millis(self.bucket.wait_ms(now_ms).max(1));
            self.retry_at = Some(tokio::time::Instant::now() + wait);
            return false;
        }
        let topic = match tag {
            Tag::Event(_) => &self.topics.events,
            Tag::Status(_) => &self.topics.status,
            Tag::OnScreen(_) => &self.topics.onscreen,
            Tag::Stats => &self.topics.stats,
        };
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.pkids.requested(tag);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "rumqttc's request channel is full; retrying later");
                false
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A number in [0, 1) for jitter, from the clock's sub-second noise.
pub(crate) fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
