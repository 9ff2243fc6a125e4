//! The viewer-facing HTTP server: page, static files, stream info, images, health and readiness,
//! metrics, WebSocket, the viewers' share of the open files and of each address, and the accept
//! loop that bounds slow clients.

pub mod admission;
pub mod pages;
pub mod router;
pub mod serve;
pub mod ws;

pub use router::{router, AppState};
