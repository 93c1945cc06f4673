//! Delivering reports to the ingest: `POST {server}/v1/reports`, gzip-compressed JSON, over
//! mutual TLS with the fleet CA as the only trust root; what each answer means; retries with
//! backoff; and [`spool_and_deliver`], which spools this run's report and delivers everything
//! waiting in the spool, oldest first, or [`deliver_unspooled`] when the spool cannot be used.
//!
//! Every failure is sorted into "try again later" (network, timeouts, 5xx: exit 75, the spool
//! keeps the reports) and "a human must act" (a certificate that is not trusted either way, a
//! 403 for this appliance's own serial, a wrong `server`: exit 78, nothing more is sent, the spool
//! keeps the reports). Retrying the second kind daily would only hide it.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use phonehome_schema::Report;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use uuid::Uuid;

use crate::config::{ConfigError, DeliverySettings};
use crate::exit;
use crate::machine::read_bounded;
use crate::spool::{
    DropReason, Dropped, SenderLock, SetAside, Spool, SpoolError, SpoolSettings, Tidy,
};

/// The ingest answers with a short JSON document; anything longer is cut, never buffered whole.
pub const RESPONSE_LIMIT: u64 = 64 * 1024;
/// PEM files of a CA or an appliance are a few KiB.
const PEM_LIMIT: u64 = 1024 * 1024;
/// First backoff step; doubled per failed attempt up to the maximum wait, then fully jittered.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

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
        match gzip_json(report) {
            Ok(body) => self.post(&body),
            Err(e) => Outcome::Unreachable {
                problem: Problem::Local,
                detail: e.to_string(),
            },
        }
    }

    /// `POST {server}/v1/renew` with a request for a new key, over the mutual TLS of this
    /// client's (current, possibly expired within the ingest's grace) pair.
    pub fn renew_certificate(
        &self,
        csr_pem: &str,
    ) -> Result<phonehome_schema::enrol::IssuedCertificate, String> {
        let body = serde_json::to_vec(&phonehome_schema::enrol::RenewRequest {
            csr_pem: csr_pem.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        let url = format!("{}/v1/renew", self.server);
        let mut response = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(&body[..])
            .map_err(|e| describe(&e, self.timeout))?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(RESPONSE_LIMIT)
            .read_to_end(&mut answer)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if status != 200 {
            return Err(status_text(status, server_message(&answer).as_deref()));
        }
        serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer: {e}"))
    }

    /// Posts an already gzip-compressed JSON report once and says what happened.
    pub fn post(&self, gzipped_json: &[u8]) -> Outcome {
        let response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header("Accept", "application/json")
            // By this appliance's clock: the ingest compares it with its own to tell a clock
            // that is off, which a report's collected_at cannot when it waited in the spool.
            .header(
                "Date",
                Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            )
            .send(gzipped_json);
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
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
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
                retry_after,
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
        /// The answer's `Retry-After`, as a wait from now.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer at all.
    Unreachable { problem: Problem, detail: String },
}

/// Why no HTTP answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Timeout,
    /// The TLS session failed for a reason that may pass (a garbled record, a handshake the
    /// peer broke off without saying why).
    Tls,
    /// The TLS handshake failed over a certificate: the ingest's is not trusted by `ca_cert`
    /// (unknown issuer, expired, not for this name, ...) or the ingest refused this appliance's
    /// (it sent a certificate alert). Only a human can fix either, so retrying is pointless.
    Untrusted,
    Network,
    /// The request could not even be made from this configuration.
    Config,
    /// The report could not be encoded.
    Local,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The ingest has the report: remove it from the spool.
    Delivered,
    /// Temporary: try the same report again, not before the given wait if the ingest named one.
    Retry(Option<Duration>),
    /// The ingest will never take this report: set it aside and go on with the next.
    Reject,
    /// Retrying cannot help and neither can the next report (wrong certificate, wrong server):
    /// stop, keep everything, exit with this code.
    Stop(u8),
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Delivered { .. } => Verdict::Delivered,
            Outcome::Refused {
                status,
                retry_after,
                ..
            } => match status {
                408 | 429 | 500..=599 => Verdict::Retry(*retry_after),
                400 | 413 | 415 | 422 => Verdict::Reject,
                // 403: the certificate is not this serial's; 3xx/404: `server` is wrong.
                _ => Verdict::Stop(exit::CONFIG),
            },
            Outcome::Unreachable { problem, .. } => match problem {
                Problem::Timeout | Problem::Tls | Problem::Network => Verdict::Retry(None),
                Problem::Untrusted | Problem::Config => Verdict::Stop(exit::CONFIG),
                Problem::Local => Verdict::Stop(exit::SOFTWARE),
            },
        }
    }

    /// What went wrong, for the summary line: `https://… unreachable (…)` or
    /// `https://… answered 503 Service Unavailable: …`.
    fn describe(&self, server: &str) -> String {
        match self {
            Outcome::Delivered { status } => format!("{server} answered {status}"),
            Outcome::Refused {
                status, message, ..
            } => {
                let hint = match status {
                    403 => " (is client_cert issued for this serial?)",
                    300..=399 | 404 => " (is `server` the ingest's report listener?)",
                    _ => "",
                };
                format!(
                    "{server} answered {}{hint}",
                    status_text(*status, message.as_deref())
                )
            }
            Outcome::Unreachable { problem, detail } => {
                format!("{server} unreachable ({problem}: {detail})")
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Timeout => "timed out",
            Problem::Tls => "TLS failure",
            Problem::Untrusted => "TLS certificate not accepted",
            Problem::Network => "connection failed",
            Problem::Config => "cannot make the request",
            Problem::Local => "cannot encode the report",
        })
    }
}

