//! Delivery from the spool, as the real `phonehome-collector run` does it, against a scripted
//! mutual-TLS HTTP server inside the test: retries and `Retry-After`, oldest-first order, reports
//! refused for good, 403 for this serial and for an earlier one, TLS certificates neither side
//! accepts, an unreachable ingest, an unusable spool, reports spooled by another version,
//! overlapping runs, a delivery whose entry survived, the spool bounds and splay.
//!
//! The server verifies client certificates against the test CA in `fixtures/pki` (see its
//! README), exactly as the ingest does, so every request here went through real mutual TLS.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{CollectorConfig, SERIAL, fixture, text, unreachable};
use flate2::read::GzDecoder;
use phonehome_schema::Report;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;

/// A barrier a reply waits behind until the test opens it, so a run can be kept busy for
/// exactly as long as the test needs, however slow the machine.
#[derive(Debug, Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        changed.notify_all();
    }

    /// Waits until opened; gives up after `limit` so a failing test cannot hang the suite.
    fn wait(&self, limit: Duration) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = changed.wait_timeout_while(guard, limit, |open| !*open);
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Held back after the request was read until this gate opens (to keep a run busy).
    gate: Option<Gate>,
}

impl Reply {
    fn status(status: u16) -> Reply {
        let body = match status {
            200 => r#"{"status":"duplicate"}"#.to_owned(),
            202 => r#"{"status":"stored"}"#.to_owned(),
            _ => format!(r#"{{"error":"e{status}","message":"scripted {status}"}}"#),
        };
        Reply {
            status,
            headers: Vec::new(),
            body,
            gate: None,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn message(mut self, message: &str) -> Reply {
        self.body = serde_json::json!({ "error": "scripted", "message": message }).to_string();
        self
    }

    fn held(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }
}

/// A request the server read completely.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    /// The body, decompressed: exactly what the collector sent.
    json: Vec<u8>,
    /// The body as this version's contract, if it is one (a report spooled by another version
    /// of the collector may not be).
    report: Option<Report>,
    status: u16,
}

impl Received {
    fn report(&self) -> &Report {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("not a report: {}", text(&self.json)))
    }

    fn id(&self) -> String {
        self.report().report_id.to_string()
    }

    fn collected_at(&self) -> DateTime<Utc> {
        self.report().collected_at
    }
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Received>,
    /// TCP connections accepted (a TLS failure ends one before any request is read).
    connections: usize,
    /// Requests read, answered or not yet (their reply may be held).
    arrived: usize,
    problems: Vec<String>,
}

/// What the server does with a connection.
#[derive(Clone)]
enum Mode {
    /// Mutual TLS, then HTTP from the script.
    Tls(Arc<ServerConfig>),
    /// Closes every connection at once: the network failing under the collector.
    HangUp,
}

/// A mutual-TLS HTTP/1.1 server on 127.0.0.1 that answers `POST /v1/reports` from a script
/// (then 202 once the script is used up) and records every report it received.
struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(script: Vec<Reply>) -> TestServer {
        TestServer::with_mode(Mode::Tls(Arc::new(server_config("pki/ca.crt"))), script)
    }

    /// A server that trusts another CA than the one that issued the appliance's certificate,
    /// so it refuses that certificate in the handshake, with an alert.
    fn refusing_the_appliance() -> TestServer {
        // The server's own certificate as the only trust anchor: it signed nothing.
        TestServer::with_mode(
            Mode::Tls(Arc::new(server_config("pki/server.crt"))),
            Vec::new(),
        )
    }

    fn hanging_up() -> TestServer {
        TestServer::with_mode(Mode::HangUp, Vec::new())
    }

