//! `make bench-bridge`: the release bridge under viewer load, measured from outside, as issue 22
//! asks: memory per viewer, publish-to-viewer delay and losses under fan-out, and connect rate.
//!
//! The bench starts Mosquitto (the external broker, so its CPU is not the bridge's) and, for each
//! scenario, a fresh `spotter-bridge` with a generated config (no per-address limit, as behind a
//! balancer); it publishes events as the agent does (`ProductEvent`, QoS 1, the stream's events
//! topic), and re-executes itself as worker processes that hold the viewers' WebSockets (a
//! process may have 20,000 open files here), each from its own loopback source addresses.
//!
//! Every event is a one-event appearance (`end`, its own `event_id`), so the on-screen snapshot a
//! joining viewer gets stays empty; the event id is `b<seq>.<publish time in CLOCK_REALTIME
//! microseconds>`, which the bridge passes to viewers untouched, so every viewer measures every
//! event's delay to the microsecond. Events are published only once every viewer of a phase has
//! its `hello`, so each must receive all of them: a missing one is lost, a second copy duplicated.
//! The delay is stamped when a worker reads the socket, so it includes any wait of the worker for
//! a CPU; the table shows the workers' CPU beside the bridge's (on loopback the receiving side
//! also pays for part of the sender's TCP work).
//!
//! Scenarios (`--scenarios memory,fanout,connect`, all by default):
//! - memory: viewers connected in steps (`--memory-steps 5000,10000,19000`), the bridge's
//!   resident memory less what it had before any viewer, per viewer; again after
//!   `--memory-events` events.
//! - fanout: `--viewers` x `--rate` events a second for `--seconds`: delay percentiles, lost,
//!   duplicated, and the bridge's CPU (user + system) per delivered message and in cores.
//! - connect: new viewers at `--connect-rate` a second for `--connect-seconds`, then
//!   `--connect-fast` as fast as they are accepted: accepted a second, handshake latency.
//!
//! `--bridge PATH` (repeatable) measures other builds, each scenario on each in turn, with the
//! ratio last/first in the table. Without `--bench` (as `cargo test --all-targets` runs it) it is
//! a smoke test of a few seconds against the debug bridge that fails on any loss or refusal.

#[path = "fanout/procs.rs"]
mod procs;
#[path = "fanout/wire.rs"]
mod wire;
#[path = "fanout/worker.rs"]
mod worker;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spotter_protocol::topic::{Topic, TopicKind};
use spotter_protocol::{BBox, EventType, ProductEvent, PROTOCOL_VERSION};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{interval, sleep, timeout, MissedTickBehavior};

use procs::{Bridge, BridgeSettings};
use wire::{histogram, merge_histogram, now_us, Report};

/// What the bridge's RSS is left to settle after viewers join or traffic stops.
const SETTLE: Duration = Duration::from_secs(1);

