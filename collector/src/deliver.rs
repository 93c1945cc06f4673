//! Delivering a report to the ingest: `POST {server}/v1/reports`, gzip-compressed JSON, over
//! mutual TLS with the fleet CA as the only trust root, and what the answer means.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use phonehome_schema::Report;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::config::{ConfigError, DeliverySettings};
use crate::exit;
use crate::machine::read_bounded;

/// The ingest answers with a short JSON document; anything longer is cut, never buffered whole.
pub const RESPONSE_LIMIT: u64 = 64 * 1024;
/// PEM files of a CA or an appliance are a few KiB.
const PEM_LIMIT: u64 = 1024 * 1024;

/// An HTTPS client that trusts only the fleet CA and presents the appliance's certificate.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    url: String,
    server: String,
    timeout: Duration,
}

impl Client {
    /// Loads the CA, certificate and key named in the settings. Unreadable or unusable files, or
    /// a key that does not belong to the certificate, are configuration errors.
    pub fn new(settings: &DeliverySettings) -> Result<Client, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = load_ca(&settings.ca_cert)?;
        let (chain, key) = load_identity(&settings.client_cert, &settings.client_key, &provider)?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider)
            .root_certs(RootCerts::new_with_certs(&roots))
            .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            // Non-2xx answers carry the ingest's explanation; they are outcomes, not errors.
            .http_status_as_error(false)
            // A redirect means a wrong `server`; following it would re-send the report elsewhere.
            .max_redirects(0)
            .timeout_global(Some(settings.timeout))
            .user_agent(format!("phonehome-collector/{}", crate::COLLECTOR_VERSION))
            .build()
            .new_agent();
        Ok(Client {
            agent,
            url: format!("{}/v1/reports", settings.server),
            server: settings.server.clone(),
            timeout: settings.timeout,
        })
    }

    /// The base URL reports are delivered to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Posts the report once and says what happened.
    pub fn deliver(&self, report: &Report) -> Outcome {
        let body = match gzip_json(report) {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Unreachable {
                    problem: Problem::Local,
                    detail: e.to_string(),
                };
            }
        };
        let response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header("Accept", "application/json")
            .send(&body[..]);
        let mut response = match response {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Unreachable {
                    problem: classify(&e),
                    detail: describe(&e, self.timeout),
                };
            }
        };
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        // The status is what counts; a body that breaks off only loses the explanation.
        let _ = response
            .body_mut()
            .as_reader()
            .take(RESPONSE_LIMIT)
            .read_to_end(&mut answer);
        if (200..300).contains(&status) {
            Outcome::Delivered { status }
        } else {
            Outcome::Refused {
                status,
                message: server_message(&answer),
            }
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The ingest stored the report (202), or had already stored it (200).
    Delivered { status: u16 },
    /// The ingest answered but did not take the report.
    Refused {
        status: u16,
        message: Option<String>,
    },
    /// No HTTP answer at all.
    Unreachable { problem: Problem, detail: String },
}

/// Why no HTTP answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Timeout,
    /// The TLS handshake failed, or the peer closed the session with a TLS alert (for example
    /// because it does not trust the client certificate).
    Tls,
    Network,
    /// The request could not even be made from this configuration.
    Config,
    /// The report could not be encoded.
    Local,
}

impl Outcome {
    /// The process exit code for this outcome (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Delivered { .. } => exit::OK,
            Outcome::Refused { status, .. } => match status {
                408 | 429 | 500..=599 => exit::TEMPFAIL,
                400 | 413 | 415 | 422 => exit::DATAERR,
                // 403: the certificate is not this serial's; 3xx/404: `server` is wrong.
                _ => exit::CONFIG,
            },
            Outcome::Unreachable { problem, .. } => match problem {
                Problem::Timeout | Problem::Tls | Problem::Network => exit::TEMPFAIL,
                Problem::Config => exit::CONFIG,
                Problem::Local => exit::SOFTWARE,
            },
        }
    }

    /// One line for the log: which report, for which serial, to where, and what happened.
    pub fn summary(&self, report: &Report, server: &str) -> String {
        let what = format!(
            "report {} for serial {}",
            report.report_id, report.identity.serial
        );
        match self {
            Outcome::Delivered { status } => {
                let note = match status {
                    202 => ", stored",
                    200 => ", already stored",
                    _ => "",
                };
                format!("{what} delivered to {server} ({status}{note})")
            }
            Outcome::Refused { status, message } => {
                let reason = ureq::http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                let mut line = format!("{what} refused by {server}: {status} {reason}");
                if let Some(message) = message {
                    line.push_str(&format!(": {message}"));
                }
                let hint = match status {
                    403 => " (is client_cert issued for this serial?)",
                    408 | 429 | 500..=599 => " (temporary; try again later)",
                    300..=399 | 404 => " (is `server` the ingest's report listener?)",
                    _ => "",
                };
                line.push_str(hint);
                line
            }
            Outcome::Unreachable { problem, detail } => {
                format!("{what} not delivered to {server}: {problem}: {detail}")
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Timeout => "timed out",
            Problem::Tls => "TLS failure",
            Problem::Network => "connection failed",
            Problem::Config => "cannot make the request",
            Problem::Local => "cannot encode the report",
        })
    }
}

/// The report as gzip-compressed JSON, as the ingest accepts it.
pub fn gzip_json(report: &Report) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    serde_json::to_writer(&mut encoder, report)?;
    encoder.flush()?;
    encoder.finish()
}

