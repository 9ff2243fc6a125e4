//! The 1x1 convolutions on channels-last activations, with their epilogue (folded batch-norm
//! bias, then ReLU6 or the block's residual) applied to each output tile while it is still in
//! registers.
//!
//! A 1x1 convolution is a matrix product `(pixels, Cin) x (Cin, Cout)`, but a small one: Cin is
//! 16 to 1152, so a general GEMM (the `gemm` crate, through candle) spends much of its time
//! packing operands on every call, writes a zeroed output, and leaves the bias and activation to
//! one more pass over memory. Here the weights are laid out once at load time (`Cout` padded to
//! whole vectors), each pixel's inputs are broadcast straight from the activation, and a tile of
//! pixels x two vectors of output channels accumulates in registers (AVX-512 or AVX2, chosen at
//! run time through pulp), so every output is written once, final.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Output channels are padded to a multiple of this: two vectors of AVX-512, four of AVX2.
pub(crate) const PANEL: usize = 32;

/// What follows the product and bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing (the projection layers, which are linear).
    None,
    /// `clamp(y, 0, 6)`.
    Relu6,
}

/// A 1x1 convolution with folded batch norm.
#[derive(Debug, Clone)]
pub struct Conv1x1 {
    cin: usize,
    cout: usize,
    /// `[cout_pad / PANEL][cin][PANEL]`, zero past `cout`: a panel's weights for every input
    /// channel in one run of memory, so a tile streams through them in order (row-major
    /// `[cin][cout_pad]` put each input channel's few vectors kilobytes apart in the wide layers).
    weight: Vec<f32>,
    /// `[cout_pad]`, zero past `cout`.
    bias: Vec<f32>,
    act: Activation,
}

impl Conv1x1 {
    /// From candle's `(Cout, Cin)` weight (row-major) and the per-channel bias.
    pub fn new(weight: &[f32], bias: &[f32], cin: usize, act: Activation) -> Self {
        let cout = bias.len();
        assert_eq!(weight.len(), cin * cout, "1x1 weight is (cout, cin)");
        let cout_pad = cout.next_multiple_of(PANEL);
        let mut w = vec![0f32; cin * cout_pad];
        for (co, row) in weight.chunks_exact(cin).enumerate() {
            let (panel, lane) = (co / PANEL, co % PANEL);
            for (ci, &v) in row.iter().enumerate() {
                w[(panel * cin + ci) * PANEL + lane] = v;
            }
        }
        let mut b = bias.to_vec();
        b.resize(cout_pad, 0.0);
        Conv1x1 {
            cin,
            cout,
            weight: w,
            bias: b,
            act,
        }
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    /// `out = act(x W + b)`, or `x W + b + residual` when `residual` is given (the residual is
    /// added after the activation would be; the projections that take one have none), for
    /// channels-last `x` of `(pixels, Cin)` and `out`, `residual` of `(pixels, Cout)`.
    pub fn forward(&self, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
        let pixels = x.len() / self.cin;
        assert_eq!(x.len(), pixels * self.cin, "input is (pixels, cin)");
        assert_eq!(out.len(), pixels * self.cout, "output is (pixels, cout)");
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "residual is (pixels, cout)");
        }
        // enough tasks for rayon to balance two threads that other processes also want (a
        // preempted thread holds up the layer by one task at most), each long enough that the
        // weights it streams through are reused over a few tiles
        let threads = rayon::current_num_threads();
        let per_task = pixels
            .div_ceil(16 * threads)
            .clamp(ROWS_MIN_TASK, ROWS_MAX_TASK)
            .min(pixels.max(1));
        out.par_chunks_mut(per_task * self.cout)
            .enumerate()
            .for_each(|(task, out)| {
                let p0 = task * per_task;
                let n = out.len() / self.cout;
                self.forward_serial(
                    &x[p0 * self.cin..(p0 + n) * self.cin],
                    residual.map(|r| &r[p0 * self.cout..(p0 + n) * self.cout]),
                    out,
                );
            });
    }

    /// [`Self::forward`] on the calling thread, for callers that already split the work (the
    /// stem, one output row at a time; a fused block, one band of rows at a time).
    pub fn forward_serial(&self, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
        assert_eq!(
            x.len() / self.cin,
            out.len() / self.cout,
            "as many pixels out as in"
        );
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "residual is (pixels, cout)");
        }
        pulp::Arch::new().dispatch(Tiles {
            conv: self,
            x,
            residual,
            out,
        });
    }
}

