//! Identity you can trust: a serial whose system UUID or machine-id changes, and identifiers that
//! two serials share (a cloned image), become identity events, each recorded once.

use phonehome_schema::Report;
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;

fn report(serial: &str, system_uuid: &str, machine_id: &str, days_ago: i64) -> Report {
    let mut r = phonehome_tests::example_report(serial);
    r.identity.system_uuid = Some(system_uuid.parse().expect("uuid"));
    r.identity.machine_id = Some(machine_id.to_owned());
    r.collected_at -= chrono::Duration::days(days_ago);
    r
}

const U1: &str = "4c4c4544-0042-3510-8052-b4c04f384d32";
const U2: &str = "4c4c4544-0042-3510-8052-b4c04f384d99";
const M1: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
const M2: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn swaps_and_clones_are_recorded_once_each() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let a = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-A")));
    let b = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-B")));
    let post = |client: &TlsClient, r: &Report| {
        let client = client.clone();
        let body = serde_json::to_vec(r).expect("json");
        let addr = ingest.report_addr;
        async move {
            let resp = client
                .post(
                    addr,
                    "/v1/reports",
                    &[("Content-Type", "application/json")],
                    &body,
                )
                .await
                .expect("response");
            resp.status
        }
    };
    let events = || async {
        let rows = db
            .client()
            .await
            .query(
                "SELECT serial, kind, coalesce(old_value, ''), new_value, coalesce(other_serial, '')
                 FROM identity_events ORDER BY id",
                &[],
            )
            .await
            .expect("events");
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, String>(4),
                )
            })
            .collect::<Vec<_>>()
    };

    assert_eq!(post(&a, &report("SN-A", U1, M1, 3)).await, 202);
    assert!(events().await.is_empty(), "a first report is no event");

    // The board is swapped: a new system UUID under the same serial.
    let swapped = report("SN-A", U2, M1, 2);
    assert_eq!(post(&a, &swapped).await, 202);
    // A late report from before the swap arrives from the spool: the past is not a new swap.
    assert_eq!(post(&a, &report("SN-A", U1, M1, 5)).await, 202);
    // The same report again: stored once, recorded once.
    assert_eq!(post(&a, &swapped).await, 200);
    assert_eq!(
        events().await,
        [(
            "SN-A".into(),
            "system_uuid_changed".into(),
            U1.into(),
            U2.into(),
            String::new()
        )]
    );

    // Another serial with SN-A's machine-id: a cloned image.
    assert_eq!(
        post(
            &b,
            &report("SN-B", "4c4c4544-0000-0000-0000-000000000001", M1, 1)
        )
        .await,
        202
    );
    assert_eq!(
        post(
            &b,
            &report("SN-B", "4c4c4544-0000-0000-0000-000000000001", M1, 0)
        )
        .await,
        202
    );
    let all = events().await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[1],
        (
            "SN-B".into(),
            "machine_id_shared".into(),
            String::new(),
            M1.into(),
            "SN-A".into()
        )
    );

    // An unrelated appliance records nothing.
    let c = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-C")));
    assert_eq!(
        post(
            &c,
            &report("SN-C", "4c4c4544-0000-0000-0000-000000000002", M2, 0)
        )
        .await,
        202
    );
    assert_eq!(events().await.len(), 2);
    assert!(
        ingest.log().contains("identity events recorded"),
        "{}",
        ingest.log()
    );
}
