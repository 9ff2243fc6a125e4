//! Depthwise convolution with the folded batch-norm bias and ReLU6 fused in, on channels-last
//! activations.
//!
//! candle runs a grouped convolution as one convolution per group, which for a depthwise layer of
//! 1152 channels means 1152 tiny im2col calls. Here a SIMD vector holds neighbouring channels of
//! one pixel (AVX-512 or AVX2, chosen at run time through pulp), and four output pixels at a time
//! accumulate, every tap one FMA; at stride 1 a channel block's `k x k` weights stay in registers
//! over a run of such groups. Taps in the zero padding read one pixel of zeros, so that edge
//! pixels need no case of their own: on a 14x24 map, 40 % of a 5x5 kernel's outputs are. The
//! expand layer's ReLU6 is already applied by its 1x1 kernel ([`crate::pointwise`]). On CUDA the
//! model falls back to candle's grouped convolution. `cargo bench --bench depthwise` compares
//! each Lite0 shape with candle's grouped convolution.

use std::ops::Range;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Zero padding before and after, per spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad2 {
    /// Rows added above.
    pub top: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the right.
    pub right: usize,
}

/// The input rows a call of [`DepthwiseNhwc::forward_rows`] reads, each `w C` floats: a run of
/// consecutive image rows, or a ring of row slots (image row `iy` in slot `iy % slots`) that a
/// fused block fills band by band, so that the rows one band shares with the next stay where they
/// are (moving them to the front of a buffer copied 2-4 rows of 92-147 KB per output row in blocks
/// 1-4 at 768x448, about 100 MB a frame).
#[derive(Debug, Clone, Copy)]
pub struct Band<'a> {
    x: &'a [f32],
    /// The image row in the first row of `x` (consecutive rows).
    row0: usize,
    /// Row slots of the ring, 0 for consecutive rows.
    slots: usize,
}

impl<'a> Band<'a> {
    /// Image rows from `row0` on, one after another.
    pub fn rows(x: &'a [f32], row0: usize) -> Self {
        Band { x, row0, slots: 0 }
    }

    /// A ring of `slots` rows: image row `iy` in row `iy % slots` of `x`.
    pub fn ring(x: &'a [f32], slots: usize) -> Self {
        assert!(slots > 0, "a ring has slots");
        Band { x, row0: 0, slots }
    }

    /// The row of `x` that holds image row `iy`.
    #[inline(always)]
    fn slot(&self, iy: usize) -> usize {
        if self.slots == 0 {
            iy - self.row0
        } else {
            iy % self.slots
        }
    }

    /// Whether it holds image rows `rows` of `row_len` floats each.
    fn holds(&self, rows: Range<usize>, row_len: usize) -> bool {
        let held = self.x.len() / row_len.max(1);
        if self.slots == 0 {
            self.row0 <= rows.start && self.row0 + held >= rows.end
        } else {
            held >= self.slots && rows.len() <= self.slots
        }
    }
}

/// A depthwise `k x k` convolution with bias and ReLU6 on channels-last activations: each
/// SIMD vector holds neighbouring channels of one pixel, so every tap is one vector load and one
/// FMA whatever the width of the image, and the 1x1 layers on either side read and write the
/// same layout without a transpose.
#[derive(Debug, Clone)]
pub struct DepthwiseNhwc {
    /// `[k * k][channels]`, tap-major.
    weight: Vec<f32>,
    /// `[channels]`.
    bias: Vec<f32>,
    k: usize,
    stride: usize,
}

impl DepthwiseNhwc {
    /// From candle's `(C, 1, k, k)` weight (row-major) and the per-channel bias.
    pub fn new(weight: &[f32], bias: &[f32], k: usize, stride: usize) -> Self {
        let c = bias.len();
        assert_eq!(weight.len(), c * k * k, "depthwise weight is (c, 1, k, k)");
        assert!(k == 3 || k == 5, "depthwise kernels are 3x3 or 5x5");
        let mut w = vec![0f32; c * k * k];
        for (ch, taps) in weight.chunks_exact(k * k).enumerate() {
            for (t, &v) in taps.iter().enumerate() {
                w[t * c + ch] = v;
            }
        }
        DepthwiseNhwc {
            weight: w,
            bias: bias.to_vec(),
            k,
            stride,
        }
    }

