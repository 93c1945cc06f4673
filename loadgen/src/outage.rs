//! The outage drain (`--outage`): the ingest was down, every appliance holds `--backlog`
//! reports in its spool, and at t0 the ingest is back and the whole fleet calls at once. How
//! long until every report is acknowledged, and does the database then hold each exactly once?
//!
//! Each appliance is a task that delivers as `collector/src/deliver.rs` does:
//! - oldest report first, over one kept-alive TLS connection, gzip-compressed, the same report
//!   id on every attempt (so a report committed before a lost answer comes back as a 200);
//! - 2xx: the next report, on the same connection unless the server closes it;
//! - 408, 429, 5xx: wait the larger of `Retry-After` and the collector's backoff (full jitter,
//!   1 s doubling up to 60 s per failed attempt at this report), giving up on a `Retry-After`
//!   over 60 s (`max_retry_wait_seconds`); a transport error or a 30 s timeout: the backoff
//!   alone;
//! - a wait that would end after t0 + `--retry-budget-secs` (`retry_budget_seconds`) is not
//!   made: the appliance gives up, and its reports wait for its next daily run;
//! - 400, 413, 415, 422: the report is set aside and the next one follows; any other status
//!   (403, 404, ...) stops the appliance, as it needs a human.
//!
//! After a wait the collector always opens a new connection: the shortest wait the ingest asks
//! for (15 s) is already ureq's `max_idle_age`, and the ingest drops idle connections after its
//! 10 s header timeout anyway. So an appliance closes its connection when it starts waiting,
//! and does not hold one of the `--concurrency` connection slots while it waits: it queues for
//! a slot again when its wait is over. (A real collector keeps its socket until the ingest
//! drops it 10 s later, so a real herd holds more of the ingest's connection slots than this
//! one.) The slots are a fair (first come, first served) semaphore, so the appliances not yet
//! connected at t0 stand for the connections a real herd keeps waiting in the kernel's backlog.
//! TLS sessions are never resumed, as in the other phases: the ingest offers no resumption.
//!
//! The appliances run on a runtime of their own: they are other machines, and their tens of
//! thousands of tasks must not queue in the ingest's scheduler (which they would in the shared
//! runtime of the other phases). They still share this machine's cores, as the target says, and
//! the summary shows how the CPU time was split.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use phonehome_ingest::tls::ApplianceIdentity;
use phonehome_schema::Serial;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use uuid::Uuid;

use crate::Cli;
use crate::fleet::Fleet;
use crate::http;
use crate::phases::{REQUEST_TIMEOUT, Tally, progress, ticker};
use crate::setup::{self, Appliance, IngestGauge, LocalIngest, Target};

/// The collector's default `max_retry_wait_seconds`: the longest wait between attempts, and the
/// longest `Retry-After` it honours.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// The collector's first backoff step, doubled per failed attempt.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// How often the ingest's load is sampled for its peaks.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Name of the simulated fleet's threads, to tell their CPU time from the ingest's.
const FLEET_THREAD: &str = "appliances";

