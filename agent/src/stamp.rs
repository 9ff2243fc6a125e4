//! Capture times: the one function that turns a buffer's running time into the UTC time it was
//! captured, used both for an analysed frame's `captured_at_ms` and for the stamp that each
//! uploaded frame carries in its H.264 ([`crate::sei`]), so that the frame in which a product
//! was recognised says, in the video, the capture time its event says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::sei::{self, Framing, SeiError};

/// Why an upload's frames cannot be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// The parser's output is not H.264 in a form the stamp can go into.
    #[error("cannot stamp H.264 with caps {caps}: {why}")]
    Caps {
        /// The negotiated caps.
        caps: String,
        /// What is missing or unexpected.
        why: &'static str,
    },
    /// The access unit could not take the stamp.
    #[error(transparent)]
    Sei(#[from] SeiError),
    /// The buffer could not be read or copied.
    #[error("cannot rewrite the frame's buffer: {0}")]
    Buffer(String),
    /// The element has no src pad.
    #[error("{0} has no src pad to stamp frames on")]
    NoPad(String),
}

/// The wall clock: UTC since the Unix epoch.
pub fn now_utc() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The capture time, UTC milliseconds (rounded down), of a buffer at running time `running`,
/// seen when the pipeline's running time is `running_now` and the wall clock reads `now_utc`:
/// it was captured `running_now - running` ago (live sources timestamp buffers with the running
/// time at capture).
pub fn capture_time_ms(
    now_utc: Duration,
    running_now: gst::ClockTime,
    running: gst::ClockTime,
) -> u64 {
    let age = Duration::from_nanos(running_now.saturating_sub(running).nseconds());
    now_utc.saturating_sub(age).as_millis() as u64
}

/// The capture time of a buffer at running time `running` in `pipeline`, read now; `None` while
/// the pipeline has no running time (not playing). The wall clock is read between two readings
/// of the pipeline's clock, against their midpoint; a thread paused between them would shift the
/// result by the pause, so readings more than 0.2 ms apart are taken again.
pub fn captured_at_ms(pipeline: &gst::Pipeline, running: gst::ClockTime) -> Option<u64> {
    let mut result = None;
    for _ in 0..3 {
        let before = pipeline.current_running_time()?;
        let now = now_utc();
        let after = pipeline.current_running_time()?.max(before);
        let spread = after - before;
        result = Some(capture_time_ms(now, before + spread / 2, running));
        if spread <= CLOCK_READ_SPREAD {
            break;
        }
    }
    result
}

/// How far apart two readings of the pipeline's clock around one of the wall clock may be for
/// the pair to count as simultaneous.
const CLOCK_READ_SPREAD: gst::ClockTime = gst::ClockTime::from_useconds(200);

/// How the H.264 with these caps frames its NAL units; only whole access units can be stamped.
pub fn framing(caps: &gst::CapsRef) -> Result<Framing, StampError> {
    let bad = |why| StampError::Caps {
        caps: caps.to_string(),
        why,
    };
    let s = caps.structure(0).ok_or_else(|| bad("no structure"))?;
    if s.name() != "video/x-h264" {
        return Err(bad("not video/x-h264"));
    }
    if s.get::<&str>("alignment").ok() != Some("au") {
        return Err(bad("alignment is not au (whole frames)"));
    }
    match s.get::<&str>("stream-format").ok() {
        Some("byte-stream") => Ok(Framing::ByteStream),
        Some("avc") => {
            let data = s
                .get::<gst::Buffer>("codec_data")
                .map_err(|_| bad("stream-format avc without codec_data"))?;
            let map = data
                .map_readable()
                .map_err(|_| bad("codec_data cannot be read"))?;
            Ok(Framing::from_avcc(map.as_slice())?)
        }
        _ => Err(bad("stream-format is neither byte-stream nor avc")),
    }
}

/// `buffer` with `captured_at_ms` stamped into its access unit: a new buffer with the same
/// timestamps, flags and metadata (the parser's output is shared, not ours to write into).
pub fn stamped(
    buffer: &gst::BufferRef,
    framing: Framing,
    captured_at_ms: u64,
) -> Result<gst::Buffer, StampError> {
    let map = buffer
        .map_readable()
        .map_err(|e| StampError::Buffer(e.to_string()))?;
    let bytes = sei::insert(map.as_slice(), framing, &sei::stamp_nal(captured_at_ms))?;
    drop(map);
    let mut out = gst::Buffer::from_mut_slice(bytes);
    buffer
        .copy_into(
            out.get_mut().expect("a new buffer has one owner"),
            gst::BufferCopyFlags::FLAGS
                | gst::BufferCopyFlags::TIMESTAMPS
                | gst::BufferCopyFlags::META,
            ..,
        )
        .map_err(|e| StampError::Buffer(e.to_string()))?;
    Ok(out)
}

/// The frame's stamp: its capture time, from its PTS's running time in `segment`.
fn stamp_one(
    buffer: gst::Buffer,
    framing: Framing,
    segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
    pipeline: &gst::Pipeline,
) -> Result<gst::Buffer, (gst::Buffer, StampError)> {
    let Some(pts) = buffer.pts() else {
        return Ok(buffer);
    };
    let running = segment.and_then(|s| s.to_running_time(pts)).unwrap_or(pts);
    let Some(ms) = captured_at_ms(pipeline, running) else {
        return Ok(buffer);
    };
    match stamped(&buffer, framing, ms) {
        Ok(b) => Ok(b),
        Err(e) => Err((buffer, e)),
    }
}

