//! The `phonehome-ingest` command line: parses arguments and configuration, then calls the library.

/// mimalloc: a fresh TLS connection per report allocates and frees many small buffers, which
/// glibc's allocator served at about 8 % of the machine under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod ca_cli;

use anyhow::Context;
use clap::{Parser, Subcommand};
use phonehome_ingest::config::Config;
use phonehome_ingest::storage::Storage;
use phonehome_ingest::{AppState, auth, demo, lifecycle, telemetry, tls};
use phonehome_schema::Serial;

/// phonehome ingest: receives appliance health reports over mutual TLS, stores them in
/// PostgreSQL and serves metrics and the operations dashboard.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingest: the mTLS report listener and the operations listener (/healthz, /metrics,
    /// dashboard). Applies pending migrations first.
    Serve {
        /// TOML configuration file (see ingest/ingest.example.toml); PHONEHOME_* variables
        /// override it. Without it, defaults and the environment apply.
        #[arg(long, short, env = "PHONEHOME_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The fleet's certificate authority: certificates, enrolment tokens, revocation, CRL.
    Ca {
        /// The ingest's configuration, for the commands that use its database
        /// (issue-token, revoke, crl); PHONEHOME_DATABASE_URL works too.
        #[arg(long, short, env = "PHONEHOME_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ca_cli::CaCommand,
    },
    /// Manage the operations listener's API tokens (stored as SHA-256 digests; the secret is
    /// printed once, at creation).
    Token {
        #[arg(long, short, env = "PHONEHOME_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Operator actions on one appliance.
    Appliance {
        #[arg(long, short, env = "PHONEHOME_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ApplianceCommand,
    },
    /// Bring the whole system up on this machine: private PostgreSQL (or DATABASE_URL), a
    /// throwaway CA, the ingest, and one collector run; then wait for Ctrl-C.
    Demo {
        /// Keep the cluster, certificates and config here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8443")]
        report_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        ops_listen: SocketAddr,
        /// The collector binary (default: phonehome-collector next to this program).
        #[arg(long)]
        collector: Option<PathBuf>,
        /// Also seed this many simulated appliances with 30 days of history (serials SIM-…,
        /// some failing, degrading, filling, silent, outdated), so the dashboard has a fleet to
        /// show (through phonehome-loadgen fill, next to this program); 0 for none.
        #[arg(long, default_value_t = 300, value_name = "N")]
        simulated: u32,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (only this once).
    Create {
        /// A name for who or what uses it (letters, digits, '.', '_', '-'); never reused.
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "admin"])]
        role: String,
    },
    /// List the tokens: name, role, created, last used, revoked.
    List,
    /// Revoke a token; every replica refuses it within seconds.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApplianceCommand {
    /// Set an appliance's lifecycle: active, expected-offline (no silence alert until
    /// --until), or retired (alerts resolved, certificates revoked, history kept).
    SetState {
        #[arg(long)]
        serial: String,
        #[arg(long, value_parser = ["active", "expected-offline", "expected_offline", "retired"])]
        state: String,
        /// expected-offline only: a date (2027-01-31, UTC) or an RFC 3339 time; without it,
        /// until further notice.
        #[arg(long)]
        until: Option<String>,
        /// Why, for the audit log and the appliance's page.
        #[arg(long)]
        note: Option<String>,
    },
    /// Mute an appliance (every rule, or --rule) until a time: its firing alerts of those
    /// rules resolve and none open meanwhile. Logged in the audit log.
    Mute {
        #[arg(long)]
        serial: String,
        /// One rule only (e.g. appliance_silent); without it, every rule.
        #[arg(long)]
        rule: Option<String>,
        /// Until when: a date (2027-01-31, UTC) or an RFC 3339 time, in the future.
        #[arg(long)]
        until: String,
        /// Why, for the audit log and the appliance's page.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Acknowledge a firing alert (its id from the dashboard or the API): it resolves, and its
    /// condition stays quiet until it gets worse (a higher severity, a new reason, another
    /// rise).
    Ack {
        /// The alert's id.
        #[arg(long)]
        alert: i64,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Show or change an appliance's routing labels (customer, site, tier, …), which go with
    /// every Alertmanager alert of the appliance and filter the fleet pages. Without NAME=VALUE
    /// words, prints them.
    Label {
        #[arg(long)]
        serial: String,
        /// NAME=VALUE sets a label, NAME= removes it; names are lower-case letters, digits and
        /// _ (at most 16 labels, values up to 128 characters).
        #[arg(value_name = "NAME=VALUE")]
        changes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phonehome-ingest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca { config, command } => ca_cli::run(config, command),
        Command::Serve { config } => runtime()?.block_on(serve(Config::load(config.as_deref())?)),
        Command::Migrate { config } => runtime()?.block_on(async {
            let config = Config::load(config.as_deref())?;
            let storage = Storage::connect_with(
                config.database_url.expose(),
                config.command_storage_settings(),
            )?;
            let applied = storage.migrate().await.context("apply migrations")?;
            println!("applied {} migration(s): {applied:?}", applied.len());
            Ok(())
        }),
        Command::Token { config, command } => {
            runtime()?.block_on(token(Config::load(config.as_deref())?, command))
        }
        Command::Appliance { config, command } => {
            runtime()?.block_on(appliance(Config::load(config.as_deref())?, command))
        }
        Command::Demo {
            dir,
            report_listen,
            ops_listen,
            collector,
            simulated,
        } => runtime()?.block_on(demo::run(demo::DemoOptions {
            dir,
            report_listen,
            ops_listen,
            collector,
            simulated,
        })),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    phonehome_ingest::fdlimit::check(&config);
    let tls = tls::ServerTls::load(
        &config.tls,
        std::time::Duration::from_secs(
            u64::try_from(config.pki.renew_grace_days.saturating_mul(86_400)).unwrap_or(0),
        ),
    )
    .context("load TLS files")?;
    if let Some(dir) = &config.pki.ca_dir {
        phonehome_pki::ca::Authority::load(dir)
            .with_context(|| format!("pki.ca_dir {}: the issuing CA", dir.display()))?;
    }
    let storage = Storage::connect_with(config.database_url.expose(), config.storage_settings())?;
    storage
        .migrate()
        .await
        .context("apply migrations (is PostgreSQL up and the database created?)")?;
    storage
        .load_dictionaries()
        .await
        .context("load report-body dictionaries")?;
    let replica = config
        .replica_name
        .clone()
        .unwrap_or_else(default_replica_name);
    // Background work runs supervised: a panic restarts it, is counted on /metrics and said
    // on /readyz.
    let tasks = phonehome_ingest::tasks::Tasks::default();
    let maintenance = {
        let storage = storage.clone();
        let interval = std::time::Duration::from_secs(config.maintenance_interval_seconds);
        tasks.spawn("maintenance", move || {
            phonehome_ingest::storage::maintenance::run_paced(
                storage.clone(),
                replica.clone(),
                interval,
                phonehome_ingest::storage::maintenance::YOUNG_EVERY,
                phonehome_ingest::storage::maintenance::YOUNG_FOR,
            )
        })
    };
    let notifier = phonehome_ingest::alertmanager::Notifier::from_config(&config.alertmanager)
        .context("alertmanager.url")?
        .map(|n| {
            let storage = storage.clone();
            tasks.spawn("alertmanager", move || {
                phonehome_ingest::alertmanager::run(storage.clone(), n.clone())
            })
        });
    let reports = phonehome_ingest::server::listen_reports(config.report_listen)
        .with_context(|| format!("listen on {} (report_listen)", config.report_listen))?;
    let ops = tokio::net::TcpListener::bind(config.ops_listen)
        .await
        .with_context(|| format!("listen on {} (ops_listen)", config.ops_listen))?;
    tracing::info!(reports = %config.report_listen, ops = %config.ops_listen, "listening");
    let silence = config.alerts.appliance_silent.enabled.then(|| {
        let storage = storage.clone();
        let hours = config.alerts.appliance_silent.hours;
        tasks.spawn("silence_check", move || {
            phonehome_ingest::storage::fleet::silence_watch(
                storage.clone(),
                hours,
                std::time::Duration::from_secs(60),
            )
        })
    });
    let state = AppState::new(storage, config.max_body_bytes)
        .with_tasks(tasks)
        .with_max_in_flight(config.max_in_flight)
        .with_max_connections(config.max_connections)
        .with_max_in_flight_per_appliance(config.max_in_flight_per_appliance)
        .with_ops_limits(config.ops_max_connections, config.ops_hosts())
        .with_open_reads(!config.ops_reads_require_token)
        .with_ops_timeouts(phonehome_ingest::server::OpsTimeouts {
            header: std::time::Duration::from_secs(config.ops_header_timeout_secs),
            lifetime: std::time::Duration::from_secs(config.ops_connection_lifetime_secs),
        })
        .with_body_pace(
            std::time::Duration::from_secs(config.body_timeout_secs),
            config.min_body_bytes_per_sec,
        )
        .with_admission_wait(std::time::Duration::from_millis(config.admission_wait_ms))
        .with_counts_max_age(std::time::Duration::from_secs(
            config.dashboard_counts_max_age_secs,
        ))
        .with_issuing(config.pki.issuing(&config.tls.ca_cert))
        .with_revocation_refresh(std::time::Duration::from_secs(
            config.pki.revocation_refresh_secs,
        ));
    phonehome_ingest::serve(reports, ops, tls, state, shutdown_signal()).await?;
    maintenance.abort();
    if let Some(silence) = silence {
        silence.abort();
    }
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// hostname:pid, which tells replicas apart in maintenance_runs and logs.
fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the ingest");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested; finishing accepted reports");
}

/// How the audit log names whoever runs a command on the operations host.
fn cli_actor() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("uid{}", rustix::process::getuid().as_raw()));
    format!("cli:{user}")
}

