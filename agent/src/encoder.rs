//! The upload's H.264 encoder: which one (a hardware encoder where the machine has one, x264
//! otherwise, or the one the configuration forces) and its settings as IVS asks: constant
//! bitrate, an IDR every N seconds, no B-frames, low latency.
//!
//! The choice is a pure function of the element factories present, so that it can be tested on
//! a machine that has none of the hardware.

use gstreamer as gst;
use gstreamer::prelude::*;

/// The H.264 encoders the agent knows how to configure, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// NVIDIA Jetson's V4L2 encoder (`nvv4l2h264enc`, gst-nvvideo4linux2).
    NvV4l2,
    /// NVENC on x86 NVIDIA GPUs (`nvh264enc`, gst-plugins-bad nvcodec).
    Nvenc,
    /// VA-API, the current plugin (`vah264enc`, gst-plugins-bad va): Intel and AMD.
    Va,
    /// VA-API, the older plugin (`vaapih264enc`, gstreamer1.0-vaapi).
    Vaapi,
    /// Software (`x264enc`, gst-plugins-ugly).
    X264,
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderChoice {
    /// The best one present.
    Auto,
    /// This one, or fail.
    Force(EncoderKind),
}

/// Why no encoder can be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncoderError {
    /// The forced encoder's element is missing.
    #[error(
        "upload.encoder = {name:?} but GStreamer has no `{name}` element here ({hint}); \
         set upload.encoder = \"auto\" to use what is present"
    )]
    ForcedMissing {
        /// The element.
        name: &'static str,
        /// Where it comes from.
        hint: &'static str,
    },
    /// Not even x264.
    #[error("no H.264 encoder found: install gstreamer1.0-plugins-ugly (x264enc)")]
    NoneFound,
}

impl EncoderKind {
    /// Every kind, in the order `auto` prefers them.
    pub const PREFERENCE: [EncoderKind; 5] = [
        EncoderKind::NvV4l2,
        EncoderKind::Nvenc,
        EncoderKind::Va,
        EncoderKind::Vaapi,
        EncoderKind::X264,
    ];

    /// The GStreamer element factory.
    pub fn factory(self) -> &'static str {
        match self {
            EncoderKind::NvV4l2 => "nvv4l2h264enc",
            EncoderKind::Nvenc => "nvh264enc",
            EncoderKind::Va => "vah264enc",
            EncoderKind::Vaapi => "vaapih264enc",
            EncoderKind::X264 => "x264enc",
        }
    }

    /// Where the element comes from.
    pub fn package_hint(self) -> &'static str {
        match self {
            EncoderKind::NvV4l2 => "NVIDIA JetPack's gstreamer1.0 plugins, Jetson only",
            EncoderKind::Nvenc => "gstreamer1.0-plugins-bad with an NVIDIA driver and GPU",
            EncoderKind::Va => "gstreamer1.0-plugins-bad with a VA-API driver",
            EncoderKind::Vaapi => "gstreamer1.0-vaapi with a VA-API driver",
            EncoderKind::X264 => "gstreamer1.0-plugins-ugly",
        }
    }

    /// The kind whose factory is `name` (the config's `upload.encoder`).
    pub fn from_factory(name: &str) -> Option<EncoderKind> {
        Self::PREFERENCE.into_iter().find(|k| k.factory() == name)
    }

    /// Whether it runs on dedicated hardware.
    pub fn is_hardware(self) -> bool {
        self != EncoderKind::X264
    }
}

/// Picks the encoder: the forced one if present, else the first of
/// [`EncoderKind::PREFERENCE`] that `present` (does this element factory exist?) says is there.
pub fn choose(
    choice: EncoderChoice,
    present: impl Fn(&str) -> bool,
) -> Result<EncoderKind, EncoderError> {
    match choice {
        EncoderChoice::Force(k) if present(k.factory()) => Ok(k),
        EncoderChoice::Force(k) => Err(EncoderError::ForcedMissing {
            name: k.factory(),
            hint: k.package_hint(),
        }),
        EncoderChoice::Auto => EncoderKind::PREFERENCE
            .into_iter()
            .find(|k| present(k.factory()))
            .ok_or(EncoderError::NoneFound),
    }
}

