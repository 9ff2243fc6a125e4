//! The agent's configuration: a TOML file, then `SPOTTER_AGENT__*` environment variables
//! (`SPOTTER_AGENT__MQTT__URL=...`), parsed into raw serde structs and validated into typed values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spotter_mqtt_link::{Endpoint, TlsSettings};
use spotter_protocol::topic::validate_segment;

use crate::audio::LiveAudio;
use crate::camera::CameraMode;
use crate::encoder::{EncoderChoice, EncoderKind};

/// Environment prefix for overrides.
pub const ENV_PREFIX: &str = "SPOTTER_AGENT";

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Studio name: a topic segment (`[A-Za-z0-9_-]`, at most 64). For AWS IoT Core, the thing name.
    pub studio: String,
    /// Stream name within the studio.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Where video comes from.
    #[serde(default)]
    pub source: RawSource,
    /// Recognition.
    pub analysis: RawAnalysis,
    /// Product-event lifecycle.
    #[serde(default)]
    pub tracker: RawTracker,
    /// Where events go.
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// Where the stream goes.
    #[serde(default)]
    pub upload: RawUpload,
    /// The durable outbox events wait in until the broker acknowledges them.
    #[serde(default)]
    pub outbox: RawOutbox,
}

fn default_stream() -> String {
    "main".into()
}

/// Video source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// `test` (GStreamer's test pattern), `uri` (file, RTSP, SRT, HTTP...), or `v4l2` (a camera).
    #[serde(default = "default_source_kind")]
    pub kind: String,
    /// For `uri`: what GStreamer should open, e.g. `file:///srv/clip.mp4` or `rtsp://cam/stream`.
    pub uri: Option<String>,
    /// For `v4l2`: the device node (default `/dev/video0`).
    pub device: Option<PathBuf>,
    /// For `v4l2`: the pixel format, as GStreamer names it (`YUY2`, `NV12`...), or `MJPG` for
    /// motion JPEG (USB cameras need it for 1080p30). Default: any raw format.
    pub format: Option<String>,
    /// For `v4l2`: the capture width, pixels. Default: the camera's choice.
    pub width: Option<u32>,
    /// For `v4l2`: the capture height, pixels. Default: the camera's choice.
    pub height: Option<u32>,
    /// For `v4l2`: frames a second (29.97 finds 30000/1001). Default: the camera's choice.
    pub fps: Option<f64>,
    /// A source that delivers no frame for this long (a network stream that stopped sending)
    /// counts as lost and is reopened with backoff; a first frame gets twice as long.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_secs: f64,
    /// Play a file at its own frame rate, as a camera would deliver it (default true).
    #[serde(default = "yes")]
    pub realtime: bool,
    /// Start a file again at its end (for demos).
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// For `v4l2` and `test`: where the sound comes from, uploaded beside the video: `none`
    /// (default), `alsa` (a capture card or the camera's microphone), `pulse` (PulseAudio or
    /// PipeWire) or `test` (a quiet tone). A URI source's sound comes from the stream itself.
    pub audio: Option<String>,
    /// For `audio = "alsa"`: the ALSA device, as `arecord -L` lists it (`hw:CARD=HDMI,DEV=0`);
    /// default `default`. For `pulse`: the source's name (`pactl list short sources`); default
    /// the server's default source.
    pub audio_device: Option<String>,
}

fn default_source_kind() -> String {
    "test".into()
}

fn default_stall_timeout() -> f64 {
    5.0
}

fn yes() -> bool {
    true
}

impl RawSource {
    /// The camera mode asked for, checked for sense (whether the camera can do it is checked
    /// when it is opened).
    fn camera_mode(&self) -> Result<CameraMode, ConfigError> {
        if let Some(f) = &self.format {
            if f.is_empty() || f.len() > 8 || !f.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "source.format",
                    format!("{f:?} is not a pixel format name such as YUY2, NV12 or MJPG"),
                ));
            }
        }
        for (key, v) in [("source.width", self.width), ("source.height", self.height)] {
            if v.is_some_and(|v| !(16..=7680).contains(&v)) {
                return Err(invalid(key, "must be within 16..=7680 pixels"));
            }
        }
        if let Some(fps) = self.fps {
            if !(fps.is_finite() && fps > 0.0 && fps <= 240.0) {
                return Err(invalid(
                    "source.fps",
                    format!("must be within (0, 240], got {fps}"),
                ));
            }
        }
        Ok(CameraMode {
            format: self.format.clone(),
            width: self.width,
            height: self.height,
            fps: self.fps,
        })
    }

    /// The live sound asked for, checked for sense (whether the device opens is checked when
    /// the pipeline starts, and by `doctor`).
    fn live_audio(&self) -> Result<Option<LiveAudio>, ConfigError> {
        let device = self.audio_device.clone();
        if let Some(d) = &device {
            if d.is_empty() || d.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    "source.audio_device",
                    format!("{d:?} is not a device name such as hw:CARD=HDMI,DEV=0"),
                ));
            }
        }
        let audio = match self.audio.as_deref().unwrap_or("none") {
            "none" => None,
            "alsa" => Some(LiveAudio::Alsa {
                device: device.clone().unwrap_or_else(|| "default".into()),
            }),
            "pulse" => Some(LiveAudio::Pulse {
                device: device.clone(),
            }),
            "test" => Some(LiveAudio::Test),
            other => {
                return Err(invalid(
                    "source.audio",
                    format!("{other:?} is not one of \"none\", \"alsa\", \"pulse\", \"test\""),
                ))
            }
        };
        if device.is_some()
            && !matches!(
                audio,
                Some(LiveAudio::Alsa { .. } | LiveAudio::Pulse { .. })
            )
        {
            return Err(invalid(
                "source.audio_device",
                "only used with audio = \"alsa\" or \"pulse\": set source.audio too",
            ));
        }
        Ok(audio)
    }
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            kind: default_source_kind(),
            uri: None,
            device: None,
            format: None,
            width: None,
            height: None,
            fps: None,
            stall_timeout_secs: default_stall_timeout(),
            realtime: true,
            looping: false,
            audio: None,
            audio_device: None,
        }
    }
}