/// The database for an operator's command, schema brought up to date first (the command may
/// run before any `serve` did).
async fn admin_storage(config: &Config) -> anyhow::Result<Storage> {
    let storage = Storage::connect_with(
        config.database_url.expose(),
        config.command_storage_settings(),
    )?;
    storage
        .migrate()
        .await
        .context("apply migrations (is PostgreSQL up and the database created?)")?;
    Ok(storage)
}

async fn token(config: Config, command: TokenCommand) -> anyhow::Result<()> {
    let storage = admin_storage(&config).await?;
    let actor = cli_actor();
    match command {
        TokenCommand::Create { name, role } => {
            auth::check_name(&name).map_err(|e| anyhow::anyhow!("--name {name:?}: {e}"))?;
            let role = auth::Role::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("--role must be read or admin"))?;
            let token = auth::generate()?;
            storage
                .create_api_token(&name, role, &token.sha256, &actor)
                .await?;
            eprintln!(
                "created {} token {name:?}; its secret follows, shown only this once:",
                role.as_str()
            );
            println!("{}", token.secret);
        }
        TokenCommand::List => {
            println!(
                "{:<24} {:<6} {:<20} {:<20} REVOKED",
                "NAME", "ROLE", "CREATED", "LAST USED"
            );
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            for t in storage.api_tokens().await? {
                println!(
                    "{:<24} {:<6} {:<20} {:<20} {}",
                    t.name,
                    t.role.as_str(),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    when(t.revoked_at),
                );
            }
        }
        TokenCommand::Revoke { name } => {
            storage.revoke_api_token(&name, &actor).await?;
            println!(
                "revoked token {name:?}; replicas refuse it within {} s",
                auth::CACHE_TTL.as_secs()
            );
        }
    }
    Ok(())
}

