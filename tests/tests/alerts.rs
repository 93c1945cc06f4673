//! Alerts over history: a small fleet is driven through two weeks of daily reports built from the
//! real fixtures (a disk whose reallocated count climbs, a filesystem filling up, a NIC with
//! rising errors across a reboot, an appliance that goes silent, a cloned image, a collector
//! that cannot run smartctl), and the test checks exactly which alerts fire and resolve, and on
//! which day.

use chrono::{DateTime, Duration, Utc};
use phonehome_ingest::storage::Storage;
use phonehome_ingest::tls::ApplianceIdentity;
use phonehome_schema::Report;
use phonehome_tests::TestDb;
use phonehome_tests::alertmanager::AlertmanagerProcess;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client;
use phonehome_tests::pki::TestPki;

const DAYS: i64 = 14;

/// Day `d` of the simulation (day `DAYS` is today).
fn day(d: i64) -> DateTime<Utc> {
    let today = Utc::now() - Duration::hours(1);
    today - Duration::days(DAYS - d)
}

/// A healthy report of `serial` for day `d`: the contract's example (real SMART captures)
/// without its RAID timeout, with the machine's own identifiers.
fn healthy(serial: &str, d: i64) -> Report {
    let mut r = phonehome_tests::example_report(serial);
    r.collected_at = day(d);
    r.smart.errors.clear();
    let n: u128 = serial.bytes().fold(7, |a, b| a * 31 + u128::from(b));
    r.identity.machine_id = Some(format!("{:032x}", n & ((1 << 120) - 1)));
    r.identity.system_uuid = Some(uuid::Uuid::from_u128(n));
    r
}

/// What each appliance's report looks like on day `d`; `None` when it sends none.
fn fleet(serial: &str, d: i64) -> Option<Report> {
    let mut r = healthy(serial, d);
    match serial {
        // Reallocated sectors: 8 for days (an old, stable defect: no alert), then 16 on day 5
        // and 24 on day 6, then stable again.
        "SN-DISK" => {
            r.smart.devices[0].reallocated_sectors = Some(match d {
                ..=4 => 8,
                5 => 16,
                _ => 24,
            });
        }
        // The root filesystem (22 GB used, 77.5 GB free) gains 6 GB a day from day 4.
        "SN-FS" => {
            let fs = &mut r.filesystems.filesystems[0];
            let grown = 6_000_000_000 * (d - 3).max(0) as u64;
            fs.bytes_used += grown;
            fs.bytes_available -= grown;
        }
        // rx_errors: 0, 0, 0, 40 (a small rise), 600 on day 4, then a reboot on day 5 resets
        // the counters to 3, and they stay low.
        "SN-NIC" => {
            let errors = match d {
                ..=2 => 0,
                3 => 40,
                4 => 600,
                _ => 3 + (d - 5) as u64,
            };
            r.nics.nics[0].counters.insert("rx_errors".into(), errors);
            if d >= 5 {
                r.identity.boot_id = Some(uuid::Uuid::from_u128(5));
            }
        }
        // Quiet after day 8.
        "SN-SILENT" if d > 8 => return None,
        // Runs a clone of SN-CLONE-A's image from day 3 (same machine-id).
        "SN-CLONE-B" if d >= 3 => {
            r.identity.machine_id = healthy("SN-CLONE-A", d).identity.machine_id;
        }
        // smartctl went missing on days 9 and 10.
        "SN-NOSMART" if (9..=10).contains(&d) => {
            r.smart.devices.clear();
            r.smart.errors.push(phonehome_schema::CollectionError {
                item: "smartctl".into(),
                kind: phonehome_schema::ErrorKind::NotFound,
                message: "smartctl: command not found".into(),
            });
        }
        _ => {}
    }
    Some(r)
}

