//! The candle port against the numpy reference: the ImageNet top-1 class of real photos, and the
//! logits of each photo within 1e-3 of `testdata/golden_logits.json`.
//!
//! Needs the converted weights (`make setup`, or SPOTTER_MODEL pointing at them).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module};
use candle_nn::VarBuilder;
use serde::Deserialize;
use spotter_models::{preprocess, EfficientNetLite0, LiteConfig, Padding};

#[derive(Deserialize)]
struct Golden {
    padding: String,
    input_size: usize,
    images: Vec<GoldenImage>,
}

#[derive(Deserialize)]
struct GoldenImage {
    file: String,
    accepted_top1: Vec<usize>,
    logits: Vec<f32>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn model(cfg: &LiteConfig) -> EfficientNetLite0 {
    let path = std::env::var_os("SPOTTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet-lite0.safetensors")
        });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `make setup` to fetch and convert the weights",
            path.display()
        )
    });
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
        .expect("safetensors");
    EfficientNetLite0::load(vb, cfg).expect("weights fit the architecture")
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(testdata().join("golden_logits.json")).expect("golden file");
    serde_json::from_str(&text).expect("golden json")
}

fn logits(model: &EfficientNetLite0, file: &str, side: usize) -> Vec<f32> {
    let img = image::open(testdata().join(file)).expect("photo").to_rgb8();
    assert_eq!(
        img.dimensions(),
        (side as u32, side as u32),
        "{file} is stored at the input size"
    );
    let x = preprocess::rgb_to_tensor(img.as_raw(), side, side, side * 3, &Device::Cpu)
        .expect("tensor");
    model
        .forward(&x)
        .expect("forward")
        .squeeze(0)
        .expect("squeeze")
        .to_vec1()
        .expect("vec")
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .expect("non-empty")
}

#[test]
fn logits_match_the_reference_and_top1_is_right() {
    let g = golden();
    assert_eq!(
        g.padding, "tf_same",
        "LiteConfig::default() must follow the reference"
    );
    let m = model(&LiteConfig::default());
    assert!(g.images.len() >= 3);
    for img in &g.images {
        let got = logits(&m, &img.file, g.input_size);
        assert_eq!(got.len(), 1000);
        let worst = got
            .iter()
            .zip(&img.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-3,
            "{}: logits differ from the reference by up to {worst}",
            img.file
        );
        let top = argmax(&got);
        assert!(
            img.accepted_top1.contains(&top),
            "{}: top-1 class {top}, expected one of {:?}",
            img.file,
            img.accepted_top1
        );
    }
}

#[test]
fn fused_depthwise_kernel_matches_candles_grouped_convolution() {
    let g = golden();
    let fused = model(&LiteConfig::default());
    let grouped = model(&LiteConfig {
        fused_depthwise: false,
        ..LiteConfig::default()
    });
    let a = logits(&fused, &g.images[0].file, g.input_size);
    let b = logits(&grouped, &g.images[0].file, g.input_size);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4,
        "fused and grouped depthwise differ by {worst}"
    );
}

#[test]
fn wrong_padding_is_caught_by_the_golden_logits() {
    // the test above can fail: symmetric padding moves the logits far beyond the tolerance
    let g = golden();
    let m = model(&LiteConfig {
        padding: Padding::Symmetric,
        ..LiteConfig::default()
    });
    let got = logits(&m, &g.images[0].file, g.input_size);
    let worst = got
        .iter()
        .zip(&g.images[0].logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst > 0.1,
        "symmetric padding should not match the tf_same reference (diff {worst})"
    );
}

#[test]
fn mid_features_stop_at_the_tap_with_the_same_values() {
    let g = golden();
    let model = model(&LiteConfig::default());
    let img = image::open(testdata().join(&g.images[0].file))
        .expect("photo")
        .to_rgb8();
    let (w, h) = img.dimensions();
    let x = preprocess::rgb_to_tensor(
        img.as_raw(),
        w as usize,
        h as usize,
        w as usize * 3,
        &Device::Cpu,
    )
    .expect("tensor");
    let tap = spotter_models::MID_TAP_BLOCK;
    let (_, full) = model.features_with_tap(&x, Some(tap)).expect("features");
    let full = full.expect("tapped");
    let mid = model.mid_features(&x, tap).expect("mid features");
    assert_eq!(mid.dims(), full.dims());
    let worst = (mid - full)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    assert_eq!(worst, 0.0, "the tap differs by {worst}");
    assert!(model.mid_features(&x, 99).is_err(), "no block 99");
}

#[test]
fn banded_blocks_match_candles_ops_on_a_large_odd_frame() {
    // at this size the stem and the first three blocks pass 4 MB and run fused, band by band, over
    // several tasks (and tf_same pads the odd sizes unevenly); candle's own ops are the reference
    let (w, h) = (488, 282);
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i * 7919 + (i / (w * 3)) * 31) % 251) as u8)
        .collect();
    let x = preprocess::rgb_to_tensor(&rgb, w, h, w * 3, &Device::Cpu).expect("tensor");
    let tap = spotter_models::MID_TAP_BLOCK;
    let fused = model(&LiteConfig::default());
    let ops = model(&LiteConfig {
        fused_depthwise: false,
        ..LiteConfig::default()
    });
    let (a_head, a_tap) = fused.features_with_tap(&x, Some(tap)).expect("fused");
    let (b_head, b_tap) = ops.features_with_tap(&x, Some(tap)).expect("ops");
    let worst = |a: candle_core::Tensor, b: candle_core::Tensor| -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.flatten_all().and_then(|t| t.to_vec1()).expect("a");
        let b: Vec<f32> = b.flatten_all().and_then(|t| t.to_vec1()).expect("b");
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let tap_diff = worst(a_tap.expect("tap"), b_tap.expect("tap"));
    let head_diff = worst(a_head, b_head);
    assert!(tap_diff <= 1e-3, "the tap differs by {tap_diff}");
    assert!(head_diff <= 1e-3, "the head differs by {head_diff}");
}
