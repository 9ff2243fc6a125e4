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
    /// Print a chat token signed with the chat key (found as `run` finds it).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The user id: 1-64 characters of [A-Za-z0-9_.@-].
    #[arg(long, value_name = "ID")]
    user: String,
    /// The display name: 1-32 characters.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Also grant `moderate` (delete messages, ban users); `send` is always granted.
    #[arg(long)]
    moderator: bool,
    /// How long the token lasts: 90s, 15m, 1h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = spotter_bridge::chat::token::parse_ttl)]
    ttl: std::time::Duration,
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
        Some(Command::Token(args)) => token(&args),
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
    let chat = &config.chat;
    if chat.enabled {
        let l = &chat.limits;
        println!(
            "  chat:     on, guests {}, key {}",
            if chat.guests { "on" } else { "off" },
            chat.key_source.as_ref().map_or(
                "none (read-only: nobody can sign in)".to_owned(),
                ToString::to_string
            )
        );
        println!(
            "  chat:     max {} chars, {}/s burst {} a user, {}/s burst {} a stream, history {}, {} blocked words",
            l.max_chars,
            l.user_rate_per_sec,
            l.user_burst,
            l.stream_rate_per_sec,
            l.stream_burst,
            l.history,
            l.blocked_words.len()
        );
        println!("  chat:     bans kept in {}", chat.bans_path().display());
    } else {
        println!("  chat:     off");
    }
    Ok(())
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    use spotter_bridge::chat::token::{sign, verify, Capability, Claims};
    let config = load(&args.config.config)?;
    let key = config.chat.key.as_ref().context(
        "no chat key: set chat.key_file, the chat-key systemd credential or SPOTTER_CHAT_KEY (at least 32 bytes)",
    )?;
    let now_ms = spotter_bridge::chat::now_ms();
    let mut caps = vec![Capability::Send];
    if args.moderator {
        caps.push(Capability::Moderate);
    }
    let claims = Claims {
        sub: args.user.clone(),
        name: args.name.clone(),
        caps,
        exp: (now_ms / 1000).saturating_add(args.ttl.as_secs()),
        iat: Some(now_ms / 1000),
        guest: false,
    };
    let token = sign(key, &claims);
    // The bridge's own check: a bad --user or --name fails here, not at the viewer's page.
    verify(Some(key), &token, now_ms).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("token refused: claim `sub`", "--user")
                .replace("token refused: claim `name`", "--name")
        )
    })?;
    println!("{token}");
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
