//! `phonehome-loadgen fill`: a database with a realistic fleet's history in minutes, written
//! straight through the ingest's storage layer (the same batch transaction a posted report
//! goes through: samples, current state, membership, versions, alerts), for the dashboard's
//! scale benchmarks and the demo's simulated fleet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use phonehome_ingest::alerts::AlertsConfig;
use phonehome_ingest::storage::maintenance;
use phonehome_ingest::storage::{InsertOutcome, Storage, StorageSettings};
use tokio::task::JoinSet;

use crate::fleet::{Fate, Fleet};
use crate::phases::progress;
use crate::setup;

/// Fills a PostgreSQL database with a simulated fleet's history, straight through the ingest's
/// storage layer (no HTTP, no TLS): N appliances with D days of daily reports each, ending
/// about now.
///
/// The fleet is one that needs watching: about 3 % of the appliances went silent days ago, 2 %
/// have a drive failing its SMART check, 5 % a drive reallocating sectors, 4 % a filesystem
/// filling up, 6 % never took the upgrade to app 4.3.0, 2 % run hot; the rest are healthy.
/// Each report is judged by the alert rules as it is written, so alerts open and resolve as
/// they would have. Every run has its own identities (machine-ids, UUIDs, MACs, drive serials
/// and WWNs derived from --seed), so two runs into one database do not clone each other.
///
/// Progress goes to stderr, the summary to stdout. Afterwards the ingest's maintenance runs
/// once (partitions, report-body dictionary, daily version counts) and the database is
/// analysed, so the dashboard's plans are those of a database that has run for a while.
#[derive(Debug, Parser)]
#[command(name = "phonehome-loadgen fill", version, about, long_about)]
pub struct FillCli {
    /// PostgreSQL database to fill (migrated first). Serials already there get new reports.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: String,

    /// Simulated appliances.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    appliances: u64,

    /// Days of history per appliance, one report a day, the last about an hour ago.
    #[arg(long, value_name = "D", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=399))]
    days: u64,

    /// Prefix of the serials (serial = prefix + 7-digit index); the dashboard shows them.
    #[arg(long, default_value = "SIM-", value_name = "PREFIX")]
    serial_prefix: String,

    /// Seed of the identities; the same seed and prefix describe the same machines again.
    /// Random by default.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,

    /// Consecutive days of each appliance written in one transaction: more amortise each
    /// appliance's locking and state over more reports.
    #[arg(long, value_name = "K", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(1..=400))]
    days_per_batch: u64,

    /// Reports per transaction (about: whole appliances are kept together).
    #[arg(long, value_name = "R", default_value_t = 192,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch_reports: u64,

    /// Transactions in flight at once.
    #[arg(long, short = 'c', value_name = "C", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,

    /// The `app_outdated` rule's minimum when the history is judged: appliances below it get
    /// alerts. Give the ingest serving the database the same
    /// `[alerts.app_outdated] minimum_version`.
    #[arg(long, value_name = "VERSION", default_value = "4.3.0")]
    minimum_version: String,
}

