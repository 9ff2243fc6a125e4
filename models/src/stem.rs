//! The stem convolution (3 input channels, `k x k`, stride 2) with its folded batch-norm bias and
//! ReLU6, from the `(C, H, W)` frame to channels-last activations.
//!
//! With 3 input channels each output pixel is a dot product of only `3 k k` = 27 inputs. The
//! 3x3 stride-2 stem (Lite0's) reads them straight from the image: a tile of pixels by two vectors
//! of output channels accumulates in registers, as in the 1x1 kernel ([`crate::pointwise`]), each
//! tap broadcast from its row of the image. Pixels whose window hangs into the padding, and other
//! kernel sizes, have their windows unfolded into a small buffer (zero in the padding) that goes
//! through the 1x1 kernel. Either way the output is the channels-last map the blocks read, bias
//! and ReLU6 applied: no transpose, no extra pass.

use std::ops::Range;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::depthwise::Pad2;
use crate::pointwise::{accumulate, store_tile, sweep, Activation, Conv1x1};

/// A dense `k x k` convolution with bias and ReLU6 for inputs of few channels.
#[derive(Debug, Clone)]
pub struct StemConv {
    /// The convolution as a product over unfolded windows.
    conv: Conv1x1,
    cin: usize,
    k: usize,
    stride: usize,
}

impl StemConv {
    /// From candle's `(Cout, Cin, k, k)` weight (row-major) and the per-channel bias.
    pub fn new(weight: &[f32], bias: &[f32], cin: usize, k: usize, stride: usize) -> Self {
        assert!(matches!(k, 3 | 5 | 7), "stem kernels are 3x3, 5x5 or 7x7");
        StemConv {
            // a window unfolds as (ci, ky, kx), the order of each output channel's weights
            conv: Conv1x1::new(weight, bias, cin * k * k, Activation::Relu6),
            cin,
            k,
            stride,
        }
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.conv.cout()
    }

    /// Floats in one unfolded window (`Cin k k`).
    pub fn window_len(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// Output length of one axis.
    pub fn out_dim(&self, len: usize, before: usize, after: usize) -> usize {
        (len + before + after - self.k) / self.stride + 1
    }

    /// `out = clamp(conv(x) + b, 0, 6)` for `x` of `(Cin, h, w)` and `out` of `(ho, wo, Cout)`.
    pub fn forward(&self, x: &[f32], (h, w): (usize, usize), pad: Pad2, out: &mut [f32]) {
        assert_eq!(x.len(), self.cin * h * w, "input is (cin, h, w)");
        let (ho, wo) = (
            self.out_dim(h, pad.top, pad.bottom),
            self.out_dim(w, pad.left, pad.right),
        );
        assert_eq!(out.len(), ho * wo * self.cout(), "output is (ho, wo, cout)");
        out.par_chunks_mut(wo * self.cout())
            .enumerate()
            .for_each_init(Vec::new, |windows, (oy, out_row)| {
                self.forward_row(x, (h, w), pad, oy, windows, out_row);
            });
    }

    /// Output row `oy` into `out_row` (`(wo, Cout)`); `windows` is scratch for the unfolded
    /// windows of the pixels the direct kernel does not take.
    pub(crate) fn forward_row(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        pad: Pad2,
        oy: usize,
        windows: &mut Vec<f32>,
        out_row: &mut [f32],
    ) {
        let (k, s, cout) = (self.k, self.stride, self.cout());
        let wo = out_row.len() / cout;
        // the pixels whose windows lie wholly inside the image, on a row whose taps all do
        let rows_inside = oy * s >= pad.top && oy * s + k <= h + pad.top;
        let inside = if (k, s) == (3, 2) && rows_inside && w + pad.left >= k {
            let first = pad.left.div_ceil(s);
            first.min(wo)..((w + pad.left - k) / s + 1).min(wo)
        } else {
            0..0
        };
        let unfold = match k {
            3 => unfold_row::<3>,
            5 => unfold_row::<5>,
            _ => unfold_row::<7>,
        };
        let row = self.window_len();
        for span in [0..inside.start, inside.end.max(inside.start)..wo] {
            if span.is_empty() {
                continue;
            }
            windows.resize(span.len() * row, 0.0);
            unfold(x, (h, w), pad, s, oy, span.clone(), windows);
            self.conv.forward_serial(
                windows,
                None,
                &mut out_row[span.start * cout..span.end * cout],
            );
        }
        if !inside.is_empty() {
            pulp::Arch::new().dispatch(Direct::<3, 2> {
                conv: &self.conv,
                x,
                hw: (h, w),
                iy0: oy * s - pad.top,
                left: pad.left,
                pixels: inside,
                out_row,
            });
        }
    }
}

/// Output pixels `pixels` of one row whose `K x K` windows (stride `ST`) lie inside the image, as
/// a unit of SIMD dispatch.
struct Direct<'a, const K: usize, const ST: usize> {
    conv: &'a Conv1x1,
    /// The `(Cin, h, w)` image.
    x: &'a [f32],
    hw: (usize, usize),
    /// The image row of the windows' first tap row.
    iy0: usize,
    /// Padding columns on the left.
    left: usize,
    pixels: Range<usize>,
    out_row: &'a mut [f32],
}

