//! Clip-art handling: trimming to the visible object, premultiplied-alpha scaling and rotation,
//! flattening onto a colour, and compositing onto RGBx frames.

use std::path::Path;

use image::imageops::FilterType;
use image::{RgbImage, Rgba, RgbaImage};

use super::error::ClipgenError;

/// Alpha at or below this counts as background when trimming.
const ALPHA_FLOOR: u8 = 12;

/// Loads an image as straight-alpha RGBA.
pub(crate) fn load_rgba(path: &Path) -> Result<RgbaImage, ClipgenError> {
    Ok(image::open(path)
        .map_err(ClipgenError::image(path))?
        .to_rgba8())
}

/// Crops to the bounding box of the visible pixels.
pub(crate) fn trim(img: &RgbaImage, path: &Path) -> Result<RgbaImage, ClipgenError> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p[3] > ALPHA_FLOOR {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Err(ClipgenError::EmptyImage {
            path: path.to_owned(),
        });
    }
    Ok(image::imageops::crop_imm(img, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image())
}

fn mul(c: u8, a: u8) -> u8 {
    ((u32::from(c) * u32::from(a) + 127) / 255) as u8
}

/// Straight to premultiplied alpha, so that filtering never bleeds transparent pixels' colour.
pub(crate) fn premultiply(img: &RgbaImage) -> RgbaImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let a = p[3];
        *p = Rgba([mul(p[0], a), mul(p[1], a), mul(p[2], a), a]);
    }
    out
}

/// Composites a premultiplied image over a solid colour.
pub(crate) fn flatten(premul: &RgbaImage, bg: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(premul.width(), premul.height(), |x, y| {
        let p = premul.get_pixel(x, y);
        let inv = 255 - p[3];
        image::Rgb(std::array::from_fn(|c| {
            p[c].saturating_add(mul(bg[c], inv))
        }))
    })
}

/// Adds a transparent margin of `frac` of the larger side around a premultiplied image.
pub(crate) fn pad(premul: &RgbaImage, frac: f32) -> RgbaImage {
    let m = (premul.width().max(premul.height()) as f32 * frac).round() as u32;
    let mut out = RgbaImage::new(premul.width() + 2 * m, premul.height() + 2 * m);
    image::imageops::replace(&mut out, premul, i64::from(m), i64::from(m));
    out
}

