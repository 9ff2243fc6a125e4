//! `spotter-agent doctor`: checks what a studio needs before going live and says what to fix.
//!
//! Each check is independent and reports `ok`, `warn` or `FAIL` with a one-line reason; the
//! command fails if any check fails. Nothing here changes state.

use std::net::ToSocketAddrs;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::config::{host_port, AgentConfig, Source, Upload};
use crate::encoder::{EncoderChoice, EncoderKind};

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Will not work: fix before going live.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it went.
    pub verdict: Verdict,
    /// Why, and what to do.
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// GStreamer elements the configuration needs, with the Debian package that has each.
fn needed_elements(cfg: &AgentConfig) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("videoconvert", "gstreamer1.0-plugins-base"),
        ("videoscale", "gstreamer1.0-plugins-base"),
        ("videorate", "gstreamer1.0-plugins-base"),
        ("appsink", "gstreamer1.0-plugins-base"),
        ("tee", "libgstreamer1.0-0"),
        ("queue", "libgstreamer1.0-0"),
    ];
    match cfg.source {
        Source::Test { .. } => v.push(("videotestsrc", "gstreamer1.0-plugins-base")),
        Source::Uri { .. } => {
            v.push(("uridecodebin", "gstreamer1.0-plugins-base"));
            v.push(("avdec_h264", "gstreamer1.0-libav"));
        }
        Source::V4l2 { .. } => v.push(("v4l2src", "gstreamer1.0-plugins-good")),
    }
    // the encoder has its own check: which one is used depends on what is present
    match cfg.upload {
        Upload::None => {}
        Upload::Hls { .. } => {
            v.push(("h264parse", "gstreamer1.0-plugins-bad"));
            v.push(("hlssink2", "gstreamer1.0-plugins-bad"));
        }
        Upload::Rtmp { .. } => {
            v.push(("h264parse", "gstreamer1.0-plugins-bad"));
            v.push(("flvmux", "gstreamer1.0-plugins-good"));
            v.push(("rtmp2sink", "gstreamer1.0-plugins-bad"));
        }
        Upload::Srt { .. } => {
            v.push(("h264parse", "gstreamer1.0-plugins-bad"));
            v.push(("mpegtsmux", "gstreamer1.0-plugins-bad"));
            v.push(("srtsink", "gstreamer1.0-plugins-bad"));
        }
    }
    if let Source::V4l2 { mode, .. } = &cfg.source {
        if mode.is_jpeg() {
            v.push(("jpegdec", "gstreamer1.0-plugins-good"));
        }
    }
    if let Some(audio) = cfg.source.live_audio() {
        v.push(audio.factory());
    }
    v
}

fn check_elements(cfg: &AgentConfig) -> Check {
    if let Err(e) = gst::init() {
        return check(
            "gstreamer",
            Verdict::Fail,
            format!("cannot initialise GStreamer: {e}"),
        );
    }
    let missing: Vec<String> = needed_elements(cfg)
        .into_iter()
        .filter(|(name, _)| gst::ElementFactory::find(name).is_none())
        .map(|(name, pkg)| format!("{name} (apt-get install {pkg})"))
        .collect();
    if missing.is_empty() {
        let (major, minor, micro, _) = gst::version();
        check(
            "gstreamer",
            Verdict::Ok,
            format!("GStreamer {major}.{minor}.{micro}, every element present"),
        )
    } else {
        check(
            "gstreamer",
            Verdict::Fail,
            format!("missing: {}", missing.join(", ")),
        )
    }
}

