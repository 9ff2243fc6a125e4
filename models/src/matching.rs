//! One frame against the catalog, after the backbone: regional descriptors shortlist the
//! products, mid-level cells verify them. The agent's recogniser and the per-frame benchmark
//! both run this, so the benchmark times what the agent does.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use crate::appearance::FramePixels;
use crate::descriptor::{regional_descriptors, CatalogIndex, Match, RegionGrid, RegionScores};
use crate::efficientnet::{EfficientNetLite0, MID_TAP_BLOCK};
use crate::preprocess::rgb_to_tensor;
use crate::verify::{cells, competition, Similarities, Verified, VerifyParams, ViewSet};

/// How much a zoomed region is enlarged: a product a fifth of the frame high (90 pixels at
/// 768x448) spans 5-6 cells of the stride-16 map, most of them half background; twice as large,
/// thin or small products (scissors, a phone, a bag in a corner) that had given 2-4 inliers gave
/// 9-22 (split B).
pub const ZOOM: usize = 2;

/// A shortlisted product's region is zoomed only when it covers at most this much of the frame
/// (R-MAC's finest windows: a 224 px square at 768x448, 0.15 of it), so the zoom costs at most
/// about 0.6 of a frame's pass up to the mid-level tap.
const ZOOM_MAX_AREA: f32 = 0.16;

/// A product verified with fewer inliers than this in the whole frame may be zoomed into.
const ZOOM_BELOW: usize = 8;

/// How much an expected product's last box is grown on each side, in box widths and heights,
/// to make the region zoomed into: room for it to have moved a little since. Only a quarter: a
/// small product's box is already larger than it (a bag 0.11 x 0.20 of the frame had a box of
/// 0.17 x 0.27, test split, clip 5), and the region must stay under [`ZOOM_MAX_AREA`].
const EXPECTED_MARGIN: f32 = 0.25;

/// How much a box found in the frame is grown on each side for a second look at it: the
/// product has not moved, the margin is only context for the cells on its outline. Grown by
/// [`EXPECTED_MARGIN`], a clock 0.21 x 0.36 of the frame was too large to zoom into.
const SECOND_LOOK_MARGIN: f32 = 0.1;

/// `[x0, y0, x1, y1]` grown by `margin` of its width and height on each side, inside the frame.
fn grown([x0, y0, x1, y1]: [f32; 4], margin: f32) -> [f32; 4] {
    let (dx, dy) = ((x1 - x0) * margin, (y1 - y0) * margin);
    [
        (x0 - dx).max(0.0),
        (y0 - dy).max(0.0),
        (x1 + dx).min(1.0),
        (y1 + dy).min(1.0),
    ]
}

/// A product expected in the frame: one the caller holds an appearance of open, at its last
/// box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    /// Index into `global.products()`.
    pub product: usize,
    /// Where it was last seen, normalised `[x0, y0, x1, y1]`.
    pub bbox: [f32; 4],
}

/// What [`ProductIndex::candidates`] needs to look at one region again, enlarged.
#[derive(Debug, Clone, Copy)]
pub struct Zoom<'a> {
    /// The model the frame's maps came from.
    pub model: &'a EfficientNetLite0,
    /// Products expected in the frame, in order of priority: the first one the frame misses is
    /// looked for where it was.
    pub expected: &'a [Expected],
}

/// Why a region is zoomed into.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    /// A product the frame verified only on its likeness, at `seen_at`, and the caller does not
    /// expect yet: enlarged, the product passes with many inliers, while a look-alike drawn like
    /// it fails ([`passes_second_look`]) and its sighting in the frame is dropped.
    SecondLook {
        /// The frame's box of it.
        seen_at: [f32; 4],
    },
    /// An expected product the frame missed or verified weakly: it is likely still there.
    Expected,
    /// The best-ranked shortlisted product the frame missed or verified weakly.
    Shortlisted,
}

/// The product a zoom is for, the region it enlarges and why.
#[derive(Debug, Clone)]
struct ZoomTarget {
    product: usize,
    region: [f32; 4],
    why: Why,
    /// Other products verified in the region too: for [`Why::Shortlisted`], the weak
    /// shortlisted products whose own best small region it is.
    also: Vec<usize>,
}