/// `422 Unprocessable Entity: message`.
fn status_text(status: u16, message: Option<&str>) -> String {
    let reason = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut text = format!("{status} {reason}").trim_end().to_owned();
    if let Some(message) = message {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

/// A `Retry-After` value (delay in seconds, or an HTTP-date) as a wait from `now`; a date in the
/// past means no wait. Unparsable values are ignored, and the backoff decides.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long numbers mean "a very long time", which the maximum wait then refuses.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        at.with_timezone(&Utc)
            .signed_duration_since(now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A uniformly distributed number in [0, 1), from the kernel's random source by way of a v4
/// UUID (the collector has no other use for a random number generator).
pub fn random_unit() -> f64 {
    // The low 56 bits of a v4 UUID are all random (version and variant bits sit higher).
    let bits = (Uuid::new_v4().as_u128() as u64) & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with full jitter: a uniformly random wait up to `base × 2^(n-1)`,
/// capped at `max`, after the `n`th failed attempt. Spreads a fleet's retries out instead of
/// having every appliance come back at the same instant.
pub fn backoff(failed_attempts: u32, max: Duration, unit: f64) -> Duration {
    let exponent = failed_attempts.saturating_sub(1).min(30);
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << exponent).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// How long one run may keep retrying.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    max_wait: Duration,
}

impl Budget {
    /// A budget of `total` waiting time, starting now, with no single wait over `max_wait`.
    pub fn start(total: Duration, max_wait: Duration) -> Budget {
        Budget {
            deadline: Instant::now() + total,
            max_wait,
        }
    }
}

/// The result of sending one report, retries included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered {
        status: u16,
        attempts: u32,
    },
    /// Refused for good (400, 413, 415, 422).
    Rejected {
        status: u16,
        message: Option<String>,
    },
    /// Only temporary failures, until the budget was spent; `last` is the last of them.
    GaveUp {
        last: Outcome,
        attempts: u32,
        why: GaveUp,
    },
    /// An answer that needs a human; see [`Verdict::Stop`].
    Stopped {
        last: Outcome,
        code: u8,
    },
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The next wait would end after the run's retry budget.
    BudgetSpent,
    /// The ingest asked for a longer wait than `max_retry_wait_seconds`.
    WaitTooLong(Duration),
}

/// Posts one report (JSON bytes) until it is delivered, refused for good, or the budget is
/// spent. Waits between attempts follow [`backoff`], never shorter than a `Retry-After`.
pub fn send_with_retries(client: &Client, json: &[u8], budget: &Budget) -> Sent {
    let body = match gzip_bytes(json) {
        Ok(body) => body,
        Err(e) => {
            return Sent::Stopped {
                last: Outcome::Unreachable {
                    problem: Problem::Local,
                    detail: e.to_string(),
                },
                code: exit::SOFTWARE,
            };
        }
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = client.post(&body);
        let wait = match outcome.verdict() {
            Verdict::Delivered => {
                let status = match outcome {
                    Outcome::Delivered { status } => status,
                    _ => 200,
                };
                return Sent::Delivered { status, attempts };
            }
            Verdict::Reject => {
                let (status, message) = match outcome {
                    Outcome::Refused {
                        status, message, ..
                    } => (status, message),
                    _ => (0, None),
                };
                return Sent::Rejected { status, message };
            }
            Verdict::Stop(code) => {
                return Sent::Stopped {
                    last: outcome,
                    code,
                };
            }
            Verdict::Retry(asked) => {
                let jittered = backoff(attempts, budget.max_wait, random_unit());
                match asked {
                    // Never sooner than the ingest asked.
                    Some(asked) if asked > budget.max_wait => {
                        return Sent::GaveUp {
                            last: outcome,
                            attempts,
                            why: GaveUp::WaitTooLong(asked),
                        };
                    }
                    Some(asked) => asked.max(jittered),
                    None => jittered,
                }
            }
        };
        if Instant::now() + wait > budget.deadline {
            return Sent::GaveUp {
                last: outcome,
                attempts,
                why: GaveUp::BudgetSpent,
            };
        }
        std::thread::sleep(wait);
    }
}

/// Why delivering the spool stopped with reports left in it.
#[derive(Debug)]
pub enum Stop {
    /// Temporary failures outlasted the retry budget.
    Temporary {
        report_id: Uuid,
        last: Outcome,
        attempts: u32,
        why: GaveUp,
    },
    /// An answer that needs a human (403, a wrong server); nothing more was sent.
    Refused {
        report_id: Uuid,
        serial: String,
        last: Outcome,
        code: u8,
    },
    /// The spool itself failed.
    Spool(SpoolError),
}

/// A report the ingest refused for good, now set aside: refused as malformed (400, 413, 415,
/// 422), or refused with 403 while it names another serial than this run's.
#[derive(Debug)]
pub struct Rejection {
    pub report_id: Uuid,
    pub serial: String,
    pub status: u16,
    pub message: Option<String>,
    pub moved_to: PathBuf,
}

/// What delivering the spool did.
#[derive(Debug, Default)]
pub struct Drain {
    /// Reports the ingest acknowledged, in the order sent, with the status.
    pub delivered: Vec<(Uuid, u16)>,
    pub rejected: Vec<Rejection>,
    /// Unreadable entries set aside, with the problem.
    pub corrupt: Vec<(PathBuf, String)>,
    pub stop: Option<Stop>,
}

/// Sends every spooled report, oldest first, each until it is acknowledged (then removed),
/// refused for good (then set aside), or the run must stop. A temporary failure of the oldest
/// report stops the run rather than skipping ahead, so reports arrive in the order they were
/// made.
///
/// A 403 stops the run only for a report of `serial`, this run's serial: then the certificate
/// is not this appliance's and every later report would meet the same answer. A spooled report
/// of another serial (written before the appliance was re-imaged with a new serial and
/// certificate) can never be accepted with this certificate, so it is set aside as rejected
/// and the queue goes on; otherwise it would block every later report forever.
///
/// Holding `sender` makes this the only run that sends or removes entries. It is released while
/// `spool.lock` is held and the spool is seen empty, so a report stored by an overlapping run is
/// either delivered here or finds the sender lock free.
pub fn drain(
    client: &Client,
    spool: &Spool,
    sender: SenderLock,
    budget: &Budget,
    serial: &str,
) -> Drain {
    let mut drain = Drain::default();
    let mut sender = Some(sender);
    loop {
        let locked = match spool.lock() {
            Ok(locked) => locked,
            Err(e) => {
                drain.stop = Some(Stop::Spool(e));
                break;
            }
        };
        let head = match locked.entries() {
            Ok(entries) => entries.into_iter().next(),
            Err(e) => {
                drain.stop = Some(Stop::Spool(e));
                break;
            }
        };
        let Some(entry) = head else {
            drop(sender.take());
            drop(locked);
            break;
        };
        // Sending takes seconds; overlapping runs may store their reports meanwhile.
        drop(locked);

        let loaded = match entry.load() {
            Ok(loaded) => loaded,
            // Dropped by an overlapping run's bounds meanwhile: not corrupt, just gone.
            Err(_) if !entry.path.exists() => continue,
            Err(problem) => {
                match spool
                    .lock()
                    .and_then(|l| l.set_aside(&entry, SetAside::Corrupt))
                {
                    Ok(to) => drain.corrupt.push((to, problem)),
                    Err(e) => {
                        drain.stop = Some(Stop::Spool(e));
                        break;
                    }
                }
                continue;
            }
        };
        match send_with_retries(client, &loaded.json, budget) {
            Sent::Delivered { status, .. } => {
                if let Err(e) = spool.lock().and_then(|l| l.remove(&entry)) {
                    // Left in place it would be sent again next time: stored once all the
                    // same, but stop rather than loop on it.
                    drain.delivered.push((entry.report_id, status));
                    drain.stop = Some(Stop::Spool(e));
                    break;
                }
                drain.delivered.push((entry.report_id, status));
            }
            Sent::Rejected { status, message } => {
                if let Err(e) =
                    set_aside_rejected(spool, &mut drain, &entry, &loaded, status, message)
                {
                    drain.stop = Some(Stop::Spool(e));
                    break;
                }
            }
            Sent::GaveUp {
                last,
                attempts,
                why,
            } => {
                drain.stop = Some(Stop::Temporary {
                    report_id: entry.report_id,
                    last,
                    attempts,
                    why,
                });
                break;
            }
            Sent::Stopped {
                last:
                    Outcome::Refused {
                        status: 403,
                        message,
                        ..
                    },
                ..
            } if loaded.serial.as_deref() != Some(serial) => {
                if let Err(e) = set_aside_rejected(spool, &mut drain, &entry, &loaded, 403, message)
                {
                    drain.stop = Some(Stop::Spool(e));
                    break;
                }
            }
            Sent::Stopped { last, code } => {
                drain.stop = Some(Stop::Refused {
                    report_id: entry.report_id,
                    serial: serial_of(&loaded),
                    last,
                    code,
                });
                break;
            }
        }
    }
    drain
}

/// The serial a spooled report names, for messages.
fn serial_of(loaded: &crate::spool::Loaded) -> String {
    loaded.serial.clone().unwrap_or_else(|| "(none)".to_owned())
}

/// Moves a refused entry aside as `.rejected` and records why.
fn set_aside_rejected(
    spool: &Spool,
    drain: &mut Drain,
    entry: &crate::spool::Entry,
    loaded: &crate::spool::Loaded,
    status: u16,
    message: Option<String>,
) -> Result<(), SpoolError> {
    let moved_to = spool
        .lock()
        .and_then(|l| l.set_aside(entry, SetAside::Rejected))?;
    drain.rejected.push(Rejection {
        report_id: entry.report_id,
        serial: serial_of(loaded),
        status,
        message,
        moved_to,
    });
    Ok(())
}

/// What became of this run's own report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delivered {
        status: u16,
    },
    Rejected,
    /// Waiting in the spool for a later run.
    Saved,
    /// Neither saved nor delivered.
    Lost,
}

