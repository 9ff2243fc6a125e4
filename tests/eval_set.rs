//! The evaluation set's generator and report, small: a split's catalog loads, its truth files
//! agree with its manifest and catalog, products are drawn where the truth says, a complete
//! split is kept rather than remade, and `spotter-eval` scores kept events against it.

use std::path::Path;
use std::process::Command;

use spotter_protocol::{BBox, Catalog, EventType, ProductEvent, PROTOCOL_VERSION};
use spotter_tests::clipgen::decode_frames;
use spotter_tests::clipgen::eval::{
    group_products, make_eval_set, read_eval_truth, read_manifest, BackdropKind, EvalSetSpec,
    EvalTruth, Group, NoProgress, SetProgress, Split,
};
use spotter_tests::clipgen::mean_diff;
use spotter_tests::score::{score, ClipInput, Scoring};

/// Six seconds a clip at 320x180 and 10 fps: seconds to make, same code paths as the real set.
fn tiny(backdrop: BackdropKind) -> EvalSetSpec {
    EvalSetSpec {
        clips: 2,
        duration_ms: (8_000, 8_000),
        width: 320,
        height: 180,
        fps: 10,
        bitrate_kbps: 800,
        speed_preset: "ultrafast".into(),
        backdrop,
        ..EvalSetSpec::default()
    }
}

#[derive(Default)]
struct Count {
    skipped: usize,
    clips: usize,
}

impl SetProgress for Count {
    fn split_started(&mut self, _: Split, _: usize, _: u64) {}
    fn frames(&mut self, _: u64) {}
    fn clip_done(&mut self, _: Split, _: &Path, _: usize, _: f32) {
        self.clips += 1;
    }
    fn split_skipped(&mut self, _: Split, _: &Path) {
        self.skipped += 1;
    }
}

#[test]
fn split_has_its_catalog_truth_that_matches_it_and_products_where_the_truth_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The studio backdrop stands still, so a frame with a product can be compared with an
    // empty one pixel for pixel.
    let spec = tiny(BackdropKind::Studio);
    let dirs = make_eval_set(dir.path(), &[Split::Test], &spec, false, 2, &mut NoProgress)
        .expect("set is made");
    assert_eq!(dirs, vec![dir.path().join("test")]);
    let split = &dirs[0];
    let manifest = read_manifest(split).expect("manifest");
    assert_eq!(manifest.clips.len(), 2);
    let catalog = Catalog::load(&split.join(&manifest.catalog)).expect("catalog loads");
    let test_skus: Vec<String> = group_products(Group::Test)
        .into_iter()
        .map(|p| p.sku)
        .collect();
    assert_eq!(
        catalog
            .products
            .iter()
            .map(|p| p.sku.clone())
            .collect::<Vec<_>>(),
        test_skus
    );
    let lookalikes: Vec<String> = group_products(Group::LookAlike)
        .into_iter()
        .map(|p| p.sku)
        .collect();
    let mut checked = 0;
    for clip in &manifest.clips {
        let truth = read_eval_truth(&split.join(&clip.truth)).expect("truth");
        assert!(!truth.is_empty(), "{}: no appearance", clip.clip);
        for t in &truth {
            assert_eq!(
                t.in_catalog,
                catalog.get(&t.sku).is_some(),
                "{}: in_catalog of {}",
                clip.clip,
                t.sku
            );
            assert!(t.in_catalog || lookalikes.contains(&t.sku), "{}", t.sku);
            assert!(t.start_ms <= t.held_ms[0] && t.held_ms[1] <= t.end_ms);
            assert!(t.end_ms <= clip.duration_ms);
            let [x0, y0, x1, y1] = t.bbox;
            assert!(0.0 <= x0 && x0 < x1 && x1 <= 1.0 && 0.0 <= y0 && y0 < y1 && y1 <= 1.0);
            assert!(!t.track.is_empty());
        }
        // Pixels: find an instant with exactly one product held and one with none.
        let empty_ms = (0..clip.duration_ms)
            .step_by(100)
            .find(|&ms| truth.iter().all(|t| !(t.start_ms..t.end_ms).contains(&ms)));
        let alone = truth.iter().find_map(|t| {
            let mid = (t.held_ms[0] + t.held_ms[1]) / 2;
            let others = truth
                .iter()
                .filter(|o| (o.start_ms..o.end_ms).contains(&mid))
                .count();
            (others == 1 && t.conditions.hand_ms.is_none()).then_some((t, mid))
        });
        let (Some(empty_ms), Some((t, mid))) = (empty_ms, alone) else {
            continue;
        };
        let frames = decode_frames(&split.join(&clip.clip), &[empty_ms, mid]).expect("decodes");
        let (empty, shown) = (&frames[0].1, &frames[1].1);
        let point = t
            .track
            .iter()
            .min_by_key(|p| p.ms.abs_diff(mid))
            .expect("track has points");
        let inside = mean_diff(empty, shown, point.bbox);
        assert!(
            inside > 6.0,
            "{} at {mid} ms: the product changes its box (mean difference {inside})",
            clip.clip
        );
        let [x0, y0, x1, y1] = t.bbox;
        let pad = 0.03;
        let outside_regions = [
            [0.0, 0.0, 1.0, (y0 - pad).max(0.0)],
            [0.0, (y1 + pad).min(1.0), 1.0, 1.0],
            [0.0, 0.0, (x0 - pad).max(0.0), 1.0],
            [(x1 + pad).min(1.0), 0.0, 1.0, 1.0],
        ];
        for r in outside_regions {
            if r[2] - r[0] > 0.05 && r[3] - r[1] > 0.05 {
                let d = mean_diff(empty, shown, r);
                assert!(
                    d < 3.0,
                    "{}: nothing changes outside the box {r:?}: {d}",
                    clip.clip
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "no clip had a product alone next to an empty moment"
    );
}

#[test]
fn photo_split_is_kept_when_current_and_remade_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = EvalSetSpec {
        clips: 1,
        ..tiny(BackdropKind::Photo)
    };
    let mut count = Count::default();
    make_eval_set(dir.path(), &[Split::Tune], &spec, false, 1, &mut count).expect("made");
    assert_eq!((count.clips, count.skipped), (1, 0));
    // The muxer stamps the time into the MP4: compare the truth, which is all the plan.
    let truth = dir.path().join("tune/clip-01.truth.json");
    let first = std::fs::read(&truth).expect("truth written");
    make_eval_set(dir.path(), &[Split::Tune], &spec, false, 1, &mut count).expect("kept");
    assert_eq!((count.clips, count.skipped), (1, 1));
    // The same seed makes the same clip.
    make_eval_set(dir.path(), &[Split::Tune], &spec, true, 1, &mut count).expect("remade");
    assert_eq!((count.clips, count.skipped), (2, 1));
    assert_eq!(std::fs::read(&truth).expect("truth rewritten"), first);
    let other = EvalSetSpec { seed: 7, ..spec };
    make_eval_set(dir.path(), &[Split::Tune], &other, false, 1, &mut count).expect("new seed");
    assert_eq!((count.clips, count.skipped), (3, 1));
    assert_ne!(std::fs::read(&truth).expect("truth rewritten"), first);
}

/// A perfect recogniser's events for a clip: one `new` 300 ms into each catalog appearance,
/// an `end` after it.
fn perfect_events(truth: &[EvalTruth]) -> Vec<ProductEvent> {
    let mut events = Vec::new();
    for (i, t) in truth.iter().filter(|t| t.in_catalog).enumerate() {
        for (kind, pts_ms) in [
            (EventType::New, t.start_ms + 300),
            (EventType::End, t.end_ms + 1500),
        ] {
            events.push(ProductEvent {
                v: PROTOCOL_VERSION,
                kind,
                event_id: format!("app-{i}"),
                session: None,
                seq: events.len() as u64 + 1,
                sku: t.sku.clone(),
                score: 0.9,
                bbox: BBox(t.bbox),
                captured_at_ms: 1_800_000_000_000 + pts_ms,
                pts_ms,
            });
        }
    }
    events
}

fn lines(events: &[ProductEvent]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| {
            let mut l = e.encode();
            l.push(b'\n');
            l
        })
        .collect()
}

