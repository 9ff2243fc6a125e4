//! Drawing an evaluation clip: the photographic backdrop, then each product on screen scaled,
//! tilted, lit and (when it moves fast) motion-blurred, then the hand that holds it. Products
//! are sampled straight from their art at the size they have on screen, so that zooming and
//! tilting never compound resampling losses.

use std::collections::HashMap;
use std::sync::Arc;

use image::imageops::FilterType;
use image::RgbaImage;

use super::super::encode::FrameSource;
use super::super::photo::Backdrop;
use super::super::sprite::premultiply;
use super::plan::{Appearance, ClipPlan, Hand, Placement};
use super::truth::{Conditions, EvalTruth, TrackPoint};

/// Skin tones for the hand, light to dark.
const SKIN: [[f32; 3]; 6] = [
    [236.0, 196.0, 170.0],
    [224.0, 172.0, 138.0],
    [198.0, 140.0, 104.0],
    [160.0, 104.0, 72.0],
    [118.0, 76.0, 54.0],
    [84.0, 56.0, 42.0],
];

/// Alpha above which a product pixel counts as covered by the product.
const SOLID: u8 = 128;

/// Product art at the largest size it is drawn in a clip: premultiplied RGBA.
pub(crate) struct Art {
    w: u32,
    h: u32,
    px: Vec<[u8; 4]>,
}

impl Art {
    /// Scales trimmed straight-alpha art to `height` pixels high.
    pub(crate) fn new(trimmed: &RgbaImage, height: u32) -> Art {
        let aspect = trimmed.width() as f32 / trimmed.height() as f32;
        let h = height.max(2);
        let w = ((h as f32 * aspect).round() as u32).max(2);
        let scaled = image::imageops::resize(&premultiply(trimmed), w, h, FilterType::Triangle);
        Art {
            w,
            h,
            px: scaled.pixels().map(|p| p.0).collect(),
        }
    }

    fn alpha(&self, x: i32, y: i32) -> u8 {
        if x < 0 || y < 0 || x >= self.w as i32 || y >= self.h as i32 {
            0
        } else {
            self.px[(y as u32 * self.w + x as u32) as usize][3]
        }
    }

    /// Bilinear sample at art coordinates (pixel centres at +0.5), premultiplied, 0..255.
    #[inline]
    fn sample(&self, u: f32, v: f32) -> [f32; 4] {
        let (x, y) = (u - 0.5, v - 0.5);
        let (xf, yf) = (x.floor(), y.floor());
        let (tx, ty) = (x - xf, y - yf);
        let (x0, y0) = (xf as i32, yf as i32);
        let (w, h) = (self.w as i32, self.h as i32);
        let get = |xi: i32, yi: i32| -> [u8; 4] {
            if xi < 0 || yi < 0 || xi >= w || yi >= h {
                [0; 4]
            } else {
                self.px[(yi * w + xi) as usize]
            }
        };
        let (a, b, c, d) = (
            get(x0, y0),
            get(x0 + 1, y0),
            get(x0, y0 + 1),
            get(x0 + 1, y0 + 1),
        );
        // Most of a tilted product's box is transparent: skip the arithmetic there.
        if (a[3] | b[3] | c[3] | d[3]) == 0 {
            return [0.0; 4];
        }
        let (wa, wb) = ((1.0 - tx) * (1.0 - ty), tx * (1.0 - ty));
        let (wc, wd) = ((1.0 - tx) * ty, tx * ty);
        let mut out = [0.0; 4];
        for i in 0..4 {
            out[i] = f32::from(a[i]) * wa
                + f32::from(b[i]) * wb
                + f32::from(c[i]) * wc
                + f32::from(d[i]) * wd;
        }
        out
    }
}

