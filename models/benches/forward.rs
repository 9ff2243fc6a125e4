//! Forward-pass benchmark: EfficientNet-Lite0 in candle at the agent's input sizes, with Spotter's
//! fused CPU kernels (`LiteConfig::fused_depthwise`) against candle's own ops (grouped
//! convolution and all) as the in-process baseline. Against ONNX Runtime: `make bench-ort`.
//!
//! `cargo bench -p spotter-models --bench forward` (weights from `make setup`, or SPOTTER_MODEL).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spotter_models::{EfficientNetLite0, LiteConfig};

fn weights() -> Vec<u8> {
    let path = std::env::var_os("SPOTTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet-lite0.safetensors")
        });
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", path.display()))
}

/// Median milliseconds of `runs` forward passes after `warmup` unmeasured ones.
fn time_ms(model: &EfficientNetLite0, x: &Tensor, warmup: usize, runs: usize) -> f64 {
    for _ in 0..warmup {
        model.features(x).expect("forward");
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            model.features(x).expect("forward");
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs this too, without `--bench`: one pass as a smoke test
    if !std::env::args().any(|a| a == "--bench") {
        let vb = VarBuilder::from_buffered_safetensors(weights(), DType::F32, &Device::Cpu)
            .expect("safetensors");
        let model = EfficientNetLite0::load(vb, &LiteConfig::default()).expect("load");
        let x = Tensor::zeros((1, 3, 224, 384), DType::F32, &Device::Cpu).expect("input");
        let f = model.features(&x).expect("forward");
        assert_eq!(f.dims(), &[1, 1280, 7, 12]);
        println!("forward bench: smoke run passed (timings: make bench)");
        return;
    }
    let device = Device::Cpu;
    let bytes = weights();
    let load = |fused| {
        let vb =
            VarBuilder::from_slice_safetensors(&bytes, DType::F32, &device).expect("safetensors");
        EfficientNetLite0::load(
            vb,
            &LiteConfig {
                fused_depthwise: fused,
                ..LiteConfig::default()
            },
        )
        .expect("load")
    };
    let fused = load(true);
    let grouped = load(false);
    println!(
        "EfficientNet-Lite0 backbone (to the 1280-channel head), candle, {} threads",
        rayon_threads()
    );
    println!(
        "{:>10} {:>14} {:>16} {:>8}",
        "input", "kernels (ms)", "candle ops (ms)", "ratio"
    );
    for (w, h) in [(224, 224), (384, 224), (448, 256)] {
        let x = Tensor::randn(0f32, 1f32, (1, 3, h, w), &device).expect("input");
        let a = time_ms(&fused, &x, 3, 15);
        let b = time_ms(&grouped, &x, 1, 5);
        println!(
            "{:>10} {:>14.1} {:>16.1} {:>8.3}",
            format!("{w}x{h}"),
            a,
            b,
            a / b
        );
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
