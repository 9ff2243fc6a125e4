//! Where the workspace, its built binaries and the model weights are.

use std::path::{Path, PathBuf};

/// The workspace root (the directory above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// Directories that may hold the workspace's binaries, best first: the profile directory of the
/// running executable (`target/debug` for `target/debug/deps/e2e-*`), then
/// `$CARGO_TARGET_DIR/debug`, then `<workspace>/target/debug`.
pub fn target_profile_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if dir.file_name().is_some_and(|n| n == "deps") {
                dirs.extend(dir.parent().map(Path::to_owned));
            } else {
                dirs.push(dir.to_owned());
            }
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_absolute() {
            target
        } else {
            workspace_root().join(target)
        };
        dirs.push(target.join("debug"));
    }
    dirs.push(workspace_root().join("target").join("debug"));
    dirs.dedup();
    dirs
}

/// The path of a workspace binary such as `spotter-agent`.
///
/// # Panics
/// When it has not been built, with the command that builds it: `cargo test -p spotter-tests`
/// builds only this crate's own binaries.
pub fn bin_path(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let dirs = target_profile_dirs();
    if let Some(found) = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
        return found;
    }
    panic!(
        "binary `{name}` not found in {dirs:?}: build it first with `cargo build --bin {name}` \
         (or `cargo build --workspace`)"
    );
}

/// The EfficientNet-Lite0 weights: `$SPOTTER_MODEL`, or
/// `<workspace>/models/weights/efficientnet-lite0.safetensors`.
///
/// # Panics
/// When the file is missing, saying how to get it.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("SPOTTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/weights/efficientnet-lite0.safetensors"));
    if !path.is_file() {
        panic!(
            "model weights not found at {}: run `make setup` to fetch and convert the model weights \
             (or point SPOTTER_MODEL at a .safetensors file)",
            path.display()
        );
    }
    path
}
