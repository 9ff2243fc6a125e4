//! What a clip shows: products on cue over the set, gently bobbing as if held, and the ground
//! truth of where and when each one is.

use std::collections::HashMap;
use std::f32::consts::TAU;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use image::RgbaImage;
use serde::{Deserialize, Serialize};
use spotter_protocol::Catalog;

use super::background::{render_background, HORIZON};
use super::error::ClipgenError;
use super::frame_code::overlaps_frame_code;
use super::noise::mix64;
use super::sprite::{load_rgba, trim, Shadow, Sprite};

/// Default product height as a fraction of the frame height.
pub const DEFAULT_SCALE: f32 = 0.45;

/// Where a product sits: its centre (normalised to the frame) and its height as a fraction of
/// the frame height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Centre, 0 (left) to 1 (right).
    pub x: f32,
    /// Centre, 0 (top) to 1 (bottom).
    pub y: f32,
    /// Height over frame height (wide products may be made smaller to fit the frame).
    pub scale: f32,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            x: 0.5,
            y: 0.5,
            scale: DEFAULT_SCALE,
        }
    }
}

/// One appearance of a product: from `start_ms` (shown) to `end_ms` (gone).
#[derive(Debug, Clone, PartialEq)]
pub struct Show {
    /// Catalog SKU.
    pub sku: String,
    /// First millisecond on screen.
    pub start_ms: u64,
    /// First millisecond off screen again.
    pub end_ms: u64,
    /// Where.
    pub placement: Placement,
}

impl Show {
    /// A show at the default placement.
    pub fn new(sku: &str, start_ms: u64, end_ms: u64) -> Self {
        Show {
            sku: sku.into(),
            start_ms,
            end_ms,
            placement: Placement::default(),
        }
    }

    /// The same show at another placement.
    pub fn at(mut self, x: f32, y: f32, scale: f32) -> Self {
        self.placement = Placement { x, y, scale };
        self
    }
}

const SHOW_FORM: &str = "SKU@START-END[@X,Y,SCALE] (seconds; centre 0..1; height fraction)";

fn parse_num(spec: &str, what: &str, s: &str) -> Result<f32, ClipgenError> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            ClipgenError::Spec(format!(
                "show {spec:?}: {what} {s:?} is not a number; expected {SHOW_FORM}"
            ))
        })
}

impl FromStr for Show {
    type Err = ClipgenError;

    /// Parses `SKU@START-END[@X,Y,SCALE]`, e.g. `MUG-001@3-9` or `MUG-001@3.5-9@0.3,0.5,0.4`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| ClipgenError::Spec(format!("show {spec:?}: {why}; expected {SHOW_FORM}"));
        let parts: Vec<&str> = spec.split('@').collect();
        let (sku, times, place) = match parts.as_slice() {
            [sku, times] => (*sku, *times, None),
            [sku, times, place] => (*sku, *times, Some(*place)),
            _ => return Err(bad("wrong number of `@`-separated parts")),
        };
        if sku.is_empty() {
            return Err(bad("missing SKU"));
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| bad("missing `-` between START and END"))?;
        let (start, end) = (
            parse_num(spec, "START", start)?,
            parse_num(spec, "END", end)?,
        );
        if !(0.0 <= start && start < end) {
            return Err(bad("needs 0 <= START < END"));
        }
        let placement = match place {
            None => Placement::default(),
            Some(place) => {
                let v: Vec<f32> = place
                    .split(',')
                    .map(|s| parse_num(spec, "placement", s))
                    .collect::<Result<_, _>>()?;
                let [x, y, scale] = v.as_slice() else {
                    return Err(bad("placement needs three numbers X,Y,SCALE"));
                };
                if !((0.0..=1.0).contains(x)
                    && (0.0..=1.0).contains(y)
                    && *scale > 0.0
                    && *scale <= 1.0)
                {
                    return Err(bad("X and Y must be within 0..=1 and SCALE within (0, 1]"));
                }
                Placement {
                    x: *x,
                    y: *y,
                    scale: *scale,
                }
            }
        };
        Ok(Show {
            sku: sku.to_string(),
            start_ms: (start * 1000.0).round() as u64,
            end_ms: (end * 1000.0).round() as u64,
            placement,
        })
    }
}