/// Recognition settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    /// The catalog directory (`catalog.toml` plus reference photos).
    pub catalog: PathBuf,
    /// The converted model weights (`make setup` writes models/weights/efficientnet-lite0.safetensors).
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// Frames analysed a second; the rest skip analysis (never the upload).
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Width the analysis branch scales frames to (a multiple of 32).
    #[serde(default = "default_width")]
    pub width: u32,
    /// Height the analysis branch scales frames to (a multiple of 32).
    #[serde(default = "default_height")]
    pub height: u32,
    /// How often the catalog directory is checked for changes (new products, new photos).
    #[serde(default = "default_catalog_poll")]
    pub catalog_poll_secs: f64,
    /// Look at one small region of each analysed frame again at twice the scale, where the
    /// regional descriptors point to a product the whole frame did not verify: products a
    /// sixth of the frame high or thin ones (scissors, a phone, a bag in a corner) are found
    /// there. Turn off only on a machine that cannot keep up with `fps` otherwise.
    #[serde(default = "default_zoom")]
    pub zoom: bool,
    /// Extra time spent on every analysed frame, as a slower model or machine would: for
    /// checking that a slow analysis never costs the upload a frame. Leave at 0 on air.
    #[serde(default)]
    pub slowdown_ms: u64,
}

/// Whether small regions are looked at again by default.
pub fn default_zoom() -> bool {
    true
}

fn default_catalog_poll() -> f64 {
    2.0
}

/// The default model path, relative to the working directory.
pub fn default_model() -> PathBuf {
    PathBuf::from("models/weights/efficientnet-lite0.safetensors")
}
/// Frames analysed a second by default.
pub fn default_fps() -> f64 {
    5.0
}
// 768x448 rather than 512x288: a product at a fifth of the frame's height is 90 pixels tall,
// 5-6 cells of the stride-16 map instead of 3-4; with the 320 reference view
// (recognizer::EXTRA_VIEW_SIDES) and evidence-based confirmation, tune split recall went from
// 0.79 to 1.00 (test split 0.71 to 0.96). It costs 2.2x the pixels: 9.1-10.7 analysed frames a
// second on 2 cores beside a 720p30 upload (3 runs), against 20.3 at 512x288
// (agent/benches/video.rs)
/// Analysis width by default.
pub fn default_width() -> u32 {
    768
}
/// Analysis height by default.
pub fn default_height() -> u32 {
    448
}

/// Tracker thresholds (see `tracker.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracker {
    /// A frame counts as a sighting only at this score or above.
    #[serde(default = "default_min_score")]
    pub min_score: f32,
    /// The sightings' evidence (verified inliers) summed over the window must reach this to
    /// confirm a product.
    #[serde(default = "default_confirm_evidence")]
    pub confirm_evidence: f32,
    /// Frames in the window.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Sightings in the window needed to confirm.
    #[serde(default = "default_min_frames")]
    pub min_frames: usize,
    /// Longest time between `update`s of a product that stays on screen.
    #[serde(default = "default_update_secs")]
    pub update_interval_secs: f64,
    /// How long a product must be gone before its appearance ends.
    #[serde(default = "default_end_secs")]
    pub end_after_secs: f64,
}

// Scores are verified inliers n as n / (n + 8) (recognizer::inlier_score): 0.33 is 4 inliers.
// Tuned on the tune split: two frames of 7 inliers confirm at once, a small or half-hidden
// product at 4 or 5 inliers if it holds for 3 or 4 frames of 5. Over 10 frames, a look-alike
// suitcase's scattered 4s and 5s added up to 17 (a wrong `new`); over 5 they reach 9
fn default_min_score() -> f32 {
    0.33
}
fn default_confirm_evidence() -> f32 {
    14.0
}
fn default_window() -> usize {
    5
}
fn default_min_frames() -> usize {
    2
}
fn default_update_secs() -> f64 {
    5.0
}
// 3 s, not 1.5: a hand over the product or a fast move can hide it for longer than 1.5 s, and
// the appearance then came back as a second `new` (2 of 29 on the tune split; none at 3 s)
fn default_end_secs() -> f64 {
    3.0
}

impl Default for RawTracker {
    fn default() -> Self {
        RawTracker {
            min_score: default_min_score(),
            confirm_evidence: default_confirm_evidence(),
            window: default_window(),
            min_frames: default_min_frames(),
            update_interval_secs: default_update_secs(),
            end_after_secs: default_end_secs(),
        }
    }
}

