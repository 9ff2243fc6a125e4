//! `spotter-agent analyze`: recognition over a video file, offline, as fast as the model goes;
//! one JSON product event per line on stdout and nothing else there (logs go to stderr).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gstreamer::prelude::*;
use spotter_protocol::Catalog;
use tokio_util::sync::CancellationToken;

use crate::analysis::{finish, run_loop, Output};
use crate::config::{AnalysisConfig, Source, TrackerConfig, Upload};
use crate::pipeline::{Mode, Pipeline};
use crate::recognizer::Recognizer;
use crate::tracker::Tracker;

/// What to analyse and how.
#[derive(Debug, Clone)]
pub struct AnalyzeArgs {
    /// The video file.
    pub video: PathBuf,
    /// Catalog, model, rate and size.
    pub analysis: AnalysisConfig,
    /// Tracker thresholds.
    pub tracker: TrackerConfig,
}

fn file_uri(path: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("cannot open video {}", path.display()))?;
    gstreamer::glib::filename_to_uri(&abs, None)
        .map(|u| u.to_string())
        .with_context(|| format!("cannot make a URI of {}", abs.display()))
}

/// Runs the analysis and writes the events to `out`; returns how many were written.
pub fn analyze(
    args: &AnalyzeArgs,
    shutdown: &CancellationToken,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let uri = file_uri(&args.video)?;
    gstreamer::init().context("cannot initialise GStreamer")?;
    let (catalog, issues) =
        Catalog::load_lenient(&args.analysis.catalog).context("loading the catalog")?;
    for issue in &issues {
        tracing::warn!(problem = %issue, "catalog entry left out");
    }
    let (recognizer, _) = Recognizer::load(
        &args.analysis.model,
        &catalog,
        args.analysis.width as usize,
        args.analysis.height as usize,
    )?;
    let recognizer = recognizer.with_zoom(args.analysis.zoom);
    let source = Source::Uri {
        uri,
        realtime: false,
        looping: false,
    };
    let counters = std::sync::Arc::new(crate::stats::Counters::default());
    let pipeline = Pipeline::build(
        &source,
        &Upload::None,
        &args.analysis,
        Mode::Offline,
        counters,
        0,
    )?;
    let bus = pipeline.pipeline.bus().context("pipeline has no bus")?;
    pipeline.start()?;
    let mut tracker = Tracker::new(args.tracker.clone(), 1);
    let mut written = 0usize;
    let mut write_err = None;
    let mut emit = |o| {
        let Output::Events(events, _) = o else {
            return;
        };
        for e in events {
            if write_err.is_some() {
                return;
            }
            let mut line = e.encode();
            line.push(b'\n');
            match out.write_all(&line).and_then(|()| out.flush()) {
                Ok(()) => written += 1,
                Err(err) => write_err = Some(err),
            }
        }
    };
    let stats = run_loop(
        &pipeline,
        args.analysis.slowdown,
        &recognizer,
        &mut tracker,
        shutdown,
        &mut emit,
    );
    finish(&mut tracker, stats.last, &mut emit);
    // an error from the decoder ends the stream early: report it rather than a short result
    let error = bus.iter().find_map(|m| match m.view() {
        gstreamer::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    });
    pipeline.stop();
    if let Some(err) = write_err {
        return Err(err).context("cannot write events to stdout");
    }
    if let Some(err) = error {
        anyhow::bail!("cannot decode {}: {err}", args.video.display());
    }
    if stats.frames == 0 {
        anyhow::bail!("no frame could be analysed in {}", args.video.display());
    }
    tracing::info!(
        frames = stats.frames,
        events = written,
        mean_inference_ms = format!("{:.1}", stats.inference_ms_total / stats.frames as f64),
        "analysis finished"
    );
    Ok(written)
}
