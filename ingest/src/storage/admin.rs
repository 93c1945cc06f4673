//! Operators' writes and what guards them: API tokens (by the SHA-256 of their secret), the
//! appliance lifecycle, and the audit log every write lands in within its own transaction.
//! Rows become the domain types of `auth` and `lifecycle` here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Storage, StorageError};
use crate::auth::Role;
use crate::lifecycle::{AlertEffect, Change, Lifecycle, State};

/// An API token as `token list` shows it (the secret is never stored, so never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a presented secret's digest matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMatch {
    pub id: i32,
    pub name: String,
    pub role: Role,
    pub revoked: bool,
}

/// Why an operator's write was not done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a token named {0:?} already exists (names are never reused, revoked ones included)")]
    NameTaken(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("token {0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> Self {
        AdminError::Storage(StorageError::Query(e))
    }
}

/// What storing a lifecycle change did.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleOutcome {
    pub previous: State,
    pub resolved_alerts: u64,
    pub audit_id: i64,
}

/// Audit rows shown per page.
pub const AUDIT_PAGE: i64 = 50;

fn lifecycle_row(r: &Row) -> Lifecycle {
    let state: String = r.get("state");
    Lifecycle {
        serial: r.get("serial"),
        // The table's CHECK allows only the three names; anything else would be a schema this
        // binary does not know, and the safe reading is "active" (alerts keep working).
        state: State::parse(&state).unwrap_or(State::Active),
        until: r.get("until"),
        note: r.get("note"),
        changed_at: r.get("changed_at"),
        changed_by: r.get("changed_by"),
    }
}

fn role(s: &str) -> Role {
    // The CHECK allows 'read' and 'admin' only; an unknown one gets the lesser right.
    Role::parse(s).unwrap_or(Role::Read)
}

/// Inserts one audit row inside `tx`, so the change and its record commit together.
pub(crate) async fn audit(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<i64, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "INSERT INTO audit_log (at, actor, action, target, detail)
             VALUES (now(), $1, $2, $3, $4) RETURNING id",
            &[&actor, &action, &target, detail],
        )
        .await?
        .get(0))
}

