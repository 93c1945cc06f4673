//! The report contract shared by the collector and the ingest: wire types, their JSON Schema and
//! the database migrations.
//!
//! This crate is serde-only on purpose: it must build for the smallest appliance and never pull a
//! network or database stack into the collector.

pub mod enrol;
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

/// Most SMART devices, filesystems or NICs one report may list: well above the largest
/// appliance (a 4U JBOD has about 100 drives), and a bound on what one appliance can make the
/// ingest store, alert on and draw.
pub const MAX_ITEMS: usize = 512;
/// Most characters in a name, version or identifier the ingest shows, labels or indexes
/// (hostname, versions, OS names, mount points, device names, models, serials, NIC names).
pub const MAX_NAME_CHARS: usize = 256;
/// Drive temperatures outside this range (°C) are sensor garbage (0xFFFF, -273): the ingest
/// keeps them in the report but charts and judges none of them.
pub const PLAUSIBLE_CELSIUS: std::ops::RangeInclusive<i64> = -60..=200;

/// `t` if it can be a drive's temperature (see [`PLAUSIBLE_CELSIUS`]).
pub fn plausible_celsius(t: Option<i64>) -> Option<i64> {
    t.filter(|t| PLAUSIBLE_CELSIUS.contains(t))
}

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
    /// How many older reports the collector deleted from its spool undelivered (the spool was
    /// full or they were too old) since the previous report it wrote, including the counts those
    /// deleted reports carried themselves. Summed over the reports an appliance delivers, it is
    /// the number of reports lost. Absent from older collectors, which means 0.
    #[serde(default)]
    pub dropped_reports: u64,
    /// The appliance's client certificate as the collector sees it, and how its last renewal
    /// went. Absent from older collectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateState>,
}

/// The collector's view of its own certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CertificateState {
    /// The certificate's last day of validity.
    pub not_after: DateTime<Utc>,
    /// When the collector last replaced its key and certificate by renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<DateTime<Utc>>,
    /// Why the last renewal attempt failed, when it did; cleared by a successful one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_error: Option<String>,
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
    /// The smartctl (smartmontools) version that produced the data, e.g. `7.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smartctl_version: Option<String>,
}

/// One disk as smartctl (`smartctl --json -x -n standby`) sees it.
///
/// Every field but `name` is optional: what smartctl did not report is absent, never zero. The
/// alerting fields (`reallocated_sectors` … `crc_errors`) are filled from whichever protocol
/// reports the equivalent; the full detail stays in `attributes`, `nvme` and `scsi`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SmartDevice {
    /// The device name given to smartctl (e.g. `/dev/sda`, `/dev/bus/0`); `/dev` names can change
    /// across reboots, so history follows `serial`.
    pub name: String,
    /// smartctl's device type (its `-d` argument as it resolved it), e.g. `sat`, `nvme`, `scsi`,
    /// `sat+megaraid,0`, `usbjmicron`. Together with `name` it identifies a disk behind a RAID
    /// controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// smartctl's description of the device, e.g. `/dev/sda [SAT]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_name: Option<String>,
    /// `ATA`, `NVMe` or `SCSI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Drive family from smartctl's drive database, e.g. `Western Digital Red`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The drive's own serial: the stable key for its history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// World wide name as in `/dev/disk/by-id`: `0x5000cca264eb5e8c` (ATA, SCSI) or
    /// `eui.002538b571b3e5c4` (NVMe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Firmware version (SCSI: product revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Nominal rotation rate; `0` for a solid state device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_rate_rpm: Option<u32>,
    /// The device supports SMART.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_available: Option<bool>,
    /// SMART is enabled on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_enabled: Option<bool>,
    /// SMART overall health: `true` passed, `false` failed, absent unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_passed: Option<bool>,
    /// The device was in standby or sleep, so it was not read (and not woken): only its name and
    /// type are known this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_standby: bool,
    /// The device is failing or has recorded errors: health failed, an NVMe critical warning, or
    /// exit status bits 3 to 7 (`health_failing` … `self_test_errors`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failing: bool,
    /// smartctl's exit status (a bit mask, decoded in `exit_flags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u8>,
    /// The bits set in `exit_status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_flags: Vec<SmartctlExitFlag>,
    /// Current temperature: smartctl's own reading, else the NVMe log, else ATA attribute
    /// 194/190.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_hours: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_cycles: Option<u64>,
    /// ATA attribute 5 (Reallocated_Sector_Ct); SCSI grown defect list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reallocated_sectors: Option<u64>,
    /// ATA attribute 197 (Current_Pending_Sector); SCSI pending defects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sectors: Option<u64>,
    /// ATA attribute 198 (Offline_Uncorrectable); NVMe media and data integrity errors; SCSI
    /// uncorrected read, write and verify errors together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncorrectable_errors: Option<u64>,
    /// ATA attribute 199 (UDMA_CRC_Error_Count): cable or backplane trouble, not the medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc_errors: Option<u64>,
    /// ATA SMART attributes, in smartctl's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AtaAttribute>,
    /// NVMe SMART/health information log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme: Option<NvmeHealth>,
    /// SCSI/SAS defect lists and error counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scsi: Option<ScsiHealth>,
    /// The device's error log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_log: Option<SmartErrorLog>,
    /// The device's self-test log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test_log: Option<SmartSelfTestLog>,
    /// What smartctl said while reading the device (warnings, errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<SmartctlMessage>,
    /// smartctl's complete JSON output, kept for a `failing` device as evidence (omitted when it
    /// is too large to send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// One bit of smartctl's exit status (see `smartctl(8)`, RETURN VALUES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmartctlExitFlag {
    /// Bit 0: the command line did not parse.
    CommandLine,
    /// Bit 1: the device could not be opened, or it is in a low-power mode (`-n standby`).
    DeviceOpenFailed,
    /// Bit 2: a SMART or other command to the disk failed, or its data has a checksum error.
    SmartCommandFailed,
    /// Bit 3: SMART status says "DISK FAILING".
    HealthFailing,
    /// Bit 4: prefail attributes are at or below their threshold.
    PrefailAttributeAtThreshold,
    /// Bit 5: some attribute was at or below its threshold in the past.
    AttributePastThreshold,
    /// Bit 6: the device error log has entries.
    ErrorLogHasEntries,
    /// Bit 7: the self-test log has errors.
    SelfTestErrors,
}