fn classify(e: &ureq::Error) -> Problem {
    match e {
        ureq::Error::Timeout(_) => Problem::Timeout,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => Problem::Tls,
        ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl => Problem::Config,
        ureq::Error::Io(io) => {
            // rustls reports handshake failures and received alerts as I/O errors wrapping its
            // own error type.
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>());
            if tls {
                Problem::Tls
            } else if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                Problem::Timeout
            } else {
                Problem::Network
            }
        }
        _ => Problem::Network,
    }
}

/// The error without ureq's category prefix, with a hint where the cause is usually local.
fn describe(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(which) => {
            format!("no answer within {} s ({which} timeout)", timeout.as_secs())
        }
        ureq::Error::Io(io) => {
            let hint = match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(rustls::Error::InvalidCertificate(_)) => {
                    " (is ca_cert the fleet CA that signed the ingest's certificate?)"
                }
                Some(rustls::Error::AlertReceived(_)) => {
                    " (the ingest refused the handshake; is client_cert issued by the fleet CA?)"
                }
                _ => "",
            };
            format!("{io}{hint}")
        }
        other => other.to_string(),
    }
}

/// The ingest's explanation: the `message` field of its JSON answer, else the start of the text.
fn server_message(body: &[u8]) -> Option<String> {
    const MAX: usize = 300;
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => match json.get("message").or_else(|| json.get("error")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => json.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    // The answer ends up in a log line: one line, printable, bounded.
    let mut clean: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if text.trim().chars().count() > MAX {
        clean.push('…');
    }
    (!clean.is_empty()).then_some(clean)
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    read_bounded(path, PEM_LIMIT)
        .map_err(|e| ConfigError::new(path, format!("cannot read {what}: {e}")))
}

fn load_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(path, format!("{what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            path,
            format!("{what} holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

fn load_ca(path: &Path) -> Result<Vec<Certificate<'static>>, ConfigError> {
    let certs = load_certificates(path, "the fleet CA certificate (ca_cert)")?;
    // ureq silently skips roots it cannot parse; an empty trust store would only show up later
    // as a confusing handshake failure.
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(ConfigError::new(
            path,
            "ca_cert holds no usable CA certificate",
        ));
    }
    Ok(certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect())
}

fn load_identity(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<Certificate<'static>>, PrivateKey<'static>), ConfigError> {
    let chain = load_certificates(cert_path, "the appliance certificate (client_cert)")?;
    let key_pem = read_pem(key_path, "the appliance key (client_key)")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ConfigError::new(
            key_path,
            format!("client_key holds no usable PEM private key: {e}"),
        )
    })?;
    let ureq_key = PrivateKey::from_pem(&key_pem).map_err(|e| {
        ConfigError::new(
            key_path,
            format!("client_key holds no usable PEM private key: {e}"),
        )
    })?;
    // ureq panics on a key the TLS stack refuses; check here so it is a configuration error.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| {
        let problem = format!(
            "client_cert and client_key {} cannot be used together: {e}",
            key_path.display()
        );
        ConfigError::new(cert_path, problem)
    })?;
    let chain = chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    Ok((chain, ureq_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_sysexits() {
        let refused = |status| {
            Outcome::Refused {
                status,
                message: None,
            }
            .exit_code()
        };
        assert_eq!(Outcome::Delivered { status: 202 }.exit_code(), 0);
        assert_eq!(Outcome::Delivered { status: 200 }.exit_code(), 0);
        for status in [500, 502, 503, 429] {
            assert_eq!(refused(status), 75, "{status}");
        }
        for status in [400, 413, 422] {
            assert_eq!(refused(status), 65, "{status}");
        }
        for status in [403, 404, 301] {
            assert_eq!(refused(status), 78, "{status}");
        }
        for problem in [Problem::Timeout, Problem::Tls, Problem::Network] {
            let outcome = Outcome::Unreachable {
                problem,
                detail: String::new(),
            };
            assert_eq!(outcome.exit_code(), 75, "{problem:?}");
        }
    }

    #[test]
    fn the_servers_message_is_kept_short_and_on_one_line() {
        let json = br#"{"error":"serial_mismatch","message":"certificate is for serial A,\nreport says B"}"#;
        assert_eq!(
            server_message(json).as_deref(),
            Some("certificate is for serial A, report says B")
        );
        assert_eq!(
            server_message(b"plain text\n").as_deref(),
            Some("plain text")
        );
        assert_eq!(server_message(b""), None);
        let long = server_message(&[b'x'; 5000]).unwrap_or_default();
        assert!(long.chars().count() <= 301, "{}", long.len());
    }

    #[test]
    fn missing_or_wrong_pem_files_are_configuration_errors()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n")?;
        let settings = |ca: &Path| DeliverySettings {
            server: "https://127.0.0.1:8443".into(),
            ca_cert: ca.to_owned(),
            client_cert: not_pem.clone(),
            client_key: not_pem.clone(),
            timeout: std::time::Duration::from_secs(1),
        };
        let missing = dir.path().join("missing.crt");
        let err = Client::new(&settings(&missing))
            .err()
            .ok_or("missing CA accepted")?;
        assert_eq!(err.path, missing);
        assert!(err.problem.contains("cannot read"), "{err}");

        let err = Client::new(&settings(&not_pem))
            .err()
            .ok_or("non-PEM CA accepted")?;
        assert!(err.problem.contains("no PEM certificate"), "{err}");
        Ok(())
    }
}
