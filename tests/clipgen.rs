//! The clip generator's own tests: catalogs load through the protocol's loader, and clips show
//! each product where and when their truth file says, and nothing else.

use std::path::Path;
use std::process::{Command, Output};

use spotter_protocol::Catalog;
use spotter_tests::clipgen::mean_diff;
use spotter_tests::clipgen::{
    build_catalog, decode_frames, make_clip, preset, preset_product, read_frame_code, read_truth,
    truth_path, ClipSpec, Show,
};

#[test]
fn demo_catalog_loads_with_three_reference_photos_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = preset("demo").expect("demo preset");
    build_catalog(dir.path(), &products).expect("catalog builds");
    let catalog = Catalog::load(dir.path()).expect("the protocol's loader accepts it");
    assert_eq!(catalog.products.len(), products.len());
    for (p, src) in catalog.products.iter().zip(&products) {
        assert_eq!(
            (p.sku.as_str(), p.name.as_str(), p.currency.as_str()),
            (src.sku.as_str(), src.name.as_str(), "USD")
        );
        assert_eq!(
            p.url,
            format!("https://shop.example/{}", p.sku.to_lowercase())
        );
        assert_eq!(p.images.len(), 3, "{p:?}");
        let front = std::fs::read(catalog.dir.join(&p.images[0])).expect("front photo");
        assert_eq!(
            front,
            std::fs::read(&src.image).expect("source"),
            "front photo is the source"
        );
        let white = image::open(catalog.dir.join(&p.images[1]))
            .expect("white photo decodes")
            .to_rgb8();
        assert_eq!(
            white.get_pixel(0, 0).0,
            [255, 255, 255],
            "{}: corner is white",
            p.images[1]
        );
        let tilt = image::open(catalog.dir.join(&p.images[2]))
            .expect("tilt photo decodes")
            .to_rgb8();
        assert!(
            tilt.width() > white.width(),
            "tilted photo has extra margin"
        );
        assert_ne!(white.as_raw(), tilt.as_raw());
    }
}

#[test]
fn clip_shows_the_product_where_and_when_the_truth_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products: Vec<_> = preset("demo")
        .expect("demo preset")
        .into_iter()
        .take(2)
        .collect();
    let catalog = build_catalog(&dir.path().join("catalog"), &products).expect("catalog builds");
    let sku = products[0].sku.as_str();
    let clip = dir.path().join("clip.mp4");
    let spec = ClipSpec {
        width: 640,
        height: 360,
        duration_ms: 3_000,
        ..ClipSpec::new(0, vec![Show::new(sku, 1_000, 2_000)])
    };
    let truth = make_clip(&catalog, &spec, &clip).expect("clip renders");
    assert_eq!(read_truth(&truth_path(&clip)).expect("truth file"), truth);
    assert_eq!(truth.len(), 1);
    let t = &truth[0];
    assert_eq!((t.sku.as_str(), t.start_ms, t.end_ms), (sku, 1_000, 2_000));
    let [x0, y0, x1, y1] = t.bbox;
    let height = y1 - y0;
    assert!(
        (0.44..0.50).contains(&height),
        "default scale is ~45% of the height: {height}"
    );
    assert!(
        x0 > 0.0 && x1 < 1.0 && x0 < 0.5 && x1 > 0.5,
        "centred: {:?}",
        t.bbox
    );

    let frames = decode_frames(&clip, &[500, 1_300, 1_700, 2_500]).expect("decodes");
    let (before, during, later, after) = (&frames[0].1, &frames[1].1, &frames[2].1, &frames[3].1);
    assert_eq!(before.dimensions(), (640, 360));
    assert_eq!(
        frames.iter().map(|f| f.0).collect::<Vec<_>>(),
        [500, 1_300, 1_700, 2_500]
    );
    let inside = mean_diff(before, during, t.bbox);
    assert!(
        inside > 25.0,
        "the product changes its box: mean difference {inside}"
    );
    let above = [0.0, 0.0, 1.0, y0 - 0.02];
    let outside = mean_diff(before, during, above);
    assert!(
        outside < 3.0,
        "nothing changes above the box: mean difference {outside}"
    );
    let moved = mean_diff(during, later, t.bbox);
    assert!(moved > 1.0, "the product moves while shown: {moved}");
    let gone = mean_diff(before, after, [0.0, 0.0, 1.0, 1.0]);
    assert!(
        gone < 3.0,
        "the frame is back to the empty set afterwards: {gone}"
    );
}

fn clipgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spotter-clipgen"))
}

/// Requires the clip generator to have exited successfully, showing its stderr if not.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `spotter-clipgen catalog --out <out> --products <skus>`, which must succeed.
fn catalog_cli(out: &Path, skus: &[&str]) {
    let output = clipgen()
        .args(["catalog", "--out"])
        .arg(out)
        .arg("--products")
        .args(skus)
        .output()
        .expect("clipgen runs");
    assert_success(&output);
}

