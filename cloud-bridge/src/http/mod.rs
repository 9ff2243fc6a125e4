//! The viewer-facing HTTP server: page, static files, stream info, images, metrics, WebSocket.

pub mod pages;
pub mod router;
pub mod ws;

pub use router::{router, AppState};
