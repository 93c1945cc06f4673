//! Acknowledge and mute (issue 15): an acknowledged condition resolves and stays quiet while it
//! holds still, and alerts again when it gets worse; a mute keeps an appliance's alerts shut
//! until its time; both need an admin token, are audited and shown on the appliance's page.

use chrono::{Duration, SubsecRound, Utc};
use phonehome_ingest::auth::Role;
use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_tests::bins::{IngestProcess, create_token};
use phonehome_tests::client::{get, request};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report, store_report};

const SERIAL: &str = "SN-ACK";

/// Stores a report `hours_ago` with the first drive's reallocated count at `reallocated`.
async fn report(storage: &Storage, hours_ago: i64, reallocated: u64) {
    let mut r = example_report(SERIAL);
    r.collected_at = (Utc::now() - Duration::hours(hours_ago)).trunc_subsecs(0);
    r.smart.errors.clear();
    r.smart.devices[0].reallocated_sectors = Some(reallocated);
    assert_eq!(store_report(storage, &r).await, InsertOutcome::Stored);
}

async fn firing(db: &TestDb) -> Vec<(i64, String, String)> {
    db.client()
        .await
        .query(
            "SELECT id, rule, value FROM alerts WHERE state = 'firing' ORDER BY rule",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_condition_is_quiet_until_worse_and_a_mute_until_its_time() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let admin = format!(
        "Bearer {}",
        create_token(db.url(), "ops-frank", Role::Admin).await
    );
    let post = |path: String, auth: String, body: &'static str| {
        let ops = ingest.ops_addr;
        async move {
            request(
                ops,
                "POST",
                &path,
                &[
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .await
            .expect("POST")
        }
    };

    report(&storage, 50, 8).await;
    report(&storage, 40, 24).await;
    let alerts = firing(&db).await;
    let (id, rule, value) = alerts
        .iter()
        .find(|a| a.1 == "disk_degrading")
        .cloned()
        .unwrap_or_else(|| panic!("disk_degrading fires on the rise: {alerts:?}"));
    assert!(value.contains("8 → 24"), "{value}");

    // A read token cannot acknowledge; an admin can.
    let read = format!("Bearer {}", ingest.read_token);
    let r = post(format!("/api/v1/alerts/{id}/ack"), read, "{}").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        firing(&db).await.iter().any(|a| a.0 == id),
        "nothing changed"
    );
    let r = post(
        format!("/api/v1/alerts/{id}/ack"),
        admin.clone(),
        r#"{"note": "known, replacement ordered"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!firing(&db).await.iter().any(|a| a.1 == rule), "resolved");
    let r = post(format!("/api/v1/alerts/{id}/ack"), admin.clone(), "{}").await;
    assert_eq!(r.status, 400, "a resolved alert: {}", r.body);

    // Holding still at 24: quiet. Rising again: it alerts again, with the new amount.
    report(&storage, 30, 24).await;
    assert!(!firing(&db).await.iter().any(|a| a.1 == rule));
    let page = get(ingest.ops_addr, &format!("/appliances/{SERIAL}"))
        .await
        .expect("page");
    assert!(
        page.body.contains("id=\"acks\"") && page.body.contains("known, replacement ordered"),
        "{}",
        page.body
    );
    report(&storage, 20, 30).await;
    let again = firing(&db).await;
    let back = again
        .iter()
        .find(|a| a.1 == rule)
        .unwrap_or_else(|| panic!("a further rise alerts again: {again:?}"));
    assert!(back.2.contains("24 → 30"), "{back:?}");
    let acks: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM alert_acks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        acks, 0,
        "the acknowledgement ended when the condition got worse"
    );

    // A mute of every rule: the firing alert resolves, a further rise opens nothing.
    let r = post(
        format!("/api/v1/appliances/{SERIAL}/mutes"),
        admin.clone(),
        r#"{"until": "2099-01-01T00:00:00Z", "note": "in the lab"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(answer["resolved_alerts"], 1, "{answer}");
    report(&storage, 10, 40).await;
    assert!(
        firing(&db).await.is_empty(),
        "muted: {:?}",
        firing(&db).await
    );
    let r = post(
        format!("/api/v1/appliances/{SERIAL}/mutes"),
        admin.clone(),
        r#"{"rule": "disk_exploding", "until": "2099-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(
        format!("/api/v1/appliances/{SERIAL}/mutes"),
        admin,
        r#"{"until": "2001-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "a mute in the past: {}", r.body);
    let page = get(ingest.ops_addr, &format!("/appliances/{SERIAL}"))
        .await
        .expect("page");
    assert!(
        page.body.contains("id=\"mute\"") && page.body.contains("in the lab"),
        "{}",
        page.body
    );
    let audited: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT action FROM audit_log WHERE actor = 'token:ops-frank' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited, ["acknowledge", "mute"]);
}
