//! Alerts reach a real Prometheus Alertmanager: the ingest binary posts firing alerts with their
//! labels and annotations, keeps them alive by re-sending, retries while Alertmanager is away,
//! and posts the resolution, after which Alertmanager no longer lists the alert.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use phonehome_tests::TestDb;
use phonehome_tests::alertmanager::{self, AlertmanagerProcess};
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::pki::TestPki;
use serde_json::{Value, json};

const SERIAL: &str = "AM-TEST 0001";
const DASHBOARD: &str = "http://ops.example:8080";
/// The dashboard link for SERIAL (the space percent-encoded).
const LINK: &str = "http://ops.example:8080/appliances/AM-TEST%200001";
const DRIVE: &str = "wwn:0x5000c500a1b2c3d4";
/// How long anything in this test may take to show up.
const PATIENCE: Duration = Duration::from_secs(20);

/// The appliance and two firing alerts, written as the rule evaluation would write them: a
/// drive's alert with a subject and an appliance-wide one without. Returns their ids.
async fn insert_firing_alerts(db: &TestDb) -> (i64, i64) {
    let client = db.client().await;
    let appliance: i32 = client
        .query_one(
            "INSERT INTO appliances (serial, first_seen_at, last_report_at, last_collected_at,
                 last_report_id, app_status, collector_version)
             VALUES ($1, now(), now(), now(), gen_random_uuid(), 'healthy', '0.1.0')
             RETURNING id",
            &[&SERIAL],
        )
        .await
        .expect("insert appliance")
        .get(0);
    let insert = "INSERT INTO alerts (fingerprint, rule, appliance_id, subject, severity, state,
                      started_at, value, summary, changed_at)
                  VALUES ($1 || '/' || $5 || '/' || $3, $1, $2, $3, $4, 'firing',
                      now() - interval '10 minutes', $6, $7, now() - interval '10 minutes')
                  RETURNING id";
    let disk: i64 = client
        .query_one(
            insert,
            &[
                &"disk_degrading",
                &appliance,
                &DRIVE,
                &"warning",
                &SERIAL,
                &"reallocated 8 → 24 (+16)",
                &"sda (ST4000DM004 ZFN0ABCD) reallocated 16 more sectors",
            ],
        )
        .await
        .expect("insert disk alert")
        .get(0);
    let silent: i64 = client
        .query_one(
            insert,
            &[
                &"appliance_silent",
                &appliance,
                &"",
                &"critical",
                &SERIAL,
                &"no report for 40 h",
                &"AM-TEST 0001 has not reported for 40 hours",
            ],
        )
        .await
        .expect("insert silent alert")
        .get(0);
    (disk, silent)
}

/// `(notified_at IS NOT NULL, resolution_notified)` of alert `id`.
async fn notified(db: &TestDb, id: i64) -> (bool, bool) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT notified_at IS NOT NULL, resolution_notified FROM alerts WHERE id = $1",
            &[&id],
        )
        .await
        .expect("read alert");
    (row.get(0), row.get(1))
}

