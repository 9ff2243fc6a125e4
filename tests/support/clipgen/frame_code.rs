//! The frame-number code: each frame's index in the clip painted into its top-left corner, so
//! that a test can tell which frame a player shows (and compare it with the capture stamps in
//! the video the agent uploads) by looking at the pixels alone.
//!
//! Geometry, for a `W`x`H` frame (the browser test reads the same code from a canvas, so this is
//! the contract):
//!
//! - scale `s = min(W / 1280, H / 720)`; cell side `c = max(2, round(16 s))`, origin
//!   `o = round(16 s)`, margin `m = max(1, round(4 s))` (1280x720: `c = 16, o = 16, m = 4`;
//!   640x360: `c = 8, o = 8, m = 2`);
//! - a mid-grey (128, 128, 128) rectangle from `(o - m, o - m)` to `(o + 18 c + m, o + c + m)`
//!   (exclusive), then 18 cells in one row: cell `k` covers `x` in `[o + k c, o + (k + 1) c)`,
//!   `y` in `[o, o + c)`;
//! - cell 0 white, cell 1 black (the guards), cells 2..=17 the 16 bits of the frame index (0 for
//!   the first frame), most significant first, white (255, 255, 255) for 1, black for 0;
//! - reading: the mean luminance (BT.601: `0.299 R + 0.587 G + 0.114 B`) of each cell's centre
//!   `c/2` x `c/2` pixels (`[x0 + c/4, x0 + c/4 + c/2)`, the same in `y`; 8x8 at 1280x720),
//!   against a threshold at the mean of the two guard cells' means; a bit is 1 above it.
//!
//! At 1280x720 the cells sit on the encoder's 16x16 macroblocks, so H.264 keeps them crisp. The
//! code covers `x < 0.24 W`, `y < 0.05 H`: products placed clear of that corner are never
//! covered (see [`overlaps_frame_code`]).

use image::RgbImage;

use super::error::ClipgenError;

/// Cells in the code's row: two guards and 16 bits.
pub const FRAME_CODE_CELLS: u32 = 18;

/// Frames a clip with the code may have: the index is 16 bits.
pub const FRAME_CODE_MAX_FRAMES: u64 = 1 << 16;

/// Where the code sits in a frame of a given size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodeGeometry {
    /// Side of one square cell.
    pub cell: u32,
    /// Left and top of cell 0.
    pub origin: u32,
    /// Grey border around the row.
    pub margin: u32,
}

impl FrameCodeGeometry {
    /// The code's geometry in a `width`x`height` frame (16 px cells at 1280x720, scaled).
    pub fn for_frame(width: u32, height: u32) -> Self {
        let s = (width as f32 / 1280.0).min(height as f32 / 720.0);
        FrameCodeGeometry {
            cell: ((16.0 * s).round() as u32).max(2),
            origin: (16.0 * s).round() as u32,
            margin: ((4.0 * s).round() as u32).max(1),
        }
    }

    /// The grey rectangle the code covers, `[x0, y0, x1, y1]` in pixels (exclusive ends).
    pub fn area(&self) -> [u32; 4] {
        let (o, m, c) = (self.origin, self.margin, self.cell);
        [
            o.saturating_sub(m),
            o.saturating_sub(m),
            o + FRAME_CODE_CELLS * c + m,
            o + c + m,
        ]
    }

    /// Left edge of cell `k`.
    fn cell_x(&self, k: u32) -> u32 {
        self.origin + k * self.cell
    }
}

/// Whether cell `k` (0-based, guards included) is white for frame `index`.
fn cell_white(index: u16, k: u32) -> bool {
    match k {
        0 => true,
        1 => false,
        _ => (index >> (FRAME_CODE_CELLS - 1 - k)) & 1 == 1,
    }
}

/// Paints frame `index`'s code into a packed RGBx frame of `width`x`height` (after the scene is
/// rendered, before it is encoded).
pub fn paint_frame_code(rgbx: &mut [u8], width: u32, height: u32, index: u16) {
    let g = FrameCodeGeometry::for_frame(width, height);
    let [x0, y0, x1, y1] = g.area();
    let mut fill = |xa: u32, ya: u32, xb: u32, yb: u32, v: u8| {
        for y in ya..yb.min(height) {
            for x in xa..xb.min(width) {
                let o = (y as usize * width as usize + x as usize) * 4;
                if let Some(px) = rgbx.get_mut(o..o + 3) {
                    px.fill(v);
                }
            }
        }
    };
    fill(x0, y0, x1, y1, 128);
    for k in 0..FRAME_CODE_CELLS {
        let v = if cell_white(index, k) { 255 } else { 0 };
        let x = g.cell_x(k);
        fill(x, g.origin, x + g.cell, g.origin + g.cell, v);
    }
}

