//! The catalog prepared for viewers: each product's display data, and its card image under a
//! content-hashed URL (`/img/<hash16>/<file name>`) that any CDN may cache forever.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use spotter_protocol::event::ProductEvent;
use spotter_protocol::status::OnScreenProduct;
use spotter_protocol::viewer::{Card, ProductInfo};
use spotter_protocol::{Catalog, EventType};

/// Hex characters of the SHA-256 kept in image URLs (64 bits: collisions are not a concern).
pub const HASH_CHARS: usize = 16;

/// Why the shelf could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ShelfError {
    /// A product image could not be read.
    #[error("cannot read image {path} of product {sku:?}: {error}")]
    Image {
        /// The product.
        sku: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// One servable image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The file name in the URL (the last component of the catalog path).
    pub file_name: String,
    /// Where the bytes are.
    pub path: PathBuf,
    /// The full SHA-256 in hex, to check the file has not changed since start.
    pub sha256: String,
}

/// Display data by SKU and images by hash.
#[derive(Debug, Default)]
pub struct Shelf {
    products: HashMap<String, Arc<ProductInfo>>,
    /// Keyed by `<hash16>/<file name>`.
    images: HashMap<String, Image>,
}

impl Shelf {
    /// Reads and hashes each product's first image (blocking file I/O: call from a blocking task).
    pub fn build(catalog: &Catalog) -> Result<Self, ShelfError> {
        let mut shelf = Shelf::default();
        for product in &catalog.products {
            let image = match catalog.image_paths(product).next() {
                Some(path) => {
                    let bytes = std::fs::read(&path).map_err(|error| ShelfError::Image {
                        sku: product.sku.clone(),
                        path: path.clone(),
                        error,
                    })?;
                    let sha256 = hex(&Sha256::digest(&bytes));
                    let hash = sha256[..HASH_CHARS].to_owned();
                    let file_name = file_name(&path);
                    let url = format!("/img/{hash}/{}", percent_encode(&file_name));
                    // Keyed by hash and name: two products may share bytes under different names.
                    shelf
                        .images
                        .entry(format!("{hash}/{file_name}"))
                        .or_insert(Image {
                            file_name,
                            path,
                            sha256,
                        });
                    Some(url)
                }
                None => None,
            };
            shelf.products.insert(
                product.sku.clone(),
                Arc::new(ProductInfo {
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    price: product.price.clone(),
                    currency: product.currency.clone(),
                    url: product.url.clone(),
                    image,
                }),
            );
        }
        Ok(shelf)
    }

    /// Display data for a SKU.
    pub fn product(&self, sku: &str) -> Option<&ProductInfo> {
        self.products.get(sku).map(Arc::as_ref)
    }

    /// The image served at `/img/<hash>/<file>`, if both match.
    pub fn image(&self, hash: &str, file: &str) -> Option<&Image> {
        self.images.get(&format!("{hash}/{file}"))
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Number of distinct images.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// An event enriched into a card, or `None` for a SKU not in the catalog.
    pub fn card(&self, event: &ProductEvent) -> Option<Card> {
        let product = self.product(&event.sku)?;
        Some(Card {
            kind: event.kind,
            event_id: event.event_id.clone(),
            seq: event.seq,
            score: event.score,
            bbox: event.bbox,
            captured_at_ms: event.captured_at_ms,
            pts_ms: event.pts_ms,
            // The hub sets it from the appearance's `new`.
            appeared_at_ms: event.captured_at_ms,
            product: product.clone(),
        })
    }

    /// A product of an on-screen snapshot as a `new` card carrying the snapshot's `seq`. The
    /// snapshot has no presentation time, so `pts_ms` is 0.
    pub fn snapshot_card(&self, seq: u64, p: &OnScreenProduct) -> Option<Card> {
        let product = self.product(&p.sku)?;
        Some(Card {
            kind: EventType::New,
            event_id: p.event_id.clone(),
            seq,
            score: p.score,
            bbox: p.bbox,
            captured_at_ms: p.since_ms,
            pts_ms: 0,
            appeared_at_ms: p.since_ms,
            product: product.clone(),
        })
    }
}

/// The SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so any file name is one
/// URL path segment (axum's `Path` extractor decodes it back).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Content-Type` for an image file name.
pub fn image_content_type(file: &str) -> &'static str {
    let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("avif") => "image/avif",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotter_protocol::BBox;

    fn catalog(dir: &Path) -> Catalog {
        std::fs::create_dir_all(dir.join("photos")).expect("mkdir");
        std::fs::write(dir.join("photos/mug front.png"), b"png bytes").expect("write");
        std::fs::write(dir.join("mug-side.png"), b"other").expect("write");
        let text = r#"
[[product]]
sku = "MUG-001"
name = "Enamel camp mug"
price = "14.00"
currency = "USD"
url = "https://shop.example/mug-001"
images = ["photos/mug front.png", "mug-side.png"]

[[product]]
sku = "NOIMG-1"
name = "Gift card"
price = "25"
currency = "EUR"
url = "https://shop.example/gift"
"#;
        Catalog::parse(dir, &dir.join("catalog.toml"), text).expect("catalog")
    }

    #[test]
    fn first_image_gets_a_content_hashed_url() {
        let d = tempfile::tempdir().expect("tempdir");
        let shelf = Shelf::build(&catalog(d.path())).expect("shelf");
        let info = shelf.product("MUG-001").expect("mug");
        let hash = &sha256_hex(b"png bytes")[..HASH_CHARS];
        assert_eq!(
            info.image.as_deref(),
            Some(format!("/img/{hash}/mug%20front.png").as_str())
        );
        let img = shelf.image(hash, "mug front.png").expect("served");
        assert!(img.path.ends_with("photos/mug front.png"));
        assert!(shelf.image(hash, "other.png").is_none());
        assert!(shelf.image("0000000000000000", "mug front.png").is_none());
        assert_eq!(shelf.product("NOIMG-1").expect("gift").image, None);
        assert_eq!(shelf.image_count(), 1);
        assert_eq!(shelf.len(), 2);
    }

    #[test]
    fn cards_carry_catalog_data_and_unknown_skus_have_none() {
        let d = tempfile::tempdir().expect("tempdir");
        let shelf = Shelf::build(&catalog(d.path())).expect("shelf");
        let mut event = ProductEvent {
            v: 1,
            kind: EventType::New,
            event_id: "e-1".into(),
            seq: 3,
            session: None,
            sku: "MUG-001".into(),
            score: 0.9,
            bbox: BBox::FULL,
            captured_at_ms: 10,
            pts_ms: 20,
        };
        let card = shelf.card(&event).expect("known sku");
        assert_eq!(card.product.name, "Enamel camp mug");
        assert_eq!(card.product.price, "14.00");
        assert_eq!((card.seq, card.pts_ms), (3, 20));
        event.sku = "NOPE".into();
        assert!(shelf.card(&event).is_none());
    }

    #[test]
    fn content_types() {
        assert_eq!(image_content_type("a.PNG"), "image/png");
        assert_eq!(image_content_type("a.jpeg"), "image/jpeg");
        assert_eq!(image_content_type("noext"), "application/octet-stream");
    }
}