/// The cloud bridge under viewer load: memory per viewer, fan-out delay and losses, connect
/// rate. Run with `make bench-bridge` (flags: `BENCH_ARGS='--viewers 5000 --seconds 20'`).
#[derive(Debug, Clone, Parser)]
#[command(name = "fanout")]
struct Opts {
    /// Scenarios to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "memory,fanout,connect")]
    scenarios: Vec<Scenario>,
    /// The bridge binary (default: the one cargo built with this bench, target/release); repeat
    /// to compare builds: each scenario runs on each in turn.
    #[arg(long = "bridge", value_name = "PATH")]
    bridges: Vec<PathBuf>,
    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// memory: the viewer counts to step through.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,19000")]
    memory_steps: Vec<usize>,
    /// memory: events published (at --rate) before the last measurement.
    #[arg(long, default_value_t = 20)]
    memory_events: u64,
    /// fanout: viewers.
    #[arg(long, default_value_t = 10_000)]
    viewers: usize,
    /// fanout and memory: events published a second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// fanout: seconds of publishing.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// connect: new connections a second asked for.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// connect: seconds at --connect-rate.
    #[arg(long, default_value_t = 10.0)]
    connect_seconds: f64,
    /// connect: then this many opened as fast as the bridge accepts them (0: skip).
    #[arg(long, default_value_t = 10_000)]
    connect_fast: usize,
    /// Most viewers a worker process holds.
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// Handshakes a worker keeps in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// How long viewers may take to receive the last event once it is published.
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Publish events without the agent session, as an older agent does (to measure a bridge
    /// that predates it against a newer one on the same events).
    #[arg(long)]
    without_session: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Opts {
    /// What `cargo test --all-targets` runs: every scenario, small and quick.
    fn smoke() -> Opts {
        Opts {
            scenarios: vec![Scenario::Memory, Scenario::Fanout, Scenario::Connect],
            bridges: Vec::new(),
            mosquitto: PathBuf::from("/usr/sbin/mosquitto"),
            memory_steps: vec![40, 80],
            memory_events: 5,
            viewers: 100,
            rate: 20.0,
            seconds: 1.0,
            connect_rate: 200.0,
            connect_seconds: 0.5,
            connect_fast: 100,
            per_worker: 60,
            concurrency: 32,
            drain_seconds: 10.0,
            without_session: false,
            bench: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Memory,
    Fanout,
    Connect,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Memory => "memory",
            Scenario::Fanout => "fanout",
            Scenario::Connect => "connect",
        }
    }
}

fn main() -> ExitCode {
    if let Some(spec) = std::env::var_os(worker::ENV) {
        return match worker::main(&spec.to_string_lossy()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it
    let smoke = !std::env::args().any(|a| a == "--bench");
    let opts = if smoke { Opts::smoke() } else { Opts::parse() };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = coordinate(opts, smoke) => r,
            e = interrupted() => Err(e),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM; returning drops the children, which kills them.
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return anyhow!("cannot watch for SIGTERM");
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    anyhow!("interrupted: the bridge, Mosquitto and the workers are stopped")
}

/// A progress line on stderr, with the time since the start.
macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {
        eprintln!("[{:6.1}s] {}", $start.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

/// What the scenarios share.
struct Ctx {
    opts: Opts,
    dir: tempfile::TempDir,
    mqtt_port: u16,
    mosquitto_pid: u32,
    publisher: Publisher,
    start: Instant,
    runs: u32,
    next_net: u8,
}

impl Ctx {
    fn run_dir(&mut self) -> anyhow::Result<PathBuf> {
        self.runs += 1;
        let dir = self.dir.path().join(format!("run-{}", self.runs));
        std::fs::create_dir_all(&dir).context("cannot create a run directory")?;
        Ok(dir)
    }

    async fn bridge(&mut self, exe: &Path, rate: f64) -> anyhow::Result<Bridge> {
        let dir = self.run_dir()?;
        // a viewer may fall 20 s of events behind before the bridge drops it
        let settings = BridgeSettings {
            queue: ((rate * 20.0) as usize).max(256),
            history: 1024,
        };
        let bridge = procs::start_bridge(exe, &dir, self.mqtt_port, settings)
            .await
            .with_context(|| format!("bridge {}", exe.display()))?;
        // The show is on before viewers come: one event, so the bridge knows the agent's session
        // (its epoch) and viewers' positions count in it from their `hello`.
        self.publisher.publish(1, 1000.0, self.start).await?;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = procs::http_body(bridge.http, "/metrics")
                .await
                .unwrap_or_default();
            if metrics.contains("spotter_bridge_events_accepted_total 1") {
                break;
            }
            if Instant::now() > until {
                bail!("the bridge did not accept the warm-up event within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress!(
            self.start,
            "bridge {} ready on {} (pid {}, queue {}, history {})",
            exe.display(),
            bridge.http,
            bridge.process.pid(),
            settings.queue,
            settings.history
        );
        Ok(bridge)
    }

    /// Workers enough for `viewers`, at least `min`.
    async fn fleet(
        &mut self,
        bridge: &Bridge,
        viewers: usize,
        min: usize,
    ) -> anyhow::Result<Fleet> {
        let count = fleet_size(&self.opts, viewers).max(min);
        let net = self.next_net;
        self.next_net = if net >= 254 { 1 } else { net + 1 };
        Fleet::spawn(count, bridge, net).await
    }
}

async fn coordinate(opts: Opts, smoke: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    procs::raise_open_files_limit()?;
    let load_start = procs::load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    progress!(
        start,
        "load average {load_start} on {cpus} CPUs; open files per process {}",
        procs::open_files_hard_limit().map_or("unlimited".into(), |n| n.to_string())
    );
    let bridges = if opts.bridges.is_empty() {
        vec![PathBuf::from(env!("CARGO_BIN_EXE_spotter-bridge"))]
    } else {
        opts.bridges.clone()
    };
    let dir = tempfile::Builder::new()
        .prefix("spotter-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let (mosquitto, mqtt_port) = procs::start_mosquitto(&opts.mosquitto, dir.path())?;
    progress!(start, "mosquitto on 127.0.0.1:{mqtt_port}");
    let mut publisher = Publisher::connect(mqtt_port).await?;
    if opts.without_session {
        publisher.session = None;
    }
    let mut ctx = Ctx {
        opts: opts.clone(),
        dir,
        mqtt_port,
        mosquitto_pid: mosquitto.pid(),
        publisher,
        start,
        runs: 0,
        next_net: 1,
    };
    let mut table = Table::default();
    let mut problems = Vec::new();
    for &scenario in &opts.scenarios {
        for (i, exe) in bridges.iter().enumerate() {
            let outcome = match scenario {
                Scenario::Memory => memory(&mut ctx, exe).await,
                Scenario::Fanout => fanout(&mut ctx, exe).await,
                Scenario::Connect => connect(&mut ctx, exe).await,
            }
            .with_context(|| format!("{} scenario", scenario.name()))?;
            for p in &outcome.problems {
                problems.push(format!("{} on {}: {p}", scenario.name(), exe.display()));
            }
            table.add(&outcome.title, i, &outcome.rows);
        }
    }
    drop(mosquitto);

    println!();
    println!(
        "spotter-bridge fan-out bench: load average {load_start} at start, {} at end, {cpus} CPUs",
        procs::load_average()
    );
    for (i, exe) in bridges.iter().enumerate() {
        println!("  bridge {}: {}", column_name(i), exe.display());
    }
    table.print(bridges.len());
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    if smoke && !problems.is_empty() {
        bail!("the smoke run found {} problem(s)", problems.len());
    }
    Ok(())
}

/// One scenario's results on one bridge.
struct Outcome {
    title: String,
    rows: Vec<Row>,
    /// What a user would call a failure: losses, refusals.
    problems: Vec<String>,
}

/// One number of the table.
#[derive(Debug, Clone)]
struct Row {
    label: String,
    value: f64,
    decimals: usize,
}

fn row(label: impl Into<String>, value: f64, decimals: usize) -> Row {
    Row {
        label: label.into(),
        value,
        decimals,
    }
}

/// A row's label and format, and its value on each bridge.
type Line = (Row, Vec<Option<f64>>);

/// Sections of labelled numbers, one column a bridge.
#[derive(Default)]
struct Table {
    sections: Vec<(String, Vec<Line>)>,
}

impl Table {
    fn add(&mut self, title: &str, column: usize, rows: &[Row]) {
        let at = match self.sections.iter().position(|(t, _)| t == title) {
            Some(at) => at,
            None => {
                self.sections.push((title.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let section = &mut self.sections[at].1;
        for r in rows {
            let i = match section.iter().position(|(x, _)| x.label == r.label) {
                Some(i) => i,
                None => {
                    section.push((r.clone(), Vec::new()));
                    section.len() - 1
                }
            };
            let values = &mut section[i].1;
            if values.len() <= column {
                values.resize(column + 1, None);
            }
            values[column] = Some(r.value);
        }
    }

    fn print(&self, columns: usize) {
        let width = 14;
        let mut header = format!("{:52}", "");
        for c in 0..columns {
            header.push_str(&format!("{:>width$}", column_name(c)));
        }
        if columns > 1 {
            header.push_str(&format!(
                "{:>10}",
                format!("{}/A", column_name(columns - 1))
            ));
        }
        for (title, rows) in &self.sections {
            println!();
            println!("{title}");
            println!("{header}");
            for (r, values) in rows {
                let mut line = format!("  {:50}", r.label);
                for c in 0..columns {
                    match values.get(c).copied().flatten() {
                        Some(v) => line.push_str(&format!("{v:>width$.prec$}", prec = r.decimals)),
                        None => line.push_str(&format!("{:>width$}", "-")),
                    }
                }
                if columns > 1 {
                    let first = values.first().copied().flatten();
                    let last = values.get(columns - 1).copied().flatten();
                    if let (Some(a), Some(b)) = (first, last) {
                        if a != 0.0 {
                            line.push_str(&format!("{:>10.2}", b / a));
                        }
                    }
                }
                println!("{line}");
            }
        }
    }
}

fn column_name(i: usize) -> String {
    u8::try_from(i)
        .ok()
        .filter(|&i| i < 26)
        .map_or_else(|| format!("#{i}"), |i| char::from(b'A' + i).to_string())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A snapshot of the CPU time the processes of a run have used.
struct Cpu {
    at: Instant,
    bridge: Duration,
    workers: Duration,
    mosquitto: Duration,
    coordinator: Duration,
}

impl Cpu {
    fn now(ctx: &Ctx, bridge: &Bridge, fleet: &Fleet) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            at: Instant::now(),
            bridge: procs::cpu_time(bridge.process.pid())?,
            workers: fleet.cpu()?,
            mosquitto: procs::cpu_time(ctx.mosquitto_pid)?,
            coordinator: procs::cpu_time(0)?,
        })
    }
}

async fn memory(ctx: &mut Ctx, exe: &Path) -> anyhow::Result<Outcome> {
    let opts = ctx.opts.clone();
    let start = ctx.start;
    let bridge = ctx.bridge(exe, opts.rate).await?;
    let pid = bridge.process.pid();
    sleep(SETTLE).await;
    let before = procs::rss_kib(pid)?;
    progress!(
        start,
        "memory: bridge RSS {:.1} MiB before any viewer",
        before as f64 / 1024.0
    );
    let top = opts.memory_steps.iter().copied().max().unwrap_or(0);
    let mut fleet = ctx.fleet(&bridge, top, 1).await?;
    let mut rows = vec![row(
        "bridge RSS before any viewer (MiB)",
        before as f64 / 1024.0,
        1,
    )];
    let mut problems = Vec::new();
    let (mut asked, mut connected) = (0, 0);
    let per_viewer = |rss: u64, n: u64| rss.saturating_sub(before) as f64 / n.max(1) as f64;
    for &step in &opts.memory_steps {
        let add = step.saturating_sub(asked);
        asked += add;
        let joined = fleet.connect(add, 0.0, opts.concurrency).await?;
        connected += joined.ok;
        sleep(SETTLE).await;
        let rss = procs::rss_kib(pid)?;
        progress!(
            start,
            "memory: {connected} viewers connected ({} refused or failed: {}), bridge RSS {:.1} MiB, \
             {:.2} KiB a viewer",
            joined.failed,
            joined.why,
            rss as f64 / 1024.0,
            per_viewer(rss, connected)
        );
        rows.push(row(
            format!("{step} asked: viewers connected"),
            connected as f64,
            0,
        ));
        rows.push(row(
            format!("{step} asked: KiB a viewer (RSS less before)"),
            per_viewer(rss, connected),
            2,
        ));
        if joined.failed > 0 {
            rows.push(row(
                format!("{step} asked: refused or failed"),
                joined.failed as f64,
                0,
            ));
            problems.push(format!(
                "{} of {add} viewers not connected: {}",
                joined.failed, joined.why
            ));
        }
    }
    if opts.memory_events > 0 {
        let (first, end) = (
            ctx.publisher.next_seq,
            ctx.publisher.next_seq + opts.memory_events,
        );
        fleet.phase(first).await?;
        ctx.publisher
            .publish(opts.memory_events, opts.rate, start)
            .await?;
        let got = fleet.drain(end, opts.drain_seconds).await?;
        sleep(SETTLE).await;
        let rss = procs::rss_kib(pid)?;
        progress!(
            start,
            "memory: after {} events to {} viewers: {} delivered, {} lost, RSS {:.1} MiB, {:.2} KiB a viewer",
            opts.memory_events,
            got.viewers,
            got.delivered,
            got.lost,
            rss as f64 / 1024.0,
            per_viewer(rss, got.open)
        );
        rows.push(row(
            format!("after {} events: KiB a viewer", opts.memory_events),
            per_viewer(rss, got.open),
            2,
        ));
        rows.push(row(
            format!("after {} events: lost", opts.memory_events),
            got.lost as f64,
            0,
        ));
        problems.extend(got.problems());
    }
    fleet.quit().await?;
    Ok(Outcome {
        title: format!(
            "memory: viewers connected in steps, idle; then {} events at {}/s",
            opts.memory_events, opts.rate
        ),
        rows,
        problems,
    })
}

async fn fanout(ctx: &mut Ctx, exe: &Path) -> anyhow::Result<Outcome> {
    let opts = ctx.opts.clone();
    let start = ctx.start;
    let bridge = ctx.bridge(exe, opts.rate).await?;
    let mut fleet = ctx.fleet(&bridge, opts.viewers, 1).await?;
    let joined = fleet.connect(opts.viewers, 0.0, opts.concurrency).await?;
    progress!(
        start,
        "fanout: {} viewers connected in {:.1} s ({} refused or failed: {}) from {} workers",
        joined.ok,
        secs(joined.elapsed),
        joined.failed,
        joined.why,
        fleet.workers.len()
    );
    let count = (opts.rate * opts.seconds).round().max(1.0) as u64;
    let (first, end) = (ctx.publisher.next_seq, ctx.publisher.next_seq + count);
    fleet.phase(first).await?;
    let before = Cpu::now(ctx, &bridge, &fleet)?;
    progress!(
        start,
        "fanout: publishing {count} events at {}/s",
        opts.rate
    );
    ctx.publisher.publish(count, opts.rate, start).await?;
    let got = fleet.drain(end, opts.drain_seconds).await?;
    let after = Cpu::now(ctx, &bridge, &fleet)?;
    let rss = procs::rss_kib(bridge.process.pid())?;
    fleet.quit().await?;
    drop(bridge);

    let wall = after.at - before.at;
    let delivered = got.delivered.max(1) as f64;
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / delivered;
    let cores = |d: Duration| d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    let bridge_cpu = after.bridge.saturating_sub(before.bridge);
    let workers_cpu = after.workers.saturating_sub(before.workers);
    let mosquitto_cpu = after.mosquitto.saturating_sub(before.mosquitto);
    let coordinator_cpu = after.coordinator.saturating_sub(before.coordinator);
    let d = &got.delay;
    progress!(
        start,
        "fanout: {} of {} delivered, {} lost, {} duplicated; delay p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
         bridge {:.2} cores, {:.2} us a message",
        got.delivered,
        got.expected,
        got.lost,
        got.dups,
        ms(d.value_at_quantile(0.5)),
        ms(d.value_at_quantile(0.99)),
        ms(d.max()),
        cores(bridge_cpu),
        per_msg(bridge_cpu)
    );
    let mut problems = got.problems();
    if joined.failed > 0 {
        problems.push(format!(
            "{} viewers not connected: {}",
            joined.failed, joined.why
        ));
    }
    let rows = vec![
        row("viewers connected", joined.ok as f64, 0),
        row("events published", count as f64, 0),
        row(
            "messages expected (viewers x events)",
            got.expected as f64,
            0,
        ),
        row("messages delivered", got.delivered as f64, 0),
        row("lost", got.lost as f64, 0),
        row("duplicated", got.dups as f64, 0),
        row("late (out of order)", got.late as f64, 0),
        row(
            "viewers closed by the bridge",
            (got.viewers - got.open) as f64,
            0,
        ),
        row("delay p50 (ms)", ms(d.value_at_quantile(0.5)), 2),
        row("delay p99 (ms)", ms(d.value_at_quantile(0.99)), 2),
        row("delay p99.9 (ms)", ms(d.value_at_quantile(0.999)), 2),
        row("delay max (ms)", ms(d.max()), 2),
        row(
            "wall time, first publish to last delivery (s)",
            secs(wall),
            1,
        ),
        row("bridge CPU (s)", secs(bridge_cpu), 2),
        row("bridge CPU (cores)", cores(bridge_cpu), 3),
        row(
            "bridge CPU per delivered message (us)",
            per_msg(bridge_cpu),
            2,
        ),
        row("bridge RSS at the end (MiB)", rss as f64 / 1024.0, 1),
        row(
            "bytes per event frame",
            got.event_bytes as f64 / delivered,
            0,
        ),
        row("generator: workers' CPU (cores)", cores(workers_cpu), 3),
        row(
            "generator: workers' CPU per message (us)",
            per_msg(workers_cpu),
            2,
        ),
        row("generator: publisher's CPU (s)", secs(coordinator_cpu), 2),
        row("mosquitto CPU (s)", secs(mosquitto_cpu), 2),
    ];
    Ok(Outcome {
        title: format!(
            "fanout: {} viewers x {}/s for {} s ({} workers)",
            opts.viewers,
            opts.rate,
            opts.seconds,
            fleet_size(&opts, opts.viewers)
        ),
        rows,
        problems,
    })
}

fn fleet_size(opts: &Opts, viewers: usize) -> usize {
    viewers.div_ceil(opts.per_worker.max(1)).max(1)
}

async fn connect(ctx: &mut Ctx, exe: &Path) -> anyhow::Result<Outcome> {
    let opts = ctx.opts.clone();
    let paced = (opts.connect_rate * opts.connect_seconds).round() as usize;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let runs = [
        (
            format!("at {}/s", opts.connect_rate),
            paced,
            opts.connect_rate,
        ),
        ("as fast as possible".to_owned(), opts.connect_fast, 0.0),
    ];
    for (name, count, rate) in runs {
        if count == 0 {
            continue;
        }
        let bridge = ctx.bridge(exe, opts.rate).await?;
        // two workers at least: a handshake is CPU work on the client's side too
        let mut fleet = ctx.fleet(&bridge, count, 2).await?;
        let before = Cpu::now(ctx, &bridge, &fleet)?;
        let got = fleet.connect(count, rate, opts.concurrency).await?;
        let after = Cpu::now(ctx, &bridge, &fleet)?;
        fleet.quit().await?;
        drop(bridge);
        let rate_got = got.ok as f64 / secs(got.elapsed).max(1e-9);
        let bridge_cpu = after.bridge.saturating_sub(before.bridge);
        let h = &got.handshake;
        progress!(
            ctx.start,
            "connect {name}: {} of {count} accepted in {:.1} s = {rate_got:.0}/s; handshake p50 {:.1} ms \
             p99 {:.1} ms; failed {} ({})",
            got.ok,
            secs(got.elapsed),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            got.failed,
            got.why
        );
        rows.push(row(format!("{name}: connections opened"), count as f64, 0));
        rows.push(row(format!("{name}: accepted per second"), rate_got, 0));
        rows.push(row(
            format!("{name}: handshake p50 (ms)"),
            ms(h.value_at_quantile(0.5)),
            2,
        ));
        rows.push(row(
            format!("{name}: handshake p99 (ms)"),
            ms(h.value_at_quantile(0.99)),
            2,
        ));
        rows.push(row(format!("{name}: failed"), got.failed as f64, 0));
        rows.push(row(
            format!("{name}: bridge CPU per connection (us)"),
            secs(bridge_cpu) * 1e6 / got.ok.max(1) as f64,
            1,
        ));
        if got.failed > 0 {
            problems.push(format!(
                "{name}: {} of {count} failed: {}",
                got.failed, got.why
            ));
        }
    }
    Ok(Outcome {
        title: "connect: new viewers (TCP connect + upgrade + hello)".into(),
        rows,
        problems,
    })
}

/// The agent's side: events on the stream's topic, QoS 1, through Mosquitto.
struct Publisher {
    client: AsyncClient,
    topic: String,
    /// The agent session the events' `seq` counts in (one numbering for the whole bench run);
    /// `None` publishes as an agent that predates sessions.
    session: Option<String>,
    next_seq: u64,
}

impl Publisher {
    async fn connect(port: u16) -> anyhow::Result<Publisher> {
        let mut options = MqttOptions::new(
            format!("spotter-bench-agent-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut up = Some(up_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(up) = up.take() {
                            let _ = up.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher: {e} (retrying)");
                        sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        timeout(Duration::from_secs(10), up_rx)
            .await
            .map_err(|_| anyhow!("the publisher could not connect to mosquitto within 10 s"))?
            .map_err(|_| anyhow!("the publisher's event loop stopped"))?;
        let topic = Topic::stream(procs::STUDIO, procs::STREAM, TopicKind::Events)?.to_string();
        Ok(Publisher {
            client,
            topic,
            session: Some(format!(
                "{:016x}",
                now_us() ^ u64::from(std::process::id()) << 40
            )),
            next_seq: 1,
        })
    }

    /// Publishes `count` events at `rate` a second, each stamped as it is handed to the client.
    async fn publish(&mut self, count: u64, rate: f64, start: Instant) -> anyhow::Result<()> {
        let mut pace = interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut said = Instant::now();
        for i in 0..count {
            pace.tick().await;
            let seq = self.next_seq;
            self.next_seq += 1;
            let publish_us = now_us();
            let event = ProductEvent {
                v: PROTOCOL_VERSION,
                kind: EventType::End,
                event_id: wire::event_id(seq, publish_us),
                seq,
                session: self.session.clone(),
                sku: procs::SKU.into(),
                score: 0.875,
                bbox: BBox([0.25, 0.125, 0.75, 0.875]),
                captured_at_ms: publish_us / 1000,
                pts_ms: seq * 200,
            };
            self.client
                .publish(&self.topic, QoS::AtLeastOnce, false, event.encode())
                .await
                .context("the publisher's event loop stopped")?;
            if said.elapsed() >= Duration::from_secs(10) {
                progress!(start, "published {} of {count}", i + 1);
                said = Instant::now();
            }
        }
        Ok(())
    }
}

/// A worker process, from the coordinator's side.
struct Worker {
    id: usize,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("worker {} is gone", self.id))
    }

    async fn read(&mut self, kind: &str) -> anyhow::Result<Report> {
        let line = self
            .lines
            .next_line()
            .await
            .with_context(|| format!("cannot read worker {}", self.id))?
            .ok_or_else(|| anyhow!("worker {} exited (its error is above)", self.id))?;
        let report = Report::parse(&line).map_err(|e| anyhow!("worker {}: {e}", self.id))?;
        if report.kind != kind {
            bail!("worker {} said {line:?}, expected {kind}", self.id);
        }
        Ok(report)
    }
}

/// How a batch of connections went, over all workers.
struct Joined {
    ok: u64,
    failed: u64,
    why: String,
    elapsed: Duration,
    handshake: Histogram<u64>,
}

/// How a phase's events reached the viewers, over all workers.
struct Got {
    viewers: u64,
    open: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    dups: u64,
    late: u64,
    event_bytes: u64,
    complete: bool,
    closed: String,
    delay: Histogram<u64>,
}

impl Got {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.lost > 0 || self.dups > 0 {
            p.push(format!(
                "{} of {} messages lost, {} duplicated",
                self.lost, self.expected, self.dups
            ));
        }
        if self.open < self.viewers {
            p.push(format!(
                "{} viewers closed during the phase: {}",
                self.viewers - self.open,
                self.closed
            ));
        }
        if !self.complete {
            p.push("some viewers did not get the last event within --drain-seconds".into());
        }
        p
    }
}

/// Counts by reason, summed over the workers' `reason:count,...` lists.
#[derive(Default)]
struct Reasons(std::collections::BTreeMap<String, u64>);

impl Reasons {
    fn add(&mut self, list: &str) {
        for item in list.split(',').filter(|i| *i != "-" && !i.is_empty()) {
            let (reason, count) = item
                .rsplit_once(':')
                .and_then(|(r, c)| Some((r, c.parse().ok()?)))
                .unwrap_or((item, 1));
            *self.0.entry(reason.to_owned()).or_default() += count;
        }
    }
}

impl std::fmt::Display for Reasons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        let items: Vec<String> = self.0.iter().map(|(r, c)| format!("{r}:{c}")).collect();
        f.write_str(&items.join(","))
    }
}

/// The worker processes of one run.
struct Fleet {
    workers: Vec<Worker>,
    net: u8,
}

/// `total` split into `parts` nearly equal shares.
fn shares(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

impl Fleet {
    /// `count` workers connecting to `bridge`, worker `i` from source addresses 127.`net`.`i+1`.x.
    async fn spawn(count: usize, bridge: &Bridge, net: u8) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("cannot find this bench's executable")?;
        let mut workers = Vec::with_capacity(count);
        for id in 0..count {
            let mut child = Command::new(&exe)
                .env(
                    worker::ENV,
                    format!("{} /ws/{}/{}", bridge.http, procs::STUDIO, procs::STREAM),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut w = Worker {
                id,
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            };
            w.read("ready").await?;
            workers.push(w);
        }
        Ok(Fleet { workers, net })
    }

    /// Sends each worker its command, then reads each one's report (they work meanwhile).
    async fn all(
        &mut self,
        command: impl Fn(usize) -> Option<String>,
        kind: &str,
    ) -> anyhow::Result<Vec<Report>> {
        let mut asked = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(line) = command(i) {
                w.send(&line).await?;
                asked.push(i);
            }
        }
        let mut reports = Vec::new();
        for i in asked {
            reports.push(self.workers[i].read(kind).await?);
        }
        Ok(reports)
    }

    /// Opens `total` viewers at `rate` a second in all (0: as fast as they are accepted).
    async fn connect(
        &mut self,
        total: usize,
        rate: f64,
        concurrency: usize,
    ) -> anyhow::Result<Joined> {
        let n = self.workers.len();
        let split = shares(total, n);
        let net = self.net;
        let reports = self
            .all(
                |i| {
                    (split[i] > 0).then(|| {
                        format!(
                            "connect {} {} {concurrency} 127.{net}.{}",
                            split[i],
                            rate * split[i] as f64 / total.max(1) as f64,
                            i + 1
                        )
                    })
                },
                "connected",
            )
            .await?;
        let mut joined = Joined {
            ok: 0,
            failed: 0,
            why: String::new(),
            elapsed: Duration::ZERO,
            handshake: histogram(),
        };
        let mut why = Reasons::default();
        for r in &reports {
            let bad = || anyhow!("bad connected report");
            joined.ok += r.num("ok").map_err(|e| bad().context(e))?;
            joined.failed += r.num("failed").map_err(|e| bad().context(e))?;
            joined.elapsed = joined.elapsed.max(Duration::from_micros(
                r.num("elapsed_us").map_err(|e| bad().context(e))?,
            ));
            merge_histogram(&mut joined.handshake, r.text("handshake"))
                .map_err(|e| bad().context(e))?;
            why.add(r.text("why"));
        }
        joined.why = why.to_string();
        Ok(joined)
    }

    /// Starts counting events from `first` at every open viewer.
    async fn phase(&mut self, first: u64) -> anyhow::Result<()> {
        self.all(|_| Some(format!("phase {first}")), "phase")
            .await?;
        Ok(())
    }

    /// Waits for the viewers to have every event before `end`; what they got.
    async fn drain(&mut self, end: u64, wait_secs: f64) -> anyhow::Result<Got> {
        let wait_ms = (wait_secs * 1000.0) as u64;
        let reports = self
            .all(|_| Some(format!("drain {end} {wait_ms}")), "result")
            .await?;
        let mut got = Got {
            viewers: 0,
            open: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            dups: 0,
            late: 0,
            event_bytes: 0,
            complete: true,
            closed: String::new(),
            delay: histogram(),
        };
        let mut closed = Reasons::default();
        for r in &reports {
            let n = |k: &str| r.num(k).map_err(|e| anyhow!("bad result report: {e}"));
            got.viewers += n("viewers")?;
            got.open += n("open")?;
            got.expected += n("expected")?;
            got.delivered += n("delivered")?;
            got.lost += n("lost")?;
            got.dups += n("dups")?;
            got.late += n("late")?;
            got.event_bytes += n("event_bytes")?;
            got.complete &= n("complete")? == 1;
            merge_histogram(&mut got.delay, r.text("delay"))
                .map_err(|e| anyhow!("bad result report: {e}"))?;
            closed.add(r.text("closed"));
        }
        got.closed = closed.to_string();
        Ok(got)
    }

    /// The workers' CPU time so far, together.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let mut total = Duration::ZERO;
        for w in &self.workers {
            let pid = w
                .child
                .id()
                .ok_or_else(|| anyhow!("worker {} has exited", w.id))?;
            total += procs::cpu_time(pid)?;
        }
        Ok(total)
    }

    /// Tells the workers to exit (closing their connections) and waits for them.
    async fn quit(mut self) -> anyhow::Result<()> {
        for w in &mut self.workers {
            w.send("quit").await?;
        }
        for w in &mut self.workers {
            let status = timeout(Duration::from_secs(10), w.child.wait())
                .await
                .map_err(|_| anyhow!("worker {} did not exit within 10 s", w.id))?
                .context("cannot wait for a worker")?;
            if !status.success() {
                bail!("worker {} exited with {status}", w.id);
            }
        }
        Ok(())
    }
}
