//! The revocation list every request on the report listener is checked against: revoked
//! certificates by fingerprint, and revoked (or retired) serials with the time from which their
//! earlier certificates are void. Held in memory and reloaded from the database every
//! `revocation_refresh_secs`, so a revocation committed by any replica or CLI takes effect on
//! every replica within that time, without a restart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::storage::{Storage, StorageError};
use crate::tls::ApplianceIdentity;

/// How often the list is reloaded by default (`revocation_refresh_secs`): the longest a revoked
/// certificate can still deliver a report after the revocation commits.
pub const DEFAULT_REFRESH_SECS: u64 = 2;

/// The revocations as loaded from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// SHA-256 of revoked certificates.
    pub certificates: HashSet<[u8; 32]>,
    /// Serial → revocation time: certificates for the serial issued at or before it are void.
    pub serials: HashMap<String, DateTime<Utc>>,
}

/// Why a certificate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This certificate was revoked.
    Certificate,
    /// Its serial was revoked or retired after the certificate was issued.
    Serial,
    /// The list has not been loaded since the ingest started: nothing is known yet.
    NotLoaded,
}

impl Refusal {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Certificate => "certificate_revoked",
            Refusal::Serial => "serial_revoked",
            Refusal::NotLoaded => "not_loaded",
        }
    }
}

impl Snapshot {
    /// Whether `id` may speak for its appliance. A serial's revocation voids the certificates
    /// issued at or before it: issuance is `not_before` plus the backdating, which holds for
    /// every certificate the fleet PKI makes; older offline certificates (backdated a day)
    /// are earlier still and void too.
    pub fn check(&self, id: &ApplianceIdentity) -> Result<(), Refusal> {
        if self.certificates.contains(&id.cert_sha256) {
            return Err(Refusal::Certificate);
        }
        if let Some(at) = self.serials.get(id.serial.as_str()) {
            if id.not_before + phonehome_pki::BACKDATE <= *at {
                return Err(Refusal::Serial);
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Current {
    snapshot: Arc<Snapshot>,
    loaded: Option<Instant>,
}

/// The list shared by every connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Revocations {
    current: Arc<RwLock<Current>>,
    pub refresh: Duration,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::new(Duration::from_secs(DEFAULT_REFRESH_SECS))
    }
}

impl Revocations {
    pub fn new(refresh: Duration) -> Self {
        Revocations {
            current: Arc::new(RwLock::new(Current {
                snapshot: Arc::default(),
                loaded: None,
            })),
            refresh: refresh.max(Duration::from_millis(100)),
        }
    }

    /// Checks one request's certificate against the list as last loaded.
    pub fn check(&self, id: &ApplianceIdentity) -> Result<(), Refusal> {
        let (snapshot, loaded) = match self.current.read() {
            Ok(c) => (c.snapshot.clone(), c.loaded.is_some()),
            Err(p) => {
                let c = p.into_inner();
                (c.snapshot.clone(), c.loaded.is_some())
            }
        };
        if !loaded {
            return Err(Refusal::NotLoaded);
        }
        snapshot.check(id)
    }

    /// Seconds since the list was last loaded, `None` before the first load.
    pub fn age(&self) -> Option<Duration> {
        let c = match self.current.read() {
            Ok(c) => c.loaded,
            Err(p) => p.into_inner().loaded,
        };
        c.map(|t| t.elapsed())
    }

    /// Whether the list is too old to be trusted: never loaded, or not for ten refresh
    /// intervals (the database is unreachable). `/readyz` says so.
    pub fn stale(&self) -> bool {
        self.age()
            .is_none_or(|age| age > self.refresh.saturating_mul(10).max(Duration::from_secs(30)))
    }

    /// Loads the list now.
    pub async fn reload(&self, storage: &Storage) -> Result<usize, StorageError> {
        let snapshot = storage.load_revocations().await?;
        let n = snapshot
            .certificates
            .len()
            .saturating_add(snapshot.serials.len());
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.snapshot = Arc::new(snapshot);
        c.loaded = Some(Instant::now());
        Ok(n)
    }

    /// Reloads the list every `refresh` until the task is aborted; a failed load keeps the
    /// previous list (and `/readyz` turns 503 once it is stale).
    pub async fn watch(self, storage: Storage) {
        let mut last_error: Option<String> = None;
        loop {
            match self.reload(&storage).await {
                Ok(_) => {
                    if last_error.take().is_some() {
                        tracing::info!("revocation list loaded again");
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "cannot load the revocation list; keeping the previous one");
                    }
                    last_error = Some(msg);
                }
            }
            tokio::time::sleep(self.refresh).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(serial: &str, sha: u8, issued: DateTime<Utc>) -> ApplianceIdentity {
        ApplianceIdentity {
            serial: serial.parse().unwrap(),
            cert_sha256: [sha; 32],
            not_before: issued - phonehome_pki::BACKDATE,
            not_after: issued + chrono::Duration::days(365),
        }
    }

    #[test]
    fn revoked_certificates_and_serials_are_refused_and_later_certificates_are_not() {
        let t0 = Utc::now();
        let mut s = Snapshot::default();
        s.certificates.insert([9; 32]);
        s.serials.insert("SN-RETIRED".into(), t0);
        assert_eq!(s.check(&id("SN-A", 9, t0)), Err(Refusal::Certificate));
        assert_eq!(s.check(&id("SN-A", 1, t0)), Ok(()));
        let before = t0 - chrono::Duration::seconds(1);
        assert_eq!(s.check(&id("SN-RETIRED", 1, before)), Err(Refusal::Serial));
        assert_eq!(s.check(&id("SN-RETIRED", 1, t0)), Err(Refusal::Serial));
        let after = t0 + chrono::Duration::seconds(1);
        assert_eq!(
            s.check(&id("SN-RETIRED", 2, after)),
            Ok(()),
            "a certificate issued after the revocation (a new enrolment) is accepted"
        );
    }

    #[test]
    fn nothing_passes_before_the_first_load() {
        let r = Revocations::default();
        assert_eq!(r.check(&id("SN-A", 1, Utc::now())), Err(Refusal::NotLoaded));
        assert!(r.stale());
    }
}
