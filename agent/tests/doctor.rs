//! `spotter-agent doctor` reports what works and names what does not, with the fix.

mod support;

use std::path::Path;

use spotter_agent::config::RawConfig;
use spotter_agent::doctor::{report, run_checks, Check, Verdict};

fn config(catalog: &Path, model: &Path, broker_port: u16) -> spotter_agent::config::AgentConfig {
    let text = format!(
        "studio = \"doc\"\n[source]\nkind = \"test\"\n[analysis]\ncatalog = \"{}\"\nmodel = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n",
        catalog.display(),
        model.display()
    );
    let raw: RawConfig = toml::from_str(&text).expect("config parses");
    raw.validate().expect("config is valid")
}

/// The check called `name` for the test pattern with `source` added to its `[source]` table and
/// `upload` as the `[upload]` table's body, catalog and model in `dir`; `None` if there is none.
fn check_named(dir: &Path, source: &str, upload: &str, name: &str) -> Option<Check> {
    let text = format!(
        "studio = \"doc\"\n[source]\nkind = \"test\"\n{source}\n[analysis]\ncatalog = \"{}\"\n\
         model = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[upload]\n{upload}\n",
        dir.display(),
        support::model_path().display(),
        closed_port(),
    );
    let raw: RawConfig = toml::from_str(&text).expect("config parses");
    run_checks(&raw.validate().expect("config is valid"))
        .into_iter()
        .find(|c| c.name == name)
}

fn closed_port() -> u16 {
    // bind then drop: nothing listens there afterwards
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn reports_each_check_and_fails_on_a_dead_broker_and_missing_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    let model = support::model_path();

    let checks = run_checks(&config(dir.path(), &model, closed_port()));
    let verdict = |name: &str| checks.iter().find(|c| c.name == name).map(|c| c.verdict);
    assert_eq!(verdict("gstreamer"), Some(Verdict::Ok));
    assert_eq!(verdict("source"), Some(Verdict::Ok));
    assert_eq!(verdict("catalog"), Some(Verdict::Ok));
    assert_eq!(verdict("model"), Some(Verdict::Ok));
    assert!(matches!(
        verdict("inference"),
        Some(Verdict::Ok | Verdict::Warn)
    ));
    assert_eq!(verdict("broker"), Some(Verdict::Fail));
    let mut out = Vec::new();
    assert!(
        !report(&checks, &mut out).expect("write"),
        "a failed check fails the report"
    );
    let text = String::from_utf8(out).expect("utf8");
    assert!(
        text.contains("FAIL  broker") && text.contains("is the broker"),
        "{text}"
    );

    let checks = run_checks(&config(
        dir.path(),
        &dir.path().join("nope.safetensors"),
        closed_port(),
    ));
    let model_check = checks
        .iter()
        .find(|c| c.name == "model")
        .expect("model check");
    assert_eq!(model_check.verdict, Verdict::Fail);
    assert!(
        model_check.detail.contains("make setup"),
        "{}",
        model_check.detail
    );
}

#[test]
fn names_the_encoder_it_picked_and_a_missing_camera() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    let text = format!(
        "studio = \"doc\"\n[source]\nkind = \"v4l2\"\ndevice = \"/dev/video-spotter-missing\"\n\
         width = 1280\nheight = 720\n[analysis]\ncatalog = \"{}\"\nmodel = \"{}\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[upload]\nkind = \"hls\"\nhls_dir = \"{}/hls\"\n",
        dir.path().display(),
        support::model_path().display(),
        closed_port(),
        dir.path().display(),
    );
    let raw: RawConfig = toml::from_str(&text).expect("config parses");
    let checks = run_checks(&raw.validate().expect("config is valid"));
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
    };
    // no GPU here: the software encoder, said so, and it encodes
    let encoder = find("encoder");
    assert_eq!(encoder.verdict, Verdict::Ok, "{encoder:?}");
    assert!(
        encoder.detail.contains("x264enc") && encoder.detail.contains("no hardware encoder"),
        "{encoder:?}"
    );
    let source = find("source");
    assert_eq!(source.verdict, Verdict::Fail, "{source:?}");
    assert!(
        source
            .detail
            .contains("/dev/video-spotter-missing does not exist"),
        "{source:?}"
    );
}

