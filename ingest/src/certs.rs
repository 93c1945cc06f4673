//! The identity endpoints of the report listener: enrolment with a one-time token
//! (`POST /v1/enroll`, on connections that offered the enrolment ALPN), renewal over mutual TLS
//! (`POST /v1/renew`), the CRL (`GET /v1/crl`), and the gate every other request passes:
//! revoked certificates get 403, expired ones may only renew.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use phonehome_pki::ca::{Authority, Issued};
use phonehome_schema::enrol::{EnrolRequest, IssuedCertificate, MAX_CSR_BYTES, RenewRequest};

use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::config::ConfigError;
use crate::error::ApiError;
use crate::reports::PeerIdentity;
use crate::storage::identity::{EnrolError, RenewError};

/// Largest enrolment or renewal request: a CSR and a token with room to spare.
const MAX_REQUEST_BYTES: usize = MAX_CSR_BYTES * 2;

/// How the ingest issues certificates.
#[derive(Debug, Clone)]
pub struct IssuingSettings {
    /// The CA directory whose issuing CA signs enrolments and renewals (`ca_dir`); `None`: this
    /// ingest issues nothing and says so.
    pub ca_dir: Option<PathBuf>,
    /// What collectors are told to trust: the ingest's own `tls.ca_cert`.
    pub ca_bundle: Option<PathBuf>,
    /// Lifetime of an appliance certificate (`appliance_cert_days`).
    pub appliance_lifetime: chrono::Duration,
    /// How long the CRL says it is good for (`crl_valid_hours`).
    pub crl_valid_hours: i64,
}

/// Default `renew_grace_days`: an appliance shelved for up to a year comes back by itself.
pub const DEFAULT_RENEW_GRACE_DAYS: i64 = 365;
pub const DEFAULT_CRL_VALID_HOURS: i64 = 24;

impl Default for IssuingSettings {
    fn default() -> Self {
        IssuingSettings {
            ca_dir: None,
            ca_bundle: None,
            appliance_lifetime: chrono::Duration::days(phonehome_pki::DEFAULT_APPLIANCE_DAYS),
            crl_valid_hours: DEFAULT_CRL_VALID_HOURS,
        }
    }
}

impl IssuingSettings {
    /// The issuing CA, read from its directory now, so a rotated issuing CA is used without a
    /// restart. Enrolments and renewals are rare (one per appliance per most of a year).
    fn authority(&self) -> Result<Authority, ApiError> {
        let dir = self.ca_dir.as_ref().ok_or_else(|| {
            ApiError::NotConfigured(
                "this ingest does not issue certificates (no ca_dir in its configuration)".into(),
            )
        })?;
        Authority::load(dir).map_err(|e| {
            tracing::error!(error = %e, "cannot load the issuing CA");
            ApiError::NotConfigured("the ingest's issuing CA cannot be loaded (logged)".into())
        })
    }

    fn bundle(&self, authority: &Authority) -> String {
        self.ca_bundle
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| authority.certificate_pem().to_owned())
    }
}

/// Every request on a mutual-TLS connection passes here first: a revoked certificate (or
/// serial) gets 403 whatever it asks, and an expired one may only renew. Checked per request,
/// not per connection, so a revocation reaches connections already open.
pub async fn gate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let identity = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_ref().ok());
    if let Some(id) = identity {
        if let Err(refusal) = state.revocations.check(id) {
            state
                .metrics
                .identity
                .revocation_refusals
                .with_label_values(&[refusal.as_str()])
                .inc();
            return Err(match refusal {
                crate::revocation::Refusal::NotLoaded => ApiError::NotConfigured(
                    "the revocation list is not loaded yet; retry later".into(),
                ),
                _ => ApiError::Forbidden(format!("the certificate for {} is revoked", id.serial)),
            });
        }
        if id.not_after < Utc::now() && req.uri().path() != "/v1/renew" {
            state.metrics.identity.expired_refusals.inc();
            return Err(ApiError::Forbidden(format!(
                "the certificate expired on {}; renew it (POST /v1/renew)",
                id.not_after.to_rfc3339()
            )));
        }
    }
    Ok(next.run(req).await)
}

