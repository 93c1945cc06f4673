//! What a report changes beyond its own rows: identity events (a chassis swapped, a cloned
//! image), version changes for the patch audit trail, and drive membership (a drive appeared,
//! disappeared or moved between appliances). Pure: the batch's loaded rows in, rows to write out.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use crate::model::Component;
use crate::model::PreparedReport;

/// An appliance's state before this batch (its locked row), as far as the engine needs it.
#[derive(Debug, Clone)]
pub struct Before {
    pub id: i32,
    /// No report of this appliance has been kept yet (a row this batch created, or one whose
    /// history is being rebuilt from legacy rows).
    pub fresh: bool,
    pub last_collected_at: DateTime<Utc>,
    pub system_uuid: Option<String>,
    pub machine_id: Option<String>,
    pub versions: HashMap<Component, Option<String>>,
    pub boot_id: Option<Uuid>,
    /// What rules judged by change kept from the newest report; `None` for a fresh appliance
    /// or one last written before the state was kept.
    pub rule_state: Option<super::RuleState>,
    /// The certificate of the newest report: (SHA-256, `certificates.id`).
    pub last_cert: Option<(Vec<u8>, i32)>,
}

impl Before {
    /// A report collected before the appliance's newest known one (delivered from a spool after
    /// newer ones) describes the past: it is kept, but it moves no state, membership, versions
    /// or alerts.
    pub fn is_late(&self, r: &PreparedReport) -> bool {
        !self.fresh && r.at < self.last_collected_at
    }
}

/// An open membership: drive `drive_id` is in the appliance under `device_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: i64,
    pub drive_id: i32,
    pub device_name: String,
}

/// The most recent membership of a drive anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestMembership {
    pub id: i64,
    pub appliance_id: i32,
    pub open: bool,
}

/// What happened to an appliance's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    SystemUuidChanged,
    MachineIdChanged,
    /// Another serial reports the same value: a cloned image.
    SystemUuidShared,
    MachineIdShared,
}

impl IdentityKind {
    /// As stored in `identity_events.kind` and used in alert subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::SystemUuidChanged => "system_uuid_changed",
            IdentityKind::MachineIdChanged => "machine_id_changed",
            IdentityKind::SystemUuidShared => "system_uuid_shared",
            IdentityKind::MachineIdShared => "machine_id_shared",
        }
    }

    /// What the identifier is called in words.
    pub fn noun(self) -> &'static str {
        match self {
            IdentityKind::SystemUuidChanged | IdentityKind::SystemUuidShared => "system uuid",
            IdentityKind::MachineIdChanged | IdentityKind::MachineIdShared => "machine id",
        }
    }
}

/// A system UUID or machine-id that changed, or that another serial reports too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEvent {
    pub serial: String,
    pub kind: IdentityKind,
    pub old_value: Option<String>,
    pub new_value: String,
    /// The other serial, for a shared value.
    pub other_serial: Option<String>,
    pub report_id: Uuid,
}

/// A version that changed (or was first seen) with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChange {
    pub appliance_id: i32,
    pub component: Component,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub report_id: Uuid,
}

/// How a drive's membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriveEventKind {
    Appeared,
    Disappeared,
    /// It left another appliance and turned up here.
    Moved,
}

impl DriveEventKind {
    /// As stored in `drive_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriveEventKind::Appeared => "appeared",
            DriveEventKind::Disappeared => "disappeared",
            DriveEventKind::Moved => "moved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveEvent {
    pub drive_id: i32,
    pub appliance_id: i32,
    pub kind: DriveEventKind,
    pub from_appliance_id: Option<i32>,
    pub device_name: String,
    pub at: DateTime<Utc>,
    pub report_id: Uuid,
}

/// A membership to open: drive `drive_id` in the appliance under `device_name` from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    pub appliance_id: i32,
    pub drive_id: i32,
    pub device_name: String,
    pub from: DateTime<Utc>,
}

/// Rows derived from the batch's reports, written at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub identity_events: Vec<IdentityEvent>,
    pub version_changes: Vec<VersionChange>,
    pub opened: Vec<Opening>,
    /// (membership, until)
    pub closed: Vec<(i64, DateTime<Utc>)>,
    pub drive_events: Vec<DriveEvent>,
}

/// (serial, machine-id, system UUID) of an appliance a batch's reports may share an identifier
/// with.
pub type KnownIds<'a> = Vec<(&'a str, Option<&'a str>, Option<String>)>;

