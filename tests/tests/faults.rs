//! Faults under load: PostgreSQL crashing and coming back while reports pour in, and two ingest
//! replicas sharing one database. What must hold either way: every report answered 2xx is
//! stored exactly once, every other one was told to retry, and a retry stores it exactly once,
//! without restarting the ingest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, TlsClient};
use phonehome_tests::cluster::RestartableCluster;
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report, report_copies};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Longer than the ingest should ever take (its pool waits at most 5 s for a connection and
/// 5 s to open one), short enough that a hung request fails the test rather than the CI job.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Concurrent senders in the PostgreSQL restart test, each for four appliances of its own.
const SENDERS: usize = 16;

/// How long that test keeps the load up before the crash and after PostgreSQL is back.
const LOAD_AROUND_OUTAGE: Duration = Duration::from_millis(1500);

/// One simulated appliance: its serial, its own machine identifiers, and a client presenting
/// its own certificate.
#[derive(Debug, Clone)]
struct Appliance {
    serial: String,
    system_uuid: uuid::Uuid,
    machine_id: String,
    client: TlsClient,
}

fn appliances(pki: &TestPki, prefix: &str, n: usize) -> Vec<Appliance> {
    (0..n)
        .map(|i| {
            let serial = format!("{prefix}-{i:03}");
            let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(&serial)));
            // Distinct machines: with the example's identifiers every appliance would look like
            // a clone of every other and each report would record identity events for all.
            Appliance {
                serial,
                system_uuid: uuid::Uuid::new_v4(),
                machine_id: uuid::Uuid::new_v4().simple().to_string(),
                client,
            }
        })
        .collect()
}

/// One report as sent: retries send exactly these bytes again, as a collector's spool does.
#[derive(Debug, Clone)]
struct Sent {
    serial: String,
    report_id: uuid::Uuid,
    body: Arc<Vec<u8>>,
}

/// Makes reports that differ in id and in `collected_at`, as a day's worth from a fleet would.
#[derive(Debug)]
struct ReportMaker {
    base: chrono::DateTime<chrono::Utc>,
    seq: AtomicI64,
}

impl ReportMaker {
    fn new() -> Self {
        ReportMaker {
            // An hour ago: plausible to the ingest, and a millisecond per report stays in the past.
            base: chrono::Utc::now() - chrono::Duration::hours(1),
            seq: AtomicI64::new(0),
        }
    }

    fn make(&self, appliance: &Appliance) -> Sent {
        let mut r = example_report(&appliance.serial);
        r.identity.system_uuid = Some(appliance.system_uuid);
        r.identity.machine_id = Some(appliance.machine_id.clone());
        r.collected_at =
            self.base + chrono::Duration::milliseconds(self.seq.fetch_add(1, Ordering::Relaxed));
        Sent {
            serial: appliance.serial.clone(),
            report_id: r.report_id,
            body: Arc::new(serde_json::to_vec(&r).expect("serialise report")),
        }
    }
}

/// POSTs a report; `Err` when no HTTP answer came (transport error or no answer in time).
async fn post(client: &TlsClient, addr: SocketAddr, body: &[u8]) -> Result<Response, String> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.post(addr, "/v1/reports", &[JSON], body),
    )
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

fn is_2xx(answer: &Result<Response, String>) -> bool {
    matches!(answer, Ok(r) if (200..300).contains(&r.status))
}

