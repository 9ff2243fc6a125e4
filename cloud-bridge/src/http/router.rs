//! The routes and the state every handler shares.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use super::admission::Admission;
use super::{pages, ws};
use crate::chat::{ChatConfig, Publisher};
use crate::config::{ViewerConfig, WebConfig};
use crate::hub::Hubs;
use crate::metrics::Metrics;
use crate::shelf::Shelf;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Every stream's hub.
    pub hubs: Arc<Hubs>,
    /// Catalog display data and images.
    pub shelf: Arc<Shelf>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Optional directories.
    pub web: Arc<WebConfig>,
    /// Viewer limits.
    pub viewer: ViewerConfig,
    /// Chat settings and the token key.
    pub chat: Arc<ChatConfig>,
    /// Publishes chat to the broker; `None` refuses every post as unavailable.
    pub publisher: Option<Publisher>,
    /// Cancelled at shutdown: open sockets close with 1012 "service restart".
    pub shutdown: CancellationToken,
    /// Tracks viewer connections so shutdown waits for their goodbyes.
    pub tracker: TaskTracker,
    /// The viewers' share of the open files.
    pub admission: Arc<Admission>,
    /// True while subscribed to the broker (`/readyz`).
    pub subscribed: watch::Receiver<bool>,
}

/// Every route.
pub fn router(state: AppState) -> Router {
    let hls = match &state.web.hls_dir {
        Some(dir) => Router::new()
            .fallback_service(ServeDir::new(dir))
            .layer(middleware::from_fn(hls_cache_control)),
        None => Router::new().fallback(pages::not_found),
    };
    Router::new()
        .route("/healthz", get(pages::healthz))
        .route("/readyz", get(pages::readyz))
        .route("/", get(pages::root))
        .route("/watch/{studio}/{stream}", get(pages::watch))
        .route("/static/{file}", get(pages::static_file))
        .route("/static/vendor/{file}", get(pages::vendor))
        .route("/api/streams/{studio}/{stream}", get(pages::stream_info))
        .route("/ws/{studio}/{stream}", get(ws::upgrade))
        .route("/img/{hash}/{file}", get(pages::image))
        .route("/metrics", get(pages::metrics))
        .nest("/hls", hls)
        .fallback(pages::not_found)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}

