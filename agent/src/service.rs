//! `spotter-agent run`: the studio service. Pipeline, recognition thread, MQTT publisher, and an
//! orderly shutdown on SIGTERM/SIGINT (pipeline to Null, open appearances ended and published,
//! `stopped` status, disconnect).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;
use spotter_protocol::{AgentState, Catalog, UploadState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::{finish, run_loop, Output};
use crate::config::{AgentConfig, Source, Upload};
use crate::mqtt;
use crate::pipeline::{Mode, Pipeline, PipelineError};
use crate::recognizer::Recognizer;
use crate::stats::Counters;
use crate::tracker::{FrameTime, Tracker};
use spotter_protocol::backoff::Backoff;

/// How one pipeline's run ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// A file played to its end (and does not loop): the show is over.
    SourceFinished,
    /// An error, or the end of a source that should not end: rebuild.
    Failed(String),
    /// A pipeline running without its upload reached the time to try the upload again.
    RetryUpload,
}

/// Runs one pipeline with its analysis thread until it ends; returns the tracker (to carry over)
/// and the last analysed frame's time.
async fn run_pipeline(
    pipeline: Arc<Pipeline>,
    cfg: &AgentConfig,
    recognizer: Arc<Recognizer>,
    mut tracker: Tracker,
    tx: mpsc::UnboundedSender<Output>,
    shutdown: &CancellationToken,
    retry_upload_in: Option<Duration>,
) -> anyhow::Result<(Tracker, Ended, Option<FrameTime>)> {
    let retry_upload = async move {
        match retry_upload_in {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(retry_upload);
    let bus = pipeline.pipeline.bus().context("pipeline has no bus")?;
    let stop = shutdown.child_token();
    let analysis = {
        let (pipeline, stop, slowdown) = (pipeline.clone(), stop.clone(), cfg.analysis.slowdown);
        std::thread::Builder::new()
            .name("analysis".into())
            .spawn(move || {
                let stats = run_loop(&pipeline, slowdown, &recognizer, &mut tracker, &stop, |o| {
                    let _ = tx.send(o);
                });
                if stats.frames > 0 {
                    tracing::info!(
                        frames = stats.frames,
                        mean_inference_ms = stats.inference_ms_total / stats.frames as f64,
                        "analysis of this pipeline stopped"
                    );
                }
                (tracker, stats.last)
            })
            .context("cannot start the analysis thread")?
    };
    let finite_file =
        matches!(&cfg.source, Source::Uri { uri, looping: false, .. } if uri.starts_with("file:"));
    let mut messages = bus.stream();
    let ended = loop {
        use futures_util::StreamExt as _;
        let msg = tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            () = &mut retry_upload => break Ended::RetryUpload,
            m = messages.next() => m,
        };
        let Some(msg) = msg else {
            break Ended::Failed("the pipeline's bus closed".into());
        };
        match msg.view() {
            gst::MessageView::Eos(_) if finite_file => {
                tracing::info!("source ended");
                break Ended::SourceFinished;
            }
            gst::MessageView::Eos(_) => {
                break Ended::Failed("the source ended unexpectedly".into())
            }
            gst::MessageView::Error(err) => {
                break Ended::Failed(format!(
                    "{} (from {})",
                    err.error(),
                    err.src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default()
                ))
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(warning = %w.error(), "pipeline warning");
            }
            gst::MessageView::SegmentDone(_) if pipeline.looping() => {
                tracing::debug!("source looped");
                if let Err(e) = pipeline.loop_seek() {
                    break Ended::Failed(e.to_string());
                }
            }
            _ => {}
        }
    };
    stop.cancel();
    pipeline.stop();
    let (tracker, last) = tokio::task::spawn_blocking(move || analysis.join())
        .await
        .context("joining the analysis thread")?
        .map_err(|_| anyhow::anyhow!("the analysis thread panicked"))?;
    Ok((tracker, ended, last))
}

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

    // frame counters outlive pipeline rebuilds, so the stats stay continuous
    let counters = Arc::new(Counters::default());

    // health on the stats topic every `mqtt.stats_interval`; its own thread, because sysinfo's
    // GPU handles cannot move between the runtime's threads
    let stats_stop = shutdown.child_token();
    let stats_thread = {
        let publisher = publisher.clone();
        let counters = counters.clone();
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
                        counters.upload(),
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

    let (tx, mut rx) = mpsc::unbounded_channel::<Output>();
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

    if !cfg.analysis.slowdown.is_zero() {
        tracing::warn!(
            slowdown_ms = cfg.analysis.slowdown.as_millis() as u64,
            "analysis slowed on purpose (analysis.slowdown_ms)"
        );
    }

    // the supervisor: build and run the pipeline; when it fails (camera unplugged, ingest gone),
    // rebuild it after a backoff, carrying the tracker over, until the show ends
    let mut tracker = Tracker::new(cfg.tracker.clone(), first_seq);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut pts_offset_ms = 0u64;
    let mut last_frame = None;
    // when the upload fails, analysis carries on in a pipeline without it, and the full one is
    // tried again after a backoff; a source failure is retried after a backoff
    let mut upload_down = false;
    let mut upload_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let outcome: anyhow::Result<()> = loop {
        let started = std::time::Instant::now();
        // the next pipeline's running time starts at zero: keep pts_ms increasing
        if let Some(f) = last_frame {
            let f: FrameTime = f;
            pts_offset_ms =
                f.pts_ms + crate::pipeline::now_utc_ms().saturating_sub(f.captured_at_ms);
        }
        let degraded = upload_down && cfg.upload != Upload::None;
        let upload = if degraded {
            Upload::None
        } else {
            cfg.upload.clone()
        };
        let retry_upload_in = degraded.then(|| upload_backoff.next_delay(mqtt::rand_unit()));
        let built = Pipeline::build(
            &cfg.source,
            &upload,
            &cfg.analysis,
            Mode::Live,
            counters.clone(),
            pts_offset_ms,
        );
        let run = match built {
            Err(e @ PipelineError::MissingElement(..)) => break Err(e.into()),
            Err(e) => Err(e.to_string()),
            Ok(p) => {
                let p = Arc::new(p);
                let starting = p.clone();
                match tokio::task::spawn_blocking(move || starting.start()).await {
                    Ok(Ok(())) => {
                        tracing::info!(studio = %cfg.studio, stream = %cfg.stream, source = ?cfg.source, upload = !degraded, "pipeline started");
                        counters.set_upload(match (&upload, degraded) {
                            (_, true) => UploadState::Down,
                            (Upload::None, false) => UploadState::None,
                            _ => UploadState::Live,
                        });
                        let (t, ended, last) = run_pipeline(
                            p,
                            &cfg,
                            recognizer.clone(),
                            tracker,
                            tx.clone(),
                            &shutdown,
                            retry_upload_in,
                        )
                        .await?;
                        tracker = t;
                        last_frame = last.or(last_frame);
                        Ok(ended)
                    }
                    Ok(Err(e)) => {
                        p.stop();
                        Err(e.to_string())
                    }
                    Err(e) => Err(format!("the pipeline starter panicked: {e}")),
                }
            }
        };
        match run {
            Ok(Ended::Shutdown) | Ok(Ended::SourceFinished) => break Ok(()),
            Ok(Ended::RetryUpload) => {
                tracing::info!("trying the upload again");
                upload_down = false;
            }
            Ok(Ended::Failed(reason)) | Err(reason) if cfg.upload != Upload::None && !degraded => {
                // the source or the upload: analysis goes on without the upload meanwhile, and a
                // source failure shows up again in the pipeline without it
                if started.elapsed() > Duration::from_secs(30) {
                    upload_backoff.reset();
                }
                tracing::error!(error = %reason, "pipeline failed; carrying on without the upload while it is retried");
                upload_down = true;
            }
            Ok(Ended::Failed(reason)) | Err(reason) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset(); // it ran well for a while: this is a new failure
                }
                let delay = backoff.next_delay(mqtt::rand_unit());
                tracing::error!(error = %reason, retry_in_ms = delay.as_millis() as u64, "pipeline failed; rebuilding it");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    // the show is over: end what is on screen
    finish(&mut tracker, last_frame, |o| {
        let _ = tx.send(o);
    });
    drop(tx);

    tracing::info!("stopping");
    watch_stop.cancel();
    stats_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || (watcher.join(), stats_thread.join())).await;
    if !matches!(joined, Ok((Ok(()), Ok(())))) {
        tracing::error!("a worker thread (catalog watch or stats) panicked");
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
