//! Writing the evaluation set: for each split its catalog, its clips with their truth files, and
//! a manifest written last (so a set cut short is never taken for a complete one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbaImage;
use serde::{Deserialize, Serialize};

use super::super::background::render_background;
use super::super::catalog::{build_catalog, ProductSource};
use super::super::encode::{encode_frames, FrameSource};
use super::super::error::ClipgenError;
use super::super::photo::{mate_photo, Backdrop, BackdropSpec};
use super::super::scene::{truth_path, ClipSpec};
use super::super::sprite::{load_rgba, trim};
use super::plan::{plan_split, ClipPlan, PlanInput};
use super::products::{group_products, Group};
use super::render::EvalScene;

/// Bumped whenever the generator's output changes, so an old set is regenerated, not reused.
pub const GENERATOR_VERSION: u32 = 1;

/// The manifest's file name in each split's directory.
pub const MANIFEST_FILE: &str = "split.json";

/// The two scored splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Thresholds are tuned on it.
    Tune,
    /// The score is taken on it.
    Test,
}

impl Split {
    /// Its directory name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Tune => "tune",
            Split::Test => "test",
        }
    }

    fn group(self) -> Group {
        match self {
            Split::Tune => Group::Tune,
            Split::Test => Group::Test,
        }
    }

    /// Each split has its own seed, so the two never share a clip.
    fn seed(self, base: u64) -> u64 {
        match self {
            Split::Tune => base.wrapping_mul(2).wrapping_add(1),
            Split::Test => base.wrapping_mul(2).wrapping_add(2),
        }
    }
}

impl std::str::FromStr for Split {
    type Err = ClipgenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tune" => Ok(Split::Tune),
            "test" => Ok(Split::Test),
            _ => Err(ClipgenError::Spec(format!(
                "split {s:?}: expected `tune` or `test`"
            ))),
        }
    }
}

/// What is behind the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackdropKind {
    /// Real photos from Debian's `mate-backgrounds`, softened, with pan and shake.
    Photo,
    /// The procedural studio set of the other clips (wall, shelf, table), still.
    Studio,
}

/// Everything the set is made from besides the products, which are fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSetSpec {
    /// Seeds every plan.
    pub seed: u64,
    /// Clips per split.
    pub clips: usize,
    /// Shortest and longest clip, ms.
    pub duration_ms: (u64, u64),
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// H.264 bitrate.
    pub bitrate_kbps: u32,
    /// x264 speed preset.
    pub speed_preset: String,
    /// Share of appearances that are look-alikes.
    pub lookalike_share: f32,
    /// Behind the products.
    pub backdrop: BackdropKind,
}

impl Default for EvalSetSpec {
    /// Ten clips of 20 to 30 s a split, 1280x720 at 30 fps, 3.5 Mbit/s (a studio's 720p
    /// upload), a third of the appearances look-alikes, photographic backdrops.
    fn default() -> Self {
        EvalSetSpec {
            seed: 2026,
            clips: 10,
            duration_ms: (20_000, 30_000),
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 3500,
            speed_preset: "superfast".into(),
            lookalike_share: 0.33,
            backdrop: BackdropKind::Photo,
        }
    }
}

/// One clip in a split's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestClip {
    /// The clip, relative to the split's directory.
    pub clip: String,
    /// Its truth file, likewise.
    pub truth: String,
    /// Length.
    pub duration_ms: u64,
    /// Backdrop photo (or `studio`).
    pub backdrop: String,
    /// Appearances of catalog products.
    pub catalog_appearances: usize,
    /// Appearances of look-alikes.
    pub lookalike_appearances: usize,
}

/// A split's manifest: `<out>/<split>/split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`GENERATOR_VERSION`] that wrote it.
    pub generator: u32,
    /// Which split.
    pub split: Split,
    /// How it was made.
    pub spec: EvalSetSpec,
    /// The catalog directory, relative to the split's directory.
    pub catalog: String,
    /// The catalog's SKUs.
    pub catalog_skus: Vec<String>,
    /// The look-alikes shown, never in the catalog.
    pub lookalike_skus: Vec<String>,
    /// The clips.
    pub clips: Vec<ManifestClip>,
}

/// Reads a split's manifest.
pub fn read_manifest(split_dir: &Path) -> Result<Manifest, ClipgenError> {
    let path = split_dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(ClipgenError::io(&path))?;
    serde_json::from_slice(&text).map_err(|source| ClipgenError::Json { path, source })
}

