//! End to end across processes: a clip played in real time by `spotter-agent` reaches a viewer's
//! WebSocket on `spotter-bridge` (through the bridge's embedded MQTT broker) as catalog-enriched
//! cards, on time, once per appearance, and only for what is on screen; and `spotter-agent
//! analyze` reports the same clip as JSON lines.
//!
//! Needs the workspace's binaries built (`cargo build --workspace`) and the model weights
//! (`make setup`); see tests/README.md.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use spotter_protocol::{Card, Catalog, EventType, ProductEvent, ServerMessage, PROTOCOL_VERSION};
use spotter_tests::clipgen::{build_catalog, make_clip, preset_product, ClipSpec, Show};
use spotter_tests::{bin_path, free_port, model_path, wait_for_http_ok, wait_for_tcp, ChildGuard};
use tokio_tungstenite::tungstenite::Message;

/// Shown from 3.0 s to 9.0 s, about 45% of the frame height.
const A: &str = "MUG-001";
/// In the catalog, never on screen.
const B: &str = "GTR-001";
const A_START_MS: u64 = 3_000;
const A_END_MS: u64 = 9_000;
const CLIP_MS: u64 = 12_000;
/// From A appearing on screen to its card on the viewer's socket, at most.
const MAX_CARD_DELAY_MS: u64 = 3_000;
const LOG_LINES: usize = 60;

struct Fixture {
    catalog_dir: PathBuf,
    catalog: Catalog,
    clip: PathBuf,
}

/// The catalog (A and B) and the clip (A only), made once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| match make_fixture() {
        Ok(f) => f,
        Err(e) => panic!("cannot make the test catalog and clip: {e:#}"),
    })
}

fn make_fixture() -> Result<Fixture> {
    // Under target/tmp so `cargo clean` removes it; one directory per run, old ones swept.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spotter-e2e");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("run-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let products = [A, B]
        .map(|sku| preset_product(sku).with_context(|| format!("{sku} is a preset product")))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let catalog_dir = dir.join("catalog");
    let catalog = build_catalog(&catalog_dir, &products)?;
    let clip = dir.join("a-3s-to-9s.mp4");
    let spec = ClipSpec::new(CLIP_MS, vec![Show::new(A, A_START_MS, A_END_MS)]);
    make_clip(&catalog, &spec, &clip)?;
    Ok(Fixture {
        catalog_dir,
        catalog,
        clip,
    })
}

/// These tests load two cores fully: one at a time, so that neither's timing depends on the other.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}

fn toml_str(p: &Path) -> String {
    // TOML basic strings escape like JSON's for the characters a path may hold.
    serde_json::to_string(&p.to_string_lossy()).expect("a string always serializes")
}

/// The children of a test, for their log tails in the failure message.
#[derive(Default)]
struct Procs {
    bridge: Option<ChildGuard>,
    agent: Option<ChildGuard>,
}

impl Procs {
    fn fail(&mut self, err: anyhow::Error) -> ! {
        let mut msg = format!("{err:#}");
        for child in [&mut self.bridge, &mut self.agent].into_iter().flatten() {
            child.try_exit();
            msg.push_str("\n\n");
            msg.push_str(&child.log_tail(LOG_LINES));
        }
        panic!("{msg}");
    }
}

#[test]
fn cards_reach_the_viewer_socket_within_3s_of_the_product_appearing() {
    let agent_bin = bin_path("spotter-agent");
    let bridge_bin = bin_path("spotter-bridge");
    let model = model_path();
    let _serial = one_at_a_time();
    let fx = fixture();
    let mut procs = Procs::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(cards_on_time(
        fx,
        &agent_bin,
        &bridge_bin,
        &model,
        &mut procs,
    )) {
        procs.fail(e);
    }
}

