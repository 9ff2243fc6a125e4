//! Retained status and on-screen payloads, and the periodic stats of a studio box.

use serde::{Deserialize, Serialize};

use crate::event::{check_id, BBox, DecodeError, LEGACY_SESSION};
use crate::PROTOCOL_VERSION;

/// The agent's state as seen by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Connected and running.
    Online,
    /// Gone without saying goodbye (the last will).
    Offline,
    /// Shut down cleanly.
    Stopped,
}

/// Retained on `spotter/v1/<studio>/<stream>/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Payload version.
    pub v: u32,
    /// The state.
    pub state: AgentState,
    /// When it was written, UTC ms (absent in the last will, which is written ahead of time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

impl Status {
    /// A status payload.
    pub fn new(state: AgentState, at_ms: Option<u64>) -> Self {
        Status {
            v: PROTOCOL_VERSION,
            state,
            at_ms,
        }
    }

    /// Encodes for publishing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Status always serializes")
    }

    /// Decodes a received payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

/// One product in view now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnScreenProduct {
    /// The appearance's event id.
    pub event_id: String,
    /// The product.
    pub sku: String,
    /// Latest score.
    pub score: f32,
    /// Latest box.
    pub bbox: BBox,
    /// Capture time of the frame that confirmed it, UTC ms.
    pub since_ms: u64,
}

/// Retained on `spotter/v1/<studio>/<stream>/onscreen`: what late joiners should see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnScreen {
    /// Payload version.
    pub v: u32,
    /// The sequence number of the last event this snapshot includes.
    pub seq: u64,
    /// The agent session `seq` counts in (see [`crate::event`]); absent from older agents'
    /// snapshots, which belong to [`LEGACY_SESSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The products in view.
    pub products: Vec<OnScreenProduct>,
}

impl OnScreen {
    /// Encodes for publishing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("OnScreen always serializes")
    }

    /// The session `seq` counts in, [`LEGACY_SESSION`] for a snapshot that names none.
    pub fn session(&self) -> &str {
        self.session.as_deref().unwrap_or(LEGACY_SESSION)
    }

    /// Decodes and validates a received payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let s: OnScreen = serde_json::from_slice(payload)?;
        if let Some(session) = &s.session {
            check_id("session", session)?;
        }
        for p in &s.products {
            check_id("products.event_id", &p.event_id)?;
            check_id("products.sku", &p.sku)?;
        }
        Ok(s)
    }
}

/// Where the upload stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// No upload configured (analysis only).
    #[default]
    None,
    /// Streaming to the ingest.
    Live,
    /// The ingest is unreachable; retrying while analysis continues.
    Down,
}

/// Where the upload's sound stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoundState {
    /// No sound goes out: no upload, a source without sound, or no encoder for it.
    #[default]
    None,
    /// Sound is going out with the upload.
    Live,
    /// The sound device beside the camera failed; the show goes on silent while it is retried.
    Down,
}

/// Where the video source stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// Not delivering yet: the pipeline is starting.
    #[default]
    Starting,
    /// Frames are flowing.
    Live,
    /// Lost (unplugged, stopped sending, ended, refused to open); retried with backoff.
    Down,
}

/// Periodic health, on `spotter/v1/<studio>/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Payload version.
    pub v: u32,
    /// Stream this box serves.
    pub stream: String,
    /// When measured, UTC ms.
    pub at_ms: u64,
    /// Frames a second coming from the source.
    pub camera_fps: f32,
    /// Frames a second analysed.
    pub analysed_fps: f32,
    /// Frames the analysis branch dropped since start (the upload never drops for analysis).
    pub skipped_frames: u64,
    /// Moving average of the per-frame recognition time, ms.
    pub inference_ms: f32,
    /// The source's state.
    #[serde(default)]
    pub source: SourceState,
    /// Times the pipeline was rebuilt after a failure of the source or the upload, since start.
    #[serde(default)]
    pub restarts: u64,
    /// The upload's state.
    #[serde(default)]
    pub upload: UploadState,
    /// Encoded bitrate sent to the upload over the interval, kbit/s (sound included).
    #[serde(default)]
    pub upload_kbps: f32,
    /// The upload's sound.
    #[serde(default)]
    pub sound: SoundState,
    /// Encoded sound sent over the interval, kbit/s.
    #[serde(default)]
    pub sound_kbps: f32,
    /// Events waiting to be acknowledged by the broker.
    pub outbox_depth: u64,
    /// Events dropped because the outbox was full, since start.
    pub outbox_dropped: u64,
    /// Whole-machine CPU use, percent.
    pub cpu_percent: f32,
    /// This process's resident memory, bytes.
    pub memory_bytes: u64,
    /// Hottest temperature sensor, degrees Celsius, where readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f32>,
    /// Busiest GPU's load, percent, where the platform exposes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_percent: Option<f32>,
}

impl Stats {
    /// Encodes for publishing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Stats always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_golden() {
        let s = Status::new(AgentState::Offline, None);
        assert_eq!(s.encode(), br#"{"v":1,"state":"offline"}"#);
        let s = Status::new(AgentState::Online, Some(5));
        assert_eq!(Status::decode(&s.encode()).expect("decodes"), s);
    }

    #[test]
    fn onscreen_golden() {
        let golden = include_str!("../tests/golden/onscreen.json").trim();
        let s = OnScreen::decode(golden.as_bytes()).expect("decodes");
        assert_eq!(s.products.len(), 1);
        assert_eq!(s.session(), "5f3a9c0e7b1d2468");
        assert_eq!(String::from_utf8(s.encode()).expect("utf8"), golden);

        let old = golden.replace(r#""session":"5f3a9c0e7b1d2468","#, "");
        let s = OnScreen::decode(old.as_bytes()).expect("an older agent's snapshot decodes");
        assert_eq!(s.session(), LEGACY_SESSION);
        let bad = golden.replace("5f3a9c0e7b1d2468", "has space");
        let err = OnScreen::decode(bad.as_bytes()).expect_err("bad session");
        assert!(err.to_string().contains("session"), "{err}");
    }
}