const SERIALS: [&str; 7] = [
    "SN-DISK",
    "SN-FS",
    "SN-NIC",
    "SN-SILENT",
    "SN-CLONE-A",
    "SN-CLONE-B",
    "SN-NOSMART",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_over_two_weeks_fires_and_resolves_exactly_the_right_alerts() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    for d in 0..=DAYS {
        for serial in SERIALS {
            if let Some(r) = fleet(serial, d) {
                let body = serde_json::to_string(&r).expect("json");
                let identity = ApplianceIdentity {
                    serial: serial.parse().expect("serial"),
                    cert_sha256: [1; 32],
                    not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                    not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
                };
                storage
                    .insert_report(&r, &identity, &body)
                    .await
                    .expect("stored");
            }
        }
    }
    // SN-SILENT last reported on day 8; make its last contact that long ago, as the clock of
    // a real fleet would, and run the periodic check.
    db.client()
        .await
        .execute(
            "UPDATE appliances SET last_report_at = $1 WHERE serial = 'SN-SILENT'",
            &[&day(8)],
        )
        .await
        .expect("age SN-SILENT");
    assert_eq!(
        storage.evaluate_silence(36).await.expect("silence"),
        Some(1)
    );
    assert_eq!(
        storage.evaluate_silence(36).await.expect("silence"),
        Some(0),
        "a second check opens nothing new"
    );

    let rows = db
        .client()
        .await
        .query(
            "SELECT p.serial, a.rule, a.subject, a.severity, a.state, a.started_at,
                    a.resolved_at, a.value
             FROM alerts a JOIN appliances p ON p.id = a.appliance_id
             ORDER BY p.serial, a.rule, a.started_at, a.subject",
            &[],
        )
        .await
        .expect("alerts");
    // (serial, rule, first day, resolved day or None)
    let day_of = |t: DateTime<Utc>| -> i64 {
        (0..=DAYS)
            .find(|d| (day(*d) - t).num_minutes().abs() < 1)
            .unwrap_or(-1)
    };
    let got: Vec<(String, String, String, i64, Option<i64>)> = rows
        .iter()
        .map(|r| {
            let serial: String = r.get(0);
            let rule: String = r.get(1);
            let started: DateTime<Utc> = r.get(5);
            let resolved: Option<DateTime<Utc>> = r.get(6);
            let started_day = if rule == "appliance_silent" {
                99
            } else {
                day_of(started)
            };
            (
                serial,
                rule,
                r.get::<_, String>(3),
                started_day,
                resolved.map(day_of),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, i64, Option<i64>)> = [
        // Cloned image: A's next report (day 4) finds B using its machine-id; B changed its
        // machine-id on day 3 (an event: held 7 days, resolved on day 10) to one A uses (a
        // condition: renewed by every report while it lasts).
        ("SN-CLONE-A", "identity_conflict", "warning", 4, None),
        ("SN-CLONE-B", "identity_conflict", "warning", 3, Some(10)),
        ("SN-CLONE-B", "identity_conflict", "warning", 3, None),
        // Climbs on day 5 (8 → 16) and day 6 (→ 24); quiet for 7 days from day 6: resolved on
        // day 13. The 8 it carried before never fired.
        ("SN-DISK", "disk_degrading", "warning", 5, Some(13)),
        // 6 GB a day: the trend over the last 7 reports says full within 7 days from day 10;
        // 85 % used on day 14.
        ("SN-FS", "filesystem_filling", "warning", 10, None),
        ("SN-FS", "filesystem_full", "warning", 14, None),
        // +560 on day 4 fires (the +40 on day 3 did not); the reset at the reboot on day 5 is
        // no alarm; quiet for 3 days: resolved on day 7.
        ("SN-NIC", "nic_errors", "warning", 4, Some(7)),
        // smartctl missing on days 9-10: the collector is degraded, and the drives are not
        // taken for gone.
        ("SN-NOSMART", "collector_degraded", "warning", 9, Some(11)),
        ("SN-SILENT", "appliance_silent", "warning", 99, None),
    ]
    .into_iter()
    .map(|(s, r, sev, a, b)| (s.to_owned(), r.to_owned(), sev.to_owned(), a, b))
    .collect();
    assert_eq!(
        got, expected,
        "alerts as (serial, rule, severity, first day, resolved day)"
    );
    let values: Vec<String> = rows.iter().map(|r| r.get(7)).collect();
    assert!(
        values
            .iter()
            .any(|v| v.contains("reallocated sectors 16 → 24 (+8)")),
        "the degrading alert carries the latest rise: {values:?}"
    );

    // A condition that still holds writes nothing: the firing alerts judged by level (the clone
    // is re-checked by every report of both appliances) were never rewritten after they opened.
    let rewritten: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM alerts WHERE state = 'firing' AND changed_at <> started_at",
            &[],
        )
        .await
        .expect("rewritten alerts")
        .get(0);
    assert_eq!(
        rewritten, 0,
        "firing alerts rewritten while their condition held"
    );

    // The same alerts, as operators see them: the JSON API, /metrics and Alertmanager.
    let firing: std::collections::BTreeSet<(String, String)> = [
        ("SN-CLONE-A", "identity_conflict"),
        ("SN-CLONE-B", "identity_conflict"),
        ("SN-FS", "filesystem_filling"),
        ("SN-FS", "filesystem_full"),
        ("SN-SILENT", "appliance_silent"),
    ]
    .into_iter()
    .map(|(s, r)| (s.to_owned(), r.to_owned()))
    .collect();
    let am = AlertmanagerProcess::start().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_ALERTMANAGER_URL", am.url().as_str()),
            ("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "1"),
        ],
    )
    .await;
    let listing = client::get(ingest.ops_addr, "/api/v1/alerts?state=firing&limit=500")
        .await
        .expect("GET /api/v1/alerts");
    assert_eq!(listing.status, 200, "{}", listing.body);
    let api: std::collections::BTreeSet<(String, String)> = listing.json()["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["serial"].as_str().unwrap_or_default().to_owned(),
                a["rule"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(api, firing, "firing alerts in the JSON API");

    // /metrics counts; it has no series per appliance (those alerts go to Alertmanager).
    let metrics = client::get(ingest.ops_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert!(
        !metrics.body.contains("serial=\""),
        "no per-appliance series in /metrics:\n{}",
        metrics.body
    );
    let mut by_rule: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for (_, rule) in &firing {
        *by_rule.entry(rule.as_str()).or_default() += 1.0;
    }
    for (rule, n) in by_rule {
        let counted: f64 = ["critical", "warning", "info"]
            .iter()
            .filter_map(|sev| {
                metrics.body.lines().find_map(|l| {
                    l.strip_prefix(&format!(
                        "phonehome_alerts_firing{{rule=\"{rule}\",severity=\"{sev}\"}} "
                    ))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                })
            })
            .sum();
        assert_eq!(counted, n, "phonehome_alerts_firing counts {rule}");
    }
    assert_eq!(
        ingest
            .metric("phonehome_alerts_firing{rule=\"disk_degrading\",severity=\"warning\"}")
            .await,
        Some(0.0),
        "a resolved rule counts zero"
    );
    assert_eq!(
        ingest.metric("phonehome_appliances_silent").await,
        Some(1.0)
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let active: std::collections::BTreeSet<(String, String)> = am
            .alerts("?active=true")
            .await
            .iter()
            .map(|a| {
                (
                    a["labels"]["serial"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        if active == firing {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Alertmanager shows {active:?}, expected {firing:?}\ningest log:\n{}",
            ingest.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // SN-SILENT reports again: its silence ends.
    let mut back = healthy("SN-SILENT", DAYS);
    back.collected_at = Utc::now();
    let body = serde_json::to_string(&back).expect("json");
    storage
        .insert_report(
            &back,
            &ApplianceIdentity {
                serial: "SN-SILENT".parse().expect("serial"),
                cert_sha256: [1; 32],
                not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
            },
            &body,
        )
        .await
        .expect("stored");
    let state: String = db
        .client()
        .await
        .query_one(
            "SELECT state FROM alerts WHERE rule = 'appliance_silent'",
            &[],
        )
        .await
        .expect("silent alert")
        .get(0);
    assert_eq!(state, "resolved");
}
