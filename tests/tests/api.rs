//! The operations JSON API, as an operator's script uses it: a small fleet's days of reports are
//! stored (the alert rules fire inside the same transactions), the real ingest serves them, and
//! every answer is checked against what was stored: alert filters and pages, appliance lists and
//! pages, one appliance's drives and series, the report body as sent, and the errors a client
//! gets for a bad filter or an unknown appliance.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_schema::{AppStatus, Report};
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, get};
use phonehome_tests::pki::TestPki;
use serde_json::Value;

const ATA: &str = "wwn:0x5000c500a2b3c4d5";

/// What identifies an alert in these checks: rule, serial, severity, state.
type AlertKey = (String, String, String, String);
type Expected<'a> = (&'a str, &'a str, &'a str, &'a str);

/// The example report for `serial`, collected `days_ago` days and an hour before now (whole
/// seconds, as a collector writes them), with no collection errors unless the test adds some.
/// Each appliance gets its own machine identifiers and, past the first, its own drives: the
/// same ones in two appliances would be a cloned image and drives moving between them.
fn report(serial: &str, days_ago: i64) -> Report {
    let mut r = phonehome_tests::example_report(serial);
    r.collected_at = (Utc::now() - Duration::days(days_ago) - Duration::hours(1)).trunc_subsecs(0);
    r.smart.errors.clear();
    let n = u128::from(serial.bytes().last().unwrap_or(b'0'));
    r.identity.machine_id = Some(format!("{n:032x}"));
    r.identity.system_uuid = Some(uuid::Uuid::from_u128(n));
    if !serial.ends_with('A') {
        for (i, d) in r.smart.devices.iter_mut().enumerate() {
            if d.wwn.is_some() {
                d.wwn = Some(format!("0x5000c5{n:02x}000000{i:02x}"));
                d.serial = Some(format!("{serial}-{i}"));
            }
        }
    }
    r
}

/// Stores `r` as the ingest would and returns the body exactly as sent.
async fn store(storage: &Storage, r: &Report) -> String {
    assert_eq!(
        phonehome_tests::store_report(storage, r).await,
        InsertOutcome::Stored
    );
    serde_json::to_string(r).expect("json")
}

