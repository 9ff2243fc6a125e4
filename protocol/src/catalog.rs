//! The catalog: one directory with `catalog.toml` and the products' reference photos.
//!
//! Read by both sides: the agent indexes the photos, the bridge takes the display data. Loading
//! refuses a bad catalog as a whole, with the product and field at fault, so that a typo never
//! silently hides a product on air.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::event::check_id;

/// The catalog file's name inside its directory.
pub const CATALOG_FILE: &str = "catalog.toml";

/// One product as written in `catalog.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Stock-keeping unit: the product's id on the wire (1-64 printable ASCII bytes).
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Decimal price as a string, e.g. `"14.00"`.
    pub price: String,
    /// ISO 4217 code, e.g. `"USD"`.
    pub currency: String,
    /// Shop link (http or https).
    pub url: String,
    /// Reference photos, relative to the catalog directory; the first is also the card image.
    #[serde(default)]
    pub images: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    product: Vec<Product>,
}

/// A loaded, validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The directory the image paths are relative to.
    pub dir: PathBuf,
    /// Products in file order.
    pub products: Vec<Product>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not the error chain, so `{:#}` prints it once).
        cause: std::io::Error,
    },
    /// Not valid TOML or not the catalog's shape (the message has line and column).
    #[error("{path}: {cause}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        cause: toml::de::Error,
    },
    /// A product with a bad value.
    #[error("{path}: product #{index} ({sku:?}): field `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based position of the product in the file.
        index: usize,
        /// Its SKU as written.
        sku: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl Catalog {
    /// Loads `<dir>/catalog.toml` and checks every product. Image files are checked for existence;
    /// decoding them is the reader's job.
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|cause| CatalogError::Read {
            path: path.clone(),
            cause,
        })?;
        Self::parse(dir, &path, &text)
    }

    /// Parses catalog text strictly: the first problem refuses the whole catalog. `dir` resolves
    /// image paths, `path` is only for messages.
    pub fn parse(dir: &Path, path: &Path, text: &str) -> Result<Self, CatalogError> {
        let (catalog, mut issues) = Self::parse_lenient(dir, path, text)?;
        if issues.is_empty() {
            Ok(catalog)
        } else {
            Err(issues.remove(0))
        }
    }

    /// Loads `<dir>/catalog.toml` keeping what is usable: a product with a bad field is left out,
    /// a photo that is missing or outside the directory is dropped from its product. Returns the
    /// usable catalog and every problem found, so a live show keeps its good products while the
    /// operator is told what to fix. Fails only when the file cannot be read or parsed at all.
    pub fn load_lenient(dir: &Path) -> Result<(Self, Vec<CatalogError>), CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|cause| CatalogError::Read {
            path: path.clone(),
            cause,
        })?;
        Self::parse_lenient(dir, &path, &text)
    }

    /// Lenient parsing of catalog text; see [`Catalog::load_lenient`].
    pub fn parse_lenient(
        dir: &Path,
        path: &Path,
        text: &str,
    ) -> Result<(Self, Vec<CatalogError>), CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|cause| CatalogError::Parse {
            path: path.to_owned(),
            cause,
        })?;
        let mut seen = HashSet::new();
        let mut products = Vec::with_capacity(file.product.len());
        let mut issues = Vec::new();
        for (i, mut p) in file.product.into_iter().enumerate() {
            let bad = |p: &Product, field: &'static str, reason: String| CatalogError::Invalid {
                path: path.to_owned(),
                index: i + 1,
                sku: p.sku.clone(),
                field,
                reason,
            };
            if let Err(reason) = check_product(&p) {
                issues.push(bad(&p, reason.0, reason.1));
                continue;
            }
            if !seen.insert(p.sku.clone()) {
                issues.push(bad(
                    &p,
                    "sku",
                    "duplicate SKU: each product needs its own".into(),
                ));
                continue;
            }
            let mut images = Vec::with_capacity(p.images.len());
            for img in std::mem::take(&mut p.images) {
                let rel = Path::new(&img);
                if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_)))
                {
                    let reason =
                        format!("{img:?} must be a plain path inside the catalog directory");
                    issues.push(bad(&p, "images", reason));
                } else if !dir.join(rel).is_file() {
                    let reason = format!("{img:?} not found in {}", dir.display());
                    issues.push(bad(&p, "images", reason));
                } else {
                    images.push(img);
                }
            }
            p.images = images;
            products.push(p);
        }
        Ok((
            Catalog {
                dir: dir.to_owned(),
                products,
            },
            issues,
        ))
    }

    /// Looks a product up by SKU.
    pub fn get(&self, sku: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.sku == sku)
    }

    /// Absolute paths of a product's reference photos.
    pub fn image_paths<'a>(&'a self, product: &'a Product) -> impl Iterator<Item = PathBuf> + 'a {
        product.images.iter().map(|i| self.dir.join(i))
    }
}

