//! Running the real `phonehome-loadgen` binary from the load generator's tests.

use std::process::Command;

/// What a successful run printed.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Fails the test, with both streams, when stdout lacks `needle`.
    pub fn has(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "{needle:?} missing from stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs the binary against `database_url` with `args` off the test's runtime threads, and fails
/// the test unless it exits 0.
pub async fn run_ok(database_url: &str, args: &[&str]) -> Run {
    let mut full = vec!["--database-url".to_owned(), database_url.to_owned()];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
            .args(&full)
            .output()
            .expect("run phonehome-loadgen")
    })
    .await
    .expect("the blocking task ran");
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        run.stdout,
        run.stderr
    );
    run
}
