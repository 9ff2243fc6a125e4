//! The evaluation set's plan, decided before a pixel is drawn: for each clip its length and
//! backdrop, and for each appearance the product, when it comes and goes, where it rests, how it
//! moves, tilts and is lit, and whether a hand covers part of it. Pure and seeded: the same seed
//! gives the same plan on every machine, so the set can be regenerated instead of stored.

use serde::{Deserialize, Serialize};

use super::super::noise::Rng;
use super::super::photo::MATE_NATURE_PHOTOS;

/// How a product comes on or goes off screen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// In one frame, as after a camera cut or when lifted into a tight shot.
    Cut,
    /// Slid across the frame edge it is nearest to, over `ms`.
    Slide {
        /// How long the slide takes.
        ms: u64,
    },
}

impl Transition {
    /// How long it takes.
    pub fn ms(self) -> u64 {
        match self {
            Transition::Cut => 0,
            Transition::Slide { ms } => ms,
        }
    }
}

/// Where a product rests for a while: its centre (0..1 of the frame) from `at_ms` (relative to
/// the appearance's start) on; the move from the previous pose takes `move_ms`, fast enough to
/// blur.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// When the move to this pose starts, from the appearance's start.
    pub at_ms: u64,
    /// How long the move takes (0 for the first pose).
    pub move_ms: u64,
    /// Centre, 0 (left) to 1 (right).
    pub x: f32,
    /// Centre, 0 (top) to 1 (bottom).
    pub y: f32,
}

/// Studio light on the product, unlike the reference photos' flat light.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Light {
    /// Multiplies every channel (1 = as photographed).
    pub brightness: f32,
    /// Stretches values about mid-grey (1 = unchanged).
    pub contrast: f32,
    /// -1 (cool, blue) to 1 (warm, orange): red and blue gains of up to 12% either way.
    pub warmth: f32,
}

impl Light {
    /// Per-channel gains for the warmth.
    pub fn gains(&self) -> [f32; 3] {
        [
            self.brightness * (1.0 + 0.12 * self.warmth),
            self.brightness,
            self.brightness * (1.0 - 0.12 * self.warmth),
        ]
    }
}

/// A hand holding the product over part of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hand {
    /// Direction the hand comes from, degrees in the product's own frame: 0 from the left, 90
    /// from below, 180 from the right.
    pub from_deg: f32,
    /// Where along that edge it grips, 0..1.
    pub along: f32,
    /// Fraction of the product's visible pixels to cover (the renderer sizes the hand to it).
    pub cover: f32,
    /// Skin tone index into the renderer's palette.
    pub tone: usize,
    /// When the hand is there, from and to, relative to the appearance's start.
    pub from_ms: u64,
    /// See `from_ms`.
    pub to_ms: u64,
}

/// One appearance of one product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appearance {
    /// The product.
    pub sku: String,
    /// Whether the split's catalog has it (false for look-alikes).
    pub in_catalog: bool,
    /// First millisecond any of it is on screen.
    pub start_ms: u64,
    /// First millisecond all of it is gone again.
    pub end_ms: u64,
    /// Height at rest as a fraction of the frame height (before tilt and zoom).
    pub height: f32,
    /// Resting places, the first at 0.
    pub poses: Vec<Pose>,
    /// How it comes on.
    pub entry: Transition,
    /// How it goes off.
    pub exit: Transition,
    /// Mean in-plane rotation, degrees (positive: clockwise on screen).
    pub tilt_deg: f32,
    /// Slow rocking about that, degrees either way.
    pub rock_deg: f32,
    /// Period of the rocking, ms.
    pub rock_period_ms: u64,
    /// Slow change of size (towards and away from the camera), fraction either way.
    pub zoom: f32,
    /// Light on the product.
    pub light: Light,
    /// A hand over part of it, for part of the appearance.
    pub hand: Option<Hand>,
    /// Seeds the small hand-held jitter.
    pub seed: u64,
}