/// MQTT connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// The broker: `mqtt://` or `tcp://` (plain, port 1883 by default), `mqtts://` or `ssl://`
    /// (TLS, port 8883 by default), then `host[:port]`; no path, query or credentials.
    #[serde(default = "default_mqtt_url")]
    pub url: String,
    /// Client id (for AWS IoT Core, the thing name); default `spotter-<studio>-<stream>`.
    pub client_id: Option<String>,
    /// Keep-alive interval.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// How often health (frame rates, inference time, outbox, CPU...) goes to the stats topic.
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: f64,
    /// For `mqtts://`: the CA certificate(s) the broker's certificate must chain to (PEM).
    /// AWS IoT Core: Amazon Root CA 1. Unset: the systemd credential `mqtt-ca`, else the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// For `mqtts://`: this device's certificate (PEM), for mutual TLS. Unset: the systemd
    /// credential `mqtt-cert`, if any.
    pub cert_file: Option<PathBuf>,
    /// For `mqtts://`: this device's private key (PEM). A secret: keep it in the systemd
    /// credential `mqtt-key` (read when this is unset), not beside this file.
    pub key_file: Option<PathBuf>,
    /// For `mqtts://`: the ALPN protocol to offer; by default `x-amzn-mqtt-ca` on port 443
    /// (AWS IoT Core) and none elsewhere; `""` offers none.
    pub alpn: Option<String>,
    /// Most publishes a second on the connection (AWS IoT Core's limit is 100); a backlog
    /// replayed after an outage is paced to it.
    #[serde(default = "default_max_rate")]
    pub max_publishes_per_sec: u32,
}

fn default_max_rate() -> u32 {
    100
}

fn default_stats_interval() -> f64 {
    10.0
}

fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_keepalive() -> u64 {
    15
}

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            url: default_mqtt_url(),
            client_id: None,
            keepalive_secs: default_keepalive(),
            stats_interval_secs: default_stats_interval(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            alpn: None,
            max_publishes_per_sec: default_max_rate(),
        }
    }
}

/// The durable outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// Directory of the outbox; one per stream (two agents cannot share one). Default
    /// `.spotter/outbox/<studio>/<stream>`, relative to the working directory.
    pub dir: Option<PathBuf>,
    /// Bound on the stored events, in bytes; beyond it the oldest are dropped (counted, logged).
    /// An event takes about 220 bytes: the default 16 MiB holds about 75,000 (hours of events).
    #[serde(default = "default_outbox_max_bytes")]
    pub max_bytes: u64,
}

fn default_outbox_max_bytes() -> u64 {
    16 << 20
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            dir: None,
            max_bytes: default_outbox_max_bytes(),
        }
    }
}

/// Smallest `outbox.max_bytes`: room for a dozen of the largest events.
pub const MIN_OUTBOX_BYTES: u64 = 64 << 10;
/// Largest `outbox.max_bytes` (the outbox also keeps its events in memory).
pub const MAX_OUTBOX_BYTES: u64 = 1 << 30;

/// Where the stream goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    /// `none` (analysis only), `rtmp` (Amazon IVS or any RTMP/RTMPS ingest), `srt` (an SRT
    /// ingest, MPEG-TS over SRT) or `hls` (a local HLS directory, for the demo).
    #[serde(default = "default_upload_kind")]
    pub kind: String,
    /// For `hls`: the directory to write `index.m3u8` and segments into.
    pub hls_dir: Option<PathBuf>,
    /// For `rtmp`: the ingest URL without the stream key, e.g.
    /// `rtmps://<ingest-endpoint>:443/app/` (IVS). For `srt`: `srt://host:port`, with
    /// `?streamid=...` where the ingest wants one that is not a secret.
    pub url: Option<String>,
    /// For `rtmp`: a file holding the stream key (a secret: never put the key in this file).
    /// Without it the key comes from SPOTTER_STREAM_KEY, or from the systemd credential
    /// `stream-key` (LoadCredential=stream-key:/path). For `srt`: optional; when set, the key
    /// is sent as the SRT stream id.
    pub stream_key_file: Option<PathBuf>,
    /// For `srt`: a file holding the encryption passphrase (10 to 79 characters), if the ingest
    /// wants one (IVS does unless the channel allows insecure ingest). A secret.
    pub passphrase_file: Option<PathBuf>,
    /// The H.264 encoder: `auto` (a hardware encoder where present: `nvv4l2h264enc` on Jetson,
    /// `nvh264enc` on NVIDIA GPUs, `vah264enc` or `vaapih264enc` with VA-API; `x264enc`
    /// otherwise), or one of those names to force it.
    #[serde(default = "default_encoder")]
    pub encoder: String,
    /// Encoder bitrate, kbit/s.
    #[serde(default = "default_bitrate")]
    pub bitrate_kbps: u32,
    /// Keyframe interval (IVS asks for 2 s).
    #[serde(default = "default_idr")]
    pub keyframe_interval_secs: u32,
    /// Put each frame's capture time into the uploaded H.264 (an SEI message, about 34 bytes a
    /// frame), so that the viewer page shows each product card with the frame it was recognised
    /// in, however late its player is. Players ignore it; turn it off only for an ingest that
    /// refuses SEI.
    #[serde(default = "default_true")]
    pub capture_stamps: bool,
}

fn default_upload_kind() -> String {
    "none".into()
}
fn default_encoder() -> String {
    "auto".into()
}
fn default_bitrate() -> u32 {
    2500
}
fn default_idr() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl Default for RawUpload {
    fn default() -> Self {
        RawUpload {
            kind: default_upload_kind(),
            hls_dir: None,
            url: None,
            stream_key_file: None,
            passphrase_file: None,
            encoder: default_encoder(),
            bitrate_kbps: default_bitrate(),
            keyframe_interval_secs: default_idr(),
            capture_stamps: true,
        }
    }
}

