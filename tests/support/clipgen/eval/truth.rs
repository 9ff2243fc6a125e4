//! The evaluation set's ground truth, one file a clip: what the report scores against. A
//! superset of the procedural clips' truth (`sku`, `start_ms`, `end_ms`, `bbox` come first), so
//! [`crate::clipgen::read_truth`] reads these files too.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::error::ClipgenError;
use super::plan::{Light, Transition};

/// The conditions an appearance was shown under, for breaking results down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// Height at rest as a fraction of the frame height.
    pub height: f32,
    /// Area of the (untilted) product box at rest as a fraction of the frame's.
    pub area: f32,
    /// Largest in-plane rotation, degrees either way.
    pub max_tilt_deg: f32,
    /// Fraction of the product's pixels a hand covers while it is there (0: no hand).
    pub hand_cover: f32,
    /// When the hand is there, absolute ms.
    pub hand_ms: Option<[u64; 2]>,
    /// Quick moves between resting places while held (motion-blurred frames).
    pub fast_moves: usize,
    /// How it came on.
    pub entry: Transition,
    /// How it went off.
    pub exit: Transition,
    /// Light on the product.
    pub light: Light,
}

/// Where the product was at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackPoint {
    /// Clip time.
    pub ms: u64,
    /// Normalised `[x0, y0, x1, y1]` of the product's (tilted) box, clipped to the frame.
    pub bbox: [f32; 4],
}

/// Ground truth for one appearance in an evaluation clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalTruth {
    /// The product.
    pub sku: String,
    /// First millisecond any of it is on screen.
    pub start_ms: u64,
    /// First millisecond it is all gone.
    pub end_ms: u64,
    /// Normalised `[x0, y0, x1, y1]` covering the product from when it is fully in until it
    /// starts to leave (moves included).
    pub bbox: [f32; 4],
    /// Whether the split's catalog has it: look-alikes (false) must produce no event.
    pub in_catalog: bool,
    /// From when it is fully in to when it starts to leave, absolute ms.
    pub held_ms: [u64; 2],
    /// How it was shown.
    pub conditions: Conditions,
    /// Its box every 200 ms while on screen.
    pub track: Vec<TrackPoint>,
}

/// Reads an evaluation clip's truth file.
pub fn read_eval_truth(path: &Path) -> Result<Vec<EvalTruth>, ClipgenError> {
    let text = std::fs::read(path).map_err(ClipgenError::io(path))?;
    serde_json::from_slice(&text).map_err(|source| ClipgenError::Json {
        path: path.to_owned(),
        source,
    })
}