/// The request's JSON, within [`MAX_REQUEST_BYTES`], and its CSR within [`MAX_CSR_BYTES`].
async fn read_request<T: serde::de::DeserializeOwned>(
    body: Body,
    csr_pem: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge {
            limit: MAX_REQUEST_BYTES,
            after: "",
        })?;
    let req: T =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    if csr_pem(&req).len() > MAX_CSR_BYTES {
        return Err(ApiError::TooLarge {
            limit: MAX_CSR_BYTES,
            after: " (csr_pem)",
        });
    }
    Ok(req)
}

/// Signs `csr_pem` for `serial` with the issuing CA: what enrolment and renewal run inside
/// their transactions.
fn signer<'a>(
    authority: &'a Authority,
    csr_pem: &'a str,
    serial: &'a phonehome_schema::Serial,
    lifetime: chrono::Duration,
) -> impl FnOnce() -> Result<(Issued, [u8; 32]), String> + 'a {
    move || {
        authority
            .sign_csr(csr_pem, serial, lifetime, Utc::now())
            .map(|i| (i, authority.info().sha256))
            .map_err(|e| e.to_string())
    }
}

fn answer(issued: &Issued, bundle: String) -> Json<IssuedCertificate> {
    Json(IssuedCertificate {
        certificate_chain_pem: issued.chain_pem.clone(),
        ca_bundle_pem: bundle,
        not_before: issued.info.not_before,
        not_after: issued.info.not_after,
    })
}

/// `POST /v1/enroll`.
pub async fn enroll(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let counted = |outcome: &str| {
        state
            .metrics
            .identity
            .enrolments
            .with_label_values(&[outcome])
            .inc()
    };
    let req = match read_request(body, |r: &EnrolRequest| &r.csr_pem).await {
        Ok(r) => r,
        Err(e) => {
            counted("bad_request");
            return Err(e);
        }
    };
    let settings = state.issuing.clone();
    let authority = settings.authority()?;
    let sign = signer(
        &authority,
        &req.csr_pem,
        &req.serial,
        settings.appliance_lifetime,
    );
    let result = state.storage.enrol(&req.token, &req.serial, sign).await;
    match result {
        Ok(issued) => {
            counted("issued");
            tracing::info!(serial = %req.serial, not_after = %issued.info.not_after, "appliance enrolled");
            Ok(answer(&issued, settings.bundle(&authority)).into_response())
        }
        Err(e) => {
            counted(e.reason());
            Err(match e {
                EnrolError::Storage(s) => ApiError::from(s),
                EnrolError::Refused(m) => ApiError::MalformedJson(m),
                other => ApiError::Forbidden(other.to_string()),
            })
        }
    }
}

/// `POST /v1/renew`: a certificate for a new key, for the appliance the presented (possibly
/// expired, within the grace) certificate speaks for.
pub async fn renew(
    State(state): State<AppState>,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> Result<Response, ApiError> {
    let counted = |outcome: &str| {
        state
            .metrics
            .identity
            .renewals
            .with_label_values(&[outcome])
            .inc()
    };
    let id = match peer.map(|Extension(p)| p.0) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            counted("bad_request");
            return Err(ApiError::Forbidden(e.to_string()));
        }
        None => {
            counted("bad_request");
            return Err(ApiError::Forbidden("no client certificate".into()));
        }
    };
    let req = match read_request(body, |r: &RenewRequest| &r.csr_pem).await {
        Ok(r) => r,
        Err(e) => {
            counted("bad_request");
            return Err(e);
        }
    };
    let settings = state.issuing.clone();
    let authority = settings.authority()?;
    let sign = signer(
        &authority,
        &req.csr_pem,
        &id.serial,
        settings.appliance_lifetime,
    );
    let result = state.storage.renew(&id, sign).await;
    match result {
        Ok(issued) => {
            counted("issued");
            tracing::info!(serial = %id.serial, not_after = %issued.info.not_after, "certificate renewed");
            Ok(answer(&issued, settings.bundle(&authority)).into_response())
        }
        Err(e) => {
            counted(e.reason());
            Err(match e {
                RenewError::Storage(s) => ApiError::from(s),
                RenewError::Refused(m) => ApiError::MalformedJson(m),
                other => ApiError::Forbidden(other.to_string()),
            })
        }
    }
}

