//! Keeping the appliance's certificate alive: every `run` looks at it, and past about two
//! thirds of its lifetime asks the ingest for a certificate for a new key (`POST /v1/renew`,
//! over mutual TLS with the current pair, which may have expired within the ingest's grace).
//!
//! The swap is crash-safe: the new key goes to `client_key.next`, the certificate to
//! `client_cert.next`, then the key and then the certificate are renamed over the old ones.
//! Whatever moment a kill lands on, [`settle`] (run before the pair is loaded) finds a
//! matching pair among the current and `.next` files and completes or undoes the swap. The
//! ingest keeps the old certificate valid, so the old pair works until the new one is in place.
//!
//! A renewal failure never stops the report: it is said in the summary, carried in the report
//! (`collector.certificate.renewal_error`) and remembered in `client_cert.renewal` until a
//! renewal succeeds.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use phonehome_pki::CertInfo;
use phonehome_schema::enrol::IssuedCertificate;
use phonehome_schema::{CertificateState, Serial};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DeliverySettings};

/// Renewal starts at this share of the lifetime, give or take [`JITTER`].
pub const RENEW_AT: f64 = 2.0 / 3.0;
/// Half the width of the window around [`RENEW_AT`]: a fleet enrolled in one week spreads its
/// renewals over about a month of a year's lifetime instead of all renewing the same day.
pub const JITTER: f64 = 1.0 / 15.0;
/// The longest renewal error kept in the report (the contract allows 256 characters).
const MAX_ERROR_CHARS: usize = 240;
/// Set to `renew-N` to abort the process after step N of a renewal (1 new key written, 2 answer
/// received, 3 new certificate written, 4 key swapped, 5 certificate swapped): how the tests
/// kill the collector at every step.
pub const FAILPOINT_ENV: &str = "PHONEHOME_COLLECTOR_FAILPOINT";

/// The files an appliance's identity lives in.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl KeyFiles {
    pub fn of(settings: &DeliverySettings) -> KeyFiles {
        KeyFiles {
            cert: settings.client_cert.clone(),
            key: settings.client_key.clone(),
            ca: settings.ca_cert.clone(),
        }
    }

    fn next_cert(&self) -> PathBuf {
        with_suffix(&self.cert, ".next")
    }

    fn next_key(&self) -> PathBuf {
        with_suffix(&self.key, ".next")
    }

    fn state(&self) -> PathBuf {
        with_suffix(&self.cert, ".renewal")
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What `client_cert.renewal` remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
}

impl RenewalMemory {
    fn load(files: &KeyFiles) -> RenewalMemory {
        std::fs::read(files.state())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn store(&self, files: &KeyFiles) {
        // Losing this only loses what the next report says about the last attempt.
        if let Ok(json) = serde_json::to_string(self) {
            let _ = write_atomically(&files.state(), &json, 0o644);
        }
    }
}

/// The first certificate of a PEM chain, read.
fn leaf_info(pem: &[u8]) -> Option<CertInfo> {
    let leaf = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    phonehome_pki::inspect_der(&leaf).ok()
}

fn pair_matches(key: Option<&String>, cert: Option<&CertInfo>) -> bool {
    matches!((key, cert), (Some(k), Some(c)) if phonehome_pki::key_matches(k, c))
}

/// Finishes or undoes a renewal a kill interrupted, so that `client_key` and `client_cert`
/// are a matching pair again. Returns what it did, if anything; an error only when no matching
/// pair can be found among the current and `.next` files.
pub fn settle(files: &KeyFiles) -> Result<Option<String>, ConfigError> {
    let (next_key_path, next_cert_path) = (files.next_key(), files.next_cert());
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let key = read(&files.key);
    let next_key = read(&next_key_path);
    let cert = read(&files.cert);
    let next_cert = read(&next_cert_path);
    if next_key.is_none() && next_cert.is_none() {
        return Ok(None);
    }
    let info = |pem: &Option<String>| pem.as_ref().and_then(|p| leaf_info(p.as_bytes()));
    let (cert_info, next_cert_info) = (info(&cert), info(&next_cert));
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .map_err(|e| ConfigError::new(to, format!("cannot finish a renewal: {e}")))
            .map(|()| sync_dir(to))
    };
    let done = if pair_matches(next_key.as_ref(), next_cert_info.as_ref()) {
        // Both new files were written: complete the swap, key first as `renew` does.
        rename(&next_key_path, &files.key)?;
        rename(&next_cert_path, &files.cert)?;
        "finished an interrupted renewal (new key and certificate put in place)"
    } else if pair_matches(key.as_ref(), next_cert_info.as_ref()) {
        // Killed between the two renames: the key is already the new one.
        rename(&next_cert_path, &files.cert)?;
        "finished an interrupted renewal (new certificate put in place)"
    } else if pair_matches(key.as_ref(), cert_info.as_ref()) {
        // Killed before the new certificate was stored: the old pair stays, the rest goes.
        for p in [&next_key_path, &next_cert_path] {
            let _ = std::fs::remove_file(p);
        }
        "discarded an interrupted renewal (the current key and certificate stay)"
    } else {
        return Err(ConfigError::new(
            &files.cert,
            format!(
                "client_cert and client_key do not match, and neither do {} and {}",
                next_cert_path.display(),
                next_key_path.display()
            ),
        ));
    };
    Ok(Some(done.to_owned()))
}

