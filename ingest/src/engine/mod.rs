//! The rule engine, as plain domain code: from what storage loaded for a batch's appliances
//! (their locked rows, open drive memberships, kept rule state, firing alerts) and their new
//! reports, to what the batch writes (events, memberships, appliance state), each report's
//! verdict and the alert transitions. No IO here: storage loads, calls [`decide`], and writes
//! what it returns, so every rule and lifecycle is tested without a database.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

pub mod book;
pub mod changes;
pub mod previous;

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // the tests' own dates
mod fixtures;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

pub use book::{Ack, AlertBook, Evaluated, Firing, Judged, Mute, Transitions, fingerprint};
pub use changes::{
    Before, Changes, Component, DriveEvent, DriveEventKind, IdentityEvent, IdentityKind,
    LatestMembership, Member, Opening, VersionChange,
};
pub use previous::{
    DriveState, FilesystemState, History, NicState, Previous, RuleState, trend_points, trend_window,
};

use crate::alerts::{AlertsConfig, Finding, Rule};
use crate::model::PreparedReport;
use crate::verdict::Level;

/// What storage loaded for a batch, before anything is decided.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// The batch's appliances as their locked rows say, by serial.
    pub before: HashMap<String, Before>,
    /// Drive key → `drives.id` for every drive in the batch's reports (and those the kept
    /// states name).
    pub drive_ids: HashMap<String, i32>,
    /// Keys of drives in open memberships that `drive_ids` does not name (a drive that
    /// disappears is named by its key).
    pub drive_keys: HashMap<i32, String>,
    /// Open memberships by appliance id.
    pub members: HashMap<i32, Vec<Member>>,
    /// For drives new to their appliance: their most recent membership anywhere.
    pub latest_elsewhere: HashMap<i32, LatestMembership>,
    /// Other appliances reporting a machine-id or system UUID of this batch: (serial,
    /// machine-id, system UUID).
    pub shared: Vec<(String, Option<String>, Option<String>)>,
    /// Previous reports read back from history for appliances without a usable kept state.
    pub history: History,
}

/// What the batch writes for one appliance besides its reports and samples.
#[derive(Debug, Clone)]
pub struct ApplianceUpdate<'r> {
    pub id: i32,
    /// Reports of this appliance the batch stored.
    pub stored: i64,
    /// The latest arrival among them.
    pub last_received_at: DateTime<Utc>,
    /// The newest report, when it moves the appliance forward (not only late reports).
    pub newest: Option<Newest<'r>>,
}

/// An appliance's newest report and what the engine concluded from it.
#[derive(Debug, Clone)]
pub struct Newest<'r> {
    pub report: &'r PreparedReport,
    /// Everything the rules found: the report's own findings and those judged against the
    /// previous report and this batch's events.
    pub findings: Vec<Finding>,
    /// Drives whose verdict is `warning`: the report's own, plus those whose counts rose.
    pub warning_drive_count: i32,
    /// What to keep with the appliance for its next report.
    pub rule_state: RuleState,
}

/// Everything a batch decided.
#[derive(Debug, Clone)]
pub struct Decision<'r> {
    pub changes: Changes,
    /// By serial.
    pub appliances: BTreeMap<&'r str, ApplianceUpdate<'r>>,
    pub alerts: Transitions,
}

