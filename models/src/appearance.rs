//! Pixel likeness under a verified transform: does the frame, where the transform puts the
//! product, look like the reference photo drawn there?
//!
//! Verification pairs 16-pixel cells. A look-alike drawn like the product in its parts (a keypad,
//! a camera's lens) collects inliers and resembles the product cell by cell; its pixels, compared
//! with the product's own at the transform's placement, do not. Two comparisons, each blind to
//! lighting's gain and offset:
//!
//! - the normalised cross-correlation of luminance over the object's pixels;
//! - the correlation of edge structure (gradient orientation, its sign ignored, weighted by its
//!   strength) over the object and its outline. A thin or half-covered product (scissors in a
//!   hand) keeps its edges where its pixels, mixed with the backdrop's, stop correlating.
//!
//! Both are searched over a few small shifts, because a transform fitted to cell centres places
//! the product only within a few pixels.
//!
//! Both are blind to exactly what tells a colour variant from the product: a chrome-rimmed clock
//! is the black-rimmed one with its rim's contrast turned down. So at the best shift a third
//! measure, the tone, asks whether the photo's dark parts are dark in the frame: the frame's
//! luminance over the photo's dark core (pixels far from any other tone) as a share of its
//! luminance over the bright core. Lighting's gain cancels in the share; only the photo's
//! thick parts count, so blur and a misplacement of a pixel or two do not mix the tones; and
//! each core is read at a quartile, so a hand over part of it does not either.

use crate::verify::Similarity;

/// A frame's pixels, as the likeness reads them.
#[derive(Debug, Clone, Copy)]
pub struct FramePixels<'a> {
    pub(crate) rgb: &'a [u8],
    pub(crate) size: (usize, usize),
    pub(crate) stride: usize,
}

impl<'a> FramePixels<'a> {
    /// Packed RGB rows `stride` bytes apart, `(width, height)` pixels.
    pub fn new(rgb: &'a [u8], size: (usize, usize), stride: usize) -> Self {
        FramePixels { rgb, size, stride }
    }

    /// `(width, height)` in pixels.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// The luminance and edge structure of the pixels `x0..x1`, `y0..y1` (clamped to the
    /// frame): only the part of a frame a product is checked in is ever computed.
    fn luma(&self, [x0, y0, x1, y1]: [usize; 4]) -> Luma {
        let (x1, y1) = (x1.min(self.size.0), y1.min(self.size.1));
        let (x0, y0) = (x0.min(x1), y0.min(y1));
        let start = y0 * self.stride + x0 * 3;
        let mut luma = Luma::from_rgb(
            self.rgb.get(start..).unwrap_or_default(),
            (x1 - x0, y1 - y0),
            self.stride,
        );
        luma.origin = [x0 as f32, y0 as f32];
        luma
    }
}

/// Luminance of an image, blurred a little, row-major.
#[derive(Debug, Clone)]
struct Luma {
    /// Where its first pixel is in the image it was cut from.
    origin: [f32; 2],
    width: usize,
    height: usize,
    values: Vec<f32>,
    /// Edge structure at each pixel, polarity-free: `|g| (cos 2θ, sin 2θ)` of the luminance
    /// gradient `g` at angle `θ`, blurred a little.
    structure: [Vec<f32>; 2],
}

impl Luma {
    /// From packed RGB rows `stride` bytes apart.
    fn from_rgb(rgb: &[u8], (width, height): (usize, usize), stride: usize) -> Self {
        let mut values = vec![0f32; width * height];
        for (y, out) in values.chunks_exact_mut(width).enumerate() {
            let row = &rgb[y * stride..y * stride + width * 3];
            for (o, p) in out.iter_mut().zip(row.chunks_exact(3)) {
                *o = 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
            }
        }
        let values = box3(&values, width, height);
        let structure = structure(&values, width, height);
        Luma {
            origin: [0.0, 0.0],
            width,
            height,
            values,
            structure,
        }
    }

    /// The luminance and the edge structure at `(x, y)` of the image it was cut from.
    fn at(&self, x: f32, y: f32) -> Option<(f32, [f32; 2])> {
        let (x, y) = (x - self.origin[0], y - self.origin[1]);
        let at = Taps::new(self.width, self.height, x, y)?;
        let j = [0, 1].map(|k| at.of(&self.structure[k]));
        Some((at.of(&self.values), j))
    }
}

