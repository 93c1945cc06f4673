//! `phonehome-collector`: the command line around the collector library. Runs once and exits;
//! cron or a systemd timer starts it daily.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use phonehome_collector::config::DeliverySettings;
use phonehome_collector::deliver::{Client, deliver_unspooled, random_unit, spool_and_deliver};
use phonehome_collector::spool::Spool;
use phonehome_collector::{
    CollectOptions, Config, ConfigError, MachineRoot, collect_report, exit, renew,
};

const EXIT_CODES: &str = "\
Exit codes:
  0   delivered: this run's report and every report spooled before it (HTTP 2xx)
  65  the ingest refused a report for good (400, 413, 415, 422, or 403 for a report of
      another serial, spooled before the appliance was re-imaged): it was moved aside to
      SPOOL/*.rejected; the others were delivered or kept
  74  collect: the report could not be written to standard output;
      run: the spool is unusable (read-only or failing disk, or the report could not be
      written to it): this run's report was sent without it if the ingest took it (the
      summary says which), else it is lost
  75  saved for later: reports wait in the spool (ingest unreachable, connection refused or
      reset, timeout, HTTP 5xx, 408 or 429, or another run is delivering); a later run
      sends them
  78  configuration error: configuration, certificate, key or CA missing or unusable, the
      spool directory missing and impossible to create (the report was still sent if the
      ingest took it), no serial obtainable, a TLS certificate not accepted (the ingest's
      not signed by ca_cert or not for `server`, or client_cert refused by the ingest), or
      the ingest answered 403 for this run's serial (the certificate is not this serial's);
      spooled reports are kept
When several apply, the first of 78, 74, 65, 75 wins.";

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
    /// The smartctl to run instead of the configured one (default: `smartctl` from PATH, then
    /// /usr/sbin), e.g. a stand-in that replays recorded outputs.
    #[arg(long, value_name = "PATH", global = true)]
    smartctl: Option<PathBuf>,
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
    /// Enrol this appliance with a one-time token from `phonehome-ingest ca issue-token`.
    ///
    /// Makes its key here (client_key, mode 0600; it never leaves the machine), sends a certificate
    /// request to the ingest (`server`, trusting `ca_cert`), and stores the certificate
    /// (client_cert) and the CA bundle the ingest hands out (ca_cert). Exit 0 enrolled, 78
    /// refused or misconfigured (a used, expired or wrong token needs a new one), 75 the
    /// ingest could not be reached (try again).
    Enroll {
        /// The collector's configuration file (server, ca_cert, client_cert, client_key, and
        /// serial if the machine's own must not be used).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The enrolment token (or PHONEHOME_ENROL_TOKEN, which keeps it out of `ps`).
        #[arg(long, env = "PHONEHOME_ENROL_TOKEN", hide_env_values = true)]
        token: String,
        /// Root of the machine's filesystem, where the serial is read.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Collect, spool and deliver this machine's report (the daily job).
    ///
    /// Collects this machine's report, saves it in the spool, and delivers every spooled report
    /// to the ingest over mutual TLS, oldest first; prints one line on standard error saying
    /// what happened. Renews the certificate first when it is due (past about two thirds
    /// of its lifetime); a failed renewal is said and does not stop the report.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Configuration file (TOML): server, ca_cert, client_cert, client_key, optional serial,
        /// timeout_seconds and [spool]. PHONEHOME_COLLECTOR_SERVER overrides `server`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Read /sys, /proc and /etc below DIR instead of /, e.g. a recorded machine tree.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Before collecting, sleep a random time between 0 and SECONDS (at most a day), so
        /// that a fleet started by the same clock does not report in the same second. The
        /// summary line starts with the wait chosen.
        #[arg(long, value_name = "SECONDS", default_value_t = 0,
              value_parser = clap::value_parser!(u64).range(..=86_400))]
        splay: u64,
    },
    /// Renew this appliance's certificate now.
    ///
    /// A new key made here, a certificate for it from
    /// the ingest over mutual TLS), whether or not it is due; `run` renews by itself past about
    /// two thirds of the lifetime. Exit 0 renewed, 75 the ingest could not be reached or
    /// refused (the old pair stays), 78 configuration error.
    Renew {
        /// The collector's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Root of the machine's filesystem, where the serial is read.
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
        } => collect(config, root, compact, cli.smartctl),
        Command::Run {
            config,
            root,
            splay,
        } => run(config, root, splay, cli.smartctl),
        Command::Enroll {
            config,
            token,
            root,
        } => enroll(&config, &token, root),
        Command::Renew { config, root } => renew_now(&config, root),
    };
    phonehome_collector::footprint::report_if_asked();
    ExitCode::from(code)
}

fn collect(config: Option<PathBuf>, root: PathBuf, compact: bool, smartctl: Option<PathBuf>) -> u8 {
    let config = match config.as_deref().map(Config::load).transpose() {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    let report = match gather(config.as_ref(), root, smartctl) {
        Ok(report) => report,
        Err(code) => return code,
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

fn run(config: PathBuf, root: PathBuf, splay: u64, smartctl: Option<PathBuf>) -> u8 {
    // Everything a human must fix is checked before anything is collected or sent.
    let (config, settings, mut client, settled) = match load_for_delivery(&config) {
        Ok(loaded) => loaded,
        Err(e) => return config_error(&e),
    };
    // A spool that cannot be opened (read-only or failing disk, wrong permissions) must not
    // silence the appliance: the report is still collected and sent directly, and the exit
    // code and summary name the spool problem (see `deliver_unspooled`).
    let spool = Spool::open(config.spool.clone());
    // Uniform over the window, so a fleet's load on the ingest is flat rather than a spike. The
    // wait is named in the summary, so a late report can be told from a slow one.
    let splayed = (splay > 0).then(|| {
        let wait = Duration::from_secs(splay).mul_f64(random_unit());
        std::thread::sleep(wait);
        format!(
            "waited {:.3} s first (--splay {splay}); ",
            wait.as_secs_f64()
        )
    });
    let mut report = match gather(Some(&config), root, smartctl) {
        Ok(report) => report,
        Err(code) => return code,
    };
    // Renewal never holds the report back: a failure is said and carried in the report.
    let files = renew::KeyFiles::of(&settings);
    let renewal = renew::renew_if_due(
        &client,
        &files,
        &report.identity.serial,
        chrono::Utc::now(),
        false,
    );
    if let renew::Renewal::Renewed { .. } = renewal {
        match Client::new(&settings) {
            Ok(c) => client = c,
            Err(e) => return config_error(&e),
        }
    }
    report.collector.certificate = renew::state(&files);
    let outcome = match &spool {
        Ok(spool) => spool_and_deliver(&client, spool, report),
        Err(e) => deliver_unspooled(&client, &config.spool, e, &report),
    };
    let certificate = settled
        .into_iter()
        .chain(renewal.summary())
        .map(|s| format!("{s}; "))
        .collect::<String>();
    eprintln!(
        "phonehome-collector: {}{certificate}{}",
        splayed.unwrap_or_default(),
        outcome.summary()
    );
    outcome.exit_code()
}

fn enroll(config: &Path, token: &str, root: PathBuf) -> u8 {
    use phonehome_collector::enrol::{EnrolError, Enrolment};
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let settings = match config.delivery() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let serial = match machine_serial(&config, root) {
        Ok(serial) => serial,
        Err(code) => return code,
    };
    let enrolment = Enrolment {
        server: settings.server,
        ca_cert: settings.ca_cert,
        client_cert: settings.client_cert,
        client_key: settings.client_key,
        serial: serial.clone(),
        timeout: settings.timeout,
    };
    match phonehome_collector::enrol::enroll(&enrolment, token) {
        Ok(done) => {
            eprintln!(
                "phonehome-collector: enrolled as {serial}; certificate in {}, valid until {}",
                enrolment.client_cert.display(),
                done.not_after.to_rfc3339()
            );
            exit::OK
        }
        Err(e @ EnrolError::Transient(_)) => {
            eprintln!("phonehome-collector: enrolment not done, try again: {e}");
            exit::TEMPFAIL
        }
        Err(e) => {
            eprintln!("phonehome-collector: enrolment refused: {e}");
            exit::CONFIG
        }
    }
}

/// The configuration, its delivery settings, a client holding a matching key pair (after
/// finishing or undoing a renewal a kill interrupted, which the last item says), all checked.
type Loaded = (Config, DeliverySettings, Client, Option<String>);

fn load_for_delivery(path: &Path) -> Result<Loaded, ConfigError> {
    let config = Config::load(path)?;
    let settings = config.delivery()?;
    let settled = renew::settle(&renew::KeyFiles::of(&settings))?;
    let client = Client::new(&settings)?;
    Ok((config, settings, client, settled))
}

fn renew_now(config: &Path, root: PathBuf) -> u8 {
    let (config, settings, client, settled) = match load_for_delivery(config) {
        Ok(loaded) => loaded,
        Err(e) => return config_error(&e),
    };
    if let Some(s) = settled {
        eprintln!("phonehome-collector: {s}");
    }
    let serial = match machine_serial(&config, root) {
        Ok(serial) => serial,
        Err(code) => return code,
    };
    let files = renew::KeyFiles::of(&settings);
    let renewal = renew::renew_if_due(&client, &files, &serial, chrono::Utc::now(), true);
    eprintln!(
        "phonehome-collector: {}",
        renewal.summary().unwrap_or_default()
    );
    match renewal {
        renew::Renewal::Renewed { .. } => exit::OK,
        _ => exit::TEMPFAIL,
    }
}

/// Collects this machine's report with the configuration's options and `--smartctl`; a report
/// without a serial is a configuration error (exit 78), said on stderr.
fn gather(
    config: Option<&Config>,
    root: PathBuf,
    smartctl: Option<PathBuf>,
) -> Result<phonehome_schema::Report, u8> {
    let mut options = CollectOptions::from_config(config);
    options.smart.smartctl = smartctl.or(options.smart.smartctl);
    collect_report(&MachineRoot::new(root), &options).map_err(|e| {
        eprintln!("phonehome-collector: {e}");
        exit::CONFIG
    })
}

/// This machine's serial (the configuration's, else DMI's); none is a configuration error,
/// said on stderr.
fn machine_serial(config: &Config, root: PathBuf) -> Result<phonehome_schema::Serial, u8> {
    phonehome_collector::identity::collect(&MachineRoot::new(root), config.serial.as_ref())
        .map(|identity| identity.serial)
        .map_err(|e| {
            eprintln!("phonehome-collector: {e}");
            exit::CONFIG
        })
}

fn config_error(e: &ConfigError) -> u8 {
    eprintln!("phonehome-collector: configuration error: {e}");
    exit::CONFIG
}
