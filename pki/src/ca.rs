//! The CA side of the fleet PKI: a two-tier CA (an offline root and the issuing CA the ingest
//! holds), the ingest's server certificate, appliance certificates issued offline or from a
//! CSR, and CRLs.
//!
//! A CA directory holds `ca.crt` (what appliances and the ingest trust: the root), `root.key`
//! (to be moved off the host once `init` has run: the running ingest never needs it),
//! `issuing.crt` and `issuing.key`. A directory made before the two tiers holds `ca.crt` and
//! `ca.key` only: that CA is then root and issuer at once, and keeps working.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use phonehome_schema::Serial;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
    RevokedCertParams, SanType, SerialNumber,
};

use crate::error::io_err;
use crate::inspect::{CertInfo, certificates_from_pem, inspect_der};
use crate::names::serial_uri;
use crate::{BACKDATE, KeyType, PkiError};

/// What appliances and the ingest trust: the root (two-tier) or the only CA (single-tier).
pub const CA_CERT_FILE: &str = "ca.crt";
/// A single-tier CA's key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The root's key: move it off the host after `ca init`.
pub const ROOT_KEY_FILE: &str = "root.key";
pub const ISSUING_CERT_FILE: &str = "issuing.crt";
pub const ISSUING_KEY_FILE: &str = "issuing.key";
/// The CRL `ca revoke` and `ca crl` write.
pub const CRL_FILE: &str = "crl.pem";

/// Paths of a certificate and its private key written by one command.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What `init_ca` wrote.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// The root certificate: the trust anchor.
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub issuing: IssuedFiles,
}

/// Creates a two-tier CA in `dir`: a root valid for `root_days` and an issuing CA under it
/// valid for `issuing_days`. Refuses to overwrite anything, because every certificate ever
/// issued hangs off them.
pub fn init_ca(
    dir: &Path,
    common_name: &str,
    root_days: i64,
    issuing_days: i64,
) -> Result<CaFiles, PkiError> {
    init_ca_at(dir, common_name, root_days, issuing_days, Utc::now())
}

/// [`init_ca`] as if run at `now`: tests need a CA older than the certificates they age.
pub fn init_ca_at(
    dir: &Path,
    common_name: &str,
    root_days: i64,
    issuing_days: i64,
    now: DateTime<Utc>,
) -> Result<CaFiles, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let root = IssuedFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(ROOT_KEY_FILE),
    };
    let issuing = IssuedFiles {
        cert: dir.join(ISSUING_CERT_FILE),
        key: dir.join(ISSUING_KEY_FILE),
    };
    for p in [
        &root.cert,
        &root.key,
        &issuing.cert,
        &issuing.key,
        &dir.join(CA_KEY_FILE),
    ] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let root_key = KeyType::Ed25519.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{common_name} root"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now, root_days)?;
    let root_cert = params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(params, &root_key);

    let issuing_key = KeyType::Ed25519.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{common_name} issuing {}", now.format("%Y-%m-%d")));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, now, issuing_days.min(root_days))?;
    let issuing_cert = params.signed_by(&issuing_key, &root_issuer)?;

    write_pair(&root, &root_cert.pem(), &root_key.serialize_pem())?;
    write_pair(&issuing, &issuing_cert.pem(), &issuing_key.serialize_pem())?;
    Ok(CaFiles {
        root_cert: root.cert,
        root_key: root.key,
        issuing,
    })
}

/// Creates a single-tier CA (`ca.crt`, `ca.key`), the layout before the two tiers: kept so that
/// such deployments can be tested and migrated.
pub fn init_single_tier_ca(
    dir: &Path,
    common_name: &str,
    validity_days: i64,
) -> Result<IssuedFiles, PkiError> {
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
    set_validity(&mut params, Utc::now(), validity_days)?;
    let cert = params.self_signed(&key)?;
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// The CA that signs: the issuing CA of a two-tier directory, or a single-tier CA.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The issuing CA's certificate (PEM).
    cert_pem: String,
    info: CertInfo,
    /// Whether certificates must carry the issuing CA after them to reach the trust anchor.
    two_tier: bool,
}