/// Live playlists change every segment: never let a cache serve a stale one.
async fn hls_cache_control(req: Request, next: Next) -> Response {
    let playlist = req.uri().path().ends_with(".m3u8");
    let mut resp = next.run(req).await;
    if playlist {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StreamConfig;
    use axum::body::{to_bytes, Body};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    struct Fixture {
        dir: tempfile::TempDir,
        app: Router,
        image_url: String,
        subscribed: watch::Sender<bool>,
        shutdown: CancellationToken,
    }

    fn fixture(with_dirs: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("catalog")).expect("mkdir");
        std::fs::write(root.join("catalog/mug.png"), b"\x89PNG fake").expect("write");
        std::fs::create_dir_all(root.join("vendor")).expect("mkdir");
        std::fs::write(root.join("vendor/hls.min.js"), b"// hls").expect("write");
        std::fs::write(root.join("secret.txt"), b"secret").expect("write");
        std::fs::create_dir_all(root.join("hls")).expect("mkdir");
        std::fs::write(root.join("hls/index.m3u8"), b"#EXTM3U\n").expect("write");
        std::fs::write(root.join("hls/seg0.ts"), b"ts").expect("write");
        let text = r#"
[[product]]
sku = "MUG-001"
name = "Enamel camp mug"
price = "14.00"
currency = "USD"
url = "https://shop.example/mug-001"
images = ["mug.png"]
"#;
        let catalog = spotter_protocol::Catalog::parse(
            &root.join("catalog"),
            &root.join("catalog/catalog.toml"),
            text,
        )
        .expect("catalog");
        let shelf = Shelf::build(&catalog).expect("shelf");
        let image_url = shelf
            .product("MUG-001")
            .and_then(|p| p.image.clone())
            .expect("image url");
        let viewer = ViewerConfig {
            queue: 8,
            max_message_bytes: 4096,
            history: 8,
        };
        let streams = [
            StreamConfig {
                studio: "demo".into(),
                stream: "main".into(),
                video_url: Some("/hls/index.m3u8".into()),
            },
            StreamConfig {
                studio: "demo".into(),
                stream: "quiet".into(),
                video_url: None,
            },
        ];
        let web = if with_dirs {
            WebConfig {
                vendor_dir: Some(root.join("vendor")),
                hls_dir: Some(root.join("hls")),
            }
        } else {
            WebConfig::default()
        };
        let (subscribed, subscribed_rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let app = router(AppState {
            hubs: Arc::new(Hubs::new(&streams, &viewer)),
            shelf: Arc::new(shelf),
            metrics: Arc::new(Metrics::default()),
            web: Arc::new(web),
            viewer,
            chat: Arc::new(ChatConfig::default()),
            publisher: None,
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
            admission: Admission::new(4),
            subscribed: subscribed_rx,
        });
        Fixture {
            dir,
            app,
            image_url,
            subscribed,
            shutdown,
        }
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, headers, body.to_vec())
    }

    fn header(h: &axum::http::HeaderMap, name: header::HeaderName) -> &str {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn health_root_page_and_static_files() {
        let f = fixture(true);
        let (s, _, body) = get(&f.app, "/healthz").await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, b"ok".as_slice()));

        let (s, h, _) = get(&f.app, "/").await;
        assert!(s.is_redirection(), "{s}");
        assert_eq!(header(&h, header::LOCATION), "/watch/demo/main");

        let (s, h, body) = get(&f.app, "/watch/demo/main").await;
        assert_eq!(s, StatusCode::OK);
        assert!(header(&h, header::CONTENT_TYPE).starts_with("text/html"));
        assert_eq!(body, pages::INDEX_HTML.as_bytes());
        assert_eq!(header(&h, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let (s, _, body) = get(&f.app, "/watch/nope/main").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            pages::INDEX_HTML.as_bytes(),
            "the page says there is no such stream"
        );

        let (s, h, body) = get(&f.app, "/static/app.js").await;
        assert_eq!(s, StatusCode::OK);
        assert!(header(&h, header::CONTENT_TYPE).starts_with("text/javascript"));
        assert_eq!(body, pages::APP_JS.as_bytes());
        let (s, h, _) = get(&f.app, "/static/style.css").await;
        assert_eq!(s, StatusCode::OK);
        assert!(header(&h, header::CONTENT_TYPE).starts_with("text/css"));
        assert_eq!(
            get(&f.app, "/static/index.html").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&f.app, "/nothing/here").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn ready_only_while_subscribed_and_not_stopping() {
        let f = fixture(false);
        let (s, h, body) = get(&f.app, "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&h, header::CONTENT_TYPE), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(
            v["error"].as_str().expect("error").contains("broker"),
            "{v}"
        );
        assert_eq!(
            get(&f.app, "/healthz").await.0,
            StatusCode::OK,
            "alive all the same"
        );

        f.subscribed.send_replace(true);
        let (s, _, body) = get(&f.app, "/readyz").await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, b"ready".as_slice()));

        f.shutdown.cancel();
        let (s, _, body) = get(&f.app, "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(
            v["error"].as_str().expect("error").contains("stopping"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn vendor_files_without_traversal() {
        let f = fixture(true);
        let (s, h, body) = get(&f.app, "/static/vendor/hls.min.js").await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, b"// hls".as_slice()));
        assert!(header(&h, header::CONTENT_TYPE).starts_with("text/javascript"));
        for bad in [
            "/static/vendor/..%2Fsecret.txt",
            "/static/vendor/../secret.txt",
            "/static/vendor/%2E%2E%2Fsecret.txt",
            "/static/vendor/missing.js",
        ] {
            let (s, _, body) = get(&f.app, bad).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
            assert_ne!(body, b"secret", "{bad}");
        }
        let bare = fixture(false);
        assert_eq!(
            get(&bare.app, "/static/vendor/hls.min.js").await.0,
            StatusCode::NOT_FOUND
        );
        assert!(f.dir.path().join("secret.txt").exists());
    }

    #[tokio::test]
    async fn stream_info_json() {
        let f = fixture(true);
        let (s, h, body) = get(&f.app, "/api/streams/demo/main").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(header(&h, header::CONTENT_TYPE), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"studio": "demo", "stream": "main", "video_url": "/hls/index.m3u8"})
        );
        let (_, _, body) = get(&f.app, "/api/streams/demo/quiet").await;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["video_url"], serde_json::Value::Null);
        let (s, h, body) = get(&f.app, "/api/streams/demo/nope").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(header(&h, header::CONTENT_TYPE), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(v["error"].as_str().expect("error").contains("demo/nope"));
    }

    #[tokio::test]
    async fn images_are_immutable_and_must_match() {
        let f = fixture(true);
        let (s, h, body) = get(&f.app, &f.image_url).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, b"\x89PNG fake");
        assert_eq!(header(&h, header::CONTENT_TYPE), "image/png");
        assert_eq!(
            header(&h, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        let (prefix, _) = f.image_url.rsplit_once('/').expect("url");
        assert_eq!(
            get(&f.app, &format!("{prefix}/other.png")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&f.app, "/img/0000000000000000/mug.png").await.0,
            StatusCode::NOT_FOUND
        );

        // Changed on disk since start: the URL no longer names these bytes.
        std::fs::write(f.dir.path().join("catalog/mug.png"), b"new").expect("write");
        assert_eq!(get(&f.app, &f.image_url).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn hls_playlists_are_not_cached() {
        let f = fixture(true);
        let (s, h, body) = get(&f.app, "/hls/index.m3u8").await;
        assert_eq!(
            (s, body.as_slice()),
            (StatusCode::OK, b"#EXTM3U\n".as_slice())
        );
        assert_eq!(header(&h, header::CACHE_CONTROL), "no-cache");
        let (s, h, _) = get(&f.app, "/hls/seg0.ts").await;
        assert_eq!(s, StatusCode::OK);
        assert_ne!(header(&h, header::CACHE_CONTROL), "no-cache");
        assert_eq!(
            get(&f.app, "/hls/../secret.txt").await.0,
            StatusCode::NOT_FOUND
        );
        let bare = fixture(false);
        assert_eq!(
            get(&bare.app, "/hls/index.m3u8").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let f = fixture(true);
        let (s, h, body) = get(&f.app, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(header(&h, header::CONTENT_TYPE).starts_with("text/plain; version=0.0.4"));
        let text = String::from_utf8(body).expect("utf8");
        assert!(
            text.contains("spotter_bridge_viewers_connected 0\n"),
            "{text}"
        );
    }
}