/// The spool could not be opened at all, so this run's report went out without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolUnusable {
    /// What failed, naming the file.
    pub error: String,
    /// See [`SpoolError::is_configuration`]: exit 78 rather than 74.
    pub configuration: bool,
}

/// Everything one `run` did, for the exit code and the summary line.
#[derive(Debug)]
pub struct RunOutcome {
    pub server: String,
    pub spool_dir: PathBuf,
    pub report_id: Uuid,
    pub serial: String,
    pub fate: Fate,
    /// The spool could not be opened; nothing in it was looked at.
    pub spool_unusable: Option<SpoolUnusable>,
    /// The report could not be spooled (and was sent directly instead).
    pub store_error: Option<String>,
    /// Older reports the spool bounds deleted undelivered.
    pub dropped: Vec<Dropped>,
    pub tidy: Tidy,
    pub drain: Drain,
    /// Another run holds the sender lock and delivers the spool.
    pub other_sender: bool,
    /// Reports left in the spool; `None` if it could not be counted.
    pub remaining: Option<usize>,
}

impl RunOutcome {
    fn start(client: &Client, spool_dir: &Path, report: &Report) -> RunOutcome {
        RunOutcome {
            server: client.server().to_owned(),
            spool_dir: spool_dir.to_owned(),
            report_id: report.report_id,
            serial: report.identity.serial.as_str().to_owned(),
            fate: Fate::Saved,
            spool_unusable: None,
            store_error: None,
            dropped: Vec::new(),
            tidy: Tidy::default(),
            drain: Drain::default(),
            other_sender: false,
            remaining: None,
        }
    }

