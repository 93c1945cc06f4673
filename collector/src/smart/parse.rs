//! Typed parsing of `smartctl --json` output (smartmontools 7.0 to 7.5): a pure function from
//! bytes to report types that never panics, whatever the bytes.
//!
//! smartctl's JSON changed across versions and differs by protocol, so nothing here assumes a
//! key exists or has a type: each value is looked up where each version puts it, and a missing
//! or malformed one is simply absent from the result.

use phonehome_schema::{
    AtaAttribute, NvmeCriticalWarning, NvmeHealth, ScsiErrorCounters, ScsiHealth, SmartDevice,
    SmartErrorLog, SmartSelfTest, SmartSelfTestLog, SmartctlExitFlag, SmartctlMessage,
};
use serde_json::Value;

use super::json::{
    array_at, as_u64, at, bool_at, bounded, i64_at, leading_u64, text_at, u8_at, u32_at, u64_at,
    without_nul,
};

/// At most this many of smartctl's messages are kept per run; real runs print one or two.
pub const MESSAGE_LIMIT: usize = 32;
/// More devices than any machine has; bounds what a broken scan output can make us run.
pub const SCAN_DEVICE_LIMIT: usize = 1024;

/// Why smartctl's output could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("smartctl printed nothing")]
    Empty,
    #[error("smartctl output is not JSON: {0}")]
    NotJson(String),
    #[error("smartctl output is JSON but not an object")]
    NotAnObject,
}

/// What one `smartctl --json` run about one device said.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceOutput {
    /// The device, when the output describes one; absent when smartctl could not open it.
    pub device: Option<SmartDevice>,
    /// smartctl's exit status: the process's when known, else the one smartctl wrote.
    pub exit_status: Option<u8>,
    /// What smartctl said (also on the device, when there is one).
    pub messages: Vec<SmartctlMessage>,
    /// e.g. `7.3`.
    pub smartctl_version: Option<String>,
}

impl DeviceOutput {
    /// Why smartctl did not describe the device: its error messages, or a generic reason. `None`
    /// when the output describes a device.
    pub fn failure(&self) -> Option<String> {
        if self.device.is_some() {
            return None;
        }
        let errors: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| m.severity.as_deref() != Some("information"))
            .map(|m| m.text.as_str())
            .collect();
        let mut reason = if errors.is_empty() {
            "smartctl reported no device".to_owned()
        } else {
            errors.join("; ")
        };
        if let Some(status) = self.exit_status {
            let flags: Vec<&str> = exit_flags(status).iter().map(|f| flag_name(*f)).collect();
            reason.push_str(&format!(" (exit status {status}"));
            if !flags.is_empty() {
                reason.push_str(&format!(": {}", flags.join(", ")));
            }
            reason.push(')');
        }
        Some(reason)
    }
}

/// One entry of `smartctl --scan` / `--scan-open` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedDevice {
    pub name: String,
    /// The `-d` type to read it with, e.g. `sat`, `nvme`, `megaraid,0`.
    pub device_type: Option<String>,
    pub info_name: Option<String>,
    pub protocol: Option<String>,
    /// `--scan-open` could not open the device; it should not be read, only reported.
    pub open_error: Option<String>,
}

/// `smartctl --scan-open --json` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutput {
    pub devices: Vec<ScannedDevice>,
    pub exit_status: Option<u8>,
    pub messages: Vec<SmartctlMessage>,
    pub smartctl_version: Option<String>,
}

fn parse_object(bytes: &[u8]) -> Result<Value, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    // serde_json bounds nesting depth itself (128), so hostile nesting is an error, not a stack
    // overflow.
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        // smartctl's JSON writer copies bytes ≥ 0x80 from the disk unchanged (a Latin-1 model
        // name, a vendor's odd firmware string), so its output need not be UTF-8, and serde_json
        // refuses the whole of it. One bad byte must not lose the device: decode lossily
        // (U+FFFD for each bad sequence) and parse again. Only then: valid UTF-8, the common
        // case, is neither copied nor validated twice.
        Err(e) => match std::str::from_utf8(bytes) {
            Ok(_) => return Err(ParseError::NotJson(e.to_string())),
            Err(_) => serde_json::from_str(&String::from_utf8_lossy(bytes))
                .map_err(|e| ParseError::NotJson(e.to_string()))?,
        },
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ParseError::NotAnObject)
    }
}

