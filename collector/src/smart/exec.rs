//! Running smartctl: finding the binary, and running it through [`crate::command`] with a
//! per-run timeout and a bound on what is read from it.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command;

/// Most smartctl output read per run. `-x` of a disk with full logs is well under 1 MiB; more
/// than this is not smartctl talking about a disk.
pub const OUTPUT_LIMIT: usize = 8 * 1024 * 1024;
/// Most of smartctl's standard error kept for messages (JSON mode writes it little).
const STDERR_LIMIT: usize = 4 * 1024;

/// Where smartctl lives when it is not on PATH: cron's PATH often lacks the sbin directories.
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// What went wrong running smartctl.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {}: {source}", path.display())]
    Spawn { path: PathBuf, source: io::Error },
    #[error("no answer within {} s; smartctl was killed", timeout.as_secs_f32())]
    Timeout { timeout: Duration },
    #[error("output is larger than {OUTPUT_LIMIT} bytes")]
    TooLarge,
}

/// A finished smartctl run.
#[derive(Debug)]
pub struct RunOutput {
    /// The exit status; `None` when smartctl was killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    /// The start of standard error, lossily decoded and trimmed.
    pub stderr: String,
}

/// A smartctl binary and how long each of its runs may take.
#[derive(Debug, Clone)]
pub struct Smartctl {
    pub path: PathBuf,
    pub timeout: Duration,
}

impl Smartctl {
    /// The binary to run: `configured` as given (a bare name is looked up on PATH by the OS),
    /// else `smartctl` from PATH, else from the sbin directories. `None` when there is none.
    pub fn locate(configured: Option<&Path>, timeout: Duration) -> Option<Smartctl> {
        let path = match configured {
            Some(p) => p.to_owned(),
            None => {
                let path_dirs = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path_dirs)
                    .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
                    .map(|dir| dir.join("smartctl"))
                    .find(|candidate| candidate.is_file())?
            }
        };
        Some(Smartctl { path, timeout })
    }

    /// Runs smartctl with `args`, killing it when it outlives the timeout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<RunOutput, RunError> {
        self.run_within(args, self.timeout)
    }

    /// [`run`](Self::run) with a shorter limit, `min(timeout, self.timeout)`: what is left of
    /// an overall time budget.
    pub fn run_within<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<RunOutput, RunError> {
        let timeout = timeout.min(self.timeout);
        // Untranslated messages and a `.` decimal separator: the output is parsed, not read.
        let finished =
            command::run_with_env(&self.path, args, &[("LC_ALL", "C")], timeout, OUTPUT_LIMIT)
                .map_err(|source| RunError::Spawn {
                    path: self.path.clone(),
                    source,
                })?;
        if finished.timed_out() {
            return Err(RunError::Timeout { timeout });
        }
        if finished.stdout_truncated {
            return Err(RunError::TooLarge);
        }
        let stderr = finished
            .stderr
            .get(..STDERR_LIMIT)
            .unwrap_or(&finished.stderr);
        let stderr = String::from_utf8_lossy(stderr).trim().to_owned();
        Ok(RunOutput {
            status: finished.code(),
            stdout: finished.stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str, timeout: Duration) -> Result<RunOutput, RunError> {
        Smartctl {
            path: PathBuf::from("/bin/sh"),
            timeout,
        }
        .run(&["-c", script])
    }

    #[test]
    fn output_status_and_stderr_are_returned() {
        let out = sh(
            "printf '{}'; echo oops >&2; exit 4",
            Duration::from_secs(10),
        );
        let out = out.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status, Some(4));
        assert_eq!(out.stdout, b"{}");
        assert_eq!(out.stderr, "oops");
    }

    #[test]
    fn a_hung_smartctl_is_killed_at_the_timeout() {
        let started = Instant::now();
        let out = sh("exec sleep 30", Duration::from_millis(300));
        assert!(matches!(out, Err(RunError::Timeout { .. })), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_shorter_limit_wins_but_never_extends_the_timeout() {
        let smartctl = Smartctl {
            path: PathBuf::from("/bin/sh"),
            timeout: Duration::from_secs(20),
        };
        let started = Instant::now();
        let out = smartctl.run_within(&["-c", "exec sleep 30"], Duration::from_millis(300));
        assert!(
            matches!(out, Err(RunError::Timeout { timeout }) if timeout == Duration::from_millis(300)),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let short = Smartctl {
            timeout: Duration::from_millis(300),
            ..smartctl
        };
        let out = short.run_within(&["-c", "exec sleep 30"], Duration::from_secs(60));
        assert!(
            matches!(out, Err(RunError::Timeout { timeout }) if timeout == Duration::from_millis(300)),
            "{out:?}"
        );
    }

    #[test]
    fn endless_output_is_cut_off_without_blocking() {
        let out = sh("head -c 9000000 /dev/zero; exit 0", Duration::from_secs(20));
        assert!(matches!(out, Err(RunError::TooLarge)), "{out:?}");
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error_with_its_kind() {
        let missing = Smartctl {
            path: PathBuf::from("/nonexistent/smartctl"),
            timeout: Duration::from_secs(1),
        };
        match missing.run(&["--scan-open"]) {
            Err(RunError::Spawn { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
    }
}
