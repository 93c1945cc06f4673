//! What one appliance can make the fleet's ingest keep, alert on and show is bounded (issue 13,
//! finding 5): lists and names beyond the contract's bounds are a 422 naming the field and store
//! nothing; within them, one appliance opens at most `max_open_per_appliance` alerts and the
//! rest are counted in one `alerts_folded` alert; sensor garbage is not a temperature.

use phonehome_schema::{MAX_ITEMS, MAX_NAME_CHARS, Report};
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

async fn post(client: &TlsClient, ingest: &IngestProcess, r: &Report) -> (u16, String) {
    let body = serde_json::to_vec(r).expect("json");
    let answer = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
        .expect("answered");
    (answer.status, answer.body)
}

/// `n` copies of the report's root filesystem at 99 %, under distinct mount points.
fn full_filesystems(r: &mut Report, n: usize) {
    let mut root = r.filesystems.filesystems[0].clone();
    root.bytes_available = root.bytes_total / 100;
    root.bytes_used = root.bytes_total - root.bytes_available;
    r.filesystems.filesystems = (0..n)
        .map(|i| {
            let mut f = root.clone();
            f.mount_point = format!("/srv/volume-{i:04}");
            f
        })
        .collect();
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_bounds_is_a_422_naming_the_field_and_stores_nothing() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let serial = "SN-BOUNDS";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(serial)));

    let mut many = example_report(serial);
    full_filesystems(&mut many, 3_500);
    let (status, body) = post(&client, &ingest, &many).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("filesystems.filesystems"), "{body}");
    assert!(body.contains(&MAX_ITEMS.to_string()), "{body}");

    let mut long = example_report(serial);
    long.app.version = Some("9".repeat(900_000));
    let (status, body) = post(&client, &ingest, &long).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("app.version"), "{body}");

    let mut long = example_report(serial);
    long.filesystems.filesystems[0].mount_point = format!("/{}", "m".repeat(MAX_NAME_CHARS));
    let (status, body) = post(&client, &ingest, &long).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("filesystems.filesystems[0].mount_point"),
        "{body}"
    );

    assert_eq!(db.count("reports").await, 0);
    assert_eq!(db.count("alerts").await, 0);
    // And a normal report is taken afterwards.
    let (status, body) = post(&client, &ingest, &example_report(serial)).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_report_opens_at_most_the_appliance_s_share_of_alerts_the_rest_folded() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let serial = "SN-FANOUT";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(serial)));

    let mut r = example_report(serial);
    full_filesystems(&mut r, MAX_ITEMS);
    // A failing drive: the critical finding gets a slot before the warnings.
    r.smart.devices[0].health_passed = Some(false);
    // Sensor garbage on another drive: not a temperature, not an alert.
    r.smart.devices[1].temperature_celsius = Some(65_535);
    let (status, body) = post(&client, &ingest, &r).await;
    assert_eq!(status, 202, "{body}");

    let firing = |rule: &str| {
        format!("SELECT count(*) FROM alerts WHERE state = 'firing' AND rule = '{rule}'")
    };
    let limit = phonehome_ingest::alerts::DEFAULT_MAX_OPEN_PER_APPLIANCE as i64;
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM alerts WHERE state = 'firing' AND rule <> 'alerts_folded'"
        )
        .await,
        limit
    );
    assert_eq!(scalar(&db, &firing("disk_failing")).await, 1);
    assert_eq!(scalar(&db, &firing("disk_temperature")).await, 0);
    let folded: String = db
        .client()
        .await
        .query_one(
            "SELECT value FROM alerts WHERE rule = 'alerts_folded' AND state = 'firing'",
            &[],
        )
        .await
        .expect("one alerts_folded alert")
        .get(0);
    // Every finding is either an alert or counted: 512 full filesystems and the failing drive
    // (the example's collector_degraded finding too), less the alerts opened.
    let findings: i64 = scalar(
        &db,
        "SELECT count(*) FROM alerts WHERE state = 'firing' AND rule <> 'alerts_folded'",
    )
    .await;
    let expected_folded = MAX_ITEMS as i64 + 2 - findings;
    assert_eq!(folded, expected_folded.to_string());
    // The drive with the garbage temperature, read back from the kept body.
    let storage = phonehome_ingest::storage::Storage::connect(db.url(), 2).expect("storage");
    let detail = storage
        .appliance_detail(serial, 1)
        .await
        .expect("read")
        .expect("the appliance");
    let key = detail
        .drives
        .iter()
        .find(|d| d.model == r.smart.devices[1].model)
        .map(|d| d.drive_key.clone())
        .expect("the drive with the garbage temperature");
    let series = detail
        .history
        .drives
        .iter()
        .find(|s| s.drive_key == key)
        .expect("its readings");
    assert!(!series.samples.is_empty(), "{key} has readings");
    let garbage: Option<i16> = series
        .samples
        .iter()
        .filter_map(|s| s.temperature_celsius)
        .max();
    assert_eq!(garbage, None, "65535 °C is not charted");

    // The next report is normal: the folded alert resolves and the filesystem alerts end.
    let (status, body) = post(&client, &ingest, &example_report(serial)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(scalar(&db, &firing("alerts_folded")).await, 0);
    let left: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT rule || ' ' || subject || ' ' || summary FROM alerts WHERE state = 'firing'",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(scalar(&db, &firing("filesystem_full")).await, 0, "{left:?}");
}

/// Issue 13, finding 1, through the endpoint: NIC counters at or above 2^63, rising between
/// reports, once overflowed a sum in a batch writer (a debug build's writer panicked and was
/// never restarted; after four such reports every appliance got 503). Now each is stored, the
/// alert fires with a saturated total, and other appliances are served.
#[tokio::test(flavor = "multi_thread")]
async fn nic_counters_at_the_top_of_the_range_are_stored_and_hurt_no_one() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let serial = "SN-HUGE-NIC";
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(serial)));
    let with_counters = |value: u64, hours_ago: i64| {
        let mut r = example_report(serial);
        r.collected_at = chrono::Utc::now() - chrono::Duration::hours(hours_ago);
        for name in ["rx_errors", "tx_errors", "rx_dropped", "tx_dropped"] {
            r.nics.nics[0].counters.insert(name.to_owned(), value);
        }
        r
    };
    let (status, body) = post(&client, &ingest, &with_counters(0, 6)).await;
    assert_eq!(status, 202, "{body}");
    for (i, value) in [1u64 << 63, u64::MAX, u64::MAX - 1, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let (status, body) = post(&client, &ingest, &with_counters(value, 5 - i as i64)).await;
        assert_eq!(status, 202, "report {i} with counters {value}: {body}");
    }
    let other = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-NEXT-DOOR")));
    let (status, body) = post(&other, &ingest, &example_report("SN-NEXT-DOOR")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM alerts WHERE rule = 'nic_errors' AND state = 'firing'"
        )
        .await,
        1
    );
    assert_eq!(
        ingest.metric("phonehome_batch_panics_total").await,
        Some(0.0),
        "{}",
        ingest.log()
    );
}
