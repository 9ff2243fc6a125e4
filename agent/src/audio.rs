//! Audio passed through to the upload when the source has it: the source's decoded audio goes
//! `queue ─► [clocksync] ─► audioconvert ─► audioresample ─► 48 kHz stereo ─► AAC ─► aacparse`
//! into the upload's muxer (flvmux, mpegtsmux or hlssink2), as IVS takes it (AAC-LC, 48 kHz,
//! stereo, 128 kbit/s).
//!
//! The branch is built when the source exposes an audio pad, never before: a muxer given an
//! audio pad that never receives data would wait for it forever (a file source is not live), and
//! FLV's header says whether there is audio. A source without audio therefore uploads exactly
//! the video-only stream it always did. The pipeline is rebuilt whole after a failure, and the
//! branch with it.
//!
//! A camera or the test pattern has no sound of its own: [`LiveAudio`] names a capture device
//! beside it (ALSA, PulseAudio/PipeWire, or a test tone), built with the pipeline and fed into the
//! same branch. When that device fails (unplugged, busy), the pipeline is rebuilt without it at
//! once, so the show goes on silent, and the device is tried again with backoff
//! ([`crate::supervisor`]).
//!
//! The AAC encoder is a pure choice over the element factories present (like the H.264 one in
//! [`crate::encoder`]); without any, audio is left out, said once, and the video goes on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

/// Every element of the branch starts with this, so that an error in it counts as the
/// upload's ([`crate::pipeline::classify`]).
const PREFIX: &str = "upload-audio-";

/// The audio bitrate, bit/s (IVS accepts up to 160 kbit/s).
pub const BITRATE_BPS: u32 = 128_000;
/// The sample rate sent (IVS takes 44.1 or 48 kHz).
pub const RATE_HZ: i32 = 48_000;

/// The AAC encoders the agent can use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AacEncoder {
    /// Fraunhofer FDK AAC (`fdkaacenc`, gst-plugins-bad where built with it).
    Fdk,
    /// FFmpeg's native AAC encoder (`avenc_aac`, gstreamer1.0-libav).
    Libav,
    /// VisualOn AAC (`voaacenc`, gst-plugins-bad).
    VoAac,
}

impl AacEncoder {
    /// Every kind, in the order they are preferred.
    pub const PREFERENCE: [AacEncoder; 3] = [AacEncoder::Fdk, AacEncoder::Libav, AacEncoder::VoAac];

    /// The GStreamer element factory.
    pub fn factory(self) -> &'static str {
        match self {
            AacEncoder::Fdk => "fdkaacenc",
            AacEncoder::Libav => "avenc_aac",
            AacEncoder::VoAac => "voaacenc",
        }
    }
}

/// The first of [`AacEncoder::PREFERENCE`] that `present` (does this element factory exist?)
/// says is there.
pub fn choose(present: impl Fn(&str) -> bool) -> Option<AacEncoder> {
    AacEncoder::PREFERENCE
        .into_iter()
        .find(|k| present(k.factory()))
}

/// [`choose`] over this machine's GStreamer registry (GStreamer must be initialised). Says once
/// per process when there is none: the pipeline is rebuilt after every failure.
pub fn choose_here() -> Option<AacEncoder> {
    static SAID: AtomicBool = AtomicBool::new(false);
    let found = choose(|name| gst::ElementFactory::find(name).is_some());
    if found.is_none() && !SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "no AAC encoder (avenc_aac from gstreamer1.0-libav, voaacenc or fdkaacenc): the \
             source's audio, if any, is left out of the upload"
        );
    }
    found
}

/// Elements of a live sound source (a capture card, a microphone) are named with this, so that
/// its failure is told apart from the video source's and the upload's
/// ([`crate::pipeline::classify`]): the show goes on without sound while the device is retried.
pub const LIVE_PREFIX: &str = "live-audio";

