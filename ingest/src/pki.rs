//! The fleet's private PKI: a CA, the ingest's server certificate and one client certificate per
//! appliance, whose subject CN and URI SAN both carry the appliance serial.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{Datelike, Duration, Utc};
use phonehome_schema::Serial;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SanType,
    SignatureAlgorithm,
};

/// Prefix of the URI SAN that names an appliance: `urn:phonehome:serial:<percent-encoded serial>`.
pub const SERIAL_URI_PREFIX: &str = "urn:phonehome:serial:";

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// The kind of key a certificate is issued for.
///
/// Ed25519 by default: a fresh mutual-TLS handshake per report is most of the ingest's CPU, and
/// with Ed25519 keys and certificate signatures both sides of it cost about a quarter less than
/// with ECDSA P-256 (docs/benchmarks.md). P-256 is for appliances whose key lives in a TPM or
/// HSM that only does NIST curves; the ingest accepts either, and any CA key type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    #[default]
    Ed25519,
    #[value(name = "p256")]
    P256,
}

impl KeyType {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::Ed25519 => &PKCS_ED25519,
            Self::P256 => &PKCS_ECDSA_P256_SHA256,
        }
    }

    /// A new key pair of this type.
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        let key = KeyPair::generate_for(self.algorithm())?;
        match self {
            Self::P256 => Ok(key),
            Self::Ed25519 => ed25519_pkcs8_v1(&key),
        }
    }
}

/// The DER of ring's Ed25519 keys up to the 32-byte seed: PKCS#8 v2 (RFC 5958), which carries the
/// public key after the seed.
const ED25519_PKCS8_V2_HEAD: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same up to the seed in PKCS#8 v1 (RFC 8410), which ends with it.
const ED25519_PKCS8_V1_HEAD: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// `key` as it will be written in PKCS#8 v1: OpenSSL 3.0, and so curl and `openssl pkey`, cannot
/// read the v2 form ring generates ("unsupported"); rustls and rcgen read both.
fn ed25519_pkcs8_v1(key: &KeyPair) -> Result<KeyPair, rcgen::Error> {
    let v2 = key.serialize_der();
    let seed = v2
        .strip_prefix(&ED25519_PKCS8_V2_HEAD)
        .and_then(|rest| rest.get(..32))
        .ok_or(rcgen::Error::CouldNotParseKeyPair)?;
    let mut v1 = ED25519_PKCS8_V1_HEAD.to_vec();
    v1.extend_from_slice(seed);
    KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(v1),
        &PKCS_ED25519,
    )
}

/// Errors of the PKI commands.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} already exists; refusing to overwrite it (move it away first if you mean to replace it)"
    )]
    Exists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {name:?} for a certificate: {reason}")]
    BadName { name: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of a certificate and its private key written by one command.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new fleet CA in `dir` (`ca.crt`, `ca.key`). Refuses to overwrite an existing one,
/// because every appliance certificate ever issued hangs off it.
pub fn init_ca(dir: &Path, common_name: &str, validity_days: i64) -> Result<IssuedFiles, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let files = IssuedFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    let key = KeyType::Ed25519.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, validity_days);
    let cert = params.self_signed(&key)?;
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let key = KeyPair::from_pem(&key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
}