/// Our appliance's alerts as Alertmanager lists them, keyed by alertname.
async fn listed(am: &AlertmanagerProcess) -> Vec<Value> {
    let mut alerts: Vec<Value> = am
        .alerts("")
        .await
        .into_iter()
        .filter(|a| a["labels"]["serial"] == SERIAL)
        .collect();
    alerts.sort_by_key(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_owned());
    alerts
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

/// Polls `check` until it returns `Some`, or fails with `what` and both logs.
async fn eventually<T, F, Fut>(
    what: &str,
    ingest: &IngestProcess,
    am: Option<&AlertmanagerProcess>,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not within {PATIENCE:?}\n--- ingest log ---\n{}\n--- alertmanager log ---\n{}",
                ingest.log(),
                am.map(|a| a.log()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_stay_alive_and_resolve_in_a_real_alertmanager() {
    assert!(
        std::path::Path::new(alertmanager::BINARY).is_file(),
        "{} is missing: install it with `apt-get install -y prometheus-alertmanager`",
        alertmanager::BINARY
    );
    let db = TestDb::new().await;
    let pki = TestPki::new();
    // Alertmanager is not up yet: the first rounds fail and must leave the alerts unsent.
    let am_addr = alertmanager::free_addr();
    let am_url = format!("http://{am_addr}");
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_ALERTMANAGER_URL", am_url.as_str()),
            ("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "1"),
            ("PHONEHOME_ALERTMANAGER_DASHBOARD_URL", DASHBOARD),
        ],
    )
    .await;
    // Routing labels set on the operations host go with every alert of the appliance.
    let out = std::process::Command::new(phonehome_tests::bins::bin("phonehome-ingest"))
        .args([
            "appliance",
            "label",
            "--serial",
            SERIAL,
            "customer=Acme GmbH",
            "site=fra1",
        ])
        .env("PHONEHOME_DATABASE_URL", db.url())
        .output()
        .expect("run phonehome-ingest appliance label");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "customer=Acme GmbH\nsite=fra1\n"
    );
    let (disk, silent) = insert_firing_alerts(&db).await;

    eventually(
        "a failed round logged while Alertmanager is away",
        &ingest,
        None,
        || async {
            ingest
                .log()
                .contains("notification round failed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        notified(&db, disk).await,
        (false, false),
        "marked sent though nothing took it"
    );
    assert_eq!(notified(&db, silent).await, (false, false));

    let am = AlertmanagerProcess::start_on(am_addr).await;
    let alerts = eventually(
        "both alerts listed by Alertmanager",
        &ingest,
        Some(&am),
        || async {
            let alerts = listed(&am).await;
            (alerts.len() == 2).then_some(alerts)
        },
    )
    .await;
    println!(
        "Alertmanager lists:\n{}",
        serde_json::to_string_pretty(&alerts).expect("json")
    );
    let (silent_am, disk_am) = (&alerts[0], &alerts[1]);
    assert_eq!(
        disk_am["labels"],
        json!({
            "alertname": "disk_degrading",
            "customer": "Acme GmbH",
            "serial": SERIAL,
            "severity": "warning",
            "site": "fra1",
            "subject": DRIVE,
        })
    );
    assert_eq!(
        disk_am["annotations"],
        json!({
            "summary": "sda (ST4000DM004 ZFN0ABCD) reallocated 16 more sectors",
            "value": "reallocated 8 → 24 (+16)",
            "dashboard": LINK,
        })
    );
    assert_eq!(disk_am["generatorURL"], LINK);
    assert_eq!(disk_am["status"]["state"], "active", "{disk_am}");
    // The episode's own start, not when it was first sent.
    let started = time(&disk_am["startsAt"]);
    assert!(
        Utc::now() - started > chrono::Duration::minutes(9),
        "startsAt {started}"
    );
    // Leased for four resend intervals: it ends soon unless re-sent.
    let first_end = time(&disk_am["endsAt"]);
    assert!(
        first_end > Utc::now() && first_end < Utc::now() + chrono::Duration::seconds(10),
        "endsAt {first_end} is not a few seconds ahead"
    );
    assert_eq!(
        silent_am["labels"],
        json!({"alertname": "appliance_silent", "customer": "Acme GmbH", "serial": SERIAL,
               "severity": "critical", "site": "fra1"}),
        "an empty subject is left out"
    );
    assert_eq!(silent_am["annotations"]["dashboard"], LINK);
    // Marked sent once Alertmanager took them: the ingest writes that after the POST returns,
    // so it may trail Alertmanager's list by a moment.
    eventually("both alerts marked sent", &ingest, Some(&am), || async {
        (notified(&db, disk).await == (true, false) && notified(&db, silent).await == (true, false))
            .then_some(())
    })
    .await;

    // Past the first lease, still active: the ingest re-sent it and pushed its end on.
    let past_lease = (first_end - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(past_lease).await;
    let alerts = listed(&am).await;
    assert_eq!(
        alerts.len(),
        2,
        "alerts expired in Alertmanager: not re-sent\n{}",
        ingest.log()
    );
    let renewed_end = time(&alerts[1]["endsAt"]);
    assert!(
        renewed_end > first_end,
        "endsAt did not move on: {renewed_end} vs {first_end}"
    );

    // The drive recovers: the rule evaluation resolves the row and marks it unsent.
    db.client()
        .await
        .execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = now(),
                 resolution_notified = false, notified_at = NULL
             WHERE id = $1",
            &[&disk],
        )
        .await
        .expect("resolve the disk alert");
    let alerts = eventually(
        "the resolved alert gone from Alertmanager's list",
        &ingest,
        Some(&am),
        || async {
            let alerts = listed(&am).await;
            (alerts.len() == 1).then_some(alerts)
        },
    )
    .await;
    println!(
        "after the resolution, Alertmanager lists:\n{}",
        serde_json::to_string_pretty(&alerts).expect("json")
    );
    assert_eq!(alerts[0]["labels"]["alertname"], "appliance_silent");
    // Not merely filtered from the default view: no state of Alertmanager's lists it.
    let everything = am
        .alerts("?active=true&silenced=true&inhibited=true&unprocessed=true")
        .await;
    assert!(
        !everything
            .iter()
            .any(|a| a["labels"]["alertname"] == "disk_degrading"),
        "{everything:?}"
    );
    eventually("resolution_notified set", &ingest, Some(&am), || async {
        (notified(&db, disk).await == (true, true)).then_some(())
    })
    .await;
    assert!(
        !notified(&db, silent).await.1,
        "a firing alert's resolution is not delivered"
    );
    assert!(
        ingest.log().contains("alertmanager: alerts sent"),
        "{}",
        ingest.log()
    );
}

/// Issue 13: a storm of new alerts is braked at `max_new_per_minute`; the oldest go first and
/// the rest wait (not lost: they stay unsent in the database for the next minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_new_alerts_is_braked_oldest_first() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let am = AlertmanagerProcess::start().await;
    let am_url = am.url();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_ALERTMANAGER_URL", am_url.as_str()),
            ("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "1"),
            ("PHONEHOME_ALERTMANAGER_MAX_NEW_PER_MINUTE", "1"),
        ],
    )
    .await;
    let (disk, silent) = insert_firing_alerts(&db).await;

    eventually("the oldest alert sent", &ingest, Some(&am), || async {
        (listed(&am).await.len() == 1).then_some(())
    })
    .await;
    eventually("the storm logged", &ingest, Some(&am), || async {
        ingest.log().contains("alert storm").then_some(())
    })
    .await;
    // A few more rounds (one a second): the newer one still waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: Vec<Value> = listed(&am)
        .await
        .iter()
        .map(|a| a["labels"]["alertname"].clone())
        .collect();
    assert_eq!(names, vec![json!("disk_degrading")]);
    assert_eq!(notified(&db, disk).await, (true, false));
    assert_eq!(
        notified(&db, silent).await,
        (false, false),
        "held, not lost"
    );
    let held = ingest
        .metric("phonehome_alertmanager_notifications_total{result=\"held\"}")
        .await
        .unwrap_or(0.0);
    assert!(held >= 1.0, "{held}");
}
