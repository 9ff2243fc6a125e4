//! Wiring: catalog, embedded broker, subscriber, hubs and HTTP server, started together and
//! stopped together on one cancellation token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use spotter_protocol::Catalog;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker;
use crate::chat::Publisher;
use crate::config::BridgeConfig;
use crate::http::admission::{self, Admission, BudgetSource};
use crate::http::serve::Serving;
use crate::http::{router, serve as http_serve, AppState};
use crate::hub::Hubs;
use crate::metrics::Metrics;
use crate::mqtt::chat::{self as chat_broker, ChatIngest};
use crate::mqtt::{subscriber, Ingest};
use crate::shelf::Shelf;

/// How long shutdown waits for connections and tasks to finish: every viewer is sent close 1012
/// at once and each goodbye is bounded by a couple of seconds, so this is the worst case, well
/// inside the unit's `TimeoutStopSec=`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long start-up waits for the subscription before serving HTTP anyway.
pub const STARTUP_SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Sent once the bridge serves HTTP and is subscribed to the broker.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where the HTTP server listens (the real port when `http.listen` had port 0).
    pub http: SocketAddr,
}

/// What `validate` reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Products in the catalog.
    pub products: usize,
    /// Distinct card images.
    pub images: usize,
}

/// Loads the catalog and hashes its images, as `run` does at start.
pub fn load_shelf(dir: &Path) -> anyhow::Result<Shelf> {
    // The catalog's errors repeat their cause in their message: format once, no chain.
    let catalog =
        Catalog::load(dir).map_err(|e| anyhow!("cannot load the catalog (catalog.dir): {e}"))?;
    Shelf::build(&catalog).map_err(|e| anyhow!("cannot prepare the catalog's images: {e}"))
}

/// Checks everything `run` would load, without starting anything.
pub fn check(config: &BridgeConfig) -> anyhow::Result<Summary> {
    let shelf = load_shelf(&config.catalog_dir)?;
    for s in &config.streams {
        if s.video_url
            .as_deref()
            .is_some_and(|u| u.starts_with("/hls/"))
            && config.web.hls_dir.is_none()
        {
            warn!(studio = %s.studio, stream = %s.stream, "video_url points at /hls/ but web.hls_dir is not set");
        }
    }
    Ok(Summary {
        products: shelf.len(),
        images: shelf.image_count(),
    })
}

/// The open-files limit before and after [`raise_open_files_limit`] (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub was: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The hard limit (the most the soft one can be raised to without privileges).
    pub hard: Option<u64>,
}

/// Raises the soft open-files limit to the hard one: systemd starts services at a soft 1,024,
/// which Rust's runtime does not raise, and each viewer holds a socket.
pub fn raise_open_files_limit() -> std::io::Result<OpenFiles> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let found = getrlimit(Resource::Nofile);
    if found.current != found.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: found.maximum,
                maximum: found.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(OpenFiles {
        was: found.current,
        soft: now.current,
        hard: now.maximum,
    })
}

/// The soft open-files limit now (`None`: unlimited).
fn open_files_soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Connections the kernel may hold for the accept loop: a burst of viewers (a show's start, every
/// viewer of a replica that stopped reconnecting at once) waits here instead of having its SYNs
/// dropped and retried a second later. Linux caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// The HTTP listener, with [`LISTEN_BACKLOG`] (`TcpListener::bind` asks for 1024).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the bridge until `shutdown` is cancelled (or a component fails).
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve(config, shutdown, None).await
}

/// Like [`run`], and says on `ready` when it serves HTTP and is subscribed to the broker.
pub async fn run_with_ready(
    config: BridgeConfig,
    shutdown: CancellationToken,
    ready: oneshot::Sender<Ready>,
) -> anyhow::Result<()> {
    serve(config, shutdown, Some(ready)).await
}

