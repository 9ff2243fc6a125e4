//! The wall clock in UTC milliseconds: what the I/O side passes to the pure chat and token code.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, UTC ms since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
