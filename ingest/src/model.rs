//! The rows one report gives the history model (a drive, its sample, a filesystem, a NIC): the
//! types the rules judge and storage writes, so neither has to import the other.

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
    /// is kept when it differs from the previous report's. Kept in the rule state, not in
    /// `drive_samples`.
    pub facts: Option<u64>,
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
