//! Catalog directories from clip art: `catalog.toml` in the protocol's format plus, for each
//! product, its source PNG and two more reference photos (flattened onto white; tilted and
//! smaller on a pale grey), so that the recogniser's index sees more than one view.

use std::path::{Path, PathBuf};

use serde::Serialize;
use spotter_protocol::catalog::CATALOG_FILE;
use spotter_protocol::Catalog;

use super::error::ClipgenError;
use super::sprite::{flatten, load_rgba, pad, premultiply, rotate_scale, trim};

/// Where Debian's `openclipart-png` puts its images.
pub const OPENCLIPART_DIR: &str = "/usr/share/openclipart/png";

/// A product to put in a catalog, and the clip art that pictures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSource {
    /// Catalog SKU.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Decimal price string.
    pub price: String,
    /// A PNG with transparency.
    pub image: PathBuf,
}

impl ProductSource {
    fn preset(sku: &str, name: &str, price: &str, rel: &str) -> Self {
        ProductSource {
            sku: sku.into(),
            name: name.into(),
            price: price.into(),
            image: Path::new(OPENCLIPART_DIR).join(rel),
        }
    }

    /// Parses `SKU=PATH[:NAME[:PRICE]]`, or a bare preset SKU such as `MUG-001`.
    pub fn parse(spec: &str) -> Result<Self, ClipgenError> {
        let Some((sku, rest)) = spec.split_once('=') else {
            return preset_product(spec).ok_or_else(|| {
                ClipgenError::Spec(format!(
                    "product {spec:?}: expected SKU=PATH[:NAME[:PRICE]] or a preset SKU (one of {})",
                    preset_skus().join(", ")
                ))
            });
        };
        let mut parts = rest.splitn(3, ':');
        let image = PathBuf::from(parts.next().unwrap_or_default());
        if sku.is_empty() || image.as_os_str().is_empty() {
            return Err(ClipgenError::Spec(format!(
                "product {spec:?}: expected SKU=PATH[:NAME[:PRICE]] with a SKU and a path"
            )));
        }
        let name = parts
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(sku)
            .to_owned();
        let price = parts.next().unwrap_or("10.00").to_owned();
        Ok(ProductSource {
            sku: sku.to_owned(),
            name,
            price,
            image,
        })
    }
}

/// The names `--preset` accepts.
pub fn preset_names() -> &'static [&'static str] {
    &["demo"]
}

/// A built-in product set: `demo` is five visually dissimilar products.
pub fn preset(name: &str) -> Option<Vec<ProductSource>> {
    match name {
        "demo" => Some(vec![
            ProductSource::preset(
                "MUG-001",
                "Enamel camp mug",
                "14.00",
                "food/beverages/mug.png",
            ),
            ProductSource::preset(
                "GTR-001",
                "Parlour acoustic guitar",
                "249.00",
                "recreation/music/guitar_ganson.png",
            ),
            ProductSource::preset(
                "SHOE-001",
                "Court tennis shoes",
                "79.90",
                "recreation/sports/tennis_shoes_jarno_vasam_.png",
            ),
            ProductSource::preset(
                "CAM-001",
                "Compact digital camera",
                "329.00",
                "computer/icons/digital_camera_nikon_co_.png",
            ),
            ProductSource::preset(
                "LAMP-001",
                "Red desk lamp",
                "39.50",
                "office/desk_lamp_gerald_g._01.png",
            ),
        ]),
        _ => None,
    }
}

fn preset_skus() -> Vec<String> {
    preset_names()
        .iter()
        .flat_map(|n| preset(n).unwrap_or_default())
        .map(|p| p.sku)
        .collect()
}

/// One product of a preset, by SKU.
pub fn preset_product(sku: &str) -> Option<ProductSource> {
    preset_names()
        .iter()
        .flat_map(|n| preset(n).unwrap_or_default())
        .find(|p| p.sku == sku)
}

#[derive(Serialize)]
struct CatalogOut<'a> {
    product: Vec<ProductOut<'a>>,
}

#[derive(Serialize)]
struct ProductOut<'a> {
    sku: &'a str,
    name: &'a str,
    price: &'a str,
    currency: &'static str,
    url: String,
    images: Vec<String>,
}

fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), ClipgenError> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(ClipgenError::image(path))
}

/// Writes `out/catalog.toml` and each product's reference photos (`<sku>-front.png`, the
/// source as is; `<sku>-white.png`; `<sku>-tilt.png`), then loads it back through the
/// protocol's loader so that only a valid catalog is ever reported as made.
pub fn build_catalog(out: &Path, products: &[ProductSource]) -> Result<Catalog, ClipgenError> {
    std::fs::create_dir_all(out).map_err(ClipgenError::io(out))?;
    let mut entries = Vec::with_capacity(products.len());
    for (i, p) in products.iter().enumerate() {
        let stem = p.sku.to_lowercase();
        let front = format!("{stem}-front.png");
        std::fs::copy(&p.image, out.join(&front)).map_err(ClipgenError::io(&p.image))?;

        let art = trim(&load_rgba(&p.image)?, &p.image)?;
        let premul = pad(&premultiply(&art), 0.06);
        let white = format!("{stem}-white.png");
        save_png(&flatten(&premul, [255, 255, 255]), &out.join(&white))?;

        let angle = if i % 2 == 0 { 8.0 } else { -8.0 };
        let tilted = rotate_scale(&pad(&premul, 0.1), angle, 0.85);
        let tilt = format!("{stem}-tilt.png");
        save_png(&flatten(&tilted, [238, 236, 232]), &out.join(&tilt))?;

        entries.push(ProductOut {
            sku: &p.sku,
            name: &p.name,
            price: &p.price,
            currency: "USD",
            url: format!("https://shop.example/{stem}"),
            images: vec![front, white, tilt],
        });
        tracing::debug!(sku = %p.sku, source = %p.image.display(), "catalog product written");
    }
    let text = toml::to_string(&CatalogOut { product: entries })?;
    let path = out.join(CATALOG_FILE);
    std::fs::write(&path, text).map_err(ClipgenError::io(&path))?;
    Ok(Catalog::load(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_product_specs() {
        let p = ProductSource::parse("X-1=/tmp/x.png:Blue thing:3.50").expect("full spec");
        assert_eq!(
            (p.sku.as_str(), p.name.as_str(), p.price.as_str()),
            ("X-1", "Blue thing", "3.50")
        );
        assert_eq!(p.image, PathBuf::from("/tmp/x.png"));
        let p = ProductSource::parse("X-1=/tmp/x.png").expect("short spec");
        assert_eq!((p.name.as_str(), p.price.as_str()), ("X-1", "10.00"));
        assert_eq!(
            ProductSource::parse("MUG-001").expect("preset").name,
            "Enamel camp mug"
        );
        let err = ProductSource::parse("NOPE").expect_err("unknown preset sku");
        assert!(err.to_string().contains("MUG-001"), "{err}");
        assert!(ProductSource::parse("=x.png").is_err());
    }

    #[test]
    fn demo_preset_has_distinct_skus() {
        let demo = preset("demo").expect("demo preset");
        let skus: std::collections::HashSet<_> = demo.iter().map(|p| &p.sku).collect();
        assert_eq!(skus.len(), demo.len());
        assert!(demo.len() >= 5);
    }
}
