//! The fleet identity's queries: one-time enrolment tokens, the certificates the ingest issues,
//! revocation and the CRL's entries. Signing happens inside the transaction that spends the
//! token or records the renewal, so a certificate is never handed out without its row.

use chrono::{DateTime, Utc};
use phonehome_pki::ca::Issued;
use phonehome_schema::Serial;

use super::admin::audit;
use super::{Storage, StorageError};
use crate::revocation::Snapshot;
use crate::tls::ApplianceIdentity;

/// Why an enrolment was refused. Every variant issues nothing.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("unknown enrolment token")]
    UnknownToken,
    #[error("this enrolment token was already used on {0}")]
    Used(DateTime<Utc>),
    #[error("this enrolment token expired on {0}")]
    Expired(DateTime<Utc>),
    #[error("this enrolment token is for another serial")]
    OtherSerial,
    #[error("appliance {0} is retired; set it active again before enrolling it")]
    Retired(String),
    #[error("appliance {0} is revoked; it enrols again with a token issued after the revocation")]
    Revoked(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl EnrolError {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrolError::UnknownToken => "unknown_token",
            EnrolError::Used(_) => "token_used",
            EnrolError::Expired(_) => "token_expired",
            EnrolError::OtherSerial => "other_serial",
            EnrolError::Retired(_) => "retired",
            EnrolError::Revoked(_) => "revoked",
            EnrolError::Refused(_) => "bad_request",
            EnrolError::Storage(_) => "error",
        }
    }
}

/// Why a renewal was refused.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("this certificate is revoked")]
    Revoked,
    #[error("appliance {0} is retired")]
    Retired(String),
    /// An expired certificate that was renewed before: only the newest may come back late, so
    /// a copied old key dies with its certificate.
    #[error("this certificate expired and was already renewed; use the newer one")]
    Superseded,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl RenewError {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RenewError::Revoked => "revoked",
            RenewError::Retired(_) => "retired",
            RenewError::Superseded => "superseded",
            RenewError::Refused(_) => "bad_request",
            RenewError::Storage(_) => "error",
        }
    }
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every certificate of the serial issued until now, seen or not.
    Serial(Serial),
    /// One certificate, by its SHA-256 fingerprint.
    Certificate([u8; 32]),
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Certificates the ingest knows (issued or seen) that are now on the list.
    pub known_certificates: u64,
    pub revoked_at: DateTime<Utc>,
}

/// SHA-256 of an enrolment token's secret (as for API tokens): all the database keeps of it.
fn token_digest(secret: &str) -> [u8; 32] {
    crate::auth::digest(secret.trim())
}

impl Storage {
    /// The revocation list: revoked certificates and serials.
    pub async fn load_revocations(&self) -> Result<Snapshot, StorageError> {
        let client = self.pool().get().await?;
        let mut snapshot = Snapshot::default();
        for row in client
            .query("SELECT sha256 FROM revoked_certificates", &[])
            .await?
        {
            let sha: Vec<u8> = row.get(0);
            if let Ok(sha) = <[u8; 32]>::try_from(sha.as_slice()) {
                snapshot.certificates.insert(sha);
            }
        }
        for row in client
            .query("SELECT serial, revoked_at FROM revoked_serials", &[])
            .await?
        {
            snapshot.serials.insert(row.get(0), row.get(1));
        }
        Ok(snapshot)
    }

