//! A product added to the catalog while the agent runs is recognised after the watcher's reload,
//! and a catalog broken mid-show keeps the products already indexed.
//!
//! Needs the converted weights (`make setup`) and Debian's openclipart-png.

use std::path::{Path, PathBuf};

use spotter_agent::catalog_watch::reload_once;
use spotter_agent::recognizer::{photo_to_rgb, Recognizer};
use spotter_protocol::Catalog;

const MUG: &str = "/usr/share/openclipart/png/food/beverages/mug.png";
const GUITAR: &str = "/usr/share/openclipart/png/recreation/music/guitar_ganson.png";
const W: usize = 384;
const H: usize = 224;

fn model() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/weights/efficientnet-lite0.safetensors");
    assert!(
        p.is_file(),
        "{}: run `make setup` to fetch and convert the weights",
        p.display()
    );
    p
}

fn entry(sku: &str, photo: &str) -> String {
    format!(
        "[[product]]\nsku = \"{sku}\"\nname = \"{sku}\"\nprice = \"1.00\"\ncurrency = \"USD\"\nurl = \"https://shop.example/{sku}\"\nimages = [\"{photo}\"]\n\n"
    )
}

/// A frame showing `photo` in the middle of a grey studio frame.
fn frame_of(photo: &str) -> Vec<u8> {
    let product = photo_to_rgb(Path::new(photo), H as u32).expect("photo").rgb;
    let mut frame = image::RgbImage::from_pixel(W as u32, H as u32, image::Rgb([120, 118, 110]));
    image::imageops::overlay(&mut frame, &product, ((W - H) / 2) as i64, 0);
    frame.into_raw()
}

fn best(r: &Recognizer, frame: &[u8]) -> (String, f32) {
    let rec = r.recognise(frame, W * 3).expect("recognise");
    let top = rec.detections.first().expect("some match");
    (top.sku.clone(), top.score)
}

#[test]
fn a_product_added_mid_show_is_found_after_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(MUG, dir.path().join("mug.png")).expect("openclipart-png is installed");
    std::fs::write(dir.path().join("catalog.toml"), entry("MUG-001", "mug.png")).expect("write");
    let catalog = Catalog::load(dir.path()).expect("catalog");
    let (r, report) = Recognizer::load(&model(), &catalog, W, H).expect("recognizer");
    assert_eq!((report.products, report.photos), (1, 1));

    let guitar = frame_of(GUITAR);
    let before = r.recognise(&guitar, W * 3).expect("recognise");
    assert!(
        before
            .detections
            .iter()
            .all(|d| d.score < spotter_agent::config::TrackerConfig::default().min_score),
        "only the mug is indexed yet, and the guitar is no mug: {:?}",
        before.detections
    );

    std::fs::copy(GUITAR, dir.path().join("guitar.png")).expect("copy");
    let both = format!(
        "{}{}",
        entry("MUG-001", "mug.png"),
        entry("GTR-001", "guitar.png")
    );
    std::fs::write(dir.path().join("catalog.toml"), both).expect("write");
    reload_once(&r, dir.path());
    let (sku, score) = best(&r, &guitar);
    assert_eq!(
        sku, "GTR-001",
        "the new product is recognised after the reload"
    );
    assert!(score > 0.5, "score {score}");

    // a catalog that no longer parses keeps the current index
    std::fs::write(dir.path().join("catalog.toml"), "[[product]\nbroken").expect("write");
    reload_once(&r, dir.path());
    assert_eq!(best(&r, &guitar).0, "GTR-001");
    assert_eq!(best(&r, &frame_of(MUG)).0, "MUG-001");
}
