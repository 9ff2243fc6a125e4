//! `spotter-bridge`: parses the command line, sets up logging and runs the bridge until SIGINT or
//! SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use spotter_bridge::BridgeConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Spotter's cloud bridge: receives product events over MQTT, enriches them with the catalog
/// and pushes them to viewers over WebSockets, next to the viewer page and product images.
///
/// Every config key can be overridden from the environment as SPOTTER_BRIDGE__<TABLE>__<KEY>
/// (e.g. SPOTTER_BRIDGE__HTTP__LISTEN=0.0.0.0:8080). Logs go to stdout; filter with RUST_LOG
/// (default "info,rumqttd=off": the embedded broker logs ERROR on every normal client
/// disconnect; RUST_LOG=info,rumqttd=warn shows its messages).
#[derive(Debug, Parser)]
#[command(
    name = "spotter-bridge",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: ConfigArg,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default when no subcommand is given).
    Run(ConfigArg),
    /// Check the config file and the catalog, print a summary, and exit.
    Validate(ConfigArg),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML config file (see bridge.example.toml).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "SPOTTER_BRIDGE_CONFIG",
        default_value = "/etc/spotter/bridge.toml"
    )]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();

    let result = match cli.command {
        Some(Command::Validate(arg)) => validate(&arg.config),
        Some(Command::Run(arg)) => run(&arg.config),
        None => run(&cli.run.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<BridgeConfig> {
    BridgeConfig::load(path).with_context(|| format!("invalid configuration in {}", path.display()))
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let summary = spotter_bridge::check(&config)?;
    println!("{}: ok", path.display());
    println!("  http:     http://{}", config.http.listen);
    match config.mqtt.embedded {
        Some(addr) => println!(
            "  broker:   embedded on {addr}, subscribing as {:?}",
            config.mqtt.client_id
        ),
        None => println!(
            "  broker:   {}, subscribing as {:?}",
            config.mqtt.broker, config.mqtt.client_id
        ),
    }
    println!(
        "  catalog:  {} ({} products, {} images)",
        config.catalog_dir.display(),
        summary.products,
        summary.images
    );
    for s in &config.streams {
        println!(
            "  stream:   {}/{} video {}",
            s.studio,
            s.stream,
            s.video_url.as_deref().unwrap_or("(none)")
        );
    }
    println!(
        "  viewers:  queue {}, history {}, max message {} bytes",
        config.viewer.queue, config.viewer.history, config.viewer.max_message_bytes
    );
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        spotter_bridge::run(config, shutdown).await
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                error!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
            info!(signal = "SIGINT", "stopping");
        }
        () = terminate => info!(signal = "SIGTERM", "stopping"),
    }
    shutdown.cancel();
}