/// Whether `split_dir` holds a complete split made by this generator from `spec`.
pub fn is_current(split_dir: &Path, split: Split, spec: &EvalSetSpec) -> bool {
    match read_manifest(split_dir) {
        Ok(m) => {
            m.generator == GENERATOR_VERSION
                && m.split == split
                && &m.spec == spec
                && m.clips.iter().all(|c| {
                    split_dir.join(&c.clip).is_file() && split_dir.join(&c.truth).is_file()
                })
        }
        Err(_) => false,
    }
}

/// Product art, trimmed, by SKU, and each product's aspect.
struct Products {
    art: HashMap<String, RgbaImage>,
}

impl Products {
    fn load(groups: &[Group]) -> Result<Products, ClipgenError> {
        let mut art = HashMap::new();
        for &g in groups {
            for p in group_products(g) {
                let img = trim(&load_rgba(&p.image)?, &p.image)?;
                art.insert(p.sku, img);
            }
        }
        Ok(Products { art })
    }

    fn aspects(&self, products: &[ProductSource]) -> Vec<(String, f32)> {
        products
            .iter()
            .filter_map(|p| {
                self.art
                    .get(&p.sku)
                    .map(|a| (p.sku.clone(), a.width() as f32 / a.height() as f32))
            })
            .collect()
    }
}

/// Reports progress while a set is made: the binary draws it, tests ignore it.
pub trait SetProgress: Send {
    /// A split is about to be made with this many frames in all.
    fn split_started(&mut self, split: Split, clips: usize, frames: u64);
    /// `n` more frames were encoded.
    fn frames(&mut self, n: u64);
    /// A clip was written.
    fn clip_done(&mut self, split: Split, clip: &Path, appearances: usize, secs: f32);
    /// A split was found complete and left as it is.
    fn split_skipped(&mut self, split: Split, dir: &Path);
}

/// Ignores progress.
#[derive(Debug, Default)]
pub struct NoProgress;

impl SetProgress for NoProgress {
    fn split_started(&mut self, _: Split, _: usize, _: u64) {}
    fn frames(&mut self, _: u64) {}
    fn clip_done(&mut self, _: Split, _: &Path, _: usize, _: f32) {}
    fn split_skipped(&mut self, _: Split, _: &Path) {}
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ClipgenError> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| ClipgenError::Json {
        path: path.to_owned(),
        source,
    })?;
    std::fs::write(path, json).map_err(ClipgenError::io(path))
}

fn backdrop(spec: &EvalSetSpec, clip: &ClipPlan) -> Result<(Backdrop, String), ClipgenError> {
    match spec.backdrop {
        BackdropKind::Photo => {
            let b = Backdrop::new(
                &BackdropSpec {
                    photo: mate_photo(&clip.photo),
                    seed: clip.seed,
                    blur_sigma: clip.blur_sigma,
                    shake_px: clip.shake_px,
                    pan: clip.pan,
                },
                spec.width,
                spec.height,
            )?;
            Ok((b, clip.photo.clone()))
        }
        BackdropKind::Studio => Ok((
            Backdrop::still(
                spec.width,
                spec.height,
                render_background(spec.width, spec.height, clip.seed),
            ),
            "studio".into(),
        )),
    }
}

type Shared<'a, 'b> = std::sync::Mutex<&'a mut (dyn SetProgress + 'b)>;

fn report(shared: &Shared<'_, '_>, f: impl FnOnce(&mut dyn SetProgress)) {
    if let Ok(mut p) = shared.lock() {
        f(&mut **p);
    }
}

/// Renders, encodes and writes the truth of one clip.
fn make_one(
    spec: &EvalSetSpec,
    dir: &Path,
    clip: &ClipPlan,
    products: &Products,
    split: Split,
    progress: &Shared<'_, '_>,
) -> Result<ManifestClip, ClipgenError> {
    let started = Instant::now();
    let (backdrop, backdrop_name) = backdrop(spec, clip)?;
    let scene = EvalScene::new(
        clip,
        &products.art,
        backdrop,
        spec.width,
        spec.height,
        spec.fps,
    )?;
    let file = dir.join(format!("{}.mp4", clip.name));
    let enc = ClipSpec {
        width: spec.width,
        height: spec.height,
        fps: spec.fps,
        duration_ms: clip.duration_ms,
        seed: clip.seed,
        bitrate_kbps: spec.bitrate_kbps,
        speed_preset: spec.speed_preset.clone(),
        shows: Vec::new(),
        frame_code: false,
    };
    let mut last = 0;
    encode_frames(&scene, &enc, &file, &mut |n| {
        // Batched: the lock is shared with the other workers.
        if n - last >= 15 || n == scene.frame_count() {
            report(progress, |p| p.frames(n - last));
            last = n;
        }
    })?;
    let truth = scene.truth();
    write_json(&truth_path(&file), &truth)?;
    let catalog_appearances = truth.iter().filter(|t| t.in_catalog).count();
    report(progress, |p| {
        p.clip_done(split, &file, truth.len(), started.elapsed().as_secs_f32())
    });
    Ok(ManifestClip {
        clip: format!("{}.mp4", clip.name),
        truth: format!("{}.truth.json", clip.name),
        duration_ms: clip.duration_ms,
        backdrop: backdrop_name,
        catalog_appearances,
        lookalike_appearances: truth.len() - catalog_appearances,
    })
}

