//! Alert rules: what each rule fires on, its switch and thresholds, and how its alerts end. The
//! rules work on plain data (a report and the appliance's previous values), so each one is tested
//! without a database; `storage/alerts.rs` turns their verdicts into rows.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use phonehome_schema::{AppStatus, Report, SmartDevice};
use serde::{Deserialize, Serialize};

/// How bad: the one enum the rules, storage, the pages' filters and the API's parameters share
/// (`?severity=` parses into it at the edge).
pub use phonehome_dashboard::{AlertState, Severity};

/// How an alert of a rule ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Fires while the condition holds in the newest report; resolves on the first report
    /// where it does not.
    Level,
    /// Fires when a value rises; resolves after this many days without a further rise. A drive
    /// that has carried 8 reallocated sectors for years never fires.
    QuietFor(u32),
    /// Fires on an event; resolves after this many days without another (or earlier, when
    /// the rule says the event is undone, e.g. a missing drive back in place).
    HoldFor(u32),
}

/// A rule's verdict for one subject of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// What in the appliance: a drive key, a mount point, a NIC, a section; "" for the whole.
    pub subject: String,
    pub severity: Severity,
    /// The value that fired, as an operator reads it (`"reallocated 8 → 24 (+16)"`).
    pub value: String,
    pub summary: String,
}

/// Declares the rules once: the enum, `Rule::ALL` and each rule's name come from the same list,
/// so a rule cannot be left out of any of them.
macro_rules! rules {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// The alert rules: a closed set, so that a rule added here without its switch, its
        /// lifecycle or the sections that judge it does not compile (the matches on it have no
        /// catch-all), and without its documentation fails `every_rule_is_configured_and_documented`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Rule {
            pub const ALL: [Rule; [$($name),+].len()] = [$(Rule::$variant),+];

            /// The name alerts, metrics, Alertmanager and the configuration use.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Rule::$variant => $name,)+
                }
            }
        }
    };
}

rules! {
    DiskFailing => "disk_failing",
    DiskDegrading => "disk_degrading",
    DiskWearout => "disk_wearout",
    DiskTemperature => "disk_temperature",
    DiskMissing => "disk_missing",
    DiskUnmonitored => "disk_unmonitored",
    FilesystemFull => "filesystem_full",
    FilesystemFilling => "filesystem_filling",
    NicErrors => "nic_errors",
    AppUnhealthy => "app_unhealthy",
    AppOutdated => "app_outdated",
    ApplianceSilent => "appliance_silent",
    IdentityConflict => "identity_conflict",
    CollectorDegraded => "collector_degraded",
    ClockSkew => "clock_skew",
    CertificateExpiring => "certificate_expiring",
    /// Findings past `max_open_per_appliance`, counted in one alert.
    AlertsFolded => "alerts_folded",
}

impl Rule {
    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Tests and logs compare with the name.
impl PartialEq<&str> for Rule {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every rule name, for validation and for metrics with a zero per rule.
pub const RULES: [&str; Rule::ALL.len()] = {
    let mut names = [""; Rule::ALL.len()];
    let mut i = 0;
    while i < Rule::ALL.len() {
        names[i] = Rule::ALL[i].as_str();
        i += 1;
    }
    names
};

/// Firing alerts one appliance may have opened by its reports unless
/// `[alerts] max_open_per_appliance` says otherwise; findings beyond it are counted in one
/// `alerts_folded` alert instead of each becoming an alert, a series and a page.
pub const DEFAULT_MAX_OPEN_PER_APPLIANCE: u32 = 50;

/// `[alerts]` in the ingest's configuration: every rule can be switched off and its thresholds
/// set; the defaults are what a fleet of storage appliances wants on day one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub disk_failing: Switch,
    pub disk_degrading: Quiet,
    pub disk_wearout: Wearout,
    pub disk_temperature: Temperature,
    pub disk_missing: Hold,
    pub disk_unmonitored: Switch,
    pub filesystem_full: FilesystemFull,
    pub filesystem_filling: FilesystemFilling,
    pub nic_errors: NicErrors,
    pub app_unhealthy: Switch,
    pub app_outdated: AppOutdated,
    pub appliance_silent: Silent,
    pub identity_conflict: Hold,
    pub collector_degraded: Switch,
    pub clock_skew: ClockSkew,
    pub certificate_expiring: CertificateExpiring,
    /// A condition that clears and comes back within this many hours reopens its last episode
    /// (counted in `reopened`) instead of opening a new alert: a flapping disk or filesystem is
    /// one alert, not one a day. 0 switches it off.
    pub reopen_within_hours: u32,
    /// See [`DEFAULT_MAX_OPEN_PER_APPLIANCE`].
    pub max_open_per_appliance: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            disk_failing: Switch::default(),
            disk_degrading: Quiet {
                enabled: true,
                quiet_days: 7,
            },
            disk_wearout: Wearout::default(),
            disk_temperature: Temperature::default(),
            disk_missing: Hold {
                enabled: true,
                hold_days: 7,
            },
            disk_unmonitored: Switch::default(),
            filesystem_full: FilesystemFull::default(),
            filesystem_filling: FilesystemFilling::default(),
            nic_errors: NicErrors::default(),
            app_unhealthy: Switch::default(),
            app_outdated: AppOutdated::default(),
            appliance_silent: Silent::default(),
            identity_conflict: Hold {
                enabled: true,
                hold_days: 7,
            },
            collector_degraded: Switch::default(),
            clock_skew: ClockSkew::default(),
            certificate_expiring: CertificateExpiring::default(),
            reopen_within_hours: 48,
            max_open_per_appliance: DEFAULT_MAX_OPEN_PER_APPLIANCE,
        }
    }
}

