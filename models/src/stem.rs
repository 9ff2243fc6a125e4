//! The stem convolution (3 input channels, `k x k`, stride 2) with its folded batch-norm bias and
//! ReLU6, as a candle custom op.
//!
//! candle would pad the frame twice (one copy per axis), unfold it for a matrix product of only 27
//! rows, then add the bias and clamp in two more passes over the largest feature map of the
//! network. With 3 input channels a direct convolution is cheaper: the padded frame is laid out
//! once the way the depthwise kernel reads it, and each output channel sums 3 input planes.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::depthwise::{conv_row, Pad2, ScratchGeometry};

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
                g.fill(dst, plane, None);
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
