//! Scoring recognition against the evaluation set's truth: a pure function from truth and
//! `new` events to recall, precision, time to first detection and the breakdowns that say
//! which products and conditions fail. No files, no processes: the report binary does the I/O.
//!
//! Rules: a catalog appearance is found when a `new` event names its SKU at a `pts_ms` from its
//! first frame up to `slack_ms` after its last. Each `new` event is right at most once: the
//! first `new` for an appearance is right; a second one for the same appearance, one for a
//! look-alike, one for another product, and one with nothing on screen are all wrong.

use std::collections::BTreeMap;

use serde::Serialize;
use spotter_protocol::{EventType, ProductEvent};

use crate::clipgen::eval::EvalTruth;

/// Scoring options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scoring {
    /// How long after an appearance's end a `new` for it still counts (decoding and
    /// confirmation take time).
    pub slack_ms: u64,
}

impl Default for Scoring {
    /// One second of slack.
    fn default() -> Self {
        Scoring { slack_ms: 1000 }
    }
}

/// What one clip contributes: its truth and every event the agent printed for it.
#[derive(Debug, Clone)]
pub struct ClipInput {
    /// Name for the report (`clip-01`).
    pub name: String,
    /// Backdrop, for the breakdown by backdrop.
    pub backdrop: Option<String>,
    /// Ground truth.
    pub truth: Vec<EvalTruth>,
    /// The agent's events, in the order printed (only `new` ones are scored).
    pub events: Vec<ProductEvent>,
}

/// Why a `new` event was wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wrong {
    /// A second `new` for an appearance that already had one.
    Duplicate,
    /// A look-alike (not in the catalog) was on screen.
    LookAlike {
        /// The look-alike shown.
        shown: String,
    },
    /// Another catalog product was on screen, not the one named.
    WrongProduct {
        /// What was shown.
        shown: String,
    },
    /// Nothing was on screen.
    NothingShown,
}

impl Wrong {
    /// A short label for counts.
    pub fn label(&self) -> &'static str {
        match self {
            Wrong::Duplicate => "duplicate",
            Wrong::LookAlike { .. } => "look-alike",
            Wrong::WrongProduct { .. } => "wrong product",
            Wrong::NothingShown => "nothing shown",
        }
    }
}

/// A wrong `new` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FalseEvent {
    /// The SKU the event named.
    pub sku: String,
    /// When.
    pub pts_ms: u64,
    /// Its score.
    pub score: f32,
    /// Why it is wrong.
    pub wrong: Wrong,
}

/// A catalog appearance no right `new` event was found for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Miss {
    /// The product.
    pub sku: String,
    /// When it was shown.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// How it was shown, in words.
    pub how: String,
}

/// A right `new` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The product.
    pub sku: String,
    /// When the appearance started.
    pub start_ms: u64,
    /// When the event came, from the appearance's start.
    pub latency_ms: u64,
}

/// One clip's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipReport {
    /// The clip.
    pub name: String,
    /// Catalog appearances.
    pub catalog_appearances: usize,
    /// Look-alike appearances.
    pub lookalike_appearances: usize,
    /// Right `new` events.
    pub hits: Vec<Hit>,
    /// Catalog appearances missed.
    pub misses: Vec<Miss>,
    /// Wrong `new` events.
    pub false_events: Vec<FalseEvent>,
}

/// One product's results across the split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkuReport {
    /// The product.
    pub sku: String,
    /// In the catalog (false: a look-alike).
    pub in_catalog: bool,
    /// Times shown.
    pub appearances: usize,
    /// Appearances found (catalog products only).
    pub found: usize,
    /// Wrong `new` events naming this SKU.
    pub named_wrongly: usize,
    /// Wrong `new` events while this product (a look-alike, or another catalog product) was
    /// the one on screen.
    pub drew_false: usize,
}

/// Recall over the catalog appearances of one bucket of one condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionRow {
    /// The condition (`size`, `tilt`, ...).
    pub condition: &'static str,
    /// The bucket (`small (< 0.25 h)`, ...).
    pub bucket: String,
    /// Catalog appearances in it.
    pub appearances: usize,
    /// Found.
    pub found: usize,
    /// Median time to the first right event, ms.
    pub median_latency_ms: Option<u64>,
}