/// `clock_skew`: the appliance's clock is off from the ingest's by more than `minutes`. Its
/// reports are still ordered by when they arrived, so the skew harms nothing here; but its
/// logs, certificates and schedules are wrong, and someone should set up its time sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockSkew {
    pub enabled: bool,
    pub minutes: u32,
}

impl Default for ClockSkew {
    fn default() -> Self {
        ClockSkew {
            enabled: true,
            minutes: 10,
        }
    }
}

/// The `clock_skew` finding for a clock `skew_seconds` ahead of ours (negative: behind), if
/// that is more than the rule allows.
pub fn clock_skew(config: &AlertsConfig, skew_seconds: Option<i64>) -> Option<Finding> {
    let skew = skew_seconds?;
    let limit = i64::from(config.clock_skew.minutes).saturating_mul(60);
    if !config.clock_skew.enabled || skew.saturating_abs() <= limit {
        return None;
    }
    let minutes = skew.saturating_abs() / 60;
    let (amount, direction) = if minutes >= 120 {
        (
            format!("{} h", minutes / 60),
            if skew > 0 { "ahead" } else { "behind" },
        )
    } else {
        (
            format!("{minutes} min"),
            if skew > 0 { "ahead" } else { "behind" },
        )
    };
    Some(Finding {
        rule: Rule::ClockSkew,
        subject: String::new(),
        severity: Severity::Warning,
        value: format!("{skew} s"),
        summary: format!(
            "the appliance's clock is {amount} {direction} of the ingest's; its reports are \
             ordered by when they arrived"
        ),
    })
}

/// `certificate_expiring`: the certificate the appliance reported with ends in fewer than
/// `days` (warning) or `critical_days` (critical; expired and still inside the renewal grace
/// too). A collector renews at about two thirds of the lifetime, so on a year's certificate
/// this fires only when renewals have failed for months; the summary carries the collector's
/// last renewal error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateExpiring {
    pub enabled: bool,
    pub days: u32,
    pub critical_days: u32,
}

impl Default for CertificateExpiring {
    fn default() -> Self {
        CertificateExpiring {
            enabled: true,
            days: 30,
            critical_days: 7,
        }
    }
}

