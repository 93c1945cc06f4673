//! The run: setup, the ingest phase (reports over mutual TLS), the ceiling phase (the same
//! number of reports straight into PostgreSQL) and the summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use phonehome_ingest::storage::InsertOutcome;
use phonehome_ingest::tls::ApplianceIdentity;
use phonehome_schema::{Report, Serial};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Cli;
use crate::fleet::Fleet;
use crate::setup::{self, Appliance, LocalIngest, Target};
use crate::{http, outage};

/// Appended to `--serial-prefix` for the ceiling phase's appliances.
const CEILING_PREFIX: &str = "C-";

/// A report that has not been answered by then counts as a transport error (the collector's
/// default `timeout_seconds` too).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn progress(msg: impl std::fmt::Display) {
    eprintln!("phonehome-loadgen: {msg}");
}

/// Runs everything; `Ok(false)` when the run completed but some reports were not accepted.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let n = cli.appliances;
    let m = match (cli.outage, cli.reports) {
        (true, _) => n.saturating_mul(cli.backlog),
        (false, Some(m)) => m,
        (false, None) => anyhow::bail!("--reports is required unless --outage is given"),
    };
    let days = if cli.outage {
        let max = phonehome_schema::MAX_REPORT_AGE_DAYS as u64 - 1;
        anyhow::ensure!(
            cli.backlog <= max,
            "--backlog {} asks for reports {} days old; the ingest refuses reports older than {} days",
            cli.backlog,
            cli.backlog - 1,
            phonehome_schema::MAX_REPORT_AGE_DAYS
        );
        // A known fleet's report of the day before the outage is day 0; the spool follows it.
        cli.backlog + u64::from(cli.known_fleet)
    } else {
        m.div_ceil(n)
    };
    let fleet = Arc::new(Fleet::new(days, &cli.serial_prefix)?);
    if let Some(rate) = cli.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }

    progress(format!(
        "checking PostgreSQL at {}",
        setup::describe_db(&cli.database_url)
    ));
    setup::prepare_database(&cli.database_url).await?;

    let dir = tempfile::Builder::new()
        .prefix("phonehome-loadgen-")
        .tempdir()
        .context("create a temporary directory for the CA")?;
    progress(format!("issuing {n} appliance certificates"));
    let started = Instant::now();
    let pki = {
        let dir = dir.path().to_path_buf();
        let ca = cli.ca_dir.clone();
        let fleet = fleet.clone();
        tokio::task::spawn_blocking(move || setup::build_pki(&dir, ca.as_deref(), &fleet, n))
            .await
            .context("certificate thread")??
    };
    let issued_in = started.elapsed();
    progress(format!(
        "{n} certificates ready in {:.1} s",
        issued_in.as_secs_f64()
    ));

    let pool = cli.db_pool_size as usize;
    let admission = setup::Admission {
        max_in_flight: cli
            .max_in_flight
            .map_or(phonehome_ingest::config::DEFAULT_MAX_IN_FLIGHT, |v| {
                v as usize
            }),
        max_connections: cli
            .max_connections
            .map_or(phonehome_ingest::config::DEFAULT_MAX_CONNECTIONS, |v| {
                v as usize
            }),
        wait_ms: cli.admission_wait_ms,
        // The outage drain sends each appliance's spool in order, as the collector does, so it
        // keeps the shipped default; the throughput phases may put several of one simulated
        // appliance's days in flight at once (see `Admission::per_appliance`).
        per_appliance: if cli.outage {
            phonehome_ingest::config::DEFAULT_MAX_IN_FLIGHT_PER_APPLIANCE
        } else {
            phonehome_ingest::config::DEFAULT_MAX_IN_FLIGHT_PER_APPLIANCE
                .max(usize::try_from(cli.concurrency()).unwrap_or(usize::MAX))
        },
    };
    let server_files = pki.server.clone();
    let (target, local) = match (&cli.target, &pki.server) {
        (Some(url), _) => (setup::external_target(url).await?, None),
        (None, Some(files)) => {
            let ingest = LocalIngest::start(
                &cli.database_url,
                files,
                pool,
                cli.db_writers as usize,
                admission,
                if cli.outage {
                    setup::Pace::Shipped
                } else {
                    setup::Pace::Compressed
                },
            )
            .await?;
            (ingest.target.clone(), Some(ingest))
        }
        (None, None) => anyhow::bail!("no target: neither --target nor an in-process ingest"),
    };
    let setup_line = format!(
        "setup: {n} appliance certificates (one per serial, Ed25519, issued in memory on {} thread(s)) in {:.1} s",
        pki.threads,
        issued_in.as_secs_f64()
    );
    if cli.outage {
        println!("{setup_line}");
        return outage::run(&cli, fleet, pki.appliances, target, local).await;
    }

    let mut db = DbSize::connect(&cli.database_url).await?;
    let size0 = db.measure().await?;

    println!("{setup_line}");
    let mode = if cli.keep_alive {
        "keep-alive connections"
    } else {
        "fresh TCP + TLS handshake per report"
    };
    let where_ = match &local {
        Some(l) => format!(
            "in-process ingest on {} (max_in_flight_per_appliance {})",
            target.addr, l.gauge.admission.per_appliance
        ),
        None => format!("ingest at {}", target.addr),
    };
    println!(
        "phonehome-loadgen {}: {n} appliances, {m} reports ({days} day(s) each), concurrency {}, {mode}, {} bodies, db pool {pool}, writers {}, {where_}",
        env!("CARGO_PKG_VERSION"),
        cli.concurrency(),
        if cli.gzip { "gzip JSON" } else { "JSON" },
        cli.db_writers,
    );
    let _ = std::io::stdout().flush();

    let appliances = Arc::new(pki.appliances);
    let mut ingest = ingest_phase(&cli, m, &fleet, &appliances, &target).await;
    if let Some(local) = local {
        local.stop().await?;
    }
    let size1 = db.measure().await?;
    // This run rewrites each appliance's current-state rows once per simulated day within
    // seconds, before autovacuum's first round; a fleet does it once a day, and autovacuum keeps
    // the dead versions down. Without them is what the days leave on disk. Measured before the
    // ceiling phase adds rows of its own.
    let compact = if ingest.tally.accepted > 0 {
        db.compact_current_state().await?;
        Some(db.measure().await?)
    } else {
        None
    };
    let mut ok = ingest.print();

    let sent = ingest.tally.sent();
    let stored = ingest.tally.accepted;
    let note = if cli.rate.is_some() || cli.duration_secs.is_some() {
        " (the ingest was paced or time-limited: not a throughput comparison)"
    } else {
        ""
    };
    if cli.no_ceiling || sent == 0 {
        println!("ceiling: skipped");
    } else {
        let mut ceiling = ceiling_phase(&cli, days, &appliances, sent).await?;
        ok &= ceiling.print(&cli);
        if ceiling.rate() > 0.0 {
            println!(
                "ratio ingest/ceiling: {:.2}{note}",
                ingest.rate() / ceiling.rate()
            );
        }
        // A fresh connection per report is work the machine does too: measured against the
        // same listener code, certificates and concurrency, answering without storing.
        match (&server_files, cli.keep_alive) {
            (Some(files), false) if ceiling.rate() > 0.0 => {
                let conn =
                    connection_phase(&cli, sent, &fleet, &appliances, files, &admission).await?;
                let t = &conn.tally;
                println!(
                    "connection ceiling: {} reports in {:.3} s: {:.0} reports/s over a fresh mutual-TLS connection each, answered without parsing or storing (same listener code, certificates, concurrency {}); failed: {}",
                    t.sent(),
                    conn.elapsed.as_secs_f64(),
                    conn.rate(),
                    cli.concurrency(),
                    t.sent().saturating_sub(t.accepted),
                );
                if let Some(e) = &t.first_error {
                    println!("connection ceiling: first error: {e}");
                }
                ok &= t.accepted == t.sent();
                if conn.rate() > 0.0 {
                    let limit = 1.0 / (1.0 / ceiling.rate() + 1.0 / conn.rate());
                    println!(
                        "limit: {limit:.0} reports/s (1 / (1/database ceiling + 1/connection ceiling))"
                    );
                    println!("ratio ingest/limit: {:.2}{note}", ingest.rate() / limit);
                }
            }
            (_, true) => println!(
                "connection ceiling: not measured (keep-alive: the ratio to the database ceiling is the one that counts)"
            ),
            _ => println!(
                "connection ceiling: not measured (needs the in-process ingest's certificates; not with --target)"
            ),
        }
    }
    let size2 = db.measure().await?;
    if stored > 0 {
        let grew = size1.all - size0.all;
        println!(
            "storage: {:.0} bytes per report, tables + indexes (the database's tables grew {:.1} MB over {stored} reports stored by the ingest; per table: {}; no VACUUM)",
            grew as f64 / stored as f64,
            grew as f64 / 1e6,
            size1.growth_per_table(&size0, stored),
        );
    }
    if let Some(compact) = compact.filter(|_| stored > 0) {
        let grew = compact.all - size0.all;
        println!(
            "storage without dead row versions: {:.0} bytes per report, tables + indexes (VACUUM FULL of the tables every report rewrites: {}; per table: {})",
            grew as f64 / stored as f64,
            REWRITTEN.join(", "),
            compact.growth_per_table(&size0, stored),
        );
    }
    progress(format!(
        "database now holds {:.1} MB in its tables ({:.1} MB before this run)",
        size2.all as f64 / 1e6,
        size0.all as f64 / 1e6
    ));
    Ok(ok)
}