/// What a frame is matched against: global descriptors shortlist candidates, reference views
/// verify them.
#[derive(Debug)]
pub struct ProductIndex {
    /// Regional-descriptor index (one row per reference photo).
    pub global: CatalogIndex,
    /// Reference views of each product, in `global.products()` order.
    pub views: Vec<ViewSet>,
}

/// The frame a match is made on: the backbone's outputs and the pixels they came from.
#[derive(Debug, Clone, Copy)]
pub struct FrameFeatures<'a> {
    /// The head's `(1, 1280, h/32, w/32)` map.
    pub features: &'a Tensor,
    /// The mid-level tap's `(1, C, h/16, w/16)` map.
    pub mid: &'a Tensor,
    /// The frame's pixels (for the cells' colours, the likeness and the zoom).
    pub pixels: FramePixels<'a>,
}

/// A shortlisted product that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index into `global.products()`.
    pub product: usize,
    /// Its best view's verification (its box in the frame; its transform, in the zoomed region
    /// when `zoomed`).
    pub verified: Verified,
    /// Whether it was verified in the zoomed region, not the whole frame.
    pub zoomed: bool,
}

impl ProductIndex {
    /// Verifies the products whose regional descriptors some region of the frame resembles most
    /// (at most `shortlist` of them, best first) and returns those that pass, in shortlist order.
    ///
    /// The shortlist is not only for speed: each frame cell's competition floor comes from the
    /// other shortlisted products, and verifying every product of a 15-product catalog raised
    /// those floors and lost 2 of 34 appearances on the tune split (a large suitcase, a
    /// half-hidden book).
    ///
    /// With `zoom`, one small region is looked at again, [`ZOOM`] times larger: around a product
    /// the frame verified only on its likeness and nobody expects yet (a second look), or around
    /// the first expected product the whole frame did not verify well (under 8 inliers), or else
    /// the best small region of the best-ranked shortlisted product not verified well. Every
    /// shortlisted product is compared with its cells, for the competition between them, but
    /// only that product is verified there (with [`VerifyParams::zoomed`]), with, in a
    /// shortlisted product's region, the other weak shortlisted products whose own best small
    /// region it is; each is kept if it has more inliers than the frame's match, its box carried
    /// back to the frame, and comes last when the frame had not found it. A product that fails
    /// its second look (lined up but not alike, or not found while inside the frame) is dropped
    /// from the frame's candidates.
    pub fn candidates(
        &self,
        frame: FrameFeatures<'_>,
        grid: &RegionGrid,
        shortlist: usize,
        params: &VerifyParams,
        zoom: Option<Zoom<'_>>,
    ) -> Result<Vec<Candidate>> {
        let regions = regional_descriptors(frame.features, grid)?;
        let scores = self.global.score(&regions)?;
        let shortlisted: Vec<Match> = scores
            .best_per_product()
            .into_iter()
            .take(shortlist)
            .collect();
        let products: Vec<usize> = shortlisted.iter().map(|m| m.product).collect();
        let mut found =
            self.verify_shortlist(&products, frame.mid, frame.pixels, params, |_| true)?;
        let Some(Zoom { model, expected }) = zoom else {
            return Ok(found);
        };
        let Some(ZoomTarget {
            product: target,
            region,
            why,
            also,
        }) = self.zoom_target(&shortlisted, &found, &scores, expected, params)
        else {
            return Ok(found);
        };
        let mut products = products;
        if !products.contains(&target) {
            // an expected product the regional descriptors did not shortlist (a hand over it)
            products.push(target);
        }
        let zoomed = Zoomed::new(&frame.pixels, region);
        let (zw, zh) = zoomed.size;
        let x = rgb_to_tensor(&zoomed.rgb, zw, zh, zw * 3, frame.mid.device())?;
        let mid = model.mid_features(&x, MID_TAP_BLOCK)?;
        let rules = params.zoomed(ZOOM);
        // a second look measures the likeness without holding the product to it, to tell a
        // look-alike (it lines up and does not look alike) from what the zoom cannot judge
        let look = match why {
            Why::SecondLook { .. } => rules.likeness_measured_only(),
            Why::Expected | Why::Shortlisted => rules.clone(),
        };
        let closer = self.verify_shortlist(
            &products,
            &mid,
            FramePixels::new(&zoomed.rgb, zoomed.size, zw * 3),
            &look,
            // only the products the region was chosen for: a look-alike wall clock beside the
            // scissors a zoom was aimed at passed there as the catalog clock (test split, clip 2)
            |p| p == target || also.contains(&p),
        )?;
        if let Why::SecondLook { seen_at } = why {
            let looked = closer.iter().find(|c| c.product == target);
            if !passes_second_look(looked, seen_at, &rules) {
                found.retain(|f| f.product != target);
                return Ok(found);
            }
        }
        for mut c in closer {
            c.verified.bbox = zoomed.to_frame(c.verified.bbox);
            c.zoomed = true;
            match found.iter_mut().find(|f| f.product == c.product) {
                Some(f) if f.verified.inliers >= c.verified.inliers => {}
                Some(f) => *f = c,
                None => found.push(c),
            }
        }
        Ok(found)
    }