/// `act(x W + b)` for channels-last `x` of `(pixels, cin)`, written as channels-first planes
/// `(Cout, pixels)`: the layer's product with the roles swapped, its weight rows (`rows`, each
/// `cin` weights then the bias) as the "pixels" and the activations as the "weights", so that
/// each plane is written once, final (the network's last layer, whose planes the caller takes;
/// transposing its channels-last output afterwards took 0.6 ms at 768x448).
pub fn planes(rows: &[f32], x: &[f32], cin: usize, act: Activation) -> Vec<f32> {
    let pixels = x.len() / cin;
    assert_eq!(x.len(), pixels * cin, "input is (pixels, cin)");
    // a 1 after each pixel's inputs meets the bias at the end of each row
    let k = cin + 1;
    assert_eq!(rows.len() % k, 0, "rows are (cout, cin + 1)");
    let cout = rows.len() / k;
    let mut with_one = Vec::with_capacity(pixels * k);
    for px in x.chunks_exact(cin) {
        with_one.extend_from_slice(px);
        with_one.push(1.0);
    }
    let swapped = Conv1x1::new(&with_one, &vec![0.0; pixels], k, act);
    let mut out = vec![0f32; cout * pixels];
    swapped.forward(rows, None, &mut out);
    out
}

/// The rows [`planes`] takes: each of the `(Cout, Cin)` row-major `weight`'s rows, then its
/// channel's bias.
pub fn rows_with_bias(weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let cin = weight.len() / bias.len().max(1);
    assert_eq!(weight.len(), cin * bias.len(), "weight is (cout, cin)");
    weight
        .chunks_exact(cin.max(1))
        .zip(bias)
        .flat_map(|(row, &b)| row.iter().copied().chain([b]))
        .collect()
}

/// Pixels per rayon task, at least and at most.
const ROWS_MIN_TASK: usize = 24;
const ROWS_MAX_TASK: usize = 256;

/// Layers with at most this many input channels run two panels at a time on AVX-512
/// ([`tile_two_panels`]): single-threaded GF/s (`--bench pointwise`, 3 runs) went from 55-56 to
/// 60-90 for block 1's expansion (16 in), and 78-122 to 86-128 for block 4's (40 in); from 112
/// in up (blocks 9-15, the head) it was no faster.
const TWO_PANELS_MAX_CIN: usize = 96;

/// One task's pixels, as a unit of SIMD dispatch.
struct Tiles<'a> {
    conv: &'a Conv1x1,
    x: &'a [f32],
    residual: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl Tiles<'_> {
    /// Tiles of `R` pixels by `V` vectors of output channels from `co`, from pixel `*p` on
    /// while whole ones fit; leaves `*p` at the first pixel not done.
    #[inline(always)]
    fn sweep<S: Simd, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        co: usize,
        p: &mut usize,
    ) {
        let pixels = self.out.len() / self.conv.cout;
        let Tiles {
            conv,
            x,
            residual,
            out,
        } = self;
        sweep::<R>(p, pixels, |p| {
            tile::<S, R, V>(simd, conv, x, *residual, out, p, co);
        });
    }
}

/// Calls `tile` on each whole tile of `R` pixels from `*p` while one fits below `end`; leaves
/// `*p` at the first pixel not done. The kernels run a ladder of these, widest tile first.
#[inline(always)]
pub(crate) fn sweep<const R: usize>(p: &mut usize, end: usize, mut tile: impl FnMut(usize)) {
    while *p + R <= end {
        tile(*p);
        *p += R;
    }
}

