//! The catalog's mug is found where it is, over a real photograph; another mug that only looks
//! like it, and the photograph alone, are not reported at all.
//!
//! Needs the converted weights (`make setup`) and Debian's openclipart-png.

use std::path::{Path, PathBuf};

use spotter_agent::config::TrackerConfig;
use spotter_agent::recognizer::{photo_to_rgb, Recognizer};
use spotter_agent::tracker::iou;
use spotter_protocol::Catalog;

const MUG: &str = "/usr/share/openclipart/png/food/beverages/mug.png";
const OTHER_MUG: &str = "/usr/share/openclipart/png/food/beverages/mug_toh_yen_cheng_01.png";
const OTHER_GUITAR: &str = "/usr/share/openclipart/png/recreation/music/guitar_jarno_vasamaa1.png";
const W: usize = 384;
const H: usize = 224;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    let p = repo().join("models/weights/efficientnet-lite0.safetensors");
    assert!(
        p.is_file(),
        "{}: run `make setup` to fetch and convert the weights",
        p.display()
    );
    p
}

/// A real photograph (scikit-image's coffee cup, public domain) stretched over the frame.
fn backdrop() -> image::RgbImage {
    let photo = image::open(repo().join("models/testdata/images/coffee.png"))
        .expect("the test photo is in the repo")
        .to_rgb8();
    image::imageops::resize(
        &photo,
        W as u32,
        H as u32,
        image::imageops::FilterType::Triangle,
    )
}

/// The frame with `art` pasted `side` pixels square at `(x, y)`; returns the frame and the
/// normalised box of the pasted square.
fn frame_with(art: &str, x: u32, y: u32, side: u32) -> (Vec<u8>, [f32; 4]) {
    let product = photo_to_rgb(Path::new(art), side).expect("clip art");
    let mut frame = backdrop();
    // only the opaque part of the clip art is pasted: the backdrop shows around it
    for (px, py, p) in product.rgb.enumerate_pixels() {
        let a = product.coverage[(py * side + px) as usize];
        if a > 0.5 {
            frame.put_pixel(x + px, y + py, *p);
        }
    }
    let o = product.object;
    let bbox = [
        (x as f32 + o[0]) / W as f32,
        (y as f32 + o[1]) / H as f32,
        (x as f32 + o[2]) / W as f32,
        (y as f32 + o[3]) / H as f32,
    ];
    (frame.into_raw(), bbox)
}

#[test]
fn the_catalog_mug_is_found_and_look_alikes_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(MUG, dir.path().join("mug.png")).expect("openclipart-png is installed");
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[[product]]\nsku = \"MUG-001\"\nname = \"Mug\"\nprice = \"9.00\"\ncurrency = \"USD\"\n\
         url = \"https://shop.example/mug\"\nimages = [\"mug.png\"]\n",
    )
    .expect("write");
    let catalog = Catalog::load(dir.path()).expect("catalog");
    let (r, _) = Recognizer::load(&model(), &catalog, W, H).expect("recognizer");
    // what the tracker takes as a sighting by default
    let sighting = TrackerConfig::default().min_score;

    // the product, a little under half the frame's height, off centre
    let (frame, truth) = frame_with(MUG, 200, 70, 110);
    let found = r.recognise(&frame, W * 3).expect("recognise").detections;
    let mug = found
        .iter()
        .find(|d| d.sku == "MUG-001")
        .unwrap_or_else(|| panic!("the catalog mug is not found: {found:?}"));
    assert!(
        2.0 * mug.evidence >= TrackerConfig::default().confirm_evidence,
        "{} inliers: too few to confirm in two frames",
        mug.evidence
    );
    assert!(
        iou(mug.bbox, truth) >= 0.4,
        "box {:?} is not where the mug is ({truth:?})",
        mug.bbox
    );

    for (what, art) in [("another mug", OTHER_MUG), ("a guitar", OTHER_GUITAR)] {
        let (frame, _) = frame_with(art, 200, 70, 110);
        let found = r.recognise(&frame, W * 3).expect("recognise").detections;
        assert!(
            found.iter().all(|d| d.score < sighting),
            "{what} is taken for the catalog's mug: {found:?}"
        );
    }
    let empty = backdrop().into_raw();
    let found = r.recognise(&empty, W * 3).expect("recognise").detections;
    assert!(
        found.iter().all(|d| d.score < sighting),
        "the photograph alone is taken for the mug: {found:?}"
    );
}

#[test]
fn a_catalog_larger_than_the_shortlist_is_shortlisted_by_regional_descriptors() {
    // two products and a shortlist of one: the regional descriptors must put the mug first
    // for verification to find it
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(MUG, dir.path().join("mug.png")).expect("openclipart-png is installed");
    std::fs::copy(OTHER_GUITAR, dir.path().join("guitar.png")).expect("openclipart-png");
    let entry = |sku: &str, photo: &str| {
        format!(
            "[[product]]\nsku = \"{sku}\"\nname = \"{sku}\"\nprice = \"9.00\"\n\
             currency = \"USD\"\nurl = \"https://shop.example/{sku}\"\nimages = [\"{photo}\"]\n"
        )
    };
    std::fs::write(
        dir.path().join("catalog.toml"),
        entry("GTR-001", "guitar.png") + &entry("MUG-001", "mug.png"),
    )
    .expect("write");
    let catalog = Catalog::load(dir.path()).expect("catalog");
    let (r, _) = Recognizer::load(&model(), &catalog, W, H).expect("recognizer");
    let r = r.with_shortlist(1);
    let (frame, truth) = frame_with(MUG, 200, 70, 110);
    let found = r.recognise(&frame, W * 3).expect("recognise").detections;
    assert!(
        found.iter().all(|d| d.sku == "MUG-001"),
        "only the shortlisted product is verified: {found:?}"
    );
    let mug = found
        .first()
        .unwrap_or_else(|| panic!("the mug is not shortlisted: {found:?}"));
    assert!(iou(mug.bbox, truth) >= 0.4, "{:?} vs {truth:?}", mug.bbox);
}
