//! Running the workspace's binaries in tests: paths, free ports, bounded waits, child processes
//! that are killed on drop and whose logs end up in the failure message.

mod error;
mod net;
mod paths;
mod process;

pub use error::HarnessError;
pub use net::{free_port, http_get, wait_for_http_ok, wait_for_tcp};
pub use paths::{bin_path, model_path, target_profile_dirs, workspace_root};
pub use process::ChildGuard;