/// Which encoder the upload will use, and whether it encodes a few frames.
fn check_encoder(cfg: &AgentConfig) -> Option<Check> {
    let choice = cfg.upload.encoder()?;
    if gst::init().is_err() {
        return None; // the gstreamer check says why
    }
    let kind = match crate::encoder::choose_here(choice) {
        Ok(k) => k,
        Err(e) => return Some(check("encoder", Verdict::Fail, e.to_string())),
    };
    let how = match choice {
        EncoderChoice::Auto if kind.is_hardware() => "hardware, picked automatically",
        EncoderChoice::Auto => "software: no hardware encoder found (nvv4l2h264enc, nvh264enc, vah264enc, vaapih264enc)",
        EncoderChoice::Force(_) => "forced by upload.encoder",
    };
    // an element can be registered and still fail to open its device: encode a few frames
    let convert = if kind == EncoderKind::NvV4l2 {
        "nvvidconv ! video/x-raw(memory:NVMM)"
    } else {
        "videoconvert"
    };
    let launch = format!(
        "videotestsrc num-buffers=10 ! video/x-raw,width=640,height=360 ! {convert} ! {} ! fakesink",
        kind.factory()
    );
    let works = gst::parse::launch(&launch).ok().and_then(|p| {
        let bus = p.bus()?;
        p.set_state(gst::State::Playing).ok()?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let _ = p.set_state(gst::State::Null);
        msg.map(|m| matches!(m.view(), gst::MessageView::Eos(_)))
    });
    Some(if works == Some(true) {
        check(
            "encoder",
            Verdict::Ok,
            format!("{} ({how})", kind.factory()),
        )
    } else {
        check(
            "encoder",
            Verdict::Fail,
            format!(
                "{} ({how}) did not encode a test clip: check its driver, or set upload.encoder",
                kind.factory()
            ),
        )
    })
}

