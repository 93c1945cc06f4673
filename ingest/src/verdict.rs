//! One verdict per drive from the facts its report carries: `ok`, `warning` or `critical`, with
//! every reason in words and numbers. The collector reports facts; this module judges them, and
//! `disk_failing`, `disk_wearout`, the dashboard and the API all take their word from here.
//!
//! The judgements users of other tools complained about are made here on purpose:
//! - entries in a drive's error log are information, not failure (smartctl's exit bit 6 marks
//!   a drive "failing" for one old entry, every day of its life);
//! - NVMe available spare is judged against the drive's own threshold, as the specification
//!   says, so a drive reporting 0 % spare with a 0 % threshold (QEMU, some firmware) is fine;
//! - NVMe critical-warning bits are named, and bit 2 (reliability degraded, which drives set
//!   when their rated endurance is used up) is a wear-out warning, not a failure;
//! - a drive past 100 % of its rated endurance is a warning that keeps saying so.

// Numbers from reports meet comparisons here, never unchecked arithmetic.
#![warn(clippy::arithmetic_side_effects)]

use phonehome_schema::{NvmeCriticalWarning, SmartDevice};
use serde::Serialize;

use crate::alerts::Wearout;

/// How bad a drive is, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// What a reason is about; each alert rule takes the reasons of its concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concern {
    /// The drive is failing or has failed (`disk_failing`).
    Failure,
    /// The drive is using up its endurance or spare (`disk_wearout`).
    WearOut,
    /// Temperature (the drive's own warning; `disk_temperature` judges the reading).
    Temperature,
    /// Worth knowing, not worth an alert.
    Information,
}

/// One reason for a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub level: Level,
    pub concern: Concern,
    /// What, with the value and what it was compared with, as an operator reads it.
    pub text: String,
}

/// A drive's verdict: the worst level among its reasons (`ok` without any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveVerdict {
    pub level: Level,
    pub reasons: Vec<Reason>,
}

impl DriveVerdict {
    /// The reasons of `concern` at `level` or worse, joined for an alert's value.
    pub fn summary(&self, concern: Concern, at_least: Level) -> Option<String> {
        let texts: Vec<&str> = self
            .reasons
            .iter()
            .filter(|r| r.concern == concern && r.level >= at_least)
            .map(|r| r.text.as_str())
            .collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    }
}

/// The NVMe critical-warning bits: level, concern and words for each.
fn nvme_bit(w: NvmeCriticalWarning) -> (Level, Concern, &'static str) {
    match w {
        NvmeCriticalWarning::SpareBelowThreshold => (
            Level::Warning,
            Concern::WearOut,
            "available spare is below the drive's threshold (critical warning bit 0)",
        ),
        NvmeCriticalWarning::Temperature => (
            Level::Warning,
            Concern::Temperature,
            "a temperature is outside the drive's thresholds (critical warning bit 1)",
        ),
        NvmeCriticalWarning::ReliabilityDegraded => (
            Level::Warning,
            Concern::WearOut,
            "reliability degraded (critical warning bit 2, which drives set when their rated \
             endurance is used up)",
        ),
        NvmeCriticalWarning::ReadOnly => (
            Level::Critical,
            Concern::Failure,
            "the media has been placed in read-only mode (critical warning bit 3)",
        ),
        NvmeCriticalWarning::VolatileMemoryBackupFailed => (
            Level::Critical,
            Concern::Failure,
            "the volatile memory backup device has failed (critical warning bit 4)",
        ),
        NvmeCriticalWarning::PersistentMemoryRegionUnreliable => (
            Level::Critical,
            Concern::Failure,
            "the persistent memory region is read-only or unreliable (critical warning bit 5)",
        ),
        NvmeCriticalWarning::Other => (
            Level::Warning,
            Concern::Failure,
            "a critical warning bit the specification reserved (bits 6-7)",
        ),
    }
}