    /// Kernel size.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Stride (both axes).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Output length of one axis.
    pub fn out_dim(&self, len: usize, before: usize, after: usize) -> usize {
        (len + before + after - self.k) / self.stride + 1
    }

    /// The input rows (within `0..h`) that output rows `oy0..oy0 + rows` read: what a band of
    /// [`Self::forward_rows`] must hold.
    pub fn input_rows(&self, oy0: usize, rows: usize, h: usize, pad: Pad2) -> Range<usize> {
        let first = (oy0 * self.stride).saturating_sub(pad.top);
        let last = ((oy0 + rows.max(1) - 1) * self.stride + self.k)
            .saturating_sub(pad.top)
            .min(h);
        first..last
    }

    /// `out = clamp(conv(x) + b, 0, 6)` for `x` of `(h, w, C)` and `out` of `(ho, wo, C)`.
    pub fn forward(&self, x: &[f32], (h, w): (usize, usize), pad: Pad2, out: &mut [f32]) {
        let c = self.bias.len();
        let (ho, wo) = (
            self.out_dim(h, pad.top, pad.bottom),
            self.out_dim(w, pad.left, pad.right),
        );
        assert_eq!(x.len(), h * w * c, "input is (h, w, c)");
        assert_eq!(out.len(), ho * wo * c, "output is (ho, wo, c)");
        let g = NhwcGeometry {
            h,
            w,
            c,
            s: self.stride,
            pad,
        };
        // small tasks, as in the 1x1 kernel: a preempted thread holds up the layer by one task
        let rows_per_task = ho.div_ceil(16 * rayon::current_num_threads()).max(1);
        out.par_chunks_mut(rows_per_task * wo * c)
            .enumerate()
            .for_each(|(task, out)| {
                self.rows(&g, Band::rows(x, 0), task * rows_per_task, out, wo);
            });
    }

    /// Output rows from `oy0` (as many as `out` holds) on the calling thread, from a band of the
    /// input: `band` holds at least every row of the `(h, w, C)` image that those outputs read
    /// (a fused block expands only those rows).
    pub fn forward_rows(
        &self,
        band: Band,
        (h, w): (usize, usize),
        pad: Pad2,
        oy0: usize,
        out: &mut [f32],
    ) {
        let c = self.bias.len();
        let (ho, wo) = (
            self.out_dim(h, pad.top, pad.bottom),
            self.out_dim(w, pad.left, pad.right),
        );
        let rows = out.len() / (wo * c);
        assert_eq!(out.len(), rows * wo * c, "output is whole rows of (wo, C)");
        assert!(oy0 + rows <= ho, "output rows past the image");
        if rows == 0 {
            return;
        }
        let needed = self.input_rows(oy0, rows, h, pad);
        assert!(
            band.holds(needed.clone(), w * c),
            "the band lacks input rows {needed:?}"
        );
        let g = NhwcGeometry {
            h,
            w,
            c,
            s: self.stride,
            pad,
        };
        self.rows(&g, band, oy0, out, wo);
    }

    /// Output rows from `oy0` on the calling thread, compiled for the widest SIMD the CPU has
    /// (AVX-512, AVX2), chosen at run time.
    fn rows(&self, g: &NhwcGeometry, band: Band, oy0: usize, out: &mut [f32], wo: usize) {
        let rows = NhwcRows {
            layer: self,
            g,
            band,
            oy0,
            out,
            wo,
        };
        let arch = pulp::Arch::new();
        match (self.k, self.stride) {
            (3, 1) => arch.dispatch(NhwcRowsK::<3, 1>(rows)),
            (3, _) => arch.dispatch(NhwcRowsK::<3, 2>(rows)),
            (_, 1) => arch.dispatch(NhwcRowsK::<5, 1>(rows)),
            _ => arch.dispatch(NhwcRowsK::<5, 2>(rows)),
        }
    }
}

/// The input's shape and padding.
struct NhwcGeometry {
    h: usize,
    w: usize,
    c: usize,
    s: usize,
    pad: Pad2,
}

/// Some output rows of a [`DepthwiseNhwc`].
struct NhwcRows<'a> {
    layer: &'a DepthwiseNhwc,
    g: &'a NhwcGeometry,
    /// The input rows.
    band: Band<'a>,
    oy0: usize,
    out: &'a mut [f32],
    wo: usize,
}