/// Issues the ingest's TLS server certificate for `name` (a DNS name or an IP address), signed by
/// the CA in `dir`; writes `server.crt` and `server.key` there unless `stem` says otherwise.
pub fn issue_server(
    dir: &Path,
    names: &[String],
    stem: &str,
    validity_days: i64,
) -> Result<IssuedFiles, PkiError> {
    let issuer = load_issuer(dir)?;
    let first = names.first().ok_or_else(|| PkiError::BadName {
        name: String::new(),
        reason: "at least one --name is required".into(),
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(first);
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(Ia5String::try_from(name.as_str()).map_err(|e| {
                PkiError::BadName {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?),
        };
        params.subject_alt_names.push(san);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, validity_days);
    let key = KeyType::Ed25519.generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let files = IssuedFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Issues an appliance's client certificate for a new `key_type` key: CN = serial and a URI SAN
/// `urn:phonehome:serial:<serial>`; written as `appliance-<serial>.crt|.key` in `out_dir`.
pub fn issue_appliance(
    ca_dir: &Path,
    out_dir: &Path,
    serial: &Serial,
    validity_days: i64,
    key_type: KeyType,
) -> Result<IssuedFiles, PkiError> {
    let issuer = load_issuer(ca_dir)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(serial.as_str());
    let uri = serial_uri(serial);
    params
        .subject_alt_names
        .push(SanType::URI(Ia5String::try_from(uri.as_str()).map_err(
            |e| PkiError::BadName {
                name: uri.clone(),
                reason: e.to_string(),
            },
        )?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, validity_days);
    let key = key_type.generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let stem = format!("appliance-{}", serial.file_stem());
    let files = IssuedFiles {
        cert: out_dir.join(format!("{stem}.crt")),
        key: out_dir.join(format!("{stem}.key")),
    };
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// The URI SAN for a serial. Serials may hold spaces and URI delimiters, so everything outside
/// the unreserved set is percent-encoded.
pub fn serial_uri(serial: &Serial) -> String {
    let mut out = String::from(SERIAL_URI_PREFIX);
    for b in serial.as_str().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`serial_uri`]; `None` if `uri` is not a phonehome serial URI.
pub fn serial_from_uri(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(SERIAL_URI_PREFIX)?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = rest.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "phonehome fleet");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    // A day of slack before "now" tolerates appliance clocks that run a little behind.
    let from = Utc::now() - Duration::days(1);
    let to = Utc::now() + Duration::days(days.max(1));
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
}

fn write_pair(files: &IssuedFiles, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    // Checked up front so that neither file is written when the other already exists.
    for p in [&files.cert, &files.key] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    write_file(&files.key, key_pem, 0o600)?;
    write_file(&files.cert, cert_pem, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    // The mode is set at creation, so a private key is never readable by others, not even
    // briefly; `create_new` never replaces a key or certificate that is already in use.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
            _ => PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_uri_round_trips_awkward_serials() {
        for s in ["CZJ1234ABC", "VMware-56 4d 9e", "a/b?c#d%e", "x:y+z"] {
            let serial = Serial::parse(s).unwrap();
            let uri = serial_uri(&serial);
            assert!(uri.bytes().all(|b| b.is_ascii_graphic()), "{uri}");
            assert_eq!(serial_from_uri(&uri).as_deref(), Some(s));
        }
        assert_eq!(serial_from_uri("urn:other:x"), None);
        assert_eq!(serial_from_uri("urn:phonehome:serial:%zz"), None);
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_are_the_same_key() {
        let v2 = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let key = ed25519_pkcs8_v1(&v2).unwrap();
        let der = key.serialize_der();
        assert_eq!(der.len(), 48, "v1: the seed and nothing after it");
        assert!(der.starts_with(&ED25519_PKCS8_V1_HEAD));
        assert_eq!(
            key.public_key_raw(),
            v2.public_key_raw(),
            "the same key pair"
        );
        let again = KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(again.public_key_raw(), v2.public_key_raw());
        assert_eq!(
            KeyType::Ed25519.generate().unwrap().serialize_der().len(),
            48
        );
        assert_eq!(
            KeyType::P256.generate().unwrap().algorithm(),
            &PKCS_ECDSA_P256_SHA256
        );
    }

    #[test]
    fn keys_are_private_and_ca_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), "test CA", 30).unwrap();
        let mode = fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            init_ca(dir.path(), "again", 30),
            Err(PkiError::Exists(_))
        ));

        let serial = Serial::parse("SN 1/2").unwrap();
        let app = issue_appliance(dir.path(), dir.path(), &serial, 30, KeyType::default()).unwrap();
        assert_eq!(app.cert.file_name().unwrap(), "appliance-SN_1_2.crt");
        let mode = fs::metadata(&app.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            issue_appliance(dir.path(), dir.path(), &serial, 30, KeyType::P256),
            Err(PkiError::Exists(_))
        ));
        let srv = issue_server(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
            "server",
            30,
        )
        .unwrap();
        assert!(srv.cert.exists());
    }
}
