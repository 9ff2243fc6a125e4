//! The durable outbox between the tracker and the MQTT client: an event is on disk before it is
//! sent and leaves the disk only when the broker acknowledges it (or, counted and logged, when
//! it is the oldest and the outbox is over its byte bound).
//!
//! [`queue`] and [`pkids`] are the decisions, as pure state machines; [`log`] is the file and
//! [`durable`] applies the queue's decisions to it. `crate::mqtt` drives it.

pub mod durable;
pub mod log;
pub mod pkids;
pub mod queue;

pub use durable::{Outbox, OutboxCounts, OutboxError, OutboxStats};
pub use pkids::{Mismatch, PacketIds};
pub use queue::{Entry, Pushed, Queue};