/// Latency statistics, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// How many right events.
    pub n: usize,
    /// Median (nearest rank).
    pub median_ms: u64,
    /// 90th percentile (nearest rank).
    pub p90_ms: u64,
    /// Largest.
    pub max_ms: u64,
}

/// The whole split's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Options used.
    pub scoring: Scoring,
    /// Found catalog appearances over catalog appearances (None: no catalog appearance).
    pub recall: Option<f64>,
    /// Right `new` events over all `new` events (None: no `new` event).
    pub precision: Option<f64>,
    /// Time from an appearance's first frame to its right `new` event.
    pub latency: Option<Latency>,
    /// Catalog appearances.
    pub catalog_appearances: usize,
    /// Of which found.
    pub found: usize,
    /// All `new` events.
    pub new_events: usize,
    /// Of which right.
    pub right_events: usize,
    /// Wrong events by reason.
    pub wrong_by_reason: BTreeMap<&'static str, usize>,
    /// Look-alike appearances.
    pub lookalike_appearances: usize,
    /// Look-alike appearances during which at least one wrong event came.
    pub lookalikes_that_drew_events: usize,
    /// Look-alike appearances during which a right event was `update`d while its product was
    /// off screen (past the slack): the look-alike taken for that product while its event was
    /// still open, which no `new` shows
    /// (a chrome clock shown seconds after the catalog's black one, split of seed 20261201,
    /// clip 8, kept the black one's event going).
    pub lookalikes_that_held_events: usize,
    /// Per clip.
    pub clips: Vec<ClipReport>,
    /// Per product, by SKU.
    pub skus: Vec<SkuReport>,
    /// Recall by condition.
    pub conditions: Vec<ConditionRow>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(values: &[u64]) -> Option<Latency> {
    let mut v = values.to_vec();
    v.sort_unstable();
    (!v.is_empty()).then(|| Latency {
        n: v.len(),
        median_ms: percentile(&v, 50.0),
        p90_ms: percentile(&v, 90.0),
        max_ms: v[v.len() - 1],
    })
}

/// How an appearance was shown, in a few words, for miss lists.
fn describe(t: &EvalTruth) -> String {
    let c = &t.conditions;
    let mut parts = vec![
        format!("h {:.2}", c.height),
        format!("tilt {:.0}°", c.max_tilt_deg),
    ];
    if c.hand_cover > 0.0 {
        parts.push(format!("hand {:.0}%", c.hand_cover * 100.0));
    }
    if c.fast_moves > 0 {
        parts.push(format!("{} fast move(s)", c.fast_moves));
    }
    parts.push(format!("light {:.2}", c.light.brightness));
    parts.join(", ")
}

/// The buckets an appearance falls in, one a condition.
fn buckets(t: &EvalTruth, backdrop: Option<&str>) -> Vec<(&'static str, String)> {
    let c = &t.conditions;
    let size = match c.height {
        h if h < 0.25 => "small (< 0.25 h)",
        h if h < 0.5 => "medium (0.25-0.5 h)",
        _ => "large (>= 0.5 h)",
    };
    let tilt = match c.max_tilt_deg {
        a if a < 8.0 => "upright (< 8°)",
        a if a < 15.0 => "tilted 8-15°",
        _ => "tilted >= 15°",
    };
    let hand = match c.hand_cover {
        h if h <= 0.0 => "no hand",
        h if h <= 0.15 => "hand <= 15%",
        _ => "hand > 15%",
    };
    let motion = if c.fast_moves == 0 {
        "still"
    } else {
        "fast moves (blur)"
    };
    let light = match c.light.brightness {
        b if b < 0.85 => "dim (< 0.85)",
        b if b > 1.15 => "bright (> 1.15)",
        _ => "normal",
    };
    let entry = match c.entry {
        crate::clipgen::eval::Transition::Cut => "cut in",
        crate::clipgen::eval::Transition::Slide { .. } => "slides in",
    };
    let mut out = vec![
        ("size", size.to_string()),
        ("tilt", tilt.to_string()),
        ("hand", hand.to_string()),
        ("motion", motion.to_string()),
        ("light", light.to_string()),
        ("entry", entry.to_string()),
    ];
    if let Some(b) = backdrop {
        out.push(("backdrop", b.to_string()));
    }
    out
}

