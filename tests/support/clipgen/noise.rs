//! Deterministic pseudo-randomness for backgrounds: a seeded hash, value noise and fractal noise.

/// SplitMix64's finaliser: a good 64-bit mix, enough for textures.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in `0..1` for a lattice point.
pub(crate) fn hash2(seed: u64, x: i64, y: i64) -> f32 {
    let h = mix64(
        seed ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    (h >> 40) as f32 / (1u64 << 24) as f32
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Smooth value noise in `0..1`, one lattice cell per unit.
pub(crate) fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (xf, yf) = (x.floor(), y.floor());
    let (xi, yi) = (xf as i64, yf as i64);
    let (tx, ty) = (smooth(x - xf), smooth(y - yf));
    let a = hash2(seed, xi, yi);
    let b = hash2(seed, xi + 1, yi);
    let c = hash2(seed, xi, yi + 1);
    let d = hash2(seed, xi + 1, yi + 1);
    let top = a + (b - a) * tx;
    let bottom = c + (d - c) * tx;
    top + (bottom - top) * ty
}

/// Fractal (octave-summed) value noise in roughly `0..1`.
pub(crate) fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
    let (mut sum, mut amp, mut freq, mut norm) = (0.0, 1.0, 1.0, 0.0);
    for o in 0..octaves {
        sum += amp * value_noise(seed.wrapping_add(u64::from(o) * 7919), x * freq, y * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

/// A small seeded generator for layout choices.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(mix64(seed ^ 0xD1B5_4A32_D192_ED03))
    }

    /// Uniform in `0..1`.
    pub(crate) fn next_f32(&mut self) -> f32 {
        self.0 = mix64(self.0);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_in_range() {
        for i in 0..1000 {
            let (x, y) = (i as f32 * 0.37, i as f32 * 0.11);
            let v = fbm(3, x, y, 4);
            assert!((0.0..=1.0).contains(&v), "{v}");
            assert_eq!(v, fbm(3, x, y, 4));
        }
        assert_ne!(fbm(3, 0.5, 0.5, 3), fbm(4, 0.5, 0.5, 3));
    }
}