/// Fills the database; the summary goes to stdout.
pub async fn run(cli: FillCli) -> anyhow::Result<()> {
    let seed = cli.seed.unwrap_or_else(crate::fleet::fresh_seed);
    let fleet = Arc::new(
        Fleet::new(cli.days, &cli.serial_prefix)?
            .with_seed(seed)
            .with_troubles(),
    );
    // Every serial must be valid before anything is written.
    fleet.serial(cli.appliances - 1).with_context(|| {
        format!(
            "--serial-prefix {:?} with {} appliances",
            cli.serial_prefix, cli.appliances
        )
    })?;

    progress(format!(
        "checking PostgreSQL at {}",
        setup::describe_db(&cli.database_url)
    ));
    setup::prepare_database(&cli.database_url).await?;
    let mut alerts = AlertsConfig::default();
    alerts.app_outdated.minimum_version = Some(cli.minimum_version.clone());
    let storage = Storage::connect_with(
        &cli.database_url,
        StorageSettings {
            pool_size: cli.concurrency as usize + 1,
            alerts: Arc::new(alerts),
            ..StorageSettings::default()
        },
    )?;
    storage
        .load_dictionaries()
        .await
        .context("read the report-body dictionaries")?;

    let days = fleet.days();
    let per_batch_days = cli.days_per_batch.min(days);
    let group = (cli.batch_reports / per_batch_days).max(1);
    let total: u64 = (0..cli.appliances)
        .map(|i| (0..days).filter(|&d| fleet.reports_on(i, d)).count() as u64)
        .sum();
    progress(format!(
        "filling {} appliances x {days} days ({total} reports, seed {seed}): {group} appliances \
         x {per_batch_days} days per transaction, {} in flight",
        cli.appliances, cli.concurrency
    ));

    let started = Instant::now();
    let mut written = 0u64;
    let mut duplicates = 0u64;
    let mut last_progress = Instant::now();
    let mut trained = false;
    let mut first_day = 0;
    while first_day < days {
        let span = first_day..(first_day + per_batch_days).min(days);
        // Chunks one after another: an appliance's days go in in order, so none is late.
        let mut inflight: JoinSet<anyhow::Result<(u64, u64)>> = JoinSet::new();
        let mut start = 0;
        while start < cli.appliances || !inflight.is_empty() {
            while start < cli.appliances && (inflight.len() as u64) < cli.concurrency {
                let end = (start + group).min(cli.appliances);
                let (fleet, storage, span) = (fleet.clone(), storage.clone(), span.clone());
                inflight.spawn(async move {
                    let batch = tokio::task::spawn_blocking({
                        let storage = storage.clone();
                        move || prepare(&fleet, &storage, start..end, span)
                    })
                    .await
                    .context("report thread")??;
                    let outcomes = storage
                        .write_prepared(&batch)
                        .await
                        .context("write a batch of reports")?;
                    let stored = outcomes
                        .iter()
                        .filter(|o| **o == InsertOutcome::Stored)
                        .count() as u64;
                    Ok((stored, outcomes.len() as u64 - stored))
                });
                start = end;
            }
            if let Some(done) = inflight.join_next().await {
                let (stored, dup) = done.context("batch task")??;
                written += stored;
                duplicates += dup;
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                last_progress = Instant::now();
                // The tables grow from nothing: statements planned on them while small scan
                // them whole until their statistics say otherwise.
                maintenance::refresh_statistics(&storage)
                    .await
                    .context("refresh the statistics")?;
                let secs = started.elapsed().as_secs_f64();
                progress(format!(
                    "{written}/{total} reports ({:.0} %), {:.0} reports/s",
                    written as f64 * 100.0 / total.max(1) as f64,
                    written as f64 / secs.max(0.001)
                ));
            }
        }
        if !trained {
            // The first days teach the report-body dictionary; the rest are compressed with it.
            maintenance::run_once(&storage, "phonehome-loadgen fill", Duration::ZERO)
                .await
                .context("maintenance after the first days")?;
            storage.load_dictionaries().await?;
            trained = true;
        }
        first_day = span.end;
    }
    let fill_secs = started.elapsed().as_secs_f64();

    progress("maintenance: daily version counts, statistics");
    let finishing = Instant::now();
    maintenance::run_once(&storage, "phonehome-loadgen fill", Duration::ZERO)
        .await
        .context("maintenance after the fill")?;
    analyze(&cli.database_url).await?;

    let mut fates = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..cli.appliances {
        *fates.entry(fate_name(fleet.fate(i))).or_default() += 1;
    }
    println!(
        "filled {} appliances x {days} days: {written} reports in {fill_secs:.1} s ({:.0} reports/s){}",
        cli.appliances,
        written as f64 / fill_secs.max(0.001),
        if duplicates > 0 {
            format!(", {duplicates} already there")
        } else {
            String::new()
        }
    );
    println!(
        "maintenance and statistics: {:.1} s",
        finishing.elapsed().as_secs_f64()
    );
    let list: Vec<String> = fates.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("appliances: {}", list.join(", "));
    println!(
        "serials {} to {}; seed {seed}",
        fleet.serial(0)?,
        fleet.serial(cli.appliances - 1)?
    );
    Ok(())
}

/// `ANALYZE` of the whole database: the history tables' statistics are what autovacuum would
/// have gathered by the time a database this size had been running.
async fn analyze(url: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connect for ANALYZE")?;
    let conn = tokio::spawn(conn);
    client.batch_execute("ANALYZE").await.context("ANALYZE")?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

fn fate_name(f: Fate) -> &'static str {
    match f {
        Fate::Healthy => "healthy",
        Fate::Silent { .. } => "silent",
        Fate::Failing { .. } => "failing",
        Fate::Degrading { .. } => "degrading",
        Fate::Filling => "filling",
        Fate::Outdated => "outdated",
        Fate::Hot => "hot",
    }
}

/// The reports of appliances `which` for the days `span`, ready to write.
fn prepare(
    fleet: &Fleet,
    storage: &Storage,
    which: std::ops::Range<u64>,
    span: std::ops::Range<u64>,
) -> anyhow::Result<Vec<phonehome_ingest::storage::rows::PreparedReport>> {
    let mut out = Vec::new();
    for i in which {
        let serial = fleet.serial(i)?;
        // One certificate per appliance, as a real fleet has: its digest stands for it.
        let cert: Vec<u8> = (0..4u64)
            .flat_map(|k| {
                crate::fleet::mix(fleet.seed() ^ i.wrapping_mul(4).wrapping_add(k)).to_le_bytes()
            })
            .collect();
        for day in span.clone() {
            if !fleet.reports_on(i, day) {
                continue;
            }
            let report = fleet.report(&serial, i, day);
            // Delivered a little after collection, never in the future.
            let received =
                (report.collected_at + chrono::Duration::seconds((i % 300) as i64)).min(Utc::now());
            out.push(storage.prepare_report(&report, &cert, received)?);
        }
    }
    Ok(out)
}
