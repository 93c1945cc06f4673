//! The rows one report gives the history model (the report prepared, a drive, its sample, a
//! filesystem, a NIC): the types the rules and the engine judge and storage writes, so neither
//! has to import the other.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::alerts::Finding;

/// One drive in one report.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveRow {
    /// `wwn:…` or `sn:MODEL/SERIAL`: stable across reboots and slots.
    pub key: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub firmware: Option<String>,
    /// `ATA`, `NVMe` or `SCSI`, as smartctl says.
    pub protocol: Option<String>,
    pub capacity_bytes: Option<i64>,
    pub device_name: String,
    /// The report carried smartctl's full output for this drive (`evidence`).
    pub evidence: bool,
    /// The drive's verdict from this report alone (a rise since the previous report is judged
    /// with the history).
    pub level: crate::verdict::Level,
    pub sample: DriveSample,
}

/// The per-report values alerts and charts need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriveSample {
    pub power_on_hours: Option<i32>,
    pub temperature_celsius: Option<i16>,
    pub nvme_critical_warning: Option<i16>,
    pub nvme_available_spare: Option<i16>,
    pub nvme_percentage_used: Option<i16>,
    pub health_passed: Option<bool>,
    pub failing: bool,
    pub reallocated_sectors: Option<i32>,
    pub pending_sectors: Option<i32>,
    pub offline_uncorrectable: Option<i32>,
    pub crc_errors: Option<i32>,
    pub nvme_media_errors: Option<i64>,
    pub scsi_grown_defects: Option<i64>,
    pub scsi_uncorrected: Option<i64>,
    /// Entries in the drive's error log (ATA's count, NVMe's error log entries): information
    /// alone, a warning when it rises.
    pub error_log_entries: Option<i64>,
    /// ATA 187 and 188 raw values (reliability splits by them).
    pub reported_uncorrect: Option<i32>,
    pub command_timeout: Option<i32>,
    /// A digest of the verdict's reasons (the facts behind it, with their values): evidence
    /// is kept when it differs from the previous report's. Kept in the rule state; readings
    /// decoded from a kept body (`storage::readings`) leave it `None`.
    pub facts: Option<u64>,
}

/// The attributes Backblaze found predictive of failure, as the reliability page names them, in
/// the order of the bits of [`DriveSample::predictive`] (and of `drives.predictive`, migration
/// 16, which must not change meaning).
pub const PREDICTIVE: [&str; 7] = [
    "ATA 5 reallocated sectors",
    "ATA 187 reported uncorrectable",
    "ATA 188 command timeout",
    "ATA 197 pending sectors",
    "ATA 198 offline uncorrectable",
    "NVMe media errors",
    "NVMe spare used",
];

