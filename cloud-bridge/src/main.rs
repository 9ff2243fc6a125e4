//! `spotter-bridge`: parses the command line, sets up logging and runs the bridge until SIGINT or
//! SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use spotter_bridge::BridgeConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Spotter's cloud bridge: receives product events over MQTT, enriches them with the catalog
/// and pushes them to viewers over WebSockets, next to the viewer page and product images.
///
/// Without a subcommand it runs the bridge (`run`). --config goes before or after the
/// subcommand (`spotter-bridge --config FILE validate` and `spotter-bridge validate --config FILE`
/// are the same). Every config key can be overridden from the environment as
/// SPOTTER_BRIDGE__<TABLE>__<KEY> (e.g. SPOTTER_BRIDGE__HTTP__LISTEN=0.0.0.0:8080).
///
/// Logs go to stdout; filter with RUST_LOG (default "info"). The embedded broker (rumqttd) logs
/// ERROR on every normal client disconnect and floods when out of files, so it stays silent
/// unless RUST_LOG names it: RUST_LOG=info,rumqttd=warn shows its messages.
///
/// At start the soft open-files limit is raised to the hard one (set LimitNOFILE= in the unit);
/// viewers beyond that limit less a reserve for the broker (or [viewer] max_connections) get
/// HTTP 503. GET /healthz says the process is alive, GET /readyz that it is subscribed to the
/// broker. On SIGTERM it stops accepting, sends every viewer close 1012 (service restart: the
/// page reconnects, to another replica behind a balancer) and exits within 10 s.
#[derive(Debug, Parser)]
#[command(name = "spotter-bridge", version)]
struct Cli {
    /// The TOML config file (see bridge.example.toml).
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        env = "SPOTTER_BRIDGE_CONFIG",
        default_value = "/etc/spotter/bridge.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default when no subcommand is given).
    Run,
    /// Check the config file and the catalog, print a summary, and exit.
    Validate,
    /// Print a chat token signed with the chat key (found as `run` finds it).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
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

/// The log filter: `RUST_LOG` (default "info"), with the embedded broker off unless it names
/// rumqttd itself, so that a unit's `RUST_LOG=info` does not let it flood the journal.
fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => "info,rumqttd=off".to_owned(),
        Some(s) if s.contains("rumqttd") => s.to_owned(),
        Some(s) => format!("{s},rumqttd=off"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(log_filter(rust_log.as_deref())).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG is not a valid filter ({e}): logging at info");
        EnvFilter::new("info,rumqttd=off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();

    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Validate => validate(&cli.config),
        Command::Run => run(&cli.config),
        Command::Token(args) => token(&cli.config, &args),
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

fn token(path: &std::path::Path, args: &TokenArgs) -> anyhow::Result<()> {
    use spotter_bridge::chat::token::{sign, verify, Capability, Claims};
    let config = load(path)?;
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
    match spotter_bridge::app::raise_open_files_limit() {
        Ok(f) => info!(
            soft_was = f.was,
            soft = f.soft,
            hard = f.hard,
            "open-files limit raised (a limit not shown is unlimited)"
        ),
        Err(e) => {
            warn!(error = %e, "cannot raise the open-files limit: viewers are capped by the current one")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn config_before_or_after_the_subcommand() {
        for args in [
            &["spotter-bridge", "--config", "/x.toml", "validate"][..],
            &["spotter-bridge", "validate", "--config", "/x.toml"],
            &["spotter-bridge", "-c", "/x.toml", "run"],
            &["spotter-bridge", "run", "-c", "/x.toml"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.config, PathBuf::from("/x.toml"), "{args:?}");
        }
        let cli = Cli::try_parse_from(["spotter-bridge", "--config", "/x.toml"]).expect("parses");
        assert!(cli.command.is_none(), "no subcommand runs");
        let cli = Cli::try_parse_from([
            "spotter-bridge",
            "token",
            "--user",
            "u",
            "--name",
            "n",
            "--config",
            "/x.toml",
        ])
        .expect("parses");
        assert_eq!(cli.config, PathBuf::from("/x.toml"));
        Cli::command().debug_assert();
    }

    #[test]
    fn rumqttd_stays_quiet_unless_named() {
        assert_eq!(log_filter(None), "info,rumqttd=off");
        assert_eq!(log_filter(Some("")), "info,rumqttd=off");
        assert_eq!(log_filter(Some("info")), "info,rumqttd=off");
        assert_eq!(
            log_filter(Some("debug,spotter_bridge=trace")),
            "debug,spotter_bridge=trace,rumqttd=off"
        );
        assert_eq!(log_filter(Some("info,rumqttd=warn")), "info,rumqttd=warn");
    }
}
