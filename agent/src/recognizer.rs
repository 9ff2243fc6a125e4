//! Loads the model and the catalog index, and turns one RGB frame into product detections.
//!
//! The I/O side of recognition (reading weights, decoding reference photos); the compute is in
//! `spotter-models`.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spotter_models::appearance::{Appearance, FramePixels, ViewAppearance};
use spotter_models::descriptor::global_descriptor;
use spotter_models::verify::{cells, ReferenceView, VerifyParams, ViewSet};
use spotter_models::{
    preprocess, Candidate, CatalogIndex, EfficientNetLite0, Expected, FrameFeatures, LiteConfig,
    ProductIndex, RegionGrid, Zoom, MID_TAP_BLOCK,
};
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
    index: RwLock<Arc<ProductIndex>>,
    grid: RegionGrid,
    verify: VerifyParams,
    /// Products the regional descriptors shortlist for verification in each frame.
    shortlist: usize,
    /// Whether one small region a frame is verified again, enlarged.
    zoom: bool,
    device: Device,
    /// Input size frames are analysed at.
    pub width: usize,
    /// Input height.
    pub height: usize,
}

/// Verified pairs at which a detection's score is one half: `score = n / (n + SCORE_HALF)`.
pub const SCORE_HALF: f32 = 8.0;

/// A detection's score from its inlier count: monotonic, 0 for none, 0.5 at [`SCORE_HALF`].
pub fn inlier_score(inliers: usize) -> f32 {
    let n = inliers as f32;
    n / (n + SCORE_HALF)
}

/// Per-frame result with timing.
#[derive(Debug)]
pub struct Recognition {
    /// Products found, best first.
    pub detections: Vec<Detection>,
    /// Time spent in the model and matching.
    pub inference_ms: f32,
    /// Of which in the backbone (the rest is shortlisting and verification).
    pub forward_ms: f32,
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

/// A reference photo on the square canvas the network sees, and where the object is on it.
#[derive(Debug, Clone)]
pub struct Letterboxed {
    /// The canvas, mid-grey around the photo and under its transparent parts.
    pub rgb: image::RgbImage,
    /// Opacity of the photo at each canvas pixel, row-major (0 outside the photo).
    pub coverage: Vec<f32>,
    /// The object's box on the canvas, in pixels `[x0, y0, x1, y1]`: the opaque part of the
    /// photo, or the whole photo where it has no transparency.
    pub object: [f32; 4],
}

/// Decodes a photo and letterboxes it onto a mid-grey square canvas of `side` pixels, flattening
/// transparency onto grey so clip art and photos look alike to the network.
pub fn photo_to_rgb(path: &Path, side: u32) -> Result<Letterboxed, image::ImageError> {
    let img = image::open(path)?.to_rgba8();
    let (w, h) = img.dimensions();
    let scale = side as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).clamp(1, side),
        ((h as f32 * scale).round() as u32).clamp(1, side),
    );
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(side, side, image::Rgb([127, 127, 127]));
    let mut coverage = vec![0f32; (side * side) as usize];
    let (ox, oy) = ((side - nw) / 2, (side - nh) / 2);
    let mut object = [f32::INFINITY, f32::INFINITY, 0f32, 0f32];
    for (x, y, p) in resized.enumerate_pixels() {
        let a = f32::from(p[3]) / 255.0;
        let bg = 127.0 * (1.0 - a);
        let px = image::Rgb([
            (f32::from(p[0]) * a + bg).round() as u8,
            (f32::from(p[1]) * a + bg).round() as u8,
            (f32::from(p[2]) * a + bg).round() as u8,
        ]);
        let (cx, cy) = (ox + x, oy + y);
        canvas.put_pixel(cx, cy, px);
        coverage[(cy * side + cx) as usize] = a;
        if a >= 0.5 {
            object = [
                object[0].min(cx as f32),
                object[1].min(cy as f32),
                object[2].max(cx as f32 + 1.0),
                object[3].max(cy as f32 + 1.0),
            ];
        }
    }
    if object[0] > object[2] {
        // nothing opaque: the object is the whole photo
        object = [ox as f32, oy as f32, (ox + nw) as f32, (oy + nh) as f32];
    }
    Ok(Letterboxed {
        rgb: canvas,
        coverage,
        object,
    })
}

/// Stride of the mid-level map that verification matches cells of.
const MID_STRIDE: usize = 16;

/// Cells of a reference canvas that are at least this much object: the rest is background.
const MIN_CELL_COVERAGE: f32 = 0.3;

/// A letterboxed photo as the network's input.
fn photo_tensor(photo: &Letterboxed, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (photo.rgb.width() as usize, photo.rgb.height() as usize);
    preprocess::rgb_to_tensor(photo.rgb.as_raw(), w, h, w * 3, device)
}

