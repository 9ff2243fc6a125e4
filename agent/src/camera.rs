//! The V4L2 camera: the mode the configuration asks for (pixel format, size, frame rate),
//! checked against what the camera says it can do before the pipeline is built, so that a mode
//! it cannot deliver fails with the list of modes it can, instead of GStreamer's "not-negotiated".
//!
//! [`describe`] and [`fit`] are pure functions over caps; [`probe`] is the I/O that asks the
//! device (v4l2src in READY reports the device's own caps).

use std::path::{Path, PathBuf};

use gstreamer as gst;
use gstreamer::prelude::*;

/// What the configuration asks of the camera; `None` leaves the choice to the camera.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CameraMode {
    /// A V4L2 pixel format as GStreamer names it (`YUY2`, `NV12`...) or `MJPG` for motion JPEG.
    pub format: Option<String>,
    /// Width, pixels.
    pub width: Option<u32>,
    /// Height, pixels.
    pub height: Option<u32>,
    /// Frames a second.
    pub fps: Option<f64>,
}

/// Why the camera cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    /// No such device node.
    #[error(
        "camera {0} does not exist: is it plugged in? `ls /dev/video*` lists the cameras; set \
         source.device"
    )]
    Missing(PathBuf),
    /// The path is not a V4L2 device.
    #[error(
        "{0} is not a video device (not a character device): set source.device to a /dev/videoN"
    )]
    NotADevice(PathBuf),
    /// The device would not open.
    #[error("camera {device} does not open: {reason}")]
    Open {
        /// The device node.
        device: PathBuf,
        /// What V4L2 said.
        reason: String,
    },
    /// The camera cannot deliver the requested mode.
    #[error(
        "camera {device} cannot deliver {wanted}; it offers:\n  {}\nset source.format, \
         source.width, source.height and source.fps to one of these",
        offered.join("\n  ")
    )]
    ModeNotOffered {
        /// The device node.
        device: PathBuf,
        /// The mode asked for, in words.
        wanted: String,
        /// What it offers, one mode a line.
        offered: Vec<String>,
    },
}

impl CameraMode {
    /// Whether the camera sends motion JPEG (which needs decoding).
    pub fn is_jpeg(&self) -> bool {
        self.format
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("MJPG") || f.eq_ignore_ascii_case("JPEG"))
    }

    /// The caps that select this mode from the camera. A rate is matched within 0.05 fps, so
    /// `29.97` finds a camera's `30000/1001`.
    pub fn caps(&self) -> gst::Caps {
        let mut b = if self.is_jpeg() {
            gst::Structure::builder("image/jpeg")
        } else {
            let b = gst::Structure::builder("video/x-raw");
            match &self.format {
                Some(f) => b.field("format", f.to_ascii_uppercase()),
                None => b,
            }
        };
        if let Some(w) = self.width {
            b = b.field("width", w as i32);
        }
        if let Some(h) = self.height {
            b = b.field("height", h as i32);
        }
        if let Some(fps) = self.fps {
            let milli = |v: f64| gst::Fraction::new((v * 1000.0).round() as i32, 1000);
            b = b.field(
                "framerate",
                gst::FractionRange::new(milli((fps - 0.05).max(0.0)), milli(fps + 0.05)),
            );
        }
        gst::Caps::builder_full().structure(b.build()).build()
    }

    /// The mode in words, for errors.
    pub fn describe(&self) -> String {
        let format = match &self.format {
            Some(f) => f.to_ascii_uppercase(),
            None => "any raw format".into(),
        };
        let size = match (self.width, self.height) {
            (Some(w), Some(h)) => format!(" {w}x{h}"),
            (Some(w), None) => format!(" width {w}"),
            (None, Some(h)) => format!(" height {h}"),
            (None, None) => String::new(),
        };
        let rate = self.fps.map(|f| format!(" at {f} fps")).unwrap_or_default();
        format!("{format}{size}{rate}")
    }
}