    /// The product to zoom in on and the region to enlarge, if any.
    ///
    /// First a second look ([`Why::SecondLook`]) at the first product `found` on its likeness
    /// (too few inliers to be exempt from it) that is not expected, around its box grown by
    /// [`SECOND_LOOK_MARGIN`], if small. It comes first because a look-alike's sightings confirm
    /// it in two or three frames: a camera just gone, still expected, held the zoom while a
    /// wall clock passed as the alarm clock (tune split of seed 777, clip 3).
    ///
    /// Then the first of `expected` that `found` lacks or holds weakly (under [`ZOOM_BELOW`]
    /// inliers) and whose box, grown by [`EXPECTED_MARGIN`], is small: a product confirmed a
    /// moment ago is most likely still there, under a hand or blurred.
    ///
    /// Otherwise the best-scoring shortlisted product that `found` lacks or holds weakly, and its
    /// best small region. Its own best region may be the whole frame: a small product's
    /// descriptor scores highest where the region holds all of it, whatever else it holds. The
    /// other weak shortlisted products whose best small region is the same one are verified
    /// there too ([`ZoomTarget::also`]): a white bag 0.09 x 0.16 of the frame, a hand over a
    /// quarter of it, ranked 3rd-6th, under a mug that was not on screen, whose best small
    /// region was the bag's (seed 20261202, clip 6): the zoom looked at the bag for 5 s and
    /// verified only the mug there; the bag, verified too, passes on 5-10 inliers.
    /// Only those: a region another product's descriptor does not point to is where look-alikes
    /// of it pass (a wall clock beside the scissors a zoom was aimed at, test split, clip 2).
    ///
    /// "Small" is at most [`ZOOM_MAX_AREA`] of the frame.
    fn zoom_target(
        &self,
        shortlisted: &[Match],
        found: &[Candidate],
        scores: &RegionScores<'_>,
        expected: &[Expected],
        params: &VerifyParams,
    ) -> Option<ZoomTarget> {
        let weak = |product: usize| {
            found
                .iter()
                .find(|c| c.product == product)
                .is_none_or(|c| c.verified.inliers < ZOOM_BELOW)
        };
        let small = |&[x0, y0, x1, y1]: &[f32; 4]| (x1 - x0) * (y1 - y0) <= ZOOM_MAX_AREA;
        let target = |product: usize, region: [f32; 4], why: Why| {
            small(&region).then_some(ZoomTarget {
                product,
                region,
                why,
                also: Vec::new(),
            })
        };
        let is_expected = |product: usize| expected.iter().any(|e| e.product == product);
        found
            .iter()
            .filter(|c| c.verified.inliers < params.likeness_exempt && !is_expected(c.product))
            .find_map(|c| {
                let seen_at = c.verified.bbox;
                let region = grown(seen_at, SECOND_LOOK_MARGIN);
                target(c.product, region, Why::SecondLook { seen_at })
            })
            .or_else(|| {
                expected
                    .iter()
                    .filter(|e| weak(e.product))
                    .find_map(|e| target(e.product, grown(e.bbox, EXPECTED_MARGIN), Why::Expected))
            })
            .or_else(|| {
                let mut weak_ones = shortlisted.iter().filter(|m| weak(m.product));
                let m = weak_ones.next()?;
                let region = scores.best_region_for(m.product, small)?.bbox;
                let also = weak_ones
                    .filter(|o| {
                        scores
                            .best_region_for(o.product, small)
                            .is_some_and(|r| r.bbox == region)
                    })
                    .map(|o| o.product)
                    .collect();
                Some(ZoomTarget {
                    product: m.product,
                    region,
                    why: Why::Shortlisted,
                    also,
                })
            })
    }

