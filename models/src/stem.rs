//! The stem convolution (3 input channels, `k x k`, stride 2) with its folded batch-norm bias and
//! ReLU6, as a candle custom op.
//!
//! candle would pad the frame twice (one copy per axis), unfold it for a matrix product of only 27
//! rows, then add the bias and clamp in two more passes over the largest feature map of the
//! network. With 3 input channels a direct convolution is cheaper: the frame is copied once into
//! zero-padded planes with each row split by stride phase, so that every tap reads a contiguous
//! run of one SIMD vector, and each output channel sums 3 input planes.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::depthwise::Pad2;

/// A dense `k x k` convolution with bias and ReLU6 for inputs of few channels.
#[derive(Debug, Clone)]
pub struct StemConv {
    /// `[out_channels * in_channels * k * k]`, as candle stores conv weights.
    pub weight: Vec<f32>,
    /// `[out_channels]`.
    pub bias: Vec<f32>,
    /// Input channels.
    pub cin: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
}

/// [`StemConv`] applied with one input size's padding.
#[derive(Debug, Clone, Copy)]
pub struct StemOp<'a> {
    /// The layer.
    pub layer: &'a StemConv,
    /// Zero padding for this input size.
    pub pad: Pad2,
}

impl CustomOp1 for StemOp<'_> {
    fn name(&self) -> &'static str {
        "stem-conv-relu6"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let l = self.layer;
        let (n, cin, h, w) = layout.shape().dims4()?;
        let (k, s, p, cout) = (l.k, l.stride, self.pad, l.bias.len());
        if cin != l.cin || l.weight.len() != cout * cin * k * k {
            candle_core::bail!(
                "stem: input has {cin} channels, weights {} ({} values)",
                l.cin,
                l.weight.len()
            );
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("stem: input must be contiguous");
        };
        let input = &storage.as_slice::<f32>()?[start..end];
        let ho = (h + p.top + p.bottom - k) / s + 1;
        let wo = (w + p.left + p.right - k) / s + 1;
        let g = ScratchGeometry::new((h, w), k, s, p);
        // the same run-time SIMD choice as the depthwise kernel
        let arch = pulp::Arch::new();
        let mut out = vec![0f32; n * cout * ho * wo];
        let mut scratch = vec![0f32; cin * g.len()];
        for (image, out) in input
            .chunks_exact(cin * h * w)
            .zip(out.chunks_exact_mut(cout * ho * wo))
        {
            for (plane, dst) in image
                .chunks_exact(h * w)
                .zip(scratch.chunks_exact_mut(g.len()))
            {
                g.fill(dst, plane);
            }
            let scratch = &scratch;
            out.par_chunks_mut(ho * wo)
                .enumerate()
                .for_each(|(co, dst)| {
                    arch.dispatch(OutputChannel {
                        g: &g,
                        scratch,
                        kern: &l.weight[co * cin * k * k..(co + 1) * cin * k * k],
                        bias: l.bias[co],
                        dst,
                        wo,
                    });
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, cout, ho, wo))))
    }
}

/// One output channel, as a unit of SIMD dispatch: the sum over every input plane.
struct OutputChannel<'a> {
    g: &'a ScratchGeometry,
    /// The padded input planes, one after the other.
    scratch: &'a [f32],
    /// `[in_channels * k * k]`.
    kern: &'a [f32],
    bias: f32,
    dst: &'a mut [f32],
    wo: usize,
}

impl WithSimd for OutputChannel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (g, k) = (self.g, self.g.taps.len());
        let cin = self.kern.len() / (k * k);
        for (oy, row) in self.dst.chunks_exact_mut(self.wo).enumerate() {
            row.fill(self.bias);
            for (ci, kern) in self.kern.chunks_exact(k * k).enumerate() {
                let plane = &self.scratch[ci * g.len()..(ci + 1) * g.len()];
                let rows = &plane[oy * g.s * g.stride..(oy * g.s + k) * g.stride];
                conv_row(simd, row, rows, g, kern, ci + 1 == cin);
            }
        }
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
const SLACK: usize = 16;