impl Authority {
    /// Loads the issuer from a CA directory (two-tier first, then single-tier).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path, two_tier) = if dir.join(ISSUING_KEY_FILE).exists() {
            (
                dir.join(ISSUING_CERT_FILE),
                dir.join(ISSUING_KEY_FILE),
                true,
            )
        } else if dir.join(CA_KEY_FILE).exists() {
            (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE), false)
        } else {
            return Err(PkiError::NoCa(dir.to_path_buf()));
        };
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let der = certificates_from_pem(&cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::BadCertificate(cert_path.display().to_string()))?;
        let info = inspect_der(&der)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Authority {
            issuer,
            cert_pem,
            info,
            two_tier,
        })
    }

    /// The signer itself, for callers that build certificates in memory from
    /// [`appliance_params`].
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// What a client must send after its own certificate: the issuing CA's certificate (DER)
    /// when there are two tiers.
    pub fn intermediate_der(&self) -> Result<Option<Vec<u8>>, PkiError> {
        if !self.two_tier {
            return Ok(None);
        }
        Ok(certificates_from_pem(&self.cert_pem)?
            .into_iter()
            .next()
            .map(|c| c.to_vec()))
    }

    /// The issuing CA's certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The issuing CA's certificate (PEM).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `leaf_pem` followed by what a client must send with it to reach the trust anchor.
    fn chain(&self, leaf_pem: &str) -> String {
        if self.two_tier {
            format!("{leaf_pem}{}", self.cert_pem)
        } else {
            leaf_pem.to_owned()
        }
    }

    /// Signs a certificate for `serial` valid for `lifetime` from `now` (backdated by
    /// [`BACKDATE`]) for the public key of `csr_pem`. The request's signature must verify and
    /// its key be Ed25519 or P-256; whatever names it asks for are ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        serial: &Serial,
        lifetime: Duration,
        now: DateTime<Utc>,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &PKCS_ED25519 && alg != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadRequest(
                "the key must be Ed25519 or ECDSA P-256".into(),
            ));
        }
        let request = CertificateSigningRequestParams {
            params: appliance_params_for(serial, now, lifetime)?,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.issuer)?;
        let info = inspect_der(cert.der())?;
        Ok(Issued {
            chain_pem: self.chain(&cert.pem()),
            info,
        })
    }

    /// A CRL of `revoked` (serial number in hex, when revoked), number `number`, valid until
    /// `next_update`.
    pub fn crl_pem(
        &self,
        revoked: &[(String, DateTime<Utc>)],
        number: u64,
        now: DateTime<Utc>,
        next_update: DateTime<Utc>,
    ) -> Result<String, PkiError> {
        let revoked_certs = revoked
            .iter()
            .map(|(hex, at)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&crate::from_hex(hex).ok_or_else(
                        || PkiError::BadCertificate(format!("serial number {hex:?} is not hex")),
                    )?),
                    revocation_time: offset(*at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: offset(now)?,
            next_update: offset(next_update)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// A certificate signed by the [`Authority`].
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate followed by the issuing CA's when there are two tiers (PEM).
    pub chain_pem: String,
    pub info: CertInfo,
}

/// Issues the ingest's TLS server certificate for `names` (DNS names or IP addresses), signed
/// by the CA in `dir`; writes `<stem>.crt` (with the issuing CA after it) and `<stem>.key`.
pub fn issue_server(
    dir: &Path,
    names: &[String],
    stem: &str,
    validity_days: i64,
) -> Result<IssuedFiles, PkiError> {
    let ca = Authority::load(dir)?;
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
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, Utc::now(), validity_days)?;
    let key = KeyType::Ed25519.generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    let files = IssuedFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    write_pair(&files, &ca.chain(&cert.pem()), &key.serialize_pem())?;
    Ok(files)
}

/// Issues an appliance's client certificate for a new `key_type` key made here (the factory
/// path: the key is copied to the appliance at imaging): CN = serial and a URI SAN
/// `urn:phonehome:serial:<serial>`; written as `appliance-<serial>.crt|.key` in `out_dir`.
pub fn issue_appliance(
    ca_dir: &Path,
    out_dir: &Path,
    serial: &Serial,
    validity_days: i64,
    key_type: KeyType,
) -> Result<IssuedFiles, PkiError> {
    let ca = Authority::load(ca_dir)?;
    let params = appliance_params(serial, Utc::now(), validity_days)?;
    let key = key_type.generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let stem = format!("appliance-{}", serial.file_stem());
    let files = IssuedFiles {
        cert: out_dir.join(format!("{stem}.crt")),
        key: out_dir.join(format!("{stem}.key")),
    };
    write_pair(&files, &ca.chain(&cert.pem()), &key.serialize_pem())?;
    Ok(files)
}

/// The profile of every appliance certificate, however it is issued (the load generator signs
/// with it in memory).
pub fn appliance_params(
    serial: &Serial,
    now: DateTime<Utc>,
    days: i64,
) -> Result<CertificateParams, PkiError> {
    appliance_params_for(serial, now, Duration::days(days.clamp(1, 36_500)))
}