#[test]
fn the_sound_beside_the_camera_is_heard_or_named_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    let hls = format!("kind = \"hls\"\nhls_dir = \"{}/hls\"", dir.path().display());
    let sound = |audio: &str| check_named(dir.path(), audio, &hls, "sound");
    assert!(sound("").is_none(), "no sound configured, none checked");
    let tone = sound("audio = \"test\"").expect("a sound check");
    assert_eq!(tone.verdict, Verdict::Ok, "{tone:?}");
    let card = sound("audio = \"alsa\"\naudio_device = \"hw:CARD=SpotterNoSuchCard\"")
        .expect("a sound check");
    assert_eq!(card.verdict, Verdict::Fail, "{card:?}");
    assert!(
        card.detail.contains("hw:CARD=SpotterNoSuchCard") && card.detail.contains("arecord -L"),
        "{card:?}"
    );
}

#[test]
fn the_ingest_is_reached_or_named_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::mug_catalog(dir.path());
    std::fs::write(dir.path().join("key"), "doctorsecretkey\n").expect("write key");
    let ingest = |url: &str| {
        let upload = format!(
            "kind = \"rtmp\"\nurl = \"{url}\"\nstream_key_file = \"{}/key\"",
            dir.path().display()
        );
        check_named(dir.path(), "", &upload, "ingest").expect("an ingest check")
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = listener.local_addr().expect("addr").port();
    let up = ingest(&format!("rtmp://127.0.0.1:{open}/app/"));
    assert_eq!(up.verdict, Verdict::Ok, "{up:?}");
    let down = ingest(&format!("rtmp://127.0.0.1:{}/app/", closed_port()));
    assert_eq!(down.verdict, Verdict::Fail, "{down:?}");
    assert!(
        down.detail.contains("upload.url") && !down.detail.contains("doctorsecretkey"),
        "{down:?}"
    );
    let nowhere = ingest("rtmps://spotter-no-such-ingest.invalid/app/");
    assert_eq!(nowhere.verdict, Verdict::Fail, "{nowhere:?}");
    assert!(nowhere.detail.contains("does not resolve"), "{nowhere:?}");
}

#[test]
fn says_whether_the_uploaded_frames_carry_their_capture_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hls = format!(
        "kind = \"hls\"\nhls_dir = \"{}\"",
        dir.path().join("hls").display()
    );
    let on = check_named(dir.path(), "", &hls, "stamps").expect("a stamps check");
    assert_eq!(on.verdict, Verdict::Ok, "{on:?}");
    assert!(on.detail.contains("byte-stream"), "{on:?}");

    let off = check_named(
        dir.path(),
        "",
        &format!("{hls}\ncapture_stamps = false"),
        "stamps",
    )
    .expect("a stamps check");
    assert_eq!(off.verdict, Verdict::Warn, "{off:?}");
    assert!(off.detail.contains("upload.capture_stamps"), "{off:?}");

    // RTMP (IVS) takes FLV: the stamps go in length-prefixed
    std::fs::write(dir.path().join("key"), "k\n").expect("write key");
    let rtmp = format!(
        "kind = \"rtmp\"\nurl = \"rtmp://127.0.0.1:{}/app/\"\nstream_key_file = \"{}/key\"",
        closed_port(),
        dir.path().display()
    );
    let avc = check_named(dir.path(), "", &rtmp, "stamps").expect("a stamps check");
    assert_eq!(avc.verdict, Verdict::Ok, "{avc:?}");
    assert!(avc.detail.contains("avc"), "{avc:?}");

    // nothing uploaded, nothing to stamp
    assert!(check_named(dir.path(), "", "kind = \"none\"", "stamps").is_none());
}
