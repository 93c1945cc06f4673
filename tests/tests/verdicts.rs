//! Drive verdicts on real smartctl captures (the collector's fixtures, with their SOURCES rows):
//! each device gets the level and the reasons an operator would expect from its facts, whatever
//! the collector's own `failing` flag (smartctl's exit status) says.

use std::path::PathBuf;

use phonehome_ingest::alerts::{AlertsConfig, Rule, Wearout};
use phonehome_ingest::verdict::{self, Level};

fn fixture(name: &str) -> phonehome_schema::SmartDevice {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../collector/tests/fixtures/smartctl")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    phonehome_collector::smart::parse::parse_device(&bytes, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .device
        .unwrap_or_else(|| panic!("{name}: no device"))
}

#[test]
fn real_devices_get_the_verdict_their_facts_call_for() {
    // (capture, collector says failing, verdict, reasons that must be there)
    let table: &[(&str, bool, Level, &[&str])] = &[
        (
            // smartctl exit status 64: only old entries in the error log. Other tools call this
            // drive failing every day of its life.
            "beszel/sda.json",
            true,
            Level::Ok,
            &["131 entries in the device's error log (information"],
        ),
        (
            "smartctl_exporter/ST3200820AS_16.json",
            true,
            Level::Ok,
            &["98 entries in the device's error log"],
        ),
        (
            "smartctl_exporter/sat-Western_Digital_RE3_Serial_ATA-WDC_WD5002ABYS-02B1B0-sda.json",
            true,
            Level::Ok,
            &["9 entries in the device's error log"],
        ),
        (
            "scrutiny/smart-fail2.json",
            true,
            Level::Critical,
            &[
                "overall health self-assessment failed",
                "attribute 5 Reallocated_Sector_Ct is at or below its threshold now (normalised 1, threshold 5)",
                "3 failed self-tests in the self-test log",
                "1975 reallocated sectors",
                "8 pending sectors",
            ],
        ),
        (
            // Media errors that do not rise are information; disk_degrading alerts on a rise.
            "scrutiny/smart-nvme-failed.json",
            false,
            Level::Ok,
            &[
                "7 uncorrectable errors",
                "62 entries in the device's error log",
            ],
        ),
        (
            "smartctl_exporter/sat-Intel_S4510_S4610_S4500_S4600_Series_SSDs-INTEL_SSDSC2KB240G7-sdd.json",
            false,
            Level::Ok,
            &["4 reallocated sectors"],
        ),
        ("beszel/nvme0.json", false, Level::Ok, &[]),
    ];
    for (name, collector_failing, level, reasons) in table {
        let d = fixture(name);
        assert_eq!(
            d.failing, *collector_failing,
            "{name}: the collector's flag"
        );
        let v = verdict::drive(&d, &Wearout::default());
        let texts: Vec<&str> = v.reasons.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(v.level, *level, "{name}: {texts:?}");
        for want in *reasons {
            assert!(
                texts.iter().any(|t| t.contains(want)),
                "{name}: no reason containing {want:?} in {texts:?}"
            );
        }
        if reasons.is_empty() {
            assert!(texts.is_empty(), "{name}: {texts:?}");
        }
        // disk_failing fires exactly on a critical verdict.
        let mut report = phonehome_tests::example_report("SN-VERDICT");
        report.smart.devices = vec![d.clone()];
        let fires = AlertsConfig::default()
            .evaluate_report(&report, |_| Some("drive".into()))
            .iter()
            .any(|f| f.rule == Rule::DiskFailing);
        assert_eq!(fires, v.level == Level::Critical, "{name}");
    }
}

#[test]
fn a_raid_volume_without_its_disks_is_a_blind_spot_and_with_them_is_not() {
    let section = |names: &[&str]| phonehome_schema::SmartSection {
        devices: names.iter().map(|n| fixture(n)).collect(),
        ..Default::default()
    };
    // An Intel RST volume read as one SCSI disk: its members are nobody's.
    let blind = phonehome_ingest::alerts::unmonitored(&section(&[
        "scrutiny/smart-raid.json",
        "beszel/nvme0.json",
    ]))
    .expect("a finding");
    assert_eq!(blind.value, "/dev/sdb (Intel Raid 1 Volume)");
    assert!(blind.summary.contains("megaraid,0"), "{}", blind.summary);
    // Members read through the controller (sat+megaraid,N): seen.
    assert_eq!(
        phonehome_ingest::alerts::unmonitored(&section(&[
            "scrutiny/smart-raid.json",
            "scrutiny/smart-megaraid0.json",
            "scrutiny/smart-megaraid1.json",
        ])),
        None
    );
    // Plain drives: nothing to say.
    assert_eq!(
        phonehome_ingest::alerts::unmonitored(&section(&["beszel/sda.json", "beszel/nvme0.json"])),
        None
    );
}