/// Parses `WIDTHxHEIGHT`, both even (the encoder's 4:2:0 needs it) and at least 64.
pub fn parse_size(s: &str) -> Result<(u32, u32), ClipgenError> {
    let bad = || {
        ClipgenError::Spec(format!(
            "size {s:?}: expected WIDTHxHEIGHT with even numbers >= 64, e.g. 1280x720"
        ))
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w < 64 || h < 64 || w % 2 == 1 || h % 2 == 1 || w > 7680 || h > 4320 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Everything a clip needs besides the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipSpec {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Length.
    pub duration_ms: u64,
    /// Seeds the set's layout and texture.
    pub seed: u64,
    /// H.264 bitrate.
    pub bitrate_kbps: u32,
    /// x264's `speed-preset` (`ultrafast`, `superfast`, `veryfast`, ...).
    pub speed_preset: String,
    /// The appearances.
    pub shows: Vec<Show>,
    /// Paint each frame's index into its top-left corner (see [`super::frame_code`]).
    pub frame_code: bool,
}

impl ClipSpec {
    /// 1280x720 at 30 fps, 4 Mbit/s, x264 `veryfast`.
    pub fn new(duration_ms: u64, shows: Vec<Show>) -> Self {
        ClipSpec {
            width: 1280,
            height: 720,
            fps: 30,
            duration_ms,
            seed: 7,
            bitrate_kbps: 4000,
            speed_preset: "veryfast".into(),
            shows,
            frame_code: false,
        }
    }
}

/// Ground truth for one appearance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthEntry {
    /// Catalog SKU.
    pub sku: String,
    /// First millisecond on screen.
    pub start_ms: u64,
    /// First millisecond off screen.
    pub end_ms: u64,
    /// `[x0, y0, x1, y1]`, normalised: everything the product covers during the appearance
    /// (its bobbing included).
    pub bbox: [f32; 4],
}

struct Item {
    show: Show,
    sprite: std::sync::Arc<Sprite>,
    shadow: Option<Shadow>,
    x0: i32,
    y0: i32,
    amp_x: f32,
    amp_y: f32,
    phase: f32,
}

/// A prepared clip: the set rendered once, products scaled once; frames are cheap.
pub struct Scene {
    width: u32,
    height: u32,
    fps: u32,
    frames: u64,
    background: Vec<u8>,
    items: Vec<Item>,
}

impl Scene {
    /// Prepares the set and the products' sprites (from each product's first catalog image).
    pub fn new(catalog: &Catalog, spec: &ClipSpec) -> Result<Scene, ClipgenError> {
        if spec.fps == 0 || spec.duration_ms == 0 {
            return Err(ClipgenError::Spec(
                "fps and duration must be positive".into(),
            ));
        }
        let (w, h) = (spec.width, spec.height);
        let mut art: HashMap<&str, RgbaImage> = HashMap::new();
        let mut sprites: HashMap<(&str, u32), std::sync::Arc<Sprite>> = HashMap::new();
        let mut items = Vec::with_capacity(spec.shows.len());
        for show in &spec.shows {
            let product = catalog
                .get(&show.sku)
                .ok_or_else(|| ClipgenError::UnknownSku {
                    sku: show.sku.clone(),
                    known: catalog
                        .products
                        .iter()
                        .map(|p| p.sku.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if !art.contains_key(show.sku.as_str()) {
                let path = catalog.image_paths(product).next().ok_or_else(|| {
                    ClipgenError::Spec(format!(
                        "product {}: the catalog lists no image to draw",
                        show.sku
                    ))
                })?;
                art.insert(&show.sku, trim(&load_rgba(&path)?, &path)?);
            }
            let target_h = (show.placement.scale * h as f32).round() as u32;
            let sprite = match sprites.get(&(show.sku.as_str(), target_h)) {
                Some(s) => s.clone(),
                None => {
                    let trimmed = &art[show.sku.as_str()];
                    let s = std::sync::Arc::new(Sprite::new(trimmed, target_h, w * 9 / 10));
                    sprites.insert((&show.sku, target_h), s.clone());
                    s
                }
            };
            let cx = show.placement.x * w as f32;
            let cy = show.placement.y * h as f32;
            let x0 = (cx - sprite.w as f32 / 2.0).round() as i32;
            let y0 = (cy - sprite.h as f32 / 2.0).round() as i32;
            let bottom = y0 + sprite.h as i32;
            let shadow = (bottom as f32 > HORIZON * h as f32)
                .then(|| Shadow::new(sprite.w * 9 / 10, (0.045 * h as f32).max(4.0) as u32, 0.45));
            let hash = mix64(
                show.sku
                    .bytes()
                    .fold(show.start_ms, |a, b| a.wrapping_mul(31) ^ u64::from(b)),
            );
            items.push(Item {
                show: show.clone(),
                sprite,
                shadow,
                x0,
                y0,
                amp_x: 0.006 * w as f32,
                amp_y: 0.010 * h as f32,
                phase: (hash % 6283) as f32 / 1000.0,
            });
        }
        Ok(Scene {
            width: w,
            height: h,
            fps: spec.fps,
            frames: spec.duration_ms * u64::from(spec.fps) / 1000,
            background: render_background(w, h, spec.seed),
            items,
        })
    }

    /// How many frames the clip has.
    pub fn frame_count(&self) -> u64 {
        self.frames
    }

    /// The presentation time of a frame, in milliseconds.
    pub fn frame_ms(&self, index: u64) -> u64 {
        index * 1000 / u64::from(self.fps)
    }

    /// Renders frame `index` into `out` as packed RGBx.
    pub fn render(&self, index: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.background);
        let t = self.frame_ms(index);
        for item in &self.items {
            if !(item.show.start_ms..item.show.end_ms).contains(&t) {
                continue;
            }
            let s = (t - item.show.start_ms) as f32 / 1000.0;
            let dx = item.amp_x * (TAU * s / 2.6 + item.phase * 1.3).sin();
            let dy = item.amp_y * (TAU * s / 1.7 + item.phase).sin();
            if let Some(shadow) = &item.shadow {
                let sx = item.x0 + (item.sprite.w as i32 - shadow.w as i32) / 2;
                let sy = item.y0 + item.sprite.h as i32 - (shadow.h as i32) / 2;
                shadow.draw(out, self.width, self.height, sx + dx.round() as i32, sy);
            }
            item.sprite.draw(
                out,
                self.width,
                self.height,
                item.x0 + dx.round() as i32,
                item.y0 + dy.round() as i32,
            );
        }
    }

    /// Ground truth, in show order.
    pub fn truth(&self) -> Vec<TruthEntry> {
        let (w, h) = (self.width as f32, self.height as f32);
        self.items
            .iter()
            .map(|i| {
                let (ax, ay) = (i.amp_x.ceil(), i.amp_y.ceil());
                let n = |v: f32, d: f32| (v / d).clamp(0.0, 1.0);
                TruthEntry {
                    sku: i.show.sku.clone(),
                    start_ms: i.show.start_ms,
                    end_ms: i.show.end_ms,
                    bbox: [
                        n(i.x0 as f32 - ax, w),
                        n(i.y0 as f32 - ay, h),
                        n(i.x0 as f32 + i.sprite.w as f32 + ax, w),
                        n(i.y0 as f32 + i.sprite.h as f32 + ay, h),
                    ],
                }
            })
            .collect()
    }
}

/// `clip.mp4` -> `clip.truth.json`.
pub fn truth_path(clip: &Path) -> PathBuf {
    clip.with_extension("truth.json")
}

/// Reads a truth file written by [`make_clip`].
pub fn read_truth(path: &Path) -> Result<Vec<TruthEntry>, ClipgenError> {
    let text = std::fs::read(path).map_err(ClipgenError::io(path))?;
    serde_json::from_slice(&text).map_err(|source| ClipgenError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Renders and encodes a clip to `out` (MP4, H.264) and writes its truth file next to it.
pub fn make_clip(
    catalog: &Catalog,
    spec: &ClipSpec,
    out: &Path,
) -> Result<Vec<TruthEntry>, ClipgenError> {
    let started = Instant::now();
    let scene = Scene::new(catalog, spec)?;
    let truth = scene.truth();
    if spec.frame_code {
        if let Some(t) = truth
            .iter()
            .find(|t| overlaps_frame_code(t.bbox, spec.width, spec.height))
        {
            return Err(ClipgenError::Spec(format!(
                "show {}@{}-{} ms reaches into the frame code's corner (x < 0.24, y < 0.05 of \
                 the frame): place it lower or further right",
                t.sku, t.start_ms, t.end_ms
            )));
        }
    }
    super::encode::encode_clip(&scene, spec, out)?;
    let path = truth_path(out);
    let json = serde_json::to_vec_pretty(&truth).map_err(|source| ClipgenError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json).map_err(ClipgenError::io(&path))?;
    tracing::info!(
        clip = %out.display(),
        frames = scene.frame_count(),
        secs = started.elapsed().as_secs_f32(),
        "clip written"
    );
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shows() {
        let s: Show = "MUG-001@3-9".parse().expect("short form");
        assert_eq!(s, Show::new("MUG-001", 3000, 9000));
        let s: Show = "MUG-001@3.25-9.5@0.3,0.6,0.4".parse().expect("long form");
        assert_eq!(s, Show::new("MUG-001", 3250, 9500).at(0.3, 0.6, 0.4));
        for bad in [
            "MUG",
            "MUG@9-3",
            "MUG@x-3",
            "@1-2",
            "MUG@1-2@0.5,0.5",
            "MUG@1-2@2,0.5,0.5",
            "MUG@1-2@a,b,c",
        ] {
            let err = bad.parse::<Show>().expect_err(bad);
            assert!(
                err.to_string().contains("expected SKU@START-END"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1280x720").expect("valid"), (1280, 720));
        for bad in ["1280", "1281x720", "x", "10x10", "axb"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