/// Checks what the database holds against everything that was sent: each report once, nothing
/// else, and each appliance's `report_count` equal to the reports it sent.
async fn assert_each_stored_once(db: &tokio_postgres::Client, sent: &[Sent]) {
    let mut per_appliance: HashMap<&str, i64> = HashMap::new();
    for s in sent {
        let copies = report_copies(db, &s.serial, s.report_id).await;
        assert_eq!(
            copies, 1,
            "report {}/{} is stored {copies} times",
            s.serial, s.report_id
        );
        *per_appliance.entry(&s.serial).or_default() += 1;
    }
    let total: i64 = db
        .query_one("SELECT count(*) FROM reports", &[])
        .await
        .expect("count reports")
        .get(0);
    assert_eq!(
        total,
        sent.len() as i64,
        "rows in reports against distinct reports sent"
    );
    for (serial, expected) in per_appliance {
        let count: i64 = db
            .query_one(
                "SELECT report_count FROM appliances WHERE serial = $1",
                &[&serial],
            )
            .await
            .unwrap_or_else(|e| panic!("appliance {serial}: {e}"))
            .get(0);
        assert_eq!(count, expected, "report_count of {serial}");
    }
}

/// What happened to one request during the load.
#[derive(Debug)]
struct Outcome {
    sent: Sent,
    sent_at: Instant,
    answered_at: Instant,
    answer: Result<Response, String>,
}

