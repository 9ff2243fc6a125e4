//! How Spotter's agent and bridge reach an MQTT broker: the broker URL (`broker_url`, pure),
//! the TLS set-up from files or systemd credentials (`tls`), the link both connect with
//! (`endpoint`: rumqttc options with the transport set), and what a failed connection means
//! (`diagnose`). One place, so both sides accept the same URLs and keys and speak TLS alike.

pub mod broker_url;
pub mod diagnose;
pub mod endpoint;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;

pub use broker_url::{BrokerUrl, BrokerUrlError, PLAIN_PORT, TLS_PORT};
pub use diagnose::explain;
pub use endpoint::Endpoint;
pub use tls::{LinkError, Source, Tls, TlsSettings, ALPN_AWS_IOT};
