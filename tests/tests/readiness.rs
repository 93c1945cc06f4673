//! `/readyz` says whether this replica can store reports, not only whether PostgreSQL answers
//! (issue 13, "supervised work"): a database that answers `SELECT 1` but refuses writes (a
//! failover left it read-only; out of disk looks the same to the ingest) takes the replica out
//! of its balancer, reports get 503 so collectors keep them, and all comes back with the
//! database.

use std::time::Duration;

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{TlsClient, get};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

/// Sets the database read-only (or back) and ends its sessions, so the pool reconnects into
/// the new setting.
async fn read_only(db: &TestDb, on: bool) {
    let admin = db.admin_client().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {}",
            db.name(),
            if on { "on" } else { "off" }
        ))
        .await
        .expect("alter database");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name()],
        )
        .await
        .expect("end sessions");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_cannot_store_makes_the_replica_unready_until_it_can() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-READY")));
    let post = |serial: &'static str| {
        let client = &client;
        let ingest = &ingest;
        async move {
            let body = serde_json::to_vec(&example_report(serial)).expect("json");
            client
                .post(
                    ingest.report_addr,
                    "/v1/reports",
                    &[("Content-Type", "application/json")],
                    &body,
                )
                .await
                .expect("answered")
        }
    };
    assert_eq!(post("SN-READY").await.status, 202);
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);

    read_only(&db, true).await;
    // The first report after the change may find a pooled session that has just been ended.
    let mut refused = post("SN-READY").await;
    for _ in 0..5 {
        if refused.status == 503 && refused.body.contains("read-only") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        refused = post("SN-READY").await;
    }
    assert_eq!(
        refused.status, 503,
        "kept by the collector: {}",
        refused.body
    );
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("cannot store"), "{}", ready.body);
    let metrics = get(ingest.ops_addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.body.contains("phonehome_writes_failing 1"),
        "{}",
        metrics.body
    );

    read_only(&db, false).await;
    let mut stored = post("SN-READY").await;
    for _ in 0..10 {
        if stored.status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stored = post("SN-READY").await;
    }
    assert_eq!(stored.status, 202, "{}", stored.body);
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
}
