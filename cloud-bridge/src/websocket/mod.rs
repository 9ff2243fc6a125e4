//! The WebSocket protocol as the bridge speaks it, server side: the opening handshake and the
//! framing, pure functions over headers and bytes. The viewer connection (`http::ws`) and the
//! fan-out (`hub`) build on it; it knows neither.

pub mod frame;
pub mod handshake;

pub use frame::{ClientFrame, Decoder, FrameError};
pub use handshake::{accept, HandshakeError};
