//! Issue 17, item 5: the ingest through Debian's PgBouncer in transaction pooling mode, as large
//! installations run it. Two ingest replicas share one PgBouncer with fewer server connections
//! than they open client connections, so every transaction may land on another server
//! connection: the traps are prepared statements (Debian bookworm's PgBouncer 1.18 keeps none
//! between transactions; `db_transaction_pooler`) and session-level advisory locks (left behind
//! on a server connection others then use). Reports, dashboard pages, the API and the
//! maintenance loop (with its lock) must all work, each report stored once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use phonehome_schema::Report;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, TlsClient, get};
use phonehome_tests::fleet::report_for;
use phonehome_tests::pki::TestPki;
use phonehome_tests::scaleout::{BOUNCER_DB, PgBouncer};
use phonehome_tests::{TestDb, report_copies};

const APPLIANCES: usize = 24;
const REPORTS_EACH: usize = 5;
/// Server connections PgBouncer may open: far fewer than the two replicas' client connections.
const SERVER_CONNECTIONS: u32 = 4;

async fn ops(ingest: &IngestProcess, path: &str) -> Response {
    get(ingest.ops_addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Advisory locks held by server sessions that stayed outside any transaction for 200 ms: a
/// session-level lock taken through the pooler and left on its server connection. (Two looks:
/// `pg_locks` and `pg_stat_activity` are not read at one instant, and a session commits and
/// goes idle in between.)
async fn idle_advisory_locks(client: &tokio_postgres::Client, db: &str) -> usize {
    let look = || async {
        client
            .query(
                "SELECT a.pid, a.state_change::text, l.objid::bigint
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND a.datname = $1
                   AND a.state = 'idle'",
                &[&db],
            )
            .await
            .expect("read pg_locks")
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = look().await;
    if first.is_empty() {
        return 0;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = look().await;
    first.iter().filter(|held| second.contains(held)).count()
}

/// Appliance `base`'s next report: a new id, collected `minutes_ago`.
fn next_report(base: &Report, minutes_ago: usize) -> Report {
    let mut report = base.clone();
    report.report_id = uuid::Uuid::new_v4();
    report.collected_at =
        chrono::Utc::now() - chrono::Duration::minutes(i64::try_from(minutes_ago).unwrap_or(0));
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_pages_and_maintenance_work_through_pgbouncer_in_transaction_mode() {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(db.url(), SERVER_CONNECTIONS).await;
    let pki = TestPki::new();
    let through_bouncer = bouncer.url();
    let start = |name: &'static str| {
        let env = [
            ("PHONEHOME_DATABASE_URL", through_bouncer.as_str()),
            ("PHONEHOME_DB_TRANSACTION_POOLER", "true"),
            ("PHONEHOME_DB_POOL_SIZE", "8"),
            ("PHONEHOME_MAINTENANCE_INTERVAL_SECONDS", "1"),
            ("PHONEHOME_DASHBOARD_COUNTS_MAX_AGE_SECS", "0"),
            ("PHONEHOME_REPLICA_NAME", name),
        ];
        let (db, pki) = (&db, &pki);
        // The harness makes its read token directly; the ingest itself (migrations included)
        // goes through PgBouncer.
        async move { IngestProcess::start_with_url(db.url(), pki, &env).await }
    };
    let replicas = [start("bouncer-a").await, start("bouncer-b").await];
    let context = || {
        format!(
            "replica a:\n{}\nreplica b:\n{}\npgbouncer:\n{}",
            replicas[0].log(),
            replicas[1].log(),
            bouncer.log()
        )
    };
    let direct = db.client().await;

    // Reports from every appliance, alternating between the replicas, 12 at a time, while a
    // watcher looks for advisory locks left on idle server connections.
    let started = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(12));
    let mut sent = Vec::new();
    let fleet: Vec<(String, Report, TlsClient)> = (0..APPLIANCES)
        .map(|i| {
            let serial = format!("SN-BNC-{i:02}");
            let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(&serial)));
            (serial.clone(), report_for(&serial, i), client)
        })
        .collect();
    for round in 0..REPORTS_EACH {
        for (i, (serial, base, client)) in fleet.iter().enumerate() {
            let serial = serial.clone();
            let report = next_report(base, REPORTS_EACH - round);
            let addr = replicas[(i + round) % 2].report_addr;
            let client = client.clone();
            let body = serde_json::to_vec(&report).expect("json");
            sent.push((serial.clone(), report.report_id));
            let limit = limit.clone();
            posts.spawn(async move {
                let _slot = limit.acquire_owned().await.expect("semaphore");
                let answer = client
                    .post(
                        addr,
                        "/v1/reports",
                        &[("Content-Type", "application/json")],
                        &body,
                    )
                    .await;
                (serial, answer)
            });
        }
        // Rounds in order: an appliance's reports arrive one after another, as a collector's.
        let mut idle_locks = 0;
        while let Some(done) = posts.join_next().await {
            let (serial, answer) = done.expect("post task");
            let answer = answer.unwrap_or_else(|e| panic!("{serial}: no answer: {e}"));
            assert_eq!(
                answer.status,
                202,
                "{serial}: {}\n{}",
                answer.body,
                context()
            );
            idle_locks = idle_locks.max(idle_advisory_locks(&direct, db.name()).await);
        }
        assert_eq!(
            idle_locks,
            0,
            "an advisory lock was held by a session outside any transaction\n{}",
            context()
        );
    }
    eprintln!(
        "{} reports through PgBouncer in {:?}",
        sent.len(),
        started.elapsed()
    );
    for (serial, id) in &sent {
        assert_eq!(
            report_copies(&direct, serial, *id).await,
            1,
            "report {serial}/{id}"
        );
    }

    // The maintenance loop runs through PgBouncer: runs succeed, one replica at a time, and it
    // trains the report-body dictionary from the reports above.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = direct
            .query_one(
                "SELECT (SELECT count(*) FROM maintenance_runs
                         WHERE finished_at IS NOT NULL AND error IS NULL),
                        (SELECT count(*) FROM maintenance_runs WHERE error IS NOT NULL),
                        (SELECT count(*) FROM body_dictionaries)",
                &[],
            )
            .await
            .expect("read maintenance_runs");
        let (ok, failed, dictionaries): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(failed, 0, "a maintenance run failed\n{}", context());
        if ok >= 3 && dictionaries >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s: {ok} maintenance runs, {dictionaries} dictionaries\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let runs = direct
        .query(
            "SELECT replica, started_at, finished_at FROM maintenance_runs
             WHERE finished_at IS NOT NULL ORDER BY started_at",
            &[],
        )
        .await
        .expect("read maintenance_runs");
    for pair in runs.windows(2) {
        let (r1, end1): (String, chrono::DateTime<chrono::Utc>) = (pair[0].get(0), pair[0].get(2));
        let (r2, start2): (String, chrono::DateTime<chrono::Utc>) =
            (pair[1].get(0), pair[1].get(1));
        assert!(
            end1 <= start2,
            "maintenance runs overlap: {r1} until {end1}, {r2} from {start2}"
        );
    }
    assert_eq!(idle_advisory_locks(&direct, db.name()).await, 0);

    // A report stored once the replica has loaded the dictionary (within an interval of its
    // training, on whichever replica) is compressed with it; both replicas read it back, and
    // every page and list answers through PgBouncer.
    let (serial, base, client) = &fleet[0];
    let serial = serial.as_str();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = next_report(base, 0);
        let answer = client
            .post(
                replicas[0].report_addr,
                "/v1/reports",
                &[("Content-Type", "application/json")],
                &serde_json::to_vec(&report).expect("json"),
            )
            .await
            .expect("answered");
        assert_eq!(answer.status, 202, "{}\n{}", answer.body, context());
        let dictionary: Option<i16> = direct
            .query_one(
                "SELECT r.body_dictionary FROM reports r
                 JOIN appliances a ON a.id = r.appliance_id
                 WHERE a.serial = $1 AND r.report_id = $2",
                &[&serial, &report.report_id],
            )
            .await
            .expect("the report's row")
            .get(0);
        if dictionary.is_some() {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "reports are still stored without the dictionary\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for ingest in &replicas {
        let stored = ops(
            ingest,
            &format!("/api/v1/appliances/{serial}/reports/{}", report.report_id),
        )
        .await;
        assert_eq!(stored.status, 200, "{}\n{}", stored.body, context());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&stored.body).expect("json"),
            serde_json::to_value(&report).expect("json"),
            "the report as sent"
        );
        for path in [
            "/",
            "/appliances",
            "/appliances/SN-BNC-07",
            "/alerts",
            "/drives",
            "/versions",
            "/audit",
        ] {
            let page = ops(ingest, path).await;
            assert_eq!(page.status, 200, "{path}: {}\n{}", page.body, context());
        }
        let page = ops(ingest, "/appliances?q=SN-BNC-1").await;
        assert!(page.body.contains("SN-BNC-13"), "{}", page.body);
        let summary = ops(ingest, "/api/v1/summary").await;
        assert_eq!(summary.status, 200, "{}", summary.body);
        assert_eq!(summary.json()["appliances"], APPLIANCES as i64);
        let detail = ops(ingest, "/api/v1/appliances/SN-BNC-07?days=7").await;
        assert_eq!(detail.status, 200, "{}", detail.body);
        let ready = ops(ingest, "/readyz").await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        let metrics = ops(ingest, "/metrics").await;
        assert_eq!(metrics.status, 200);
        assert!(
            metrics
                .body
                .lines()
                .any(|l| l == format!("phonehome_appliances {APPLIANCES}")),
            "the fleet gauges read through PgBouncer"
        );
    }

    // It all went through PgBouncer, which multiplexed more clients than server connections.
    let stats: Vec<HashMap<String, String>> = bouncer.show("SHOW STATS").await;
    let ours = stats
        .iter()
        .find(|row| row.get("database").map(String::as_str) == Some(BOUNCER_DB))
        .unwrap_or_else(|| panic!("no statistics for {BOUNCER_DB}: {stats:?}"));
    let transactions: u64 = ours
        .get("total_xact_count")
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(
        transactions > (APPLIANCES * REPORTS_EACH) as u64,
        "{transactions} transactions through PgBouncer"
    );
    let clients = bouncer
        .show("SHOW CLIENTS")
        .await
        .iter()
        .filter(|row| row.get("database").map(String::as_str) == Some(BOUNCER_DB))
        .count();
    let servers = bouncer
        .show("SHOW SERVERS")
        .await
        .iter()
        .filter(|row| row.get("database").map(String::as_str) == Some(BOUNCER_DB))
        .count();
    assert!(
        servers <= SERVER_CONNECTIONS as usize && clients > servers,
        "{clients} clients on {servers} server connections"
    );
    eprintln!(
        "{transactions} transactions; {clients} client connections on {servers} server connections"
    );
    for ingest in &replicas {
        let log = ingest.log();
        assert!(
            !log.contains("prepared statement") && !log.contains("panicked"),
            "{log}"
        );
    }
}
