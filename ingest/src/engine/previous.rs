//! What rules judged by change need from an appliance's previous report (drive counts, NIC
//! counters, recent filesystem use), moved forward report by report through a batch and kept
//! with the appliance's current state ([`RuleState`]), so the write path reads history only for
//! an appliance whose kept state is missing or stale.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::changes::{Before, Changes, DriveEventKind};
use crate::alerts::{self as rules, AlertsConfig, Finding, Rule, Severity};
use crate::model::{DriveSample, NicRow, PreparedReport};

/// The appliance's previous report as rules judged by change need it, moved forward report by
/// report through the batch: drive counts by drive, NIC counters by name, and filesystem use
/// over the last reports for the fill trend.
#[derive(Debug, Default, Clone)]
pub struct Previous {
    drives: HashMap<i32, HashMap<i32, DriveSample>>,
    nics: HashMap<i32, HashMap<String, NicRow>>,
    filesystems: HashMap<(i32, String), Vec<UsedAt>>,
}

/// (collected at, bytes used) of one filesystem in one report.
type UsedAt = (DateTime<Utc>, i64);

/// An appliance's previous report read back from its kept bodies (its kept state was missing
/// or stale): drive samples by drive id, NIC rows, and filesystem points (mount, at, used).
#[derive(Debug, Default, Clone)]
pub struct History {
    pub drives: Vec<(i32, i32, DriveSample)>,
    pub nics: Vec<(i32, NicRow)>,
    pub filesystems: Vec<(i32, String, DateTime<Utc>, i64)>,
}

impl Previous {
    /// Adds what storage read back from history for appliances without a usable kept state.
    pub fn add_history(&mut self, history: History) {
        for (appliance, drive, sample) in history.drives {
            self.drives
                .entry(appliance)
                .or_default()
                .insert(drive, sample);
        }
        for (appliance, nic) in history.nics {
            self.nics
                .entry(appliance)
                .or_default()
                .insert(nic.name.clone(), nic);
        }
        for (appliance, mount, at, used) in history.filesystems {
            self.filesystems
                .entry((appliance, mount))
                .or_default()
                .push((at, used));
        }
    }

    /// Every finding for report `r`: its own (from `prepare`) and those judged against the
    /// previous report or this batch's events.
    pub fn findings(
        &self,
        config: &AlertsConfig,
        b: &Before,
        r: &PreparedReport,
        drive_ids: &HashMap<String, i32>,
        key_of: &HashMap<i32, &str>,
        changes: &Changes,
    ) -> Vec<Finding> {
        let mut out = r.findings.clone();
        if let Some(previous) = self.drives.get(&b.id) {
            for d in &r.drives {
                let prev = drive_ids.get(&d.key).and_then(|id| previous.get(id));
                if let Some(f) = prev.and_then(|p| rules::degrading(d, p)) {
                    out.push(f);
                }
            }
        }
        if let Some(previous) = self.nics.get(&b.id) {
            let rebooted = matches!((b.boot_id, r.boot_id), (Some(x), Some(y)) if x != y);
            for n in &r.nics {
                if let Some(f) = previous
                    .get(&n.name)
                    .and_then(|p| rules::nic_errors(config, n, p, rebooted))
                {
                    out.push(f);
                }
            }
        }
        for e in changes
            .drive_events
            .iter()
            .filter(|e| e.report_id == r.report_id && e.kind == DriveEventKind::Disappeared)
        {
            let key = key_of.get(&e.drive_id).copied().unwrap_or_default();
            out.push(Finding {
                rule: Rule::DiskMissing,
                subject: key.to_owned(),
                severity: Severity::Warning,
                value: format!("last seen as {}", e.device_name),
                summary: format!(
                    "drive {key} (last seen as {}) is no longer reported",
                    e.device_name
                ),
            });
        }
        for e in changes
            .identity_events
            .iter()
            .filter(|e| e.report_id == r.report_id)
        {
            let kind = e.kind.as_str();
            let (subject, summary) = match &e.other_serial {
                Some(other) => (
                    format!("{kind}:{}", e.new_value),
                    format!(
                        "{} reports {} {} like {other}: a cloned image?",
                        e.serial,
                        e.kind.noun(),
                        e.new_value
                    ),
                ),
                None => (
                    kind.to_owned(),
                    format!(
                        "{} now reports {} {} (was {}): chassis or board swapped, or re-imaged?",
                        e.serial,
                        e.kind.noun(),
                        e.new_value,
                        e.old_value.as_deref().unwrap_or("?")
                    ),
                ),
            };
            out.push(Finding {
                rule: Rule::IdentityConflict,
                subject,
                severity: Severity::Warning,
                value: e.new_value.clone(),
                summary,
            });
        }
        if config.filesystem_filling.enabled {
            let n = trend_points(config);
            for f in &r.filesystems {
                let Some(history) = self.filesystems.get(&(b.id, f.mount_point.clone())) else {
                    continue;
                };
                let mut points: Vec<(DateTime<Utc>, i64)> =
                    history.iter().filter(|(t, _)| *t < r.at).copied().collect();
                points.push((r.at, f.bytes_used));
                let points = &points[points.len().saturating_sub(n)..];
                let origin = points[0].0;
                let xy: Vec<(f64, f64)> = points
                    .iter()
                    .map(|(t, used)| {
                        (
                            t.signed_duration_since(origin).num_seconds() as f64 / 86_400.0,
                            *used as f64,
                        )
                    })
                    .collect();
                if let Some(days) = rules::days_to_full(&xy, f.bytes_total as f64) {
                    if days <= config.filesystem_filling.days {
                        out.push(Finding {
                            rule: Rule::FilesystemFilling,
                            subject: f.mount_point.clone(),
                            severity: Severity::Warning,
                            value: format!("full in {days:.1} days"),
                            summary: format!(
                                "{} will be full in {days:.1} days at the rate of its last {} reports",
                                f.mount_point,
                                points.len()
                            ),
                        });
                    }
                }
            }
        }
        out
    }