/// A hand in the product's own (art pixel) coordinates: an arm, a palm and four fingers and a
/// thumb laid over the product from one side, as rounded capsules.
#[derive(Debug, Clone, Copy)]
struct HandShape {
    /// Where the fingers meet the product.
    grip: (f32, f32),
    /// Unit vector from the hand into the product.
    into: (f32, f32),
    /// Size: the palm's half-width.
    r: f32,
    tone: [f32; 3],
}

fn capsule(p: (f32, f32), a: (f32, f32), b: (f32, f32), radius: f32) -> f32 {
    let (px, py) = (p.0 - a.0, p.1 - a.1);
    let (bx, by) = (b.0 - a.0, b.1 - a.1);
    let t = ((px * bx + py * by) / (bx * bx + by * by).max(1e-6)).clamp(0.0, 1.0);
    let (dx, dy) = (px - bx * t, py - by * t);
    // sqrt, not hypot: hypot's overflow care costs a third of the frame time here
    (dx * dx + dy * dy).sqrt() - radius
}

impl HandShape {
    /// Signed distance (art pixels) from the hand's outline: negative inside.
    fn sdf(&self, u: f32, v: f32) -> f32 {
        let (d, n) = (self.into, (-self.into.1, self.into.0));
        let r = self.r;
        let at = |along: f32, across: f32| {
            (
                self.grip.0 + d.0 * along * r + n.0 * across * r,
                self.grip.1 + d.1 * along * r + n.1 * across * r,
            )
        };
        let p = (u, v);
        // Everything lies within 1.4 r of the arm's axis: most pixels of the box stop here.
        let hull = capsule(p, at(1.3, 0.0), at(-4.5, 0.0), 1.4 * r);
        if hull > 2.0 {
            return hull;
        }
        let mut best = capsule(p, at(-0.3, 0.0), at(-4.5, 0.0), 0.62 * r);
        // The palm: a fat capsule across the direction of the arm.
        best = best.min(capsule(p, at(-0.25, -0.45), at(-0.25, 0.45), 0.62 * r));
        for (across, len) in [(-0.6, 0.85), (-0.2, 1.05), (0.2, 1.0), (0.6, 0.8)] {
            best = best.min(capsule(
                p,
                at(0.1, across),
                at(0.1 + len, across * 1.1),
                0.2 * r,
            ));
        }
        best.min(capsule(p, at(-0.2, -0.8), at(0.35, -1.15), 0.22 * r))
    }

    /// The corners of a local rectangle that holds the whole hand.
    fn extent(&self) -> [(f32, f32); 4] {
        let (d, n, r) = (self.into, (-self.into.1, self.into.0), self.r);
        let at = |along: f32, across: f32| {
            (
                self.grip.0 + (d.0 * along + n.0 * across) * r,
                self.grip.1 + (d.1 * along + n.1 * across) * r,
            )
        };
        [at(-6.0, -1.5), at(2.8, -1.5), at(2.8, 1.5), at(-6.0, 1.5)]
    }

