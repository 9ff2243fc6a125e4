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

/// Logs of the test tools (`spotter-clipgen`, `spotter-eval`) to stderr, filtered by `RUST_LOG`
/// (default `info`), coloured only on a terminal: stdout stays for their results.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