/// Where frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// GStreamer's moving test pattern.
    Test {
        /// Sound to upload beside it.
        audio: Option<LiveAudio>,
    },
    /// Anything `uridecodebin` opens.
    Uri {
        /// The URI.
        uri: String,
        /// Pace a file at its frame rate.
        realtime: bool,
        /// Loop at the end.
        looping: bool,
    },
    /// A V4L2 camera.
    V4l2 {
        /// Device node.
        device: PathBuf,
        /// The mode asked of it.
        mode: CameraMode,
        /// Sound to upload beside it (a camera has none of its own in V4L2).
        audio: Option<LiveAudio>,
    },
}

impl Source {
    /// The live sound configured beside the video, if any (a URI source's own is not).
    pub fn live_audio(&self) -> Option<&LiveAudio> {
        match self {
            Source::Test { audio } | Source::V4l2 { audio, .. } => audio.as_ref(),
            Source::Uri { .. } => None,
        }
    }

    /// The same source without its live sound (while the capture device is being retried).
    pub fn without_live_audio(&self) -> Source {
        let mut s = self.clone();
        if let Source::Test { audio } | Source::V4l2 { audio, .. } = &mut s {
            *audio = None;
        }
        s
    }
}

/// Where the encoded stream goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Upload {
    /// Nowhere: analysis only.
    None,
    /// A local HLS directory.
    Hls {
        /// Output directory.
        dir: PathBuf,
        /// kbit/s.
        bitrate_kbps: u32,
        /// Seconds between IDR frames.
        keyframe_interval_secs: u32,
        /// The H.264 encoder.
        encoder: EncoderChoice,
        /// Each frame carries its capture time (an SEI message).
        capture_stamps: bool,
    },
    /// An RTMP or RTMPS ingest (Amazon IVS).
    Rtmp {
        /// Ingest URL, without the key.
        url: String,
        /// The stream key.
        key: StreamKey,
        /// kbit/s (constant bitrate).
        bitrate_kbps: u32,
        /// Seconds between IDR frames.
        keyframe_interval_secs: u32,
        /// The H.264 encoder.
        encoder: EncoderChoice,
        /// Each frame carries its capture time (an SEI message).
        capture_stamps: bool,
    },
    /// An SRT ingest (caller mode), MPEG-TS inside.
    Srt {
        /// `srt://host:port[?query]`.
        uri: String,
        /// Sent as the stream id, when set.
        key: Option<StreamKey>,
        /// Encryption passphrase, when set.
        passphrase: Option<StreamKey>,
        /// kbit/s (constant bitrate).
        bitrate_kbps: u32,
        /// Seconds between IDR frames.
        keyframe_interval_secs: u32,
        /// The H.264 encoder.
        encoder: EncoderChoice,
        /// Each frame carries its capture time (an SEI message).
        capture_stamps: bool,
    },
}

impl Upload {
    /// The encoder choice, for an upload that encodes.
    pub fn encoder(&self) -> Option<EncoderChoice> {
        match self {
            Upload::None => None,
            Upload::Hls { encoder, .. }
            | Upload::Rtmp { encoder, .. }
            | Upload::Srt { encoder, .. } => Some(*encoder),
        }
    }

    /// Whether the uploaded frames carry their capture time (never without an upload).
    pub fn capture_stamps(&self) -> bool {
        match self {
            Upload::None => false,
            Upload::Hls { capture_stamps, .. }
            | Upload::Rtmp { capture_stamps, .. }
            | Upload::Srt { capture_stamps, .. } => *capture_stamps,
        }
    }
}

/// Parses `upload.encoder`.
fn encoder_choice(name: &str) -> Result<EncoderChoice, ConfigError> {
    if name == "auto" {
        return Ok(EncoderChoice::Auto);
    }
    EncoderKind::from_factory(name)
        .map(EncoderChoice::Force)
        .ok_or_else(|| {
            let names: Vec<&str> = EncoderKind::PREFERENCE
                .iter()
                .map(|k| k.factory())
                .collect();
            invalid(
                "upload.encoder",
                format!("{name:?} is not \"auto\" or one of {}", names.join(", ")),
            )
        })
}

/// The ingest's stream key: a secret, so `Debug` never shows it (logs, errors, panics).
#[derive(Clone, PartialEq, Eq)]
pub struct StreamKey(String);

impl StreamKey {
    /// The key itself, for the sink's location only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(***)")
    }
}

/// Finds the stream key: `upload.stream_key_file`, then SPOTTER_STREAM_KEY, then the systemd
/// credential `stream-key`.
fn stream_key(file: Option<&Path>) -> Result<StreamKey, ConfigError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|k| k.trim().to_owned())
            .map_err(|e| {
                invalid(
                    "upload.stream_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })
    };
    let key = if let Some(path) = file {
        read(path)?
    } else if let Ok(k) = std::env::var("SPOTTER_STREAM_KEY") {
        k.trim().to_owned()
    } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        read(&Path::new(&dir).join("stream-key"))?
    } else {
        return Err(invalid(
            "upload.stream_key_file",
            "no stream key: set upload.stream_key_file, SPOTTER_STREAM_KEY, or LoadCredential=stream-key",
        ));
    };
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "upload.stream_key_file",
            "the stream key is empty or has spaces or control characters",
        ));
    }
    Ok(StreamKey(key))
}