/// Those already known (other appliances, read before the batch) and the batch's own.
pub fn known_ids<'a>(
    shared: &'a [(String, Option<String>, Option<String>)],
    reports: &[&'a PreparedReport],
) -> KnownIds<'a> {
    shared
        .iter()
        .map(|(s, m, u)| (s.as_str(), m.as_deref(), u.clone()))
        .chain(reports.iter().map(|r| {
            (
                r.serial.as_str(),
                r.state.machine_id.as_deref(),
                r.state.system_uuid.map(|u| u.to_string()),
            )
        }))
        .collect()
}

/// A machine-id or system UUID that another serial reports too: a cloned image.
pub fn identity_shared(r: &PreparedReport, known: &KnownIds<'_>, out: &mut Changes) {
    let uuid = r.state.system_uuid.map(|u| u.to_string());
    // (kind, other serial) already told for this report; a set, as a cloned image can be
    // shared by thousands.
    let mut told: std::collections::HashSet<(IdentityKind, &str)> = Default::default();
    for (serial, machine_id, system_uuid) in known {
        if *serial == r.serial {
            continue;
        }
        for (kind, mine, theirs) in [
            (
                IdentityKind::MachineIdShared,
                r.state.machine_id.as_deref(),
                *machine_id,
            ),
            (
                IdentityKind::SystemUuidShared,
                uuid.as_deref(),
                system_uuid.as_deref(),
            ),
        ] {
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                // The other serial can be known twice: its row, and its report in this batch.
                if mine == theirs && told.insert((kind, *serial)) {
                    out.identity_events.push(IdentityEvent {
                        serial: r.serial.clone(),
                        kind,
                        old_value: None,
                        new_value: mine.to_owned(),
                        other_serial: Some((*serial).to_owned()),
                        report_id: r.report_id,
                    });
                }
            }
        }
    }
}

/// A serial whose system UUID or machine-id changed: chassis or board swapped, re-imaged.
pub fn identity_changed(b: &Before, r: &PreparedReport, out: &mut Changes) {
    if b.fresh {
        return;
    }
    let uuid = r.state.system_uuid.map(|u| u.to_string());
    for (kind, old, new) in [
        (IdentityKind::SystemUuidChanged, &b.system_uuid, &uuid),
        (
            IdentityKind::MachineIdChanged,
            &b.machine_id,
            &r.state.machine_id,
        ),
    ] {
        if let (Some(old), Some(new)) = (old, new) {
            if old != new {
                out.identity_events.push(IdentityEvent {
                    serial: r.serial.clone(),
                    kind,
                    old_value: Some(old.clone()),
                    new_value: new.clone(),
                    other_serial: None,
                    report_id: r.report_id,
                });
            }
        }
    }
}

/// Versions that differ from what the appliance ran before; a first report records what it
/// runs.
pub fn versions_changed(b: &Before, r: &PreparedReport, out: &mut Changes) {
    for (component, new) in r.state.versions() {
        let old = if b.fresh {
            None
        } else {
            b.versions.get(&component).cloned().flatten()
        };
        if old.as_deref() != new && !(b.fresh && new.is_none()) {
            out.version_changes.push(VersionChange {
                appliance_id: b.id,
                component,
                old_version: old,
                new_version: new.map(str::to_owned),
                changed_at: r.at,
                report_id: r.report_id,
            });
        }
    }
}

