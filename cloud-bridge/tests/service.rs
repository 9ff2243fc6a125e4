//! End-to-end tests of the bridge as systemd runs it: the built binary started as a child process
//! with the shipped unit's own command lines, its open-files budget under a lowered limit,
//! readiness, and draining on SIGTERM.

#[allow(
    dead_code,
    reason = "this file runs the bridge as a child process, not with support's in-process bridge"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_bridge::app::SHUTDOWN_TIMEOUT;
use spotter_mqtt_link::testing::free_port;
use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::EventType;
use support::{http_get, recv, sample, ws_connect, Ws, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_spotter-bridge");
/// The config path the shipped unit names.
const UNIT_CONFIG: &str = "/etc/spotter/bridge.toml";

fn unit_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/spotter-bridge.service");
    std::fs::read_to_string(&path).expect("the shipped unit file")
}

/// The values of `key=` lines in the unit's `[Service]` section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// A test directory with a one-product catalog and a config for free loopback ports.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    http: std::net::SocketAddr,
    broker_port: u16,
}

fn setup(mqtt: impl FnOnce(u16) -> String, viewer_extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("catalog");
    std::fs::create_dir_all(&catalog).expect("mkdir");
    std::fs::write(catalog.join("mug.png"), b"\x89PNG fake").expect("write png");
    std::fs::write(
        catalog.join("catalog.toml"),
        "[[product]]\nsku = \"MUG-001\"\nname = \"Enamel camp mug\"\nprice = \"14.00\"\n\
         currency = \"USD\"\nurl = \"https://shop.example/mug-001\"\nimages = [\"mug.png\"]\n",
    )
    .expect("write catalog");
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let broker_port = free_port();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"{http}\"\n{}\n[catalog]\ndir = \"catalog\"\n\
             [[stream]]\nstudio = \"demo\"\nstream = \"main\"\n[viewer]\n{viewer_extra}\n\
             [chat]\nstate_dir = \"state\"\n",
            mqtt(broker_port)
        ),
    )
    .expect("write config");
    Setup {
        dir,
        config,
        http,
        broker_port,
    }
}

fn embedded(port: u16) -> String {
    format!(
        "[mqtt]\nembedded = true\nembedded_listen = \"127.0.0.1:{port}\"\nclient_id = \"bridge-under-test\""
    )
}

/// A unit command line with the built binary and the test's config: the program and its args.
fn command_line(line: &str, config: &Path) -> (String, Vec<String>) {
    let mut words = line.split_whitespace().map(|w| {
        if w == UNIT_CONFIG {
            config.display().to_string()
        } else {
            w.to_owned()
        }
    });
    let program = words.next().expect("a program");
    assert!(
        program.ends_with("/spotter-bridge"),
        "the unit runs {program}"
    );
    (BIN.to_owned(), words.collect())
}