/// Where an appearance is at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Centre, pixels.
    pub cx: f32,
    /// Centre, pixels.
    pub cy: f32,
    /// Height in pixels (the tilt does not change it).
    pub h: f32,
    /// Rotation, degrees clockwise.
    pub angle_deg: f32,
}

fn ease(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

impl Appearance {
    /// Whether the product is (at least partly) on screen at `ms`.
    pub fn active(&self, ms: u64) -> bool {
        (self.start_ms..self.end_ms).contains(&ms)
    }

    /// When it is fully in (the entry is over), and when it starts to leave.
    pub fn held_ms(&self) -> (u64, u64) {
        (
            self.start_ms + self.entry.ms(),
            self.end_ms.saturating_sub(self.exit.ms()),
        )
    }

    /// Where it rests (entry and exit aside) at `rel` ms into the appearance.
    fn rest_at(&self, rel: u64) -> (f32, f32) {
        let mut pos = (self.poses[0].x, self.poses[0].y);
        for p in &self.poses[1..] {
            if rel < p.at_ms {
                break;
            }
            let t = if p.move_ms == 0 {
                1.0
            } else {
                (rel - p.at_ms) as f32 / p.move_ms as f32
            };
            let k = ease(t);
            pos = (pos.0 + (p.x - pos.0) * k, pos.1 + (p.y - pos.1) * k);
        }
        pos
    }

    /// Where it is at `ms` (absolute clip time) in a `width`x`height` frame, for a product of
    /// aspect `aspect` (width over height).
    pub fn placement(&self, ms: u64, width: u32, height: u32, aspect: f32) -> Placement {
        let (w, h) = (width as f32, height as f32);
        let rel = ms.saturating_sub(self.start_ms);
        let secs = rel as f32 / 1000.0;
        let (mut x, mut y) = self.rest_at(rel);
        // Hand-held: a slow, small drift that never stops.
        let jx = 0.006 * (std::f32::consts::TAU * secs / 2.3 + (self.seed % 97) as f32).sin();
        let jy = 0.008 * (std::f32::consts::TAU * secs / 1.7 + (self.seed % 89) as f32).sin();
        x += jx;
        y += jy;
        let zoom = 1.0
            + self.zoom
                * (std::f32::consts::TAU * secs / 4.7 + (self.seed % 83) as f32 * 0.1).sin();
        let ph = self.height * h * zoom;
        let angle = self.tilt_deg
            + self.rock_deg
                * (std::f32::consts::TAU * rel as f32 / self.rock_period_ms.max(1) as f32).sin();
        // Entry and exit: slide from (or to) just beyond the nearest frame edge.
        let (held_from, held_to) = self.held_ms();
        let off = |x: f32, y: f32| -> (f32, f32) {
            let pw = ph * aspect;
            let reach = (pw.hypot(ph) / 2.0) + 4.0;
            let (px, py) = (x * w, y * h);
            let edges = [(px, -1.0, 0.0), (w - px, 1.0, 0.0), (h - py, 0.0, 1.0)];
            // Products come from the sides or from below, as a host brings them in; never
            // from above.
            let (d, dx, dy) = edges.iter().copied().fold((f32::MAX, 0.0, 0.0), |best, e| {
                if e.0 < best.0 {
                    e
                } else {
                    best
                }
            });
            ((px + dx * (d + reach)) / w, (py + dy * (d + reach)) / h)
        };
        if let Transition::Slide { ms: len } = self.entry {
            if ms < held_from {
                let (sx, sy) = off(x, y);
                let k = ease(ms.saturating_sub(self.start_ms) as f32 / len as f32);
                x = sx + (x - sx) * k;
                y = sy + (y - sy) * k;
            }
        }
        if let Transition::Slide { ms: len } = self.exit {
            if ms >= held_to {
                let (sx, sy) = off(x, y);
                let k = ease(ms.saturating_sub(held_to) as f32 / len as f32);
                x += (sx - x) * k;
                y += (sy - y) * k;
            }
        }
        Placement {
            cx: x * w,
            cy: y * h,
            h: ph,
            angle_deg: angle,
        }
    }
}

/// One clip of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipPlan {
    /// File stem, `clip-01`...
    pub name: String,
    /// Seeds everything about the clip.
    pub seed: u64,
    /// Length.
    pub duration_ms: u64,
    /// The backdrop photo (a name in [`MATE_NATURE_PHOTOS`]).
    pub photo: String,
    /// Backdrop blur, pixels at 720 lines.
    pub blur_sigma: f32,
    /// Camera shake, pixels at 720 lines.
    pub shake_px: f32,
    /// Whether the camera pans across the backdrop.
    pub pan: bool,
    /// The appearances, by start time.
    pub appearances: Vec<Appearance>,
}