/// A drive's story over daily reports: what each day's report says about it.
type Story = fn(&mut phonehome_schema::SmartDevice, i64);

/// Constructed histories on a real drive (beszel/sda.json: 131 old entries in its error log,
/// smartctl exit status 64), stored day by day through the real storage: the alert that fires
/// (or none), the verdict on the drive page and the counts `/metrics` shows.
#[tokio::test(flavor = "multi_thread")]
async fn histories_get_the_verdict_their_story_calls_for() {
    use phonehome_ingest::storage::Storage;
    use phonehome_ingest::tls::ApplianceIdentity;

    const DAYS: i64 = 365;
    // (serial, story, the disk_degrading value on the last day or None, page verdict,
    // a reason the page must give)
    let table: &[(&str, Story, Option<&str>, &str, &str)] = &[
        (
            "SN-OLD-LOG",
            |_, _| {},
            None,
            "ok",
            "131 entries in the device's error log (information",
        ),
        (
            // Eight reallocated sectors for a year: a fact, not news.
            "SN-STABLE",
            |d, _| d.reallocated_sectors = Some(8),
            None,
            "ok",
            "8 reallocated sectors",
        ),
        (
            "SN-LOG-RISES",
            |d, day| {
                if day == DAYS {
                    d.error_log.as_mut().expect("error log").count = Some(133);
                }
            },
            Some("error log entries 131 → 133 (+2)"),
            "warning",
            "error log entries 131 → 133 (+2)",
        ),
        (
            "SN-REALLOC-RISES",
            |d, day| d.reallocated_sectors = Some(if day == DAYS { 16 } else { 8 }),
            Some("reallocated sectors 8 → 16 (+8)"),
            "warning",
            "reallocated sectors 8 → 16 (+8)",
        ),
        (
            "SN-HEALTH-FAILED",
            |d, day| d.health_passed = Some(day < DAYS),
            None,
            "critical",
            "overall health self-assessment failed",
        ),
    ];

    let db = phonehome_tests::TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let today = chrono::Utc::now() - chrono::Duration::hours(1);
    let drive = fixture("beszel/sda.json");
    for (serial, story, ..) in table {
        let identity = ApplianceIdentity {
            serial: serial.parse().expect("serial"),
            cert_sha256: [1; 32],
            not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
        };
        // A year of daily reports for the stable drive; the others need only the last days.
        let first = if *serial == "SN-STABLE" { 0 } else { DAYS - 2 };
        for day in first..=DAYS {
            let mut r = phonehome_tests::example_report(serial);
            r.collected_at = today - chrono::Duration::days(DAYS - day);
            r.smart.errors.clear();
            // Each appliance its own machine (the example's identifiers would be a clone).
            let n: u128 = serial.bytes().fold(7, |a, b| a * 31 + u128::from(b));
            r.identity.machine_id = Some(format!("{:032x}", n & ((1 << 120) - 1)));
            r.identity.system_uuid = Some(uuid::Uuid::from_u128(n));
            let mut d = drive.clone();
            // Each appliance has its own drive.
            d.serial = Some(format!("{serial}-DISK"));
            d.wwn = None;
            story(&mut d, day);
            r.smart.devices = vec![d];
            let body = serde_json::to_string(&r).expect("json");
            storage
                .insert_report(&r, &identity, &body)
                .await
                .unwrap_or_else(|e| panic!("{serial} day {day}: {e}"));
        }
    }

    let client = db.client().await;
    for (serial, _, alert, verdict, reason) in table {
        let values: Vec<String> = client
            .query(
                "SELECT al.value FROM alerts al JOIN appliances a ON a.id = al.appliance_id
                 WHERE a.serial = $1 AND al.rule = 'disk_degrading' AND al.state = 'firing'",
                &[serial],
            )
            .await
            .expect("alerts")
            .iter()
            .map(|r| r.get(0))
            .collect();
        match alert {
            Some(want) => assert_eq!(values, vec![want.to_string()], "{serial}"),
            None => assert!(values.is_empty(), "{serial}: {values:?}"),
        }
        let key = format!("sn:{}/{serial}-DISK", drive.model.as_deref().unwrap_or(""));
        let page = storage
            .dashboard_drive(&key, 30)
            .await
            .expect("drive page")
            .unwrap_or_else(|| panic!("{serial}: no drive {key}"));
        let smart = page
            .smart
            .unwrap_or_else(|| panic!("{serial}: no SMART snapshot"));
        assert_eq!(smart.verdict, *verdict, "{serial}: {:?}", smart.reasons);
        assert!(
            smart.reasons.iter().any(|(_, text)| text.contains(reason)),
            "{serial}: no reason containing {reason:?} in {:?}",
            smart.reasons
        );
        // The appliance's verdict is its drive's, with the alert as the reason.
        let appliance = storage
            .appliance_detail(serial, 30)
            .await
            .expect("appliance")
            .unwrap_or_else(|| panic!("{serial}: no appliance"));
        let v = serde_json::to_value(&appliance.verdict).expect("json");
        assert_eq!(v["level"], *verdict, "{serial}: {v}");
        let rules: Vec<&str> = v["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        let want: &[&str] = match *verdict {
            "ok" => &[],
            "warning" => &["disk_degrading"],
            _ => &["disk_failing"],
        };
        assert_eq!(rules, want, "{serial}: {v}");
    }

    // /metrics' per-verdict counts come from the same judgement.
    let counts = storage
        .fleet_counts(today - chrono::Duration::days(30))
        .await
        .expect("counts");
    let by = |level: Level| {
        counts
            .drives
            .iter()
            .find(|(l, _)| *l == level)
            .map(|(_, n)| *n)
    };
    assert_eq!(by(Level::Ok), Some(2), "{:?}", counts.drives);
    assert_eq!(by(Level::Warning), Some(2), "{:?}", counts.drives);
    assert_eq!(by(Level::Critical), Some(1), "{:?}", counts.drives);
}