/// Parses `smartctl --scan` or `--scan-open` JSON output. Entries without a usable name are
/// skipped (they cannot be read), as is a name smartctl would take for an option.
pub fn parse_scan(bytes: &[u8]) -> Result<ScanOutput, ParseError> {
    let root = parse_object(bytes)?;
    let devices = array_at(&root, &["devices"])
        .iter()
        .filter_map(|d| {
            let name = text_at(d, &["name"]).filter(|n| !n.starts_with('-'))?;
            Some(ScannedDevice {
                name,
                device_type: text_at(d, &["type"]),
                info_name: text_at(d, &["info_name"]),
                protocol: text_at(d, &["protocol"]),
                open_error: text_at(d, &["open_error"]),
            })
        })
        .take(SCAN_DEVICE_LIMIT)
        .collect();
    Ok(ScanOutput {
        devices,
        exit_status: u8_at(&root, &["smartctl", "exit_status"]),
        messages: messages(&root),
        smartctl_version: version(&root),
    })
}

/// Parses the output of `smartctl --json [-x|-a|…] DEVICE`.
///
/// `process_status` is the exit status smartctl's process returned, when known; it wins over
/// the one smartctl wrote into its JSON (they agree unless the output was tampered with).
pub fn parse_device(bytes: &[u8], process_status: Option<u8>) -> Result<DeviceOutput, ParseError> {
    let root = parse_object(bytes)?;
    let exit_status = process_status.or_else(|| u8_at(&root, &["smartctl", "exit_status"]));
    let messages = messages(&root);
    let smartctl_version = version(&root);
    let standby = in_standby(&root, exit_status, &messages);
    let device =
        (standby || describes_device(&root)).then(|| device(root, exit_status, &messages, standby));
    Ok(DeviceOutput {
        device,
        exit_status,
        messages,
        smartctl_version,
    })
}

/// Keys only an output about a device has; an open error has none of them.
const DEVICE_KEYS: &[&str] = &[
    "device",
    "model_name",
    "scsi_model_name",
    "serial_number",
    "smart_status",
    "ata_smart_attributes",
    "nvme_smart_health_information_log",
    "scsi_grown_defect_list",
    "scsi_error_counter_log",
    "user_capacity",
    "temperature",
    "power_on_time",
];

fn describes_device(root: &Value) -> bool {
    DEVICE_KEYS.iter().any(|k| at(root, &[k]).is_some())
}

fn version(root: &Value) -> Option<String> {
    let parts = array_at(root, &["smartctl", "version"]);
    let numbers: Option<Vec<String>> = parts
        .iter()
        .take(4)
        .map(|p| as_u64(p).map(|n| n.to_string()))
        .collect();
    numbers.filter(|n| !n.is_empty()).map(|n| n.join("."))
}

fn messages(root: &Value) -> Vec<SmartctlMessage> {
    array_at(root, &["smartctl", "messages"])
        .iter()
        .filter_map(|m| {
            Some(SmartctlMessage {
                severity: text_at(m, &["severity"]),
                text: text_at(m, &["string"])?,
            })
        })
        .take(MESSAGE_LIMIT)
        .collect()
}

/// `-n standby` found the disk asleep: smartctl exits with bit 1 and says "Device is in
/// STANDBY mode" (or SLEEP, IDLE, "STANDBY (OS)").
fn in_standby(root: &Value, exit_status: Option<u8>, messages: &[SmartctlMessage]) -> bool {
    if exit_status.is_some_and(|s| s & 0b10 == 0) {
        return false;
    }
    let said_so = messages.iter().any(|m| {
        let text = m.text.to_ascii_lowercase();
        text.contains("device is in ") && text.contains(" mode")
    });
    let power_mode = at(root, &["power_mode"]).is_some_and(|p| {
        let text = [p.as_str(), at(p, &["string"]).and_then(Value::as_str)]
            .into_iter()
            .flatten()
            .collect::<String>()
            .to_ascii_lowercase();
        text.contains("standby") || text.contains("sleep")
    });
    said_so || power_mode
}

/// The bits set in a smartctl exit status.
pub fn exit_flags(status: u8) -> Vec<SmartctlExitFlag> {
    use SmartctlExitFlag::*;
    [
        CommandLine,
        DeviceOpenFailed,
        SmartCommandFailed,
        HealthFailing,
        PrefailAttributeAtThreshold,
        AttributePastThreshold,
        ErrorLogHasEntries,
        SelfTestErrors,
    ]
    .into_iter()
    .enumerate()
    .filter(|(bit, _)| status & (1 << bit) != 0)
    .map(|(_, flag)| flag)
    .collect()
}

/// The report's name for an exit flag, for messages.
pub fn flag_name(flag: SmartctlExitFlag) -> &'static str {
    match flag {
        SmartctlExitFlag::CommandLine => "command line not understood",
        SmartctlExitFlag::DeviceOpenFailed => "device open failed or in low-power mode",
        SmartctlExitFlag::SmartCommandFailed => "SMART command failed",
        SmartctlExitFlag::HealthFailing => "health failing",
        SmartctlExitFlag::PrefailAttributeAtThreshold => "prefail attribute at threshold",
        SmartctlExitFlag::AttributePastThreshold => "attribute past threshold",
        SmartctlExitFlag::ErrorLogHasEntries => "error log has entries",
        SmartctlExitFlag::SelfTestErrors => "self-test errors",
    }
}