    /// Verifies those of `products` that `verify` picks against the frame (or zoomed region)
    /// whose mid-level map is `mid` and whose pixels are `pixels`; returns those that pass, in
    /// `products`' order. Every one of `products` is compared with the cells all the same: the
    /// competition floors come from all of them.
    fn verify_shortlist(
        &self,
        products: &[usize],
        mid: &Tensor,
        pixels: FramePixels<'_>,
        params: &VerifyParams,
        verify: impl Fn(usize) -> bool + Sync,
    ) -> Result<Vec<Candidate>> {
        let cells = cells(mid, |_, _| true)?.with_colours(
            pixels.rgb,
            pixels.size,
            pixels.stride,
            |_, _| 1.0,
        );
        let cells_t = Tensor::from_slice(&cells.desc, (cells.len(), cells.dim), mid.device())?;
        let sims = products
            .iter()
            .map(|&p| self.views[p].similarities(&cells, &cells_t))
            .collect::<Result<Vec<_>>>()?;
        let floors = competition(&sims.iter().map(Similarities::row_max).collect::<Vec<_>>());
        // products are verified independently: one a thread
        Ok(products
            .par_iter()
            .zip(&sims)
            .zip(&floors)
            .filter(|((&product, _), _)| verify(product))
            .filter_map(|((&product, sims), floor)| {
                let (_, verified) =
                    self.views[product].verify(&cells, sims, Some(floor), params, Some(&pixels))?;
                Some(Candidate {
                    product,
                    verified,
                    zoomed: false,
                })
            })
            .collect())
    }
}

/// Whether the frame's sighting of a product, at `seen_at`, stands after a second look whose
/// best match, verified with the likeness measured only, is `closer`.
///
/// It falls if the zoom lines the product up and `rules` refuse its likeness (a look-alike: the
/// wall clock drawn like the alarm clock lined up with 14-17 inliers and edges of 0.18-0.27,
/// tune split of seed 777, clip 3), or if the zoom finds nothing of a product whose box lies
/// inside the frame. A box cut by the frame's edge may be a product coming in, half outside: the
/// zoom saw too little of a guitar, a bottle, a camera and a laptop sliding in to verify them,
/// and dropping those sightings delayed their `new` by a frame.
fn passes_second_look(
    closer: Option<&Candidate>,
    [x0, y0, x1, y1]: [f32; 4],
    rules: &VerifyParams,
) -> bool {
    match closer {
        Some(c) => c
            .verified
            .likeness
            .is_none_or(|l| !rules.refuses(c.verified.inliers, &l)),
        None => x0 <= 0.0 || y0 <= 0.0 || x1 >= 1.0 || y1 >= 1.0,
    }
}

/// The mid-level map's stride: a zoomed region is whole cells of it.
const CELL: usize = 16;

/// A region of the frame enlarged [`ZOOM`] times (bilinear), as packed RGB.
struct Zoomed {
    rgb: Vec<u8>,
    size: (usize, usize),
    /// The region in the frame, in pixels: `x, y, width, height`.
    window: [usize; 4],
    frame: (usize, usize),
}

impl Zoomed {
    /// `region` (normalised) of `frame`, snapped to whole [`CELL`]s.
    fn new(frame: &FramePixels<'_>, region: [f32; 4]) -> Self {
        let (rgb, (w, h), stride) = (frame.rgb, frame.size, frame.stride);
        // whole cells, at least one, inside the frame
        let span = |lo: f32, hi: f32, len: usize| {
            let snap = |v: f32| ((v * len as f32 / CELL as f32).round() as usize * CELL).min(len);
            let start = snap(lo).min(len.saturating_sub(CELL));
            (start, snap(hi).max(start + CELL).min(len))
        };
        let (x0, x1) = span(region[0], region[2], w);
        let (y0, y1) = span(region[1], region[3], h);
        let (cw, ch) = (x1 - x0, y1 - y0);
        let mut crop = image::RgbImage::new(cw as u32, ch as u32);
        for (y, row) in crop.rows_mut().enumerate() {
            let src = &rgb[(y0 + y) * stride + x0 * 3..][..cw * 3];
            for (px, s) in row.zip(src.chunks_exact(3)) {
                px.0.copy_from_slice(s);
            }
        }
        let (zw, zh) = (cw * ZOOM, ch * ZOOM);
        let big = image::imageops::resize(
            &crop,
            zw as u32,
            zh as u32,
            image::imageops::FilterType::Triangle,
        );
        Zoomed {
            rgb: big.into_raw(),
            size: (zw, zh),
            window: [x0, y0, cw, ch],
            frame: (w, h),
        }
    }