fn check_source(cfg: &AgentConfig) -> Check {
    let launch = match &cfg.source {
        Source::Test { .. } => return check("source", Verdict::Ok, "test pattern"),
        Source::Uri { uri, .. } => format!("uridecodebin uri=\"{uri}\" ! fakesink"),
        Source::V4l2 { device, mode, .. } => {
            if let Err(e) = gst::init() {
                return check("source", Verdict::Fail, format!("GStreamer: {e}"));
            }
            return match crate::camera::check(device, mode) {
                Ok(()) => check(
                    "source",
                    Verdict::Ok,
                    format!("{} opens and offers {}", device.display(), mode.describe()),
                ),
                Err(e) => check("source", Verdict::Fail, e.to_string()),
            };
        }
    };
    let pipeline = match gst::parse::launch(&launch) {
        Ok(p) => p,
        Err(e) => {
            return check(
                "source",
                Verdict::Fail,
                format!("cannot build a pipeline for it: {e}"),
            )
        }
    };
    let _ = pipeline.set_state(gst::State::Paused);
    let (result, state, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    let bus_error = pipeline.bus().and_then(|bus| {
        bus.pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
    });
    let _ = pipeline.set_state(gst::State::Null);
    match (result, bus_error) {
        (_, Some(err)) => check(
            "source",
            Verdict::Fail,
            format!("{launch:?} does not open: {err}"),
        ),
        (Ok(_), None) if state >= gst::State::Paused => {
            check("source", Verdict::Ok, "opens and delivers video")
        }
        _ => check(
            "source",
            Verdict::Fail,
            "did not deliver a frame within 10 s",
        ),
    }
}

/// Whether the sound device beside the camera opens and delivers sound within 3 s.
fn check_audio(cfg: &AgentConfig) -> Option<Check> {
    let audio = cfg.source.live_audio()?;
    if cfg.upload == Upload::None {
        return Some(check(
            "sound",
            Verdict::Warn,
            format!("source.audio is set ({audio}) but there is no upload: the sound goes nowhere"),
        ));
    }
    if let Err(e) = gst::init() {
        return Some(check("sound", Verdict::Fail, format!("GStreamer: {e}")));
    }
    let what_to_do = match audio {
        crate::audio::LiveAudio::Alsa { .. } => {
            "list the capture devices with `arecord -L` and set source.audio_device"
        }
        crate::audio::LiveAudio::Pulse { .. } => {
            "list the sources with `pactl list short sources` and set source.audio_device"
        }
        crate::audio::LiveAudio::Test => "reinstall gstreamer1.0-plugins-base",
    };
    let fail = |why: String| {
        Some(check(
            "sound",
            Verdict::Fail,
            format!("{audio}: {why}; {what_to_do}"),
        ))
    };
    let src = match audio.element() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let Ok(sink) = gst::ElementFactory::make("fakesink").build() else {
        return fail("fakesink is missing".into());
    };
    let pipeline = gst::Pipeline::new();
    if pipeline.add_many([&src, &sink]).is_err() || src.link(&sink).is_err() {
        return fail("cannot build a pipeline for it".into());
    }
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(pad) = sink.static_pad("sink") {
        let heard = heard.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            heard.store(true, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut error = None;
    while error.is_none()
        && !heard.load(std::sync::atomic::Ordering::Relaxed)
        && std::time::Instant::now() < deadline
    {
        error = bus
            .as_ref()
            .and_then(|b| {
                b.timed_pop_filtered(
                    gst::ClockTime::from_mseconds(50),
                    &[gst::MessageType::Error],
                )
            })
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            });
    }
    let _ = pipeline.set_state(gst::State::Null);
    match error {
        Some(e) => fail(format!("does not open: {e}")),
        None if heard.load(std::sync::atomic::Ordering::Relaxed) => Some(check(
            "sound",
            Verdict::Ok,
            format!("{audio} delivers sound"),
        )),
        None => fail("delivered no sound within 3 s".into()),
    }
}

fn check_model_and_catalog(cfg: &AgentConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let catalog = match spotter_protocol::Catalog::load(&cfg.analysis.catalog) {
        Ok(c) => {
            let photos: usize = c.products.iter().map(|p| p.images.len()).sum();
            out.push(check(
                "catalog",
                Verdict::Ok,
                format!("{} products, {photos} photos", c.products.len()),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(check("catalog", Verdict::Fail, e.to_string()));
            None
        }
    };
    let device = crate::recognizer::device();
    match crate::recognizer::load_model(&cfg.analysis.model, &device) {
        Ok(_) => out.push(check(
            "model",
            Verdict::Ok,
            format!("{} loads on {device:?}", cfg.analysis.model.display()),
        )),
        Err(e) => out.push(check("model", Verdict::Fail, e.to_string())),
    }
    if let Some(c) = catalog {
        let w = cfg.analysis.width as usize;
        let h = cfg.analysis.height as usize;
        match crate::recognizer::Recognizer::load(&cfg.analysis.model, &c, w, h) {
            Ok((r, report)) => {
                if !report.refused.is_empty() {
                    out.push(check(
                        "photos",
                        Verdict::Warn,
                        format!(
                            "{} reference photos left out (run `spotter-agent catalog build {}`)",
                            report.refused.len(),
                            cfg.analysis.catalog.display()
                        ),
                    ));
                }
                let frame = vec![127u8; w * h * 3];
                match r
                    .recognise(&frame, w * 3)
                    .and_then(|_| r.recognise(&frame, w * 3))
                {
                    Ok(rec) => {
                        let fps = 1000.0 / f64::from(rec.inference_ms.max(0.001));
                        let verdict = if fps >= cfg.analysis.fps {
                            Verdict::Ok
                        } else {
                            Verdict::Warn
                        };
                        out.push(check(
                            "inference",
                            verdict,
                            format!(
                                "{:.0} ms a frame at {w}x{h} (up to {fps:.1} frames/s; configured {})",
                                rec.inference_ms, cfg.analysis.fps
                            ),
                        ));
                    }
                    Err(e) => out.push(check("inference", Verdict::Fail, e.to_string())),
                }
            }
            Err(e) => out.push(check("inference", Verdict::Fail, e.to_string())),
        }
    }
    out
}

fn check_broker(cfg: &AgentConfig) -> Check {
    let b = &cfg.mqtt.broker;
    // an IPv6 address is bracketed to be resolved with its port
    let addr = if b.host().contains(':') {
        format!("[{}]:{}", b.host(), b.port())
    } else {
        format!("{}:{}", b.host(), b.port())
    };
    let resolved = match addr.to_socket_addrs() {
        Ok(mut a) => a.next(),
        Err(e) => {
            return check(
                "broker",
                Verdict::Fail,
                format!("cannot resolve {addr}: {e}"),
            )
        }
    };
    let Some(sock) = resolved else {
        return check(
            "broker",
            Verdict::Fail,
            format!("{addr} resolves to nothing"),
        );
    };
    match std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)) {
        Ok(_) => check("broker", Verdict::Ok, format!("{addr} accepts connections")),
        Err(e) => check(
            "broker",
            Verdict::Fail,
            format!("{addr}: {e}: is the broker (or the bridge's embedded one) running?"),
        ),
    }
}

/// Whether the upload's destination answers: an RTMP(S) ingest accepts a TCP connection, an
/// SRT ingest's name resolves (SRT runs over UDP: only a stream can tell it answers), an HLS
/// directory takes a file. The stream key is never part of what is shown.
fn check_ingest(cfg: &AgentConfig) -> Option<Check> {
    let (url, default_port) = match &cfg.upload {
        Upload::None => return None,
        Upload::Hls { dir, .. } => {
            let probe = dir.join(".spotter-doctor");
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&probe, b"ok"))
                .and_then(|()| std::fs::remove_file(&probe));
            return Some(match written {
                Ok(()) => check(
                    "ingest",
                    Verdict::Ok,
                    format!("{} is writable", dir.display()),
                ),
                Err(e) => check(
                    "ingest",
                    Verdict::Fail,
                    format!("cannot write to {}: {e}", dir.display()),
                ),
            });
        }
        Upload::Rtmp { url, .. } if url.starts_with("rtmps://") => (url, 443),
        Upload::Rtmp { url, .. } => (url, 1935),
        Upload::Srt { uri, .. } => (uri, 0),
    };
    let (host, port) = match host_port(url, default_port) {
        Ok(hp) => hp,
        Err(e) => {
            return Some(check(
                "ingest",
                Verdict::Fail,
                format!("cannot tell the host and port: {e}: set upload.url"),
            ))
        }
    };
    let addr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            return Some(check(
                "ingest",
                Verdict::Fail,
                format!("{host} does not resolve: check upload.url and the box's DNS"),
            ))
        }
    };
    if matches!(cfg.upload, Upload::Srt { .. }) {
        return Some(check(
            "ingest",
            Verdict::Ok,
            format!("{host}:{port} resolves to {}; SRT runs over UDP, so only a stream shows it answers", addr.ip()),
        ));
    }
    Some(
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(_) => check(
                "ingest",
                Verdict::Ok,
                format!("{host}:{port} accepts connections"),
            ),
            Err(e) => check(
                "ingest",
                Verdict::Fail,
                format!("{host}:{port}: {e}: check upload.url and that the uplink lets it out"),
            ),
        },
    )
}