/// The bits of a raw critical-warning byte, for collectors that sent only the byte.
fn nvme_bits(byte: u8) -> Vec<NvmeCriticalWarning> {
    use NvmeCriticalWarning as W;
    let named = [
        W::SpareBelowThreshold,
        W::Temperature,
        W::ReliabilityDegraded,
        W::ReadOnly,
        W::VolatileMemoryBackupFailed,
        W::PersistentMemoryRegionUnreliable,
    ];
    let mut bits: Vec<W> = named
        .into_iter()
        .enumerate()
        .filter(|(i, _)| byte & (1u8 << i) != 0)
        .map(|(_, w)| w)
        .collect();
    if byte & 0xc0 != 0 {
        bits.push(W::Other);
    }
    bits
}

/// Judges one drive from its report. `wear` holds the operator's wear-out thresholds.
pub fn drive(d: &SmartDevice, wear: &Wearout) -> DriveVerdict {
    let mut reasons = Vec::new();
    let mut say = |level, concern, text: String| {
        reasons.push(Reason {
            level,
            concern,
            text,
        })
    };
    if d.health_passed == Some(false) {
        say(
            Level::Critical,
            Concern::Failure,
            "overall health self-assessment failed".to_owned(),
        );
    }
    for a in &d.attributes {
        let compared = match (a.value, a.thresh) {
            (Some(v), Some(t)) => format!(" (normalised {v}, threshold {t})"),
            _ => String::new(),
        };
        match a.when_failed.as_deref() {
            Some("now") => say(
                Level::Critical,
                Concern::Failure,
                format!(
                    "attribute {} {} is at or below its threshold now{compared}",
                    a.id, a.name
                ),
            ),
            Some("past") => say(
                Level::Ok,
                Concern::Information,
                format!(
                    "attribute {} {} was at or below its threshold in the past{compared}",
                    a.id, a.name
                ),
            ),
            _ => {}
        }
    }
    if let Some(n) = &d.nvme {
        let bits = if n.critical_warnings.is_empty() {
            nvme_bits(n.critical_warning.unwrap_or(0))
        } else {
            n.critical_warnings.clone()
        };
        let spare_bit = bits.contains(&NvmeCriticalWarning::SpareBelowThreshold);
        for b in bits {
            let (level, concern, words) = nvme_bit(b);
            let text = match (
                b,
                n.available_spare_percent,
                n.available_spare_threshold_percent,
            ) {
                (NvmeCriticalWarning::SpareBelowThreshold, Some(s), Some(t)) => {
                    format!("{words}: {s} % against {t} %")
                }
                _ => words.to_owned(),
            };
            say(level, concern, text);
        }
        if let (Some(spare), Some(threshold)) = (
            n.available_spare_percent,
            n.available_spare_threshold_percent,
        ) {
            // The specification's rule (bit 0), for firmware that does not set the bit.
            if spare < threshold && !spare_bit {
                say(
                    Level::Warning,
                    Concern::WearOut,
                    format!(
                        "available spare {spare} % is below the drive's threshold {threshold} %"
                    ),
                );
            }
        }
        if let Some(spare) = n.available_spare_percent {
            let threshold = n.available_spare_threshold_percent.unwrap_or(0);
            if spare < wear.available_spare_percent && spare >= threshold {
                say(
                    Level::Warning,
                    Concern::WearOut,
                    format!(
                        "available spare {spare} % is below the configured {} %",
                        wear.available_spare_percent
                    ),
                );
            }
        }
        if let Some(used) = n.percentage_used.filter(|u| *u >= wear.percentage_used) {
            let past = if used >= 100 {
                ", past its rated endurance"
            } else {
                ""
            };
            say(
                Level::Warning,
                Concern::WearOut,
                format!(
                    "{used} % of rated endurance used (warns at {} %){past}",
                    wear.percentage_used
                ),
            );
        }
    }
    // smartctl's exit bit 6: information, whatever the count (the collector's own `failing` flag
    // still counts it, which is why the ingest judges).
    if let Some(count) = d
        .error_log
        .as_ref()
        .and_then(|l| l.count)
        .or_else(|| d.nvme.as_ref().and_then(|n| n.error_log_entries))
        .filter(|c| *c > 0)
    {
        say(
            Level::Ok,
            Concern::Information,
            format!(
                "{count} entries in the device's error log (information: entries alone are not failure)"
            ),
        );
    }
    if let Some(errors) = d
        .self_test_log
        .as_ref()
        .and_then(|l| l.error_count)
        .filter(|c| *c > 0)
    {
        say(
            Level::Warning,
            Concern::Failure,
            format!("{errors} failed self-tests in the self-test log"),
        );
    }
    for (what, v) in [
        ("reallocated sectors", d.reallocated_sectors),
        ("pending sectors", d.pending_sectors),
        ("uncorrectable errors", d.uncorrectable_errors),
    ] {
        if let Some(v) = v.filter(|v| *v > 0) {
            say(
                Level::Ok,
                Concern::Information,
                format!("{v} {what} (disk_degrading alerts when the count rises)"),
            );
        }
    }
    let level = reasons.iter().map(|r| r.level).max().unwrap_or(Level::Ok);
    DriveVerdict { level, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonehome_schema::NvmeHealth;

    fn nvme(f: impl FnOnce(&mut NvmeHealth)) -> SmartDevice {
        let mut h = NvmeHealth::default();
        f(&mut h);
        let mut d: SmartDevice =
            serde_json::from_value(serde_json::json!({"name": "/dev/nvme0"})).unwrap();
        d.nvme = Some(h);
        d
    }

    fn level(d: &SmartDevice) -> (Level, Vec<String>) {
        let v = drive(d, &Wearout::default());
        (v.level, v.reasons.into_iter().map(|r| r.text).collect())
    }

    #[test]
    fn constructed_nvme_drives_get_the_verdict_the_specification_gives() {
        let cases: Vec<(&str, SmartDevice, Level, &str)> = vec![
            (
                "0 % spare against a 0 % threshold (QEMU)",
                nvme(|n| {
                    n.available_spare_percent = Some(0);
                    n.available_spare_threshold_percent = Some(0);
                }),
                Level::Ok,
                "",
            ),
            (
                "spare below its own threshold, bit not set",
                nvme(|n| {
                    n.available_spare_percent = Some(5);
                    n.available_spare_threshold_percent = Some(10);
                }),
                Level::Warning,
                "available spare 5 % is below the drive's threshold 10 %",
            ),
            (
                "130 % wear",
                nvme(|n| n.percentage_used = Some(130)),
                Level::Warning,
                "130 % of rated endurance used (warns at 90 %), past its rated endurance",
            ),
            (
                "bit 2 alone",
                nvme(|n| n.critical_warning = Some(0x04)),
                Level::Warning,
                "reliability degraded",
            ),
            (
                "bit 3: read-only",
                nvme(|n| n.critical_warning = Some(0x08)),
                Level::Critical,
                "read-only mode",
            ),
            (
                "an error log with entries",
                nvme(|n| n.error_log_entries = Some(12)),
                Level::Ok,
                "12 entries in the device's error log",
            ),
        ];
        for (what, d, want, text) in cases {
            let (got, reasons) = level(&d);
            assert_eq!(got, want, "{what}: {reasons:?}");
            assert!(
                text.is_empty() && reasons.is_empty() || reasons.iter().any(|r| r.contains(text)),
                "{what}: {reasons:?}"
            );
        }
    }

    #[test]
    fn failure_is_health_attributes_now_and_the_worst_nvme_bits() {
        let mut d: SmartDevice =
            serde_json::from_value(serde_json::json!({"name": "/dev/sda"})).unwrap();
        d.health_passed = Some(false);
        let v = drive(&d, &Wearout::default());
        assert_eq!(v.level, Level::Critical);
        assert_eq!(
            v.summary(Concern::Failure, Level::Critical).as_deref(),
            Some("overall health self-assessment failed")
        );
        d.health_passed = Some(true);
        d.reallocated_sectors = Some(8);
        let v = drive(&d, &Wearout::default());
        assert_eq!(v.level, Level::Ok, "a stable count is information");
        assert_eq!(v.reasons.len(), 1);
    }
}