    /// Sends this run's report without the spool, recording what happened.
    fn send_unspooled(&mut self, client: &Client, json: &[u8], budget: &Budget) {
        match send_with_retries(client, json, budget) {
            Sent::Delivered { status, .. } => self.fate = Fate::Delivered { status },
            Sent::Rejected { status, message } => {
                self.fate = Fate::Rejected;
                self.drain.rejected.push(Rejection {
                    report_id: self.report_id,
                    serial: self.serial.clone(),
                    status,
                    message,
                    moved_to: PathBuf::new(),
                });
            }
            Sent::GaveUp {
                last,
                attempts,
                why,
            } => {
                self.drain.stop = Some(Stop::Temporary {
                    report_id: self.report_id,
                    last,
                    attempts,
                    why,
                })
            }
            Sent::Stopped { last, code } => {
                self.drain.stop = Some(Stop::Refused {
                    report_id: self.report_id,
                    serial: self.serial.clone(),
                    last,
                    code,
                })
            }
        }
    }
}

/// Spools `report`, then delivers every spooled report oldest first (see [`drain`]).
///
/// If the report cannot be spooled (disk full, say), it is still sent, directly and after the
/// older ones, so a broken spool loses nothing that the network could deliver.
pub fn spool_and_deliver(client: &Client, spool: &Spool, mut report: Report) -> RunOutcome {
    let settings = spool.settings();
    let mut run = RunOutcome::start(client, spool.dir(), &report);
    let stored = spool.lock().and_then(|locked| {
        run.tidy = locked.tidy();
        locked.store(&mut report, Utc::now())
    });
    let unspooled = match stored {
        Ok(stored) => {
            run.dropped = stored.dropped;
            None
        }
        Err(e) => {
            run.store_error = Some(e.to_string());
            // The drop count stays in the spool's counter for the next report that is stored.
            report.collector.dropped_reports = 0;
            Some(serde_json::to_vec(&report))
        }
    };

    let budget = Budget::start(settings.retry_budget, settings.max_retry_wait);
    match spool.try_lock_sender() {
        Ok(Some(sender)) => run.drain = drain(client, spool, sender, &budget, &run.serial),
        Ok(None) => run.other_sender = true,
        Err(e) => run.drain.stop = Some(Stop::Spool(e)),
    }

    if let Some(delivered) = run
        .drain
        .delivered
        .iter()
        .find(|(id, _)| *id == run.report_id)
    {
        run.fate = Fate::Delivered {
            status: delivered.1,
        };
    } else if run
        .drain
        .rejected
        .iter()
        .any(|r| r.report_id == run.report_id)
    {
        run.fate = Fate::Rejected;
    } else if let Some(json) = unspooled {
        run.fate = Fate::Lost;
        let blocked = matches!(
            run.drain.stop,
            Some(Stop::Temporary { .. } | Stop::Refused { .. })
        );
        if let (Ok(json), false) = (json, blocked) {
            run.send_unspooled(client, &json, &budget);
        }
    } else if run
        .drain
        .corrupt
        .iter()
        .any(|(path, _)| path_names(path, run.report_id))
    {
        run.fate = Fate::Lost;
    }
    run.remaining = spool
        .lock()
        .and_then(|locked| locked.entries())
        .map(|entries| entries.len())
        .ok();
    run
}

