//! The alert book's rows: loads the firing alerts, acknowledgements and mutes of a batch's
//! appliances for the engine ([`crate::engine::AlertBook`]), and writes the transitions it
//! decided (new episodes, renewed or worsened ones, resolutions, ended acknowledgements).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::StorageError;
use crate::alerts::{Acked, AlertsConfig, Rule, Severity};
use crate::engine::{Ack, AlertBook, Firing, Mute, Transitions, fingerprint};

/// Loads the firing alerts of `appliance_ids`.
pub(super) async fn load(
    tx: &Transaction<'_>,
    appliance_ids: &[i32],
) -> Result<AlertBook, StorageError> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, fingerprint, rule, appliance_id, subject, severity, started_at,
                    changed_at, value, summary
             FROM alerts WHERE appliance_id = ANY($1) AND state = 'firing'",
        )
        .await?;
    let mut firing = HashMap::new();
    for r in tx.query(&stmt, &[&appliance_ids]).await? {
        // A rule or severity this version does not know (written by a newer replica during
        // an upgrade) is left as it is: nothing here can judge it.
        let (Some(rule), Some(severity)) = (Rule::parse(r.get(2)), Severity::parse(r.get(5)))
        else {
            continue;
        };
        firing.insert(
            r.get::<_, String>(1),
            Firing {
                id: Some(r.get(0)),
                rule,
                appliance_id: r.get(3),
                subject: r.get(4),
                severity,
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
        .filter_map(|r| {
            let ack = Ack {
                appliance_id: r.get(1),
                rule: Rule::parse(r.get(2))?,
                acked: Acked {
                    severity: Severity::parse(r.get(3))?,
                    value: r.get(4),
                },
            };
            Some((r.get::<_, String>(0), ack))
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
        .filter_map(|r| {
            // A mute of every rule, or of one this version knows.
            let rule = match r.get::<_, Option<&str>>(1) {
                None => None,
                Some(name) => Some(Rule::parse(name)?),
            };
            Some(Mute {
                appliance_id: r.get(0),
                rule,
            })
        })
        .collect();
    Ok(AlertBook::new(firing, acks, mutes))
}

/// Writes what changed: new episodes, renewed or worsened ones, resolutions.
pub(super) async fn write(
    tx: &Transaction<'_>,
    t: &Transitions,
    serials: &HashMap<i32, &str>,
    config: &AlertsConfig,
) -> Result<(), StorageError> {
    if !t.unacked.is_empty() {
        let stmt = tx
            .prepare_cached("DELETE FROM alert_acks WHERE fingerprint = ANY($1)")
            .await?;
        tx.execute(&stmt, &[&t.unacked]).await?;
    }
    let old = &t.changed;
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
    let serial = |a: &Firing| serials.get(&a.appliance_id).copied().unwrap_or_default();
    // A condition back within the window reopens its last episode (after the resolutions
    // above, so one that ended earlier in this batch counts too); the rest are new.
    let mut new: Vec<&Firing> = t.opened.iter().collect();
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
                        .map(|a| fingerprint(a.rule, serial(a), &a.subject))
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
        new.retain(|a| !reopened.contains(&fingerprint(a.rule, serial(a), &a.subject)));
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
                    .map(|a| fingerprint(a.rule, serial(a), &a.subject))
                    .collect::<Vec<_>>(),
                &new.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
                &new.iter().map(|a| a.appliance_id).collect::<Vec<_>>(),
                &new.iter().map(|a| a.subject.as_str()).collect::<Vec<_>>(),
                &new.iter().map(|a| a.severity.as_str()).collect::<Vec<_>>(),
                &new.iter().map(|a| a.state().as_str()).collect::<Vec<_>>(),
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
