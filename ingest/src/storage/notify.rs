//! The Alertmanager notifier's queries: which alerts are due to be sent, and recording that
//! Alertmanager took them, under an advisory lock so that one replica sends per round.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Lock, Storage, StorageError};

/// Held by the replica sending alerts to Alertmanager this round.
const NOTIFY_LOCK: i64 = 8_424_200_004;

/// Which alerts a query is after. Resolutions go first in a round: an episode that ended and
/// a new one of the same fingerprint carry the same labels, and Alertmanager keeps whichever
/// it heard last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Resolved alerts whose resolution Alertmanager has not acknowledged.
    Resolved,
    /// Firing alerts never sent, changed since sent, or sent longer than a resend interval ago.
    Firing,
}

/// An alert as the notifier sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAlert {
    pub id: i64,
    /// The row's version when read (`xmin`): a row changed since then is not marked sent, so
    /// the change goes out next round instead of waiting for a resend.
    pub version: i64,
    pub rule: String,
    pub serial: String,
    pub subject: String,
    pub severity: String,
    pub started_at: DateTime<Utc>,
    /// Set when the alert is resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    pub value: String,
    pub summary: String,
    /// Never sent, or changed since it was: news rather than a heartbeat.
    pub fresh: bool,
    /// The appliance's routing labels (customer, site, …), by name.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The notifier lock for one round: held by a transaction of its own ([`Lock`]), while the
/// round's queries run on pooled connections, each committing as it goes. Dropped without
/// [`NotifierLock::release`] (a round cancelled mid-way), the lock's connection is closed,
/// which releases the lock for the other replicas.
#[derive(Debug)]
pub struct NotifierLock {
    lock: Lock,
    storage: Storage,
}

impl Storage {
    /// Takes the notifier lock unless another replica holds it (`None`: skip this round).
    pub async fn lock_notifier(&self) -> Result<Option<NotifierLock>, StorageError> {
        Ok(self.try_lock(NOTIFY_LOCK).await?.map(|lock| NotifierLock {
            lock,
            storage: self.clone(),
        }))
    }
}

impl NotifierLock {
    /// Up to `limit` alerts of kind `due` with ids above `after_id`, in id order, so that a
    /// round pages through them and never reads one twice (a row not marked sent because it
    /// changed meanwhile waits for the next round).
    pub async fn alerts_to_notify(
        &self,
        due: Due,
        after_id: i64,
        resend: Duration,
        limit: i64,
    ) -> Result<Vec<OutgoingAlert>, StorageError> {
        let client = self.storage.pool().get().await?;
        let condition = match due {
            Due::Resolved => "a.state = 'resolved' AND NOT a.resolution_notified",
            Due::Firing => {
                "a.state = 'firing' AND (a.notified_at IS NULL
                     OR a.notified_at < now() - make_interval(secs => $3))"
            }
        };
        let sql = format!(
            "SELECT a.id, a.xmin::text::bigint, a.rule, ap.serial, a.subject, a.severity,
                        a.started_at, a.resolved_at, a.value, a.summary, a.notified_at IS NULL,
                        coalesce((SELECT jsonb_object_agg(l.name, l.value) FROM appliance_labels l
                                  WHERE l.serial = ap.serial), '{{}}'::jsonb)
                 FROM alerts a JOIN appliances ap ON ap.id = a.appliance_id
                 WHERE a.id > $1 AND {condition}
                 ORDER BY a.id LIMIT $2"
        );
        let resend_secs = resend.as_secs_f64();
        let rows = match due {
            Due::Resolved => client.query(&sql, &[&after_id, &limit]).await?,
            Due::Firing => {
                client
                    .query(&sql, &[&after_id, &limit, &resend_secs])
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| OutgoingAlert {
                id: r.get(0),
                version: r.get(1),
                rule: r.get(2),
                serial: r.get(3),
                subject: r.get(4),
                severity: r.get(5),
                started_at: r.get(6),
                resolved_at: r.get(7),
                value: r.get(8),
                summary: r.get(9),
                fresh: r.get(10),
                labels: serde_json::from_value(r.get::<_, serde_json::Value>(11))
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Records that Alertmanager accepted `sent`: `notified_at` becomes now, and a resolved
    /// alert's resolution counts as delivered. Rows changed since they were read are left
    /// alone. Returns how many rows were marked.
    pub async fn mark_notified(&self, sent: &[OutgoingAlert]) -> Result<u64, StorageError> {
        if sent.is_empty() {
            return Ok(0);
        }
        let client = self.storage.pool().get().await?;
        // SKIP LOCKED: a row a report batch holds is being changed, so it is not ours to mark;
        // and never waiting on a batch's row locks means never deadlocking one.
        let sql = "UPDATE alerts a SET notified_at = now(),
                     resolution_notified = (a.state = 'resolved')
                 FROM (SELECT t.id FROM alerts t
                       JOIN unnest($1::bigint[], $2::bigint[]) AS s(id, version) ON t.id = s.id
                       WHERE t.xmin::text::bigint = s.version
                       FOR UPDATE OF t SKIP LOCKED) l
                 WHERE a.id = l.id";
        let ids: Vec<i64> = sent.iter().map(|a| a.id).collect();
        let versions: Vec<i64> = sent.iter().map(|a| a.version).collect();
        Ok(client.execute(sql, &[&ids, &versions]).await?)
    }

    /// Releases the lock.
    pub async fn release(self) -> Result<(), StorageError> {
        self.lock.release().await
    }
}
