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
use crate::model::DriveSample;

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
    /// A count of bad sectors, link or media errors, or error-log entries rose since the
    /// drive's previous report (`disk_degrading`).
    Degrading,
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
    /// Adds reasons judged against the drive's history (see [`rises`]).
    pub fn with(mut self, more: Vec<Reason>) -> Self {
        self.reasons.extend(more);
        self.level = self
            .reasons
            .iter()
            .map(|r| r.level)
            .max()
            .unwrap_or(Level::Ok);
        self
    }

    /// A digest of the reasons (level, concern and words with their values), stable across
    /// builds (FNV-1a, not the std hasher whose keys may change), so equal facts give equal
    /// digests in reports months apart.
    pub fn facts(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for r in &self.reasons {
            let head = [r.level as u8, r.concern as u8];
            for b in head.iter().chain(r.text.as_bytes()).chain(b"\x1f") {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// Whether the drive is failing now (`disk_failing`, the `failing` sample column).
    pub fn failing(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| r.concern == Concern::Failure && r.level == Level::Critical)
    }

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

/// An appliance's verdict: the worst of its firing alerts, each alert a reason. An
/// acknowledged or muted condition fires no alert, so it is no reason; an `info` alert is a
/// reason at `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplianceVerdict {
    pub level: Level,
    pub reasons: Vec<ApplianceReason>,
}

/// One firing alert as a reason for an appliance's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplianceReason {
    pub level: Level,
    pub rule: String,
    /// The drive key, mount point or NIC the alert is about (empty: the appliance).
    pub subject: String,
    pub text: String,
}

/// Judges an appliance from its firing alerts: (severity, rule, subject, summary). A severity
/// this build does not know counts as critical, so it is never shown as fine.
pub fn appliance<'a>(
    firing: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a str)>,
) -> ApplianceVerdict {
    let mut reasons: Vec<ApplianceReason> = firing
        .into_iter()
        .map(|(severity, rule, subject, text)| ApplianceReason {
            level: match severity {
                "info" => Level::Ok,
                "warning" => Level::Warning,
                _ => Level::Critical,
            },
            rule: rule.to_owned(),
            subject: subject.to_owned(),
            text: text.to_owned(),
        })
        .collect();
    reasons.sort_by(|a, b| b.level.cmp(&a.level).then_with(|| a.rule.cmp(&b.rule)));
    let level = reasons.first().map_or(Level::Ok, |r| r.level);
    ApplianceVerdict { level, reasons }
}

/// The counts whose rise means a drive is losing sectors, links or media, by name.
fn counts(s: &DriveSample) -> [(&'static str, Option<i64>); 7] {
    let widen = |v: Option<i32>| v.map(i64::from);
    [
        ("reallocated sectors", widen(s.reallocated_sectors)),
        ("pending sectors", widen(s.pending_sectors)),
        ("offline uncorrectable", widen(s.offline_uncorrectable)),
        ("CRC errors", widen(s.crc_errors)),
        ("media errors", s.nvme_media_errors),
        ("grown defects", s.scsi_grown_defects),
        ("error log entries", s.error_log_entries),
    ]
}

/// What rose between a drive's previous report and this one, each a warning with the amount:
/// a count that holds still, however high, says nothing new (a drive with 8 reallocated
/// sectors for a year is not failing), and a count that went down (a reset, a new drive under
/// the same key) is not a rise.
pub fn rises(previous: &DriveSample, current: &DriveSample) -> Vec<Reason> {
    counts(previous)
        .into_iter()
        .zip(counts(current))
        .filter_map(|((name, p), (_, c))| match (p, c) {
            (Some(p), Some(c)) if c > p => Some(Reason {
                level: Level::Warning,
                concern: Concern::Degrading,
                text: format!("{name} {p} → {c} (+{})", c.saturating_sub(p)),
            }),
            _ => None,
        })
        .collect()
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

    #[test]
    fn only_a_rise_is_news_and_it_says_by_how_much() {
        let before = DriveSample {
            reallocated_sectors: Some(8),
            error_log_entries: Some(131),
            nvme_media_errors: Some(4),
            ..DriveSample::default()
        };
        assert!(rises(&before, &before).is_empty(), "stable counts");
        let after = DriveSample {
            reallocated_sectors: Some(16),
            error_log_entries: Some(133),
            // A count that went down (a reset) is not a rise.
            nvme_media_errors: Some(0),
            ..DriveSample::default()
        };
        let texts: Vec<String> = rises(&before, &after).into_iter().map(|r| r.text).collect();
        assert_eq!(
            texts,
            [
                "reallocated sectors 8 → 16 (+8)",
                "error log entries 131 → 133 (+2)"
            ]
        );
        // A rise on a drive judged ok makes it a warning, with the reason.
        let v = drive(&nvme(|_| {}), &Wearout::default()).with(rises(&before, &after));
        assert_eq!(v.level, Level::Warning);
        assert!(v.reasons.iter().all(|r| r.concern == Concern::Degrading));
        // A first sample (nothing to compare) is no rise.
        let nothing = DriveSample::default();
        assert!(rises(&nothing, &after).is_empty());
    }

    #[test]
    fn an_appliance_is_as_bad_as_its_worst_firing_alert() {
        assert_eq!(appliance([]).level, Level::Ok);
        let v = appliance([
            ("info", "app_outdated", "", "the application is 1.0"),
            ("critical", "disk_failing", "wwn:1", "sda is failing"),
            ("warning", "filesystem_full", "/", "/ is 91% full"),
        ]);
        assert_eq!(v.level, Level::Critical);
        let order: Vec<&str> = v.reasons.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(order, ["disk_failing", "filesystem_full", "app_outdated"]);
        assert_eq!(appliance([("info", "x", "", "")]).level, Level::Ok);
        assert_eq!(appliance([("bogus", "x", "", "")]).level, Level::Critical);
    }
}