/// One ATA SMART attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AtaAttribute {
    pub id: u8,
    #[serde(default)]
    pub name: String,
    /// Normalised value (vendor scale, usually 1 to 253; lower is worse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u8>,
    /// Lowest normalised value seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<u8>,
    /// Failure threshold; absent when the drive has none for this attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresh: Option<u8>,
    /// Raw value as an unsigned 64-bit integer (vendor-specific; may pack several fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<u64>,
    /// smartctl's rendering of the raw value, e.g. `36 (Min/Max 16/31)` or `37054h+12m+58.233s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_string: Option<String>,
    /// `now` or `past` when the value is or was at or below the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_failed: Option<String>,
    /// A pre-failure attribute (below threshold means imminent failure), not just old age.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefailure: bool,
}

/// The NVMe SMART/health information log (log page 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NvmeHealth {
    /// The critical warning byte as reported (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_warning: Option<u8>,
    /// The bits set in `critical_warning`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub critical_warnings: Vec<NvmeCriticalWarning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_spare_percent: Option<u8>,
    /// Below this available spare, the drive raises `spare_below_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_spare_threshold_percent: Option<u8>,
    /// Vendor estimate of life used; may exceed 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage_used: Option<u8>,
    /// Unrecovered data integrity errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_errors: Option<u64>,
    /// Error information log entries over the drive's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_log_entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_shutdowns: Option<u64>,
    /// In units of 1000 × 512 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_units_read: Option<u64>,
    /// In units of 1000 × 512 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_units_written: Option<u64>,
    /// Minutes spent above the warning composite temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_temperature_minutes: Option<u64>,
    /// Minutes spent above the critical composite temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_temperature_minutes: Option<u64>,
    /// Temperature sensors 1 to 8, where implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperature_sensors_celsius: Vec<i64>,
}

/// One bit of the NVMe critical warning byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NvmeCriticalWarning {
    /// Bit 0: available spare is below its threshold.
    SpareBelowThreshold,
    /// Bit 1: a temperature is above an over- or below an under-temperature threshold.
    Temperature,
    /// Bit 2: NVM subsystem reliability is degraded (media or internal errors).
    ReliabilityDegraded,
    /// Bit 3: the media has been placed in read-only mode.
    ReadOnly,
    /// Bit 4: the volatile memory backup device has failed.
    VolatileMemoryBackupFailed,
    /// Bit 5: the persistent memory region is read-only or unreliable.
    PersistentMemoryRegionUnreliable,
    /// Bits 6 and 7: reserved by the specification when smartctl was written.
    Other,
}

