//! `phonehome-loadgen`: proves the ingest's throughput (issue 4, "Prove the throughput").
//!
//! It simulates N appliances, each with its own client certificate from a throwaway CA, posts M
//! realistic reports over mutual TLS (a fresh connection and handshake per report, as real
//! appliances do, or kept-alive connections), and prints reports/s, latency percentiles and
//! every non-202 outcome. In the same run it measures the ceiling: the same number of reports
//! inserted straight into PostgreSQL through the ingest's own `Storage::insert_report`, with the
//! same concurrency and pool size, so the ratio between the two says how much the HTTP, TLS and
//! parsing layers cost on this machine. With fresh connections it also measures the connection
//! ceiling (the same connections, certificates and concurrency against the ingest's listener
//! code answering without parsing or storing) and prints the combined limit of the machine,
//! `1 / (1/database ceiling + 1/connection ceiling)`, and the ingest's ratio to it.
//!
//! With `--outage` it simulates instead the end of an ingest outage: every appliance holds a
//! spool of undelivered reports and the whole fleet calls at once, delivering and retrying as the
//! collector does; it prints how long the fleet takes to drain and checks the database.
//!
//! `phonehome-loadgen fill` instead fills a database with a simulated fleet's history straight
//! through the storage layer (see [`fill`]).
//!
//! By default the ingest runs in this process (`phonehome_ingest::serve` on 127.0.0.1:0) against
//! `--database-url`; `--target` aims at an ingest running elsewhere instead.

