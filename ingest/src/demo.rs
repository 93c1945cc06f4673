//! `phonehome-ingest demo`: the whole system on one machine with nothing set up beforehand: a
//! private PostgreSQL cluster, a throwaway CA, the ingest, and one real run of the collector.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use phonehome_schema::Report;
use tokio::net::TcpListener;

use crate::config::TlsConfig;
use crate::pgcluster::PrivateCluster;
use crate::storage::{self, Storage};
use phonehome_pki::{self as pki, ca};

use crate::{AppState, tls};

/// What the demo needs to know; every field has a default on the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep the cluster, certificates and config; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub report_listen: SocketAddr,
    pub ops_listen: SocketAddr,
    /// The collector binary; by default the one next to this executable.
    pub collector: Option<PathBuf>,
    /// Simulated appliances to seed beside this machine (0: none).
    pub simulated: u32,
}

/// Days of history each simulated appliance gets.
const SIMULATED_DAYS: u32 = 30;

/// The minimum app version the simulated fleet is held to (some of it never upgrades).
const SIMULATED_MINIMUM_VERSION: &str = "4.3.0";

fn step(msg: impl std::fmt::Display) {
    println!("==> {msg}");
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("phonehome-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    step(format!("working directory {}", dir.display()));

    let collector = match &opts.collector {
        Some(c) => c.clone(),
        None => std::env::current_exe()?.with_file_name("phonehome-collector"),
    };
    if !collector.is_file() {
        bail!(
            "collector binary {} not found; build it with `cargo build -p phonehome-collector` \
             or pass --collector PATH",
            collector.display()
        );
    }

    // The database: DATABASE_URL when given, else a private cluster that lives as long as we do.
    let mut _cluster = None;
    let database_url = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            step("using the database in DATABASE_URL");
            url
        }
        Err(_) => {
            step("starting a private PostgreSQL cluster");
            let pg_dir = dir.join("pg");
            let cluster =
                tokio::task::spawn_blocking(move || PrivateCluster::start(Some(&pg_dir), true))
                    .await??;
            // If we die without unwinding, the cluster must not outlive us; a throwaway working
            // directory goes with it.
            let remove = opts.dir.is_none().then(|| dir.clone());
            cluster.stop_when_process_exits(std::process::id(), remove.as_deref())?;
            storage::create_database(&cluster.url("postgres"), "phonehome").await?;
            let url = cluster.url("phonehome");
            step(format!("PostgreSQL is up at {url}"));
            _cluster = Some(cluster);
            url
        }
    };
    // The simulated fleet's history is judged against app 4.3.0 (`fill`'s default): the
    // ingest serving it has the same minimum, so its "below minimum" list matches.
    let mut alerts = crate::alerts::AlertsConfig::default();
    if opts.simulated > 0 {
        alerts.app_outdated.minimum_version = Some(SIMULATED_MINIMUM_VERSION.to_owned());
    }
    let storage = Storage::connect_with(
        &database_url,
        storage::StorageSettings {
            pool_size: 8,
            alerts: std::sync::Arc::new(alerts),
            ..storage::StorageSettings::default()
        },
    )?;
    let applied = storage.migrate().await.context("apply migrations")?;
    step(format!(
        "database migrated ({} migration(s) applied)",
        applied.len()
    ));

    let pki_dir = dir.join("pki");
    ca::init_ca(&pki_dir, "phonehome demo CA", 30, 30)?;
    let server = ca::issue_server(
        &pki_dir,
        &["localhost".into(), "127.0.0.1".into()],
        "server",
        30,
    )?;
    step(format!(
        "CA and server certificate written to {}",
        pki_dir.display()
    ));

    let report = collect(&collector).await?;
    let serial = report.identity.serial.clone();
    step(format!(
        "this machine is serial {serial} (from {:?}), hostname {}",
        report.identity.serial_source,
        report.identity.hostname.as_deref().unwrap_or("?")
    ));
    let appliance = ca::issue_appliance(
        &pki_dir,
        &pki_dir,
        &serial,
        pki::DEFAULT_APPLIANCE_DAYS,
        pki::KeyType::default(),
    )?;

    let tls_files = TlsConfig {
        ca_cert: pki_dir.join(ca::CA_CERT_FILE),
        server_cert: server.cert.clone(),
        server_key: server.key.clone(),
    };
    let tls = tls::ServerTls::load(&tls_files, tls::DEFAULT_RENEW_GRACE)?;
    let report_listener = bind(opts.report_listen, "--report-listen").await?;
    let ops_listener = bind(opts.ops_listen, "--ops-listen").await?;
    let report_addr = report_listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;
    // Reads need a token as in production: the demo makes an admin token and prints it, so
    // the dashboard opens with it (any user name, the token as password) and the API's writes
    // can be tried. Named by the time: a kept --dir gets a new one each run.
    let token = crate::auth::generate()?;
    let token_name = format!("demo-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    storage
        .create_api_token(
            &token_name,
            crate::auth::Role::Admin,
            &token.sha256,
            "cli:demo",
        )
        .await
        .context("create the demo's API token")?;
    let state = AppState::new(storage.clone(), crate::config::DEFAULT_MAX_BODY_BYTES).with_issuing(
        crate::certs::IssuingSettings {
            ca_dir: Some(pki_dir.clone()),
            ca_bundle: Some(tls_files.ca_cert.clone()),
            ..crate::certs::IssuingSettings::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(crate::serve(
        report_listener,
        ops_listener,
        tls,
        state,
        async {
            let _ = stop_rx.await;
        },
    ));
    step(format!(
        "ingest listening: reports https://{report_addr} (mTLS), operations http://{ops_addr}"
    ));

    let server_url = format!("https://{}", loopback(report_addr));
    let collector_config = dir.join("collector.toml");
    std::fs::write(
        &collector_config,
        format!(
            "# Written by phonehome-ingest demo.\nserver = {:?}\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\ntimeout_seconds = 30\n\n# Undelivered reports wait here, next to this file.\n[spool]\ndir = \"spool\"\n",
            server_url,
            path(&tls_files.ca_cert),
            path(&appliance.cert),
            path(&appliance.key),
        ),
    )?;
    step(format!(
        "running {} run --config {}",
        collector.display(),
        collector_config.display()
    ));
    let status = tokio::process::Command::new(&collector)
        .arg("run")
        .arg("--config")
        .arg(&collector_config)
        .status()
        .await
        .context("run the collector")?;
    if !status.success() {
        let _ = stop_tx.send(());
        bail!("the collector could not deliver its report ({status}); see its message above");
    }

    let dashboard = format!("http://{}/", loopback(ops_addr));
    if opts.simulated > 0 {
        simulate(opts.simulated, &database_url).await?;
    }

    println!();
    println!("phonehome is up.");
    println!("  dashboard:  {dashboard}");
    println!("  token:      {}", token.secret);
    println!(
        "              (admin token {token_name:?}: the dashboard asks for it, any user name, \
         the token as password; scripts send Authorization: Bearer <token>)"
    );
    println!("  metrics:    {dashboard}metrics (with the token)");
    println!(
        "  post again: {} run --config {}",
        collector.display(),
        collector_config.display()
    );
    println!(
        "  with curl:  {} collect > /tmp/report.json && curl --cert {} --key {} --cacert {} {server_url}/v1/reports -H 'Content-Type: application/json' -d @/tmp/report.json",
        collector.display(),
        path(&appliance.cert),
        path(&appliance.key),
        path(&tls_files.ca_cert),
    );
    println!("Press Ctrl-C to stop.");

    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C")?,
        r = terminate() => r?,
    }
    step("stopping");
    let _ = stop_tx.send(());
    server_task.await??;
    Ok(())
}

#[cfg(unix)]
async fn terminate() -> anyhow::Result<()> {
    let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    s.recv().await;
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// An address a local client can connect to: 0.0.0.0 becomes 127.0.0.1.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another address with {flag}"))
}

/// Seeds `n` simulated appliances through the load generator's `fill`, which writes through this
/// ingest's own storage layer. A missing load generator is a note, not a failure: the demo of
/// this machine stands on its own.
async fn simulate(n: u32, database_url: &str) -> anyhow::Result<()> {
    let loadgen = std::env::current_exe()?.with_file_name("phonehome-loadgen");
    if !loadgen.is_file() {
        step(format!(
            "no simulated fleet: {} not found (build it with `cargo build -p phonehome-loadgen`, \
             or pass --simulated 0)",
            loadgen.display()
        ));
        return Ok(());
    }
    step(format!(
        "seeding {n} simulated appliances with {SIMULATED_DAYS} days of history (serials SIM-…)"
    ));
    let status = tokio::process::Command::new(&loadgen)
        .arg("fill")
        .arg("--appliances")
        .arg(n.to_string())
        .arg("--days")
        .arg(SIMULATED_DAYS.to_string())
        .arg("--minimum-version")
        .arg(SIMULATED_MINIMUM_VERSION)
        .env("DATABASE_URL", database_url)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("run {}", loadgen.display()))?;
    if !status.success() {
        bail!("seeding the simulated fleet failed ({status}); see its message above");
    }
    Ok(())
}

async fn collect(collector: &Path) -> anyhow::Result<Report> {
    let out = tokio::process::Command::new(collector)
        .args(["collect", "--compact"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("run {} collect", collector.display()))?;
    if !out.status.success() {
        bail!("{} collect failed ({})", collector.display(), out.status);
    }
    serde_json::from_slice(&out.stdout)
        .context("the collector printed a report the ingest cannot read")
}