/// How one input size's planes sit in a scratch buffer.
#[derive(Debug, Clone)]
struct ScratchGeometry {
    /// Padded input rows.
    hp: usize,
    /// Floats from one scratch row to the next (padded width plus [`SLACK`]).
    stride: usize,
    /// Where each tap column starts in a scratch row (stride phases split apart).
    taps: Vec<usize>,
    /// Where each stride phase starts in a scratch row.
    starts: Vec<usize>,
    pad: Pad2,
    w: usize,
    h: usize,
    /// Stride of the convolution.
    s: usize,
}

impl ScratchGeometry {
    fn new((h, w): (usize, usize), k: usize, s: usize, pad: Pad2) -> Self {
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
    fn len(&self) -> usize {
        self.hp * self.stride
    }

    /// Copies one `h x w` plane into `scratch`: zero padding around it, each row split by stride
    /// phase.
    fn fill(&self, scratch: &mut [f32], src: &[f32]) {
        let (p, w, s) = (self.pad, self.w, self.s);
        let wp = w + p.left + p.right;
        for (r, dst) in scratch.chunks_exact_mut(self.stride).enumerate() {
            if r < p.top || r >= p.top + self.h {
                dst.fill(0.0);
                continue;
            }
            let src_row = &src[(r - p.top) * w..(r - p.top + 1) * w];
            if s == 1 {
                dst[..p.left].fill(0.0);
                dst[p.left..p.left + w].copy_from_slice(src_row);
                dst[p.left + w..].fill(0.0);
            } else if s == 2 {
                dst.fill(0.0);
                let (even, odd) = dst[..wp].split_at_mut(self.starts[1]);
                for (i, &v) in src_row.iter().enumerate() {
                    let col = p.left + i;
                    if col % 2 == 0 {
                        even[col / 2] = v;
                    } else {
                        odd[col / 2] = v;
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
                            src_row[col - p.left]
                        };
                    }
                }
                dst[wp..].fill(0.0);
            }
        }
    }
}

/// Adds the taps of `kern` over the `k` scratch `rows` to `out` (one output row, which holds
/// the bias or an earlier input channel's sum), clamping to ReLU6 at the end when `relu6`.
#[inline(always)] // into the caller's SIMD dispatch, so that it is compiled for it
fn conv_row<S: Simd>(
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

    #[test]
    fn matches_candles_padded_convolution_with_bias_and_relu6() {
        let (cin, cout, k, s) = (3, 5, 3, 2);
        for &(h, w) in &[(16, 24), (15, 9)] {
            for pad in [
                Pad2 {
                    top: 0,
                    left: 0,
                    bottom: 1,
                    right: 1,
                },
                Pad2 {
                    top: 1,
                    left: 1,
                    bottom: 1,
                    right: 1,
                },
            ] {
                let x = Tensor::randn(0f32, 1f32, (1, cin, h, w), &Device::Cpu).expect("x");
                let wt = Tensor::randn(0f32, 1f32, (cout, cin, k, k), &Device::Cpu).expect("w");
                let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.3 - 0.5).collect();
                let want = x
                    .pad_with_zeros(2, pad.top, pad.bottom)
                    .and_then(|t| t.pad_with_zeros(3, pad.left, pad.right))
                    .and_then(|t| t.conv2d(&wt, 0, s, 1, 1))
                    .and_then(|t| {
                        t.broadcast_add(
                            &Tensor::new(bias.as_slice(), &Device::Cpu)?
                                .reshape((1, cout, 1, 1))?,
                        )
                    })
                    .and_then(|t| t.clamp(0f32, 6f32))
                    .expect("candle");
                let layer = StemConv {
                    weight: wt.flatten_all().and_then(|t| t.to_vec1()).expect("w"),
                    bias,
                    cin,
                    k,
                    stride: s,
                };
                let got = x
                    .apply_op1_no_bwd(&StemOp { layer: &layer, pad })
                    .expect("stem");
                assert_eq!(got.dims(), want.dims());
                let d: f32 = (got - want)
                    .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
                    .expect("diff");
                assert!(d < 1e-4, "{h}x{w} {pad:?}: {d}");
            }
        }
    }
}