/// Reads an SRT passphrase from `path` (SRT takes 10 to 79 characters).
fn passphrase(path: &Path) -> Result<StreamKey, ConfigError> {
    let p = std::fs::read_to_string(path)
        .map(|k| k.trim().to_owned())
        .map_err(|e| {
            invalid(
                "upload.passphrase_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
    if !(10..=79).contains(&p.chars().count()) {
        return Err(invalid(
            "upload.passphrase_file",
            "an SRT passphrase has 10 to 79 characters",
        ));
    }
    Ok(StreamKey(p))
}

/// Validated tracker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Per-frame minimum.
    pub min_score: f32,
    /// Evidence summed over the window's sightings needed to confirm.
    pub confirm_evidence: f32,
    /// Window, frames.
    pub window: usize,
    /// Sightings needed in the window.
    pub min_frames: usize,
    /// Heartbeat interval.
    pub update_interval: Duration,
    /// Absence that ends an appearance.
    pub end_after: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        RawTracker::default()
            .validate()
            .expect("the built-in tracker defaults are valid")
    }
}

/// Validated MQTT settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// The broker and how to reach it (plain, TLS, mutual TLS).
    pub broker: Endpoint,
    /// Client id.
    pub client_id: String,
    /// Keep-alive.
    pub keepalive: Duration,
    /// Stats period.
    pub stats_interval: Duration,
    /// Publish rate limit, per second.
    pub max_publishes_per_sec: u32,
}

impl RawMqtt {
    /// The broker link: one parser and one TLS set-up with the bridge's (`spotter-mqtt-link`).
    fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let tls = TlsSettings {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            alpn: self.alpn.clone(),
        };
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Endpoint::from_settings(&self.url, &tls, credentials.as_deref())
            .map_err(|e| invalid(e.key, e.reason))
    }
}

/// Validated outbox settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// Directory.
    pub dir: PathBuf,
    /// Bound, bytes.
    pub max_bytes: u64,
}

/// Validated analysis settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    /// Catalog directory.
    pub catalog: PathBuf,
    /// Model weights.
    pub model: PathBuf,
    /// Frames a second.
    pub fps: f64,
    /// Input width.
    pub width: u32,
    /// Input height.
    pub height: u32,
    /// Catalog change polling interval.
    pub catalog_poll: Duration,
    /// Look at one small region a frame again, enlarged.
    pub zoom: bool,
    /// Deliberate extra time per analysed frame (testing only).
    pub slowdown: Duration,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Studio name.
    pub studio: String,
    /// Stream name.
    pub stream: String,
    /// Source.
    pub source: Source,
    /// Silence after which the source counts as lost.
    pub stall_timeout: Duration,
    /// Recognition.
    pub analysis: AnalysisConfig,
    /// Tracker.
    pub tracker: TrackerConfig,
    /// MQTT.
    pub mqtt: MqttConfig,
    /// Upload.
    pub upload: Upload,
    /// Outbox.
    pub outbox: OutboxConfig,
}

/// A configuration that does not make sense, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value out of range.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// Dotted key, as in the file.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl RawTracker {
    fn validate(&self) -> Result<TrackerConfig, ConfigError> {
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err(invalid(
                "tracker.min_score",
                format!("must be within 0..=1, got {}", self.min_score),
            ));
        }
        if !(self.confirm_evidence.is_finite() && self.confirm_evidence >= 0.0) {
            return Err(invalid(
                "tracker.confirm_evidence",
                format!(
                    "must be a number of inliers, 0 or more (default {}), got {}",
                    default_confirm_evidence(),
                    self.confirm_evidence
                ),
            ));
        }
        if self.window == 0 || self.min_frames == 0 || self.min_frames > self.window {
            return Err(invalid(
                "tracker.min_frames",
                format!(
                    "needs 1 <= min_frames <= window, got {} and {}",
                    self.min_frames, self.window
                ),
            ));
        }
        let secs = positive_secs;
        Ok(TrackerConfig {
            min_score: self.min_score,
            confirm_evidence: self.confirm_evidence,
            window: self.window,
            min_frames: self.min_frames,
            update_interval: secs("tracker.update_interval_secs", self.update_interval_secs)?,
            end_after: secs("tracker.end_after_secs", self.end_after_secs)?,
        })
    }
}

fn positive_secs(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 3600.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(invalid(
            key,
            format!("must be a positive number of seconds below 3600, got {v}"),
        ))
    }
}

/// `host` and `port` of `scheme://host[:port][/path][?query]`, with `default_port` when none is
/// given; a bracketed IPv6 address (`[::1]:9000`) comes without its brackets.
pub fn host_port(url: &str, default_port: u16) -> Result<(String, u16), String> {
    let (_, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} has no scheme:// before its host"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        // a bracketed IPv6 address without a port has its colons inside the brackets
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))?,
        ),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

