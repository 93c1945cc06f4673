//! Alerts and the health kept from them, where batches meet: a backlog of days in one
//! transaction (a spool delivered after an outage, or the load generator's bulk fill) whose alert
//! ends and begins again keeps both episodes (or reopens the first, counted, when it came back
//! within `reopen_within_hours`); health a race left stale is put right by maintenance.

use chrono::{Duration, Utc};
use phonehome_ingest::storage::{InsertOutcome, Storage, maintenance};
use phonehome_tests::{TestDb, example_report};

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_that_resolves_and_fires_again_in_one_batch_keeps_both_episodes() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 2).expect("pool");
    let day0 = Utc::now() - Duration::days(6);
    let at_of = |serial: &'static str| {
        let storage = &storage;
        move |day: i64, celsius: i64| {
            let mut r = example_report(serial);
            r.collected_at = day0 + Duration::days(day);
            r.smart.devices[0].temperature_celsius = Some(celsius);
            storage
                .prepare_report(&r, &[9; 32], r.collected_at)
                .expect("prepared")
        }
    };
    let at = |day: i64, celsius: i64| {
        let mut r = example_report("BACKLOG-1");
        r.collected_at = day0 + Duration::days(day);
        r.smart.devices[0].temperature_celsius = Some(celsius);
        storage
            .prepare_report(&r, &[9; 32], r.collected_at)
            .expect("prepared")
    };

    // The hot drive's alert is in the database before the backlog arrives.
    let first = storage.write_prepared(&[at(0, 66)]).await.expect("day 0");
    assert_eq!(first, vec![InsertOutcome::Stored]);

    // Cooled down on day 1, hot again on day 4 (past reopen_within_hours): one transaction.
    let backlog = storage
        .write_prepared(&[at(4, 67), at(1, 40)])
        .await
        .expect("a backlog whose alert flaps commits");
    assert_eq!(backlog, vec![InsertOutcome::Stored, InsertOutcome::Stored]);

    let rows = db
        .client()
        .await
        .query(
            "SELECT state, started_at, resolved_at FROM alerts
             WHERE rule = 'disk_temperature' ORDER BY started_at",
            &[],
        )
        .await
        .expect("alerts");
    // PostgreSQL keeps microseconds: whole days after day 0, rounded.
    let days = |t: chrono::DateTime<Utc>| {
        ((t - day0).num_milliseconds() as f64 / 86_400_000.0).round() as i64
    };
    let episodes: Vec<(String, i64, Option<i64>)> = rows
        .iter()
        .map(|r| {
            let started: chrono::DateTime<Utc> = r.get(1);
            let resolved: Option<chrono::DateTime<Utc>> = r.get(2);
            (r.get(0), days(started), resolved.map(days))
        })
        .collect();
    assert_eq!(
        episodes,
        vec![
            ("resolved".to_owned(), 0, Some(1)),
            ("firing".to_owned(), 4, None),
        ]
    );

    // Back on day 2 instead, within the window: the day-0 episode reopens, counted.
    let at2 = at_of("BACKLOG-2");
    storage.write_prepared(&[at2(0, 66)]).await.expect("day 0");
    storage
        .write_prepared(&[at2(2, 67), at2(1, 40)])
        .await
        .expect("a backlog whose alert flaps back commits");
    let rows = db
        .client()
        .await
        .query(
            "SELECT al.state, al.started_at, al.reopened FROM alerts al
             JOIN appliances a ON a.id = al.appliance_id
             WHERE al.rule = 'disk_temperature' AND a.serial = 'BACKLOG-2'",
            &[],
        )
        .await
        .expect("alerts");
    let episodes: Vec<(String, i64, i32)> = rows
        .iter()
        .map(|r| (r.get(0), days(r.get(1)), r.get(2)))
        .collect();
    assert_eq!(episodes, vec![("firing".to_owned(), 0, 1)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_puts_right_health_that_disagrees_with_the_firing_alerts() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 2).expect("pool");
    let mut r = example_report("HEALTH-1");
    r.smart.devices[0].temperature_celsius = Some(70);
    let prepared = storage
        .prepare_report(&r, &[9; 32], r.collected_at)
        .expect("prepared");
    storage.write_prepared(&[prepared]).await.expect("stored");
    let health = |sql: &'static str| {
        let db = &db;
        async move {
            let v: i16 = db
                .client()
                .await
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get(0);
            v
        }
    };
    let appliance = "SELECT health FROM appliances WHERE serial = 'HEALTH-1'";
    let drive = "SELECT max(health) FROM drives";
    assert_eq!(health(appliance).await, 2, "a hot drive is a warning");
    assert_eq!(health(drive).await, 2);

    // What two racing batches could leave behind: health that misses a firing alert.
    db.client()
        .await
        .batch_execute("UPDATE appliances SET health = 0; UPDATE drives SET health = 0")
        .await
        .expect("break health");
    let summary = maintenance::run_once(&storage, "test", std::time::Duration::ZERO)
        .await
        .expect("maintenance")
        .expect("nobody else ran it");
    assert_eq!(summary.health_repaired, 2, "{summary:?}");
    assert_eq!(health(appliance).await, 2);
    assert_eq!(health(drive).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_every_alert_statement_however_many_rows_it_touches() {
    // Health is kept by statement triggers on alerts (migration 19): each INSERT or UPDATE
    // recomputes the worst firing severity of the appliances and drives it touched.
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 2).expect("pool");
    let mut r = example_report("HEALTH-2");
    r.smart.devices[0].temperature_celsius = Some(70);
    let prepared = storage
        .prepare_report(&r, &[9; 32], r.collected_at)
        .expect("prepared");
    storage.write_prepared(&[prepared]).await.expect("stored");
    let client = db.client().await;
    let health = || async {
        let row = client
            .query_one(
                "SELECT a.health, (SELECT d.health FROM drives d JOIN alerts al
                                   ON al.subject = d.drive_key AND al.rule LIKE 'disk\\_%'
                                   LIMIT 1)
                 FROM appliances a WHERE a.serial = 'HEALTH-2'",
                &[],
            )
            .await
            .expect("health");
        (row.get::<_, i16>(0), row.get::<_, i16>(1))
    };
    let run = |sql: &'static str| {
        let client = &client;
        async move { client.batch_execute(sql).await.expect(sql) }
    };
    assert_eq!(
        health().await,
        (2, 2),
        "(appliance, drive): a hot drive is a warning"
    );

    // Two firing alerts in one statement: the worst wins.
    run(
        "INSERT INTO alerts (fingerprint, rule, appliance_id, subject, severity, state,
                             started_at, value, summary, changed_at)
         SELECT 'test/' || s, 'test_rule', a.id, s, sev, 'firing', now(), '1', 'test', now()
         FROM appliances a, (VALUES ('x', 'critical'), ('y', 'info')) v(s, sev)
         WHERE a.serial = 'HEALTH-2'",
    )
    .await;
    assert_eq!(health().await, (3, 2), "not a disk alert: the drive stays");
    // Resolving the critical one brings the appliance back to the drive's warning.
    run("UPDATE alerts SET state = 'resolved', resolved_at = now() WHERE subject = 'x'").await;
    assert_eq!(health().await, (2, 2));
    // A disk alert's severity rises: the appliance and the drive follow.
    run("UPDATE alerts SET severity = 'critical' WHERE rule LIKE 'disk\\_%'").await;
    assert_eq!(health().await, (3, 3));
    // An update that changes neither state nor severity changes no health.
    run("UPDATE appliances SET health = 1 WHERE serial = 'HEALTH-2'").await;
    run("UPDATE alerts SET value = '2' WHERE state = 'firing'").await;
    assert_eq!(health().await.0, 1, "recomputed although nothing changed");
    run("UPDATE appliances SET health = 3 WHERE serial = 'HEALTH-2'").await;
    // Everything resolved in one statement: nothing fires, health is 0 everywhere.
    run("UPDATE alerts SET state = 'resolved', resolved_at = now() WHERE state = 'firing'").await;
    assert_eq!(health().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_makes_the_writer_panic_is_refused_alone_and_the_writer_goes_on() {
    let db = TestDb::new().await;
    let storage = Storage::connect_with(
        db.url(),
        phonehome_ingest::storage::StorageSettings {
            pool_size: 4,
            writers: 1,
            panic_on_serial: Some("POISON-1".into()),
            ..Default::default()
        },
    )
    .expect("pool");
    // Three reports at once: one writer takes them in one batch (or more), which panics.
    let poison = example_report("POISON-1");
    let good_a = example_report("GOOD-A");
    let good_b = example_report("GOOD-B");
    let (p, a, b) = tokio::join!(
        phonehome_tests::try_store_report(&storage, &poison),
        phonehome_tests::try_store_report(&storage, &good_a),
        phonehome_tests::try_store_report(&storage, &good_b),
    );
    let refused = p.expect_err("the poisonous report is refused");
    assert_eq!(
        refused.kind(),
        phonehome_ingest::storage::FailureKind::BadData,
        "a 422, so the collector does not send it for ever: {refused}"
    );
    assert_eq!(a.expect("its neighbour is stored"), InsertOutcome::Stored);
    assert_eq!(b.expect("its neighbour is stored"), InsertOutcome::Stored);

    // The writer is still there for the next report.
    let later = example_report("GOOD-C");
    assert_eq!(
        phonehome_tests::try_store_report(&storage, &later)
            .await
            .expect("stored after the panic"),
        InsertOutcome::Stored
    );
    let health = storage.write_health();
    assert!(health.panics >= 1, "{health:?}");
    assert_eq!(
        health.failing, None,
        "a poisonous report is not a failing database"
    );
    assert_eq!(db.count("reports").await, 3);
}