/// Mean BT.601 luminance of the centre `c/2` x `c/2` pixels of cell `k`.
fn cell_luma(img: &RgbImage, g: &FrameCodeGeometry, k: u32) -> f32 {
    let (quarter, half) = (g.cell / 4, (g.cell / 2).max(1));
    let (x0, y0) = (g.cell_x(k) + quarter, g.origin + quarter);
    let mut sum = 0.0;
    for y in y0..y0 + half {
        for x in x0..x0 + half {
            let p = img.get_pixel(x, y);
            sum += 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
        }
    }
    sum / (half * half) as f32
}

/// Reads the frame index from a decoded frame's code. Fails when the frame is too small for the
/// code or its guards do not differ (no code, or one blurred beyond reading).
pub fn read_frame_code(img: &RgbImage) -> Result<u16, ClipgenError> {
    let g = FrameCodeGeometry::for_frame(img.width(), img.height());
    let [_, _, x1, y1] = g.area();
    if x1 > img.width() || y1 > img.height() {
        return Err(ClipgenError::Spec(format!(
            "a {}x{} frame is too small for the frame code",
            img.width(),
            img.height()
        )));
    }
    let (white, black) = (cell_luma(img, &g, 0), cell_luma(img, &g, 1));
    // guards less than a quarter of the range apart: there is no code to read
    if white - black < 64.0 {
        return Err(ClipgenError::Spec(format!(
            "no frame code: guard cells read {white:.0} and {black:.0}"
        )));
    }
    let threshold = (white + black) / 2.0;
    Ok((2..FRAME_CODE_CELLS).fold(0u16, |acc, k| {
        (acc << 1) | u16::from(cell_luma(img, &g, k) > threshold)
    }))
}

/// Whether the normalised rectangle `[x0, y0, x1, y1]` (a truth entry's box) touches the code's
/// area in a `width`x`height` frame.
pub fn overlaps_frame_code(rect: [f32; 4], width: u32, height: u32) -> bool {
    let [cx0, cy0, cx1, cy1] = FrameCodeGeometry::for_frame(width, height).area();
    let (w, h) = (width as f32, height as f32);
    rect[0] * w < cx1 as f32
        && rect[2] * w > cx0 as f32
        && rect[1] * h < cy1 as f32
        && rect[3] * h > cy0 as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, index: u16, background: u8) -> RgbImage {
        let mut rgbx = vec![background; (w * h * 4) as usize];
        paint_frame_code(&mut rgbx, w, h, index);
        RgbImage::from_fn(w, h, |x, y| {
            let o = ((y * w + x) * 4) as usize;
            image::Rgb([rgbx[o], rgbx[o + 1], rgbx[o + 2]])
        })
    }

    #[test]
    fn geometry_is_16_px_cells_at_16_16_on_720p_and_scales() {
        let g = FrameCodeGeometry::for_frame(1280, 720);
        assert_eq!((g.cell, g.origin, g.margin), (16, 16, 4));
        assert_eq!(g.area(), [12, 12, 16 + 18 * 16 + 4, 36]);
        let g = FrameCodeGeometry::for_frame(640, 360);
        assert_eq!((g.cell, g.origin, g.margin), (8, 8, 2));
        let g = FrameCodeGeometry::for_frame(1920, 1080);
        assert_eq!((g.cell, g.origin, g.margin), (24, 24, 6));
    }

    #[test]
    fn cells_are_painted_as_specified() {
        let img = frame(1280, 720, 0b1000_0000_0000_0001, 60);
        let at = |x, y| img.get_pixel(x, y).0;
        assert_eq!(at(12, 12), [128; 3], "margin");
        assert_eq!(at(20, 20), [255; 3], "cell 0: white guard");
        assert_eq!(at(36, 20), [0; 3], "cell 1: black guard");
        assert_eq!(at(52, 20), [255; 3], "cell 2: the top bit");
        assert_eq!(at(68, 20), [0; 3], "cell 3");
        assert_eq!(at(16 + 17 * 16 + 8, 31), [255; 3], "cell 17: the low bit");
        assert_eq!(at(11, 11), [60; 3], "outside the margin: the scene");
        assert_eq!(at(308, 20), [60; 3], "right of the margin: the scene");
    }

    #[test]
    fn every_bit_reads_back_on_any_background_and_size() {
        for (w, h) in [(1280, 720), (640, 360), (1920, 1080), (854, 480)] {
            for index in [0, 1, 0x8000, 0xffff, 0xa5c3, 12_345] {
                for background in [0, 128, 255] {
                    assert_eq!(
                        read_frame_code(&frame(w, h, index, background)).expect("code"),
                        index,
                        "{w}x{h} on {background}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_frame_without_the_code_is_refused() {
        let plain = RgbImage::from_pixel(1280, 720, image::Rgb([90, 90, 90]));
        assert!(read_frame_code(&plain).is_err());
    }

    #[test]
    fn the_code_corner_is_told_from_the_rest_of_the_frame() {
        // the code covers x < 0.24, y < 0.05
        assert!(overlaps_frame_code([0.1, 0.0, 0.3, 0.2], 1280, 720));
        assert!(!overlaps_frame_code([0.3, 0.0, 0.6, 0.5], 1280, 720));
        assert!(!overlaps_frame_code([0.0, 0.06, 0.2, 0.5], 1280, 720));
    }
}