impl RawConfig {
    /// Validates into the typed configuration.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        validate_segment("studio", &self.studio).map_err(|e| invalid("studio", e.to_string()))?;
        validate_segment("stream", &self.stream).map_err(|e| invalid("stream", e.to_string()))?;
        let source =
            match self.source.kind.as_str() {
                "test" => Source::Test {
                    audio: self.source.live_audio()?,
                },
                "uri" if self.source.audio.is_some() || self.source.audio_device.is_some() => {
                    return Err(invalid(
                        "source.audio",
                        "a URI source's sound comes from the stream itself: remove source.audio \
                         and source.audio_device",
                    ))
                }
                "uri" => Source::Uri {
                    uri: self.source.uri.clone().ok_or_else(|| {
                        invalid("source.uri", "required when source.kind = \"uri\"")
                    })?,
                    realtime: self.source.realtime,
                    looping: self.source.looping,
                },
                "v4l2" => Source::V4l2 {
                    device: self
                        .source
                        .device
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/dev/video0")),
                    mode: self.source.camera_mode()?,
                    audio: self.source.live_audio()?,
                },
                other => {
                    return Err(invalid(
                        "source.kind",
                        format!("{other:?} is not one of \"test\", \"uri\", \"v4l2\""),
                    ))
                }
            };
        let stall_timeout =
            positive_secs("source.stall_timeout_secs", self.source.stall_timeout_secs)?;
        let a = &self.analysis;
        if !(a.fps.is_finite() && a.fps > 0.0 && a.fps <= 60.0) {
            return Err(invalid(
                "analysis.fps",
                format!("must be within (0, 60], got {}", a.fps),
            ));
        }
        for (key, v) in [("analysis.width", a.width), ("analysis.height", a.height)] {
            if !(64..=1920).contains(&v) || v % 32 != 0 {
                return Err(invalid(
                    key,
                    format!("must be a multiple of 32 within 64..=1920, got {v}"),
                ));
            }
        }
        let broker = self.mqtt.endpoint()?;
        if !(1..=10_000).contains(&self.mqtt.max_publishes_per_sec) {
            return Err(invalid(
                "mqtt.max_publishes_per_sec",
                "must be within 1..=10000",
            ));
        }
        if !(5..=3600).contains(&self.mqtt.keepalive_secs) {
            return Err(invalid("mqtt.keepalive_secs", "must be within 5..=3600"));
        }
        let encoder = encoder_choice(&self.upload.encoder)?;
        if !(100..=50_000).contains(&self.upload.bitrate_kbps) {
            return Err(invalid(
                "upload.bitrate_kbps",
                format!(
                    "must be within 100..=50000 kbit/s, got {} (IVS: at most 8500 on STANDARD, 1500 on BASIC)",
                    self.upload.bitrate_kbps
                ),
            ));
        }
        if !(1..=10).contains(&self.upload.keyframe_interval_secs) {
            return Err(invalid(
                "upload.keyframe_interval_secs",
                "must be within 1..=10 (IVS wants 2, or 1 for lower latency)",
            ));
        }
        let upload = match self.upload.kind.as_str() {
            "none" => Upload::None,
            "hls" => Upload::Hls {
                dir: self.upload.hls_dir.clone().ok_or_else(|| {
                    invalid("upload.hls_dir", "required when upload.kind = \"hls\"")
                })?,
                bitrate_kbps: self.upload.bitrate_kbps,
                keyframe_interval_secs: self.upload.keyframe_interval_secs,
                encoder,
                capture_stamps: self.upload.capture_stamps,
            },
            "rtmp" => {
                let url = self.upload.url.clone().ok_or_else(|| {
                    invalid(
                        "upload.url",
                        "required when upload.kind = \"rtmp\" (IVS: rtmps://<ingest>:443/app/)",
                    )
                })?;
                if !(url.starts_with("rtmp://") || url.starts_with("rtmps://")) {
                    return Err(invalid(
                        "upload.url",
                        format!("{url:?} must start with rtmp:// or rtmps://"),
                    ));
                }
                Upload::Rtmp {
                    url,
                    key: stream_key(self.upload.stream_key_file.as_deref())?,
                    bitrate_kbps: self.upload.bitrate_kbps,
                    keyframe_interval_secs: self.upload.keyframe_interval_secs,
                    encoder,
                    capture_stamps: self.upload.capture_stamps,
                }
            }
            "srt" => {
                let uri = self.upload.url.clone().ok_or_else(|| {
                    invalid(
                        "upload.url",
                        "required when upload.kind = \"srt\" (srt://host:port)",
                    )
                })?;
                if !uri.starts_with("srt://") {
                    return Err(invalid(
                        "upload.url",
                        format!("{uri:?} must start with srt://"),
                    ));
                }
                Upload::Srt {
                    uri,
                    key: match &self.upload.stream_key_file {
                        Some(f) => Some(stream_key(Some(f))?),
                        None => None,
                    },
                    passphrase: self
                        .upload
                        .passphrase_file
                        .as_deref()
                        .map(passphrase)
                        .transpose()?,
                    bitrate_kbps: self.upload.bitrate_kbps,
                    keyframe_interval_secs: self.upload.keyframe_interval_secs,
                    encoder,
                    capture_stamps: self.upload.capture_stamps,
                }
            }
            other => {
                return Err(invalid(
                    "upload.kind",
                    format!("{other:?} is not one of \"none\", \"rtmp\", \"srt\", \"hls\""),
                ))
            }
        };
        if !(MIN_OUTBOX_BYTES..=MAX_OUTBOX_BYTES).contains(&self.outbox.max_bytes) {
            return Err(invalid(
                "outbox.max_bytes",
                format!(
                    "must be within {MIN_OUTBOX_BYTES}..={MAX_OUTBOX_BYTES} (64 KiB to 1 GiB), got {}",
                    self.outbox.max_bytes
                ),
            ));
        }
        let outbox = OutboxConfig {
            dir: match &self.outbox.dir {
                Some(dir) if dir.as_os_str().is_empty() => {
                    return Err(invalid(
                        "outbox.dir",
                        "is empty: leave it out for the default",
                    ))
                }
                Some(dir) => dir.clone(),
                None => Path::new(".spotter/outbox")
                    .join(&self.studio)
                    .join(&self.stream),
            },
            max_bytes: self.outbox.max_bytes,
        };
        Ok(AgentConfig {
            outbox,
            tracker: self.tracker.validate()?,
            mqtt: MqttConfig {
                broker,
                client_id: self
                    .mqtt
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("spotter-{}-{}", self.studio, self.stream)),
                keepalive: Duration::from_secs(self.mqtt.keepalive_secs),
                stats_interval: positive_secs(
                    "mqtt.stats_interval_secs",
                    self.mqtt.stats_interval_secs,
                )?,
                max_publishes_per_sec: self.mqtt.max_publishes_per_sec,
            },
            analysis: AnalysisConfig {
                catalog: a.catalog.clone(),
                model: a.model.clone(),
                fps: a.fps,
                width: a.width,
                height: a.height,
                catalog_poll: positive_secs("analysis.catalog_poll_secs", a.catalog_poll_secs)?,
                zoom: a.zoom,
                slowdown: Duration::from_millis(a.slowdown_ms),
            },
            studio: self.studio,
            stream: self.stream,
            source,
            stall_timeout,
            upload,
        })
    }
}