/// Drives that joined or left the appliance with report `r`, against its open memberships as
/// the batch has left them so far (`members` before the batch, `out` since).
pub fn membership_changed(
    b: &Before,
    r: &PreparedReport,
    drive_ids: &HashMap<String, i32>,
    members: &HashMap<i32, Vec<Member>>,
    latest: &HashMap<i32, LatestMembership>,
    out: &mut Changes,
) {
    let mut open: Vec<(Option<i64>, i32, String)> = members
        .get(&b.id)
        .into_iter()
        .flatten()
        .map(|m| (Some(m.id), m.drive_id, m.device_name.clone()))
        .collect();
    let opened_here: Vec<(i32, String)> = out
        .opened
        .iter()
        .filter(|o| o.appliance_id == b.id)
        .map(|o| (o.drive_id, o.device_name.clone()))
        .collect();
    let closed_here: HashSet<i64> = out.closed.iter().map(|(id, _)| *id).collect();
    open.retain(|(id, _, _)| id.is_none_or(|id| !closed_here.contains(&id)));
    open.extend(opened_here.into_iter().map(|(d, n)| (None, d, n)));

    let present: HashMap<i32, &str> = r
        .drives
        .iter()
        .filter_map(|d| {
            drive_ids
                .get(&d.key)
                .map(|id| (*id, d.device_name.as_str()))
        })
        .collect();
    for (drive_id, device_name) in &present {
        if open.iter().any(|(_, d, _)| d == drive_id) {
            continue;
        }
        let mut kind = (!b.fresh).then_some(DriveEventKind::Appeared);
        let mut from = None;
        if let Some(latest) = latest.get(drive_id) {
            // Moved: it left another appliance (that one's report no longer showed it) and
            // turns up here. A drive still open elsewhere is not taken from there: two
            // appliances can report one key at once (virtual disks share serials), and a
            // batch only ever changes rows of appliances it holds locked.
            let left = !latest.open || closed_here.contains(&latest.id);
            if latest.appliance_id != b.id && left {
                kind = Some(DriveEventKind::Moved);
                from = Some(latest.appliance_id);
            }
        }
        out.opened.push(Opening {
            appliance_id: b.id,
            drive_id: *drive_id,
            device_name: (*device_name).to_owned(),
            from: r.at,
        });
        if let Some(kind) = kind {
            out.drive_events.push(DriveEvent {
                drive_id: *drive_id,
                appliance_id: b.id,
                kind,
                from_appliance_id: from,
                device_name: (*device_name).to_owned(),
                at: r.at,
                report_id: r.report_id,
            });
        }
    }
    if !r.smart_complete {
        return;
    }
    for (membership, drive_id, device_name) in &open {
        if present.contains_key(drive_id) || r.unidentified_devices.contains(device_name) {
            continue;
        }
        match membership {
            Some(id) => out.closed.push((*id, r.at)),
            // Opened earlier in this batch and gone again: drop the opening.
            None => out
                .opened
                .retain(|o| !(o.appliance_id == b.id && o.drive_id == *drive_id)),
        }
        out.drive_events.push(DriveEvent {
            drive_id: *drive_id,
            appliance_id: b.id,
            kind: DriveEventKind::Disappeared,
            from_appliance_id: None,
            device_name: device_name.clone(),
            at: r.at,
            report_id: r.report_id,
        });
    }
}

#[cfg(test)]
mod tests {
    //! The change logic of a batch (identity, versions, drive membership) on prepared reports.
    use super::super::fixtures::{before, prepared};
    use super::*;

    /// Drive 11's latest membership: in `appliance`, still `open` or not.
    fn left(appliance_id: i32, open: bool) -> LatestMembership {
        LatestMembership {
            id: 90,
            appliance_id,
            open,
        }
    }

    #[test]
    fn an_identity_change_is_an_event_and_a_first_report_is_none() {
        let r = prepared();
        let new_uuid = r.state.system_uuid.expect("example has a UUID").to_string();
        let mut b = before(false);
        b.system_uuid = Some("00000000-0000-0000-0000-000000000001".into());
        b.machine_id = r.state.machine_id.clone();
        let mut w = Changes::default();
        identity_changed(&b, &r, &mut w);
        assert_eq!(w.identity_events.len(), 1, "{:?}", w.identity_events);
        let e = &w.identity_events[0];
        assert_eq!(e.kind, IdentityKind::SystemUuidChanged);
        assert_eq!(
            e.old_value.as_deref(),
            Some("00000000-0000-0000-0000-000000000001")
        );
        assert_eq!(e.new_value, new_uuid);

        // Unknown before (an older ingest kept none): no change to tell.
        let mut w = Changes::default();
        identity_changed(&before(false), &r, &mut w);
        assert!(w.identity_events.is_empty());
        let mut w = Changes::default();
        identity_changed(&before(true), &r, &mut w);
        assert!(
            w.identity_events.is_empty(),
            "a first report changes nothing"
        );
    }

