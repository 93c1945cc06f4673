//! Routing labels (issue 15): set through the authenticated API or the command line, audited,
//! shown on the appliance's page, and the appliances list filters by them. (That every
//! Alertmanager alert carries them is in `alertmanager.rs`.)

use phonehome_ingest::auth::Role;
use phonehome_tests::bins::{IngestProcess, create_token};
use phonehome_tests::client::{get, request};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report, store_report};

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_set_by_admins_audited_shown_and_filter_the_fleet() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let storage = phonehome_ingest::storage::Storage::connect(db.url(), 2).expect("storage");
    for serial in ["SN-ACME-1", "SN-ACME-2", "SN-OTHER"] {
        store_report(&storage, &example_report(serial)).await;
    }
    let admin = format!(
        "Bearer {}",
        create_token(db.url(), "ops-erin", Role::Admin).await
    );
    let read = format!("Bearer {}", ingest.read_token);
    let put = |serial: &'static str, auth: String, body: &'static str| {
        let ops = ingest.ops_addr;
        async move {
            request(
                ops,
                "PUT",
                &format!("/api/v1/appliances/{serial}/labels"),
                &[
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .await
            .expect("PUT labels")
        }
    };
    let r = put("SN-ACME-1", read.clone(), r#"{"customer": "acme"}"#).await;
    assert_eq!(r.status, 403, "a read token cannot label: {}", r.body);
    let r = put("SN-ACME-1", admin.clone(), r#"{"alertname": "x"}"#).await;
    assert_eq!(r.status, 400, "a reserved name: {}", r.body);
    assert!(r.body.contains("reserved"), "{}", r.body);
    let r = put("SN-ACME-1", admin.clone(), r#"{"customer": 7}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let labelled: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM appliance_labels", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(labelled, 0, "refused changes change nothing");

    for serial in ["SN-ACME-1", "SN-ACME-2"] {
        let r = put(
            serial,
            admin.clone(),
            r#"{"customer": "acme", "tier": "gold"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = put(
        "SN-ACME-2",
        admin.clone(),
        r#"{"tier": null, "site": "fra1"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(
        answer["labels"],
        serde_json::json!({"customer": "acme", "site": "fra1"}),
        "null removes, the rest stays"
    );
    let audited: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'set_labels' AND actor = 'token:ops-erin'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(audited, 3);

    // The list filters by a label; the page shows them, linked to that filter.
    let list = get(ingest.ops_addr, "/api/v1/appliances?label=customer:acme")
        .await
        .expect("list");
    assert_eq!(list.status, 200, "{}", list.body);
    let json: serde_json::Value = serde_json::from_str(&list.body).expect("JSON");
    let serials: Vec<&str> = json["appliances"]
        .as_array()
        .expect("appliances")
        .iter()
        .filter_map(|a| a["serial"].as_str())
        .collect();
    assert_eq!(serials, ["SN-ACME-1", "SN-ACME-2"], "{json}");
    let bad = get(ingest.ops_addr, "/api/v1/appliances?label=acme")
        .await
        .expect("list");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("label"), "{}", bad.body);
    let page = get(ingest.ops_addr, "/appliances/SN-ACME-2")
        .await
        .expect("page");
    assert!(
        page.body.contains("customer=acme") && page.body.contains("label=customer%3Aacme"),
        "{}",
        page.body
    );
    let r = get(ingest.ops_addr, "/api/v1/appliances/SN-ACME-2/labels")
        .await
        .expect("GET labels");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("fra1"), "{}", r.body);
}
