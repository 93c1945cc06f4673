//! Runs the real `phonehome-loadgen --outage` against a fresh database and checks what a user
//! would: every spooled report stored exactly once, the ingest's 503 + Retry-After path really
//! taken, and the drain's figures printed.

use std::process::Command;

use phonehome_tests::TestDb;

mod common;

/// The number after `label` in `text` ("503: 7," gives 7 for "503: ").
fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_outage_drains_through_503s_and_stores_every_report_once() {
    let db = TestDb::new().await;
    // The in-process ingest admits one report at a time, and a request waits at most 250 ms for
    // its turn: 1,000 appliances calling at once cannot all be served in that time (that would
    // take a commit every 0.25 ms, one at a time), so the later ones are turned away with 503
    // and must come back after the Retry-After the ingest chose. With the default one-second
    // wait, whether any is refused would depend on how fast this machine serves the queue.
    // That Retry-After is 15-45 s and cannot be shortened from outside the ingest (a shorter one
    // would no longer be the path real collectors take), so this test takes about 45 s, up to
    // 90 s when retries collide again: the price of exercising the retry path for real.
    let run = common::run_ok(
        db.url(),
        &[
            "--outage",
            "--appliances",
            "1000",
            "--backlog",
            "2",
            "--max-in-flight",
            "1",
            "--admission-wait-ms",
            "250",
        ],
    )
    .await;
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    let has = |needle: &str| run.has(needle);
    has("1000 appliances x 2 spooled reports = 2000 reports");
    has("max_in_flight 1,");
    has("admission wait 250 ms");
    has("outage: drained in ");
    has("2000 of 2000 reports acknowledged");
    has("latency ms of the acknowledged posts");
    has("other non-2xx: 0, transport errors: 0;");
    has("1000 drained, 0 gave up");
    has("0 reports left in their spools");
    has(
        "2000 new rows in reports (0 before, 2000 after), 1000 x 2 = 2000 once drained: every report exactly once",
    );
    let unavailable = number_after(stdout, ", 503: ").expect("the 503 count is printed");
    assert!(
        unavailable > 0,
        "no 503 at max_in_flight 1: the retry path was not exercised\n{stdout}"
    );
    assert_eq!(
        number_after(stdout, "outage: 202: "),
        Some(2000),
        "{stdout}"
    );
    assert!(
        stderr.contains("503s so far"),
        "progress goes to stderr during the wait:\n{stderr}"
    );

    assert_eq!(db.count("reports").await, 2000, "each report stored once");
    assert_eq!(db.count("appliances").await, 1000);
    // The list's and the silence check's copy (migration 18): every appliance's row holds the
    // minute of its last report, though most second reports of a spool did not write it.
    let seen: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM appliances a JOIN appliance_seen s ON s.appliance_id = a.id
             WHERE s.reported_minute = date_trunc('minute', a.last_report_at, 'UTC')
               AND s.serial = a.serial AND s.hostname IS NOT DISTINCT FROM a.hostname",
            &[],
        )
        .await
        .expect("appliance_seen")
        .get(0);
    assert_eq!(seen, 1000, "appliance_seen rows that match their appliance");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_fleet_drains_the_days_after_the_one_it_had_stored() {
    let db = TestDb::new().await;
    let run = common::run_ok(
        db.url(),
        // The bodies built before t0, which must be the days after the stored one.
        &[
            "--outage",
            "--known-fleet",
            "--prebuilt-bodies",
            "--appliances",
            "200",
        ],
    )
    .await;
    let has = |needle: &str| run.has(needle);
    has("prebuilt bodies: 400 built in ");
    has("known fleet: 200 reports of the day before the outage stored in ");
    has("VACUUM ANALYZE in ");
    has("200 appliances x 2 spooled reports = 400 reports");
    has("400 of 400 reports acknowledged");
    has("200 drained, 0 gave up");
    has(
        "400 new rows in reports (200 before, 600 after), 200 x 2 = 400 once drained: every report exactly once",
    );
    let client = db.client().await;
    // Every appliance moved forward through its three days: nothing arrived late, and the
    // current state is the newest day's.
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE report_count = 3),
                    count(*) FILTER (WHERE last_collected_at = (
                        SELECT max(collected_at) FROM reports r WHERE r.appliance_id = a.id))
             FROM appliances a",
            &[],
        )
        .await
        .expect("appliances");
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        counts,
        (200, 200, 200),
        "(appliances, with 3 reports, newest state)"
    );
    // The seeded day was a day before the drain's: each appliance's minute moved.
    let seen: i64 = client
        .query_one(
            "SELECT count(*) FROM appliances a JOIN appliance_seen s ON s.appliance_id = a.id
             WHERE s.reported_minute = date_trunc('minute', a.last_report_at, 'UTC')",
            &[],
        )
        .await
        .expect("appliance_seen")
        .get(0);
    assert_eq!(
        seen, 200,
        "appliance_seen rows at their appliance's last minute"
    );
}

#[test]
fn outage_flags_do_not_mix_with_the_throughput_phases() {
    for args in [
        &["--outage", "--reports", "5"][..],
        &["--outage", "--keep-alive"][..],
        &["--reports", "5", "--backlog", "3"][..],
        &["--reports", "5", "--retry-budget-secs", "10"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
            .args([
                "--database-url",
                "postgres://127.0.0.1:1/x",
                "--appliances",
                "2",
            ])
            .args(args)
            .output()
            .expect("run phonehome-loadgen");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot be used with"), "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
        .args(["--database-url", "postgres://127.0.0.1:1/x"])
        .args(["--appliances", "2", "--reports", "5", "--known-fleet"])
        .output()
        .expect("run phonehome-loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "--known-fleet alone: {stderr}");
    assert!(stderr.contains("--outage"), "--known-fleet alone: {stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
        .args(["--database-url", "postgres://127.0.0.1:1/x"])
        .args(["--appliances", "2", "--reports", "5", "--prebuilt-bodies"])
        .output()
        .expect("run phonehome-loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--prebuilt-bodies alone: {stderr}"
    );
    assert!(
        stderr.contains("--outage"),
        "--prebuilt-bodies alone: {stderr}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
        .arg("--help")
        .output()
        .expect("run phonehome-loadgen --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--outage",
        "--backlog",
        "--retry-budget-secs",
        "--max-in-flight",
        "--max-connections",
        "--known-fleet",
        "--prebuilt-bodies",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
