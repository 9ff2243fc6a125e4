//! Test clips: catalogs built from clip art, and videos in which products come and go on cue.

mod background;
mod catalog;
mod demo;
mod encode;
mod error;
pub mod eval;
mod noise;
mod photo;
mod scene;
mod sprite;

pub use background::render_background;
pub use catalog::{
    build_catalog, preset, preset_names, preset_product, ProductSource, OPENCLIPART_DIR,
};
pub use demo::{demo_shows, make_demo, DemoOutput};
pub use encode::{decode_frames, encode_clip, encode_frames, FrameSource, SPEED_PRESETS};
pub use error::ClipgenError;
pub use photo::{mate_photo, Backdrop, BackdropSpec, MATE_NATURE_DIR, MATE_NATURE_PHOTOS};
pub use scene::{
    make_clip, parse_size, read_truth, truth_path, ClipSpec, Placement, Scene, Show, TruthEntry,
    DEFAULT_SCALE,
};