/// A reference photo's pixels, kept compact: one a photo, whichever of its views verified.
#[derive(Debug, Clone)]
pub struct Appearance {
    side: usize,
    /// Blurred luminance.
    luma: Vec<u8>,
    /// Edge structure, as [`Luma`]'s.
    structure: [Vec<i16>; 2],
    /// [`OBJECT`] on the object's pixels, [`OUTLINE`] on the few pixels around it, 0 elsewhere.
    mask: Vec<u8>,
    /// The object's box, in pixels: `[x0, y0, x1, y1]`.
    object: [f32; 4],
    /// [`DARK`], [`BRIGHT`] or 0 (a mid tone, or off the object) at each pixel.
    tone: Vec<u8>,
    /// Pixels (8-connected steps) from each pixel to the nearest one of another tone, capped at
    /// 255: how deep inside a patch of its tone a pixel lies.
    depth: Vec<u8>,
}

/// [`Appearance::mask`] on the object.
const OBJECT: u8 = 2;
/// [`Appearance::mask`] on the object's outline, [`OUTLINE_PIXELS`] wide.
const OUTLINE: u8 = 1;

/// [`Appearance::tone`] of a pixel at most [`DARK_LEVEL`] of the object's white.
const DARK: u8 = 1;
/// [`Appearance::tone`] of a pixel at least [`BRIGHT_LEVEL`] of the object's white.
const BRIGHT: u8 = 2;

/// An [`Appearance`] as a view of the same photo at another size sees it.
#[derive(Debug, Clone)]
pub struct ViewAppearance {
    /// The photo's pixels.
    pub appearance: std::sync::Arc<Appearance>,
    /// The appearance's pixels per view pixel.
    pub scale: f32,
}

/// How alike the frame and a reference view are where a transform puts the view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Likeness {
    /// Normalised cross-correlation of luminance over the object's pixels.
    pub pixels: f32,
    /// Correlation of edge structure over the object and its outline.
    pub edges: f32,
    /// The frame's luminance over the photo's dark core (its lower quartile) as a share of its
    /// luminance over the bright core (its upper quartile), at the best shift: low for the
    /// product however it is lit, high for a variant whose dark parts are light. `None` where
    /// the photo has no thick dark and bright parts, or too few of them land in the frame.
    pub tone: Option<f32>,
}

impl Appearance {
    /// From the view's canvas (packed RGB, `side` by `side`) and the photo's opacity on it.
    ///
    /// The object is the photo's opaque part. A photo without transparency whose border is one
    /// flat colour (a product shot on white) has its object cut out of that colour, so the
    /// backdrop is not compared with the frame's: the backdrop is what of that colour joins the
    /// border, so a white clock face inside a black rim stays the object's.
    pub fn new(rgb: &[u8], side: usize, opacity: &[f32]) -> Self {
        let mut object: Vec<bool> = opacity.iter().map(|&o| o >= 0.5).collect();
        if let Some(backdrop) = flat_backdrop(rgb, side, opacity) {
            let like_backdrop = |i: usize| {
                let p = &rgb[i * 3..i * 3 + 3];
                (0..3)
                    .all(|c| (i32::from(p[c]) - i32::from(backdrop[c])).abs() < BACKDROP_TOLERANCE)
            };
            cut_backdrop(&mut object, side, like_backdrop);
        }
        let mut mask = vec![0u8; side * side];
        let mut bbox = [
            f32::INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ];
        for (i, _) in object.iter().enumerate().filter(|(_, &o)| o) {
            let (x, y) = (i % side, i / side);
            bbox = [
                bbox[0].min(x as f32),
                bbox[1].min(y as f32),
                bbox[2].max(x as f32 + 1.0),
                bbox[3].max(y as f32 + 1.0),
            ];
            for yy in y.saturating_sub(OUTLINE_PIXELS)..(y + OUTLINE_PIXELS + 1).min(side) {
                for xx in x.saturating_sub(OUTLINE_PIXELS)..(x + OUTLINE_PIXELS + 1).min(side) {
                    let m = &mut mask[yy * side + xx];
                    *m = (*m).max(OUTLINE);
                }
            }
        }
        for (m, _) in mask.iter_mut().zip(&object).filter(|(_, &o)| o) {
            *m = OBJECT;
        }
        let luma = Luma::from_rgb(rgb, (side, side), side * 3);
        let tone = tones(&luma.values, &mask);
        let depth = depth(&tone, side);
        let quantise = |v: &[f32]| -> Vec<i16> {
            v.iter()
                .map(|x| x.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16)
                .collect()
        };
        Appearance {
            side,
            luma: luma
                .values
                .iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect(),
            structure: [quantise(&luma.structure[0]), quantise(&luma.structure[1])],
            mask,
            object: bbox,
            tone,
            depth,
        }
    }

