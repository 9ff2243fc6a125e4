//! Spotter's stem convolution (`spotter_models::stem`: 3x3, stride 2, 3 to 32 channels, bias and
//! ReLU6 fused, channels-last out) against candle's convolution (product alone, channels-first
//! out) at the agent's 768x448 and 512x288 inputs, in GFLOP/s.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p spotter-models --bench stem`

mod kernel_timing;

use candle_core::{Device, Tensor};
use spotter_models::depthwise::Pad2;
use spotter_models::stem::StemConv;

fn main() {
    let reps = kernel_timing::reps(30);
    let (cin, cout, k, s) = (3, 32, 3, 2);
    println!("{:>9} {:>12} {:>12}", "input", "candle GF/s", "kernel GF/s");
    for (h, w) in [(448, 768), (288, 512)] {
        // TensorFlow's "same" padding on an even size: the odd pixel after
        let pad = Pad2 {
            top: 0,
            left: 0,
            bottom: 1,
            right: 1,
        };
        let weight: Vec<f32> = (0..cout * cin * k * k)
            .map(|i| (i % 5) as f32 * 0.1)
            .collect();
        let stem = StemConv::new(&weight, &vec![0.1; cout], cin, k, s);
        let (ho, wo) = (
            stem.out_dim(h, pad.top, pad.bottom),
            stem.out_dim(w, pad.left, pad.right),
        );
        let flops = 2.0 * (ho * wo * cout * cin * k * k) as f64;
        let x: Vec<f32> = (0..cin * h * w).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0f32; ho * wo * cout];
        let ours =
            flops / kernel_timing::best(reps, || stem.forward(&x, (h, w), pad, &mut out)) / 1e9;
        let xt = Tensor::from_slice(&x, (1, cin, h, w), &Device::Cpu)
            .and_then(|t| t.pad_with_zeros(2, pad.top, pad.bottom))
            .and_then(|t| t.pad_with_zeros(3, pad.left, pad.right))
            .expect("x");
        let wt = Tensor::from_slice(&weight, (cout, cin, k, k), &Device::Cpu).expect("w");
        let candle = flops
            / kernel_timing::best(reps.min(5), || {
                xt.conv2d(&wt, 0, s, 1, 1).expect("convolution");
            })
            / 1e9;
        println!("{:>9} {candle:>12.1} {ours:>12.1}", format!("{w}x{h}"));
    }
}