impl WithSimd for Tiles<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        let lanes = S::F32_LANES;
        let (cin, cout) = (self.conv.cin, self.conv.cout);
        // panel by panel of output channels, so that a panel's weights (Cin x 2 vectors) stay
        // in cache while every pixel of the task goes past them; vectors wholly in the padding
        // past `cout` are not computed (Lite0's 16, 40, 80 and 112 leave half a panel)
        let mut co = 0;
        while co < cout {
            let mut p = 0;
            if lanes >= 16 && cin <= TWO_PANELS_MAX_CIN && co % PANEL == 0 && co + 2 * PANEL <= cout
            {
                // two whole panels at once: 6 pixels x 4 vectors load 10 vectors (4 weights,
                // 6 inputs) for 24 FMAs, where 12 x 2 load 14
                let pixels = self.out.len() / cout;
                let Tiles {
                    conv,
                    x,
                    residual,
                    out,
                } = &mut self;
                sweep::<6>(&mut p, pixels, |p| {
                    tile_two_panels::<S, 6>(simd, conv, x, *residual, out, p, co);
                });
                sweep::<1>(&mut p, pixels, |p| {
                    tile_two_panels::<S, 1>(simd, conv, x, *residual, out, p, co);
                });
                co += 2 * PANEL;
                continue;
            }
            if co + lanes >= cout {
                // one vector: 24 pixels were slower than 12 (their input pointers spill)
                self.sweep::<S, 12, 1>(simd, co, &mut p);
                self.sweep::<S, 4, 1>(simd, co, &mut p);
                self.sweep::<S, 1, 1>(simd, co, &mut p);
            } else {
                // AVX-512: 12 pixels x 2 vectors = 24 of the 32 registers accumulate; AVX2 has 16
                if lanes >= 16 {
                    self.sweep::<S, 12, 2>(simd, co, &mut p);
                }
                self.sweep::<S, 6, 2>(simd, co, &mut p);
                self.sweep::<S, 2, 2>(simd, co, &mut p);
                self.sweep::<S, 1, 2>(simd, co, &mut p);
            }
            co += 2 * lanes;
        }
    }
}

/// `R` pixels from `p` by the two whole panels from `co` (AVX-512: four vectors).
#[inline(always)]
fn tile_two_panels<S: Simd, const R: usize>(
    simd: S,
    c: &Conv1x1,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    p: usize,
    co: usize,
) {
    let cin = c.cin;
    let px: [&[f32]; R] = std::array::from_fn(|r| &x[(p + r) * cin..][..cin]);
    let (first, per, _) = c.panel::<S>(co);
    let (second, _, _) = c.panel::<S>(co + PANEL);
    let mut acc = c.bias_tile::<S, R, 4>(co);
    for ((wa, wb), ci) in first
        .chunks_exact(per)
        .zip(second.chunks_exact(per))
        .zip(0..cin)
    {
        accumulate(simd, &mut acc, [wa[0], wa[1], wb[0], wb[1]], |r| px[r][ci]);
    }
    store_tile(simd, c, acc, residual, out, p, co);
}

/// `R` pixels from `p` by output channels `co..co + V * lanes` (`V` is 1 or 2).
#[inline(always)]
fn tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    c: &Conv1x1,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    p: usize,
    co: usize,
) {
    let cin = c.cin;
    // each pixel's inputs, sliced to exactly `cin` so that indexing them by `ci < cin` needs
    // no bounds check in the loop
    let px: [&[f32]; R] = std::array::from_fn(|r| &x[(p + r) * cin..][..cin]);
    let (weights, per, sub) = c.panel::<S>(co);
    let mut acc = c.bias_tile::<S, R, V>(co);
    for (w, ci) in weights.chunks_exact(per).zip(0..cin) {
        accumulate(simd, &mut acc, std::array::from_fn(|j| w[sub + j]), |r| {
            px[r][ci]
        });
    }
    store_tile(simd, c, acc, residual, out, p, co);
}