/// [`choose`] over this machine's GStreamer registry (GStreamer must be initialised).
pub fn choose_here(choice: EncoderChoice) -> Result<EncoderKind, EncoderError> {
    choose(choice, |name| gst::ElementFactory::find(name).is_some())
}

/// One property to set on an encoder, as the string GStreamer parses for it (so that enum
/// nicks and numbers go through one path whatever the property's type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Property name.
    pub name: &'static str,
    /// Its value, as `gst-launch` would write it.
    pub value: String,
}

fn set(name: &'static str, value: impl ToString) -> Setting {
    Setting {
        name,
        value: value.to_string(),
    }
}

/// The settings IVS asks for, for `kind`: CBR at `bitrate_kbps`, no B-frames, low latency, and an
/// IDR every `gop_frames` frames (the encoders count the interval in frames).
pub fn settings(kind: EncoderKind, bitrate_kbps: u32, gop_frames: u32) -> Vec<Setting> {
    match kind {
        EncoderKind::X264 => vec![
            set("bitrate", bitrate_kbps),
            set("pass", "cbr"),
            set("tune", "zerolatency"),
            set("speed-preset", "veryfast"),
            set("bframes", 0),
            set("key-int-max", gop_frames),
        ],
        EncoderKind::Nvenc => vec![
            set("bitrate", bitrate_kbps),
            set("rc-mode", "cbr"),
            set("preset", "low-latency-hq"),
            set("zerolatency", true),
            set("bframes", 0),
            set("gop-size", gop_frames),
        ],
        // Jetson's encoder takes bits a second, and repeats SPS/PPS so a player can join late
        EncoderKind::NvV4l2 => vec![
            set("bitrate", u64::from(bitrate_kbps) * 1000),
            set("control-rate", "constant_bitrate"),
            set("num-B-Frames", 0),
            set("insert-sps-pps", true),
            set("maxperf-enable", true),
            set("iframeinterval", gop_frames),
            set("idrinterval", gop_frames),
        ],
        EncoderKind::Va => vec![
            set("bitrate", bitrate_kbps),
            set("rate-control", "cbr"),
            set("b-frames", 0),
            set("key-int-max", gop_frames),
        ],
        EncoderKind::Vaapi => vec![
            set("bitrate", bitrate_kbps),
            set("rate-control", "cbr"),
            set("max-bframes", 0),
            set("keyframe-period", gop_frames),
        ],
    }
}

/// The properties that hold the IDR interval in frames, set again once the frame rate is known.
pub fn gop_properties(kind: EncoderKind) -> &'static [&'static str] {
    match kind {
        EncoderKind::X264 | EncoderKind::Va => &["key-int-max"],
        EncoderKind::Nvenc => &["gop-size"],
        EncoderKind::NvV4l2 => &["iframeinterval", "idrinterval"],
        EncoderKind::Vaapi => &["keyframe-period"],
    }
}

/// Frames between IDRs at `fps` for an interval of `secs` (at least one).
pub fn gop_frames(fps: gst::Fraction, secs: u32) -> u32 {
    if fps.numer() <= 0 || fps.denom() <= 0 {
        return 30 * secs.max(1);
    }
    (f64::from(fps.numer()) / f64::from(fps.denom()) * f64::from(secs))
        .round()
        .max(1.0) as u32
}

