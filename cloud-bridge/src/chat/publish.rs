//! The publishing side of the subscriber's MQTT connection, shared with the WebSocket handlers:
//! never waits, so a viewer is refused at once (code `unavailable`) while the broker is away or
//! the request queue is full, instead of being held up.

use rumqttc::{AsyncClient, QoS};
use spotter_protocol::chat::{Ban, ChatEvent};
use spotter_protocol::topic::{Topic, TopicError, TopicKind};
use tokio::sync::watch;

/// Why a publish was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not connected to the broker now.
    #[error(
        "the chat is unavailable: the bridge is not connected to its broker, try again shortly"
    )]
    Away,
    /// The client's request queue is full (the broker is slow).
    #[error("the chat is busy: try again in a moment")]
    Busy,
    /// A studio, stream or user that cannot be a topic level.
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// A clone of the subscriber's client and its connection state.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: AsyncClient,
    connected: watch::Receiver<bool>,
}

impl Publisher {
    /// Wraps the subscriber's client; `connected` is true while it is subscribed.
    pub fn new(client: AsyncClient, connected: watch::Receiver<bool>) -> Self {
        Publisher { client, connected }
    }

    fn publish(&self, topic: &Topic, retain: bool, payload: Vec<u8>) -> Result<(), PublishError> {
        if !*self.connected.borrow() {
            return Err(PublishError::Away);
        }
        self.client
            .try_publish(topic.to_string(), QoS::AtLeastOnce, retain, payload)
            .map_err(|_| PublishError::Busy)
    }

    /// Publishes a message or deletion on the stream's chat topic.
    pub fn chat(&self, studio: &str, stream: &str, event: &ChatEvent) -> Result<(), PublishError> {
        let topic = Topic::stream(studio, stream, TopicKind::Chat)?;
        self.publish(&topic, false, event.encode())
    }

    /// Publishes a ban, retained.
    pub fn ban(&self, studio: &str, stream: &str, ban: &Ban) -> Result<(), PublishError> {
        let topic = Topic::ban(studio, stream, &ban.user)?;
        self.publish(&topic, true, ban.encode())
    }

    /// Queues a ban (retained) whatever the connection state: at start, before the connection
    /// is up, rumqttc sends it once connected.
    pub fn ban_at_start(&self, studio: &str, stream: &str, ban: &Ban) -> Result<(), PublishError> {
        let topic = Topic::ban(studio, stream, &ban.user)?;
        self.client
            .try_publish(topic.to_string(), QoS::AtLeastOnce, true, ban.encode())
            .map_err(|_| PublishError::Busy)
    }

    /// Clears a ban's retained message (an empty retained payload).
    pub fn clear_ban(&self, studio: &str, stream: &str, user: &str) -> Result<(), PublishError> {
        let topic = Topic::ban(studio, stream, user)?;
        self.publish(&topic, true, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    #[tokio::test]
    async fn away_from_the_broker_is_refused_at_once() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 1);
        let (up, connected) = watch::channel(false);
        let p = Publisher::new(client, connected);
        let ev = ChatEvent::Delete {
            v: 1,
            id: "m".into(),
            by: "mod".into(),
        };
        assert!(matches!(
            p.chat("demo", "main", &ev),
            Err(PublishError::Away)
        ));
        up.send_replace(true);
        assert!(p.chat("demo", "main", &ev).is_ok());
        // Nobody drains the queue (capacity 1): the next is refused, not awaited.
        assert!(matches!(
            p.chat("demo", "main", &ev),
            Err(PublishError::Busy)
        ));
        assert!(matches!(
            p.clear_ban("demo", "main", "a/b"),
            Err(PublishError::Topic(_))
        ));
    }
}