/// [`NhwcRows`] for a `K x K` kernel, as a unit of SIMD dispatch: with `K` known the taps unroll
/// and a channel block's weights stay in registers.
struct NhwcRowsK<'a, const K: usize, const STRIDE: usize>(NhwcRows<'a>);

/// Groups of four outputs a run: each channel block's weights are loaded once a run.
const RUN: usize = 4;

/// Input columns under four neighbouring outputs, at most (`3 * 2 + 5`).
const WINDOW: usize = 11;

impl<const K: usize, const STRIDE: usize> WithSimd for NhwcRowsK<'_, K, STRIDE> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let NhwcRows {
            layer,
            g,
            band,
            oy0,
            out,
            wo,
        } = self.0;
        let lanes = S::F32_LANES;
        let (c, s, p) = (g.c, g.s, g.pad);
        if c % lanes != 0 {
            // never so in Lite0, whose widths are multiples of 16
            scalar_rows::<K>(layer, g, band, oy0, out, wo);
            return;
        }
        // the activations as whole vectors, `cv` to a pixel
        let cv = c / lanes;
        let xv = S::as_simd_f32s(band.x).0;
        let wv = S::as_simd_f32s(&layer.weight).0;
        let bv = S::as_simd_f32s(&layer.bias).0;
        let outv = S::as_mut_simd_f32s(out).0;
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        // taps in the zero padding read this pixel of zeros, so that the image's edges take the
        // same path as its inside
        let zeros = vec![0f32; c];
        let zero_px = S::as_simd_f32s(&zeros).0;
        // every tap's weights and every pixel read are sliced to exactly `cv` vectors, so that
        // the channel-block loops index them with `cb < cv` and no bounds check
        let mut taps: [&[S::f32s]; 25] = [&[]; 25];
        for (t, tap) in taps.iter_mut().enumerate().take(K * K) {
            *tap = &wv[t * cv..][..cv];
        }
        // four output pixels at a time (four independent FMA chains), all their channel blocks
        // before the next four. For each kernel row the `3 STRIDE + K` input vectors under the
        // four are loaded once and stay in registers for all taps
        let n = 3 * STRIDE + K;
        let rows_out = outv.len() / (wo * cv);
        // `count` input rows from output row `r`'s first on (`None` in the padding, and past
        // `count`)
        let input_rows = |r: usize, count: usize| -> [Option<&[S::f32s]>; MAX_ROWS] {
            let iy0 = ((oy0 + r) * s) as isize - p.top as isize;
            let mut rows = [None; MAX_ROWS];
            for (ky, row) in rows.iter_mut().enumerate().take(count) {
                let iy = iy0 + ky as isize;
                if iy >= 0 && (iy as usize) < g.h {
                    let i = band.slot(iy as usize);
                    *row = Some(&xv[i * g.w * cv..(i + 1) * g.w * cv]);
                }
            }
            rows
        };
        // the outputs past the last whole group of four, one at a time
        let tail = |rows: &[Option<&[S::f32s]>; MAX_ROWS], out_row: &mut [S::f32s]| {
            let mut ox = wo / 4 * 4;
            while ox < wo {
                let ix0 = (ox * STRIDE) as isize - p.left as isize;
                let mut win: [[&[S::f32s]; 5]; K] = [[&[]; 5]; K];
                for (&row, w) in rows.iter().zip(win.iter_mut()) {
                    for (kx, px) in w.iter_mut().enumerate().take(K) {
                        *px = pixel(row, ix0 + kx as isize, g.w, zero_px);
                    }
                }
                let o = &mut out_row[ox * cv..][..cv];
                for cb in 0..cv {
                    let mut acc = bv[cb];
                    for (ky, row) in win.iter().enumerate() {
                        for (kx, px) in row.iter().enumerate().take(K) {
                            acc = simd.mul_add_e_f32s(taps[ky * K + kx][cb], px[cb], acc);
                        }
                    }
                    o[cb] = simd.min_f32s(simd.max_f32s(acc, zero), six);
                }
                ox += 1;
            }
        };
        let kernel = Taps {
            taps: &taps,
            bias: bv,
            zero_px,
            w: g.w,
        };
        let mut r = 0;
        while r < rows_out {
            if STRIDE == 2 && K == 5 && r + 1 < rows_out {
                // two output rows at a time: their 7 input rows are read once for both (10 one
                // row at a time), block 3's 5x5 layer 19 % faster in `--bench inband` (41 GF/s
                // for 35); block 1's 3x3 (5 rows for 6) was 23 % slower
                let rows = input_rows(r, STRIDE + K);
                let (out0, out1) = outv[r * wo * cv..(r + 2) * wo * cv].split_at_mut(wo * cv);
                for gi in 0..wo / 4 {
                    let ox = gi * 4;
                    let ix0 = (ox * STRIDE) as isize - p.left as isize;
                    kernel.group::<S, K, STRIDE, 2>(
                        simd,
                        &rows,
                        ix0,
                        [&mut out0[ox * cv..], &mut out1[ox * cv..]],
                    );
                }
                tail(&rows, out0);
                let mut next = [None; MAX_ROWS];
                next[..MAX_ROWS - STRIDE].copy_from_slice(&rows[STRIDE..]);
                tail(&next, out1);
                r += 2;
                continue;
            }
            let out_row = &mut outv[r * wo * cv..(r + 1) * wo * cv];
            let rows = input_rows(r, K);
            // groups of four outputs whose input columns all lie inside the image, from `inside`
            // on and below `inside_end`, take the run path below at stride 1; the others (and
            // every group at stride 2, where the run path was slower: `--bench depthwise`) load
            // their window of pixels once and go through every channel block
            let groups = wo / 4;
            let (inside, inside_end) = if STRIDE == 1 {
                let first = (0..groups).find(|&gi| gi * 4 >= p.left).unwrap_or(groups);
                let end = (first..groups)
                    .find(|&gi| gi * 4 - p.left + n > g.w)
                    .unwrap_or(groups);
                (first, end)
            } else {
                (groups, groups)
            };
            for gi in (0..inside).chain(inside_end..groups) {
                let ox = gi * 4;
                let ix0 = (ox * STRIDE) as isize - p.left as isize;
                kernel.group::<S, K, STRIDE, 1>(simd, &rows, ix0, [&mut out_row[ox * cv..]]);
            }
            if inside < inside_end {
                // runs of groups, channel block by channel block: the block's K x K weights are
                // loaded once a run and stay in registers, each group's input columns are read
                // straight from the image rows (the window path reloads every weight for every
                // group, through a table of pixel slices: 5x5 layers ran 20-30 % slower)
                for run in (inside..inside_end).step_by(RUN) {
                    for cb in 0..cv {
                        // filled in a loop: `array::from_fn` here was sometimes left out of
                        // line, without the SIMD target features (its arrays then went through
                        // memmove, the stride-1 layers 3x slower in `--bench inband`)
                        let mut wk = [[zero; K]; K];
                        for (ky, wk) in wk.iter_mut().enumerate() {
                            for (kx, w) in wk.iter_mut().enumerate() {
                                *w = taps[ky * K + kx][cb];
                            }
                        }
                        for gi in run..(run + RUN).min(inside_end) {
                            let ox = gi * 4;
                            let ix0 = ox * STRIDE - p.left;
                            let mut acc = [bv[cb]; 4];
                            for (row, wk) in rows.iter().zip(&wk) {
                                let Some(row) = row else {
                                    continue;
                                };
                                let cols = &row[ix0 * cv..][..n * cv];
                                let mut v = [zero; WINDOW];
                                for (i, v) in v.iter_mut().enumerate().take(n) {
                                    *v = cols[i * cv + cb];
                                }
                                for (kx, &w) in wk.iter().enumerate() {
                                    for (j, a) in acc.iter_mut().enumerate() {
                                        *a = simd.mul_add_e_f32s(w, v[j * STRIDE + kx], *a);
                                    }
                                }
                            }
                            for (j, a) in acc.into_iter().enumerate() {
                                out_row[(ox + j) * cv + cb] =
                                    simd.min_f32s(simd.max_f32s(a, zero), six);
                            }
                        }
                    }
                }
            }
            tail(&rows, out_row);
            r += 1;
        }
    }
}

