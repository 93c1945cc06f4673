//! Issue 17, item 4: with `read_database_url` the dashboard, the JSON API and `/metrics`' fleet
//! counts read from a streaming replica, while reports, alert evaluation, tokens and
//! `/healthz` stay on the primary. Two real PostgreSQL clusters on this machine: a primary and a
//! hot standby cloned from it with `pg_basebackup -R`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, TlsClient, get};
use phonehome_tests::pki::TestPki;
use phonehome_tests::scaleout::StreamingPair;
use phonehome_tests::{example_report, report_copies};

const DB: &str = "phonehome";

/// The three appliances' clients, each with its own certificate.
struct Fleet(HashMap<&'static str, TlsClient>);

impl Fleet {
    fn new(pki: &TestPki) -> Self {
        Fleet(
            ["SN-REPL-1", "SN-REPL-2", "SN-REPL-3"]
                .into_iter()
                .map(|serial| {
                    let pair = pki.appliance(serial);
                    (serial, TlsClient::new(&pki.ca_cert(), Some(&pair)))
                })
                .collect(),
        )
    }
}

/// Posts a fresh example report for `serial` (with that appliance's certificate).
async fn post(fleet: &Fleet, ingest: &IngestProcess, serial: &str) -> (uuid::Uuid, Response) {
    let client = fleet
        .0
        .get(serial)
        .unwrap_or_else(|| panic!("no certificate for {serial}"));
    let report = example_report(serial);
    let body = serde_json::to_vec(&report).expect("json");
    let answer = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
        .unwrap_or_else(|e| panic!("post a report for {serial}: {e}"));
    (report.report_id, answer)
}

async fn ops(ingest: &IngestProcess, path: &str) -> Response {
    get(ingest.ops_addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The number of appliances the summary API counts (read side).
async fn summary_appliances(ingest: &IngestProcess) -> i64 {
    let r = ops(ingest, "/api/v1/summary").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["appliances"].as_i64().expect("appliances count")
}

/// A `/metrics` sample, given as exposed.
async fn metric(ingest: &IngestProcess, series: &str) -> Option<f64> {
    ingest.metric(series).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_read_from_the_replica_and_reports_do_not_need_it() {
    let pair = StreamingPair::start(DB).await;
    let pki = TestPki::new();
    let fleet = Fleet::new(&pki);
    let standby_url = pair.standby_url(DB);
    let ingest = IngestProcess::start_with_url(
        &pair.primary_url(DB),
        &pki,
        &[
            ("PHONEHOME_READ_DATABASE_URL", standby_url.as_str()),
            // Fleet counts as of each view, so the summary tells what the replica holds now.
            ("PHONEHOME_DASHBOARD_COUNTS_MAX_AGE_SECS", "0"),
        ],
    )
    .await;
    let primary = {
        let (client, conn) = tokio_postgres::connect(&pair.primary_url(DB), tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
        tokio::spawn(conn);
        client
    };

    // A report is stored on the primary and, once replayed, shown from the replica.
    let (first_id, answer) = post(&fleet, &ingest, "SN-REPL-1").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    pair.wait_replayed(DB).await;
    let page = ops(&ingest, "/appliances/SN-REPL-1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("SN-REPL-1"), "{}", page.body);
    let api = ops(&ingest, "/api/v1/appliances/SN-REPL-1").await;
    assert_eq!(api.status, 200, "{}", api.body);
    let stored = ops(
        &ingest,
        &format!("/api/v1/appliances/SN-REPL-1/reports/{first_id}"),
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.json()["report_id"], first_id.to_string());
    assert_eq!(summary_appliances(&ingest).await, 1);
    let ready = ops(&ingest, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready\n"),
        "a replica that answers is not worth a word"
    );
    assert_eq!(
        metric(&ingest, "phonehome_read_database_up").await,
        Some(1.0)
    );
    let reading: i64 = pair
        .standby_client(DB)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'phonehome-ingest' AND datname = $1",
            &[&DB],
        )
        .await
        .expect("the standby's sessions")
        .get(0);
    assert!(reading > 0, "the ingest holds no connection to the replica");

    // With replay paused, what the primary commits is not on the replica: the report path
    // takes a new appliance's report (202, on the primary), and the pages, the API and the
    // fleet counts do not know it until the replica has replayed it. So they read the replica.
    pair.pause_replay(DB, true).await;
    let (second_id, answer) = post(&fleet, &ingest, "SN-REPL-2").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(report_copies(&primary, "SN-REPL-2", second_id).await, 1);
    let unknown = ops(&ingest, "/api/v1/appliances/SN-REPL-2").await;
    assert_eq!(
        unknown.status, 404,
        "the replica has not replayed it yet: {}",
        unknown.body
    );
    let list = ops(&ingest, "/appliances").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("SN-REPL-1") && !list.body.contains("SN-REPL-2"));
    assert_eq!(summary_appliances(&ingest).await, 1);
    pair.pause_replay(DB, false).await;
    pair.wait_replayed(DB).await;
    let known = ops(&ingest, "/api/v1/appliances/SN-REPL-2").await;
    assert_eq!(known.status, 200, "after replay: {}", known.body);
    let list = ops(&ingest, "/appliances").await;
    assert!(list.body.contains("SN-REPL-2"), "{}", list.body);
    assert_eq!(summary_appliances(&ingest).await, 2);

    // The replica goes down: reports are still taken, /healthz (the primary) stays 200 and
    // /readyz stays 200 (a balancer must not take intake away for it) but says so; pages and
    // the read API answer 503 with Retry-After; /metrics still answers and says it.
    pair.stop_standby();
    let mut while_down = Vec::new();
    for serial in ["SN-REPL-1", "SN-REPL-3"] {
        let (id, answer) = post(&fleet, &ingest, serial).await;
        assert_eq!(
            answer.status, 202,
            "the report path does not need the replica: {}",
            answer.body
        );
        assert_eq!(report_copies(&primary, serial, id).await, 1);
        while_down.push((serial, id));
    }
    let health = ops(&ingest, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let started = Instant::now();
    let ready = ops(&ingest, "/readyz").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "/readyz took {:?} with the replica down",
        started.elapsed()
    );
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        ready
            .body
            .contains("read database (read_database_url) unavailable"),
        "{}",
        ready.body
    );
    let page = ops(&ingest, "/").await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.body.contains("cannot be read right now"),
        "{}",
        page.body
    );
    assert!(page.header("Retry-After").is_some());
    let page = ops(&ingest, "/appliances/SN-REPL-1").await;
    assert_eq!(page.status, 503, "{}", page.body);
    for path in ["/api/v1/summary", "/api/v1/appliances/SN-REPL-1"] {
        let api = ops(&ingest, path).await;
        assert_eq!(api.status, 503, "{path}: {}", api.body);
        assert_eq!(api.json()["error"], "unavailable", "{path}: {}", api.body);
        assert!(api.header("Retry-After").is_some(), "{path}");
    }
    assert_eq!(
        metric(&ingest, "phonehome_read_database_up").await,
        Some(0.0)
    );

    // Back up, the replica catches up and the pages show what arrived while it was away.
    pair.start_standby();
    pair.wait_replayed(DB).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = ops(&ingest, "/appliances/SN-REPL-3").await;
        if page.status == 200 {
            assert!(page.body.contains("SN-REPL-3"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pages did not come back with the replica: {} {}",
            page.status,
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (serial, id) in while_down {
        let stored = ops(
            &ingest,
            &format!("/api/v1/appliances/{serial}/reports/{id}"),
        )
        .await;
        assert_eq!(stored.status, 200, "{serial}: {}", stored.body);
    }
    assert_eq!(summary_appliances(&ingest).await, 3);
    let ready = ops(&ingest, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(
        metric(&ingest, "phonehome_read_database_up").await,
        Some(1.0)
    );
    assert!(
        !ingest.log().contains("panicked"),
        "the ingest panicked:\n{}",
        ingest.log()
    );
}