/// Sends a fresh report from each of `fleet` in turn until `stop`, recording every outcome.
async fn send_until_stopped(
    addr: SocketAddr,
    fleet: Vec<Appliance>,
    maker: Arc<ReportMaker>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) {
    for a in fleet.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sent = maker.make(a);
        let sent_at = Instant::now();
        let answer = post(&a.client, addr, &sent.body).await;
        let refused = !is_2xx(&answer);
        outcomes.lock().expect("outcomes").push(Outcome {
            sent,
            sent_at,
            answered_at: Instant::now(),
            answer,
        });
        if refused {
            // A real collector would wait out Retry-After (15 s or more); a short pause keeps
            // refusals coming while leaving the CPU to PostgreSQL's recovery on this small
            // machine, and keeps the number of reports to re-send afterwards modest.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until `enough` holds of the outcomes so far; panics with `what` after `within`.
async fn wait_for(
    outcomes: &Mutex<Vec<Outcome>>,
    within: Duration,
    what: &str,
    context: impl Fn() -> String,
    enough: impl Fn(&[Outcome]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        if enough(&outcomes.lock().expect("outcomes")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_under_load() {
    // Our own cluster: the shared one serves other tests running in parallel.
    let pg = RestartableCluster::start();
    let url = pg.create_database("phonehome").await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with_url(&url, &pki, &[]).await;
    let addr = ingest.report_addr;
    let fleet = appliances(&pki, "SN-FAULT", 4 * SENDERS);

    let maker = Arc::new(ReportMaker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let senders: Vec<_> = fleet
        .chunks(4)
        .map(|chunk| {
            tokio::spawn(send_until_stopped(
                addr,
                chunk.to_vec(),
                maker.clone(),
                stop.clone(),
                outcomes.clone(),
            ))
        })
        .collect();
    let context = || {
        format!(
            "ingest log:\n{}\nPostgreSQL log:\n{}",
            ingest.log(),
            pg.log()
        )
    };

    // Load before the crash: long enough that requests are in flight when PostgreSQL goes.
    let load_started = Instant::now();
    wait_for(
        &outcomes,
        Duration::from_secs(20),
        "fewer than 20 reports stored before the crash",
        context,
        |o| {
            load_started.elapsed() >= LOAD_AROUND_OUTAGE
                && o.iter().filter(|o| is_2xx(&o.answer)).count() >= 20
        },
    )
    .await;

    // Crash PostgreSQL and keep it away long enough for many requests to find it gone: first
    // refusing connections, then (while it syncs the data directory and replays WAL) answering
    // "the database system is starting up".
    let down_at = Instant::now();
    tokio::task::block_in_place(|| pg.crash());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| pg.start_again());
    let up_at = Instant::now();

    // The same ingest process, never restarted, must take reports again.
    wait_for(
        &outcomes,
        Duration::from_secs(30),
        "the ingest did not store 20 reports sent after PostgreSQL was back",
        context,
        |o| {
            up_at.elapsed() >= LOAD_AROUND_OUTAGE
                && o.iter()
                    .filter(|o| o.sent_at >= up_at && is_2xx(&o.answer))
                    .count()
                    >= 20
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender task");
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));

    // Every request got an HTTP answer: the ingest does not drop connections when its
    // database goes away, it answers them.
    let lost: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().err())
        .collect();
    assert!(
        lost.is_empty(),
        "{} requests got no HTTP answer, e.g. {:?}\n{}",
        lost.len(),
        lost.first(),
        context()
    );
    let answers: Vec<(&Outcome, &Response)> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().ok().map(|r| (o, r)))
        .collect();
    // Each report went out once during the load, so every 2xx is a first store; every refusal
    // is "retry later" (a 500 or a 4xx would tell a collector to give up on a good report).
    for (o, r) in &answers {
        if (200..300).contains(&r.status) {
            assert_eq!(r.status, 202, "{}", r.body);
            assert_eq!(r.json()["status"], "stored", "{}", r.body);
        } else {
            assert_eq!(
                r.status,
                503,
                "report {}/{} was refused with {} instead of 503: {}\n{}",
                o.sent.serial,
                o.sent.report_id,
                r.status,
                r.body,
                context()
            );
            assert!(
                r.header("Retry-After").is_some(),
                "503 without Retry-After: {}",
                r.body
            );
            assert!(
                o.answered_at >= down_at,
                "a 503 while PostgreSQL was up: {}",
                r.body
            );
        }
    }
    let ok_before = answers
        .iter()
        .filter(|(o, r)| r.status == 202 && o.answered_at < down_at)
        .count();
    let ok_after = answers
        .iter()
        .filter(|(o, r)| r.status == 202 && o.sent_at >= up_at)
        .count();
    let refused: Vec<&Sent> = answers
        .iter()
        .filter(|(_, r)| r.status == 503)
        .map(|(o, _)| &o.sent)
        .collect();
    assert!(ok_before > 0, "no report stored before the crash");
    assert!(ok_after > 0, "no report stored after the restart");
    assert!(
        !refused.is_empty(),
        "no request saw PostgreSQL away: the test did not test the outage"
    );
    let last_refusal = answers
        .iter()
        .filter(|(_, r)| r.status == 503)
        .map(|(o, _)| o.answered_at)
        .max()
        .unwrap_or(up_at);
    let unavailable = answers
        .iter()
        .filter(|(_, r)| r.status == 503 && r.json()["error"] == "unavailable")
        .count();
    eprintln!(
        "load: {} requests, {ok_before} stored before the crash, {} refused with 503 ({unavailable} \
         as unavailable), {ok_after} stored after the restart; PostgreSQL was away {:?}; last \
         503 answered {:?} after it was back",
        answers.len(),
        refused.len(),
        up_at - down_at,
        last_refusal.saturating_duration_since(up_at),
    );

    // What was acknowledged survived the crash, once; what was refused may or may not have
    // committed (the answer can be lost after the commit), but never twice.
    let client = pg.client("phonehome").await;
    let mut committed_before_refusal = Vec::new();
    for (o, r) in &answers {
        let copies = report_copies(&client, &o.sent.serial, o.sent.report_id).await;
        if r.status == 202 {
            assert_eq!(
                copies, 1,
                "acknowledged report {}/{} is stored {copies} times",
                o.sent.serial, o.sent.report_id
            );
        } else {
            assert!(
                copies <= 1,
                "refused report {}/{} is stored {copies} times",
                o.sent.serial,
                o.sent.report_id
            );
            committed_before_refusal.push(copies == 1);
        }
    }

    // Every refused report, sent again as a collector would, is taken by the same process.
    let retry_deadline = Instant::now() + Duration::from_secs(30);
    let by_serial: Arc<HashMap<String, Appliance>> = Arc::new(
        fleet
            .iter()
            .map(|a| (a.serial.clone(), a.clone()))
            .collect(),
    );
    let to_retry: Vec<(Sent, bool)> = refused
        .iter()
        .map(|s| (*s).clone())
        .zip(committed_before_refusal)
        .collect();
    let retriers: Vec<_> = to_retry
        .chunks(to_retry.len().div_ceil(SENDERS))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let by_serial = by_serial.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for (sent, was_committed) in chunk {
                    let client = &by_serial[&sent.serial].client;
                    let answer = loop {
                        match post(client, addr, &sent.body).await {
                            Ok(r) if r.status == 503 && Instant::now() < retry_deadline => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            answer => break answer,
                        }
                    };
                    answered.push((sent, was_committed, answer));
                }
                answered
            })
        })
        .collect();
    let mut duplicates = 0;
    for t in retriers {
        for (sent, was_committed, answer) in t.await.expect("retry task") {
            let r = answer.unwrap_or_else(|e| {
                panic!(
                    "retry of {}/{} got no answer: {e}\n{}",
                    sent.serial,
                    sent.report_id,
                    context()
                )
            });
            // A report that did commit before its 503 is a duplicate now; one that did not is
            // stored now.
            let (status, word) = if was_committed {
                duplicates += 1;
                (200, "duplicate")
            } else {
                (202, "stored")
            };
            assert_eq!(
                r.status,
                status,
                "retry of {}/{} (committed before its 503: {was_committed}): {}\n{}",
                sent.serial,
                sent.report_id,
                r.body,
                context()
            );
            assert_eq!(r.json()["status"], word, "{}", r.body);
        }
    }
    eprintln!(
        "retries: {} reports re-sent, {duplicates} of them had committed before their 503",
        refused.len()
    );

    let all: Vec<Sent> = answers.iter().map(|(o, _)| o.sent.clone()).collect();
    assert_each_stored_once(&client, &all).await;

    let health = phonehome_tests::client::get(ingest.ops_addr, "/healthz")
        .await
        .expect("GET /healthz");
    assert_eq!(health.status, 200, "{}\n{}", health.body, context());
}

