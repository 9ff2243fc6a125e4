//! Photographic backdrops: a region of a real photo (Debian's `mate-backgrounds`), scaled to the
//! frame with a margin, softened as an out-of-focus studio backdrop is, and seen through a window
//! that pans slowly and may shake a little, as a handheld or remotely steered camera does.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::error::ClipgenError;
use super::noise::{value_noise, Rng};

/// Where Debian's `mate-backgrounds` puts its nature photos.
pub const MATE_NATURE_DIR: &str = "/usr/share/backgrounds/mate/nature";

/// The photos the evaluation set draws on, in a fixed order so that seeds pick the same ones.
pub const MATE_NATURE_PHOTOS: [&str; 12] = [
    "Garden.jpg",
    "Dune.jpg",
    "Wood.jpg",
    "Aqua.jpg",
    "TwoWings.jpg",
    "Storm.jpg",
    "GreenMeadow.jpg",
    "RainDrops.jpg",
    "Blinds.jpg",
    "FreshFlower.jpg",
    "LadyBird.jpg",
    "YellowFlower.jpg",
];

/// The full path of one of [`MATE_NATURE_PHOTOS`].
pub fn mate_photo(name: &str) -> PathBuf {
    Path::new(MATE_NATURE_DIR).join(name)
}

/// How a backdrop is cut from its photo and how the camera moves over it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackdropSpec {
    /// The photo (any format `image` reads; JPEG for `mate-backgrounds`).
    pub photo: PathBuf,
    /// Seeds the crop, the pan and the shake.
    pub seed: u64,
    /// Gaussian blur radius (sigma) in output pixels at 720 lines; 0 keeps the photo sharp.
    pub blur_sigma: f32,
    /// Peak camera shake in output pixels at 720 lines; 0 for a locked-off camera.
    pub shake_px: f32,
    /// Whether the window pans slowly across the photo over the clip.
    pub pan: bool,
}

/// A backdrop ready to blit: the scaled photo, larger than the frame, and the window's path.
pub struct Backdrop {
    width: u32,
    height: u32,
    /// Scaled photo, packed RGBx.
    px: Vec<u8>,
    pw: u32,
    ph: u32,
    /// Window offset at the start and at the end of the clip.
    from: (f32, f32),
    to: (f32, f32),
    shake: f32,
    seed: u64,
}

