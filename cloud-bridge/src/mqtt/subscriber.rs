//! The MQTT subscriber: a rumqttc event loop that subscribes on every connection and, when the
//! broker goes away, waits a jittered exponential backoff before trying again (rumqttc alone would
//! retry in a tight loop). Its client is shared (cloned) with the WebSocket handlers to publish
//! chat, so one connection carries both directions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use spotter_protocol::topic::{Topic, TopicKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::chat::ChatIngest;
use super::ingest::Ingest;
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use spotter_protocol::backoff::Backoff;

/// First reconnect delay (before jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest packet accepted from the broker: well over any valid payload, so that oversize garbage
/// is counted as malformed instead of failing the connection.
pub const MAX_INCOMING_PACKET: usize = 256 * 1024;

/// Requests (publishes, subscriptions) queued for the connection: chat publishes are refused,
/// not awaited, once it is full.
pub const REQUEST_QUEUE: usize = 1024;

/// The subscribed kinds: every stream's events, on-screen snapshots, chat and bans.
const KINDS: [TopicKind; 4] = [
    TopicKind::Events,
    TopicKind::OnScreen,
    TopicKind::Chat,
    TopicKind::Ban,
];

/// The subscriptions.
pub fn filters() -> Vec<SubscribeFilter> {
    KINDS
        .into_iter()
        .map(|k| SubscribeFilter::new(Topic::filter_all(k), QoS::AtLeastOnce))
        .collect()
}

/// The client (cheap to clone, for publishing) and its event loop, which [`run`] drives.
pub fn connect(config: &MqttConfig) -> (AsyncClient, EventLoop) {
    // plain, TLS or mutual TLS, set up once with the agent's (`spotter-mqtt-link`)
    let mut options = config.broker.options(config.client_id.clone());
    options
        .set_keep_alive(config.keepalive)
        // Stateless: what was missed while away is recovered from the retained on-screen topic.
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, 16 * 1024);
    AsyncClient::new(options, REQUEST_QUEUE)
}

/// Runs until `shutdown`; `subscribed` is true while the subscription is in place.
pub async fn run(
    config: MqttConfig,
    (client, mut eventloop): (AsyncClient, EventLoop),
    ingest: Ingest,
    chat: ChatIngest,
    metrics: Arc<Metrics>,
    subscribed: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let broker = config.broker.url().to_string();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let set_connected = |up: bool| {
        metrics
            .mqtt_connected
            .store(i64::from(up), Ordering::Relaxed);
        subscribed.send_replace(up);
    };
    info!(link = %config.broker, client_id = %config.client_id, "connecting to broker");

    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if !chat.handle(&p.topic, &p.payload) {
                    ingest.handle(&p.topic, &p.payload);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(%broker, session_present = ack.session_present, "connected to broker, subscribing");
                ingest.connected(ack.session_present);
                if let Err(e) = client.try_subscribe_many(filters()) {
                    error!(%broker, error = %e, "could not queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    error!(%broker, "broker refused the subscription: check its ACL allows subscribing to spotter/v1/+/+/events, spotter/v1/+/+/onscreen, spotter/v1/+/+/chat and spotter/v1/+/+/ban/+, and publishing to the last two");
                } else {
                    backoff.reset();
                    set_connected(true);
                    info!(
                        %broker,
                        events = %Topic::filter_all(TopicKind::Events),
                        onscreen = %Topic::filter_all(TopicKind::OnScreen),
                        chat = %Topic::filter_all(TopicKind::Chat),
                        bans = %Topic::filter_all(TopicKind::Ban),
                        "subscribed"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                set_connected(false);
                Metrics::inc(&metrics.mqtt_connection_errors);
                let delay = backoff.next_delay(fastrand::f64());
                warn!(
                    %broker,
                    error = %spotter_mqtt_link::explain(&e),
                    attempt = backoff.attempts(),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "broker connection failed, retrying after backoff"
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    set_connected(false);
    // Say goodbye so the broker drops the session now; bounded, the broker may be gone.
    if client.try_disconnect().is_ok() {
        // Until the broker closes the connection in answer to DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    }
    info!(%broker, "disconnected from broker");
}