/// Outcomes of one phase, per worker (or appliance) and then merged.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) accepted: u64,
    pub(crate) duplicate: u64,
    /// Every other status, by status.
    pub(crate) other: BTreeMap<u16, u64>,
    pub(crate) transport: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) connections: u64,
    pub(crate) json_bytes: u64,
    pub(crate) wire_bytes: u64,
}

impl Tally {
    pub(crate) fn sent(&self) -> u64 {
        self.accepted + self.duplicate + self.other.values().sum::<u64>() + self.transport
    }

    pub(crate) fn error(&mut self, e: String) {
        self.transport += 1;
        self.first_error.get_or_insert(e);
    }

    pub(crate) fn merge(&mut self, o: Tally) {
        self.latencies_us.extend(o.latencies_us);
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        for (k, v) in o.other {
            *self.other.entry(k).or_default() += v;
        }
        self.transport += o.transport;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.connections += o.connections;
        self.json_bytes += o.json_bytes;
        self.wire_bytes += o.wire_bytes;
    }

    /// "p50 X p99 Y max Z" in milliseconds (nearest rank).
    pub(crate) fn latency(&mut self) -> String {
        let l = &mut self.latencies_us;
        if l.is_empty() {
            return "no samples".into();
        }
        l.sort_unstable();
        let rank = |p: f64| l[((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.1} p99 {:.1} max {:.1}",
            ms(rank(0.50)),
            ms(rank(0.99)),
            ms(l[l.len() - 1])
        )
    }
}

#[derive(Debug)]
struct Phase {
    tally: Tally,
    elapsed: Duration,
}

impl Phase {
    /// Acknowledged reports per second.
    fn rate(&self) -> f64 {
        (self.tally.accepted + self.tally.duplicate) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Prints the ingest lines; true when every report got a 2xx.
    fn print(&mut self) -> bool {
        let rate = self.rate();
        let t = &mut self.tally;
        let sent = t.sent();
        let latency = t.latency();
        println!(
            "ingest: {sent} reports in {:.3} s: {rate:.0} reports/s; latency ms {latency}",
            self.elapsed.as_secs_f64(),
        );
        let others: u64 = t.other.values().sum();
        let detail = if t.other.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = t.other.iter().map(|(s, c)| format!("{s}x{c}")).collect();
            format!(" ({})", parts.join(", "))
        };
        println!(
            "ingest: 202: {}, 200: {}, other status: {others}{detail}, transport errors: {}; {} TLS connections; body avg {} bytes JSON, {} on the wire",
            t.accepted,
            t.duplicate,
            t.transport,
            t.connections,
            t.json_bytes / sent.max(1),
            t.wire_bytes / sent.max(1),
        );
        if let Some(e) = &t.first_error {
            println!("ingest: first transport error: {e}");
        }
        others == 0 && t.transport == 0
    }
}

/// Shared by the senders of the ingest phase, each a task of its own so that the client side's
/// TLS work spreads over the runtime's threads like the server's does.
struct Run {
    fleet: Arc<Fleet>,
    appliances: Arc<Vec<Appliance>>,
    target: Target,
    gzip: bool,
    keep_alive: bool,
    total: u64,
    /// Next report (fresh mode) or next appliance (keep-alive mode) to claim.
    next: AtomicU64,
    /// Reports started, for pacing.
    tickets: AtomicU64,
    done: Arc<AtomicU64>,
    start: Instant,
    deadline: Option<Instant>,
    rate: Option<f64>,
}

impl Run {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits until the next report is due when a rate is set.
    async fn pace(&self) {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(ticket as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// The JSON body of appliance `i`'s report for `day`, and what goes on the wire.
    fn body(&self, i: u64, day: u64) -> anyhow::Result<(usize, Vec<u8>)> {
        let a = &self.appliances[i as usize];
        let json = serde_json::to_vec(&self.fleet.report(&a.serial, i, day))?;
        if !self.gzip {
            return Ok((json.len(), json));
        }
        Ok((json.len(), crate::fleet::gzip_fast(&json)?))
    }

    async fn connect(&self, a: &Appliance) -> Result<TlsStream<TcpStream>, String> {
        setup::connect(&self.target, a).await
    }

    /// Appliance `i`'s report for `day`, counted in the tally; a report that cannot be built is
    /// counted as an error and skipped.
    fn prepare(&self, t: &mut Tally, i: u64, day: u64) -> Option<Vec<u8>> {
        match self.body(i, day) {
            Ok((json_len, body)) => {
                t.json_bytes += json_len as u64;
                t.wire_bytes += body.len() as u64;
                Some(body)
            }
            Err(e) => {
                t.error(format!("build report: {e:#}"));
                None
            }
        }
    }

    fn record(&self, t: &mut Tally, started: Instant, result: Result<http::Answer, String>) {
        match result {
            Ok(answer) => {
                t.latencies_us.push(started.elapsed().as_micros() as u64);
                match answer.status {
                    202 => t.accepted += 1,
                    200 => t.duplicate += 1,
                    s => *t.other.entry(s).or_default() += 1,
                }
            }
            Err(e) => t.error(e),
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Fresh mode: report k is appliance k mod N on day k / N, over its own connection.
    async fn fresh_worker(&self) -> Tally {
        let mut t = Tally::default();
        let n = self.appliances.len() as u64;
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            if k >= self.total || self.expired() {
                return t;
            }
            self.pace().await;
            let (i, day) = (k % n, k / n);
            let Some(body) = self.prepare(&mut t, i, day) else {
                continue;
            };
            let started = Instant::now();
            let a = &self.appliances[i as usize];
            let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut s = self.connect(a).await?;
                let answer =
                    http::post_report(&mut s, &self.target.host, &body, self.gzip, false).await?;
                // close_notify, as a well-behaved client sends; its failure changes nothing.
                let _ = s.shutdown().await;
                Ok(answer)
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
            t.connections += 1;
            self.record(&mut t, started, result);
        }
    }

    /// Keep-alive mode: claim an appliance, send all of its reports (day by day) over one
    /// connection, reconnecting only if the server closes it.
    async fn keep_alive_worker(&self) -> Tally {
        let mut t = Tally::default();
        let n = self.appliances.len() as u64;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= n.min(self.total) {
                return t;
            }
            let a = &self.appliances[i as usize];
            let reports = self.total / n + u64::from(i < self.total % n);
            let mut conn: Option<TlsStream<TcpStream>> = None;
            for day in 0..reports {
                if self.expired() {
                    return t;
                }
                self.pace().await;
                let Some(body) = self.prepare(&mut t, i, day) else {
                    continue;
                };
                let started = Instant::now();
                let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    let s = match conn.as_mut() {
                        Some(s) => s,
                        None => {
                            t.connections += 1;
                            conn.insert(self.connect(a).await?)
                        }
                    };
                    http::post_report(s, &self.target.host, &body, self.gzip, true).await
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
                if !matches!(&result, Ok(answer) if !answer.closes) {
                    conn = None;
                }
                self.record(&mut t, started, result);
            }
            if let Some(mut s) = conn {
                let _ = s.shutdown().await;
            }
        }
    }
}

/// Prints a progress line every few seconds until aborted.
pub(crate) fn ticker(
    label: &'static str,
    done: Arc<AtomicU64>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        interval.tick().await;
        loop {
            interval.tick().await;
            let d = done.load(Ordering::Relaxed);
            progress(format!(
                "{label}: {d}/{total} reports, {:.0}/s over the last 5 s, {:.0} s elapsed",
                (d - last) as f64 / 5.0,
                start.elapsed().as_secs_f64()
            ));
            last = d;
        }
    })
}

async fn ingest_phase(
    cli: &Cli,
    reports: u64,
    fleet: &Arc<Fleet>,
    appliances: &Arc<Vec<Appliance>>,
    target: &Target,
) -> Phase {
    let start = Instant::now();
    let run = Arc::new(Run {
        fleet: fleet.clone(),
        appliances: appliances.clone(),
        target: target.clone(),
        gzip: cli.gzip,
        keep_alive: cli.keep_alive,
        total: reports,
        next: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
        done: Arc::new(AtomicU64::new(0)),
        start,
        deadline: cli.duration_secs.map(|s| start + Duration::from_secs(s)),
        rate: cli.rate,
    });
    progress(format!("ingest phase: sending {reports} reports"));
    let tick = ticker("ingest", run.done.clone(), reports);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..cli.concurrency() {
        let run = run.clone();
        set.spawn(async move {
            if run.keep_alive {
                run.keep_alive_worker().await
            } else {
                run.fresh_worker().await
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(t) => tally.merge(t),
            Err(e) => {
                tally.transport += 1;
                tally
                    .first_error
                    .get_or_insert(format!("a sender failed: {e}"));
            }
        }
    }
    tick.abort();
    Phase {
        tally,
        elapsed: start.elapsed(),
    }
}

/// The connection ceiling: the fresh path's sender against [`setup::NullIngest`].
async fn connection_phase(
    cli: &Cli,
    reports: u64,
    fleet: &Arc<Fleet>,
    appliances: &Arc<Vec<Appliance>>,
    files: &phonehome_ingest::config::TlsConfig,
    admission: &setup::Admission,
) -> anyhow::Result<Phase> {
    let null =
        setup::NullIngest::start(&cli.database_url, files, admission.max_connections).await?;
    progress(format!(
        "connection ceiling: {reports} fresh mutual-TLS connections to a listener that stores nothing"
    ));
    let phase = ingest_phase(cli, reports, fleet, appliances, &null.target).await;
    null.stop().await?;
    Ok(phase)
}

struct Ceiling {
    tally: Tally,
    elapsed: Duration,
    errors: u64,
}

impl Ceiling {
    fn rate(&self) -> f64 {
        (self.tally.accepted + self.tally.duplicate) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&mut self, cli: &Cli) -> bool {
        let latency = self.tally.latency();
        println!(
            "ceiling: {} reports in {:.3} s: {:.0} reports/s straight into PostgreSQL (Storage::insert_report, appliances of its own, concurrency {}, pool {}, writers {}); latency ms {latency}; errors: {}",
            self.tally.accepted + self.tally.duplicate + self.errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            cli.concurrency(),
            cli.db_pool_size,
            cli.db_writers,
            self.errors,
        );
        if let Some(e) = &self.tally.first_error {
            println!("ceiling: first error: {e}");
        }
        self.errors == 0
    }
}

/// The same number of reports (same appliances and days, new report ids) inserted through the
/// ingest's own storage layer, with the same concurrency and pool size: what the ingest could
/// reach if HTTP, TLS and parsing cost nothing.
async fn ceiling_phase(
    cli: &Cli,
    days: u64,
    appliances: &Arc<Vec<Appliance>>,
    count: u64,
) -> anyhow::Result<Ceiling> {
    // Appliances of their own, with the same fleet's pattern (fates, drives, drift): sent to
    // the ingest's appliances, every report would be older than what the ingest phase stored,
    // so late, judging nothing and updating no current state, which is less work than the
    // ingest phase did per report and made the ceiling too high.
    let fleet = Fleet::new(days, &format!("{}{CEILING_PREFIX}", cli.serial_prefix))?;
    let appliances: Vec<(Serial, ApplianceIdentity)> = appliances
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let serial = fleet.serial(i as u64)?;
            let identity = ApplianceIdentity {
                serial: serial.clone(),
                ..a.identity.clone()
            };
            Ok((serial, identity))
        })
        .collect::<anyhow::Result<_>>()?;
    let (fleet, appliances) = (Arc::new(fleet), Arc::new(appliances));
    let storage = setup::storage(
        &cli.database_url,
        cli.db_pool_size as usize,
        cli.db_writers as usize,
    )?;
    progress(format!(
        "ceiling phase: inserting {count} reports straight into PostgreSQL"
    ));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let n = appliances.len() as u64;
    let tick = ticker("ceiling", done.clone(), count);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..cli.concurrency() {
        let (next, done, storage) = (next.clone(), done.clone(), storage.clone());
        let (fleet, appliances) = (fleet.clone(), appliances.clone());
        set.spawn(async move {
            let mut t = Tally::default();
            let mut errors = 0u64;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    return (t, errors);
                }
                let (i, day) = (k % n, k / n);
                let (serial, identity) = &appliances[i as usize];
                let report: Report = fleet.report(serial, i, day);
                let body = match serde_json::to_string(&report) {
                    Ok(b) => b,
                    Err(e) => {
                        errors += 1;
                        t.first_error
                            .get_or_insert(format!("serialise report: {e}"));
                        continue;
                    }
                };
                let started = Instant::now();
                let result = storage.insert_report(&report, identity, &body).await;
                done.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(InsertOutcome::Stored) => t.accepted += 1,
                    Ok(InsertOutcome::Duplicate) => t.duplicate += 1,
                    Err(e) => {
                        errors += 1;
                        t.first_error.get_or_insert(e.to_string());
                        continue;
                    }
                }
                t.latencies_us.push(started.elapsed().as_micros() as u64);
            }
        });
    }
    let mut tally = Tally::default();
    let mut errors = 0;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((t, e)) => {
                tally.merge(t);
                errors += e;
            }
            Err(e) => {
                errors += 1;
                tally
                    .first_error
                    .get_or_insert(format!("an inserter failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    tick.abort();
    Ok(Ceiling {
        tally,
        elapsed,
        errors,
    })
}

/// On-disk size of the database's tables, TOAST and indexes included.
struct DbSize {
    client: tokio_postgres::Client,
}

/// The tables a report rewrites rows of (the rest only grow): what dead row versions inflate.
const REWRITTEN: [&str; 6] = [
    "appliances",
    "appliance_seen",
    "drives",
    "drive_membership",
    "alerts",
    "certificates",
];

#[derive(Debug, Clone, Default)]
struct Sizes {
    /// Every user table.
    all: i64,
    /// Per table, a partitioned table's partitions counted under its name.
    tables: std::collections::BTreeMap<String, i64>,
}

impl Sizes {
    /// "reports 480, appliances 99, …" per report, biggest first, for the tables that grew.
    fn growth_per_table(&self, before: &Sizes, reports: u64) -> String {
        let mut grew: Vec<(&String, i64)> = self
            .tables
            .iter()
            .map(|(t, n)| (t, n - before.tables.get(t).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        grew.sort_by_key(|g| std::cmp::Reverse(g.1));
        grew.iter()
            .map(|(t, n)| format!("{t} {:.0}", *n as f64 / reports as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl DbSize {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {}", setup::describe_db(url)))?;
        tokio::spawn(conn);
        Ok(DbSize { client })
    }

    /// Rewrites [`REWRITTEN`] without their dead row versions.
    async fn compact_current_state(&mut self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!("VACUUM FULL {}", REWRITTEN.join(", ")))
            .await
            .context("VACUUM FULL the current-state tables")
    }

    async fn measure(&mut self) -> anyhow::Result<Sizes> {
        // Every user table, so that tables added later count too; a partition counts under its
        // partitioned table.
        let rows = self
            .client
            .query(
                "SELECT coalesce(p.relname, c.relname)::text,
                        sum(pg_total_relation_size(c.oid))::bigint
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
                 LEFT JOIN pg_class p ON p.oid = i.inhparent
                 WHERE c.relkind IN ('r', 'm')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg_toast%'
                 GROUP BY 1",
                &[],
            )
            .await
            .context("measure the database's size")?;
        let tables: std::collections::BTreeMap<String, i64> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(Sizes {
            all: tables.values().sum(),
            tables,
        })
    }
}
