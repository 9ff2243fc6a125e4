//! The harness's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Why a harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A process could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Some other I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("{what}: not within {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// A child exited while something was still expected of it.
    #[error("{name} exited early with {status}")]
    Exited {
        /// The child's label.
        name: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// A server answered something that is not HTTP.
    #[error("bad HTTP response from {addr}: {reason}")]
    Http {
        /// The server.
        addr: std::net::SocketAddr,
        /// What is wrong with the response.
        reason: String,
    },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