/// Runs the drain against `target` (and stops `local` afterwards); `Ok(false)` when some report
/// was not acknowledged or the database does not hold exactly N x K new reports.
pub async fn run(
    cli: &Cli,
    fleet: Arc<Fleet>,
    appliances: Vec<Appliance>,
    target: Target,
    local: Option<LocalIngest>,
) -> anyhow::Result<bool> {
    let n = appliances.len() as u64;
    let k = cli.backlog;
    let total = n.saturating_mul(k);
    let concurrency = cli.concurrency();
    let where_ = match &local {
        Some(l) => format!(
            "in-process ingest on {} (max_in_flight {}, max_connections {}, admission wait {} ms)",
            target.addr,
            l.gauge.admission.max_in_flight,
            l.gauge.admission.max_connections,
            l.gauge.admission.wait_ms
        ),
        None => format!("ingest at {}", target.addr),
    };
    println!(
        "phonehome-loadgen {}: outage drain: {n} appliances x {k} spooled reports = {total} reports, the whole fleet calling at t0; up to {concurrency} connections at once; gzip JSON bodies{}; retry budget {} s; db pool {}; {where_}",
        env!("CARGO_PKG_VERSION"),
        if cli.prebuilt_bodies {
            " (built before t0)"
        } else {
            ""
        },
        cli.retry_budget_secs,
        cli.db_pool_size,
    );
    let _ = std::io::stdout().flush();

    if cli.known_fleet {
        seed_known_fleet(cli, &fleet, &appliances).await?;
    }
    let first_day = u64::from(cli.known_fleet);
    let prebuilt = if cli.prebuilt_bodies {
        Some(prebuild(&fleet, &appliances, k as usize, first_day)?)
    } else {
        None
    };
    let mut db = ReportCount::connect(&cli.database_url).await?;
    let before = db.count().await?;

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let fleet_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(FLEET_THREAD)
        .enable_all()
        .build()
        .context("start the simulated fleet's runtime")?;
    let slots = usize::try_from(concurrency)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let cpu0 = CpuTimes::read();
    let t0 = Instant::now();
    let drain = Arc::new(Drain {
        fleet,
        appliances,
        target,
        backlog: k as usize,
        first_day,
        prebuilt,
        t0,
        deadline: t0.checked_add(Duration::from_secs(cli.retry_budget_secs)),
        slots: Semaphore::new(slots),
        concurrency: slots,
        live: Live::default(),
    });
    progress(format!(
        "outage: t0: {n} appliances calling with {total} reports"
    ));
    let gauge = local.as_ref().map(|l| l.gauge.clone());
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch(drain.clone(), gauge, total, watch_stopped));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..drain.appliances.len() {
        set.spawn_on(drain.clone().appliance(i), fleet_rt.handle());
    }
    let mut tally = Tally::default();
    let mut fates = Fates::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((t, fate)) => {
                tally.merge(t);
                fates.add(fate);
            }
            Err(e) => {
                fates.stopped += 1;
                fates
                    .first_stop
                    .get_or_insert(format!("an appliance task failed: {e}"));
            }
        }
    }
    let ended = t0.elapsed();
    let cpu1 = CpuTimes::read();
    // Every appliance task has ended; nothing is left to wait for.
    fleet_rt.shutdown_background();
    let _ = stop_watch.send(());
    let peaks = watcher.await.ok().flatten();
    if let Some(local) = local {
        local.stop().await?;
    }
    let after = db.count().await?;

    let live = &drain.live;
    let acked = tally.accepted + tally.duplicate;
    let last_ack = Duration::from_micros(live.last_ack_us.load(Ordering::Relaxed));
    if acked == total {
        println!(
            "outage: drained in {:.3} s (t0 to the last acknowledgement): {acked} of {total} reports acknowledged, {:.0} reports/s",
            last_ack.as_secs_f64(),
            acked as f64 / last_ack.as_secs_f64().max(1e-9),
        );
    } else {
        println!(
            "outage: NOT drained: {acked} of {total} reports acknowledged ({:.0} reports/s up to the last acknowledgement at {:.3} s); the run ended after {:.3} s",
            acked as f64 / last_ack.as_secs_f64().max(1e-9),
            last_ack.as_secs_f64(),
            ended.as_secs_f64(),
        );
    }
    let latency = tally.latency();
    println!(
        "outage: latency ms of the acknowledged posts (connect and TLS handshake included for the first post on a connection): {latency}"
    );
    let unavailable = tally.other.get(&503).copied().unwrap_or(0);
    let others: Vec<String> = tally
        .other
        .iter()
        .filter(|(s, _)| **s != 503)
        .map(|(s, c)| format!("{s}x{c}"))
        .collect();
    let other_count: u64 = tally.other.values().sum::<u64>() - unavailable;
    let detail = if others.is_empty() {
        String::new()
    } else {
        format!(" ({})", others.join(", "))
    };
    println!(
        "outage: 202: {}, 200: {}, 503: {unavailable}, other non-2xx: {other_count}{detail}, transport errors: {}; {} TLS connections, peak {} open at once; body avg {} bytes JSON, {} on the wire",
        tally.accepted,
        tally.duplicate,
        tally.transport,
        tally.connections,
        live.peak_open.load(Ordering::Relaxed),
        tally.json_bytes / tally.sent().max(1),
        tally.wire_bytes / tally.sent().max(1),
    );
    if let Some(p) = peaks {
        println!(
            "outage: ingest peaks (sampled every {} ms): {} connection slots taken (its accept loop holds one while it waits), {} reports in flight",
            SAMPLE_EVERY.as_millis(),
            p.connections,
            p.in_flight,
        );
    }
    if let Some(e) = &tally.first_error {
        println!("outage: first transport error: {e}");
    }
    println!(
        "outage: appliances: {} drained, {} gave up (retry budget spent: {}, Retry-After over {} s: {}), {} stopped; {} reports left in their spools for the next daily run",
        fates.drained,
        fates.budget_spent + fates.wait_too_long,
        fates.budget_spent,
        MAX_RETRY_WAIT.as_secs(),
        fates.wait_too_long,
        fates.stopped,
        fates.left,
    );
    if let Some(why) = &fates.first_stop {
        println!("outage: first appliance stopped: {why}");
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let rest = if peaks.is_some() {
            "in-process ingest and the rest of this process"
        } else {
            "the rest of this process"
        };
        println!("outage: {}", CpuTimes::describe(&a, &b, ended, rest));
    }
    let new_rows = after - before;
    let total = total as i64;
    let acked = acked as i64;
    let verdict = if new_rows == total && acked == total {
        "every report exactly once".to_owned()
    } else if new_rows < acked {
        format!(
            "MISSING: {} acknowledged reports are not stored",
            acked - new_rows
        )
    } else if new_rows > total {
        format!("{} rows MORE than reports sent", new_rows - total)
    } else {
        format!(
            "not drained; the {acked} acknowledged reports are stored, and {} more whose acknowledgement never reached the appliance (they stay in its spool, and the ingest will answer 200 to them)",
            new_rows - acked
        )
    };
    println!(
        "outage: database: {new_rows} new rows in reports ({before} before, {after} after), {n} x {k} = {total} once drained: {verdict}"
    );
    Ok(acked == total && new_rows == total)
}