/// Loads a file (if given) with environment overrides and validates it.
pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let raw: RawConfig = builder
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()?;
    raw.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.validate()
    }

    #[test]
    fn every_shipped_example_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        // the examples name secret files that exist only on a studio box: stand one in
        let secrets = tempfile::tempdir().expect("tempdir");
        let key = secrets.path().join("stream-key");
        std::fs::write(&key, "sk_example").expect("write");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("agent/examples exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("readable");
                let raw: RawConfig = config::Config::builder()
                    .add_source(config::File::from_str(&text, config::FileFormat::Toml))
                    .set_override_option(
                        "upload.stream_key_file",
                        text.contains("stream_key_file")
                            .then(|| key.display().to_string()),
                    )
                    .and_then(|b| b.build())
                    .and_then(|c| c.try_deserialize())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                raw.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no example configs found in {}", dir.display());
    }

    #[test]
    fn minimal_config_gets_sane_defaults() {
        let c = parse("studio = \"s1\"\n[analysis]\ncatalog = \"cat\"\n").expect("valid");
        assert_eq!(c.stream, "main");
        assert_eq!(c.source, Source::Test { audio: None });
        assert_eq!(c.mqtt.broker.port(), 1883);
        assert_eq!(c.mqtt.client_id, "spotter-s1-main");
        assert_eq!(c.analysis.fps, 5.0);
        assert_eq!(c.upload, Upload::None);
        assert_eq!(c.outbox.dir, Path::new(".spotter/outbox/s1/main"));
        assert_eq!(c.outbox.max_bytes, 16 << 20);
    }

    #[test]
    fn outbox_keys_are_checked() {
        let base = "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[outbox]\n";
        let c = parse(&format!("{base}dir = \"/var/lib/x\"\nmax_bytes = 65536\n")).expect("valid");
        assert_eq!(c.outbox.dir, Path::new("/var/lib/x"));
        assert_eq!(c.outbox.max_bytes, 65536);
        let err = parse(&format!("{base}max_bytes = 1000\n")).expect_err("too small");
        assert!(err.to_string().contains("outbox.max_bytes"), "{err}");
        let err = parse(&format!("{base}dir = \"\"\n")).expect_err("empty");
        assert!(err.to_string().contains("outbox.dir"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\nfps = 0\n").expect_err("fps 0");
        assert!(err.to_string().contains("analysis.fps"), "{err}");
        let err = parse("studio = \"s/1\"\n[analysis]\ncatalog = \"c\"\n").expect_err("slash");
        assert!(err.to_string().contains("studio"), "{err}");
        let err =
            parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\ncatalgo = 1\n").expect_err("typo");
        assert!(err.to_string().contains("catalgo"), "{err}");
        let err = parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[source]\nkind = \"uri\"\n")
            .expect_err("no uri");
        assert!(err.to_string().contains("source.uri"), "{err}");
        let err =
            parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[mqtt]\nurl = \"http://x\"\n")
                .expect_err("scheme");
        assert!(err.to_string().contains("mqtt.url"), "{err}");
        let err =
            parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[tracker]\nmin_frames = 9\n")
                .expect_err("min_frames > window");
        assert!(err.to_string().contains("tracker.min_frames"), "{err}");
        let err = parse(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[tracker]\nconfirm_evidence = -1\n",
        )
        .expect_err("negative evidence");
        let msg = err.to_string();
        assert!(msg.contains("tracker.confirm_evidence"), "{msg}");
        assert!(
            msg.contains("default 14"),
            "the message names the real default: {msg}"
        );
    }

    #[test]
    fn the_stream_key_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk_us-west-2_SECRET123\n").expect("write");
        let c = parse(&format!(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"rtmp\"\nurl = \"rtmps://ingest.example:443/app/\"\nstream_key_file = \"{}\"\n",
            key.display()
        ))
        .expect("valid");
        let Upload::Rtmp { key: secret, .. } = &c.upload else {
            panic!("rtmp upload")
        };
        assert_eq!(secret.expose(), "sk_us-west-2_SECRET123");
        assert!(!format!("{c:?}").contains("SECRET"), "{c:?}");
        let err = parse(&format!(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"rtmp\"\nurl = \"http://x/\"\nstream_key_file = \"{}\"\n",
            key.display()
        ))
        .expect_err("scheme");
        assert!(err.to_string().contains("upload.url"), "{err}");
    }

    #[test]
    fn camera_mode_and_encoder_come_from_the_config() {
        let c = parse(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[source]\nkind = \"v4l2\"\n\
             device = \"/dev/video2\"\nformat = \"MJPG\"\nwidth = 1920\nheight = 1080\nfps = 30\n\
             stall_timeout_secs = 3\n[upload]\nkind = \"hls\"\nhls_dir = \"h\"\nencoder = \"x264enc\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.source,
            Source::V4l2 {
                device: PathBuf::from("/dev/video2"),
                mode: CameraMode {
                    format: Some("MJPG".into()),
                    width: Some(1920),
                    height: Some(1080),
                    fps: Some(30.0),
                },
                audio: None,
            }
        );
        assert_eq!(c.stall_timeout, Duration::from_secs(3));
        assert_eq!(
            c.upload.encoder(),
            Some(EncoderChoice::Force(EncoderKind::X264))
        );
        let base = "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n";
        let minimal = parse(&format!(
            "{base}[upload]\nkind = \"hls\"\nhls_dir = \"h\"\n"
        ))
        .expect("valid");
        assert_eq!(minimal.upload.encoder(), Some(EncoderChoice::Auto));
        assert_eq!(minimal.stall_timeout, Duration::from_secs(5));
        for (tail, key) in [
            ("[upload]\nencoder = \"nvenc\"\n", "upload.encoder"),
            ("[upload]\nbitrate_kbps = 10\n", "upload.bitrate_kbps"),
            (
                "[upload]\nkeyframe_interval_secs = 0\n",
                "upload.keyframe_interval_secs",
            ),
            (
                "[source]\nkind = \"v4l2\"\nformat = \"YU Y2\"\n",
                "source.format",
            ),
            ("[source]\nkind = \"v4l2\"\nwidth = 0\n", "source.width"),
            ("[source]\nkind = \"v4l2\"\nfps = -1\n", "source.fps"),
            (
                "[source]\nstall_timeout_secs = 0\n",
                "source.stall_timeout_secs",
            ),
            ("[source]\naudio = \"hdmi\"\n", "source.audio"),
            ("[source]\naudio_device = \"hw:1\"\n", "source.audio_device"),
            (
                "[source]\naudio = \"alsa\"\naudio_device = \"\"\n",
                "source.audio_device",
            ),
            (
                "[source]\nkind = \"uri\"\nuri = \"file:///a.mp4\"\naudio = \"alsa\"\n",
                "source.audio",
            ),
            ("[upload]\nkind = \"srt\"\n", "upload.url"),
            (
                "[upload]\nkind = \"srt\"\nurl = \"udp://x:1\"\n",
                "upload.url",
            ),
        ] {
            let err = parse(&format!("{base}{tail}")).expect_err(tail);
            assert!(err.to_string().contains(key), "{tail}: {err}");
        }
    }

    #[test]
    fn capture_stamps_are_on_unless_turned_off() {
        let hls = "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"hls\"\nhls_dir = \"/tmp/h\"\n";
        assert!(parse(hls).expect("valid").upload.capture_stamps());
        let off = parse(&format!("{hls}capture_stamps = false\n")).expect("valid");
        assert!(!off.upload.capture_stamps());
        assert!(matches!(off.upload, Upload::Hls { .. }), "{off:?}");
        // nothing is uploaded, so nothing is stamped
        let none = parse("studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n").expect("valid");
        assert!(!none.upload.capture_stamps());
    }

    #[test]
    fn an_srt_upload_keeps_its_secrets_out_of_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "SECRETKEY\n").expect("write");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "SECRETPASSPHRASE\n").expect("write");
        let c = parse(&format!(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"srt\"\n\
             url = \"srt://ingest.example:9000\"\nstream_key_file = \"{}\"\npassphrase_file = \"{}\"\n",
            key.display(),
            pass.display()
        ))
        .expect("valid");
        let Upload::Srt {
            uri,
            key,
            passphrase,
            ..
        } = &c.upload
        else {
            panic!("srt upload: {c:?}")
        };
        assert_eq!(uri, "srt://ingest.example:9000");
        assert_eq!(key.as_ref().map(StreamKey::expose), Some("SECRETKEY"));
        assert_eq!(
            passphrase.as_ref().map(StreamKey::expose),
            Some("SECRETPASSPHRASE")
        );
        assert!(!format!("{c:?}").contains("SECRET"), "{c:?}");
        // no key file: no stream id, and no error
        let c = parse(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"srt\"\nurl = \"srt://h:9000?streamid=x\"\n",
        )
        .expect("valid");
        assert!(matches!(
            c.upload,
            Upload::Srt {
                key: None,
                passphrase: None,
                ..
            }
        ));
        std::fs::write(&pass, "short\n").expect("write");
        let err = parse(&format!(
            "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[upload]\nkind = \"srt\"\nurl = \"srt://h:1\"\npassphrase_file = \"{}\"\n",
            pass.display()
        ))
        .expect_err("short passphrase");
        assert!(err.to_string().contains("upload.passphrase_file"), "{err}");
    }

    #[test]
    fn mqtt_urls_get_the_same_answers_as_the_bridge() {
        use spotter_mqtt_link::broker_url::examples::assert_same_answers;
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = spotter_mqtt_link::testing::make_certificates(dir.path(), "s1");
        let with = |url: &str, tls: bool| {
            let ca = if tls {
                format!("ca_file = {:?}\n", certs.ca.display().to_string())
            } else {
                String::new()
            };
            parse(&format!(
                "studio = \"s1\"\n[analysis]\ncatalog = \"c\"\n[mqtt]\nurl = \"{url}\"\n{ca}"
            ))
        };
        assert_same_answers(|url, tls| with(url, tls).map(|c| c.mqtt.broker));
    }
}
