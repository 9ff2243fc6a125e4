//! The embedded MQTT broker (rumqttd as a library) for the one-box set-up: MQTT 3.1.1 over plain
//! TCP, retained messages on, configured from code.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::time::Instant;
use tracing::{debug, error, info};

/// Largest publish the embedded broker accepts (AWS IoT Core's limit is 128 KB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// How long to wait for the broker to accept connections after starting it.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the probe still looks for another broker on the address once rumqttd's listener has
/// ended: one that is there answers within milliseconds, and its answer picks the error.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How often the start-up check looks at what the probe, the witness and rumqttd's thread saw.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// The start-up check's topics: outside `spotter/v1/`, so no Spotter subscription matches them.
const PROBE_TOPIC_PREFIX: &str = "spotter/embedded-broker-probe";

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
    /// The in-process session that recognises the broker's own probe could not be opened (its
    /// router thread is gone); rumqttd's error as text, since it carries router internals.
    #[error("cannot open an in-process session on the embedded MQTT broker: {0}")]
    Link(String),
    /// It started but never accepted a connection.
    #[error("embedded MQTT broker did not start accepting connections on {addr} within {secs} s: see its log above", secs = READY_TIMEOUT.as_secs())]
    NotReady {
        /// `mqtt.embedded_listen`.
        addr: SocketAddr,
    },
    /// Its listener ended (usually it could not bind) and nothing else answers there either.
    #[error("embedded MQTT broker stopped before it listened on {addr}: see its log above (set mqtt.embedded_listen to a free address, or mqtt.embedded = false to use another broker)")]
    Stopped {
        /// `mqtt.embedded_listen`.
        addr: SocketAddr,
    },
    /// An MQTT broker answers on the address, but the probe's message never reached this
    /// process's broker: someone else's broker took the address (after the pre-check, or
    /// sharing it), and the bridge would otherwise run against it.
    #[error("another MQTT broker answers on {addr}: set mqtt.embedded_listen to a free address, or mqtt.embedded = false to use that broker")]
    NotOurs {
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

/// Starts the broker on its own threads and waits until it is proven to answer on `listen`: a
/// probe client connects over TCP and publishes a random nonce, and only when an in-process
/// session on this broker's router receives it is the broker that answers ours. It runs until the
/// process exits (rumqttd has no shutdown).
pub async fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    start_after_check(listen, || {}).await
}

/// [`start`], running `between` after the pre-check and before rumqttd binds: the tests take the
/// address there, as another process could.
async fn start_after_check(listen: SocketAddr, between: impl FnOnce()) -> Result<(), BrokerError> {
    // rumqttd only logs a bind failure from its thread: check first to fail with the bind error
    // in the common case (the address is already taken).
    drop(
        std::net::TcpListener::bind(listen).map_err(|error| BrokerError::Bind {
            addr: listen,
            error,
        })?,
    );
    between();
    let mut broker = Broker::new(config(listen));
    // Not a secret: it only has to differ from anything another broker could deliver.
    let nonce = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let topic = format!("{PROBE_TOPIC_PREFIX}/{nonce}");
    // Opened and subscribed before any listener exists, through the router's one event queue: the
    // subscription is in place before the probe's publish can arrive. Opening waits for the
    // router's acknowledgement, which a router that has just started gives at once.
    let (mut witness_tx, witness_rx) = broker
        .link(&format!("spotter-bridge-witness-{nonce}"))
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    witness_tx
        .subscribe(topic.clone())
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || match broker.start() {
            // rumqttd returns once all its listeners have ended; each logged why.
            Ok(()) => error!(%listen, "embedded MQTT broker stopped"),
            Err(e) => error!(%listen, error = %e, "embedded MQTT broker stopped"),
        })
        .map_err(BrokerError::Thread)?;

    let seen = Arc::new(Seen::default());
    let witness = tokio::spawn(witness(
        witness_rx,
        topic.clone(),
        nonce.clone(),
        Arc::clone(&seen),
    ));
    let verdict = check(listen, &topic, &nonce, &thread, &seen).await;
    witness.abort();
    leave(&mut witness_tx).await;
    match verdict {
        Verdict::Ours => {
            info!(%listen, "embedded MQTT broker listening (MQTT 3.1.1, retained messages on)");
            Ok(())
        }
        Verdict::NotOurs => Err(BrokerError::NotOurs { addr: listen }),
        Verdict::Stopped => Err(BrokerError::Stopped { addr: listen }),
        Verdict::NotReady => Err(BrokerError::NotReady { addr: listen }),
    }
}

/// What the probe and the witness have seen, written from their tasks.
#[derive(Debug, Default)]
struct Seen {
    /// A broker answered the probe's CONNECT on the address.
    answered: AtomicBool,
    /// This process's router delivered the probe's nonce to the witness.
    nonce_came_back: AtomicBool,
}

