//! Reads behind the operations JSON API: alerts, the fleet's current state, and one appliance's
//! current state with its recent history. Every query starts from an indexed key (alert id,
//! serial, `appliance_id` with `collected_at`), so a page costs the same with a million
//! appliances as with three. The history's readings are decoded from the kept report bodies
//! (`readings.rs`), at most [`readings::BODIES_PER_DAY`] a day of the window.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use phonehome_dashboard as d;

use super::readings::{self, Readings};
use super::{Storage, StorageError};
use crate::model::{DriveSample, FilesystemRow, NicRow};

/// One alert episode, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: i64,
    pub fingerprint: String,
    pub rule: String,
    pub serial: String,
    pub subject: String,
    pub severity: d::Severity,
    pub state: d::AlertState,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub value: String,
    pub summary: String,
    /// How often the condition cleared and came back within `reopen_within_hours`.
    pub reopened: i32,
}

/// An appliance's current state (the `appliances` row) with what the API derives from it.
#[derive(Debug, Clone, Serialize)]
pub struct ApplianceState {
    pub serial: String,
    pub hostname: Option<String>,
    pub last_report_at: DateTime<Utc>,
    pub last_collected_at: DateTime<Utc>,
    pub app_version: Option<String>,
    pub app_status: String,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub collector_version: String,
    pub report_count: i64,
    pub drive_count: i32,
    pub failing_drive_count: i32,
    pub filesystem_count: i32,
    pub nic_count: i32,
    pub collection_errors: i32,
    pub dropped_reports: i64,
    /// No report received for longer than the `appliance_silent` threshold.
    pub silent: bool,
    pub firing_alerts: i64,
    /// The worst severity among its firing alerts.
    pub health: phonehome_dashboard::Health,
}

/// One drive reading: what one report said about one drive.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReading {
    pub collected_at: DateTime<Utc>,
    pub temperature_celsius: Option<i16>,
    pub power_on_hours: Option<i32>,
    pub health_passed: Option<bool>,
    pub failing: bool,
    pub reallocated_sectors: Option<i32>,
    pub pending_sectors: Option<i32>,
    pub offline_uncorrectable: Option<i32>,
    pub crc_errors: Option<i32>,
    pub nvme_critical_warning: Option<i16>,
    pub nvme_percentage_used: Option<i16>,
    pub nvme_available_spare: Option<i16>,
    pub nvme_media_errors: Option<i64>,
    pub scsi_grown_defects: Option<i64>,
    pub scsi_uncorrected: Option<i64>,
}

impl DriveReading {
    /// What `sample`, taken at `at`, shows.
    pub(super) fn new(at: DateTime<Utc>, sample: &DriveSample) -> Self {
        DriveReading {
            collected_at: at,
            temperature_celsius: sample.temperature_celsius,
            power_on_hours: sample.power_on_hours,
            health_passed: sample.health_passed,
            failing: sample.failing,
            reallocated_sectors: sample.reallocated_sectors,
            pending_sectors: sample.pending_sectors,
            offline_uncorrectable: sample.offline_uncorrectable,
            crc_errors: sample.crc_errors,
            nvme_critical_warning: sample.nvme_critical_warning,
            nvme_percentage_used: sample.nvme_percentage_used,
            nvme_available_spare: sample.nvme_available_spare,
            nvme_media_errors: sample.nvme_media_errors,
            scsi_grown_defects: sample.scsi_grown_defects,
            scsi_uncorrected: sample.scsi_uncorrected,
        }
    }
}

