//! Candle's side of the ONNX Runtime comparison (`make bench-ort`, `models/onnx/bench_ort.py`):
//! backbone forward and whole per-frame recognition times as one JSON line, and the feature maps
//! of the script's inputs so it can check that both runtimes compute the same thing.
//!
//! `cargo bench --profile dev -p spotter-models --bench frame -- --io-dir DIR [--sizes 768x448,512x288,384x224,224x224]
//! [--warmup 5] [--runs 20] [--blocks]`: reads `DIR/input-WxH.f32` (raw little-endian `(1, 3, H, W)`) where
//! present, writes `DIR/candle-WxH.f32` (the `(1, 1280, H/32, W/32)` feature map). Also reports
//! `likeness_ms` (the pixel likeness of one candidate) and `zoom_forward_ms` (the pass over a
//! zoomed region, `zoom_side` pixels square); with `--blocks`, each block's median and best time
//! (`part_ms`, `part_min_ms`, block 0 with the stem) and blocks 0-4 together. Threads follow
//! `RAYON_NUM_THREADS` (candle's matrix products and the model's own kernels alike).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spotter_models::appearance::{Appearance, FramePixels};
use spotter_models::matching::{Zoom, ZOOM};
use spotter_models::verify::{cells, ReferenceView, Similarity, VerifyParams, ViewSet};
use spotter_models::{
    preprocess, CatalogIndex, EfficientNetLite0, FrameFeatures, LiteConfig, ProductIndex,
    RegionGrid, MID_TAP_BLOCK,
};

/// A catalog of the size the evaluation set uses: 15 products, 3 reference photos each, each
/// photo verified at 3 sizes (128, 224 and 320 px: 8x8, 14x14 and 20x20 mid-level cells, of which
/// the object covers about 60 %).
const PRODUCTS: usize = 15;
const PHOTOS_PER_PRODUCT: usize = 3;
const VIEW_SIDES_CELLS: [usize; 3] = [8, 14, 20];
/// Products verified a frame: as many as the regional descriptors shortlist on the evaluation
/// clips (3.3 a frame on average at 768x448, `RUST_LOG=spotter_agent::recognizer=trace`).
const SHORTLIST: usize = 4;
/// Uniform noise added to the frame's cells to make each product's views, times the map's RMS.
const NOISE: f32 = 1.0;

