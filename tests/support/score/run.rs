//! Running the real `spotter-agent analyze` over every clip of a split, keeping its events and
//! logs, and reading back events kept by an earlier run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spotter_protocol::ProductEvent;

use super::metrics::ClipInput;
use crate::clipgen::eval::{read_eval_truth, read_manifest, Manifest};

/// Why a split could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The set is missing or broken.
    #[error("evaluation set at {}: {source}", dir.display())]
    Set {
        /// The split's directory.
        dir: PathBuf,
        /// What went wrong (boxed: it is large and rare).
        source: Box<crate::clipgen::ClipgenError>,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The agent could not be started or failed on a clip.
    #[error("spotter-agent analyze on {}: {why}", clip.display())]
    Agent {
        /// The clip.
        clip: PathBuf,
        /// What happened, with the end of its log.
        why: String,
    },
    /// The agent printed something that is not an event.
    #[error("{}:{line}: not a product event: {why}", path.display())]
    Event {
        /// The events file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The decoder's reason.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScoreError + '_ {
    move |source| ScoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// The `spotter-agent` binary.
    pub agent: PathBuf,
    /// Model weights.
    pub model: PathBuf,
    /// More arguments for `analyze`, before the clip (e.g. `--fps 5`, `--config FILE`).
    pub args: Vec<String>,
}

/// A split's manifest and directory.
#[derive(Debug, Clone)]
pub struct SplitSet {
    /// The split's directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl SplitSet {
    /// Opens a split made by `spotter-clipgen eval`.
    pub fn open(dir: &Path) -> Result<SplitSet, ScoreError> {
        let manifest = read_manifest(dir).map_err(|source| ScoreError::Set {
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
        Ok(SplitSet {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// The catalog directory.
    pub fn catalog(&self) -> PathBuf {
        self.dir.join(&self.manifest.catalog)
    }
}

/// Where a clip's events and log go.
pub fn events_path(out: &Path, clip_stem: &str) -> PathBuf {
    out.join("events").join(format!("{clip_stem}.jsonl"))
}

fn log_path(out: &Path, clip_stem: &str) -> PathBuf {
    out.join("logs").join(format!("{clip_stem}.log"))
}

fn stem(file: &str) -> &str {
    file.strip_suffix(".mp4").unwrap_or(file)
}

/// Parses JSON lines of product events.
pub fn parse_events(text: &[u8], path: &Path) -> Result<Vec<ProductEvent>, ScoreError> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            ProductEvent::decode(line).map_err(|e| ScoreError::Event {
                path: path.to_owned(),
                line: i + 1,
                why: e.to_string(),
            })
        })
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `analyze` on one clip, writes its events and log under `out`, and returns the events.
pub fn analyze_clip(
    run: &AgentRun,
    set: &SplitSet,
    clip_file: &str,
    out: &Path,
) -> Result<Vec<ProductEvent>, ScoreError> {
    let clip = set.dir.join(clip_file);
    let (events_file, log_file) = (
        events_path(out, stem(clip_file)),
        log_path(out, stem(clip_file)),
    );
    for dir in [events_file.parent(), log_file.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let log = std::fs::File::create(&log_file).map_err(io(&log_file))?;
    let output = Command::new(&run.agent)
        .arg("analyze")
        .arg("--catalog")
        .arg(set.catalog())
        .arg("--model")
        .arg(&run.model)
        .args(&run.args)
        .arg(&clip)
        // The log is for reading in a file, not a terminal.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .map_err(|e| ScoreError::Agent {
            clip: clip.clone(),
            why: format!("cannot start {}: {e}", run.agent.display()),
        })?;
    std::fs::write(&events_file, &output.stdout).map_err(io(&events_file))?;
    if !output.status.success() {
        return Err(ScoreError::Agent {
            clip,
            why: format!(
                "{}; log {}:\n{}",
                output.status,
                log_file.display(),
                tail(&log_file, 15)
            ),
        });
    }
    parse_events(&output.stdout, &events_file)
}

/// Reads the events an earlier run kept for a clip.
pub fn saved_events(out: &Path, clip_file: &str) -> Result<Vec<ProductEvent>, ScoreError> {
    let path = events_path(out, stem(clip_file));
    let text = std::fs::read(&path).map_err(io(&path))?;
    parse_events(&text, &path)
}

/// Gathers each clip's truth and events: from the agent (`run`), or from `out` when `run` is
/// `None`. `progress` hears of each clip done, with how long it took.
pub fn collect(
    set: &SplitSet,
    run: Option<&AgentRun>,
    out: &Path,
    progress: &mut dyn FnMut(&str, usize, Duration),
) -> Result<Vec<ClipInput>, ScoreError> {
    let mut inputs = Vec::with_capacity(set.manifest.clips.len());
    for c in &set.manifest.clips {
        let started = Instant::now();
        let truth_file = set.dir.join(&c.truth);
        let truth = read_eval_truth(&truth_file).map_err(|source| ScoreError::Set {
            dir: set.dir.clone(),
            source: Box::new(source),
        })?;
        let events = match run {
            Some(run) => analyze_clip(run, set, &c.clip, out)?,
            None => saved_events(out, &c.clip)?,
        };
        progress(stem(&c.clip), events.len(), started.elapsed());
        inputs.push(ClipInput {
            name: stem(&c.clip).to_owned(),
            backdrop: Some(c.backdrop.clone()),
            truth,
            events,
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_lines_and_names_a_bad_one() {
        let good = br#"{"v":1,"type":"new","event_id":"e1","seq":1,"sku":"MUG-201","score":0.8,"bbox":[0.1,0.1,0.5,0.5],"captured_at_ms":1,"pts_ms":1200}"#;
        let mut text = good.to_vec();
        text.extend_from_slice(b"\n\n");
        let events = parse_events(&text, Path::new("x.jsonl")).expect("one event");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].pts_ms, 1200);
        text.extend_from_slice(b"INFO not json\n");
        let err = parse_events(&text, Path::new("x.jsonl")).expect_err("log line");
        assert!(err.to_string().contains("x.jsonl:3"), "{err}");
    }
}
