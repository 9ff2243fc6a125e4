//! Regional descriptors pooled from one feature map (the R-MAC family: Tolias, Sicre & Jégou,
//! ICLR 2016), and the catalog index they are matched against by cosine similarity.
//!
//! One backbone pass a frame gives a `C x h x w` map; every region of a multi-scale grid is
//! max-pooled into an L2-normalised `C`-vector, so a product filling a tenth of the frame still
//! dominates the descriptor of some region, and that region is the product's box.

use candle_core::{Device, Result, Tensor};

/// Regions of a feature map, in feature-map cells: `(y, x, height, width)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionGrid {
    /// Number of scales; scale `l` uses square windows of side `2 * min(h, w) / (l + 1)`.
    pub levels: usize,
}

impl Default for RegionGrid {
    fn default() -> Self {
        RegionGrid { levels: 3 }
    }
}

impl RegionGrid {
    /// The regions for an `h x w` map: the whole map, then R-MAC's overlapping square windows.
    pub fn regions(&self, h: usize, w: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut out = vec![(0, 0, h, w)];
        for l in 1..=self.levels {
            let side = (2 * h.min(w) / (l + 1)).max(1);
            if side >= h && side >= w {
                continue;
            }
            let positions = |len: usize| -> Vec<usize> {
                if side >= len {
                    return vec![0];
                }
                // about 40 % overlap between neighbours, first and last flush with the edges
                let n = ((len - side) as f32 / (0.6 * side as f32)).ceil() as usize + 1;
                (0..n).map(|i| i * (len - side) / (n - 1)).collect()
            };
            for y in positions(h) {
                for x in positions(w) {
                    let r = (y, x, side.min(h), side.min(w));
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }
}

/// L2-normalised descriptors of a set of regions, with their boxes normalised to the frame.
#[derive(Debug, Clone)]
pub struct Regions {
    /// `(R, C)`, each row of unit length.
    pub descriptors: Tensor,
    /// `[x0, y0, x1, y1]` per row, within 0..=1.
    pub boxes: Vec<[f32; 4]>,
}

/// Max-pools every region of `grid` over a `(1, C, h, w)` feature map.
pub fn regional_descriptors(features: &Tensor, grid: &RegionGrid) -> Result<Regions> {
    let (_, c, h, w) = features.dims4()?;
    // channels-last, so that pooling a region is an elementwise maximum of whole C-vectors,
    // which vectorises (per channel plane, a scalar maximum over each region took 8 ms a frame
    // at 768x448)
    let planes: Vec<f32> = features.flatten_all()?.to_vec1()?;
    let mut map = vec![0f32; planes.len()];
    for (ch, plane) in planes.chunks_exact(h * w).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            map[i * c + ch] = v;
        }
    }
    let regions = grid.regions(h, w);
    let mut descs = vec![f32::NEG_INFINITY; regions.len() * c];
    let mut boxes = Vec::with_capacity(regions.len());
    for (&(ry, rx, rh, rw), desc) in regions.iter().zip(descs.chunks_exact_mut(c)) {
        for y in ry..ry + rh {
            for cell in map[(y * w + rx) * c..(y * w + rx + rw) * c].chunks_exact(c) {
                for (m, &v) in desc.iter_mut().zip(cell) {
                    *m = if v > *m { v } else { *m };
                }
            }
        }
        normalise(desc);
        boxes.push([
            rx as f32 / w as f32,
            ry as f32 / h as f32,
            (rx + rw) as f32 / w as f32,
            (ry + rh) as f32 / h as f32,
        ]);
    }
    Ok(Regions {
        descriptors: Tensor::from_vec(descs, (regions.len(), c), features.device())?,
        boxes,
    })
}

/// The whole-map descriptor only (what a reference photo is indexed by).
pub fn global_descriptor(features: &Tensor) -> Result<Vec<f32>> {
    let r = regional_descriptors(features, &RegionGrid { levels: 0 })?;
    r.descriptors.flatten_all()?.to_vec1()
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The best region for one product.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// Index of the product in the index's product list.
    pub product: usize,
    /// Cosine similarity of the best (region, reference photo) pair.
    pub score: f32,
    /// That region's box.
    pub bbox: [f32; 4],
}

/// Reference descriptors of every product's photos.
#[derive(Debug, Clone)]
pub struct CatalogIndex {
    products: Vec<String>,
    /// product index of each reference row
    owners: Vec<usize>,
    /// `(C, M)`: references as columns, ready for a matrix product
    references_t: Option<Tensor>,
}

impl CatalogIndex {
    /// Builds the index from `(product id, unit-length descriptor)` pairs, several per product.
    pub fn new(references: Vec<(String, Vec<f32>)>, device: &Device) -> Result<Self> {
        let mut products: Vec<String> = Vec::new();
        let mut owners = Vec::with_capacity(references.len());
        let mut flat = Vec::new();
        let mut dim = None;
        for (id, mut d) in references {
            if *dim.get_or_insert(d.len()) != d.len() {
                candle_core::bail!("reference descriptors of different lengths for {id}");
            }
            normalise(&mut d);
            let owner = match products.iter().position(|p| *p == id) {
                Some(i) => i,
                None => {
                    products.push(id);
                    products.len() - 1
                }
            };
            owners.push(owner);
            flat.extend(d);
        }
        let references_t = match dim {
            Some(c) => Some(
                Tensor::from_vec(flat, (owners.len(), c), device)?
                    .t()?
                    .contiguous()?,
            ),
            None => None,
        };
        Ok(CatalogIndex {
            products,
            owners,
            references_t,
        })
    }