/// The share of its lifetime at which this certificate is renewed: [`RENEW_AT`] moved by up to
/// [`JITTER`] either way, fixed per certificate (from its fingerprint) so that every daily run
/// agrees and a fleet does not renew in one day.
pub fn renew_share(info: &CertInfo) -> f64 {
    let spread = f64::from(u16::from_be_bytes([info.sha256[0], info.sha256[1]])) / 65_535.0;
    RENEW_AT + JITTER * (spread.mul_add(2.0, -1.0))
}

/// The share of the lifetime gone at `now`, counted from issue (the backdating hour, there for
/// clocks that are behind, is not lifetime used).
pub fn lifetime_share(info: &CertInfo, now: DateTime<Utc>) -> f64 {
    let issued = (info.not_before + phonehome_pki::BACKDATE).min(info.not_after);
    let whole = (info.not_after - issued).num_milliseconds().max(1) as f64;
    (now - issued).num_milliseconds() as f64 / whole
}

/// Whether the certificate should be renewed now.
pub fn due(info: &CertInfo, now: DateTime<Utc>) -> bool {
    lifetime_share(info, now) >= renew_share(info)
}

/// The certificate in `client_cert`, read.
pub fn current(files: &KeyFiles) -> Result<CertInfo, ConfigError> {
    let pem = std::fs::read(&files.cert)
        .map_err(|e| ConfigError::new(&files.cert, format!("cannot read client_cert: {e}")))?;
    leaf_info(&pem)
        .ok_or_else(|| ConfigError::new(&files.cert, "client_cert holds no readable certificate"))
}

/// What became of the renewal check of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Not yet due.
    NotDue,
    /// Renewed: the new certificate is in place.
    Renewed { not_after: DateTime<Utc> },
    /// Due but failed; the old pair stays.
    Failed { error: String },
}

impl Renewal {
    /// A clause for the run's summary line, if there is anything to say.
    pub fn summary(&self) -> Option<String> {
        match self {
            Renewal::NotDue => None,
            Renewal::Renewed { not_after } => Some(format!(
                "renewed the certificate (valid until {})",
                not_after.format("%Y-%m-%d %H:%M UTC")
            )),
            Renewal::Failed { error } => Some(format!("certificate renewal failed: {error}")),
        }
    }
}

/// Asks the ingest for a certificate: the request (CSR PEM) in, the answer or why not out.
pub trait Renewer {
    fn renew(&self, csr_pem: &str) -> Result<IssuedCertificate, String>;
}

impl Renewer for crate::deliver::Client {
    fn renew(&self, csr_pem: &str) -> Result<IssuedCertificate, String> {
        self.renew_certificate(csr_pem)
    }
}

