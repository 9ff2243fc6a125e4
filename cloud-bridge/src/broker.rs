//! The embedded MQTT broker (rumqttd as a library) for the one-box set-up: MQTT 3.1.1 over plain
//! TCP, retained messages on, configured from code.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

/// Largest publish the embedded broker accepts (AWS IoT Core's limit is 128 KB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// How long to wait for the broker to accept connections after starting it.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address is taken or not ours.
    #[error("embedded MQTT broker cannot listen on {addr}: {error} (set mqtt.embedded_listen to a free address, or mqtt.embedded = false to use another broker)")]
    Bind {
        /// `mqtt.embedded_listen`.
        addr: SocketAddr,
        /// The bind error.
        error: std::io::Error,
    },
    /// The broker thread could not be started.
    #[error("cannot start the embedded MQTT broker thread: {0}")]
    Thread(std::io::Error),
    /// It started but never accepted a connection.
    #[error("embedded MQTT broker did not start accepting connections on {addr} within {secs} s: see its log above", secs = READY_TIMEOUT.as_secs())]
    NotReady {
        /// `mqtt.embedded_listen`.
        addr: SocketAddr,
    },
}

fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "spotter-embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            // Per-filter commit log: 8 x 1 MiB is plenty for events of a few hundred bytes.
            max_segment_size: 1024 * 1024,
            max_segment_count: 8,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

/// Starts the broker on its own threads and waits until it accepts connections. It runs until
/// the process exits (rumqttd has no shutdown).
pub async fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd only logs a bind failure from its thread: check first to fail with the address.
    drop(
        std::net::TcpListener::bind(listen).map_err(|error| BrokerError::Bind {
            addr: listen,
            error,
        })?,
    );
    let mut broker = Broker::new(config(listen));
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(%listen, error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;

    match tokio::time::timeout(READY_TIMEOUT, probe(connectable(listen))).await {
        Ok(()) => {
            info!(%listen, "embedded MQTT broker listening (MQTT 3.1.1, retained messages on)");
            Ok(())
        }
        Err(_) => Err(BrokerError::NotReady { addr: listen }),
    }
}

/// Waits for an MQTT session to open (a bare TCP probe would make the broker log an error), then
/// closes it politely.
async fn probe(target: SocketAddr) {
    let id = format!("spotter-bridge-probe-{:08x}", fastrand::u32(..));
    let mut options = MqttOptions::new(id, target.ip().to_string(), target.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 1);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    if client.try_disconnect().is_ok() {
        // Until the broker closes the connection in answer to DISCONNECT (bounded by the caller).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    }
}

/// A wildcard listen address is reached over loopback.
fn connectable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn taken_port_is_refused_with_its_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = start(addr).await.expect_err("port taken");
        assert!(matches!(err, BrokerError::Bind { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn wildcard_is_reached_over_loopback() {
        let a: SocketAddr = "0.0.0.0:1883".parse().expect("addr");
        assert_eq!(
            connectable(a),
            "127.0.0.1:1883".parse::<SocketAddr>().expect("addr")
        );
        let a: SocketAddr = "10.1.2.3:1883".parse().expect("addr");
        assert_eq!(connectable(a), a);
    }
}