impl DriveSample {
    /// Which [`PREDICTIVE`] attributes are non-zero in this reading (bit `i` for
    /// `PREDICTIVE[i]`; an attribute the drive does not report counts as zero). The drive's row
    /// keeps its newest reading's bits, so reliability reads no history.
    pub fn predictive(&self) -> i16 {
        let nonzero = |v: Option<i64>| v.is_some_and(|v| v > 0);
        [
            nonzero(self.reallocated_sectors.map(i64::from)),
            nonzero(self.reported_uncorrect.map(i64::from)),
            nonzero(self.command_timeout.map(i64::from)),
            nonzero(self.pending_sectors.map(i64::from)),
            nonzero(self.offline_uncorrectable.map(i64::from)),
            nonzero(self.nvme_media_errors),
            self.nvme_available_spare.is_some_and(|s| s < 100),
        ]
        .into_iter()
        .enumerate()
        .filter(|(_, set)| *set)
        .fold(0i16, |bits, (i, _)| bits | (1 << i))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemRow {
    pub mount_point: String,
    pub bytes_total: i64,
    pub bytes_used: i64,
    pub inodes_total: i64,
    pub inodes_used: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NicRow {
    pub name: String,
    pub rx_bytes: Option<i64>,
    pub tx_bytes: Option<i64>,
    pub rx_errors: Option<i64>,
    pub tx_errors: Option<i64>,
    pub rx_dropped: Option<i64>,
    pub tx_dropped: Option<i64>,
}

/// Everything one report writes, ready for the batch writer.
#[derive(Debug, Clone)]
pub struct PreparedReport {
    pub serial: String,
    pub report_id: Uuid,
    /// The appliance's own time, kept as data (and, with the id, what makes a retry a
    /// duplicate).
    pub collected_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// When the report counts as taken, for ordering state, samples and alerts: its
    /// `collected_at`, unless the appliance's clock ran ahead of ours, then when we received
    /// it. A clock a day fast must not make every honest report after it "late".
    pub at: DateTime<Utc>,
    /// How far the appliance's clock is from ours, in seconds (positive: ahead), when the
    /// report says: from the `Date` its collector sent the report with, else from a
    /// `collected_at` later than its arrival. `None` when nothing tells.
    pub clock_skew_seconds: Option<i64>,
    pub cert_sha256: Vec<u8>,
    /// When that certificate ends (set by `note_certificate`).
    pub cert_not_after: Option<DateTime<Utc>>,
    /// zstd-compressed JSON exactly as received.
    pub body: Vec<u8>,
    /// The body without smartctl's full outputs (and its dictionary), when the report carried
    /// any: kept instead of `body` when the facts behind every such drive's verdict are those
    /// of the appliance's previous report (see `engine::keep_evidence`).
    pub body_without_evidence: Option<(Vec<u8>, Option<i16>)>,
    /// The dictionary `body` was compressed with, if any.
    pub body_dictionary: Option<i16>,
    pub state: CurrentState,
    pub drives: Vec<DriveRow>,
    /// `/dev` names of devices present but without an identity (in standby, or not readable):
    /// a drive last seen under one of these names has not disappeared.
    pub unidentified_devices: Vec<String>,
    /// Whether the SMART section was collected without a section-level error; only then can a
    /// drive's absence mean it is gone.
    pub smart_complete: bool,
    pub filesystems: Vec<FilesystemRow>,
    pub nics: Vec<NicRow>,
    /// The boot the report came from: NIC counters restart with a new one.
    pub boot_id: Option<Uuid>,
    /// Whether the filesystem and NIC sections were collected without a section-level error:
    /// only then may their alerts resolve on this report.
    pub filesystems_complete: bool,
    pub nics_complete: bool,
    /// What the alert rules find in this report alone (rules judged by change are evaluated
    /// in the batch, against the previous report).
    pub findings: Vec<Finding>,
}

/// What a report says about the appliance's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentState {
    pub hostname: Option<String>,
    pub system_uuid: Option<Uuid>,
    pub machine_id: Option<String>,
    pub app_version: Option<String>,
    pub app_status: &'static str,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub collector_version: String,
    pub drive_count: i32,
    pub failing_drive_count: i32,
    /// Drives whose verdict from this report alone is `warning` (a rise since the previous
    /// report is added by the batch, which knows it).
    pub warning_drive_count: i32,
    pub filesystem_count: i32,
    pub nic_count: i32,
    pub collection_errors: i32,
    pub dropped_reports: i64,
}

impl CurrentState {
    /// The versions the patch audit trail follows, by component name.
    pub fn versions(&self) -> [(Component, Option<&str>); 4] {
        [
            (Component::App, self.app_version.as_deref()),
            (Component::Os, self.os.as_deref()),
            (Component::Kernel, self.kernel.as_deref()),
            (Component::Collector, Some(self.collector_version.as_str())),
        ]
    }
}

/// A component whose version the audit trail follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    App,
    Os,
    Kernel,
    Collector,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::App,
        Component::Os,
        Component::Kernel,
        Component::Collector,
    ];

    /// As stored in `version_changes.component`.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::App => "app",
            Component::Os => "os",
            Component::Kernel => "kernel",
            Component::Collector => "collector",
        }
    }
}