/// One input channel's step of a tile: for each of its `R` pixels, the pixel's input
/// (`input(r)`, broadcast) times the `V` weight vectors `w`, added to the pixel's accumulators.
/// The 1x1 tiles and the stem's direct tile all run this as their innermost loop.
#[inline(always)]
pub(crate) fn accumulate<S: Simd, const R: usize, const V: usize>(
    simd: S,
    acc: &mut [[S::f32s; V]; R],
    w: [S::f32s; V],
    input: impl Fn(usize) -> f32,
) {
    for (r, a) in acc.iter_mut().enumerate() {
        let v = simd.splat_f32s(input(r));
        for (a, w) in a.iter_mut().zip(w) {
            *a = simd.mul_add_e_f32s(v, w, *a);
        }
    }
}

impl Conv1x1 {
    /// The weights of the panel holding output channel `co`, as whole vectors: `per` (`PANEL /
    /// lanes`) to an input channel, in input-channel order, of which a tile from `co` takes
    /// those from `sub`.
    #[inline(always)]
    pub(crate) fn panel<S: Simd>(&self, co: usize) -> (&[S::f32s], usize, usize) {
        let lanes = S::F32_LANES;
        let panel = co / PANEL;
        let w = &self.weight[panel * self.cin * PANEL..(panel + 1) * self.cin * PANEL];
        (S::as_simd_f32s(w).0, PANEL / lanes, (co % PANEL) / lanes)
    }

    /// A tile's accumulators for `R` pixels by `V` vectors of output channels from `co`, set
    /// to the bias.
    #[inline(always)]
    pub(crate) fn bias_tile<S: Simd, const R: usize, const V: usize>(
        &self,
        co: usize,
    ) -> [[S::f32s; V]; R] {
        let b = S::as_simd_f32s(&self.bias).0;
        [std::array::from_fn(|j| b[co / S::F32_LANES + j]); R]
    }
}

