//! `phonehome-collector enroll`: the appliance makes its own key (it never leaves the machine),
//! sends a certificate request with a one-time token over server-authenticated TLS, and stores
//! the certificate it gets. One request, so a minimal HTTP/1.1 exchange on a rustls stream:
//! the enrolment connection must offer the enrolment ALPN, which ureq cannot.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phonehome_schema::Serial;
use phonehome_schema::enrol::{ENROL_ALPN, EnrolRequest, IssuedCertificate};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The largest answer read: a certificate chain and a CA bundle.
const MAX_ANSWER_BYTES: u64 = 256 * 1024;

/// Why enrolment failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Fix the command or configuration (exit 78).
    #[error("{0}")]
    Config(String),
    /// The ingest refused the token or the request (exit 78: a new token is needed).
    #[error("the ingest refused the enrolment (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    /// Network, TLS or a server error: try again later (exit 75).
    #[error("{0}")]
    Transient(String),
}

/// Where the enrolment goes and what it writes.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// `https://host[:port]`, the ingest's report listener.
    pub server: String,
    /// The fleet CA bundle the ingest's certificate must chain to; replaced by the bundle the
    /// ingest hands out.
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub serial: Serial,
    pub timeout: Duration,
}

/// What enrolment stored.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub not_after: chrono::DateTime<chrono::Utc>,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> EnrolError {
    let msg = format!("{what} {}", path.display());
    move |e| EnrolError::Config(format!("{msg}: {e}"))
}

/// Host and port of `https://host[:port][/…]`.
fn host_port(server: &str) -> Result<(String, u16), EnrolError> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| EnrolError::Config(format!("server {server:?} must be an https:// URL")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| EnrolError::Config(format!("server {server:?}: bad port")))?,
        ),
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(EnrolError::Config(format!(
            "server {server:?} names no host"
        )));
    }
    Ok((host.to_owned(), port))
}

/// Enrols: key, request, certificate, files. Refuses to replace an existing key or certificate.
pub fn enroll(e: &Enrolment, token: &str) -> Result<Enrolled, EnrolError> {
    for p in [&e.client_cert, &e.client_key] {
        if p.exists() {
            return Err(EnrolError::Config(format!(
                "{} already exists; this appliance has a certificate (it renews by itself); \
                 move it away first to enrol again",
                p.display()
            )));
        }
    }
    let key = phonehome_pki::KeyType::Ed25519
        .generate()
        .map_err(|err| EnrolError::Config(format!("cannot make a key: {err}")))?;
    let csr_pem = phonehome_pki::csr_pem(&e.serial, &key)
        .map_err(|err| EnrolError::Config(format!("cannot make the request: {err}")))?;
    let body = serde_json::to_vec(&EnrolRequest {
        token: token.trim().to_owned(),
        serial: e.serial.clone(),
        csr_pem,
    })
    .map_err(|err| EnrolError::Config(err.to_string()))?;
    let (status, answer) = post(e, "/v1/enroll", &body)?;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).chars().take(300).collect());
        return Err(if status >= 500 || status == 429 || status == 408 {
            EnrolError::Transient(format!("the ingest answered HTTP {status}: {message}"))
        } else {
            EnrolError::Refused { status, message }
        });
    }
    let issued: IssuedCertificate = serde_json::from_slice(&answer)
        .map_err(|err| EnrolError::Transient(format!("unreadable answer: {err}")))?;
    let leaf = CertificateDer::pem_slice_iter(issued.certificate_chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| EnrolError::Transient("the answer holds no certificate".into()))?;
    let info = phonehome_pki::inspect_der(&leaf)
        .map_err(|err| EnrolError::Transient(format!("the certificate: {err}")))?;
    let key_pem = key.serialize_pem();
    if !phonehome_pki::key_matches(&key_pem, &info) {
        return Err(EnrolError::Transient(
            "the ingest returned a certificate for another key".into(),
        ));
    }
    // The key first, then the certificate: a run finding a key without a certificate is not
    // enrolled; one finding both has a matching pair.
    write_new(&e.client_key, &key_pem, 0o600)?;
    write_new(&e.client_cert, &issued.certificate_chain_pem, 0o644)?;
    if CertificateDer::pem_slice_iter(issued.ca_bundle_pem.as_bytes()).any(|c| c.is_ok()) {
        replace(&e.ca_cert, &issued.ca_bundle_pem)?;
    }
    Ok(Enrolled {
        not_after: info.not_after,
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), EnrolError> {
    crate::renew::write_atomically(path, text, mode).map_err(EnrolError::Config)
}

fn replace(path: &Path, text: &str) -> Result<(), EnrolError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    write_new(path, text, 0o644)
}

/// One POST over TLS that offers the enrolment ALPN and presents no certificate.
fn post(e: &Enrolment, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), EnrolError> {
    let (host, port) = host_port(&e.server)?;
    let pem = std::fs::read(&e.ca_cert).map_err(io("cannot read ca_cert", &e.ca_cert))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|err| {
            EnrolError::Config(format!("{}: not PEM: {err}", e.ca_cert.display()))
        })?;
        roots.add(c).map_err(|err| {
            EnrolError::Config(format!(
                "{}: not a CA certificate: {err}",
                e.ca_cert.display()
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| EnrolError::Config(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ENROL_ALPN.to_vec()];
    let name = ServerName::try_from(host.clone())
        .map_err(|err| EnrolError::Config(format!("server host {host:?}: {err}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|err| EnrolError::Config(err.to_string()))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|err| EnrolError::Transient(format!("resolve {host}: {err}")))?
        .next()
        .ok_or_else(|| EnrolError::Transient(format!("{host} has no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, e.timeout)
        .map_err(|err| EnrolError::Transient(format!("connect to {addr}: {err}")))?;
    let _ = tcp.set_read_timeout(Some(e.timeout));
    let _ = tcp.set_write_timeout(Some(e.timeout));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush())
        .map_err(|err| EnrolError::Transient(format!("send to {addr}: {err}")))?;
    let mut answer = Vec::new();
    // The server closes after its answer (Connection: close); an unclean close after a
    // complete answer is still an answer.
    let read = (&mut tls).take(MAX_ANSWER_BYTES).read_to_end(&mut answer);
    if let Err(err) = read {
        if answer.is_empty() {
            return Err(EnrolError::Transient(format!("read from {addr}: {err}")));
        }
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| EnrolError::Transient("incomplete HTTP answer".into()))?;
    let head = String::from_utf8_lossy(answer.get(..split).unwrap_or_default()).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| EnrolError::Transient(format!("not an HTTP answer: {head:?}")))?;
    let body = answer
        .get(split.saturating_add(4)..)
        .unwrap_or_default()
        .to_vec();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_give_host_and_port() {
        assert_eq!(
            host_port("https://ingest.example:8443").unwrap(),
            ("ingest.example".into(), 8443)
        );
        assert_eq!(
            host_port("https://ingest.example/").unwrap(),
            ("ingest.example".into(), 443)
        );
        assert_eq!(
            host_port("https://127.0.0.1:9").unwrap(),
            ("127.0.0.1".into(), 9)
        );
        assert!(host_port("http://x").is_err());
        assert!(host_port("https://:5").is_err());
    }
}