/// Renders one caps field value (a number, range or list) for people.
fn show(v: &gst::glib::SendValue) -> String {
    if let Ok(i) = v.get::<i32>() {
        return i.to_string();
    }
    if let Ok(r) = v.get::<gst::IntRange<i32>>() {
        return format!("{}-{}", r.min(), r.max());
    }
    if let Ok(f) = v.get::<gst::Fraction>() {
        return show_rate(f);
    }
    if let Ok(r) = v.get::<gst::FractionRange>() {
        return format!("{}-{}", show_rate(r.min()), show_rate(r.max()));
    }
    if let Ok(s) = v.get::<String>() {
        return s;
    }
    if let Ok(l) = v.get::<gst::List>() {
        return l.iter().map(show).collect::<Vec<_>>().join(", ");
    }
    if let Ok(a) = v.get::<gst::Array>() {
        return a.iter().map(show).collect::<Vec<_>>().join(", ");
    }
    v.serialize().map(|s| s.to_string()).unwrap_or_default()
}

fn show_rate(f: gst::Fraction) -> String {
    if f.denom() == 1 {
        f.numer().to_string()
    } else if f.denom() == 0 {
        "?".into()
    } else {
        format!("{:.2}", f64::from(f.numer()) / f64::from(f.denom()))
    }
}

/// The modes in `caps`, one line each: `YUY2 640x480 at 30, 15 fps`, `MJPG 1920x1080 at 30 fps`.
pub fn describe(caps: &gst::CapsRef) -> Vec<String> {
    let mut out = Vec::new();
    for s in caps.iter() {
        let format = match s.name().as_str() {
            "image/jpeg" => "MJPG".to_owned(),
            "video/x-raw" => s.value("format").map(show).unwrap_or_else(|_| "raw".into()),
            other => other.to_owned(),
        };
        let field = |name: &str| s.value(name).map(show).ok();
        let mut line = format;
        if let (Some(w), Some(h)) = (field("width"), field("height")) {
            line.push_str(&format!(" {w}x{h}"));
        }
        if let Some(r) = field("framerate") {
            line.push_str(&format!(" at {r} fps"));
        }
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// Checks `wanted` against the camera's `offered` caps.
pub fn fit(device: &Path, offered: &gst::Caps, wanted: &CameraMode) -> Result<(), CameraError> {
    if offered.can_intersect(&wanted.caps()) {
        Ok(())
    } else {
        Err(CameraError::ModeNotOffered {
            device: device.to_owned(),
            wanted: wanted.describe(),
            offered: describe(offered),
        })
    }
}

/// Checks that `device` is there and is a video device, before GStreamer tries it.
pub fn check_node(device: &Path) -> Result<(), CameraError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(device) {
        Err(_) => Err(CameraError::Missing(device.to_owned())),
        Ok(m) if !m.file_type().is_char_device() => Err(CameraError::NotADevice(device.to_owned())),
        Ok(_) => Ok(()),
    }
}

/// Opens the camera just long enough to read the modes it offers (GStreamer must be
/// initialised).
pub fn probe(device: &Path) -> Result<gst::Caps, CameraError> {
    check_node(device)?;
    let open_err = |reason: String| CameraError::Open {
        device: device.to_owned(),
        reason,
    };
    let src = gst::ElementFactory::make("v4l2src")
        .property("device", device.display().to_string())
        .build()
        .map_err(|_| open_err("v4l2src is missing: install gstreamer1.0-plugins-good".into()))?;
    // a lone element has no bus of its own: give it one to hear why it would not open
    let bus = gst::Bus::new();
    src.set_bus(Some(&bus));
    let opened = src.set_state(gst::State::Ready);
    let caps = src.static_pad("src").map(|p| p.query_caps(None));
    let _ = src.set_state(gst::State::Null);
    if opened.is_err() {
        let reason = bus
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "it refused to open (busy, or no permission?)".into());
        return Err(open_err(reason));
    }
    caps.ok_or_else(|| open_err("v4l2src has no src pad".into()))
}

