//! Real parts for the delivery tests: a Mosquitto broker started on a free loopback port (and
//! stopped and started again on the same port), a subscribing MQTT client that records every
//! product event it receives, and synthetic events.

#![allow(dead_code)] // each test binary uses part of this

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_agent::config::{MqttConfig, OutboxConfig};
use spotter_agent::mqtt::Topics;
use spotter_protocol::{BBox, EventType, ProductEvent, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod ingest;

/// Mosquitto as Debian installs it.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// The stream every test publishes on.
pub const STUDIO: &str = "test";
/// The stream every test publishes on.
pub const STREAM: &str = "main";

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A Mosquitto process with its own configuration and persistence directory; killed on drop.
///
/// Persistence is on, saved when the broker stops (SIGTERM) and loaded when it starts again,
/// so the test subscriber's session and subscription survive the restart: events replayed by
/// the publisher before the subscriber has reconnected are queued for it instead of being
/// discarded for want of a subscriber, which would test the test rather than the outbox.
pub struct Mosquitto {
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("a directory for mosquitto");
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
        };
        m.start_again();
        m
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Starts it again (same port, same persistence) after [`Mosquitto::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let conf = self.dir.path().join("mosquitto.conf");
        // started as root, mosquitto switches to the `mosquitto` user, which cannot write its
        // log and persistence file into our private temporary directory
        let as_root = std::fs::metadata(self.dir.path()).is_ok_and(|m| m.uid() == 0);
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence true\n\
                 persistence_location {dir}/\n\
                 autosave_interval 0\n\
                 max_queued_messages 100000\n\
                 log_dest file {log}\n\
                 log_type all\n\
                 {user}",
                port = self.port,
                dir = self.dir.path().display(),
                log = self.log_path().display(),
                user = if as_root { "user root\n" } else { "" },
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {MOSQUITTO} (apt-get install mosquitto): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited with {status}:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on {} after 10 s:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM (it saves its sessions) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "cannot send SIGTERM to mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("mosquitto's status").is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("mosquitto's log ends:\n{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Settings for a publisher talking to `port`, with its outbox in `dir`.
pub fn publisher_settings(
    port: u16,
    client_id: &str,
    dir: &Path,
    max_bytes: u64,
) -> (MqttConfig, Topics, OutboxConfig) {
    (
        MqttConfig {
            broker: spotter_mqtt_link::Endpoint::plain("127.0.0.1", port),
            client_id: client_id.into(),
            keepalive: Duration::from_secs(5),
            stats_interval: Duration::from_secs(10),
            max_publishes_per_sec: 100,
        },
        Topics::for_stream(STUDIO, STREAM).expect("valid topics"),
        OutboxConfig {
            dir: dir.to_owned(),
            max_bytes,
        },
    )
}

/// Connects as `client_id` with a clean session, which makes the broker close that client's
/// connection and discard its session, then disconnects.
pub async fn take_over_session(port: u16, client_id: &str) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let connected = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("the session takeover cannot connect: {e}"),
            }
        }
        client.disconnect().await.expect("disconnect request");
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .expect("the session takeover within 10 s");
}

/// A synthetic product event (what the tracker would emit), with sequence number `seq`.
pub fn event(seq: u64) -> ProductEvent {
    ProductEvent {
        v: PROTOCOL_VERSION,
        kind: EventType::Update,
        event_id: "0b9e8a50-delivery-test".into(),
        seq,
        session: Some("0123456789abcdef".into()),
        sku: "MUG-001".into(),
        score: 0.875,
        bbox: BBox([0.25, 0.125, 0.75, 0.875]),
        captured_at_ms: 1_764_072_000_000 + seq * 200,
        pts_ms: seq * 200,
    }
}

/// An MQTT client subscribed (QoS 1, persistent session) to the stream's events, recording them.
pub struct Subscriber {
    events: watch::Receiver<Vec<ProductEvent>>,
    subacks: watch::Receiver<u64>,
    stop: CancellationToken,
}

static SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);

impl Subscriber {
    /// Connects to `port` and subscribes; call [`Subscriber::subscribed`] before relying on it.
    pub fn start(port: u16) -> Subscriber {
        let topic = Topics::for_stream(STUDIO, STREAM)
            .expect("valid topics")
            .events;
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            SUBSCRIBERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (events_tx, events) = watch::channel(Vec::new());
        let (subacks_tx, subacks) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let polled = tokio::select! {
                    () = stopped.cancelled() => return,
                    p = eventloop.poll() => p,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // a restored session keeps the subscription; asking again is harmless
                        let _ = client.try_subscribe(&topic, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => subacks_tx.send_modify(|n| *n += 1),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let e = ProductEvent::decode(&p.payload).unwrap_or_else(|err| {
                            panic!("the subscriber got a payload that is not an event: {err}")
                        });
                        events_tx.send_modify(|v| v.push(e));
                    }
                    Ok(_) => {}
                    // the broker is away: pace the reconnects
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Subscriber {
            events,
            subacks,
            stop,
        }
    }

    /// Waits for the broker to confirm the subscription.
    pub async fn subscribed(&mut self) {
        let done = self.subacks.wait_for(|n| *n > 0);
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("no SUBACK within 10 s")
            .expect("the subscriber task ended");
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<ProductEvent> {
        self.events.borrow().clone()
    }

    /// Waits until `done` holds for what has been received; panics after `timeout`, saying
    /// `what` and what did arrive.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ProductEvent]) -> bool,
    ) -> Vec<ProductEvent> {
        let waited = tokio::time::timeout(timeout, self.events.wait_for(|v| done(v)))
            .await
            .map(|r| r.map(|v| v.clone()));
        match waited {
            Ok(Ok(v)) => v,
            _ => {
                let got = seqs(&self.received());
                panic!(
                    "{what}: not within {timeout:?}; received {} events: {}",
                    got.len(),
                    summarize(&got)
                )
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sequence numbers of `events`, in arrival order.
pub fn seqs(events: &[ProductEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Whether every number in `wanted` has arrived.
pub fn has_all(events: &[ProductEvent], wanted: impl IntoIterator<Item = u64>) -> bool {
    let got: HashSet<u64> = events.iter().map(|e| e.seq).collect();
    wanted.into_iter().all(|s| got.contains(&s))
}

/// Checks delivery: each event's first arrival comes in sequence order (a redelivery may repeat
/// an earlier one later; the bridge drops those). Returns (first arrivals, duplicates).
pub fn first_arrivals(events: &[ProductEvent]) -> (Vec<u64>, usize) {
    let mut seen = HashSet::new();
    let firsts: Vec<u64> = events
        .iter()
        .map(|e| e.seq)
        .filter(|s| seen.insert(*s))
        .collect();
    let out_of_order: Vec<&[u64]> = firsts.windows(2).filter(|w| w[0] >= w[1]).collect();
    assert!(
        out_of_order.is_empty(),
        "first arrivals out of order at {out_of_order:?}: {}",
        summarize(&firsts)
    );
    let duplicates = events.len() - firsts.len();
    (firsts, duplicates)
}

/// `1-20, 22, 25-40`: runs of consecutive numbers.
pub fn summarize(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Waits until something accepts connections on the loopback `port`; panics after `within`.
pub fn wait_for_port(port: u16, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The converted model weights (`make setup`).
pub fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/weights/efficientnet-lite0.safetensors");
    assert!(
        p.is_file(),
        "{}: run `make setup` to fetch and convert the weights",
        p.display()
    );
    p
}

/// Writes a one-product catalog (a mug from Debian's openclipart-png) into `dir`.
pub fn mug_catalog(dir: &Path) {
    std::fs::copy(
        "/usr/share/openclipart/png/food/beverages/mug.png",
        dir.join("mug.png"),
    )
    .expect("openclipart-png is installed");
    std::fs::write(
        dir.join("catalog.toml"),
        "[[product]]\nsku = \"MUG-001\"\nname = \"Mug\"\nprice = \"1.00\"\ncurrency = \"USD\"\nurl = \"https://shop.example/m\"\nimages = [\"mug.png\"]\n",
    )
    .expect("write catalog");
}

/// Writes the config of an agent for the test studio into `dir/agent.toml`: the test pattern,
/// the mug catalog (written into `dir`), the model, the broker on `broker_port`, stats every
/// `stats_secs`, an outbox in `dir`, analysis at 384x224 unless `analysis` sets the size;
/// `analysis` and `tail` are TOML added to `[analysis]` and at the end (an `[upload]` table, say).
pub fn agent_config(
    dir: &Path,
    broker_port: u16,
    stats_secs: f64,
    analysis: &str,
    tail: &str,
) -> PathBuf {
    agent_config_with_source(
        dir,
        broker_port,
        stats_secs,
        "kind = \"test\"",
        analysis,
        tail,
    )
}

/// [`agent_config`] with `source` as the `[source]` table's body instead of the test pattern.
pub fn agent_config_with_source(
    dir: &Path,
    broker_port: u16,
    stats_secs: f64,
    source: &str,
    analysis: &str,
    tail: &str,
) -> PathBuf {
    mug_catalog(dir);
    // these tests check the video path, rates and recovery, not recognition: a smaller analysis
    // size than the default leaves the 2 cores room to encode 30 fps beside it
    let size = if analysis.contains("width") {
        ""
    } else {
        "width = 384\nheight = 224\n"
    };
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "studio = \"{STUDIO}\"\nstream = \"{STREAM}\"\n[source]\n{source}\n\
             [analysis]\ncatalog = \"{d}\"\nmodel = \"{m}\"\nfps = 5.0\n{size}{analysis}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nstats_interval_secs = {stats_secs:.1}\n\
             [outbox]\ndir = \"{d}/outbox\"\n{tail}",
            d = dir.display(),
            m = model_path().display(),
        ),
    )
    .expect("write the agent's config");
    config
}

/// A UDP port nothing is bound to now on the loopback (SRT runs over UDP).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback UDP port")
        .port()
}

/// Collects every stats payload published on the test studio's stats topic, in the background.
pub async fn collect_stats(
    port: u16,
    client_id: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<spotter_protocol::Stats>>> {
    let (client, mut eventloop) =
        watch(port, client_id, &[format!("spotter/v1/{STUDIO}/stats")]).await;
    let readings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = readings.clone();
    tokio::spawn(async move {
        let _client = client; // the subscription lives as long as this task
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if let Ok(s) = serde_json::from_slice(&p.payload) {
                    out.lock().expect("stats lock").push(s);
                }
            }
        }
    });
    readings
}

/// A running `spotter-agent`: use it as the [`Child`] it wraps. Killed and waited for when
/// dropped, so that a test that fails (panics) before [`terminate`] leaves no agent behind.
pub struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // once waited for (terminate), std neither signals nor waits again: no stray kill of a
        // reused pid
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `spotter-agent run` with `config`, its log (stdout) in `log`.
pub fn spawn_agent(config: &Path, log: &Path) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_spotter-agent"))
        .args(["--config", &config.display().to_string(), "run"])
        .stdout(std::fs::File::create(log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    Agent(child)
}

/// Asks the process to stop as systemd would (SIGTERM) and waits for it.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().expect("wait for the agent")
}

/// A test client subscribed (QoS 1) to `topics` on the broker at `port`: poll the event loop,
/// and keep the client alive as long as it is polled.
pub async fn watch(
    port: u16,
    client_id: &str,
    topics: &[String],
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, eventloop) = AsyncClient::new(opts, 16);
    for t in topics {
        client
            .subscribe(t, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    (client, eventloop)
}

/// Runs the `gst-launch-1.0` style pipeline `desc` to its end (a clip written, say); panics on
/// an error, or when it has not ended within 60 s.
pub fn run_to_end(desc: &str) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().expect("gstreamer");
    let p = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("cannot build `{desc}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    play_to_eos(&p, 60, &format!("`{desc}`"));
}

/// Plays `p` until its end of stream and stops it; panics on an error, or when it has not
/// ended within `secs` (`what` names it in the message).
pub fn play_to_eos(p: &gstreamer::Pipeline, secs: u64, what: &str) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    p.set_state(gst::State::Playing).expect("play");
    let msg = p.bus().expect("bus").timed_pop_filtered(
        gst::ClockTime::from_seconds(secs),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    p.set_state(gst::State::Null).expect("stop");
    assert!(
        msg.as_ref()
            .is_some_and(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "{what} did not run to its end within {secs} s: {msg:?}"
    );
}
