//! A procedural studio set: a lit plaster wall with a framed picture and a bookshelf, and a wooden
//! table top in front. Deterministic from a seed, textured everywhere so that a recogniser cannot
//! tell products from the set by flatness alone.

use super::noise::{fbm, hash2, Rng};

/// Where the table's back edge meets the wall, as a fraction of the frame height.
pub(crate) const HORIZON: f32 = 0.62;

const WALLS: [[f32; 3]; 4] = [
    [196.0, 186.0, 170.0],
    [172.0, 181.0, 190.0],
    [186.0, 194.0, 176.0],
    [200.0, 178.0, 168.0],
];
const BOOKS: [[f32; 3]; 6] = [
    [120.0, 52.0, 48.0],
    [54.0, 82.0, 110.0],
    [70.0, 100.0, 70.0],
    [150.0, 130.0, 80.0],
    [90.0, 70.0, 100.0],
    [60.0, 60.0, 62.0],
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Canvas {
    fn fill_rect(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        f: impl Fn(usize, usize) -> [f32; 3],
    ) {
        let xa = (x0.max(0.0) as usize).min(self.w);
        let xb = (x1.max(0.0) as usize).min(self.w);
        let ya = (y0.max(0.0) as usize).min(self.h);
        let yb = (y1.max(0.0) as usize).min(self.h);
        for y in ya..yb {
            for x in xa..xb {
                self.px[y * self.w + x] = f(x, y);
            }
        }
    }

    fn shade_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, f: impl Fn(usize, usize) -> f32) {
        let xa = (x0.max(0.0) as usize).min(self.w);
        let xb = (x1.max(0.0) as usize).min(self.w);
        let ya = (y0.max(0.0) as usize).min(self.h);
        let yb = (y1.max(0.0) as usize).min(self.h);
        for y in ya..yb {
            for x in xa..xb {
                let k = f(x, y);
                let p = &mut self.px[y * self.w + x];
                for c in p.iter_mut() {
                    *c *= k;
                }
            }
        }
    }
}

fn scale(c: [f32; 3], k: f32) -> [f32; 3] {
    [c[0] * k, c[1] * k, c[2] * k]
}

fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Renders the set as packed RGBx (4 bytes a pixel, row-major, no padding).
pub fn render_background(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let (wf, hf) = (width as f32, height as f32);
    let mut rng = Rng::new(seed);
    let wall = WALLS[(rng.next_f32() * WALLS.len() as f32) as usize % WALLS.len()];
    let spot = (rng.range(0.25, 0.75), rng.range(0.15, 0.35));
    let panel = wf / rng.range(5.0, 7.0);
    let panel_off = rng.range(0.0, panel);
    let horizon = HORIZON * hf;
    let trim_top = horizon - 0.03 * hf;
    let light_wood = [172.0 + rng.range(-12.0, 12.0), 122.0, 76.0];
    let dark_wood = [112.0, 72.0, 44.0 + rng.range(-8.0, 8.0)];
    // Texture scales follow the frame size so that small test frames look like big ones.
    let u = hf / 720.0;

    let mut canvas = Canvas {
        w,
        h,
        px: vec![[0.0; 3]; w * h],
    };
    for y in 0..h {
        let yf = y as f32;
        let fy = yf / hf;
        for x in 0..w {
            let xf = x as f32;
            let fx = xf / wf;
            let grain = hash2(seed ^ 0xA5, x as i64, y as i64) - 0.5;
            let c = if yf < trim_top {
                let d2 = ((fx - spot.0) * wf / hf).powi(2) + (fy - spot.1).powi(2);
                let light = 0.78 + 0.14 * (1.0 - fy / HORIZON) + 0.22 * (-d2 / 0.18).exp();
                let mottle = (fbm(seed, xf / (160.0 * u), yf / (160.0 * u), 4) - 0.5) * 0.12;
                let seam = if (xf + panel_off) % panel < 2.0 * u {
                    0.9
                } else {
                    1.0
                };
                scale(wall, (light + mottle + grain * 0.03) * seam)
            } else if yf < horizon {
                // Skirting board: a lighter trim with a shadow line at its top.
                let t = (yf - trim_top) / (horizon - trim_top);
                let k = if t < 0.12 { 0.7 } else { 0.95 + 0.05 * t };
                scale([226.0, 222.0, 214.0], k + grain * 0.02)
            } else {
                let ty = (yf - horizon) / (hf - horizon);
                let warp = fbm(seed ^ 0x5EED, xf / (260.0 * u), yf / (30.0 * u), 3) * 9.0;
                let rings = (yf / (7.0 * u * (0.6 + ty)) + warp).sin() * 0.5 + 0.5;
                let fibre = fbm(seed ^ 0xF1B, xf / (40.0 * u), yf / (2.5 * u), 2);
                let mut c = lerp(dark_wood, light_wood, (rings * 0.7 + fibre * 0.3).powf(0.8));
                // The wall shades the back of the table; the front edge is in shadow.
                let near_wall = 0.78 + 0.22 * (ty / 0.2).min(1.0);
                let edge = if ty > 0.955 { 0.55 } else { 1.0 };
                let highlight = if yf - horizon < 2.0 * u { 1.18 } else { 1.0 };
                c = scale(c, near_wall * edge * highlight + grain * 0.03);
                c
            };
            canvas.px[y * w + x] = c;
        }
    }

    // A framed picture on the left: a dark frame around a soft landscape.
    let (px0, py0) = (rng.range(0.05, 0.12) * wf, rng.range(0.10, 0.16) * hf);
    let (px1, py1) = (px0 + 0.14 * wf, py0 + 0.22 * hf);
    let border = 9.0 * u;
    canvas.shade_rect(px0 + 6.0 * u, py1, px1 + 6.0 * u, py1 + 8.0 * u, |_, _| {
        0.82
    });
    canvas.fill_rect(px0, py0, px1, py1, |x, y| {
        let g = hash2(seed ^ 0xF4, x as i64, y as i64) * 10.0;
        [58.0 + g, 50.0 + g, 44.0 + g]
    });
    let hills = seed ^ 0x411;
    canvas.fill_rect(
        px0 + border,
        py0 + border,
        px1 - border,
        py1 - border,
        |x, y| {
            let t = (y as f32 - py0) / (py1 - py0);
            let ridge = 0.55 + 0.2 * fbm(hills, x as f32 / (60.0 * u), 0.0, 3);
            if t < ridge {
                lerp([150.0, 185.0, 215.0], [225.0, 215.0, 190.0], t / ridge)
            } else {
                let k = fbm(hills ^ 1, x as f32 / (12.0 * u), y as f32 / (12.0 * u), 2);
                lerp([70.0, 110.0, 70.0], [110.0, 140.0, 80.0], k)
            }
        },
    );

    // A shelf on the right with a row of books in muted colours.
    let (sx0, sx1) = (rng.range(0.68, 0.74) * wf, 0.97 * wf);
    let sy = rng.range(0.20, 0.26) * hf;
    let thick = 0.018 * hf;
    canvas.shade_rect(sx0, sy + thick, sx1, sy + thick + 14.0 * u, |_, y| {
        0.75 + 0.25 * ((y as f32 - sy - thick) / (14.0 * u)).min(1.0)
    });
    canvas.fill_rect(sx0, sy, sx1, sy + thick, |x, y| {
        let k = if (y as f32) < sy + 2.0 * u { 1.2 } else { 1.0 };
        scale(
            [96.0, 72.0, 54.0],
            k + hash2(seed ^ 0x51, x as i64, y as i64) * 0.08,
        )
    });
    let mut bx = sx0 + 0.02 * wf;
    while bx < sx1 - 0.04 * wf {
        let bw = rng.range(0.011, 0.022) * wf;
        let bh = rng.range(0.06, 0.10) * hf;
        let col = BOOKS[(rng.next_f32() * BOOKS.len() as f32) as usize % BOOKS.len()];
        let lean = rng.next_f32() < 0.15;
        let top = if lean { sy - bh * 0.8 } else { sy - bh };
        canvas.fill_rect(bx, top, bx + bw, sy, |x, y| {
            let across = (x as f32 - bx) / bw;
            let along = (y as f32 - top) / (sy - top);
            let band = if (0.12..0.18).contains(&along) || (0.80..0.86).contains(&along) {
                0.72
            } else {
                1.0
            };
            scale(
                col,
                (0.8 + 0.35 * (across * std::f32::consts::PI).sin()) * band,
            )
        });
        bx += bw + rng.range(0.0, 0.006) * wf;
    }

    // Lens vignette, then quantise.
    let mut out = vec![0u8; w * h * 4];
    for y in 0..h {
        let fy = y as f32 / hf - 0.5;
        for x in 0..w {
            let fx = x as f32 / wf - 0.5;
            let k = 1.0 - 0.45 * (fx * fx + fy * fy);
            let p = canvas.px[y * w + x];
            let o = &mut out[(y * w + x) * 4..][..4];
            for c in 0..3 {
                o[c] = (p[c] * k).round().clamp(0.0, 255.0) as u8;
            }
            o[3] = 255;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_textured() {
        let a = render_background(160, 90, 1);
        assert_eq!(a.len(), 160 * 90 * 4);
        assert_eq!(a, render_background(160, 90, 1));
        assert_ne!(a, render_background(160, 90, 2));
        // Not flat: many distinct colours on the wall and on the table.
        let distinct: std::collections::HashSet<&[u8]> = a.chunks(4).collect();
        assert!(distinct.len() > 1000, "only {} colours", distinct.len());
    }
}