/// One replica's answer to one report.
#[derive(Debug)]
struct ReplicaAnswer {
    replica: char,
    answer: Result<Response, String>,
}

/// Sends `sent` to both replicas so that both requests complete at the same moment: everything
/// but the last byte goes out first, then the last bytes together.
async fn race(client: &TlsClient, a: SocketAddr, b: SocketAddr, sent: &Sent) -> Vec<ReplicaAnswer> {
    let body = &sent.body[..];
    let (head, last) = body.split_at(body.len() - 1);
    let (pa, pb) = tokio::join!(
        client.start_post(a, "/v1/reports", body, head.len()),
        client.start_post(b, "/v1/reports", body, head.len()),
    );
    let finish = |p: Result<phonehome_tests::client::PartialPost, String>| async move {
        match p {
            Ok(p) => tokio::time::timeout(REQUEST_TIMEOUT, p.finish(last))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}"))),
            Err(e) => Err(e),
        }
    };
    let (ra, rb) = tokio::join!(finish(pa), finish(pb));
    vec![
        ReplicaAnswer {
            replica: 'A',
            answer: ra,
        },
        ReplicaAnswer {
            replica: 'B',
            answer: rb,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_database() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    // Maintenance every second, so a few seconds of load see several intervals.
    let env = [("PHONEHOME_MAINTENANCE_INTERVAL_SECONDS", "1")];
    let replicas_started = Instant::now();
    let a = IngestProcess::start_with(&db, &pki, &env).await;
    let b = IngestProcess::start_with(&db, &pki, &env).await;
    let (addr_a, addr_b) = (a.report_addr, b.report_addr);
    let fleet = appliances(&pki, "SN-REPLICA", 24);
    let maker = Arc::new(ReportMaker::new());
    let load_ends = Instant::now() + Duration::from_secs(5);

    // Each sender: one report in three raced to both replicas, the others to one replica each.
    let senders: Vec<_> = fleet
        .chunks(3)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let maker = maker.clone();
            tokio::spawn(async move {
                let mut results: Vec<(Sent, Vec<ReplicaAnswer>)> = Vec::new();
                for (i, appliance) in chunk.iter().cycle().enumerate() {
                    if Instant::now() >= load_ends {
                        break;
                    }
                    let sent = maker.make(appliance);
                    let answers = match i % 3 {
                        0 => race(&appliance.client, addr_a, addr_b, &sent).await,
                        1 => vec![ReplicaAnswer {
                            replica: 'A',
                            answer: post(&appliance.client, addr_a, &sent.body).await,
                        }],
                        _ => vec![ReplicaAnswer {
                            replica: 'B',
                            answer: post(&appliance.client, addr_b, &sent.body).await,
                        }],
                    };
                    results.push((sent, answers));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for s in senders {
        results.extend(s.await.expect("sender task"));
    }
    let context = || format!("replica A log:\n{}\nreplica B log:\n{}", a.log(), b.log());

    // Racing copies of one report: exactly one replica stores it (202), the other finds it
    // there (200 duplicate); a report sent once is stored (202).
    let mut raced = 0;
    for (sent, answers) in &results {
        let mut stored = 0;
        for ra in answers {
            let r = ra.answer.as_ref().unwrap_or_else(|e| {
                panic!(
                    "replica {} gave no answer for {}/{}: {e}\n{}",
                    ra.replica,
                    sent.serial,
                    sent.report_id,
                    context()
                )
            });
            match (r.status, r.json()["status"].as_str()) {
                (202, Some("stored")) => stored += 1,
                (200, Some("duplicate")) if answers.len() == 2 => {}
                _ => panic!(
                    "replica {} answered {} for {}/{}: {}\n{}",
                    ra.replica,
                    r.status,
                    sent.serial,
                    sent.report_id,
                    r.body,
                    context()
                ),
            }
        }
        assert_eq!(
            stored, 1,
            "report {}/{} acknowledged as stored by {stored} replicas",
            sent.serial, sent.report_id
        );
        if answers.len() == 2 {
            raced += 1;
        }
    }
    assert!(raced >= 10, "only {raced} reports were raced");
    eprintln!(
        "load: {} reports, {raced} of them raced to both replicas",
        results.len()
    );
    let sent: Vec<Sent> = results.iter().map(|(s, _)| s.clone()).collect();
    let client = db.client().await;
    assert_each_stored_once(&client, &sent).await;

    // Maintenance: one replica at a time, at most once per interval between them.
    let rows = client
        .query(
            "SELECT replica, started_at, finished_at FROM maintenance_runs ORDER BY started_at",
            &[],
        )
        .await
        .unwrap_or_else(|e| {
            // tokio-postgres' Display says only "db error"; the server's message is the cause.
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            panic!("read maintenance_runs: {why}\n{}", context())
        });
    let elapsed = replicas_started.elapsed();
    type Run = (
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let runs: Vec<Run> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        runs.len() >= 2,
        "{} maintenance runs in {elapsed:?} with a 1 s interval: {runs:?}\n{}",
        runs.len(),
        context()
    );
    assert!(
        runs.len() as u64 <= elapsed.as_secs() + 1,
        "{} maintenance runs in {elapsed:?} with a 1 s interval: both replicas ran in the same \
         interval: {runs:?}",
        runs.len()
    );
    for pair in runs.windows(2) {
        let [(r1, start1, end1), (r2, start2, _)] = pair else {
            unreachable!("windows(2) yields pairs")
        };
        // Only the newest run may still be going.
        let end1 = end1.unwrap_or_else(|| {
            panic!("maintenance run of {r1} at {start1} never finished, yet {r2} ran after it")
        });
        assert!(
            end1 <= *start2,
            "maintenance runs overlap: {r1} {start1}..{end1} and {r2} from {start2}"
        );
        assert!(
            *start2 - *start1 >= chrono::Duration::milliseconds(900),
            "maintenance ran twice in one interval: {r1} at {start1}, {r2} at {start2}"
        );
    }
}
