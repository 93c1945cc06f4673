//! What the dashboard shows, as data: the views a [`crate::FleetSource`] returns, which the
//! pages render as HTML and the API serialises as JSON, so both always say the same thing.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

/// The worst severity among an appliance's (or a drive's) firing alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Info,
    Warning,
    Critical,
}

impl Health {
    pub const ALL: [Health; 4] = [Health::Critical, Health::Warning, Health::Info, Health::Ok];

    /// From the rank PostgreSQL keeps (0 none … 3 critical); anything else is the worst, so a
    /// value this build does not know is never shown as fine.
    pub fn from_rank(rank: i16) -> Health {
        match rank {
            0 => Health::Ok,
            1 => Health::Info,
            2 => Health::Warning,
            _ => Health::Critical,
        }
    }

    pub fn rank(self) -> i16 {
        match self {
            Health::Ok => 0,
            Health::Info => 1,
            Health::Warning => 2,
            Health::Critical => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Info => "info",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// An alert's severity, as the rules set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// 0 for critical: the order alert lists are sorted in.
    pub fn order(self) -> i16 {
        match self {
            Severity::Critical => 0,
            Severity::Warning => 1,
            Severity::Info => 2,
        }
    }
}

/// Where an alert episode is: firing until its condition ends (or is acknowledged, or muted),
/// then resolved. As stored in `alerts.state` and shown in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub const ALL: [AlertState; 2] = [AlertState::Firing, AlertState::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        AlertState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A page of a list and the cursor of the next one (`after=`), if there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The fleet at a glance. Fleet-wide counts are computed at most every few seconds (`as_of`),
/// never per view.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub as_of: DateTime<Utc>,
    pub appliances: i64,
    /// Appliances by their worst firing severity, worst first; every health appears.
    pub by_health: Vec<(Health, i64)>,
    /// No report for longer than `silent_hours`.
    pub silent: i64,
    pub silent_hours: u32,
    /// Appliances expected offline (maintenance, shipped, shelved) until a date ahead; they
    /// are not counted silent.
    pub expected_offline: i64,
    /// Retired appliances (RMA, decommissioned): no alerts, history kept.
    pub retired: i64,
    /// Firing alerts by severity, worst first; every severity appears.
    pub alerts_by_severity: Vec<(Severity, i64)>,
    pub alerts_by_rule: Vec<RuleCount>,
    /// Drives with a firing `disk_failing` alert.
    pub failing_drives: i64,
    /// Drives with a firing `disk_degrading` alert.
    pub degrading_drives: i64,
    pub minimum_app_version: Option<String>,
    /// Appliances whose app version is below `minimum_app_version`.
    pub below_minimum: i64,
    /// The most used app versions, most used first.
    pub app_versions: Vec<VersionCount>,
    /// The most severe firing alerts, then the oldest.
    pub attention: Vec<AlertRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleCount {
    pub rule: String,
    pub severity: Severity,
    pub firing: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCount {
    /// Empty when the appliances did not say.
    pub version: String,
    pub appliances: i64,
    /// Of those, how many have a firing warning or critical alert.
    pub with_alerts: i64,
    /// Below the configured minimum (app versions only).
    pub below_minimum: bool,
}

/// One appliance in a list.
#[derive(Debug, Clone, Serialize)]
pub struct ApplianceRow {
    pub serial: String,
    pub hostname: Option<String>,
    pub last_report_at: DateTime<Utc>,
    pub silent: bool,
    /// The lifecycle state in force: `active`, `expected_offline` or `retired`.
    pub lifecycle: String,
    pub health: Health,
    pub firing_alerts: i64,
    pub failing_drives: i32,
    pub app_status: String,
    pub app_version: Option<String>,
    pub os: Option<String>,
    pub report_count: i64,
}

/// One alert episode.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub rule: String,
    pub serial: String,
    pub subject: String,
    pub severity: Severity,
    pub state: AlertState,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub value: String,
    pub summary: String,
    /// How often the condition cleared and came back within `reopen_within_hours` (the same
    /// episode reopened rather than a new alert).
    pub reopened: i32,
}

impl AlertRow {
    /// The drive an alert names, when its subject is a drive key.
    pub fn drive_key(&self) -> Option<&str> {
        (self.rule.starts_with("disk_")
            && (self.subject.starts_with("wwn:") || self.subject.starts_with("sn:")))
        .then_some(self.subject.as_str())
    }
}

/// One drive in the fleet list.
#[derive(Debug, Clone, Serialize)]
pub struct DriveRow {
    pub key: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub protocol: Option<String>,
    pub capacity_bytes: Option<i64>,
    pub health: Health,
    /// The firing rules that name it (`disk_failing`, `disk_degrading`, …).
    pub firing: Vec<String>,
    /// Where it is now: the appliance and the device name there.
    pub appliance: Option<String>,
    pub device_name: Option<String>,
    pub first_seen_at: DateTime<Utc>,
}

/// One drive with its evidence and history.
#[derive(Debug, Clone, Serialize)]
pub struct DriveDetail {
    #[serde(flatten)]
    pub row: DriveRow,
    pub wwn: Option<String>,
    /// Every appliance it sat in, newest first.
    pub placements: Vec<Placement>,
    /// Firing alerts naming it, then the newest resolved ones.
    pub alerts: Vec<AlertRow>,
    /// What smartctl said in its newest report, when that report is kept.
    pub smart: Option<SmartSnapshot>,
    pub days: u32,
    /// Oldest first.
    pub samples: Vec<DrivePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub serial: String,
    pub device_name: String,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// SMART data from one report, as the drive page tabulates it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SmartSnapshot {
    pub collected_at: Option<DateTime<Utc>>,
    /// The ingest's verdict on this report: `ok`, `warning` or `critical`.
    pub verdict: String,
    /// Why, worst first: (level, words), the same reasons alerts carry.
    pub reasons: Vec<(String, String)>,
    pub health_passed: Option<bool>,
    pub temperature_celsius: Option<i64>,
    pub power_on_hours: Option<u64>,
    pub attributes: Vec<Attribute>,
    /// NVMe health log, by field name.
    pub nvme: Vec<(String, String)>,
    pub self_tests: Option<LogSummary>,
    pub error_log: Option<LogSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attribute {
    pub id: u8,
    pub name: String,
    pub value: Option<u16>,
    pub worst: Option<u16>,
    pub threshold: Option<u16>,
    pub raw: Option<String>,
    /// smartctl's `when_failed`: `now`, `past`, or nothing.
    pub when_failed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    /// Entries the device holds (or the count it reports).
    pub count: u64,
    /// A line each for the newest few entries.
    pub newest: Vec<String>,
}

/// One drive sample for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct DrivePoint {
    pub at: DateTime<Utc>,
    pub temperature_celsius: Option<i64>,
    /// Error counters by name; absent ones the drive does not report.
    pub counters: Vec<(&'static str, i64)>,
}

/// The counters a drive sample may carry, in the order charts and tables show them.
pub const DRIVE_COUNTERS: [&str; 8] = [
    "reallocated sectors",
    "pending sectors",
    "offline uncorrectable",
    "CRC errors",
    "NVMe media errors",
    "NVMe critical warning",
    "grown defects",
    "uncorrected errors",
];

/// The patch audit: per component, who runs what and since when.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub as_of: DateTime<Utc>,
    pub minimum_app_version: Option<String>,
    pub components: Vec<ComponentVersions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentVersions {
    /// `app`, `os`, `kernel` or `collector`.
    pub component: String,
    /// Most used first.
    pub versions: Vec<VersionCount>,
    /// Appliances per version per day, oldest first (from the daily counts).
    pub adoption: Vec<AdoptionPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdoptionPoint {
    pub day: NaiveDate,
    pub version: String,
    pub appliances: i64,
}

/// One appliance as its page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ApplianceView {
    #[serde(flatten)]
    pub row: ApplianceRow,
    pub kernel: Option<String>,
    pub collector_version: String,
    /// Parts of the newest report the collector could not gather.
    pub collection_errors: i32,
    /// Firing alerts (most severe first), then the newest resolved ones.
    pub alerts: Vec<AlertRow>,
    pub drives: Vec<DriveView>,
    pub filesystems: Vec<FilesystemView>,
    pub nics: Vec<NicView>,
    /// Version changes, drive and identity events, newest first.
    pub events: Vec<EventView>,
    /// The lifecycle an operator set (`None`: active, never changed).
    pub lifecycle_detail: Option<LifecycleView>,
    /// The certificate the newest report came with.
    pub certificate: Option<CertificateView>,
    /// Routing labels an operator set (customer, site, …), by name.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Conditions an operator acknowledged, quiet until they get worse.
    pub acks: Vec<AckView>,
    /// Mutes in force.
    pub mutes: Vec<MuteView>,
    /// What operators changed about this appliance, newest first.
    pub audit: Vec<AuditRow>,
    pub days: u32,
    pub history: ApplianceHistory,
}

/// A drive in the appliance now, with its newest sample.
#[derive(Debug, Clone, Serialize)]
pub struct DriveView {
    pub key: String,
    pub device_name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// When it was first seen in this appliance.
    pub since: DateTime<Utc>,
    /// SMART's overall assessment; `None` when the drive did not give one.
    pub health_passed: Option<bool>,
    /// The ingest's verdict (what `disk_failing` fires on).
    pub failing: bool,
    pub temperature_celsius: Option<i64>,
    pub power_on_hours: Option<i64>,
    /// The error counters this drive reports that are not zero, by name.
    pub counters: Vec<(String, i64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemView {
    pub mount_point: String,
    pub bytes_used: i64,
    pub bytes_total: i64,
    pub inodes_used: i64,
    pub inodes_total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NicView {
    pub name: String,
    pub rx_errors: Option<i64>,
    pub tx_errors: Option<i64>,
    pub rx_dropped: Option<i64>,
    pub tx_dropped: Option<i64>,
}

/// Something that changed on an appliance; the dashboard words it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub old: Option<String>,
    pub new: Option<String>,
    /// The drive an event is about, or the other appliance sharing an identity.
    pub other: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "what")]
pub enum EventKind {
    /// `app`, `os`, `kernel` or `collector`.
    Version(String),
    /// `appeared`, `disappeared` or `moved` (for a move, `old` is the appliance it came from).
    Drive(String),
    /// `system_uuid_changed`, `machine_id_changed`, `system_uuid_shared`, `machine_id_shared`.
    Identity(String),
}

/// (time, first value, second value): a filesystem's bytes used and total, a NIC's errors and
/// drops.
pub type Pair = (DateTime<Utc>, i64, i64);

/// The appliance's time series over the page's period, oldest first within each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplianceHistory {
    pub drives: Vec<(String, Vec<DrivePoint>)>,
    /// (mount point, [(time, bytes used, bytes total)])
    pub filesystems: Vec<(String, Vec<Pair>)>,
    /// (NIC, [(time, errors, drops)]) as counters; the page charts their rises.
    pub nics: Vec<(String, Vec<Pair>)>,
}

/// An appliance's lifecycle as an operator set it.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleView {
    /// As stored: `expected_offline` or `retired`.
    pub state: String,
    pub until: Option<DateTime<Utc>>,
    pub note: String,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
}

/// The certificate an appliance's newest report came with.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    /// SHA-256 of the certificate, hex: what `ca revoke --certificate` takes.
    pub sha256: String,
    /// `None` for a certificate first seen before the ingest kept certificate ends.
    pub not_after: Option<DateTime<Utc>>,
    /// `enrol` or `renew` when the ingest issued it; `None` when it was issued offline
    /// (`ca issue-appliance`).
    pub issued_via: Option<String>,
    /// The certificate's serial number (hex, as a CRL lists it) when the ingest issued it.
    pub cert_serial: Option<String>,
    /// SHA-256 of the issuing CA's certificate, hex, when the ingest issued it.
    pub issuer_sha256: Option<String>,
    /// When the appliance last renewed (any of its certificates).
    pub last_renewal: Option<DateTime<Utc>>,
    pub revoked: Option<RevokedView>,
}

/// When, by whom and why a certificate was revoked.
#[derive(Debug, Clone, Serialize)]
pub struct RevokedView {
    pub at: DateTime<Utc>,
    pub by: String,
    pub reason: String,
}

/// An acknowledged condition.
#[derive(Debug, Clone, Serialize)]
pub struct AckView {
    pub rule: String,
    pub subject: String,
    pub severity: String,
    /// The value acknowledged; the alert comes back when the condition is worse than this.
    pub value: String,
    pub at: DateTime<Utc>,
    pub by: String,
    pub note: String,
}

/// A mute in force.
#[derive(Debug, Clone, Serialize)]
pub struct MuteView {
    pub id: i64,
    /// `None`: every rule.
    pub rule: Option<String>,
    pub until: DateTime<Utc>,
    pub by: String,
    pub note: String,
}

/// One operator action from the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `token:NAME` for the API, `cli:USER` for the command line.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}