/// `GET /v1/crl`: the issuing CA's CRL (PEM), made fresh from the database.
pub async fn crl(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pem = make_crl(&state.storage, &state.issuing).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        pem,
    )
        .into_response())
}

/// The CRL of the issuing CA in `settings`, signed now.
pub async fn make_crl(
    storage: &crate::storage::Storage,
    settings: &Arc<IssuingSettings>,
) -> Result<String, ApiError> {
    let authority = settings.authority()?;
    let entries = storage.crl_entries(&authority.info().sha256).await?;
    let now = Utc::now();
    // The CRL number must grow with every CRL of this CA: seconds since the epoch do.
    let number = u64::try_from(now.timestamp()).unwrap_or(0);
    authority
        .crl_pem(
            &entries,
            number,
            now,
            now + chrono::Duration::hours(settings.crl_valid_hours.max(1)),
        )
        .map_err(|e| {
            ApiError::Internal(crate::storage::StorageError::Config(format!(
                "cannot sign the CRL: {e}"
            )))
        })
}

/// `[pki]`: how the ingest issues and revokes appliance certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiConfig {
    /// The CA directory (`phonehome-ingest ca init --dir`) whose issuing CA signs enrolments
    /// and renewals; the root's key need not be there. Unset: enrolment and renewal answer 503.
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of the appliance certificates the ingest issues.
    pub appliance_cert_days: i64,
    /// A lifetime in seconds that wins over `appliance_cert_days`: for a lab or a test that
    /// watches certificates renew and expire.
    pub appliance_cert_seconds: Option<i64>,
    /// How long after its certificate expired an appliance may still renew with it.
    pub renew_grace_days: i64,
    /// How often each replica reloads the revocation list: the longest a revoked certificate
    /// can still deliver after `ca revoke` commits.
    pub revocation_refresh_secs: u64,
    /// How long a published CRL says it is good for.
    pub crl_valid_hours: i64,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            ca_dir: None,
            appliance_cert_days: phonehome_pki::DEFAULT_APPLIANCE_DAYS,
            appliance_cert_seconds: None,
            renew_grace_days: DEFAULT_RENEW_GRACE_DAYS,
            revocation_refresh_secs: crate::revocation::DEFAULT_REFRESH_SECS,
            crl_valid_hours: DEFAULT_CRL_VALID_HOURS,
        }
    }
}

impl PkiConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=3650).contains(&self.appliance_cert_days) {
            return Err(ConfigError::Invalid(format!(
                "pki.appliance_cert_days = {} must be between 1 and 3650",
                self.appliance_cert_days
            )));
        }
        if let Some(s) = self.appliance_cert_seconds {
            if !(1..=3650 * 86_400).contains(&s) {
                return Err(ConfigError::Invalid(format!(
                    "pki.appliance_cert_seconds = {s} must be between 1 and 315360000"
                )));
            }
        }
        if !(0..=3650).contains(&self.renew_grace_days) {
            return Err(ConfigError::Invalid(format!(
                "pki.renew_grace_days = {} must be between 0 and 3650",
                self.renew_grace_days
            )));
        }
        if !(1..=3600).contains(&self.revocation_refresh_secs) {
            return Err(ConfigError::Invalid(format!(
                "pki.revocation_refresh_secs = {} must be between 1 and 3600",
                self.revocation_refresh_secs
            )));
        }
        if !(1..=24 * 365).contains(&self.crl_valid_hours) {
            return Err(ConfigError::Invalid(format!(
                "pki.crl_valid_hours = {} must be between 1 and 8760",
                self.crl_valid_hours
            )));
        }
        Ok(())
    }

    /// What the handlers need, with the ingest's trust bundle to hand to collectors.
    pub fn issuing(&self, ca_bundle: &Path) -> IssuingSettings {
        IssuingSettings {
            ca_dir: self.ca_dir.clone(),
            ca_bundle: Some(ca_bundle.to_path_buf()),
            appliance_lifetime: match self.appliance_cert_seconds {
                Some(s) => chrono::Duration::seconds(s),
                None => chrono::Duration::days(self.appliance_cert_days),
            },
            crl_valid_hours: self.crl_valid_hours,
        }
    }
}