    /// A box normalised to the zoomed region, normalised to the frame.
    fn to_frame(&self, [bx0, by0, bx1, by1]: [f32; 4]) -> [f32; 4] {
        let [x, y, cw, ch] = self.window.map(|v| v as f32);
        let (w, h) = (self.frame.0 as f32, self.frame.1 as f32);
        [
            (x + bx0 * cw) / w,
            (y + by0 * ch) / h,
            (x + bx1 * cw) / w,
            (y + by1 * ch) / h,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zoomed_region_is_whole_cells_enlarged_and_boxes_go_back_to_the_frame() {
        // a 64x48 frame, grey, with a red square at 16..48 x 16..32
        let (w, h) = (64, 48);
        let stride = w * 3 + 5;
        let mut rgb = vec![128u8; stride * h];
        for y in 16..32 {
            for x in 16..48 {
                rgb[y * stride + x * 3..][..3].copy_from_slice(&[200, 10, 10]);
            }
        }
        // a region a little off the cell grid snaps to it
        let z = Zoomed::new(
            &FramePixels::new(&rgb, (w, h), stride),
            [0.27, 0.3, 0.74, 0.7],
        );
        assert_eq!(z.window, [16, 16, 32, 16]);
        assert_eq!(z.size, (32 * ZOOM, 16 * ZOOM));
        assert_eq!(z.rgb.len(), z.size.0 * z.size.1 * 3);
        // inside the square, the enlargement is the square's colour
        let (zw, zh) = z.size;
        let mid = (zh / 2 * zw + zw / 2) * 3;
        assert_eq!(&z.rgb[mid..mid + 3], &[200, 10, 10]);
        // the zoomed region's whole box is the window's box in the frame
        let back = z.to_frame([0.0, 0.0, 1.0, 1.0]);
        let want = [16.0 / 64.0, 16.0 / 48.0, 48.0 / 64.0, 32.0 / 48.0];
        for (b, e) in back.iter().zip(want) {
            assert!((b - e).abs() < 1e-6, "{back:?} vs {want:?}");
        }
        // a region off the frame's edge keeps at least a cell inside it
        let edge = Zoomed::new(
            &FramePixels::new(&rgb, (w, h), stride),
            [0.99, 0.99, 1.0, 1.0],
        );
        let [x, y, cw, ch] = edge.window;
        assert!(
            cw >= 16 && ch >= 16 && x + cw <= w && y + ch <= h,
            "{:?}",
            edge.window
        );
    }

    #[test]
    fn a_zoom_at_a_shortlisted_products_region_also_verifies_the_others_it_is_best_for() {
        use crate::descriptor::Regions;
        use candle_core::Device;
        // products a, b, c, d, one photo each, on channels 0-3
        let one_hot = |i: usize| (0..4).map(|c| if c == i { 1.0 } else { 0.0 }).collect();
        let index = CatalogIndex::new(
            ["a", "b", "c", "d"]
                .iter()
                .enumerate()
                .map(|(i, id)| (id.to_string(), one_hot(i)))
                .collect(),
            &Device::Cpu,
        )
        .expect("index");
        let left = [0.0, 0.0, 0.25, 0.5];
        let (right, corner) = ([0.5, 0.5, 0.75, 1.0], [0.75, 0.0, 1.0, 0.5]);
        let unit = |v: [f32; 4]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.map(|x| x / n)
        };
        // the whole frame and the left window are a's; b wins only the corner, but scores
        // higher in the left window (0.60 against 0.54); c wins the right window, d no region
        let rows = [
            ([0.0, 0.0, 1.0, 1.0], unit([0.9, 0.1, 0.1, 0.0])),
            (left, unit([0.8, 0.6, 0.0, 0.0])),
            (right, unit([0.3, 0.0, 0.7, 0.0])),
            (corner, unit([0.45, 0.5, 0.45, 0.45])),
        ];
        let descriptors: Vec<f32> = rows.iter().flat_map(|(_, d)| *d).collect();
        let regions = Regions {
            descriptors: Tensor::from_vec(descriptors, (rows.len(), 4), &Device::Cpu)
                .expect("tensor"),
            boxes: rows.iter().map(|(b, _)| *b).collect(),
        };
        let scores = index.score(&regions).expect("scores");
        let shortlisted = scores.best_per_product();
        let ranked: Vec<usize> = shortlisted.iter().map(|m| m.product).collect();
        assert_eq!(ranked, [0, 2, 1], "a, c, b; d wins no region");
        let products = ProductIndex {
            global: index.clone(),
            views: Vec::new(),
        };
        let params = VerifyParams::default();
        let t = products
            .zoom_target(&shortlisted, &[], &scores, &[], &params)
            .expect("a zoom");
        // a's best small window, where b is verified too: its own best small window, though
        // it is ranked after a there; not c, whose best window is elsewhere
        assert_eq!((t.product, t.region, t.why), (0, left, Why::Shortlisted));
        assert_eq!(t.also, [1]);
    }

    #[test]
    fn an_expected_box_is_grown_on_every_side_inside_the_frame() {
        let g = grown([0.4, 0.4, 0.6, 0.8], 0.25);
        let want = [0.35, 0.3, 0.65, 0.9];
        for (v, e) in g.iter().zip(want) {
            assert!((v - e).abs() < 1e-6, "{g:?} vs {want:?}");
        }
        // at the frame's corner it stops at the edges
        assert_eq!(grown([0.0, 0.9, 0.2, 1.0], 0.25)[..2], [0.0, 0.875]);
        assert_eq!(grown([0.0, 0.9, 0.2, 1.0], 0.25)[2..], [0.25, 1.0]);
    }

    #[test]
    fn a_second_look_drops_a_look_alike_and_what_it_cannot_see_inside_the_frame() {
        use crate::appearance::Likeness;
        use crate::verify::Similarity;
        let candidate = |bbox: [f32; 4], inliers: usize, likeness: Option<Likeness>| {
            let t = Similarity {
                a: [1.0, 0.0],
                b: [0.0, 0.0],
            };
            Candidate {
                product: 3,
                verified: Verified {
                    inliers,
                    pairs: inliers + 2,
                    transform: t,
                    bbox,
                    spread: 0.5,
                    agreement: 0.3,
                    likeness,
                    fitted: t,
                },
                zoomed: false,
            }
        };
        let rules = VerifyParams::default().zoomed(ZOOM);
        let inside = [0.6, 0.45, 0.8, 0.85];
        let at_edge = [0.6, 0.0, 0.8, 0.35];
        let likeness = |pixels, edges, tone| Likeness {
            pixels,
            edges,
            tone,
        };
        let zoomed = |pixels, edges| candidate(inside, 10, Some(likeness(pixels, edges, None)));
        // lined up, with its face's pixels alike and its outline not: a look-alike
        let look_alike = zoomed(0.45, 0.23);
        assert!(!passes_second_look(Some(&look_alike), inside, &rules));
        assert!(!passes_second_look(Some(&look_alike), at_edge, &rules));
        // lined up and alike, or with inliers enough to be exempt from the likeness
        assert!(passes_second_look(Some(&zoomed(0.45, 0.6)), inside, &rules));
        let exempt = rules.likeness_exempt;
        let unlike = Some(likeness(0.1, 0.1, None));
        assert!(passes_second_look(
            Some(&candidate(inside, exempt, unlike)),
            inside,
            &rules
        ));
        // but never in another tone
        let light = Some(likeness(0.9, 0.9, Some(rules.max_tone + 0.1)));
        assert!(!passes_second_look(
            Some(&candidate(inside, exempt, light)),
            inside,
            &rules
        ));
        // not measured (too little of it in the zoom) is not held against it
        assert!(passes_second_look(
            Some(&candidate(inside, 10, None)),
            inside,
            &rules
        ));
        // nothing found: inside the frame the sighting falls, cut by its edge it stands
        assert!(!passes_second_look(None, inside, &rules));
        assert!(passes_second_look(None, at_edge, &rules));
    }
}