/// Input rows one call of [`Taps::group`] reads, at most: two output rows of a 5x5 kernel at
/// stride 2.
const MAX_ROWS: usize = 7;

/// A layer's weights and bias as vectors, for the window path.
struct Taps<'a, T> {
    /// Each tap's weights, `cv` vectors (the first `K * K` used).
    taps: &'a [&'a [T]; 25],
    bias: &'a [T],
    /// A pixel of zeros, `cv` vectors: what taps in the padding read.
    zero_px: &'a [T],
    /// The input's width in pixels.
    w: usize,
}

impl<T: Copy> Taps<'_, T> {
    /// Four neighbouring outputs in each of `R` output rows (`STRIDE` input rows apart), every
    /// channel block: the window of `3 STRIDE + K` pixels of each input row under them is looked
    /// up once (pixels in the padding read zeros), then for each channel block its vectors are
    /// loaded once and serve every output row and tap that reads them. Each output still adds its
    /// taps in the same order (kernel row by row, column by column). `rows` are the input rows
    /// from the first output row's first on, `ix0` the input column of the first output's first
    /// tap, and each of `outs` starts at the first output's pixel.
    #[inline(always)]
    fn group<S: Simd<f32s = T>, const K: usize, const STRIDE: usize, const R: usize>(
        &self,
        simd: S,
        rows: &[Option<&[T]>; MAX_ROWS],
        ix0: isize,
        outs: [&mut [T]; R],
    ) {
        let cv = self.zero_px.len();
        let n = 3 * STRIDE + K;
        let nrows = (R - 1) * STRIDE + K;
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        let mut win: [[&[T]; WINDOW]; MAX_ROWS] = [[&[]; WINDOW]; MAX_ROWS];
        for (&row, w) in rows.iter().zip(win.iter_mut()).take(nrows) {
            for (i, px) in w.iter_mut().enumerate().take(n) {
                *px = pixel(row, ix0 + i as isize, self.w, self.zero_px);
            }
        }
        let mut outs = outs.map(|o| {
            let (o0, rest) = o.split_at_mut(cv);
            let (o1, rest) = rest.split_at_mut(cv);
            let (o2, rest) = rest.split_at_mut(cv);
            [o0, o1, o2, &mut rest[..cv]]
        });
        for cb in 0..cv {
            let mut acc = [[self.bias[cb]; 4]; R];
            for (i, row) in win.iter().enumerate().take(nrows) {
                let mut v = [zero; WINDOW];
                for (v, px) in v.iter_mut().zip(row).take(n) {
                    *v = px[cb];
                }
                for (q, acc) in acc.iter_mut().enumerate() {
                    // the kernel row that input row `i` is for output row `q`
                    let Some(ky) = i.checked_sub(q * STRIDE).filter(|&ky| ky < K) else {
                        continue;
                    };
                    for kx in 0..K {
                        let w = self.taps[ky * K + kx][cb];
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = simd.mul_add_e_f32s(w, v[j * STRIDE + kx], *a);
                        }
                    }
                }
            }
            for (outs, acc) in outs.iter_mut().zip(acc) {
                for (o, a) in outs.iter_mut().zip(acc) {
                    o[cb] = simd.min_f32s(simd.max_f32s(a, zero), six);
                }
            }
        }
    }
}

