//! Drive verdicts on real smartctl captures (the collector's fixtures, with their SOURCES rows):
//! each device gets the level and the reasons an operator would expect from its facts, whatever
//! the collector's own `failing` flag (smartctl's exit status) says.

use std::path::PathBuf;

use phonehome_ingest::alerts::Wearout;
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
        assert_eq!(
            phonehome_ingest::alerts::failing_now(&d).is_some(),
            v.level == Level::Critical,
            "{name}"
        );
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
