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

/// `kill -9` of the ingest while collectors deliver (issue 13, fault campaign): runs that found
/// it dead, and reports whose answer the kill swallowed after the commit, wait in the spools;
/// after a restart the next runs deliver them, and every report any run made is stored exactly
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_under_load_loses_nothing_and_stores_nothing_twice() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let appliances: Vec<(String, String)> = (0..6)
        .map(|i| {
            let serial = format!("SN-KILL-{i}");
            let id = pki.appliance(&serial);
            let dir = pki.dir().join(&serial);
            std::fs::create_dir_all(&dir).expect("dir");
            let config = dir.join("collector.toml");
            std::fs::write(
                &config,
                format!(
                    "serial = {serial:?}\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n\
                     timeout_seconds = 5\n\n[smart]\nscan = false\n\n[spool]\ndir = {:?}\n\
                     retry_budget_seconds = 1\n",
                    pki.ca_cert(),
                    id.cert,
                    id.key,
                    dir.join("spool")
                ),
            )
            .expect("config");
            (serial, config.to_string_lossy().into_owned())
        })
        .collect();
    // Every appliance runs `rounds` times in parallel with the others; the returned codes are
    // 0 (delivered) or 75 (kept for later).
    let run_all = |url: String, rounds: usize| {
        let appliances = appliances.clone();
        std::thread::spawn(move || {
            let threads: Vec<_> = appliances
                .into_iter()
                .map(|(serial, config)| {
                    let url = url.clone();
                    std::thread::spawn(move || {
                        (0..rounds)
                            .map(|_| {
                                let run = collector(
                                    &["run", "--config", &config],
                                    &[("PHONEHOME_COLLECTOR_SERVER", &url)],
                                );
                                assert!(
                                    matches!(run.code, Some(0) | Some(75)),
                                    "{serial}: {:?} {}",
                                    run.code,
                                    run.stderr
                                );
                                run.code
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("collector thread"))
                .collect::<Vec<_>>()
        })
    };

    let mut ingest = IngestProcess::start(&db, &pki).await;
    let load = run_all(ingest.report_url(), 12);
    // Mid-load (the first reports are in), the ingest dies without a word.
    for _ in 0..500 {
        if db.count("reports").await >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ingest.kill_hard();
    let codes = tokio::task::spawn_blocking(move || load.join().expect("load"))
        .await
        .expect("join");
    let kept: usize = codes.iter().flatten().filter(|c| **c == Some(75)).count();
    assert!(kept > 0, "the kill landed after every run: {codes:?}");

    // Back up; each appliance's next run delivers what it kept.
    let ingest = IngestProcess::start(&db, &pki).await;
    let after = run_all(ingest.report_url(), 1);
    let codes2 = tokio::task::spawn_blocking(move || after.join().expect("runs"))
        .await
        .expect("join");
    assert!(
        codes2.iter().flatten().all(|c| *c == Some(0)),
        "{codes2:?}\n{}",
        ingest.log()
    );

    // Thirteen runs per appliance, thirteen reports each, once each.
    let client = db.client().await;
    for (serial, _) in &appliances {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT r.report_id) FROM reports r
                 JOIN appliances a ON a.id = r.appliance_id WHERE a.serial = $1",
                &[serial],
            )
            .await
            .expect("count");
        let (n, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (n, distinct),
            (13, 13),
            "{serial}: {codes:?} then {codes2:?}"
        );
    }
}
