//! The fan-out bench's servers as child processes (Mosquitto, the release bridge with a generated
//! config), killed when dropped, and what `/proc` says about any process: CPU time, resident
//! memory, the load average.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a server may take to start listening (the bridge: and to subscribe).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises this process's soft open-files limit to the hard one, as the bridge does at start.
pub fn raise_open_files_limit() -> anyhow::Result<()> {
    spotter_bridge::app::raise_open_files_limit()
        .context("cannot raise the open-files limit to the hard limit")?;
    Ok(())
}

/// The hard open-files limit (`None`: unlimited).
pub fn open_files_hard_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
}

/// A free loopback port (free now; the server binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free loopback port")?
        .port())
}

/// User plus system CPU time of a process, all its threads (`/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the stat file's 14th and 15th fields; `rest` starts at the 3rd
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("{path}: field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_micros(total.saturating_mul(1_000_000) / hz))
}

/// Resident memory of a process, KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("{path}: no VmRSS"))
}

/// The 1, 5 and 15 minute load averages as `/proc/loadavg` writes them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The last `lines` lines of a log file, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        format!(
            "last lines of {}:\n{}",
            path.display(),
            all[from..].join("\n")
        )
    }
}

/// A child process that is killed when dropped (also on an error return or a panic).
#[derive(Debug)]
pub struct Guarded {
    child: Child,
    log: PathBuf,
}

impl Guarded {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if it has exited, with its log's tail.
    fn check_running(&mut self, what: &str) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
            bail!("{what} exited ({status}); {}", tail(&self.log, 20));
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut command: Command, log: PathBuf, what: &str) -> anyhow::Result<Guarded> {
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone().context("cannot share the log file")?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    Ok(Guarded { child, log })
}

/// Mosquitto on a free loopback port, with its own config and log in `dir`.
pub fn start_mosquitto(exe: &Path, dir: &Path) -> anyhow::Result<(Guarded, u16)> {
    if !exe.exists() {
        bail!(
            "{} not found: install Mosquitto (apt-get install mosquitto, or scripts/setup.sh) \
             or pass --mosquitto PATH",
            exe.display()
        );
    }
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    // `user root`: stay the user that started it (it only switches users when started as root)
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )
    .with_context(|| format!("cannot write {}", conf.display()))?;
    let mut command = Command::new(exe);
    command.arg("-c").arg(&conf);
    let mut child = spawn(command, dir.join("mosquitto.log"), "mosquitto")?;
    let until = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        child.check_running("mosquitto")?;
        if Instant::now() > until {
            bail!(
                "mosquitto did not listen on {port} within {START_TIMEOUT:?}; {}",
                tail(&child.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

/// The bridge under test: its process and where it serves.
#[derive(Debug)]
pub struct Bridge {
    /// The process.
    pub process: Guarded,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// What the bench's bridge is configured with.
#[derive(Debug, Clone, Copy)]
pub struct BridgeSettings {
    /// `[viewer] queue`.
    pub queue: usize,
    /// `[viewer] history`.
    pub history: usize,
}

/// The studio and stream the bench uses.
pub const STUDIO: &str = "bench";
/// The stream.
pub const STREAM: &str = "main";
/// The catalog's one product.
pub const SKU: &str = "BENCH-001";

/// A 1x1 PNG: the product's image (viewers' cards carry its content-hashed URL).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// Writes the catalog and the config in `dir` and starts `exe` on them, subscribed to the broker
/// on `mqtt_port`; returns once `/readyz` says it is subscribed.
pub async fn start_bridge(
    exe: &Path,
    dir: &Path,
    mqtt_port: u16,
    settings: BridgeSettings,
) -> anyhow::Result<Bridge> {
    if !exe.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p spotter-bridge)",
            exe.display()
        );
    }
    let catalog = dir.join("catalog");
    std::fs::create_dir_all(&catalog).context("cannot create the catalog directory")?;
    std::fs::write(catalog.join("bench.png"), PNG).context("cannot write the catalog image")?;
    std::fs::write(
        catalog.join("catalog.toml"),
        format!(
            "[[product]]\nsku = \"{SKU}\"\nname = \"Enamel camp mug\"\nprice = \"14.00\"\n\
             currency = \"USD\"\nurl = \"https://shop.example/bench-001\"\n\
             images = [\"bench.png\"]\n"
        ),
    )
    .context("cannot write the catalog")?;
    let port = free_port()?;
    let config = dir.join("bridge.toml");
    // behind a balancer as in production (no per-address limit); chat on without a key
    // (read-only), as a stream without sign-in has it
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
             client_id = \"spotter-bridge-bench-{port}\"\n\n\
             [catalog]\ndir = \"catalog\"\n\n\
             [[stream]]\nstudio = \"{STUDIO}\"\nstream = \"{STREAM}\"\n\n\
             [viewer]\nqueue = {queue}\nhistory = {history}\nmax_per_address = 0\n\n\
             [chat]\nenabled = true\nstate_dir = \"state\"\n",
            queue = settings.queue,
            history = settings.history,
        ),
    )
    .context("cannot write the bridge config")?;
    let mut command = Command::new(exe);
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("SPOTTER_BRIDGE") || key_text == "SPOTTER_CHAT_KEY" {
            command.env_remove(&key);
        }
    }
    let mut process = spawn(command, dir.join("bridge.log"), "the bridge")?;
    let http = SocketAddr::from(([127, 0, 0, 1], port));
    let until = Instant::now() + START_TIMEOUT;
    loop {
        process.check_running("the bridge")?;
        if http_status(http, "/readyz").await == Some(200) {
            return Ok(Bridge { process, http });
        }
        if Instant::now() > until {
            bail!(
                "the bridge was not ready (GET /readyz) within {START_TIMEOUT:?}; {}",
                tail(&process.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `GET path` (HTTP/1.1, read to the close), or `None` if nothing answered.
pub async fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.ok()?;
    let text = String::from_utf8_lossy(&all);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The status of `GET path`, or `None` if nothing answered.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
