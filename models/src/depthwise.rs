//! Depthwise convolution with the folded batch-norm bias and ReLU6 fused in, as a candle custom op.
//!
//! candle runs a grouped convolution as one convolution per group, which for a depthwise layer of
//! 1152 channels means 1152 tiny im2col calls; this kernel walks each channel's plane once instead,
//! one rayon task a plane. On CUDA the model falls back to candle's grouped convolution.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
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

/// A depthwise `k x k` convolution with bias and ReLU6, weights owned by the op.
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
    /// Zero padding.
    pub pad: Pad2,
}

impl DepthwiseRelu6 {
    fn out_dim(&self, len: usize, before: usize, after: usize) -> usize {
        (len + before + after - self.k) / self.stride + 1
    }
}

impl CustomOp1 for DepthwiseRelu6 {
    fn name(&self) -> &'static str {
        "depthwise-relu6"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if c != self.bias.len() {
            candle_core::bail!(
                "depthwise: input has {c} channels, weights {}",
                self.bias.len()
            );
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise: input must be contiguous");
        };
        let input = &storage.as_slice::<f32>()?[start..end];
        let (k, s, p) = (self.k, self.stride, self.pad);
        let ho = self.out_dim(h, p.top, p.bottom);
        let wo = self.out_dim(w, p.left, p.right);
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % c;
                let src = &input[plane * h * w..(plane + 1) * h * w];
                let kern = &self.weight[ch * k * k..(ch + 1) * k * k];
                dst.fill(self.bias[ch]);
                for oy in 0..ho {
                    let row = &mut dst[oy * wo..(oy + 1) * wo];
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - p.top as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let src_row = &src[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..k {
                            let wgt = kern[ky * k + kx];
                            // ox range for which ix = ox*s + kx - left lies inside the row
                            let lo = (p.left.saturating_sub(kx)).div_ceil(s);
                            let hi_excl = ((w + p.left).saturating_sub(kx)).div_ceil(s).min(wo);
                            if lo >= hi_excl {
                                continue;
                            }
                            let ix0 = lo * s + kx - p.left;
                            if s == 1 {
                                let len = hi_excl - lo;
                                for (o, i) in
                                    row[lo..hi_excl].iter_mut().zip(&src_row[ix0..ix0 + len])
                                {
                                    *o += wgt * i;
                                }
                            } else {
                                for (j, o) in row[lo..hi_excl].iter_mut().enumerate() {
                                    *o += wgt * src_row[ix0 + j * s];
                                }
                            }
                        }
                    }
                    for v in row.iter_mut() {
                        *v = v.clamp(0.0, 6.0);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }
}
