//! Spotter's 1x1 convolution kernel (`spotter_models::pointwise`, bias and ReLU6 fused) against
//! candle's matrix product (the `gemm` crate; product alone, no bias) on the shapes of
//! EfficientNet-Lite0's 1x1 layers at the agent's 512x288 input, in GFLOP/s: why the model has
//! its own kernel.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p spotter-models --bench pointwise`

mod kernel_timing;

use candle_core::{Device, Tensor};
use spotter_models::pointwise::{Activation, Conv1x1};

/// (layer, pixels, Cout, Cin).
const SHAPES: [(&str, usize, usize, usize); 11] = [
    ("block 1 expand", 36864, 96, 16),
    ("block 2 expand", 9216, 144, 24),
    ("block 2 project", 9216, 24, 144),
    ("block 4 expand", 2304, 240, 40),
    ("block 4 project", 2304, 40, 240),
    ("block 6 expand", 576, 480, 80),
    ("block 9 expand", 576, 672, 112),
    ("block 9 project", 576, 112, 672),
    ("block 12 expand", 144, 1152, 192),
    ("block 12 project", 144, 192, 1152),
    ("head", 144, 1280, 320),
];

/// Best GFLOP/s of `reps` calls.
fn rate(m: usize, n: usize, k: usize, reps: usize, f: impl FnMut()) -> f64 {
    2.0 * (m * n * k) as f64 / kernel_timing::best(reps, f) / 1e9
}

fn main() {
    let reps = kernel_timing::reps(20);
    println!(
        "{:>17} {:>6} {:>5} {:>5} {:>12} {:>12}",
        "layer", "pixels", "cout", "cin", "candle GF/s", "kernel GF/s"
    );
    for (name, m, n, k) in SHAPES {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).expect("x");
        let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu)
            .and_then(|t| t.t()?.contiguous())
            .expect("w");
        let candle = rate(m, n, k, reps, || {
            xt.matmul(&wt).expect("matmul");
        });
        let conv = Conv1x1::new(&w, &vec![0.1; n], k, Activation::Relu6);
        let mut out = vec![0f32; m * n];
        let ours = rate(m, n, k, reps, || conv.forward(&x, None, &mut out));
        println!("{name:>17} {m:>6} {n:>5} {k:>5} {candle:>12.1} {ours:>12.1}");
    }
}
