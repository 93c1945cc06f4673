//! The real parts of scaling out, started by the test that needs them: a PostgreSQL primary with
//! a streaming replica made by `pg_basebackup -R` (two clusters on this machine), and Debian's
//! PgBouncer in front of a database. PostgreSQL and PgBouncer refuse to run as root, so as root
//! they run as the `postgres` user, in directories handed over to it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phonehome_ingest::pgcluster::{PrivateCluster, find_bindir};
use phonehome_ingest::storage::{Storage, create_database};
use tokio_postgres::NoTls;

use crate::cluster::{is_root, path_str};

/// A primary cluster and a hot standby streaming from it; both stopped and removed on drop.
#[derive(Debug)]
pub struct StreamingPair {
    primary: PrivateCluster,
    bindir: PathBuf,
    standby_dir: tempfile::TempDir,
    standby_port: u16,
}

impl StreamingPair {
    /// Starts a primary, creates and migrates database `db` in it, then clones the cluster with
    /// `pg_basebackup -R` and starts the clone as a hot standby on its own port.
    pub async fn start(db: &str) -> Self {
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup): run \
                 scripts/deps.sh, or `apt-get install -y postgresql`"
            )
        });
        let primary = PrivateCluster::start(None, false)
            .unwrap_or_else(|e| panic!("cannot start the primary PostgreSQL cluster: {e}"));
        primary
            .stop_when_process_exits(std::process::id(), primary.data_dir().parent())
            .unwrap_or_else(|e| panic!("cannot start the primary's watchdog: {e}"));
        create_database(&primary.url("postgres"), db)
            .await
            .unwrap_or_else(|e| panic!("create database {db} on the primary: {e}"));
        Storage::connect(&primary.url(db), 1)
            .expect("primary URL is valid")
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate {db} on the primary: {e}"));

        let standby_dir = tempfile::Builder::new()
            .prefix("phonehome-standby-")
            .tempdir()
            .expect("temp dir for the standby");
        hand_to_postgres(standby_dir.path());
        let standby_port = free_port();
        let pair = StreamingPair {
            primary,
            bindir,
            standby_dir,
            standby_port,
        };
        pair.as_postgres(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary.port().to_string(),
                "-U",
                "postgres",
                "-D",
                path_str(&pair.standby_data()),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        pair.watch_standby();
        pair.start_standby();
        pair
    }

    /// A URL for database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        self.primary.url(db)
    }

    /// A URL for database `db` on the standby.
    pub fn standby_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.standby_port)
    }

    /// Starts the standby (again) and waits until it accepts read-only connections.
    pub fn start_standby(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c hot_standby=on \
             -c max_connections=200",
            self.standby_port,
            path_str(self.standby_dir.path())
        );
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.standby_data()),
                "-l",
                path_str(&self.standby_log()),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the standby (`pg_ctl -m fast stop`): what a replica's crash or maintenance looks
    /// like to the ingest.
    pub fn stop_standby(&self) {
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.standby_data()),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Pauses (or resumes) the standby's replay of the primary's WAL: what the primary commits
    /// meanwhile is not visible on the standby.
    pub async fn pause_replay(&self, db: &str, pause: bool) {
        let standby = connect(&self.standby_url(db)).await;
        let call = if pause {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        standby
            .batch_execute(call)
            .await
            .unwrap_or_else(|e| panic!("{call} on the standby: {e}"));
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    /// The target is the WAL *insert* position: the test clusters run with
    /// `synchronous_commit=off`, so a commit the ingest has acknowledged may still sit in the WAL
    /// buffers, past `pg_current_wal_lsn()` (the write position), until the WAL writer flushes it.
    pub async fn wait_replayed(&self, db: &str) {
        let primary = connect(&self.primary_url(db)).await;
        let standby = connect(&self.standby_url(db)).await;
        let target: String = primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("primary WAL position")
            .get(0);
        // A commit made with synchronous_commit=on is flushed at once, and with it everything
        // before the target: the standby receives it now, not at the WAL writer's next round.
        primary
            .batch_execute("SET synchronous_commit = on; SELECT txid_current()")
            .await
            .expect("a flushed commit on the primary");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind: bool = standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() < $1::text::pg_lsn",
                    &[&target],
                )
                .await
                .expect("standby replay position")
                .get(0);
            if !behind {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby did not replay up to {target} within 30 s:\n{}",
                self.standby_log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain client on database `db` of the standby, for assertions.
    pub async fn standby_client(&self, db: &str) -> tokio_postgres::Client {
        connect(&self.standby_url(db)).await
    }

    /// The standby's server log, for failure messages.
    pub fn standby_log_text(&self) -> String {
        std::fs::read_to_string(self.standby_log()).unwrap_or_default()
    }

    fn standby_data(&self) -> PathBuf {
        self.standby_dir.path().join("data")
    }

    fn standby_log(&self) -> PathBuf {
        self.standby_dir.path().join("postgres.log")
    }

    /// Stops the standby and removes its directory once this test process has exited, even
    /// when it is killed and runs no destructor.
    fn watch_standby(&self) {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then {runas} '{pg_ctl}' -D '{data}' -m immediate stop; fi; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            runas = if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            pg_ctl = path_str(&self.bindir.join("pg_ctl")),
            data = path_str(&self.standby_data()),
            dir = path_str(self.standby_dir.path()),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            // The watchdog outlives this process on purpose; nobody waits for it.
            .map(drop)
            .unwrap_or_else(|e| panic!("cannot start the standby's watchdog: {e}"));
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) {
        let exe = self.bindir.join(tool);
        let out = postgres_command(&exe)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            // pg_ctl's server inherits stdout: a pipe would keep us waiting for its end.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {} failed ({}): {}\nstandby log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.standby_log_text()
        );
    }
}

impl Drop for StreamingPair {
    fn drop(&mut self) {
        if self.standby_data().join("postmaster.pid").exists() {
            let _ = postgres_command(&self.bindir.join("pg_ctl"))
                .args(["-D", path_str(&self.standby_data())])
                .args(["-m", "immediate", "-w", "stop"])
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Debian's PgBouncer in front of one database, in transaction pooling mode; stopped on drop.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The database name clients of [`PgBouncer`] connect to.
pub const BOUNCER_DB: &str = "phonehome";

impl PgBouncer {
    /// Starts `pgbouncer` with `pool_mode = transaction` and `default_pool_size` server
    /// connections, serving database [`BOUNCER_DB`] from the database at `database_url`, and
    /// waits until it answers.
    pub async fn start(database_url: &str, default_pool_size: u32) -> Self {
        let exe = find_pgbouncer().unwrap_or_else(|| {
            panic!(
                "pgbouncer is not installed: run scripts/deps.sh (it installs Debian's \
                 pgbouncer package), or `apt-get install -y pgbouncer`"
            )
        });
        let server: tokio_postgres::Config =
            database_url.parse().expect("test database URL is valid");
        let host = match server.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => path_str(p).to_owned(),
            None => "127.0.0.1".to_owned(),
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let mut target = format!(
            "host={host} port={port} dbname={} user={}",
            server.get_dbname().unwrap_or("postgres"),
            server.get_user().unwrap_or("postgres"),
        );
        if let Some(password) = server.get_password() {
            target.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
        }
        let dir = tempfile::Builder::new()
            .prefix("phonehome-pgbouncer-")
            .tempdir()
            .expect("temp dir for pgbouncer");
        let listen = free_port();
        let d = path_str(dir.path());
        let ini = format!(
            "[databases]\n\
             {BOUNCER_DB} = {target}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {d}/userlist.txt\n\
             admin_users = postgres\n\
             pool_mode = transaction\n\
             default_pool_size = {default_pool_size}\n\
             max_client_conn = 200\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n"
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n")
            .expect("write userlist.txt");
        hand_to_postgres(dir.path());
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let mut cmd = Command::new(&exe);
        // PgBouncer refuses to run as root; -u makes it switch to postgres itself, so the
        // child we hold is PgBouncer and not a wrapper.
        if is_root() {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.path().join("pgbouncer.ini"))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        // A test process killed from outside runs no destructors: stop PgBouncer after it.
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "while kill -0 {} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
                    std::process::id(),
                    child.id()
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop);
        let mut bouncer = PgBouncer {
            child,
            port: listen,
            dir,
        };
        bouncer.wait_ready().await;
        bouncer
    }

    /// The URL an ingest uses to reach the database through PgBouncer.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{BOUNCER_DB}", self.port)
    }

    /// PgBouncer's log and its standard error, for failure messages.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "{}{}",
            read("pgbouncer.log").unwrap_or_default(),
            read("stderr.log").unwrap_or_default()
        )
    }

    /// Runs `command` (`SHOW STATS`, `SHOW POOLS`, …) on PgBouncer's admin console and returns
    /// its rows as column → value maps.
    pub async fn show(&self, command: &str) -> Vec<std::collections::HashMap<String, String>> {
        let client = connect(&format!(
            "postgres://postgres@127.0.0.1:{}/pgbouncer",
            self.port
        ))
        .await;
        client
            .simple_query(command)
            .await
            .unwrap_or_else(|e| panic!("{command} on PgBouncer's console: {e}\n{}", self.log()))
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            (
                                c.name().to_owned(),
                                row.get(i).unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgbouncer exited ({status}) before it answered:\n{}",
                    self.log()
                );
            }
            let attempt = async {
                let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not answer within 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's pgbouncer binary.
fn find_pgbouncer() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/pgbouncer");
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    })
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// `exe` run as `postgres` when we are root, else as ourselves.
fn postgres_command(exe: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

/// Gives `dir` to the `postgres` user when we are root (PostgreSQL and PgBouncer run as it).
fn hand_to_postgres(dir: &Path) {
    if !is_root() {
        return;
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("run chown: {e}"));
    assert!(
        out.status.success(),
        "chown {} to postgres failed (is the postgresql package installed? it makes that \
         user): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