/// Sound captured beside a camera or the test pattern (V4L2 carries no sound): a capture card's
/// or a microphone's, uploaded with the video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveAudio {
    /// An ALSA capture device (`alsasrc`): `hw:CARD=HDMI,DEV=0`, `default`...
    Alsa {
        /// The device, as `arecord -L` names it.
        device: String,
    },
    /// A PulseAudio or PipeWire source (`pulsesrc`); the server's default when `None`.
    Pulse {
        /// The source's name, as `pactl list short sources` gives it.
        device: Option<String>,
    },
    /// A quiet 440 Hz tone (`audiotestsrc`), for trying the path without a microphone.
    Test,
}

impl LiveAudio {
    /// The GStreamer element factory, and the Debian package it comes in.
    pub fn factory(&self) -> (&'static str, &'static str) {
        match self {
            LiveAudio::Alsa { .. } => ("alsasrc", "gstreamer1.0-alsa"),
            LiveAudio::Pulse { .. } => ("pulsesrc", "gstreamer1.0-pulseaudio"),
            LiveAudio::Test => ("audiotestsrc", "gstreamer1.0-plugins-base"),
        }
    }

    /// The source element, named with [`LIVE_PREFIX`], live (timestamped by the clock as the
    /// camera's frames are).
    pub fn element(&self) -> Result<gst::Element, String> {
        let (factory, package) = self.factory();
        let missing = || format!("GStreamer element `{factory}` is missing: install {package}");
        let b = gst::ElementFactory::make(factory).name(LIVE_PREFIX);
        let e = match self {
            LiveAudio::Alsa { device } => b.property("device", device).build(),
            LiveAudio::Pulse { device: Some(d) } => b.property("device", d).build(),
            LiveAudio::Pulse { device: None } => b.build(),
            LiveAudio::Test => b
                .property("is-live", true)
                .property("freq", 440.0f64)
                .property("volume", 0.1f64)
                .build(),
        };
        e.map_err(|_| missing())
    }
}

impl std::fmt::Display for LiveAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiveAudio::Alsa { device } => write!(f, "ALSA device {device}"),
            LiveAudio::Pulse { device: Some(d) } => write!(f, "PulseAudio source {d}"),
            LiveAudio::Pulse { device: None } => f.write_str("the PulseAudio default source"),
            LiveAudio::Test => f.write_str("a test tone"),
        }
    }
}

/// Where the upload takes audio: its muxer (or HLS sink) and the request pad template for it.
#[derive(Debug, Clone)]
pub struct AudioInput {
    /// The element with the request pad; weak, because the source's `pad-added` handler holds
    /// this and the pipeline holds the source.
    sink: gst::glib::WeakRef<gst::Element>,
    /// Its request pad template: `audio` (flvmux, hlssink2) or `sink_%d` (mpegtsmux).
    template: &'static str,
    encoder: AacEncoder,
    /// Pace the audio to the clock, as the video is paced (a file played in real time).
    paced: bool,
}

impl AudioInput {
    /// Audio for `sink`'s `template` pad, encoded with `encoder`, from a source that is `paced`
    /// to the clock.
    pub fn new(
        sink: &gst::Element,
        template: &'static str,
        encoder: AacEncoder,
        paced: bool,
    ) -> Self {
        AudioInput {
            sink: sink.downgrade(),
            template,
            encoder,
            paced,
        }
    }

