//! A report turned into the rows the history model keeps. This runs on the request's own task,
//! before the report joins a write batch, so the writer only moves rows and both cores share the
//! compression work.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use phonehome_schema::{Report, SmartDevice};

use crate::alerts::AlertsConfig;
pub use crate::model::{
    CurrentState, DriveRow, DriveSample, FilesystemRow, NicRow, PreparedReport,
};

/// Counters are u64 in the report and bigint in PostgreSQL; a value past i64::MAX is garbage
/// from a broken drive or driver, kept verbatim in the body and saturated here rather than
/// failing the whole batch.
fn big(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// ATA counts are kept as integer; see `big`.
fn count(v: Option<u64>) -> Option<i32> {
    v.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

fn big_required(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The raw value of ATA attribute `id`, when the drive reports it.
fn attribute_raw(d: &SmartDevice, id: u8) -> Option<u64> {
    d.attributes.iter().find(|a| a.id == id).and_then(|a| a.raw)
}

/// What `evidence` says in a body kept without smartctl's output.
pub const EVIDENCE_OMITTED: &str =
    "omitted: the facts behind this drive's verdict are those of the appliance's previous report";

/// The report's JSON with every drive's `evidence` (smartctl's full output) replaced by a note
/// saying it was omitted; `None` when no drive carried any. Keys come out sorted: the body is
/// the same document, no longer the same bytes.
pub fn without_evidence(body: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut omitted = false;
    for d in v.pointer_mut("/smart/devices")?.as_array_mut()?.iter_mut() {
        if let Some(e) = d.get_mut("evidence").filter(|e| !e.is_null()) {
            *e = serde_json::Value::String(EVIDENCE_OMITTED.to_owned());
            omitted = true;
        }
    }
    omitted.then(|| v.to_string())
}

/// The drive's stable key, if it has an identity at all.
pub fn drive_key(d: &SmartDevice) -> Option<String> {
    let clean = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(wwn) = clean(&d.wwn) {
        let wwn: String = wwn
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        return Some(format!("wwn:{wwn}"));
    }
    let serial = clean(&d.serial)?;
    let model = clean(&d.model).unwrap_or_default();
    Some(format!("sn:{model}/{serial}"))
}

/// What a report says about one drive, as rules, charts and reliability read it; the same
/// conversion serves the write path and the readers of kept bodies (`readings.rs`).
pub(super) fn drive_sample(d: &SmartDevice, verdict: &crate::verdict::DriveVerdict) -> DriveSample {
    let nvme = d.nvme.as_ref();
    let scsi = d.scsi.as_ref();
    let scsi_uncorrected = scsi.and_then(|s| {
        let parts = [&s.read, &s.write, &s.verify]
            .into_iter()
            .filter_map(|c| c.as_ref().and_then(|c| c.uncorrected))
            .collect::<Vec<_>>();
        (!parts.is_empty()).then(|| parts.into_iter().fold(0u64, u64::saturating_add))
    });
    DriveSample {
        power_on_hours: d
            .power_on_hours
            .map(|h| i32::try_from(h).unwrap_or(i32::MAX)),
        // Sensor garbage (-273, 65535) is kept in the body, not charted as a reading.
        temperature_celsius: phonehome_schema::plausible_celsius(d.temperature_celsius)
            .and_then(|t| i16::try_from(t).ok()),
        nvme_critical_warning: nvme.and_then(|n| n.critical_warning).map(i16::from),
        nvme_available_spare: nvme.and_then(|n| n.available_spare_percent).map(i16::from),
        nvme_percentage_used: nvme.and_then(|n| n.percentage_used).map(i16::from),
        health_passed: d.health_passed,
        // The ingest's own verdict, the one `disk_failing` fires on, not the collector's flag
        // (which also counts an error log with old entries).
        failing: verdict.failing(),
        reallocated_sectors: count(d.reallocated_sectors),
        pending_sectors: count(d.pending_sectors),
        offline_uncorrectable: count(d.uncorrectable_errors),
        crc_errors: count(d.crc_errors),
        nvme_media_errors: big(nvme.and_then(|n| n.media_errors)),
        scsi_grown_defects: big(scsi.and_then(|s| s.grown_defects)),
        scsi_uncorrected: big(scsi_uncorrected),
        facts: Some(verdict.facts()),
        reported_uncorrect: count(attribute_raw(d, 187)),
        command_timeout: count(attribute_raw(d, 188)),
        error_log_entries: big(d
            .error_log
            .as_ref()
            .and_then(|l| l.count)
            .or_else(|| nvme.and_then(|n| n.error_log_entries))),
    }
}

/// The report's filesystems, one per mount point (the first wins).
pub(super) fn filesystem_rows(report: &Report) -> Vec<FilesystemRow> {
    let mut filesystems: Vec<FilesystemRow> = Vec::new();
    for f in &report.filesystems.filesystems {
        if filesystems.iter().any(|r| r.mount_point == f.mount_point) {
            continue;
        }
        filesystems.push(FilesystemRow {
            mount_point: f.mount_point.clone(),
            bytes_total: big_required(f.bytes_total),
            bytes_used: big_required(f.bytes_used),
            inodes_total: big_required(f.inodes_total),
            inodes_used: big_required(f.inodes_used),
        });
    }
    filesystems
}

/// The report's NICs, one per name (the first wins).
pub(super) fn nic_rows(report: &Report) -> Vec<NicRow> {
    let mut nics: Vec<NicRow> = Vec::new();
    for n in &report.nics.nics {
        if nics.iter().any(|r| r.name == n.name) {
            continue;
        }
        let c = |name: &str| big(n.counters.get(name).copied());
        nics.push(NicRow {
            name: n.name.clone(),
            rx_bytes: c("rx_bytes"),
            tx_bytes: c("tx_bytes"),
            rx_errors: c("rx_errors"),
            tx_errors: c("tx_errors"),
            rx_dropped: c("rx_dropped"),
            tx_dropped: c("tx_dropped"),
        });
    }
    nics
}

/// The rows of `report`; `body` is the compressed JSON and its dictionary.
pub fn prepare(
    report: &Report,
    cert_sha256: &[u8],
    received_at: DateTime<Utc>,
    body: (Vec<u8>, Option<i16>),
    alerts: &AlertsConfig,
) -> PreparedReport {
    // Each drive is judged once, for its sample, the appliance's counts and the alerts.
    let verdicts = alerts.drive_verdicts(report);
    let mut drives: Vec<DriveRow> = Vec::new();
    let mut unidentified_devices = Vec::new();
    for (d, verdict) in report.smart.devices.iter().zip(&verdicts) {
        match drive_key(d) {
            // One drive seen through two paths (multipath, a RAID controller's pass-through)
            // is still one drive.
            Some(key) if !drives.iter().any(|r| r.key == key) => drives.push(DriveRow {
                key,
                model: d.model.clone(),
                serial: d.serial.clone(),
                wwn: d.wwn.clone(),
                firmware: d.firmware.clone(),
                protocol: d.protocol.clone(),
                capacity_bytes: big(d.capacity_bytes),
                device_name: d.name.clone(),
                evidence: d.evidence.is_some(),
                level: verdict.level,
                sample: drive_sample(d, verdict),
            }),
            Some(_) => {}
            None => unidentified_devices.push(d.name.clone()),
        }
    }
    // An error naming a device (a RAID member that timed out) leaves that device unidentified;
    // one naming no device (smartctl missing, the scan failed) leaves every drive unaccounted.
    let mut smart_complete = true;
    for e in &report.smart.errors {
        match e.item.strip_prefix("/dev/") {
            Some(_) => unidentified_devices.push(
                e.item
                    .split_whitespace()
                    .next()
                    .unwrap_or(&e.item)
                    .to_owned(),
            ),
            None => smart_complete = false,
        }
    }
    let filesystems = filesystem_rows(report);
    let nics = nic_rows(report);
    let collection_errors = [
        report.identity.errors.len(),
        report.system.errors.len(),
        report.smart.errors.len(),
        report.filesystems.errors.len(),
        report.nics.errors.len(),
        report.app.errors.len(),
    ]
    .into_iter()
    .fold(0usize, usize::saturating_add);
    let os = report.system.os.as_ref().and_then(|o| {
        o.pretty_name
            .clone()
            .or_else(|| match (&o.id, &o.version_id) {
                (Some(id), Some(v)) => Some(format!("{id} {v}")),
                (Some(id), None) => Some(id.clone()),
                _ => None,
            })
    });
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let state = CurrentState {
        hostname: report.identity.hostname.clone(),
        system_uuid: report.identity.system_uuid,
        machine_id: report.identity.machine_id.clone(),
        app_version: report.app.version.clone(),
        app_status: report.app.status.as_str(),
        os,
        kernel: report.system.kernel.clone(),
        collector_version: report.collector.version.clone(),
        drive_count: count(report.smart.devices.len()),
        failing_drive_count: count(verdicts.iter().filter(|v| v.failing()).count()),
        warning_drive_count: count(
            verdicts
                .iter()
                .zip(&report.smart.devices)
                .filter(|(v, d)| !d.in_standby && v.level == crate::verdict::Level::Warning)
                .count(),
        ),
        filesystem_count: count(filesystems.len()),
        nic_count: count(nics.len()),
        collection_errors: count(collection_errors),
        dropped_reports: big_required(report.collector.dropped_reports),
    };
    // A clock running ahead shows in a report collected after it arrived; one running behind
    // cannot be told from a report that waited in a spool, unless the collector dated its
    // request (`note_sent_at`).
    let ahead = report
        .collected_at
        .signed_duration_since(received_at)
        .num_seconds();
    let mut prepared = PreparedReport {
        serial: report.identity.serial.as_str().to_owned(),
        report_id: report.report_id,
        collected_at: report.collected_at,
        received_at,
        at: report.collected_at.min(received_at),
        clock_skew_seconds: (ahead > 0).then_some(ahead),
        cert_sha256: cert_sha256.to_vec(),
        cert_not_after: None,
        body: body.0,
        body_without_evidence: None,
        body_dictionary: body.1,
        state,
        drives,
        unidentified_devices,
        smart_complete,
        filesystems,
        nics,
        boot_id: report.identity.boot_id,
        filesystems_complete: report.filesystems.errors.is_empty(),
        nics_complete: report.nics.errors.is_empty(),
        findings: alerts.evaluate(report, &verdicts, drive_key),
    };
    prepared.judge_clock(alerts);
    prepared
}

impl PreparedReport {
    /// The collector dated its request `sent_at` (HTTP `Date`): the difference from when it
    /// arrived is the appliance's clock skew, whether the report is fresh or from a spool.
    pub fn note_sent_at(&mut self, sent_at: DateTime<Utc>, alerts: &AlertsConfig) {
        // The request took some time to arrive; a Date has whole seconds.
        let skew = sent_at
            .signed_duration_since(self.received_at)
            .num_seconds();
        self.clock_skew_seconds = Some(skew);
        self.judge_clock(alerts);
    }

    /// The certificate the report arrived with ends at `not_after`: judged against
    /// `certificate_expiring`, with the renewal error the collector reported.
    pub fn note_certificate(
        &mut self,
        not_after: DateTime<Utc>,
        renewal_error: Option<&str>,
        alerts: &AlertsConfig,
    ) {
        self.cert_not_after = Some(not_after);
        self.findings
            .retain(|f| f.rule != crate::alerts::Rule::CertificateExpiring);
        self.findings.extend(crate::alerts::certificate_expiring(
            alerts,
            not_after,
            self.received_at,
            renewal_error,
        ));
    }

    fn judge_clock(&mut self, alerts: &AlertsConfig) {
        self.findings
            .retain(|f| f.rule != crate::alerts::Rule::ClockSkew);
        self.findings
            .extend(crate::alerts::clock_skew(alerts, self.clock_skew_seconds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../schema/examples/report.json");

    fn example() -> Report {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn drives_are_keyed_by_wwn_then_model_and_serial_never_by_dev_name() {
        let mut d = example().smart.devices[0].clone();
        d.wwn = Some("0x5000C500 A1B2C3D4".into());
        assert_eq!(drive_key(&d).unwrap(), "wwn:0x5000c500a1b2c3d4");
        d.wwn = None;
        d.model = Some("ST4000NM0035".into());
        d.serial = Some(" ZC1234 ".into());
        assert_eq!(drive_key(&d).unwrap(), "sn:ST4000NM0035/ZC1234");
        d.name = "/dev/sdz".into();
        assert_eq!(drive_key(&d).unwrap(), "sn:ST4000NM0035/ZC1234");
        d.serial = Some("  ".into());
        assert_eq!(drive_key(&d), None);
    }

    #[test]
    fn the_example_report_becomes_the_rows_alerts_need() {
        let r = example();
        let p = prepare(
            &r,
            &[7; 32],
            Utc::now(),
            (vec![1, 2, 3], None),
            &AlertsConfig::default(),
        );
        assert_eq!(p.serial, r.identity.serial.as_str());
        assert_eq!(p.filesystems.len(), r.filesystems.filesystems.len());
        assert_eq!(p.nics.len(), r.nics.nics.len());
        // The standby drive has no identity in its output; it must not count as a new drive.
        let standby: Vec<_> = r.smart.devices.iter().filter(|d| d.in_standby).collect();
        // ... nor must the RAID member whose read timed out.
        assert_eq!(
            p.unidentified_devices.len(),
            standby.len() + r.smart.errors.len()
        );
        assert!(p.unidentified_devices.contains(&"/dev/bus/0".to_owned()));
        assert!(p.smart_complete);
        assert_eq!(p.drives.len() + standby.len(), r.smart.devices.len());
        let ata = r
            .smart
            .devices
            .iter()
            .find(|d| d.protocol.as_deref() == Some("ATA") && !d.in_standby)
            .unwrap();
        let row = p
            .drives
            .iter()
            .find(|row| row.device_name == ata.name)
            .unwrap();
        assert_eq!(
            row.sample.reallocated_sectors,
            ata.reallocated_sectors.map(|v| v as i32)
        );
        assert_eq!(
            row.sample.power_on_hours,
            ata.power_on_hours.map(|v| v as i32)
        );
        let nvme = p
            .drives
            .iter()
            .find(|row| row.sample.nvme_percentage_used.is_some())
            .unwrap();
        assert!(nvme.sample.nvme_available_spare.is_some());
        assert_eq!(p.state.collector_version, r.collector.version);
    }

    #[test]
    fn garbage_counters_saturate_instead_of_failing_the_batch() {
        let mut r = example();
        r.smart.devices[0].power_on_hours = Some(u64::MAX);
        r.smart.devices[0].reallocated_sectors = Some(u64::MAX);
        r.smart.devices[0].temperature_celsius = Some(1 << 40);
        r.filesystems.filesystems[0].bytes_total = u64::MAX;
        let p = prepare(
            &r,
            &[0; 32],
            Utc::now(),
            (vec![], None),
            &AlertsConfig::default(),
        );
        let d = &p.drives[0].sample;
        assert_eq!(d.power_on_hours, Some(i32::MAX));
        assert_eq!(d.reallocated_sectors, Some(i32::MAX));
        assert_eq!(
            d.temperature_celsius, None,
            "not a temperature: not charted"
        );
        assert_eq!(p.filesystems[0].bytes_total, i64::MAX);
    }

    #[test]
    fn a_drive_seen_twice_is_one_drive() {
        let mut r = example();
        let mut twin = r.smart.devices[0].clone();
        twin.name = "/dev/bus/0".into();
        r.smart.devices.push(twin);
        let p = prepare(
            &r,
            &[0; 32],
            Utc::now(),
            (vec![], None),
            &AlertsConfig::default(),
        );
        let keys: std::collections::HashSet<_> = p.drives.iter().map(|d| &d.key).collect();
        assert_eq!(keys.len(), p.drives.len());
    }
}