/// Judges `reports` (stored by this batch, each appliance's oldest first) against what was
/// `loaded` and the alert `book` as loaded.
pub fn decide<'r>(
    loaded: &Loaded,
    mut book: AlertBook,
    reports: &[&'r PreparedReport],
    config: &AlertsConfig,
) -> Decision<'r> {
    let mut previous = Previous::from_states(
        loaded
            .before
            .values()
            .filter_map(|b| b.rule_state.as_ref().map(|s| (b.id, s))),
    );
    previous.add_history(loaded.history.clone());
    let mut key_of: HashMap<i32, &str> = loaded
        .drive_ids
        .iter()
        .map(|(k, id)| (*id, k.as_str()))
        .collect();
    for (id, key) in &loaded.drive_keys {
        key_of.insert(*id, key.as_str());
    }
    let known = changes::known_ids(&loaded.shared, reports);
    let mut out = Changes::default();
    // Each appliance as the batch has moved it so far.
    let mut now: BTreeMap<&'r str, (Before, ApplianceUpdate<'r>)> = BTreeMap::new();
    for &r in reports {
        let Some(before) = loaded.before.get(&r.serial) else {
            // Storage locked every appliance of its reports; one it did not is not judged.
            continue;
        };
        let (b, update) = now.entry(r.serial.as_str()).or_insert_with(|| {
            (
                before.clone(),
                ApplianceUpdate {
                    id: before.id,
                    stored: 0,
                    last_received_at: r.received_at,
                    newest: None,
                },
            )
        });
        update.stored = update.stored.saturating_add(1);
        update.last_received_at = update.last_received_at.max(r.received_at);
        changes::identity_shared(r, &known, &mut out);
        // Any report, late or not, ends a silence.
        book.resolve(b.id, Rule::ApplianceSilent, r.received_at);
        if b.is_late(r) {
            continue;
        }
        changes::identity_changed(b, r, &mut out);
        changes::versions_changed(b, r, &mut out);
        changes::membership_changed(
            b,
            r,
            &loaded.drive_ids,
            &loaded.members,
            &loaded.latest_elsewhere,
            &mut out,
        );
        let findings = previous.findings(config, b, r, &loaded.drive_ids, &key_of, &out);
        let present: HashSet<&str> = r.drives.iter().map(|d| d.key.as_str()).collect();
        book.apply(
            config,
            Evaluated {
                appliance_id: b.id,
                serial: &r.serial,
                at: r.at,
                findings: &findings,
                judged: Judged {
                    drives: r.smart_complete,
                    filesystems: r.filesystems_complete,
                    nics: r.nics_complete,
                },
                present_drives: &present,
            },
        );
        previous.advance(config, b.id, r, &loaded.drive_ids);
        b.boot_id = r.boot_id;
        b.fresh = false;
        b.last_collected_at = r.at;
        b.system_uuid = r.state.system_uuid.map(|u| u.to_string());
        b.machine_id = r.state.machine_id.clone();
        for (component, version) in r.state.versions() {
            b.versions.insert(component, version.map(str::to_owned));
        }
        update.newest = Some(Newest {
            report: r,
            warning_drive_count: warning_drives(r, &findings),
            findings,
            rule_state: RuleState::default(),
        });
    }
    let appliances = now
        .into_iter()
        .map(|(serial, (_, mut update))| {
            if let Some(n) = &mut update.newest {
                n.rule_state = previous.state(update.id, n.report.at, &key_of);
            }
            (serial, update)
        })
        .collect();
    Decision {
        changes: out,
        appliances,
        alerts: book.into_transitions(),
    }
}

/// Drives of `r` whose verdict is `warning`: those the report alone calls so, and those it
/// calls ok whose counts rose since the previous report (`disk_degrading` found them).
fn warning_drives(r: &PreparedReport, findings: &[Finding]) -> i32 {
    let rose = r
        .drives
        .iter()
        .filter(|d| d.level == Level::Ok)
        .filter(|d| {
            findings
                .iter()
                .any(|f| f.rule == Rule::DiskDegrading && f.subject == d.key)
        })
        .count();
    r.state
        .warning_drive_count
        .saturating_add(i32::try_from(rose).unwrap_or(i32::MAX))
}