#[test]
fn report_scores_a_generated_split_from_kept_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Catalog products only: every appearance can be found.
    let spec = EvalSetSpec {
        clips: 1,
        lookalike_share: 0.0,
        ..tiny(BackdropKind::Photo)
    };
    make_eval_set(dir.path(), &[Split::Test], &spec, false, 1, &mut NoProgress).expect("made");
    let split = dir.path().join("test");
    let truth = read_eval_truth(&split.join("clip-01.truth.json")).expect("truth");
    let catalog_shown = truth.iter().filter(|t| t.in_catalog).count();
    assert!(
        catalog_shown > 0,
        "the clip shows a catalog product: {truth:?}"
    );

    // The metrics, on the generated truth: perfect events score 1 and 1.
    let perfect = perfect_events(&truth);
    let input = |events: Vec<ProductEvent>| ClipInput {
        name: "clip-01".into(),
        backdrop: None,
        truth: truth.clone(),
        events,
    };
    let r = score(&[input(perfect.clone())], Scoring::default());
    assert_eq!((r.recall, r.precision), (Some(1.0), Some(1.0)));
    assert_eq!(r.latency.map(|l| l.median_ms), Some(300));
    // One appearance missed: recall drops by one appearance's share.
    let first_sku = perfect[0].sku.clone();
    let fewer: Vec<ProductEvent> = perfect
        .iter()
        .filter(|e| e.event_id != "app-0")
        .cloned()
        .collect();
    let r = score(&[input(fewer)], Scoring::default());
    let want = (catalog_shown - 1) as f64 / catalog_shown as f64;
    assert_eq!(r.recall, Some(want), "without {first_sku}");

    // The binary, on events kept as an earlier run would have kept them.
    let out = dir.path().join("report");
    let events_dir = out.join("events");
    std::fs::create_dir_all(&events_dir).expect("events dir");
    let mut with_duplicate = perfect.clone();
    let mut dup = perfect[0].clone();
    dup.event_id = "again".into();
    dup.pts_ms += 200;
    with_duplicate.push(dup);
    std::fs::write(events_dir.join("clip-01.jsonl"), lines(&with_duplicate)).expect("write");
    let run = Command::new(env!("CARGO_BIN_EXE_spotter-eval"))
        .arg("--set")
        .arg(dir.path())
        .args(["--split", "test", "--rescore", "--out"])
        .arg(&out)
        .output()
        .expect("spotter-eval runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("recall     1.000"), "{stdout}");
    assert!(stdout.contains("1 duplicate"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json parses");
    let precision = json["report"]["precision"].as_f64().expect("precision");
    let want = catalog_shown as f64 / (catalog_shown + 1) as f64;
    assert!((precision - want).abs() < 1e-9, "{precision} vs {want}");
    // --check fails below the targets: the duplicate costs precision.
    let checked = Command::new(env!("CARGO_BIN_EXE_spotter-eval"))
        .arg("--set")
        .arg(dir.path())
        .args(["--split", "test", "--rescore", "--check", "--out"])
        .arg(&out)
        .output()
        .expect("spotter-eval runs");
    assert!(!checked.status.success());
}