async fn appliance(config: Config, command: ApplianceCommand) -> anyhow::Result<()> {
    match command {
        ApplianceCommand::SetState {
            serial,
            state,
            until,
            note,
        } => {
            let serial = Serial::parse(&serial).with_context(|| format!("--serial {serial:?}"))?;
            let state = lifecycle::State::parse(&state)
                .ok_or_else(|| anyhow::anyhow!("--state {state:?} is not a lifecycle state"))?;
            let until = until
                .map(|u| lifecycle::parse_until(&u).map_err(|e| anyhow::anyhow!("--until: {e}")))
                .transpose()?;
            let change = lifecycle::Change { state, until, note };
            change
                .check(chrono::Utc::now())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let storage = admin_storage(&config).await?;
            let done = storage
                .set_lifecycle(serial.as_str(), &change, &cli_actor())
                .await?;
            println!(
                "{serial}: {} -> {}; {} alert(s) resolved{}",
                done.previous.as_str(),
                state.as_str(),
                done.resolved_alerts,
                if state == lifecycle::State::Retired {
                    "; its certificates are revoked"
                } else {
                    ""
                }
            );
        }
        ApplianceCommand::Mute {
            serial,
            rule,
            until,
            note,
        } => {
            let serial = Serial::parse(&serial).with_context(|| format!("--serial {serial:?}"))?;
            if let Some(r) = &rule {
                anyhow::ensure!(
                    phonehome_ingest::alerts::RULES.contains(&r.as_str()),
                    "--rule {r:?} is not a rule; one of {}",
                    phonehome_ingest::alerts::RULES.join(", ")
                );
            }
            let until =
                lifecycle::parse_until(&until).map_err(|e| anyhow::anyhow!("--until: {e}"))?;
            anyhow::ensure!(until > chrono::Utc::now(), "--until must be in the future");
            let storage = admin_storage(&config).await?;
            let done = storage
                .mute(serial.as_str(), rule.as_deref(), until, &cli_actor(), &note)
                .await?;
            println!(
                "{serial}: {} muted until {}; {} alert(s) resolved",
                rule.as_deref().unwrap_or("every rule"),
                until.to_rfc3339(),
                done.resolved_alerts
            );
        }
        ApplianceCommand::Ack { alert, note } => {
            let storage = admin_storage(&config).await?;
            let done = storage.acknowledge(alert, &cli_actor(), &note).await?;
            println!(
                "{}: {} {} acknowledged; quiet until it gets worse",
                done.serial, done.rule, done.subject
            );
        }
        ApplianceCommand::Label { serial, changes } => {
            let serial = Serial::parse(&serial).with_context(|| format!("--serial {serial:?}"))?;
            let storage = admin_storage(&config).await?;
            let labels = if changes.is_empty() {
                storage.labels(serial.as_str()).await?
            } else {
                let change = phonehome_ingest::labels::LabelChange::from_args(&changes)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                storage
                    .set_labels(serial.as_str(), &change, &cli_actor())
                    .await?
            };
            if labels.is_empty() {
                println!("{serial}: no labels");
            }
            for (name, value) in labels {
                println!("{name}={value}");
            }
        }
    }
    Ok(())
}