/// Whether each of `reports` keeps smartctl's full output: evidence when the facts behind a
/// drive's verdict change, not every day for a condition that holds still. A report keeps it
/// unless every drive that carried it has the verdict facts of the appliance's report before it:
/// the previous one in this batch, else the one its kept rule state describes (in `before`).
/// Without either, it keeps it. The answers are in the order of `reports`.
pub fn keep_evidence(reports: &[&PreparedReport], before: &HashMap<String, Before>) -> Vec<bool> {
    let mut order: Vec<usize> = (0..reports.len()).collect();
    order.sort_by(|&a, &b| {
        (reports[a].serial.as_str(), reports[a].at)
            .cmp(&(reports[b].serial.as_str(), reports[b].at))
    });
    let mut keep = vec![true; reports.len()];
    // The facts of the report before, by drive key, per appliance.
    let mut last: HashMap<&str, HashMap<&str, Option<u64>>> = HashMap::new();
    for i in order {
        let r = reports[i];
        let facts = last.entry(r.serial.as_str()).or_insert_with(|| {
            before
                .get(&r.serial)
                .and_then(|b| b.rule_state.as_ref())
                .map(|s| s.drives.iter().map(|d| (d.key.as_str(), d.facts)).collect())
                .unwrap_or_default()
        });
        keep[i] = facts.is_empty()
            || !r.drives.iter().filter(|d| d.evidence).all(|d| {
                d.sample.facts.is_some() && facts.get(d.key.as_str()) == Some(&d.sample.facts)
            });
        facts.clear();
        facts.extend(r.drives.iter().map(|d| (d.key.as_str(), d.sample.facts)));
    }
    keep
}

#[cfg(test)]
mod tests {
    //! Histories of one appliance through [`decide`], with a stand-in for storage that keeps
    //! what each decision writes (the appliance row, open memberships, the alert book) for the
    //! next report, as the database would.
    #![allow(clippy::arithmetic_side_effects)] // test arithmetic on the test's own numbers

    use chrono::Duration;
    use phonehome_schema::Report;
    use uuid::Uuid;

    use super::fixtures::{before, prepared_from};
    use super::*;
    use crate::alerts::{Acked, AlertState, Severity};

    /// The rows storage keeps between batches for appliance 1.
    struct Stored {
        before: Before,
        drive_ids: HashMap<String, i32>,
        members: Vec<Member>,
        firing: HashMap<String, Firing>,
        acks: HashMap<String, Ack>,
        mutes: Vec<Mute>,
        next_id: i64,
    }

    impl Stored {
        fn new() -> Self {
            Stored {
                before: before(true),
                drive_ids: HashMap::new(),
                members: Vec::new(),
                firing: HashMap::new(),
                acks: HashMap::new(),
                mutes: Vec::new(),
                next_id: 1,
            }
        }

        fn id(&mut self) -> i64 {
            self.next_id = self.next_id.saturating_add(1);
            self.next_id
        }

        /// Decides `reports` as one batch and keeps what the decision writes.
        fn deliver<'r>(
            &mut self,
            reports: &[&'r PreparedReport],
            config: &AlertsConfig,
        ) -> Decision<'r> {
            for d in reports.iter().flat_map(|r| &r.drives) {
                let next = i32::try_from(self.drive_ids.len()).unwrap_or(0) + 10;
                self.drive_ids.entry(d.key.clone()).or_insert(next);
            }
            let loaded = Loaded {
                before: HashMap::from([(reports[0].serial.clone(), self.before.clone())]),
                drive_ids: self.drive_ids.clone(),
                members: HashMap::from([(1, self.members.clone())]),
                ..Loaded::default()
            };
            let book = AlertBook::new(self.firing.clone(), self.acks.clone(), self.mutes.clone());
            let decision = decide(&loaded, book, reports, config);

