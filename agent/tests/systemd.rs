//! The agent as systemd runs it: the shipped unit's hardening and syntax (systemd-analyze), and
//! the notify protocol against a notify socket of the test's own (systemd is not PID 1 here):
//! `READY=1` once the pipeline plays, `WATCHDOG=1` while frames arrive and are analysed, no more
//! pings once the source goes silent, `STOPPING=1` on SIGTERM.

mod support;
#[path = "../../systemd/unit_checks.rs"]
mod unit_checks;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use support::Mosquitto;

const BIN: &str = env!("CARGO_BIN_EXE_spotter-agent");
/// The highest exposure the agent's unit may have (it needs the network, V4L2 and the GPU).
const MAX_EXPOSURE: f64 = 3.0;
/// The watchdog timeout the test gives, as systemd would from `WatchdogSec=`.
const WATCHDOG: Duration = Duration::from_secs(2);

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/spotter-agent.service")
}

#[test]
fn the_shipped_unit_is_hardened_and_verifies() {
    let unit = unit_path();
    let exposure = unit_checks::exposure(&unit);
    println!(
        "spotter-agent.service exposure (systemd-analyze security --offline=true): {exposure}"
    );
    assert!(
        exposure <= MAX_EXPOSURE,
        "spotter-agent.service exposure {exposure} is over {MAX_EXPOSURE}"
    );
    let said = unit_checks::verify_with(&unit, "/usr/bin/spotter-agent", BIN);
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    let text = std::fs::read_to_string(&unit).expect("the unit");
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "ExecStart=/usr/bin/spotter-agent --config /etc/spotter/agent.toml run",
        "ExecStartPre=/usr/bin/spotter-agent --config /etc/spotter/agent.toml validate",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in the unit");
    }
}

/// A live H.264 stream over SRT on `port`, as in `tests/source.rs`: stopping it silences the
/// agent's source without an error.
fn srt_sender(port: u16) -> gst::Pipeline {
    gst::init().expect("gstreamer");
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! mpegtsmux alignment=7 \
         ! srtsink uri=\"srt://127.0.0.1:{port}?mode=listener\" wait-for-connection=false"
    ))
    .expect("sender pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    p.set_state(gst::State::Playing).expect("sender plays");
    p
}

/// The agent process, killed if the test fails before it exits.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the notify socket received, each line with when it came.
struct Socket {
    sock: UnixDatagram,
    got: Vec<(Instant, String)>,
}

impl Socket {
    /// Receives until `until` or until a line equal to `stop_at` arrives; whether it did.
    fn receive(&mut self, until: Instant, stop_at: Option<&str>) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set a read timeout");
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let at = Instant::now();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut found = false;
            for line in text.lines() {
                found |= Some(line) == stop_at;
                self.got.push((at, line.to_owned()));
            }
            if found {
                return true;
            }
        }
    }

    fn pings_after(&self, from: Instant) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|(at, l)| *at >= from && l == "WATCHDOG=1")
            .map(|(at, _)| *at)
            .collect()
    }
}

#[test]
fn watchdog_pings_while_frames_flow_and_stop_when_the_source_goes_silent() {
    let broker = Mosquitto::start();
    let port = support::free_udp_port();
    let sender = srt_sender(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::agent_config_with_source(
        dir.path(),
        broker.port,
        1.0,
        &format!("kind = \"uri\"\nuri = \"srt://127.0.0.1:{port}\"\nrealtime = false"),
        "",
        "",
    );
    let sock_path = dir.path().join("notify.sock");
    let mut socket = Socket {
        sock: UnixDatagram::bind(&sock_path).expect("bind the notify socket"),
        got: Vec::new(),
    };
    let log = dir.path().join("agent.log");
    let args = [
        "--config".to_owned(),
        config.display().to_string(),
        "run".to_owned(),
    ];
    let (program, args) = unit_checks::with_watchdog_pid(BIN, &args);
    let mut agent = Agent(
        Command::new(program)
            .args(args)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let start = Instant::now();
    assert!(
        socket.receive(start + Duration::from_secs(90), Some("READY=1")),
        "no READY=1; got {:?}; log:\n{}",
        socket.got,
        agent_log()
    );
    let ready = Instant::now();
    // frames flow: pings come, never further apart than the watchdog timeout
    socket.receive(ready + Duration::from_secs(8), None);
    let pings = socket.pings_after(ready);
    assert!(
        pings.len() >= 4,
        "{} pings in 8 s; got {:?}; log:\n{}",
        pings.len(),
        socket.got,
        agent_log()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(widest < WATCHDOG, "pings {widest:?} apart");
    let status = socket
        .got
        .iter()
        .find_map(|(_, l)| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= line; got {:?}", socket.got));
    assert!(status.starts_with("camera "), "{status}");
    assert!(status.contains("analysed "), "{status}");

    // the sender stops: no error reaches the agent, only silence, and the pings stop
    sender.set_state(gst::State::Null).expect("sender stops");
    let silent = Instant::now();
    socket.receive(silent + 3 * WATCHDOG, None);
    let late: Vec<Duration> = socket
        .pings_after(silent)
        .iter()
        .map(|at| *at - silent)
        .collect();
    assert!(
        late.iter().all(|d| *d < WATCHDOG),
        "pings went on after the source went silent: {late:?}; log:\n{}",
        agent_log()
    );
    assert!(
        agent.0.try_wait().expect("try_wait").is_none(),
        "the agent exited; log:\n{}",
        agent_log()
    );

    let stop = Instant::now();
    support::terminate(&mut agent.0);
    assert!(
        socket.receive(stop + Duration::from_secs(15), Some("STOPPING=1")),
        "no STOPPING=1; got {:?}",
        socket.got
    );
    let exit = agent.0.wait().expect("wait for the agent");
    assert!(exit.success(), "agent exit {exit:?}; log:\n{}", agent_log());
    println!(
        "READY=1 after {:.1} s, {} pings in 8 s, widest gap {widest:?}, last ping {:?} after the \
         source went silent",
        (ready - start).as_secs_f64(),
        pings.len(),
        late.last()
    );
}