/// Exit status bits 3 to 7: health failing, attributes at or past threshold, logged errors,
/// failed self-tests.
const FAILING_BITS: u8 = 0b1111_1000;

fn device(
    root: Value,
    exit_status: Option<u8>,
    messages: &[SmartctlMessage],
    standby: bool,
) -> SmartDevice {
    let attributes = attributes(&root);
    let nvme = nvme(&root);
    let scsi = scsi(&root);
    let attr_count = |id: u8| {
        attributes
            .iter()
            .find(|a| a.id == id)
            .and_then(attribute_count)
    };
    let health_passed = bool_at(&root, &["smart_status", "passed"]).or_else(|| {
        // Without a smart_status block (old versions, `-A` runs) bit 3 still says it.
        exit_status.filter(|s| s & 0b1000 != 0).map(|_| false)
    });

    let mut device = SmartDevice {
        name: text_at(&root, &["device", "name"]).unwrap_or_default(),
        device_type: text_at(&root, &["device", "type"]),
        info_name: text_at(&root, &["device", "info_name"]),
        protocol: text_at(&root, &["device", "protocol"]).or_else(|| infer_protocol(&root)),
        model_family: text_at(&root, &["model_family"]),
        model: model(&root),
        serial: text_at(&root, &["serial_number"]),
        wwn: wwn(&root),
        // smartctl 7.3 renamed the SCSI keys (`revision` → `scsi_revision`, …).
        firmware: text_at(&root, &["firmware_version"])
            .or_else(|| text_at(&root, &["scsi_revision"]))
            .or_else(|| text_at(&root, &["revision"])),
        capacity_bytes: capacity(&root),
        // 0 rpm means a solid-state drive, unless smartctl could identify nothing at all (no
        // model, no capacity): then it is a placeholder, not an empty SSD.
        rotation_rate_rpm: u32_at(&root, &["rotation_rate"])
            .filter(|r| *r > 0 || model(&root).is_some() || capacity(&root).is_some()),
        smart_available: bool_at(&root, &["smart_support", "available"]),
        smart_enabled: bool_at(&root, &["smart_support", "enabled"]),
        health_passed,
        in_standby: standby,
        failing: false,
        exit_status,
        exit_flags: exit_status.map(exit_flags).unwrap_or_default(),
        temperature_celsius: temperature(&root, &attributes),
        power_on_hours: power_on_hours(&root, &attributes),
        power_cycles: u64_at(&root, &["power_cycle_count"])
            .or_else(|| {
                u64_at(
                    &root,
                    &["nvme_smart_health_information_log", "power_cycles"],
                )
            })
            .or_else(|| attr_count(12))
            .or_else(|| {
                u64_at(
                    &root,
                    &[
                        "scsi_start_stop_cycle_counter",
                        "accumulated_start_stop_cycles",
                    ],
                )
            }),
        reallocated_sectors: attr_count(5).or_else(|| scsi.as_ref()?.grown_defects),
        pending_sectors: attr_count(197).or_else(|| scsi.as_ref()?.pending_defects),
        uncorrectable_errors: attr_count(198)
            .or_else(|| nvme.as_ref()?.media_errors)
            .or_else(|| scsi.as_ref().and_then(scsi_uncorrected)),
        crc_errors: attr_count(199),
        error_log: error_log(&root),
        self_test_log: self_test_log(&root),
        messages: messages.to_vec(),
        attributes,
        nvme,
        scsi,
        evidence: None,
    };
    device.failing = !standby && is_failing(&device);
    if device.failing {
        device.evidence = Some(without_nul(root));
    }
    device
}

fn is_failing(d: &SmartDevice) -> bool {
    d.health_passed == Some(false)
        || d.exit_status.is_some_and(|s| s & FAILING_BITS != 0)
        || d
            .nvme
            .as_ref()
            .is_some_and(|n| n.critical_warning.is_some_and(|w| w != 0))
        // Attributes say it even when the exit status is unknown (bits 4 and 5).
        || d.attributes.iter().any(|a| a.when_failed.is_some())
}

fn infer_protocol(root: &Value) -> Option<String> {
    let has = |k: &str| at(root, &[k]).is_some();
    let protocol = if has("nvme_smart_health_information_log") || has("nvme_pci_vendor") {
        "NVMe"
    } else if has("ata_smart_attributes") || has("ata_version") || has("sata_version") {
        "ATA"
    } else if [
        "scsi_grown_defect_list",
        "scsi_error_counter_log",
        "scsi_version",
        "scsi_vendor",
        "scsi_model_name",
        "logical_unit_id",
        // Before 7.3 only SCSI devices had these.
        "vendor",
        "product",
    ]
    .iter()
    .any(|k| has(k))
    {
        "SCSI"
    } else {
        return None;
    };
    Some(protocol.to_owned())
}

