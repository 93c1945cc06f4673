//! The report contract shared by the collector and the ingest: wire types, their JSON Schema and
//! the database migrations.
//!
//! This crate is serde-only on purpose: it must build for the smallest appliance and never pull a
//! network or database stack into the collector.

pub mod migrations;
mod serial;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use serial::{Serial, SerialError};

/// The contract version this crate writes and the ingest accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// How far ahead of the ingest's clock `collected_at` may be.
pub const MAX_CLOCK_AHEAD_HOURS: i64 = 24;
/// Oldest report accepted: long enough for a spooled report to survive any realistic outage.
pub const MAX_REPORT_AGE_DAYS: i64 = 400;

/// One appliance's health report, as posted to `POST /v1/reports`.
///
/// Unknown fields are ignored by the ingest (and kept in the stored evidence), so a newer
/// collector can add optional fields without breaking an older ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "phonehome report", extend("$id" = "https://phonehome.invalid/schema/report-v1.json"))]
pub struct Report {
    /// Chosen by the collector when the report is made; the idempotency key. A retry of the same
    /// report carries the same id and is stored once.
    pub report_id: Uuid,
    /// Always 1 for this contract.
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    /// When the collector gathered the data (UTC, RFC 3339).
    pub collected_at: DateTime<Utc>,
    pub collector: CollectorInfo,
    pub identity: Identity,
    pub system: SystemSection,
    pub smart: SmartSection,
    pub filesystems: FilesystemsSection,
    pub nics: NicsSection,
    pub app: AppSection,
}

/// The program that made the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CollectorInfo {
    /// Collector version, for example `0.1.0`.
    pub version: String,
}

/// Who the appliance is. The serial must equal the one in the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Identity {
    pub serial: Serial,
    /// Where the serial came from.
    pub serial_source: SerialSource,
    /// DMI system UUID (`/sys/class/dmi/id/product_uuid`), when the machine has a real one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<Uuid>,
    /// `/etc/machine-id`: 32 lowercase hexadecimal digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{32}$"))]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Kernel boot id (`/proc/sys/kernel/random/boot_id`); changes at every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<Uuid>,
    /// What could not be read while establishing the identity.
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// Where an appliance's serial number was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SerialSource {
    /// Written into the collector's configuration at imaging time.
    Config,
    /// `/sys/class/dmi/id/product_serial`.
    DmiProduct,
    /// `/sys/class/dmi/id/chassis_serial`.
    DmiChassis,
    /// `/sys/class/dmi/id/board_serial`.
    DmiBoard,
    /// No DMI serial (common on virtual machines): `/etc/machine-id` stands in.
    MachineId,
}

/// Something a collector tried to gather and could not. A section with errors is still valid:
/// partial is better than nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CollectionError {
    /// What was being collected: a path, a command or a device, e.g. `/proc/self/mountinfo`.
    pub item: String,
    pub kind: ErrorKind,
    /// Human-readable detail, e.g. the OS error.
    pub message: String,
}

/// Why something could not be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    Timeout,
    /// The source exists but its content could not be understood.
    Invalid,
    /// This collector does not (yet) collect the item on this machine.
    Unsupported,
    Failed,
}

/// Operating system, kernel and uptime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsRelease>,
    /// Kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// CPU architecture, e.g. `x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// `/proc/loadavg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadAverage>,
    /// `/proc/meminfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// Run-queue load averages over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Memory and swap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Memory {
    pub total_bytes: u64,
    /// The kernel's estimate of memory available for new work (`MemAvailable`).
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

/// The interesting fields of `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OsRelease {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
}

/// SMART status of every disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SmartSection {
    #[serde(default)]
    pub devices: Vec<SmartDevice>,
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// One disk as smartctl sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SmartDevice {
    /// The `/dev` name at collection time; it can change across reboots.
    pub name: String,
    /// `ATA`, `NVMe` or `SCSI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The drive's own serial: the stable key for its history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SMART overall health: `true` passed, `false` failed, absent unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_hours: Option<u64>,
}

