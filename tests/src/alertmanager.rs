//! A real Prometheus Alertmanager (the distribution's `prometheus-alertmanager`) per test, on a
//! free port, with clustering off, its own storage, and a route to a receiver that notifies no
//! one: tests read what it holds through its v2 API.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client;

/// Where Debian's package puts the binary.
pub const BINARY: &str = "/usr/bin/prometheus-alertmanager";

const CONFIG: &str = "\
route:
  receiver: nobody
  group_by: ['alertname', 'serial']
receivers:
  - name: nobody
";

/// A port nothing listens on right now (for a test that starts Alertmanager later).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A running Alertmanager, stopped on drop.
#[derive(Debug)]
pub struct AlertmanagerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AlertmanagerProcess {
    /// Starts Alertmanager on a free port and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_on(free_addr()).await
    }

    /// Starts Alertmanager on `addr` and waits until it is ready. Panics (never skips) when
    /// the binary is not installed.
    pub async fn start_on(addr: SocketAddr) -> Self {
        assert!(
            Path::new(BINARY).is_file(),
            "{BINARY} is missing: install Alertmanager with \
             `apt-get install -y prometheus-alertmanager` (scripts/deps.sh does it too)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, CONFIG).expect("write alertmanager.yml");
        let storage = dir.path().join("data");
        std::fs::create_dir(&storage).expect("storage dir");
        let log = dir.path().join("alertmanager.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"))
            // Empty: no gossip port, no peers; this one instance is the whole cluster.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap_or_else(|e| panic!("start {BINARY}: {e}"));
        let mut am = AlertmanagerProcess {
            child,
            addr,
            log,
            _dir: dir,
        };
        am.wait_ready().await;
        am
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Alertmanager exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client::get(self.addr, "/-/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("Alertmanager not ready after 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`, as the ingest's `alertmanager.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What Alertmanager lists at `GET /api/v2/alerts{query}` (by default: the alerts that have
    /// not ended, silenced and inhibited ones included).
    pub async fn alerts(&self, query: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v2/alerts{query}");
        let r = client::get(self.addr, &path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from Alertmanager: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        match r.json() {
            serde_json::Value::Array(alerts) => alerts,
            other => panic!("GET {path}: expected an array, got {other}"),
        }
    }

    /// Everything Alertmanager has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AlertmanagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
