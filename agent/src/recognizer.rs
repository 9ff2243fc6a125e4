//! Loads the model and the catalog index, and turns one RGB frame into product detections.
//!
//! The I/O side of recognition (reading weights, decoding reference photos); the compute is in
//! `spotter-models`.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spotter_models::descriptor::{global_descriptor, regional_descriptors};
use spotter_models::{preprocess, CatalogIndex, EfficientNetLite0, LiteConfig, RegionGrid};
use spotter_protocol::Catalog;

use crate::tracker::Detection;

/// Why recognition could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RecognizerError {
    /// The weights file is missing or unreadable.
    #[error(
        "cannot read model weights {path}: {cause} (run `make setup` to fetch and convert them)"
    )]
    Weights {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The catalog did not load.
    #[error(transparent)]
    Catalog(#[from] spotter_protocol::CatalogError),
    /// A reference photo could not be decoded.
    /// A catalog with nothing to look for.
    #[error(
        "catalog {0} has no product with a reference photo: add `images = [...]` to its products"
    )]
    EmptyIndex(String),
    /// candle failed (shapes, weights of the wrong shape...).
    #[error("model: {0}")]
    Model(candle_core::Error),
}

impl From<candle_core::Error> for RecognizerError {
    fn from(e: candle_core::Error) -> Self {
        RecognizerError::Model(e)
    }
}

/// The backbone plus the catalog index.
#[derive(Debug)]
pub struct Recognizer {
    model: EfficientNetLite0,
    /// swapped whole when the catalog changes; frames in flight keep the index they started with
    index: RwLock<Arc<CatalogIndex>>,
    grid: RegionGrid,
    device: Device,
    /// Input size frames are analysed at.
    pub width: usize,
    /// Input height.
    pub height: usize,
}

/// Per-frame result with timing.
#[derive(Debug)]
pub struct Recognition {
    /// Products found, best first.
    pub detections: Vec<Detection>,
    /// Time spent in the model and matching.
    pub inference_ms: f32,
}

/// Chooses the device: CUDA when built with the `cuda` feature and a GPU is present.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

/// Loads the weights file into the backbone.
pub fn load_model(path: &Path, device: &Device) -> Result<EfficientNetLite0, RecognizerError> {
    let bytes = std::fs::read(path).map_err(|cause| RecognizerError::Weights {
        path: path.display().to_string(),
        cause,
    })?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
    Ok(EfficientNetLite0::load(vb, &LiteConfig::default())?)
}

/// Decodes a photo and letterboxes it onto a mid-grey square canvas of `side` pixels, flattening
/// transparency onto grey so clip art and photos look alike to the network.
pub fn photo_to_rgb(path: &Path, side: u32) -> Result<image::RgbImage, image::ImageError> {
    let img = image::open(path)?.to_rgba8();
    let (w, h) = img.dimensions();
    let scale = side as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(side, side, image::Rgb([127, 127, 127]));
    let (ox, oy) = ((side - nw) / 2, (side - nh) / 2);
    for (x, y, p) in resized.enumerate_pixels() {
        let a = f32::from(p[3]) / 255.0;
        let bg = 127.0 * (1.0 - a);
        let px = image::Rgb([
            (f32::from(p[0]) * a + bg).round() as u8,
            (f32::from(p[1]) * a + bg).round() as u8,
            (f32::from(p[2]) * a + bg).round() as u8,
        ]);
        canvas.put_pixel(ox + x, oy + y, px);
    }
    Ok(canvas)
}

/// Side of the square a reference photo is indexed at.
const REFERENCE_SIDE: u32 = 224;

/// A reference photo left out of the index, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The product.
    pub sku: String,
    /// The photo, relative to the catalog directory.
    pub photo: String,
    /// Why, and what to do.
    pub reason: String,
}

/// Smallest side, in pixels, of a reference photo worth indexing.
pub const MIN_PHOTO_SIDE: u32 = 64;

/// Summary of an index build.
#[derive(Debug, Default)]
pub struct IndexReport {
    /// Products with at least one indexed photo.
    pub products: usize,
    /// Photos indexed.
    pub photos: usize,
    /// Photos left out.
    pub refused: Vec<Refusal>,
}

impl Recognizer {
    /// Loads the model and indexes every usable reference photo of the catalog; photos that
    /// cannot be used are left out and reported (a catalog with none at all is an error).
    pub fn load(
        model_path: &Path,
        catalog: &Catalog,
        width: usize,
        height: usize,
    ) -> Result<(Self, IndexReport), RecognizerError> {
        let device = device();
        let model = load_model(model_path, &device)?;
        let (index, report) = build_index(&model, &device, catalog, &mut |_, _| {})?;
        tracing::info!(
            products = report.products,
            photos = report.photos,
            refused = report.refused.len(),
            device = ?device,
            "catalog indexed"
        );
        for r in &report.refused {
            tracing::warn!(sku = %r.sku, photo = %r.photo, reason = %r.reason, "reference photo left out");
        }
        Ok((
            Recognizer {
                model,
                index: RwLock::new(Arc::new(index)),
                grid: RegionGrid::default(),
                device,
                width,
                height,
            },
            report,
        ))
    }

