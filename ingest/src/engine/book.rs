//! The alert lifecycle inside a report batch: the rules' findings for each report that moves an
//! appliance forward are matched against that appliance's firing alerts. A finding with no
//! firing alert opens one; a firing alert whose condition is gone resolves; a condition that
//! still holds writes nothing (rules judged by change or by event renew their alert only when
//! the value rises again or the event recurs). Acknowledged conditions stay quiet until they
//! get worse, muted ones stay quiet until the mute ends. Pure: storage loads the book, the
//! engine moves it, storage writes its [`Transitions`].

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::alerts::{Acked, AlertState, AlertsConfig, Finding, Lifecycle, Rule, Severity};

/// A firing alert as the batch found it (or opened it).
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// `None` until inserted at the end of the batch.
    pub id: Option<i64>,
    pub rule: Rule,
    pub appliance_id: i32,
    pub subject: String,
    pub severity: Severity,
    pub started_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
    pub value: String,
    pub summary: String,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Changed by this batch: written at its end.
    pub dirty: bool,
}

impl Firing {
    /// Resolved once it has an end.
    pub fn state(&self) -> AlertState {
        if self.resolved_at.is_some() {
            AlertState::Resolved
        } else {
            AlertState::Firing
        }
    }
}

/// An acknowledgement, as the batch found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub appliance_id: i32,
    pub rule: Rule,
    pub acked: Acked,
}

/// A mute in force for one of the batch's appliances.
#[derive(Debug, Clone, PartialEq)]
pub struct Mute {
    pub appliance_id: i32,
    /// `None`: every rule.
    pub rule: Option<Rule>,
}

/// The batch's alert state for its appliances.
#[derive(Debug, Default, Clone)]
pub struct AlertBook {
    /// Firing alerts by fingerprint.
    firing: HashMap<String, Firing>,
    /// Episodes that ended within this batch (opened here or before).
    done: Vec<Firing>,
    /// Acknowledged conditions, by fingerprint.
    acks: HashMap<String, Ack>,
    /// Acknowledgements that ended in this batch (the condition got worse, or cleared).
    unacked: Vec<String>,
    mutes: Vec<Mute>,
}

/// How an alert ends. A shared machine-id or system UUID (a clone) is a condition each report
/// re-checks, so it holds without a write per report and ends when the sharing does; a changed
/// one is an event, held for some days.
fn lifecycle(config: &AlertsConfig, rule: Rule, subject: &str) -> Lifecycle {
    if rule == Rule::IdentityConflict && subject.contains("_shared:") {
        Lifecycle::Level
    } else {
        config.lifecycle(rule)
    }
}

/// Whether firing alert `a`, which this report's findings do not renew, ends with the report
/// (taken `at`, judging the sections `judged`, showing the drives `present_drives`).
fn ends(
    config: &AlertsConfig,
    a: &Firing,
    at: DateTime<Utc>,
    judged: Judged,
    present_drives: &HashSet<&str>,
) -> bool {
    // A report is the end of silence.
    if a.rule == Rule::ApplianceSilent {
        return true;
    }
    let judged_here = judged.covers(a.rule);
    if !config.enabled(a.rule) {
        // Switched off: its alerts end rather than fire for ever.
        return true;
    }
    match lifecycle(config, a.rule, &a.subject) {
        Lifecycle::Level => judged_here,
        Lifecycle::QuietFor(days) => {
            judged_here && at.signed_duration_since(a.changed_at) >= Duration::days(i64::from(days))
        }
        Lifecycle::HoldFor(days) => {
            (a.rule == Rule::DiskMissing && present_drives.contains(a.subject.as_str()))
                || at.signed_duration_since(a.changed_at) >= Duration::days(i64::from(days))
        }
    }
}

/// An alert's identity across episodes: the rule, the appliance and what it is about.
pub fn fingerprint(rule: Rule, serial: &str, subject: &str) -> String {
    format!("{}/{serial}/{subject}", rule.as_str())
}

/// What a report lets the rules judge: a rule whose section could not be read must not resolve
/// its alerts on that report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub drives: bool,
    pub filesystems: bool,
    pub nics: bool,
}