/// Delivers this run's report when the spool cannot even be opened (read-only or failing
/// filesystem, no permission, a directory that cannot exist): one report that gets out beats a
/// disk problem that silences the appliance. Nothing is saved, so a report that cannot be
/// delivered now is lost; reports already in the unusable spool wait until it works again.
///
/// The exit code still says that the spool is broken (74, or 78 when it is the configuration's
/// fault), because an operator must learn of it even though this report arrived.
pub fn deliver_unspooled(
    client: &Client,
    settings: &SpoolSettings,
    error: &SpoolError,
    report: &Report,
) -> RunOutcome {
    let mut run = RunOutcome::start(client, &settings.dir, report);
    run.spool_unusable = Some(SpoolUnusable {
        error: error.to_string(),
        configuration: error.is_configuration(),
    });
    run.fate = Fate::Lost;
    match serde_json::to_vec(report) {
        Ok(json) => {
            let budget = Budget::start(settings.retry_budget, settings.max_retry_wait);
            run.send_unspooled(client, &json, &budget);
        }
        Err(e) => {
            run.drain.stop = Some(Stop::Refused {
                report_id: run.report_id,
                serial: run.serial.clone(),
                last: Outcome::Unreachable {
                    problem: Problem::Local,
                    detail: e.to_string(),
                },
                code: exit::SOFTWARE,
            })
        }
    }
    run
}

fn path_names(path: &Path, id: Uuid) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(&id.to_string()))
}

impl RunOutcome {
    /// The process exit code (sysexits.h): 78 a human must fix the configuration; 74 the spool
    /// is unusable or this run's report was neither delivered nor saved; 65 the ingest refused
    /// a report for good; 75 something waits in the spool for a later run; 0 everything up to
    /// this run's report was delivered.
    pub fn exit_code(&self) -> u8 {
        if let Some(Stop::Refused { code, .. }) = self.drain.stop {
            return code;
        }
        if let Some(unusable) = &self.spool_unusable {
            // Even when the report was delivered directly: the next outage would lose reports.
            return if unusable.configuration {
                exit::CONFIG
            } else {
                exit::IOERR
            };
        }
        if self.fate == Fate::Lost || self.store_error.is_some() {
            return exit::IOERR;
        }
        if !self.drain.rejected.is_empty() {
            return exit::DATAERR;
        }
        if self.remaining != Some(0) || self.other_sender || self.drain.stop.is_some() {
            return exit::TEMPFAIL;
        }
        exit::OK
    }

    /// The one line for the log, for example
    /// `delivered 8 reports (7 from the spool) to https://…; spool empty` or
    /// `https://… unreachable (connection failed: …); report … for serial … saved, 3 reports in
    /// /var/spool/phonehome`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let server = &self.server;
        let this = format!("report {} for serial {}", self.report_id, self.serial);

        if let Some(unusable) = &self.spool_unusable {
            let kind = if unusable.configuration {
                "check [spool] dir"
            } else {
                "the disk may be failing"
            };
            parts.push(format!(
                "spool unusable ({kind}), {this} sent without saving it: {}",
                unusable.error
            ));
        }
        if let Some(e) = &self.store_error {
            parts.push(format!("could not spool {this}: {e}"));
        }
        for problem in &self.tidy.problems {
            parts.push(format!("spool: {problem}"));
        }
        for path in &self.tidy.set_aside {
            parts.push(format!(
                "moved a file that is not a spool entry aside to {}",
                path.display()
            ));
        }
        let too_old = self
            .dropped
            .iter()
            .filter(|d| d.reason == DropReason::TooOld)
            .count();
        if too_old > 0 {
            parts.push(format!(
                "dropped {} undelivered for being too old",
                reports(too_old)
            ));
        }
        let full = self.dropped.len() - too_old;
        if full > 0 {
            parts.push(format!(
                "spool full: dropped the oldest {} undelivered",
                reports(full)
            ));
        }
        for (path, problem) in &self.drain.corrupt {
            parts.push(format!(
                "unreadable spool entry moved aside to {}: {problem}",
                path.display()
            ));
        }

        let delivered = self.drain.delivered.len()
            + usize::from(
                matches!(self.fate, Fate::Delivered { .. })
                    && !self
                        .drain
                        .delivered
                        .iter()
                        .any(|(id, _)| *id == self.report_id),
            );
        match (&self.fate, delivered) {
            (Fate::Delivered { status }, 1) => parts.push(format!(
                "delivered {this} to {server} ({})",
                stored_note(*status)
            )),
            (Fate::Delivered { status }, n) => parts.push(format!(
                "delivered {n} reports ({} from the spool) to {server}, the last {this} ({})",
                n - 1,
                stored_note(*status)
            )),
            (_, 0) => {}
            (_, n) => parts.push(format!(
                "delivered {} from the spool to {server}",
                reports(n)
            )),
        }

