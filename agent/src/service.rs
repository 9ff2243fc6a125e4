//! `spotter-agent run`: the studio service. Pipeline, recognition thread, MQTT publisher, and an
//! orderly shutdown on SIGTERM/SIGINT (pipeline to Null, open appearances ended and published,
//! `stopped` status, disconnect).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;
use spotter_protocol::{AgentState, Catalog};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::{finish, run_loop, Output};
use crate::config::{AgentConfig, Source, Upload};
use crate::mqtt;
use crate::pipeline::{Mode, Pipeline, PipelineError};
use crate::recognizer::Recognizer;
use crate::stats::Counters;
use crate::supervisor::{Change, Flow, Part, Supervisor, Watchdog};
use crate::tracker::{FrameTime, Tracker};

/// An upload whose sink has sent nothing for this long (twice that for its first bytes, while it
/// connects) has failed, whatever GStreamer says: it is rebuilt like one that errored.
const UPLOAD_STALL: Duration = Duration::from_secs(10);

/// How one pipeline's run ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// A file played to its end (and does not loop): the show is over.
    SourceFinished,
    /// An error, silence from the source, or the end of a source that should not end: rebuild.
    Failed(PipelineError),
    /// A pipeline running without its upload or its sound reached the time to try them again.
    Retry,
}

/// Logs a state change and publishes the supervisor's view in the stats.
fn report(change: &Change, supervisor: &Supervisor, counters: &Counters) {
    counters.set_source(supervisor.source());
    counters.set_upload(supervisor.upload());
    counters.set_sound_down(supervisor.audio_down());
    counters
        .restarts
        .store(supervisor.restarts(), Ordering::Relaxed);
    let ms = |d: &Duration| d.as_millis() as u64;
    match change {
        Change::SourceLive { after: None } => tracing::info!("source live: frames are flowing"),
        Change::SourceLive { after: Some(d) } => {
            tracing::info!(outage_ms = ms(d), "source back: frames are flowing again")
        }
        Change::SourceLost { reason, retry_in } => tracing::error!(
            error = %reason,
            retry_in_ms = ms(retry_in),
            restarts = supervisor.restarts(),
            "source down; reopening it with backoff"
        ),
        Change::UploadLive { after: None } => tracing::info!("upload live"),
        Change::UploadLive { after: Some(d) } => {
            tracing::info!(outage_ms = ms(d), "upload back")
        }
        Change::UploadLost { reason, retry_in } => tracing::error!(
            error = %reason,
            retry_upload_in_ms = ms(retry_in),
            restarts = supervisor.restarts(),
            "upload lost; carrying on without the upload while it is retried"
        ),
        Change::AudioLive { after } => tracing::info!(outage_ms = ms(after), "sound back"),
        Change::AudioLost { reason, retry_in } => tracing::error!(
            error = %reason,
            retry_audio_in_ms = ms(retry_in),
            restarts = supervisor.restarts(),
            "sound lost; the show goes on silent while the sound device is retried"
        ),
    }
}