    /// Stores a new enrolment token for `serial` (its digest only), valid until `expires_at`,
    /// and the audit row saying who made it.
    pub async fn create_enrolment_token(
        &self,
        serial: &Serial,
        secret: &str,
        expires_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<(), StorageError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let now = Utc::now();
        tx.execute(
            "INSERT INTO enrolment_tokens (token_sha256, serial, created_at, expires_at, created_by)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token_digest(secret).as_slice(),
                &serial.as_str(),
                &now,
                &expires_at,
                &actor,
            ],
        )
        .await?;
        audit(
            &tx,
            actor,
            "enrolment_token.create",
            serial.as_str(),
            &serde_json::json!({ "expires_at": expires_at }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends `secret` on a certificate for `serial`: the token must exist, be unused, unexpired
    /// and for this serial, and the serial neither retired nor revoked since the token was made.
    /// `sign` runs inside the transaction; its certificate is recorded with the token spent.
    pub async fn enrol(
        &self,
        secret: &str,
        serial: &Serial,
        sign: impl FnOnce() -> Result<(Issued, [u8; 32]), String>,
    ) -> Result<Issued, EnrolError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await.map_err(StorageError::from)?;
        let now = Utc::now();
        // FOR UPDATE: two enrolments racing with one token, one wins and the other sees it used.
        let row = tx
            .query_opt(
                "SELECT serial, created_at, expires_at, used_at FROM enrolment_tokens
                 WHERE token_sha256 = $1 FOR UPDATE",
                &[&token_digest(secret).as_slice()],
            )
            .await
            .map_err(StorageError::from)?
            .ok_or(EnrolError::UnknownToken)?;
        let (for_serial, created_at, expires_at, used_at): (
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if let Some(at) = used_at {
            return Err(EnrolError::Used(at));
        }
        if for_serial != serial.as_str() {
            return Err(EnrolError::OtherSerial);
        }
        if expires_at <= now {
            return Err(EnrolError::Expired(expires_at));
        }
        if lifecycle_state(&tx, serial.as_str()).await?.as_deref() == Some("retired") {
            return Err(EnrolError::Retired(serial.to_string()));
        }
        let revoked_at: Option<DateTime<Utc>> = tx
            .query_opt(
                "SELECT revoked_at FROM revoked_serials WHERE serial = $1",
                &[&serial.as_str()],
            )
            .await
            .map_err(StorageError::from)?
            .map(|r| r.get(0));
        if revoked_at.is_some_and(|at| at >= created_at) {
            return Err(EnrolError::Revoked(serial.to_string()));
        }
        let (issued, issuer_sha256) = sign().map_err(EnrolError::Refused)?;
        record_issued(&tx, serial, &issued, &issuer_sha256, "enrol", None, now).await?;
        tx.execute(
            "UPDATE enrolment_tokens SET used_at = $2, used_cert_sha256 = $3
             WHERE token_sha256 = $1",
            &[
                &token_digest(secret).as_slice(),
                &now,
                &issued.info.sha256.as_slice(),
            ],
        )
        .await
        .map_err(StorageError::from)?;
        tx.commit().await.map_err(StorageError::from)?;
        Ok(issued)
    }

    /// Records a renewal for the appliance `id` speaks for: refused if the certificate or its
    /// serial is revoked (read here, in the transaction, not from the in-memory list: a
    /// certificate revoked a moment ago must not buy itself a fresh one) or the appliance is
    /// retired. `sign` runs inside the transaction.
    pub async fn renew(
        &self,
        id: &ApplianceIdentity,
        sign: impl FnOnce() -> Result<(Issued, [u8; 32]), String>,
    ) -> Result<Issued, RenewError> {
        let mut client = self.pool().get().await.map_err(StorageError::from)?;
        let tx = client.transaction().await.map_err(StorageError::from)?;
        let now = Utc::now();
        let serial = id.serial.as_str();
        if lifecycle_state(&tx, serial).await?.as_deref() == Some("retired") {
            return Err(RenewError::Retired(serial.to_owned()));
        }
        let revoked = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM revoked_certificates WHERE sha256 = $1),
                        (SELECT revoked_at FROM revoked_serials WHERE serial = $2)",
                &[&id.cert_sha256.as_slice(), &serial],
            )
            .await
            .map_err(StorageError::from)?;
        let by_serial: Option<DateTime<Utc>> = revoked.get(1);
        if revoked.get::<_, bool>(0)
            || by_serial.is_some_and(|at| id.not_before + phonehome_pki::BACKDATE <= at)
        {
            return Err(RenewError::Revoked);
        }
        // While it is valid a renewed certificate may renew again (the collector may have died
        // before it stored the answer); once expired, only one never renewed may.
        if id.not_after < now {
            let renewed: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM issued_certificates
                                    WHERE serial = $1 AND renewed_from = $2)",
                    &[&serial, &id.cert_sha256.as_slice()],
                )
                .await
                .map_err(StorageError::from)?
                .get(0);
            if renewed {
                return Err(RenewError::Superseded);
            }
        }
        let (issued, issuer_sha256) = sign().map_err(RenewError::Refused)?;
        record_issued(
            &tx,
            &id.serial,
            &issued,
            &issuer_sha256,
            "renew",
            Some(&id.cert_sha256),
            now,
        )
        .await?;
        tx.commit().await.map_err(StorageError::from)?;
        Ok(issued)
    }

    /// Revokes `target` on behalf of `actor`, with the audit row, in one transaction.
    pub async fn revoke(
        &self,
        target: &RevokeTarget,
        actor: &str,
        reason: &str,
    ) -> Result<Revoked, StorageError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let now = Utc::now();
        let (target_text, known) = match target {
            RevokeTarget::Serial(serial) => {
                tx.execute(
                    "INSERT INTO revoked_serials (serial, revoked_at, revoked_by, reason)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (serial) DO UPDATE
                     SET revoked_at = EXCLUDED.revoked_at, revoked_by = EXCLUDED.revoked_by,
                         reason = EXCLUDED.reason",
                    &[&serial.as_str(), &now, &actor, &reason],
                )
                .await?;
                // Every certificate known for the serial goes on the list by fingerprint too:
                // the CRL lists the issued ones, and the list holds even if the serial's row
                // is later cleared.
                let issued = tx
                    .execute(
                        "INSERT INTO revoked_certificates
                             (sha256, serial, cert_serial, issuer_sha256, revoked_at, revoked_by, reason)
                         SELECT sha256, serial, cert_serial, issuer_sha256, $2, $3, $4
                         FROM issued_certificates WHERE serial = $1
                         ON CONFLICT (sha256) DO NOTHING",
                        &[&serial.as_str(), &now, &actor, &reason],
                    )
                    .await?;
                let seen = tx
                    .execute(
                        "INSERT INTO revoked_certificates (sha256, serial, revoked_at, revoked_by, reason)
                         SELECT c.sha256, a.serial, $2, $3, $4
                         FROM certificates c JOIN appliances a ON a.id = c.appliance_id
                         WHERE a.serial = $1
                         ON CONFLICT (sha256) DO NOTHING",
                        &[&serial.as_str(), &now, &actor, &reason],
                    )
                    .await?;
                (serial.to_string(), issued.saturating_add(seen))
            }
            RevokeTarget::Certificate(sha) => {
                let n = tx
                    .execute(
                        "INSERT INTO revoked_certificates
                             (sha256, serial, cert_serial, issuer_sha256, revoked_at, revoked_by, reason)
                         SELECT $1::bytea,
                                coalesce(i.serial, (SELECT a.serial FROM certificates c
                                    JOIN appliances a ON a.id = c.appliance_id WHERE c.sha256 = $1)),
                                i.cert_serial, i.issuer_sha256, $2, $3, $4
                         FROM (SELECT 1) one
                         LEFT JOIN issued_certificates i ON i.sha256 = $1
                         ON CONFLICT (sha256) DO NOTHING",
                        &[&sha.as_slice(), &now, &actor, &reason],
                    )
                    .await?;
                (phonehome_pki::hex(sha), n)
            }
        };
        audit(
            &tx,
            actor,
            "revoke",
            &target_text,
            &serde_json::json!({ "reason": reason, "known_certificates": known }),
        )
        .await?;
        tx.commit().await?;
        Ok(Revoked {
            known_certificates: known,
            revoked_at: now,
        })
    }

    /// The CRL's entries for the issuing CA `issuer_sha256`: (serial number in hex, revoked at).
    pub async fn crl_entries(
        &self,
        issuer_sha256: &[u8; 32],
    ) -> Result<Vec<(String, DateTime<Utc>)>, StorageError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT cert_serial, min(revoked_at) FROM (
                     SELECT cert_serial, revoked_at FROM revoked_certificates
                     WHERE issuer_sha256 = $1 AND cert_serial IS NOT NULL
                     UNION ALL
                     SELECT i.cert_serial, r.revoked_at FROM issued_certificates i
                     JOIN revoked_serials r ON r.serial = i.serial AND i.issued_at <= r.revoked_at
                     WHERE i.issuer_sha256 = $1
                 ) e GROUP BY cert_serial ORDER BY cert_serial",
                &[&issuer_sha256.as_slice()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

async fn lifecycle_state(
    tx: &tokio_postgres::Transaction<'_>,
    serial: &str,
) -> Result<Option<String>, StorageError> {
    Ok(tx
        .query_opt(
            "SELECT state FROM appliance_lifecycle WHERE serial = $1",
            &[&serial],
        )
        .await?
        .map(|r| r.get(0)))
}

async fn record_issued(
    tx: &tokio_postgres::Transaction<'_>,
    serial: &Serial,
    issued: &Issued,
    issuer_sha256: &[u8; 32],
    via: &str,
    renewed_from: Option<&[u8; 32]>,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO issued_certificates
             (sha256, serial, cert_serial, issuer_sha256, not_before, not_after, issued_at, via,
              renewed_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &issued.info.sha256.as_slice(),
            &serial.as_str(),
            &issued.info.serial_hex,
            &issuer_sha256.as_slice(),
            &issued.info.not_before,
            &issued.info.not_after,
            &now,
            &via,
            &renewed_from.map(|s| s.as_slice()),
        ],
    )
    .await?;
    Ok(())
}