impl Storage {
    /// Stores a new token's digest, and its audit row.
    pub async fn create_api_token(
        &self,
        name: &str,
        role: Role,
        sha256: &[u8; 32],
        actor: &str,
    ) -> Result<(), AdminError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO api_tokens (name, role, token_sha256, created_at, created_by)
                 VALUES ($1, $2, $3, now(), $4) ON CONFLICT (name) DO NOTHING",
                &[&name, &role.as_str(), &sha256.as_slice(), &actor],
            )
            .await?;
        if inserted == 0 {
            return Err(AdminError::NameTaken(name.to_owned()));
        }
        audit(
            &tx,
            actor,
            "token.create",
            &format!("token:{name}"),
            &serde_json::json!({ "role": role.as_str() }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a token revoked (it stays listed, its name taken), and its audit row.
    pub async fn revoke_api_token(&self, name: &str, actor: &str) -> Result<(), AdminError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT revoked_at IS NOT NULL FROM api_tokens WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        match row.map(|r| r.get::<_, bool>(0)) {
            None => return Err(AdminError::NoSuchToken(name.to_owned())),
            Some(true) => return Err(AdminError::AlreadyRevoked(name.to_owned())),
            Some(false) => {}
        }
        tx.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1",
            &[&name],
        )
        .await?;
        audit(
            &tx,
            actor,
            "token.revoke",
            &format!("token:{name}"),
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every token, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, StorageError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT name, role, created_at, created_by, revoked_at, last_used_at
                 FROM api_tokens ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiToken {
                name: r.get(0),
                role: role(r.get(1)),
                created_at: r.get(2),
                created_by: r.get(3),
                revoked_at: r.get(4),
                last_used_at: r.get(5),
            })
            .collect())
    }

    /// The token whose secret has this digest, revoked or not.
    pub async fn api_token_by_digest(
        &self,
        sha256: &[u8; 32],
    ) -> Result<Option<TokenMatch>, StorageError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT id, name, role, revoked_at IS NOT NULL FROM api_tokens
                 WHERE token_sha256 = $1",
                &[&sha256.as_slice()],
            )
            .await?;
        Ok(row.map(|r| TokenMatch {
            id: r.get(0),
            name: r.get(1),
            role: role(r.get(2)),
            revoked: r.get(3),
        }))
    }

    /// Records that a token was used now (callers do this at most once a minute per token).
    pub async fn touch_api_token(&self, id: i32) -> Result<(), StorageError> {
        let client = self.pool().get().await?;
        client
            .execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Sets an appliance's lifecycle, in one transaction with its effects and its audit row:
    /// `active` deletes the row; `expected_offline` resolves a firing `appliance_silent`;
    /// `retired` resolves every firing alert and revokes the serial (`revoked_serials`, which
    /// refuses every certificate for it issued until now). Going back to `active` keeps the
    /// revocation: a refurbished appliance enrols again with a new certificate.
    pub async fn set_lifecycle(
        &self,
        serial: &str,
        change: &Change,
        actor: &str,
    ) -> Result<LifecycleOutcome, StorageError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        // The appliance first, as report batches lock it: the alerts' trigger changes its
        // health, and the two must queue rather than deadlock. It may never have reported.
        let appliance: Option<i32> = tx
            .query_opt(
                "SELECT id FROM appliances WHERE serial = $1 FOR UPDATE",
                &[&serial],
            )
            .await?
            .map(|r| r.get(0));
        let previous = tx
            .query_opt(
                "SELECT serial, state, until, note, changed_at, changed_by
                 FROM appliance_lifecycle WHERE serial = $1 FOR UPDATE",
                &[&serial],
            )
            .await?
            .map(|r| lifecycle_row(&r));
        let note = change.note.clone().unwrap_or_default();
        match change.state {
            State::Active => {
                tx.execute(
                    "DELETE FROM appliance_lifecycle WHERE serial = $1",
                    &[&serial],
                )
                .await?;
            }
            state => {
                tx.execute(
                    "INSERT INTO appliance_lifecycle (serial, state, until, note, changed_at,
                         changed_by)
                     VALUES ($1, $2, $3, $4, now(), $5)
                     ON CONFLICT (serial) DO UPDATE SET state = EXCLUDED.state,
                         until = EXCLUDED.until, note = EXCLUDED.note,
                         changed_at = EXCLUDED.changed_at, changed_by = EXCLUDED.changed_by",
                    &[&serial, &state.as_str(), &change.until, &note, &actor],
                )
                .await?;
            }
        }
        let rules: Option<&[&str]> = match change.alert_effect() {
            AlertEffect::None => None,
            AlertEffect::ResolveSilent => Some(&["appliance_silent"]),
            AlertEffect::ResolveAll => Some(&[]),
        };
        let mut resolved_alerts = 0;
        if let (Some(id), Some(rules)) = (appliance, rules) {
            let rules: Vec<&str> = rules.to_vec();
            let params: [&(dyn ToSql + Sync); 2] = [&id, &rules];
            resolved_alerts = tx
                .execute(
                    // An empty list means every rule. resolution_notified stays false, so
                    // Alertmanager hears of the resolution.
                    "UPDATE alerts SET state = 'resolved', resolved_at = now()
                     WHERE appliance_id = $1 AND state = 'firing'
                       AND (cardinality($2::text[]) = 0 OR rule = ANY($2::text[]))",
                    &params,
                )
                .await?;
        }
        if change.state == State::Retired {
            tx.execute(
                "INSERT INTO revoked_serials (serial, revoked_at, revoked_by, reason)
                 VALUES ($1, now(), $2, $3)
                 ON CONFLICT (serial) DO UPDATE SET revoked_at = EXCLUDED.revoked_at,
                     revoked_by = EXCLUDED.revoked_by, reason = EXCLUDED.reason",
                &[&serial, &actor, &format!("retired: {note}")],
            )
            .await?;
        }
        let previous_state = previous.as_ref().map_or(State::Active, |p| p.state);
        let audit_id = audit(
            &tx,
            actor,
            "appliance.lifecycle",
            serial,
            &serde_json::json!({
                "state": change.state.as_str(),
                "until": change.until,
                "note": note,
                "previous_state": previous_state.as_str(),
                "resolved_alerts": resolved_alerts,
                "serial_revoked": change.state == State::Retired,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(LifecycleOutcome {
            previous: previous_state,
            resolved_alerts,
            audit_id,
        })
    }

    /// One appliance's stored lifecycle (`None`: active).
    pub async fn lifecycle(&self, serial: &str) -> Result<Option<Lifecycle>, StorageError> {
        let client = self.pool().get().await?;
        Ok(client
            .query_opt(
                "SELECT serial, state, until, note, changed_at, changed_by
                 FROM appliance_lifecycle WHERE serial = $1",
                &[&serial],
            )
            .await?
            .map(|r| lifecycle_row(&r)))
    }

    /// Every stored lifecycle. Operators set these by hand, so the table stays small next to
    /// the fleet; the silence check and the counts judge them in Rust (`lifecycle`).
    pub async fn lifecycles(&self) -> Result<Vec<Lifecycle>, StorageError> {
        let client = self.pool().get().await?;
        Ok(client
            .query(
                "SELECT serial, state, until, note, changed_at, changed_by
                 FROM appliance_lifecycle ORDER BY serial",
                &[],
            )
            .await?
            .iter()
            .map(lifecycle_row)
            .collect())
    }

    /// A page of the audit log, newest first: rows before id `before` (the cursor), about
    /// `target` if given.
    pub async fn audit_log(
        &self,
        target: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<phonehome_dashboard::model::AuditRow>, StorageError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT id, at, actor, action, target, detail FROM audit_log
                 WHERE ($1::text IS NULL OR target = $1)
                   AND ($2::bigint IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                &[&target, &before, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| phonehome_dashboard::model::AuditRow {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }
}

/// Why labels could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The change is not allowed (too many labels); nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<tokio_postgres::Error> for LabelError {
    fn from(e: tokio_postgres::Error) -> Self {
        LabelError::Storage(e.into())
    }
}

impl Storage {
    /// `serial`'s labels, by name.
    pub async fn labels(
        &self,
        serial: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, StorageError> {
        let client = self.pool().get().await?;
        Ok(client
            .query(
                "SELECT name, value FROM appliance_labels WHERE serial = $1",
                &[&serial],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Applies `change` to `serial`'s labels on behalf of `actor`, with its audit row, in one
    /// transaction; returns the labels after.
    pub async fn set_labels(
        &self,
        serial: &str,
        change: &crate::labels::LabelChange,
        actor: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, LabelError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await?;
        // Two operators labelling one appliance at once queue here, so the bound holds. A
        // transaction lock: nothing outlives the transaction (a transaction pooler is safe).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('phonehome.labels'), hashtext($1))",
            &[&serial],
        )
        .await?;
        let current: std::collections::BTreeMap<String, String> = tx
            .query(
                "SELECT name, value FROM appliance_labels WHERE serial = $1",
                &[&serial],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let next = change.apply(&current).map_err(LabelError::Refused)?;
        tx.execute("DELETE FROM appliance_labels WHERE serial = $1", &[&serial])
            .await?;
        let (names, values): (Vec<&str>, Vec<&str>) =
            next.iter().map(|(n, v)| (n.as_str(), v.as_str())).unzip();
        tx.execute(
            "INSERT INTO appliance_labels (serial, name, value)
             SELECT $1, * FROM unnest($2::text[], $3::text[])",
            &[&serial, &names, &values],
        )
        .await?;
        let detail = serde_json::json!({
            "before": current,
            "after": next,
        });
        audit(&tx, actor, "set_labels", serial, &detail).await?;
        tx.commit().await?;
        Ok(next)
    }
}

/// Why an acknowledgement or a mute was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no alert {0}")]
    NoAlert(i64),
    #[error("alert {0} is not firing (it resolved at {1}); nothing to acknowledge")]
    NotFiring(i64, String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<tokio_postgres::Error> for AckError {
    fn from(e: tokio_postgres::Error) -> Self {
        AckError::Storage(e.into())
    }
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub serial: String,
    pub rule: String,
    pub subject: String,
    pub audit_id: i64,
}

/// What a mute did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Muted {
    pub id: i64,
    pub resolved_alerts: u64,
    pub audit_id: i64,
}

impl Storage {
    /// Acknowledges firing alert `id`: it resolves, and its condition stays quiet until it gets
    /// worse (`alerts::worse_than_acked`); with the audit row, in one transaction.
    pub async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        note: &str,
    ) -> Result<Acknowledged, AckError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await?;
        // The appliance first, as report batches lock it, so the two queue.
        let appliance: Option<i32> = tx
            .query_opt(
                "SELECT a.id FROM appliances a
                 WHERE a.id = (SELECT appliance_id FROM alerts WHERE id = $1) FOR UPDATE",
                &[&id],
            )
            .await?
            .map(|r| r.get(0));
        let Some(appliance_id) = appliance else {
            return Err(AckError::NoAlert(id));
        };
        let row = tx
            .query_one(
                "SELECT al.fingerprint, al.rule, al.subject, al.severity, al.value, al.state,
                        coalesce(al.resolved_at::text, ''), a.serial
                 FROM alerts al JOIN appliances a ON a.id = al.appliance_id
                 WHERE al.id = $1 FOR UPDATE OF al",
                &[&id],
            )
            .await?;
        let (fingerprint, rule, subject, severity, value, state, resolved, serial): (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
            row.get(7),
        );
        if state != "firing" {
            return Err(AckError::NotFiring(id, resolved));
        }
        tx.execute(
            "INSERT INTO alert_acks (fingerprint, appliance_id, rule, subject, severity, value,
                 acked_at, acked_by, note)
             VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8)
             ON CONFLICT (fingerprint) DO UPDATE SET severity = EXCLUDED.severity,
                 value = EXCLUDED.value, acked_at = EXCLUDED.acked_at,
                 acked_by = EXCLUDED.acked_by, note = EXCLUDED.note",
            &[
                &fingerprint,
                &appliance_id,
                &rule,
                &subject,
                &severity,
                &value,
                &actor,
                &note,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = now(), changed_at = now(),
                 notified_at = NULL, resolution_notified = false
             WHERE id = $1",
            &[&id],
        )
        .await?;
        let detail = serde_json::json!({
            "alert": id, "rule": rule, "subject": subject, "severity": severity,
            "value": value, "note": note,
        });
        let audit_id = audit(&tx, actor, "acknowledge", &serial, &detail).await?;
        tx.commit().await?;
        Ok(Acknowledged {
            serial,
            rule,
            subject,
            audit_id,
        })
    }

    /// Mutes `serial` (every rule, or `rule`) until `until`: its firing alerts of those rules
    /// resolve and none open meanwhile; with the audit row, in one transaction.
    pub async fn mute(
        &self,
        serial: &str,
        rule: Option<&str>,
        until: DateTime<Utc>,
        actor: &str,
        note: &str,
    ) -> Result<Muted, StorageError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let appliance: Option<i32> = tx
            .query_opt(
                "SELECT id FROM appliances WHERE serial = $1 FOR UPDATE",
                &[&serial],
            )
            .await?
            .map(|r| r.get(0));
        let id: i64 = tx
            .query_one(
                "INSERT INTO alert_mutes (serial, rule, until, created_at, created_by, note)
                 VALUES ($1, $2, $3, now(), $4, $5) RETURNING id",
                &[&serial, &rule, &until, &actor, &note],
            )
            .await?
            .get(0);
        let resolved_alerts = match appliance {
            Some(appliance_id) => {
                tx.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = now(),
                         changed_at = now(), notified_at = NULL, resolution_notified = false
                     WHERE appliance_id = $1 AND state = 'firing'
                       AND ($2::text IS NULL OR rule = $2)",
                    &[&appliance_id, &rule],
                )
                .await?
            }
            None => 0,
        };
        let detail = serde_json::json!({
            "mute": id, "rule": rule, "until": until, "note": note,
            "resolved_alerts": resolved_alerts,
        });
        let audit_id = audit(&tx, actor, "mute", serial, &detail).await?;
        tx.commit().await?;
        Ok(Muted {
            id,
            resolved_alerts,
            audit_id,
        })
    }

    /// `serial`'s acknowledged conditions and the mutes in force, for its page.
    pub async fn acks_and_mutes(
        &self,
        serial: &str,
    ) -> Result<
        (
            Vec<phonehome_dashboard::model::AckView>,
            Vec<phonehome_dashboard::model::MuteView>,
        ),
        StorageError,
    > {
        use phonehome_dashboard::model::{AckView, MuteView};
        let client = self.pool().get().await?;
        let acks = client
            .query(
                "SELECT k.rule, k.subject, k.severity, k.value, k.acked_at, k.acked_by, k.note
                 FROM alert_acks k JOIN appliances a ON a.id = k.appliance_id
                 WHERE a.serial = $1 ORDER BY k.acked_at DESC LIMIT 100",
                &[&serial],
            )
            .await?
            .iter()
            .map(|r| AckView {
                rule: r.get(0),
                subject: r.get(1),
                severity: r.get(2),
                value: r.get(3),
                at: r.get(4),
                by: r.get(5),
                note: r.get(6),
            })
            .collect();
        let mutes = client
            .query(
                "SELECT id, rule, until, created_by, note FROM alert_mutes
                 WHERE serial = $1 AND until > now() ORDER BY until DESC LIMIT 100",
                &[&serial],
            )
            .await?
            .iter()
            .map(|r| MuteView {
                id: r.get(0),
                rule: r.get(1),
                until: r.get(2),
                by: r.get(3),
                note: r.get(4),
            })
            .collect();
        Ok((acks, mutes))
    }
}