impl Judged {
    /// Whether this report judged `rule`'s section (rules of the report as a whole always).
    pub fn covers(self, rule: Rule) -> bool {
        match rule {
            Rule::DiskFailing | Rule::DiskWearout | Rule::DiskTemperature | Rule::DiskDegrading => {
                self.drives
            }
            Rule::FilesystemFull | Rule::FilesystemFilling => self.filesystems,
            Rule::NicErrors => self.nics,
            // Judged every minute by the silence check, not by reports.
            Rule::ApplianceSilent => false,
            // Judged from what the report says of itself (a missing drive and an identity by
            // their own hold; a blind spot from the scan, which a failed section still names).
            Rule::DiskMissing
            | Rule::DiskUnmonitored
            | Rule::AppUnhealthy
            | Rule::AppOutdated
            | Rule::CollectorDegraded
            | Rule::ClockSkew
            | Rule::CertificateExpiring
            | Rule::IdentityConflict
            | Rule::AlertsFolded => true,
        }
    }
}

/// One report, as the lifecycle sees it.
#[derive(Debug)]
pub struct Evaluated<'a> {
    pub appliance_id: i32,
    pub serial: &'a str,
    pub at: DateTime<Utc>,
    pub findings: &'a [Finding],
    pub judged: Judged,
    /// Drive keys in the report: a missing drive back in place resolves its alert.
    pub present_drives: &'a HashSet<&'a str>,
}

/// What a batch changed in the alert book: storage writes exactly this.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Transitions {
    /// Acknowledgements that ended (the condition got worse, or cleared), by fingerprint.
    pub unacked: Vec<String>,
    /// Episodes already stored that changed: renewed, worsened or resolved.
    pub changed: Vec<Firing>,
    /// Episodes this batch began (resolved already when they also ended in it).
    pub opened: Vec<Firing>,
}

impl AlertBook {
    /// The book as storage found it: firing alerts and acknowledgements by fingerprint, and
    /// the mutes in force.
    pub fn new(
        firing: HashMap<String, Firing>,
        acks: HashMap<String, Ack>,
        mutes: Vec<Mute>,
    ) -> Self {
        AlertBook {
            firing,
            done: Vec::new(),
            acks,
            unacked: Vec::new(),
            mutes,
        }
    }

    /// What the batch changed, for storage to write: dirty episodes (new ones first in time
    /// order, then the rest) and the acknowledgements that ended.
    pub fn into_transitions(self) -> Transitions {
        let mut all: Vec<Firing> = self
            .firing
            .into_values()
            .chain(self.done)
            .filter(|a| a.dirty)
            .collect();
        all.sort_by(|a, b| {
            (a.appliance_id, a.started_at, a.rule, &a.subject).cmp(&(
                b.appliance_id,
                b.started_at,
                b.rule,
                &b.subject,
            ))
        });
        let (opened, changed) = all.into_iter().partition(|a| a.id.is_none());
        let mut unacked = self.unacked;
        unacked.sort();
        Transitions {
            unacked,
            changed,
            opened,
        }
    }

    /// The alerts firing now, by fingerprint.
    pub fn firing(&self) -> &HashMap<String, Firing> {
        &self.firing
    }

    /// Whether `rule` is muted for `appliance_id` now (an operator mutes by the clock on the
    /// wall, whatever time a backlog report carries).
    fn muted(&self, appliance_id: i32, rule: Rule) -> bool {
        self.mutes
            .iter()
            .any(|m| m.appliance_id == appliance_id && m.rule.is_none_or(|r| r == rule))
    }

    /// Drops the acknowledgement of `fp`, if there is one.
    fn unack(&mut self, fp: &str) {
        if self.acks.remove(fp).is_some() {
            self.unacked.push(fp.to_owned());
        }
    }