/// Filesystem use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FilesystemsSection {
    #[serde(default)]
    pub filesystems: Vec<Filesystem>,
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Filesystem {
    pub mount_point: String,
    /// Mount source, e.g. `/dev/sda1`.
    pub device: String,
    /// Filesystem type, e.g. `ext4`.
    pub fs_type: String,
    pub read_only: bool,
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Available to unprivileged users (excludes reserved blocks).
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_available: u64,
}

/// Network interfaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NicsSection {
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// One network interface (loopback excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Nic {
    pub name: String,
    /// `/sys/class/net/NAME/operstate`, e.g. `up`, `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operstate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Every counter under `statistics/`, by file name (`rx_errors`, `tx_dropped`, …).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// The appliance's own application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The worst status of the checks; `unknown` when none is configured or none could run.
    #[serde(default)]
    pub status: AppStatus,
    /// Every configured check and what it found.
    #[serde(default)]
    pub checks: Vec<AppCheck>,
    #[serde(default)]
    pub errors: Vec<CollectionError>,
}

/// One application health check: a systemd unit or a health command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppCheck {
    /// The unit name, or the command's configured name.
    pub name: String,
    pub kind: AppCheckKind,
    pub status: AppStatus,
    /// What decided the status, e.g. `ActiveState=failed` or `exit code 2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A health command's JSON output, when it printed a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppCheckKind {
    SystemdUnit,
    Command,
}

/// The application's health as its checks report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    Healthy,
    Degraded,
    Unhealthy,
    /// No check configured, or none could run.
    #[default]
    Unknown,
}

impl AppStatus {
    /// How bad a status is, for taking the worst of several checks (unknown counts as bad as
    /// degraded: a check that cannot tell is no reason to relax).
    pub fn severity(self) -> u8 {
        match self {
            AppStatus::Healthy => 0,
            AppStatus::Unknown => 1,
            AppStatus::Degraded => 2,
            AppStatus::Unhealthy => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AppStatus::Healthy => "healthy",
            AppStatus::Degraded => "degraded",
            AppStatus::Unhealthy => "unhealthy",
            AppStatus::Unknown => "unknown",
        }
    }
}

/// A report that parsed but breaks a rule the types alone cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractViolation {
    /// JSON path of the offending field, e.g. `schema_version`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ContractViolation {}

impl Report {
    /// Checks what serde cannot: the contract version, value ranges that the JSON Schema also
    /// states, and a `collected_at` that is plausible at `now` (a report from a broken clock
    /// would otherwise pose as the appliance's newest state for centuries).
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), ContractViolation> {
        let age = now - self.collected_at;
        if age < -chrono::Duration::hours(MAX_CLOCK_AHEAD_HOURS) {
            return Err(ContractViolation {
                field: "collected_at".into(),
                message: format!(
                    "collected_at {} is more than {MAX_CLOCK_AHEAD_HOURS} h in the future; is the appliance's clock right?",
                    self.collected_at.to_rfc3339()
                ),
            });
        }
        if age > chrono::Duration::days(MAX_REPORT_AGE_DAYS) {
            return Err(ContractViolation {
                field: "collected_at".into(),
                message: format!(
                    "collected_at {} is more than {MAX_REPORT_AGE_DAYS} days old",
                    self.collected_at.to_rfc3339()
                ),
            });
        }
        if self.schema_version != SCHEMA_VERSION {
            return Err(ContractViolation {
                field: "schema_version".into(),
                message: format!(
                    "unsupported schema_version {}; this ingest accepts {SCHEMA_VERSION}",
                    self.schema_version
                ),
            });
        }
        if let Some(id) = &self.identity.machine_id {
            if !is_machine_id(id) {
                return Err(ContractViolation {
                    field: "identity.machine_id".into(),
                    message: "must be 32 lowercase hexadecimal digits".into(),
                });
            }
        }
        Ok(())
    }

    /// The JSON Schema for this contract, as committed in `schema/report.schema.json`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Report)).unwrap_or_default()
    }
}

/// True for a machine-id as systemd writes it.
pub fn is_machine_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
