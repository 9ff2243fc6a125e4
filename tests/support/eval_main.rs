//! `spotter-eval`: runs `spotter-agent analyze` over a split of the evaluation set and reports
//! recall, precision and time to first detection, with where it fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use spotter_tests::score::{collect, meets_targets, render, score, AgentRun, Scoring, SplitSet};
use spotter_tests::{target_profile_dirs, workspace_root};

/// Scores recognition on a split of the evaluation set made by `spotter-clipgen eval`.
///
/// Runs the real `spotter-agent analyze --catalog <split>/catalog --model MODEL [ARGS] CLIP` on
/// every clip, one after the other (each run uses both cores), keeps each clip's events and log
/// under --out, and prints: recall (catalog appearances that got a `new` event for the right
/// SKU between their first frame and their end + slack), precision (right `new` events over all
/// `new` events: look-alikes, other products, duplicates and empty screens are wrong), and the
/// median and p90 time from an appearance's first frame to its right `new` (the event's pts_ms);
/// then misses and wrong events per clip, recall by condition, and results per product.
/// The same as JSON goes to --out/report.json.
#[derive(Parser, Debug)]
#[command(name = "spotter-eval", version, after_help = EXAMPLES)]
struct Cli {
    /// The evaluation set (from `spotter-clipgen eval --out DIR`).
    #[arg(long, default_value = "target/eval-set")]
    set: PathBuf,
    /// Which split: `test` (the score) or `tune` (for tuning thresholds).
    #[arg(long, default_value = "test", value_parser = ["tune", "test"])]
    split: String,
    /// The agent binary (default: spotter-agent next to this binary, then in target/debug).
    #[arg(long, env = "SPOTTER_AGENT_BIN")]
    agent: Option<PathBuf>,
    /// Model weights (default: $SPOTTER_MODEL or models/weights/efficientnet-lite0.safetensors).
    #[arg(long, env = "SPOTTER_MODEL")]
    model: Option<PathBuf>,
    /// Where events, logs and report.json go (default: <set>/reports/<split>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long after an appearance ends a `new` for it still counts, seconds.
    #[arg(long, default_value_t = 1.0)]
    slack_secs: f64,
    /// Score the events kept by an earlier run instead of running the agent (after changing
    /// only the scoring, or to look again).
    #[arg(long)]
    rescore: bool,
    /// Exit with status 1 when a target is not met (recall, precision, median time).
    #[arg(long)]
    check: bool,
    /// More arguments for `spotter-agent analyze`, after `--` (e.g. `-- --fps 5 --config t.toml`).
    #[arg(last = true)]
    agent_args: Vec<String>,
}

const EXAMPLES: &str = "Examples:
  spotter-clipgen eval --out target/eval-set && spotter-eval --set target/eval-set --split test
  spotter-eval --split tune -- --fps 8
  spotter-eval --split test --rescore --slack-secs 2";

fn find_agent() -> anyhow::Result<PathBuf> {
    let file = format!("spotter-agent{}", std::env::consts::EXE_SUFFIX);
    let dirs = target_profile_dirs();
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "spotter-agent not found in {dirs:?}: build it (`cargo build --workspace`) or \
                 pass --agent"
            )
        })
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let started = Instant::now();
    if !(cli.slack_secs.is_finite() && (0.0..=60.0).contains(&cli.slack_secs)) {
        bail!("--slack-secs must be within 0..=60, got {}", cli.slack_secs);
    }
    let split_dir = cli.set.join(&cli.split);
    let set = SplitSet::open(&split_dir).with_context(|| {
        format!(
            "no complete split in {}: make the set first (`make eval` does, or \
             `spotter-clipgen eval --out {}`)",
            split_dir.display(),
            cli.set.display()
        )
    })?;
    let out = cli
        .out
        .unwrap_or_else(|| cli.set.join("reports").join(&cli.split));
    let agent = if cli.rescore {
        None
    } else {
        let model = cli.model.unwrap_or_else(|| {
            workspace_root().join("models/weights/efficientnet-lite0.safetensors")
        });
        if !model.is_file() {
            bail!(
                "model weights {} not found: run `make setup` or pass --model",
                model.display()
            );
        }
        let agent = match cli.agent {
            Some(a) => a,
            None => find_agent()?,
        };
        Some(AgentRun {
            agent,
            model,
            args: cli.agent_args.clone(),
        })
    };
    tracing::info!(
        split = %cli.split,
        clips = set.manifest.clips.len(),
        agent = ?agent.as_ref().map(|a| a.agent.display().to_string()),
        args = ?cli.agent_args,
        out = %out.display(),
        "scoring"
    );
    let total = set.manifest.clips.len();
    let mut done = 0;
    let inputs = collect(&set, agent.as_ref(), &out, &mut |clip, events, took| {
        done += 1;
        tracing::info!(
            clip,
            events,
            secs = format!("{:.1}", took.as_secs_f32()),
            "clip {done}/{total} done"
        );
    })?;
    let report = score(
        &inputs,
        Scoring {
            slack_ms: (cli.slack_secs * 1000.0).round() as u64,
        },
    );
    let title = format!(
        "spotter-eval: split {}, {} clips, {} catalog and {} look-alike appearances{}",
        cli.split,
        inputs.len(),
        report.catalog_appearances,
        report.lookalike_appearances,
        if cli.agent_args.is_empty() {
            String::new()
        } else {
            format!(", analyze {}", cli.agent_args.join(" "))
        }
    );
    let text = render(&report, &title);
    print!("{text}");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let json_path = out.join("report.json");
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "split": cli.split,
        "agent_args": cli.agent_args,
        "report": report,
    }))
    .context("cannot serialize the report")?;
    std::fs::write(&json_path, json)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let text_path = out.join("report.txt");
    std::fs::write(&text_path, &text)
        .with_context(|| format!("cannot write {}", text_path.display()))?;
    println!(
        "\nwrote {} and {} in {:.0} s",
        json_path.display(),
        text_path.display(),
        started.elapsed().as_secs_f32()
    );
    Ok(meets_targets(&report) || !cli.check)
}

fn main() -> ExitCode {
    spotter_tests::init_tracing();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("spotter-eval: targets not met");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("spotter-eval: {e:#}");
            ExitCode::FAILURE
        }
    }
}
