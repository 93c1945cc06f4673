//! Minimal HTTP/1.1 clients for tests: over mutual TLS to the report listener (with any client
//! certificate, or none) and plain to the operations listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pki::CertPair;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TLS client trusting `ca`, presenting `identity` when given.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    pub fn new(ca: &Path, identity: Option<&CertPair>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some(id) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(&id.cert)
                    .expect("read client cert")
                    .collect::<Result<_, _>>()
                    .expect("client cert PEM");
                let key = PrivateKeyDer::from_pem_file(&id.key).expect("read client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// POSTs `body` to `path`. An `Err` means no HTTP response arrived (handshake refused,
    /// connection closed); its text is the transport error.
    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        exchange(self.connect(addr).await?, "POST", path, headers, body).await
    }

    /// The DER of the certificate the server presents on a fresh handshake.
    pub async fn server_certificate(&self, addr: SocketAddr) -> Result<Vec<u8>, String> {
        let tls = self.connect(addr).await?;
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| "the server presented no certificate".to_owned())
    }

    /// GETs `path` over mutual TLS.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Response, String> {
        exchange(self.connect(addr).await?, "GET", path, &[], &[]).await
    }

    /// A fresh TCP connection and TLS handshake to `addr` as 127.0.0.1.
    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }
}

/// A POST whose body is sent in two parts, so a test can hold a request open on the server.
pub struct PartialPost {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl std::fmt::Debug for PartialPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartialPost")
    }
}

impl TlsClient {
    /// Sends the headers (announcing `body.len()` bytes) and the first `sent` bytes of `body`.
    pub async fn start_post(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &[u8],
        sent: usize,
    ) -> Result<PartialPost, String> {
        let mut stream = self.connect(addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(body.get(..sent).unwrap_or(body))
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok(PartialPost { stream })
    }
}

impl TlsClient {
    /// Only the TLS handshake, given up after `within`; the connection is returned open.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        within: std::time::Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(self.config.clone());
            let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))
        };
        tokio::time::timeout(within, connect)
            .await
            .map_err(|_| format!("no handshake within {within:?}"))?
    }
}

impl PartialPost {
    /// Sends `more` of the body now, keeping the request open; an error once the server has
    /// closed the connection.
    pub async fn send(&mut self, more: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(more)
            .await
            .map_err(|e| e.to_string())?;
        self.stream.flush().await.map_err(|e| e.to_string())
    }

    /// Sends the rest of the body and reads the response.
    pub async fn finish(mut self, rest: &[u8]) -> Result<Response, String> {
        self.stream
            .write_all(rest)
            .await
            .map_err(|e| e.to_string())?;
        self.stream.flush().await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        self.stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        parse(&raw)
    }
}

/// API tokens the harness made for operations listeners it started, by address: every
/// [`get`] to such a listener carries its read token, as an operator's browser or Prometheus
/// would, so tests of the pages and metrics run with reads requiring a token (the default).
fn ops_tokens() -> &'static std::sync::Mutex<std::collections::HashMap<SocketAddr, String>> {
    static TOKENS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<SocketAddr, String>>,
    > = std::sync::OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// Makes [`get`] to `addr` send `token` as a Bearer token (`None`: nothing).
pub fn set_ops_token(addr: SocketAddr, token: Option<&str>) {
    let mut tokens = ops_tokens().lock().expect("token map");
    match token {
        Some(t) => tokens.insert(addr, t.to_owned()),
        None => tokens.remove(&addr),
    };
}

/// A plain-HTTP GET, for the operations listener; with the harness's read token when it
/// started the listener (see [`set_ops_token`]).
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let token = ops_tokens().lock().expect("token map").get(&addr).cloned();
    match token {
        Some(t) => {
            let auth = format!("Bearer {t}");
            request(addr, "GET", path, &[("Authorization", &auth)], b"").await
        }
        None => request(addr, "GET", path, &[], b"").await,
    }
}

/// Any plain-HTTP request, with exactly the headers given (no token is added).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    exchange(tcp, method, path, headers, body).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer early (413) and close before reading all of a large body.
    let write_result = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    let mut raw = Vec::new();
    let read_result = stream.read_to_end(&mut raw).await;
    if raw.is_empty() {
        let why = match (write_result, read_result) {
            (Err(e), _) | (_, Err(e)) => e.to_string(),
            _ => "connection closed without a response".into(),
        };
        return Err(why);
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response has no header end")?;
    let mut lines = head.lines();
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
