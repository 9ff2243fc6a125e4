//! Depthwise convolution with the folded batch-norm bias and ReLU6 fused in, as a candle custom op.
//!
//! candle runs a grouped convolution as one convolution per group, which for a depthwise layer of
//! 1152 channels means 1152 tiny im2col calls; this kernel walks each channel's plane once instead,
//! a few rayon tasks per thread. The plane is first copied into a zero-padded scratch buffer,
//! applying the expand convolution's bias and ReLU6 on the way when the layer has one (so that
//! product is read once, not written back activated first) and splitting the columns by stride
//! phase, so every tap reads a contiguous run of one SIMD vector (AVX-512 or AVX2, chosen at run
//! time through pulp). On CUDA the model falls back to candle's grouped convolution.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
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

/// A depthwise `k x k` convolution with bias and ReLU6, weights owned by the layer.
#[derive(Debug, Clone)]
pub struct DepthwiseRelu6 {
    /// `[channels * k * k]`, channel-major.
    pub weight: Vec<f32>,
    /// `[channels]`.
    pub bias: Vec<f32>,
    /// Kernel size.
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// When set, the input is a raw product that still needs this per-channel bias and ReLU6
    /// (the expand convolution's epilogue, done here while the plane is copied).
    pub input_bias: Option<Vec<f32>>,
}

/// [`DepthwiseRelu6`] applied with one input size's padding.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseOp<'a> {
    /// The layer.
    pub layer: &'a DepthwiseRelu6,
    /// Zero padding for this input size.
    pub pad: Pad2,
}

impl DepthwiseRelu6 {
    /// Output length of one axis.
    pub fn out_dim(&self, len: usize, before: usize, after: usize) -> usize {
        (len + before + after - self.k) / self.stride + 1
    }
}

/// Where each stride phase of a padded row starts: phase `q` holds columns `q, q + s, ...`.
fn phase_starts(wp: usize, s: usize) -> Vec<usize> {
    let mut starts = Vec::with_capacity(s);
    let mut at = 0;
    for q in 0..s {
        starts.push(at);
        at += (wp + s - 1 - q) / s;
    }
    starts
}

/// Zeros after every scratch row, at least one SIMD vector (16 floats with AVX-512), so a vector
/// that runs past the row's last output column still reads inside the buffer (those lanes are
/// computed and never stored): no scalar tail loop, which the narrow late layers (12 or 24
/// columns) would otherwise spend most of their time in.
pub(crate) const SLACK: usize = 16;

/// How one input size's planes sit in a scratch buffer.
#[derive(Debug, Clone)]
pub(crate) struct ScratchGeometry {
    /// Padded input rows.
    pub hp: usize,
    /// Floats from one scratch row to the next (padded width plus [`SLACK`]).
    pub stride: usize,
    /// Where each tap column starts in a scratch row (stride phases split apart).
    pub taps: Vec<usize>,
    /// Where each stride phase starts in a scratch row.
    starts: Vec<usize>,
    pad: Pad2,
    w: usize,
    h: usize,
    /// Stride of the convolution.
    pub s: usize,
}

impl ScratchGeometry {
    pub(crate) fn new((h, w): (usize, usize), k: usize, s: usize, pad: Pad2) -> Self {
        let wp = w + pad.left + pad.right;
        let starts = phase_starts(wp, s);
        let taps = (0..k).map(|kx| starts[kx % s] + kx / s).collect();
        ScratchGeometry {
            hp: h + pad.top + pad.bottom,
            stride: wp + SLACK,
            taps,
            starts,
            pad,
            w,
            h,
            s,
        }
    }

    /// Floats in one scratch plane.
    pub(crate) fn len(&self) -> usize {
        self.hp * self.stride
    }