/// A drive now in the appliance (an open membership) and its newest sample.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentDrive {
    /// WWN, else model and serial: the drive's identity across reboots and appliances.
    pub drive_key: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub device_name: String,
    /// collected_at of the first report that showed it in this appliance.
    pub since: DateTime<Utc>,
    pub latest: Option<DriveReading>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemPoint {
    pub collected_at: DateTime<Utc>,
    pub bytes_used: i64,
    pub bytes_total: i64,
    pub inodes_used: i64,
    pub inodes_total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemReading {
    pub mount_point: String,
    #[serde(flatten)]
    pub sample: FilesystemPoint,
}

#[derive(Debug, Clone, Serialize)]
pub struct NicPoint {
    pub collected_at: DateTime<Utc>,
    pub rx_bytes: Option<i64>,
    pub tx_bytes: Option<i64>,
    pub rx_errors: Option<i64>,
    pub tx_errors: Option<i64>,
    pub rx_dropped: Option<i64>,
    pub tx_dropped: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NicReading {
    pub name: String,
    #[serde(flatten)]
    pub sample: NicPoint,
}

/// One stored report, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub report_id: uuid::Uuid,
    pub collected_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub app_status: String,
    pub app_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriveSeries {
    pub drive_key: String,
    /// Oldest first.
    pub samples: Vec<DriveReading>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemSeries {
    pub mount_point: String,
    pub samples: Vec<FilesystemPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NicSeries {
    pub name: String,
    pub samples: Vec<NicPoint>,
}

/// Everything collected since `since`, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub days: u32,
    pub since: DateTime<Utc>,
    pub reports: Vec<ReportSummary>,
    pub drives: Vec<DriveSeries>,
    pub filesystems: Vec<FilesystemSeries>,
    pub nics: Vec<NicSeries>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionChange {
    pub component: String,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub report_id: uuid::Uuid,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriveEvent {
    pub kind: String,
    pub drive_key: String,
    pub device_name: String,
    /// For `moved`: the appliance the drive was in before.
    pub from_serial: Option<String>,
    pub at: DateTime<Utc>,
    pub report_id: uuid::Uuid,
    pub detected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityEvent {
    pub kind: String,
    pub old_value: Option<String>,
    pub new_value: String,
    pub other_serial: Option<String>,
    pub report_id: uuid::Uuid,
    pub detected_at: DateTime<Utc>,
}

/// One appliance: its current state, what it holds now, and its recent history.
#[derive(Debug, Clone, Serialize)]
pub struct ApplianceDetail {
    #[serde(flatten)]
    pub state: ApplianceState,
    pub drives: Vec<CurrentDrive>,
    pub filesystems: Vec<FilesystemReading>,
    pub nics: Vec<NicReading>,
    pub history: History,
    /// Newest first.
    pub versions: Vec<VersionChange>,
    /// Newest first.
    pub drive_events: Vec<DriveEvent>,
    /// Newest first.
    pub identity_events: Vec<IdentityEvent>,
    /// Every firing alert and the newest resolved ones, newest first.
    pub alerts: Vec<Alert>,
    /// The appliance's verdict: its worst firing alert, with every firing alert as a reason.
    pub verdict: crate::verdict::ApplianceVerdict,
}

/// Resolved alerts shown with an appliance (firing ones are all shown).
const RESOLVED_ALERTS_SHOWN: i64 = 50;
/// Events and version changes shown with an appliance: an appliance that flaps must not make
/// its page unbounded.
const EVENTS_SHOWN: i64 = 200;

const ALERT_COLUMNS: &str = "al.id, al.fingerprint, al.rule, a.serial, al.subject, al.severity,
    al.state, al.started_at, al.resolved_at, al.value, al.summary, al.reopened";

/// The table's CHECK allows only the three severities; anything else is shown as the worst.
fn severity(s: &str) -> d::Severity {
    d::Severity::parse(s).unwrap_or(d::Severity::Critical)
}

/// The table's CHECK allows only `firing` and `resolved`; anything else is shown as firing.
pub(super) fn alert_state(s: &str) -> d::AlertState {
    d::AlertState::parse(s).unwrap_or(d::AlertState::Firing)
}

fn alert(row: &Row) -> Alert {
    Alert {
        id: row.get(0),
        fingerprint: row.get(1),
        rule: row.get(2),
        serial: row.get(3),
        subject: row.get(4),
        severity: severity(row.get(5)),
        state: alert_state(row.get(6)),
        started_at: row.get(7),
        resolved_at: row.get(8),
        value: row.get(9),
        summary: row.get(10),
        reopened: row.get(11),
    }
}

/// The columns [`appliance_state`] reads, in its order; `$1` is the silence threshold. Column
/// 0 is the appliance's id, which the API does not show.
const STATE_COLUMNS: &str = "a.id, a.serial, a.hostname, a.last_report_at, a.last_collected_at,
    a.app_version, a.app_status, a.os_pretty_name, a.kernel, a.collector_version, a.report_count,
    a.drive_count, a.failing_drive_count, a.filesystem_count, a.nic_count, a.collection_errors,
    a.dropped_reports, a.last_report_at < $1,
    (SELECT count(*) FROM alerts al WHERE al.appliance_id = a.id AND al.state = 'firing'),
    a.health";

fn appliance_state(row: &Row) -> ApplianceState {
    ApplianceState {
        serial: row.get(1),
        hostname: row.get(2),
        last_report_at: row.get(3),
        last_collected_at: row.get(4),
        app_version: row.get(5),
        app_status: row.get(6),
        os: row.get(7),
        kernel: row.get(8),
        collector_version: row.get(9),
        report_count: row.get(10),
        drive_count: row.get(11),
        failing_drive_count: row.get(12),
        filesystem_count: row.get(13),
        nic_count: row.get(14),
        collection_errors: row.get(15),
        dropped_reports: row.get(16),
        silent: row.get(17),
        firing_alerts: row.get(18),
        health: phonehome_dashboard::Health::from_rank(row.get(19)),
    }
}

fn filesystem_point(at: DateTime<Utc>, f: &FilesystemRow) -> FilesystemPoint {
    FilesystemPoint {
        collected_at: at,
        bytes_used: f.bytes_used,
        bytes_total: f.bytes_total,
        inodes_used: f.inodes_used,
        inodes_total: f.inodes_total,
    }
}

fn nic_point(at: DateTime<Utc>, n: &NicRow) -> NicPoint {
    NicPoint {
        collected_at: at,
        rx_bytes: n.rx_bytes,
        tx_bytes: n.tx_bytes,
        rx_errors: n.rx_errors,
        tx_errors: n.tx_errors,
        rx_dropped: n.rx_dropped,
        tx_dropped: n.tx_dropped,
    }
}

/// How far back the newest readings are looked for, as when they were sample rows: a drive in
/// standby in the newest reports still shows its last values.
const LATEST_DAYS: i64 = 31;
/// Bodies walked back, beyond the history's, for a drive (or the filesystems, or the NICs) the
/// history's reports do not show: a month of daily reports.
const LATEST_LOOKBACK: i64 = 31;

/// The newest reading of each drive now in the appliance, and the newest filesystems and NICs,
/// gathered newest report first.
#[derive(Debug, Default)]
struct Latest {
    drives: BTreeMap<String, DriveReading>,
    filesystems: Option<Vec<FilesystemReading>>,
    nics: Option<Vec<NicReading>>,
}

impl Latest {
    /// Takes from `r` what no newer report gave (`r` must be older than those seen so far).
    fn absorb(&mut self, r: &Readings, wanted: &HashSet<&str>) {
        for (key, sample) in &r.drives {
            if wanted.contains(key.as_str()) && !self.drives.contains_key(key) {
                self.drives
                    .insert(key.clone(), DriveReading::new(r.at, sample));
            }
        }
        if self.filesystems.is_none() && !r.filesystems.is_empty() {
            let mut fs: Vec<FilesystemReading> = r
                .filesystems
                .iter()
                .map(|f| FilesystemReading {
                    mount_point: f.mount_point.clone(),
                    sample: filesystem_point(r.at, f),
                })
                .collect();
            fs.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
            self.filesystems = Some(fs);
        }
        if self.nics.is_none() && !r.nics.is_empty() {
            let mut nics: Vec<NicReading> = r
                .nics
                .iter()
                .map(|n| NicReading {
                    name: n.name.clone(),
                    sample: nic_point(r.at, n),
                })
                .collect();
            nics.sort_by(|a, b| a.name.cmp(&b.name));
            self.nics = Some(nics);
        }
    }

    fn complete(&self, wanted: &HashSet<&str>) -> bool {
        self.filesystems.is_some() && self.nics.is_some() && self.drives.len() >= wanted.len()
    }
}

/// The history's series from readings oldest first: one per drive, filesystem and NIC, in key
/// order.
fn series(readings: &[Readings]) -> (Vec<DriveSeries>, Vec<FilesystemSeries>, Vec<NicSeries>) {
    let mut drives: BTreeMap<&str, Vec<DriveReading>> = BTreeMap::new();
    let mut filesystems: BTreeMap<&str, Vec<FilesystemPoint>> = BTreeMap::new();
    let mut nics: BTreeMap<&str, Vec<NicPoint>> = BTreeMap::new();
    for r in readings {
        for (key, sample) in &r.drives {
            drives
                .entry(key.as_str())
                .or_default()
                .push(DriveReading::new(r.at, sample));
        }
        for f in &r.filesystems {
            filesystems
                .entry(f.mount_point.as_str())
                .or_default()
                .push(filesystem_point(r.at, f));
        }
        for n in &r.nics {
            nics.entry(n.name.as_str())
                .or_default()
                .push(nic_point(r.at, n));
        }
    }
    (
        drives
            .into_iter()
            .map(|(k, samples)| DriveSeries {
                drive_key: k.to_owned(),
                samples,
            })
            .collect(),
        filesystems
            .into_iter()
            .map(|(m, samples)| FilesystemSeries {
                mount_point: m.to_owned(),
                samples,
            })
            .collect(),
        nics.into_iter()
            .map(|(n, samples)| NicSeries {
                name: n.to_owned(),
                samples,
            })
            .collect(),
    )
}

impl Storage {
    /// When an appliance last heard from before this counts as silent.
    fn silent_before(&self) -> DateTime<Utc> {
        super::fleet::silence_threshold(Utc::now(), self.settings.alerts.appliance_silent.hours)
    }

    /// One appliance with the last `days` days of history; `None` when the serial never
    /// reported.
    pub async fn appliance_detail(
        &self,
        serial: &str,
        days: u32,
    ) -> Result<Option<ApplianceDetail>, StorageError> {
        let client = self.pool().get().await?;
        let Some(row) = client
            .query_opt(
                &format!("SELECT {STATE_COLUMNS} FROM appliances a WHERE a.serial = $2"),
                &[&self.silent_before(), &serial],
            )
            .await?
        else {
            return Ok(None);
        };
        let id: i32 = row.get(0);
        let state = appliance_state(&row);
        let now = Utc::now();
        let since = now - Duration::days(i64::from(days));
        // The newest readings are those of the newest report, or close to it.
        let recent = state.last_collected_at - Duration::days(LATEST_DAYS);

        // Parameters outlive the queries, which run together below.
        let by_id_since: &[&(dyn ToSql + Sync)] = &[&id, &since];
        let by_id: &[&(dyn ToSql + Sync)] = &[&id];
        let by_id_events: &[&(dyn ToSql + Sync)] = &[&id, &EVENTS_SHOWN];
        let by_serial_events: &[&(dyn ToSql + Sync)] = &[&serial, &EVENTS_SHOWN];
        let by_id_resolved: &[&(dyn ToSql + Sync)] = &[&id, &RESOLVED_ALERTS_SHOWN];
        // The queries are independent: sent together on one connection, they cost one round
        // trip's wait instead of nine.
        let drives = client.query(
            "SELECT d.drive_key, d.model, d.serial, d.wwn, m.device_name, m.from_at
             FROM drive_membership m
             JOIN drives d ON d.id = m.drive_id
             WHERE m.appliance_id = $1 AND m.until_at IS NULL
             ORDER BY m.device_name, d.drive_key",
            by_id,
        );
        let reports = client.query(
            "SELECT report_id, collected_at, received_at, app_status, app_version
             FROM reports WHERE appliance_id = $1 AND collected_at >= $2
             ORDER BY collected_at, report_id",
            by_id_since,
        );
        // The window's bodies: every report's readings, at most BODIES_PER_DAY a day.
        let bodies = readings::window(
            &client,
            id,
            since,
            now + readings::ahead(),
            i64::from(days).saturating_mul(readings::BODIES_PER_DAY),
        );
        let versions = client.query(
            "SELECT component, old_version, new_version, changed_at, report_id
             FROM version_changes WHERE appliance_id = $1
             ORDER BY changed_at DESC, id DESC LIMIT $2",
            by_id_events,
        );
        let drive_events = client.query(
            "SELECT e.kind, d.drive_key, e.device_name, f.serial, e.at, e.report_id,
                    e.detected_at
             FROM drive_events e
             JOIN drives d ON d.id = e.drive_id
             LEFT JOIN appliances f ON f.id = e.from_appliance_id
             WHERE e.appliance_id = $1
             ORDER BY e.at DESC, e.id DESC LIMIT $2",
            by_id_events,
        );
        let identity_events = client.query(
            "SELECT kind, old_value, new_value, other_serial, report_id, detected_at
             FROM identity_events WHERE serial = $1
             ORDER BY detected_at DESC, id DESC LIMIT $2",
            by_serial_events,
        );
        let alerts_sql = format!(
            "(SELECT {ALERT_COLUMNS} FROM alerts al JOIN appliances a ON a.id = al.appliance_id
                  WHERE al.appliance_id = $1 AND al.state = 'firing')
                 UNION ALL
                 (SELECT {ALERT_COLUMNS} FROM alerts al JOIN appliances a ON a.id = al.appliance_id
                  WHERE al.appliance_id = $1 AND al.state = 'resolved'
                  ORDER BY al.id DESC LIMIT $2)
                 ORDER BY 1 DESC"
        );
        let alerts = client.query(&alerts_sql, by_id_resolved);
        let (drives, reports, bodies, versions, drive_events, identity_events, alerts) = tokio::try_join!(
            drives,
            reports,
            bodies,
            versions,
            drive_events,
            identity_events,
            alerts,
        )?;
        // Decoding may load a dictionary, which takes a connection: the pool may have one.
        drop(client);
        let mut history = self.readings(bodies).await?;
        // By the time state is ordered by (a clock running ahead moves a report back).
        history.sort_by_key(|r| r.at);

        // The newest reading of every drive now here, and the newest filesystems and NICs:
        // from the history, newest first; walking further back (a bounded number of bodies, no
        // further than LATEST_DAYS) only for what it lacks, as a drive in standby does.
        let open: HashSet<&str> = drives.iter().map(|r| r.get::<_, &str>(0)).collect();
        let mut latest = Latest::default();
        for r in history.iter().rev().filter(|r| r.at >= recent) {
            latest.absorb(r, &open);
        }
        if !latest.complete(&open) {
            // The history covered everything since `since`.
            let client = self.pool().get().await?;
            let older = readings::newest(&client, id, recent, since, LATEST_LOOKBACK).await?;
            drop(client);
            for body in &older {
                if let Some(r) = self.reading(body).await? {
                    if r.at >= recent {
                        latest.absorb(&r, &open);
                    }
                }
                if latest.complete(&open) {
                    break;
                }
            }
        }
        let (drive_series, filesystem_series, nic_series) = series(&history);

        Ok(Some(ApplianceDetail {
            state,
            drives: drives
                .iter()
                .map(|r| CurrentDrive {
                    drive_key: r.get(0),
                    model: r.get(1),
                    serial: r.get(2),
                    wwn: r.get(3),
                    device_name: r.get(4),
                    since: r.get(5),
                    latest: latest.drives.remove(r.get::<_, &str>(0)),
                })
                .collect(),
            filesystems: latest.filesystems.unwrap_or_default(),
            nics: latest.nics.unwrap_or_default(),
            history: History {
                days,
                since,
                reports: reports
                    .iter()
                    .map(|r| ReportSummary {
                        report_id: r.get(0),
                        collected_at: r.get(1),
                        received_at: r.get(2),
                        app_status: r.get(3),
                        app_version: r.get(4),
                    })
                    .collect(),
                drives: drive_series,
                filesystems: filesystem_series,
                nics: nic_series,
            },
            versions: versions
                .iter()
                .map(|r| VersionChange {
                    component: r.get(0),
                    old_version: r.get(1),
                    new_version: r.get(2),
                    changed_at: r.get(3),
                    report_id: r.get(4),
                })
                .collect(),
            drive_events: drive_events
                .iter()
                .map(|r| DriveEvent {
                    kind: r.get(0),
                    drive_key: r.get(1),
                    device_name: r.get(2),
                    from_serial: r.get(3),
                    at: r.get(4),
                    report_id: r.get(5),
                    detected_at: r.get(6),
                })
                .collect(),
            identity_events: identity_events
                .iter()
                .map(|r| IdentityEvent {
                    kind: r.get(0),
                    old_value: r.get(1),
                    new_value: r.get(2),
                    other_serial: r.get(3),
                    report_id: r.get(4),
                    detected_at: r.get(5),
                })
                .collect(),
            verdict: crate::verdict::appliance(
                alerts
                    .iter()
                    .filter(|r| r.get::<_, &str>(6) == "firing")
                    .map(|r| {
                        (
                            r.get::<_, &str>(5),
                            r.get::<_, &str>(2),
                            r.get::<_, &str>(4),
                            r.get::<_, &str>(10),
                        )
                    }),
            ),
            alerts: alerts.iter().map(alert).collect(),
        }))
    }
}

impl ApplianceDetail {
    /// What the dashboard's appliance page shows of it.
    pub fn into_view(self) -> phonehome_dashboard::ApplianceView {
        let s = self.state;
        let mut events: Vec<d::EventView> = Vec::new();
        for v in self.versions {
            events.push(d::EventView {
                at: v.changed_at,
                kind: d::EventKind::Version(v.component),
                old: v.old_version,
                new: v.new_version,
                other: None,
            });
        }
        for e in self.drive_events {
            events.push(d::EventView {
                at: e.at,
                kind: d::EventKind::Drive(e.kind),
                old: e.from_serial,
                new: Some(e.device_name),
                other: Some(e.drive_key),
            });
        }
        for e in self.identity_events {
            events.push(d::EventView {
                at: e.detected_at,
                kind: d::EventKind::Identity(e.kind),
                old: e.old_value,
                new: Some(e.new_value),
                other: e.other_serial,
            });
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.at));
        let mut alerts: Vec<d::AlertRow> = self
            .alerts
            .into_iter()
            .map(|a| d::AlertRow {
                id: a.id,
                severity: a.severity,
                rule: a.rule,
                serial: a.serial,
                subject: a.subject,
                state: a.state,
                started_at: a.started_at,
                resolved_at: a.resolved_at,
                value: a.value,
                summary: a.summary,
                reopened: a.reopened,
            })
            .collect();
        // Firing first, most severe first, however old; then the resolved ones, newest first.
        alerts.sort_by_key(|a| {
            let firing = a.state == d::AlertState::Firing;
            (
                !firing,
                if firing { a.severity.order() } else { 0 },
                std::cmp::Reverse(a.started_at),
            )
        });
        let history = d::ApplianceHistory {
            drives: self
                .history
                .drives
                .into_iter()
                .map(|series| {
                    let points = series.samples.iter().map(drive_point).collect();
                    (series.drive_key, points)
                })
                .collect(),
            filesystems: self
                .history
                .filesystems
                .into_iter()
                .map(|f| {
                    let points = f
                        .samples
                        .iter()
                        .map(|p| (p.collected_at, p.bytes_used, p.bytes_total))
                        .collect();
                    (f.mount_point, points)
                })
                .collect(),
            nics: self
                .history
                .nics
                .into_iter()
                .map(|n| {
                    let points = n
                        .samples
                        .iter()
                        .map(|p| {
                            let sum = |a: Option<i64>, b: Option<i64>| {
                                a.unwrap_or(0).saturating_add(b.unwrap_or(0))
                            };
                            (
                                p.collected_at,
                                sum(p.rx_errors, p.tx_errors),
                                sum(p.rx_dropped, p.tx_dropped),
                            )
                        })
                        .collect();
                    (n.name, points)
                })
                .collect(),
        };
        d::ApplianceView {
            row: d::ApplianceRow {
                serial: s.serial,
                hostname: s.hostname,
                last_report_at: s.last_report_at,
                silent: s.silent,
                // The dashboard source sets the lifecycle (and its effect on `silent`).
                lifecycle: "active".to_owned(),
                health: s.health,
                firing_alerts: s.firing_alerts,
                failing_drives: s.failing_drive_count,
                app_status: s.app_status,
                app_version: s.app_version,
                os: s.os,
                report_count: s.report_count,
            },
            kernel: s.kernel,
            collector_version: s.collector_version,
            collection_errors: s.collection_errors,
            lifecycle_detail: None,
            certificate: None,
            labels: std::collections::BTreeMap::new(),
            acks: Vec::new(),
            mutes: Vec::new(),
            audit: Vec::new(),
            alerts,
            drives: self.drives.into_iter().map(drive_view).collect(),
            filesystems: self
                .filesystems
                .into_iter()
                .map(|f| d::FilesystemView {
                    mount_point: f.mount_point,
                    bytes_used: f.sample.bytes_used,
                    bytes_total: f.sample.bytes_total,
                    inodes_used: f.sample.inodes_used,
                    inodes_total: f.sample.inodes_total,
                })
                .collect(),
            nics: self
                .nics
                .into_iter()
                .map(|n| d::NicView {
                    name: n.name,
                    rx_errors: n.sample.rx_errors,
                    tx_errors: n.sample.tx_errors,
                    rx_dropped: n.sample.rx_dropped,
                    tx_dropped: n.sample.tx_dropped,
                })
                .collect(),
            events,
            days: self.history.days,
            history,
        }
    }
}

/// A stored reading as a chart point: temperature and the counters it carries.
pub(super) fn drive_point(r: &DriveReading) -> phonehome_dashboard::DrivePoint {
    let names = phonehome_dashboard::DRIVE_COUNTERS;
    let counters = [
        (names[0], r.reallocated_sectors.map(i64::from)),
        (names[1], r.pending_sectors.map(i64::from)),
        (names[2], r.offline_uncorrectable.map(i64::from)),
        (names[3], r.crc_errors.map(i64::from)),
        (names[4], r.nvme_media_errors),
        (names[5], r.nvme_critical_warning.map(i64::from)),
        (names[6], r.scsi_grown_defects),
        (names[7], r.scsi_uncorrected),
    ];
    phonehome_dashboard::DrivePoint {
        at: r.collected_at,
        temperature_celsius: r.temperature_celsius.map(i64::from),
        counters: counters
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .collect(),
    }
}

fn drive_view(c: CurrentDrive) -> phonehome_dashboard::DriveView {
    let latest = c.latest;
    let counters = latest
        .as_ref()
        .map(|r| {
            drive_point(r)
                .counters
                .into_iter()
                .filter(|(_, n)| *n != 0)
                .map(|(name, n)| (name.to_owned(), n))
                .collect()
        })
        .unwrap_or_default();
    phonehome_dashboard::DriveView {
        key: c.drive_key,
        device_name: c.device_name,
        model: c.model,
        serial: c.serial,
        since: c.since,
        health_passed: latest.as_ref().and_then(|r| r.health_passed),
        failing: latest.as_ref().is_some_and(|r| r.failing),
        temperature_celsius: latest
            .as_ref()
            .and_then(|r| r.temperature_celsius.map(i64::from)),
        power_on_hours: latest
            .as_ref()
            .and_then(|r| r.power_on_hours.map(i64::from)),
        counters,
    }
}