    /// Makes report `r` the previous one for what follows in the batch.
    pub fn advance(
        &mut self,
        config: &AlertsConfig,
        appliance: i32,
        r: &PreparedReport,
        drive_ids: &HashMap<String, i32>,
    ) {
        self.drives.insert(
            appliance,
            r.drives
                .iter()
                .filter_map(|d| drive_ids.get(&d.key).map(|id| (*id, d.sample.clone())))
                .collect(),
        );
        self.nics.insert(
            appliance,
            r.nics.iter().map(|n| (n.name.clone(), n.clone())).collect(),
        );
        if r.filesystems_complete {
            // A filesystem no longer mounted leaves the trend; one missing only because the
            // section failed keeps its points.
            self.filesystems.retain(|(a, mount), _| {
                *a != appliance || r.filesystems.iter().any(|f| &f.mount_point == mount)
            });
        }
        let keep = trend_points(config);
        let window = trend_window(config);
        for f in &r.filesystems {
            let points = self
                .filesystems
                .entry((appliance, f.mount_point.clone()))
                .or_default();
            // As far back as the history path looks, no further: an appliance back after
            // months away starts a new trend.
            points.retain(|(t, _)| r.at.signed_duration_since(*t) <= window);
            // A second report of the same moment (a re-sent report under a new id) replaces
            // the point rather than weighting it twice.
            if points.last().is_some_and(|(t, _)| *t == r.at) {
                points.pop();
            }
            points.push((r.at, f.bytes_used));
            let excess = points.len().saturating_sub(keep);
            points.drain(..excess);
        }
    }