/// Renews if due (or if `force`), and says what happened; remembers it in `client_cert.renewal`.
pub fn renew_if_due(
    renewer: &impl Renewer,
    files: &KeyFiles,
    serial: &Serial,
    now: DateTime<Utc>,
    force: bool,
) -> Renewal {
    let info = match current(files) {
        Ok(i) => i,
        Err(e) => {
            return Renewal::Failed {
                error: e.to_string(),
            };
        }
    };
    if !force && !due(&info, now) {
        return Renewal::NotDue;
    }
    let mut memory = RenewalMemory::load(files);
    let result = renew(renewer, files, serial);
    match &result {
        Renewal::Renewed { .. } => {
            memory.renewed_at = Some(Utc::now());
            memory.error = None;
            memory.failed_at = None;
        }
        Renewal::Failed { error } => {
            memory.error = Some(error.clone());
            memory.failed_at = Some(Utc::now());
        }
        Renewal::NotDue => {}
    }
    memory.store(files);
    result
}

fn failpoint(step: u8) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == format!("renew-{step}")) {
        std::process::abort();
    }
}

/// One renewal: new key, request, answer checked, swap. The old pair is untouched until the new
/// one is complete on disk.
fn renew(renewer: &impl Renewer, files: &KeyFiles, serial: &Serial) -> Renewal {
    let failed = |error: String| Renewal::Failed {
        error: shorten(&error),
    };
    // The same kind of key as now (P-256 where the appliance chose it), Ed25519 otherwise.
    let key_type = std::fs::read_to_string(&files.key)
        .ok()
        .and_then(|pem| phonehome_pki::KeyType::of_pem(&pem))
        .unwrap_or_default();
    let key = match key_type.generate() {
        Ok(k) => k,
        Err(e) => return failed(format!("cannot make a key: {e}")),
    };
    let key_pem = key.serialize_pem();
    let csr = match phonehome_pki::csr_pem(serial, &key) {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot make the request: {e}")),
    };
    if let Err(e) = write_atomically(&files.next_key(), &key_pem, 0o600) {
        return failed(e);
    }
    failpoint(1);
    let issued = match renewer.renew(&csr) {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(files.next_key());
            return failed(e);
        }
    };
    failpoint(2);
    let info = match leaf_info(issued.certificate_chain_pem.as_bytes()) {
        Some(i) if phonehome_pki::key_matches(&key_pem, &i) => i,
        _ => {
            let _ = std::fs::remove_file(files.next_key());
            return failed("the ingest's answer holds no certificate for the new key".into());
        }
    };
    if let Err(e) = write_atomically(&files.next_cert(), &issued.certificate_chain_pem, 0o644) {
        let _ = std::fs::remove_file(files.next_key());
        return failed(e);
    }
    failpoint(3);
    if let Err(e) = std::fs::rename(files.next_key(), &files.key) {
        return failed(format!("cannot put the new key in place: {e}"));
    }
    sync_dir(&files.key);
    failpoint(4);
    if let Err(e) = std::fs::rename(files.next_cert(), &files.cert) {
        // The key is new and the certificate old: `settle` finishes this on the next load.
        return failed(format!("cannot put the new certificate in place: {e}"));
    }
    sync_dir(&files.cert);
    failpoint(5);
    // A CA rollover reaches the appliance here: the bundle trusts old and new issuing CAs.
    let bundle_ok =
        CertificateDer::pem_slice_iter(issued.ca_bundle_pem.as_bytes()).any(|c| c.is_ok());
    if bundle_ok
        && std::fs::read_to_string(&files.ca).ok().as_deref() != Some(&issued.ca_bundle_pem)
    {
        let _ = write_atomically(&files.ca, &issued.ca_bundle_pem, 0o644);
    }
    Renewal::Renewed {
        not_after: info.not_after,
    }
}