/// Stores a tile of `R` pixels from `p` by `V` vectors of output channels from `co`: the
/// activation, or the residual added, then only the channels that exist (the last panel may be
/// partly padding).
#[inline(always)]
pub(crate) fn store_tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    c: &Conv1x1,
    acc: [[S::f32s; V]; R],
    residual: Option<&[f32]>,
    out: &mut [f32],
    p: usize,
    co: usize,
) {
    let lanes = S::F32_LANES;
    let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
    let valid = c.cout.saturating_sub(co).min(V * lanes);
    if valid == V * lanes {
        // a tile of whole vectors (all but a layer's last when its width is not a multiple of
        // `V` vectors): the epilogue unrolls with no test per vector, where the general loop
        // below kept the accumulators on the stack and branched for each. In-cache GF/s of the
        // fused blocks' 1x1 shapes (`--bench inband`, one thread, best of 20 alternating):
        // block 1's expansion (16 in) 67-83 to 82-98, block 2's (24 in) 75-93 to 89-106, block
        // 0's projection 75-85 to 90-95; a layer's partial last tile through the same unrolled
        // code (a test per vector) was 3-4 % slower than this loop on 24-wide projections
        match residual {
            Some(res) => {
                for (r, a) in acc.into_iter().enumerate() {
                    let at = (p + r) * c.cout + co;
                    let rv = S::as_simd_f32s(&res[at..at + V * lanes]).0;
                    for ((o, v), rv) in S::as_mut_simd_f32s(&mut out[at..at + V * lanes])
                        .0
                        .iter_mut()
                        .zip(a)
                        .zip(rv)
                    {
                        *o = simd.add_f32s(v, *rv);
                    }
                }
            }
            None if c.act == Activation::Relu6 => {
                for (r, a) in acc.into_iter().enumerate() {
                    let at = (p + r) * c.cout + co;
                    for (o, v) in S::as_mut_simd_f32s(&mut out[at..at + V * lanes])
                        .0
                        .iter_mut()
                        .zip(a)
                    {
                        *o = simd.min_f32s(simd.max_f32s(v, zero), six);
                    }
                }
            }
            None => {
                for (r, a) in acc.into_iter().enumerate() {
                    let at = (p + r) * c.cout + co;
                    for (o, v) in S::as_mut_simd_f32s(&mut out[at..at + V * lanes])
                        .0
                        .iter_mut()
                        .zip(a)
                    {
                        *o = v;
                    }
                }
            }
        }
        return;
    }
    for (r, a) in acc.into_iter().enumerate() {
        let at = (p + r) * c.cout + co;
        let out_px = &mut out[at..at + valid];
        let res_px = residual.map(|res| &res[at..at + valid]);
        for (j, mut v) in a.into_iter().enumerate() {
            let lo = j * lanes;
            if lo >= valid {
                break;
            }
            let hi = (lo + lanes).min(valid);
            if let Some(res) = res_px {
                let rv = if hi - lo == lanes {
                    S::as_simd_f32s(&res[lo..hi]).0[0]
                } else {
                    simd.partial_load_f32s(&res[lo..hi])
                };
                v = simd.add_f32s(v, rv);
            } else if c.act == Activation::Relu6 {
                v = simd.min_f32s(simd.max_f32s(v, zero), six);
            }
            if hi - lo == lanes {
                S::as_mut_simd_f32s(&mut out_px[lo..hi]).0[0] = v;
            } else {
                simd.partial_store_f32s(&mut out_px[lo..hi], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], b: &[f32], x: &[f32], cin: usize, act: Activation) -> Vec<f32> {
        let cout = b.len();
        let mut out = Vec::new();
        for px in x.chunks_exact(cin) {
            for co in 0..cout {
                let s: f32 = b[co]
                    + px.iter()
                        .zip(&w[co * cin..(co + 1) * cin])
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                out.push(match act {
                    Activation::Relu6 => s.clamp(0.0, 6.0),
                    Activation::None => s,
                });
            }
        }
        out
    }

    #[test]
    fn planes_are_the_layer_transposed() {
        for (pixels, cin, cout) in [(7, 5, 37), (40, 16, 70), (1, 3, 1)] {
            let w: Vec<f32> = (0..cout * cin)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let b: Vec<f32> = (0..cout).map(|i| i as f32 * 0.05 - 0.4).collect();
            let x: Vec<f32> = (0..pixels * cin)
                .map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0)
                .collect();
            let want = naive(&w, &b, &x, cin, Activation::Relu6);
            let got = planes(&rows_with_bias(&w, &b), &x, cin, Activation::Relu6);
            for p in 0..pixels {
                for co in 0..cout {
                    let (g, e) = (got[co * pixels + p], want[p * cout + co]);
                    assert!(
                        (g - e).abs() < 1e-4,
                        "{pixels}x{cin}->{cout} at {p},{co}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_direct_sums_for_odd_shapes_with_and_without_residual() {
        for &(pixels, cin, cout) in &[
            (1, 3, 5),
            (13, 16, 24),
            (37, 40, 80),
            (300, 24, 144),
            (50, 32, 16),
            (29, 144, 40),
        ] {
            let x: Vec<f32> = (0..pixels * cin)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let w: Vec<f32> = (0..cout * cin)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1 - 1.0).collect();
            for act in [Activation::None, Activation::Relu6] {
                let conv = Conv1x1::new(&w, &b, cin, act);
                let mut got = vec![f32::NAN; pixels * cout];
                conv.forward(&x, None, &mut got);
                let want = naive(&w, &b, &x, cin, act);
                let worst = crate::max_abs_diff(&got, &want);
                assert!(worst < 1e-3, "{pixels}x{cin}->{cout} {act:?}: {worst}");
            }
            let conv = Conv1x1::new(&w, &b, cin, Activation::None);
            let res: Vec<f32> = (0..pixels * cout).map(|i| i as f32 * 0.01).collect();
            let mut got = vec![f32::NAN; pixels * cout];
            conv.forward(&x, Some(&res), &mut got);
            let want: Vec<f32> = naive(&w, &b, &x, cin, Activation::None)
                .iter()
                .zip(&res)
                .map(|(a, r)| a + r)
                .collect();
            let worst = crate::max_abs_diff(&got, &want);
            assert!(worst < 1e-3, "{pixels}x{cin}->{cout} residual: {worst}");
        }
    }
}