impl Storage {
    /// The certificate `serial`'s newest report came with, what the ingest knows of its issue,
    /// the appliance's last renewal, and whether the certificate is revoked.
    pub async fn appliance_certificate(
        &self,
        serial: &str,
    ) -> Result<Option<phonehome_dashboard::model::CertificateView>, StorageError> {
        use phonehome_dashboard::model::{CertificateView, RevokedView};
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT encode(c.sha256, 'hex'), c.not_after, i.via, i.cert_serial,
                        encode(i.issuer_sha256, 'hex'),
                        (SELECT max(issued_at) FROM issued_certificates
                         WHERE serial = $1 AND via = 'renew'),
                        r.revoked_at, r.revoked_by, r.reason,
                        s.revoked_at, s.revoked_by, s.reason
                 FROM appliances a JOIN certificates c ON c.id = a.last_cert_id
                 LEFT JOIN issued_certificates i ON i.sha256 = c.sha256
                 LEFT JOIN revoked_certificates r ON r.sha256 = c.sha256
                 -- A serial's revocation covers the certificates it had then, not a later
                 -- enrolment of the refurbished appliance.
                 LEFT JOIN revoked_serials s ON s.serial = a.serial
                      AND s.revoked_at >= coalesce(i.issued_at, c.first_seen_at)
                 WHERE a.serial = $1",
                &[&serial],
            )
            .await?;
        Ok(row.map(|r| {
            let by_certificate = r
                .get::<_, Option<DateTime<Utc>>>(6)
                .map(|at| (at, r.get(7), r.get(8)));
            let by_serial = r
                .get::<_, Option<DateTime<Utc>>>(9)
                .map(|at| (at, r.get(10), r.get(11)));
            CertificateView {
                sha256: r.get(0),
                not_after: r.get(1),
                issued_via: r.get(2),
                cert_serial: r.get(3),
                issuer_sha256: r.get(4),
                last_renewal: r.get(5),
                revoked: by_certificate
                    .or(by_serial)
                    .map(|(at, by, reason)| RevokedView { at, by, reason }),
            }
        }))
    }
}
