//! The event lifecycle of product appearances, as a pure state machine: frames in (with their
//! time), events out. No clock, no I/O: the caller passes each frame's time.
//!
//! A product becomes a *candidate* at its first sighting (score >= `min_score`), is *confirmed*
//! (`new`) once it has `min_frames` sightings within the last `window` frames whose evidence adds
//! up to `confirm_evidence` (strong sightings confirm in two frames, weak ones need to persist),
//! gets `update`s on a significant change (at most one a second) or every `update_interval`, and
//! `end`s after `end_after` without a sighting. A dip of a frame or two keeps the same appearance
//! and `event_id`.

use std::collections::{BTreeMap, VecDeque};

use spotter_protocol::{
    BBox, EventType, OnScreen, OnScreenProduct, ProductEvent, PROTOCOL_VERSION,
};

use crate::config::TrackerConfig;

/// Changes of box overlap below this (intersection over union) are significant.
const SIGNIFICANT_IOU: f32 = 0.6;
/// Score changes at or above this are significant.
const SIGNIFICANT_SCORE: f32 = 0.1;
/// Significant changes are reported at most this often.
const MIN_UPDATE_GAP_MS: u64 = 1000;

/// One product seen in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Catalog SKU.
    pub sku: String,
    /// Recognition score, 0..=1.
    pub score: f32,
    /// How much this sighting counts towards confirming the product (the recognizer gives its
    /// verified inliers): summed over the window's sightings against `confirm_evidence`.
    pub evidence: f32,
    /// Normalised box.
    pub bbox: [f32; 4],
}

/// When a frame was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTime {
    /// Presentation time in the stream, ms: the tracker's clock.
    pub pts_ms: u64,
    /// Capture wall time, UTC ms.
    pub captured_at_ms: u64,
}

#[derive(Debug)]
enum Phase {
    Candidate,
    Confirmed {
        event_id: String,
        last_emit_ms: u64,
        emitted_score: f32,
        emitted_bbox: [f32; 4],
        since_ms: u64,
    },
}

#[derive(Debug)]
struct Track {
    phase: Phase,
    /// The last `window` frames since the first sighting: `Some(evidence)` if seen.
    window: VecDeque<Option<f32>>,
    last_seen_ms: u64,
    score: f32,
    bbox: [f32; 4],
}

impl Track {
    /// Sightings in the window and their summed evidence.
    fn evidence(&self) -> (usize, f32) {
        self.window
            .iter()
            .flatten()
            .fold((0, 0.0), |(n, sum), e| (n + 1, sum + e))
    }
}

/// Intersection over union of two normalised boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Tracks every product of one stream.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: BTreeMap<String, Track>,
    next_seq: u64,
    /// The session `next_seq` counts in (see `spotter_protocol::event`).
    session: String,
    /// Time of the last frame observed.
    last_ms: u64,
}

/// How long after its last sighting a product is still looked for where it was
/// ([`Tracker::expected`]). Up to `end_after` (3 s), a product that had left kept the zoom on
/// its empty place, and a guitar coming on screen was announced 0.8 s later than without
/// (split B, clip 5); a bag under a hand was found again by the zoom in the next frame.
pub const EXPECT_FOR_MS: u64 = 1000;

impl Tracker {
    /// A tracker whose first event will carry sequence number `first_seq`, in a new session of
    /// its own (a numbering kept only in memory restarts with the process).
    pub fn new(cfg: TrackerConfig, first_seq: u64) -> Self {
        Tracker {
            cfg,
            tracks: BTreeMap::new(),
            next_seq: first_seq,
            session: crate::outbox::durable::format_session(crate::outbox::durable::new_session()),
            last_ms: 0,
        }
    }

    /// Counts in `session`: the outbox's, whose stored sequence `first_seq` continues.
    pub fn with_session(mut self, session: String) -> Self {
        self.session = session;
        self
    }

    /// The session its events carry.
    pub fn session(&self) -> &str {
        &self.session
    }