/// Applies `settings` to `enc`. A property this version of the element does not have is skipped
/// with a warning: encoders' properties differ between releases, and a missing tuning knob must
/// not take the stream off the air.
pub fn apply(enc: &gst::Element, settings: &[Setting]) {
    for s in settings {
        let Some(spec) = enc.find_property(s.name) else {
            tracing::warn!(
                encoder = %enc.name(),
                property = s.name,
                "this encoder has no such property; left at its default"
            );
            continue;
        };
        let value = gst::glib::Value::deserialize(&s.value, spec.value_type());
        match value {
            Ok(v) => enc.set_property_from_value(s.name, &v),
            Err(_) => tracing::warn!(
                encoder = %enc.name(),
                property = s.name,
                value = %s.value,
                "cannot set this value; left at its default"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_hardware_in_order_and_falls_back_to_x264() {
        let only = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        let auto = EncoderChoice::Auto;
        assert_eq!(choose(auto, only(&["x264enc"])), Ok(EncoderKind::X264));
        assert_eq!(
            choose(auto, only(&["x264enc", "nvv4l2h264enc"])),
            Ok(EncoderKind::NvV4l2)
        );
        assert_eq!(
            choose(auto, only(&["x264enc", "vaapih264enc", "nvh264enc"])),
            Ok(EncoderKind::Nvenc)
        );
        assert_eq!(
            choose(auto, only(&["x264enc", "vaapih264enc", "vah264enc"])),
            Ok(EncoderKind::Va)
        );
        assert_eq!(
            choose(auto, only(&["vaapih264enc"])),
            Ok(EncoderKind::Vaapi)
        );
        assert_eq!(choose(auto, only(&[])), Err(EncoderError::NoneFound));
    }

    #[test]
    fn a_forced_encoder_is_used_or_refused_with_a_reason() {
        let all = |_: &str| true;
        let x264 = |n: &str| n == "x264enc";
        let force = EncoderChoice::Force(EncoderKind::X264);
        assert_eq!(choose(force, all), Ok(EncoderKind::X264));
        let err = choose(EncoderChoice::Force(EncoderKind::Nvenc), x264).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("nvh264enc") && msg.contains("auto"), "{msg}");
    }

    #[test]
    fn this_machine_uses_x264() {
        gst::init().expect("gstreamer");
        // CI and the development machine have no GPU: auto must come down to software
        assert_eq!(choose_here(EncoderChoice::Auto), Ok(EncoderKind::X264));
    }

    #[test]
    fn every_encoder_is_set_for_cbr_without_b_frames_and_with_the_gop() {
        for kind in EncoderKind::PREFERENCE {
            let s = settings(kind, 2500, 60);
            let value = |name: &str| s.iter().find(|x| x.name == name).map(|x| x.value.as_str());
            let cbr = [
                ("pass", "cbr"),
                ("rc-mode", "cbr"),
                ("rate-control", "cbr"),
                ("control-rate", "constant_bitrate"),
            ];
            let rate: Vec<_> = cbr.iter().filter(|(n, v)| value(n) == Some(*v)).collect();
            assert_eq!(rate.len(), 1, "{kind:?}: constant bitrate in {s:?}");
            let bframes = ["bframes", "b-frames", "max-bframes", "num-B-Frames"]
                .iter()
                .filter_map(|n| value(n))
                .collect::<Vec<_>>();
            assert_eq!(bframes, ["0"], "{kind:?}: no B-frames in {s:?}");
            for p in gop_properties(kind) {
                assert_eq!(value(p), Some("60"), "{kind:?}: {p} in {s:?}");
            }
            let bitrate = value("bitrate").expect("a bitrate");
            let expected = if kind == EncoderKind::NvV4l2 {
                "2500000"
            } else {
                "2500"
            };
            assert_eq!(bitrate, expected, "{kind:?}");
        }
    }

    #[test]
    fn x264_takes_every_setting() {
        gst::init().expect("gstreamer");
        let enc = gst::ElementFactory::make("x264enc")
            .build()
            .expect("x264enc");
        apply(&enc, &settings(EncoderKind::X264, 1800, 48));
        assert_eq!(enc.property::<u32>("bitrate"), 1800);
        assert_eq!(enc.property::<u32>("key-int-max"), 48);
        assert_eq!(enc.property::<u32>("bframes"), 0);
        assert_eq!(
            enc.property_value("pass")
                .serialize()
                .expect("serializes")
                .as_str(),
            "cbr"
        );
        // an unknown property is skipped, not a panic
        apply(&enc, &[set("no-such-property", 1)]);
    }

    #[test]
    fn gop_follows_the_frame_rate() {
        assert_eq!(gop_frames(gst::Fraction::new(30, 1), 2), 60);
        assert_eq!(gop_frames(gst::Fraction::new(30000, 1001), 2), 60);
        assert_eq!(gop_frames(gst::Fraction::new(25, 1), 1), 25);
        assert_eq!(gop_frames(gst::Fraction::new(0, 1), 2), 60);
    }
}