/// Whether the upload's frames will carry their capture time: with `upload.capture_stamps` on,
/// a few frames from the upload's encoder go through `h264parse` into the stream format the
/// upload's muxer takes, are stamped as the agent stamps them, and must each read back one stamp.
fn check_stamps(cfg: &AgentConfig) -> Option<Check> {
    let choice = cfg.upload.encoder()?;
    if !cfg.upload.capture_stamps() {
        return Some(check(
            "stamps",
            Verdict::Warn,
            "off (upload.capture_stamps = false): viewers' cards show when events arrive, not \
             with the frame they were recognised in",
        ));
    }
    if gst::init().is_err() {
        return None; // the gstreamer check says why
    }
    let kind = crate::encoder::choose_here(choice).ok()?; // the encoder check says why
    let format = match cfg.upload {
        Upload::Rtmp { .. } => "avc",
        _ => "byte-stream",
    };
    let convert = if kind == EncoderKind::NvV4l2 {
        "nvvidconv ! video/x-raw(memory:NVMM)"
    } else {
        "videoconvert"
    };
    let frames = 10;
    let launch = format!(
        "videotestsrc is-live=true num-buffers={frames} ! video/x-raw,width=640,height=360 ! \
         {convert} ! {} ! h264parse name=parse ! \
         video/x-h264,stream-format={format},alignment=au ! appsink name=sink sync=false",
        kind.factory()
    );
    let stamped = stamped_frames(&launch);
    Some(match stamped {
        Ok(n) if n == frames => check(
            "stamps",
            Verdict::Ok,
            format!("each frame carries its capture time (an SEI message, {format} H.264)"),
        ),
        Ok(n) => check(
            "stamps",
            Verdict::Warn,
            format!(
                "{n} of {frames} test frames carried their capture time: viewers' cards may \
                 show out of step with the picture"
            ),
        ),
        Err(why) => check(
            "stamps",
            Verdict::Warn,
            format!("cannot stamp test frames ({why}): viewers' cards may show out of step"),
        ),
    })
}