/// Stamps every frame leaving `parse` (the upload's `h264parse`) with its capture time in
/// `pipeline`, in the framing its negotiated output caps say (byte-stream for MPEG-TS and HLS,
/// AVC for FLV). A frame that cannot be stamped goes on as it is (said once): the upload never
/// loses a frame for a stamp.
pub fn stamp_frames(parse: &gst::Element, pipeline: &gst::Pipeline) -> Result<(), StampError> {
    let pad = parse
        .static_pad("src")
        .ok_or_else(|| StampError::NoPad(parse.name().to_string()))?;
    let weak = pipeline.downgrade();
    let warned = AtomicBool::new(false);
    let warn = move |e: &StampError| {
        if !warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "upload frames go without their capture time");
        }
    };
    let said = AtomicBool::new(false);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |pad, info| {
            let Some(pipeline) = weak.upgrade() else {
                return gst::PadProbeReturn::Ok;
            };
            let framing = match pad.current_caps().as_deref().map(framing) {
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    warn(&e);
                    return gst::PadProbeReturn::Ok;
                }
                None => return gst::PadProbeReturn::Ok,
            };
            if !said.swap(true, Ordering::Relaxed) {
                tracing::info!(?framing, "upload frames carry their capture time");
            }
            let segment = pad.sticky_event::<gst::event::Segment>(0);
            let segment = segment
                .as_ref()
                .and_then(|ev| ev.segment().downcast_ref::<gst::ClockTime>().cloned());
            let one = |b: gst::Buffer| match stamp_one(b, framing, segment.as_ref(), &pipeline) {
                Ok(b) => b,
                Err((b, e)) => {
                    warn(&e);
                    b
                }
            };
            match info.data.take() {
                Some(gst::PadProbeData::Buffer(b)) => {
                    info.data = Some(gst::PadProbeData::Buffer(one(b)));
                }
                Some(gst::PadProbeData::BufferList(mut list)) => {
                    list.make_mut()
                        .foreach_mut(|b, _| std::ops::ControlFlow::Continue(Some(one(b))));
                    info.data = Some(gst::PadProbeData::BufferList(list));
                }
                other => info.data = other,
            }
            gst::PadProbeReturn::Ok
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_as_old_as_the_running_time_since_it() {
        let now = Duration::from_millis(1_796_680_208_000);
        let ms = gst::ClockTime::from_mseconds;
        assert_eq!(
            capture_time_ms(now, ms(10_000), ms(9_900)),
            1_796_680_207_900
        );
        // a frame stamped in the future (clock skew) is taken as captured now
        assert_eq!(capture_time_ms(now, ms(10), ms(20)), 1_796_680_208_000);
        // rounded down once, from nanoseconds: the stamp and the event agree to the ms
        let now = Duration::from_nanos(1_796_680_208_000_400_000);
        assert_eq!(
            capture_time_ms(
                now,
                gst::ClockTime::from_nseconds(5_000_600_000),
                gst::ClockTime::from_nseconds(5_000_000_000),
            ),
            1_796_680_207_999
        );
    }

    #[test]
    fn framing_follows_the_negotiated_caps() {
        gst::init().expect("gstreamer");
        let byte_stream = gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build();
        assert_eq!(framing(&byte_stream), Ok(Framing::ByteStream));
        let avcc = gst::Buffer::from_slice([1u8, 0x4d, 0x40, 0x1f, 0xff, 0xe1, 0, 0]);
        let avc = gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", avcc)
            .build();
        assert_eq!(framing(&avc), Ok(Framing::Avc { length_size: 4 }));
        let nal = gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "nal")
            .build();
        assert!(
            matches!(framing(&nal), Err(StampError::Caps { why, .. }) if why.contains("alignment"))
        );
    }

    #[test]
    fn a_stamped_buffer_keeps_its_timestamps_and_flags() {
        gst::init().expect("gstreamer");
        let au = [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x21];
        let mut buffer = gst::Buffer::from_slice(au);
        {
            let b = buffer.get_mut().expect("owned");
            b.set_pts(gst::ClockTime::from_mseconds(40));
            b.set_dts(gst::ClockTime::from_mseconds(40));
            b.set_duration(gst::ClockTime::from_mseconds(33));
            b.set_flags(gst::BufferFlags::HEADER);
        }
        let out = stamped(&buffer, Framing::ByteStream, 123).expect("stamped");
        assert_eq!(out.pts(), buffer.pts());
        assert_eq!(out.dts(), buffer.dts());
        assert_eq!(out.duration(), buffer.duration());
        assert!(out.flags().contains(gst::BufferFlags::HEADER));
        let map = out.map_readable().expect("readable");
        assert_eq!(
            sei::find_stamps(map.as_slice(), Framing::ByteStream),
            Ok(vec![123])
        );
        assert!(map.as_slice().ends_with(&au));
    }
}