    /// Where on the product a hand coming from `hand.from_deg` grips it, sized to cover
    /// `hand.cover` of the product's solid pixels.
    fn fit(art: &Art, hand: &Hand) -> (HandShape, f32) {
        let a = hand.from_deg.to_radians();
        let into = (a.cos(), -a.sin());
        let n = (-into.1, into.0);
        let (cx, cy) = (art.w as f32 / 2.0, art.h as f32 / 2.0);
        let half = art.w.max(art.h) as f32;
        // March inwards from outside along the chosen line until the product is solid.
        let offset = (hand.along - 0.5) * 0.8;
        let start = (
            cx + n.0 * offset * art.w as f32 - into.0 * half,
            cy + n.1 * offset * art.h as f32 - into.1 * half,
        );
        let mut grip = (cx, cy);
        let steps = (2.0 * half) as usize;
        for k in 0..steps {
            let p = (start.0 + into.0 * k as f32, start.1 + into.1 * k as f32);
            if art.alpha(p.0 as i32, p.1 as i32) > SOLID {
                grip = p;
                break;
            }
        }
        let step = ((art.w * art.h) as f32 / 40_000.0).sqrt().max(1.0) as usize;
        let solid: Vec<(f32, f32)> = (0..art.h as usize)
            .step_by(step)
            .flat_map(|y| (0..art.w as usize).step_by(step).map(move |x| (x, y)))
            .filter(|&(x, y)| art.px[y * art.w as usize + x][3] > SOLID)
            .map(|(x, y)| (x as f32 + 0.5, y as f32 + 0.5))
            .collect();
        let cover = |shape: &HandShape| -> f32 {
            if solid.is_empty() {
                return 0.0;
            }
            let inside = solid.iter().filter(|p| shape.sdf(p.0, p.1) < 0.0).count();
            inside as f32 / solid.len() as f32
        };
        let mut shape = HandShape {
            grip,
            into,
            r: 0.0,
            tone: SKIN[hand.tone % SKIN.len()],
        };
        let (mut lo, mut hi) = (0.01 * half, 0.6 * half);
        for _ in 0..14 {
            shape.r = (lo + hi) / 2.0;
            if cover(&shape) > hand.cover {
                hi = shape.r;
            } else {
                lo = shape.r;
            }
        }
        shape.r = lo;
        let got = cover(&shape);
        (shape, got)
    }
}

/// One appearance ready to draw.
struct Item {
    plan: Appearance,
    art: Arc<Art>,
    /// Art aspect (width over height).
    aspect: f32,
    hand: Option<(HandShape, f32)>,
}

impl Item {
    fn placement(&self, ms: u64, w: u32, h: u32) -> Placement {
        self.plan.placement(ms, w, h, self.aspect)
    }