async fn cards_on_time(
    fx: &Fixture,
    agent_bin: &Path,
    bridge_bin: &Path,
    model: &Path,
    procs: &mut Procs,
) -> Result<()> {
    let conf = tempfile::tempdir()?;
    let (http_port, mqtt_port) = (free_port(), free_port());
    let bridge_toml = conf.path().join("bridge.toml");
    std::fs::write(
        &bridge_toml,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
             [mqtt]\nembedded = true\nembedded_listen = \"127.0.0.1:{mqtt_port}\"\n\n\
             [catalog]\ndir = {}\n\n\
             [[stream]]\nstudio = \"test\"\nstream = \"main\"\n",
            toml_str(&fx.catalog_dir)
        ),
    )?;
    let bridge = procs.bridge.insert(ChildGuard::spawn(
        "bridge",
        bridge_bin,
        ["--config".as_ref(), bridge_toml.as_os_str()],
        &[("RUST_LOG", &rust_log())],
    )?);
    let http = format!("127.0.0.1:{http_port}").parse()?;
    wait_for_http_ok(http, "/healthz", Duration::from_secs(30), bridge).context("bridge health")?;
    wait_for_tcp(
        format!("127.0.0.1:{mqtt_port}").parse()?,
        Duration::from_secs(10),
    )
    .context("the bridge's embedded MQTT broker")?;

    let url = format!("ws://127.0.0.1:{http_port}/ws/test/main");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("cannot connect to {url}"))?;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .context("no first message on the viewer socket within 10 s")?
        .context("the bridge closed the viewer socket before saying hello")??;
    let Message::Text(text) = first else {
        bail!("first message is not text: {first:?}");
    };
    match serde_json::from_str::<ServerMessage>(&text)
        .with_context(|| format!("first message is not a ServerMessage: {text}"))?
    {
        ServerMessage::Hello {
            protocol, resync, ..
        } => {
            ensure!(
                protocol == PROTOCOL_VERSION,
                "hello says protocol {protocol}: {text}"
            );
            ensure!(!resync, "a fresh connection was told to resync: {text}");
        }
        other => bail!("first message is not hello: {other:?}"),
    }

    let agent_toml = conf.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "studio = \"test\"\nstream = \"main\"\n\n\
             [source]\nkind = \"uri\"\nuri = {}\nrealtime = true\n\n\
             [analysis]\ncatalog = {}\nmodel = {}\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"spotter-agent-e2e\"\n\n\
             [outbox]\ndir = {}\n",
            serde_json::to_string(&format!("file://{}", fx.clip.display()))?,
            toml_str(&fx.catalog_dir),
            toml_str(model),
            // a fresh outbox: events left by an earlier run must not be replayed into this one
            toml_str(&conf.path().join("outbox")),
        ),
    )?;
    let agent_started_ms = now_ms();
    let agent = procs.agent.insert(ChildGuard::spawn(
        "agent",
        agent_bin,
        ["run".as_ref(), "--config".as_ref(), agent_toml.as_os_str()],
        &[("RUST_LOG", &rust_log())],
    )?);

    // Generous for start-up (model load, catalog index); the delay that matters is checked
    // against the clip's own timeline below.
    let mut deadline = Instant::now() + Duration::from_secs(90);
    let mut deadline_set_by_card = false;
    let mut cards: Vec<(u64, Card)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let next = match tokio::time::timeout(left.min(Duration::from_millis(250)), ws.next()).await
        {
            Err(_) => {
                if let Some(status) = agent.try_exit() {
                    ensure!(status.success(), "the agent exited with {status}");
                    // It finished the file: whatever it published is at most a moment away.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(5));
                }
                continue;
            }
            Ok(None) => bail!("the bridge closed the viewer socket"),
            Ok(Some(msg)) => msg.context("viewer socket error")?,
        };
        let received_ms = now_ms();
        let text = match next {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("the bridge closed the viewer socket: {frame:?}"),
            _ => continue,
        };
        let card = match serde_json::from_str::<ServerMessage>(&text)
            .with_context(|| format!("not a ServerMessage: {text}"))?
        {
            ServerMessage::Event { card, .. } => card,
            ServerMessage::Error { message } => bail!("the bridge sent an error: {message}"),
            // chat history and viewer counts share the socket: not this test's subject
            _ => continue,
        };
        let a_new = card.product.sku == A && card.kind == EventType::New;
        let a_end = card.product.sku == A && card.kind == EventType::End;
        if a_new && !deadline_set_by_card {
            // Until the clip has played out, and a few seconds for the `end`.
            let clip_start_ms = card.captured_at_ms.saturating_sub(card.pts_ms);
            let until = (clip_start_ms + CLIP_MS + 8_000).saturating_sub(received_ms);
            deadline = Instant::now() + Duration::from_millis(until.min(60_000));
            deadline_set_by_card = true;
        }
        cards.push((received_ms, card));
        if a_end {
            break;
        }
    }

    // A polite close: the bridge counts a reset without a closing handshake against the client.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;

    let seen = || {
        cards
            .iter()
            .map(|(at, c)| {
                format!(
                    "\n  at {at}: {:?} {} {} pts {} ms",
                    c.kind, c.product.sku, c.event_id, c.pts_ms
                )
            })
            .collect::<String>()
    };
    if let Some((_, b)) = cards.iter().find(|(_, c)| c.product.sku == B) {
        bail!(
            "got a card for {B}, which is never on screen: {b:?}; all cards:{}",
            seen()
        );
    }
    let a_cards: Vec<&(u64, Card)> = cards.iter().filter(|(_, c)| c.product.sku == A).collect();
    let Some((received_ms, first)) = a_cards.first().copied() else {
        bail!(
            "no card for {A} (on screen {A_START_MS}-{A_END_MS} ms); all cards:{}",
            seen()
        );
    };
    ensure!(
        first.kind == EventType::New,
        "the first card for {A} is {:?}, not new: {first:?}",
        first.kind
    );
    let product = fx.catalog.get(A).context("A is in the catalog")?;
    ensure!(
        first.product.name == product.name
            && first.product.price == product.price
            && first.product.currency == product.currency,
        "card's product {:?} does not match the catalog's {product:?}",
        first.product
    );
    ensure!(
        first.pts_ms >= A_START_MS - 500,
        "{A} was reported at pts {} ms, before it appeared at {A_START_MS} ms",
        first.pts_ms
    );
    let clip_start_ms = first
        .captured_at_ms
        .checked_sub(first.pts_ms)
        .with_context(|| {
            format!(
                "captured_at_ms {} is before pts {} ms",
                first.captured_at_ms, first.pts_ms
            )
        })?;
    ensure!(
        clip_start_ms + 1_000 >= agent_started_ms && clip_start_ms <= *received_ms,
        "captured_at_ms - pts_ms = {clip_start_ms} is not a wall time between the agent's start \
         ({agent_started_ms}) and the card's arrival ({received_ms}): pts are not mapped to capture time"
    );
    let appeared_ms = clip_start_ms + A_START_MS;
    ensure!(
        *received_ms <= appeared_ms + MAX_CARD_DELAY_MS,
        "{A}'s card arrived {} ms after it appeared (limit {MAX_CARD_DELAY_MS} ms)",
        received_ms.saturating_sub(appeared_ms)
    );
    let news = a_cards
        .iter()
        .filter(|(_, c)| c.kind == EventType::New)
        .count();
    ensure!(
        news == 1,
        "{A} appeared once but got {news} `new` cards:{}",
        seen()
    );
    if let Some((_, other)) = a_cards.iter().find(|(_, c)| c.event_id != first.event_id) {
        bail!(
            "one appearance, two event ids: {} and {}:{}",
            first.event_id,
            other.event_id,
            seen()
        );
    }
    ensure!(
        a_cards.iter().any(|(_, c)| c.kind == EventType::End),
        "no `end` for {A} by the end of the clip ({CLIP_MS} ms) plus 8 s:{}",
        seen()
    );
    eprintln!(
        "{A}: `new` from pts {} ms on the viewer socket {} ms after it appeared; cards:{}",
        first.pts_ms,
        received_ms.saturating_sub(appeared_ms),
        seen()
    );
    Ok(())
}