/// smartctl's full output is evidence when the facts behind the verdict change, not every day
/// for a condition that holds still: day 1 keeps it, day 2 (same facts) omits it, day 3 (the
/// error log rose) keeps it, day 4 omits it again. Every report is still stored.
#[tokio::test(flavor = "multi_thread")]
async fn evidence_is_kept_when_the_facts_change_not_every_day() {
    use phonehome_ingest::storage::Storage;
    use phonehome_ingest::tls::ApplianceIdentity;

    let db = phonehome_tests::TestDb::new().await;
    let storage = Storage::connect(db.url(), 2).expect("storage");
    let identity = ApplianceIdentity {
        serial: "SN-EVIDENCE".parse().expect("serial"),
        cert_sha256: [1; 32],
        not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
        not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
    };
    let drive = fixture("beszel/sda.json");
    assert!(
        drive.evidence.is_some(),
        "the collector attaches smartctl's output"
    );
    let today = chrono::Utc::now() - chrono::Duration::hours(1);
    // (day, error-log count, evidence kept)
    let days = [
        (1, 131, true),
        (2, 131, false),
        (3, 140, true),
        (4, 140, false),
    ];
    for (day, count, kept) in days {
        let mut r = phonehome_tests::example_report("SN-EVIDENCE");
        r.collected_at = today - chrono::Duration::days(4 - day);
        r.smart.errors.clear();
        let mut d = drive.clone();
        d.error_log.as_mut().expect("error log").count = Some(count);
        r.smart.devices = vec![d];
        let body = serde_json::to_string(&r).expect("json");
        storage
            .insert_report(&r, &identity, &body)
            .await
            .unwrap_or_else(|e| panic!("day {day}: {e}"));
        let stored = storage
            .report_json("SN-EVIDENCE", r.report_id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("day {day}: report not stored"));
        let v: serde_json::Value = serde_json::from_str(&stored).expect("stored JSON");
        let evidence = &v["smart"]["devices"][0]["evidence"];
        if kept {
            assert!(
                evidence.is_object(),
                "day {day}: evidence kept: {}",
                &evidence.to_string()[..evidence.to_string().len().min(200)]
            );
            assert_eq!(
                stored, body,
                "day {day}: a body with evidence is kept as received"
            );
        } else {
            assert_eq!(
                evidence.as_str(),
                Some(phonehome_ingest::storage::rows::EVIDENCE_OMITTED),
                "day {day}"
            );
            // Everything else is the report as sent.
            assert_eq!(v["smart"]["devices"][0]["error_log"]["count"], count);
            assert_eq!(v["report_id"], r.report_id.to_string());
        }
    }
}