    fn with_mode(mode: Mode, script: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    lock(&state).connections += 1;
                    let config = match &mode {
                        Mode::Tls(config) => config,
                        Mode::HangUp => continue,
                    };
                    if let Err(e) = serve(config, stream, &state) {
                        lock(&state).problems.push(e);
                    }
                }
            })
        };
        TestServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    fn ids(&self) -> Vec<String> {
        self.received().iter().map(Received::id).collect()
    }

    fn arrived(&self) -> usize {
        lock(&self.state).arrived
    }

    fn connections(&self) -> usize {
        lock(&self.state).connections
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The test server's TLS configuration, verifying client certificates against `client_roots`.
fn server_config(client_roots: &str) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(fixture(client_roots)).unwrap_or_else(|e| panic!("{e}"))
    {
        roots
            .add(cert.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("pki/server.crt"))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
    let key =
        PrivateKeyDer::from_pem_file(fixture("pki/server.key")).unwrap_or_else(|e| panic!("{e}"));
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Serves one connection: one request, one scripted answer, close.
fn serve(config: &Arc<ServerConfig>, tcp: TcpStream, state: &Mutex<State>) -> Result<(), String> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = ServerConnection::new(Arc::clone(config)).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let result = exchange(&mut tls, state);
    if result.is_err() {
        // rustls has written its alert. Closing now, with the client's request unread, would
        // send a reset that can overtake the alert; let the client read it and close first.
        let _ = tls.sock.shutdown(Shutdown::Write);
        let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(2)));
        let mut sink = [0u8; 4096];
        while matches!(tls.sock.read(&mut sink), Ok(n) if n > 0) {}
    }
    result
}

fn exchange(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    state: &Mutex<State>,
) -> Result<(), String> {
    let (head, body) = read_request(tls)?;
    if tls.conn.peer_certificates().is_none_or(|c| c.is_empty()) {
        return Err("a request without a client certificate got through".into());
    }
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    if !request_line.starts_with("POST /v1/reports ") {
        return Err(format!("unexpected request: {request_line}"));
    }
    let mut json = Vec::new();
    GzDecoder::new(&body[..])
        .read_to_end(&mut json)
        .map_err(|e| format!("body is not gzip: {e}"))?;
    let value: Value =
        serde_json::from_slice(&json).map_err(|e| format!("body is not JSON: {e}"))?;
    if value.get("report_id").and_then(Value::as_str).is_none() {
        return Err("body has no report_id".into());
    }
    let report = serde_json::from_value::<Report>(value).ok();
    let reply = {
        let mut state = lock(state);
        state.arrived += 1;
        state
            .script
            .pop_front()
            .unwrap_or_else(|| Reply::status(202))
    };
    let at = Instant::now();
    if let Some(gate) = &reply.gate {
        gate.wait(Duration::from_secs(120));
    }
    let mut response = format!(
        "HTTP/1.1 {} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    lock(state).received.push(Received {
        at,
        json,
        report,
        status: reply.status,
    });
    tls.write_all(response.as_bytes())
        .map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    tls.flush().map_err(|e| e.to_string())
}

/// Reads the request head and its body (Content-Length or chunked).
fn read_request(stream: &mut impl Read) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request head ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end..].to_vec();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut fill = |rest: &mut Vec<u8>, want: usize| -> Result<(), String> {
        while rest.len() < want {
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed inside the body".into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| "bad Content-Length")?;
        fill(&mut rest, length)?;
        rest.truncate(length);
        return Ok((head, rest));
    }
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                let want = rest.len() + 1;
                fill(&mut rest, want)?;
            };
            let size_text = String::from_utf8_lossy(&rest[pos..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let start = line_end + 2;
            fill(&mut rest, start + size + 2)?;
            if size == 0 {
                return Ok((head, body));
            }
            body.extend_from_slice(&rest[start..start + size]);
            pos = start + size + 2;
        }
    }
    Ok((head, rest))
}

/// An appliance: a configuration (test PKI, serial, spool in a temp dir) and a recorded root.
struct Appliance {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: RefCell<CollectorConfig>,
}

impl Appliance {
    /// `spool` holds extra lines for the `[spool]` table.
    fn new(spool: &str) -> Appliance {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.path().join("collector.toml");
        let appliance = Appliance {
            dir,
            config_path,
            config: RefCell::new(CollectorConfig::new(spool)),
        };
        appliance.configure_with(|_| {});
        appliance
    }

    /// Rewrites the configuration with other `[spool]` lines; the spool stays where it is.
    fn configure(&self, spool: &str) {
        self.configure_with(|c| c.spool = spool.to_owned());
    }

