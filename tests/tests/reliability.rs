//! The fleet's own failure rates (issue 15): a seeded fleet with known drives, days and
//! failures gives the expected annualised rates, intervals, attribute split and "replace soon"
//! list, computed by maintenance and served on the page and through the API.

use chrono::{Duration, SubsecRound, Utc};
use phonehome_ingest::storage::{InsertOutcome, Storage, maintenance};
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::get;
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report, store_report};

const DAYS: i64 = 200;

/// Ten appliances, each with its own ATA drive (model A) and NVMe drive (model B), reporting
/// 200 days ago and now. A fails on SN-R0 and SN-R1, B on SN-R9 (read-only); A shows
/// reallocated sectors on SN-R0 to SN-R5.
async fn seed(storage: &Storage) -> (String, String) {
    let mut models = (String::new(), String::new());
    for i in 0..10 {
        let serial = format!("SN-R{i}");
        for (days_ago, last) in [(DAYS, false), (0, true)] {
            let mut r = example_report(&serial);
            r.collected_at =
                (Utc::now() - Duration::days(days_ago) - Duration::minutes(5)).trunc_subsecs(0);
            r.smart.errors.clear();
            for (n, d) in r.smart.devices.iter_mut().enumerate().take(2) {
                d.wwn = None;
                d.serial = Some(format!("{serial}-D{n}"));
            }
            let (a, b) = r.smart.devices.split_at_mut(1);
            let (a, b) = (&mut a[0], &mut b[0]);
            models = (a.model.clone().expect("A"), b.model.clone().expect("B"));
            a.reallocated_sectors = Some(if last && i <= 5 { 8 } else { 0 });
            if last && i <= 1 {
                a.health_passed = Some(false);
            }
            // ATA 187 (reported uncorrectable) on two drives that did not fail.
            a.attributes.push(
                serde_json::from_value(serde_json::json!({
                    "id": 187, "name": "Reported_Uncorrect", "value": 100, "worst": 100,
                    "thresh": 0, "raw": if last && (6..=7).contains(&i) { 3 } else { 0 },
                }))
                .expect("attribute"),
            );
            if last && i == 9 {
                let n = b.nvme.as_mut().expect("NVMe health");
                n.critical_warning = Some(0x08);
                n.critical_warnings = vec![];
            }
            assert_eq!(store_report(storage, &r).await, InsertOutcome::Stored);
        }
    }
    models
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01 * b.abs().max(1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_fleet_gives_the_expected_rates_split_and_replace_soon_list() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let (model_a, model_b) = seed(&storage).await;
    assert_eq!(
        storage.reliability().await.expect("read"),
        None,
        "not computed yet"
    );
    // Maintenance computes it; a replica that starts runs maintenance at once.
    maintenance::run_once(&storage, "test", std::time::Duration::ZERO)
        .await
        .expect("maintenance")
        .expect("ran");
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let r = storage
        .reliability()
        .await
        .expect("read")
        .expect("computed");
    assert_eq!((r.fleet.drives, r.fleet.failures), (20, 3), "{:?}", r.fleet);
    assert!(
        close(r.fleet.drive_days, 20.0 * DAYS as f64),
        "{}",
        r.fleet.drive_days
    );
    let model = |name: &str| {
        r.models
            .iter()
            .find(|m| m.counts.model == name && m.counts.firmware.is_none())
            .unwrap_or_else(|| panic!("{name} in {:?}", r.models))
    };
    // 2 failures in 2,000 drive-days: 36.5 %/year (exact 95 %: 0.242..7.225 events).
    let a = model(&model_a);
    assert_eq!((a.counts.drives, a.counts.failures), (10, 2));
    let afr = a.afr.expect("enough drive-days");
    assert!(close(afr.percent, 36.5), "{afr:?}");
    assert!(close(afr.low, 0.2422 / 2000.0 * 36_500.0), "{afr:?}");
    assert!(close(afr.high, 7.2247 / 2000.0 * 36_500.0), "{afr:?}");
    let b = model(&model_b);
    assert_eq!((b.counts.drives, b.counts.failures), (10, 1));
    assert!(close(b.afr.expect("rate").percent, 18.25));
    // Reallocated sectors: 2 failed of 6 non-zero (1,200 drive-days) against 1 of 14 at zero.
    let split = r
        .attributes
        .iter()
        .find(|s| s.attribute == "ATA 5 reallocated sectors")
        .expect("the ATA 5 split");
    assert_eq!(
        (
            split.nonzero.drives,
            split.nonzero.failures,
            split.zero.drives,
            split.zero.failures
        ),
        (6, 2, 14, 1)
    );
    // ATA 187 is sampled too: 2 non-zero, neither failed.
    let uncorrect = r
        .attributes
        .iter()
        .find(|s| s.attribute == "ATA 187 reported uncorrectable")
        .expect("the ATA 187 split");
    assert_eq!(
        (
            uncorrect.nonzero.drives,
            uncorrect.nonzero.failures,
            uncorrect.zero.drives,
            uncorrect.zero.failures
        ),
        (2, 0, 18, 3)
    );
    let ratio = split.ratio.expect("both rates");
    assert!(close(ratio, (2.0 / 1200.0) / (1.0 / 2800.0)), "{ratio}");
    // Replace soon: the four working A drives with reallocated sectors, not the failed ones.
    let mut soon: Vec<&str> = r
        .replace_soon
        .iter()
        .map(|d| d.drive.appliance.as_str())
        .collect();
    soon.sort();
    assert_eq!(soon, ["SN-R2", "SN-R3", "SN-R4", "SN-R5"]);

    let api = get(ingest.ops_addr, "/api/v1/reliability")
        .await
        .expect("API");
    assert_eq!(api.status, 200, "{}", api.body);
    let json: serde_json::Value = serde_json::from_str(&api.body).expect("JSON");
    assert_eq!(json["fleet"]["failures"], 3, "{json}");
    let page = get(ingest.ops_addr, "/reliability").await.expect("page");
    assert!(
        page.body.contains("id=\"replace-soon\"") && page.body.contains("SN-R3"),
        "{}",
        page.body
    );
    assert!(page.body.contains("36.50 %"), "{}", page.body);
}
