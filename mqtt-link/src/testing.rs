//! For the agent's and the bridge's component tests (feature `test-support`): certificates made
//! by openssl, a real Mosquitto that requires a client certificate, `openssl s_server`
//! reporting the ALPN protocols a client offers, and what a broker answers a client's first
//! connection. Panics on failure, as test code does.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts Mosquitto.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A free loopback TCP port, never one this process was given before: tests run in parallel
/// threads, and the kernel may hand the same free port to two of them before either binds it
/// (two embedded brokers racing for one port, one silently serving both bridges).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, what: &str, within: Duration) {
    let until = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "{what} did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// The files [`make_certificates`] writes.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA that signed both certificates (`ca.crt`).
    pub ca: PathBuf,
    /// The broker's certificate for 127.0.0.1 and its key.
    pub server: (PathBuf, PathBuf),
    /// The client's certificate (`client.crt`) and key (`client.key`).
    pub client: (PathBuf, PathBuf),
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for `client_cn`, all
/// signed by the CA, in `dir`.
pub fn make_certificates(dir: &Path, client_cn: &str) -> Certificates {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes"][..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=spotter-test-ca",
            ],
            &days,
        ]
        .concat(),
    );
    // version 3 certificates (webpki refuses v1), the server's valid for its address
    let ext = [
        (
            "server",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            "/CN=127.0.0.1".to_owned(),
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            format!("/CN={client_cn}"),
        ),
    ];
    for (name, extensions, subject) in ext {
        let file = |suffix: &str| format!("{name}.{suffix}");
        std::fs::write(dir.join(file("ext")), extensions).expect("write the extensions");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &file("key"),
                "-out",
                &file("csr"),
                "-subj",
                &subject,
            ],
        );
        openssl(
            dir,
            &[
                &["x509", "-req", "-in", &file("csr"), "-CA", "ca.crt"][..],
                &["-CAkey", "ca.key", "-CAcreateserial", "-out", &file("crt")],
                &["-extfile", &file("ext")],
                &days,
            ]
            .concat(),
        );
    }
    Certificates {
        ca: dir.join("ca.crt"),
        server: (dir.join("server.crt"), dir.join("server.key")),
        client: (dir.join("client.crt"), dir.join("client.key")),
    }
}

/// Mosquitto with a plain listener (for the test's own clients) and a TLS listener that
/// requires a client certificate signed by the test CA; stopped when dropped.
#[derive(Debug)]
pub struct TlsMosquitto {
    /// The plain listener's port.
    pub plain: u16,
    /// The mutual-TLS listener's port.
    pub tls: u16,
    log: PathBuf,
    child: Child,
}

impl TlsMosquitto {
    /// Starts it with the certificates [`make_certificates`] wrote in `dir`, logging to
    /// `dir/mosquitto.log`, and waits until both listeners accept connections.
    pub fn start(dir: &Path, certs: &Certificates) -> TlsMosquitto {
        let (plain, tls) = (free_port(), free_port());
        let log = dir.join("mosquitto.log");
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "per_listener_settings true\nuser root\nlog_dest file {log}\nlog_type all\n\
                 listener {plain} 127.0.0.1\nallow_anonymous true\n\
                 listener {tls} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
                 cafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
                log = log.display(),
                ca = certs.ca.display(),
                cert = certs.server.0.display(),
                key = certs.server.1.display(),
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(MOSQUITTO)
            .args(["-c", &dir.join("mosquitto.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {MOSQUITTO} (apt-get install mosquitto): {e}")
            });
        for port in [plain, tls] {
            wait_for_port(port, "mosquitto", Duration::from_secs(10));
        }
        TlsMosquitto {
            plain,
            tls,
            log,
            child,
        }
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` offering `alpn`, with the test server certificate, requiring a client
/// certificate; its output says which ALPN protocols each client offered. Stopped when dropped.
#[derive(Debug)]
pub struct AlpnServer {
    /// Its port.
    pub port: u16,
    out: PathBuf,
    child: Child,
}

impl AlpnServer {
    /// Starts it on a free port; its output goes to `dir/s_server.out`.
    pub fn start(dir: &Path, certs: &Certificates, alpn: &str) -> AlpnServer {
        let port = free_port();
        let out = dir.join("s_server.out");
        let file = std::fs::File::create(&out).expect("create the s_server output");
        let err = file.try_clone().expect("clone the output file");
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string()])
            .args(["-cert", &certs.server.0.display().to_string()])
            .args(["-key", &certs.server.1.display().to_string()])
            .args(["-CAfile", &certs.ca.display().to_string()])
            .args(["-Verify", "1", "-alpn", alpn])
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("openssl is installed");
        let s = AlpnServer { port, out, child };
        // not a TCP probe: s_server would take it for a client
        assert!(
            s.wait_for_output("ACCEPT", Duration::from_secs(10)),
            "openssl s_server did not start: {}",
            s.output()
        );
        s
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until its output contains `text`; false if it did not within `within`.
    pub fn wait_for_output(&self, text: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        while !self.output().contains(text) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for AlpnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `eventloop` until the broker accepts the connection (`"CONNACK"`) or the connection
/// fails: the error as [`crate::explain`] words it, which is what the agent and the bridge log.
/// Unbounded: the caller puts its own timeout around it.
pub async fn connack_or_failure(eventloop: &mut rumqttc::EventLoop) -> String {
    loop {
        match eventloop.poll().await {
            Err(e) => return crate::explain(&e),
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                return String::from("CONNACK")
            }
            Ok(_) => {}
        }
    }
}
