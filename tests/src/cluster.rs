//! A private PostgreSQL cluster owned by one test, which that test may crash and start again.
//!
//! Tests that take PostgreSQL away must not do it to the shared server: other tests run against
//! it in parallel. This cluster is durable (fsync on), so what was committed before a crash is
//! still there after it, as on a production server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use phonehome_ingest::pgcluster::{PrivateCluster, find_bindir};
use phonehome_ingest::storage::{Storage, create_database};
use tokio_postgres::NoTls;

/// A running private cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct RestartableCluster {
    cluster: PrivateCluster,
    pg_ctl: PathBuf,
    run_as_postgres: bool,
}

impl RestartableCluster {
    /// Creates and starts a durable cluster in a temporary directory.
    pub fn start() -> Self {
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb, pg_ctl) for a private cluster: install \
                 them with `apt-get install -y postgresql`, or set PHONEHOME_PG_BINDIR to their \
                 directory"
            )
        });
        let cluster = PrivateCluster::start(None, true)
            .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL cluster: {e}"));
        // A test binary killed from outside (a CI timeout) runs no destructors; the watchdog
        // then stops the server and removes its directory.
        cluster
            .stop_when_process_exits(std::process::id(), cluster.data_dir().parent())
            .unwrap_or_else(|e| panic!("cannot start the private cluster's watchdog: {e}"));
        RestartableCluster {
            cluster,
            pg_ctl: bindir.join("pg_ctl"),
            // PrivateCluster runs the server as `postgres` when we are root; pg_ctl must run as
            // the same user to act on it.
            run_as_postgres: is_root(),
        }
    }

    /// Creates database `name`, applies every migration to it, and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        create_database(&self.cluster.url("postgres"), name)
            .await
            .unwrap_or_else(|e| panic!("create database {name} in the private cluster: {e}"));
        let url = self.cluster.url(name);
        Storage::connect(&url, 1)
            .expect("private cluster URL is valid")
            .migrate()
            .await
            .expect("migrations apply to a fresh database");
        url
    }

    /// A plain client on database `name`, for assertions.
    pub async fn client(&self, name: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.cluster.url(name), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to database {name} in the private cluster: {e}"));
        tokio::spawn(conn);
        client
    }

    /// Stops the server the way a crash or a power cut would: `pg_ctl -m immediate stop` kills
    /// every backend at once without a checkpoint, so in-flight transactions are cut off and the
    /// next start runs crash recovery.
    pub fn crash(&self) {
        let data = path_str(self.cluster.data_dir());
        self.pg_ctl(&["-D", data, "-m", "immediate", "-w", "stop"]);
    }

    /// Starts the server again after [`RestartableCluster::crash`], with the same options, and
    /// waits until it accepts connections (crash recovery included).
    pub fn start_again(&self) {
        let data = path_str(self.cluster.data_dir());
        let log = self.log_path();
        // `pg_ctl restart` on a stopped server starts it with the options recorded in
        // postmaster.opts (port, socket directory, fsync...), i.e. exactly those PrivateCluster
        // chose; `pg_ctl start` would need them all again. `-l`: the server must not inherit
        // our stderr pipe, or waiting for pg_ctl's output would wait for the server to exit.
        self.pg_ctl(&[
            "-D",
            data,
            "-l",
            path_str(&log),
            "-w",
            "-t",
            "60",
            "restart",
        ]);
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        // Where PrivateCluster::start points the server's log: beside the data directory.
        self.cluster
            .data_dir()
            .parent()
            .unwrap_or(Path::new("/"))
            .join("postgres.log")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            Command::new(&self.pg_ctl)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.pg_ctl.display()));
        assert!(
            out.status.success(),
            "pg_ctl {} failed ({}): {}\nserver log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary directory paths are UTF-8")
}

pub(crate) fn is_root() -> bool {
    // The same test PrivateCluster makes: root owns /proc/self when we are root.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
