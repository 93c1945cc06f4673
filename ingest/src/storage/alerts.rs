//! The alert lifecycle inside a report batch: the rules' findings for each report that moves an
//! appliance forward are matched against that appliance's firing alerts. A finding with no
//! firing alert opens one; a firing alert whose condition is gone resolves; a condition that
//! still holds writes nothing (rules judged by change or by event renew their alert only when
//! the value rises again or the event recurs).

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Transaction;

use super::StorageError;
use crate::alerts::{Acked, AlertsConfig, Finding, Lifecycle};

/// A firing alert as the batch found it (or opened it).
#[derive(Debug, Clone)]
struct Firing {
    /// `None` until inserted at the end of the batch.
    id: Option<i64>,
    rule: String,
    appliance_id: i32,
    subject: String,
    severity: String,
    started_at: DateTime<Utc>,
    changed_at: DateTime<Utc>,
    value: String,
    summary: String,
    resolved_at: Option<DateTime<Utc>>,
    dirty: bool,
}

/// An acknowledgement, as the batch found it.
#[derive(Debug, Clone)]
struct Ack {
    appliance_id: i32,
    rule: String,
    acked: Acked,
}

/// A mute in force for one of the batch's appliances.
#[derive(Debug, Clone)]
struct Mute {
    appliance_id: i32,
    /// `None`: every rule.
    rule: Option<String>,
}

