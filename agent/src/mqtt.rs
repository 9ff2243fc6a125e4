//! Publishing to the MQTT broker with rumqttc: events (QoS 1), the retained on-screen snapshot,
//! and the retained status with its last will (`offline`).
//!
//! rumqttc reconnects in a tight loop by itself; the event loop here sleeps a jittered,
//! exponentially growing delay after each connection error instead.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use spotter_protocol::{AgentState, OnScreen, ProductEvent, Status, Topic, TopicKind};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::pipeline::now_utc_ms;

/// Topics of one stream.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Product events.
    pub events: String,
    /// Retained on-screen snapshot.
    pub onscreen: String,
    /// Retained status.
    pub status: String,
}

impl Topics {
    /// The topics for the configured studio and stream.
    pub fn new(cfg: &AgentConfig) -> anyhow::Result<Self> {
        let t = |k| Topic::stream(&cfg.studio, &cfg.stream, k).map(|t| t.to_string());
        Ok(Topics {
            events: t(TopicKind::Events)?,
            onscreen: t(TopicKind::OnScreen)?,
            status: t(TopicKind::Status)?,
        })
    }
}

/// A connected publisher.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: AsyncClient,
    topics: Topics,
}

/// Creates the client and its event loop (not yet polled).
pub fn connect(cfg: &AgentConfig) -> anyhow::Result<(Publisher, EventLoop)> {
    let topics = Topics::new(cfg)?;
    let mut opts = MqttOptions::new(&cfg.mqtt.client_id, &cfg.mqtt.host, cfg.mqtt.port);
    opts.set_keep_alive(cfg.mqtt.keepalive);
    opts.set_clean_session(false);
    opts.set_last_will(LastWill::new(
        &topics.status,
        Status::new(AgentState::Offline, None).encode(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    Ok((Publisher { client, topics }, eventloop))
}

impl Publisher {
    /// Publishes one product event (QoS 1).
    pub async fn event(&self, e: &ProductEvent) -> anyhow::Result<()> {
        self.client
            .publish(&self.topics.events, QoS::AtLeastOnce, false, e.encode())
            .await?;
        Ok(())
    }

    /// Replaces the retained on-screen snapshot.
    pub async fn onscreen(&self, s: &OnScreen) -> anyhow::Result<()> {
        self.client
            .publish(&self.topics.onscreen, QoS::AtLeastOnce, true, s.encode())
            .await?;
        Ok(())
    }

    /// Replaces the retained status.
    pub async fn status(&self, state: AgentState) -> anyhow::Result<()> {
        self.client
            .publish(
                &self.topics.status,
                QoS::AtLeastOnce,
                true,
                Status::new(state, Some(now_utc_ms())).encode(),
            )
            .await?;
        Ok(())
    }

    /// Asks the broker to close the session cleanly (no last will).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// Drives the connection until cancelled or disconnected; publishes `online` on every connect.
pub async fn drive(mut eventloop: EventLoop, publisher: Publisher, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => None,
            p = eventloop.poll() => Some(p),
        };
        match polled {
            None => {
                // let the final publishes and the DISCONNECT go out, bounded
                let drain = async {
                    while let Ok(ev) = eventloop.poll().await {
                        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
                return;
            }
            Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                backoff.reset();
                let p = publisher.clone();
                tokio::spawn(async move {
                    if let Err(e) = p.status(AgentState::Online).await {
                        tracing::warn!(error = %e, "cannot queue the online status");
                    }
                });
            }
            Some(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let delay = backoff.next_delay(rand_unit());
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A number in [0, 1) for jitter, from the clock's sub-second noise.
fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
