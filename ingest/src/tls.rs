//! TLS for the report listener: the server configuration (client certificate required, verified
//! against the fleet CA) and reading an appliance's identity out of its certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use phonehome_schema::Serial;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::TlsConfig;
use crate::pki::serial_from_uri;

/// Why the TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate found in the file")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// aws-lc-rs, with TLS 1.3's mandatory AES-128-GCM-SHA256 first: on CPUs with SHA extensions
/// its key schedule costs a fraction of SHA-384's (3 % of the machine under a fresh handshake
/// per report, docs/benchmarks.md), and every TLS 1.3 client offers it, so with the server's
/// order in charge TLS 1.3 connections use it. The other suites remain for TLS 1.2 clients.
/// X25519 is the first key exchange (the hybrid post-quantum one is offered last, not
/// preferred: it would triple the handshake's key-exchange bytes and CPU for every report).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The report listener's TLS configuration: TLS 1.2 and 1.3 only, a client certificate chaining
/// to the fleet CA is required (no certificate, or another CA's, fails the handshake).
pub fn server_config(files: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca_cert)? {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let chain = read_certs(&files.server_cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.server_key).map_err(|e| TlsSetupError::Pem {
        path: files.server_key.clone(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our order, not the client's (rustls clients put AES-256 first).
    config.ignore_client_order = true;
    // An appliance connects once a day and a collector run keeps its one connection alive, so
    // a resumable session would never be used: no tickets (two encrypted messages per
    // handshake by default) and no session cache to fill and evict.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The appliance a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceIdentity {
    pub serial: Serial,
    /// SHA-256 of the certificate's DER encoding: which certificate delivered a report.
    pub cert_sha256: [u8; 32],
}

/// Why a certificate that passed chain verification still names no appliance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate cannot be parsed")]
    Unparsable,
    #[error("client certificate has no subject common name")]
    NoCommonName,
    #[error("client certificate common name is not a valid serial: {0}")]
    BadSerial(String),
    #[error("client certificate has no urn:phonehome:serial: subject alternative name")]
    NoSerialSan,
    #[error("client certificate names serial {cn:?} in its common name but {san:?} in its SAN")]
    Disagree { cn: String, san: String },
}

impl IdentityError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::NoCertificate => "no_certificate",
            IdentityError::Unparsable => "unparsable",
            IdentityError::NoCommonName => "no_common_name",
            IdentityError::BadSerial(_) => "bad_serial",
            IdentityError::NoSerialSan => "no_serial_san",
            IdentityError::Disagree { .. } => "cn_san_disagree",
        }
    }
}

/// Reads the serial from a verified appliance certificate. Both the subject CN and the
/// `urn:phonehome:serial:` URI SAN must be present and agree, so a certificate that was issued for
/// something else (a server, a person) never passes as an appliance.
pub fn appliance_identity(der: &[u8]) -> Result<ApplianceIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(IdentityError::NoCommonName)?
        .to_owned();
    let serial = Serial::parse(&cn).map_err(|e| IdentityError::BadSerial(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(uri) => serial_from_uri(uri),
                _ => None,
            })
        })
        .ok_or(IdentityError::NoSerialSan)?;
    if san != cn {
        return Err(IdentityError::Disagree { cn, san });
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut cert_sha256 = [0u8; 32];
    cert_sha256.copy_from_slice(digest.as_ref());
    Ok(ApplianceIdentity {
        serial,
        cert_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    fn der_of(path: &Path) -> Vec<u8> {
        read_certs(path).unwrap().remove(0).to_vec()
    }

    #[test]
    fn appliance_certificates_name_their_serial_and_server_certificates_do_not() {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(dir.path(), "test", 10).unwrap();
        let serial = Serial::parse("VMware-56 4d/9e").unwrap();
        let app =
            pki::issue_appliance(dir.path(), dir.path(), &serial, 10, pki::KeyType::P256).unwrap();
        let id = appliance_identity(&der_of(&app.cert)).unwrap();
        assert_eq!(id.serial, serial);
        assert_ne!(id.cert_sha256, [0; 32]);

        let srv = pki::issue_server(dir.path(), &["localhost".into()], "server", 10).unwrap();
        assert_eq!(
            appliance_identity(&der_of(&srv.cert)),
            Err(IdentityError::NoSerialSan)
        );
        assert_eq!(appliance_identity(b"junk"), Err(IdentityError::Unparsable));
    }

    #[test]
    fn server_config_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsConfig {
            ca_cert: dir.path().join("nope.crt"),
            server_cert: dir.path().join("s.crt"),
            server_key: dir.path().join("s.key"),
        };
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.contains("nope.crt"), "{err}");
    }
}