            let c = &decision.changes;
            self.members
                .retain(|m| !c.closed.iter().any(|(id, _)| *id == m.id));
            for o in &c.opened {
                let id = self.id();
                self.members.push(Member {
                    id,
                    drive_id: o.drive_id,
                    device_name: o.device_name.clone(),
                });
            }
            if let Some(n) = decision.appliances.values().find_map(|u| u.newest.as_ref()) {
                let r = n.report;
                let b = &mut self.before;
                b.fresh = false;
                b.last_collected_at = r.at;
                b.system_uuid = r.state.system_uuid.map(|u| u.to_string());
                b.machine_id = r.state.machine_id.clone();
                b.boot_id = r.boot_id;
                for (component, v) in r.state.versions() {
                    b.versions.insert(component, v.map(str::to_owned));
                }
                b.rule_state = Some(n.rule_state.clone());
            }
            let t = &decision.alerts;
            for fp in &t.unacked {
                self.acks.remove(fp);
            }
            for a in t.changed.iter().chain(&t.opened) {
                let fp = fingerprint(a.rule, &reports[0].serial, &a.subject);
                if a.resolved_at.is_some() {
                    self.firing.remove(&fp);
                } else {
                    let mut a = a.clone();
                    if a.id.is_none() {
                        a.id = Some(self.id());
                    }
                    a.dirty = false;
                    self.firing.insert(fp, a);
                }
            }
            decision
        }