    #[test]
    fn a_shared_identifier_is_one_event_per_other_serial_and_report() {
        let r = prepared();
        let uuid = r.state.system_uuid.map(|u| u.to_string());
        let machine_id = r.state.machine_id.as_deref();
        // The clone is known twice (its row, and its own report in the same batch), the
        // reporting appliance once (itself: never shared with itself).
        let known: KnownIds<'_> = vec![
            ("CLONE-1", machine_id, uuid.clone()),
            ("CLONE-1", machine_id, uuid.clone()),
            (r.serial.as_str(), machine_id, uuid.clone()),
        ];
        let mut w = Changes::default();
        identity_shared(&r, &known, &mut w);
        let kinds: Vec<(IdentityKind, Option<&str>)> = w
            .identity_events
            .iter()
            .map(|e| (e.kind, e.other_serial.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (IdentityKind::MachineIdShared, Some("CLONE-1")),
                (IdentityKind::SystemUuidShared, Some("CLONE-1")),
            ]
        );
    }

    #[test]
    fn versions_change_once_and_a_first_report_records_what_it_runs() {
        let r = prepared();
        let mut b = before(false);
        for (component, v) in r.state.versions() {
            b.versions.insert(component, v.map(str::to_owned));
        }
        let mut w = Changes::default();
        versions_changed(&b, &r, &mut w);
        assert!(w.version_changes.is_empty(), "{:?}", w.version_changes);

        b.versions.insert(Component::App, Some("4.1.0".into()));
        let mut w = Changes::default();
        versions_changed(&b, &r, &mut w);
        let changes: Vec<(Component, Option<&str>, Option<&str>)> = w
            .version_changes
            .iter()
            .map(|c| {
                (
                    c.component,
                    c.old_version.as_deref(),
                    c.new_version.as_deref(),
                )
            })
            .collect();
        assert_eq!(changes, [(Component::App, Some("4.1.0"), Some("4.2.1"))]);

        let mut w = Changes::default();
        versions_changed(&before(true), &r, &mut w);
        assert!(
            w.version_changes
                .iter()
                .all(|c| c.old_version.is_none() && c.new_version.is_some()),
            "{:?}",
            w.version_changes
        );
        assert!(
            w.version_changes
                .iter()
                .any(|c| c.component == Component::Collector)
        );
    }

    #[test]
    fn drives_appear_disappear_and_move_between_appliances() {
        let r = prepared();
        let keys: Vec<String> = r.drives.iter().map(|d| d.key.clone()).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        // The first drive is known (id 10) and open here; the second is new (id 11). Drive 12,
        // open here as /dev/sdc, is no longer reported.
        let drive_ids: HashMap<String, i32> = [(keys[0].clone(), 10), (keys[1].clone(), 11)].into();
        let members: HashMap<i32, Vec<Member>> = [(
            1,
            vec![
                Member {
                    id: 100,
                    drive_id: 10,
                    device_name: "/dev/sda".into(),
                },
                Member {
                    id: 101,
                    drive_id: 12,
                    device_name: "/dev/sdc".into(),
                },
            ],
        )]
        .into();
        let events = |w: &Changes| -> Vec<(i32, DriveEventKind, Option<i32>)> {
            let mut e: Vec<_> = w
                .drive_events
                .iter()
                .map(|e| (e.drive_id, e.kind, e.from_appliance_id))
                .collect();
            e.sort();
            e
        };

        let mut w = Changes::default();
        membership_changed(
            &before(false),
            &r,
            &drive_ids,
            &members,
            &HashMap::new(),
            &mut w,
        );
        assert_eq!(
            events(&w),
            [
                (11, DriveEventKind::Appeared, None),
                (12, DriveEventKind::Disappeared, None)
            ]
        );
        assert_eq!(w.closed.len(), 1);
        assert_eq!(w.closed[0].0, 101);
        assert_eq!(w.opened.len(), 1);
        assert_eq!(w.opened[0].drive_id, 11);

        // Drive 11 left appliance 2 (its membership there is closed): it moved.
        let latest: HashMap<i32, LatestMembership> = [(11, left(2, false))].into();
        let mut w = Changes::default();
        membership_changed(&before(false), &r, &drive_ids, &members, &latest, &mut w);
        assert!(
            events(&w).contains(&(11, DriveEventKind::Moved, Some(2))),
            "{:?}",
            events(&w)
        );
        // Still open in appliance 2 (virtual disks share serials): it appeared, not moved.
        let latest: HashMap<i32, LatestMembership> = [(11, left(2, true))].into();
        let mut w = Changes::default();
        membership_changed(&before(false), &r, &drive_ids, &members, &latest, &mut w);
        assert!(
            events(&w).contains(&(11, DriveEventKind::Appeared, None)),
            "{:?}",
            events(&w)
        );

        // A SMART section that failed says nothing about absent drives; nor does a device
        // present without an identity under the old name.
        let mut incomplete = prepared();
        incomplete.smart_complete = false;
        let mut w = Changes::default();
        membership_changed(
            &before(false),
            &incomplete,
            &drive_ids,
            &members,
            &HashMap::new(),
            &mut w,
        );
        assert!(w.closed.is_empty());
        let mut asleep = prepared();
        asleep.unidentified_devices.push("/dev/sdc".into());
        let mut w = Changes::default();
        membership_changed(
            &before(false),
            &asleep,
            &drive_ids,
            &members,
            &HashMap::new(),
            &mut w,
        );
        assert!(w.closed.is_empty(), "{:?}", events(&w));

        // A first report opens memberships without calling its drives "appeared".
        let mut w = Changes::default();
        membership_changed(
            &before(true),
            &r,
            &drive_ids,
            &HashMap::new(),
            &HashMap::new(),
            &mut w,
        );
        assert!(w.drive_events.is_empty(), "{:?}", events(&w));
        assert_eq!(w.opened.len(), 2);
    }
}