/// Rotates by `degrees` and scales by `scale` about the centre, on a canvas of the same size
/// (bilinear sampling of premultiplied pixels; what falls outside is transparent).
pub(crate) fn rotate_scale(premul: &RgbaImage, degrees: f32, scale: f32) -> RgbaImage {
    let (w, h) = (premul.width() as f32, premul.height() as f32);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    let sample = |x: f32, y: f32| -> [f32; 4] {
        let (xf, yf) = (x.floor(), y.floor());
        let (tx, ty) = (x - xf, y - yf);
        let get = |xi: f32, yi: f32| -> [f32; 4] {
            if xi < 0.0 || yi < 0.0 || xi >= w || yi >= h {
                return [0.0; 4];
            }
            let p = premul.get_pixel(xi as u32, yi as u32);
            [p[0], p[1], p[2], p[3]].map(f32::from)
        };
        let (a, b) = (get(xf, yf), get(xf + 1.0, yf));
        let (c, d) = (get(xf, yf + 1.0), get(xf + 1.0, yf + 1.0));
        std::array::from_fn(|i| {
            let top = a[i] + (b[i] - a[i]) * tx;
            let bottom = c[i] + (d[i] - c[i]) * tx;
            top + (bottom - top) * ty
        })
    };
    RgbaImage::from_fn(premul.width(), premul.height(), |x, y| {
        // Inverse mapping: where in the source does this output pixel come from.
        let (dx, dy) = ((x as f32 + 0.5 - cx) / scale, (y as f32 + 0.5 - cy) / scale);
        let sx = cos * dx + sin * dy + cx - 0.5;
        let sy = -sin * dx + cos * dy + cy - 0.5;
        Rgba(sample(sx, sy).map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// A product ready to composite: premultiplied RGBA at its on-screen size.
pub(crate) struct Sprite {
    pub(crate) w: u32,
    pub(crate) h: u32,
    px: Vec<[u8; 4]>,
}

impl Sprite {
    /// Scales trimmed straight-alpha art to `height` pixels, or less where it would be wider
    /// than `max_width`.
    pub(crate) fn new(trimmed: &RgbaImage, height: u32, max_width: u32) -> Sprite {
        let aspect = trimmed.width() as f32 / trimmed.height() as f32;
        let mut h = height.max(1);
        let mut w = ((h as f32 * aspect).round() as u32).max(1);
        if w > max_width {
            w = max_width.max(1);
            h = ((w as f32 / aspect).round() as u32).max(1);
        }
        let scaled = image::imageops::resize(&premultiply(trimmed), w, h, FilterType::Triangle);
        Sprite {
            w,
            h,
            px: scaled.pixels().map(|p| p.0).collect(),
        }
    }

    /// Draws onto a packed RGBx frame with its top-left corner at `(x0, y0)`, clipped.
    pub(crate) fn draw(&self, frame: &mut [u8], fw: u32, fh: u32, x0: i32, y0: i32) {
        for_clipped(self.w, self.h, fw, fh, x0, y0, |sx, sy, di| {
            let s = self.px[(sy * self.w + sx) as usize];
            if s[3] == 0 {
                return;
            }
            let inv = 255 - s[3];
            let d = &mut frame[di..di + 3];
            for c in 0..3 {
                d[c] = s[c].saturating_add(mul(d[c], inv));
            }
        });
    }
}

/// A soft contact shadow: an elliptical darkening under a product standing on the table.
pub(crate) struct Shadow {
    pub(crate) w: u32,
    pub(crate) h: u32,
    mask: Vec<u8>,
}

impl Shadow {
    pub(crate) fn new(w: u32, h: u32, strength: f32) -> Shadow {
        let (w, h) = (w.max(1), h.max(1));
        let mut mask = Vec::with_capacity((w * h) as usize);
        for y in 0..h {
            for x in 0..w {
                let dx = (x as f32 + 0.5) / w as f32 * 2.0 - 1.0;
                let dy = (y as f32 + 0.5) / h as f32 * 2.0 - 1.0;
                let r = (dx * dx + dy * dy).sqrt();
                let t = ((1.0 - r) / 0.6).clamp(0.0, 1.0);
                mask.push((strength * t * t * (3.0 - 2.0 * t) * 255.0) as u8);
            }
        }
        Shadow { w, h, mask }
    }

    pub(crate) fn draw(&self, frame: &mut [u8], fw: u32, fh: u32, x0: i32, y0: i32) {
        for_clipped(self.w, self.h, fw, fh, x0, y0, |sx, sy, di| {
            let m = self.mask[(sy * self.w + sx) as usize];
            for d in &mut frame[di..di + 3] {
                *d = mul(*d, 255 - m);
            }
        });
    }
}

/// Calls `f(src_x, src_y, dst_byte_index)` for each pixel of a `w`x`h` block placed at
/// `(x0, y0)` that falls inside an `fw`x`fh` RGBx frame.
fn for_clipped(
    w: u32,
    h: u32,
    fw: u32,
    fh: u32,
    x0: i32,
    y0: i32,
    mut f: impl FnMut(u32, u32, usize),
) {
    let xa = x0.max(0);
    let ya = y0.max(0);
    let xb = (x0 + w as i32).min(fw as i32);
    let yb = (y0 + h as i32).min(fh as i32);
    for y in ya..yb {
        for x in xa..xb {
            let di = (y as usize * fw as usize + x as usize) * 4;
            f((x - x0) as u32, (y - y0) as u32, di);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> RgbaImage {
        let mut img = RgbaImage::new(20, 10);
        for y in 2..8 {
            for x in 5..15 {
                img.put_pixel(x, y, Rgba([200, 10, 10, 255]));
            }
        }
        img
    }

    #[test]
    fn trims_to_visible_pixels() {
        let t = trim(&square(), Path::new("sq.png")).expect("has pixels");
        assert_eq!(t.dimensions(), (10, 6));
        let err = trim(&RgbaImage::new(4, 4), Path::new("empty.png")).expect_err("empty");
        assert!(err.to_string().contains("empty.png"), "{err}");
    }

    #[test]
    fn sprite_covers_frame_where_opaque_and_clips_at_edges() {
        let t = trim(&square(), Path::new("sq.png")).expect("has pixels");
        let s = Sprite::new(&t, 6, 100);
        assert_eq!((s.w, s.h), (10, 6));
        let mut frame = vec![0u8; 8 * 8 * 4];
        s.draw(&mut frame, 8, 8, -2, 4);
        let at = |x: usize, y: usize| &frame[(y * 8 + x) * 4..][..3];
        assert_eq!(at(0, 5), [200, 10, 10]);
        assert_eq!(at(7, 7), [200, 10, 10]);
        assert_eq!(at(0, 3), [0, 0, 0]);
    }

    #[test]
    fn flatten_and_rotate_keep_the_object() {
        let p = premultiply(&square());
        let flat = flatten(&p, [255, 255, 255]);
        assert_eq!(flat.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(flat.get_pixel(10, 5).0, [200, 10, 10]);
        let r = rotate_scale(&p, 8.0, 0.8);
        assert_eq!(r.get_pixel(10, 5)[3], 255);
        assert_eq!(r.get_pixel(0, 0)[3], 0);
    }
}