impl Backdrop {
    /// Loads and prepares the backdrop for `width`x`height` frames.
    pub fn new(spec: &BackdropSpec, width: u32, height: u32) -> Result<Backdrop, ClipgenError> {
        let photo = image::open(&spec.photo)
            .map_err(|source| ClipgenError::Image {
                path: spec.photo.clone(),
                source,
            })
            .map_err(|e| match e {
                // the common case: the package is not installed
                ClipgenError::Image { path, .. } if !path.is_file() => ClipgenError::Spec(format!(
                    "backdrop photo {} not found: install Debian's mate-backgrounds \
                     (scripts/setup.sh does)",
                    path.display()
                )),
                other => other,
            })?
            .to_rgb8();
        let mut rng = Rng::new(spec.seed ^ 0xBAC0_D0F0);
        let u = height as f32 / 720.0;
        // A margin around the frame for the pan and the shake to move within.
        let margin = 0.08;
        let (pw, ph) = (
            (width as f32 * (1.0 + 2.0 * margin)).round() as u32,
            (height as f32 * (1.0 + 2.0 * margin)).round() as u32,
        );
        // A crop of 45 to 85% of the photo's width at the frame's aspect: some of the photo's
        // detail at a studio backdrop's scale, never the whole wallpaper.
        let aspect = pw as f32 / ph as f32;
        let (sw, sh) = (photo.width() as f32, photo.height() as f32);
        let mut cw = sw * rng.range(0.45, 0.85);
        let mut ch = cw / aspect;
        if ch > sh {
            ch = sh;
            cw = ch * aspect;
        }
        let cx = rng.range(0.0, (sw - cw).max(0.0));
        let cy = rng.range(0.0, (sh - ch).max(0.0));
        let crop = image::imageops::crop_imm(
            &photo,
            cx as u32,
            cy as u32,
            (cw as u32).max(1),
            (ch as u32).max(1),
        )
        .to_image();
        let mut scaled = image::imageops::resize(&crop, pw, ph, FilterType::Triangle);
        if spec.blur_sigma > 0.0 {
            scaled = image::imageops::blur(&scaled, spec.blur_sigma * u);
        }
        let mut px = Vec::with_capacity((pw * ph * 4) as usize);
        for p in scaled.pixels() {
            px.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        let (mx, my) = ((pw - width) as f32, (ph - height) as f32);
        let centre = (mx / 2.0, my / 2.0);
        let (from, to) = if spec.pan {
            // Over the clip the window drifts by up to the whole margin, in a seeded direction.
            let a = rng.range(0.0, std::f32::consts::TAU);
            let (dx, dy) = (a.cos() * mx * 0.35, a.sin() * my * 0.35);
            (
                (centre.0 - dx, centre.1 - dy),
                (centre.0 + dx, centre.1 + dy),
            )
        } else {
            (centre, centre)
        };
        Ok(Backdrop {
            width,
            height,
            px,
            pw,
            ph,
            from,
            to,
            shake: spec.shake_px * u,
            seed: spec.seed,
        })
    }

    /// A backdrop that never moves, from a ready-made packed RGBx frame (the procedural set).
    pub fn still(width: u32, height: u32, rgbx: Vec<u8>) -> Backdrop {
        Backdrop {
            width,
            height,
            px: rgbx,
            pw: width,
            ph: height,
            from: (0.0, 0.0),
            to: (0.0, 0.0),
            shake: 0.0,
            seed: 0,
        }
    }

    /// The window's top-left corner at `t` (0 at the start of the clip, 1 at its end) and
    /// `ms` (for the shake, which follows wall time, not the clip's length).
    fn offset(&self, t: f32, ms: u64) -> (u32, u32) {
        let t = t.clamp(0.0, 1.0);
        let s = t * t * (3.0 - 2.0 * t);
        let secs = ms as f32 / 1000.0;
        let jx = (value_noise(self.seed ^ 0x5A, secs * 6.0, 0.5) - 0.5) * 2.0 * self.shake;
        let jy = (value_noise(self.seed ^ 0xA5, secs * 6.0, 3.5) - 0.5) * 2.0 * self.shake;
        let x = self.from.0 + (self.to.0 - self.from.0) * s + jx;
        let y = self.from.1 + (self.to.1 - self.from.1) * s + jy;
        let x = x.round().clamp(0.0, (self.pw - self.width) as f32) as u32;
        let y = y.round().clamp(0.0, (self.ph - self.height) as f32) as u32;
        (x, y)
    }

    /// Writes the frame-sized window at clip position `t` (0..=1) and time `ms` into `out` as
    /// packed RGBx (replacing its contents).
    pub fn blit(&self, t: f32, ms: u64, out: &mut Vec<u8>) {
        let (ox, oy) = self.offset(t, ms);
        out.clear();
        let row = (self.width * 4) as usize;
        let stride = (self.pw * 4) as usize;
        for y in 0..self.height as usize {
            let start = (oy as usize + y) * stride + ox as usize * 4;
            out.extend_from_slice(&self.px[start..start + row]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_photo(dir: &Path) -> PathBuf {
        let img = image::RgbImage::from_fn(400, 300, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        let path = dir.join("photo.png");
        img.save(&path).expect("write test photo");
        path
    }

    #[test]
    fn window_pans_within_the_photo_and_is_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = BackdropSpec {
            photo: test_photo(dir.path()),
            seed: 3,
            blur_sigma: 1.0,
            shake_px: 2.0,
            pan: true,
        };
        let b = Backdrop::new(&spec, 160, 90).expect("backdrop");
        let (mut a, mut c) = (Vec::new(), Vec::new());
        b.blit(0.0, 0, &mut a);
        assert_eq!(a.len(), 160 * 90 * 4);
        b.blit(1.0, 20_000, &mut c);
        assert_ne!(a, c, "the window moved");
        let again = Backdrop::new(&spec, 160, 90).expect("backdrop");
        let mut d = Vec::new();
        again.blit(1.0, 20_000, &mut d);
        assert_eq!(c, d);
    }

    #[test]
    fn missing_photo_says_which_package() {
        let spec = BackdropSpec {
            photo: PathBuf::from("/nonexistent/Garden.jpg"),
            seed: 1,
            blur_sigma: 0.0,
            shake_px: 0.0,
            pan: false,
        };
        let err = Backdrop::new(&spec, 64, 64).err().expect("no photo");
        assert!(err.to_string().contains("mate-backgrounds"), "{err}");
    }
}