/// Stores every appliance's report of the day before the outage straight through the storage
/// layer, then vacuums and analyses the database as autovacuum would have over that day.
async fn seed_known_fleet(
    cli: &Cli,
    fleet: &Arc<Fleet>,
    appliances: &[Appliance],
) -> anyhow::Result<()> {
    const SENDERS: usize = 64;
    let n = appliances.len() as u64;
    let storage = setup::storage(
        &cli.database_url,
        cli.db_pool_size as usize,
        cli.db_writers as usize,
    )?;
    progress(format!(
        "known fleet: storing {n} reports of the day before the outage"
    ));
    let jobs: Arc<Vec<(Serial, ApplianceIdentity)>> = Arc::new(
        appliances
            .iter()
            .map(|a| (a.serial.clone(), a.identity.clone()))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tick = ticker("known fleet", done.clone(), n);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (next, done, storage) = (next.clone(), done.clone(), storage.clone());
        let (fleet, jobs) = (fleet.clone(), jobs.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((serial, identity)) = jobs.get(i as usize) else {
                    return anyhow::Ok(());
                };
                let report = fleet.report(serial, i, 0);
                let body = serde_json::to_string(&report).context("serialise a report")?;
                storage
                    .insert_report(&report, identity, &body)
                    .await
                    .with_context(|| format!("store {serial}'s report of the day before"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let outcome = match joined {
            Ok(r) => r,
            Err(e) => Err(anyhow::Error::new(e).context("a seeding task failed")),
        };
        if let Err(e) = outcome {
            set.abort_all();
            result = result.and(Err(e));
        }
    }
    tick.abort();
    result?;
    let stored_in = started.elapsed();
    let vacuum_started = Instant::now();
    let (client, connection) = tokio_postgres::connect(&cli.database_url, tokio_postgres::NoTls)
        .await
        .context("connect to PostgreSQL to vacuum")?;
    tokio::spawn(connection);
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .context("VACUUM ANALYZE after storing the day before")?;
    println!(
        "known fleet: {n} reports of the day before the outage stored in {:.1} s (straight into PostgreSQL, not part of the drain), VACUUM ANALYZE in {:.1} s",
        stored_in.as_secs_f64(),
        vacuum_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Counts the rows of `reports` (its partitions included, if it has any).
struct ReportCount {
    client: tokio_postgres::Client,
}

impl ReportCount {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {}", setup::describe_db(url)))?;
        tokio::spawn(conn);
        Ok(ReportCount { client })
    }

    async fn count(&mut self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM reports", &[])
            .await
            .context("count the rows of reports")?;
        Ok(row.get(0))
    }
}

/// Counters read while the drain runs, for progress and the summary.
#[derive(Debug, Default)]
struct Live {
    acked: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    transport: AtomicU64,
    /// Connections being opened or open.
    open: AtomicU64,
    peak_open: AtomicU64,
    /// Appliances waiting out a `Retry-After` or a backoff.
    waiting: AtomicU64,
    /// Appliances done, one way or another.
    finished: AtomicU64,
    gave_up: AtomicU64,
    /// Microseconds from t0 to the latest acknowledgement.
    last_ack_us: AtomicU64,
}

/// Shared by the appliance tasks.
#[derive(Debug)]
struct Drain {
    fleet: Arc<Fleet>,
    appliances: Vec<Appliance>,
    target: Target,
    backlog: usize,
    /// The fleet's day of the oldest spooled report: 1 when the day before is already stored.
    first_day: u64,
    /// With --prebuilt-bodies: every appliance's spool, built before t0.
    prebuilt: Option<Vec<Vec<Built>>>,
    t0: Instant,
    /// End of every appliance's retry budget (the whole fleet started its run at t0); `None`
    /// when too far away to name.
    deadline: Option<Instant>,
    /// Connection slots: an appliance holds one from its connect to its last answer.
    slots: Semaphore,
    concurrency: usize,
    live: Live,
}

/// What became of one appliance.
#[derive(Debug)]
enum Fate {
    Drained,
    GaveUp { left: u64, why: GaveUp },
    Stopped { left: u64, why: String },
}

#[derive(Debug, Clone, Copy)]
enum GaveUp {
    /// The next wait would end after the retry budget.
    BudgetSpent,
    /// The ingest asked for a longer wait than the collector honours.
    WaitTooLong,
}

#[derive(Debug, Default)]
struct Fates {
    drained: u64,
    budget_spent: u64,
    wait_too_long: u64,
    stopped: u64,
    left: u64,
    first_stop: Option<String>,
}

impl Fates {
    fn add(&mut self, fate: Fate) {
        match fate {
            Fate::Drained => self.drained += 1,
            Fate::GaveUp { left, why } => {
                self.left += left;
                match why {
                    GaveUp::BudgetSpent => self.budget_spent += 1,
                    GaveUp::WaitTooLong => self.wait_too_long += 1,
                }
            }
            Fate::Stopped { left, why } => {
                self.left += left;
                self.stopped += 1;
                self.first_stop.get_or_insert(why);
            }
        }
    }
}

/// How one connection's session ended.
enum SessionEnd {
    /// The spool is empty.
    Done,
    /// Try again after this wait, on a new connection.
    Retry(Duration),
    Over(Fate),
}

/// One appliance's spool: its reports' ids, oldest first, and where delivery stands.
struct Spool {
    ids: Vec<Uuid>,
    /// The oldest report not yet delivered or set aside.
    next: usize,
    /// Attempts at that report so far.
    attempts: u32,
}

impl Spool {
    fn left(&self) -> u64 {
        (self.ids.len() - self.next) as u64
    }
}

/// An open connection, counted in `Live::open` for as long as it exists.
struct Conn<'a> {
    stream: TlsStream<TcpStream>,
    _open: OpenGuard<'a>,
}

struct OpenGuard<'a>(&'a Live);

impl<'a> OpenGuard<'a> {
    fn new(live: &'a Live) -> Self {
        let now = live.open.fetch_add(1, Ordering::Relaxed) + 1;
        live.peak_open.fetch_max(now, Ordering::Relaxed);
        OpenGuard(live)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drain {
    /// Appliance `i`, from t0 until its spool is empty or it gives up.
    async fn appliance(self: Arc<Self>, i: usize) -> (Tally, Fate) {
        let mut t = Tally::default();
        let mut spool = Spool {
            ids: match self.prebuilt.as_ref().and_then(|p| p.get(i)) {
                Some(built) => built.iter().map(|b| b.id).collect(),
                None => (0..self.backlog).map(|_| Uuid::new_v4()).collect(),
            },
            next: 0,
            attempts: 0,
        };
        let fate = loop {
            let slot = match self.slots.acquire().await {
                Ok(slot) => slot,
                Err(e) => {
                    break Fate::Stopped {
                        left: spool.left(),
                        why: format!("no connection slot: {e}"),
                    };
                }
            };
            // Boxed: the session's future (TLS stream included) lives on the heap only while
            // the appliance is connected, which keeps 100,000 waiting tasks small.
            let end = Box::pin(self.session(i, &mut spool, &mut t)).await;
            drop(slot);
            match end {
                SessionEnd::Done => break Fate::Drained,
                SessionEnd::Over(fate) => break fate,
                SessionEnd::Retry(wait) => {
                    self.live.waiting.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    self.live.waiting.fetch_sub(1, Ordering::Relaxed);
                }
            }
        };
        if matches!(fate, Fate::GaveUp { .. }) {
            self.live.gave_up.fetch_add(1, Ordering::Relaxed);
        }
        self.live.finished.fetch_add(1, Ordering::Relaxed);
        (t, fate)
    }

    /// Sends the spool, oldest first, over one connection until it is empty or an answer
    /// calls for a wait or an end.
    async fn session(&self, i: usize, spool: &mut Spool, t: &mut Tally) -> SessionEnd {
        let a = &self.appliances[i];
        let mut conn: Option<Conn<'_>> = None;
        while spool.next < spool.ids.len() {
            let day = self.first_day + spool.next as u64;
            let built = self
                .prebuilt
                .as_ref()
                .and_then(|p| p.get(i))
                .and_then(|spool_bodies| spool_bodies.get(spool.next));
            let body = match built.map_or_else(
                || build_body(&self.fleet, a, i, spool.ids[spool.next], day).map(Cow::Owned),
                |b| Ok(Cow::Borrowed(b)),
            ) {
                Ok(b) => {
                    t.json_bytes += b.json_len as u64;
                    t.wire_bytes += b.body.len() as u64;
                    b
                }
                Err(e) => {
                    return SessionEnd::Over(Fate::Stopped {
                        left: spool.left(),
                        why: format!("cannot build report: {e:#}"),
                    });
                }
            };
            spool.attempts += 1;
            let started = Instant::now();
            let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        t.connections += 1;
                        let guard = OpenGuard::new(&self.live);
                        let stream = setup::connect(&self.target, a).await?;
                        conn.insert(Conn {
                            stream,
                            _open: guard,
                        })
                    }
                };
                http::post_report(&mut c.stream, &self.target.host, &body.body, true, true).await
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
            let answer = match result {
                Ok(answer) => answer,
                Err(e) => {
                    t.error(e);
                    self.live.transport.fetch_add(1, Ordering::Relaxed);
                    return self.retry(spool, None);
                }
            };
            if answer.closes {
                conn = None;
            }
            match answer.status {
                200..=299 => {
                    t.latencies_us.push(started.elapsed().as_micros() as u64);
                    if answer.status == 200 {
                        t.duplicate += 1;
                    } else {
                        t.accepted += 1;
                    }
                    self.live.acked.fetch_add(1, Ordering::Relaxed);
                    let at = self.t0.elapsed().as_micros() as u64;
                    self.live.last_ack_us.fetch_max(at, Ordering::Relaxed);
                    spool.next += 1;
                    spool.attempts = 0;
                }
                status => {
                    *t.other.entry(status).or_default() += 1;
                    let counter = if status == 503 {
                        &self.live.unavailable
                    } else {
                        &self.live.other
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    match status {
                        408 | 429 | 500..=599 => return self.retry(spool, answer.retry_after),
                        // Refused for good: set aside, and on with the next report.
                        400 | 413 | 415 | 422 => {
                            spool.next += 1;
                            spool.attempts = 0;
                        }
                        _ => {
                            return SessionEnd::Over(Fate::Stopped {
                                left: spool.left(),
                                why: format!("{} answered {status}", a.serial),
                            });
                        }
                    }
                }
            }
        }
        if let Some(mut c) = conn {
            // close_notify, as a well-behaved client sends; its failure changes nothing.
            let _ = c.stream.shutdown().await;
        }
        SessionEnd::Done
    }

    /// The collector's verdict after a temporary failure of the current report (its
    /// `send_with_retries`): the wait before the next attempt, or giving up.
    fn retry(&self, spool: &Spool, asked: Option<Duration>) -> SessionEnd {
        let jittered = backoff(spool.attempts, MAX_RETRY_WAIT, random_unit());
        let wait = match asked {
            Some(asked) if asked > MAX_RETRY_WAIT => {
                return SessionEnd::Over(Fate::GaveUp {
                    left: spool.left(),
                    why: GaveUp::WaitTooLong,
                });
            }
            // Never sooner than the ingest asked.
            Some(asked) => asked.max(jittered),
            None => jittered,
        };
        if self.deadline.is_some_and(|d| Instant::now() + wait > d) {
            return SessionEnd::Over(Fate::GaveUp {
                left: spool.left(),
                why: GaveUp::BudgetSpent,
            });
        }
        SessionEnd::Retry(wait)
    }
}

/// One spooled report as it goes on the wire.
#[derive(Debug, Clone)]
struct Built {
    id: Uuid,
    json_len: usize,
    body: Vec<u8>,
}

/// Appliance `i`'s report for `day` (0 = the oldest in its spool) with report id `id`: the
/// JSON length and the gzip body. Without --prebuilt-bodies it is rebuilt for every attempt
/// rather than kept, so that 100,000 waiting appliances do not hold their bodies; the same id
/// makes it the same report to the ingest.
fn build_body(fleet: &Fleet, a: &Appliance, i: usize, id: Uuid, day: u64) -> anyhow::Result<Built> {
    let mut report = fleet.report(&a.serial, i as u64, day);
    report.report_id = id;
    let json = serde_json::to_vec(&report).context("serialise the report")?;
    Ok(Built {
        id,
        json_len: json.len(),
        body: crate::fleet::gzip_fast(&json)?,
    })
}

/// Every appliance's spool of `backlog` reports from `first_day` on, built on every core before
/// t0 (--prebuilt-bodies).
fn prebuild(
    fleet: &Fleet,
    appliances: &[Appliance],
    backlog: usize,
    first_day: u64,
) -> anyhow::Result<Vec<Vec<Built>>> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = appliances.len().div_ceil(threads).max(1);
    progress(format!(
        "building {} spooled bodies before t0 on {threads} threads",
        appliances.len().saturating_mul(backlog)
    ));
    let parts: Vec<anyhow::Result<Vec<Vec<Built>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = appliances
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, a)| {
                            let i = c * chunk + j;
                            (0..backlog)
                                .map(|d| {
                                    let mut b = build_body(
                                        fleet,
                                        a,
                                        i,
                                        Uuid::new_v4(),
                                        first_day + d as u64,
                                    )?;
                                    // Held until the end: only the bytes it needs.
                                    b.body.shrink_to_fit();
                                    Ok(b)
                                })
                                .collect::<anyhow::Result<Vec<Built>>>()
                        })
                        .collect::<anyhow::Result<Vec<Vec<Built>>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a body-building thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(appliances.len());
    for part in parts {
        all.extend(part?);
    }
    let bytes: usize = all.iter().flatten().map(|b| b.body.len()).sum();
    println!(
        "prebuilt bodies: {} built in {:.1} s before t0 (not part of the drain), {} MB held",
        all.iter().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64(),
        bytes / 1_000_000
    );
    Ok(all)
}

