//! Test clips: catalogs built from clip art, and videos in which products come and go on cue.

mod background;
mod catalog;
mod demo;
mod encode;
mod error;
pub mod eval;
pub mod frame_code;
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
pub use frame_code::{
    overlaps_frame_code, paint_frame_code, read_frame_code, FrameCodeGeometry, FRAME_CODE_CELLS,
    FRAME_CODE_MAX_FRAMES,
};
pub use photo::{mate_photo, Backdrop, BackdropSpec, MATE_NATURE_DIR, MATE_NATURE_PHOTOS};
pub use scene::{
    make_clip, parse_size, read_truth, truth_path, ClipSpec, Placement, Scene, Show, TruthEntry,
    DEFAULT_SCALE,
};

/// Mean absolute difference of two frames over the rectangle `[x0, y0, x1, y1]` (normalised),
/// per 8-bit channel value: how the tests see whether a product was drawn where the truth says.
pub fn mean_diff(a: &image::RgbImage, b: &image::RgbImage, rect: [f32; 4]) -> f32 {
    let (w, h) = (a.width() as f32, a.height() as f32);
    let (x0, y0) = ((rect[0] * w) as u32, (rect[1] * h) as u32);
    let (x1, y1) = ((rect[2] * w) as u32, (rect[3] * h) as u32);
    let mut sum = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
            sum += (0..3).map(|c| u64::from(p[c].abs_diff(q[c]))).sum::<u64>();
        }
    }
    sum as f32 / (3 * (x1 - x0) * (y1 - y0)).max(1) as f32
}
