//! The stem convolution (3 input channels, `k x k`, stride 2) with its folded batch-norm bias and
//! ReLU6, from the `(C, H, W)` frame to channels-last activations.
//!
//! With 3 input channels each output pixel is a dot product of only `3 k k` = 27 inputs, so each
//! output row's windows are unfolded into a small buffer, 27 values per pixel (zero where the
//! window hangs into the padding), and go through the 1x1 kernel ([`crate::pointwise`]) while
//! still in cache; it writes the channels-last output the blocks read, bias and ReLU6 applied:
//! no transpose, no extra pass.

use rayon::prelude::*;

use crate::depthwise::Pad2;
use crate::pointwise::{Activation, Conv1x1};

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
        let (k, s, cin) = (self.k, self.stride, self.cin);
        assert_eq!(x.len(), cin * h * w, "input is (cin, h, w)");
        let (ho, wo) = (
            self.out_dim(h, pad.top, pad.bottom),
            self.out_dim(w, pad.left, pad.right),
        );
        let row = self.window_len();
        assert_eq!(out.len(), ho * wo * self.cout(), "output is (ho, wo, cout)");
        let unfold = match k {
            3 => unfold_row::<3>,
            5 => unfold_row::<5>,
            _ => unfold_row::<7>,
        };
        out.par_chunks_mut(wo * self.cout())
            .enumerate()
            .for_each_init(Vec::new, |windows, (oy, out_row)| {
                windows.resize(wo * row, 0.0);
                unfold(x, (h, w), pad, s, oy, windows);
                self.conv.forward_serial(windows, None, out_row);
            });
    }
}

/// Unfolds the `K x K` windows of output row `oy` into `windows`, `(ci, ky, kx)` per pixel (zero
/// where a window hangs into the padding). `K` is a constant so that each tap row is a
/// fixed-size copy, not a call to `memcpy` for three floats.
fn unfold_row<const K: usize>(
    x: &[f32],
    (h, w): (usize, usize),
    pad: Pad2,
    s: usize,
    oy: usize,
    windows: &mut [f32],
) {
    // the window's rows that are inside the image (the rest is padding)
    let rows: [Option<usize>; K] =
        std::array::from_fn(|ky| (oy * s + ky).checked_sub(pad.top).filter(|&iy| iy < h));
    let cin = x.len() / (h * w);
    for (ox, win) in windows.chunks_exact_mut(cin * K * K).enumerate() {
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