    /// The luminance and the edge structure at `(x, y)`, with the mask there.
    fn at(&self, x: f32, y: f32) -> Option<(f32, [f32; 2], u8)> {
        let side = self.side;
        if !(x >= 0.0 && y >= 0.0) {
            return None;
        }
        let (xi, yi) = ((x + 0.5) as usize, (y + 0.5) as usize);
        let m = *self.mask.get(yi.min(side - 1) * side + xi.min(side - 1))?;
        if m == 0 {
            return None;
        }
        let at = Taps::new(side, side, x, y)?;
        let j = [0, 1].map(|k| at.of(&self.structure[k]));
        Some((at.of(&self.luma), j, m))
    }

    /// How alike the object is to the frame pixels that `t` carries it onto, at the best of the
    /// shifts of up to `reach` frame pixels; `None` when too little of it lands in the frame.
    /// `t` maps cells of `cell` pixels of a view of the photo with `scale` of these pixels to
    /// one of its own (the view's [`ViewAppearance::scale`]) onto the frame's.
    pub fn likeness(
        &self,
        frame: &FramePixels<'_>,
        t: &Similarity,
        scale: f32,
        cell: f32,
        reach: f32,
    ) -> Option<Likeness> {
        // reference pixels to frame pixels
        let px = Similarity {
            a: [t.a[0] / scale, t.a[1] / scale],
            b: [cell * t.b[0], cell * t.b[1]],
        };
        let [ar, ai] = px.a;
        if ar * ar + ai * ai < 1e-9 {
            return None;
        }
        // the object's extent in the frame
        if self.object[0] > self.object[2] {
            return None;
        }
        let [lo_x, lo_y, hi_x, hi_y] = px.carry_box(self.object);
        let (fw, fh) = frame.size();
        let (x0, x1) = (lo_x.max(0.0), hi_x.min(fw as f32 - 1.0));
        let (y0, y1) = (lo_y.max(0.0), hi_y.min(fh as f32 - 1.0));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        // a margin keeps the crop's own edges out of the blur and the gradients sampled
        let margin = 4;
        let frame = frame.luma([
            (x0 as usize).saturating_sub(margin),
            (y0 as usize).saturating_sub(margin),
            x1 as usize + margin + 1,
            y1 as usize + margin + 1,
        ]);
        let step = (((x1 - x0) * (y1 - y0) / MAX_SAMPLES as f32).sqrt()).max(1.0);
        // the frame samples and where each falls on the reference
        let mut samples = Vec::new();
        let mut y = y0;
        while y <= y1 {
            let mut x = x0;
            while x <= x1 {
                if let Some((v, j)) = frame.at(x, y) {
                    samples.push((px.invert([x, y]), v, j));
                }
                x += step;
            }
            y += step;
        }
        // the reference's structure turns with the product, by twice its angle
        let angle = 2.0 * ai.atan2(ar);
        let turn = (angle.cos(), angle.sin());
        // a shift of the product by (dx, dy) frame pixels, judged by both measures together
        let turned = Similarity {
            a: px.a,
            b: [0.0, 0.0],
        };
        let at = |(dx, dy): (f32, f32)| {
            let [rx, ry] = turned.invert([dx, dy]);
            self.correlation(&samples, rx, ry, turn)
        };
        // a core pixel lies this many reference pixels inside its patch
        let core = CORE_FRAME_PIXELS / (ar * ar + ai * ai).sqrt();
        let score = |l: &Likeness| l.pixels + l.edges;
        let mut best: Option<((f32, f32), Likeness)> = None;
        let consider = |best: &mut Option<((f32, f32), Likeness)>, d: (f32, f32)| {
            if let Some(l) = at(d) {
                if best.is_none_or(|(_, b)| score(&l) > score(&b)) {
                    *best = Some((d, l));
                }
            }
        };
        // coarse to fine: a grid of shifts half the reach apart, then the best one's neighbours
        let coarse = reach / 2.0;
        for sy in -1..=1 {
            for sx in -1..=1 {
                consider(&mut best, (sx as f32 * coarse, sy as f32 * coarse));
            }
        }
        if let Some(((cx, cy), _)) = best {
            let fine = coarse / 2.0;
            for sy in -1..=1 {
                for sx in -1..=1 {
                    if (sx, sy) != (0, 0) {
                        consider(&mut best, (cx + sx as f32 * fine, cy + sy as f32 * fine));
                    }
                }
            }
        }
        best.map(|(d, l)| {
            let [rx, ry] = turned.invert([d.0, d.1]);
            Likeness {
                tone: self.tone(&samples, rx, ry, core),
                ..l
            }
        })
    }

