//! Reading a certificate: its validity, serial number and digest, and whether a private key is
//! the one it certifies. The collector decides when to renew from this; the ingest records it.

use chrono::{DateTime, Utc};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// What the fleet needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The serial number, lower-case hex without leading zeros: what a CRL lists.
    pub serial_hex: String,
    /// SHA-256 of the DER encoding: the certificate's fingerprint.
    pub sha256: [u8; 32],
    /// The subject's common name, if it has one.
    pub subject_cn: Option<String>,
    /// The subject public key (the BIT STRING's contents).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// The share of the validity period that has passed at `now`, from 0 (not started) to 1
    /// (expired) and beyond.
    pub fn elapsed_share(&self, now: DateTime<Utc>) -> f64 {
        let whole = (self.not_after - self.not_before).num_seconds().max(1) as f64;
        let gone = (now - self.not_before).num_seconds() as f64;
        gone / whole
    }

    /// The fingerprint as lower-case hex (what `openssl x509 -fingerprint -sha256` prints,
    /// without the colons).
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 fingerprint in hex, with or without the colons `openssl x509 -fingerprint`
/// prints; `None` if it is not 32 bytes of hex.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    from_hex(&hex).and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// The bytes of a hex text (upper or lower case; an odd length reads as a leading 0);
/// `None` if it is not hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| {
            padded
                .get(i..i.saturating_add(2))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Every certificate in a PEM text, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate(
            "no certificate in the PEM text".into(),
        ));
    }
    Ok(certs)
}

/// Reads a certificate (DER).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| PkiError::BadCertificate("validity out of range".into()))
    };
    let validity = cert.validity();
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    let serial = cert.tbs_certificate.raw_serial();
    let trimmed = match serial.iter().position(|b| *b != 0) {
        Some(i) => serial.get(i..).unwrap_or_default(),
        None => &[0],
    };
    Ok(CertInfo {
        not_before: time(validity.not_before)?,
        not_after: time(validity.not_after)?,
        serial_hex: hex(trimmed),
        sha256,
        subject_cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Whether `key_pem` is the private key of the certificate `cert`: a renewal that stopped
/// half-way must never leave the collector presenting a certificate with another pair's key.
pub fn key_matches(key_pem: &str, cert: &CertInfo) -> bool {
    rcgen::KeyPair::from_pem(key_pem).is_ok_and(|k| k.public_key_raw() == cert.public_key)
}