/// What a split's plan is made from.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Seeds the whole split.
    pub seed: u64,
    /// How many clips.
    pub clips: usize,
    /// Shortest and longest clip, ms.
    pub duration_ms: (u64, u64),
    /// The split's catalog: SKU and aspect (width over height of the trimmed art).
    pub catalog: &'a [(String, f32)],
    /// Look-alikes, the same way.
    pub lookalikes: &'a [(String, f32)],
    /// Fraction of appearances that are look-alikes.
    pub lookalike_share: f32,
    /// Frame size, to keep products inside it.
    pub width: u32,
    /// See `width`.
    pub height: u32,
}

/// Deals products from a shuffled deck, reshuffling when empty: every product is shown about
/// as often as every other.
struct Deck<'a> {
    all: &'a [(String, f32)],
    left: Vec<usize>,
}

impl<'a> Deck<'a> {
    fn new(all: &'a [(String, f32)]) -> Self {
        Deck {
            all,
            left: Vec::new(),
        }
    }

    fn deal(&mut self, rng: &mut Rng, not: &str) -> Option<(String, f32)> {
        if self.all.is_empty() {
            return None;
        }
        for _ in 0..2 {
            if self.left.is_empty() {
                self.left = (0..self.all.len()).collect();
                // Fisher-Yates with the seeded generator.
                for i in (1..self.left.len()).rev() {
                    let j = below(rng, i + 1);
                    self.left.swap(i, j);
                }
            }
            if let Some(pos) = self.left.iter().position(|&i| self.all[i].0 != not) {
                let i = self.left.remove(pos);
                return Some(self.all[i].clone());
            }
            self.left.clear();
        }
        None
    }
}

fn below(rng: &mut Rng, n: usize) -> usize {
    ((rng.next_f32() * n as f32) as usize).min(n.saturating_sub(1))
}

fn ms(rng: &mut Rng, lo: f32, hi: f32) -> u64 {
    (rng.range(lo, hi) * 1000.0 / 100.0).round() as u64 * 100
}

/// Half the on-screen extent (x, y) of a product of height `hf` (fraction of frame height) and
/// aspect `aspect` tilted by up to `deg`, in frame fractions, zoom included.
fn half_extent(hf: f32, aspect: f32, deg: f32, zoom: f32, w: f32, h: f32) -> (f32, f32) {
    let ph = hf * h * (1.0 + zoom);
    let pw = ph * aspect;
    let (s, c) = deg.to_radians().abs().sin_cos();
    ((pw * c + ph * s) / 2.0 / w, (pw * s + ph * c) / 2.0 / h)
}

struct Slot {
    start_ms: u64,
    end_ms: u64,
    /// Horizontal range of centres allowed: the whole frame, or a half when shared.
    x_range: (f32, f32),
    max_height: f32,
}