/// The same allocator as `phonehome-ingest serve`, so the in-process ingest costs what the
/// real one does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod fill;
mod fleet;
mod http;
mod outage;
mod phases;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// Load generator for the phonehome ingest: N simulated appliances, each with its own client
/// certificate, post M reports over mutual TLS; then the same number of reports go straight
/// into PostgreSQL (the ceiling: as many appliances again, same pattern, serials
/// `<prefix>C-…`, so each report is judged as the ingest's were) and the ratio is printed.
/// With fresh connections, the same connections then go to a listener that does the ingest's
/// TLS and HTTP and stores nothing (the connection ceiling); `limit` combines both ceilings
/// (1 / (1/db + 1/connection)), and `ratio ingest/limit` is the fresh path against what this
/// machine can do.
///
/// With --outage instead: the ingest was down, each of the N appliances holds --backlog reports
/// in its spool, and at t0 the whole fleet calls at once; the run prints how long the fleet
/// takes to drain and checks that the database holds every report exactly once.
///
/// `phonehome-loadgen fill --help`: fill a database with a simulated fleet's history (days of
/// reports of thousands of appliances, some failing, degrading, filling, outdated or silent)
/// straight through the storage layer, for the dashboard's benchmarks and the demo.
///
/// Results go to stdout, progress to stderr. Exit status: 0 when every report was acknowledged
/// with 2xx and every ceiling insert succeeded (with --outage: and the database holds exactly
/// N x K new reports), 3 when the run completed but some did not, 1 when the run could not be
/// set up (database unreachable, ...), 2 for a bad command line.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// PostgreSQL database to store the reports in (migrated first). The in-process ingest and
    /// the ceiling both write here, so use a scratch database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: String,

    /// Number of simulated appliances, each with its own certificate and hardware.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    appliances: u64,

    /// Number of reports to send in all; appliance i sends its reports for consecutive days
    /// (report k is appliance k mod N, day k / N), so M / N must stay below 400 days. Required
    /// unless --outage, which sends N x --backlog instead.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..),
          required_unless_present = "outage", conflicts_with = "outage")]
    reports: Option<u64>,

    /// Concurrent senders (and concurrent inserters in the ceiling phase) [default: 64]. With
    /// --outage: connections open at once [default: 512, the ingest's default
    /// max_connections, beyond which a real fleet's connections wait in the kernel's backlog];
    /// appliances waiting to retry do not hold one.
    #[arg(long, short = 'c', value_name = "C",
          value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,

    /// Reuse connections (HTTP/1.1 keep-alive) instead of one TCP + TLS handshake per report.
    /// A connection carries one certificate, so each sender takes one appliance at a time and
    /// sends all of that appliance's reports over one connection (M / N reports per connection).
    #[arg(long, conflicts_with = "outage")]
    keep_alive: bool,

    /// Stop sending after this many seconds even if fewer than M reports went out; the ceiling
    /// then inserts as many reports as were sent.
    #[arg(long, value_name = "S", conflicts_with = "outage")]
    duration_secs: Option<u64>,

    /// Pace the senders to at most this many reports per second (for latency at a given load);
    /// unpaced by default.
    #[arg(long, value_name = "R", conflicts_with = "outage")]
    rate: Option<f64>,

    /// Send bodies gzip-compressed (Content-Encoding: gzip), as the collector does (always so
    /// with --outage).
    #[arg(long)]
    gzip: bool,

    /// Outage drain instead of the throughput phases: the ingest was down, every appliance holds
    /// --backlog reports in its spool, and at t0 the whole fleet calls at once (the worst case:
    /// no splay). Each appliance delivers as the collector does: oldest report first, one
    /// kept-alive TLS connection, gzip bodies; on 408, 429 or 5xx it waits Retry-After (at
    /// least the collector's jittered backoff) or, on a transport error, the backoff alone,
    /// then reconnects; it gives up once its retry budget is spent, leaving the rest for its
    /// next daily run. Prints the drain time (t0 to the last acknowledgement), reports/s, 503s,
    /// other non-2xx, transport errors, latency, peak connections, and checks that the
    /// database gained exactly N x K reports. No ceiling phase.
    #[arg(long)]
    outage: bool,

    /// With --outage: reports waiting in each appliance's spool, sent oldest first. The default
    /// 2 is a 24-hour outage of a daily collector: the report of the run that fell inside the
    /// outage, plus today's, made by the run that finds the ingest back. (A timer with
    /// RandomizedDelaySec can fit two runs into 24 hours for a few appliances: 3 covers them.)
    #[arg(long, value_name = "K", default_value_t = 2, conflicts_with = "reports",
          value_parser = clap::value_parser!(u64).range(1..))]
    backlog: u64,

    /// With --outage: the fleet was known before the outage, as after a real 24-hour outage:
    /// each appliance's report of the day before goes straight into PostgreSQL first (through
    /// the storage layer, concurrency 64, not part of the drain's time), the database is then
    /// vacuumed and analysed as autovacuum would have over that day, and the drain sends the
    /// days after it. Without it every appliance is new to the ingest at t0 (a first-contact
    /// storm: every appliance, drive and certificate row is created during the drain).
    #[arg(long)]
    known_fleet: bool,

    /// With --outage: build every spooled report's gzip body before t0 (not part of the
    /// drain's time; held in memory, about 2 KB a report: 4 GB for a million appliances x 2)
    /// instead of at each send. The collectors build theirs on their own CPUs; with this flag
    /// the drain's time counts only the simulated appliances' TLS and HTTP, which share this
    /// machine's cores with the ingest and PostgreSQL. The ingest receives the same bytes
    #[arg(long)]
    prebuilt_bodies: bool,

    /// With --outage: how long each appliance's run keeps retrying, from t0; a retry that would
    /// start later is not made, and the appliance's remaining reports wait for its next daily
    /// run. The default is the collector's `retry_budget_seconds`; 0 means one attempt each.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 300,
        conflicts_with = "reports"
    )]
    retry_budget_secs: u64,

    /// Reports the in-process ingest handles at once before answering 503 with Retry-After
    /// (its `max_in_flight`; default 256, the ingest's own).
    #[arg(long, value_name = "N", conflicts_with = "target",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_in_flight: Option<u64>,

    /// Connections the in-process ingest holds open at once; more wait in the kernel's backlog
    /// (its `max_connections`; default 512, the ingest's own).
    #[arg(long, value_name = "N", conflicts_with = "target",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// How long a report that finds every in-flight slot of the in-process ingest taken waits
    /// for one before its 503 (its `admission_wait_ms`; 0 refuses at once).
    #[arg(long, value_name = "MS", conflicts_with = "target",
          default_value_t = phonehome_ingest::config::DEFAULT_ADMISSION_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(..=phonehome_ingest::config::MAX_ADMISSION_WAIT_MS))]
    admission_wait_ms: u64,

    /// PostgreSQL pool size of the in-process ingest and of the ceiling (the ingest's default
    /// is 16).
    #[arg(long, default_value_t = 16, value_name = "K",
          value_parser = clap::value_parser!(u64).range(1..))]
    db_pool_size: u64,

    /// Concurrent batch writers of the in-process ingest and of the ceiling (its `db_writers`;
    /// the ingest's default is 4), at most --db-pool-size. Fewer writers make bigger batches.
    #[arg(long, default_value_t = 4, value_name = "W",
          value_parser = clap::value_parser!(u64).range(1..))]
    db_writers: u64,

    /// Run the ingest in this process on 127.0.0.1 with a throwaway CA (the default).
    #[arg(long, conflicts_with = "target")]
    spawn_ingest: bool,

    /// Post to an ingest running elsewhere, e.g. https://127.0.0.1:8443. Needs --ca-dir; its
    /// --database-url must be the database that ingest writes to (for the ceiling and sizes).
    #[arg(long, value_name = "URL", requires = "ca_dir")]
    target: Option<String>,

    /// With --target: the directory holding that ingest's fleet CA (ca.crt and ca.key, as
    /// written by `phonehome-ingest ca init`); appliance certificates are issued from it (in
    /// memory), and the server certificate is verified against ca.crt.
    #[arg(long, alias = "ca", value_name = "DIR", requires = "target")]
    ca_dir: Option<PathBuf>,

    /// Skip the ceiling phase (e.g. when only filling a database with history).
    #[arg(long, conflicts_with = "outage")]
    no_ceiling: bool,

    /// Prefix of the simulated serials (serial = prefix + 7-digit index; the ceiling phase's
    /// appliances are prefix + "C-" + index).
    #[arg(long, default_value = "LOADGEN-", value_name = "PREFIX")]
    serial_prefix: String,
}