fn model(root: &Value) -> Option<String> {
    text_at(root, &["model_name"])
        .or_else(|| text_at(root, &["scsi_model_name"]))
        .or_else(|| {
            let vendor = text_at(root, &["scsi_vendor"]).or_else(|| text_at(root, &["vendor"]));
            let product = text_at(root, &["scsi_product"]).or_else(|| text_at(root, &["product"]));
            match (vendor, product) {
                (Some(v), Some(p)) => Some(bounded(&format!("{v} {p}"))),
                (v, p) => v.or(p),
            }
        })
}

/// The WWN as `/dev/disk/by-id` spells it.
fn wwn(root: &Value) -> Option<String> {
    let naa = u64_at(root, &["wwn", "naa"]);
    let oui = u64_at(root, &["wwn", "oui"]);
    let id = u64_at(root, &["wwn", "id"]);
    if let (Some(naa), Some(oui), Some(id)) = (naa, oui, id) {
        // NAA (4 bits), IEEE OUI (24 bits), vendor id (36 bits): one 64-bit name.
        if naa <= 0xf && oui <= 0xff_ffff && id < (1 << 36) {
            return Some(format!("0x{:016x}", (naa << 60) | (oui << 36) | id));
        }
    }
    if let Some(lu) = text_at(root, &["logical_unit_id"]) {
        return Some(lu);
    }
    array_at(root, &["nvme_namespaces"]).iter().find_map(|ns| {
        let oui = u64_at(ns, &["eui64", "oui"])?;
        let ext = u64_at(ns, &["eui64", "ext_id"])?;
        // EUI-64: 24-bit OUI then a 40-bit extension identifier.
        (oui <= 0xff_ffff && ext < (1 << 40)).then(|| format!("eui.{oui:06x}{ext:010x}"))
    })
}

/// The capacity in bytes; 0 is smartctl's placeholder for a device it could not size, absent.
fn capacity(root: &Value) -> Option<u64> {
    u64_at(root, &["user_capacity", "bytes"])
        .filter(|n| *n > 0)
        .or_else(|| u64_at(root, &["nvme_total_capacity"]).filter(|n| *n > 0))
        .or_else(|| {
            array_at(root, &["nvme_namespaces"])
                .iter()
                .map(|ns| u64_at(ns, &["size", "bytes"]))
                .try_fold(0u64, |sum, n| sum.checked_add(n?))
                .filter(|n| *n > 0)
        })
}

/// Temperatures beyond this are misread raw fields, not a disk (and 0 is what smartctl writes for
/// a SCSI or RAID device that reports none).
fn plausible_temperature(t: i64) -> Option<i64> {
    (t != 0 && (-60..=200).contains(&t)).then_some(t)
}

fn temperature(root: &Value, attributes: &[AtaAttribute]) -> Option<i64> {
    let attribute = |id: u8| {
        let a = attributes.iter().find(|a| a.id == id)?;
        // The raw value packs min/max into upper bytes ("36 (Min/Max 16/31)"): only the leading
        // number, or the lowest byte, is the current temperature.
        a.raw_string
            .as_deref()
            .and_then(leading_u64)
            .or(a.raw.map(|r| r & 0xff))
            .and_then(|t| i64::try_from(t).ok())
    };
    [
        i64_at(root, &["temperature", "current"]),
        i64_at(root, &["nvme_smart_health_information_log", "temperature"]),
        array_at(
            root,
            &["nvme_smart_health_information_log", "temperature_sensors"],
        )
        .first()
        .and_then(Value::as_i64),
        i64_at(root, &["ata_sct_status", "temperature", "current"]),
        attribute(194),
        attribute(190),
    ]
    .into_iter()
    .flatten()
    .find_map(plausible_temperature)
}

fn power_on_hours(root: &Value, attributes: &[AtaAttribute]) -> Option<u64> {
    u64_at(root, &["power_on_time", "hours"])
        .or_else(|| {
            u64_at(
                root,
                &["nvme_smart_health_information_log", "power_on_hours"],
            )
        })
        .or_else(|| {
            // Attribute 9's raw value may pack hours, minutes and seconds
            // ("37054h+12m+58.233s"), so its string's leading number is the hours.
            attributes
                .iter()
                .find(|a| a.id == 9)
                .and_then(attribute_count)
        })
}

/// The count an ATA attribute stands for: the leading number of smartctl's raw string (which
/// applies the drive database's raw format), else the raw value itself.
fn attribute_count(a: &AtaAttribute) -> Option<u64> {
    a.raw_string.as_deref().and_then(leading_u64).or(a.raw)
}

