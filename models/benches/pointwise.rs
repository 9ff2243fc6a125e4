//! Spotter's 1x1 convolution kernel (`spotter_models::pointwise`, bias and ReLU6 fused) against
//! candle's matrix product (the `gemm` crate; product alone, no bias) on the shapes of
//! EfficientNet-Lite0's 1x1 layers at the agent's default 768x448 input, in GFLOP/s and
//! milliseconds: why the model has its own kernel, and which layers still lag.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p spotter-models --bench pointwise`

mod kernel_timing;

use candle_core::{Device, Tensor};
use spotter_models::pointwise::{self, Activation, Conv1x1};

/// (layer, pixels, Cout, Cin).
const SHAPES: [(&str, usize, usize, usize); 11] = [
    ("block 1 expand", 86016, 96, 16),
    ("block 2 expand", 21504, 144, 24),
    ("block 2 project", 21504, 24, 144),
    ("block 4 expand", 5376, 240, 40),
    ("block 4 project", 5376, 40, 240),
    ("block 6 expand", 1344, 480, 80),
    ("block 9 expand", 1344, 672, 112),
    ("block 9 project", 1344, 112, 672),
    ("block 12 expand", 336, 1152, 192),
    ("block 12 project", 336, 192, 1152),
    ("head", 336, 1280, 320),
];

/// Best seconds of `reps` calls, and the GFLOP/s they make.
fn rate(m: usize, n: usize, k: usize, reps: usize, f: impl FnMut()) -> (f64, f64) {
    let secs = kernel_timing::best(reps, f);
    (secs, 2.0 * (m * n * k) as f64 / secs / 1e9)
}

fn main() {
    let reps = kernel_timing::reps(20);
    println!(
        "{:>17} {:>6} {:>5} {:>5} {:>12} {:>12} {:>10}",
        "layer", "pixels", "cout", "cin", "candle GF/s", "kernel GF/s", "kernel ms"
    );
    for (name, m, n, k) in SHAPES {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).expect("x");
        let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu)
            .and_then(|t| t.t()?.contiguous())
            .expect("w");
        let (_, candle) = rate(m, n, k, reps, || {
            xt.matmul(&wt).expect("matmul");
        });
        let conv = Conv1x1::new(&w, &vec![0.1; n], k, Activation::Relu6);
        let mut out = vec![0f32; m * n];
        let (secs, ours) = rate(m, n, k, reps, || conv.forward(&x, None, &mut out));
        let ms = secs * 1e3;
        println!("{name:>17} {m:>6} {n:>5} {k:>5} {candle:>12.1} {ours:>12.1} {ms:>10.3}");
        if name == "head" {
            // as the model runs it: channels-first planes, the product with the roles swapped
            let rows = pointwise::rows_with_bias(&w, &vec![0.1; n]);
            let (secs, ours) = rate(m, n, k, reps, || {
                pointwise::planes(&rows, &x, k, Activation::Relu6);
            });
            let ms = secs * 1e3;
            let name = "head (planes)";
            println!(
                "{name:>17} {m:>6} {n:>5} {k:>5} {:>12} {ours:>12.1} {ms:>10.3}",
                ""
            );
        }
    }
}
