//! Bounded work in flight: when the ingest is at capacity it answers 503 with a jittered
//! Retry-After at once, instead of queueing without bound, and takes reports again as soon as
//! capacity frees up.

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

fn body(serial: &str) -> Vec<u8> {
    serde_json::to_vec(&example_report(serial)).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn at_capacity_reports_get_503_with_retry_after_and_nothing_queues() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    // The slow post below is held on purpose for several seconds: no minimum body rate, so
    // only admission is under test here (abuse.rs tests the body's pace).
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_MAX_IN_FLIGHT", "1"),
            ("PHONEHOME_MIN_BODY_BYTES_PER_SEC", "0"),
        ],
    )
    .await;
    let a = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-SLOW")));
    let b = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-FAST")));

    // A slow appliance holds the only slot: headers and half its body are in.
    let slow = body("SN-SLOW");
    let half = slow.len() / 2;
    let held = a
        .start_post(ingest.report_addr, "/v1/reports", &slow, half)
        .await
        .expect("start");
    // The server admits it once the headers arrive; give it that moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let mut waits = Vec::new();
    for _ in 0..5 {
        let r = b
            .post(
                ingest.report_addr,
                "/v1/reports",
                &[("Content-Type", "application/json")],
                &body("SN-FAST"),
            )
            .await
            .expect("response");
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "saturated");
        let wait: u64 = r
            .header("Retry-After")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((15..=45).contains(&wait), "Retry-After {wait}");
        waits.push(wait);
    }
    assert_eq!(db.count("reports").await, 0, "nothing refused was stored");
    // A load balancer sees it too, and sends new connections elsewhere.
    let ready = phonehome_tests::client::get(ingest.ops_addr, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("saturated"), "{}", ready.body);

    // The slow report completes; capacity is back for the others.
    let done = held
        .finish(slow.get(half..).unwrap_or_default())
        .await
        .expect("slow response");
    assert_eq!(done.status, 202, "{}", done.body);
    let r = b
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body("SN-FAST"),
        )
        .await
        .expect("response");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(db.count("reports").await, 2);
    let ready = phonehome_tests::client::get(ingest.ops_addr, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"saturated\"}")
            .await,
        Some(5.0)
    );
    // Spread: five refusals do not all name the same second (a 1 in 31^4 chance of a false alarm).
    waits.dedup();
    assert!(waits.len() > 1, "Retry-After is not jittered: {waits:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_limit_new_connections_wait_until_one_closes() {
    use std::time::Duration;
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(&db, &pki, &[("PHONEHOME_MAX_CONNECTIONS", "1")]).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-CONN")));

    let first = client
        .handshake(ingest.report_addr, Duration::from_secs(10))
        .await
        .expect("first");
    // The only slot is taken: the next handshake is not served (it waits in the backlog).
    let waiting = client
        .handshake(ingest.report_addr, Duration::from_secs(1))
        .await;
    assert!(
        waiting.is_err(),
        "a second connection was served beyond max_connections"
    );

    // Once the first connection closes, new ones are served again.
    drop(first);
    let mut served = false;
    for _ in 0..20 {
        let r = client
            .post(
                ingest.report_addr,
                "/v1/reports",
                &[("Content-Type", "application/json")],
                &body("SN-CONN"),
            )
            .await;
        if let Ok(r) = r {
            assert_eq!(r.status, 202, "{}", r.body);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "the slot never came back:\n{}", ingest.log());
    assert_eq!(db.count("reports").await, 1);
}
