//! Candle's side of the ONNX Runtime comparison (`make bench-ort`, `models/onnx/bench_ort.py`):
//! backbone forward and whole per-frame recognition times as one JSON line, and the feature maps
//! of the script's inputs so it can check that both runtimes compute the same thing.
//!
//! `cargo bench --profile dev -p spotter-models --bench frame -- --io-dir DIR [--sizes 768x448,512x288,384x224,224x224]
//! [--warmup 5] [--runs 20]`: reads `DIR/input-WxH.f32` (raw little-endian `(1, 3, H, W)`) where
//! present, writes `DIR/candle-WxH.f32` (the `(1, 1280, H/32, W/32)` feature map). Threads follow
//! `RAYON_NUM_THREADS` (candle's matrix products and the model's own kernels alike).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spotter_models::descriptor::regional_descriptors;
use spotter_models::{preprocess, CatalogIndex, EfficientNetLite0, LiteConfig, RegionGrid};

/// A catalog of the size the evaluation set uses: 40 products, 3 reference photos each.
const PRODUCTS: usize = 40;
const PHOTOS_PER_PRODUCT: usize = 3;

struct Args {
    bench: bool,
    io_dir: Option<PathBuf>,
    sizes: Vec<(usize, usize)>,
    warmup: usize,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        bench: false,
        io_dir: None,
        sizes: vec![(768, 448), (512, 288), (384, 224), (224, 224)],
        warmup: 5,
        runs: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--io-dir" => a.io_dir = Some(PathBuf::from(value("--io-dir"))),
            "--warmup" => a.warmup = value("--warmup").parse().expect("--warmup: a count"),
            "--runs" => a.runs = value("--runs").parse().expect("--runs: a count"),
            "--sizes" => {
                a.sizes = value("--sizes")
                    .split(',')
                    .map(|s| {
                        let (w, h) = s.split_once('x').expect("--sizes: WxH,WxH");
                        (
                            w.parse().expect("--sizes: width"),
                            h.parse().expect("--sizes: height"),
                        )
                    })
                    .collect();
            }
            // cargo's test harness flags, passed when `cargo test --all-targets` runs this
            _ => {}
        }
    }
    a
}

fn weights() -> Vec<u8> {
    let path = std::env::var_os("SPOTTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet-lite0.safetensors")
        });
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", path.display()))
}

/// Deterministic bytes (an LCG), so every run sees the same frame and catalog.
fn pseudo_random(n: usize, seed: u64) -> impl Iterator<Item = u32> {
    let mut s = seed;
    (0..n).map(move |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    })
}

/// A catalog index of random unit descriptors: matching cost depends on its size, not content.
fn synthetic_index(device: &Device) -> CatalogIndex {
    let c = spotter_models::efficientnet::FEATURE_CHANNELS;
    let mut rng = pseudo_random(PRODUCTS * PHOTOS_PER_PRODUCT * c, 7);
    let refs = (0..PRODUCTS * PHOTOS_PER_PRODUCT)
        .map(|i| {
            let d: Vec<f32> = (&mut rng)
                .take(c)
                .map(|v| v as f32 / u32::MAX as f32)
                .collect();
            (format!("SKU-{:03}", i / PHOTOS_PER_PRODUCT), d)
        })
        .collect();
    CatalogIndex::new(refs, device).expect("index")
}

/// One frame as the agent recognises it: pixels to tensor, backbone (with the mid-level tap
/// that verification uses), regional descriptors, matching against the catalog.
fn recognise(
    model: &EfficientNetLite0,
    index: &CatalogIndex,
    rgb: &[u8],
    (w, h): (usize, usize),
) -> usize {
    let x = preprocess::rgb_to_tensor(rgb, w, h, w * 3, &Device::Cpu).expect("tensor");
    let (features, _mid) = model
        .features_with_tap(&x, Some(spotter_models::efficientnet::MID_TAP_BLOCK))
        .expect("forward");
    let regions = regional_descriptors(&features, &RegionGrid::default()).expect("regions");
    index.best_per_product(&regions).expect("match").len()
}

/// Median and minimum milliseconds of `runs` calls after `warmup` unmeasured ones.
fn time_ms(warmup: usize, runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

fn read_f32(path: &Path, len: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    assert_eq!(
        bytes.len(),
        len * 4,
        "{}: expected {len} floats",
        path.display()
    );
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn main() {
    let args = parse_args();
    let device = Device::Cpu;
    let vb =
        VarBuilder::from_buffered_safetensors(weights(), DType::F32, &device).expect("safetensors");
    let model = EfficientNetLite0::load(vb, &LiteConfig::default()).expect("load");
    let index = synthetic_index(&device);
    if !args.bench {
        // `cargo test --all-targets` runs this without `--bench`: one frame as a smoke test
        let (w, h) = (384, 224);
        let rgb: Vec<u8> = pseudo_random(w * h * 3, 1).map(|v| v as u8).collect();
        assert!(recognise(&model, &index, &rgb, (w, h)) > 0);
        println!("frame bench: smoke run passed (timings: make bench-ort)");
        return;
    }
    let mut sizes = Vec::new();
    for &(w, h) in &args.sizes {
        let name = format!("{w}x{h}");
        let given = args
            .io_dir
            .as_ref()
            .and_then(|d| read_f32(&d.join(format!("input-{name}.f32")), 3 * h * w));
        let x = match given {
            Some(v) => Tensor::from_vec(v, (1, 3, h, w), &device).expect("input"),
            None => Tensor::randn(0f32, 1f32, (1, 3, h, w), &device).expect("input"),
        };
        if let Some(dir) = &args.io_dir {
            let f: Vec<f32> = model
                .features(&x)
                .and_then(|f| f.flatten_all()?.to_vec1())
                .expect("forward");
            let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
            let out = dir.join(format!("candle-{name}.f32"));
            std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        }
        let (forward_ms, forward_min_ms) = time_ms(args.warmup, args.runs, || {
            model.features(&x).expect("forward");
        });
        let rgb: Vec<u8> = pseudo_random(w * h * 3, 1).map(|v| v as u8).collect();
        let (frame_ms, frame_min_ms) = time_ms(args.warmup, args.runs, || {
            recognise(&model, &index, &rgb, (w, h));
        });
        sizes.push(serde_json::json!({
            "size": name,
            "forward_ms": forward_ms,
            "forward_min_ms": forward_min_ms,
            "frame_ms": frame_ms,
            "frame_min_ms": frame_min_ms,
        }));
    }
    let report = serde_json::json!({
        "threads": candle_core::utils::get_num_threads(),
        "catalog_photos": index.len(),
        "sizes": sizes,
    });
    println!("{report}");
}