    /// Starts from the states kept with the batch's appliances.
    pub fn from_states<'a>(states: impl Iterator<Item = (i32, &'a RuleState)>) -> Self {
        let mut out = Previous::default();
        for (appliance, s) in states {
            out.drives.insert(
                appliance,
                s.drives
                    .iter()
                    .map(|d| {
                        let sample = DriveSample {
                            reallocated_sectors: d.reallocated,
                            pending_sectors: d.pending,
                            offline_uncorrectable: d.offline_uncorrectable,
                            crc_errors: d.crc,
                            nvme_media_errors: d.media_errors,
                            scsi_grown_defects: d.grown_defects,
                            error_log_entries: d.error_log,
                            facts: d.facts,
                            ..DriveSample::default()
                        };
                        (d.id, sample)
                    })
                    .collect(),
            );
            out.nics.insert(
                appliance,
                s.nics
                    .iter()
                    .map(|n| {
                        let row = NicRow {
                            name: n.name.clone(),
                            rx_bytes: None,
                            tx_bytes: None,
                            rx_errors: n.rx_errors,
                            tx_errors: n.tx_errors,
                            rx_dropped: n.rx_dropped,
                            tx_dropped: n.tx_dropped,
                        };
                        (n.name.clone(), row)
                    })
                    .collect(),
            );
            for f in &s.filesystems {
                let points =
                    f.at.iter()
                        .zip(&f.used)
                        .filter_map(|(t, used)| Some((DateTime::from_timestamp_micros(*t)?, *used)))
                        .collect();
                out.filesystems
                    .insert((appliance, f.mount_point.clone()), points);
            }
        }
        out
    }

    /// What to keep with the appliance for its next report, after the batch moved it forward to
    /// the report collected `at`.
    pub fn state(
        &self,
        appliance: i32,
        at: DateTime<Utc>,
        key_of: &HashMap<i32, &str>,
    ) -> RuleState {
        let mut drives: Vec<DriveState> = self
            .drives
            .get(&appliance)
            .into_iter()
            .flatten()
            .filter_map(|(id, s)| {
                Some(DriveState {
                    key: (*key_of.get(id)?).to_owned(),
                    id: *id,
                    reallocated: s.reallocated_sectors,
                    pending: s.pending_sectors,
                    offline_uncorrectable: s.offline_uncorrectable,
                    crc: s.crc_errors,
                    media_errors: s.nvme_media_errors,
                    grown_defects: s.scsi_grown_defects,
                    error_log: s.error_log_entries,
                    facts: s.facts,
                })
            })
            .collect();
        drives.sort_by_key(|d| d.id);
        let mut nics: Vec<NicState> = self
            .nics
            .get(&appliance)
            .into_iter()
            .flatten()
            .map(|(name, n)| NicState {
                name: name.clone(),
                rx_errors: n.rx_errors,
                tx_errors: n.tx_errors,
                rx_dropped: n.rx_dropped,
                tx_dropped: n.tx_dropped,
            })
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        let mut filesystems: Vec<FilesystemState> = self
            .filesystems
            .iter()
            .filter(|((a, _), _)| *a == appliance)
            .map(|((_, mount), points)| FilesystemState {
                mount_point: mount.clone(),
                at: points.iter().map(|(t, _)| t.timestamp_micros()).collect(),
                used: points.iter().map(|(_, u)| *u).collect(),
            })
            .collect();
        filesystems.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        RuleState {
            at: at.timestamp_micros(),
            drives,
            nics,
            filesystems,
        }
    }
}

/// Points of a filesystem's fill trend: the current report and the ones before it.
pub fn trend_points(config: &AlertsConfig) -> usize {
    config.filesystem_filling.reports.max(3) as usize
}

/// How far back a fill trend's points may reach: two days per point, room for gaps in a daily
/// collector's reports.
pub fn trend_window(config: &AlertsConfig) -> chrono::Duration {
    chrono::Duration::try_days(i64::from(config.filesystem_filling.reports).saturating_mul(2))
        .unwrap_or(chrono::Duration::MAX)
}

/// What the rules judged by change need from an appliance's newest report, kept in
/// `appliances.rule_state` (zstd-compressed JSON, about 300 bytes) so that a batch gets it with
/// the row it locks instead of reading history. Field names are short because the row is
/// rewritten with every report
/// (`d` drives: `k` key, `i` id, `r` reallocated, `p` pending, `o` offline uncorrectable, `c`
/// CRC errors, `m` media errors, `g` grown defects, `e` error-log entries, `v` a digest of the
/// verdict's reasons; `n` NICs: `n` name, `re`/`te` rx/tx
/// errors, `rd`/`td` rx/tx dropped; `f` filesystems: `m` mount point, `t` report times in Unix
/// microseconds, `u` bytes used; `at`: the collected_at, in Unix microseconds, of the report it
/// describes). Optional values may be missing; a state without its required fields does not
/// decode, and the appliance is then judged against its history.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Which report this state describes: a state that is not the appliance's newest report's
    /// (written by an older ingest that did not keep it up to date) is ignored.
    #[serde(default)]
    pub at: i64,
    #[serde(default, rename = "d")]
    pub drives: Vec<DriveState>,
    #[serde(default, rename = "n")]
    pub nics: Vec<NicState>,
    #[serde(default, rename = "f")]
    pub filesystems: Vec<FilesystemState>,
}

