//! The history model, checked in PostgreSQL: per-report time series, current state, drive
//! membership and its events, the version audit trail and per-day counts, monthly partitions and
//! retention, the report-body dictionary, batching under concurrency, and the move of reports
//! kept by the walking skeleton's schema.

use chrono::{Duration, Utc};
use phonehome_ingest::storage::maintenance;
use phonehome_ingest::storage::{InsertOutcome, Storage, StorageSettings};
use phonehome_ingest::tls::ApplianceIdentity;
use phonehome_schema::Report;
use phonehome_tests::TestDb;

/// The example report (real SMART captures: an ATA disk, an NVMe drive, a disk in standby) for
/// `serial`, collected `days_ago` days before now.
fn report(serial: &str, days_ago: i64) -> Report {
    let mut r = phonehome_tests::example_report(serial);
    r.collected_at = Utc::now() - Duration::days(days_ago);
    r
}

use phonehome_tests::store_report as store;

async fn rows(db: &TestDb, sql: &str) -> Vec<Vec<String>> {
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_report_becomes_time_series_and_current_state() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let mut day1 = report("SN-TS", 1);
    let mut day0 = report("SN-TS", 0);
    day0.smart.devices[0].reallocated_sectors = Some(12);
    day0.smart.devices[0].temperature_celsius = Some(51);
    day0.filesystems.filesystems[0].bytes_used += 1_000_000;
    day1.nics.nics[0].counters.insert("rx_errors".into(), 3);
    day0.nics.nics[0].counters.insert("rx_errors".into(), 9);
    assert_eq!(store(&storage, &day1).await, InsertOutcome::Stored);
    assert_eq!(store(&storage, &day0).await, InsertOutcome::Stored);
    assert_eq!(store(&storage, &day0).await, InsertOutcome::Duplicate);

    // The readings come back from the kept bodies through the API's reader.
    let detail = storage
        .appliance_detail("SN-TS", 7)
        .await
        .expect("read")
        .expect("the appliance");
    let h = &detail.history;
    // Per drive, keyed by WWN (the /dev name is kept only as where it sat): the ATA disk's
    // values of each day, oldest first.
    let ata: Vec<Vec<String>> = h
        .drives
        .iter()
        .filter(|s| s.drive_key.starts_with("wwn:0x5000c500"))
        .flat_map(|s| {
            s.samples.iter().map(|r| {
                vec![
                    s.drive_key.clone(),
                    r.reallocated_sectors.unwrap_or(0).to_string(),
                    r.temperature_celsius.unwrap_or(0).to_string(),
                    r.power_on_hours.unwrap_or(0).to_string(),
                ]
            })
        })
        .collect();
    let first = &day1.smart.devices[0];
    assert_eq!(
        ata,
        vec![
            vec![
                "wwn:0x5000c500a2b3c4d5".to_owned(),
                first.reallocated_sectors.unwrap_or(0).to_string(),
                first.temperature_celsius.unwrap_or(0).to_string(),
                first.power_on_hours.unwrap_or(0).to_string(),
            ],
            vec![
                "wwn:0x5000c500a2b3c4d5".to_owned(),
                "12".into(),
                "51".into(),
                first.power_on_hours.unwrap_or(0).to_string(),
            ],
        ]
    );
    // Each reading is dated by its report (min of collected and received), oldest first.
    let ata_series = h
        .drives
        .iter()
        .find(|s| s.drive_key == "wwn:0x5000c500a2b3c4d5")
        .expect("the ATA disk's series");
    assert_eq!(
        ata_series
            .samples
            .iter()
            .map(|r| r.collected_at.timestamp_micros())
            .collect::<Vec<_>>(),
        vec![
            day1.collected_at.timestamp_micros(),
            day0.collected_at.timestamp_micros()
        ]
    );
    let nvme_series = h
        .drives
        .iter()
        .find(|s| s.drive_key.starts_with("wwn:eui."))
        .expect("the NVMe drive's series");
    let r = &nvme_series.samples[0];
    let nvme = vec![
        r.nvme_percentage_used.unwrap_or(0).to_string(),
        r.nvme_available_spare.unwrap_or(0).to_string(),
        r.nvme_media_errors.unwrap_or(0).to_string(),
        r.nvme_critical_warning.unwrap_or(0).to_string(),
    ];
    let n = day1.smart.devices[1].nvme.clone().expect("nvme health");
    assert_eq!(
        nvme,
        vec![
            n.percentage_used.unwrap_or(0).to_string(),
            n.available_spare_percent.unwrap_or(0).to_string(),
            n.media_errors.unwrap_or(0).to_string(),
            n.critical_warning.unwrap_or(0).to_string(),
        ]
    );
    // The disk in standby has no identity in its output: no readings, no drive.
    assert_eq!(h.drives.len(), 2, "{:?}", h.drives);
    assert_eq!(db.count("drives").await, 2);
    // The newest readings of the drives now in the appliance are the newest report's.
    let latest_ata = detail
        .drives
        .iter()
        .find(|d| d.drive_key == "wwn:0x5000c500a2b3c4d5")
        .and_then(|d| d.latest.clone())
        .expect("the ATA disk's newest reading");
    assert_eq!(latest_ata.reallocated_sectors, Some(12));
    assert_eq!(latest_ata.temperature_celsius, Some(51));

    let fs: Vec<Vec<String>> = h
        .filesystems
        .iter()
        .flat_map(|s| {
            s.samples
                .iter()
                .map(|p| vec![s.mount_point.clone(), p.bytes_used.to_string()])
        })
        .collect();
    let used = day1.filesystems.filesystems[0].bytes_used;
    assert_eq!(
        fs,
        vec![
            vec!["/".to_owned(), used.to_string()],
            vec!["/".to_owned(), (used + 1_000_000).to_string()],
        ]
    );
    assert_eq!(
        detail
            .filesystems
            .iter()
            .map(|f| (f.mount_point.as_str(), f.sample.bytes_used))
            .collect::<Vec<_>>(),
        vec![("/", (used + 1_000_000) as i64)]
    );
    let nic: Vec<Vec<String>> = h
        .nics
        .iter()
        .flat_map(|s| {
            s.samples.iter().map(|p| {
                vec![
                    s.name.clone(),
                    p.rx_errors.map(|e| e.to_string()).unwrap_or_default(),
                ]
            })
        })
        .collect();
    let name = day1.nics.nics[0].name.clone();
    assert_eq!(
        nic,
        vec![vec![name.clone(), "3".into()], vec![name, "9".into()]]
    );
    // Only the reports' own rows hold history: no table per drive, filesystem or NIC.
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM pg_class
             WHERE relname IN ('drive_samples', 'filesystem_samples', 'nic_samples')"
        )
        .await,
        vec![vec!["0".to_owned()]]
    );

    // Current state: one row, the newest report's values, counts of everything.
    let state = rows(
        &db,
        "SELECT report_count::text, last_report_id::text, app_version, app_status,
                drive_count::text, filesystem_count::text, nic_count::text
         FROM appliances WHERE serial = 'SN-TS'",
    )
    .await;
    assert_eq!(
        state,
        vec![vec![
            "2".to_owned(),
            day0.report_id.to_string(),
            day0.app.version.clone().unwrap_or_default(),
            day0.app.status.as_str().to_owned(),
            day0.smart.devices.len().to_string(),
            "1".into(),
            day0.nics.nics.len().to_string(),
        ]]
    );
    // The per-report app status and version are kept with each report.
    assert_eq!(
        rows(
            &db,
            "SELECT app_status, app_version FROM reports ORDER BY collected_at"
        )
        .await,
        vec![
            vec![
                day1.app.status.as_str().to_owned(),
                day1.app.version.clone().unwrap_or_default()
            ],
            vec![
                day0.app.status.as_str().to_owned(),
                day0.app.version.clone().unwrap_or_default()
            ],
        ]
    );
}

