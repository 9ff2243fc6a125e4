//! Health of the studio box, published every few seconds on `spotter/v1/<studio>/stats`:
//! frame counters from pad probes on the pipeline, inference time, outbox depth, and the
//! machine's CPU, memory, temperature and GPU load (sysinfo).
//!
//! [`Counters`] are lock-free and written from GStreamer's streaming threads and the analysis
//! thread; [`Rates`] turns two readings into per-second figures and is pure.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use spotter_protocol::{SoundState, SourceState, Stats, UploadState, PROTOCOL_VERSION};

use crate::outbox::OutboxCounts;

/// Frame and timing counters since start.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames out of the source (at the tee).
    pub camera_frames: AtomicU64,
    /// Frames into the analysis branch's leaky queue.
    pub analysis_in: AtomicU64,
    /// Frames out of that queue (the difference was dropped for being late).
    pub analysis_queued_out: AtomicU64,
    /// Frames that reached the appsink (after rate limiting and scaling).
    pub sink_in: AtomicU64,
    /// Frames recognition took from the appsink (the difference was replaced by newer ones).
    pub analysed: AtomicU64,
    /// Encoded bytes handed to the upload's muxer or sink, sound included.
    pub upload_bytes: AtomicU64,
    /// Encoded sound bytes handed to the upload's muxer or sink.
    pub sound_bytes: AtomicU64,
    /// Moving average of the per-frame recognition time, ms, as `f32` bits.
    inference_ms_bits: AtomicU32,
    /// The upload's state, as `UploadState as u8`.
    upload_state: AtomicU8,
    /// The source's state, as `SourceState as u8`.
    source_state: AtomicU8,
    /// The sound device beside the camera failed and is being retried.
    sound_down: AtomicBool,
    /// Pipelines rebuilt after a failure.
    pub restarts: AtomicU64,
}

/// Weight of the newest sample in the inference-time moving average.
const EMA_WEIGHT: f32 = 0.2;

impl Counters {
    /// Adds one frame's recognition time to the moving average.
    pub fn record_inference(&self, ms: f32) {
        let old = f32::from_bits(self.inference_ms_bits.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            ms
        } else {
            old + EMA_WEIGHT * (ms - old)
        };
        self.inference_ms_bits
            .store(new.to_bits(), Ordering::Relaxed);
    }

    /// Records where the upload stands (the service's supervisor knows).
    pub fn set_upload(&self, state: UploadState) {
        let v = match state {
            UploadState::None => 0,
            UploadState::Live => 1,
            UploadState::Down => 2,
        };
        self.upload_state.store(v, Ordering::Relaxed);
    }

    /// Records where the source stands (the service's supervisor knows).
    pub fn set_source(&self, state: SourceState) {
        let v = match state {
            SourceState::Starting => 0,
            SourceState::Live => 1,
            SourceState::Down => 2,
        };
        self.source_state.store(v, Ordering::Relaxed);
    }

    /// Records whether the sound device is off after a failure (the supervisor knows).
    pub fn set_sound_down(&self, down: bool) {
        self.sound_down.store(down, Ordering::Relaxed);
    }

    /// Where the source stands.
    pub fn source(&self) -> SourceState {
        match self.source_state.load(Ordering::Relaxed) {
            1 => SourceState::Live,
            2 => SourceState::Down,
            _ => SourceState::Starting,
        }
    }

    /// Where the upload stands.
    pub fn upload(&self) -> UploadState {
        match self.upload_state.load(Ordering::Relaxed) {
            1 => UploadState::Live,
            2 => UploadState::Down,
            _ => UploadState::None,
        }
    }

    /// The moving average of recognition time, ms.
    pub fn inference_ms(&self) -> f32 {
        f32::from_bits(self.inference_ms_bits.load(Ordering::Relaxed))
    }

