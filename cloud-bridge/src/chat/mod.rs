//! Chat beside the video: tokens, the per-stream room (pure), `[chat]` settings, the bans file
//! and the publishing handle. The WebSocket side lives in [`crate::http::ws`], the broker side in
//! [`crate::mqtt::chat`]; every stream's room is held by its hub.

pub mod clock;
pub mod config;
pub mod publish;
pub mod room;
pub mod store;
pub mod token;

pub use clock::now_ms;
pub use config::{ChatConfig, KeySource, RawChat};
pub use publish::{PublishError, Publisher};
pub use room::{Denied, FloodGuard, Limits, Room};
pub use token::{ChatKey, Claims, TokenError, Verified};