fn attributes(root: &Value) -> Vec<AtaAttribute> {
    array_at(root, &["ata_smart_attributes", "table"])
        .iter()
        .filter_map(|a| {
            let raw_string = text_at(a, &["raw", "string"]);
            Some(AtaAttribute {
                id: u8_at(a, &["id"])?,
                name: text_at(a, &["name"]).unwrap_or_default(),
                value: u8_at(a, &["value"]),
                worst: u8_at(a, &["worst"]),
                thresh: u8_at(a, &["thresh"]),
                raw: u64_at(a, &["raw", "value"])
                    .or_else(|| raw_string.as_deref().and_then(leading_u64)),
                raw_string,
                when_failed: text_at(a, &["when_failed"]),
                prefailure: bool_at(a, &["flags", "prefailure"])
                    // Before the decoded flags, bit 0 of the flags value was the only source.
                    .or_else(|| u64_at(a, &["flags", "value"]).map(|f| f & 1 == 1))
                    .unwrap_or(false),
            })
        })
        // Attribute ids are one byte; more entries than that is not a real table.
        .take(256)
        .collect()
}

fn nvme(root: &Value) -> Option<NvmeHealth> {
    let log = at(root, &["nvme_smart_health_information_log"]);
    let status = at(root, &["smart_status", "nvme"]);
    if log.is_none() && status.is_none() {
        return None;
    }
    let log = log.unwrap_or(&Value::Null);
    let critical_warning = critical_warning(log, status.unwrap_or(&Value::Null));
    Some(NvmeHealth {
        critical_warning,
        critical_warnings: critical_warning.map(warning_bits).unwrap_or_default(),
        available_spare_percent: u8_at(log, &["available_spare"]),
        available_spare_threshold_percent: u8_at(log, &["available_spare_threshold"]),
        percentage_used: u8_at(log, &["percentage_used"]),
        media_errors: u64_at(log, &["media_errors"]),
        error_log_entries: u64_at(log, &["num_err_log_entries"]),
        unsafe_shutdowns: u64_at(log, &["unsafe_shutdowns"]),
        data_units_read: u64_at(log, &["data_units_read"]),
        data_units_written: u64_at(log, &["data_units_written"]),
        warning_temperature_minutes: u64_at(log, &["warning_temp_time"]),
        critical_temperature_minutes: u64_at(log, &["critical_comp_time"]),
        temperature_sensors_celsius: array_at(log, &["temperature_sensors"])
            .iter()
            .filter_map(Value::as_i64)
            .take(8)
            .collect(),
    })
}

/// The critical warning byte: from the health log, from `smart_status.nvme.value`, and from the
/// bits smartctl 7.3+ spells out in `smart_status.nvme`, all combined.
fn critical_warning(log: &Value, status: &Value) -> Option<u8> {
    const SPELLED: [(&str, u8); 5] = [
        ("spare_below_threshold", 0x01),
        ("temperature_above_or_below_threshold", 0x02),
        ("reliability_degraded", 0x04),
        ("media_read_only", 0x08),
        ("volatile_memory_backup_failed", 0x10),
    ];
    let numbers = [
        u8_at(log, &["critical_warning"]),
        u8_at(status, &["value"]),
        u8_at(status, &["other"]),
    ];
    let spelled = SPELLED
        .iter()
        .filter(|(key, _)| bool_at(status, &[key]) == Some(true))
        .map(|(_, bit)| Some(*bit));
    numbers
        .into_iter()
        .chain(spelled)
        .flatten()
        .reduce(|a, b| a | b)
}

fn warning_bits(w: u8) -> Vec<NvmeCriticalWarning> {
    use NvmeCriticalWarning::*;
    let mut bits: Vec<NvmeCriticalWarning> = [
        SpareBelowThreshold,
        Temperature,
        ReliabilityDegraded,
        ReadOnly,
        VolatileMemoryBackupFailed,
        PersistentMemoryRegionUnreliable,
    ]
    .into_iter()
    .enumerate()
    .filter(|(bit, _)| w & (1 << bit) != 0)
    .map(|(_, flag)| flag)
    .collect();
    if w & 0b1100_0000 != 0 {
        bits.push(Other);
    }
    bits
}

fn scsi(root: &Value) -> Option<ScsiHealth> {
    let counters = |op: &str| {
        let row = at(root, &["scsi_error_counter_log", op])?;
        Some(ScsiErrorCounters {
            corrected: u64_at(row, &["total_errors_corrected"]),
            uncorrected: u64_at(row, &["total_uncorrected_errors"]),
            gigabytes_processed: text_at(row, &["gigabytes_processed"]),
        })
    };
    let health = ScsiHealth {
        grown_defects: u64_at(root, &["scsi_grown_defect_list"]),
        pending_defects: u64_at(root, &["scsi_pending_defects", "count"]),
        read: counters("read"),
        write: counters("write"),
        verify: counters("verify"),
    };
    (health != ScsiHealth::default()).then_some(health)
}