/// [`probe`] then [`fit`]: the camera is there, opens, and can deliver `wanted`.
pub fn check(device: &Path, wanted: &CameraMode) -> Result<(), CameraError> {
    let offered = probe(device)?;
    fit(device, &offered, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a typical USB webcam reports: YUY2 at a few sizes, MJPG up to 1080p.
    fn webcam() -> gst::Caps {
        gst::init().expect("gstreamer");
        "video/x-raw, format=YUY2, width=640, height=480, framerate={ 30/1, 15/1 }; \
         video/x-raw, format=YUY2, width=1280, height=720, framerate=10/1; \
         image/jpeg, width=1920, height=1080, framerate={ 30/1, 30000/1001 }; \
         image/jpeg, width=1280, height=720, framerate=[ 5/1, 60/1 ]"
            .parse()
            .expect("caps")
    }

    fn mode(format: Option<&str>, w: u32, h: u32, fps: f64) -> CameraMode {
        CameraMode {
            format: format.map(str::to_owned),
            width: Some(w),
            height: Some(h),
            fps: Some(fps),
        }
    }

    #[test]
    fn the_listing_names_every_mode() {
        assert_eq!(
            describe(&webcam()),
            [
                "YUY2 640x480 at 30, 15 fps",
                "YUY2 1280x720 at 10 fps",
                "MJPG 1920x1080 at 30, 29.97 fps",
                "MJPG 1280x720 at 5-60 fps",
            ]
        );
        let ranged: gst::Caps =
            "video/x-raw, format={ NV12, YUY2 }, width=[ 16, 4096 ], height=[ 16, 2160 ]"
                .parse()
                .expect("caps");
        assert_eq!(describe(&ranged), ["NV12, YUY2 16-4096x16-2160"]);
    }

    #[test]
    fn modes_the_camera_offers_fit() {
        let dev = Path::new("/dev/video0");
        let cam = webcam();
        for ok in [
            mode(Some("YUY2"), 640, 480, 15.0),
            mode(Some("yuy2"), 1280, 720, 10.0),
            mode(Some("MJPG"), 1920, 1080, 30.0),
            mode(Some("MJPG"), 1920, 1080, 29.97),
            mode(Some("MJPG"), 1280, 720, 50.0),
            mode(None, 640, 480, 30.0),
            CameraMode::default(),
        ] {
            fit(dev, &cam, &ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn a_mode_the_camera_lacks_is_refused_with_what_it_offers() {
        let dev = Path::new("/dev/video0");
        let err = fit(dev, &webcam(), &mode(Some("YUY2"), 1920, 1080, 30.0)).expect_err("no");
        let msg = err.to_string();
        assert!(
            msg.contains("/dev/video0 cannot deliver YUY2 1920x1080 at 30 fps"),
            "{msg}"
        );
        assert!(msg.contains("MJPG 1920x1080 at 30, 29.97 fps"), "{msg}");
        assert!(msg.contains("YUY2 640x480 at 30, 15 fps"), "{msg}");
        assert!(msg.contains("source.format"), "{msg}");
        // a raw format the camera has, at a rate it does not
        assert!(fit(dev, &webcam(), &mode(Some("YUY2"), 1280, 720, 30.0)).is_err());
        // raw at a size only MJPG has: no silent switch to JPEG
        assert!(fit(dev, &webcam(), &mode(None, 1920, 1080, 30.0)).is_err());
    }

    #[test]
    fn a_missing_camera_is_named_with_what_to_do() {
        gst::init().expect("gstreamer");
        let missing = Path::new("/dev/video-spotter-test-missing");
        let err = check(missing, &CameraMode::default()).expect_err("missing");
        assert_eq!(err, CameraError::Missing(missing.to_owned()));
        let msg = err.to_string();
        assert!(
            msg.contains("/dev/video-spotter-test-missing does not exist"),
            "{msg}"
        );
        assert!(msg.contains("source.device"), "{msg}");

        let file = tempfile::NamedTempFile::new().expect("temp file");
        let err = check(file.path(), &CameraMode::default()).expect_err("a plain file");
        assert!(matches!(err, CameraError::NotADevice(_)), "{err}");
    }

    #[test]
    fn a_device_that_is_not_a_camera_does_not_open() {
        gst::init().expect("gstreamer");
        // /dev/null is a character device but no V4L2 device: v4l2src says so
        let err = probe(Path::new("/dev/null")).expect_err("not a camera");
        assert!(
            matches!(&err, CameraError::Open { reason, .. } if !reason.is_empty()),
            "{err:?}"
        );
        assert!(err.to_string().contains("/dev/null does not open"), "{err}");
    }
}
