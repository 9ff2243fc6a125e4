//! The broker side: the subscriber's event loop and what it does with each payload (product
//! events and snapshots in `ingest`, chat and bans in `chat`).

pub mod chat;
pub mod ingest;
pub mod subscriber;

pub use ingest::{classify, Ingest, Verdict};
