//! Spotter's recognition models in candle: pure compute, no I/O, no tokio, no GStreamer.
//!
//! - [`efficientnet`]: the EfficientNet-Lite0 backbone (ImageNet weights, batch norm folded at load).
//! - [`descriptor`]: regional descriptors pooled from its feature map, and the catalog index they
//!   are matched against.
//! - [`verify`]: geometric verification of a candidate product with mid-level features, which
//!   tells the catalog's product from a look-alike.
//! - [`appearance`]: the pixel likeness that verification asks of a faint candidate: do the
//!   frame's pixels, where the transform puts the product, look like its photo's?
//! - [`matching`]: one frame against the catalog, after the backbone: shortlist, then verify.
//! - [`preprocess`]: from RGB pixels to the network's input tensor.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod appearance;
pub mod depthwise;
pub mod descriptor;
pub mod efficientnet;
pub mod matching;
pub mod pointwise;
pub mod preprocess;
pub mod stem;
pub mod verify;

pub use descriptor::{CatalogIndex, Match, RegionGrid};
pub use efficientnet::{EfficientNetLite0, LiteConfig, Padding, MID_TAP_BLOCK};
pub use matching::{Candidate, Expected, FrameFeatures, ProductIndex, Zoom};

/// The largest absolute difference between two equally long slices (kernel tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
