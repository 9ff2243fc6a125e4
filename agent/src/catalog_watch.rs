//! Reloads the catalog index without a restart: a product added mid-show is recognised within
//! seconds of its photos and `catalog.toml` entry landing in the catalog directory.
//!
//! The directory is polled (a listing of names, sizes and modification times is cheap, works on
//! every file system, and needs no inotify limits); a changed listing triggers a lenient reload.
//! A catalog that no longer parses is reported and the current index stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spotter_protocol::Catalog;
use tokio_util::sync::CancellationToken;

use crate::recognizer::Recognizer;

/// A directory listing: (path, size, modification time), sorted; `catalog.toml` and image files
/// up to two levels down (nothing else in the directory, a log or an outbox, triggers a reload).
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn is_catalog_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    path.file_name()
        .is_some_and(|n| n == spotter_protocol::catalog::CATALOG_FILE)
        || matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Lists the catalog directory.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    fn walk(dir: &Path, depth: usize, out: &mut Fingerprint) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth > 0 {
                    walk(&path, depth - 1, out);
                }
            } else if is_catalog_file(&path) {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 2, &mut out);
    out.sort();
    out
}

/// Reloads `recognizer`'s index from `dir` once; logs what happened.
pub fn reload_once(recognizer: &Recognizer, dir: &Path) {
    match Catalog::load_lenient(dir) {
        Err(e) => {
            tracing::error!(error = %e, "catalog changed but cannot be read; keeping the current index")
        }
        Ok((catalog, issues)) => {
            for issue in &issues {
                tracing::warn!(problem = %issue, "catalog entry left out");
            }
            match recognizer.reload(&catalog) {
                Ok(report) => {
                    for r in &report.refused {
                        tracing::warn!(sku = %r.sku, photo = %r.photo, reason = %r.reason, "reference photo left out");
                    }
                    tracing::info!(
                        products = report.products,
                        photos = report.photos,
                        refused = report.refused.len(),
                        "catalog reloaded"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "catalog reload failed; keeping the current index")
                }
            }
        }
    }
}

/// Polls `dir` every `every` and reloads on change, until `stop`.
pub fn spawn(
    recognizer: Arc<Recognizer>,
    dir: PathBuf,
    every: Duration,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("catalog-watch".into())
        .spawn(move || {
            let mut last = fingerprint(&dir);
            let step = Duration::from_millis(100).min(every);
            let mut waited = Duration::ZERO;
            while !stop.is_cancelled() {
                std::thread::sleep(step);
                waited += step;
                if waited < every {
                    continue;
                }
                waited = Duration::ZERO;
                let now = fingerprint(&dir);
                if now != last {
                    last = now;
                    reload_once(&recognizer, &dir);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_when_a_file_is_added_or_rewritten() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("catalog.toml"), "x").expect("write");
        let a = fingerprint(d.path());
        assert_eq!(a, fingerprint(d.path()), "stable when nothing changes");
        std::fs::write(d.path().join("agent.log"), "noise").expect("write");
        assert_eq!(
            a,
            fingerprint(d.path()),
            "files that are not the catalog's do not count"
        );
        std::fs::create_dir(d.path().join("photos")).expect("mkdir");
        std::fs::write(d.path().join("photos/new.png"), "png").expect("write");
        let b = fingerprint(d.path());
        assert_ne!(a, b);
        std::fs::write(d.path().join("catalog.toml"), "xy").expect("rewrite");
        assert_ne!(b, fingerprint(d.path()));
    }
}