/// What the report says about the certificate this run delivers with.
pub fn state(files: &KeyFiles) -> Option<CertificateState> {
    let info = current(files).ok()?;
    let memory = RenewalMemory::load(files);
    Some(CertificateState {
        not_after: info.not_after,
        renewed_at: memory.renewed_at,
        renewal_error: memory.error.map(|e| shorten(&e)),
    })
}

fn shorten(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Writes `text` to `path` through a temporary file and a rename, synced, with `mode`.
pub fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let tmp = with_suffix(path, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    let describe =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| describe("create", &tmp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| describe("set the mode of", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| describe("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| describe("rename to", path, e))?;
    sync_dir(path);
    Ok(())
}

/// Makes a rename durable.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonehome_pki::ca;

    struct FromCa(ca::Authority, chrono::Duration);

    impl Renewer for FromCa {
        fn renew(&self, csr_pem: &str) -> Result<IssuedCertificate, String> {
            let serial = Serial::parse("SN-RENEW").unwrap();
            let issued = self
                .0
                .sign_csr(csr_pem, &serial, self.1, Utc::now())
                .map_err(|e| e.to_string())?;
            Ok(IssuedCertificate {
                certificate_chain_pem: issued.chain_pem,
                ca_bundle_pem: self.0.certificate_pem().to_owned(),
                not_before: issued.info.not_before,
                not_after: issued.info.not_after,
            })
        }
    }

    struct Refusing;

    impl Renewer for Refusing {
        fn renew(&self, _: &str) -> Result<IssuedCertificate, String> {
            Err("the ingest answered HTTP 403: this certificate is revoked".into())
        }
    }

    fn setup(dir: &Path) -> (KeyFiles, FromCa) {
        ca::init_ca(&dir.join("ca"), "test fleet", 3650, 1825).unwrap();
        let authority = ca::Authority::load(&dir.join("ca")).unwrap();
        let files = KeyFiles {
            cert: dir.join("appliance.crt"),
            key: dir.join("appliance.key"),
            ca: dir.join("ca.crt"),
        };
        std::fs::copy(dir.join("ca").join(ca::CA_CERT_FILE), &files.ca).unwrap();
        let renewer = FromCa(authority, chrono::Duration::days(30));
        let key = phonehome_pki::KeyType::Ed25519.generate().unwrap();
        let serial = Serial::parse("SN-RENEW").unwrap();
        let issued = renewer
            .renew(&phonehome_pki::csr_pem(&serial, &key).unwrap())
            .unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.cert, issued.certificate_chain_pem).unwrap();
        (files, renewer)
    }

    fn pair_is_good(files: &KeyFiles) -> [u8; 32] {
        let key = std::fs::read_to_string(&files.key).unwrap();
        let info = current(files).unwrap();
        assert!(
            phonehome_pki::key_matches(&key, &info),
            "key and certificate differ"
        );
        info.sha256
    }

    #[test]
    fn renewal_is_due_past_two_thirds_with_a_jitter_fixed_per_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = setup(dir.path());
        let info = current(&files).unwrap();
        let share = renew_share(&info);
        assert!(
            (RENEW_AT - JITTER..=RENEW_AT + JITTER).contains(&share),
            "{share}"
        );
        let issued = info.not_before + phonehome_pki::BACKDATE;
        let life = info.not_after - issued;
        assert!(!due(&info, issued + life / 2));
        assert!(!due(&info, issued + life * 59 / 100));
        assert!(due(&info, issued + life * 74 / 100));
        assert!(
            due(&info, info.not_after + chrono::Duration::days(1)),
            "expired is due"
        );
    }

    #[test]
    fn a_renewal_replaces_key_and_certificate_and_a_refusal_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let (files, renewer) = setup(dir.path());
        let serial = Serial::parse("SN-RENEW").unwrap();
        let before = pair_is_good(&files);
        let later = Utc::now() + chrono::Duration::days(25);
        let failed = renew_if_due(&Refusing, &files, &serial, later, false);
        assert!(matches!(failed, Renewal::Failed { ref error } if error.contains("revoked")));
        assert_eq!(pair_is_good(&files), before);
        assert!(!files.next_key().exists());
        let st = state(&files).unwrap();
        assert!(st.renewal_error.unwrap().contains("revoked"));
        assert_eq!(st.renewed_at, None);

        assert_eq!(
            renew_if_due(&renewer, &files, &serial, Utc::now(), false),
            Renewal::NotDue
        );
        let done = renew_if_due(&renewer, &files, &serial, later, false);
        assert!(matches!(done, Renewal::Renewed { .. }), "{done:?}");
        assert_ne!(pair_is_good(&files), before);
        let st = state(&files).unwrap();
        assert_eq!(st.renewal_error, None, "a success clears the error");
        assert!(st.renewed_at.is_some());
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_renewal_keeps_the_kind_of_key_the_appliance_has() {
        let dir = tempfile::tempdir().unwrap();
        let (files, renewer) = setup(dir.path());
        let serial = Serial::parse("SN-RENEW").unwrap();
        let p256 = phonehome_pki::KeyType::P256.generate().unwrap();
        let issued = renewer
            .renew(&phonehome_pki::csr_pem(&serial, &p256).unwrap())
            .unwrap();
        std::fs::write(&files.key, p256.serialize_pem()).unwrap();
        std::fs::write(&files.cert, issued.certificate_chain_pem).unwrap();
        let done = renew_if_due(&renewer, &files, &serial, Utc::now(), true);
        assert!(matches!(done, Renewal::Renewed { .. }), "{done:?}");
        pair_is_good(&files);
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert_eq!(
            phonehome_pki::KeyType::of_pem(&key),
            Some(phonehome_pki::KeyType::P256)
        );
    }

    /// What a kill leaves: key, key.next, certificate, certificate.next, and whether the new
    /// pair should win.
    type Leftovers<'a> = (&'a str, Option<&'a str>, &'a str, Option<&'a str>, bool);

    /// Every state a kill can leave behind, built by hand, settles to a matching pair.
    #[test]
    fn settle_leaves_a_matching_pair_whatever_step_was_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let (files, renewer) = setup(dir.path());
        let old = pair_is_good(&files);
        let serial = Serial::parse("SN-RENEW").unwrap();
        let key = phonehome_pki::KeyType::Ed25519.generate().unwrap();
        let new_key = key.serialize_pem();
        let issued = renewer
            .renew(&phonehome_pki::csr_pem(&serial, &key).unwrap())
            .unwrap();
        let new_cert = issued.certificate_chain_pem;
        let old_key = std::fs::read_to_string(&files.key).unwrap();
        let old_cert = std::fs::read_to_string(&files.cert).unwrap();
        // (key, key.next, cert, cert.next) after each step, and whether the new pair wins.
        let steps: [Leftovers; 5] = [
            (&old_key, Some(&new_key[..40]), &old_cert, None, false), // torn .next key
            (&old_key, Some(&new_key), &old_cert, None, false),
            (&old_key, Some(&new_key), &old_cert, Some(&new_cert), true),
            (&new_key, None, &old_cert, Some(&new_cert), true),
            (&new_key, None, &new_cert, None, true),
        ];
        for (i, (key, next_key, cert, next_cert, new_wins)) in steps.into_iter().enumerate() {
            std::fs::write(&files.key, key).unwrap();
            std::fs::write(&files.cert, cert).unwrap();
            for (p, v) in [(files.next_key(), next_key), (files.next_cert(), next_cert)] {
                match v {
                    Some(v) => std::fs::write(p, v).unwrap(),
                    None => {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            settle(&files).unwrap_or_else(|e| panic!("step {i}: {e}"));
            let now = pair_is_good(&files);
            assert_eq!(now != old, new_wins, "step {i}");
            assert!(
                !files.next_key().exists() && !files.next_cert().exists(),
                "step {i}"
            );
        }
        std::fs::write(&files.key, &old_key).unwrap();
        std::fs::write(&files.cert, &new_cert).unwrap();
        std::fs::write(files.next_key(), "junk").unwrap();
        assert!(
            settle(&files).is_err(),
            "no matching pair anywhere is an error"
        );
    }
}