/// The head's feature map and the mid-level tap of the network's input `x`: what a frame and a
/// reference photo are both matched with.
fn features_and_mid(
    model: &EfficientNetLite0,
    x: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (features, mid) = model.features_with_tap(x, Some(MID_TAP_BLOCK))?;
    let mid = mid.ok_or_else(|| candle_core::Error::Msg("the backbone gave no tap".into()))?;
    Ok((features, mid))
}

/// The mid-level view of a letterboxed reference photo: only its object's cells. `appearance`
/// is the photo's pixels, shared by its views.
fn reference_view(
    mid: &Tensor,
    photo: &Letterboxed,
    appearance: &Arc<Appearance>,
) -> candle_core::Result<ReferenceView> {
    let side = photo.rgb.width() as usize;
    let covered = |y: usize, x: usize| -> bool {
        let mut sum = 0.0;
        let mut n = 0usize;
        for py in y * MID_STRIDE..((y + 1) * MID_STRIDE).min(side) {
            for px in x * MID_STRIDE..((x + 1) * MID_STRIDE).min(side) {
                sum += photo.coverage[py * side + px];
                n += 1;
            }
        }
        n > 0 && sum / n as f32 >= MIN_CELL_COVERAGE
    };
    let o = photo.object;
    let cell = MID_STRIDE as f32;
    let weight = |x: usize, y: usize| photo.coverage[y * side + x];
    Ok(ReferenceView {
        cells: cells(mid, covered)?.with_colours(
            photo.rgb.as_raw(),
            (side, side),
            side * 3,
            weight,
        ),
        object: [o[0] / cell, o[1] / cell, o[2] / cell, o[3] / cell],
        appearance: Some(ViewAppearance {
            appearance: Arc::clone(appearance),
            scale: APPEARANCE_SIDE as f32 / side as f32,
        }),
    })
}

/// Products shortlisted for verification in each frame.
pub const DEFAULT_SHORTLIST: usize = 16;

/// Fewer verified pairs than this is no detection at all.
const MIN_INLIERS: usize = 3;

/// Sides of the other squares a reference photo is also verified at: at 768x448 a product at a
/// sixth of the frame's height is about 128 pixels tall and one filling it about 320 (with only
/// the 224 view, products over half the frame's height lost most of their inliers).
const EXTRA_VIEW_SIDES: &[u32] = &[128, 320];

/// Side of the square a reference photo is indexed at.
const REFERENCE_SIDE: u32 = 224;