/// The batch's alert state for its appliances.
#[derive(Debug, Default)]
pub(super) struct AlertBook {
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
fn lifecycle(config: &AlertsConfig, rule: &str, subject: &str) -> Lifecycle {
    if rule == "identity_conflict" && subject.contains("_shared:") {
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
    if a.rule == "appliance_silent" {
        return true;
    }
    let judged_here = judged.covers(&a.rule);
    if !config.enabled(&a.rule) {
        // Switched off: its alerts end rather than fire for ever.
        return true;
    }
    match lifecycle(config, &a.rule, &a.subject) {
        Lifecycle::Level => judged_here,
        Lifecycle::QuietFor(days) => {
            judged_here && at.signed_duration_since(a.changed_at) >= Duration::days(i64::from(days))
        }
        Lifecycle::HoldFor(days) => {
            (a.rule == "disk_missing" && present_drives.contains(a.subject.as_str()))
                || at.signed_duration_since(a.changed_at) >= Duration::days(i64::from(days))
        }
    }
}

pub(super) fn fingerprint(rule: &str, serial: &str, subject: &str) -> String {
    format!("{rule}/{serial}/{subject}")
}

/// What a report lets the rules judge: a rule whose section could not be read must not resolve
/// its alerts on that report.
#[derive(Debug, Clone, Copy)]
pub(super) struct Judged {
    pub drives: bool,
    pub filesystems: bool,
    pub nics: bool,
}

impl Judged {
    /// Whether this report judged `rule`'s section (rules of the report as a whole always).
    fn covers(self, rule: &str) -> bool {
        match rule {
            "disk_failing" | "disk_wearout" | "disk_temperature" | "disk_degrading" => self.drives,
            "filesystem_full" | "filesystem_filling" => self.filesystems,
            "nic_errors" => self.nics,
            // Judged every minute by the silence check, not by reports.
            "appliance_silent" => false,
            _ => true,
        }
    }
}

/// One report, as the lifecycle sees it.
#[derive(Debug)]
pub(super) struct Evaluated<'a> {
    pub appliance_id: i32,
    pub serial: &'a str,
    pub at: DateTime<Utc>,
    pub findings: &'a [Finding],
    pub judged: Judged,
    /// Drive keys in the report: a missing drive back in place resolves its alert.
    pub present_drives: &'a HashSet<&'a str>,
}

impl AlertBook {
    /// Loads the firing alerts of `appliance_ids`.
    pub(super) async fn load(
        tx: &Transaction<'_>,
        appliance_ids: &[i32],
    ) -> Result<Self, StorageError> {
        let stmt = tx
            .prepare_cached(
                "SELECT id, fingerprint, rule, appliance_id, subject, severity, started_at,
                        changed_at, value, summary
                 FROM alerts WHERE appliance_id = ANY($1) AND state = 'firing'",
            )
            .await?;
        let mut firing = HashMap::new();
        for r in tx.query(&stmt, &[&appliance_ids]).await? {
            firing.insert(
                r.get::<_, String>(1),
                Firing {
                    id: Some(r.get(0)),
                    rule: r.get(2),
                    appliance_id: r.get(3),
                    subject: r.get(4),
                    severity: r.get(5),
                    started_at: r.get(6),
                    changed_at: r.get(7),
                    value: r.get(8),
                    summary: r.get(9),
                    resolved_at: None,
                    dirty: false,
                },
            );
        }
        // Acknowledgements and mutes are operators' rare decisions: small, indexed lookups.
        let acks_stmt = tx
            .prepare_cached(
                "SELECT fingerprint, appliance_id, rule, severity, value
                 FROM alert_acks WHERE appliance_id = ANY($1)",
            )
            .await?;
        let acks = tx
            .query(&acks_stmt, &[&appliance_ids])
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    Ack {
                        appliance_id: r.get(1),
                        rule: r.get(2),
                        acked: Acked {
                            severity: r.get(3),
                            value: r.get(4),
                        },
                    },
                )
            })
            .collect();
        let mutes_stmt = tx
            .prepare_cached(
                "SELECT a.id, m.rule FROM alert_mutes m
                 JOIN appliances a ON a.serial = m.serial
                 WHERE a.id = ANY($1) AND m.until > now()",
            )
            .await?;
        let mutes = tx
            .query(&mutes_stmt, &[&appliance_ids])
            .await?
            .iter()
            .map(|r| Mute {
                appliance_id: r.get(0),
                rule: r.get(1),
            })
            .collect();
        Ok(AlertBook {
            firing,
            done: Vec::new(),
            acks,
            unacked: Vec::new(),
            mutes,
        })
    }

    /// Whether `rule` is muted for `appliance_id` now (an operator mutes by the clock on the
    /// wall, whatever time a backlog report carries).
    fn muted(&self, appliance_id: i32, rule: &str) -> bool {
        self.mutes
            .iter()
            .any(|m| m.appliance_id == appliance_id && m.rule.as_deref().is_none_or(|r| r == rule))
    }

    /// Drops the acknowledgement of `fp`, if there is one.
    fn unack(&mut self, fp: &str) {
        if self.acks.remove(fp).is_some() {
            self.unacked.push(fp.to_owned());
        }
    }

    /// Applies one report's findings.
    pub(super) fn apply(&mut self, config: &AlertsConfig, e: Evaluated<'_>) {
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
        for f in findings.iter().filter(|f| config.rule_enabled(f.rule)) {
            if self.muted(appliance_id, f.rule.as_str()) {
                continue;
            }
            let fp = fingerprint(f.rule.as_str(), serial, &f.subject);
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
            .map(|f| fingerprint(f.rule.as_str(), serial, &f.subject))
            .collect();
        let cleared: Vec<String> = self
            .acks
            .iter()
            .filter(|(fp, a)| {
                a.appliance_id == appliance_id
                    && !present.contains(*fp)
                    && config.lifecycle(&a.rule) == Lifecycle::Level
                    && judged.covers(&a.rule)
            })
            .map(|(fp, _)| fp.clone())
            .collect();
        for fp in cleared {
            self.unack(&fp);
        }
        // Slots held after this report: alerts it renews, and those it does not end.
        let renewed: HashSet<String> = ordered
            .iter()
            .map(|f| fingerprint(f.rule.as_str(), serial, &f.subject))
            .collect();
        let mut open_here = self
            .firing
            .iter()
            .filter(|(fp, a)| {
                a.appliance_id == appliance_id
                    && a.rule != "alerts_folded"
                    && (renewed.contains(*fp) || !ends(config, a, at, judged, present_drives))
            })
            .count();
        let mut folded = 0usize;
        ordered.sort_by_key(|f| f.severity.order());
        for f in ordered {
            let fp = fingerprint(f.rule.as_str(), serial, &f.subject);
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
                rule: crate::alerts::Rule::AlertsFolded,
                subject: String::new(),
                severity: crate::alerts::Severity::Warning,
                value: folded.to_string(),
                summary: format!(
                    "{folded} more findings were not opened as alerts: this appliance already \
                     has {limit} firing (alerts.max_open_per_appliance); see its page"
                ),
            };
            let fp = fingerprint(f.rule.as_str(), serial, &f.subject);
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
        for fp in ended {
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
                        rule: f.rule.as_str().to_owned(),
                        appliance_id,
                        subject: f.subject.clone(),
                        severity: f.severity.as_str().to_owned(),
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
                let renews = lifecycle(config, f.rule.as_str(), &f.subject) != Lifecycle::Level;
                let worse = a.severity != f.severity.as_str();
                // The count of folded findings is news too.
                let folded_more = f.rule == crate::alerts::Rule::AlertsFolded && a.value != f.value;
                if renews || worse || folded_more {
                    a.changed_at = at;
                    a.value = f.value.clone();
                    a.summary = f.summary.clone();
                    a.severity = f.severity.as_str().to_owned();
                    a.dirty = true;
                }
            }
        }
    }

    /// Ends `appliance_id`'s firing alert of `rule` (any subject), if there is one, and the
    /// acknowledgement of its condition (a report ends silence).
    pub(super) fn resolve(&mut self, appliance_id: i32, rule: &str, at: DateTime<Utc>) {
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
        for fp in ended {
            if let Some(mut a) = self.firing.remove(&fp) {
                a.resolved_at = Some(at);
                a.dirty = true;
                self.done.push(a);
            }
        }
    }

    /// Writes what changed: new episodes, renewed or worsened ones, resolutions.
    pub(super) async fn write(
        self,
        tx: &Transaction<'_>,
        serials: &HashMap<i32, String>,
        config: &AlertsConfig,
    ) -> Result<(), StorageError> {
        if !self.unacked.is_empty() {
            let stmt = tx
                .prepare_cached("DELETE FROM alert_acks WHERE fingerprint = ANY($1)")
                .await?;
            tx.execute(&stmt, &[&self.unacked]).await?;
        }
        let all: Vec<&Firing> = self
            .firing
            .values()
            .chain(self.done.iter())
            .filter(|a| a.dirty)
            .collect();
        let (new, old): (Vec<&Firing>, Vec<&Firing>) =
            all.into_iter().partition(|a| a.id.is_none());
        // Resolutions first: an alert that ended and began again within the batch (a
        // backlog of days, or a bulk fill) has its old episode out of the firing index before
        // the new one goes in.
        if !old.is_empty() {
            // Any change is news for Alertmanager: notified_at goes back to NULL.
            let stmt = tx
                .prepare_cached(
                    "UPDATE alerts a SET
                         state = CASE WHEN u.resolved_at IS NULL THEN 'firing' ELSE 'resolved' END,
                         resolved_at = u.resolved_at, severity = u.severity, value = u.value,
                         summary = u.summary, changed_at = u.changed_at, notified_at = NULL,
                         resolution_notified = false
                     FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[],
                         $5::text[], $6::timestamptz[])
                         AS u(id, resolved_at, severity, value, summary, changed_at)
                     WHERE a.id = u.id",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &old.iter().filter_map(|a| a.id).collect::<Vec<_>>(),
                    &old.iter().map(|a| a.resolved_at).collect::<Vec<_>>(),
                    &old.iter().map(|a| a.severity.as_str()).collect::<Vec<_>>(),
                    &old.iter().map(|a| a.value.as_str()).collect::<Vec<_>>(),
                    &old.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(),
                    &old.iter().map(|a| a.changed_at).collect::<Vec<_>>(),
                ],
            )
            .await?;
        }
        let serial = |a: &Firing| serials.get(&a.appliance_id).cloned().unwrap_or_default();
        // A condition back within the window reopens its last episode (after the resolutions
        // above, so one that ended earlier in this batch counts too); the rest are new.
        let mut new = new;
        if config.reopen_within_hours > 0 && !new.is_empty() {
            let firing_again: Vec<&Firing> = new
                .iter()
                .copied()
                .filter(|a| a.resolved_at.is_none())
                .collect();
            let stmt = tx
                .prepare_cached(
                    "UPDATE alerts a SET state = 'firing', resolved_at = NULL,
                         severity = u.severity, value = u.value, summary = u.summary,
                         changed_at = u.changed_at, notified_at = NULL,
                         resolution_notified = false, reopened = a.reopened + 1
                     FROM (SELECT DISTINCT ON (al.fingerprint) al.id, n.severity, n.value,
                                  n.summary, n.changed_at
                           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                       $5::timestamptz[])
                                AS n(fingerprint, severity, value, summary, changed_at)
                           JOIN alerts al ON al.fingerprint = n.fingerprint
                                AND al.state = 'resolved'
                                AND al.resolved_at > n.changed_at - make_interval(hours => $6)
                           ORDER BY al.fingerprint, al.resolved_at DESC) u
                     WHERE a.id = u.id
                     RETURNING a.fingerprint",
                )
                .await?;
            let hours = i32::try_from(config.reopen_within_hours).unwrap_or(i32::MAX);
            let reopened: HashSet<String> = tx
                .query(
                    &stmt,
                    &[
                        &firing_again
                            .iter()
                            .map(|a| fingerprint(&a.rule, &serial(a), &a.subject))
                            .collect::<Vec<_>>(),
                        &firing_again
                            .iter()
                            .map(|a| a.severity.as_str())
                            .collect::<Vec<_>>(),
                        &firing_again
                            .iter()
                            .map(|a| a.value.as_str())
                            .collect::<Vec<_>>(),
                        &firing_again
                            .iter()
                            .map(|a| a.summary.as_str())
                            .collect::<Vec<_>>(),
                        &firing_again
                            .iter()
                            .map(|a| a.started_at)
                            .collect::<Vec<_>>(),
                        &hours,
                    ],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            new.retain(|a| !reopened.contains(&fingerprint(&a.rule, &serial(a), &a.subject)));
        }
        if !new.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO alerts (fingerprint, rule, appliance_id, subject, severity, state,
                         started_at, resolved_at, value, summary, changed_at)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
                         $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[],
                         $9::text[], $10::text[], $11::timestamptz[])",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &new.iter()
                        .map(|a| fingerprint(&a.rule, &serial(a), &a.subject))
                        .collect::<Vec<_>>(),
                    &new.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.appliance_id).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.subject.as_str()).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.severity.as_str()).collect::<Vec<_>>(),
                    &new.iter()
                        .map(|a| {
                            if a.resolved_at.is_some() {
                                "resolved"
                            } else {
                                "firing"
                            }
                        })
                        .collect::<Vec<_>>(),
                    &new.iter().map(|a| a.started_at).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.resolved_at).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.value.as_str()).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(),
                    &new.iter().map(|a| a.changed_at).collect::<Vec<_>>(),
                ],
            )
            .await?;
        }
        Ok(())
    }
}
