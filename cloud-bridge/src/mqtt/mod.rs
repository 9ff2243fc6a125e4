//! The broker side: the subscriber's event loop and what it does with each payload.

pub mod ingest;
pub mod subscriber;

pub use ingest::{classify, Ingest, Verdict};
