//! The real `phonehome-ingest` and `phonehome-collector` binaries, built from this workspace, and
//! a running ingest process per test.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use phonehome_ingest::auth::Role;
use phonehome_ingest::storage::Storage;
use phonehome_ingest::storage::admin::AdminError;

use crate::TestDb;
use crate::client;
use crate::pki::TestPki;

/// `cargo`, without the variables `cargo test` hands this process (its package's
/// CARGO_MANIFEST_DIR, CARGO_PKG_* and the like). Build scripts that watch them (ring's does)
/// would count as changed and rebuild half the graph here, and again in the next `cargo test`.
pub fn cargo() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_")
            || matches!(
                k,
                "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            cargo.env_remove(&key);
        }
    }
    cargo
}

/// Path of a workspace binary, built (once per test process) so it is never stale.
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile dir>/deps and the binaries one level up; they are
    // built with the profile the tests themselves were built with.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = cargo()
            .args(["build", "--quiet", "--profile", &profile, "--bins"])
            .args(["-p", "phonehome-ingest", "-p", "phonehome-collector"])
            .args(["-p", "phonehome-loadgen"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map_err(|e| format!("run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("building the binaries under test failed:\n{e}");
    }
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A `phonehome-ingest serve` process with its own ports, stopped on drop.
#[derive(Debug)]
pub struct IngestProcess {
    child: Child,
    pub report_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// A `read` token the harness created before the start; [`client::get`] to `ops_addr`
    /// sends it.
    pub read_token: String,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl IngestProcess {
    /// Starts the ingest against `db` with `pki`'s server certificate; configuration through
    /// the environment, as an operator might. Waits until `/healthz` answers 200.
    pub async fn start(db: &TestDb, pki: &TestPki) -> Self {
        Self::start_with(db, pki, &[]).await
    }

    pub async fn start_with(db: &TestDb, pki: &TestPki, env: &[(&str, &str)]) -> Self {
        Self::start_with_url(db.url(), pki, env).await
    }

    /// As [`IngestProcess::start_with`], against any database URL: for a test that brings its
    /// own PostgreSQL (one it may crash, say) instead of a [`TestDb`] on the shared server.
    pub async fn start_with_url(database_url: &str, pki: &TestPki, env: &[(&str, &str)]) -> Self {
        let tls = pki.server_tls();
        let read_token = create_token(database_url, "harness-read", Role::Read).await;
        let report_addr = free_addr();
        let ops_addr = free_addr();
        let logdir = tempfile::tempdir().expect("temp dir");
        let log = logdir.path().join("ingest.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin("phonehome-ingest"));
        cmd.arg("serve")
            .env("PHONEHOME_DATABASE_URL", database_url)
            .env("PHONEHOME_REPORT_LISTEN", report_addr.to_string())
            .env("PHONEHOME_OPS_LISTEN", ops_addr.to_string())
            .env("PHONEHOME_TLS_CA_CERT", &tls.ca_cert)
            .env("PHONEHOME_TLS_SERVER_CERT", &tls.server_cert)
            .env("PHONEHOME_TLS_SERVER_KEY", &tls.server_key)
            .env("PHONEHOME_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn phonehome-ingest");
        let mut p = IngestProcess {
            child,
            report_addr,
            ops_addr,
            read_token,
            log,
            _logdir: logdir,
        };
        client::set_ops_token(ops_addr, Some(&p.read_token));
        p.wait_healthy().await;
        p
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "phonehome-ingest exited ({status}) before it was healthy:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client::get(self.ops_addr, "/healthz").await {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("phonehome-ingest not healthy after 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the ingest has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `https://127.0.0.1:PORT`, as a collector config wants it.
    pub fn report_url(&self) -> String {
        format!("https://{}", self.report_addr)
    }

    /// The value of a sample in `/metrics`, given exactly as exposed (name and labels); `None`
    /// when the series is not exposed at all.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let r = client::get(self.ops_addr, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(r.status, 200);
        r.body
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().expect("metric value"))
    }

    /// `kill -9`: no drain, no goodbye, as a crash or the OOM killer would.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("phonehome-ingest did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Creates an API token in the database at `url` as `phonehome-ingest token create` does
/// (migrations first: the ingest may not have started yet), and returns its secret. A name
/// taken already gets a numbered one.
pub async fn create_token(url: &str, name: &str, role: Role) -> String {
    let storage = Storage::connect(url, 1).expect("database URL");
    storage.migrate().await.expect("migrations apply");
    let token = phonehome_ingest::auth::generate().expect("token");
    let mut n = 0u32;
    loop {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{name}-{n}")
        };
        match storage
            .create_api_token(&candidate, role, &token.sha256, "harness")
            .await
        {
            Ok(()) => return token.secret,
            Err(AdminError::NameTaken(_)) => n += 1,
            Err(e) => panic!("create API token {candidate}: {e}"),
        }
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        client::set_ops_token(self.ops_addr, None);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Output of one collector run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `phonehome-collector` with `args`.
pub fn collector(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin("phonehome-collector"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run phonehome-collector");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