    /// Changes the configuration and rewrites the file.
    fn configure_with(&self, change: impl FnOnce(&mut CollectorConfig)) {
        let mut config = self.config.borrow_mut();
        change(&mut config);
        config.write(&self.config_path);
    }

    fn serial(&self) -> String {
        self.config.borrow().serial.clone()
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn command(&self, server: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phonehome-collector"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--root")
            .arg(fixture("sysfs/procfs"))
            .args(extra)
            .env("PHONEHOME_COLLECTOR_SERVER", server)
            .env_remove("PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS");
        cmd
    }

    /// One `run` against `server`.
    fn run(&self, server: &str) -> Output {
        self.command(server, &[])
            .output()
            .unwrap_or_else(|e| panic!("cannot start the collector: {e}"))
    }

    /// Files in the spool directory ending in `suffix`, sorted.
    fn files(&self, suffix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.spool())
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Report ids of the waiting reports, oldest first.
    fn spooled_ids(&self) -> Vec<String> {
        self.files(".json")
            .iter()
            .map(|name| {
                let json: Value = serde_json::from_slice(
                    &std::fs::read(self.spool().join(name)).unwrap_or_else(|e| panic!("{e}")),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                let id = json["report_id"].as_str().unwrap_or_default().to_owned();
                assert!(!id.is_empty() && name.contains(&id), "{name}");
                id
            })
            .collect()
    }

    /// The spool file of a waiting report.
    fn entry(&self, id: &str) -> PathBuf {
        let name = self
            .files(".json")
            .into_iter()
            .find(|n| n.contains(id))
            .unwrap_or_else(|| panic!("{id} is not in the spool"));
        self.spool().join(name)
    }

    /// `run` against an address where nothing listens, which must spool and exit 75.
    fn run_unreachable(&self) -> String {
        let before = self.spooled_ids();
        let out = self.run(&unreachable());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        let after = self.spooled_ids();
        assert_eq!(after.len(), before.len() + 1, "{stderr}");
        assert_eq!(
            &after[..before.len()],
            &before[..],
            "older entries kept in order"
        );
        let id = after.last().cloned().unwrap_or_default();
        assert!(
            stderr.contains(&format!("report {id} for serial {} saved", self.serial())),
            "{stderr}"
        );
        id
    }
}

#[test]
fn an_unreachable_ingest_leaves_the_report_in_the_spool_and_exits_75() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let server = unreachable();
    let out = appliance.run(&server);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    let ids = appliance.spooled_ids();
    assert_eq!(ids.len(), 1, "{stderr}");
    assert!(stderr.starts_with("phonehome-collector: "), "{stderr}");
    assert!(
        stderr.contains(&format!("{server} unreachable (connection failed")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "report {} for serial {SERIAL} saved, 1 report in {}",
            ids[0],
            appliance.spool().display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // The spool is private to the collector.
    let mode = std::fs::metadata(appliance.spool())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or_default();
    assert_eq!(mode, 0o700);
}

#[test]
fn a_503_with_retry_after_is_honoured() {
    let appliance = Appliance::new("retry_budget_seconds = 30");
    let server = TestServer::start(vec![
        Reply::status(503)
            .header("Retry-After", "1")
            .message("database busy"),
    ]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let received = server.received();
    assert_eq!(received.len(), 2, "{stderr}");
    assert_eq!(received[0].id(), received[1].id());
    let gap = received[1].at.duration_since(received[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before the 1 s the ingest asked for"
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
    assert!(
        stderr.contains(&format!(
            "delivered report {} for serial {SERIAL} to {} (202 stored); spool empty",
            received[0].id(),
            server.url()
        )),
        "{stderr}"
    );
    assert!(appliance.files(".json").is_empty());
}

#[test]
fn spooled_reports_are_delivered_oldest_first_each_once() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let mut spooled: Vec<String> = (0..3).map(|_| appliance.run_unreachable()).collect();
    let server = TestServer::start(vec![
        Reply::status(202),
        // A duplicate answer means the ingest already has it: delivered as well.
        Reply::status(200),
    ]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let ids = server.ids();
    assert_eq!(ids.len(), 4, "{stderr}");
    spooled.push(ids[3].clone());
    assert_eq!(ids, spooled, "oldest first, each once");
    let times: Vec<_> = server
        .received()
        .iter()
        .map(Received::collected_at)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        stderr.contains(&format!(
            "delivered 4 reports (3 from the spool) to {}, the last report {}",
            server.url(),
            ids[3]
        )),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("; spool empty"), "{stderr}");
    assert!(appliance.files(".json").is_empty());
    // Nothing is sent twice.
    let out = appliance.run(&server.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.ids().len(), 5);
    assert_eq!(server.ids()[..4], spooled[..]);
}

#[test]
fn a_report_refused_for_good_is_set_aside_and_the_next_one_is_sent() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let first = appliance.run_unreachable();
    let second = appliance.run_unreachable();
    let server = TestServer::start(vec![
        Reply::status(422).message("filesystems[0].bytes_total: invalid type"),
    ]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    let ids = server.ids();
    assert_eq!(ids.len(), 3, "{stderr}");
    assert_eq!(ids[..2], [first.clone(), second.clone()]);
    let rejected = appliance.files(".rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains(&first), "{rejected:?}");
    assert!(
        stderr.contains(&format!(
            "report {first} for serial {SERIAL} rejected by {}: 422 Unprocessable Entity: \
             filesystems[0].bytes_total: invalid type, moved to {}",
            server.url(),
            appliance.spool().join(&rejected[0]).display()
        )),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("; spool empty"), "{stderr}");
    assert!(appliance.files(".json").is_empty());
    // A rejected report is never sent again.
    let out = appliance.run(&server.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.ids().len(), 4);
    assert!(!server.ids()[3..].contains(&first));
}

#[test]
fn a_403_stops_delivery_keeps_the_spool_and_exits_78() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let first = appliance.run_unreachable();
    // With time to retry: a 403 is still not retried, nor is the next report tried.
    appliance.configure("retry_budget_seconds = 30");
    let server = TestServer::start(vec![
        Reply::status(403).message("certificate is for serial OTHER, report says SPOOL-TEST-1"),
    ]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(
        server.ids(),
        [first.as_str()],
        "nothing after the 403: {stderr}"
    );
    let spooled = appliance.spooled_ids();
    assert_eq!(spooled.len(), 2, "{stderr}");
    assert_eq!(spooled[0], first);
    assert!(
        stderr.contains("403 Forbidden: certificate is for serial OTHER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is client_cert issued for this serial?"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "saved, 2 reports in {}",
            appliance.spool().display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn retries_stop_when_the_budget_is_spent() {
    let appliance = Appliance::new("retry_budget_seconds = 3\nmax_retry_wait_seconds = 1");
    let server = TestServer::start((0..50).map(|_| Reply::status(503)).collect());
    let started = Instant::now();
    let out = appliance.run(&server.url());
    let elapsed = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    let ids = server.ids();
    assert!(ids.len() >= 2, "retried: {ids:?}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the same report each time"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert!(
        stderr.contains(&format!(
            "answered 503 Service Unavailable: scripted 503 after {} attempts (retry budget \
             spent)",
            ids.len()
        )),
        "{stderr}"
    );
    assert_eq!(appliance.spooled_ids(), [ids[0].clone()]);
}

#[test]
fn a_retry_after_longer_than_the_maximum_wait_is_not_cut_short() {
    let appliance = Appliance::new("retry_budget_seconds = 300\nmax_retry_wait_seconds = 5");
    let server = TestServer::start(vec![Reply::status(429).header("Retry-After", "120")]);
    let started = Instant::now();
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert_eq!(server.ids().len(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr.contains("429 Too Many Requests: scripted 429 and asked to wait 120 s"),
        "{stderr}"
    );
    assert_eq!(appliance.spooled_ids().len(), 1);
}

#[test]
fn dropped_reports_are_counted_by_the_next_report_and_add_up() {
    let appliance = Appliance::new("retry_budget_seconds = 0\nmax_reports = 2");
    let ids: Vec<String> = (0..4)
        .map(|_| appliance.run_unreachable_bounded())
        .collect();
    // Two entries fit; each later run dropped the oldest.
    assert_eq!(appliance.spooled_ids(), ids[2..]);
    let server = TestServer::start(Vec::new());
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("spool full: dropped the oldest 1 report undelivered"),
        "{stderr}"
    );
    let received = server.received();
    let delivered: Vec<String> = received.iter().map(Received::id).collect();
    assert_eq!(delivered[..1], ids[3..]);
    assert_eq!(delivered.len(), 2);
    let carried: Vec<u64> = received
        .iter()
        .map(|r| r.report().collector.dropped_reports)
        .collect();
    // Dropped: the first three reports. The fourth carried one drop, the fifth two (the third
    // report and the one drop it had carried itself).
    assert_eq!(carried, [1, 2]);
    assert!(received.iter().all(|r| r.status == 202));
}

impl Appliance {
    /// Like [`run_unreachable`](Self::run_unreachable), for a spool whose bounds drop reports.
    fn run_unreachable_bounded(&self) -> String {
        let out = self.run(&unreachable());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{stderr}");
        self.spooled_ids().last().cloned().unwrap_or_default()
    }
}

#[test]
fn a_403_for_a_report_of_an_earlier_serial_sets_it_aside_and_delivery_goes_on() {
    // Reports spooled before the appliance was re-imaged with a new serial and certificate.
    const OLD: &str = "OLD-SERIAL-9";
    let appliance = Appliance::new("retry_budget_seconds = 0");
    appliance.configure_with(|c| c.serial = OLD.to_owned());
    let old = appliance.run_unreachable();
    appliance.configure_with(|c| {
        c.serial = SERIAL.to_owned();
        // With time to retry: the 403 is still not retried.
        c.spool = "retry_budget_seconds = 30".to_owned();
    });
    let message = format!("certificate is for serial {SERIAL}, report says {OLD}");
    let server = TestServer::start(vec![Reply::status(403).message(&message)]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    let ids = server.ids();
    assert_eq!(ids.len(), 2, "the old report once, then today's: {stderr}");
    assert_eq!(ids[0], old);
    assert_eq!(
        server.received()[1].report().identity.serial.as_str(),
        SERIAL
    );
    let rejected = appliance.files(".rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains(&old), "{rejected:?}");
    assert!(
        stderr.contains(&format!(
            "report {old} for serial {OLD} rejected by {}: 403 Forbidden: {message}, moved to {}",
            server.url(),
            appliance.spool().join(&rejected[0]).display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("delivered report {} for serial {SERIAL}", ids[1])),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("; spool empty"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn an_ingest_certificate_that_ca_cert_does_not_trust_stops_with_78_and_keeps_the_spool() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let first = appliance.run_unreachable();
    appliance.configure_with(|c| {
        // A certificate that signed nothing as the only trust anchor: the ingest's certificate
        // has an unknown issuer. Time to retry, which must not be used.
        c.ca_cert = fixture(&format!("pki/appliance-{SERIAL}.crt"));
        c.spool = "retry_budget_seconds = 30".to_owned();
    });
    let server = TestServer::start(Vec::new());
    let started = Instant::now();
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "retried: {stderr}"
    );
    assert_eq!(server.connections(), 1, "one handshake, no retry: {stderr}");
    assert!(server.received().is_empty(), "{stderr}");
    let spooled = appliance.spooled_ids();
    assert_eq!(spooled.len(), 2, "{stderr}");
    assert_eq!(spooled[0], first);
    assert!(
        stderr.contains(&format!(
            "{} unreachable (TLS certificate not accepted: ",
            server.url()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(
        stderr.contains("is ca_cert the fleet CA that signed the ingest's certificate?"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "nothing sent; report {} for serial {SERIAL} saved, 2 reports in {}",
            spooled[1],
            appliance.spool().display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn an_ingest_that_refuses_the_appliance_certificate_stops_with_78() {
    let appliance = Appliance::new("retry_budget_seconds = 30");
    let server = TestServer::refusing_the_appliance();
    let started = Instant::now();
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "retried: {stderr}"
    );
    assert_eq!(server.connections(), 1, "no retry: {stderr}");
    assert!(server.received().is_empty(), "{stderr}");
    assert!(
        stderr.contains("TLS certificate not accepted: ") && stderr.contains("UnknownCA"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the ingest refused this appliance's certificate: is client_cert issued"),
        "{stderr}"
    );
    assert_eq!(appliance.spooled_ids().len(), 1, "{stderr}");
}

#[test]
fn a_connection_the_network_breaks_is_temporary() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let server = TestServer::hanging_up();
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(server.connections() >= 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{} unreachable (connection failed", server.url())),
        "{stderr}"
    );
    assert_eq!(appliance.spooled_ids().len(), 1, "{stderr}");
}

#[test]
fn an_unusable_spool_still_sends_the_report_and_exits_74() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    // A directory that exists but where no file can be made, as on a filesystem remounted
    // read-only after disk errors.
    appliance.configure_with(|c| c.spool_dir = "/proc".to_owned());
    let server = TestServer::start(Vec::new());
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    let ids = server.ids();
    assert_eq!(ids.len(), 1, "{stderr}");
    let report = server.received()[0].report().clone();
    assert_eq!(report.identity.serial.as_str(), SERIAL);
    assert_eq!(report.collector.dropped_reports, 0);
    assert!(
        stderr.starts_with(&format!(
            "phonehome-collector: spool unusable (the disk may be failing), report {} for \
             serial {SERIAL} sent without saving it: cannot open /proc/spool.lock: ",
            ids[0]
        )),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(&format!(
            "; delivered report {} for serial {SERIAL} to {} (202 stored)",
            ids[0],
            server.url()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // With the ingest down as well, the report is lost, and the summary says so.
    let out = appliance.run(&unreachable());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("unreachable (connection failed"),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with(" lost"), "{stderr}");
}

#[test]
fn a_spool_directory_that_cannot_be_created_is_a_configuration_error_but_the_report_is_sent() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let file = appliance.dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap_or_else(|e| panic!("{e}"));
    let dir = file.join("spool");
    appliance.configure_with(|c| c.spool_dir = dir.to_string_lossy().into_owned());
    let server = TestServer::start(Vec::new());
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(server.ids().len(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "spool unusable (check [spool] dir), report {} for serial {SERIAL} sent without \
             saving it: cannot create the spool directory {}",
            server.ids()[0],
            dir.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("(202 stored)"), "{stderr}");
}

#[test]
fn a_report_spooled_by_another_version_is_sent_as_written_and_corrupt_entries_are_counted() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let other_version = appliance.run_unreachable();
    let not_json = appliance.run_unreachable();
    let no_id = appliance.run_unreachable();

    // As an older collector might have written it (a section today's contract requires is
    // missing) or a newer one (a field and an enum value this version does not know).
    let path = appliance.entry(&other_version);
    let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let object = json
        .as_object_mut()
        .unwrap_or_else(|| panic!("not an object"));
    object.remove("system");
    object.insert("future_section".into(), serde_json::json!({ "x": 1 }));
    json["identity"]["serial_source"] = "quantum_tpm".into();
    let written = serde_json::to_vec(&json).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        serde_json::from_slice::<Report>(&written).is_err(),
        "still a Report"
    );
    std::fs::write(&path, &written).unwrap_or_else(|e| panic!("{e}"));
    // Really corrupt: cut short, and a JSON document that is no report.
    std::fs::write(appliance.entry(&not_json), b"{\"report_id\": \"")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(appliance.entry(&no_id), b"{\"hello\": 1}").unwrap_or_else(|e| panic!("{e}"));

    let server = TestServer::start(Vec::new());
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let received = server.received();
    assert_eq!(received.len(), 2, "{stderr}");
    assert_eq!(received[0].json, written, "posted byte for byte");
    assert!(received[0].report.is_none());
    let corrupt = appliance.files(".corrupt");
    assert_eq!(corrupt.len(), 2, "{corrupt:?}");
    assert!(corrupt[0].contains(&not_json) && corrupt[1].contains(&no_id));
    assert_eq!(
        stderr.matches("unreadable spool entry moved aside").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("; spool empty"), "{stderr}");

    // The two reports that will never arrive are counted by the next one.
    let out = appliance.run(&server.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let received = server.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].report().collector.dropped_reports, 2);
}

#[test]
fn a_report_stored_but_still_spooled_is_resent_once_and_then_removed() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let first = appliance.run_unreachable();
    let entry = appliance.entry(&first);
    let copy = std::fs::read(&entry).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::start(Vec::new());
    let out = appliance.run(&server.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.ids().len(), 2);
    assert!(appliance.files(".json").is_empty());

    // The ingest stored it (202) but the collector was killed before it removed the entry.
    std::fs::write(&entry, &copy).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::start(vec![Reply::status(200)]);
    let out = appliance.run(&server.url());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let ids = server.ids();
    assert_eq!(ids.len(), 2, "{stderr}");
    assert_eq!(ids[0], first, "the same report id again");
    assert_eq!(server.received()[0].json, copy, "the same bytes again");
    assert!(
        stderr.contains(&format!(
            "delivered 2 reports (1 from the spool) to {}, the last report {}",
            server.url(),
            ids[1]
        )),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("; spool empty"), "{stderr}");
    assert!(appliance.files(".json").is_empty(), "removed after the 200");
    // And never again.
    let out = appliance.run(&server.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.ids().len(), 3);
    assert!(!server.ids()[2..].contains(&first));
}

#[test]
fn overlapping_runs_never_send_the_same_report_twice() {
    let appliance = Appliance::new("retry_budget_seconds = 30");
    // The first run keeps waiting for its answer however long the second takes.
    appliance.configure_with(|c| c.timeout_seconds = 300);
    // The first run's report is answered only once the second run has finished, so the second
    // run certainly starts while the first delivers.
    let gate = Gate::default();
    let server = TestServer::start(vec![Reply::status(202).held(&gate)]);
    let first = appliance
        .command(&server.url(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.arrived() == 0 {
        assert!(Instant::now() < deadline, "the first run never sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = appliance.run(&server.url());
    gate.open();
    let second_err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{second_err}");
    assert!(
        second_err.contains("another run is delivering the spool"),
        "{second_err}"
    );
    let first = first.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let first_err = text(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{first_err}");
    // The first run found the second's report and delivered it too.
    let ids = server.ids();
    assert_eq!(ids.len(), 2, "{first_err}");
    assert_ne!(ids[0], ids[1]);
    assert!(second_err.contains(&ids[1]), "{second_err}");
    assert!(
        first_err.contains("delivered 2 reports (1 from the spool)"),
        "{first_err}"
    );
    assert!(appliance.files(".json").is_empty());
}

#[test]
fn splay_sleeps_a_random_time_below_the_bound_and_says_how_long() {
    let appliance = Appliance::new("retry_budget_seconds = 0");
    let server = unreachable();
    // The collector names the wait it chose; the test checks that it is in the window, that it
    // was really slept (the run took at least that long), and that the waits differ. Nothing
    // depends on how fast this machine runs the rest of the collector.
    let waits: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let out = appliance
                .command(&server, &["--splay", "1"])
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let elapsed = started.elapsed();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(75), "{stderr}");
            let seconds: f64 = stderr
                .strip_prefix("phonehome-collector: waited ")
                .and_then(|rest| rest.split_once(" s first (--splay 1); "))
                .and_then(|(seconds, _)| seconds.parse().ok())
                .unwrap_or_else(|| panic!("no splay in the summary: {stderr}"));
            assert!((0.0..1.0).contains(&seconds), "{stderr}");
            let wait = Duration::from_secs_f64(seconds);
            assert!(elapsed >= wait, "waited {wait:?} in {elapsed:?}");
            wait
        })
        .collect();
    let (min, max) = (
        waits.iter().min().copied().unwrap_or_default(),
        waits.iter().max().copied().unwrap_or_default(),
    );
    // Five uniform draws from [0, 1 s) all within 20 ms of each other: p < 1e-5.
    assert!(
        max - min > Duration::from_millis(20),
        "no spread: {waits:?}"
    );

    let out = appliance
        .command(&server, &[])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!text(&out.stderr).contains("waited"), "no splay, no wait");
    let out = appliance
        .command(&server, &["--splay", "86401"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2), "over a day is a usage error");
}
