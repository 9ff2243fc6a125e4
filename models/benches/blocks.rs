//! The per-block profile of one forward pass at 768x448 (`EfficientNetLite0::features_timed`),
//! each part's best and median milliseconds over many passes: best-of is what survives another
//! process sharing the cores, and the early blocks (0-4, block 0 with the stem) are where the
//! fused kernels run furthest below the later blocks' rate.
//!
//! `cargo bench --profile dev -p spotter-models --bench blocks -- --bench [--runs 40]`

use std::path::PathBuf;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--runs: a count"))
        .unwrap_or(if bench { 40 } else { 1 });
    let vb = VarBuilder::from_buffered_safetensors(weights(), DType::F32, &Device::Cpu)
        .expect("safetensors");
    let model = EfficientNetLite0::load(vb, &LiteConfig::default()).expect("load");
    let x = Tensor::randn(0f32, 1f32, (1, 3, 448, 768), &Device::Cpu).expect("input");
    model.features_timed(&x).expect("forward");
    let laps: Vec<Vec<f64>> = (0..runs)
        .map(|_| model.features_timed(&x).expect("forward").1)
        .collect();
    let stat = |i: Option<usize>| {
        let mut t: Vec<f64> = laps
            .iter()
            .map(|l| i.map_or_else(|| l.iter().sum(), |i| l[i]))
            .collect();
        t.sort_by(f64::total_cmp);
        (t[0], t[t.len() / 2])
    };
    println!("{:>10} {:>8} {:>8}", "part", "best ms", "median");
    let early = |l: &Vec<f64>| l[..5].iter().sum::<f64>();
    for i in 0..laps[0].len() {
        let (b, m) = stat(Some(i));
        println!("{:>10} {b:>8.3} {m:>8.3}", format!("block {i}"));
    }
    let mut e: Vec<f64> = laps.iter().map(early).collect();
    e.sort_by(f64::total_cmp);
    println!("{:>10} {:>8.3} {:>8.3}", "blocks 0-4", e[0], e[e.len() / 2]);
    let (b, m) = stat(None);
    println!("{:>10} {b:>8.3} {m:>8.3}", "forward");
}