/// Runs `launch` (with a `parse` and an appsink `sink`) with the agent's stamping probe on the
/// parser, and counts the frames that reach the sink with exactly one stamp.
fn stamped_frames(launch: &str) -> Result<u32, String> {
    let pipeline = gst::parse::launch(launch)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let parse = pipeline.by_name("parse").ok_or("no parser")?;
    crate::stamp::stamp_frames(&parse, &pipeline).map_err(|e| e.to_string())?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
        .ok_or("no appsink")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let mut stamped = 0;
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        let (Some(caps), Some(buffer)) = (sample.caps(), sample.buffer()) else {
            continue;
        };
        let Ok(framing) = crate::stamp::framing(caps) else {
            continue;
        };
        let Ok(map) = buffer.map_readable() else {
            continue;
        };
        if crate::sei::find_stamps(map.as_slice(), framing).is_ok_and(|s| s.len() == 1) {
            stamped += 1;
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    Ok(stamped)
}

fn check_clock() -> Check {
    let out = std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .output();
    match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes" => {
            check("clock", Verdict::Ok, "synchronised (NTP)")
        }
        Ok(o) if o.status.success() => check(
            "clock",
            Verdict::Warn,
            "not synchronised: capture times on events will drift from the video; enable systemd-timesyncd or chrony",
        ),
        _ => check("clock", Verdict::Warn, "cannot tell (no timedatectl): make sure NTP runs"),
    }
}

/// Runs every check.
pub fn run_checks(cfg: &AgentConfig) -> Vec<Check> {
    let mut checks = vec![check_elements(cfg), check_source(cfg)];
    checks.extend(check_audio(cfg));
    checks.extend(check_encoder(cfg));
    checks.extend(check_stamps(cfg));
    checks.extend(check_ingest(cfg));
    checks.extend(check_model_and_catalog(cfg));
    checks.push(check_broker(cfg));
    checks.push(check_clock());
    checks
}

/// Writes the report; returns whether nothing failed.
pub fn report(checks: &[Check], out: &mut dyn std::io::Write) -> std::io::Result<bool> {
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "  ok ",
            Verdict::Warn => " warn",
            Verdict::Fail => " FAIL",
        };
        writeln!(out, "{tag}  {:<10} {}", c.name, c.detail)?;
    }
    Ok(checks.iter().all(|c| c.verdict != Verdict::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_urls_give_their_host_and_port() {
        let hp = |u: &str, d: u16| host_port(u, d).ok();
        assert_eq!(
            hp(
                "rtmps://a1b2.global-contribute.live-video.net:443/app/",
                443
            ),
            Some(("a1b2.global-contribute.live-video.net".into(), 443))
        );
        assert_eq!(
            hp("rtmp://ingest.local/app/", 1935),
            Some(("ingest.local".into(), 1935))
        );
        assert_eq!(
            hp("srt://10.0.0.5:9000?latency=200", 0),
            Some(("10.0.0.5".into(), 9000))
        );
        assert_eq!(hp("srt://[::1]:9000", 0), Some(("::1".into(), 9000)));
        assert_eq!(hp("rtmp://[::1]/app/", 1935), Some(("::1".into(), 1935)));
        assert_eq!(hp("rtmp://host:notaport/app", 1935), None);
        assert_eq!(hp("no-scheme", 1935), None);
    }
}
