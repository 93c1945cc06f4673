//! `phonehome-collector`: the command line around the collector library. Runs once and exits;
//! cron or a systemd timer starts it daily.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phonehome_collector::deliver::Client;
use phonehome_collector::{CollectOptions, Config, ConfigError, MachineRoot, collect_report, exit};

const EXIT_CODES: &str = "\
Exit codes:
  0   the report was delivered (HTTP 2xx)
  65  the ingest refused the report itself (400, 413, 415, 422)
  74  the report could not be written to standard output
  75  temporary failure: network error, timeout, TLS failure, HTTP 5xx, 408 or 429
  78  configuration error: configuration, certificate, key or CA missing or unusable, no serial
      obtainable, or the ingest answered 403 (the certificate is not this serial's)";

#[derive(Debug, Parser)]
#[command(
    name = "phonehome-collector",
    version,
    about = "Gathers this appliance's health and phones it home to the phonehome ingest",
    long_about = "Gathers this appliance's health (identity, OS, filesystems, network interfaces, \
                  application) into one JSON report and delivers it to the phonehome ingest over \
                  mutual TLS. Runs once and exits; start it daily from cron or a systemd timer.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this machine's report as JSON on standard output; nothing is sent.
    #[command(after_help = EXIT_CODES)]
    Collect {
        /// Configuration file (TOML). Optional here: only its `serial` and `[app] version_file`
        /// are used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Read /sys, /proc and /etc below DIR instead of /, e.g. a recorded machine tree.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Print the JSON on one line instead of indented.
        #[arg(long)]
        compact: bool,
    },
    /// Collect this machine's report and deliver it to the ingest over mutual TLS; prints one
    /// line on standard error saying what happened.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Configuration file (TOML): server, ca_cert, client_cert, client_key, optional serial
        /// and timeout_seconds. PHONEHOME_COLLECTOR_SERVER overrides `server`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Read /sys, /proc and /etc below DIR instead of /, e.g. a recorded machine tree.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Collect {
            config,
            root,
            compact,
        } => collect(config, root, compact),
        Command::Run { config, root } => run(config, root),
    };
    ExitCode::from(code)
}

fn collect(config: Option<PathBuf>, root: PathBuf, compact: bool) -> u8 {
    let config = match config.as_deref().map(Config::load).transpose() {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    let options = CollectOptions::from_config(config.as_ref());
    let report = match collect_report(&MachineRoot::new(root), &options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("phonehome-collector: {e}");
            return exit::CONFIG;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if compact {
        serde_json::to_writer(&mut out, &report)
    } else {
        serde_json::to_writer_pretty(&mut out, &report)
    };
    match written
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
    {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("phonehome-collector: cannot write the report: {e}");
            exit::IOERR
        }
    }
}

fn run(config: PathBuf, root: PathBuf) -> u8 {
    // Everything a human must fix is checked before anything is collected or sent.
    let (config, client) = match load_for_delivery(&config) {
        Ok(loaded) => loaded,
        Err(e) => return config_error(&e),
    };
    let options = CollectOptions::from_config(Some(&config));
    let report = match collect_report(&MachineRoot::new(root), &options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("phonehome-collector: {e}");
            return exit::CONFIG;
        }
    };
    let outcome = client.deliver(&report);
    eprintln!(
        "phonehome-collector: {}",
        outcome.summary(&report, client.server())
    );
    outcome.exit_code()
}

fn load_for_delivery(path: &Path) -> Result<(Config, Client), ConfigError> {
    let config = Config::load(path)?;
    let client = Client::new(&config.delivery()?)?;
    Ok((config, client))
}

fn config_error(e: &ConfigError) -> u8 {
    eprintln!("phonehome-collector: configuration error: {e}");
    exit::CONFIG
}
