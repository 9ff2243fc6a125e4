//! Per-stream hubs: the pure state machine, the shared, locked wrapper, and the fan-out that
//! writes every frame to every viewer's socket.

pub mod fanout;
pub mod lanes;
pub mod outlet;
pub mod state;

pub use fanout::{Hub, Hubs, Joined, Watching};
pub use lanes::Lanes;
pub use outlet::{Cut, Flushed, Outlet};
pub use state::{Applied, Frame, HubState, Join, JoinOutcome, Origin, Resume};
