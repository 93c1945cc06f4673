//! The phonehome collector as a library: gathers one appliance's health into a
//! [`phonehome_schema::Report`] and delivers it to the ingest over mutual TLS.
//!
//! The binary (`phonehome-collector`) is a thin command line around [`collect_report`] and
//! [`deliver::spool_and_deliver`]; end-to-end tests can call the same functions.
//!
//! Every reader takes a [`MachineRoot`], so the same code reads the live machine (`/`) or a
//! recorded tree of `/sys`, `/proc` and `/etc` in a test.

pub mod app;
pub mod command;
pub mod config;
pub mod deliver;
pub mod enrol;
pub mod exit;
pub mod filesystems;
pub mod fit;
pub mod footprint;
pub mod identity;
pub mod machine;
pub mod nics;
pub mod renew;
pub mod smart;
pub mod spool;
pub mod system;

use chrono::Utc;
use phonehome_schema::{CollectorInfo, Report, SCHEMA_VERSION, Serial};
use uuid::Uuid;

pub use config::{Config, ConfigError};
pub use identity::NoSerialError;
pub use machine::MachineRoot;

/// The collector's own version, as written into every report.
pub const COLLECTOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a collection run needs to know beyond the machine itself.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Serial written at imaging time; wins over DMI and machine-id.
    pub serial_override: Option<Serial>,
    /// How to find the application's version and health.
    pub app: config::AppConfig,
    /// Filesystem types left out of the report (kernel interfaces, memory-backed scratch).
    pub skip_fs_types: Vec<String>,
    /// Which smartctl to run, on which devices, for how long.
    pub smart: smart::SmartOptions,
    /// Largest report, as compact JSON; what does not fit is left out (see [`fit`]).
    pub max_report_bytes: usize,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            serial_override: None,
            app: config::AppConfig::default(),
            skip_fs_types: filesystems::PSEUDO_FS_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            smart: smart::SmartOptions::default(),
            max_report_bytes: fit::DEFAULT_MAX_REPORT_BYTES,
        }
    }
}

impl CollectOptions {
    /// The options a configuration file asks for; no configuration means DMI and defaults.
    pub fn from_config(config: Option<&Config>) -> Self {
        match config {
            Some(c) => CollectOptions {
                serial_override: c.serial.clone(),
                app: c.app.clone(),
                skip_fs_types: c.skip_fs_types.clone(),
                smart: c.smart.clone(),
                max_report_bytes: c.max_report_bytes,
            },
            None => CollectOptions::default(),
        }
    }
}

/// SMART, with what smartctl leaves out filled in from the kernel (`smart::capacity`).
fn smart_section(
    root: &MachineRoot,
    options: &smart::SmartOptions,
) -> phonehome_schema::SmartSection {
    let mut section = smart::collect(options);
    smart::capacity::fill_from_sysfs(root, &mut section.devices);
    section
}

/// Gathers this machine's report (no network).
///
/// Fails only when no serial can be established at all, because a report without an identity
/// cannot be delivered or stored; everything else that cannot be read is recorded in the
/// section's `errors` and the report is still produced.
pub fn collect_report(
    root: &MachineRoot,
    options: &CollectOptions,
) -> Result<Report, NoSerialError> {
    let identity = identity::collect(root, options.serial_override.as_ref())?;
    let mut report = Report {
        report_id: Uuid::new_v4(),
        schema_version: SCHEMA_VERSION,
        collected_at: Utc::now(),
        collector: CollectorInfo {
            version: COLLECTOR_VERSION.to_owned(),
            // Set by the spool when the report is written there (`run`); `collect` drops nothing.
            dropped_reports: 0,
            // Set by `run`, which holds the certificate; `collect` has none.
            certificate: None,
        },
        identity,
        system: system::collect(root),
        smart: smart_section(root, &options.smart),
        filesystems: filesystems::collect(root, &options.skip_fs_types),
        nics: nics::collect(root),
        app: app::collect(&options.app),
    };
    fit::fit(&mut report, options.max_report_bytes);
    Ok(report)
}
