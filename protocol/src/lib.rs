//! Spotter's wire types, shared by the agent and the bridge: the only place anything is serialized.
//!
//! Everything here is versioned (`v` in every MQTT payload, [`PROTOCOL_VERSION`]) and decoded
//! through functions that validate what serde alone cannot (score ranges, box geometry, id sizes)
//! and say which field is wrong.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backoff;
pub mod catalog;
pub mod chat;
pub mod event;
pub mod ratelimit;
pub mod status;
pub mod topic;
pub mod viewer;

pub use catalog::{Catalog, CatalogError, Product};
pub use chat::{Ban, ChatEvent, ChatMessage, ChatUser, RefusalCode, SessionUser};
pub use event::{BBox, DecodeError, EventType, ProductEvent};
pub use ratelimit::TokenBucket;
pub use status::{
    AgentState, OnScreen, OnScreenProduct, SoundState, SourceState, Stats, Status, UploadState,
};
pub use topic::{Topic, TopicError, TopicKind};
pub use viewer::{Card, ClientMessage, ProductInfo, ServerMessage};

/// The version of every payload this crate writes; decoders refuse any other.
pub const PROTOCOL_VERSION: u32 = 1;