    /// [`Likeness::tone`] with the reference shifted by `(rx, ry)` of its pixels: the frame's
    /// samples that fall at least `core` reference pixels deep in a dark or a bright patch.
    fn tone(
        &self,
        samples: &[([f32; 2], f32, [f32; 2])],
        rx: f32,
        ry: f32,
        core: f32,
    ) -> Option<f32> {
        let (mut dark, mut bright) = (Vec::new(), Vec::new());
        for &([x, y], b, _) in samples {
            let (x, y) = (x - rx, y - ry);
            if !(x >= 0.0 && y >= 0.0) {
                continue;
            }
            let (xi, yi) = ((x + 0.5) as usize, (y + 0.5) as usize);
            if xi >= self.side || yi >= self.side {
                continue;
            }
            let i = yi * self.side + xi;
            if f32::from(self.depth[i]) < core {
                continue;
            }
            match self.tone[i] {
                DARK => dark.push(b),
                BRIGHT => bright.push(b),
                _ => {}
            }
        }
        if dark.len() < MIN_TONE_SAMPLES || bright.len() < MIN_TONE_SAMPLES {
            return None;
        }
        // quartiles, not medians: a hand or a glare over up to three quarters of a core does not
        // move them (a guitar under a hand covering 30 % of it, split C's clip 8: a median tone
        // of 0.74 over its 32 sightings by medians, 0.01 by quartiles)
        let quantile = |v: &mut Vec<f32>, q: usize| {
            let at = v.len() * q / 4;
            *v.select_nth_unstable_by(at, f32::total_cmp).1
        };
        let (d, b) = (quantile(&mut dark, 1), quantile(&mut bright, 3));
        Some(d / b.max(1.0))
    }

    fn correlation(
        &self,
        samples: &[([f32; 2], f32, [f32; 2])],
        rx: f32,
        ry: f32,
        (c, s): (f32, f32),
    ) -> Option<Likeness> {
        let (mut n, mut sa, mut sb, mut saa, mut sbb, mut sab) =
            (0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
        let (mut dot, mut rr, mut ff) = (0f32, 0f32, 0f32);
        for &([x, y], b, j) in samples {
            let Some((a, r, m)) = self.at(x - rx, y - ry) else {
                continue;
            };
            let r = [c * r[0] - s * r[1], s * r[0] + c * r[1]];
            dot += r[0] * j[0] + r[1] * j[1];
            rr += r[0] * r[0] + r[1] * r[1];
            ff += j[0] * j[0] + j[1] * j[1];
            if m != OBJECT {
                continue;
            }
            n += 1.0;
            sa += a;
            sb += b;
            saa += a * a;
            sbb += b * b;
            sab += a * b;
        }
        if n < MIN_SAMPLES {
            return None;
        }
        let va = saa / n - (sa / n).powi(2);
        let vb = sbb / n - (sb / n).powi(2);
        let pixels = if va <= 1e-3 || vb <= 1e-3 {
            0.0
        } else {
            (sab / n - sa / n * sb / n) / (va * vb).sqrt()
        };
        let edges = if rr <= 1e-6 || ff <= 1e-6 {
            0.0
        } else {
            dot / (rr * ff).sqrt()
        };
        Some(Likeness {
            pixels,
            edges,
            tone: None,
        })
    }
}

/// Pixels around the object whose edges count: its outline against the backdrop.
const OUTLINE_PIXELS: usize = 2;

/// A pixel is dark at most this share of the object's white (its 90th percentile of
/// luminance)...
const DARK_LEVEL: f32 = 0.25;
/// ...and bright at least this share.
const BRIGHT_LEVEL: f32 = 0.75;
/// An object whose white is darker than this (of 255) has no tones: a wholly dark product.
const MIN_WHITE: f32 = 64.0;
/// Frame pixels a sample must lie inside its tone's patch to count for [`Likeness::tone`]:
/// more than the blur and the placement error mix into a patch's rim.
const CORE_FRAME_PIXELS: f32 = 3.0;
/// Fewest samples of each core [`Likeness::tone`] is measured from.
const MIN_TONE_SAMPLES: usize = 12;

/// [`DARK`], [`BRIGHT`] or 0 at each pixel of `luma`, on the object ([`OBJECT`] in `mask`) only.
fn tones(luma: &[f32], mask: &[u8]) -> Vec<u8> {
    let mut object: Vec<f32> = luma
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m == OBJECT)
        .map(|(&v, _)| v)
        .collect();
    if object.is_empty() {
        return vec![0; luma.len()];
    }
    let at = object.len() * 9 / 10;
    let white = *object.select_nth_unstable_by(at, f32::total_cmp).1;
    if white < MIN_WHITE {
        return vec![0; luma.len()];
    }
    luma.iter()
        .zip(mask)
        .map(|(&v, &m)| match m {
            OBJECT if v <= DARK_LEVEL * white => DARK,
            OBJECT if v >= BRIGHT_LEVEL * white => BRIGHT,
            _ => 0,
        })
        .collect()
}