/// What the start-up check knows at one moment: the evidence [`verdict`] judges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Evidence {
    /// A broker answered the probe's CONNECT on the address.
    answered: bool,
    /// The probe's nonce reached this process's router: the broker that answered is ours.
    nonce_came_back: bool,
    /// When the check saw rumqttd's thread ended: all its listeners are gone (it logged why,
    /// usually a failed bind), so whatever answers on the address is not ours.
    exited_at: Option<Instant>,
}

/// What [`verdict`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This process's broker answers on the address.
    Ours,
    /// Another broker answers on the address.
    NotOurs,
    /// Ours has stopped and nothing answers in its place.
    Stopped,
    /// Ours runs but nothing answered within [`READY_TIMEOUT`].
    NotReady,
}

/// The one place that decides whether the broker answering on the address is ours, from what
/// was seen by `now` of a check that began at `started`; `None` while it cannot tell yet.
fn verdict(evidence: &Evidence, started: Instant, now: Instant) -> Option<Verdict> {
    if evidence.nonce_came_back {
        return Some(Verdict::Ours);
    }
    if let Some(exited_at) = evidence.exited_at {
        return if evidence.answered {
            Some(Verdict::NotOurs)
        } else if now >= exited_at + EXIT_GRACE || now >= started + READY_TIMEOUT {
            Some(Verdict::Stopped)
        } else {
            None
        };
    }
    if now < started + READY_TIMEOUT {
        None
    } else if evidence.answered {
        // A broker answered, yet our router never saw the nonce that was published to it.
        Some(Verdict::NotOurs)
    } else {
        Some(Verdict::NotReady)
    }
}

/// Runs the probe against `listen` and gathers what it, the witness and rumqttd's thread see
/// until [`verdict`] decides; then closes the probe's session politely.
async fn check(
    listen: SocketAddr,
    topic: &str,
    nonce: &str,
    thread: &std::thread::JoinHandle<()>,
    seen: &Arc<Seen>,
) -> Verdict {
    let id = format!("spotter-bridge-probe-{:08x}", fastrand::u32(..));
    let target = connectable(listen);
    let mut options = MqttOptions::new(id, target.ip().to_string(), target.port());
    options.set_keep_alive(Duration::from_secs(5));
    // Room for the nonce's publish and the DISCONNECT.
    let (client, eventloop) = AsyncClient::new(options, 4);
    // Its own task, so that no timer here ever cancels the event loop halfway through a CONNECT.
    let mut probe = tokio::spawn(probe(
        client.clone(),
        eventloop,
        topic.to_owned(),
        nonce.to_owned(),
        Arc::clone(seen),
    ));

    let started = Instant::now();
    let mut evidence = Evidence::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let verdict = loop {
        tick.tick().await;
        let now = Instant::now();
        evidence.answered = seen.answered.load(Ordering::Acquire);
        evidence.nonce_came_back = seen.nonce_came_back.load(Ordering::Acquire);
        if evidence.exited_at.is_none() && thread.is_finished() {
            evidence.exited_at = Some(now);
        }
        if let Some(decided) = verdict(&evidence, started, now) {
            break decided;
        }
    };

    if evidence.answered && client.try_disconnect().is_ok() {
        // Until the broker closes the connection in answer to DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut probe).await;
    }
    probe.abort();
    verdict
}

/// Connects until a broker answers (a bare TCP probe would make the broker log an error), then
/// publishes `nonce` on `topic` (again after any reconnect). Ends when the broker closes the
/// connection after the DISCONNECT that the caller asks for.
async fn probe(
    client: AsyncClient,
    mut eventloop: EventLoop,
    topic: String,
    nonce: String,
    seen: Arc<Seen>,
) {
    let mut leaving = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                seen.answered.store(true, Ordering::Release);
                if let Err(e) =
                    client.try_publish(topic.as_str(), QoS::AtMostOnce, false, nonce.as_bytes())
                {
                    debug!(error = %e, "embedded MQTT broker probe cannot publish");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => leaving = true,
            Ok(_) => {}
            Err(_) if leaving => return,
            Err(_) => tokio::time::sleep(CHECK_EVERY).await,
        }
    }
}

/// Reads the in-process session's notifications until the probe's nonce arrives on `topic`,
/// then records it. Ends early only if the router is gone.
async fn witness(mut rx: LinkRx, topic: String, nonce: String, seen: Arc<Seen>) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(forward)))
                if forward.publish.topic == topic.as_bytes()
                    && forward.publish.payload == nonce.as_bytes() =>
            {
                seen.nonce_came_back.store(true, Ordering::Release);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "embedded MQTT broker witness ended");
                return;
            }
        }
    }
}

