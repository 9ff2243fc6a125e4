//! Mutual TLS to a real Mosquitto (certificates made by openssl for the test): the agent's
//! publisher connects with its certificate and its events arrive; a client without a
//! certificate is refused.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, TlsConfiguration, Transport};
use spotter_agent::config::TlsFiles;
use spotter_agent::mqtt;
use support::{event, free_port, publisher_settings, Subscriber, MOSQUITTO};
use tokio_util::sync::CancellationToken;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=spotter-test-ca",
        ],
    );
    // version 3 certificates (webpki refuses v1), the server's valid for its address
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=studio-1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
}

/// Mosquitto with a plain listener (for the test's subscriber) and a TLS listener that requires
/// a client certificate.
struct TlsBroker {
    plain: u16,
    tls: u16,
    child: Child,
}

impl TlsBroker {
    fn start(dir: &Path) -> TlsBroker {
        let (plain, tls) = (free_port(), free_port());
        let d = dir.display();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "per_listener_settings true\nuser root\nlog_dest file {d}/mosquitto.log\n\
                 listener {plain} 127.0.0.1\nallow_anonymous true\n\
                 listener {tls} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
                 cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(MOSQUITTO)
            .args(["-c", &dir.join("mosquitto.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        for port in [plain, tls] {
            support::wait_for_port(port, "mosquitto", Duration::from_secs(10));
        }
        TlsBroker { plain, tls, child }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_connects_with_its_certificate_and_a_client_without_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certificates(dir.path());
    let broker = TlsBroker::start(dir.path());
    let read = |f: &str| std::fs::read(dir.path().join(f)).expect("certificate file");

    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "spotter_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut sub = Subscriber::start(broker.plain);
    sub.subscribed().await;

    let outbox_dir = dir.path().join("outbox");
    let (mut cfg, topics, outbox) =
        publisher_settings(broker.tls, "studio-1", &outbox_dir, 1 << 20);
    cfg.tls = Some(TlsFiles {
        ca: read("ca.crt"),
        client: Some((read("client.crt"), read("client.key"))),
        alpn: None,
    });
    let (publisher, connection) = mqtt::connect_with(&cfg, topics, &outbox).expect("connects");
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(mqtt::drive(connection, shutdown.clone()));
    for seq in 1..=3 {
        publisher.event(&event(seq)).await.expect("stored");
    }
    let arrived = tokio::time::timeout(
        Duration::from_secs(20),
        sub.wait_until(
            "three events over mutual TLS",
            Duration::from_secs(20),
            |got| got.iter().filter(|e| (1..=3).contains(&e.seq)).count() >= 3,
        ),
    )
    .await;
    if arrived.is_err() {
        let log = std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
        panic!("no events over mutual TLS within 20 s; broker log:\n{log}");
    }
    publisher.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    shutdown.cancel();

    // the same CA, no client certificate: the broker ends the handshake
    let mut opts = MqttOptions::new("no-certificate", "127.0.0.1", broker.tls);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: read("ca.crt"),
        alpn: None,
        client_auth: None,
    }));
    let (_client, mut eventloop) = AsyncClient::new(opts, 4);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Err(e) => return e.to_string(),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    return String::from("CONNACK")
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the broker answered within 10 s");
    assert_ne!(
        refused, "CONNACK",
        "a client without a certificate was let in"
    );
}
