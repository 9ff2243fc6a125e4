//! The HTTP/1.1 accept loop: each connection served by hyper with a bound on how long its request
//! headers may take (slow and silent clients are closed and counted), and the peer's address
//! given to the handlers for the per-address viewer limit.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout could not apply there.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

use crate::metrics::Metrics;

/// What the loop needs besides the listener and the routes.
#[derive(Debug, Clone)]
pub struct Serving {
    /// How long a client may take to send a request's headers (`http.header_timeout_secs`).
    pub header_timeout: Duration,
    /// Counts header timeouts.
    pub metrics: Arc<Metrics>,
    /// Each connection is tracked, so shutdown waits for its response to finish.
    pub tracker: TaskTracker,
    /// Stops accepting, and asks every connection to close once its response is sent.
    pub shutdown: CancellationToken,
}

/// Accepts connections until `shutdown` is cancelled. Accept errors (out of descriptors, a
/// connection reset before it was accepted) are logged and retried by axum's listener.
pub async fn serve(mut listener: TcpListener, app: Router, serving: Serving) {
    loop {
        let (stream, peer) = tokio::select! {
            () = serving.shutdown.cancelled() => return,
            accepted = Listener::accept(&mut listener) => accepted,
        };
        trace!(%peer, "connection accepted");
        serving
            .tracker
            .spawn(connection(stream, peer, app.clone(), serving.clone()));
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, app: Router, serving: Serving) {
    let routes = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        routes.call(req)
    });
    // hyper's own bound runs from the connection's start (and each keep-alive wait) until the
    // headers are parsed: it covers a client that sends nothing and one that trickles bytes.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_timeout);
    let mut conn = pin!(builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());
    let mut stopping = pin!(serving.shutdown.cancelled());
    let mut asked_to_stop = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = &mut stopping, if !asked_to_stop => {
                asked_to_stop = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            Metrics::inc(&serving.metrics.http_header_timeouts);
            debug!(%peer, "connection closed: request headers not received in time");
        }
        Err(e) => trace!(%peer, "connection ended with an error: {e}"),
    }
}
