//! `phonehome-loadgen fill` against a fresh database: what it says it wrote is what PostgreSQL
//! holds, the fleet's troubles show as the alerts and states an operator would see, and two
//! runs into one database are two fleets, not clones of each other.

use std::process::{Command, Output};

use phonehome_tests::TestDb;

/// Runs `phonehome-loadgen fill ARGS` off the test's runtime threads.
async fn fill(args: &[&str]) -> Output {
    let args: Vec<String> = std::iter::once("fill".to_owned())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run phonehome-loadgen fill")
    })
    .await
    .expect("the blocking task ran")
}

/// stdout of a run that must succeed.
async fn fill_ok(args: &[&str]) -> String {
    let out = fill(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `what` in `text` ("failing 4" → 4).
fn number_after(text: &str, what: &str) -> i64 {
    let at = text
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} missing from:\n{text}"));
    text[at + what.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {what:?} in:\n{text}"))
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
async fn a_fill_writes_a_fleet_that_needs_watching_and_two_runs_are_two_fleets() {
    let db = TestDb::new().await;
    let out = fill_ok(&[
        "--database-url",
        db.url(),
        "--appliances",
        "300",
        "--days",
        "12",
        "--seed",
        "42",
        "--serial-prefix",
        "FILLA-",
    ])
    .await;
    let reports = number_after(&out, "300 appliances x 12 days:");
    assert_eq!(db.count("reports").await, reports, "{out}");
    assert_eq!(db.count("appliances").await, 300);
    let failing = number_after(&out, "failing");
    let silent = number_after(&out, "silent");
    let outdated = number_after(&out, "outdated");
    let hot = number_after(&out, "hot");
    let filling = number_after(&out, "filling");
    for (what, n) in [
        ("failing", failing),
        ("silent", silent),
        ("outdated", outdated),
        ("hot", hot),
        ("filling", filling),
    ] {
        assert!(n > 0, "300 appliances should include {what} ones:\n{out}");
    }
    // Every silent appliance is missing its last days: 12 a day each for the rest.
    assert!(
        reports < 300 * 12 && reports > 300 * 12 - silent * 12,
        "{out}"
    );

    let firing = |rule: &str| {
        format!(
            "SELECT count(DISTINCT appliance_id) FROM alerts WHERE rule = '{rule}' AND state = 'firing'"
        )
    };
    assert_eq!(scalar(&db, &firing("disk_failing")).await, failing, "{out}");
    assert_eq!(scalar(&db, &firing("disk_temperature")).await, hot, "{out}");
    assert!(scalar(&db, &firing("filesystem_filling")).await >= filling);
    // Below the default minimum 4.3.0: the outdated ones, and any that fell silent before
    // the upgrade reached them.
    let below = scalar(
        &db,
        "SELECT count(*) FROM appliances WHERE app_version <> '4.3.0'",
    )
    .await;
    assert!(below >= outdated, "{below} < {outdated}");
    assert_eq!(scalar(&db, &firing("app_outdated")).await, below);
    // Critical health (3) for at least every appliance with a failing drive.
    assert!(scalar(&db, "SELECT count(*) FROM appliances WHERE health = 3").await >= failing);
    // Silent ones last reported days ago; the rest within the last day.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM appliances WHERE last_report_at < now() - interval '36 hours'"
        )
        .await,
        silent
    );
    // Maintenance ran: a body dictionary, daily version counts for the adoption charts.
    assert!(db.count("body_dictionaries").await >= 1);
    assert!(db.count("version_counts_daily").await >= 12);

    // A second run into the same database: its own machines, not clones of the first.
    fill_ok(&[
        "--database-url",
        db.url(),
        "--appliances",
        "300",
        "--days",
        "3",
        "--serial-prefix",
        "FILLB-",
    ])
    .await;
    assert_eq!(db.count("appliances").await, 600);
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM alerts WHERE rule = 'identity_conflict'"
        )
        .await,
        0,
        "two runs share machine-ids or UUIDs"
    );
    assert_eq!(
        scalar(&db, "SELECT count(DISTINCT machine_id) FROM appliances").await,
        600
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM drive_events WHERE kind = 'moved'"
        )
        .await,
        0,
        "a drive of one run shows up in another"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_refused_before_anything_is_written() {
    let db = TestDb::new().await;
    let out = fill(&["--database-url", db.url(), "--appliances", "0"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--appliances"), "{stderr}");

    let out = fill(&[
        "--database-url",
        db.url(),
        "--appliances",
        "3",
        "--serial-prefix",
        &"X".repeat(60),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--serial-prefix"), "{stderr}");
    assert_eq!(
        db.count("appliances").await,
        0,
        "a refused run wrote appliances"
    );
    assert_eq!(db.count("reports").await, 0, "a refused run wrote reports");

    let out = fill(&["--appliances", "3"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
}