/// A running bridge process and its log lines.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn spawn(program: &str, args: &[String], env: &[(String, String)], dir: &Path) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the bridge");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `pattern` and returns it.
    async fn line(&mut self, pattern: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(pattern)) {
            return l.clone();
        }
        let found = timeout(WAIT, async {
            while let Some(l) = self.lines.recv().await {
                self.seen.push(l.clone());
                if l.contains(pattern) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!(
                "no log line with {pattern:?}; the bridge said:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit within `limit`; its status.
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        match timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("the bridge did not exit within {limit:?}"),
        }
    }
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get(addr, path).await;
    (status, String::from_utf8(body).expect("utf8"))
}

#[tokio::test]
async fn shipped_unit_command_lines_validate_and_run() {
    let unit = unit_file();
    let s = setup(embedded, "");
    let pre = unit_values(&unit, "ExecStartPre");
    let start = unit_values(&unit, "ExecStart");
    assert_eq!((pre.len(), start.len()), (1, 1), "{unit}");
    assert!(
        unit_values(&unit, "LimitNOFILE") == ["65536"],
        "the unit raises the open-files limit: {unit}"
    );
    let env: Vec<(String, String)> = unit_values(&unit, "Environment")
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let stop = unit_values(&unit, "TimeoutStopSec");
    let stop_s: u64 = stop
        .first()
        .and_then(|s| s.parse().ok())
        .expect("TimeoutStopSec");
    assert!(
        stop_s > SHUTDOWN_TIMEOUT.as_secs(),
        "systemd must wait longer than the drain"
    );

    let (program, args) = command_line(&pre[0], &s.config);
    let out = Command::new(&program)
        .args(&args)
        .envs(env.iter().cloned())
        .current_dir(s.dir.path())
        .output()
        .await
        .expect("run validate");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let (program, args) = command_line(&start[0], &s.config);
    let mut bridge = Process::spawn(&program, &args, &env, s.dir.path());
    bridge.line("bridge serving").await;
    assert_eq!(get_text(s.http, "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get_text(s.http, "/readyz").await, (200, "ready".to_owned()));
    bridge.sigterm();
    let status = bridge.exit_within(SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "{status}");
    assert!(
        !bridge.seen.iter().any(|l| l.contains("rumqttd")),
        "the embedded broker stays quiet under the unit's environment:\n{}",
        bridge.seen.join("\n")
    );
}

#[tokio::test]
async fn help_explains_both_orders() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config", "validate", "RUST_LOG", "rumqttd", "/readyz", "1012",
    ] {
        assert!(
            help.contains(needle),
            "--help says nothing of {needle}:\n{help}"
        );
    }
}

/// The first message of a viewer that skips the chat's history.
async fn first(ws: &mut Ws) -> ServerMessage {
    loop {
        match recv(ws).await {
            ServerMessage::ChatHistory { .. } => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn viewers_over_the_open_files_budget_get_503_while_broker_and_metrics_stay_reachable() {
    // All 91 viewers come from 127.0.0.1: no per-address share, so the budget is what refuses.
    let s = setup(embedded, "max_per_address = 0");
    // A soft limit of 100 raised to the hard 155 at start: 155 less 64 + 91/64 leaves 90 viewers.
    let args = vec![
        "--nofile=100:155".to_owned(),
        BIN.to_owned(),
        "--config".to_owned(),
        s.config.display().to_string(),
        "run".to_owned(),
    ];
    let mut bridge = Process::spawn("prlimit", &args, &[], s.dir.path());
    let raised = bridge.line("open-files limit").await;
    assert!(
        raised.contains("soft_was=100") && raised.contains("soft=155"),
        "{raised}"
    );
    bridge.line("bridge serving").await;
    let (_, metrics) = get_text(s.http, "/metrics").await;
    assert_eq!(sample(&metrics, "spotter_bridge_viewers_budget"), 90.0);

    let mut viewers = Vec::new();
    for _ in 0..90 {
        let mut ws = ws_connect(s.http, "").await;
        assert!(matches!(first(&mut ws).await, ServerMessage::Hello { .. }));
        viewers.push(ws);
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws/demo/main", s.http)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            assert!(v["error"].as_str().expect("error").contains("full"), "{v}");
        }
        other => panic!("the 91st viewer was not refused with 503: {other:?}"),
    }

    let (status, metrics) = get_text(s.http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "spotter_bridge_viewers_refused_full_total"),
        1.0
    );
    assert_eq!(sample(&metrics, "spotter_bridge_viewers_connected"), 90.0);

    // An agent still reaches the embedded broker, and its event reaches the viewers.
    let mut opts = MqttOptions::new("agent-at-the-limit", "127.0.0.1", s.broker_port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (agent, mut agent_loop) = AsyncClient::new(opts, 8);
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = agent_loop.poll().await.expect("poll") {
                break;
            }
        }
    })
    .await
    .expect("the broker accepts an MQTT client with viewers at their budget");
    let pump = tokio::spawn(async move { while agent_loop.poll().await.is_ok() {} });
    agent
        .publish(
            "spotter/v1/demo/main/events",
            QoS::AtLeastOnce,
            false,
            support::event(EventType::New, "ev-1", 1, "MUG-001"),
        )
        .await
        .expect("queued");
    let last = viewers.len() - 1;
    for i in [0, last] {
        // The first event names the agent's session: viewers that joined before it get a new
        // `hello` of that epoch, then the event.
        let card = support::next_card(&mut viewers[i]).await;
        assert_eq!(card.product.sku, "MUG-001");
    }

    // A place comes back when a viewer leaves.
    let mut gone = viewers.pop().expect("a viewer");
    gone.close(None).await.expect("close");
    while let Some(Ok(_)) = gone.next().await {}
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = get_text(s.http, "/metrics").await;
        if sample(&m, "spotter_bridge_viewers_connected") == 89.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer's place never came back"
        );
        tokio::task::yield_now().await;
    }
    let mut again = ws_connect(s.http, "").await;
    assert!(matches!(
        first(&mut again).await,
        ServerMessage::Hello { .. }
    ));

    pump.abort();
    bridge.sigterm();
    assert!(bridge.exit_within(WAIT).await.success());
}

#[tokio::test]
async fn sigterm_sends_every_viewer_1012_and_exits_in_time() {
    let s = setup(embedded, "");
    let args = vec![
        "--config".to_owned(),
        s.config.display().to_string(),
        "run".to_owned(),
    ];
    let mut bridge = Process::spawn(BIN, &args, &[], s.dir.path());
    bridge.line("bridge serving").await;
    let mut viewers = Vec::new();
    for _ in 0..5 {
        let mut ws = ws_connect(s.http, "").await;
        assert!(matches!(first(&mut ws).await, ServerMessage::Hello { .. }));
        viewers.push(ws);
    }

    let sent = Instant::now();
    bridge.sigterm();
    for ws in &mut viewers {
        let close = timeout(WAIT, async {
            while let Some(frame) = ws.next().await {
                if let Message::Close(c) = frame.expect("a frame, not a reset") {
                    return c;
                }
            }
            None
        })
        .await
        .expect("closed in time")
        .expect("a close frame");
        assert_eq!(close.code, CloseCode::Restart, "{close:?}");
        assert_eq!(close.reason.as_str(), "service restart");
    }
    let status = bridge.exit_within(SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() < SHUTDOWN_TIMEOUT,
        "drained in {:?}",
        sent.elapsed()
    );
    bridge.line("bridge stopped").await;
    assert!(
        tokio::net::TcpStream::connect(s.http).await.is_err(),
        "nothing accepts after the drain"
    );
}

#[tokio::test]
async fn without_a_broker_alive_but_not_ready() {
    // A port nothing listens on.
    let s = setup(
        |port| {
            format!("[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"lonely\"")
        },
        "",
    );
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        s.config.display().to_string(),
    ];
    let mut bridge = Process::spawn(BIN, &args, &[], s.dir.path());
    bridge.line("bridge serving").await;
    assert_eq!(get_text(s.http, "/healthz").await, (200, "ok".to_owned()));
    let (status, body) = get_text(s.http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON reason");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("not subscribed"),
        "{v}"
    );
    bridge.sigterm();
    assert!(bridge.exit_within(SHUTDOWN_TIMEOUT).await.success());
}