struct Args {
    bench: bool,
    io_dir: Option<PathBuf>,
    sizes: Vec<(usize, usize)>,
    warmup: usize,
    runs: usize,
    /// Also time the forward pass up to each block (`--blocks`), for a per-block profile.
    blocks: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        bench: false,
        io_dir: None,
        sizes: vec![(768, 448), (512, 288), (384, 224), (224, 224)],
        warmup: 5,
        runs: 20,
        blocks: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--blocks" => a.blocks = true,
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

/// A catalog of random regional descriptors (matching cost depends on the index's size, not its
/// content), whose reference views are windows of the frame's own mid-level cells: verification
/// then finds real pairs and searches real transforms, as it does on a frame that shows products.
fn synthetic_index(frame_mid: &Tensor, device: &Device) -> ProductIndex {
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
    let global = CatalogIndex::new(refs, device).expect("index");
    let (_, _, mh, mw) = frame_mid.dims4().expect("mid map");
    let mut offsets = pseudo_random(PRODUCTS * PHOTOS_PER_PRODUCT * 3 * 2, 11);
    let flat: Vec<f32> = frame_mid
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("mid map");
    let std = (flat.iter().map(|v| v * v).sum::<f32>() / flat.len() as f32).sqrt();
    let views = (0..PRODUCTS)
        .map(|p| {
            // each product sees the frame through its own noise, so that products differ and
            // the competition between them is real
            let noisy: Vec<f32> = flat
                .iter()
                .zip(pseudo_random(flat.len(), 100 + p as u64))
                .map(|(v, r)| v + NOISE * std * (r as f32 / u32::MAX as f32 - 0.5))
                .collect();
            let noisy = Tensor::from_vec(noisy, frame_mid.shape(), device).expect("noisy map");
            let mut views = Vec::new();
            for _ in 0..PHOTOS_PER_PRODUCT {
                for side in VIEW_SIDES_CELLS {
                    let side = side.min(mh).min(mw);
                    let y0 = offsets.next().unwrap_or(0) as usize % (mh - side + 1);
                    let x0 = offsets.next().unwrap_or(0) as usize % (mw - side + 1);
                    // the object: the middle 60 % of the window's cells
                    let (lo, hi) = (side / 5, side - side / 5);
                    let keep = |y: usize, x: usize| {
                        (y0 + lo..y0 + hi).contains(&y) && (x0 + lo..x0 + hi).contains(&x)
                    };
                    let cells = cells(&noisy, keep).expect("cells");
                    let object = [
                        (x0 + lo) as f32,
                        (y0 + lo) as f32,
                        (x0 + hi) as f32,
                        (y0 + hi) as f32,
                    ];
                    views.push(ReferenceView {
                        cells,
                        object,
                        appearance: None,
                    });
                }
            }
            ViewSet::new(views, device).expect("views")
        })
        .collect();
    ProductIndex { global, views }
}

/// One frame as the agent recognises it: pixels to tensor, backbone (with the mid-level tap),
/// then the agent's own matching (regional-descriptor shortlist, cell similarities, geometric
/// verification). Returns how many products passed verification.
fn recognise(
    model: &EfficientNetLite0,
    index: &ProductIndex,
    rgb: &[u8],
    (w, h): (usize, usize),
) -> usize {
    let x = preprocess::rgb_to_tensor(rgb, w, h, w * 3, &Device::Cpu).expect("tensor");
    let (features, mid) = model
        .features_with_tap(&x, Some(MID_TAP_BLOCK))
        .expect("forward");
    let mid = mid.expect("tap");
    let frame = FrameFeatures {
        features: &features,
        mid: &mid,
        pixels: FramePixels::new(rgb, (w, h), w * 3),
    };
    index
        .candidates(
            frame,
            &RegionGrid::default(),
            SHORTLIST,
            &VerifyParams::default(),
            Some(Zoom {
                model,
                expected: &[],
            }),
        )
        .expect("match")
        .len()
}

/// The frame's mid-level map, which the synthetic catalog's views are cut from.
fn mid_map(model: &EfficientNetLite0, rgb: &[u8], (w, h): (usize, usize)) -> Tensor {
    let x = preprocess::rgb_to_tensor(rgb, w, h, w * 3, &Device::Cpu).expect("tensor");
    model.mid_features(&x, MID_TAP_BLOCK).expect("forward")
}

/// Median and minimum milliseconds of `runs` calls after `warmup` unmeasured ones.
fn time_ms(warmup: usize, runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median_min(t)
}

/// The median and the least of some timings.
fn median_min(mut t: Vec<f64>) -> (f64, f64) {
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

/// The pixel likeness of one verified candidate ([`Appearance::likeness`], which a product
/// verified with few inliers pays): a 224-pixel photo cut from the frame, placed back where it
/// came from. Median and fastest milliseconds.
fn likeness_ms(rgb: &[u8], (w, h): (usize, usize), warmup: usize, runs: usize) -> (f64, f64) {
    let side = 224.min(w).min(h);
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let photo: Vec<u8> = (0..side)
        .flat_map(|y| &rgb[((y0 + y) * w + x0) * 3..((y0 + y) * w + x0 + side) * 3])
        .copied()
        .collect();
    let appearance = Appearance::new(&photo, side, &vec![1.0; side * side]);
    let frame = FramePixels::new(rgb, (w, h), w * 3);
    let cell = 16.0;
    let t = Similarity {
        a: [1.0, 0.0],
        b: [x0 as f32 / cell, y0 as f32 / cell],
    };
    let reach = VerifyParams::default().likeness_reach;
    time_ms(warmup, runs, || {
        appearance
            .likeness(&frame, &t, 1.0, cell, reach)
            .expect("in the frame");
    })
}

fn main() {
    let args = parse_args();
    let device = Device::Cpu;
    let vb =
        VarBuilder::from_buffered_safetensors(weights(), DType::F32, &device).expect("safetensors");
    let model = EfficientNetLite0::load(vb, &LiteConfig::default()).expect("load");
    if !args.bench {
        // `cargo test --all-targets` runs this without `--bench`: one frame as a smoke test
        let (w, h) = (384, 224);
        let rgb: Vec<u8> = pseudo_random(w * h * 3, 1).map(|v| v as u8).collect();
        let index = synthetic_index(&mid_map(&model, &rgb, (w, h)), &device);
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
        // each block's time (block 0 with the stem), the head's, its planes made a tensor:
        // medians and bests over the runs (the best is what survives another process sharing
        // the cores); then blocks 0-4 together, where the fused kernels run
        let (mut part_ms, mut part_min_ms) = (Vec::new(), Vec::new());
        let mut early_ms = None;
        if args.blocks {
            let runs: Vec<Vec<f64>> = (0..args.warmup + args.runs)
                .map(|_| model.features_timed(&x).expect("forward").1)
                .skip(args.warmup)
                .collect();
            for part in 0..runs.first().map_or(0, Vec::len) {
                let (median, min) = median_min(runs.iter().map(|r| r[part]).collect());
                part_ms.push(median);
                part_min_ms.push(min);
            }
            early_ms = Some(median_min(
                runs.iter().map(|r| r[..5].iter().sum()).collect(),
            ));
        }
        let rgb: Vec<u8> = pseudo_random(w * h * 3, 1).map(|v| v as u8).collect();
        let index = synthetic_index(&mid_map(&model, &rgb, (w, h)), &device);
        let verified = recognise(&model, &index, &rgb, (w, h));
        let (frame_ms, frame_min_ms) = time_ms(args.warmup, args.runs, || {
            recognise(&model, &index, &rgb, (w, h));
        });
        let (likeness_ms, _) = likeness_ms(&rgb, (w, h), args.warmup, args.runs);
        // the zoom's own pass (matching::ZOOM): R-MAC's finest window enlarged, up to the
        // mid-level tap; a frame runs it at most once, when a shortlisted product is weak
        let cells = 2 * (h / 32).min(w / 32) / (RegionGrid::default().levels + 1);
        let zoomed_side = cells * 32 * ZOOM;
        let zx = Tensor::randn(0f32, 1f32, (1, 3, zoomed_side, zoomed_side), &device)
            .expect("zoomed input");
        let (zoom_forward_ms, _) = time_ms(args.warmup, args.runs, || {
            model
                .mid_features(&zx, MID_TAP_BLOCK)
                .expect("zoom forward");
        });
        sizes.push(serde_json::json!({
            "size": name,
            "forward_ms": forward_ms,
            "forward_min_ms": forward_min_ms,
            "frame_ms": frame_ms,
            "frame_min_ms": frame_min_ms,
            "verified": verified,
            "part_ms": part_ms,
            "part_min_ms": part_min_ms,
            "blocks_0_4_ms": early_ms.map(|(median, _)| median),
            "blocks_0_4_min_ms": early_ms.map(|(_, min)| min),
            "likeness_ms": likeness_ms,
            "zoom_side": zoomed_side,
            "zoom_forward_ms": zoom_forward_ms,
        }));
    }
    let report = serde_json::json!({
        "threads": candle_core::utils::get_num_threads(),
        "catalog_photos": PRODUCTS * PHOTOS_PER_PRODUCT,
        "shortlist": SHORTLIST,
        "sizes": sizes,
    });
    println!("{report}");
}