/// An appliance that reports far more often than daily (by hand, or a hostile one) costs a
/// chart no more than four bodies a day of its window: the newest report of each slice.
#[tokio::test(flavor = "multi_thread")]
async fn a_chart_decodes_at_most_four_bodies_a_day_however_often_an_appliance_reported() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 2).expect("storage");
    let mut sent = Vec::new();
    for k in 0..12i64 {
        let mut r = report("SN-OFTEN", 0);
        r.collected_at = Utc::now() - Duration::hours(22) + Duration::hours(2 * k);
        r.filesystems.filesystems[0].bytes_used = 1_000 + k as u64;
        store(&storage, &r).await;
        sent.push(r);
    }
    let detail = storage
        .appliance_detail("SN-OFTEN", 1)
        .await
        .expect("read")
        .expect("the appliance");
    assert_eq!(detail.history.reports.len(), 12, "every report is listed");
    let used: Vec<i64> = detail.history.filesystems[0]
        .samples
        .iter()
        .map(|p| p.bytes_used)
        .collect();
    assert!(
        (2..=4).contains(&used.len()),
        "a day's window decodes at most 4 bodies: {used:?}"
    );
    assert!(
        used.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {used:?}"
    );
    assert_eq!(
        used.last(),
        Some(&1_011),
        "the newest report is always read"
    );
    assert_eq!(detail.filesystems[0].sample.bytes_used, 1_011);
    // A window long enough for all of them reads all of them.
    let week = storage
        .appliance_detail("SN-OFTEN", 7)
        .await
        .expect("read")
        .expect("the appliance");
    assert_eq!(week.history.filesystems[0].samples.len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn drives_appear_disappear_and_move_between_appliances() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let mut a0 = report("SN-A", 5);
    store(&storage, &a0).await;
    // Day 2: the ATA disk comes back as /dev/sdc after a reboot (same WWN: no event), and the
    // standby disk is still spun down (no identity: not a disappearance).
    a0.smart.devices[0].name = "/dev/sdc".into();
    let mut a1 = a0.clone();
    a1.report_id = uuid::Uuid::new_v4();
    a1.collected_at = Utc::now() - Duration::days(4);
    store(&storage, &a1).await;
    // Day 3: the NVMe drive is pulled from SN-A...
    let mut a2 = a1.clone();
    a2.report_id = uuid::Uuid::new_v4();
    a2.collected_at = Utc::now() - Duration::days(3);
    let nvme = a2.smart.devices.remove(1);
    store(&storage, &a2).await;
    // ...and turns up in SN-B the next day, whose first report it is.
    let mut b0 = report("SN-B", 2);
    b0.smart.devices = vec![nvme.clone()];
    store(&storage, &b0).await;
    // A new disk in SN-A.
    let mut a3 = a2.clone();
    a3.report_id = uuid::Uuid::new_v4();
    a3.collected_at = Utc::now() - Duration::days(1);
    let mut fresh = a3.smart.devices[0].clone();
    fresh.name = "/dev/sdd".into();
    fresh.wwn = Some("0x5000c500ffffffff".into());
    a3.smart.devices.push(fresh);
    store(&storage, &a3).await;

    let events = rows(
        &db,
        "SELECT a.serial, e.kind, d.drive_key, coalesce(f.serial, ''), e.device_name
         FROM drive_events e JOIN drives d ON d.id = e.drive_id
         JOIN appliances a ON a.id = e.appliance_id
         LEFT JOIN appliances f ON f.id = e.from_appliance_id
         ORDER BY e.at, e.id",
    )
    .await;
    let nvme_key = format!("wwn:{}", nvme.wwn.clone().unwrap_or_default());
    assert_eq!(
        events,
        vec![
            vec![
                "SN-A".to_owned(),
                "disappeared".into(),
                nvme_key.clone(),
                "".into(),
                "/dev/nvme0".into()
            ],
            vec![
                "SN-B".to_owned(),
                "moved".into(),
                nvme_key.clone(),
                "SN-A".into(),
                "/dev/nvme0".into()
            ],
            vec![
                "SN-A".to_owned(),
                "appeared".into(),
                "wwn:0x5000c500ffffffff".into(),
                "".into(),
                "/dev/sdd".into()
            ],
        ],
        "first reports open membership silently; a /dev rename and a disk in standby are not events"
    );
    // Which drive sat where, from when to when.
    let membership = rows(
        &db,
        &format!(
            "SELECT a.serial, (m.until_at IS NULL)::text FROM drive_membership m
             JOIN drives d ON d.id = m.drive_id JOIN appliances a ON a.id = m.appliance_id
             WHERE d.drive_key = '{nvme_key}' ORDER BY m.from_at"
        ),
    )
    .await;
    assert_eq!(
        membership,
        vec![
            vec!["SN-A".to_owned(), "false".into()],
            vec!["SN-B".to_owned(), "true".into()],
        ]
    );

    // The pulled drive is a disk_missing alert named by its key (the drive is no longer in
    // the report that raises it).
    let missing = rows(
        &db,
        "SELECT a.serial, al.subject, al.state FROM alerts al
         JOIN appliances a ON a.id = al.appliance_id WHERE al.rule = 'disk_missing'",
    )
    .await;
    assert_eq!(
        missing,
        vec![vec!["SN-A".to_owned(), nvme_key.clone(), "firing".into()]]
    );

    // A report whose SMART section failed as a whole says nothing about which drives are gone.
    let mut a4 = a3.clone();
    a4.report_id = uuid::Uuid::new_v4();
    a4.collected_at = Utc::now();
    a4.smart.devices.clear();
    a4.smart.errors.push(phonehome_schema::CollectionError {
        item: "smartctl".into(),
        kind: phonehome_schema::ErrorKind::NotFound,
        message: "smartctl: not found".into(),
    });
    store(&storage, &a4).await;
    assert_eq!(db.count("drive_events").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_judge_change_against_the_kept_state_or_else_the_history() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let mut r = report("SN-RS", 3);
    r.smart.devices[0].reallocated_sectors = Some(8);
    store(&storage, &r).await;
    let kept = rows(
        &db,
        "SELECT (rule_state IS NOT NULL)::text FROM appliances WHERE serial = 'SN-RS'",
    )
    .await;
    assert_eq!(
        kept,
        vec![vec!["true".to_owned()]],
        "state kept with the row"
    );

    // Against the kept state: 8 -> 16 is degrading.
    let mut next = |reallocated: u64, days_ago: i64| {
        r.report_id = uuid::Uuid::new_v4();
        r.collected_at = Utc::now() - Duration::days(days_ago);
        r.smart.devices[0].reallocated_sectors = Some(reallocated);
        r.clone()
    };
    store(&storage, &next(16, 2)).await;
    // As a database written before the state existed: the previous report is read back from
    // the time series instead, and 16 -> 24 is degrading again.
    db.client()
        .await
        .execute("UPDATE appliances SET rule_state = NULL", &[])
        .await
        .expect("forget the state");
    store(&storage, &next(24, 1)).await;
    let values = rows(
        &db,
        "SELECT value FROM alerts WHERE rule = 'disk_degrading' ORDER BY started_at, id",
    )
    .await;
    assert_eq!(
        values,
        vec![vec!["reallocated sectors 16 → 24 (+8)".to_owned()]],
        "one episode, renewed by the climb judged against history"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_report_names_the_certificate_that_delivered_it() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let with = |cert: u8, days_ago: i64| {
        let r = report("SN-CERT", days_ago);
        let id = ApplianceIdentity {
            serial: "SN-CERT".parse().expect("serial"),
            cert_sha256: [cert; 32],
            not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
        };
        (r, id)
    };
    // Two reports with one certificate, then the certificate is renewed.
    for (cert, days_ago) in [(1, 3), (1, 2), (2, 1)] {
        let (r, id) = with(cert, days_ago);
        let body = serde_json::to_string(&r).expect("json");
        let outcome = storage.insert_report(&r, &id, &body).await;
        assert_eq!(outcome.expect("stored"), InsertOutcome::Stored);
    }
    let by_report = rows(
        &db,
        "SELECT encode(c.sha256, 'hex'), count(*)::text FROM reports r
         JOIN certificates c ON c.id = r.cert_id
         JOIN appliances a ON a.id = c.appliance_id AND a.id = r.appliance_id
         GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        by_report,
        vec![
            vec!["01".repeat(32), "2".into()],
            vec!["02".repeat(32), "1".into()],
        ],
        "one certificates row per certificate, each report pointing at its own"
    );
    let current = rows(
        &db,
        "SELECT encode(last_cert_sha256, 'hex') FROM appliances WHERE serial = 'SN-CERT'",
    )
    .await;
    assert_eq!(current, vec![vec!["02".repeat(32)]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn version_changes_are_an_audit_trail_with_counts_per_day() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    for (serial, upgraded_days_ago) in [("SN-V1", 2), ("SN-V2", 1), ("SN-V3", 99)] {
        for days_ago in [3, 2, 1, 0] {
            let mut r = report(serial, days_ago);
            r.app.version = Some(
                if days_ago <= upgraded_days_ago {
                    "4.3.0"
                } else {
                    "4.2.1"
                }
                .into(),
            );
            store(&storage, &r).await;
        }
    }
    // A late report (from a spool) with the old version is history, not a downgrade.
    let mut late = report("SN-V1", 3);
    late.collected_at += Duration::hours(1);
    late.app.version = Some("4.2.1".into());
    store(&storage, &late).await;

    let trail = rows(
        &db,
        "SELECT a.serial, coalesce(v.old_version, '-'), v.new_version
         FROM version_changes v JOIN appliances a ON a.id = v.appliance_id
         WHERE v.component = 'app' ORDER BY a.serial, v.changed_at",
    )
    .await;
    assert_eq!(
        trail,
        vec![
            vec!["SN-V1".to_owned(), "-".into(), "4.2.1".into()],
            vec!["SN-V1".to_owned(), "4.2.1".into(), "4.3.0".into()],
            vec!["SN-V2".to_owned(), "-".into(), "4.2.1".into()],
            vec!["SN-V2".to_owned(), "4.2.1".into(), "4.3.0".into()],
            vec!["SN-V3".to_owned(), "-".into(), "4.3.0".into()],
        ]
    );
    // The OS, kernel and collector versions are followed too, from the first report.
    assert_eq!(
        rows(
            &db,
            "SELECT DISTINCT component FROM version_changes ORDER BY 1"
        )
        .await,
        vec![
            vec!["app".to_owned()],
            vec!["collector".into()],
            vec!["kernel".into()],
            vec!["os".into()]
        ]
    );

    let summary = maintenance::run_once(&storage, "test", std::time::Duration::from_secs(3600))
        .await
        .expect("maintenance")
        .expect("nobody else ran it");
    assert!(summary.version_days >= 4, "{summary:?}");
    let day = |days_ago: i64| (Utc::now() - Duration::days(days_ago)).date_naive();
    let counts = rows(
        &db,
        &format!(
            "SELECT day::text, version, appliances::text FROM version_counts_daily
             WHERE component = 'app' AND day >= '{}' ORDER BY day, version",
            day(3)
        ),
    )
    .await;
    assert_eq!(
        counts,
        vec![
            vec![day(3).to_string(), "4.2.1".into(), "2".into()],
            vec![day(3).to_string(), "4.3.0".into(), "1".into()],
            vec![day(2).to_string(), "4.2.1".into(), "1".into()],
            vec![day(2).to_string(), "4.3.0".into(), "2".into()],
            vec![day(1).to_string(), "4.3.0".into(), "3".into()],
            vec![day(0).to_string(), "4.3.0".into(), "3".into()],
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn months_are_partitions_and_retention_drops_whole_months() {
    let db = TestDb::new().await;
    let settings = StorageSettings {
        pool_size: 4,
        retention_days: 60,
        ..StorageSettings::default()
    };
    let storage = Storage::connect_with(db.url(), settings).expect("storage");
    // Reports from five months ago (accepted by the storage layer: the 60-day limit on new
    // reports is the handler's) and from now.
    let old = report("SN-P", 150);
    store(&storage, &old).await;
    store(&storage, &report("SN-P", 0)).await;
    let old_month = maintenance::Month::of(old.collected_at);
    let partition = |table: &str| old_month.partition(table);
    for table in maintenance::PARTITIONED {
        let present = rows(
            &db,
            &format!(
                "SELECT (to_regclass('{}') IS NOT NULL)::text",
                partition(table)
            ),
        )
        .await;
        assert_eq!(present, vec![vec!["true".to_owned()]], "{table}");
    }

    let summary = maintenance::run_once(&storage, "test", std::time::Duration::from_secs(3600))
        .await
        .expect("maintenance")
        .expect("nobody else ran it");
    // The reports are the only partitioned table (their bodies hold the samples).
    assert_eq!(summary.partitions_dropped, 1, "{summary:?}");
    for table in maintenance::PARTITIONED {
        let present = rows(
            &db,
            &format!(
                "SELECT (to_regclass('{}') IS NOT NULL)::text",
                partition(table)
            ),
        )
        .await;
        assert_eq!(present, vec![vec!["false".to_owned()]], "{table}");
    }
    assert_eq!(db.count("reports").await, 1, "this month's report is kept");
    // Partitions for the coming months exist before any report needs them.
    let ahead = maintenance::Month::of(Utc::now()).next().next();
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT (to_regclass('{}') IS NOT NULL)::text",
                ahead.partition("reports")
            )
        )
        .await,
        vec![vec!["true".to_owned()]]
    );
    // One run per interval: a second call right away has nothing to do, and the run is logged.
    assert!(
        maintenance::run_once(&storage, "test", std::time::Duration::from_secs(3600))
            .await
            .expect("maintenance")
            .is_none()
    );
    assert_eq!(
        rows(&db, "SELECT replica, partitions_dropped::text, (finished_at IS NOT NULL)::text FROM maintenance_runs").await,
        vec![vec!["test".to_owned(), "1".into(), "true".into()]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dictionary_trained_on_the_fleet_shrinks_stored_bodies_and_a_young_one_is_replaced() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let mut first = None;
    for i in 0..520 {
        let mut r = report(&format!("SN-D{i:04}"), 1);
        r.identity.hostname = Some(format!("appliance-{i:04}"));
        store(&storage, &r).await;
        first.get_or_insert(r);
    }
    let plain: f64 = rows(
        &db,
        "SELECT avg(octet_length(body))::float8::text FROM reports",
    )
    .await[0][0]
        .parse()
        .expect("number");
    let summary = maintenance::run_once(&storage, "test", std::time::Duration::from_secs(3600))
        .await
        .expect("maintenance")
        .expect("ran");
    assert_eq!(summary.dictionary_trained, Some(1), "{summary:?}");
    let r = report("SN-D9999", 0);
    store(&storage, &r).await;
    let with_dict: Vec<Vec<String>> = rows(
        &db,
        "SELECT body_dictionary::text, octet_length(body)::text FROM reports
         WHERE collected_at > now() - interval '1 hour'",
    )
    .await;
    assert_eq!(with_dict.len(), 1);
    assert_eq!(with_dict[0][0], "1");
    let size: f64 = with_dict[0][1].parse().expect("number");
    assert!(
        size * 2.0 < plain,
        "with the dictionary {size} bytes, plain zstd {plain:.0} bytes on average"
    );
    // Bodies written before and after the dictionary both read back exactly, also from a
    // process that has not loaded the dictionary yet.
    let other = Storage::connect(db.url(), 1).expect("storage");
    let first = first.expect("first report");
    for r in [&first, &r] {
        let json = other
            .report_json(r.identity.serial.as_str(), r.report_id)
            .await
            .expect("read")
            .expect("present");
        assert_eq!(json, serde_json::to_string(r).expect("json"));
    }

    // That dictionary learned from a young deployment's 521 reports. Once there are 2,000 a
    // new one is trained on a full sample, and then none until that one is a month old.
    let every_time = std::time::Duration::ZERO;
    let run = || async {
        maintenance::run_once(&storage, "test", every_time)
            .await
            .expect("maintenance")
            .expect("ran")
    };
    assert_eq!(
        run().await.dictionary_trained,
        None,
        "521 reports are too few"
    );
    let mut more = tokio::task::JoinSet::new();
    for i in 0..1_479 {
        let storage = storage.clone();
        more.spawn(async move { store(&storage, &report(&format!("SN-E{i:04}"), 2)).await });
    }
    while let Some(done) = more.join_next().await {
        done.expect("store task");
    }
    assert_eq!(run().await.dictionary_trained, Some(2));
    assert_eq!(
        rows(
            &db,
            "SELECT id::text, samples::text FROM body_dictionaries ORDER BY id"
        )
        .await,
        vec![
            vec!["1".to_owned(), "520".into()],
            vec!["2".into(), "2000".into()]
        ]
    );
    assert_eq!(
        run().await.dictionary_trained,
        None,
        "a full sample is settled"
    );
    let newest = report("SN-D9998", 0);
    store(&storage, &newest).await;
    assert_eq!(
        rows(
            &db,
            "SELECT body_dictionary::text FROM reports r JOIN appliances a ON a.id = r.appliance_id
             WHERE a.serial = 'SN-D9998'"
        )
        .await,
        vec![vec!["2".to_owned()]]
    );
    for r in [&first, &newest] {
        let json = Storage::connect(db.url(), 1)
            .expect("storage")
            .report_json(r.identity.serial.as_str(), r.report_id)
            .await
            .expect("read")
            .expect("present");
        assert_eq!(json, serde_json::to_string(r).expect("json"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reports_and_racing_retries_are_each_stored_once() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 8).expect("storage");
    let reports: Vec<Report> = (0..300)
        .map(|i| report(&format!("SN-C{:03}", i % 60), 10 - i64::from(i / 60)))
        .collect();
    let mut tasks = Vec::new();
    // Every report twice at once: the original and a retry racing it, in different batches or
    // the same one.
    for r in reports.iter().chain(reports.iter()) {
        let (storage, r) = (storage.clone(), r.clone());
        tasks.push(tokio::spawn(async move { store(&storage, &r).await }));
    }
    let mut stored = 0;
    for t in tasks {
        if t.await.expect("task") == InsertOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 300, "exactly one Stored per report");
    assert_eq!(db.count("reports").await, 300);
    assert_eq!(
        rows(&db, "SELECT DISTINCT report_count::text FROM appliances").await,
        vec![vec!["5".to_owned()]]
    );
    // Each report's readings once: five days of both drives, read back from the bodies.
    let detail = storage
        .appliance_detail("SN-C000", 30)
        .await
        .expect("read")
        .expect("the appliance");
    assert_eq!(detail.history.reports.len(), 5);
    assert_eq!(
        detail
            .history
            .drives
            .iter()
            .map(|s| s.samples.len())
            .collect::<Vec<_>>(),
        vec![5, 5]
    );
}

/// An empty schema with the first `applied` migrations applied and recorded, as an older ingest
/// left it; the client that built it.
async fn schema_as_of(db: &TestDb, applied: usize) -> tokio_postgres::Client {
    use phonehome_schema::migrations::ALL;
    let client = db.client().await;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .await
        .expect("reset");
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .expect("schema_migrations");
    for m in &ALL[..applied] {
        client.batch_execute(m.sql).await.expect("old migration");
        client
            .execute(
                "INSERT INTO schema_migrations VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await
            .expect("record");
    }
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_kept_by_the_old_schema_move_into_the_history_model() {
    let db = TestDb::new().await;
    // Rebuild the database as the walking skeleton left it: migrations 1 and 2, two reports.
    let client = schema_as_of(&db, 2).await;
    let old = [report("SN-L", 2), report("SN-L", 1)];
    for r in &old {
        let body = serde_json::to_string(r).expect("json");
        client
            .execute(
                "INSERT INTO reports (serial, report_id, collected_at, cert_sha256, body)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb)",
                &[
                    &r.identity.serial.as_str(),
                    &r.report_id,
                    &r.collected_at,
                    &vec![9u8; 32],
                    &body,
                ],
            )
            .await
            .expect("legacy report");
    }
    client
        .execute(
            "INSERT INTO appliances (serial, first_seen_at, last_report_at, last_collected_at,
                 last_report_id, app_status, collector_version, report_count)
             VALUES ('SN-L', now(), now(), $1, $2, 'healthy', '0.1.0', 2)",
            &[&old[1].collected_at, &old[1].report_id],
        )
        .await
        .expect("legacy appliance");

    let storage = Storage::connect(db.url(), 2).expect("storage");
    let applied = storage.migrate().await.expect("migrate");
    assert!(applied.contains(&3), "{applied:?}");
    assert_eq!(
        rows(&db, "SELECT (to_regclass('reports_legacy') IS NULL)::text").await,
        vec![vec!["true".to_owned()]]
    );
    assert_eq!(db.count("reports").await, 2);
    assert_eq!(
        rows(
            &db,
            "SELECT report_count::text, last_report_id::text FROM appliances"
        )
        .await,
        vec![vec!["2".to_owned(), old[1].report_id.to_string()]]
    );
    let moved = storage
        .appliance_detail("SN-L", 30)
        .await
        .expect("read")
        .expect("the appliance");
    assert_eq!(moved.history.filesystems.len(), 1);
    assert_eq!(moved.history.filesystems[0].samples.len(), 2);
    for r in &old {
        let json = storage
            .report_json("SN-L", r.report_id)
            .await
            .expect("read")
            .expect("moved");
        let back: Report = serde_json::from_str(&json).expect("report");
        assert_eq!(back.report_id, r.report_id);
    }
    // A retry of a moved report is a duplicate, as before the move.
    assert_eq!(store(&storage, &old[0]).await, InsertOutcome::Duplicate);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_to_packed_rows_and_samples_in_bodies_keeps_every_certificate_and_reading() {
    use phonehome_schema::migrations::ALL;
    let db = TestDb::new().await;
    // Rebuild the database as migration 5 left it, with reports written by this ingest and
    // one written before migration 5 (a digest instead of a certificate id).
    let before_packing = ALL
        .iter()
        .position(|m| m.name == "row_packing")
        .expect("the row_packing migration");
    let client = schema_as_of(&db, before_packing).await;
    // The columns and tables this build writes or reads that later migrations add
    // (migrations 7, 10, 12, 13, 14, 15 and 16 can run twice).
    for name in [
        "dashboard",
        "certificate_expiry",
        "acks_mutes",
        "reopen",
        "reliability",
        "verdicts",
        "drive_predictive",
    ] {
        let m = ALL
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("the {name} migration"));
        client
            .batch_execute(m.sql)
            .await
            .unwrap_or_else(|e| panic!("the {name} migration's columns: {e}"));
    }
    let storage = Storage::connect(db.url(), 2).expect("storage");
    maintenance::run_once(&storage, "test", std::time::Duration::ZERO)
        .await
        .expect("maintenance")
        .expect("ran");
    for days_ago in [40, 3] {
        store(&storage, &report("SN-P", days_ago)).await;
    }
    let old = report("SN-P", 2);
    client
        .execute(
            "INSERT INTO reports (collected_at, received_at, appliance_id, report_id,
                 cert_sha256, app_status, body)
             SELECT $1, now(), id, $2, $3, 'healthy', '\\x00' FROM appliances",
            &[&old.collected_at, &old.report_id, &vec![9u8; 32]],
        )
        .await
        .expect("a report from before migration 5");
    // A sample row an older ingest wrote (this one writes none), for a drive whose kept
    // predictive attributes that ingest never set: migration 16 fills them from it.
    let now = Utc::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE drive_samples_by_hand PARTITION OF drive_samples
                 FOR VALUES FROM ('{}') TO ('{}');
             UPDATE drives SET predictive = NULL;
             INSERT INTO drive_samples (collected_at, appliance_id, drive_id, failing,
                 reallocated_sectors, pending_sectors)
             SELECT '{}', a.id, d.id, false, 5, 0 FROM appliances a, drives d
             WHERE d.drive_key = 'wwn:0x5000c500a2b3c4d5'",
            (now - Duration::days(2)).to_rfc3339(),
            (now + Duration::days(1)).to_rfc3339(),
            (now - Duration::days(1)).to_rfc3339(),
        ))
        .await
        .expect("an old sample");

    let applied = storage.migrate().await.expect("migrate");
    assert_eq!(
        applied,
        ALL[before_packing..]
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>()
    );
    // Every report names its certificate by id, the old one included; the digest column is
    // gone.
    assert_eq!(
        rows(
            &db,
            "SELECT r.report_id::text, encode(c.sha256, 'hex') FROM reports r
             JOIN certificates c ON c.id = r.cert_id ORDER BY r.collected_at"
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT encode(c.sha256, 'hex') FROM reports r JOIN certificates c
                 ON c.id = r.cert_id WHERE r.report_id = '{}'",
                old.report_id
            )
        )
        .await,
        vec![vec!["09".repeat(32)]]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM information_schema.columns
             WHERE table_name = 'reports' AND column_name = 'cert_sha256'"
        )
        .await,
        vec![vec!["0".to_owned()]]
    );
    // The sample tables are gone; the drive keeps what its newest sample said (reallocated
    // sectors: bit 0), the only one none of the others.
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM pg_class
             WHERE relname LIKE 'drive\\_samples%' OR relname LIKE 'filesystem\\_samples%'
                OR relname LIKE 'nic\\_samples%'"
        )
        .await,
        vec![vec!["0".to_owned()]]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT drive_key, coalesce(predictive::text, 'null') FROM drives ORDER BY 1"
        )
        .await,
        vec![
            vec!["wwn:0x5000c500a2b3c4d5".to_owned(), "1".into()],
            vec!["wwn:eui.0025385791b4f537".to_owned(), "null".into()],
        ]
    );
    // The readings come from the bodies: the two this build stored; the body the hand-made
    // report carries cannot be read and leaves a gap, not an error.
    let readings = |days| {
        let storage = &storage;
        async move {
            let detail = storage
                .appliance_detail("SN-P", days)
                .await
                .expect("read")
                .expect("the appliance");
            detail
                .history
                .filesystems
                .iter()
                .map(|f| f.samples.len())
                .sum::<usize>()
        }
    };
    assert_eq!(readings(60).await, 2);
    // And the ingest goes on writing.
    store(&storage, &report("SN-P", 1)).await;
    assert_eq!(db.count("reports").await, 4);
    assert_eq!(readings(60).await, 3);
    assert_eq!(
        rows(
            &db,
            "SELECT coalesce(predictive::text, 'null') FROM drives ORDER BY drive_key"
        )
        .await,
        // The ATA disk's counters are all zero now; the example's NVMe drive has 7
        // uncorrectable errors (bit 4, ATA 198's column), 7 media errors (bit 5) and 99 % spare
        // (bit 6).
        vec![vec!["0".to_owned()], vec!["112".to_owned()]],
        "the newest report's values replace the kept ones"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_refreshes_statistics_of_current_state_tables_that_grew() {
    // Writers keep the plans they made while these tables were small; fresh statistics make
    // them plan again. Refreshed when a table doubled, not when its rows changed.
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let run = || async {
        maintenance::run_once(&storage, "test", std::time::Duration::ZERO)
            .await
            .expect("maintenance")
            .expect("ran")
    };
    let stat = |column: &'static str| {
        let db = &db;
        async move {
            rows(
                db,
                &format!(
                    "SELECT {column}::text FROM pg_stat_user_tables s JOIN pg_class c
                     ON c.oid = s.relid WHERE s.relname = 'appliances'"
                ),
            )
            .await[0][0]
                .parse::<f64>()
                .expect("number")
        }
    };
    run().await;
    // Autovacuum's own ANALYZE would race the one under test.
    db.client()
        .await
        .batch_execute("ALTER TABLE appliances SET (autovacuum_enabled = off)")
        .await
        .expect("autovacuum off for appliances");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let storage = storage.clone();
        tasks.spawn(async move { store(&storage, &report(&format!("SN-G{i:03}"), 2)).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("store task");
    }
    // PostgreSQL publishes a backend's row counts within about ten seconds of it going idle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stat("s.n_live_tup").await < 300.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_stat_user_tables never showed the 300 new appliances"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let analyzed = stat("s.analyze_count").await;
    run().await;
    assert_eq!(stat("c.reltuples").await, 300.0, "statistics refreshed");
    assert_eq!(stat("s.analyze_count").await, analyzed + 1.0);

    // Every appliance reports again: 300 changed rows, no growth, no new statistics.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let storage = storage.clone();
        tasks.spawn(async move { store(&storage, &report(&format!("SN-G{i:03}"), 1)).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("store task");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stat("s.n_mod_since_analyze").await < 300.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_stat_user_tables never showed the 300 updated appliances"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    run().await;
    assert_eq!(stat("s.analyze_count").await, analyzed + 1.0);

    // Half as many again (450 rows, against 300 at the last ANALYZE): not yet.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 300..450 {
        let storage = storage.clone();
        tasks.spawn(async move { store(&storage, &report(&format!("SN-G{i:03}"), 1)).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("store task");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stat("s.n_live_tup").await < 450.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_stat_user_tables never showed the 150 new appliances"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    run().await;
    assert_eq!(
        stat("s.analyze_count").await,
        analyzed + 1.0,
        "analysed before the table doubled"
    );
}
