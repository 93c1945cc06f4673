//! Flapping (issue 15): a condition that clears and comes back within `[alerts]
//! reopen_within_hours` reopens its last episode, counted, instead of opening a new alert each
//! time; one that comes back later is a new episode.

use chrono::{Duration, SubsecRound, Utc};
use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_tests::{TestDb, example_report, store_report};

const SERIAL: &str = "SN-FLAP";

/// A report `hours_ago` with the first filesystem at `percent` used.
async fn report(storage: &Storage, hours_ago: i64, percent: u64) {
    let mut r = example_report(SERIAL);
    r.collected_at = (Utc::now() - Duration::hours(hours_ago)).trunc_subsecs(0);
    let f = &mut r.filesystems.filesystems[0];
    f.bytes_used = f.bytes_total / 100 * percent;
    f.bytes_available = f.bytes_total - f.bytes_used;
    assert_eq!(store_report(storage, &r).await, InsertOutcome::Stored);
}

/// (id, state, reopened) of the filesystem_full episodes, oldest first.
async fn episodes(db: &TestDb) -> Vec<(i64, String, i32)> {
    db.client()
        .await
        .query(
            "SELECT id, state, reopened FROM alerts WHERE rule = 'filesystem_full' ORDER BY id",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_condition_back_within_the_window_reopens_its_episode_and_later_is_a_new_one() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    report(&storage, 200, 97).await;
    let first = episodes(&db).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, "firing");
    // Clears, and is back 24 hours later (inside the default 48): the same episode, once.
    report(&storage, 190, 50).await;
    assert_eq!(episodes(&db).await[0].1, "resolved");
    report(&storage, 166, 97).await;
    let again = episodes(&db).await;
    assert_eq!(
        again,
        vec![(first[0].0, "firing".to_owned(), 1)],
        "reopened, counted"
    );
    report(&storage, 160, 50).await;
    report(&storage, 150, 97).await;
    assert_eq!(
        episodes(&db).await,
        vec![(first[0].0, "firing".to_owned(), 2)]
    );
    // Clears, and comes back four days later: a new episode.
    report(&storage, 140, 50).await;
    report(&storage, 40, 97).await;
    let later = episodes(&db).await;
    assert_eq!(later.len(), 2, "{later:?}");
    assert_eq!(later[0].1, "resolved");
    assert_eq!((later[1].1.as_str(), later[1].2), ("firing", 0));
}