/// Input pixel `ix` of `row` (`w` pixels of `zero.len()` vectors), or `zero` where that is in
/// the padding (left, right, or a row outside the image: `None`).
#[inline(always)]
fn pixel<'a, T>(row: Option<&'a [T]>, ix: isize, w: usize, zero: &'a [T]) -> &'a [T] {
    let cv = zero.len();
    match row {
        Some(row) if ix >= 0 && (ix as usize) < w => &row[ix as usize * cv..][..cv],
        _ => zero,
    }
}

/// The same rows in plain scalar code, for widths that are not whole vectors.
fn scalar_rows<const K: usize>(
    layer: &DepthwiseNhwc,
    g: &NhwcGeometry,
    band: Band,
    oy0: usize,
    out: &mut [f32],
    wo: usize,
) {
    let (c, s, p) = (g.c, g.s, g.pad);
    for (r, out_row) in out.chunks_exact_mut(wo * c).enumerate() {
        let iy0 = ((oy0 + r) * s) as isize - p.top as isize;
        for (ox, px) in out_row.chunks_exact_mut(c).enumerate() {
            for (ch, o) in px.iter_mut().enumerate() {
                let mut acc = layer.bias[ch];
                for ky in 0..K {
                    let iy = iy0 + ky as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    for kx in 0..K {
                        let ix = (ox * s + kx) as isize - p.left as isize;
                        if ix < 0 || ix as usize >= g.w {
                            continue;
                        }
                        acc += layer.weight[(ky * K + kx) * c + ch]
                            * band.x[(band.slot(iy as usize) * g.w + ix as usize) * c + ch];
                    }
                }
                *o = acc.clamp(0.0, 6.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct loops over the unpadded channels-first input, the definition the kernel must equal.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        weight: &[f32],
        bias: &[f32],
        (k, s): (usize, usize),
        x: &[f32],
        c: usize,
        h: usize,
        w: usize,
        p: Pad2,
    ) -> Vec<f32> {
        let ho = (h + p.top + p.bottom - k) / s + 1;
        let wo = (w + p.left + p.right - k) / s + 1;
        let mut out = vec![0f32; c * ho * wo];
        for ch in 0..c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - p.top as isize;
                            let ix = (ox * s + kx) as isize - p.left as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            acc += weight[ch * k * k + ky * k + kx]
                                * x[ch * h * w + iy as usize * w + ix as usize];
                        }
                    }
                    out[ch * ho * wo + oy * wo + ox] = acc.clamp(0.0, 6.0);
                }
            }
        }
        out
    }

    #[test]
    fn matches_direct_loops_for_every_kernel_stride_padding_and_width() {
        // 3 and 40 channels: not whole AVX-512 vectors (the scalar path)
        for &c in &[3usize, 32, 40] {
            for &(h, w) in &[(9, 37), (8, 20), (14, 14), (3, 2)] {
                for &(k, s) in &[(3, 1), (3, 2), (5, 1), (5, 2)] {
                    for &pad in &[(k / 2, k / 2, k / 2, k / 2), (0, 1, 1, 2), (1, 0, 2, 1)] {
                        let p = Pad2 {
                            top: pad.0,
                            left: pad.1,
                            bottom: pad.2,
                            right: pad.3,
                        };
                        if h + p.top + p.bottom < k || w + p.left + p.right < k {
                            continue;
                        }
                        let x: Vec<f32> = (0..c * h * w)
                            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                            .collect();
                        let weight: Vec<f32> = (0..c * k * k)
                            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
                            .collect();
                        let bias: Vec<f32> = (0..c).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
                        let want = naive(&weight, &bias, (k, s), &x, c, h, w, p);
                        let layer = DepthwiseNhwc::new(&weight, &bias, k, s);
                        let (ho, wo) = (
                            layer.out_dim(h, p.top, p.bottom),
                            layer.out_dim(w, p.left, p.right),
                        );
                        // the same input and output, channels last
                        let x_nhwc: Vec<f32> =
                            (0..h * w * c).map(|i| x[(i % c) * h * w + i / c]).collect();
                        let mut got = vec![f32::NAN; ho * wo * c];
                        layer.forward(&x_nhwc, (h, w), p, &mut got);
                        let worst = (0..ho * wo * c)
                            .map(|i| (got[i] - want[(i % c) * ho * wo + i / c]).abs())
                            .fold(0f32, f32::max);
                        assert!(worst < 1e-4, "c{c} {h}x{w} k{k} s{s} {p:?}: {worst}");
                        // the same rows from one call, as a fused band makes them (several
                        // output rows a call: stride 2 takes them two at a time), from the
                        // first output row and from the second, and bit for bit
                        for oy0 in 0..ho.min(2) {
                            let rows = layer.input_rows(oy0, ho - oy0, h, p);
                            let band = &x_nhwc[rows.start * w * c..rows.end * w * c];
                            let mut one = vec![f32::NAN; (ho - oy0) * wo * c];
                            layer.forward_rows(
                                Band::rows(band, rows.start),
                                (h, w),
                                p,
                                oy0,
                                &mut one,
                            );
                            assert!(
                                one.iter()
                                    .zip(&got[oy0 * wo * c..])
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "c{c} {h}x{w} k{k} s{s} {p:?} from row {oy0}"
                            );
                        }
                    }
                }
            }
        }
    }
}