async fn serve(
    config: BridgeConfig,
    shutdown: CancellationToken,
    mut ready: Option<oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    let dir = config.catalog_dir.clone();
    let shelf = tokio::task::spawn_blocking(move || load_shelf(&dir))
        .await
        .context("catalog loading task failed")??;
    info!(
        dir = %config.catalog_dir.display(),
        products = shelf.len(),
        images = shelf.image_count(),
        "catalog loaded"
    );
    let shelf = Arc::new(shelf);

    if let Some(addr) = config.mqtt.embedded {
        broker::start(addr).await?;
    }

    let listener = listen(config.http.listen).with_context(|| {
        format!(
            "cannot listen for HTTP on {}: set http.listen to a free address",
            config.http.listen
        )
    })?;
    let http = listener
        .local_addr()
        .context("cannot read the HTTP listener's address")?;

    let metrics = Arc::new(Metrics::default());
    let soft = open_files_soft_limit();
    let (budget, source) = admission::budget(soft.unwrap_or(u64::MAX), config.max_viewers);
    match source {
        BudgetSource::ConfigCapped => warn!(
            max_connections = config.max_viewers,
            open_files = soft,
            viewers = budget,
            "viewer.max_connections is over what the open-files limit leaves for viewers: raise LimitNOFILE="
        ),
        _ => info!(open_files = soft, viewers = budget, from = ?source, "viewer budget"),
    }
    if budget == 0 {
        warn!(
            open_files = soft,
            "the open-files limit leaves no room for viewers: every viewer gets HTTP 503"
        );
    }
    metrics.viewers_budget.store(
        u64::try_from(budget).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    let admission = Admission::with_per_address(budget, config.max_per_address);
    info!(
        per_address = config.max_per_address,
        header_timeout_s = config.http.header_timeout.as_secs(),
        "viewer limits per address (0: none) and for slow clients"
    );
    let hubs = Arc::new(Hubs::with_chat(
        &config.streams,
        &config.viewer,
        &config.chat,
    ));
    let tracker = TaskTracker::new();

    let (subscribed_tx, mut subscribed) = watch::channel(false);
    let connection = subscriber::connect(&config.mqtt);
    let publisher = Publisher::new(connection.0.clone(), subscribed.clone());
    let bans_changed = Arc::new(Notify::new());
    if config.chat.enabled {
        let path = config.chat.bans_path();
        let restored = chat_broker::restore_bans(&path, &hubs, &publisher);
        info!(
            bans = %path.display(),
            restored,
            key = %config.chat.key_source.as_ref().map_or("none: nobody can post".to_owned(), ToString::to_string),
            guests = config.chat.guests,
            "chat on"
        );
        if config.chat.key.is_none() {
            warn!("chat has no key (chat.key_file, the chat-key credential or SPOTTER_CHAT_KEY): viewers can read it but nobody can sign in");
        }
        tracker.spawn(chat_broker::persist_bans(
            hubs.clone(),
            path,
            bans_changed.clone(),
            shutdown.clone(),
        ));
    }
    tracker.spawn(chat_broker::tick(
        hubs.clone(),
        publisher.clone(),
        bans_changed.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(subscriber::run(
        config.mqtt.clone(),
        connection,
        Ingest::new(hubs.clone(), shelf.clone(), metrics.clone()),
        ChatIngest::new(hubs.clone(), bans_changed, metrics.clone()),
        metrics.clone(),
        subscribed_tx,
        shutdown.clone(),
    ));

    // With a broker that answers, start serving once subscribed, so that a healthy bridge is one
    // that receives events; with one that does not, serve anyway after a while (viewers still get
    // the page, and the subscriber keeps retrying).
    let subscribe_wait = tokio::time::timeout(STARTUP_SUBSCRIBE_WAIT, subscribed.wait_for(|s| *s));
    tokio::select! {
        () = shutdown.cancelled() => {}
        waited = subscribe_wait => {
            if !matches!(waited, Ok(Ok(_))) {
                warn!(
                    broker = %config.mqtt.broker,
                    waited_s = STARTUP_SUBSCRIBE_WAIT.as_secs(),
                    "not subscribed to the broker yet, serving viewers anyway"
                );
            }
        }
    }

    let serving = Serving {
        header_timeout: config.http.header_timeout,
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    let app = router(AppState {
        hubs: hubs.clone(),
        shelf,
        metrics,
        web: Arc::new(config.web.clone()),
        viewer: config.viewer,
        chat: Arc::new(config.chat.clone()),
        publisher: config.chat.enabled.then_some(publisher),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        admission,
        subscribed: subscribed.clone(),
    });
    let mut server = tracker.spawn(http_serve::serve(listener, app, serving));
    for hub in hubs.all() {
        let c = &hub.config;
        info!(
            studio = %c.studio,
            stream = %c.stream,
            epoch = %hub.epoch(),
            "viewer page at http://{http}/watch/{}/{}",
            c.studio,
            c.stream
        );
    }
    info!(%http, metrics = %format!("http://{http}/metrics"), "bridge serving");

    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            finished = &mut server => {
                break match finished {
                    // Graceful shutdown finishes the server too; when both are ready at once,
                    // `select!` may poll this branch first, and that is not a failure.
                    Ok(()) if shutdown.is_cancelled() => Ok(()),
                    Ok(()) => Err(anyhow!("the HTTP server stopped on its own")),
                    Err(e) => Err(anyhow!(e).context("the HTTP server task failed")),
                };
            }
            up = subscribed.wait_for(|s| *s), if ready.is_some() => {
                if up.is_ok() {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ready { http });
                    }
                } else {
                    ready = None;
                }
            }
        }
    };

    info!(
        timeout_s = SHUTDOWN_TIMEOUT.as_secs(),
        "shutting down: no new connections, viewers told to reconnect elsewhere (close 1012)"
    );
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            timeout_s = SHUTDOWN_TIMEOUT.as_secs(),
            "some connections did not finish in time, stopping anyway"
        );
    }
    info!("bridge stopped");
    outcome
}
