//! The identity endpoints' wire types: enrolment with a one-time token (`POST /v1/enroll`) and
//! renewal over mutual TLS (`POST /v1/renew`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Serial;

/// The ALPN protocol a collector offers to enrol: a connection that offers it may present no
/// client certificate and reaches the enrolment endpoints only. Every other connection to the
/// report listener must present an appliance certificate in its handshake.
pub const ENROL_ALPN: &[u8] = b"phonehome-enroll/1";

/// The longest CSR (PEM) the ingest reads: an Ed25519 or P-256 request is under 1 KB.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// `POST /v1/enroll`: a new appliance asks for its first certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The one-time token printed by `phonehome-ingest ca issue-token`.
    pub token: String,
    /// The serial the token was issued for; the certificate will name it.
    pub serial: Serial,
    /// A PKCS#10 certificate signing request (PEM) for a key made on the appliance.
    pub csr_pem: String,
}

/// `POST /v1/renew`: an appliance asks for a certificate for a new key, authenticated by the
/// certificate it holds (which may have expired, within the ingest's `renew_grace_days`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The answer to both: the new certificate and what the appliance should trust from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The appliance certificate followed by the issuing CA's certificate (PEM): what the
    /// collector presents in its handshake.
    pub certificate_chain_pem: String,
    /// The CA certificates (PEM) the collector should trust for the ingest's server certificate.
    pub ca_bundle_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}