/// Runs one pipeline with its analysis thread until it ends; returns the tracker (to carry over)
/// and the last analysed frame's time.
#[allow(clippy::too_many_arguments)] // the pipeline's whole context, named at the one call site
async fn run_pipeline(
    pipeline: Arc<Pipeline>,
    cfg: &AgentConfig,
    recognizer: Arc<Recognizer>,
    mut tracker: Tracker,
    tx: mpsc::UnboundedSender<Output>,
    shutdown: &CancellationToken,
    rebuild_in: Option<Duration>,
    supervisor: &mut Supervisor,
) -> anyhow::Result<(Tracker, Ended, Option<FrameTime>)> {
    let retry = async move {
        match rebuild_in {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(retry);
    let bus = pipeline.pipeline.bus().context("pipeline has no bus")?;
    let stop = shutdown.child_token();
    let analysis = {
        let (pipeline, stop, slowdown) = (pipeline.clone(), stop.clone(), cfg.analysis.slowdown);
        std::thread::Builder::new()
            .name("analysis".into())
            .spawn(move || {
                let stats = run_loop(&pipeline, slowdown, &recognizer, &mut tracker, &stop, |o| {
                    if matches!(o, Output::Events(..)) {
                        let _ = tx.send(o);
                    }
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
    let counters = pipeline.counters().clone();
    let frames = || counters.camera_frames.load(Ordering::Relaxed);
    let mut watchdog = Watchdog::new(cfg.stall_timeout, Instant::now(), frames());
    let mut upload_watch = pipeline
        .upload_sent_bytes()
        .map(|sent| Watchdog::new(UPLOAD_STALL, Instant::now(), sent));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let source_failed = |reason: String| {
        Ended::Failed(PipelineError::Failed {
            part: Part::Source,
            reason,
        })
    };
    let ended = loop {
        use futures_util::StreamExt as _;
        let msg = tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            () = &mut retry => break Ended::Retry,
            _ = tick.tick() => {
                // the upload is live once its sink hands bytes to the network (where the sink
                // says), and lost when it stops doing so
                let delivering = match (&mut upload_watch, pipeline.upload_sent_bytes()) {
                    (Some(w), Some(sent)) => match w.observe(Instant::now(), sent) {
                        Flow::Flowing => true,
                        Flow::Waiting => false,
                        Flow::Stalled => break Ended::Failed(PipelineError::Failed {
                            part: Part::Upload,
                            reason: format!(
                                "the upload sent nothing to the ingest for {} s",
                                w.timeout().as_secs_f64()
                            ),
                        }),
                    },
                    _ => true,
                };
                match watchdog.observe(Instant::now(), frames()) {
                    Flow::Flowing => {
                        if let Some(change) = supervisor.flowing(Instant::now()) {
                            report(&change, supervisor, &counters);
                        }
                        if delivering {
                            if let Some(change) = supervisor.confirm_upload(Instant::now()) {
                                report(&change, supervisor, &counters);
                            }
                        }
                        if let Some(change) = supervisor.confirm_audio(Instant::now()) {
                            report(&change, supervisor, &counters);
                        }
                    }
                    Flow::Waiting => {}
                    Flow::Stalled => break source_failed(format!(
                        "no frame from the source for {} s",
                        watchdog.timeout().as_secs_f64()
                    )),
                }
                continue;
            }
            m = messages.next() => m,
        };
        let Some(msg) = msg else {
            break source_failed("the pipeline's bus closed".into());
        };
        match msg.view() {
            gst::MessageView::Eos(_) if finite_file => {
                tracing::info!("source ended");
                break Ended::SourceFinished;
            }
            gst::MessageView::Eos(_) => break source_failed("the source ended".into()),
            gst::MessageView::Error(err) => {
                break Ended::Failed(crate::pipeline::failure_from(err))
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(warning = %w.error(), "pipeline warning");
            }
            gst::MessageView::SegmentDone(_) if pipeline.looping() => {
                tracing::debug!("source looped");
                if let Err(e) = pipeline.loop_seek() {
                    break Ended::Failed(e);
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
    let recognizer = Arc::new(recognizer.with_zoom(cfg.analysis.zoom));
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
                        counters.health(),
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
            while let Some(o) = rx.recv().await {
                let Output::Events(events, onscreen) = o else {
                    continue;
                };
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

    // the supervisor: build and run the pipeline; when it fails (camera unplugged, network
    // source silent, ingest gone), rebuild it, carrying the tracker over, until the show ends.
    // A lost upload is dropped at once so that analysis goes on, and tried again after a
    // backoff; a lost source is reopened after a backoff.
    let mut tracker =
        Tracker::new(cfg.tracker.clone(), first_seq).with_session(publisher.session().to_owned());
    let mut supervisor = Supervisor::new(cfg.upload != Upload::None);
    if cfg.source.live_audio().is_some() {
        supervisor = supervisor.with_live_audio();
    }
    let mut pts_offset_ms = 0u64;
    let mut last_frame = None;
    let outcome: anyhow::Result<()> = loop {
        // the next pipeline's running time starts at zero: keep pts_ms increasing
        if let Some(f) = last_frame {
            let f: FrameTime = f;
            pts_offset_ms =
                f.pts_ms + crate::pipeline::now_utc_ms().saturating_sub(f.captured_at_ms);
        }
        let plan = supervisor.plan(Instant::now());
        let upload = if plan.with_upload {
            cfg.upload.clone()
        } else {
            Upload::None
        };
        let source = if plan.with_audio {
            cfg.source.clone()
        } else {
            cfg.source.without_live_audio()
        };
        let built = Pipeline::build(
            &source,
            &upload,
            &cfg.analysis,
            Mode::Live,
            counters.clone(),
            pts_offset_ms,
        );
        let run = match built {
            Err(e) if e.is_permanent() => break Err(e.into()),
            Err(e) => Err(e),
            Ok(p) => {
                let p = Arc::new(p);
                let starting = p.clone();
                match tokio::task::spawn_blocking(move || starting.start()).await {
                    Ok(Ok(())) => {
                        tracing::info!(
                            studio = %cfg.studio,
                            stream = %cfg.stream,
                            source = ?cfg.source,
                            upload = plan.with_upload,
                            sound = plan.with_audio,
                            encoder = p.encoder_kind().map(|k| k.factory()),
                            hardware_encoder = p.encoder_kind().is_some_and(|k| k.is_hardware()),
                            "pipeline started"
                        );
                        if let Some(change) = supervisor.started(plan.with_upload, Instant::now()) {
                            report(&change, &supervisor, &counters);
                        }
                        if plan.with_audio {
                            supervisor.started_audio(Instant::now());
                        }
                        let (t, ended, last) = run_pipeline(
                            p,
                            &cfg,
                            recognizer.clone(),
                            tracker,
                            tx.clone(),
                            &shutdown,
                            plan.rebuild_in,
                            &mut supervisor,
                        )
                        .await?;
                        tracker = t;
                        last_frame = last.or(last_frame);
                        Ok(ended)
                    }
                    Ok(Err(e)) => {
                        p.stop();
                        Err(e)
                    }
                    Err(e) => Err(PipelineError::Setup(format!(
                        "the pipeline starter panicked: {e}"
                    ))),
                }
            }
        };
        match run {
            Ok(Ended::Shutdown) | Ok(Ended::SourceFinished) => break Ok(()),
            Ok(Ended::Retry) => tracing::info!("trying the upload or the sound again"),
            Ok(Ended::Failed(e)) | Err(e) => {
                let (wait, change) =
                    supervisor.failed(e.part(), &e.to_string(), Instant::now(), mqtt::rand_unit());
                report(&change, &supervisor, &counters);
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(wait) => {}
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
