//! `spotter-agent run`: the studio service. Pipeline, recognition thread, MQTT publisher, and an
//! orderly shutdown on SIGTERM/SIGINT (pipeline to Null, open appearances ended and published,
//! `stopped` status, disconnect).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;
use spotter_protocol::{AgentState, Catalog};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::{run_loop, Output};
use crate::config::AgentConfig;
use crate::mqtt;
use crate::pipeline::{Mode, Pipeline};
use crate::recognizer::Recognizer;
use crate::tracker::Tracker;

/// Runs until the source ends or `shutdown` is cancelled.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // a bad entry or photo is left out and reported, never the whole show
    let (catalog, issues) =
        Catalog::load_lenient(&cfg.analysis.catalog).context("loading the catalog")?;
    for issue in &issues {
        tracing::warn!(problem = %issue, "catalog entry left out");
    }
    let (w, h) = (cfg.analysis.width as usize, cfg.analysis.height as usize);
    let model = cfg.analysis.model.clone();
    let recognizer = tokio::task::spawn_blocking(move || Recognizer::load(&model, &catalog, w, h))
        .await
        .context("recognizer loader panicked")??
        .0;
    let recognizer = Arc::new(recognizer);
    let watch_stop = shutdown.child_token();
    let watcher = crate::catalog_watch::spawn(
        recognizer.clone(),
        cfg.analysis.catalog.clone(),
        cfg.analysis.catalog_poll,
        watch_stop.clone(),
    )
    .context("cannot start the catalog watcher")?;

    // opening the outbox reads and rewrites its log: blocking file I/O
    let (publisher, connection) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || mqtt::connect(&cfg))
            .await
            .context("the outbox opener panicked")??
    };
    let first_seq = publisher.first_seq();
    let tasks = TaskTracker::new();
    let mqtt_shutdown = CancellationToken::new();
    tasks.spawn(mqtt::drive(connection, mqtt_shutdown.clone()));

    let pipeline = Arc::new(Pipeline::build(
        &cfg.source,
        &cfg.upload,
        &cfg.analysis,
        Mode::Live,
    )?);
    let bus = pipeline.pipeline.bus().context("pipeline has no bus")?;
    pipeline.start()?;
    tracing::info!(studio = %cfg.studio, stream = %cfg.stream, source = ?cfg.source, "pipeline started");

    // health on the stats topic every `mqtt.stats_interval`; its own thread, because sysinfo's
    // GPU handles cannot move between the runtime's threads
    let stats_stop = shutdown.child_token();
    let stats_thread = {
        let publisher = publisher.clone();
        let counters = pipeline.counters().clone();
        let stop = stats_stop.clone();
        let every = cfg.mqtt.stats_interval;
        let stream = cfg.stream.clone();
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                let mut machine = crate::stats::Machine::new();
                machine.sample(); // CPU use is measured between samples
                let mut before = counters.reading();
                let mut at = std::time::Instant::now();
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                    let now = std::time::Instant::now();
                    if now - at < every {
                        continue;
                    }
                    let reading = counters.reading();
                    let rates =
                        crate::stats::Rates::between(before, reading, (now - at).as_secs_f64());
                    let stats = crate::stats::assemble(
                        &stream,
                        crate::pipeline::now_utc_ms(),
                        rates,
                        reading,
                        counters.inference_ms(),
                        publisher.outbox_counts(),
                        machine.sample(),
                    );
                    tracing::debug!(?stats, "stats");
                    if publisher.stats(&stats).is_err() {
                        return;
                    }
                    (before, at) = (reading, now);
                }
            })
            .context("cannot start the stats thread")?
    };

    // the analysis thread: frames in, events out over a channel to the publisher
    let (tx, mut rx) = mpsc::unbounded_channel::<Output>();
    let analysis_stop = shutdown.child_token();
    let analysis = {
        let pipeline = pipeline.clone();
        let stop = analysis_stop.clone();
        let tracker_cfg = cfg.tracker.clone();
        let slowdown = cfg.analysis.slowdown;
        if !slowdown.is_zero() {
            tracing::warn!(
                slowdown_ms = slowdown.as_millis() as u64,
                "analysis slowed on purpose (analysis.slowdown_ms)"
            );
        }
        std::thread::Builder::new()
            .name("analysis".into())
            .spawn(move || {
                // continues the stream's sequence across restarts (the bridge compares them)
                let mut tracker = Tracker::new(tracker_cfg, first_seq);
                let stats = run_loop(&pipeline, slowdown, &recognizer, &mut tracker, &stop, |o| {
                    let _ = tx.send(o);
                });
                if stats.frames > 0 {
                    tracing::info!(
                        frames = stats.frames,
                        mean_inference_ms = stats.inference_ms_total / stats.frames as f64,
                        "analysis stopped"
                    );
                }
            })
            .context("cannot start the analysis thread")?
    };

    let forward = {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            while let Some(Output::Events(events, onscreen)) = rx.recv().await {
                for e in &events {
                    tracing::info!(kind = ?e.kind, sku = %e.sku, score = e.score, event_id = %e.event_id, pts_ms = e.pts_ms, "product event");
                    if let Err(err) = publisher.event(e).await {
                        tracing::error!(error = %err, seq = e.seq, "cannot store a product event");
                    }
                }
                if let Err(err) = publisher.onscreen(&onscreen).await {
                    tracing::error!(error = %err, "cannot queue the on-screen snapshot");
                }
            }
        })
    };

    let mut messages = bus.stream();
    let mut outcome = Ok(());
    loop {
        use futures_util::StreamExt as _;
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            m = messages.next() => m,
        };
        let Some(msg) = msg else { break };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                tracing::info!("source ended");
                break;
            }
            gst::MessageView::Error(err) => {
                outcome = Err(anyhow::anyhow!(
                    "{} (from {})",
                    err.error(),
                    err.src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(warning = %w.error(), "pipeline warning");
            }
            gst::MessageView::SegmentDone(_) if pipeline.looping() => {
                tracing::debug!("source looped");
                pipeline.loop_seek()?;
            }
            _ => {}
        }
    }

    tracing::info!("stopping");
    analysis_stop.cancel();
    watch_stop.cancel();
    stats_stop.cancel();
    pipeline.stop();
    let joined =
        tokio::task::spawn_blocking(move || (analysis.join(), watcher.join(), stats_thread.join()))
            .await;
    if !matches!(joined, Ok((Ok(()), Ok(()), Ok(())))) {
        tracing::error!("a worker thread (analysis, catalog watch or stats) panicked");
    }
    // every event the analysis thread sent is forwarded before the goodbye
    let _ = tokio::time::timeout(Duration::from_secs(5), forward).await;
    if let Err(e) = publisher.status(AgentState::Stopped).await {
        tracing::warn!(error = %e, "cannot queue the stopped status");
    }
    publisher.disconnect().await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        mqtt_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        tracing::warn!(
            events = publisher.outbox_counts().depth,
            "the broker did not acknowledge everything within 5 s: the rest stays in the outbox \
             for the next start"
        );
    }
    outcome
}
