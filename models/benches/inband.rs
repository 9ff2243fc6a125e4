//! The 1x1 and depthwise kernels on the shapes a fused block gives them at 768x448
//! (`EfficientNetLite0`'s blocks 0-4 run band by band: one or a few rows at a time, in cache), in
//! GF/s: where the early blocks' time goes once their maps no longer go to memory (the
//! `pointwise` and `depthwise` benches time whole layers).
//!
//! `RAYON_NUM_THREADS=1 cargo bench --profile dev -p spotter-models --bench inband -- --bench`

mod kernel_timing;

use spotter_models::depthwise::{Band, DepthwiseNhwc, Pad2};
use spotter_models::pointwise::{Activation, Conv1x1};

/// (layer, pixels a call, Cin, Cout): one band's rows.
const POINTWISE: [(&str, usize, usize, usize); 8] = [
    ("block 0 project", 384, 32, 16),
    ("block 1 expand", 768, 16, 96),
    ("block 1 project", 192, 96, 24),
    ("block 2 expand", 192, 24, 144),
    ("block 2 project", 192, 144, 24),
    ("block 3 project", 96, 144, 40),
    ("block 4 expand", 96, 40, 240),
    ("block 4 project", 96, 240, 40),
];

/// (layer, width, channels, kernel, stride): one output row from its band of input rows.
const DEPTHWISE: [(&str, usize, usize, usize, usize); 5] = [
    ("block 0 depthwise", 384, 32, 3, 1),
    ("block 1 depthwise", 384, 96, 3, 2),
    ("block 2 depthwise", 192, 144, 3, 1),
    ("block 3 depthwise", 192, 144, 5, 2),
    ("block 4 depthwise", 96, 240, 5, 1),
];

/// Calls timed together, so that one is long enough to time.
const CALLS: usize = 200;

fn main() {
    let reps = kernel_timing::reps(20);
    println!("{:>18} {:>28} {:>8} {:>8}", "layer", "shape", "GF/s", "us");
    for (name, pixels, cin, cout) in POINTWISE {
        let x: Vec<f32> = (0..pixels * cin).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..cout * cin).map(|i| (i % 5) as f32 * 0.1).collect();
        let conv = Conv1x1::new(&w, &vec![0.1; cout], cin, Activation::Relu6);
        let mut out = vec![0f32; pixels * cout];
        let secs = kernel_timing::best(reps, || {
            for _ in 0..CALLS {
                conv.forward_serial(&x, None, &mut out);
            }
        }) / CALLS as f64;
        let gf = 2.0 * (pixels * cin * cout) as f64 / secs / 1e9;
        let shape = format!("{pixels} px, {cin} -> {cout}");
        println!("{name:>18} {shape:>28} {gf:>8.1} {:>8.2}", secs * 1e6);
    }
    for (name, w, c, k, s) in DEPTHWISE {
        // TensorFlow's SAME padding, as Lite0's checkpoint has it, on a map of 16 rows
        let h = 16;
        let before = if s == 1 { k / 2 } else { (k - 2) / 2 };
        let after = if s == 1 { k / 2 } else { k - 2 - before };
        let pad = Pad2 {
            top: before,
            left: before,
            bottom: after,
            right: after,
        };
        let dw = DepthwiseNhwc::new(&vec![0.1; c * k * k], &vec![0.1; c], k, s);
        let x: Vec<f32> = (0..h * w * c).map(|i| (i % 7) as f32 * 0.1).collect();
        let wo = dw.out_dim(w, pad.left, pad.right);
        // output rows inside the map, from only the input rows they read: one, and at stride 2
        // also two (a fused band's, which the kernel takes together); time a row
        for n in 1..=s {
            let mut out = vec![0f32; n * wo * c];
            let oy = 4;
            let rows = dw.input_rows(oy, n, h, pad);
            let band = &x[rows.start * w * c..rows.end * w * c];
            let secs = kernel_timing::best(reps, || {
                for _ in 0..CALLS {
                    dw.forward_rows(Band::rows(band, rows.start), (h, w), pad, oy, &mut out);
                }
            }) / (CALLS * n) as f64;
            let gf = 2.0 * (wo * c * k * k) as f64 / secs / 1e9;
            let shape = format!(
                "{w} px x {c}, {k}x{k} stride {s}, {n} row{}",
                ["", "s"][n - 1]
            );
            println!("{name:>18} {shape:>28} {gf:>8.1} {:>8.2}", secs * 1e6);
        }
    }
}