fn appearance(
    rng: &mut Rng,
    input: &PlanInput<'_>,
    slot: &Slot,
    sku: String,
    aspect: f32,
    in_catalog: bool,
) -> Appearance {
    let (w, h) = (input.width as f32, input.height as f32);
    let duration = slot.end_ms - slot.start_ms;
    // Sizes spread evenly in log scale from 0.15 to the slot's maximum of the frame height.
    let mut height = (0.15f32.ln() + rng.next_f32() * (slot.max_height.ln() - 0.15f32.ln())).exp();
    // Wide products are limited by the frame's width instead.
    let max_w = (slot.x_range.1 - slot.x_range.0) * 0.95;
    if height * h * aspect / w > max_w {
        height = max_w * w / (aspect * h);
    }
    let tilt_deg = if rng.next_f32() < 0.4 {
        rng.range(-5.0, 5.0)
    } else {
        rng.range(-20.0, 20.0)
    };
    let rock_deg = rng.range(0.0, 5.0);
    let zoom = rng.range(0.0, 0.1);
    let (hx, hy) = half_extent(height, aspect, tilt_deg.abs() + rock_deg, zoom, w, h);
    let place = |rng: &mut Rng| -> (f32, f32) {
        let (x0, x1) = (slot.x_range.0 + hx, slot.x_range.1 - hx);
        let x = if x1 > x0 {
            rng.range(x0, x1)
        } else {
            (slot.x_range.0 + slot.x_range.1) / 2.0
        };
        let y = if 1.0 - hy > hy {
            rng.range(hy, 1.0 - hy)
        } else {
            0.5
        };
        (x, y)
    };
    let first = place(rng);
    let mut poses = vec![Pose {
        at_ms: 0,
        move_ms: 0,
        x: first.0,
        y: first.1,
    }];
    let entry = if rng.next_f32() < 0.5 {
        Transition::Cut
    } else {
        Transition::Slide {
            ms: ms(rng, 0.3, 0.6),
        }
    };
    let exit = if rng.next_f32() < 0.5 {
        Transition::Cut
    } else {
        Transition::Slide {
            ms: ms(rng, 0.3, 0.6),
        }
    };
    // Up to two quick moves to another resting place while held: the motion-blurred frames.
    let held = (entry.ms(), duration.saturating_sub(exit.ms()));
    let moves = if rng.next_f32() < 0.45 {
        0
    } else {
        1 + usize::from(rng.next_f32() < 0.3)
    };
    for k in 0..moves {
        let span = held.1.saturating_sub(held.0);
        if span < 1500 {
            break;
        }
        let at = held.0 + span * (k as u64 + 1) / (moves as u64 + 1) + ms(rng, 0.0, 0.3);
        let move_ms = ms(rng, 0.2, 0.45);
        if at + move_ms + 300 > held.1 {
            break;
        }
        let (x, y) = place(rng);
        poses.push(Pose {
            at_ms: at,
            move_ms,
            x,
            y,
        });
    }
    // Bright and dim lights are both common in studios: spread brightness on a log scale.
    let light = Light {
        brightness: (rng.range(0.7f32.ln(), 1.3f32.ln())).exp(),
        contrast: rng.range(0.75, 1.2),
        warmth: rng.range(-1.0, 1.0),
    };
    let hand = (rng.next_f32() < 0.4).then(|| {
        let whole = rng.next_f32() < 0.4;
        let (from_ms, to_ms) = if whole {
            (0, duration)
        } else {
            let len = (duration as f32 * rng.range(0.3, 0.7)) as u64;
            let from = (rng.next_f32() * (duration - len) as f32) as u64;
            (from, from + len)
        };
        Hand {
            from_deg: [0.0, 90.0, 180.0][below(rng, 3)] + rng.range(-25.0, 25.0),
            along: rng.range(0.3, 0.7),
            cover: rng.range(0.08, 0.3),
            tone: below(rng, 6),
            from_ms,
            to_ms,
        }
    });
    Appearance {
        sku,
        in_catalog,
        start_ms: slot.start_ms,
        end_ms: slot.end_ms,
        height,
        poses,
        entry,
        exit,
        tilt_deg,
        rock_deg,
        rock_period_ms: ms(rng, 2.0, 5.0),
        zoom,
        light,
        hand,
        seed: (rng.next_f32() * 1e6) as u64,
    }
}