async fn api(ingest: &IngestProcess, path: &str) -> Response {
    get(ingest.ops_addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// GETs `path`, which must answer 200 with JSON.
async fn ok(ingest: &IngestProcess, path: &str) -> Value {
    let r = api(ingest, path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "GET {path}: {:?}",
        r.headers
    );
    r.json()
}

/// GETs `path`, which must be refused with `status` and a JSON error naming `field` when given.
async fn refused(ingest: &IngestProcess, path: &str, status: u16, field: Option<&str>) -> Value {
    let r = api(ingest, path).await;
    assert_eq!(r.status, status, "GET {path}: {}", r.body);
    let body = r.json();
    assert!(body["message"].is_string(), "GET {path}: {body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "GET {path}: {body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(field),
            "GET {path}: the message names the parameter: {body}"
        );
    }
    body
}

/// (rule, serial, severity, state) of each alert in a listing, in its order.
fn alert_keys(listing: &Value) -> Vec<AlertKey> {
    listing["alerts"]
        .as_array()
        .expect("alerts array")
        .iter()
        .map(|a| {
            let s = |k: &str| {
                a[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {a}"))
                    .to_owned()
            };
            (s("rule"), s("serial"), s("severity"), s("state"))
        })
        .collect()
}

fn set(keys: &[Expected]) -> BTreeSet<AlertKey> {
    keys.iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

fn as_set(listing: &Value) -> BTreeSet<AlertKey> {
    let keys = alert_keys(listing);
    let set: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(set.len(), keys.len(), "no alert listed twice: {listing}");
    set
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("timestamp: {v}")))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_api_shows_alerts_and_appliances_as_stored() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");

    // SN-API-A: the ATA disk's reallocated count rises on day 1 and again on day 0; the NVMe
    // drive is fitted on day 2; a section it cannot collect and an app upgrade on day 0.
    let mut a_bodies = Vec::new();
    let mut a_reports = Vec::new();
    for (days_ago, reallocated) in [(3, 0), (2, 0), (1, 8), (0, 24)] {
        let mut r = report("SN-API-A", days_ago);
        r.smart.devices[0].reallocated_sectors = Some(reallocated);
        r.smart.devices[0].temperature_celsius = Some(30 + days_ago);
        r.filesystems.filesystems[0].bytes_used += (3 - days_ago as u64) * 1_000_000;
        if days_ago == 3 {
            // The NVMe drive arrives with the second report: a drive event.
            r.smart.devices.remove(1);
        }
        if days_ago == 0 {
            r.app.version = Some("4.3.0".into());
            r.smart.errors = phonehome_tests::example_report("SN-API-A").smart.errors;
        }
        a_bodies.push(store(&storage, &r).await);
        a_reports.push(r);
    }
    // SN-API-B: unhealthy for two days, healthy today (an alert that fired and resolved).
    for (days_ago, status) in [
        (2, AppStatus::Unhealthy),
        (1, AppStatus::Unhealthy),
        (0, AppStatus::Healthy),
    ] {
        let mut r = report("SN-API-B", days_ago);
        r.app.status = status;
        store(&storage, &r).await;
    }
    // SN-API-C: degraded now, with a hostname that is not HTML-safe.
    let hostname = "c\"<b>&'\\n";
    for days_ago in [1, 0] {
        let mut r = report("SN-API-C", days_ago);
        r.app.status = AppStatus::Degraded;
        r.identity.hostname = Some(hostname.into());
        store(&storage, &r).await;
    }

    // The rules fired inside the inserts: this is the state the API must show.
    let stored: BTreeSet<AlertKey> = db
        .client()
        .await
        .query(
            "SELECT al.rule, a.serial, al.severity, al.state
             FROM alerts al JOIN appliances a ON a.id = al.appliance_id",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let all = set(&[
        ("disk_degrading", "SN-API-A", "warning", "firing"),
        ("collector_degraded", "SN-API-A", "warning", "firing"),
        ("app_unhealthy", "SN-API-B", "critical", "resolved"),
        ("app_unhealthy", "SN-API-C", "warning", "firing"),
    ]);
    assert_eq!(stored, all, "the alerts the fixture is built to raise");

    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;

    // --- Alerts: every filter returns the matching alerts and only them.
    let everything = ok(&ingest, "/api/v1/alerts?state=all").await;
    assert_eq!(as_set(&everything), all);
    assert!(everything["next"].is_null(), "{everything}");
    let listed: Vec<(bool, i64)> = everything["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| (a["state"] == "resolved", a["id"].as_i64().expect("id")))
        .collect();
    let ids: Vec<i64> = listed.iter().map(|(_, id)| *id).collect();
    assert!(
        listed
            .windows(2)
            .all(|w| (u8::from(w[0].0), -w[0].1) < (u8::from(w[1].0), -w[1].1)),
        "firing before resolved, newest first within each: {listed:?}"
    );
    // Without a state, the firing ones: what an operator must act on.
    let default = ok(&ingest, "/api/v1/alerts").await;
    assert!(
        default["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .all(|a| a["state"] == "firing"),
        "{default}"
    );
    let first = &everything["alerts"][0];
    for field in [
        "id",
        "rule",
        "serial",
        "subject",
        "severity",
        "state",
        "started_at",
        "resolved_at",
        "value",
        "summary",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }

    let cases: [(&str, &[Expected]); 7] = [
        (
            "state=firing",
            &[
                ("disk_degrading", "SN-API-A", "warning", "firing"),
                ("collector_degraded", "SN-API-A", "warning", "firing"),
                ("app_unhealthy", "SN-API-C", "warning", "firing"),
            ],
        ),
        (
            "state=resolved",
            &[("app_unhealthy", "SN-API-B", "critical", "resolved")],
        ),
        (
            "rule=app_unhealthy&state=all",
            &[
                ("app_unhealthy", "SN-API-B", "critical", "resolved"),
                ("app_unhealthy", "SN-API-C", "warning", "firing"),
            ],
        ),
        (
            "severity=critical&state=all",
            &[("app_unhealthy", "SN-API-B", "critical", "resolved")],
        ),
        (
            "serial=SN-API-A",
            &[
                ("disk_degrading", "SN-API-A", "warning", "firing"),
                ("collector_degraded", "SN-API-A", "warning", "firing"),
            ],
        ),
        (
            "rule=app_unhealthy&state=firing&severity=warning&serial=SN-API-C",
            &[("app_unhealthy", "SN-API-C", "warning", "firing")],
        ),
        ("rule=disk_missing", &[]),
    ];
    for (query, expected) in cases {
        let listing = ok(&ingest, &format!("/api/v1/alerts?{query}")).await;
        assert_eq!(as_set(&listing), set(expected), "?{query}: {listing}");
    }

    // The disk alert says what rose and names the drive.
    let disk = ok(&ingest, "/api/v1/alerts?rule=disk_degrading").await;
    let disk = &disk["alerts"][0];
    assert_eq!(disk["subject"], ATA);
    assert!(
        disk["value"].as_str().unwrap_or("").contains("24"),
        "the latest rise: {disk}"
    );
    assert!(disk["resolved_at"].is_null());
    time(&disk["started_at"]);
    let resolved = ok(&ingest, "/api/v1/alerts?state=resolved").await;
    assert!(
        time(&resolved["alerts"][0]["resolved_at"]) >= time(&resolved["alerts"][0]["started_at"])
    );

    // Pages of one, following `next`, give every alert once, in the same order.
    let mut paged = Vec::new();
    let mut path = "/api/v1/alerts?state=all&limit=1".to_owned();
    loop {
        let page = ok(&ingest, &path).await;
        let alerts = page["alerts"].as_array().expect("alerts");
        assert!(alerts.len() <= 1, "{page}");
        paged.extend(alerts.iter().map(|a| a["id"].as_i64().expect("id")));
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/alerts?state=all&limit=1&after={next}"),
            None => break,
        }
        assert!(
            paged.len() <= ids.len(),
            "pagination does not end: {paged:?}"
        );
    }
    assert_eq!(paged, ids);
    let firing_page = ok(&ingest, "/api/v1/alerts?state=firing&limit=2").await;
    assert_eq!(alert_keys(&firing_page).len(), 2);
    let next = firing_page["next"].as_str().expect("a second page");
    let rest = ok(
        &ingest,
        &format!(
            "/api/v1/alerts?state=firing&limit=2&after={}",
            phonehome_dashboard::encode(next)
        ),
    )
    .await;
    assert_eq!(alert_keys(&rest).len(), 1, "{rest}");
    assert!(rest["next"].is_null());

    // A filter the server cannot use is refused, naming it, rather than ignored.
    for (query, field) in [
        ("state=open", "state"),
        ("rule=disk_on_fire", "rule"),
        ("severity=urgent", "severity"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("after=-3", "after"),
        ("state=resolved&after=-3", "after"),
        ("sevrity=critical", "sevrity"),
        ("state=firing&state=resolved", "state"),
    ] {
        let body = refused(
            &ingest,
            &format!("/api/v1/alerts?{query}"),
            400,
            Some(field),
        )
        .await;
        assert_eq!(body["error"], "bad_parameter", "?{query}");
    }

    // --- Appliances: current state, ordered by serial, in pages.
    let fleet = ok(&ingest, "/api/v1/appliances").await;
    let serials: Vec<&str> = fleet["appliances"]
        .as_array()
        .expect("appliances")
        .iter()
        .map(|a| a["serial"].as_str().expect("serial"))
        .collect();
    assert_eq!(serials, ["SN-API-A", "SN-API-B", "SN-API-C"]);
    let a = &fleet["appliances"][0];
    assert_eq!(a["report_count"], 4);
    assert_eq!(a["app_version"], "4.3.0");
    assert_eq!(a["app_status"], "healthy");
    assert_eq!(a["firing_alerts"], 2);
    assert_eq!(a["health"], "warning", "its worst firing alert");
    assert_eq!(a["silent"], false);
    time(&a["last_report_at"]);
    assert_eq!(fleet["appliances"][1]["firing_alerts"], 0);
    assert_eq!(fleet["appliances"][2]["firing_alerts"], 1);
    assert_eq!(fleet["appliances"][2]["hostname"], hostname);

    let page1 = ok(&ingest, "/api/v1/appliances?limit=2").await;
    assert_eq!(page1["appliances"].as_array().map(Vec::len), Some(2));
    assert_eq!(page1["next"], "SN-API-B");
    let page2 = ok(&ingest, "/api/v1/appliances?limit=2&after=SN-API-B").await;
    assert_eq!(page2["appliances"][0]["serial"], "SN-API-C");
    assert_eq!(page2["appliances"].as_array().map(Vec::len), Some(1));
    assert!(page2["next"].is_null());
    let degraded = ok(&ingest, "/api/v1/appliances?status=degraded").await;
    assert_eq!(degraded["appliances"].as_array().map(Vec::len), Some(1));
    assert_eq!(degraded["appliances"][0]["serial"], "SN-API-C");
    let unhealthy = ok(&ingest, "/api/v1/appliances?status=unhealthy").await;
    assert_eq!(unhealthy["appliances"].as_array().map(Vec::len), Some(0));
    refused(
        &ingest,
        "/api/v1/appliances?status=sick",
        400,
        Some("status"),
    )
    .await;
    refused(&ingest, "/api/v1/appliances?limit=-1", 400, Some("limit")).await;

    // --- One appliance: what it holds now and its history, with the values stored.
    let detail = ok(&ingest, "/api/v1/appliances/SN-API-A").await;
    assert_eq!(detail["serial"], "SN-API-A");
    assert_eq!(detail["firing_alerts"], 2);
    let drives = detail["drives"].as_array().expect("drives");
    assert_eq!(
        drives.len(),
        2,
        "the disk in standby has no identity: {drives:?}"
    );
    let ata = drives
        .iter()
        .find(|d| d["drive_key"] == ATA)
        .expect("the ATA disk");
    assert_eq!(ata["model"], "ST2000DM006-2DM164");
    assert_eq!(ata["serial"], "Z4ZCX0WD");
    assert_eq!(ata["device_name"], "/dev/sda");
    assert_eq!(time(&ata["since"]), a_reports[0].collected_at);
    assert_eq!(ata["latest"]["reallocated_sectors"], 24);
    assert_eq!(ata["latest"]["temperature_celsius"], 30);

    let history = &detail["history"];
    assert_eq!(history["days"], 30);
    let report_ids: Vec<&str> = history["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| r["report_id"].as_str().expect("report_id"))
        .collect();
    let sent_ids: Vec<String> = a_reports.iter().map(|r| r.report_id.to_string()).collect();
    assert_eq!(report_ids, sent_ids, "oldest first");
    assert_eq!(history["reports"][3]["app_version"], "4.3.0");
    let series = history["drives"]
        .as_array()
        .expect("drive series")
        .iter()
        .find(|s| s["drive_key"] == ATA)
        .expect("the ATA disk's series");
    let points = series["samples"].as_array().expect("samples");
    let got: Vec<(DateTime<Utc>, i64, i64)> = points
        .iter()
        .map(|p| {
            (
                time(&p["collected_at"]),
                p["reallocated_sectors"].as_i64().expect("reallocated"),
                p["temperature_celsius"].as_i64().expect("temperature"),
            )
        })
        .collect();
    let want: Vec<(DateTime<Utc>, i64, i64)> = a_reports
        .iter()
        .map(|r| {
            let d = &r.smart.devices[0];
            (
                r.collected_at,
                d.reallocated_sectors.expect("set above") as i64,
                d.temperature_celsius.expect("set above"),
            )
        })
        .collect();
    assert_eq!(got, want);
    let nvme = history["drives"]
        .as_array()
        .expect("drive series")
        .iter()
        .find(|s| s["drive_key"] != ATA)
        .expect("the NVMe drive's series");
    assert_eq!(nvme["samples"].as_array().map(Vec::len), Some(3));
    let health = a_reports[1].smart.devices[1].nvme.clone().expect("nvme");
    assert_eq!(
        nvme["samples"][0]["nvme_percentage_used"].as_i64(),
        health.percentage_used.map(i64::from)
    );
    assert_eq!(
        nvme["samples"][0]["nvme_available_spare"].as_i64(),
        health.available_spare_percent.map(i64::from)
    );
    let fs = &history["filesystems"][0];
    assert_eq!(fs["mount_point"], "/");
    let used: Vec<u64> = fs["samples"]
        .as_array()
        .expect("filesystem samples")
        .iter()
        .map(|p| p["bytes_used"].as_u64().expect("bytes_used"))
        .collect();
    let want_used: Vec<u64> = a_reports
        .iter()
        .map(|r| r.filesystems.filesystems[0].bytes_used)
        .collect();
    assert_eq!(used, want_used);
    assert_eq!(
        detail["filesystems"][0]["bytes_used"].as_u64(),
        want_used.last().copied()
    );
    assert_eq!(
        history["nics"][0]["samples"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(detail["nics"][0]["name"], a_reports[3].nics.nics[0].name);

    let app_changes: Vec<(Value, Value)> = detail["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["component"] == "app")
        .map(|v| (v["old_version"].clone(), v["new_version"].clone()))
        .collect();
    assert_eq!(
        app_changes,
        [
            (Value::from("4.2.1"), Value::from("4.3.0")),
            (Value::Null, Value::from("4.2.1")),
        ],
        "newest first"
    );
    let nvme_key = nvme["drive_key"].as_str().expect("drive_key");
    let events: Vec<(&str, &str, &str, DateTime<Utc>)> = detail["drive_events"]
        .as_array()
        .expect("drive events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("kind"),
                e["drive_key"].as_str().expect("drive_key"),
                e["device_name"].as_str().expect("device_name"),
                time(&e["at"]),
            )
        })
        .collect();
    assert_eq!(
        events,
        [(
            "appeared",
            nvme_key,
            "/dev/nvme0",
            a_reports[1].collected_at
        )]
    );
    assert_eq!(detail["identity_events"], Value::Array(vec![]));
    assert_eq!(
        as_set(&detail),
        set(&[
            ("disk_degrading", "SN-API-A", "warning", "firing"),
            ("collector_degraded", "SN-API-A", "warning", "firing"),
        ])
    );

    // Fewer days, fewer reports: days=2 holds the reports of 1 and 0 days (and an hour) ago.
    let recent = ok(&ingest, "/api/v1/appliances/SN-API-A?days=2").await;
    assert_eq!(
        recent["history"]["reports"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        recent["history"]["drives"][0]["samples"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let b = ok(&ingest, "/api/v1/appliances/SN-API-B").await;
    assert_eq!(
        as_set(&b),
        set(&[("app_unhealthy", "SN-API-B", "critical", "resolved")])
    );

    refused(&ingest, "/api/v1/appliances/SN-NOBODY", 404, None).await;
    refused(
        &ingest,
        "/api/v1/appliances/SN-API-A?days=0",
        400,
        Some("days"),
    )
    .await;
    refused(
        &ingest,
        "/api/v1/appliances/SN-API-A?days=401",
        400,
        Some("days"),
    )
    .await;
    refused(&ingest, "/api/v1/nothing-here", 404, None).await;

    // --- The stored report, byte for byte as the appliance sent it.
    let path = format!(
        "/api/v1/appliances/SN-API-A/reports/{}",
        a_reports[2].report_id
    );
    let sent = api(&ingest, &path).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.body, a_bodies[2]);
    // Another appliance's serial does not reach it.
    refused(
        &ingest,
        &format!(
            "/api/v1/appliances/SN-API-B/reports/{}",
            a_reports[2].report_id
        ),
        404,
        None,
    )
    .await;
    refused(
        &ingest,
        &format!(
            "/api/v1/appliances/SN-API-A/reports/{}",
            uuid::Uuid::new_v4()
        ),
        404,
        None,
    )
    .await;
    refused(
        &ingest,
        "/api/v1/appliances/SN-API-A/reports/not-a-uuid",
        400,
        Some("report_id"),
    )
    .await;

    // --- Silence: an appliance last heard from 40 hours ago is past the default 36 h. Done
    // last, since a silence evaluator may raise an alert for it.
    db.client()
        .await
        .execute(
            "UPDATE appliances SET last_report_at = now() - interval '40 hours'
             WHERE serial = 'SN-API-B'",
            &[],
        )
        .await
        .expect("age SN-API-B");
    let fleet = ok(&ingest, "/api/v1/appliances").await;
    let silent: Vec<(&str, bool)> = fleet["appliances"]
        .as_array()
        .expect("appliances")
        .iter()
        .map(|a| {
            (
                a["serial"].as_str().expect("serial"),
                a["silent"].as_bool().expect("silent"),
            )
        })
        .collect();
    assert_eq!(
        silent,
        [("SN-API-A", false), ("SN-API-B", true), ("SN-API-C", false)]
    );
}
