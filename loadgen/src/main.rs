//! `phonehome-loadgen`: proves the ingest's throughput (issue 4, "Prove the throughput").
//!
//! It simulates N appliances, each with its own client certificate from a throwaway CA, posts M
//! realistic reports over mutual TLS (a fresh connection and handshake per report, as real
//! appliances do, or kept-alive connections), and prints reports/s, latency percentiles and
//! every non-202 outcome. In the same run it measures the ceiling: the same number of reports
//! inserted straight into PostgreSQL through the ingest's own `Storage::insert_report`, with the
//! same concurrency and pool size, so the ratio between the two says how much the HTTP, TLS and
//! parsing layers cost on this machine.
//!
//! By default the ingest runs in this process (`phonehome_ingest::serve` on 127.0.0.1:0) against
//! `--database-url`; `--target` aims at an ingest running elsewhere instead.

mod fleet;
mod http;
mod phases;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Load generator for the phonehome ingest: N simulated appliances, each with its own client
/// certificate, post M reports over mutual TLS; then the same number of reports go straight
/// into PostgreSQL (the ceiling) and the ratio is printed.
///
/// Results go to stdout, progress to stderr. Exit status: 0 when every report was acknowledged
/// with 2xx and every ceiling insert succeeded, 3 when the run completed but some did not, 1 when
/// the run could not be set up (database unreachable, ...), 2 for a bad command line.
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
    /// (report k is appliance k mod N, day k / N), so M / N must stay below 400 days.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    reports: u64,

    /// Concurrent senders (and concurrent inserters in the ceiling phase).
    #[arg(long, short = 'c', default_value_t = 64, value_name = "C",
          value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,

    /// Reuse connections (HTTP/1.1 keep-alive) instead of one TCP + TLS handshake per report.
    /// A connection carries one certificate, so each sender takes one appliance at a time and
    /// sends all of that appliance's reports over one connection (M / N reports per connection).
    #[arg(long)]
    keep_alive: bool,

    /// Stop sending after this many seconds even if fewer than M reports went out; the ceiling
    /// then inserts as many reports as were sent.
    #[arg(long, value_name = "S")]
    duration_secs: Option<u64>,

    /// Pace the senders to at most this many reports per second (for latency at a given load);
    /// unpaced by default.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,

    /// Send bodies gzip-compressed (Content-Encoding: gzip), as the collector does.
    #[arg(long)]
    gzip: bool,

    /// PostgreSQL pool size of the in-process ingest and of the ceiling (the ingest's default
    /// is 16).
    #[arg(long, default_value_t = 16, value_name = "K",
          value_parser = clap::value_parser!(u64).range(1..))]
    db_pool_size: u64,

    /// Run the ingest in this process on 127.0.0.1 with a throwaway CA (the default).
    #[arg(long, conflicts_with = "target")]
    spawn_ingest: bool,

    /// Post to an ingest running elsewhere, e.g. https://127.0.0.1:8443. Needs --ca-dir; its
    /// --database-url must be the database that ingest writes to (for the ceiling and sizes).
    #[arg(long, value_name = "URL", requires = "ca_dir")]
    target: Option<String>,

    /// With --target: the directory holding that ingest's fleet CA (ca.crt and ca.key, as
    /// written by `phonehome-ingest ca init`); appliance certificates are issued from it into
    /// a temporary directory, and the server certificate is verified against ca.crt.
    #[arg(long, alias = "ca", value_name = "DIR", requires = "target")]
    ca_dir: Option<PathBuf>,

    /// Skip the ceiling phase (e.g. when only filling a database with history).
    #[arg(long)]
    no_ceiling: bool,

    /// Prefix of the simulated serials (serial = prefix + 7-digit index).
    #[arg(long, default_value = "LOADGEN-", value_name = "PREFIX")]
    serial_prefix: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phonehome-loadgen: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(phases::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("phonehome-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