    /// Rebuilds the index from `catalog` and swaps it in; on error the current index stays.
    pub fn reload(&self, catalog: &Catalog) -> Result<IndexReport, RecognizerError> {
        let (index, report) = build_index(&self.model, &self.device, catalog, &mut |_, _| {})?;
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        Ok(report)
    }

    fn current_index(&self) -> Arc<CatalogIndex> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Recognises products in one packed-RGB frame of `width x height` (rows `stride` bytes apart).
    pub fn recognise(&self, rgb: &[u8], stride: usize) -> Result<Recognition, RecognizerError> {
        let start = Instant::now();
        let x: Tensor =
            preprocess::rgb_to_tensor(rgb, self.width, self.height, stride, &self.device)?;
        let features = self.model.features(&x)?;
        let regions = regional_descriptors(&features, &self.grid)?;
        let index = self.current_index();
        let matches = index.best_per_product(&regions)?;
        let detections = matches
            .into_iter()
            .map(|m| Detection {
                sku: index.products()[m.product].clone(),
                score: m.score,
                bbox: m.bbox,
            })
            .collect();
        Ok(Recognition {
            detections,
            inference_ms: start.elapsed().as_secs_f32() * 1000.0,
        })
    }
}

/// Computes the descriptor of every usable reference photo; `progress(done, total)` is called
/// after each photo.
pub fn build_index(
    model: &EfficientNetLite0,
    device: &Device,
    catalog: &Catalog,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(CatalogIndex, IndexReport), RecognizerError> {
    let total: usize = catalog.products.iter().map(|p| p.images.len()).sum();
    let mut report = IndexReport::default();
    let mut refs = Vec::with_capacity(total);
    let mut done = 0;
    for product in &catalog.products {
        let mut indexed = 0;
        for (rel, path) in product.images.iter().zip(catalog.image_paths(product)) {
            done += 1;
            let refuse = |reason: String| Refusal {
                sku: product.sku.clone(),
                photo: rel.clone(),
                reason,
            };
            match image::image_dimensions(&path) {
                Err(e) => report.refused.push(refuse(format!("unreadable image: {e}"))),
                Ok((w, h)) if w.min(h) < MIN_PHOTO_SIDE => report.refused.push(refuse(format!(
                    "photo too small ({w}x{h}): use at least {MIN_PHOTO_SIDE} pixels on the short side"
                ))),
                Ok(_) => match photo_to_rgb(&path, REFERENCE_SIDE) {
                    Err(e) => report.refused.push(refuse(format!("unreadable image: {e}"))),
                    Ok(rgb) => {
                        let side = REFERENCE_SIDE as usize;
                        let x = preprocess::rgb_to_tensor(rgb.as_raw(), side, side, side * 3, device)?;
                        let features = model.features(&x)?;
                        refs.push((product.sku.clone(), global_descriptor(&features)?));
                        indexed += 1;
                    }
                },
            }
            progress(done, total);
        }
        if indexed > 0 {
            report.products += 1;
        }
    }
    report.photos = refs.len();
    if refs.is_empty() {
        return Err(RecognizerError::EmptyIndex(
            catalog.dir.display().to_string(),
        ));
    }
    Ok((CatalogIndex::new(refs, device)?, report))
}

/// `spotter-agent catalog build`: indexes a catalog with a progress bar on stderr and writes the
/// summary to `out`.
pub fn build_catalog_report(
    model_path: &Path,
    dir: &Path,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let (catalog, issues) = Catalog::load_lenient(dir)?;
    let device = device();
    let model = load_model(model_path, &device)?;
    let total: u64 = catalog.products.iter().map(|p| p.images.len() as u64).sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} indexing photos [{bar:30}] {pos}/{len} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let built = build_index(&model, &device, &catalog, &mut |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let refused_entries = issues.len();
    for issue in &issues {
        writeln!(out, "refused entry: {issue}")?;
    }
    let (_, report) = built?;
    for r in &report.refused {
        writeln!(out, "refused photo: {} {}: {}", r.sku, r.photo, r.reason)?;
    }
    writeln!(
        out,
        "indexed {} photos of {} products from {}; refused {} photos and {} catalog entries",
        report.photos,
        report.products,
        dir.display(),
        report.refused.len(),
        refused_entries
    )?;
    Ok(())
}

/// Prints the ImageNet top-5 class indices and probabilities of each photo (centre-cropped and
/// resized to 224x224).
pub fn classify(
    model_path: &Path,
    images: &[std::path::PathBuf],
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    use candle_core::Module;
    let device = device();
    let model = load_model(model_path, &device)?;
    for path in images {
        let img = image::open(path)?.to_rgb8();
        let (w, h) = img.dimensions();
        let side = w.min(h);
        let crop =
            image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side).to_image();
        let rgb = image::imageops::resize(&crop, 224, 224, image::imageops::FilterType::Triangle);
        let x = preprocess::rgb_to_tensor(rgb.as_raw(), 224, 224, 224 * 3, &device)?;
        let probs = candle_nn::ops::softmax(&model.forward(&x)?, 1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = ranked
            .iter()
            .take(5)
            .map(|(i, p)| format!("{i}:{p:.3}"))
            .collect();
        writeln!(out, "{}\t{}", path.display(), top.join(" "))?;
    }
    Ok(())
}