    /// The tilted product's box in pixels at a placement.
    fn corners(&self, p: &Placement) -> [(f32, f32); 4] {
        let (hw, hh) = (p.h * self.aspect / 2.0, p.h / 2.0);
        let (s, c) = p.angle_deg.to_radians().sin_cos();
        [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
            .map(|(x, y)| (p.cx + x * c - y * s, p.cy + x * s + y * c))
    }
}

fn bounds(points: &[(f32, f32)]) -> [f32; 4] {
    points.iter().fold(
        [f32::MAX, f32::MAX, f32::MIN, f32::MIN],
        |[x0, y0, x1, y1], &(x, y)| [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
    )
}

/// Maps a frame pixel to art coordinates for a placement.
#[derive(Clone, Copy)]
struct Inverse {
    cx: f32,
    cy: f32,
    /// Rotation by minus the angle, divided by the scale.
    a: f32,
    b: f32,
    ox: f32,
    oy: f32,
    scale: f32,
}

impl Inverse {
    fn new(p: &Placement, art: &Art) -> Inverse {
        let scale = p.h / art.h as f32;
        let (s, c) = p.angle_deg.to_radians().sin_cos();
        Inverse {
            cx: p.cx,
            cy: p.cy,
            a: c / scale,
            b: s / scale,
            ox: art.w as f32 / 2.0,
            oy: art.h as f32 / 2.0,
            scale,
        }
    }

    #[inline]
    fn map(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            self.a * dx + self.b * dy + self.ox,
            -self.b * dx + self.a * dy + self.oy,
        )
    }
}

/// A clip of the evaluation set, ready to render frame by frame.
pub struct EvalScene {
    width: u32,
    height: u32,
    fps: u32,
    frames: u64,
    duration_ms: u64,
    backdrop: Backdrop,
    items: Vec<Item>,
}

impl EvalScene {
    /// Prepares a planned clip: `art` maps each SKU to its trimmed straight-alpha art.
    pub fn new(
        plan: &ClipPlan,
        art: &HashMap<String, RgbaImage>,
        backdrop: Backdrop,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<EvalScene, super::super::ClipgenError> {
        let mut items = Vec::with_capacity(plan.appearances.len());
        for a in &plan.appearances {
            let trimmed = art.get(&a.sku).ok_or_else(|| {
                super::super::ClipgenError::Spec(format!("no art for planned product {}", a.sku))
            })?;
            let aspect = trimmed.width() as f32 / trimmed.height() as f32;
            let max_h = (a.height * height as f32 * (1.0 + a.zoom)).ceil() as u32 + 2;
            let drawn = Arc::new(Art::new(trimmed, max_h));
            let hand = a.hand.as_ref().map(|h| HandShape::fit(&drawn, h));
            items.push(Item {
                plan: a.clone(),
                aspect,
                art: drawn,
                hand,
            });
        }
        Ok(EvalScene {
            width,
            height,
            fps,
            frames: plan.duration_ms * u64::from(fps) / 1000,
            duration_ms: plan.duration_ms,
            backdrop,
            items,
        })
    }

    fn frame_ms(&self, index: u64) -> u64 {
        index * 1000 / u64::from(self.fps)
    }

    /// Draws one product at a placement, averaging `blur` (a displacement in pixels over the
    /// shutter time) into several samples when it moves fast.
    fn draw_product(&self, out: &mut [u8], item: &Item, p: &Placement, blur: (f32, f32)) {
        let art = &item.art;
        let inv = Inverse::new(p, art);
        let len = blur.0.hypot(blur.1);
        let samples = if len < 2.0 {
            1
        } else {
            ((len / 2.0).ceil() as usize).clamp(2, 8)
        };
        let offsets: Vec<(f32, f32)> = (0..samples)
            .map(|k| {
                if samples == 1 {
                    (0.0, 0.0)
                } else {
                    let t = k as f32 / (samples - 1) as f32 - 0.5;
                    (blur.0 * t, blur.1 * t)
                }
            })
            .collect();
        let [x0, y0, x1, y1] = bounds(&item.corners(p));
        let (fw, fh) = (self.width as i32, self.height as i32);
        let pad = len / 2.0 + 2.0;
        let xa = ((x0 - pad).floor() as i32).clamp(0, fw);
        let xb = ((x1 + pad).ceil() as i32).clamp(0, fw);
        let ya = ((y0 - pad).floor() as i32).clamp(0, fh);
        let yb = ((y1 + pad).ceil() as i32).clamp(0, fh);
        let gains = item.plan.light.gains();
        let contrast = item.plan.light.contrast;
        let (aw, ah) = (art.w as f32 + 1.0, art.h as f32 + 1.0);
        let norm = 1.0 / samples as f32;
        let light = |acc: [f32; 4], d: &mut [u8]| {
            let alpha = acc[3] * norm;
            if alpha < 0.5 {
                return;
            }
            let a = alpha / 255.0;
            for c in 0..3 {
                // Light acts on the straight colour; composite premultiplied.
                let straight = acc[c] * norm / alpha;
                let lit = (((straight - 0.5) * contrast + 0.5) * gains[c]).clamp(0.0, 1.0);
                let v = lit * 255.0 * a + f32::from(d[c]) * (1.0 - a);
                d[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        };
        let inside = |u: f32, v: f32| u >= -1.0 && v >= -1.0 && u <= aw && v <= ah;
        for y in ya..yb {
            let row = (y * fw) as usize * 4;
            let line = &mut out[row + xa as usize * 4..row + xb as usize * 4];
            if samples == 1 {
                // One sample a pixel: walk the inverse map incrementally along the row.
                let (mut u, mut v) = inv.map(xa as f32 + 0.5, y as f32 + 0.5);
                for d in line.chunks_exact_mut(4) {
                    if inside(u, v) {
                        light(art.sample(u, v), d);
                    }
                    u += inv.a;
                    v -= inv.b;
                }
                continue;
            }
            for (i, d) in line.chunks_exact_mut(4).enumerate() {
                let x = (xa as usize + i) as f32 + 0.5;
                let mut acc = [0.0f32; 4];
                for &(ox, oy) in &offsets {
                    let (u, v) = inv.map(x - ox, y as f32 + 0.5 - oy);
                    if inside(u, v) {
                        let s = art.sample(u, v);
                        for c in 0..4 {
                            acc[c] += s[c];
                        }
                    }
                }
                light(acc, d);
            }
        }
    }

    fn draw_hand(&self, out: &mut [u8], item: &Item, hand: &HandShape, p: &Placement) {
        let inv = Inverse::new(p, &item.art);
        // The hand's reach in the frame: its local box through the forward transform.
        let (s, c) = p.angle_deg.to_radians().sin_cos();
        let fwd = |(u, v): (f32, f32)| {
            let (dx, dy) = ((u - inv.ox) * inv.scale, (v - inv.oy) * inv.scale);
            (p.cx + dx * c - dy * s, p.cy + dx * s + dy * c)
        };
        let [x0, y0, x1, y1] = bounds(&hand.extent().map(fwd));
        let (fw, fh) = (self.width as i32, self.height as i32);
        let xa = (x0.floor() as i32).clamp(0, fw);
        let xb = (x1.ceil() as i32).clamp(0, fw);
        let ya = (y0.floor() as i32).clamp(0, fh);
        let yb = (y1.ceil() as i32).clamp(0, fh);
        let gains = item.plan.light.gains();
        for y in ya..yb {
            let row = (y * fw) as usize * 4;
            for x in xa..xb {
                let (u, v) = inv.map(x as f32 + 0.5, y as f32 + 0.5);
                let d = hand.sdf(u, v);
                let px = d * inv.scale;
                if px > 1.0 {
                    continue;
                }
                let a = (0.5 - px).clamp(0.0, 1.0);
                // Rounded: darker towards the outline.
                let shade = 0.72 + 0.28 * (-d / (0.3 * hand.r)).clamp(0.0, 1.0);
                let o = &mut out[row + x as usize * 4..][..3];
                for ch in 0..3 {
                    let skin = (hand.tone[ch] * shade * gains[ch]).clamp(0.0, 255.0);
                    let v = skin * a + f32::from(o[ch]) * (1.0 - a);
                    o[ch] = v.round() as u8;
                }
            }
        }
    }

    /// Ground truth for every appearance, in start order.
    pub fn truth(&self) -> Vec<EvalTruth> {
        let (w, h) = (self.width as f32, self.height as f32);
        let norm = |b: [f32; 4]| -> Option<[f32; 4]> {
            let c = [
                (b[0] / w).clamp(0.0, 1.0),
                (b[1] / h).clamp(0.0, 1.0),
                (b[2] / w).clamp(0.0, 1.0),
                (b[3] / h).clamp(0.0, 1.0),
            ];
            (c[2] > c[0] && c[3] > c[1]).then_some(c)
        };
        let step = (1000 / u64::from(self.fps)).max(1);
        self.items
            .iter()
            .map(|item| {
                let a = &item.plan;
                let (held_from, held_to) = a.held_ms();
                let mut union = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
                let mut max_tilt = 0f32;
                let mut t = held_from;
                while t < held_to.max(held_from + 1) {
                    let p = item.placement(t, self.width, self.height);
                    let b = bounds(&item.corners(&p));
                    union = [
                        union[0].min(b[0]),
                        union[1].min(b[1]),
                        union[2].max(b[2]),
                        union[3].max(b[3]),
                    ];
                    max_tilt = max_tilt.max(p.angle_deg.abs());
                    t += step;
                }
                let track = (a.start_ms..a.end_ms)
                    .step_by(200)
                    .filter_map(|ms| {
                        let p = item.placement(ms, self.width, self.height);
                        norm(bounds(&item.corners(&p))).map(|bbox| TrackPoint { ms, bbox })
                    })
                    .collect();
                let hand_ms = a
                    .hand
                    .map(|hd| [a.start_ms + hd.from_ms, a.start_ms + hd.to_ms]);
                EvalTruth {
                    sku: a.sku.clone(),
                    start_ms: a.start_ms,
                    end_ms: a.end_ms,
                    bbox: norm(union).unwrap_or([0.0, 0.0, 1.0, 1.0]),
                    in_catalog: a.in_catalog,
                    held_ms: [held_from, held_to],
                    conditions: Conditions {
                        height: a.height,
                        area: a.height * a.height * item.aspect * h / w,
                        max_tilt_deg: max_tilt,
                        hand_cover: item.hand.map(|(_, c)| c).unwrap_or(0.0),
                        hand_ms,
                        fast_moves: a.poses.len() - 1,
                        entry: a.entry,
                        exit: a.exit,
                        light: a.light,
                    },
                    track,
                }
            })
            .collect()
    }
}

impl FrameSource for EvalScene {
    fn frame_count(&self) -> u64 {
        self.frames
    }

    fn render_frame(&self, index: u64, out: &mut Vec<u8>) {
        let ms = self.frame_ms(index);
        let t = ms as f32 / self.duration_ms.max(1) as f32;
        self.backdrop.blit(t, ms, out);
        for item in &self.items {
            if !item.plan.active(ms) {
                continue;
            }
            let p = item.placement(ms, self.width, self.height);
            // Displacement over half a 30 fps frame: a 1/60 s shutter.
            let before = item.placement(ms.saturating_sub(8), self.width, self.height);
            let after = item.placement(ms + 8, self.width, self.height);
            let blur = (after.cx - before.cx, after.cy - before.cy);
            self.draw_product(out, item, &p, blur);
            if let (Some((shape, _)), Some(hand)) = (&item.hand, item.plan.hand) {
                let rel = ms - item.plan.start_ms;
                if (hand.from_ms..hand.to_ms).contains(&rel) {
                    self.draw_hand(out, item, shape, &p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc_art() -> Art {
        let img = RgbaImage::from_fn(120, 80, |x, y| {
            let (dx, dy) = (x as f32 - 60.0, y as f32 - 40.0);
            if (dx / 58.0).powi(2) + (dy / 38.0).powi(2) < 1.0 {
                image::Rgba([200, 40, 40, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        });
        Art::new(&img, 80)
    }

    #[test]
    fn hand_is_sized_to_cover_what_the_plan_asks() {
        let art = disc_art();
        for (from_deg, cover) in [(0.0, 0.1), (90.0, 0.2), (180.0, 0.3), (200.0, 0.15)] {
            let hand = Hand {
                from_deg,
                along: 0.5,
                cover,
                tone: 0,
                from_ms: 0,
                to_ms: 1000,
            };
            let (shape, got) = HandShape::fit(&art, &hand);
            assert!(
                (got - cover).abs() < 0.04,
                "from {from_deg}: asked {cover}, got {got}"
            );
            // The grip is on the product, and the arm reaches back out of it.
            assert!(art.alpha(shape.grip.0 as i32, shape.grip.1 as i32) > SOLID);
            let back = (
                shape.grip.0 - shape.into.0 * 3.0 * shape.r,
                shape.grip.1 - shape.into.1 * 3.0 * shape.r,
            );
            assert!(shape.sdf(back.0, back.1) < 0.0, "the arm is there");
        }
    }

    #[test]
    fn samples_are_transparent_outside_and_solid_inside() {
        let art = disc_art();
        assert_eq!(art.sample(-5.0, -5.0), [0.0; 4]);
        assert_eq!(art.sample(2.0, 2.0)[3], 0.0);
        let centre = art.sample(60.0, 40.0);
        assert_eq!(centre[3], 255.0);
        assert!((centre[0] - 200.0).abs() < 1.0);
    }
}