/// Makes the splits asked for under `out` (`out/tune`, `out/test`): a split already complete
/// for the same spec and generator is left alone unless `force`. `jobs` clips are made at once.
/// Returns each split's directory.
pub fn make_eval_set(
    out: &Path,
    splits: &[Split],
    spec: &EvalSetSpec,
    force: bool,
    jobs: usize,
    progress: &mut dyn SetProgress,
) -> Result<Vec<PathBuf>, ClipgenError> {
    if spec.clips == 0 || spec.fps == 0 || spec.duration_ms.0 < 5_000 {
        return Err(ClipgenError::Spec(
            "an evaluation set needs at least one clip, a frame rate, and clips of 5 s or more"
                .into(),
        ));
    }
    let lookalikes = group_products(Group::LookAlike);
    let mut dirs = Vec::new();
    let mut products: Option<Products> = None;
    for &split in splits {
        let dir = out.join(split.name());
        dirs.push(dir.clone());
        if !force && is_current(&dir, split, spec) {
            progress.split_skipped(split, &dir);
            continue;
        }
        if products.is_none() {
            products = Some(Products::load(&[
                Group::Tune,
                Group::Test,
                Group::LookAlike,
            ])?);
        }
        let Some(products) = products.as_ref() else {
            unreachable!("loaded just above")
        };
        // A stale manifest must not outlive what it describes.
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            std::fs::remove_file(&manifest_path).map_err(ClipgenError::io(&manifest_path))?;
        }
        std::fs::create_dir_all(&dir).map_err(ClipgenError::io(&dir))?;
        let catalog_products = group_products(split.group());
        let catalog = build_catalog(&dir.join("catalog"), &catalog_products)?;
        let (cat_aspects, look_aspects) = (
            products.aspects(&catalog_products),
            products.aspects(&lookalikes),
        );
        let plan = plan_split(&PlanInput {
            seed: split.seed(spec.seed),
            clips: spec.clips,
            duration_ms: spec.duration_ms,
            catalog: &cat_aspects,
            lookalikes: &look_aspects,
            lookalike_share: spec.lookalike_share,
            width: spec.width,
            height: spec.height,
        });
        let frames: u64 = plan
            .iter()
            .map(|c| c.duration_ms * u64::from(spec.fps) / 1000)
            .sum();
        progress.split_started(split, plan.len(), frames);
        // Clips are independent: render and encode `jobs` of them at once (each one renders on
        // one thread while x264 encodes on others).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let shared = std::sync::Mutex::new(&mut *progress);
        let results: Vec<Result<Vec<(usize, ManifestClip)>, ClipgenError>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..jobs.clamp(1, plan.len()))
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(clip) = plan.get(i) else {
                                    return Ok(done);
                                };
                                done.push((
                                    i,
                                    make_one(spec, &dir, clip, products, split, &shared)?,
                                ));
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(ClipgenError::Spec("a clip worker panicked".into()))
                        })
                    })
                    .collect()
            });
        let mut clips: Vec<(usize, ManifestClip)> = Vec::with_capacity(plan.len());
        for r in results {
            clips.extend(r?);
        }
        clips.sort_by_key(|(i, _)| *i);
        let clips: Vec<ManifestClip> = clips.into_iter().map(|(_, c)| c).collect();
        let manifest = Manifest {
            generator: GENERATOR_VERSION,
            split,
            spec: spec.clone(),
            catalog: "catalog".into(),
            catalog_skus: catalog.products.iter().map(|p| p.sku.clone()).collect(),
            lookalike_skus: lookalikes.iter().map(|p| p.sku.clone()).collect(),
            clips,
        };
        write_json(&manifest_path, &manifest)?;
    }
    Ok(dirs)
}