    /// Applies one report's findings.
    pub fn apply(&mut self, config: &AlertsConfig, e: Evaluated<'_>) {
        let Evaluated {
            appliance_id,
            serial,
            at,
            findings,
            judged,
            present_drives,
        } = e;
        let mut seen = HashSet::new();
        // One appliance's findings open at most `max_open_per_appliance` alerts, the most
        // severe first; the rest are counted in one `alerts_folded` alert, so a report with
        // thousands of full filesystems cannot post thousands of alerts.
        let limit = usize::try_from(config.max_open_per_appliance).unwrap_or(usize::MAX);
        let mut ordered: Vec<&Finding> = Vec::new();
        for f in findings.iter().filter(|f| config.enabled(f.rule)) {
            if self.muted(appliance_id, f.rule) {
                continue;
            }
            let fp = fingerprint(f.rule, serial, &f.subject);
            if let Some(ack) = self.acks.get(&fp) {
                if !crate::alerts::worse_than_acked(config, &ack.acked, f) {
                    // The acknowledged condition, holding still: quiet.
                    continue;
                }
                self.unack(&fp);
            }
            ordered.push(f);
        }
        // A level condition that cleared ends its acknowledgement: if it comes back, it is news.
        let present: HashSet<String> = findings
            .iter()
            .map(|f| fingerprint(f.rule, serial, &f.subject))
            .collect();
        let cleared: Vec<String> = self
            .acks
            .iter()
            .filter(|(fp, a)| {
                a.appliance_id == appliance_id
                    && !present.contains(*fp)
                    && config.lifecycle(a.rule) == Lifecycle::Level
                    && judged.covers(a.rule)
            })
            .map(|(fp, _)| fp.clone())
            .collect();
        for fp in cleared {
            self.unack(&fp);
        }
        // Slots held after this report: alerts it renews, and those it does not end.
        let renewed: HashSet<String> = ordered
            .iter()
            .map(|f| fingerprint(f.rule, serial, &f.subject))
            .collect();
        let mut open_here = self
            .firing
            .iter()
            .filter(|(fp, a)| {
                a.appliance_id == appliance_id
                    && a.rule != Rule::AlertsFolded
                    && (renewed.contains(*fp) || !ends(config, a, at, judged, present_drives))
            })
            .count();
        let mut folded = 0usize;
        ordered.sort_by_key(|f| f.severity.order());
        for f in ordered {
            let fp = fingerprint(f.rule, serial, &f.subject);
            if !self.firing.contains_key(&fp) {
                if open_here >= limit {
                    folded = folded.saturating_add(1);
                    continue;
                }
                open_here = open_here.saturating_add(1);
            }
            self.upsert(config, &fp, f, appliance_id, at);
            seen.insert(fp);
        }
        if folded > 0 {
            let f = Finding {
                rule: Rule::AlertsFolded,
                subject: String::new(),
                severity: Severity::Warning,
                value: folded.to_string(),
                summary: format!(
                    "{folded} more findings were not opened as alerts: this appliance already \
                     has {limit} firing (alerts.max_open_per_appliance); see its page"
                ),
            };
            let fp = fingerprint(f.rule, serial, &f.subject);
            self.upsert(config, &fp, &f, appliance_id, at);
            seen.insert(fp);
        }
        let ended: Vec<String> = self
            .firing
            .iter()
            .filter(|(fp, a)| a.appliance_id == appliance_id && !seen.contains(*fp))
            .filter(|(_, a)| ends(config, a, at, judged, present_drives))
            .map(|(fp, _)| fp.clone())
            .collect();
        self.end(ended, at);
    }

    /// Resolves the firing alerts `fingerprints` at `at`.
    fn end(&mut self, fingerprints: Vec<String>, at: DateTime<Utc>) {
        for fp in fingerprints {
            if let Some(mut a) = self.firing.remove(&fp) {
                a.resolved_at = Some(at);
                a.dirty = true;
                self.done.push(a);
            }
        }
    }

    /// Opens an alert for finding `f` (fingerprint `fp`), or renews the firing one.
    fn upsert(
        &mut self,
        config: &AlertsConfig,
        fp: &str,
        f: &Finding,
        appliance_id: i32,
        at: DateTime<Utc>,
    ) {
        match self.firing.get_mut(fp) {
            None => {
                self.firing.insert(
                    fp.to_owned(),
                    Firing {
                        id: None,
                        rule: f.rule,
                        appliance_id,
                        subject: f.subject.clone(),
                        severity: f.severity,
                        started_at: at,
                        changed_at: at,
                        value: f.value.clone(),
                        summary: f.summary.clone(),
                        resolved_at: None,
                        dirty: true,
                    },
                );
            }
            Some(a) => {
                let renews = lifecycle(config, f.rule, &f.subject) != Lifecycle::Level;
                let worse = a.severity != f.severity;
                // The count of folded findings is news too.
                let folded_more = f.rule == Rule::AlertsFolded && a.value != f.value;
                if renews || worse || folded_more {
                    a.changed_at = at;
                    a.value = f.value.clone();
                    a.summary = f.summary.clone();
                    a.severity = f.severity;
                    a.dirty = true;
                }
            }
        }
    }

    /// Ends `appliance_id`'s firing alert of `rule` (any subject), if there is one, and the
    /// acknowledgement of its condition (a report ends silence).
    pub fn resolve(&mut self, appliance_id: i32, rule: Rule, at: DateTime<Utc>) {
        let acked: Vec<String> = self
            .acks
            .iter()
            .filter(|(_, a)| a.appliance_id == appliance_id && a.rule == rule)
            .map(|(fp, _)| fp.clone())
            .collect();
        for fp in acked {
            self.unack(&fp);
        }
        let ended: Vec<String> = self
            .firing
            .iter()
            .filter(|(_, a)| a.appliance_id == appliance_id && a.rule == rule)
            .map(|(fp, _)| fp.clone())
            .collect();
        self.end(ended, at);
    }
}