    /// Copies one `h x w` plane into `scratch`: zero padding around it, each row split by stride
    /// phase, `clamp(x + b, 0, 6)` applied first when `in_bias` is `Some(b)`.
    #[inline(always)] // into the caller's SIMD dispatch, so that it is compiled for it
    pub(crate) fn fill(&self, scratch: &mut [f32], src: &[f32], in_bias: Option<f32>) {
        let (p, w, s) = (self.pad, self.w, self.s);
        let wp = w + p.left + p.right;
        let act = |v: f32| match in_bias {
            Some(b) => (v + b).clamp(0.0, 6.0),
            None => v,
        };
        for (r, dst) in scratch.chunks_exact_mut(self.stride).enumerate() {
            if r < p.top || r >= p.top + self.h {
                dst.fill(0.0);
                continue;
            }
            let src_row = &src[(r - p.top) * w..(r - p.top + 1) * w];
            if s == 1 {
                dst[..p.left].fill(0.0);
                let body = &mut dst[p.left..p.left + w];
                // two loops, not a match per element: each vectorises
                match in_bias {
                    Some(b) => {
                        for (d, &v) in body.iter_mut().zip(src_row) {
                            *d = (v + b).clamp(0.0, 6.0);
                        }
                    }
                    None => body.copy_from_slice(src_row),
                }
                dst[p.left + w..].fill(0.0);
            } else if s == 2 {
                dst.fill(0.0);
                let (even, odd) = dst[..wp].split_at_mut(self.starts[1]);
                for (i, &v) in src_row.iter().enumerate() {
                    let col = p.left + i;
                    if col % 2 == 0 {
                        even[col / 2] = act(v);
                    } else {
                        odd[col / 2] = act(v);
                    }
                }
            } else {
                for (j, &start) in self.starts.iter().enumerate() {
                    let end = self.starts.get(j + 1).copied().unwrap_or(wp);
                    for (i, d) in dst[start..end].iter_mut().enumerate() {
                        let col = j + i * s;
                        *d = if col < p.left || col >= p.left + w {
                            0.0
                        } else {
                            act(src_row[col - p.left])
                        };
                    }
                }
                dst[wp..].fill(0.0);
            }
        }
    }
}

impl CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "depthwise-relu6"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let l = self.layer;
        let (n, c, h, w) = layout.shape().dims4()?;
        if c != l.bias.len() || l.input_bias.as_ref().is_some_and(|b| b.len() != c) {
            candle_core::bail!(
                "depthwise: input has {c} channels, weights {}",
                l.bias.len()
            );
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise: input must be contiguous");
        };
        let input = &storage.as_slice::<f32>()?[start..end];
        let (k, s, p) = (l.k, l.stride, self.pad);
        let ho = l.out_dim(h, p.top, p.bottom);
        let wo = l.out_dim(w, p.left, p.right);
        let g = ScratchGeometry::new((h, w), k, s, p);
        let arch = pulp::Arch::new();
        let mut out = vec![0f32; n * c * ho * wo];
        // a few tasks per thread, each with one scratch plane for all its channels: rayon's
        // `for_each_init` would allocate (and zero) one for every split it makes
        let planes = n * c;
        let per_task = planes.div_ceil(4 * rayon::current_num_threads()).max(1);
        out.par_chunks_mut(ho * wo * per_task)
            .enumerate()
            .for_each(|(task, dst)| {
                let mut scratch = vec![0f32; g.len()];
                for (i, dst) in dst.chunks_exact_mut(ho * wo).enumerate() {
                    let plane = task * per_task + i;
                    let ch = plane % c;
                    // compiled for the widest SIMD the CPU has (AVX-512, AVX2), chosen at run time
                    arch.dispatch(Plane {
                        g: &g,
                        scratch: &mut scratch,
                        src: &input[plane * h * w..(plane + 1) * h * w],
                        in_bias: l.input_bias.as_ref().map(|b| b[ch]),
                        kern: &l.weight[ch * k * k..(ch + 1) * k * k],
                        bias: l.bias[ch],
                        dst,
                        wo,
                    });
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }
}

/// One channel's plane, as a unit of SIMD dispatch.
struct Plane<'a> {
    g: &'a ScratchGeometry,
    scratch: &'a mut [f32],
    src: &'a [f32],
    in_bias: Option<f32>,
    kern: &'a [f32],
    bias: f32,
    dst: &'a mut [f32],
    wo: usize,
}

