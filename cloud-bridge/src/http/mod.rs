//! The viewer-facing HTTP server: page, static files, stream info, images, health and readiness,
//! metrics, WebSocket, and the viewers' share of the open files.

pub mod admission;
pub mod pages;
pub mod router;
pub mod ws;

pub use router::{router, AppState};