#[test]
fn analyze_prints_json_lines() {
    let agent_bin = bin_path("spotter-agent");
    let model = model_path();
    let _serial = one_at_a_time();
    let fx = fixture();
    let mut procs = Procs::default();
    if let Err(e) = analyze(fx, &agent_bin, &model, &mut procs) {
        procs.fail(e);
    }
}

fn analyze(fx: &Fixture, agent_bin: &Path, model: &Path, procs: &mut Procs) -> Result<()> {
    let agent = procs.agent.insert(ChildGuard::spawn(
        "agent-analyze",
        agent_bin,
        [
            "analyze".as_ref(),
            "--catalog".as_ref(),
            fx.catalog_dir.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            fx.clip.as_os_str(),
        ],
        &[("RUST_LOG", &rust_log())],
    )?);
    let status = agent.wait_timeout(Duration::from_secs(240))?;
    ensure!(status.success(), "analyze exited with {status}");
    let stdout = agent.stdout();
    let mut events = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let event = ProductEvent::decode(line.as_bytes())
            .with_context(|| format!("stdout line {} is not a product event: {line:?}", i + 1))?;
        events.push(event);
    }
    let list = || {
        events
            .iter()
            .map(|e| {
                format!(
                    "\n  {:?} {} {} pts {} ms",
                    e.kind, e.sku, e.event_id, e.pts_ms
                )
            })
            .collect::<String>()
    };
    if let Some(b) = events.iter().find(|e| e.sku == B) {
        bail!(
            "an event for {B}, which is never on screen: {b:?}; all:{}",
            list()
        );
    }
    let news: Vec<&ProductEvent> = events
        .iter()
        .filter(|e| e.sku == A && e.kind == EventType::New)
        .collect();
    ensure!(
        news.len() == 1,
        "{A} appeared once but got {} `new` events:{}",
        news.len(),
        list()
    );
    let pts = news[0].pts_ms;
    ensure!(
        (A_START_MS..=A_START_MS + 1_500).contains(&pts),
        "{A}'s `new` is at pts {pts} ms; it appeared at {A_START_MS} ms, so expected within \
         [{A_START_MS}, {}]",
        A_START_MS + 1_500
    );
    ensure!(
        events
            .iter()
            .any(|e| e.sku == A && e.kind == EventType::End && e.event_id == news[0].event_id),
        "no `end` for {A}'s appearance:{}",
        list()
    );
    eprintln!("analyze:{}", list());
    Ok(())
}