/// Takes the in-process session off the router (as a client's DISCONNECT does), so that it holds
/// no connection slot or subscription for the life of the process.
async fn leave(tx: &mut LinkTx) {
    let disconnect = rumqttd::protocol::Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    if let Err(e) = tx.send(disconnect).await {
        debug!(error = %e, "embedded MQTT broker witness cannot leave");
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
    use spotter_mqtt_link::testing::{free_port, wait_for_port, MOSQUITTO};
    use std::process::{Child, Command, Stdio};

    /// A plain Mosquitto on 127.0.0.1:`port`, anonymous clients allowed; stopped when dropped.
    struct Mosquitto {
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Mosquitto {
        fn start(port: u16) -> Mosquitto {
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"),
            )
            .expect("write mosquitto.conf");
            let child = Command::new(MOSQUITTO)
                .args(["-c", &conf.display().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {MOSQUITTO} (apt-get install mosquitto): {e}")
                });
            wait_for_port(port, "mosquitto", Duration::from_secs(10));
            Mosquitto { child, _dir: dir }
        }
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

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

    #[tokio::test]
    async fn started_broker_carries_a_publish_from_one_client_to_another() {
        let addr = loopback(free_port());
        start(addr).await.expect("the embedded broker starts");

        let client = |id: &str| {
            let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
            options.set_keep_alive(Duration::from_secs(5));
            AsyncClient::new(options, 10)
        };
        let topic = "spotter/v1/studio-1/main/events";
        let (subscriber, mut sub_loop) = client("subscriber");
        subscriber
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        let received = tokio::time::timeout(Duration::from_secs(5), async {
            let mut publisher = None;
            loop {
                match sub_loop.poll().await.expect("subscriber connected") {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let (client, mut eventloop) = client("publisher");
                        client
                            .publish(topic, QoS::AtLeastOnce, false, "hello")
                            .await
                            .expect("queue publish");
                        publisher = Some(tokio::spawn(async move {
                            while eventloop.poll().await.is_ok() {}
                        }));
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        if let Some(publisher) = publisher {
                            publisher.abort();
                        }
                        return p;
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("the subscriber receives the publish within 5 s");
        assert_eq!(received.topic, topic);
        assert_eq!(&received.payload[..], b"hello");
    }

    #[tokio::test]
    async fn broker_that_took_the_address_after_the_check_is_not_ours() {
        let port = free_port();
        let addr = loopback(port);
        let mut stranger = None;
        let began = std::time::Instant::now();
        let err = start_after_check(addr, || stranger = Some(Mosquitto::start(port)))
            .await
            .expect_err("Mosquitto answers on the address, not the embedded broker");
        assert!(stranger.is_some(), "Mosquitto took the address");
        assert!(matches!(err, BrokerError::NotOurs { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("another MQTT broker answers"), "{message}");
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "decided in {:?}",
            began.elapsed()
        );
    }

    #[tokio::test]
    async fn listener_that_cannot_bind_with_no_broker_there_is_stopped() {
        let addr = loopback(free_port());
        // Takes the address and accepts TCP connections (the backlog) but never speaks MQTT.
        let mut squatter = None;
        let began = std::time::Instant::now();
        let err = start_after_check(addr, || {
            squatter = Some(std::net::TcpListener::bind(addr).expect("bind after the check"))
        })
        .await
        .expect_err("the embedded broker cannot bind");
        assert!(matches!(err, BrokerError::Stopped { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(
            began.elapsed() < READY_TIMEOUT,
            "decided in {:?}",
            began.elapsed()
        );
        drop(squatter);
    }

    #[test]
    fn verdict_weighs_the_nonce_the_answer_and_the_exit() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let seen = |answered, nonce_came_back, exited_at| Evidence {
            answered,
            nonce_came_back,
            exited_at,
        };
        // ours: the nonce came back
        assert_eq!(
            verdict(&seen(true, true, None), t0, ms(30)),
            Some(Verdict::Ours)
        );
        // an answer alone proves nothing until the nonce has had its time
        assert_eq!(verdict(&seen(true, false, None), t0, ms(30)), None);
        assert_eq!(
            verdict(&seen(true, false, None), t0, t0 + READY_TIMEOUT),
            Some(Verdict::NotOurs)
        );
        // ours has exited: whoever answers is someone else, at once
        assert_eq!(
            verdict(&seen(true, false, Some(ms(10))), t0, ms(20)),
            Some(Verdict::NotOurs)
        );
        // ours has exited and nobody answers: wait the grace for another broker, then stopped
        assert_eq!(verdict(&seen(false, false, Some(ms(10))), t0, ms(20)), None);
        assert_eq!(
            verdict(&seen(false, false, Some(ms(10))), t0, ms(10) + EXIT_GRACE),
            Some(Verdict::Stopped)
        );
        // ours runs and nobody answers
        assert_eq!(verdict(&seen(false, false, None), t0, ms(20)), None);
        assert_eq!(
            verdict(&seen(false, false, None), t0, t0 + READY_TIMEOUT),
            Some(Verdict::NotReady)
        );
    }
}
