//! The plain HTTP endpoints: health, the viewer page and its static files, stream info, product
//! images and metrics.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use spotter_protocol::viewer::{ApiError, StreamInfo};
use tracing::warn;

use super::AppState;
use crate::shelf::{image_content_type, sha256_hex};

/// The viewer page, embedded at build time.
pub const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The page's entry script.
pub const APP_JS: &str = include_str!("../../web/app.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("../../web/style.css");

/// The page's own files under `/static/`, embedded at build time: name, content type, body. The
/// page is plain ES modules, so each module the entry script imports is listed here.
pub const STATIC_FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, APP_JS),
    ("cards.js", JS, include_str!("../../web/cards.js")),
    ("chat.js", JS, include_str!("../../web/chat.js")),
    ("player.js", JS, include_str!("../../web/player.js")),
    ("sync.js", JS, include_str!("../../web/sync.js")),
    ("style.css", "text/css; charset=utf-8", STYLE_CSS),
];

const JS: &str = "text/javascript; charset=utf-8";

const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn with_headers(
    status: StatusCode,
    content_type: &'static str,
    cache: &'static str,
    body: impl IntoResponse,
) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

/// A JSON error body.
pub fn json_error(status: StatusCode, error: String) -> Response {
    with_headers(
        status,
        "application/json",
        NO_CACHE,
        ApiError { error }.encode(),
    )
}

/// The 404 for a stream this bridge does not serve.
pub fn not_found_json(studio: &str, stream: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no stream {studio}/{stream} on this bridge"),
    )
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 while subscribed to the broker (events reach this bridge's viewers) and not
/// stopping; 503 with the reason otherwise, so a balancer sends viewers elsewhere.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let reason = if app.shutdown.is_cancelled() {
        "the bridge is stopping"
    } else if !*app.subscribed.borrow() {
        "not subscribed to the broker: see the log for the connection error"
    } else {
        return with_headers(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            NO_CACHE,
            "ready",
        );
    };
    json_error(StatusCode::SERVICE_UNAVAILABLE, reason.to_owned())
}

/// `GET /`: the first configured stream's page.
pub async fn root(State(app): State<AppState>) -> Response {
    match app.hubs.all().first() {
        Some(hub) => Redirect::temporary(&format!(
            "/watch/{}/{}",
            hub.config.studio, hub.config.stream
        ))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "no streams configured").into_response(),
    }
}

/// `GET /watch/{studio}/{stream}`: the page (404 with the same page, which then says so, for a
/// stream not served here).
pub async fn watch(
    State(app): State<AppState>,
    Path((studio, stream)): Path<(String, String)>,
) -> Response {
    let status = if app.hubs.get(&studio, &stream).is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    with_headers(status, "text/html; charset=utf-8", NO_CACHE, INDEX_HTML)
}

/// `GET /static/{file}`: the page's own files.
pub async fn static_file(Path(file): Path<String>) -> Response {
    match STATIC_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            with_headers(StatusCode::OK, content_type, NO_CACHE, *body)
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// Whether a name is one plain file name (no separators, no `..`, nothing hidden).
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn vendor_content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, e)| e) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        // WebAssembly.instantiateStreaming refuses any other type (the IVS player's worker)
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// `GET /static/vendor/{file}`: third-party browser code from `web.vendor_dir`.
pub async fn vendor(State(app): State<AppState>, Path(file): Path<String>) -> Response {
    let Some(dir) = &app.web.vendor_dir else {
        return (StatusCode::NOT_FOUND, "no web.vendor_dir configured").into_response();
    };
    if !is_plain_file_name(&file) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let path: PathBuf = dir.join(&file);
    match tokio::fs::read(&path).await {
        Ok(bytes) => with_headers(
            StatusCode::OK,
            vendor_content_type(&file),
            "public, max-age=3600",
            bytes,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read vendor file");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read file").into_response()
        }
    }
}

/// `GET /api/streams/{studio}/{stream}`
pub async fn stream_info(
    State(app): State<AppState>,
    Path((studio, stream)): Path<(String, String)>,
) -> Response {
    match app.hubs.get(&studio, &stream) {
        Some(hub) => {
            let info = StreamInfo {
                studio: hub.config.studio.clone(),
                stream: hub.config.stream.clone(),
                video_url: hub.config.video_url.clone(),
            };
            with_headers(StatusCode::OK, "application/json", NO_CACHE, info.encode())
        }
        None => not_found_json(&studio, &stream),
    }
}

/// `GET /img/{hash}/{file}`: a catalog image under its content hash, cacheable forever.
pub async fn image(
    State(app): State<AppState>,
    Path((hash, file)): Path<(String, String)>,
) -> Response {
    let Some(image) = app.shelf.image(&hash, &file).cloned() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    // Read and re-hash off the async workers: the bytes served must be the bytes named.
    let read = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&image.path)?;
        let same = sha256_hex(&bytes) == image.sha256;
        Ok::<_, std::io::Error>((bytes, same, image))
    })
    .await;
    match read {
        Ok(Ok((bytes, true, image))) => {
            let mut resp = with_headers(
                StatusCode::OK,
                image_content_type(&image.file_name),
                IMMUTABLE,
                bytes,
            );
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{hash}\"")) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            resp
        }
        Ok(Ok((_, false, image))) => {
            warn!(path = %image.path.display(), "catalog image changed since start: restart the bridge to serve it under its new URL");
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        Ok(Err(e)) => {
            warn!(file, error = %e, "cannot read catalog image");
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        Err(e) => {
            warn!(error = %e, "image task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// `GET /metrics`
pub async fn metrics(State(app): State<AppState>) -> Response {
    with_headers(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        NO_CACHE,
        app.metrics.render(),
    )
}

/// Anything else.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names_only() {
        for ok in ["hls.min.js", "hls.min.js.map", "a_b-c.js"] {
            assert!(is_plain_file_name(ok), "{ok}");
        }
        for bad in ["", "..", ".env", "../x", "a/b", "a\\b", "a%2Fb", "x y"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }
}