/// `spotter-clipgen clip --catalog <catalog> --out <out> <args>`, run to its end.
fn clip_cli(catalog: &Path, out: &Path, args: &[&str]) -> Output {
    clipgen()
        .args(["clip", "--catalog"])
        .arg(catalog)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("clipgen runs")
}

#[test]
fn cli_builds_a_catalog_and_a_clip_and_explains_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = dir.path().join("cat");
    catalog_cli(&cat, &["LAMP-001", "MUG-001"]);
    assert_eq!(
        Catalog::load(&cat).expect("valid catalog").products.len(),
        2
    );

    let clip = dir.path().join("c.mp4");
    assert_success(&clip_cli(
        &cat,
        &clip,
        &[
            "--duration-secs",
            "1",
            "--size",
            "320x180",
            "--show",
            "LAMP-001@0.2-0.8@0.4,0.5,0.5",
        ],
    ));
    assert!(Path::new(&clip).is_file() && truth_path(&clip).is_file());

    let out = clip_cli(
        &cat,
        &clip,
        &["--duration-secs", "1", "--show", "GTR-001@0-1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("GTR-001") && err.contains("LAMP-001"),
        "{err}"
    );

    let out = clip_cli(
        Path::new("x"),
        Path::new("y"),
        &["--duration-secs", "1", "--show", "MUG@9-3"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SKU@START-END"),
        "{err}"
    );

    let out = clipgen().arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["catalog", "clip", "demo", "frames"] {
        assert!(help.contains(sub), "--help lists {sub}: {help}");
    }
}

/// Every frame of `clip` (at `fps`, `frames` long) read back through H.264: its frame code must
/// say its index.
fn assert_frame_codes(clip: &Path, fps: u64, frames: u64) {
    let at_ms: Vec<u64> = (0..frames).map(|i| i * 1000 / fps).collect();
    let decoded = decode_frames(clip, &at_ms).expect("decodes");
    for (i, (pts_ms, img)) in decoded.iter().enumerate() {
        assert_eq!(*pts_ms, at_ms[i], "frame {i} decoded");
        let code = read_frame_code(img).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(u64::from(code), i as u64, "frame {i} at {pts_ms} ms");
    }
}

#[test]
fn frame_code_reads_back_on_every_frame_after_h264() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = dir.path().join("cat");
    catalog_cli(&cat, &["MUG-001"]);

    // 1280x720 through the command line, a product on screen beside the code
    let clip = dir.path().join("coded.mp4");
    assert_success(&clip_cli(
        &cat,
        &clip,
        &[
            "--duration-secs",
            "1.5",
            "--frame-code",
            "--show",
            "MUG-001@0.3-1.2",
        ],
    ));
    assert_frame_codes(&clip, 30, 45);

    // scaled: 8 px cells at 640x360, 25 fps
    let catalog = Catalog::load(&cat).expect("catalog");
    let small = dir.path().join("small.mp4");
    let spec = ClipSpec {
        width: 640,
        height: 360,
        fps: 25,
        frame_code: true,
        ..ClipSpec::new(
            1_200,
            vec![Show::new("MUG-001", 0, 1_200).at(0.7, 0.5, 0.5)],
        )
    };
    make_clip(&catalog, &spec, &small).expect("clip renders");
    assert_frame_codes(&small, 25, 30);

    // without the flag there is no code to read
    let plain = dir.path().join("plain.mp4");
    make_clip(
        &catalog,
        &ClipSpec {
            frame_code: false,
            ..spec
        },
        &plain,
    )
    .expect("clip renders");
    let frames = decode_frames(&plain, &[0, 400]).expect("decodes");
    assert!(frames.iter().all(|(_, img)| read_frame_code(img).is_err()));
}

#[test]
fn a_show_in_the_frame_codes_corner_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let product = preset_product("MUG-001").expect("preset");
    let catalog = build_catalog(&dir.path().join("cat"), &[product]).expect("catalog builds");
    let spec = ClipSpec {
        width: 640,
        height: 360,
        frame_code: true,
        ..ClipSpec::new(500, vec![Show::new("MUG-001", 0, 500).at(0.12, 0.15, 0.3)])
    };
    let err = make_clip(&catalog, &spec, &dir.path().join("c.mp4"))
        .expect_err("the mug would cover the code");
    assert!(err.to_string().contains("frame code"), "{err}");
    // the same show without the code is fine
    make_clip(
        &catalog,
        &ClipSpec {
            frame_code: false,
            ..spec
        },
        &dir.path().join("c.mp4"),
    )
    .expect("clip renders");
}