/// [`Appearance::depth`] of a `side` by `side` tone map: a two-pass chamfer distance, 0 on
/// tone 0, 1 on a toned pixel touching another tone or the canvas's edge.
fn depth(tone: &[u8], side: usize) -> Vec<u8> {
    let mut d = vec![0u8; tone.len()];
    for y in 0..side {
        for x in 0..side {
            let t = tone[y * side + x];
            if t == 0 {
                continue;
            }
            let edge = x == 0 || y == 0 || x + 1 == side || y + 1 == side;
            let touches = edge
                || (y - 1..=y + 1).any(|yy| (x - 1..=x + 1).any(|xx| tone[yy * side + xx] != t));
            d[y * side + x] = if touches { 1 } else { u8::MAX };
        }
    }
    let neighbours = |d: &[u8], x: usize, y: usize, back: bool| -> u8 {
        let offsets: [(isize, isize); 4] = if back {
            [(1, 0), (-1, 1), (0, 1), (1, 1)]
        } else {
            [(-1, 0), (-1, -1), (0, -1), (1, -1)]
        };
        offsets
            .iter()
            .filter_map(|&(dx, dy)| {
                let (xx, yy) = (x.checked_add_signed(dx)?, y.checked_add_signed(dy)?);
                (xx < side && yy < side).then(|| d[yy * side + xx])
            })
            .min()
            .unwrap_or(0)
    };
    for y in 0..side {
        for x in 0..side {
            if d[y * side + x] > 1 {
                let n = neighbours(&d, x, y, false);
                d[y * side + x] = d[y * side + x].min(n.saturating_add(1));
            }
        }
    }
    for y in (0..side).rev() {
        for x in (0..side).rev() {
            if d[y * side + x] > 1 {
                let n = neighbours(&d, x, y, true);
                d[y * side + x] = d[y * side + x].min(n.saturating_add(1));
            }
        }
    }
    d
}

/// The polarity-free edge structure of `v`: Sobel gradients `g` turned into
/// `|g| (cos 2θ, sin 2θ)`, then blurred so that a pixel or two of misplacement still overlaps.
fn structure(v: &[f32], w: usize, h: usize) -> [Vec<f32>; 2] {
    let mut jx = vec![0f32; v.len()];
    let mut jy = vec![0f32; v.len()];
    if w < 3 || h < 3 {
        return [jx, jy];
    }
    // the separable Sobel: each row's horizontal difference and smoothing first
    let mut diff = vec![0f32; v.len()];
    let mut smooth = vec![0f32; v.len()];
    for ((row, d), s) in v
        .chunks_exact(w)
        .zip(diff.chunks_exact_mut(w))
        .zip(smooth.chunks_exact_mut(w))
    {
        let (l, c, r) = (&row[..w - 2], &row[1..w - 1], &row[2..]);
        for ((d, l), r) in d[1..w - 1].iter_mut().zip(l).zip(r) {
            *d = r - l;
        }
        for (((s, l), c), r) in s[1..w - 1].iter_mut().zip(l).zip(c).zip(r) {
            *s = l + 2.0 * c + r;
        }
    }
    for y in 1..h - 1 {
        let (du, dc, dd) = (
            &diff[(y - 1) * w..y * w],
            &diff[y * w..(y + 1) * w],
            &diff[(y + 1) * w..(y + 2) * w],
        );
        let (su, sd) = (
            &smooth[(y - 1) * w..y * w],
            &smooth[(y + 1) * w..(y + 2) * w],
        );
        let ox = &mut jx[y * w..(y + 1) * w];
        let oy = &mut jy[y * w..(y + 1) * w];
        for ((((((ox, oy), du), dc), dd), su), sd) in ox
            .iter_mut()
            .zip(oy.iter_mut())
            .zip(du)
            .zip(dc)
            .zip(dd)
            .zip(su)
            .zip(sd)
        {
            let gx = du + 2.0 * dc + dd;
            let gy = sd - su;
            let m2 = gx * gx + gy * gy;
            let inv = 1.0 / m2.max(1e-12).sqrt();
            *ox = (gx * gx - gy * gy) * inv;
            *oy = 2.0 * gx * gy * inv;
        }
    }
    [box3(&jx, w, h), box3(&jy, w, h)]
}