/// Checks the fields of one product that need no file system; `Err((field, reason))`.
fn check_product(p: &Product) -> Result<(), (&'static str, String)> {
    check_id("sku", &p.sku).map_err(|e| ("sku", e.to_string()))?;
    if p.name.trim().is_empty() {
        return Err(("name", "must not be empty".into()));
    }
    check_price(&p.price).map_err(|r| ("price", r))?;
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err((
            "currency",
            format!("{:?} is not an ISO 4217 code like \"USD\"", p.currency),
        ));
    }
    if !(p.url.starts_with("https://") || p.url.starts_with("http://")) {
        return Err((
            "url",
            format!("{:?} must start with https:// or http://", p.url),
        ));
    }
    Ok(())
}

fn check_price(price: &str) -> Result<(), String> {
    let (whole, frac) = price.split_once('.').unwrap_or((price, ""));
    let ok = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 4
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(price.contains('.') && frac.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("{price:?} is not a decimal amount like \"14.00\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for f in files {
            std::fs::write(d.path().join(f), b"x").expect("write");
        }
        d
    }

    const MINIMAL: &str = r#"
[[product]]
sku = "MUG-001"
name = "Enamel camp mug"
price = "14.00"
currency = "USD"
url = "https://shop.example/mug-001"
images = ["mug-front.png", "mug-side.png"]   # reference photos, relative to the directory
"#;

    #[test]
    fn minimal_form_from_the_design_loads() {
        let d = dir_with(&["mug-front.png", "mug-side.png"]);
        let c = Catalog::parse(d.path(), Path::new("catalog.toml"), MINIMAL).expect("loads");
        assert_eq!(c.products.len(), 1);
        assert_eq!(c.get("MUG-001").expect("present").price, "14.00");
        assert_eq!(c.image_paths(&c.products[0]).count(), 2);
    }

    #[test]
    fn lenient_load_keeps_the_good_products_and_lists_the_rest() {
        let d = dir_with(&["mug-front.png"]);
        let two = format!(
            "{MINIMAL}\n{}",
            MINIMAL
                .replace("MUG-001", "MUG-002")
                .replace("14.00", "cheap")
        );
        let (c, issues) =
            Catalog::parse_lenient(d.path(), Path::new("c.toml"), &two).expect("parses");
        assert_eq!(
            c.products.len(),
            1,
            "the product with a bad price is left out"
        );
        assert_eq!(
            c.products[0].images,
            vec!["mug-front.png".to_owned()],
            "the missing photo is dropped"
        );
        let msgs: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("mug-side.png"), "{msgs:?}");
        assert!(
            msgs[1].contains("MUG-002") && msgs[1].contains("price"),
            "{msgs:?}"
        );
    }

    #[test]
    fn errors_name_the_product_and_field() {
        let d = dir_with(&["mug-front.png"]);
        let err = Catalog::parse(d.path(), Path::new("catalog.toml"), MINIMAL)
            .expect_err("missing image");
        let msg = err.to_string();
        assert!(
            msg.contains("MUG-001") && msg.contains("images") && msg.contains("mug-side.png"),
            "{msg}"
        );

        let bad_price = MINIMAL.replace("\"14.00\"", "\"14,00\"");
        let d = dir_with(&["mug-front.png", "mug-side.png"]);
        let msg = Catalog::parse(d.path(), Path::new("c.toml"), &bad_price)
            .expect_err("bad price")
            .to_string();
        assert!(msg.contains("price") && msg.contains("14,00"), "{msg}");

        let dup = format!("{MINIMAL}\n{MINIMAL}");
        let msg = Catalog::parse(d.path(), Path::new("c.toml"), &dup)
            .expect_err("duplicate")
            .to_string();
        assert!(
            msg.contains("product #2") && msg.contains("duplicate"),
            "{msg}"
        );

        let escape = MINIMAL.replace("mug-side.png", "../etc/passwd");
        let msg = Catalog::parse(d.path(), Path::new("c.toml"), &escape)
            .expect_err("escape")
            .to_string();
        assert!(msg.contains("inside the catalog directory"), "{msg}");

        let typo = MINIMAL.replace("price =", "prize =");
        let msg = Catalog::parse(d.path(), Path::new("c.toml"), &typo)
            .expect_err("typo")
            .to_string();
        assert!(msg.contains("prize"), "{msg}");
    }
}