/// Scores every clip and sums up.
pub fn score(clips: &[ClipInput], scoring: Scoring) -> Report {
    let mut clip_reports = Vec::with_capacity(clips.len());
    let mut skus: BTreeMap<String, SkuReport> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut cond: BTreeMap<(&'static str, String), (usize, usize, Vec<u64>)> = BTreeMap::new();
    let mut wrong_by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut new_events, mut right_events) = (0, 0);
    let (mut lookalike_appearances, mut lookalikes_that_drew) = (0, 0);
    let mut lookalikes_that_held = 0;

    for clip in clips {
        let truth = &clip.truth;
        for t in truth {
            let s = skus.entry(t.sku.clone()).or_insert_with(|| SkuReport {
                sku: t.sku.clone(),
                in_catalog: t.in_catalog,
                appearances: 0,
                found: 0,
                named_wrongly: 0,
                drew_false: 0,
            });
            s.appearances += 1;
        }
        let mut news: Vec<&ProductEvent> = clip
            .events
            .iter()
            .filter(|e| e.kind == EventType::New)
            .collect();
        news.sort_by_key(|e| (e.pts_ms, e.seq));
        // The right `new` event for each truth entry, by index.
        let mut matched: Vec<Option<u64>> = vec![None; truth.len()];
        let mut lookalike_drew = vec![false; truth.len()];
        let mut false_events = Vec::new();
        // the events whose `new` was right: their appearances' own
        let mut right_ids: Vec<&str> = Vec::new();
        let on_screen = |i: usize, pts: u64| {
            let t = &truth[i];
            t.start_ms <= pts && pts < t.end_ms + scoring.slack_ms
        };
        for e in news {
            new_events += 1;
            let candidates: Vec<usize> = (0..truth.len())
                .filter(|&i| truth[i].in_catalog && truth[i].sku == e.sku && on_screen(i, e.pts_ms))
                .collect();
            if let Some(&i) = candidates.iter().find(|&&i| matched[i].is_none()) {
                let lat = e.pts_ms - truth[i].start_ms;
                matched[i] = Some(lat);
                right_events += 1;
                right_ids.push(&e.event_id);
                continue;
            }
            let wrong = if !candidates.is_empty() {
                Wrong::Duplicate
            } else {
                // Blame what was really there: a look-alike first (the hard case), then
                // another product; prefer one that is on screen proper over one in its slack.
                let shown: Vec<usize> = (0..truth.len())
                    .filter(|&i| on_screen(i, e.pts_ms))
                    .collect();
                let pick = |catalog: bool| {
                    let of_kind: Vec<usize> = shown
                        .iter()
                        .copied()
                        .filter(|&i| truth[i].in_catalog == catalog)
                        .collect();
                    of_kind
                        .iter()
                        .copied()
                        .find(|&i| truth[i].end_ms > e.pts_ms)
                        .or(of_kind.first().copied())
                };
                match (pick(false), pick(true)) {
                    (Some(i), _) => {
                        lookalike_drew[i] = true;
                        Wrong::LookAlike {
                            shown: truth[i].sku.clone(),
                        }
                    }
                    (None, Some(i)) => Wrong::WrongProduct {
                        shown: truth[i].sku.clone(),
                    },
                    (None, None) => Wrong::NothingShown,
                }
            };
            if let Some(s) = skus.get_mut(&e.sku) {
                s.named_wrongly += 1;
            } else {
                skus.insert(
                    e.sku.clone(),
                    SkuReport {
                        sku: e.sku.clone(),
                        in_catalog: true,
                        appearances: 0,
                        found: 0,
                        named_wrongly: 1,
                        drew_false: 0,
                    },
                );
            }
            match &wrong {
                Wrong::LookAlike { shown } | Wrong::WrongProduct { shown } => {
                    if let Some(s) = skus.get_mut(shown) {
                        s.drew_false += 1;
                    }
                }
                Wrong::Duplicate | Wrong::NothingShown => {}
            }
            *wrong_by_reason.entry(wrong.label()).or_default() += 1;
            false_events.push(FalseEvent {
                sku: e.sku.clone(),
                pts_ms: e.pts_ms,
                score: e.score,
                wrong,
            });
        }
        // an `update` of a right event while none of its product's appearances is on screen
        let stray_updates: Vec<u64> = clip
            .events
            .iter()
            .filter(|e| e.kind == EventType::Update && right_ids.contains(&e.event_id.as_str()))
            .filter(|e| {
                !(0..truth.len())
                    .any(|i| truth[i].in_catalog && truth[i].sku == e.sku && on_screen(i, e.pts_ms))
            })
            .map(|e| e.pts_ms)
            .collect();
        let mut hits = Vec::new();
        let mut misses = Vec::new();
        for (i, t) in truth.iter().enumerate() {
            if !t.in_catalog {
                lookalike_appearances += 1;
                lookalikes_that_drew += usize::from(lookalike_drew[i]);
                lookalikes_that_held += usize::from(
                    stray_updates
                        .iter()
                        .any(|&pts| t.start_ms <= pts && pts < t.end_ms),
                );
                continue;
            }
            for key in buckets(t, clip.backdrop.as_deref()) {
                let row = cond.entry(key).or_default();
                row.0 += 1;
                if let Some(lat) = matched[i] {
                    row.1 += 1;
                    row.2.push(lat);
                }
            }
            match matched[i] {
                Some(lat) => {
                    latencies.push(lat);
                    if let Some(s) = skus.get_mut(&t.sku) {
                        s.found += 1;
                    }
                    hits.push(Hit {
                        sku: t.sku.clone(),
                        start_ms: t.start_ms,
                        latency_ms: lat,
                    });
                }
                None => misses.push(Miss {
                    sku: t.sku.clone(),
                    start_ms: t.start_ms,
                    end_ms: t.end_ms,
                    how: describe(t),
                }),
            }
        }
        let catalog_appearances = truth.iter().filter(|t| t.in_catalog).count();
        clip_reports.push(ClipReport {
            name: clip.name.clone(),
            catalog_appearances,
            lookalike_appearances: truth.len() - catalog_appearances,
            hits,
            misses,
            false_events,
        });
    }
    let catalog_appearances: usize = clip_reports.iter().map(|c| c.catalog_appearances).sum();
    let found = latencies.len();
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    Report {
        scoring,
        recall: ratio(found, catalog_appearances),
        precision: ratio(right_events, new_events),
        latency: latency(&latencies),
        catalog_appearances,
        found,
        new_events,
        right_events,
        wrong_by_reason,
        lookalike_appearances,
        lookalikes_that_drew_events: lookalikes_that_drew,
        lookalikes_that_held_events: lookalikes_that_held,
        clips: clip_reports,
        skus: skus.into_values().collect(),
        conditions: cond
            .into_iter()
            .map(
                |((condition, bucket), (appearances, found, lat))| ConditionRow {
                    condition,
                    bucket,
                    appearances,
                    found,
                    median_latency_ms: latency(&lat).map(|l| l.median_ms),
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clipgen::eval::{Conditions, Light, Transition};
    use spotter_protocol::{BBox, PROTOCOL_VERSION};

    fn truth(sku: &str, start_ms: u64, end_ms: u64, in_catalog: bool) -> EvalTruth {
        EvalTruth {
            sku: sku.into(),
            start_ms,
            end_ms,
            bbox: [0.2, 0.2, 0.6, 0.7],
            in_catalog,
            held_ms: [start_ms, end_ms],
            conditions: Conditions {
                height: 0.4,
                area: 0.1,
                max_tilt_deg: 3.0,
                hand_cover: 0.0,
                hand_ms: None,
                fast_moves: 0,
                entry: Transition::Cut,
                exit: Transition::Cut,
                light: Light {
                    brightness: 1.0,
                    contrast: 1.0,
                    warmth: 0.0,
                },
            },
            track: Vec::new(),
        }
    }

    fn event(kind: EventType, sku: &str, id: &str, pts_ms: u64) -> ProductEvent {
        ProductEvent {
            v: PROTOCOL_VERSION,
            kind,
            event_id: id.into(),
            session: None,
            seq: pts_ms,
            sku: sku.into(),
            score: 0.9,
            bbox: BBox([0.1, 0.1, 0.5, 0.5]),
            captured_at_ms: 1_800_000_000_000 + pts_ms,
            pts_ms,
        }
    }

    fn new(sku: &str, id: &str, pts_ms: u64) -> ProductEvent {
        event(EventType::New, sku, id, pts_ms)
    }

    #[test]
    fn a_lookalike_that_keeps_a_gone_products_event_going_is_counted() {
        // the clock leaves at 5 s; its look-alike comes at 6 s and the clock's event goes on
        let c = clip(
            vec![
                truth("CLK-1", 1000, 5000, true),
                truth("CLK-9", 6000, 9000, false),
            ],
            vec![
                new("CLK-1", "a", 1400),
                event(EventType::Update, "CLK-1", "a", 3000),
                event(EventType::Update, "CLK-1", "a", 7000),
            ],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(1.0), Some(1.0)));
        assert_eq!(
            (r.lookalikes_that_drew_events, r.lookalikes_that_held_events),
            (0, 1)
        );
        // an update while the clock itself is on screen (or just gone, within the slack) is its own
        let c = clip(
            vec![
                truth("CLK-1", 1000, 5000, true),
                truth("CLK-9", 4000, 9000, false),
            ],
            vec![
                new("CLK-1", "a", 1400),
                event(EventType::Update, "CLK-1", "a", 4500),
                event(EventType::Update, "CLK-1", "a", 5800),
            ],
        );
        assert_eq!(
            score(&[c], Scoring::default()).lookalikes_that_held_events,
            0
        );
        // a look-alike's own wrong event is a wrong `new`, not a held one
        let c = clip(
            vec![truth("CLK-9", 6000, 9000, false)],
            vec![
                new("CLK-1", "b", 6400),
                event(EventType::Update, "CLK-1", "b", 7000),
            ],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!(
            (r.lookalikes_that_drew_events, r.lookalikes_that_held_events),
            (1, 0)
        );
    }

    fn clip(truth: Vec<EvalTruth>, events: Vec<ProductEvent>) -> ClipInput {
        ClipInput {
            name: "clip-01".into(),
            backdrop: Some("Garden.jpg".into()),
            truth,
            events,
        }
    }

    #[test]
    fn every_appearance_found_once_scores_one_and_one() {
        let c = clip(
            vec![
                truth("MUG-1", 1000, 5000, true),
                truth("GTR-1", 7000, 9000, true),
            ],
            vec![
                new("MUG-1", "a", 1400),
                event(EventType::Update, "MUG-1", "a", 3000),
                event(EventType::End, "MUG-1", "a", 6000),
                new("GTR-1", "b", 7600),
            ],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(1.0), Some(1.0)));
        assert_eq!((r.new_events, r.right_events, r.found), (2, 2, 2));
        let lat = r.latency.expect("two hits");
        assert_eq!(
            (lat.n, lat.median_ms, lat.p90_ms, lat.max_ms),
            (2, 400, 600, 600)
        );
        assert!(r.clips[0].misses.is_empty() && r.clips[0].false_events.is_empty());
    }

    #[test]
    fn a_missed_appearance_lowers_recall_and_is_listed() {
        let c = clip(
            vec![
                truth("MUG-1", 1000, 5000, true),
                truth("GTR-1", 7000, 9000, true),
            ],
            vec![new("MUG-1", "a", 1400)],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(0.5), Some(1.0)));
        assert_eq!(r.clips[0].misses.len(), 1);
        assert_eq!(r.clips[0].misses[0].sku, "GTR-1");
        let gtr = r.skus.iter().find(|s| s.sku == "GTR-1").expect("listed");
        assert_eq!((gtr.appearances, gtr.found), (1, 0));
    }

    #[test]
    fn an_event_for_a_lookalike_lowers_precision_and_blames_it() {
        let c = clip(
            vec![
                truth("MUG-1", 1000, 5000, true),
                truth("MUG-9", 7000, 9000, false),
            ],
            vec![new("MUG-1", "a", 1400), new("MUG-1", "b", 7500)],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(1.0), Some(0.5)));
        assert_eq!(r.wrong_by_reason.get("look-alike"), Some(&1));
        assert_eq!(
            r.clips[0].false_events[0].wrong,
            Wrong::LookAlike {
                shown: "MUG-9".into()
            }
        );
        assert_eq!(
            (r.lookalike_appearances, r.lookalikes_that_drew_events),
            (1, 1)
        );
        let look = r.skus.iter().find(|s| s.sku == "MUG-9").expect("listed");
        assert_eq!((look.in_catalog, look.drew_false), (false, 1));
        let named = r.skus.iter().find(|s| s.sku == "MUG-1").expect("listed");
        assert_eq!(named.named_wrongly, 1);
    }

    #[test]
    fn a_second_new_for_one_appearance_is_a_duplicate() {
        let c = clip(
            vec![truth("MUG-1", 1000, 5000, true)],
            vec![new("MUG-1", "a", 1400), new("MUG-1", "b", 3000)],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(1.0), Some(0.5)));
        assert_eq!(r.clips[0].false_events[0].wrong, Wrong::Duplicate);
    }

    #[test]
    fn two_appearances_of_one_product_need_two_events() {
        let c = clip(
            vec![
                truth("MUG-1", 1000, 3000, true),
                truth("MUG-1", 6000, 8000, true),
            ],
            vec![new("MUG-1", "a", 1500), new("MUG-1", "b", 6200)],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(1.0), Some(1.0)));
        let lat = r.latency.expect("hits");
        assert_eq!((lat.median_ms, lat.max_ms), (200, 500));
    }

    #[test]
    fn wrong_product_late_event_and_empty_screen_are_wrong() {
        let c = clip(
            vec![
                truth("MUG-1", 1000, 3000, true),
                truth("GTR-1", 5000, 7000, true),
            ],
            vec![
                // Another catalog product named while the mug is shown.
                new("GTR-1", "a", 1500),
                // The mug, but more than the slack after it left: a miss and a wrong event.
                new("MUG-1", "b", 4500),
                // Nothing on screen at all.
                new("GTR-1", "c", 9500),
            ],
        );
        let r = score(&[c], Scoring::default());
        assert_eq!((r.recall, r.precision), (Some(0.0), Some(0.0)));
        let reasons: Vec<&Wrong> = r.clips[0].false_events.iter().map(|f| &f.wrong).collect();
        assert_eq!(
            reasons,
            [
                &Wrong::WrongProduct {
                    shown: "MUG-1".into()
                },
                &Wrong::NothingShown,
                &Wrong::NothingShown
            ]
        );
        // Within the slack it counts.
        let c = clip(
            vec![truth("MUG-1", 1000, 3000, true)],
            vec![new("MUG-1", "b", 3900)],
        );
        assert_eq!(score(&[c], Scoring::default()).recall, Some(1.0));
    }

    #[test]
    fn no_events_means_no_precision_and_zero_recall() {
        let r = score(
            &[clip(vec![truth("MUG-1", 1000, 3000, true)], Vec::new())],
            Scoring::default(),
        );
        assert_eq!((r.recall, r.precision, r.latency), (Some(0.0), None, None));
    }

    #[test]
    fn conditions_break_recall_down() {
        let mut small = truth("MUG-1", 1000, 3000, true);
        small.conditions.height = 0.15;
        let mut handheld = truth("GTR-1", 5000, 8000, true);
        handheld.conditions.hand_cover = 0.25;
        let r = score(
            &[clip(vec![small, handheld], vec![new("GTR-1", "a", 5500)])],
            Scoring::default(),
        );
        let row = |c: &str, b: &str| {
            r.conditions
                .iter()
                .find(|row| row.condition == c && row.bucket == b)
                .map(|row| (row.appearances, row.found))
        };
        assert_eq!(row("size", "small (< 0.25 h)"), Some((1, 0)));
        assert_eq!(row("hand", "hand > 15%"), Some((1, 1)));
        assert_eq!(row("hand", "no hand"), Some((1, 0)));
        assert_eq!(row("backdrop", "Garden.jpg"), Some((2, 1)));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=10).map(|i| i * 100).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 90.0), 900);
        assert_eq!(percentile(&[7], 90.0), 7);
    }
}
