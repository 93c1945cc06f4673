//! TLS for the report listener: the server configurations (mutual TLS for reports and renewal,
//! server-only TLS for enrolment), reloaded without a restart, and reading an appliance's
//! identity out of its certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use phonehome_schema::Serial;
use phonehome_schema::enrol::ENROL_ALPN;
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::TlsConfig;
use phonehome_pki::serial_from_uri;

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

/// `renew_grace_days`' default as a duration.
pub const DEFAULT_RENEW_GRACE: Duration =
    Duration::from_secs(crate::certs::DEFAULT_RENEW_GRACE_DAYS.unsigned_abs() * 86_400);

/// The report listener's TLS, reloadable: the configurations new connections get, rebuilt
/// from the files on SIGHUP or when they change on disk ([`ServerTls::reload`]). A connection
/// keeps the configuration it started with, so a rotation fails no handshake in flight.
#[derive(Debug, Clone)]
pub struct ServerTls {
    files: TlsConfig,
    renew_grace: Duration,
    current: Arc<RwLock<Arc<Loaded>>>,
}

/// One generation of the report listener's TLS.
#[derive(Debug)]
pub struct Loaded {
    /// Mutual TLS: an appliance certificate chaining to a trusted CA is required.
    pub main: Arc<rustls::ServerConfig>,
    /// For connections that offer [`ENROL_ALPN`]: no client certificate; they reach only the
    /// enrolment endpoints.
    pub enrol: Arc<rustls::ServerConfig>,
    /// The trusted CA certificates (PEM), as enrolment and renewal hand them to collectors.
    pub ca_bundle_pem: String,
    stamp: Vec<Option<FileStamp>>,
}

/// What tells a file was replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(files: &TlsConfig) -> Vec<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    [&files.ca_cert, &files.server_cert, &files.server_key]
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| FileStamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

