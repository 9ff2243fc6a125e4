//! Per-stream hubs: the pure state machine and the shared, locked wrapper that fans out to viewers.

pub mod fanout;
pub mod state;

pub use fanout::{Control, Hub, Hubs, Joined, Watching};
pub use state::{Applied, Frame, HubState, Join, JoinOutcome, Resume};
