//! No report lost: with the ingest unreachable for seven daily runs, the collector spools every
//! report; once the ingest is back, the next run delivers all of them, oldest first, each stored
//! exactly once.

use std::net::TcpListener;

use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, collector};
use phonehome_tests::pki::TestPki;

const SERIAL: &str = "SN-OUTAGE";

#[tokio::test(flavor = "multi_thread")]
async fn seven_runs_during_an_outage_are_delivered_in_order_once_each() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let id = pki.appliance(SERIAL);
    let spool = pki.dir().join("spool");
    let config = pki.dir().join("collector.toml");
    // SMART is off: the test is about delivery, and nine runs of this machine's smartctl would
    // only make it slow and dependent on the host's disks.
    std::fs::write(
        &config,
        format!(
            "serial = {SERIAL:?}\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n\
             timeout_seconds = 5\n\n[smart]\nscan = false\n\n[spool]\ndir = {:?}\n\
             retry_budget_seconds = 1\n",
            pki.ca_cert(),
            id.cert,
            id.key,
            spool
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();

    // A port with nothing behind it: the ingest is down.
    let dead = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let down = format!("https://{dead}");
    for day in 1..=7 {
        let run = collector(
            &["run", "--config", &config],
            &[("PHONEHOME_COLLECTOR_SERVER", &down)],
        );
        assert_eq!(
            run.code,
            Some(75),
            "day {day}: saved for later: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one summary line: {}",
            run.stderr
        );
    }
    assert_eq!(db.count("reports").await, 0);

    let ingest = IngestProcess::start(&db, &pki).await;
    let up = ingest.report_url();
    let run = collector(
        &["run", "--config", &config],
        &[("PHONEHOME_COLLECTOR_SERVER", &up)],
    );
    assert_eq!(
        run.code,
        Some(0),
        "{}\ningest log:\n{}",
        run.stderr,
        ingest.log()
    );

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT report_id, collected_at FROM reports ORDER BY received_at",
            &[],
        )
        .await
        .expect("reports");
    assert_eq!(rows.len(), 8, "seven spooled reports and today's");
    let collected: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|r| r.get(1)).collect();
    let mut sorted = collected.clone();
    sorted.sort();
    assert_eq!(collected, sorted, "delivered oldest first");
    let mut ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "every report stored once");

    // The spool is empty now: the next day sends exactly one report.
    let run = collector(
        &["run", "--config", &config],
        &[("PHONEHOME_COLLECTOR_SERVER", &up)],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(db.count("reports").await, 9);
    let stored: i64 = client
        .query_one(
            "SELECT report_count FROM appliances WHERE serial = $1",
            &[&SERIAL],
        )
        .await
        .expect("appliance")
        .get(0);
    assert_eq!(stored, 9);
}
