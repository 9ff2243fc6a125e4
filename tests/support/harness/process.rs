//! A child process owned by a test: output captured to files, killed when the guard drops, and
//! its log tail at hand for failure messages.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::HarnessError;

const POLL: Duration = Duration::from_millis(10);

/// A running child. Dropping it kills the child; if the test is panicking, its log directory is
/// kept (and named in [`ChildGuard::log_tail`]) so the whole log can be read afterwards.
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("logs", &self.dir_path)
            .finish()
    }
}

impl ChildGuard {
    /// Starts `program` with `args` and extra `envs`; `name` labels it in messages.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        envs: &[(&str, &str)],
    ) -> Result<Self, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::spawn_command(name, cmd)
    }

    /// Starts a prepared command; its stdin, stdout and stderr are replaced.
    pub fn spawn_command(name: &str, mut cmd: Command) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("spotter-{name}-"))
            .tempdir()
            .map_err(HarnessError::io("creating a log directory"))?;
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let create = |p: &Path| {
            File::create(p).map_err(HarnessError::io(format!("creating {}", p.display())))
        };
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?)
            // Plain logs: the files are read by people and by assertions.
            .env("NO_COLOR", "1");
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: PathBuf::from(cmd.get_program()),
            source,
        })?;
        tracing::debug!(name, pid = child.id(), logs = %dir.path().display(), "child started");
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            status: None,
            dir_path: dir.path().to_owned(),
            dir: Some(dir),
            stdout_path,
            stderr_path,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Where `stdout.log` and `stderr.log` are.
    pub fn log_dir(&self) -> &Path {
        &self.dir_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The last `lines` lines of stdout and of stderr, labelled, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |text: String| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let state = match self.status {
            Some(s) => format!("exited: {s}"),
            None => "running".to_string(),
        };
        format!(
            "----- {name} (pid {pid}, {state}; logs in {dir}) stdout, last {lines} lines -----\n{out}\n\
             ----- {name} stderr, last {lines} lines -----\n{err}\n----- end of {name} -----",
            name = self.name,
            pid = self.child.id(),
            dir = self.dir_path.display(),
            out = tail(self.stdout()),
            err = tail(self.stderr()),
        )
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout {
                    what: format!("waiting for {} to exit", self.name),
                    after: timeout,
                });
            }
            std::thread::sleep(POLL.min(left));
        }
    }

    /// Asks the child to stop with SIGTERM and waits up to `timeout`; kills it after that.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        if let Some(status) = self.try_exit() {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(HarnessError::io("running kill -TERM"))?;
        if !sent.success() {
            tracing::warn!(name = %self.name, "kill -TERM failed: {sent}");
        }
        match self.wait_timeout(timeout) {
            Ok(status) => Ok(status),
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                tracing::info!(name = %self.name, logs = %kept.display(), "test failed: logs kept");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_reports_exit() {
        let mut child = ChildGuard::spawn(
            "sh",
            Path::new("/bin/sh"),
            ["-c", "echo out-$GREETING; echo err-line >&2; exit 3"],
            &[("GREETING", "hi")],
        )
        .expect("sh starts");
        let status = child
            .wait_timeout(Duration::from_secs(10))
            .expect("sh exits");
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.stdout(), "out-hi\n");
        let tail = child.log_tail(5);
        assert!(
            tail.contains("err-line") && tail.contains("exited"),
            "{tail}"
        );
    }

    #[test]
    fn kills_on_drop_and_terminates() {
        let mut child =
            ChildGuard::spawn("sleep", Path::new("sleep"), ["30"], &[]).expect("sleep starts");
        assert!(child.try_exit().is_none());
        let err = child
            .wait_timeout(Duration::from_millis(50))
            .expect_err("still running");
        assert!(matches!(err, HarnessError::Timeout { .. }));
        let status = child
            .terminate(Duration::from_secs(10))
            .expect("stops on SIGTERM");
        assert!(!status.success());

        let child =
            ChildGuard::spawn("sleep", Path::new("sleep"), ["30"], &[]).expect("sleep starts");
        let pid = child.id();
        drop(child);
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive, "pid {pid} survived its guard");
    }
}