/// A backdrop pixel differs from the backdrop's colour by less than this in every channel.
const BACKDROP_TOLERANCE: i32 = 24;

/// Takes out of `object` (a `side` by `side` mask) every pixel `like_backdrop` accepts that
/// joins the mask's border (the canvas's edge or a pixel off the object) through such pixels.
fn cut_backdrop(object: &mut [bool], side: usize, like_backdrop: impl Fn(usize) -> bool) {
    let on_border = |i: usize| {
        let (x, y) = (i % side, i / side);
        x == 0
            || y == 0
            || x + 1 == side
            || y + 1 == side
            || !object[i - 1]
            || !object[i + 1]
            || !object[i - side]
            || !object[i + side]
    };
    let mut stack: Vec<usize> = (0..object.len())
        .filter(|&i| object[i] && on_border(i) && like_backdrop(i))
        .collect();
    for &i in &stack {
        object[i] = false;
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % side, i / side);
        let next = [
            (x > 0).then(|| i - 1),
            (x + 1 < side).then(|| i + 1),
            (y > 0).then(|| i - side),
            (y + 1 < side).then(|| i + side),
        ];
        for j in next.into_iter().flatten() {
            if object[j] && like_backdrop(j) {
                object[j] = false;
                stack.push(j);
            }
        }
    }
}

