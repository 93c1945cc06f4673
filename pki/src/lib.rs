//! The fleet's PKI. Without features: what an appliance needs (a key made on it, a CSR for its
//! serial, reading its own certificate). With `ca`: what the operations host and the ingest do
//! (a two-tier CA, signing CSRs and offline requests, CRLs).

mod error;
mod inspect;
mod keys;
mod names;
mod request;

#[cfg(feature = "ca")]
pub mod ca;

pub use error::PkiError;
pub use inspect::{
    CertInfo, certificates_from_pem, from_hex, hex, inspect_der, key_matches, parse_fingerprint,
};
pub use keys::KeyType;
pub use names::{SERIAL_URI_PREFIX, serial_from_uri, serial_uri};
pub use request::csr_pem;

/// How far back a new certificate's validity starts: an appliance whose clock runs behind (no
/// RTC battery, NTP not yet synchronised after boot) must not find its fresh certificate "not
/// yet valid".
pub const BACKDATE: chrono::Duration = chrono::Duration::hours(1);

/// Default lifetime of an appliance certificate, in days (`appliance_cert_days`).
pub const DEFAULT_APPLIANCE_DAYS: i64 = 365;