/// [`appliance_params`] with a lifetime finer than a day (a lab or a test that watches a
/// certificate age).
pub fn appliance_params_for(
    serial: &Serial,
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<CertificateParams, PkiError> {
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
    params.serial_number = Some(random_serial()?);
    params.not_before = offset(now - BACKDATE)?;
    let lifetime = lifetime.clamp(Duration::seconds(1), Duration::days(36_500));
    params.not_after = offset(now + lifetime)?;
    Ok(params)
}

/// 16 random bytes, positive: RFC 5280 wants serials unique per CA and unpredictable.
fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::BadName {
            name: "serial number".into(),
            reason: "the system's random source failed".into(),
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "phonehome fleet");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| PkiError::BadCertificate(format!("time {t}: {e}")))
}

fn set_validity(
    params: &mut CertificateParams,
    now: DateTime<Utc>,
    days: i64,
) -> Result<(), PkiError> {
    params.not_before = offset(now - BACKDATE)?;
    let days = days.clamp(1, 36_500);
    params.not_after = offset(now + Duration::days(days))?;
    Ok(())
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

/// Writes a new file; never replaces one (see [`write_pair`]).
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
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
    use crate::{csr_pem, key_matches};

    #[test]
    fn keys_are_private_and_ca_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), "test CA", 30, 20).unwrap();
        for key in [&ca.root_key, &ca.issuing.key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(matches!(
            init_ca(dir.path(), "again", 30, 20),
            Err(PkiError::Exists(_))
        ));

        let serial = Serial::parse("SN 1/2").unwrap();
        let app = issue_appliance(dir.path(), dir.path(), &serial, 30, KeyType::default()).unwrap();
        assert_eq!(app.cert.file_name().unwrap(), "appliance-SN_1_2.crt");
        let mode = fs::metadata(&app.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let chain = certificates_from_pem(&fs::read_to_string(&app.cert).unwrap()).unwrap();
        assert_eq!(chain.len(), 2, "the leaf and the issuing CA");
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

    #[test]
    fn a_csr_becomes_a_backdated_certificate_for_the_serial_the_ca_chose() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30, 20).unwrap();
        let ca = Authority::load(dir.path()).unwrap();
        let key = KeyType::Ed25519.generate().unwrap();
        // The request asks for another serial; the certificate names the one the CA was given.
        let csr = csr_pem(&Serial::parse("SN-OTHER").unwrap(), &key).unwrap();
        let now = Utc::now();
        let serial = Serial::parse("SN-1").unwrap();
        let issued = ca
            .sign_csr(&csr, &serial, Duration::days(365), now)
            .unwrap();
        assert_eq!(issued.info.subject_cn.as_deref(), Some("SN-1"));
        assert_eq!(
            issued.info.not_before.timestamp(),
            (now - BACKDATE).timestamp()
        );
        assert_eq!(
            issued.info.not_after.timestamp(),
            (now + Duration::days(365)).timestamp()
        );
        assert!(key_matches(&key.serialize_pem(), &issued.info));
        let other = KeyType::Ed25519.generate().unwrap();
        assert!(!key_matches(&other.serialize_pem(), &issued.info));
        assert_eq!(certificates_from_pem(&issued.chain_pem).unwrap().len(), 2);

        let p256 = KeyType::P256.generate().unwrap();
        let csr = csr_pem(&serial, &p256).unwrap();
        assert!(ca.sign_csr(&csr, &serial, Duration::days(1), now).is_ok());

        // A request whose signature does not verify is refused.
        let tampered = csr.replace("MI", "MJ");
        assert!(matches!(
            ca.sign_csr(&tampered, &serial, Duration::days(1), now),
            Err(PkiError::BadRequest(_))
        ));
        assert!(matches!(
            ca.sign_csr("junk", &serial, Duration::days(1), now),
            Err(PkiError::BadRequest(_))
        ));

        let crl = ca
            .crl_pem(
                &[(issued.info.serial_hex.clone(), now)],
                7,
                now,
                now + Duration::days(1),
            )
            .unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    }

    #[test]
    fn single_tier_directories_still_issue() {
        let dir = tempfile::tempdir().unwrap();
        init_single_tier_ca(dir.path(), "old CA", 30).unwrap();
        let serial = Serial::parse("SN-OLD").unwrap();
        let app = issue_appliance(dir.path(), dir.path(), &serial, 30, KeyType::default()).unwrap();
        let chain = certificates_from_pem(&fs::read_to_string(&app.cert).unwrap()).unwrap();
        assert_eq!(chain.len(), 1, "the CA is the trust anchor itself");
        assert!(Authority::load(dir.path()).is_ok());
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Authority::load(empty.path()),
            Err(PkiError::NoCa(_))
        ));
    }
}