        fn firing_rules(&self) -> Vec<(Rule, String)> {
            let mut out: Vec<(Rule, String)> = self
                .firing
                .values()
                .map(|a| (a.rule, a.value.clone()))
                .collect();
            out.sort();
            out
        }
    }

    fn example() -> Report {
        let mut report: Report =
            serde_json::from_str(include_str!("../../../schema/examples/report.json"))
                .expect("the contract's example");
        report.smart.errors.clear();
        report
    }

    /// The example on day `day`, its SATA drive with `reallocated` sectors.
    fn day(day: i64, reallocated: u64) -> PreparedReport {
        let mut r = example();
        r.report_id = Uuid::new_v4();
        r.collected_at += Duration::days(day);
        r.smart.devices[0].reallocated_sectors = Some(reallocated);
        prepared_from(&r, &AlertsConfig::default())
    }

    fn opened(d: &Decision<'_>) -> Vec<(Rule, AlertState)> {
        d.alerts
            .opened
            .iter()
            .map(|a| (a.rule, a.state()))
            .collect()
    }

    #[test]
    fn a_first_report_opens_memberships_and_records_versions_without_events() {
        let config = AlertsConfig::default();
        let mut s = Stored::new();
        let r = day(0, 0);
        let d = s.deliver(&[&r], &config);
        assert_eq!(d.changes.opened.len(), 2, "both identified drives join");
        assert!(d.changes.drive_events.is_empty(), "{:?}", d.changes);
        assert!(d.changes.identity_events.is_empty());
        assert!(
            d.changes
                .version_changes
                .iter()
                .all(|v| v.old_version.is_none())
        );
        let u = &d.appliances[r.serial.as_str()];
        assert_eq!(u.stored, 1);
        let n = u.newest.as_ref().expect("the report moves the appliance");
        assert_eq!(n.rule_state.drives.len(), 2, "{:?}", n.rule_state);
        assert_eq!(n.rule_state.at, r.at.timestamp_micros());
    }

    #[test]
    fn a_stable_count_is_quiet_and_a_rise_is_one_warning_until_it_rises_again() {
        let config = AlertsConfig::default();
        let mut s = Stored::new();
        let reports: Vec<PreparedReport> = [8, 8, 8, 16, 16, 16, 24]
            .iter()
            .enumerate()
            .map(|(i, n)| day(i64::try_from(i).unwrap_or(0), *n))
            .collect();
        let mut opened_per_day = Vec::new();
        let mut changed_per_day = Vec::new();
        let mut warnings = Vec::new();
        for r in &reports {
            let d = s.deliver(&[r], &config);
            opened_per_day.push(opened(&d).len());
            changed_per_day.push(d.alerts.changed.len());
            let n = d.appliances[r.serial.as_str()]
                .newest
                .as_ref()
                .map(|n| n.warning_drive_count);
            warnings.push(n.unwrap_or(-1));
        }
        // 8 sectors from the first day on: a fact, not news. 8 → 16: one warning. Holding at
        // 16: nothing written. 16 → 24: the same alert renewed with the new rise.
        assert_eq!(opened_per_day, [0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(changed_per_day, [0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            warnings,
            [0, 0, 0, 1, 0, 0, 1],
            "the drive's verdict by day"
        );
        let firing = s.firing_rules();
        assert_eq!(firing.len(), 1, "{firing:?}");
        assert_eq!(firing[0].0, Rule::DiskDegrading);
        assert!(firing[0].1.contains("16 → 24 (+8)"), "{firing:?}");
    }

    #[test]
    fn a_drive_gone_is_missing_and_its_return_ends_the_alert() {
        let config = AlertsConfig::default();
        let mut s = Stored::new();
        s.deliver(&[&day(0, 0)], &config);
        let mut gone = example();
        gone.report_id = Uuid::new_v4();
        gone.collected_at += Duration::days(1);
        gone.smart.devices.remove(1);
        let gone = prepared_from(&gone, &config);
        let d = s.deliver(&[&gone], &config);
        let kinds: Vec<DriveEventKind> = d.changes.drive_events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [DriveEventKind::Disappeared]);
        assert_eq!(d.changes.closed.len(), 1);
        assert_eq!(opened(&d), [(Rule::DiskMissing, AlertState::Firing)]);

        let back = day(2, 0);
        let d = s.deliver(&[&back], &config);
        let kinds: Vec<DriveEventKind> = d.changes.drive_events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [DriveEventKind::Appeared]);
        let resolved: Vec<Rule> = d
            .alerts
            .changed
            .iter()
            .filter(|a| a.state() == AlertState::Resolved)
            .map(|a| a.rule)
            .collect();
        assert_eq!(
            resolved,
            [Rule::DiskMissing],
            "back within its hold: one short event"
        );
        assert!(s.firing.is_empty(), "{:?}", s.firing_rules());
    }

    /// The example with its root filesystem `percent` full.
    fn filled(mut r: Report, percent: u64) -> Report {
        let fs = &mut r.filesystems.filesystems[0];
        fs.bytes_used = fs.bytes_total / 100 * percent;
        fs.bytes_available = fs.bytes_total - fs.bytes_used;
        r
    }

    #[test]
    fn an_acknowledged_condition_is_quiet_until_it_gets_worse_and_a_mute_silences_a_rule() {
        let config = AlertsConfig::default();
        let at = |mut r: Report, day: i64| {
            r.report_id = Uuid::new_v4();
            r.collected_at += Duration::days(day);
            prepared_from(&r, &config)
        };
        let mut s = Stored::new();
        let first = at(filled(example(), 91), 0);
        let d = s.deliver(&[&first], &config);
        assert_eq!(opened(&d), [(Rule::FilesystemFull, AlertState::Firing)]);
        // The operator acknowledges it: storage resolves the alert and keeps the ack.
        let (fp, alert) = s
            .firing
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("one alert firing");
        s.firing.clear();
        s.acks.insert(
            fp.clone(),
            Ack {
                appliance_id: 1,
                rule: alert.rule,
                acked: Acked {
                    severity: alert.severity,
                    value: alert.value.clone(),
                },
            },
        );
        // A number ticking up within the same severity is the same condition.
        let again = at(filled(example(), 93), 1);
        let d = s.deliver(&[&again], &config);
        assert!(d.alerts.opened.is_empty(), "{:?}", d.alerts.opened);
        assert!(d.alerts.unacked.is_empty());
        // Past the critical threshold: worse, so the acknowledgement ends and it fires.
        let worse = at(filled(example(), 97), 2);
        let d = s.deliver(&[&worse], &config);
        assert_eq!(d.alerts.unacked, [fp], "worse: the acknowledgement ends");
        let full: Vec<(Severity, AlertState)> = d
            .alerts
            .opened
            .iter()
            .filter(|a| a.rule == Rule::FilesystemFull)
            .map(|a| (a.severity, a.state()))
            .collect();
        assert_eq!(full, [(Severity::Critical, AlertState::Firing)]);

        // Muted for this appliance: the rule's findings open nothing, the others still do.
        let mut s = Stored::new();
        s.mutes.push(Mute {
            appliance_id: 1,
            rule: Some(Rule::FilesystemFull),
        });
        let mut full_and_down = filled(example(), 97);
        full_and_down.app.status = phonehome_schema::AppStatus::Unhealthy;
        let full_and_down = at(full_and_down, 0);
        let d = s.deliver(&[&full_and_down], &config);
        let rules: Vec<Rule> = d.alerts.opened.iter().map(|a| a.rule).collect();
        assert_eq!(rules, [Rule::AppUnhealthy]);
    }

    #[test]
    fn a_late_report_is_counted_and_judges_nothing() {
        let config = AlertsConfig::default();
        let mut s = Stored::new();
        s.deliver(&[&day(5, 0)], &config);
        let late = day(1, 99);
        let d = s.deliver(&[&late], &config);
        let u = &d.appliances[late.serial.as_str()];
        assert_eq!(u.stored, 1);
        assert!(u.newest.is_none(), "the past does not move the appliance");
        assert_eq!(d.changes, Changes::default());
        assert_eq!(d.alerts, Transitions::default());
    }

    #[test]
    fn findings_past_the_appliances_limit_fold_into_one_alert() {
        let config = AlertsConfig {
            max_open_per_appliance: 1,
            ..AlertsConfig::default()
        };
        let mut s = Stored::new();
        let mut r = filled(example(), 97);
        r.smart.devices[0].temperature_celsius = Some(75);
        let r = prepared_from(&r, &config);
        let d = s.deliver(&[&r], &config);
        let rules: Vec<Rule> = d.alerts.opened.iter().map(|a| a.rule).collect();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(rules.contains(&Rule::AlertsFolded), "{rules:?}");
        assert!(
            rules.contains(&Rule::FilesystemFull),
            "the most severe (critical) keeps its slot: {rules:?}"
        );
    }

    #[test]
    fn evidence_is_kept_without_a_state_and_when_the_facts_change() {
        let mut s = Stored::new();
        let config = AlertsConfig::default();
        let mut r = example();
        r.smart.devices[0].evidence = Some(serde_json::json!({"smartctl": {"exit_status": 0}}));
        let prepare = |r: &Report, day: i64, reallocated: u64| {
            let mut r = r.clone();
            r.report_id = Uuid::new_v4();
            r.collected_at += Duration::days(day);
            r.smart.devices[0].reallocated_sectors = Some(reallocated);
            prepared_from(&r, &config)
        };
        let keeps = |s: &Stored, reports: &[&PreparedReport]| {
            let before = HashMap::from([(reports[0].serial.clone(), s.before.clone())]);
            keep_evidence(reports, &before)
        };
        let first = prepare(&r, 0, 0);
        assert_eq!(keeps(&s, &[&first]), [true], "nothing to compare with");
        s.deliver(&[&first], &config);
        let same = prepare(&r, 1, 0);
        assert_eq!(keeps(&s, &[&same]), [false]);
        s.deliver(&[&same], &config);
        let worse = prepare(&r, 2, 8);
        assert_eq!(keeps(&s, &[&worse]), [true]);

        // Several days of one appliance in one batch (a spool delivered at once): each is
        // compared with the day before it, whatever order they arrive in.
        let s = Stored::new();
        let (d0, d1, d2, d3) = (
            prepare(&r, 0, 0),
            prepare(&r, 1, 0),
            prepare(&r, 2, 8),
            prepare(&r, 3, 8),
        );
        assert_eq!(keeps(&s, &[&d3, &d1, &d0, &d2]), [false, false, true, true]);
    }
}
