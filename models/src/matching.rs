//! One frame against the catalog, after the backbone: regional descriptors shortlist the
//! products, mid-level cells verify them. The agent's recogniser and the per-frame benchmark
//! both run this, so the benchmark times what the agent does.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use crate::appearance::FramePixels;
use crate::descriptor::{regional_descriptors, CatalogIndex, RegionGrid};
use crate::verify::{cells, competition, Similarities, Verified, VerifyParams, ViewSet};

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
    /// Packed RGB rows of the frame (for the cells' colours).
    pub rgb: &'a [u8],
    /// `(width, height)` in pixels.
    pub size: (usize, usize),
    /// Bytes from one row of `rgb` to the next.
    pub stride: usize,
}

/// A shortlisted product that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index into `global.products()`.
    pub product: usize,
    /// Its best view's verification.
    pub verified: Verified,
}

impl ProductIndex {
    /// Verifies the products whose regional descriptors some region of the frame resembles most
    /// (at most `shortlist` of them, best first) and returns those that pass, in shortlist order.
    ///
    /// The shortlist is not only for speed: each frame cell's competition floor comes from the
    /// other shortlisted products, and verifying every product of a 15-product catalog raised
    /// those floors and lost 2 of 34 appearances on the tune split (a large suitcase, a
    /// half-hidden book).
    pub fn candidates(
        &self,
        frame: FrameFeatures<'_>,
        grid: &RegionGrid,
        shortlist: usize,
        params: &VerifyParams,
    ) -> Result<Vec<Candidate>> {
        let regions = regional_descriptors(frame.features, grid)?;
        let shortlist: Vec<usize> = self
            .global
            .best_per_product(&regions)?
            .iter()
            .take(shortlist)
            .map(|m| m.product)
            .collect();
        let cells = cells(frame.mid, |_, _| true)?.with_colours(
            frame.rgb,
            frame.size,
            frame.stride,
            |_, _| 1.0,
        );
        let cells_t =
            Tensor::from_slice(&cells.desc, (cells.len(), cells.dim), frame.mid.device())?;
        let sims = shortlist
            .iter()
            .map(|&p| self.views[p].similarities(&cells, &cells_t))
            .collect::<Result<Vec<_>>>()?;
        let floors = competition(&sims.iter().map(Similarities::row_max).collect::<Vec<_>>());
        let pixels = FramePixels::new(frame.rgb, frame.size, frame.stride);
        // products are verified independently: one a thread
        Ok(shortlist
            .par_iter()
            .zip(&sims)
            .zip(&floors)
            .filter_map(|((&product, sims), floor)| {
                let (_, verified) =
                    self.views[product].verify(&cells, sims, Some(floor), params, Some(&pixels))?;
                Some(Candidate { product, verified })
            })
            .collect())
    }
}