    /// Builds the branch in the (running) pipeline `sink` is in and links `pad`, the source's
    /// decoded audio, to it. Returns the parser, whose output is what the upload sends.
    pub fn attach(&self, pad: &gst::Pad) -> Result<gst::Element, String> {
        let sink = self
            .sink
            .upgrade()
            .ok_or("the upload is gone (pipeline stopping)")?;
        let bin = sink
            .parent()
            .and_then(|p| p.downcast::<gst::Bin>().ok())
            .ok_or("the upload is in no pipeline")?;
        let make = |factory: &str, name: &str| {
            gst::ElementFactory::make(factory)
                .name(format!("{PREFIX}{name}"))
                .build()
                .map_err(|_| format!("GStreamer element `{factory}` is missing"))
        };
        let mut chain = vec![make("queue", "queue")?];
        if self.paced {
            chain.push(make("clocksync", "clocksync")?);
        }
        let caps = make("capsfilter", "caps")?;
        caps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("rate", RATE_HZ)
                .field("channels", 2i32)
                .build(),
        );
        let enc = make(self.encoder.factory(), "encoder")?;
        enc.set_property_from_str("bitrate", &BITRATE_BPS.to_string());
        let parse = make("aacparse", "parse")?;
        chain.extend([
            make("audioconvert", "convert")?,
            make("audioresample", "resample")?,
            caps,
            enc,
            parse.clone(),
        ]);
        bin.add_many(&chain).map_err(|e| e.to_string())?;
        gst::Element::link_many(&chain).map_err(|e| e.to_string())?;
        let mux_pad = sink
            .request_pad_simple(self.template)
            .ok_or_else(|| format!("{} gives no `{}` pad", sink.name(), self.template))?;
        let parse_src = parse.static_pad("src").ok_or("aacparse has no src pad")?;
        never_overlap(&parse_src);
        parse_src.link(&mux_pad).map_err(|e| format!("{e:?}"))?;
        // downstream first, so that nothing pushes into an element still in Null
        for e in chain.iter().rev() {
            e.sync_state_with_parent().map_err(|e| e.to_string())?;
        }
        let queue_sink = chain[0].static_pad("sink").ok_or("queue has no sink pad")?;
        pad.link(&queue_sink).map_err(|e| format!("{e:?}"))?;
        Ok(parse)
    }
}

/// Drops every AAC frame behind `pad` that starts, in running time, before the one before it
/// ended. The encoder drains its last frame at each new segment, a looping file's included, and
/// that frame then overlaps the next loop's first: two frames with one timestamp, which a muxer
/// writes as time going nowhere. A live source has one segment and loses nothing here.
fn never_overlap(pad: &gst::Pad) {
    // the running time (ns) the last frame let through ends at; none yet
    const NONE: u64 = u64::MAX;
    let end = AtomicU64::new(NONE);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(b)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let segment = pad
            .sticky_event::<gst::event::Segment>(0)
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
        let Some((segment, pts)) = segment.zip(b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(start) = segment.to_running_time(pts) else {
            return gst::PadProbeReturn::Ok;
        };
        // a millisecond of slack: timestamps are rounded to the nanosecond from sample counts
        let last = end.load(Ordering::Relaxed);
        if last != NONE && start.nseconds() + gst::ClockTime::MSECOND.nseconds() < last {
            tracing::debug!(
                at_ms = start.mseconds(),
                "an overlapping AAC frame is dropped"
            );
            return gst::PadProbeReturn::Drop;
        }
        let length = b.duration().unwrap_or(gst::ClockTime::ZERO);
        end.store((start + length).nseconds(), Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_aac_encoder_present_is_used_and_none_is_not_an_error() {
        let only = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert_eq!(choose(only(&["voaacenc"])), Some(AacEncoder::VoAac));
        assert_eq!(
            choose(only(&["voaacenc", "avenc_aac"])),
            Some(AacEncoder::Libav)
        );
        assert_eq!(
            choose(only(&["avenc_aac", "fdkaacenc"])),
            Some(AacEncoder::Fdk)
        );
        assert_eq!(choose(only(&[])), None);
    }

    #[test]
    fn every_encoder_here_takes_the_bitrate() {
        gst::init().expect("gstreamer");
        for kind in AacEncoder::PREFERENCE {
            let Ok(enc) = gst::ElementFactory::make(kind.factory()).build() else {
                continue;
            };
            enc.set_property_from_str("bitrate", &BITRATE_BPS.to_string());
            assert_eq!(
                enc.property_value("bitrate").serialize().ok().as_deref(),
                Some("128000"),
                "{kind:?}"
            );
        }
    }
}