impl WithSimd for Plane<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (g, k, wo) = (self.g, self.g.taps.len(), self.wo);
        let ho = self.dst.len() / wo;
        g.fill(self.scratch, self.src, self.in_bias);
        // two output rows at a time: two independent FMA chains per tap instead of one, so the
        // CPU is not waiting on each FMA's latency (most planes here are 1 or 2 vectors wide)
        let mut pairs = self.dst.chunks_exact_mut(2 * wo);
        for (pair, out) in pairs.by_ref().enumerate() {
            let oy = 2 * pair;
            let (a, b) = out.split_at_mut(wo);
            let rows_a = &self.scratch[oy * g.s * g.stride..(oy * g.s + k) * g.stride];
            let rows_b = &self.scratch[(oy + 1) * g.s * g.stride..((oy + 1) * g.s + k) * g.stride];
            conv_row_pair(simd, [a, b], [rows_a, rows_b], g, self.kern, self.bias);
        }
        let last = pairs.into_remainder();
        if !last.is_empty() {
            let oy = ho - 1;
            last.fill(self.bias);
            let rows = &self.scratch[oy * g.s * g.stride..(oy * g.s + k) * g.stride];
            conv_row(simd, last, rows, g, self.kern, true);
        }
    }
}

/// Two output rows of `clamp(bias + taps, 0, 6)`, each from its own `k` scratch rows.
#[inline(always)]
fn conv_row_pair<S: Simd>(
    simd: S,
    [out_a, out_b]: [&mut [f32]; 2],
    [rows_a, rows_b]: [&[f32]; 2],
    g: &ScratchGeometry,
    kern: &[f32],
    bias: f32,
) {
    let lanes = S::F32_LANES;
    let k = g.taps.len();
    let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
    let mut ox = 0;
    while ox < out_a.len() {
        let n = (out_a.len() - ox).min(lanes);
        let mut acc_a = simd.splat_f32s(bias);
        let mut acc_b = acc_a;
        for ((ra, rb), wrow) in rows_a
            .chunks_exact(g.stride)
            .zip(rows_b.chunks_exact(g.stride))
            .zip(kern.chunks_exact(k))
        {
            for (&at, &wgt) in g.taps.iter().zip(wrow) {
                let wv = simd.splat_f32s(wgt);
                let va = S::as_simd_f32s(&ra[at + ox..at + ox + lanes]).0[0];
                let vb = S::as_simd_f32s(&rb[at + ox..at + ox + lanes]).0[0];
                acc_a = simd.mul_add_e_f32s(wv, va, acc_a);
                acc_b = simd.mul_add_e_f32s(wv, vb, acc_b);
            }
        }
        for (out, acc) in [(&mut *out_a, acc_a), (&mut *out_b, acc_b)] {
            let acc = simd.min_f32s(simd.max_f32s(acc, zero), six);
            if n == lanes {
                S::as_mut_simd_f32s(&mut out[ox..ox + lanes]).0[0] = acc;
            } else {
                simd.partial_store_f32s(&mut out[ox..ox + n], acc);
            }
        }
        ox += lanes;
    }
}