/// SCSI/SAS defect lists and error counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScsiHealth {
    /// Entries in the grown defect list (blocks reassigned since manufacture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grown_defects: Option<u64>,
    /// Pending defects (smartmontools 7.1 and later, when the drive reports them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_defects: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ScsiErrorCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<ScsiErrorCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<ScsiErrorCounters>,
}

/// One row of the SCSI error counter log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScsiErrorCounters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncorrected: Option<u64>,
    /// As smartctl printed it (e.g. `176987.332`); kept as text because its decimal separator
    /// follows the locale smartctl ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gigabytes_processed: Option<String>,
}

/// Summary of a device's error log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmartErrorLog {
    /// Errors the device has logged over its life (ATA error count, NVMe error log entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Power-on hours at the most recent logged error (ATA), to tell old errors from new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_lifetime_hours: Option<u64>,
}

/// Summary of a device's self-test log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmartSelfTestLog {
    /// Self-tests recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Recorded self-tests that failed (ATA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    /// The most recent self-test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<SmartSelfTest>,
}

/// One self-test result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmartSelfTest {
    /// e.g. `Short offline`, `Extended offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// e.g. `Completed without error`, `Completed: read failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Power-on hours when the test ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_hours: Option<u64>,
}

/// A message smartctl printed, e.g. a warning that the result is based on an attribute check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmartctlMessage {
    /// `information`, `warning` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    pub text: String,
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
        self.check_bounds()
    }

    /// The sizes one appliance may ask the fleet's ingest to keep, label and show: lists of at
    /// most [`MAX_ITEMS`], names of at most [`MAX_NAME_CHARS`].
    fn check_bounds(&self) -> Result<(), ContractViolation> {
        for (field, n) in [
            ("smart.devices", self.smart.devices.len()),
            (
                "filesystems.filesystems",
                self.filesystems.filesystems.len(),
            ),
            ("nics.nics", self.nics.nics.len()),
            ("app.checks", self.app.checks.len()),
        ] {
            if n > MAX_ITEMS {
                return Err(ContractViolation {
                    field: field.into(),
                    message: format!("{n} items; at most {MAX_ITEMS} are accepted"),
                });
            }
        }
        // Field paths are built only for the one that is too long.
        let too_long =
            |v: Option<&str>| v.map(|v| v.chars().count()).filter(|n| *n > MAX_NAME_CHARS);
        let refuse = |field: String, n: usize| {
            Err(ContractViolation {
                field,
                message: format!("{n} characters; at most {MAX_NAME_CHARS} are accepted"),
            })
        };
        let os = self.system.os.as_ref();
        for (field, v) in [
            ("collector.version", Some(self.collector.version.as_str())),
            ("identity.hostname", self.identity.hostname.as_deref()),
            ("system.kernel", self.system.kernel.as_deref()),
            ("system.os.id", os.and_then(|o| o.id.as_deref())),
            (
                "system.os.version_id",
                os.and_then(|o| o.version_id.as_deref()),
            ),
            (
                "system.os.pretty_name",
                os.and_then(|o| o.pretty_name.as_deref()),
            ),
            ("app.version", self.app.version.as_deref()),
            (
                "collector.certificate.renewal_error",
                self.collector
                    .certificate
                    .as_ref()
                    .and_then(|c| c.renewal_error.as_deref()),
            ),
        ] {
            if let Some(n) = too_long(v) {
                return refuse(field.into(), n);
            }
        }
        for (i, d) in self.smart.devices.iter().enumerate() {
            for (what, v) in [
                ("name", Some(d.name.as_str())),
                ("model", d.model.as_deref()),
                ("serial", d.serial.as_deref()),
                ("wwn", d.wwn.as_deref()),
                ("firmware", d.firmware.as_deref()),
                ("protocol", d.protocol.as_deref()),
            ] {
                if let Some(n) = too_long(v) {
                    return refuse(format!("smart.devices[{i}].{what}"), n);
                }
            }
        }
        for (i, f) in self.filesystems.filesystems.iter().enumerate() {
            for (what, v) in [
                ("mount_point", &f.mount_point),
                ("device", &f.device),
                ("fs_type", &f.fs_type),
            ] {
                if let Some(n) = too_long(Some(v)) {
                    return refuse(format!("filesystems.filesystems[{i}].{what}"), n);
                }
            }
        }
        for (i, nic) in self.nics.nics.iter().enumerate() {
            if let Some(n) = too_long(Some(&nic.name)) {
                return refuse(format!("nics.nics[{i}].name"), n);
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
