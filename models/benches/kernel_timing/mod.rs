//! Timing shared by the kernel benches (`pointwise`, `depthwise`, `stem`): best of a few calls,
//! and how many calls a run makes.

use std::time::Instant;

/// Calls a bench makes of each kernel: `timed` under `cargo bench` (`--bench`), one otherwise
/// (`cargo test --all-targets` runs the benches as smoke tests).
pub fn reps(timed: usize) -> usize {
    if std::env::args().any(|a| a == "--bench") {
        timed
    } else {
        1
    }
}

/// Best seconds of `reps` calls of `f`, after one unmeasured call.
pub fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
