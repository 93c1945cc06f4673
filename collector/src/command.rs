//! Running an external program (smartctl, a health check, systemctl) with a deadline and bounded
//! output, so that one hung or chatty program can neither stall nor bloat the collector.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a program did within its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More standard output than the limit was produced; the rest was read and discarded.
    pub stdout_truncated: bool,
}

impl Finished {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// The exit code, `None` when killed by a signal or at the deadline.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `program` with `args`, stdin closed, until it exits or `timeout` passes; then it and
/// every process it started (its process group) are killed. At most `limit` bytes of each of
/// stdout and stderr are kept. `Err` only when the program cannot be started (not found,
/// permission denied).
pub fn run<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
    limit: usize,
) -> io::Result<Finished> {
    run_with_env(program, args, &[], timeout, limit)
}

/// [`run`] with extra environment variables for the program.
pub fn run_with_env<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    env: &[(&str, &str)],
    timeout: Duration,
    limit: usize,
) -> io::Result<Finished> {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also kills what it spawned (which would otherwise
        // hold the pipes open and keep us waiting).
        .process_group(0);
    let mut child = spawn(&mut command)?;
    let stdout = child.stdout.take().map(|p| drain(p, limit));
    let stderr = child.stderr.take().map(|p| drain(p, limit));

    let status = match wait_until(|| child.try_wait(), Instant::now() + timeout) {
        Ok(status) => status,
        Err(e) => {
            // We can no longer watch it: don't leave it running unwatched either.
            kill_group(&child);
            let _ = child.kill();
            return Err(e);
        }
    };
    if status.is_none() {
        kill_group(&child);
        let _ = child.kill();
        // SIGKILL takes effect only when the process leaves the kernel: one in uninterruptible
        // sleep (D state, e.g. smartctl on a hung controller) may never die, and an unbounded
        // wait() would hang the whole collector with it. Reap it if it goes within the grace;
        // otherwise drop the handle and leave it to init when we exit.
        let _ = wait_until(|| child.try_wait(), Instant::now() + REAP_GRACE);
    }
    // After the deadline a grandchild may still hold a pipe: don't wait for it for long.
    let grace = if status.is_some() {
        timeout.max(Duration::from_secs(1))
    } else {
        Duration::from_millis(200)
    };
    let (stdout, stdout_truncated) = collect(stdout, grace);
    let (stderr, _) = collect(stderr, grace);
    Ok(Finished {
        status,
        stdout,
        stderr,
        stdout_truncated,
    })
}

/// How long a program killed at its deadline is given to die and be reaped before we stop
/// waiting for it.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// Polls `try_wait` (a child's [`try_wait`](std::process::Child::try_wait), or a test's fake)
/// until it yields a result or `deadline` passes: `Ok(None)` at the deadline, whatever the
/// program is doing.
fn wait_until<T>(
    mut try_wait: impl FnMut() -> io::Result<Option<T>>,
    deadline: Instant,
) -> io::Result<Option<T>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(done) = try_wait()? {
            return Ok(Some(done));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        // Short first: most checks finish in milliseconds; then back off to stay cheap.
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// ETXTBSY: the program file is still open for writing somewhere, typically because it was just
/// written (an upgrade in progress, a test's stand-in) and another thread forked meanwhile.
/// It clears within milliseconds, so retry briefly rather than report a failed check.
const TEXT_FILE_BUSY: i32 = 26;

fn spawn(command: &mut Command) -> io::Result<std::process::Child> {
    let mut attempt = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(TEXT_FILE_BUSY) && attempt < 20 => {
                attempt += 1;
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

type Drained = mpsc::Receiver<(Vec<u8>, bool)>;

fn drain(mut pipe: impl Read + Send + 'static, limit: usize) -> Drained {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = limit.saturating_sub(kept.len());
                    let chunk = buf.get(..n).unwrap_or_default();
                    if chunk.len() > room {
                        truncated = true;
                    }
                    kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                }
            }
        }
        let _ = tx.send((kept, truncated));
    });
    rx
}

fn collect(rx: Option<Drained>, grace: Duration) -> (Vec<u8>, bool) {
    rx.and_then(|rx| rx.recv_timeout(grace).ok())
        .unwrap_or_default()
}

fn kill_group(child: &std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_exit_code_are_captured() {
        let f = run(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(5),
            1024,
        )
        .unwrap();
        assert_eq!(f.code(), Some(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr, b"err\n");
        assert!(!f.timed_out());
    }

    #[test]
    fn a_hung_program_and_its_children_are_killed_at_the_deadline() {
        let started = Instant::now();
        // The child's own child keeps stdout open: without the group kill we would hang.
        let f = run(
            "sh",
            &["-c", "sleep 30 & sleep 30"],
            Duration::from_millis(300),
            1024,
        )
        .unwrap();
        assert!(f.timed_out());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn output_beyond_the_limit_is_cut_and_flagged() {
        let f = run(
            "sh",
            &["-c", "head -c 100000 /dev/zero"],
            Duration::from_secs(5),
            1000,
        )
        .unwrap();
        assert_eq!(f.stdout.len(), 1000);
        assert!(f.stdout_truncated);
        assert_eq!(f.code(), Some(0));
    }

    /// A killed program that never goes away (in D state on a hung controller, say) must not
    /// hold us: the wait gives up at its deadline, however often it is asked.
    #[test]
    fn waiting_for_a_program_that_never_finishes_gives_up_at_the_deadline() {
        let started = Instant::now();
        let mut polls = 0;
        let never = || -> io::Result<Option<ExitStatus>> {
            polls += 1;
            Ok(None)
        };
        let waited = wait_until(never, started + Duration::from_millis(300));
        let elapsed = started.elapsed();
        assert!(matches!(waited, Ok(None)), "{waited:?}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        // Polled more than once (it waited), but backing off rather than spinning.
        assert!((2..=100).contains(&polls), "{polls} polls");
        assert!(REAP_GRACE <= Duration::from_secs(5), "{REAP_GRACE:?}");
    }

    #[test]
    fn waiting_returns_as_soon_as_the_program_finishes_or_fails() {
        let mut polls = 0;
        let third_time = || -> io::Result<Option<u8>> {
            polls += 1;
            Ok((polls == 3).then_some(7))
        };
        let started = Instant::now();
        let waited = wait_until(third_time, started + Duration::from_secs(10));
        assert!(matches!(waited, Ok(Some(7))), "{waited:?}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let broken = || -> io::Result<Option<u8>> { Err(io::Error::other("ECHILD")) };
        let waited = wait_until(broken, Instant::now() + Duration::from_secs(10));
        assert!(waited.is_err(), "{waited:?}");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_panic() {
        let e = run(
            "/nonexistent/phonehome-test",
            &[] as &[&str],
            Duration::from_secs(1),
            10,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
