//! Support for Spotter's cross-process tests: test clips with ground truth, and a process harness.
//!
//! [`clipgen`] renders catalogs and H.264 clips in which known products appear at known times
//! (also behind the `spotter-clipgen` binary); [`harness`] starts the workspace's binaries on free
//! loopback ports, waits for them with bounded waits and shows their logs when a test fails.

pub mod clipgen;
pub mod harness;
pub mod score;

pub use harness::{
    bin_path, free_port, http_get, model_path, target_profile_dirs, wait_for_http_ok, wait_for_tcp,
    workspace_root, ChildGuard, HarnessError,
};
