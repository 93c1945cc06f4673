//! Runs the real `phonehome-loadgen` binary for a tiny load against a fresh database and checks
//! what it prints against what PostgreSQL holds afterwards.

use std::process::Command;

use phonehome_tests::TestDb;

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_run_sends_every_report_and_measures_both_ceilings() {
    let db = TestDb::new().await;
    let run = common::run_ok(
        db.url(),
        &["--appliances", "5", "--reports", "50", "--concurrency", "8"],
    )
    .await;
    let has = |needle: &str| run.has(needle);
    has("ingest: 50 reports in ");
    has("ingest: 202: 50, 200: 0, other status: 0, transport errors: 0;");
    has("ceiling: 50 reports in ");
    has("errors: 0");
    has("ratio ingest/ceiling: ");
    has("connection ceiling: 50 reports in ");
    has("failed: 0");
    has("limit: ");
    has("ratio ingest/limit: ");
    has("bytes per report, tables + indexes");
    has("storage without dead row versions: ");

    assert_eq!(
        db.count("reports").await,
        100,
        "50 via the ingest + 50 via the ceiling; the connection ceiling stores nothing"
    );
    // The ceiling's reports go to appliances of its own: sent to the ingest's five, every one
    // would be older than what the ingest stored, and judged late (less work than a report).
    assert_eq!(
        db.count("appliances").await,
        10,
        "5 appliances of the ingest phase + 5 of the ceiling"
    );
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_phonehome-loadgen"))
        .args([
            "--database-url",
            "postgres://postgres@127.0.0.1:1/nothing",
            "--appliances",
            "1",
            "--reports",
            "1",
        ])
        .output()
        .expect("run phonehome-loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1/nothing"),
        "{stderr}"
    );
}