fn scsi_uncorrected(s: &ScsiHealth) -> Option<u64> {
    [&s.read, &s.write, &s.verify]
        .into_iter()
        .filter_map(|c| c.as_ref()?.uncorrected)
        .reduce(u64::saturating_add)
}

fn error_log(root: &Value) -> Option<SmartErrorLog> {
    // `-x` reads the extended (GP) log, which holds more than the summary (SMART) log.
    let ata = ["extended", "summary"]
        .iter()
        .filter_map(|kind| at(root, &["ata_smart_error_log", kind]))
        .find(|log| u64_at(log, &["count"]).is_some());
    if let Some(log) = ata {
        let latest = array_at(log, &["table"])
            .iter()
            .max_by_key(|e| u64_at(e, &["error_number"]).unwrap_or(0))
            .and_then(|e| u64_at(e, &["lifetime_hours"]));
        return Some(SmartErrorLog {
            count: u64_at(log, &["count"]),
            latest_lifetime_hours: latest,
        });
    }
    let nvme = u64_at(
        root,
        &["nvme_smart_health_information_log", "num_err_log_entries"],
    )?;
    Some(SmartErrorLog {
        count: Some(nvme),
        latest_lifetime_hours: None,
    })
}

fn self_test_log(root: &Value) -> Option<SmartSelfTestLog> {
    let ata = ["extended", "standard"]
        .iter()
        .filter_map(|kind| at(root, &["ata_smart_self_test_log", kind]))
        .find(|log| u64_at(log, &["count"]).is_some() || !array_at(log, &["table"]).is_empty());
    if let Some(log) = ata {
        // smartctl lists the most recent test first.
        let latest = array_at(log, &["table"]).first().map(|t| SmartSelfTest {
            kind: text_at(t, &["type", "string"]),
            status: text_at(t, &["status", "string"]),
            passed: bool_at(t, &["status", "passed"]),
            lifetime_hours: u64_at(t, &["lifetime_hours"]),
        });
        return Some(SmartSelfTestLog {
            count: u64_at(log, &["count"]),
            error_count: u64_at(log, &["error_count_total"]),
            latest,
        });
    }
    if let Some(log) = at(root, &["nvme_self_test_log"]) {
        let table = array_at(log, &["table"]);
        let latest = table.first().map(|t| {
            let result = u64_at(t, &["self_test_result", "value"]);
            SmartSelfTest {
                kind: text_at(t, &["self_test_code", "string"]),
                status: text_at(t, &["self_test_result", "string"]),
                // 0 completed without error; 5 to 7 failed segments; the rest were aborted.
                passed: result.and_then(|r| match r {
                    0 => Some(true),
                    5..=7 => Some(false),
                    _ => None,
                }),
                lifetime_hours: u64_at(t, &["power_on_hours"]),
            }
        });
        return Some(SmartSelfTestLog {
            count: Some(table.len() as u64),
            error_count: None,
            latest,
        });
    }
    let scsi = at(root, &["scsi_self_test_0"])?;
    let result = u64_at(scsi, &["result", "value"]);
    Some(SmartSelfTestLog {
        count: None,
        error_count: None,
        latest: Some(SmartSelfTest {
            kind: text_at(scsi, &["code", "string"]),
            status: text_at(scsi, &["result", "string"]),
            // SPC result codes: 0 completed, 1 and 2 aborted, 3 to 7 failed.
            passed: result.and_then(|r| match r {
                0 => Some(true),
                3..=7 => Some(false),
                _ => None,
            }),
            lifetime_hours: u64_at(scsi, &["power_on_time", "hours"]),
        }),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_zeros_of_an_unidentified_device_are_absent_values() {
        let out = parse_device(
            br#"{"smartctl": {"version": [7, 3], "exit_status": 4},
                 "device": {"name": "/dev/sdc", "type": "scsi", "protocol": "SCSI"},
                 "user_capacity": {"blocks": 0, "bytes": 0}, "rotation_rate": 0}"#,
            None,
        )
        .unwrap();
        let d = out.device.unwrap();
        assert_eq!((d.capacity_bytes, d.rotation_rate_rpm), (None, None));
        let ssd = parse_device(
            br#"{"smartctl": {"version": [7, 3], "exit_status": 0},
                 "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
                 "model_name": "Samsung SSD 870", "user_capacity": {"blocks": 2, "bytes": 1024},
                 "rotation_rate": 0}"#,
            None,
        )
        .unwrap()
        .device
        .unwrap();
        assert_eq!(
            (ssd.capacity_bytes, ssd.rotation_rate_rpm),
            (Some(1024), Some(0))
        );
    }

    use super::*;

    fn parse(json: &str) -> DeviceOutput {
        parse_device(json.as_bytes(), None).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse_device(b"", None), Err(ParseError::Empty));
        assert_eq!(parse_device(b" \n", None), Err(ParseError::Empty));
        assert_eq!(parse_device(b"[1]", None), Err(ParseError::NotAnObject));
        assert!(matches!(
            parse_device(b"{\"a\":", None),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_device(&[0xff, 0xfe], None),
            Err(ParseError::NotJson(_))
        ));
        let deep = "[".repeat(100_000);
        assert!(parse_device(deep.as_bytes(), None).is_err());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_fatal() {
        let mut bytes = br#"{"smartctl": {"exit_status": 0}, "model_name": "Disque "#.to_vec();
        bytes.extend([0xE9, 0xFF]);
        bytes.extend(br#"", "serial_number": "S1"}"#);
        let device = parse_device(&bytes, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .device
            .unwrap_or_else(|| panic!("no device"));
        assert_eq!(device.model.as_deref(), Some("Disque \u{FFFD}\u{FFFD}"));
        assert_eq!(device.serial.as_deref(), Some("S1"));

        let mut scan = br#"{"devices": [{"name": "/dev/sd"#.to_vec();
        scan.push(0xE9);
        scan.extend(br#"", "type": "sat"}]}"#);
        let scanned = parse_scan(&scan).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.devices.len(), 1);
        assert_eq!(scanned.devices[0].name, "/dev/sd\u{FFFD}");
        assert_eq!(scanned.devices[0].device_type.as_deref(), Some("sat"));

        // Broken JSON stays broken, whatever its bytes.
        let mut broken = br#"{"model_name": ""#.to_vec();
        broken.push(0xE9);
        assert!(matches!(
            parse_device(&broken, None),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn exit_status_bits_decode_in_order() {
        use SmartctlExitFlag::*;
        assert_eq!(exit_flags(0), vec![]);
        assert_eq!(exit_flags(2), vec![DeviceOpenFailed]);
        assert_eq!(
            exit_flags(216),
            vec![
                HealthFailing,
                PrefailAttributeAtThreshold,
                ErrorLogHasEntries,
                SelfTestErrors
            ]
        );
        assert_eq!(exit_flags(255).len(), 8);
    }

    #[test]
    fn the_process_status_wins_and_drives_failing() {
        let json = r#"{"smartctl":{"exit_status":0},"device":{"name":"/dev/sda"}}"#;
        let out = parse_device(json.as_bytes(), Some(64)).unwrap_or_else(|e| panic!("{e}"));
        let device = out.device.unwrap_or_default();
        assert_eq!(device.exit_status, Some(64));
        assert_eq!(
            device.exit_flags,
            vec![SmartctlExitFlag::ErrorLogHasEntries]
        );
        assert!(device.failing);
        assert!(device.evidence.is_some());
    }

    #[test]
    fn a_sleeping_disk_is_a_device_in_standby_not_an_error() {
        let out = parse(
            r#"{"smartctl":{"exit_status":2,"messages":[{"string":"Device is in STANDBY mode, exit(2)","severity":"information"}]},
                "device":{"name":"/dev/sdb","type":"sat","protocol":"ATA"}}"#,
        );
        let device = out.device.clone().unwrap_or_default();
        assert!(device.in_standby);
        assert!(!device.failing);
        assert_eq!(device.health_passed, None);
        assert_eq!(out.failure(), None);
        // Even without a device block (older versions print it late).
        let out = parse(
            r#"{"smartctl":{"exit_status":2,"messages":[{"string":"/dev/sdb: Device is in STANDBY (OS) mode, exit(2)","severity":"information"}]}}"#,
        );
        assert!(out.device.is_some_and(|d| d.in_standby));
    }

    #[test]
    fn an_open_error_is_no_device_and_says_why() {
        let out = parse(
            r#"{"smartctl":{"exit_status":2,"messages":[{"string":"Smartctl open device: /dev/sda failed: Permission denied","severity":"error"}]}}"#,
        );
        assert_eq!(out.device, None);
        let failure = out.failure().unwrap_or_default();
        assert!(failure.contains("Permission denied"), "{failure}");
        assert!(failure.contains("exit status 2"), "{failure}");
    }

    #[test]
    fn nvme_warning_bits_come_from_every_spelling() {
        let out = parse(
            r#"{"device":{"name":"/dev/nvme0","protocol":"NVMe"},
                "smart_status":{"passed":false,"nvme":{"value":4,"reliability_degraded":true,"media_read_only":true}},
                "nvme_smart_health_information_log":{"critical_warning":4,"media_errors":18446744073709551616}}"#,
        );
        let device = out.device.unwrap_or_default();
        let nvme = device.nvme.unwrap_or_default();
        assert_eq!(nvme.critical_warning, Some(0x0c));
        assert_eq!(
            nvme.critical_warnings,
            vec![
                NvmeCriticalWarning::ReliabilityDegraded,
                NvmeCriticalWarning::ReadOnly
            ]
        );
        assert_eq!(nvme.media_errors, Some(u64::MAX));
        assert!(device.failing);
        assert_eq!(warning_bits(0xc1).len(), 2);
    }

    #[test]
    fn packed_raw_values_are_read_through_their_strings() {
        let out = parse(
            r#"{"device":{"name":"/dev/sdc"},"ata_smart_attributes":{"table":[
                {"id":9,"name":"Power_On_Hours","value":97,"worst":97,"thresh":0,"raw":{"value":167031278144165,"string":"2725 (151 234 0)"}},
                {"id":194,"name":"Temperature_Celsius","value":29,"worst":49,"raw":{"value":77309411357,"string":"29 (0 18 0 0 0)"}},
                {"id":5,"name":"Reallocated_Sector_Ct","value":1,"worst":1,"thresh":5,"when_failed":"now","flags":{"value":51},"raw":{"string":"1975"}}]}}"#,
        );
        let device = out.device.unwrap_or_default();
        assert_eq!(device.power_on_hours, Some(2725));
        assert_eq!(device.temperature_celsius, Some(29));
        assert_eq!(device.reallocated_sectors, Some(1975));
        assert_eq!(device.attributes[0].raw, Some(167_031_278_144_165));
        assert_eq!(device.attributes[1].thresh, None);
        assert_eq!(device.attributes[2].raw, Some(1975));
        assert!(device.attributes[2].prefailure);
        assert!(device.failing, "when_failed=now without an exit status");
    }

    #[test]
    fn scsi_keys_of_every_version_are_read() {
        let old = parse(
            r#"{"device":{"name":"/dev/sdg","protocol":"SCSI"},"vendor":"SEAGATE","product":"ST4000NM0043","revision":"MS03",
                "scsi_grown_defect_list":56,"scsi_error_counter_log":{"read":{"total_uncorrected_errors":2,"gigabytes_processed":"3,641"},"write":{"total_uncorrected_errors":1}}}"#,
        )
        .device
        .unwrap_or_default();
        assert_eq!(old.model.as_deref(), Some("SEAGATE ST4000NM0043"));
        assert_eq!(old.firmware.as_deref(), Some("MS03"));
        assert_eq!(old.reallocated_sectors, Some(56));
        assert_eq!(old.uncorrectable_errors, Some(3));
        let scsi = old.scsi.unwrap_or_default();
        assert_eq!(
            scsi.read.and_then(|r| r.gigabytes_processed).as_deref(),
            Some("3,641")
        );
        let new = parse(
            r#"{"device":{"name":"/dev/sde"},"scsi_vendor":"YADRO","scsi_product":"WUH721414AL4204","scsi_revision":"C240","logical_unit_id":"0x5000cca29063dc00"}"#,
        )
        .device
        .unwrap_or_default();
        assert_eq!(new.model.as_deref(), Some("YADRO WUH721414AL4204"));
        assert_eq!(new.firmware.as_deref(), Some("C240"));
        assert_eq!(new.wwn.as_deref(), Some("0x5000cca29063dc00"));
        assert_eq!(new.protocol.as_deref(), Some("SCSI"));
    }

    #[test]
    fn wwn_and_eui_are_spelled_as_in_dev_disk_by_id() {
        let ata = parse(r#"{"device":{},"wwn":{"naa":5,"oui":5358,"id":11649125727}}"#)
            .device
            .unwrap_or_default();
        assert_eq!(ata.wwn.as_deref(), Some("0x50014ee2b6578d5f"));
        let nvme = parse(
            r#"{"device":{},"nvme_namespaces":[{"id":1,"eui64":{"oui":9528,"ext_id":376106710327}}]}"#,
        )
        .device
        .unwrap_or_default();
        assert_eq!(nvme.wwn.as_deref(), Some("eui.0025385791b4f537"));
    }

    #[test]
    fn scan_entries_keep_open_errors_and_drop_option_lookalikes() {
        let scan = parse_scan(
            br#"{"smartctl":{"version":[7,4],"exit_status":0},"devices":[
                {"name":"/dev/sda","info_name":"/dev/sda [SAT]","type":"sat","protocol":"ATA"},
                {"name":"/dev/sdb","type":"scsi","open_error":"Permission denied"},
                {"name":"--help"},{"type":"nvme"}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(scan.smartctl_version.as_deref(), Some("7.4"));
        assert_eq!(scan.devices.len(), 2);
        assert_eq!(
            scan.devices[1].open_error.as_deref(),
            Some("Permission denied")
        );
    }
}
