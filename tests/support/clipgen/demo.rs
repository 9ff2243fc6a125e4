//! The demo: the `demo` preset's catalog and a minute of products coming and going, one or two
//! at a time, with empty stretches in between.

use std::path::{Path, PathBuf};

use spotter_protocol::Catalog;

use super::catalog::{build_catalog, preset};
use super::error::ClipgenError;
use super::scene::{make_clip, truth_path, ClipSpec, Show, TruthEntry};

/// What [`make_demo`] wrote.
#[derive(Debug)]
pub struct DemoOutput {
    /// The catalog directory (`<out>/catalog`).
    pub catalog: Catalog,
    /// The clip (`<out>/demo.mp4`).
    pub clip: PathBuf,
    /// Its truth file (`<out>/demo.truth.json`).
    pub truth_file: PathBuf,
    /// The truth itself.
    pub truth: Vec<TruthEntry>,
}

/// The demo's schedule, for a clip of `duration_ms` (60 s gives every product at least one
/// appearance; a shorter clip keeps the shows that fit).
pub fn demo_shows(duration_ms: u64) -> Vec<Show> {
    let s = |sku: &str, a: f32, b: f32| Show::new(sku, (a * 1000.0) as u64, (b * 1000.0) as u64);
    let all = vec![
        s("MUG-001", 3.0, 10.0),
        s("GTR-001", 13.0, 21.0),
        s("SHOE-001", 24.0, 31.0).at(0.28, 0.52, 0.40),
        s("CAM-001", 27.0, 35.0).at(0.72, 0.50, 0.38),
        s("LAMP-001", 38.0, 45.0).at(0.55, 0.48, 0.48),
        s("MUG-001", 48.0, 55.0).at(0.27, 0.52, 0.40),
        s("GTR-001", 50.0, 56.5).at(0.70, 0.50, 0.42),
    ];
    all.into_iter()
        .filter(|show| show.end_ms <= duration_ms)
        .collect()
}

/// Writes `<out>/catalog/`, `<out>/demo.mp4` and `<out>/demo.truth.json`.
pub fn make_demo(out: &Path, duration_ms: u64) -> Result<DemoOutput, ClipgenError> {
    let products = preset("demo").expect("the demo preset exists");
    let catalog = build_catalog(&out.join("catalog"), &products)?;
    let clip = out.join("demo.mp4");
    let truth = make_clip(
        &catalog,
        &ClipSpec::new(duration_ms, demo_shows(duration_ms)),
        &clip,
    )?;
    Ok(DemoOutput {
        catalog,
        truth_file: truth_path(&clip),
        clip,
        truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_schedule_has_gaps_and_at_most_two_at_once() {
        let shows = demo_shows(60_000);
        assert_eq!(shows.len(), 7);
        for t in (0..60_000).step_by(100) {
            let on = shows
                .iter()
                .filter(|s| (s.start_ms..s.end_ms).contains(&t))
                .count();
            assert!(on <= 2, "{on} products at {t} ms");
        }
        let empty = (0..60_000)
            .step_by(100)
            .filter(|t| !shows.iter().any(|s| (s.start_ms..s.end_ms).contains(t)))
            .count();
        assert!(empty > 100, "only {empty} empty samples");
        assert!(demo_shows(12_000).iter().all(|s| s.end_ms <= 12_000));
    }
}