impl<const K: usize, const ST: usize> Direct<'_, K, ST> {
    /// Tiles of `R` pixels by `V` vectors of output channels from `co`, from pixel `*p` on while
    /// whole ones fit; leaves `*p` at the first pixel not done.
    #[inline(always)]
    fn sweep<S: Simd, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        co: usize,
        p: &mut usize,
    ) {
        let end = self.pixels.end;
        sweep::<R>(p, end, |p| self.tile::<S, R, V>(simd, co, p));
    }

    /// `R` pixels from `ox0` by output channels `co..co + V * lanes`.
    #[inline(always)]
    fn tile<S: Simd, const R: usize, const V: usize>(&mut self, simd: S, co: usize, ox0: usize) {
        let (h, w) = self.hw;
        let conv = self.conv;
        let (weights, per, sub) = conv.panel::<S>(co);
        let mut acc = conv.bias_tile::<S, R, V>(co);
        let ix0 = ox0 * ST - self.left;
        for (ci, plane) in self.x.chunks_exact(h * w).enumerate() {
            for ky in 0..K {
                // the weights run (ci, ky, kx), as a window unfolds
                let wk = &weights[(ci * K + ky) * K * per..][..K * per];
                // the tile's inputs on this row, sliced to exactly what its windows read so that
                // the constant indices below need no bounds check
                let seg = &plane[(self.iy0 + ky) * w + ix0..][..ST * (R - 1) + K];
                for kx in 0..K {
                    let wv = std::array::from_fn(|j| wk[kx * per + sub + j]);
                    accumulate(simd, &mut acc, wv, |r| seg[ST * r + kx]);
                }
            }
        }
        store_tile(simd, conv, acc, None, self.out_row, ox0, co);
    }
}

impl<const K: usize, const ST: usize> WithSimd for Direct<'_, K, ST> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        let lanes = S::F32_LANES;
        let cout = self.conv.cout();
        for co in (0..cout).step_by(2 * lanes) {
            let mut p = self.pixels.start;
            // 6 pixels a tile: 12 pixels (24 accumulators of AVX-512's 32, as the 1x1 kernel
            // takes) spilled and ran a third slower (`--bench stem`)
            if co + lanes >= cout {
                self.sweep::<S, 6, 1>(simd, co, &mut p);
                self.sweep::<S, 1, 1>(simd, co, &mut p);
            } else {
                self.sweep::<S, 6, 2>(simd, co, &mut p);
                self.sweep::<S, 1, 2>(simd, co, &mut p);
            }
        }
    }
}

/// Unfolds the `K x K` windows of output row `oy`'s pixels `oxs` into `windows`, `(ci, ky, kx)`
/// per pixel (zero where a window hangs into the padding). `K` is a constant so that each tap row
/// is a fixed-size copy, not a call to `memcpy` for three floats.
fn unfold_row<const K: usize>(
    x: &[f32],
    (h, w): (usize, usize),
    pad: Pad2,
    s: usize,
    oy: usize,
    oxs: Range<usize>,
    windows: &mut [f32],
) {
    // the window's rows that are inside the image (the rest is padding)
    let rows: [Option<usize>; K] =
        std::array::from_fn(|ky| (oy * s + ky).checked_sub(pad.top).filter(|&iy| iy < h));
    let cin = x.len() / (h * w);
    for (ox, win) in oxs.zip(windows.chunks_exact_mut(cin * K * K)) {
        let ix0 = (ox * s).checked_sub(pad.left).filter(|&ix| ix + K <= w);
        let mut taps = win.chunks_exact_mut(K);
        for plane in x.chunks_exact(h * w) {
            for (iy, tap) in rows.iter().zip(&mut taps) {
                match (*iy, ix0) {
                    (Some(iy), Some(ix0)) => {
                        tap.copy_from_slice(&plane[iy * w + ix0..][..K]);
                    }
                    (Some(iy), None) => {
                        for (kx, t) in tap.iter_mut().enumerate() {
                            *t = (ox * s + kx)
                                .checked_sub(pad.left)
                                .filter(|&ix| ix < w)
                                .map_or(0.0, |ix| plane[iy * w + ix]);
                        }
                    }
                    (None, _) => tap.fill(0.0),
                }
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
        let (cin, k, s) = (3, 3, 2);
        // wide rows take the direct kernel's whole tiles, narrow ones its single pixels; 40
        // output channels leave a vector that is part padding
        for &(h, w, cout) in &[(16, 24, 5), (15, 9, 5), (9, 70, 32), (7, 61, 40)] {
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
                    // channels last, as the kernel writes
                    .and_then(|t| t.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>())
                    .expect("candle");
                let layer = StemConv::new(
                    &wt.flatten_all().and_then(|t| t.to_vec1()).expect("w"),
                    &bias,
                    cin,
                    k,
                    s,
                );
                let (ho, wo) = (
                    layer.out_dim(h, pad.top, pad.bottom),
                    layer.out_dim(w, pad.left, pad.right),
                );
                let mut got = vec![f32::NAN; ho * wo * cout];
                let xs: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).expect("x");
                layer.forward(&xs, (h, w), pad, &mut got);
                let d = crate::max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{h}x{w} {pad:?}: {d}");
            }
        }
    }
}