    fn event(
        &mut self,
        kind: EventType,
        event_id: &str,
        sku: &str,
        score: f32,
        bbox: [f32; 4],
        t: FrameTime,
    ) -> ProductEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        ProductEvent {
            v: PROTOCOL_VERSION,
            kind,
            event_id: event_id.to_owned(),
            seq,
            session: Some(self.session.clone()),
            sku: sku.to_owned(),
            score: score.clamp(0.0, 1.0),
            bbox: BBox(bbox),
            captured_at_ms: t.captured_at_ms,
            pts_ms: t.pts_ms,
        }
    }

    /// Feeds one analysed frame; returns the events it causes, in order.
    pub fn observe(&mut self, t: FrameTime, detections: &[Detection]) -> Vec<ProductEvent> {
        let now = t.pts_ms;
        self.last_ms = now;
        let window = self.cfg.window;
        for track in self.tracks.values_mut() {
            track.window.push_back(None);
        }
        for d in detections.iter().filter(|d| d.score >= self.cfg.min_score) {
            let track = self.tracks.entry(d.sku.clone()).or_insert_with(|| Track {
                phase: Phase::Candidate,
                window: VecDeque::from([None]),
                last_seen_ms: now,
                score: d.score,
                bbox: d.bbox,
            });
            if let Some(slot) = track.window.back_mut() {
                *slot = Some(slot.map_or(d.evidence, |e: f32| e.max(d.evidence)));
            }
            track.last_seen_ms = now;
            track.score = d.score;
            track.bbox = d.bbox;
        }
        for track in self.tracks.values_mut() {
            while track.window.len() > window {
                track.window.pop_front();
            }
        }

        let mut out = Vec::new();
        let mut finished = Vec::new();
        let skus: Vec<String> = self.tracks.keys().cloned().collect();
        for sku in skus {
            let Some(track) = self.tracks.get(&sku) else {
                continue;
            };
            let seen_now = track.window.back().is_some_and(Option::is_some);
            let gone_for = now.saturating_sub(track.last_seen_ms);
            let (score, bbox) = (track.score, track.bbox);
            match &track.phase {
                Phase::Candidate => {
                    let (sightings, evidence) = track.evidence();
                    if sightings >= self.cfg.min_frames && evidence >= self.cfg.confirm_evidence {
                        let event_id = uuid::Uuid::new_v4().to_string();
                        let e = self.event(EventType::New, &event_id, &sku, score, bbox, t);
                        out.push(e);
                        if let Some(track) = self.tracks.get_mut(&sku) {
                            track.phase = Phase::Confirmed {
                                event_id,
                                last_emit_ms: now,
                                emitted_score: score,
                                emitted_bbox: bbox,
                                since_ms: t.captured_at_ms,
                            };
                        }
                    } else if gone_for >= self.cfg.end_after.as_millis() as u64 {
                        finished.push(sku);
                    }
                }
                Phase::Confirmed {
                    event_id,
                    last_emit_ms,
                    emitted_score,
                    emitted_bbox,
                    ..
                } => {
                    let event_id = event_id.clone();
                    if gone_for >= self.cfg.end_after.as_millis() as u64 {
                        let e = self.event(EventType::End, &event_id, &sku, score, bbox, t);
                        out.push(e);
                        finished.push(sku);
                        continue;
                    }
                    if !seen_now {
                        continue;
                    }
                    let since = now.saturating_sub(*last_emit_ms);
                    let significant = iou(bbox, *emitted_bbox) < SIGNIFICANT_IOU
                        || (score - emitted_score).abs() >= SIGNIFICANT_SCORE;
                    if since >= self.cfg.update_interval.as_millis() as u64
                        || (significant && since >= MIN_UPDATE_GAP_MS)
                    {
                        let e = self.event(EventType::Update, &event_id, &sku, score, bbox, t);
                        out.push(e);
                        if let Some(Track {
                            phase:
                                Phase::Confirmed {
                                    last_emit_ms,
                                    emitted_score,
                                    emitted_bbox,
                                    ..
                                },
                            ..
                        }) = self.tracks.get_mut(&sku)
                        {
                            *last_emit_ms = now;
                            *emitted_score = score;
                            *emitted_bbox = bbox;
                        }
                    }
                }
            }
        }
        for sku in finished {
            self.tracks.remove(&sku);
        }
        out
    }

    /// Ends every confirmed appearance (on shutdown or end of input).
    pub fn finish(&mut self, t: FrameTime) -> Vec<ProductEvent> {
        let tracks = std::mem::take(&mut self.tracks);
        let mut out = Vec::new();
        for (sku, track) in tracks {
            if let Phase::Confirmed { event_id, .. } = &track.phase {
                out.push(self.event(EventType::End, event_id, &sku, track.score, track.bbox, t));
            }
        }
        out
    }

    /// The products confirmed on screen and seen in the last [`EXPECT_FOR_MS`], with their last
    /// boxes, most recently seen first: where the recogniser should look for them in the next
    /// frame.
    pub fn expected(&self) -> Vec<(&str, [f32; 4])> {
        let mut open: Vec<(&String, &Track)> = self
            .tracks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Confirmed { .. }))
            .filter(|(_, t)| self.last_ms.saturating_sub(t.last_seen_ms) <= EXPECT_FOR_MS)
            .collect();
        // stable: ties keep the SKUs' order
        open.sort_by_key(|(_, t)| std::cmp::Reverse(t.last_seen_ms));
        open.into_iter()
            .map(|(s, t)| (s.as_str(), t.bbox))
            .collect()
    }

    /// What is confirmed on screen now, for the retained on-screen topic.
    pub fn onscreen(&self) -> OnScreen {
        OnScreen {
            v: PROTOCOL_VERSION,
            seq: self.next_seq.saturating_sub(1),
            session: Some(self.session.clone()),
            products: self
                .tracks
                .iter()
                .filter_map(|(sku, t)| match &t.phase {
                    Phase::Confirmed {
                        event_id, since_ms, ..
                    } => Some(OnScreenProduct {
                        event_id: event_id.clone(),
                        sku: sku.clone(),
                        score: t.score,
                        bbox: BBox(t.bbox),
                        since_ms: *since_ms,
                    }),
                    Phase::Candidate => None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> TrackerConfig {
        TrackerConfig {
            min_score: 0.5,
            confirm_evidence: 12.0,
            window: 5,
            min_frames: 2,
            update_interval: Duration::from_secs(5),
            end_after: Duration::from_millis(1500),
        }
    }

    fn t(ms: u64) -> FrameTime {
        FrameTime {
            pts_ms: ms,
            captured_at_ms: 1_000_000 + ms,
        }
    }

    /// A sighting whose evidence is its score's inliers (`n / (n + 8)`), as the recognizer
    /// reports them.
    fn seen(sku: &str, score: f32) -> Vec<Detection> {
        vec![Detection {
            sku: sku.into(),
            score,
            evidence: 8.0 * score / (1.0 - score),
            bbox: [0.2, 0.2, 0.6, 0.8],
        }]
    }

    /// Runs frames every 200 ms; `f(i)` gives frame i's detections.
    fn run(
        tr: &mut Tracker,
        frames: usize,
        f: impl Fn(usize) -> Vec<Detection>,
    ) -> Vec<ProductEvent> {
        (0..frames)
            .flat_map(|i| tr.observe(t(i as u64 * 200), &f(i)))
            .collect()
    }

    #[test]
    fn confirms_after_min_frames_and_ends_after_absence() {
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 30, |i| {
            if (5..15).contains(&i) {
                seen("A", 0.8)
            } else {
                vec![]
            }
        });
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventType::New, EventType::End]);
        assert_eq!(
            events[0].pts_ms,
            6 * 200,
            "confirmed on the second sighting"
        );
        assert_eq!(events[0].event_id, events[1].event_id);
        assert_eq!(events[1].seq, events[0].seq + 1);
        // last seen at frame 14 (2800 ms); ends once 1500 ms have passed
        assert_eq!(events[1].pts_ms, 2800 + 1600);
    }

    #[test]
    fn a_dip_of_two_frames_keeps_one_appearance() {
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 40, |i| {
            if (5..25).contains(&i) && i != 10 && i != 11 {
                seen("A", 0.8)
            } else if i == 12 {
                seen("A", 0.3) // below min_score: a miss
            } else {
                vec![]
            }
        });
        let news = events.iter().filter(|e| e.kind == EventType::New).count();
        let ends = events.iter().filter(|e| e.kind == EventType::End).count();
        assert_eq!((news, ends), (1, 1), "{events:?}");
        assert!(events.iter().all(|e| e.event_id == events[0].event_id));
    }

    #[test]
    fn a_single_flicker_is_not_confirmed() {
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 30, |i| {
            if i == 3 || i == 12 {
                seen("A", 0.9)
            } else {
                vec![]
            }
        });
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn weak_sightings_confirm_only_when_they_persist() {
        // 0.5 is 8 inliers: 8 + 8 reaches 12 on the second frame
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 3, |_| seen("A", 0.5));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].pts_ms, 200);
        // 0.2 is 2 inliers (counted only as min_score allows): 2 a frame never reaches 12 in 5
        let low = TrackerConfig {
            min_score: 0.1,
            ..cfg()
        };
        let mut tr = Tracker::new(low.clone(), 1);
        let events = run(&mut tr, 20, |_| seen("A", 0.2));
        assert!(events.is_empty(), "5 x 2 inliers < 12: {events:?}");
        // 0.3 is about 3.4 inliers: the fourth sighting in a row confirms
        let mut tr = Tracker::new(low, 1);
        let events = run(
            &mut tr,
            20,
            |i| if i % 7 < 5 { seen("A", 0.3) } else { vec![] },
        );
        assert_eq!(
            events.first().map(|e| e.pts_ms),
            Some(3 * 200),
            "{events:?}"
        );
    }

    #[test]
    fn heartbeat_updates_while_on_screen_and_significant_moves() {
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 60, |_| seen("A", 0.8));
        let updates: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventType::Update)
            .collect();
        // confirmed at 200 ms; heartbeats every 5 s up to 11.8 s
        assert_eq!(updates.len(), 2, "{events:?}");
        let mut tr = Tracker::new(cfg(), 1);
        let events = run(&mut tr, 20, |i| {
            let mut d = seen("A", 0.8);
            if i >= 10 {
                d[0].bbox = [0.6, 0.1, 0.95, 0.5];
            }
            d
        });
        let update = events
            .iter()
            .find(|e| e.kind == EventType::Update)
            .expect("moved");
        assert_eq!(update.pts_ms, 2000);
        assert_eq!(update.bbox, BBox([0.6, 0.1, 0.95, 0.5]));
    }

    #[test]
    fn two_products_are_independent_and_onscreen_lists_confirmed() {
        let mut tr = Tracker::new(cfg(), 10);
        let both = |_| {
            let mut d = seen("A", 0.9);
            d.extend(seen("B", 0.7));
            d
        };
        let events = run(&mut tr, 3, both);
        assert_eq!(events.len(), 2);
        assert_ne!(events[0].event_id, events[1].event_id);
        assert_eq!(events[0].seq, 10);
        let snap = tr.onscreen();
        assert_eq!(snap.products.len(), 2);
        assert_eq!(snap.seq, 11);
        let ends = tr.finish(t(1000));
        assert_eq!(ends.len(), 2);
        assert!(ends.iter().all(|e| e.kind == EventType::End));
        assert!(tr.onscreen().products.is_empty());
    }

    #[test]
    fn iou_basics() {
        assert!((iou([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]) - 1.0).abs() < 1e-6);
        assert_eq!(iou([0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]), 0.0);
    }

    #[test]
    fn expected_products_are_the_confirmed_ones_most_recently_seen_first() {
        let mut tr = Tracker::new(cfg(), 1);
        let at = |sku: &str, score: f32, x: f32| Detection {
            sku: sku.into(),
            score,
            evidence: 8.0 * score / (1.0 - score),
            bbox: [x, 0.1, x + 0.2, 0.4],
        };
        // A and B confirmed on frames 0-1; C only a candidate
        tr.observe(t(0), &[at("A", 0.8, 0.0), at("B", 0.8, 0.5)]);
        tr.observe(
            t(200),
            &[at("A", 0.8, 0.0), at("B", 0.8, 0.5), at("C", 0.6, 0.3)],
        );
        // then only B, having moved
        tr.observe(t(400), &[at("B", 0.8, 0.6)]);
        assert_eq!(
            tr.expected(),
            vec![("B", [0.6, 0.1, 0.8, 0.4]), ("A", [0.0, 0.1, 0.2, 0.4])]
        );
        // A stays expected for EXPECT_FOR_MS after it was last seen (200 ms), though its
        // appearance is still open (end_after 1.5 s)
        tr.observe(t(200 + EXPECT_FOR_MS), &[at("B", 0.8, 0.6)]);
        assert_eq!(tr.expected().len(), 2);
        tr.observe(t(400 + EXPECT_FOR_MS), &[at("B", 0.8, 0.6)]);
        assert_eq!(tr.expected(), vec![("B", [0.6, 0.1, 0.8, 0.4])]);
        assert_eq!(tr.onscreen().products.len(), 2, "A is still on screen");
    }
}