/// Adds the taps of `kern` over the `k` scratch `rows` to `out` (one output row, which holds
/// the bias or an earlier input channel's sum), clamping to ReLU6 at the end when `relu6`.
#[inline(always)] // into the caller's SIMD dispatch, so that it is compiled for it
pub(crate) fn conv_row<S: Simd>(
    simd: S,
    out: &mut [f32],
    rows: &[f32],
    g: &ScratchGeometry,
    kern: &[f32],
    relu6: bool,
) {
    let lanes = S::F32_LANES;
    let k = g.taps.len();
    let mut ox = 0;
    while ox < out.len() {
        let n = (out.len() - ox).min(lanes);
        let mut acc = if n == lanes {
            S::as_simd_f32s(&out[ox..ox + lanes]).0[0]
        } else {
            simd.partial_load_f32s(&out[ox..ox + n])
        };
        for (row, wrow) in rows.chunks_exact(g.stride).zip(kern.chunks_exact(k)) {
            for (&at, &wgt) in g.taps.iter().zip(wrow) {
                // a whole vector even at the row's end, within the row thanks to SLACK; the
                // lanes past `n` are never stored
                let v = S::as_simd_f32s(&row[at + ox..at + ox + lanes]).0[0];
                acc = simd.mul_add_e_f32s(simd.splat_f32s(wgt), v, acc);
            }
        }
        if relu6 {
            acc = simd.min_f32s(
                simd.max_f32s(acc, simd.splat_f32s(0.0)),
                simd.splat_f32s(6.0),
            );
        }
        if n == lanes {
            S::as_mut_simd_f32s(&mut out[ox..ox + lanes]).0[0] = acc;
        } else {
            // pulp's masked store: a call, but only once a row
            simd.partial_store_f32s(&mut out[ox..ox + n], acc);
        }
        ox += lanes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Direct loops over the unpadded input, the definition the kernel must equal.
    fn naive(l: &DepthwiseRelu6, x: &[f32], c: usize, h: usize, w: usize, p: Pad2) -> Vec<f32> {
        let (k, s) = (l.k, l.stride);
        let (ho, wo) = (l.out_dim(h, p.top, p.bottom), l.out_dim(w, p.left, p.right));
        let mut out = vec![0f32; c * ho * wo];
        for ch in 0..c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = l.bias[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - p.top as isize;
                            let ix = (ox * s + kx) as isize - p.left as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let mut v = x[ch * h * w + iy as usize * w + ix as usize];
                            if let Some(b) = &l.input_bias {
                                v = (v + b[ch]).clamp(0.0, 6.0);
                            }
                            acc += l.weight[ch * k * k + ky * k + kx] * v;
                        }
                    }
                    out[ch * ho * wo + oy * wo + ox] = acc.clamp(0.0, 6.0);
                }
            }
        }
        out
    }

    #[test]
    fn matches_direct_loops_for_every_kernel_stride_and_padding() {
        let c = 3;
        for &(h, w) in &[(9, 37), (8, 20), (14, 14)] {
            for &(k, s) in &[(3, 1), (3, 2), (5, 1), (5, 2)] {
                for &pad in &[(k / 2, k / 2, k / 2, k / 2), (0, 1, 1, 2), (1, 0, 2, 1)] {
                    let p = Pad2 {
                        top: pad.0,
                        left: pad.1,
                        bottom: pad.2,
                        right: pad.3,
                    };
                    for with_in_bias in [false, true] {
                        let x: Vec<f32> = (0..c * h * w)
                            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                            .collect();
                        let l = DepthwiseRelu6 {
                            weight: (0..c * k * k)
                                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
                                .collect(),
                            bias: vec![0.25, -0.5, 1.0],
                            k,
                            stride: s,
                            input_bias: with_in_bias.then(|| vec![0.5, -1.0, 2.0]),
                        };
                        let t = Tensor::from_vec(x.clone(), (1, c, h, w), &Device::Cpu)
                            .expect("tensor");
                        let got: Vec<f32> = t
                            .apply_op1_no_bwd(&DepthwiseOp { layer: &l, pad: p })
                            .and_then(|y| y.flatten_all()?.to_vec1())
                            .expect("op");
                        let want = naive(&l, &x, c, h, w, p);
                        assert_eq!(got.len(), want.len());
                        let worst = got
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        assert!(
                            worst < 1e-4,
                            "{h}x{w} k{k} s{s} {p:?} in_bias {with_in_bias}: {worst}"
                        );
                    }
                }
            }
        }
    }
}