/// The `certificate_expiring` finding for a certificate ending at `not_after`, seen at `now`,
/// with the collector's last renewal error if it reported one.
pub fn certificate_expiring(
    config: &AlertsConfig,
    not_after: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    renewal_error: Option<&str>,
) -> Option<Finding> {
    let rule = &config.certificate_expiring;
    let left = not_after.signed_duration_since(now);
    if !rule.enabled || left >= chrono::Duration::days(i64::from(rule.days)) {
        return None;
    }
    let severity = if left < chrono::Duration::days(i64::from(rule.critical_days)) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let when = not_after.format("%Y-%m-%d %H:%M UTC");
    let (value, state) = if left <= chrono::Duration::zero() {
        (format!("expired {when}"), format!("expired on {when}"))
    } else {
        let days = left.num_days();
        (
            format!("{days} d left"),
            format!("expires on {when}, in {days} days"),
        )
    };
    let why = match renewal_error {
        Some(e) => format!("; the collector's last renewal failed: {e}"),
        None => "; the collector has not renewed it (is it older than renewal, or not running?)"
            .to_owned(),
    };
    Some(Finding {
        rule: Rule::CertificateExpiring,
        subject: String::new(),
        severity,
        value,
        summary: format!("the appliance's certificate {state}{why}"),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Switch {
    pub enabled: bool,
}

impl Default for Switch {
    fn default() -> Self {
        Switch { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quiet {
    pub enabled: bool,
    /// Days without a further rise before the alert resolves.
    pub quiet_days: u32,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet {
            enabled: true,
            quiet_days: 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hold {
    pub enabled: bool,
    /// Days an event keeps its alert firing.
    pub hold_days: u32,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            enabled: true,
            hold_days: 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Wearout {
    pub enabled: bool,
    /// NVMe "percentage used" (endurance consumed) at or above which the drive is worn.
    pub percentage_used: u8,
    /// NVMe available spare (percent) below which the drive is worn, for an earlier warning
    /// than the drive's own threshold (which always counts). 0: the drive's threshold only.
    pub available_spare_percent: u8,
}

impl Default for Wearout {
    fn default() -> Self {
        Wearout {
            enabled: true,
            percentage_used: 90,
            available_spare_percent: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Temperature {
    pub enabled: bool,
    /// Above this (°C) a drive is too hot.
    pub celsius: i64,
}

impl Default for Temperature {
    fn default() -> Self {
        Temperature {
            enabled: true,
            celsius: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Percent of bytes or inodes used at or above which the rule warns.
    pub warn_percent: f64,
    /// ... and at or above which it is critical.
    pub critical_percent: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warn_percent: 85.0,
            critical_percent: 95.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemFull {
    pub enabled: bool,
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// Per mount point, e.g. `[alerts.filesystem_full.mount_points."/data"]`.
    pub mount_points: BTreeMap<String, Thresholds>,
}

impl Default for FilesystemFull {
    fn default() -> Self {
        FilesystemFull {
            enabled: true,
            thresholds: Thresholds::default(),
            mount_points: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemFilling {
    pub enabled: bool,
    /// Reports the trend is fitted over (the newest included).
    pub reports: u32,
    /// Fires when the trend says full within this many days.
    pub days: f64,
}

impl Default for FilesystemFilling {
    fn default() -> Self {
        FilesystemFilling {
            enabled: true,
            reports: 7,
            days: 7.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NicErrors {
    pub enabled: bool,
    /// Errors plus drops since the previous report above which the NIC is in trouble.
    pub threshold: u64,
    pub quiet_days: u32,
}

impl Default for NicErrors {
    fn default() -> Self {
        NicErrors {
            enabled: true,
            threshold: 100,
            quiet_days: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppOutdated {
    /// On by default like every rule; it fires only once `minimum_version` is set.
    pub enabled: bool,
    /// Patch compliance: an app version below this fires. Unset: the rule is off.
    pub minimum_version: Option<String>,
}

impl Default for AppOutdated {
    fn default() -> Self {
        AppOutdated {
            enabled: true,
            minimum_version: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Silent {
    pub enabled: bool,
    /// Hours without a report after which an appliance is silent.
    pub hours: u32,
}

impl Default for Silent {
    fn default() -> Self {
        Silent {
            enabled: true,
            hours: 36,
        }
    }
}

impl AlertsConfig {
    /// How alerts of `rule` end.
    pub fn lifecycle(&self, rule: Rule) -> Lifecycle {
        match rule {
            Rule::DiskDegrading => Lifecycle::QuietFor(self.disk_degrading.quiet_days),
            Rule::NicErrors => Lifecycle::QuietFor(self.nic_errors.quiet_days),
            Rule::DiskMissing => Lifecycle::HoldFor(self.disk_missing.hold_days),
            Rule::IdentityConflict => Lifecycle::HoldFor(self.identity_conflict.hold_days),
            Rule::DiskFailing
            | Rule::DiskWearout
            | Rule::DiskTemperature
            | Rule::DiskUnmonitored
            | Rule::FilesystemFull
            | Rule::FilesystemFilling
            | Rule::AppUnhealthy
            | Rule::AppOutdated
            | Rule::ApplianceSilent
            | Rule::CollectorDegraded
            | Rule::ClockSkew
            | Rule::CertificateExpiring
            | Rule::AlertsFolded => Lifecycle::Level,
        }
    }

    /// Whether `rule` is switched on.
    pub fn enabled(&self, rule: Rule) -> bool {
        match rule {
            Rule::DiskFailing => self.disk_failing.enabled,
            Rule::DiskDegrading => self.disk_degrading.enabled,
            Rule::DiskWearout => self.disk_wearout.enabled,
            Rule::DiskUnmonitored => self.disk_unmonitored.enabled,
            Rule::DiskTemperature => self.disk_temperature.enabled,
            Rule::DiskMissing => self.disk_missing.enabled,
            Rule::FilesystemFull => self.filesystem_full.enabled,
            Rule::FilesystemFilling => self.filesystem_filling.enabled,
            Rule::NicErrors => self.nic_errors.enabled,
            Rule::AppUnhealthy => self.app_unhealthy.enabled,
            Rule::AppOutdated => {
                self.app_outdated.enabled && self.app_outdated.minimum_version.is_some()
            }
            Rule::ApplianceSilent => self.appliance_silent.enabled,
            Rule::IdentityConflict => self.identity_conflict.enabled,
            Rule::CollectorDegraded => self.collector_degraded.enabled,
            Rule::ClockSkew => self.clock_skew.enabled,
            Rule::CertificateExpiring => self.certificate_expiring.enabled,
            // The brake on one appliance's alerts cannot be switched off.
            Rule::AlertsFolded => true,
        }
    }

    /// Level findings that need nothing but the report itself.
    pub fn evaluate_report(
        &self,
        report: &Report,
        drive_key: impl Fn(&SmartDevice) -> Option<String>,
    ) -> Vec<Finding> {
        let verdicts = self.drive_verdicts(report);
        self.evaluate(report, &verdicts, drive_key)
    }

    /// The verdict of each of the report's drives, in the report's order.
    pub fn drive_verdicts(&self, report: &Report) -> Vec<crate::verdict::DriveVerdict> {
        report
            .smart
            .devices
            .iter()
            .map(|d| crate::verdict::drive(d, &self.disk_wearout))
            .collect()
    }

    /// [`Self::evaluate_report`] with the drives' verdicts already judged (`verdicts[i]` is
    /// the verdict of `report.smart.devices[i]`), so a report's drives are judged once.
    pub fn evaluate(
        &self,
        report: &Report,
        verdicts: &[crate::verdict::DriveVerdict],
        drive_key: impl Fn(&SmartDevice) -> Option<String>,
    ) -> Vec<Finding> {
        use crate::verdict::{Concern, Level};
        let mut out = Vec::new();
        for (d, verdict) in report.smart.devices.iter().zip(verdicts) {
            if d.in_standby {
                continue;
            }
            let subject = drive_key(d).unwrap_or_else(|| format!("dev:{}", d.name));
            let label = drive_label(d);
            if self.disk_failing.enabled {
                if let Some(why) = verdict.summary(Concern::Failure, Level::Critical) {
                    out.push(Finding {
                        rule: Rule::DiskFailing,
                        subject: subject.clone(),
                        severity: Severity::Critical,
                        summary: format!("{label} is failing: {why}"),
                        value: why,
                    });
                }
            }
            if self.disk_wearout.enabled {
                if let Some(value) = verdict.summary(Concern::WearOut, Level::Warning) {
                    out.push(Finding {
                        rule: Rule::DiskWearout,
                        subject: subject.clone(),
                        severity: Severity::Warning,
                        summary: format!("{label} is wearing out: {value}"),
                        value,
                    });
                }
            }
            if self.disk_temperature.enabled {
                if let Some(t) = phonehome_schema::plausible_celsius(d.temperature_celsius)
                    .filter(|t| *t > self.disk_temperature.celsius)
                {
                    out.push(Finding {
                        rule: Rule::DiskTemperature,
                        subject: subject.clone(),
                        severity: Severity::Warning,
                        value: format!("{t} °C"),
                        summary: format!(
                            "{label} is at {t} °C (threshold {} °C)",
                            self.disk_temperature.celsius
                        ),
                    });
                }
            }
        }
        if self.disk_unmonitored.enabled {
            out.extend(unmonitored(&report.smart));
        }
        if self.filesystem_full.enabled {
            for f in &report.filesystems.filesystems {
                let t = self
                    .filesystem_full
                    .mount_points
                    .get(&f.mount_point)
                    .unwrap_or(&self.filesystem_full.thresholds);
                let bytes = percent(f.bytes_used, f.bytes_used.saturating_add(f.bytes_available));
                let inodes = percent(f.inodes_used, f.inodes_total);
                let (what, pct) = if inodes > bytes {
                    ("inodes", inodes)
                } else {
                    ("space", bytes)
                };
                let severity = if pct >= t.critical_percent {
                    Severity::Critical
                } else if pct >= t.warn_percent {
                    Severity::Warning
                } else {
                    continue;
                };
                out.push(Finding {
                    rule: Rule::FilesystemFull,
                    subject: f.mount_point.clone(),
                    severity,
                    value: format!("{what} {pct:.1}% used"),
                    summary: format!("{} is {pct:.1}% full ({what})", f.mount_point),
                });
            }
        }
        if self.app_unhealthy.enabled {
            let severity = match report.app.status {
                AppStatus::Unhealthy => Some(Severity::Critical),
                AppStatus::Degraded => Some(Severity::Warning),
                AppStatus::Healthy | AppStatus::Unknown => None,
            };
            if let Some(severity) = severity {
                let failed: Vec<&str> = report
                    .app
                    .checks
                    .iter()
                    .filter(|c| c.status != AppStatus::Healthy)
                    .map(|c| c.name.as_str())
                    .collect();
                out.push(Finding {
                    rule: Rule::AppUnhealthy,
                    subject: String::new(),
                    severity,
                    value: report.app.status.as_str().to_owned(),
                    summary: format!(
                        "the application is {} (checks: {})",
                        report.app.status.as_str(),
                        if failed.is_empty() {
                            "none named".to_owned()
                        } else {
                            failed.join(", ")
                        }
                    ),
                });
            }
        }
        if let (true, Some(min)) = (
            self.app_outdated.enabled,
            self.app_outdated.minimum_version.as_deref(),
        ) {
            if let Some(v) = report.app.version.as_deref() {
                if version_less(v, min) {
                    out.push(Finding {
                        rule: Rule::AppOutdated,
                        subject: String::new(),
                        severity: Severity::Warning,
                        value: v.to_owned(),
                        summary: format!("application version {v} is below the minimum {min}"),
                    });
                }
            }
        }
        if self.collector_degraded.enabled {
            let sections = [
                ("identity", &report.identity.errors),
                ("system", &report.system.errors),
                ("smart", &report.smart.errors),
                ("filesystems", &report.filesystems.errors),
                ("nics", &report.nics.errors),
                ("app", &report.app.errors),
            ];
            for (section, errors) in sections {
                for e in errors {
                    out.push(Finding {
                        rule: Rule::CollectorDegraded,
                        subject: format!("{section}:{}", e.item),
                        severity: Severity::Warning,
                        value: format!("{:?}", e.kind).to_lowercase(),
                        summary: format!(
                            "could not collect {section} item {}: {}",
                            e.item, e.message
                        ),
                    });
                }
            }
        }
        out
    }
}

/// `disk_degrading`: the counts that mean a drive is losing sectors or links, compared with the
/// drive's previous report. Only a rise fires; the level alone never does.
pub fn degrading(
    drive: &crate::model::DriveRow,
    previous: &crate::model::DriveSample,
) -> Option<Finding> {
    let rises: Vec<String> = crate::verdict::rises(previous, &drive.sample)
        .into_iter()
        .map(|r| r.text)
        .collect();
    if rises.is_empty() {
        return None;
    }
    let value = rises.join(", ");
    let label = label(
        drive.model.as_deref(),
        drive.serial.as_deref(),
        &drive.device_name,
    );
    Some(Finding {
        rule: Rule::DiskDegrading,
        subject: drive.key.clone(),
        severity: Severity::Warning,
        summary: format!("{label} is degrading: {value}"),
        value,
    })
}

/// `nic_errors`: errors and drops since the previous report, a counter reset (reboot) read as
/// such rather than as a negative rise or a false alarm.
pub fn nic_errors(
    config: &AlertsConfig,
    nic: &crate::model::NicRow,
    previous: &crate::model::NicRow,
    rebooted: bool,
) -> Option<Finding> {
    let counters = [
        ("rx_errors", previous.rx_errors, nic.rx_errors),
        ("tx_errors", previous.tx_errors, nic.tx_errors),
        ("rx_dropped", previous.rx_dropped, nic.rx_dropped),
        ("tx_dropped", previous.tx_dropped, nic.tx_dropped),
    ];
    // A counter below its previous value was reset (reboot, driver reload): everything it
    // counts now is new. A counter at or above it is read as a difference even across a new
    // boot id, so counters that survive a reboot (kept by firmware or a bond) never count their
    // whole history as a day's errors.
    let reset = counters
        .iter()
        .any(|(_, p, c)| matches!((p, c), (Some(p), Some(c)) if c < p));
    let parts: Vec<(&str, i64)> = counters
        .iter()
        .filter_map(|(name, p, c)| {
            let dropped = matches!((p, c), (Some(p), Some(c)) if c < p);
            rise(*p, *c, dropped).map(|r| (*name, r))
        })
        .filter(|(_, r)| *r > 0)
        .collect();
    // Counters come from the appliance: two near i64::MAX must not overflow the sum.
    let total: i64 = parts
        .iter()
        .fold(0i64, |sum, (_, r)| sum.saturating_add(*r));
    if u64::try_from(total).unwrap_or(0) <= config.nic_errors.threshold {
        return None;
    }
    let value = parts
        .iter()
        .map(|(n, r)| format!("{n} +{r}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Finding {
        rule: Rule::NicErrors,
        subject: nic.name.clone(),
        severity: Severity::Warning,
        summary: format!(
            "{} counted {total} errors and drops since the previous report{} ({value})",
            nic.name,
            match (reset, rebooted) {
                (true, _) => " (counters were reset in between)",
                (false, true) => " (across a reboot)",
                _ => "",
            }
        ),
        value,
    })
}

/// Words in a model or family that name a RAID controller's virtual disk, not a drive.
const RAID_VOLUME_WORDS: [&str; 7] = [
    "raid",
    "perc",
    "megaraid",
    "boss",
    "logical volume",
    "virtual disk",
    "virtual_disk",
];
/// `-d` types that read a physical disk behind a controller.
const MEMBER_TYPES: [&str; 6] = ["megaraid", "cciss", "aacraid", "areca", "3ware", "hpt"];

/// `disk_unmonitored`: the report shows RAID virtual disks (PERC, BOSS, MegaRAID, Intel RST
/// volumes) and no physical disk read through their controller, so the disks that fail are
/// the ones nobody sees. smartctl's own hint (`please try adding '-d megaraid,N'`) counts.
pub fn unmonitored(smart: &phonehome_schema::SmartSection) -> Option<Finding> {
    let is_member = |d: &SmartDevice| {
        d.device_type.as_deref().is_some_and(|t| {
            MEMBER_TYPES
                .iter()
                .any(|m| t.to_ascii_lowercase().contains(m))
        })
    };
    if smart.devices.iter().any(is_member) {
        return None;
    }
    let volumes: Vec<String> = smart
        .devices
        .iter()
        .filter(|d| {
            let names = [d.model.as_deref(), d.model_family.as_deref()];
            let by_name = names.iter().flatten().any(|n| {
                let n = n.to_ascii_lowercase();
                RAID_VOLUME_WORDS.iter().any(|w| n.contains(w))
            });
            let by_hint = d.messages.iter().any(|m| {
                let t = m.text.to_ascii_lowercase();
                MEMBER_TYPES.iter().any(|w| t.contains(&format!("-d {w}")))
            });
            by_name || by_hint
        })
        .map(|d| match d.model.as_deref() {
            Some(m) => format!("{} ({m})", d.name),
            None => d.name.clone(),
        })
        .collect();
    if volumes.is_empty() {
        return None;
    }
    let value = volumes.join(", ");
    Some(Finding {
        rule: Rule::DiskUnmonitored,
        subject: String::new(),
        severity: Severity::Warning,
        summary: format!(
            "the physical disks behind {value} are not monitored: the collector reads only the \
             RAID volume; list them in [smart] devices with their controller type (e.g. \
             {{ path = \"/dev/bus/0\", type = \"megaraid,0\" }})"
        ),
        value,
    })
}

/// "ST2000DM006 Z4ZCX0WD (/dev/sda)", what an operator can find in the rack.
pub fn drive_label(d: &SmartDevice) -> String {
    label(d.model.as_deref(), d.serial.as_deref(), &d.name)
}

fn label(model: Option<&str>, serial: Option<&str>, device: &str) -> String {
    match (model, serial) {
        (Some(m), Some(s)) => format!("{m} {s} ({device})"),
        (None, Some(s)) => format!("{s} ({device})"),
        _ => device.to_owned(),
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

/// Whether version `a` is below `b`, comparing dot-separated numbers numerically and anything
/// else as text ("4.10.0" > "4.9.2"; "4.3.0-rc1" < "4.3.0").
pub fn version_less(a: &str, b: &str) -> bool {
    fn parts(v: &str) -> (Vec<u64>, Option<&str>) {
        let v = v.trim().trim_start_matches('v');
        let (core, pre) = match v.split_once(['-', '~', '+']) {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        (
            core.split('.')
                .map(|p| p.trim().parse().unwrap_or(0))
                .collect(),
            pre,
        )
    }
    let (mut ca, pa) = parts(a);
    let (mut cb, pb) = parts(b);
    let n = ca.len().max(cb.len());
    ca.resize(n, 0);
    cb.resize(n, 0);
    match ca.cmp(&cb) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        // A pre-release is below its release.
        std::cmp::Ordering::Equal => match (pa, pb) {
            (Some(_), None) => true,
            (Some(x), Some(y)) => x < y,
            _ => false,
        },
    }
}

/// A counter's rise since the previous report, reading a drop as a reset (reboot, driver
/// reload): then everything counted since is new, at most the current value.
pub fn rise(previous: Option<i64>, current: Option<i64>, reset: bool) -> Option<i64> {
    let current = current?;
    match previous {
        Some(p) if !reset && current >= p => Some(current.saturating_sub(p)),
        Some(_) => Some(current),
        None => None,
    }
}

/// Days until `total` is reached by a least-squares line through `(day, used)` points, if the
/// line rises.
pub fn days_to_full(points: &[(f64, f64)], total: f64) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    if slope <= 0.0 {
        return None;
    }
    let (last_x, _) = points
        .iter()
        .fold((f64::MIN, 0.0), |a, p| if p.0 > a.0 { *p } else { a });
    let fitted_now = my + slope * (last_x - mx);
    Some(((total - fitted_now) / slope).max(0.0))
}

/// What an operator acknowledged of an alert: enough to tell whether a later finding of the
/// same rule and subject is the same condition or a worse one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub severity: Severity,
    pub value: String,
}

/// Whether `f` is worse than what was acknowledged: a higher severity; for rules judged by
/// change (`QuietFor`), any finding at all, since each one is a new rise; otherwise a reason
/// that was not there (reasons compared without their numbers, so a filesystem growing from
/// 91 % to 92 % or a wear level ticking up is the same condition).
pub fn worse_than_acked(config: &AlertsConfig, acked: &Acked, f: &Finding) -> bool {
    // `order` is 0 for critical: a lower order is a higher severity.
    if f.severity.order() < acked.severity.order() {
        return true;
    }
    if matches!(config.lifecycle(f.rule), Lifecycle::QuietFor(_)) {
        return true;
    }
    let shape = |v: &str| -> std::collections::BTreeSet<String> {
        v.split("; ")
            .map(|part| {
                part.chars()
                    .filter(|c| !c.is_ascii_digit() && *c != '.' && *c != ',')
                    .collect::<String>()
            })
            .collect()
    };
    let before = shape(&acked.value);
    shape(&f.value).iter().any(|r| !before.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_configured_and_documented() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../../ingest/ingest.example.toml");
        let parsed: toml::Table = toml::from_str(example).unwrap();
        let sections = parsed["alerts"].as_table().unwrap();
        for rule in Rule::ALL {
            let name = rule.as_str();
            assert_eq!(Rule::parse(name), Some(rule));
            assert!(
                readme.contains(&format!("`{name}`")),
                "README.md does not name {name}"
            );
            // The brake is configured by max_open_per_appliance.
            let key = if rule == Rule::AlertsFolded {
                "max_open_per_appliance"
            } else {
                name
            };
            assert!(
                sections.contains_key(key),
                "ingest.example.toml has no [alerts.{name}]"
            );
        }
        assert_eq!(RULES.len(), Rule::ALL.len());
        assert_eq!(
            RULES
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            RULES.len(),
            "names are unique"
        );
    }

    #[test]
    fn an_acknowledged_condition_is_quiet_until_it_gets_worse() {
        let config = AlertsConfig::default();
        let finding = |rule, severity, value: &str| Finding {
            rule,
            subject: "wwn:1".into(),
            severity,
            value: value.into(),
            summary: String::new(),
        };
        let acked = Acked {
            severity: Severity::Warning,
            value: "91 % of rated endurance used (warns at 90 %)".into(),
        };
        let same = finding(
            Rule::DiskWearout,
            Severity::Warning,
            "93 % of rated endurance used (warns at 90 %)",
        );
        assert!(
            !worse_than_acked(&config, &acked, &same),
            "a number ticking"
        );
        let more = finding(
            Rule::DiskWearout,
            Severity::Warning,
            "93 % of rated endurance used (warns at 90 %); available spare 5 % is below the drive's threshold 10 %",
        );
        assert!(worse_than_acked(&config, &acked, &more), "a new reason");
        let critical = finding(Rule::FilesystemFull, Severity::Critical, "96 % used");
        let acked_fs = Acked {
            severity: Severity::Warning,
            value: "90 % used".into(),
        };
        assert!(
            worse_than_acked(&config, &acked_fs, &critical),
            "higher severity"
        );
        let rise = finding(
            Rule::DiskDegrading,
            Severity::Warning,
            "reallocated 24 → 24 (+0)",
        );
        let acked_rise = Acked {
            severity: Severity::Warning,
            value: "reallocated 8 → 24 (+16)".into(),
        };
        assert!(
            worse_than_acked(&config, &acked_rise, &rise),
            "a change-judged rule fires only on a new rise"
        );
    }

    const EXAMPLE: &str = include_str!("../../schema/examples/report.json");

    #[test]
    fn versions_compare_numerically_with_pre_releases_below() {
        for (a, b, less) in [
            ("4.2.1", "4.3.0", true),
            ("4.10.0", "4.9.2", false),
            ("4.3", "4.3.0", false),
            ("4.3.0-rc1", "4.3.0", true),
            ("v4.3.0", "4.3.0", false),
            ("4.3.1", "4.3.0", false),
        ] {
            assert_eq!(version_less(a, b), less, "{a} < {b}");
        }
    }

    #[test]
    fn certificate_expiring_warns_then_goes_critical_and_names_the_renewal_error() {
        use chrono::{Duration, TimeZone, Utc};
        let config = AlertsConfig::default();
        let now = Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap();
        let at = |days: i64| now + Duration::days(days);
        assert_eq!(certificate_expiring(&config, at(31), now, None), None);
        let warn = certificate_expiring(&config, at(20), now, Some("HTTP 503")).unwrap();
        assert_eq!(warn.severity, Severity::Warning);
        assert_eq!(warn.value, "20 d left");
        assert!(
            warn.summary.contains("renewal failed: HTTP 503"),
            "{}",
            warn.summary
        );
        let crit = certificate_expiring(&config, at(3), now, None).unwrap();
        assert_eq!(crit.severity, Severity::Critical);
        assert!(crit.summary.contains("has not renewed"), "{}", crit.summary);
        let gone = certificate_expiring(&config, at(-2), now, None).unwrap();
        assert_eq!(gone.severity, Severity::Critical);
        assert_eq!(gone.value, "expired 2027-02-27 12:00 UTC");
        let off = AlertsConfig {
            certificate_expiring: CertificateExpiring {
                enabled: false,
                ..CertificateExpiring::default()
            },
            ..AlertsConfig::default()
        };
        assert_eq!(certificate_expiring(&off, at(-2), now, None), None);
    }

    #[test]
    fn a_counter_reset_is_not_a_rise_of_minus_millions() {
        assert_eq!(rise(Some(10), Some(25), false), Some(15));
        assert_eq!(rise(Some(1_000_000), Some(3), false), Some(3));
        assert_eq!(rise(Some(10), Some(12), true), Some(12));
        assert_eq!(rise(None, Some(12), false), None);
    }

    #[test]
    fn nic_errors_fire_on_a_rise_and_never_on_a_reboot() {
        use crate::model::NicRow;
        let nic = |errors: i64, dropped: i64| NicRow {
            name: "eno1".into(),
            rx_bytes: None,
            tx_bytes: None,
            rx_errors: Some(errors),
            tx_errors: Some(0),
            rx_dropped: Some(dropped),
            tx_dropped: Some(0),
        };
        let c = AlertsConfig::default();
        let fired = |p: NicRow, n: NicRow, rebooted: bool| nic_errors(&c, &n, &p, rebooted);
        // +450 errors and +60 drops in a day.
        let f = fired(nic(50, 0), nic(500, 60), false).expect("a rise past 100 fires");
        assert_eq!(f.value, "rx_errors +450, rx_dropped +60");
        assert!(
            fired(nic(50, 0), nic(120, 0), false).is_none(),
            "+70 is under the threshold"
        );
        // A reboot reset the counters: 3 errors since boot, not -597.
        assert!(fired(nic(600, 0), nic(3, 0), true).is_none());
        // Counters that survived a reboot are read as a difference, not as a day's worth.
        assert!(fired(nic(170, 170), nic(175, 176), true).is_none());
    }

    /// Issue 13, finding 1: counters at the top of the range (what a u64 at or above 2^63
    /// becomes) summed in a writer task overflowed; filesystem sizes the same.
    #[test]
    fn counters_and_sizes_at_the_top_of_the_range_neither_panic_nor_wrap() {
        use crate::model::NicRow;
        let nic = |v: i64| NicRow {
            name: "eno1".into(),
            rx_bytes: None,
            tx_bytes: None,
            rx_errors: Some(v),
            tx_errors: Some(v),
            rx_dropped: Some(v),
            tx_dropped: Some(v),
        };
        let c = AlertsConfig::default();
        let f = nic_errors(&c, &nic(i64::MAX), &nic(0), false).expect("a huge rise fires");
        assert!(f.summary.contains(&i64::MAX.to_string()), "{}", f.summary);
        assert_eq!(rise(Some(-5), Some(i64::MAX), false), Some(i64::MAX));

        let mut r: Report = serde_json::from_str(EXAMPLE).unwrap();
        let fs = &mut r.filesystems.filesystems[0];
        fs.bytes_used = u64::MAX;
        fs.bytes_available = u64::MAX;
        fs.bytes_total = u64::MAX;
        let findings = c.evaluate_report(&r, crate::storage::rows::drive_key);
        assert!(
            findings.iter().any(|f| f.rule == "filesystem_full"),
            "a full filesystem of u64::MAX bytes is full: {findings:?}"
        );
    }

    #[test]
    fn a_steady_rise_gives_days_to_full() {
        let pts: Vec<(f64, f64)> = (0..7).map(|d| (d as f64, 50.0 + 5.0 * d as f64)).collect();
        let days = days_to_full(&pts, 100.0).unwrap();
        assert!((days - 4.0).abs() < 1e-9, "{days}");
        let flat: Vec<(f64, f64)> = (0..7).map(|d| (d as f64, 50.0)).collect();
        assert_eq!(days_to_full(&flat, 100.0), None);
        assert_eq!(days_to_full(&pts[..2], 100.0), None);
    }

    #[test]
    fn the_example_report_fires_what_it_should_and_nothing_else() {
        let mut r: Report = serde_json::from_str(EXAMPLE).unwrap();
        let config = AlertsConfig::default();
        let rules = |r: &Report| {
            let mut v: Vec<(&str, String)> = config
                .evaluate_report(r, crate::storage::rows::drive_key)
                .into_iter()
                .map(|f| (f.rule.as_str(), f.subject))
                .collect();
            v.sort();
            v
        };
        // The example's RAID member timed out: the collector is degraded, nothing else.
        assert_eq!(
            rules(&r),
            vec![(
                "collector_degraded",
                "smart:/dev/bus/0 -d megaraid,1".to_owned()
            )]
        );
        r.smart.errors.clear();
        r.smart.devices[0].temperature_celsius = Some(61);
        r.smart.devices[0].health_passed = Some(false);
        r.filesystems.filesystems[0].bytes_available = 1;
        r.app.status = AppStatus::Unhealthy;
        let fired = rules(&r);
        let names: Vec<&str> = fired.iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            vec![
                "app_unhealthy",
                "disk_failing",
                "disk_temperature",
                "filesystem_full"
            ]
        );
        let off: AlertsConfig = toml::from_str("[disk_temperature]\nenabled = false\n").unwrap();
        assert!(
            off.evaluate_report(&r, crate::storage::rows::drive_key)
                .iter()
                .all(|f| f.rule != "disk_temperature")
        );
    }

    /// The example configuration says every rule is on by default: setting only the minimum
    /// must be enough for patch compliance to fire.
    #[test]
    fn app_outdated_fires_once_a_minimum_is_set() {
        let mut r: Report = serde_json::from_str(EXAMPLE).unwrap();
        r.app.version = Some("4.2.9".into());
        let unset = AlertsConfig::default();
        assert!(
            !unset.enabled(Rule::AppOutdated),
            "no minimum: nothing to judge"
        );
        let config: AlertsConfig =
            toml::from_str("[app_outdated]\nminimum_version = \"4.3.0\"\n").unwrap();
        assert!(config.enabled(Rule::AppOutdated));
        let fired: Vec<String> = config
            .evaluate_report(&r, crate::storage::rows::drive_key)
            .into_iter()
            .filter(|f| f.rule == "app_outdated")
            .map(|f| f.value)
            .collect();
        assert_eq!(fired.len(), 1, "app_outdated fires for 4.2.9 < 4.3.0");
        r.app.version = Some("4.3.0".into());
        assert!(
            config
                .evaluate_report(&r, crate::storage::rows::drive_key)
                .iter()
                .all(|f| f.rule != "app_outdated")
        );
    }
}