/// The collector's backoff: full jitter over `BACKOFF_BASE × 2^(n-1)`, capped at `max`, after
/// the `n`th failed attempt at a report.
fn backoff(failed_attempts: u32, max: Duration, unit: f64) -> Duration {
    let exponent = failed_attempts.saturating_sub(1).min(30);
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << exponent).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniformly distributed number in [0, 1), from a v4 UUID's random bits as the collector
/// draws it.
fn random_unit() -> f64 {
    let bits = (Uuid::new_v4().as_u128() as u64) & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

/// The ingest's highest sampled load.
#[derive(Debug, Clone, Copy, Default)]
struct Peaks {
    in_flight: usize,
    connections: usize,
}

/// Samples the in-process ingest's load for its peaks, and prints progress every few seconds,
/// until `stop`; then returns the peaks (none without an in-process ingest).
async fn watch(
    drain: Arc<Drain>,
    gauge: Option<IngestGauge>,
    total: u64,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<Peaks> {
    let n = drain.appliances.len() as u64;
    let live = &drain.live;
    let mut peaks = Peaks::default();
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_progress = drain.t0 + PROGRESS_EVERY;
    let mut last_acked = 0;
    loop {
        tokio::select! {
            _ = sample.tick() => {}
            _ = &mut stop => break,
        }
        let load = gauge.as_ref().map(IngestGauge::load);
        if let Some((in_flight, connections)) = load {
            peaks.in_flight = peaks.in_flight.max(in_flight);
            peaks.connections = peaks.connections.max(connections);
        }
        if Instant::now() < next_progress {
            continue;
        }
        next_progress += PROGRESS_EVERY;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let acked = get(&live.acked);
        let connected = (drain.concurrency - drain.slots.available_permits()) as u64;
        let (waiting, finished) = (get(&live.waiting), get(&live.finished));
        let queued = n.saturating_sub(finished + waiting + connected);
        let ingest = match load {
            Some((in_flight, connections)) => {
                format!("; ingest: {in_flight} in flight, {connections} connection slots taken")
            }
            None => String::new(),
        };
        progress(format!(
            "outage: {acked}/{total} reports acknowledged ({:.0}/s over the last {} s), 503s so far {}, other non-2xx {}, transport errors {}; appliances: {connected} connected, {queued} queued for a connection, {waiting} waiting to retry, {finished} done ({} gave up){ingest}; {:.0} s since t0",
            (acked - last_acked) as f64 / PROGRESS_EVERY.as_secs_f64(),
            PROGRESS_EVERY.as_secs(),
            get(&live.unavailable),
            get(&live.other),
            get(&live.transport),
            get(&live.gave_up),
            drain.t0.elapsed().as_secs_f64(),
        ));
        last_acked = acked;
    }
    gauge.map(|_| peaks)
}

/// CPU time so far: the machine's (from `/proc/stat`) and this process's threads' (from
/// `/proc/self/task/*/schedstat`, in nanoseconds), the fleet's threads apart.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    /// Clock ticks busy and in all, summed over every core.
    machine_busy: u64,
    machine_all: u64,
    cores: u64,
    fleet_ns: u64,
    rest_ns: u64,
}

impl CpuTimes {
    /// `None` where `/proc` cannot be read: the figures are a bonus, not the measurement.
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let total: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal; guest time is already in user.
        let at = |i: usize| total.get(i).copied().unwrap_or(0);
        let idle = at(3) + at(4);
        let all: u64 = (0..8).map(at).sum();
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let (mut fleet_ns, mut rest_ns) = (0, 0);
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let path = task.path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            else {
                continue;
            };
            if comm.trim_end().starts_with(FLEET_THREAD) {
                fleet_ns += ns;
            } else {
                rest_ns += ns;
            }
        }
        Some(CpuTimes {
            machine_busy: all - idle,
            machine_all: all,
            cores: cores as u64,
            fleet_ns,
            rest_ns,
        })
    }

    /// One line; `rest` names what runs in this process besides the appliances.
    fn describe(a: &Self, b: &Self, wall: Duration, rest_is: &str) -> String {
        let busy = b.machine_busy.saturating_sub(a.machine_busy) as f64;
        let all = b.machine_all.saturating_sub(a.machine_all).max(1) as f64;
        let capacity = wall.as_secs_f64() * b.cores as f64;
        let machine = busy / all * capacity;
        let secs = |ns: u64| ns as f64 / 1e9;
        let fleet = secs(b.fleet_ns.saturating_sub(a.fleet_ns));
        let rest = secs(b.rest_ns.saturating_sub(a.rest_ns));
        format!(
            "CPU from t0 to the end: the machine's {} cores {:.0} % busy ({machine:.0} s of {capacity:.0} s); simulated appliances {fleet:.1} s, {rest_is} {rest:.1} s, other processes (PostgreSQL, ...) {:.1} s",
            b.cores,
            100.0 * busy / all,
            (machine - fleet - rest).max(0.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_the_collectors() {
        let max = MAX_RETRY_WAIT;
        assert_eq!(backoff(1, max, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(3, max, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(20, max, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, max, 1.0), max);
        assert_eq!(backoff(4, max, 0.0), Duration::ZERO);
        assert!(
            (0..1000)
                .map(|_| random_unit())
                .all(|u| (0.0..1.0).contains(&u))
        );
    }
}