impl Cli {
    /// `--concurrency`, or the default of the mode.
    fn concurrency(&self) -> u64 {
        self.concurrency.unwrap_or(if self.outage {
            phonehome_ingest::config::DEFAULT_MAX_CONNECTIONS as u64
        } else {
            64
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `fill` is a mode of its own with its own options; the throughput and outage runs keep
    // their flat command line.
    if args.get(1).is_some_and(|a| a == "fill") {
        let fill = fill::FillCli::parse_from(
            std::iter::once(std::ffi::OsString::from("phonehome-loadgen fill"))
                .chain(args.into_iter().skip(2)),
        );
        return block_on(fill::run(fill)).map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS);
    }
    let cli = Cli::parse();
    // `requires = "outage"` cannot say this: a flag's default counts as present for clap.
    if cli.known_fleet && !cli.outage {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--known-fleet describes an outage drain: it needs --outage",
            )
            .exit();
    }
    if cli.prebuilt_bodies && !cli.outage {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--prebuilt-bodies describes an outage drain: it needs --outage",
            )
            .exit();
    }
    match block_on(phases::run(cli)) {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::from(3),
        None => ExitCode::FAILURE,
    }
}

/// Runs `work` on a multi-threaded runtime; `None` when it failed (the error is printed).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> Option<T> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phonehome-loadgen: error: cannot start the async runtime: {e}");
            return None;
        }
    };
    match runtime.block_on(work) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("phonehome-loadgen: error: {e:#}");
            None
        }
    }
}