impl ServerTls {
    /// Loads the files; a client certificate that expired up to `renew_grace` ago still
    /// completes the handshake, for `POST /v1/renew` only (the report API refuses it).
    pub fn load(files: &TlsConfig, renew_grace: Duration) -> Result<Self, TlsSetupError> {
        let loaded = build(files, renew_grace)?;
        Ok(ServerTls {
            files: files.clone(),
            renew_grace,
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    /// The configuration for a connection starting now.
    pub fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether any of the files changed since they were loaded.
    pub fn changed_on_disk(&self) -> bool {
        stamp(&self.files) != self.current().stamp
    }

    /// Rebuilds from the files. On error the running configuration stays, so a half-copied
    /// certificate never takes the listener down; the caller logs and counts it.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let loaded = Arc::new(build(&self.files, self.renew_grace)?);
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsConfig {
        &self.files
    }
}

fn build(files: &TlsConfig, renew_grace: Duration) -> Result<Loaded, TlsSetupError> {
    // Stamped before reading: a file replaced while it is read is read again next time.
    let stamp = stamp(files);
    let mut roots = RootCertStore::empty();
    let ca_certs = read_certs(&files.ca_cert)?;
    for ca in &ca_certs {
        roots.add(ca.clone())?;
    }
    let ca_bundle_pem =
        std::fs::read_to_string(&files.ca_cert).map_err(|e| TlsSetupError::Pem {
            path: files.ca_cert.clone(),
            message: e.to_string(),
        })?;
    let anchors = roots.roots.clone();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let verifier = Arc::new(GraceVerifier {
        inner: Arc::new(KnownIssuers::new(webpki, anchors)),
        grace: renew_grace,
    });
    let chain = read_certs(&files.server_cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.server_key).map_err(|e| TlsSetupError::Pem {
        path: files.server_key.clone(),
        message: e.to_string(),
    })?;
    let base = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut main = base
        .clone()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    main.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut enrol = base.with_no_client_auth().with_single_cert(chain, key)?;
    enrol.alpn_protocols = vec![ENROL_ALPN.to_vec()];
    for config in [&mut main, &mut enrol] {
        // Our order, not the client's (rustls clients put AES-256 first).
        config.ignore_client_order = true;
        // An appliance connects once a day and a collector run keeps its one connection alive,
        // so a resumable session would never be used: no tickets (two encrypted messages per
        // handshake by default) and no session cache to fill and evict. Without resumption
        // every connection presents its certificate, and every request is checked against
        // the revocation list (`revocation.rs`).
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    Ok(Loaded {
        main: Arc::new(main),
        enrol: Arc::new(enrol),
        ca_bundle_pem,
        stamp,
    })
}

/// The report listener's client certificate check: the chain must verify against the trusted
/// CAs, as webpki checks it, except that a certificate that expired no longer than `grace` ago
/// is verified as of its last valid second. An appliance that sat on a shelf past its
/// certificate's end may then renew it; the report API refuses expired certificates itself.
#[derive(Debug)]
struct GraceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    grace: Duration,
}

impl ClientCertVerifier for GraceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
                let not_after = X509Certificate::from_der(end_entity)
                    .map_err(|_| expired.clone())?
                    .1
                    .validity()
                    .not_after
                    .timestamp();
                let not_after = u64::try_from(not_after).map_err(|_| expired.clone())?;
                let now_secs = now.as_secs();
                // Only the appliance's own certificate may be past its end, within the grace.
                if now_secs <= not_after
                    || now_secs.saturating_sub(not_after) > self.grace.as_secs()
                {
                    return Err(expired);
                }
                let then = UnixTime::since_unix_epoch(Duration::from_secs(not_after));
                self.inner
                    .verify_client_cert(end_entity, intermediates, then)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How long a verified issuing CA is taken as verified before its chain is checked again.
const KNOWN_ISSUER_FOR: u64 = 600;
/// Issuing CAs remembered at once: a fleet has one, two during a rotation.
const KNOWN_ISSUERS: usize = 8;

/// Client certificate verification that checks each issuing (intermediate) CA's own chain once
/// in [`KNOWN_ISSUER_FOR`], not in every handshake. Every appliance sends the same issuing CA
/// after its certificate, and verifying that CA's signature by the root again is one of the
/// three Ed25519 verifications of each handshake: in a profile of a fleet-wide reconnect, the
/// chain check took 6.2 % of the process that ran the ingest beside the simulated appliances,
/// half of it this signature (docs/benchmarks.md, item 3, fourth pass).
///
/// Once a chain `[certificate, issuing CA]` has passed the full verification *through* that
/// issuing CA, the CA (byte for byte) becomes a trust anchor of its own for a while, bounded by
/// its own end of validity: later certificates it signed are checked against it alone, with
/// every check on the certificate itself (signature, dates, client-auth usage, the CA's name
/// constraints). Only a success is taken from that shortcut: any failure is verified again in
/// full, so what a bad certificate is told, and the renewal grace, stay exactly those of the
/// full verification.
///
/// "Through" matters: the full verification ignores a certificate sent after the client's own
/// when that one chains to a root directly (a single-tier CA, or a root being migrated to two
/// tiers), so a chain that passed does not vouch for what came after it. Only the issuing CA
/// of the path webpki actually verified is remembered, and only under a root without name
/// constraints of its own, which the shortcut would not apply.
#[derive(Debug)]
struct KnownIssuers {
    full: Arc<dyn ClientCertVerifier>,
    /// The roots `full` verifies against, to learn which path a verified chain took.
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    known: std::sync::Mutex<Vec<KnownIssuer>>,
}

#[derive(Debug)]
struct KnownIssuer {
    der: Vec<u8>,
    /// Unix seconds of the full verification: an earlier moment (the renewal grace asks about
    /// the past) is verified in full.
    since: u64,
    /// Unix seconds after which the full chain is checked again.
    until: u64,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl KnownIssuers {
    fn new(
        full: Arc<dyn ClientCertVerifier>,
        anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    ) -> Self {
        KnownIssuers {
            full,
            anchors,
            known: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn known(
        &self,
        issuer: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Option<Arc<dyn ClientCertVerifier>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .find(|k| {
                (k.since..k.until).contains(&now.as_secs()) && k.der.as_slice() == issuer.as_ref()
            })
            .map(|k| k.verifier.clone())
    }

    /// Remembers `issuer` if the chain `[end_entity, issuer]`, which has just passed the full
    /// verification at `now`, went through it to a root without name constraints.
    fn remember(
        &self,
        end_entity: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
        now: UnixTime,
    ) {
        let Ok((_, parsed)) = X509Certificate::from_der(issuer) else {
            return;
        };
        let Ok(not_after) = u64::try_from(parsed.validity().not_after.timestamp()) else {
            return;
        };
        let until = now
            .as_secs()
            .saturating_add(KNOWN_ISSUER_FOR)
            .min(not_after);
        {
            // A renewal-grace check asks about the past: it must not replace a fresher entry.
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known
                .iter()
                .any(|k| k.der.as_slice() == issuer.as_ref() && k.until >= until)
            {
                return;
            }
        }
        if !self.went_through(end_entity, issuer, now) {
            return;
        }
        let mut anchor = RootCertStore::empty();
        if anchor.add(issuer.clone().into_owned()).is_err() {
            return;
        }
        let Ok(verifier) =
            WebPkiClientVerifier::builder_with_provider(Arc::new(anchor), provider()).build()
        else {
            return;
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|k| k.der.as_slice() != issuer.as_ref() && now.as_secs() < k.until);
        if known.len() >= KNOWN_ISSUERS {
            known.remove(0);
        }
        known.push(KnownIssuer {
            der: issuer.to_vec(),
            since: now.as_secs(),
            until,
            verifier,
        });
    }

    /// Whether webpki's own path for `[end_entity, issuer]` at `now` is exactly end entity,
    /// `issuer`, and a root without name constraints.
    fn went_through(
        &self,
        end_entity: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
        now: UnixTime,
    ) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        let intermediates = [issuer.clone()];
        let provider = provider();
        let Ok(path) = cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &self.anchors,
            &intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        ) else {
            return false;
        };
        let mut through = path.intermediate_certificates();
        let only = through.next().map(|c| c.der());
        through.next().is_none()
            && only.is_some_and(|der| der.as_ref() == issuer.as_ref())
            && path.anchor().name_constraints.is_none()
    }
}

impl ClientCertVerifier for KnownIssuers {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.full.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let [issuer] = intermediates else {
            return self.full.verify_client_cert(end_entity, intermediates, now);
        };
        if let Some(shortcut) = self.known(issuer, now)
            && let Ok(verified) = shortcut.verify_client_cert(end_entity, &[], now)
        {
            return Ok(verified);
        }
        let verified = self
            .full
            .verify_client_cert(end_entity, intermediates, now)?;
        self.remember(end_entity, issuer, now);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.full.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.full.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.full.supported_verify_schemes()
    }
}

/// The appliance a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceIdentity {
    pub serial: Serial,
    /// SHA-256 of the certificate's DER encoding: which certificate delivered a report.
    pub cert_sha256: [u8; 32],
    pub not_before: chrono::DateTime<chrono::Utc>,
    /// Past it, the certificate may only renew (`POST /v1/renew`, within `renew_grace_days`).
    pub not_after: chrono::DateTime<chrono::Utc>,
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
    let time = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(t.timestamp(), 0).ok_or(IdentityError::Unparsable)
    };
    Ok(ApplianceIdentity {
        serial,
        cert_sha256,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonehome_pki::{self as pki, ca};

    fn der_of(path: &Path) -> Vec<u8> {
        read_certs(path).unwrap().remove(0).to_vec()
    }

    #[test]
    fn appliance_certificates_name_their_serial_and_server_certificates_do_not() {
        let dir = tempfile::tempdir().unwrap();
        ca::init_ca(dir.path(), "test", 10, 10).unwrap();
        let serial = Serial::parse("VMware-56 4d/9e").unwrap();
        let app =
            ca::issue_appliance(dir.path(), dir.path(), &serial, 10, pki::KeyType::P256).unwrap();
        let id = appliance_identity(&der_of(&app.cert)).unwrap();
        assert_eq!(id.serial, serial);
        assert_ne!(id.cert_sha256, [0; 32]);
        let days = (id.not_after - id.not_before).num_hours();
        assert_eq!(
            days,
            10 * 24 + 1,
            "valid for the days asked, backdated an hour"
        );

        let srv = ca::issue_server(dir.path(), &["localhost".into()], "server", 10).unwrap();
        assert_eq!(
            appliance_identity(&der_of(&srv.cert)),
            Err(IdentityError::NoSerialSan)
        );
        assert_eq!(appliance_identity(b"junk"), Err(IdentityError::Unparsable));
    }

    #[test]
    fn an_expired_certificate_passes_the_handshake_only_within_the_renewal_grace() {
        let dir = tempfile::tempdir().unwrap();
        // The CA predates every certificate it signed, as it does in the field.
        let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
        ca::init_ca_at(dir.path(), "test", 3650, 3650, long_ago).unwrap();
        let authority = ca::Authority::load(dir.path()).unwrap();
        let mut roots = RootCertStore::empty();
        for c in read_certs(&dir.path().join(ca::CA_CERT_FILE)).unwrap() {
            roots.add(c).unwrap();
        }
        let verifier = GraceVerifier {
            inner: WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap(),
            grace: Duration::from_secs(30 * 86_400),
        };
        let intermediate = CertificateDer::from(authority.intermediate_der().unwrap().unwrap());
        let serial = Serial::parse("SN-SHELF").unwrap();
        // Issued `issued_days_ago`, valid for 30 days.
        let cert = |issued_days_ago: i64| {
            let now = chrono::Utc::now() - chrono::Duration::days(issued_days_ago);
            let key = pki::KeyType::Ed25519.generate().unwrap();
            let params = ca::appliance_params(&serial, now, 30).unwrap();
            params
                .signed_by(&key, authority.issuer())
                .unwrap()
                .der()
                .clone()
        };
        let now = UnixTime::now();
        let verify = |c: &CertificateDer<'_>| {
            verifier.verify_client_cert(c, std::slice::from_ref(&intermediate), now)
        };
        assert!(verify(&cert(1)).is_ok(), "valid");
        let r = verify(&cert(40));
        assert!(
            r.is_ok(),
            "expired 10 days ago: within the 30-day grace, it may renew: {r:?}"
        );
        assert!(
            matches!(
                verify(&cert(70)),
                Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
            ),
            "expired 40 days ago: past the grace"
        );
        // A certificate from another CA stays refused whatever its dates.
        let other = tempfile::tempdir().unwrap();
        ca::init_ca(other.path(), "other", 10, 10).unwrap();
        let foreign = ca::issue_appliance(
            other.path(),
            other.path(),
            &serial,
            10,
            pki::KeyType::Ed25519,
        )
        .unwrap();
        assert!(verify(&read_certs(&foreign.cert).unwrap()[0]).is_err());
    }

    /// Counts the full verifications the shortcut leaves to it.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    #[test]
    fn a_verified_issuing_ca_is_not_verified_again_but_every_certificate_is() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
        ca::init_ca_at(dir.path(), "test", 3650, 3650, long_ago).unwrap();
        let authority = ca::Authority::load(dir.path()).unwrap();
        let mut roots = RootCertStore::empty();
        for c in read_certs(&dir.path().join(ca::CA_CERT_FILE)).unwrap() {
            roots.add(c).unwrap();
        }
        let anchors = roots.roots.clone();
        let counting = Arc::new(Counting {
            inner: WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap(),
            calls: Default::default(),
        });
        let full_calls = || counting.calls.load(std::sync::atomic::Ordering::SeqCst);
        let verifier = KnownIssuers::new(counting.clone(), anchors);
        let intermediate = CertificateDer::from(authority.intermediate_der().unwrap().unwrap());
        let cert = |serial: &str, issued_days_ago: i64| {
            let key = pki::KeyType::Ed25519.generate().unwrap();
            let serial = Serial::parse(serial).unwrap();
            let at = chrono::Utc::now() - chrono::Duration::days(issued_days_ago);
            ca::appliance_params(&serial, at, 30)
                .unwrap()
                .signed_by(&key, authority.issuer())
                .unwrap()
                .der()
                .clone()
        };
        let now = UnixTime::now();
        let verify = |c: &CertificateDer<'_>, at: UnixTime| {
            verifier.verify_client_cert(c, std::slice::from_ref(&intermediate), at)
        };

        assert!(verify(&cert("SN-A", 1), now).is_ok());
        assert_eq!(full_calls(), 1, "the first chain is verified in full");
        for serial in ["SN-B", "SN-C", "SN-D"] {
            assert!(verify(&cert(serial, 1), now).is_ok(), "{serial}");
        }
        assert_eq!(
            full_calls(),
            1,
            "later certificates of the same issuing CA: shortcut"
        );

        // What the shortcut cannot vouch for goes to the full verification and gets its answer.
        let old = cert("SN-OLD", 70);
        let expired = verify(&old, now);
        assert!(
            matches!(
                expired,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                ))
            ),
            "{expired:?}"
        );
        assert_eq!(full_calls(), 2);
        assert_eq!(
            expired.err(),
            counting
                .inner
                .verify_client_cert(&old, std::slice::from_ref(&intermediate), now)
                .err(),
            "the full verification's own answer"
        );
        let other = tempfile::tempdir().unwrap();
        ca::init_ca(other.path(), "other", 10, 10).unwrap();
        let foreign = ca::issue_appliance(
            other.path(),
            other.path(),
            &Serial::parse("SN-FOREIGN").unwrap(),
            10,
            pki::KeyType::Ed25519,
        )
        .unwrap();
        let foreign = read_certs(&foreign.cert).unwrap().remove(0);
        assert!(
            verify(&foreign, now).is_err(),
            "another CA's certificate behind our issuing CA stays refused"
        );
        assert_eq!(full_calls(), 3);
        let other_authority = ca::Authority::load(other.path()).unwrap();
        let other_issuing =
            CertificateDer::from(other_authority.intermediate_der().unwrap().unwrap());
        assert!(
            verifier
                .verify_client_cert(&foreign, std::slice::from_ref(&other_issuing), now)
                .is_err(),
            "another CA's certificate behind its own issuing CA stays refused"
        );
        assert_eq!(full_calls(), 4);
        assert!(
            verify(&cert("SN-H", 1), now).is_ok(),
            "the known CA is still known"
        );
        assert_eq!(full_calls(), 4);
        // A moment before the full verification (the renewal grace asks about the past).
        let before = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() - 86_400));
        assert!(verify(&cert("SN-E", 2), before).is_ok());
        assert_eq!(full_calls(), 5, "the past is verified in full");
        assert!(
            verify(&cert("SN-I", 1), now).is_ok(),
            "a look at the past does not replace the fresh entry"
        );
        assert_eq!(full_calls(), 5);
        // After the shortcut's time is up, the chain is verified in full again, once.
        let later =
            UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + KNOWN_ISSUER_FOR + 1));
        assert!(verify(&cert("SN-F", 1), later).is_ok());
        assert!(verify(&cert("SN-G", 1), later).is_ok());
        assert_eq!(full_calls(), 6);
    }

    #[test]
    fn a_certificate_the_verified_path_did_not_go_through_is_never_an_anchor() {
        // A root that signs appliance certificates itself (a single-tier CA): here our issuing
        // CA, trusted as the root. webpki then ignores whatever the client sends after its own
        // certificate.
        let dir = tempfile::tempdir().unwrap();
        let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
        ca::init_ca_at(dir.path(), "ours", 3650, 3650, long_ago).unwrap();
        let ours = ca::Authority::load(dir.path()).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(
                ours.intermediate_der().unwrap().unwrap(),
            ))
            .unwrap();
        let anchors = roots.roots.clone();
        let verifier = KnownIssuers::new(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap(),
            anchors,
        );
        // The attacker's own CA, whose key they hold.
        let theirs_dir = tempfile::tempdir().unwrap();
        ca::init_ca_at(theirs_dir.path(), "theirs", 3650, 3650, long_ago).unwrap();
        let theirs = ca::Authority::load(theirs_dir.path()).unwrap();
        let theirs_issuing = CertificateDer::from(theirs.intermediate_der().unwrap().unwrap());
        let signed_by = |authority: &ca::Authority, serial: &str| {
            let key = pki::KeyType::Ed25519.generate().unwrap();
            ca::appliance_params(
                &Serial::parse(serial).unwrap(),
                chrono::Utc::now() - chrono::Duration::days(1),
                30,
            )
            .unwrap()
            .signed_by(&key, authority.issuer())
            .unwrap()
            .der()
            .clone()
        };
        let now = UnixTime::now();
        let sent_with_theirs = |c: &CertificateDer<'_>| {
            verifier.verify_client_cert(c, std::slice::from_ref(&theirs_issuing), now)
        };

        assert!(
            sent_with_theirs(&signed_by(&ours, "SN-REAL")).is_ok(),
            "a genuine certificate passes whatever follows it"
        );
        assert!(
            sent_with_theirs(&signed_by(&theirs, "SN-FORGED")).is_err(),
            "what followed it must not have become an anchor"
        );
    }

    #[test]
    fn server_config_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsConfig {
            ca_cert: dir.path().join("nope.crt"),
            server_cert: dir.path().join("s.crt"),
            server_key: dir.path().join("s.key"),
        };
        let err = ServerTls::load(&files, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.crt"), "{err}");
    }
}