/// Side of the square a reference photo's pixels are kept at for the likeness
/// ([`Appearance`], about 400 KB a photo): its indexed canvas.
const APPEARANCE_SIDE: u32 = REFERENCE_SIDE;

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
                verify: VerifyParams::default(),
                shortlist: DEFAULT_SHORTLIST,
                zoom: true,
                device,
                width,
                height,
            },
            report,
        ))
    }

    /// Verifies at most `n` products a frame, those regional descriptors rank first (default
    /// [`DEFAULT_SHORTLIST`]).
    pub fn with_shortlist(mut self, n: usize) -> Self {
        self.shortlist = n;
        self
    }

    /// Whether one small region of each frame is verified again, enlarged (default on: see
    /// [`ProductIndex::candidates`]).
    pub fn with_zoom(mut self, zoom: bool) -> Self {
        self.zoom = zoom;
        self
    }

    /// Verifies with these rules instead of [`VerifyParams::default`].
    pub fn with_verify(mut self, rules: VerifyParams) -> Self {
        self.verify = rules;
        self
    }

    /// Rebuilds the index from `catalog` and swaps it in; on error the current index stays.
    pub fn reload(&self, catalog: &Catalog) -> Result<IndexReport, RecognizerError> {
        let (index, report) = build_index(&self.model, &self.device, catalog, &mut |_, _| {})?;
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        Ok(report)
    }

    fn current_index(&self) -> Arc<ProductIndex> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Recognises products in one packed-RGB frame of `width x height` (rows `stride` bytes apart):
    /// [`Self::backbone`], then [`Self::identify`], expecting nothing.
    pub fn recognise(&self, rgb: &[u8], stride: usize) -> Result<Recognition, RecognizerError> {
        let backbone = self.backbone(rgb, stride)?;
        self.identify(&backbone, rgb, stride, &[])
    }

    /// The first stage of [`Self::recognise`]: the network's pass over the frame. The analysis
    /// loop runs it for the next frame while [`Self::identify`] finishes this one.
    pub fn backbone(&self, rgb: &[u8], stride: usize) -> Result<Backbone, RecognizerError> {
        let started = Instant::now();
        let x: Tensor =
            preprocess::rgb_to_tensor(rgb, self.width, self.height, stride, &self.device)?;
        let (features, mid) = features_and_mid(&self.model, &x)?;
        Ok(Backbone {
            features,
            mid,
            forward_ms: started.elapsed().as_secs_f32() * 1000.0,
        })
    }

    /// The second stage of [`Self::recognise`]: shortlist and verify the catalog's products
    /// against the frame `backbone` was computed from (the same `rgb` and `stride`), with the
    /// catalog index current now.
    ///
    /// `expected` are products on screen a moment ago, with their last boxes, most recently seen
    /// first ([`crate::tracker::Tracker::expected`]): with the zoom on, the first of them the
    /// frame misses is looked for again where it was, enlarged.
    pub fn identify(
        &self,
        backbone: &Backbone,
        rgb: &[u8],
        stride: usize,
        expected: &[(&str, [f32; 4])],
    ) -> Result<Recognition, RecognizerError> {
        let started = Instant::now();
        let index = self.current_index();
        let products = index.global.products();
        let expected: Vec<Expected> = expected
            .iter()
            .filter_map(|&(sku, bbox)| {
                // a product the catalog no longer has is not looked for
                let product = products.iter().position(|p| p == sku)?;
                Some(Expected { product, bbox })
            })
            .collect();
        let candidates = index.candidates(
            FrameFeatures {
                features: &backbone.features,
                mid: &backbone.mid,
                pixels: FramePixels::new(rgb, (self.width, self.height), stride),
            },
            &self.grid,
            self.shortlist,
            &self.verify,
            self.zoom.then_some(Zoom {
                model: &self.model,
                expected: &expected,
            }),
        )?;
        let mut detections = Vec::new();
        for Candidate {
            product,
            verified: v,
            zoomed,
        } in candidates
        {
            let sku = &products[product];
            tracing::trace!(
                sku = %sku,
                inliers = v.inliers,
                pairs = v.pairs,
                scale = v.transform.scale(),
                degrees = v.transform.degrees(),
                bbox = ?v.bbox,
                spread = v.spread,
                agreement = v.agreement,
                likeness_pixels = v.likeness.map(|l| l.pixels),
                likeness_edges = v.likeness.map(|l| l.edges),
                likeness_tone = v.likeness.and_then(|l| l.tone),
                zoomed,
                "candidate verified"
            );
            if v.inliers < MIN_INLIERS {
                continue;
            }
            detections.push(Detection {
                sku: sku.clone(),
                score: inlier_score(v.inliers),
                evidence: v.inliers as f32,
                bbox: v.bbox,
            });
        }
        detections.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(Recognition {
            detections,
            inference_ms: backbone.forward_ms + started.elapsed().as_secs_f32() * 1000.0,
            forward_ms: backbone.forward_ms,
        })
    }
}

/// The backbone's outputs for one frame, waiting for [`Recognizer::identify`].
#[derive(Debug)]
pub struct Backbone {
    features: Tensor,
    mid: Tensor,
    /// Milliseconds the pass took.
    pub forward_ms: f32,
}

/// Computes the descriptor of every usable reference photo; `progress(done, total)` is called
/// after each photo.
pub fn build_index(
    model: &EfficientNetLite0,
    device: &Device,
    catalog: &Catalog,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ProductIndex, IndexReport), RecognizerError> {
    let total: usize = catalog.products.iter().map(|p| p.images.len()).sum();
    let mut report = IndexReport::default();
    let mut refs = Vec::with_capacity(total);
    let mut views: std::collections::HashMap<String, Vec<ReferenceView>> = Default::default();
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
                    Ok(photo) => {
                        let (features, mid) = features_and_mid(model, &photo_tensor(&photo, device)?)?;
                        refs.push((product.sku.clone(), global_descriptor(&features)?));
                        let appearance = Arc::new(Appearance::new(
                            photo.rgb.as_raw(),
                            APPEARANCE_SIDE as usize,
                            &photo.coverage,
                        ));
                        let product_views = views.entry(product.sku.clone()).or_default();
                        product_views.push(reference_view(&mid, &photo, &appearance)?);
                        // a small product in the frame matches a small view of it far better,
                        // a large one a large view
                        for &side in EXTRA_VIEW_SIDES {
                            let view = photo_to_rgb(&path, side)
                                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                            // these views are only verified against: no head, no descriptor
                            let x = photo_tensor(&view, device)?;
                            let mid = model.mid_features(&x, MID_TAP_BLOCK)?;
                            product_views.push(reference_view(&mid, &view, &appearance)?);
                        }
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
    let global = CatalogIndex::new(refs, device)?;
    let views = global
        .products()
        .iter()
        .map(|sku| ViewSet::new(views.remove(sku).unwrap_or_default(), device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((ProductIndex { global, views }, report))
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