    /// Product ids in index order.
    pub fn products(&self) -> &[String] {
        &self.products
    }

    /// Number of reference photos.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether no photo is indexed.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Cosine similarity of every region of `regions` to every reference photo, for the
    /// questions [`RegionScores`] answers.
    pub fn score<'a>(&'a self, regions: &'a Regions) -> Result<RegionScores<'a>> {
        let sims = match &self.references_t {
            Some(refs) => regions.descriptors.matmul(refs)?.to_vec2()?,
            None => Vec::new(),
        };
        Ok(RegionScores {
            index: self,
            boxes: &regions.boxes,
            sims,
        })
    }
}

/// Every region of a frame against every reference photo of a [`CatalogIndex`], computed once
/// for the shortlist and the zoom.
#[derive(Debug)]
pub struct RegionScores<'a> {
    index: &'a CatalogIndex,
    boxes: &'a [[f32; 4]],
    /// rows: regions; columns: reference photos (none for an empty index)
    sims: Vec<Vec<f32>>,
}

impl RegionScores<'_> {
    /// For every product, its best-scoring region among the regions where it beats every other
    /// product (so one look-alike region does not report two products); best first.
    pub fn best_per_product(&self) -> Vec<Match> {
        let owners = &self.index.owners;
        let mut best: Vec<Option<Match>> = vec![None; self.index.products.len()];
        for (row, bbox) in self.sims.iter().zip(self.boxes) {
            let Some((m, &score)) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) else {
                continue;
            };
            let p = owners[m];
            if best[p].as_ref().is_none_or(|b| score > b.score) {
                best[p] = Some(Match {
                    product: p,
                    score,
                    bbox: *bbox,
                });
            }
        }
        let mut out: Vec<Match> = best.into_iter().flatten().collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }

    /// `product`'s best-scoring region among those `keep` accepts (by box), whichever product
    /// wins it; `None` when there is no such region (or no reference).
    pub fn best_region_for(
        &self,
        product: usize,
        keep: impl Fn(&[f32; 4]) -> bool,
    ) -> Option<Match> {
        let mut best: Option<Match> = None;
        for (row, bbox) in self.sims.iter().zip(self.boxes) {
            if !keep(bbox) {
                continue;
            }
            let score = row
                .iter()
                .zip(&self.index.owners)
                .filter(|(_, &p)| p == product)
                .map(|(&s, _)| s)
                .fold(f32::NEG_INFINITY, f32::max);
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(Match {
                    product,
                    score,
                    bbox: *bbox,
                });
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_the_map_with_the_whole_first() {
        let g = RegionGrid::default();
        let r = g.regions(7, 12);
        assert_eq!(r[0], (0, 0, 7, 12));
        assert!(r.len() > 5, "{r:?}");
        for &(y, x, h, w) in &r {
            assert!(y + h <= 7 && x + w <= 12, "{r:?}");
        }
        // the right and bottom edges are reached at every level
        assert!(r.iter().skip(1).any(|&(_, x, _, w)| x + w == 12));
    }

    /// An index of product a (channel 0) and product b (channel 1), one photo each.
    fn two_products() -> CatalogIndex {
        CatalogIndex::new(
            vec![
                ("a".into(), vec![1.0, 0.0, 0.0, 0.0]),
                ("b".into(), vec![0.0, 1.0, 0.0, 0.0]),
            ],
            &Device::Cpu,
        )
        .expect("index")
    }

    #[test]
    fn index_picks_the_region_that_holds_the_product() {
        // a 4-channel 2x2 map: channel 0 strong top-left, channel 1 strong bottom-right
        let mut map = vec![0.1f32; 4 * 2 * 2];
        map[0] = 5.0; // ch 0, (0,0)
        map[4 + 3] = 5.0; // ch 1, (1,1)
        let f = Tensor::from_vec(map, (1, 4, 2, 2), &Device::Cpu).expect("tensor");
        let regions = regional_descriptors(&f, &RegionGrid { levels: 2 }).expect("regions");
        let index = two_products();
        let best = index.score(&regions).expect("scores").best_per_product();
        assert_eq!(best.len(), 2);
        let a = best.iter().find(|m| m.product == 0).expect("a");
        assert_eq!(a.bbox, [0.0, 0.0, 0.5, 0.5]);
        let b = best.iter().find(|m| m.product == 1).expect("b");
        assert_eq!(b.bbox, [0.5, 0.5, 1.0, 1.0]);
        assert!(a.score > 0.9 && b.score > 0.9);
    }

    #[test]
    fn a_products_best_region_among_those_kept() {
        // channel 0 strong top-left and channel 1 a little everywhere: the whole map scores
        // best for product a, the top-left window best among the windows
        let mut map = vec![0.1f32; 4 * 2 * 2];
        map[0] = 5.0;
        let f = Tensor::from_vec(map, (1, 4, 2, 2), &Device::Cpu).expect("tensor");
        let regions = regional_descriptors(&f, &RegionGrid { levels: 2 }).expect("regions");
        let index = two_products();
        let scores = index.score(&regions).expect("scores");
        let small = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]) <= 0.25;
        let best = scores.best_region_for(0, small).expect("a region");
        assert_eq!((best.product, best.bbox), (0, [0.0, 0.0, 0.5, 0.5]));
        // product b's best window is one without channel 0's peak
        let b = scores.best_region_for(1, small).expect("a region");
        assert_ne!(b.bbox, [0.0, 0.0, 0.5, 0.5]);
        assert!(b.score < best.score);
        let none = scores.best_region_for(0, |_| false);
        assert_eq!(none, None, "no region kept, none returned");
    }
}