    /// Reads the counters.
    pub fn reading(&self) -> Reading {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let dropped_late = get(&self.analysis_in).saturating_sub(get(&self.analysis_queued_out));
        let replaced = get(&self.sink_in).saturating_sub(get(&self.analysed));
        Reading {
            camera_frames: get(&self.camera_frames),
            analysed: get(&self.analysed),
            skipped: dropped_late + replaced,
            upload_bytes: get(&self.upload_bytes),
            sound_bytes: get(&self.sound_bytes),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Frames from the source.
    pub camera_frames: u64,
    /// Frames analysed.
    pub analysed: u64,
    /// Frames the analysis branch dropped because recognition was busy.
    pub skipped: u64,
    /// Encoded bytes sent to the upload.
    pub upload_bytes: u64,
    /// Encoded sound bytes sent to the upload.
    pub sound_bytes: u64,
}

/// Per-second rates between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Source frames a second.
    pub camera_fps: f32,
    /// Analysed frames a second.
    pub analysed_fps: f32,
    /// Upload bitrate, kbit/s.
    pub upload_kbps: f32,
    /// Sound bitrate, kbit/s.
    pub sound_kbps: f32,
}

impl Rates {
    /// Rates from `before` to `after`, `secs` apart (zero rates for a zero interval).
    pub fn between(before: Reading, after: Reading, secs: f64) -> Rates {
        let rate = |a: u64, b: u64| {
            if secs > 0.0 {
                (b.saturating_sub(a) as f64 / secs) as f32
            } else {
                0.0
            }
        };
        Rates {
            camera_fps: rate(before.camera_frames, after.camera_frames),
            analysed_fps: rate(before.analysed, after.analysed),
            upload_kbps: rate(before.upload_bytes, after.upload_bytes) * 8.0 / 1000.0,
            sound_kbps: rate(before.sound_bytes, after.sound_bytes) * 8.0 / 1000.0,
        }
    }
}

/// Reads the machine's CPU, memory, temperature and GPU load between calls.
pub struct Machine {
    system: Option<sysinfo::System>,
    components: Option<sysinfo::Components>,
    gpus: Option<sysinfo::Gpus>,
    pid: Option<sysinfo::Pid>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What [`Machine::sample`] read; `None` where the platform does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineSample {
    /// Whole-machine CPU use, percent.
    pub cpu_percent: f32,
    /// This process's resident memory, bytes.
    pub memory_bytes: u64,
    /// Hottest sensor, Celsius.
    pub temperature_c: Option<f32>,
    /// Busiest GPU, percent (NVIDIA and Jetson where sysinfo can read it).
    pub gpu_percent: Option<f32>,
}

impl Machine {
    /// Opens the platform's sources; any that cannot be read are left out of the stats.
    pub fn new() -> Self {
        Machine {
            system: sysinfo::System::new().ok(),
            components: sysinfo::Components::new_with_refreshed_list().ok(),
            gpus: sysinfo::Gpus::new_with_refreshed_list().ok(),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    /// Reads everything now (CPU use is measured since the previous call).
    pub fn sample(&mut self) -> MachineSample {
        let mut s = MachineSample::default();
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            s.cpu_percent = system.global_cpu_usage();
            if let Some(pid) = self.pid {
                system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
                s.memory_bytes = system.process(pid).map(|p| p.memory()).unwrap_or(0);
            }
        }
        if let Some(components) = &mut self.components {
            components.refresh(false);
            s.temperature_c = components
                .iter()
                .filter_map(|c| c.temperature())
                .filter(|t| t.is_finite())
                .reduce(f32::max);
        }
        if let Some(gpus) = &mut self.gpus {
            gpus.refresh(false);
            s.gpu_percent = gpus.iter().filter_map(|g| g.usage()).reduce(f32::max);
        }
        s
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the pipeline stands, as the supervisor last said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineHealth {
    /// The source.
    pub source: SourceState,
    /// Rebuilds after failures.
    pub restarts: u64,
    /// The upload.
    pub upload: UploadState,
    /// The sound device is off after a failure.
    pub sound_down: bool,
}

impl Counters {
    /// The supervisor's view, for the stats.
    pub fn health(&self) -> PipelineHealth {
        PipelineHealth {
            source: self.source(),
            restarts: self.restarts.load(Ordering::Relaxed),
            upload: self.upload(),
            sound_down: self.sound_down.load(Ordering::Relaxed),
        }
    }
}

/// Assembles the stats payload.
#[allow(clippy::too_many_arguments)] // one figure each, named at the call site
pub fn assemble(
    stream: &str,
    at_ms: u64,
    health: PipelineHealth,
    rates: Rates,
    reading: Reading,
    inference_ms: f32,
    outbox: OutboxCounts,
    machine: MachineSample,
) -> Stats {
    Stats {
        v: PROTOCOL_VERSION,
        stream: stream.to_owned(),
        at_ms,
        camera_fps: rates.camera_fps,
        analysed_fps: rates.analysed_fps,
        skipped_frames: reading.skipped,
        inference_ms,
        source: health.source,
        restarts: health.restarts,
        upload: health.upload,
        upload_kbps: rates.upload_kbps,
        // a failed device is down whatever still drains from the encoder
        sound: if health.sound_down {
            SoundState::Down
        } else if rates.sound_kbps > 0.0 {
            SoundState::Live
        } else {
            SoundState::None
        },
        sound_kbps: rates.sound_kbps,
        outbox_depth: outbox.depth,
        outbox_dropped: outbox.dropped,
        cpu_percent: machine.cpu_percent,
        memory_bytes: machine.memory_bytes,
        temperature_c: machine.temperature_c,
        gpu_percent: machine.gpu_percent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_skipped_frames() {
        let c = Counters::default();
        let before = c.reading();
        c.camera_frames.store(300, Ordering::Relaxed);
        c.analysis_in.store(300, Ordering::Relaxed);
        c.analysis_queued_out.store(290, Ordering::Relaxed); // 10 dropped late
        c.sink_in.store(52, Ordering::Relaxed);
        c.analysed.store(50, Ordering::Relaxed); // 2 replaced in the appsink
        let after = c.reading();
        assert_eq!(after.skipped, 12);
        let r = Rates::between(before, after, 10.0);
        assert_eq!(
            r,
            Rates {
                camera_fps: 30.0,
                analysed_fps: 5.0,
                upload_kbps: 0.0,
                sound_kbps: 0.0
            }
        );
        assert_eq!(Rates::between(before, after, 0.0).camera_fps, 0.0);
        c.upload_bytes.store(250_000, Ordering::Relaxed); // 2 Mbit in 10 s
        assert_eq!(Rates::between(before, c.reading(), 10.0).upload_kbps, 200.0);
        c.set_upload(UploadState::Down);
        assert_eq!(c.upload(), UploadState::Down);
        assert_eq!(c.source(), SourceState::Starting);
        c.set_source(SourceState::Down);
        c.restarts.store(3, Ordering::Relaxed);
        assert_eq!(
            c.health(),
            PipelineHealth {
                source: SourceState::Down,
                restarts: 3,
                upload: UploadState::Down,
                sound_down: false
            }
        );
    }

    #[test]
    fn the_sound_is_live_while_it_flows_and_down_while_its_device_is_retried() {
        let c = Counters::default();
        let sound = |c: &Counters, before: Reading| {
            let s = assemble(
                "main",
                0,
                c.health(),
                Rates::between(before, c.reading(), 1.0),
                c.reading(),
                0.0,
                OutboxCounts::default(),
                MachineSample::default(),
            );
            (s.sound, s.sound_kbps)
        };
        let start = c.reading();
        assert_eq!(sound(&c, start), (SoundState::None, 0.0), "a silent source");
        c.sound_bytes.store(16_000, Ordering::Relaxed); // 128 kbit in 1 s
        assert_eq!(sound(&c, start), (SoundState::Live, 128.0));
        c.set_sound_down(true);
        assert_eq!(
            sound(&c, start).0,
            SoundState::Down,
            "whatever still drains"
        );
        c.set_sound_down(false);
        assert_eq!(
            sound(&c, c.reading()).0,
            SoundState::None,
            "nothing this second"
        );
    }

    #[test]
    fn inference_average_moves_toward_new_samples() {
        let c = Counters::default();
        c.record_inference(50.0);
        assert_eq!(c.inference_ms(), 50.0);
        c.record_inference(100.0);
        assert!((c.inference_ms() - 60.0).abs() < 1e-4);
    }

    #[test]
    fn machine_sample_reads_this_process() {
        let mut m = Machine::new();
        let s = m.sample();
        assert!(s.memory_bytes > 0, "{s:?}");
        assert!((0.0..=100.0 * 64.0).contains(&s.cpu_percent));
    }
}