        for r in &self.drain.rejected {
            let mut line = format!(
                "report {} for serial {} rejected by {server}: {}",
                r.report_id,
                r.serial,
                status_text(r.status, r.message.as_deref())
            );
            if !r.moved_to.as_os_str().is_empty() {
                line.push_str(&format!(", moved to {}", r.moved_to.display()));
            }
            parts.push(line);
        }

        match &self.drain.stop {
            None => {}
            Some(Stop::Temporary {
                last,
                attempts,
                why,
                ..
            }) => {
                // Which report met the failure does not matter: the next run retries them all.
                let mut line = last.describe(server);
                let tries = if *attempts == 1 {
                    "1 attempt".to_owned()
                } else {
                    format!("{attempts} attempts")
                };
                match why {
                    GaveUp::BudgetSpent => {
                        line.push_str(&format!(" after {tries} (retry budget spent)"));
                    }
                    GaveUp::WaitTooLong(asked) => line.push_str(&format!(
                        " and asked to wait {} s, more than max_retry_wait_seconds",
                        asked.as_secs()
                    )),
                }
                parts.push(line);
            }
            // No HTTP answer (a certificate neither side accepts): no report in particular
            // was refused, none can get through.
            Some(Stop::Refused {
                last: last @ Outcome::Unreachable { .. },
                ..
            }) => parts.push(format!("{}; nothing sent", last.describe(server))),
            Some(Stop::Refused {
                report_id,
                serial,
                last,
                ..
            }) => parts.push(format!(
                "report {report_id} for serial {serial} refused: {}; nothing more sent",
                last.describe(server)
            )),
            Some(Stop::Spool(e)) => parts.push(format!("spool failed: {e}")),
        }
        if self.other_sender {
            parts.push(format!(
                "another run is delivering the spool ({} is held)",
                self.spool_dir.join("send.lock").display()
            ));
        }

        if self.spool_unusable.is_some() {
            // Nothing was saved and the spool was not looked at: there is nothing to count.
            if self.fate == Fate::Lost {
                parts.push(format!("{this} lost"));
            }
            return parts.join("; ");
        }
        let dir = self.spool_dir.display();
        let left = match self.remaining {
            Some(0) => "spool empty".to_owned(),
            Some(n) => format!("{} in {dir}", reports(n)),
            None => format!("reports in {dir} could not be counted"),
        };
        parts.push(match self.fate {
            Fate::Saved => format!("{this} saved, {left}"),
            Fate::Lost => format!("{this} lost, {left}"),
            Fate::Delivered { .. } | Fate::Rejected => left,
        });
        parts.join("; ")
    }
}

fn reports(n: usize) -> String {
    if n == 1 {
        "1 report".to_owned()
    } else {
        format!("{n} reports")
    }
}

fn stored_note(status: u16) -> String {
    match status {
        202 => "202 stored".to_owned(),
        200 => "200 already stored".to_owned(),
        other => other.to_string(),
    }
}

/// The report as gzip-compressed JSON, as the ingest accepts it.
pub fn gzip_json(report: &Report) -> std::io::Result<Vec<u8>> {
    gzip_bytes(&serde_json::to_vec(report)?)
}

/// JSON bytes, gzip-compressed.
pub fn gzip_bytes(json: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(json)?;
    encoder.finish()
}

fn classify(e: &ureq::Error) -> Problem {
    if let Some(tls) = rustls_error(e) {
        return if is_certificate_problem(tls) {
            Problem::Untrusted
        } else {
            Problem::Tls
        };
    }
    match e {
        ureq::Error::Timeout(_) => Problem::Timeout,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => Problem::Tls,
        ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl => Problem::Config,
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Problem::Timeout
        }
        // Refused, reset, unreachable, name not found: the network, which may be back tomorrow.
        _ => Problem::Network,
    }
}

/// The rustls error behind a failed request, if TLS failed. ureq passes rustls's own errors on
/// as [`ureq::Error::Rustls`], but rustls reports handshake failures and received alerts from
/// inside its I/O as an [`std::io::Error`] wrapping a [`rustls::Error`], which ureq passes on
/// as [`ureq::Error::Io`]; the source chain is followed in case another layer wraps it again.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => {
            let mut next: Option<&(dyn std::error::Error + 'static)> = io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            while let Some(error) = next {
                if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                    return Some(tls);
                }
                next = error.source();
            }
            None
        }
        _ => None,
    }
}

/// Whether a TLS failure is about a certificate, on either side, and so needs a human: the
/// ingest's certificate is not valid for `ca_cert` and `server` (any kind: unknown issuer,
/// expired, not valid for the name, bad signature, revoked, ...), or the ingest answered the
/// handshake with an alert saying it does not accept this appliance's certificate.
///
/// Other alerts (`handshake_failure`, `decode_error`, `internal_error`, ...) and broken
/// records can come from a restarting ingest or a middlebox, so they stay temporary.
fn is_certificate_problem(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as Alert;
    match e {
        rustls::Error::InvalidCertificate(_) => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::CertificateRequired
        ),
        _ => false,
    }
}