/// The colour of an opaque photo's border where nearly all of it is that colour: the photo's
/// backdrop. `None` for a photo with transparency (its opacity is its mask) or a busy border.
fn flat_backdrop(rgb: &[u8], side: usize, opacity: &[f32]) -> Option<[u8; 3]> {
    // the photo's rectangle on the canvas
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, &o) in opacity.iter().enumerate() {
        if o > 0.0 {
            let (x, y) = (i % side, i / side);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 > x1 || y0 > y1 {
        return None;
    }
    let inside = (y0..=y1).flat_map(|y| (x0..=x1).map(move |x| y * side + x));
    if inside.clone().any(|i| opacity[i] < 0.99) {
        return None;
    }
    let border: Vec<[u8; 3]> = (x0..=x1)
        .flat_map(|x| [y0 * side + x, y1 * side + x])
        .chain((y0..=y1).flat_map(|y| [y * side + x0, y * side + x1]))
        .map(|i| [rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2]])
        .collect();
    let median = |c: usize| {
        let mut v: Vec<u8> = border.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let backdrop = [median(0), median(1), median(2)];
    let flat = border
        .iter()
        .filter(|p| {
            (0..3).all(|c| (i32::from(p[c]) - i32::from(backdrop[c])).abs() < BACKDROP_TOLERANCE)
        })
        .count();
    (flat * 10 >= border.len() * 9).then_some(backdrop)
}

/// Frame samples over the object's extent, at most.
const MAX_SAMPLES: usize = 2000;
/// Fewest opaque samples a correlation is computed from.
const MIN_SAMPLES: f32 = 40.0;

/// The four pixels of a `w x h` image around a point, and their bilinear weights: one lookup
/// for every plane read at that point.
struct Taps {
    index: [usize; 4],
    weight: [f32; 4],
}

impl Taps {
    /// `None` outside the image.
    fn new(w: usize, h: usize, x: f32, y: f32) -> Option<Taps> {
        if !(x >= 0.0 && y >= 0.0 && x <= (w - 1) as f32 && y <= (h - 1) as f32) {
            return None;
        }
        let (x0, y0) = (x as usize, y as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        Some(Taps {
            index: [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1],
            weight: [
                (1.0 - fx) * (1.0 - fy),
                fx * (1.0 - fy),
                (1.0 - fx) * fy,
                fx * fy,
            ],
        })
    }

    /// The plane `v` (of the image's size) at the point.
    fn of<T: Copy + Into<f32>>(&self, v: &[T]) -> f32 {
        self.index
            .iter()
            .zip(self.weight)
            .map(|(&i, w)| v[i].into() * w)
            .sum()
    }
}

/// A 3x3 box blur; at the edges, the mean of the neighbours there are.
fn box3(v: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut across = vec![0f32; v.len()];
    for (row, out) in v.chunks_exact(w).zip(across.chunks_exact_mut(w)) {
        blur_row(row, out);
    }
    let mut out = vec![0f32; v.len()];
    for y in 0..h {
        let (lo, hi) = (y.saturating_sub(1), (y + 1).min(h - 1));
        let scale = 1.0 / (hi - lo + 1) as f32;
        let dst = &mut out[y * w..(y + 1) * w];
        for yy in lo..=hi {
            for (d, &s) in dst.iter_mut().zip(&across[yy * w..(yy + 1) * w]) {
                *d += s;
            }
        }
        dst.iter_mut().for_each(|d| *d *= scale);
    }
    out
}

/// One row of [`box3`]'s horizontal pass.
fn blur_row(row: &[f32], out: &mut [f32]) {
    let w = row.len();
    if w < 2 {
        out.copy_from_slice(row);
        return;
    }
    out[0] = (row[0] + row[1]) / 2.0;
    out[w - 1] = (row[w - 2] + row[w - 1]) / 2.0;
    let (a, b, c) = (&row[..w - 2], &row[1..w - 1], &row[2..]);
    for (((o, a), b), c) in out[1..w - 1].iter_mut().zip(a).zip(b).zip(c) {
        *o = (a + b + c) * (1.0 / 3.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drawing on a `side`-pixel grey canvas: a dark disc with a bright bar across it, opaque
    /// only on the disc (like clip art with transparency).
    fn drawing(side: usize, bar_vertical: bool) -> (Vec<u8>, Vec<f32>) {
        let mut rgb = vec![127u8; side * side * 3];
        let mut opacity = vec![0f32; side * side];
        let c = side as f32 / 2.0;
        for y in 0..side {
            for x in 0..side {
                let (dx, dy) = (x as f32 - c, y as f32 - c);
                if dx.hypot(dy) > side as f32 * 0.4 {
                    continue;
                }
                opacity[y * side + x] = 1.0;
                let along = if bar_vertical { dx } else { dy };
                let v = if along.abs() < side as f32 * 0.08 {
                    230
                } else {
                    40 + (x * 60 / side) as u8
                };
                rgb[(y * side + x) * 3..(y * side + x) * 3 + 3].copy_from_slice(&[v, v / 2, v]);
            }
        }
        (rgb, opacity)
    }

    /// A frame of `w x h` textured backdrop with `rgb` (a `side` canvas, opaque where
    /// `opacity` is) pasted at `(ox, oy)`, its brightness and contrast changed.
    fn frame_with(rgb: &[u8], opacity: &[f32], side: usize, (ox, oy): (usize, usize)) -> Vec<u8> {
        let (w, h) = (320, 192);
        let mut frame: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i / 3 % w) * 7 + (i / 3 / w) * 3) as u8 / 2 + 60)
            .collect();
        for y in 0..side {
            for x in 0..side {
                if opacity[y * side + x] >= 0.5 {
                    for c in 0..3 {
                        let v = f32::from(rgb[(y * side + x) * 3 + c]) * 0.7 + 30.0;
                        frame[((oy + y) * w + ox + x) * 3 + c] = v as u8;
                    }
                }
            }
        }
        frame
    }

    /// `view`'s likeness under `t` to `drawn` (a `side` canvas, opaque where `opacity` is)
    /// pasted at (40, 24) by [`frame_with`]: the photo's own canvas is the view, 16-pixel
    /// cells, 6 pixels of search.
    fn pasted_likeness(
        view: &Appearance,
        drawn: &[u8],
        opacity: &[f32],
        side: usize,
        t: &Similarity,
    ) -> Option<Likeness> {
        let pixels = frame_with(drawn, opacity, side, (40, 24));
        view.likeness(
            &FramePixels::new(&pixels, (320, 192), 320 * 3),
            t,
            1.0,
            16.0,
            6.0,
        )
    }

    #[test]
    fn the_product_where_the_transform_puts_it_is_alike_a_look_alike_is_not() {
        let side = 64;
        let (product, opacity) = drawing(side, false);
        let (look_alike, _) = drawing(side, true);
        // reference cells are 16 px; the object sits 40 px right and 24 px down in the frame,
        // and the transform found from cell centres is 3 px off
        let t = Similarity {
            a: [1.0, 0.0],
            b: [(40.0 + 3.0) / 16.0, 24.0 / 16.0],
        };
        let view = Appearance::new(&product, side, &opacity);
        let judge = |drawn: &[u8], t: &Similarity| pasted_likeness(&view, drawn, &opacity, side, t);
        let same = judge(&product, &t).expect("in the frame");
        let other = judge(&look_alike, &t).expect("in the frame");
        assert!(same.pixels > 0.9 && same.edges > 0.6, "{same:?}");
        assert!(other.pixels < 0.5 && other.edges < 0.5, "{other:?}");
        // out of the frame entirely: nothing to compare
        let away = Similarity {
            a: [1.0, 0.0],
            b: [100.0, 100.0],
        };
        assert_eq!(judge(&product, &away), None);
    }

    /// A wall clock on a `side`-pixel canvas: a rim of luminance `rim`, a white face, a dark
    /// hand, opaque only on the clock.
    fn clock(side: usize, rim: u8) -> (Vec<u8>, Vec<f32>) {
        let mut rgb = vec![127u8; side * side * 3];
        let mut opacity = vec![0f32; side * side];
        let c = side as f32 / 2.0;
        for y in 0..side {
            for x in 0..side {
                let (dx, dy) = (x as f32 - c, y as f32 - c);
                let r = dx.hypot(dy) / side as f32;
                if r > 0.45 {
                    continue;
                }
                opacity[y * side + x] = 1.0;
                let hand = dx.abs() < side as f32 * 0.03 && dy < 0.0 && r < 0.28;
                let v = match () {
                    _ if r > 0.33 => rim,
                    _ if hand => 20,
                    _ => 235,
                };
                rgb[(y * side + x) * 3..(y * side + x) * 3 + 3].copy_from_slice(&[v, v, v]);
            }
        }
        (rgb, opacity)
    }

    #[test]
    fn another_colour_of_the_product_has_its_dark_parts_light() {
        let side = 96;
        let (product, opacity) = clock(side, 15);
        let (chrome, _) = clock(side, 185);
        let view = Appearance::new(&product, side, &opacity);
        let t = Similarity {
            a: [1.0, 0.0],
            b: [40.0 / 16.0, 24.0 / 16.0],
        };
        // dimmed to 0.7 with an offset of 30: gain and offset both
        let tone =
            |drawn: &[u8]| pasted_likeness(&view, drawn, &opacity, side, &t).expect("in the frame");
        let (same, other) = (tone(&product), tone(&chrome));
        assert!(same.tone.is_some_and(|t| t < 0.25), "{same:?}");
        assert!(other.tone.is_some_and(|t| t > 0.7), "{other:?}");
        // both lined up alike enough in their shapes: only the tone tells them apart
        assert!(other.edges > 0.4, "{other:?}");
        // a photo without thick dark parts has no tone to measure
        let (grey, _) = clock(side, 127);
        let plain = Appearance::new(&grey, side, &opacity);
        let l = pasted_likeness(&plain, &grey, &opacity, side, &t);
        assert_eq!(l.expect("in the frame").tone, None);
    }

    #[test]
    fn a_product_shot_on_white_is_cut_out_of_its_backdrop() {
        let side = 32;
        // `colour` over rows `ys` and columns `xs` of a `side`-pixel canvas
        let paint = |rgb: &mut [u8],
                     ys: std::ops::Range<usize>,
                     xs: std::ops::Range<usize>,
                     colour: [u8; 3]| {
            for y in ys {
                for x in xs.clone() {
                    rgb[(y * side + x) * 3..(y * side + x) * 3 + 3].copy_from_slice(&colour);
                }
            }
        };
        let object = |view: &Appearance| view.mask.iter().filter(|&&m| m == OBJECT).count();
        let opaque = vec![1.0; side * side];
        let mut rgb = vec![250u8; side * side * 3];
        paint(&mut rgb, 10..20, 8..24, [200, 30, 30]);
        assert_eq!(object(&Appearance::new(&rgb, side, &opaque)), 10 * 16);
        // white inside the product (a label, a clock's face) is the product's
        paint(&mut rgb, 13..17, 12..20, [250, 250, 250]);
        assert_eq!(object(&Appearance::new(&rgb, side, &opaque)), 10 * 16);
        // with transparency, the opacity alone is the object
        let mut opacity = opaque.clone();
        opacity[0] = 0.0;
        assert_eq!(
            object(&Appearance::new(&rgb, side, &opacity)),
            side * side - 1
        );
    }
}