/// Plans a split: `input.clips` clips, each with one or two products at a time and gaps
/// between them, about `lookalike_share` of the appearances being look-alikes.
pub fn plan_split(input: &PlanInput<'_>) -> Vec<ClipPlan> {
    let mut rng = Rng::new(input.seed);
    let mut catalog = Deck::new(input.catalog);
    let mut lookalikes = Deck::new(input.lookalikes);
    let mut photos: Vec<usize> = Vec::new();
    let mut clips = Vec::with_capacity(input.clips);
    for n in 0..input.clips {
        let seed = input.seed.wrapping_mul(1000).wrapping_add(n as u64 + 1);
        let (lo, hi) = input.duration_ms;
        let duration_ms = if hi > lo {
            ms(&mut rng, lo as f32 / 1000.0, hi as f32 / 1000.0)
        } else {
            lo
        };
        // Backdrops go round all the photos before any repeats.
        if photos.is_empty() {
            photos = (0..MATE_NATURE_PHOTOS.len()).collect();
        }
        let photo = MATE_NATURE_PHOTOS[photos.remove(below(&mut rng, photos.len()))].to_string();
        let mut deal = |rng: &mut Rng, not: &str| -> Option<(String, f32, bool)> {
            if rng.next_f32() < input.lookalike_share {
                if let Some((s, a)) = lookalikes.deal(rng, not) {
                    return Some((s, a, false));
                }
            }
            catalog.deal(rng, not).map(|(s, a)| (s, a, true))
        };
        let mut appearances = Vec::new();
        let mut t = ms(&mut rng, 0.6, 2.0);
        while t + 3000 + 500 <= duration_ms {
            let left = duration_ms - 500 - t;
            let len = ms(&mut rng, 3.0, 7.0).min(left);
            let pair = len >= 3000 && rng.next_f32() < 0.3;
            let mut end = t + len;
            if pair {
                let second_start = t + ms(&mut rng, 0.8, 2.0);
                let second_len = ms(&mut rng, 3.0, 6.0).min(duration_ms - 500 - second_start);
                let first_left = rng.next_f32() < 0.5;
                let halves = [(0.0, 0.5), (0.5, 1.0)];
                let (a_range, b_range) = if first_left {
                    (halves[0], halves[1])
                } else {
                    (halves[1], halves[0])
                };
                let Some((a, a_aspect, a_cat)) = deal(&mut rng, "") else {
                    break;
                };
                let Some((b, b_aspect, b_cat)) = deal(&mut rng, &a) else {
                    break;
                };
                let slot_a = Slot {
                    start_ms: t,
                    end_ms: t + len,
                    x_range: a_range,
                    max_height: 0.5,
                };
                let slot_b = Slot {
                    start_ms: second_start,
                    end_ms: second_start + second_len.max(1000),
                    x_range: b_range,
                    max_height: 0.5,
                };
                appearances.push(appearance(&mut rng, input, &slot_a, a, a_aspect, a_cat));
                appearances.push(appearance(&mut rng, input, &slot_b, b, b_aspect, b_cat));
                end = end.max(slot_b.end_ms);
            } else {
                let Some((a, aspect, cat)) = deal(&mut rng, "") else {
                    break;
                };
                let slot = Slot {
                    start_ms: t,
                    end_ms: t + len,
                    x_range: (0.0, 1.0),
                    max_height: 0.8,
                };
                appearances.push(appearance(&mut rng, input, &slot, a, aspect, cat));
            }
            t = end + ms(&mut rng, 0.8, 2.5);
        }
        appearances.sort_by_key(|a| a.start_ms);
        clips.push(ClipPlan {
            name: format!("clip-{:02}", n + 1),
            seed,
            duration_ms,
            photo,
            blur_sigma: rng.range(0.6, 2.5),
            shake_px: if rng.next_f32() < 0.5 {
                rng.range(0.5, 3.0)
            } else {
                0.0
            },
            pan: rng.next_f32() < 0.6,
            appearances,
        });
    }
    clips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products(prefix: &str) -> Vec<(String, f32)> {
        (0..15)
            .map(|i| (format!("{prefix}-{i:02}"), 0.4 + i as f32 * 0.15))
            .collect()
    }

    fn input<'a>(cat: &'a [(String, f32)], look: &'a [(String, f32)]) -> PlanInput<'a> {
        PlanInput {
            seed: 11,
            clips: 10,
            duration_ms: (20_000, 30_000),
            catalog: cat,
            lookalikes: look,
            lookalike_share: 0.33,
            width: 1280,
            height: 720,
        }
    }

    #[test]
    fn plans_are_deterministic_and_balanced() {
        let (cat, look) = (products("CAT"), products("LOOK"));
        let plan = plan_split(&input(&cat, &look));
        assert_eq!(plan, plan_split(&input(&cat, &look)));
        assert_eq!(plan.len(), 10);
        let all: Vec<&Appearance> = plan.iter().flat_map(|c| &c.appearances).collect();
        let looks = all.iter().filter(|a| !a.in_catalog).count();
        let share = looks as f32 / all.len() as f32;
        assert!((0.2..0.45).contains(&share), "look-alike share {share}");
        for (sku, _) in &cat {
            assert!(all.iter().any(|a| &a.sku == sku), "{sku} never shown");
        }
        for a in &all {
            assert_eq!(a.in_catalog, a.sku.starts_with("CAT"), "{}", a.sku);
        }
    }

    #[test]
    fn one_or_two_at_a_time_with_gaps_inside_the_clip() {
        let (cat, look) = (products("CAT"), products("LOOK"));
        for clip in plan_split(&input(&cat, &look)) {
            assert!((20_000..=30_000).contains(&clip.duration_ms));
            assert!(clip.appearances.len() >= 2, "{}", clip.name);
            let mut empty = 0;
            for t in (0..clip.duration_ms).step_by(100) {
                let on: Vec<_> = clip.appearances.iter().filter(|a| a.active(t)).collect();
                assert!(on.len() <= 2, "{} at {t}", clip.name);
                if on.len() == 2 {
                    assert_ne!(on[0].sku, on[1].sku);
                }
                empty += usize::from(on.is_empty());
            }
            assert!(empty >= 10, "{}: no gaps", clip.name);
            for a in &clip.appearances {
                assert!(a.end_ms < clip.duration_ms && a.end_ms - a.start_ms >= 1000);
                assert!((0.1..=0.81).contains(&a.height), "{}", a.height);
                assert!(a.tilt_deg.abs() <= 20.0);
                if let Some(h) = a.hand {
                    assert!(h.cover <= 0.3 && h.to_ms <= a.end_ms - a.start_ms);
                }
            }
        }
    }

    #[test]
    fn products_rest_inside_the_frame_and_slide_in_from_outside() {
        let (cat, look) = (products("CAT"), products("LOOK"));
        let plan = plan_split(&input(&cat, &look));
        let aspect = |sku: &str| {
            cat.iter()
                .chain(&look)
                .find(|p| p.0 == sku)
                .map(|p| p.1)
                .expect("planned from these")
        };
        let mut slid = 0;
        for a in plan.iter().flat_map(|c| &c.appearances) {
            let (from, to) = a.held_ms();
            let p = a.placement((from + to) / 2, 1280, 720, aspect(&a.sku));
            assert!(
                (0.0..1280.0).contains(&p.cx) && (0.0..720.0).contains(&p.cy),
                "{p:?}"
            );
            if let Transition::Slide { .. } = a.entry {
                slid += 1;
                let p0 = a.placement(a.start_ms, 1280, 720, aspect(&a.sku));
                let off = p0.cx < 0.0 || p0.cx > 1280.0 || p0.cy > 720.0;
                assert!(off, "starts outside: {p0:?}");
            }
        }
        assert!(slid > 5);
    }
}
