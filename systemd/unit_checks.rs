//! Checks of a shipped systemd unit with systemd's own tools, shared by the agent's and the
//! bridge's tests (included with `#[path]`): the exposure rating of
//! `systemd-analyze security --offline=true`, `systemd-analyze verify`, and a way to start a
//! binary as systemd would for the notify protocol (`WATCHDOG_PID` is the service's own pid).

use std::path::Path;
use std::process::Command;

/// The overall exposure `systemd-analyze security --offline=true` gives `unit` (0.0 to 10.0).
pub fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (the systemd package) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level from systemd-analyze security: {}\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.rsplit(": ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

/// Runs `systemd-analyze verify` on a copy of `unit` whose command lines run `built` instead of
/// `installed` (verify checks that the program exists, and the shipped unit names /usr/bin);
/// returns what verify said, which is empty for a clean unit. Panics if it fails.
pub fn verify_with(unit: &Path, installed: &str, built: &str) -> String {
    let text = std::fs::read_to_string(unit).expect("the unit file");
    assert!(text.contains(installed), "the unit runs {installed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join(unit.file_name().expect("a unit file name"));
    std::fs::write(&copy, text.replace(installed, built)).expect("write the unit's copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (the systemd package) is installed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    said
}

/// `program args` wrapped so that it runs with `WATCHDOG_PID` set to its own pid, as systemd
/// sets it (the shell execs the program, keeping its pid): the program and its arguments.
pub fn with_watchdog_pid(program: &str, args: &[String]) -> (String, Vec<String>) {
    let mut all = vec![
        "-c".to_owned(),
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\"".to_owned(),
        program.to_owned(),
    ];
    all.extend(args.iter().cloned());
    ("sh".to_owned(), all)
}
