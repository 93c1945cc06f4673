//! A private, throwaway PostgreSQL cluster started from the system's PostgreSQL binaries, for the
//! demo and for tests on machines without a running server.
//!
//! PostgreSQL refuses to run as root, so when we are root the cluster is created and run as the
//! `postgres` user (through `runuser`), in a directory handed over to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a private cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found in /usr/lib/postgresql/*/bin, \
         PHONEHOME_PG_BINDIR or PATH; install them with `apt-get install -y postgresql`"
    )]
    NoBinaries,
    #[error(
        "running as root but there is no `postgres` user to run PostgreSQL as; install the \
         postgresql package (it creates the user) or run as an ordinary user"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
}

/// A running private cluster; stopped (and its directory removed, if we created it) on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    run_as_postgres: bool,
    _dir: Option<tempfile::TempDir>,
}

impl PrivateCluster {
    /// Creates and starts a cluster in `dir` (a new temporary directory when `None`), listening
    /// on 127.0.0.1 at a free port with trust authentication for user `postgres`.
    /// `durable = false` turns fsync off: for tests, where a crash loses nothing of value.
    pub fn start(dir: Option<&Path>, durable: bool) -> Result<Self, ClusterError> {
        let bindir = find_bindir().ok_or(ClusterError::NoBinaries)?;
        let run_as_postgres = is_root();
        let (owned, base) = match dir {
            Some(d) => (None, d.to_path_buf()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("phonehome-pg-")
                    .tempdir()
                    .map_err(|source| ClusterError::Io {
                        what: "create temp dir".into(),
                        source,
                    })?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&base).map_err(|source| ClusterError::Io {
            what: format!("create {}", base.display()),
            source,
        })?;
        if run_as_postgres {
            let (uid, gid) = postgres_ids().ok_or(ClusterError::NoPostgresUser)?;
            std::os::unix::fs::chown(&base, Some(uid), Some(gid)).map_err(|source| {
                ClusterError::Io {
                    what: format!("chown {} to postgres", base.display()),
                    source,
                }
            })?;
        }
        let data = base.join("data");
        let port = free_port()?;
        let mut cluster = PrivateCluster {
            bindir,
            data,
            port,
            run_as_postgres,
            _dir: owned,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let fsync = if durable { "on" } else { "off" };
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync={fsync} \
             -c synchronous_commit={fsync} -c full_page_writes={fsync} -c max_connections=200",
            path_str(&base)
        );
        let log = base.join("postgres.log");
        let started = cluster.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&cluster.data),
                "-l",
                path_str(&log),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            // Nothing to stop: the server never came up.
            cluster.port = 0;
            return Err(ClusterError::Command {
                command: "pg_ctl start".into(),
                status: e.to_string(),
                output: tail,
            });
        }
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as user `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The data directory, for a watchdog that must stop the cluster from outside this process.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Starts a shell that stops this cluster once process `pid` has exited, for processes that
    /// may end without running destructors (test binaries, a demo killed with SIGKILL), and then
    /// removes `remove` if given.
    pub fn stop_when_process_exits(
        &self,
        pid: u32,
        remove: Option<&Path>,
    ) -> Result<(), ClusterError> {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then {runas} '{pg_ctl}' -D '{data}' -m immediate stop; fi; \
             {remove}",
            runas = if self.run_as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            pg_ctl = path_str(&self.bindir.join("pg_ctl")),
            data = path_str(&self.data),
            remove = remove
                .map(|p| format!("rm -rf '{}'", path_str(p)))
                .unwrap_or_default(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|source| ClusterError::Io {
                what: "spawn cluster watchdog".into(),
                source,
            })
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), ClusterError> {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // pg_ctl's server inherits our stdout; a pipe would keep a caller waiting for EOF.
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| ClusterError::Io {
                what: format!("run {}", exe.display()),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Command {
                command: format!("{tool} {}", args.join(" ")),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        let data = path_str(&self.data).to_owned();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]) {
            eprintln!("phonehome: stopping the private PostgreSQL cluster failed: {e}");
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    // Root owns /proc/self when we are root; avoids unsafe libc calls.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == "postgres").then_some(())?;
        let _pw = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| ClusterError::Io {
            what: "find a free port".into(),
            source,
        })
}

/// The newest PostgreSQL server binaries on this machine.
pub fn find_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PHONEHOME_PG_BINDIR").map(PathBuf::from) {
        return has_tools(&d).then_some(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).find(|d| has_tools(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_private_cluster_starts_answers_and_stops() {
        let cluster = PrivateCluster::start(None, false)
            .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL cluster: {e}"));
        let (client, conn) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the private cluster");
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_setting('port')", &[])
            .await
            .unwrap();
        let port: String = row.get(0);
        assert_eq!(port, cluster.port().to_string());
        let data = cluster.data_dir().to_path_buf();
        drop(client);
        drop(cluster);
        assert!(
            !data.exists(),
            "the temporary cluster directory was not removed"
        );
    }
}