/// A drive's counts in the newest report, with its id so the batch need not look the key up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveState {
    #[serde(rename = "k")]
    pub key: String,
    #[serde(rename = "i")]
    pub id: i32,
    #[serde(default, rename = "r", skip_serializing_if = "Option::is_none")]
    pub reallocated: Option<i32>,
    #[serde(default, rename = "p", skip_serializing_if = "Option::is_none")]
    pub pending: Option<i32>,
    #[serde(default, rename = "o", skip_serializing_if = "Option::is_none")]
    pub offline_uncorrectable: Option<i32>,
    #[serde(default, rename = "c", skip_serializing_if = "Option::is_none")]
    pub crc: Option<i32>,
    #[serde(default, rename = "m", skip_serializing_if = "Option::is_none")]
    pub media_errors: Option<i64>,
    #[serde(default, rename = "g", skip_serializing_if = "Option::is_none")]
    pub grown_defects: Option<i64>,
    #[serde(default, rename = "e", skip_serializing_if = "Option::is_none")]
    pub error_log: Option<i64>,
    #[serde(default, rename = "v", skip_serializing_if = "Option::is_none")]
    pub facts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicState {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(default, rename = "re", skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<i64>,
    #[serde(default, rename = "te", skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<i64>,
    #[serde(default, rename = "rd", skip_serializing_if = "Option::is_none")]
    pub rx_dropped: Option<i64>,
    #[serde(default, rename = "td", skip_serializing_if = "Option::is_none")]
    pub tx_dropped: Option<i64>,
}

/// A filesystem's recent use for the fill trend: report times (Unix microseconds) and bytes used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesystemState {
    #[serde(rename = "m")]
    pub mount_point: String,
    #[serde(rename = "t")]
    pub at: Vec<i64>,
    #[serde(rename = "u")]
    pub used: Vec<i64>,
}

/// Far above any real appliance's state (a few hundred drives and mounts); a bigger frame is
/// refused rather than allocated.
const MAX_STATE_BYTES: usize = 4 << 20;

type StateCodec = (
    zstd::bulk::Compressor<'static>,
    zstd::bulk::Decompressor<'static>,
);

thread_local! {
    // One context pair per thread: creating a zstd context costs more than compressing a state.
    static STATE_CODEC: std::cell::RefCell<StateCodec> = std::cell::RefCell::new((
        zstd::bulk::Compressor::new(1).expect("zstd compression context"),
        zstd::bulk::Decompressor::new().expect("zstd decompression context"),
    ));
}

impl RuleState {
    /// The column's bytes: JSON, zstd-compressed (level 1: the row is rewritten per report).
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        // Plain JSON is read back as well (it starts with `{`, a zstd frame never does).
        STATE_CODEC
            .with_borrow_mut(|(c, _)| c.compress(&json))
            .unwrap_or(json)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let json = if bytes.starts_with(b"{") {
            bytes.to_vec()
        } else {
            // The frame says its size (encode writes it); allocating the maximum instead
            // would make the kernel zero megabytes per appliance.
            let size = zstd::zstd_safe::get_frame_content_size(bytes)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_STATE_BYTES)
                .ok_or("not a zstd frame of a known size below 4 MiB")?;
            STATE_CODEC
                .with_borrow_mut(|(_, d)| d.decompress(bytes, size))
                .map_err(|e| format!("not zstd: {e}"))?
        };
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    }

    /// Drive key → id for every drive this state knows.
    pub fn drive_ids(&self) -> impl Iterator<Item = (&str, i32)> {
        self.drives.iter().map(|d| (d.key.as_str(), d.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_state_round_trips_through_its_column_bytes() {
        let state = RuleState {
            at: 1_794_898_402_123_456,
            drives: vec![DriveState {
                key: "wwn:0x5000c500a1b2c3d4".into(),
                id: 7,
                reallocated: Some(24),
                pending: Some(0),
                offline_uncorrectable: None,
                crc: Some(3),
                media_errors: None,
                grown_defects: None,
                error_log: Some(131),
                facts: Some(u64::MAX),
            }],
            nics: vec![NicState {
                name: "eno1".into(),
                rx_errors: Some(2),
                tx_errors: Some(0),
                rx_dropped: Some(57),
                tx_dropped: None,
            }],
            filesystems: vec![FilesystemState {
                mount_point: "/data".into(),
                at: vec![1_794_812_002_000_000, 1_794_898_402_123_456],
                used: vec![1_212_129_627_776, 1_220_129_627_776],
            }],
        };
        let bytes = state.encode();
        assert!(!bytes.starts_with(b"{"), "stored compressed");
        assert_eq!(RuleState::decode(&bytes), Ok(state.clone()));
        // Plain JSON (hand-written by an operator, or from a future writer) reads too, and
        // optional fields it lacks read as absent.
        assert_eq!(
            RuleState::decode(br#"{"d":[{"k":"sn:X/1","i":3}]}"#).map(|s| s.drives[0].id),
            Ok(3)
        );
        assert!(RuleState::decode(b"garbage").is_err());
    }
}
