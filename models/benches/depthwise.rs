//! Spotter's depthwise kernel (`spotter_models::depthwise`, channels-last, bias and ReLU6 fused)
//! against candle's grouped convolution (channels-first, one group a channel; convolution alone)
//! on the shapes of EfficientNet-Lite0's depthwise layers at the agent's default 768x448 input, in
//! GMAC/s: why the model has its own kernel, and which layers still lag.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p spotter-models --bench depthwise`

mod kernel_timing;

use candle_core::{Device, Tensor};
use spotter_models::depthwise::{DepthwiseNhwc, Pad2};

/// (layer, input height, input width, channels, kernel, stride), one per distinct shape.
const SHAPES: [(&str, usize, usize, usize, usize, usize); 8] = [
    ("block 0", 224, 384, 32, 3, 1),
    ("block 1", 224, 384, 96, 3, 2),
    ("block 2", 112, 192, 144, 3, 1),
    ("block 3", 112, 192, 144, 5, 2),
    ("block 4", 56, 96, 240, 5, 1),
    ("block 6", 28, 48, 480, 3, 1),
    ("block 9", 28, 48, 672, 5, 1),
    ("block 13", 14, 24, 1152, 5, 1),
];

fn main() {
    let reps = kernel_timing::reps(20);
    println!(
        "{:>9} {:>9} {:>5} {:>4} {:>13} {:>13}",
        "layer", "input", "C", "k/s", "candle GMAC/s", "kernel GMAC/s"
    );
    for (name, h, w, c, k, s) in SHAPES {
        // TensorFlow's "same" padding, as Lite0 has
        let pad_total = |len: usize| ((len.div_ceil(s) - 1) * s + k).saturating_sub(len);
        let (ph, pw) = (pad_total(h), pad_total(w));
        let pad = Pad2 {
            top: ph / 2,
            left: pw / 2,
            bottom: ph - ph / 2,
            right: pw - pw / 2,
        };
        let layer_w: Vec<f32> = (0..c * k * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let dw = DepthwiseNhwc::new(&layer_w, &vec![0.1; c], k, s);
        let (ho, wo) = (
            dw.out_dim(h, pad.top, pad.bottom),
            dw.out_dim(w, pad.left, pad.right),
        );
        let macs = (ho * wo * c * k * k) as f64;
        let x: Vec<f32> = (0..h * w * c).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0f32; ho * wo * c];
        let ours = macs / kernel_timing::best(reps, || dw.forward(&x, (h, w), pad, &mut out)) / 1e9;
        let xt = Tensor::from_slice(&x, (1, c, h, w), &Device::Cpu)
            .and_then(|t| t.pad_with_zeros(2, pad.top, pad.bottom))
            .and_then(|t| t.pad_with_zeros(3, pad.left, pad.right))
            .expect("x");
        let wt = Tensor::from_slice(&layer_w, (c, 1, k, k), &Device::Cpu).expect("w");
        let candle =
            macs / kernel_timing::best(reps.min(3), || {
                xt.conv2d(&wt, 0, s, 1, c).expect("grouped convolution");
            }) / 1e9;
        println!(
            "{name:>9} {:>9} {c:>5} {:>4} {candle:>13.1} {ours:>13.1}",
            format!("{h}x{w}"),
            format!("{k}/{s}")
        );
    }
}
