//! Time from appliances is data, not order (issue 13, finding 3): a clock running a day fast
//! cannot freeze an appliance's state or date a resolution in the future, and a clock off in
//! either direction is a `clock_skew` alert, told from the `Date` the collector sends.

use chrono::{DateTime, Duration, Utc};
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn post(
    client: &TlsClient,
    ingest: &IngestProcess,
    report: &phonehome_schema::Report,
    date: Option<DateTime<Utc>>,
) {
    let date = date.map(http_date);
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(d) = &date {
        headers.push(("Date", d.as_str()));
    }
    let body = serde_json::to_vec(report).expect("json");
    let r = client
        .post(ingest.report_addr, "/v1/reports", &headers, &body)
        .await
        .expect("answered");
    assert_eq!(r.status, 202, "{}", r.body);
}

/// (rule, state, resolved in the future?) of the appliance's alerts, by rule.
async fn alerts(db: &TestDb, serial: &str) -> Vec<(String, String, bool)> {
    db.client()
        .await
        .query(
            "SELECT al.rule, al.state, coalesce(al.resolved_at > now(), false)
             FROM alerts al JOIN appliances a ON a.id = al.appliance_id
             WHERE a.serial = $1 ORDER BY al.rule, al.id",
            &[&serial],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_a_day_fast_does_not_freeze_the_appliance_and_is_an_alert() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let serial = "SN-FAST-CLOCK";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(serial)));

    // The appliance's clock is 23 hours fast (the ingest accepts up to 24): its report says so,
    // and its root filesystem is full.
    let mut fast = example_report(serial);
    // Without the example's RAID timeout: only the alerts this test is about.
    fast.smart.errors.clear();
    fast.collected_at = Utc::now() + Duration::hours(23);
    fast.app.version = Some("4.2.1".into());
    let fs = &mut fast.filesystems.filesystems[0];
    fs.bytes_available = fs.bytes_total / 100;
    fs.bytes_used = fs.bytes_total - fs.bytes_available;
    post(&client, &ingest, &fast, None).await;
    let firing: Vec<String> = alerts(&db, serial)
        .await
        .into_iter()
        .filter(|a| a.1 == "firing")
        .map(|a| a.0)
        .collect();
    assert!(firing.contains(&"clock_skew".to_owned()), "{firing:?}");
    assert!(firing.contains(&"filesystem_full".to_owned()), "{firing:?}");

    // Its clock is put right; the next report is honest, and dated by the collector.
    let mut honest = example_report(serial);
    honest.smart.errors.clear();
    honest.app.version = Some("4.3.0".into());
    post(&client, &ingest, &honest, Some(Utc::now())).await;

    let row = db
        .client()
        .await
        .query_one(
            "SELECT app_version, report_count FROM appliances WHERE serial = $1",
            &[&serial],
        )
        .await
        .expect("appliance");
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("4.3.0"),
        "the honest report moved the state: it is not 'late' behind the fast one"
    );
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(
        alerts(&db, serial).await,
        vec![
            ("clock_skew".to_owned(), "resolved".to_owned(), false),
            ("filesystem_full".to_owned(), "resolved".to_owned(), false),
        ],
        "both resolved by the honest report, neither dated in the future"
    );
    // The appliance's own time is kept as data.
    let kept: DateTime<Utc> = db
        .client()
        .await
        .query_one(
            "SELECT max(collected_at) FROM reports r JOIN appliances a ON a.id = r.appliance_id
             WHERE a.serial = $1",
            &[&serial],
        )
        .await
        .expect("reports")
        .get(0);
    assert!(kept > Utc::now() + Duration::hours(22), "{kept}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_days_behind_is_told_from_a_spooled_report_by_the_date_sent() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;

    // A report that waited three days in the spool, sent by a clock that is right: no alert.
    let spooled = "SN-SPOOLED";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(spooled)));
    let mut r = example_report(spooled);
    r.collected_at = Utc::now() - Duration::days(3);
    post(&client, &ingest, &r, Some(Utc::now())).await;
    assert!(
        alerts(&db, spooled)
            .await
            .iter()
            .all(|a| a.0 != "clock_skew"),
        "{:?}",
        alerts(&db, spooled).await
    );

    // A fresh report from a clock three days slow: its collected_at and its Date both say so.
    let slow = "SN-SLOW-CLOCK";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(slow)));
    let mut r = example_report(slow);
    let its_now = Utc::now() - Duration::days(3);
    r.collected_at = its_now;
    post(&client, &ingest, &r, Some(its_now)).await;
    let summary: String = db
        .client()
        .await
        .query_one(
            "SELECT al.summary FROM alerts al JOIN appliances a ON a.id = al.appliance_id
             WHERE a.serial = $1 AND al.rule = 'clock_skew' AND al.state = 'firing'",
            &[&slow],
        )
        .await
        .expect("a firing clock_skew alert")
        .get(0);
    assert!(summary.contains("72 h behind"), "{summary}");
}