/// What to check, for a TLS failure whose cause is usually local.
fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as Cert;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                " (is `server` a name the ingest's certificate was issued for?)"
            }
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. } => {
                " (has the ingest's certificate expired, or is this appliance's clock wrong?)"
            }
            _ => " (is ca_cert the fleet CA that signed the ingest's certificate?)",
        },
        rustls::Error::AlertReceived(_) if is_certificate_problem(e) => {
            " (the ingest refused this appliance's certificate: is client_cert issued by the \
             fleet CA, current and not revoked?)"
        }
        _ => "",
    }
}

/// The error without ureq's category prefix, with a hint where the cause is usually local.
fn describe(e: &ureq::Error, timeout: Duration) -> String {
    let hint = rustls_error(e).map_or("", tls_hint);
    match e {
        ureq::Error::Timeout(which) => {
            format!("no answer within {} s ({which} timeout)", timeout.as_secs())
        }
        ureq::Error::Io(io) => format!("{io}{hint}"),
        other => format!("{other}{hint}"),
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
    fn each_answer_has_one_verdict() {
        let refused = |status, retry_after| {
            Outcome::Refused {
                status,
                message: None,
                retry_after,
            }
            .verdict()
        };
        assert_eq!(
            Outcome::Delivered { status: 202 }.verdict(),
            Verdict::Delivered
        );
        assert_eq!(
            Outcome::Delivered { status: 200 }.verdict(),
            Verdict::Delivered
        );
        for status in [500, 502, 503, 408, 429] {
            assert_eq!(refused(status, None), Verdict::Retry(None), "{status}");
        }
        let asked = Some(Duration::from_secs(7));
        assert_eq!(refused(503, asked), Verdict::Retry(asked));
        for status in [400, 413, 415, 422] {
            assert_eq!(refused(status, None), Verdict::Reject, "{status}");
        }
        for status in [403, 404, 301, 401] {
            assert_eq!(refused(status, asked), Verdict::Stop(78), "{status}");
        }
        for problem in [Problem::Timeout, Problem::Tls, Problem::Network] {
            let outcome = Outcome::Unreachable {
                problem,
                detail: String::new(),
            };
            assert_eq!(outcome.verdict(), Verdict::Retry(None), "{problem:?}");
        }
        let local = Outcome::Unreachable {
            problem: Problem::Config,
            detail: String::new(),
        };
        assert_eq!(local.verdict(), Verdict::Stop(78));
    }

    /// A rustls error as ureq passes it on from inside a handshake or a read.
    fn tls_io(e: rustls::Error) -> ureq::Error {
        ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn certificate_failures_need_a_human_and_network_failures_pass() {
        use rustls::AlertDescription as Alert;
        use rustls::CertificateError as Cert;
        let untrusted = [
            Cert::UnknownIssuer,
            Cert::Expired,
            Cert::NotValidYet,
            Cert::NotValidForName,
            Cert::BadSignature,
            Cert::Revoked,
            Cert::BadEncoding,
            Cert::InvalidPurpose,
            Cert::ApplicationVerificationFailure,
        ]
        .into_iter()
        .map(rustls::Error::InvalidCertificate)
        .chain(
            [
                Alert::BadCertificate,
                Alert::UnknownCA,
                Alert::CertificateExpired,
                Alert::CertificateRevoked,
                Alert::AccessDenied,
                Alert::CertificateRequired,
                Alert::CertificateUnknown,
                Alert::UnsupportedCertificate,
            ]
            .map(rustls::Error::AlertReceived),
        );
        for e in untrusted {
            // Both ways ureq can pass a rustls error on.
            for error in [tls_io(e.clone()), ureq::Error::Rustls(e.clone())] {
                assert_eq!(classify(&error), Problem::Untrusted, "{error}");
                let outcome = Outcome::Unreachable {
                    problem: classify(&error),
                    detail: describe(&error, Duration::from_secs(5)),
                };
                assert_eq!(outcome.verdict(), Verdict::Stop(exit::CONFIG), "{error}");
                assert!(
                    outcome.describe("https://x").contains("?)"),
                    "a hint: {outcome:?}"
                );
            }
        }
        let io = |kind| ureq::Error::Io(std::io::Error::from(kind));
        use std::io::ErrorKind as Kind;
        for (error, problem) in [
            (io(Kind::ConnectionRefused), Problem::Network),
            (io(Kind::ConnectionReset), Problem::Network),
            (io(Kind::UnexpectedEof), Problem::Network),
            (io(Kind::HostUnreachable), Problem::Network),
            (ureq::Error::HostNotFound, Problem::Network),
            (io(Kind::TimedOut), Problem::Timeout),
            (
                ureq::Error::Timeout(ureq::Timeout::Global),
                Problem::Timeout,
            ),
            (
                tls_io(rustls::Error::AlertReceived(Alert::HandshakeFailure)),
                Problem::Tls,
            ),
            (tls_io(rustls::Error::DecryptError), Problem::Tls),
        ] {
            assert_eq!(classify(&error), problem, "{error}");
            let outcome = Outcome::Unreachable {
                problem,
                detail: String::new(),
            };
            assert_eq!(outcome.verdict(), Verdict::Retry(None), "{error}");
        }
        // The hint points at what to check.
        let hint = |e| describe(&tls_io(e), Duration::from_secs(5));
        assert!(
            hint(rustls::Error::InvalidCertificate(Cert::UnknownIssuer)).contains("ca_cert"),
            "unknown issuer"
        );
        assert!(
            hint(rustls::Error::InvalidCertificate(Cert::NotValidForName)).contains("`server`"),
            "wrong name"
        );
        assert!(
            hint(rustls::Error::InvalidCertificate(Cert::Expired)).contains("clock"),
            "expired"
        );
        assert!(
            hint(rustls::Error::AlertReceived(Alert::UnknownCA)).contains("client_cert"),
            "refused by the ingest"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_retry_after("120", now), secs(120));
        assert_eq!(parse_retry_after(" 0 ", now), secs(0));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            secs(u64::MAX)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            secs(30)
        );
        // A date already past: retry at once (the backoff still spaces attempts).
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            secs(0)
        );
        for junk in ["", "-1", "1.5", "soon", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_is_fully_jittered() {
        let max = Duration::from_secs(60);
        assert_eq!(
            backoff(1, max, 0.999_999),
            Duration::from_secs(1).mul_f64(0.999_999)
        );
        assert_eq!(backoff(3, max, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(20, max, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, max, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(5, max, 0.0), Duration::ZERO);
        // The random source is uniform enough to spread a fleet out.
        let samples: Vec<f64> = (0..2000).map(|_| random_unit()).collect();
        assert!(samples.iter().all(|u| (0.0..1.0).contains(u)));
        let low = samples.iter().filter(|u| **u < 0.5).count();
        assert!((800..1200).contains(&low), "{low} of 2000 below 0.5");
    }

    fn outcome(fate: Fate, remaining: usize) -> RunOutcome {
        RunOutcome {
            server: "https://ingest.example:8443".into(),
            spool_dir: PathBuf::from("/var/spool/phonehome"),
            report_id: Uuid::nil(),
            serial: "SN1".into(),
            fate,
            spool_unusable: None,
            store_error: None,
            dropped: Vec::new(),
            tidy: Tidy::default(),
            drain: Drain::default(),
            other_sender: false,
            remaining: Some(remaining),
        }
    }

    #[test]
    fn the_exit_code_says_the_most_urgent_thing() {
        let delivered = Fate::Delivered { status: 202 };
        assert_eq!(outcome(delivered.clone(), 0).exit_code(), 0);
        assert_eq!(outcome(Fate::Saved, 3).exit_code(), 75);
        let mut busy = outcome(Fate::Saved, 1);
        busy.other_sender = true;
        assert_eq!(busy.exit_code(), 75);

        let rejection = || Rejection {
            report_id: Uuid::nil(),
            serial: "SN1".into(),
            status: 422,
            message: None,
            moved_to: PathBuf::new(),
        };
        let mut rejected = outcome(delivered, 2);
        rejected.drain.rejected.push(rejection());
        assert_eq!(
            rejected.exit_code(),
            65,
            "a refused report outranks waiting ones"
        );

        let mut lost = outcome(Fate::Lost, 0);
        lost.drain.rejected.push(rejection());
        assert_eq!(lost.exit_code(), 74);

        let mut refused = outcome(Fate::Lost, 4);
        refused.drain.stop = Some(Stop::Refused {
            report_id: Uuid::nil(),
            serial: "SN1".into(),
            last: Outcome::Refused {
                status: 403,
                message: None,
                retry_after: None,
            },
            code: exit::CONFIG,
        });
        assert_eq!(refused.exit_code(), 78);

        // A spool that failed is reported by the exit code even when the report got through.
        let mut unspooled = outcome(Fate::Delivered { status: 202 }, 0);
        unspooled.store_error = Some("disk full".into());
        assert_eq!(unspooled.exit_code(), 74);
        let mut unusable = outcome(Fate::Delivered { status: 202 }, 0);
        unusable.remaining = None;
        unusable.spool_unusable = Some(SpoolUnusable {
            error: "cannot open /spool/spool.lock: Read-only file system".into(),
            configuration: false,
        });
        assert_eq!(unusable.exit_code(), 74);
        assert_eq!(
            unusable.summary(),
            "spool unusable (the disk may be failing), report \
             00000000-0000-0000-0000-000000000000 for serial SN1 sent without saving it: cannot \
             open /spool/spool.lock: Read-only file system; delivered report \
             00000000-0000-0000-0000-000000000000 for serial SN1 to https://ingest.example:8443 \
             (202 stored)"
        );
        unusable.spool_unusable = Some(SpoolUnusable {
            error: "cannot create the spool directory /proc/x: No such file".into(),
            configuration: true,
        });
        assert_eq!(unusable.exit_code(), 78);
        unusable.fate = Fate::Lost;
        assert!(
            unusable.summary().ends_with("SN1 lost"),
            "{}",
            unusable.summary()
        );

        let mut uncounted = outcome(Fate::Saved, 0);
        uncounted.remaining = None;
        assert_eq!(uncounted.exit_code(), 75);
        assert!(
            uncounted.summary().ends_with(
                "report 00000000-0000-0000-0000-000000000000 for serial SN1 saved, reports in \
                 /var/spool/phonehome could not be counted"
            ),
            "{}",
            uncounted.summary()
        );
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
