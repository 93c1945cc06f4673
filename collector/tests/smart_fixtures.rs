//! The smartctl parser proven on real outputs: every smartctl JSON captured by other projects
//! (smartmontools 6.7 to 7.5, copied into `fixtures/smartctl` with their sources) parses without
//! a panic or a lost device, and a table of chosen files pins the values an operator acts on.
//! The expected values were read from the files by eye (and `jq`), not computed by the parser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use phonehome_collector::smart::parse::{DeviceOutput, parse_device, parse_scan};
use phonehome_schema::{NvmeCriticalWarning, SmartDevice, SmartctlExitFlag};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smartctl")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn all_fixtures() -> Vec<(String, Vec<u8>)> {
    let mut paths = Vec::new();
    json_files(&fixtures(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(fixtures())
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, bytes)
        })
        .collect()
}

fn device_of(rel: &str) -> SmartDevice {
    let out = parse_device(&read(rel), None).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let failure = out.failure();
    out.device
        .unwrap_or_else(|| panic!("{rel}: no device: {failure:?}"))
}

#[test]
fn every_fixture_is_listed_in_sources_with_a_permissive_licence() {
    let sources = std::fs::read_to_string(fixtures().join("SOURCES.tsv"))
        .unwrap_or_else(|e| panic!("SOURCES.tsv: {e}"));
    let mut lines = sources.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("local_path\tsource_repo\tsource_path\tcommit\tlicense"));
    let mut listed = BTreeSet::new();
    for line in lines {
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 5, "short SOURCES row: {line}");
        assert!(
            ["MIT", "Apache-2.0"].contains(&cols[4]),
            "licence {} of {}",
            cols[4],
            cols[0]
        );
        listed.insert(cols[0].to_owned());
    }
    let present: BTreeSet<String> = all_fixtures().into_iter().map(|(rel, _)| rel).collect();
    assert_eq!(listed, present, "SOURCES.tsv and the fixture files differ");
}

/// Every file: parses; a device block yields a device (with that block's name and protocol),
/// a scan yields every listed device, an open error yields a reason and no device; a failing
/// device carries the whole output as evidence; everything survives a JSON round trip.
#[test]
fn every_real_output_parses_without_losing_a_device() {
    let files = all_fixtures();
    assert!(files.len() >= 150, "only {} fixtures", files.len());
    let (mut devices, mut scans, mut open_errors, mut failing) = (0, 0, 0, 0);
    for (rel, bytes) in &files {
        let raw: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if let Some(listed) = raw.get("devices").and_then(Value::as_array) {
            let scan = parse_scan(bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
            let names: Vec<&str> = listed
                .iter()
                .filter_map(|d| d.get("name")?.as_str())
                .collect();
            let parsed: Vec<&str> = scan.devices.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(parsed, names, "{rel}");
            assert!(!names.is_empty(), "{rel}");
            scans += 1;
            continue;
        }
        let out: DeviceOutput = parse_device(bytes, None).unwrap_or_else(|e| panic!("{rel}: {e}"));
        match (raw.get("device"), &out.device) {
            (Some(block), Some(device)) => {
                devices += 1;
                assert_eq!(
                    Some(device.name.as_str()),
                    block.get("name").and_then(Value::as_str),
                    "{rel}"
                );
                assert_eq!(
                    device.protocol.as_deref(),
                    block.get("protocol").and_then(Value::as_str),
                    "{rel}"
                );
                if device.failing {
                    failing += 1;
                    assert_eq!(device.evidence.as_ref(), Some(&raw), "{rel}: evidence");
                } else {
                    assert!(
                        device.evidence.is_none(),
                        "{rel}: evidence of a healthy disk"
                    );
                }
                let back: SmartDevice = serde_json::to_value(device)
                    .and_then(serde_json::from_value)
                    .unwrap_or_else(|e| panic!("{rel}: round trip: {e}"));
                assert_eq!(&back, device, "{rel}: round trip");
            }
            (None, None) => {
                open_errors += 1;
                let reason = out.failure().unwrap_or_default();
                assert!(reason.contains("open device"), "{rel}: {reason}");
                assert_eq!(out.exit_status, Some(2), "{rel}");
            }
            (block, device) => panic!("{rel}: device block {block:?} but parsed {device:?}"),
        }
    }
    assert_eq!(devices + scans + open_errors, files.len());
    assert!(
        scans >= 5 && open_errors >= 2 && failing >= 6,
        "{scans} {open_errors} {failing}"
    );
}

/// What an operator acts on, per device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts<'a> {
    protocol: Option<&'a str>,
    device_type: Option<&'a str>,
    model: Option<&'a str>,
    capacity: Option<u64>,
    health: Option<bool>,
    temperature: Option<i64>,
    power_on_hours: Option<u64>,
    reallocated: Option<u64>,
    pending: Option<u64>,
    uncorrectable: Option<u64>,
    crc: Option<u64>,
    nvme_critical_warning: Option<u8>,
    nvme_media_errors: Option<u64>,
    scsi_grown_defects: Option<u64>,
    error_log_count: Option<u64>,
    exit_status: Option<u8>,
    failing: bool,
}

const UNKNOWN: Facts<'static> = Facts {
    protocol: None,
    device_type: None,
    model: None,
    capacity: None,
    health: None,
    temperature: None,
    power_on_hours: None,
    reallocated: None,
    pending: None,
    uncorrectable: None,
    crc: None,
    nvme_critical_warning: None,
    nvme_media_errors: None,
    scsi_grown_defects: None,
    error_log_count: None,
    exit_status: None,
    failing: false,
};

fn facts(d: &SmartDevice) -> Facts<'_> {
    Facts {
        protocol: d.protocol.as_deref(),
        device_type: d.device_type.as_deref(),
        model: d.model.as_deref(),
        capacity: d.capacity_bytes,
        health: d.health_passed,
        temperature: d.temperature_celsius,
        power_on_hours: d.power_on_hours,
        reallocated: d.reallocated_sectors,
        pending: d.pending_sectors,
        uncorrectable: d.uncorrectable_errors,
        crc: d.crc_errors,
        nvme_critical_warning: d.nvme.as_ref().and_then(|n| n.critical_warning),
        nvme_media_errors: d.nvme.as_ref().and_then(|n| n.media_errors),
        scsi_grown_defects: d.scsi.as_ref().and_then(|s| s.grown_defects),
        error_log_count: d.error_log.as_ref().and_then(|l| l.count),
        exit_status: d.exit_status,
        failing: d.failing,
    }
}

const ATA_ZEROES: Facts<'static> = Facts {
    protocol: Some("ATA"),
    device_type: Some("sat"),
    health: Some(true),
    reallocated: Some(0),
    pending: Some(0),
    uncorrectable: Some(0),
    crc: Some(0),
    error_log_count: Some(0),
    exit_status: Some(0),
    ..UNKNOWN
};

const NVME_HEALTHY: Facts<'static> = Facts {
    protocol: Some("NVMe"),
    device_type: Some("nvme"),
    health: Some(true),
    uncorrectable: Some(0),
    nvme_critical_warning: Some(0),
    nvme_media_errors: Some(0),
    error_log_count: Some(0),
    exit_status: Some(0),
    ..UNKNOWN
};

const SCSI_HEALTHY: Facts<'static> = Facts {
    protocol: Some("SCSI"),
    device_type: Some("scsi"),
    health: Some(true),
    reallocated: Some(0),
    uncorrectable: Some(0),
    scsi_grown_defects: Some(0),
    exit_status: Some(0),
    ..UNKNOWN
};

fn device_table() -> Vec<(&'static str, Facts<'static>)> {
    vec![
        // The virtual appliance's SATA disk (QEMU's AHCI ide-hd): the SMART log directory read
        // is aborted, so smartctl exits with bit 2; the disk is read, healthy, not failing.
        (
            "phonehome-vm/qemu-7.2-ahci-ide-hd.json",
            Facts {
                model: Some("PHVM SATA DISK"),
                capacity: Some(268_435_456),
                temperature: Some(31),
                power_on_hours: Some(1),
                pending: None,
                uncorrectable: None,
                crc: None,
                exit_status: Some(4),
                ..ATA_ZEROES
            },
        ),
        // The virtual appliance's NVMe controller with two namespaces: smartctl prints no
        // capacity (the collector reads it from /sys/block, smart::capacity).
        (
            "phonehome-vm/qemu-7.2-nvme-2ns.json",
            Facts {
                protocol: Some("NVMe"),
                device_type: Some("nvme"),
                model: Some("QEMU NVMe Ctrl"),
                health: Some(true),
                temperature: Some(50),
                power_on_hours: Some(0),
                uncorrectable: Some(0),
                nvme_critical_warning: Some(0),
                nvme_media_errors: Some(0),
                error_log_count: Some(0),
                exit_status: Some(0),
                ..UNKNOWN
            },
        ),
        // SATA SSD, 7.5: 131 CRC errors, all in the error log (exit 64 = bit 6).
        (
            "beszel/sda.json",
            Facts {
                model: Some("P3-2TB"),
                capacity: Some(2_048_408_248_320),
                temperature: Some(31),
                power_on_hours: Some(7344),
                crc: Some(131),
                error_log_count: Some(131),
                exit_status: Some(64),
                failing: true,
                ..ATA_ZEROES
            },
        ),
        // SATA HDD behind a JMicron USB bridge: health FAILED, attribute 5 failing now, 1975
        // reallocated and 8 pending sectors, exit 216 (bits 3, 4, 6, 7).
        (
            "scrutiny/smart-fail2.json",
            Facts {
                device_type: Some("usbjmicron"),
                model: Some("Hitachi HDS721050DLE630"),
                capacity: Some(500_107_862_016),
                health: Some(false),
                temperature: Some(25),
                power_on_hours: Some(65592),
                reallocated: Some(1975),
                pending: Some(8),
                error_log_count: Some(56),
                exit_status: Some(216),
                failing: true,
                ..ATA_ZEROES
            },
        ),
        // MegaRAID: SAT disks behind `-d megaraid,N`; exit 4 (a SMART command failed).
        (
            "scrutiny/smart-megaraid0.json",
            Facts {
                device_type: Some("sat+megaraid,0"),
                model: Some("WD4000FYYX"),
                capacity: Some(4_000_787_030_016),
                temperature: Some(36),
                power_on_hours: Some(37787),
                exit_status: Some(4),
                ..ATA_ZEROES
            },
        ),
        (
            "scrutiny/smart-megaraid1.json",
            Facts {
                device_type: Some("sat+megaraid,1"),
                model: Some("WD4000FYYX"),
                capacity: Some(4_000_787_030_016),
                temperature: Some(36),
                power_on_hours: Some(37788),
                reallocated: Some(387),
                exit_status: Some(4),
                ..ATA_ZEROES
            },
        ),
        // `-jH`: nothing but the health verdict.
        (
            "scrutiny/smart-pass.json",
            Facts {
                protocol: Some("ATA"),
                device_type: Some("sat"),
                health: Some(true),
                exit_status: Some(0),
                ..UNKNOWN
            },
        ),
        // `-jA`: no power_on_time, so the hours come from attribute 9's raw string
        // "2725 (151 234 0)" (its raw value, 167031278144165, packs other fields).
        (
            "scrutiny/smart-sat.json",
            Facts {
                health: None,
                temperature: Some(29),
                power_on_hours: Some(2725),
                error_log_count: None,
                ..ATA_ZEROES
            },
        ),
        // `-x`, 7.0: no attributes 197/198 on this SSD.
        (
            "scrutiny/smart-ata-full.json",
            Facts {
                model: Some("Samsung SSD 860 EVO 500GB"),
                capacity: Some(500_107_862_016),
                temperature: Some(36),
                power_on_hours: Some(14551),
                pending: None,
                uncorrectable: None,
                ..ATA_ZEROES
            },
        ),
        (
            "scrutiny/smart-ata-failed-scrutiny.json",
            Facts {
                model: Some("Samsung SSD 840 Series"),
                capacity: Some(500_107_862_016),
                temperature: Some(33),
                power_on_hours: Some(19497),
                pending: None,
                uncorrectable: None,
                crc: Some(108),
                ..ATA_ZEROES
            },
        ),
        // Seagate: attribute 9's raw value is above 2^53.
        (
            "smartctl-rs/hdd.json",
            Facts {
                model: Some("ST2000DM006-2DM164"),
                capacity: Some(2_000_398_934_016),
                temperature: Some(26),
                power_on_hours: Some(19073),
                ..ATA_ZEROES
            },
        ),
        (
            "smartctl_exporter/sat-Seagate_Exos_X16-ST16000NM001G-2KK103-sda.json",
            Facts {
                model: Some("ST16000NM001G-2KK103"),
                capacity: Some(16_000_900_661_248),
                temperature: Some(26),
                power_on_hours: Some(13114),
                ..ATA_ZEROES
            },
        ),
        (
            "smartctl-rs/sata-ssd.json",
            Facts {
                model: Some("Samsung SSD 850 EVO M.2 250GB"),
                capacity: Some(250_059_350_016),
                temperature: Some(25),
                power_on_hours: Some(19416),
                pending: None,
                uncorrectable: None,
                ..ATA_ZEROES
            },
        ),
        // 12 CRC errors and 12 logged errors: cabling, exit 64.
        (
            "smartctl_exporter/HGST_HUS724020ALE640_28.json",
            Facts {
                model: Some("HGST HUS724020ALE640"),
                capacity: Some(2_000_398_934_016),
                temperature: Some(26),
                power_on_hours: Some(83425),
                crc: Some(12),
                error_log_count: Some(12),
                exit_status: Some(64),
                failing: true,
                ..ATA_ZEROES
            },
        ),
        // 98 old errors on a 100161-hour disk.
        (
            "smartctl_exporter/ST3200820AS_16.json",
            Facts {
                model: Some("ST3200820AS"),
                capacity: Some(200_048_565_760),
                temperature: Some(33),
                power_on_hours: Some(100_161),
                error_log_count: Some(98),
                exit_status: Some(64),
                failing: true,
                ..ATA_ZEROES
            },
        ),
        (
            "smartctl_exporter/sat-Toshiba_MG05ACA..._Enterprise_Capacity_HDD-TOSHIBA_MG05ACA800E-sdw.json",
            Facts {
                model: Some("TOSHIBA MG05ACA800E"),
                capacity: Some(8_001_563_222_016),
                temperature: Some(24),
                power_on_hours: Some(37603),
                error_log_count: Some(2),
                exit_status: Some(64),
                failing: true,
                ..ATA_ZEROES
            },
        ),
        // Intel SSD with 4 reallocated sectors and no attribute 198.
        (
            "smartctl_exporter/sat-Intel_S4510_S4610_S4500_S4600_Series_SSDs-INTEL_SSDSC2KB240G7-sdd.json",
            Facts {
                model: Some("INTEL SSDSC2KB240G7"),
                capacity: Some(240_057_409_536),
                temperature: Some(23),
                power_on_hours: Some(49466),
                reallocated: Some(4),
                uncorrectable: None,
                ..ATA_ZEROES
            },
        ),
        // Kingston SSD without attributes 5, 197, 198 or an error log; exit 4.
        (
            "smartctl_exporter/sat-Phison_Driven_SSDs-KINGSTON_SA400M8120G-sda.json",
            Facts {
                model: Some("KINGSTON SA400M8120G"),
                capacity: Some(120_034_123_776),
                temperature: Some(38),
                power_on_hours: Some(4994),
                reallocated: None,
                pending: None,
                uncorrectable: None,
                error_log_count: None,
                exit_status: Some(4),
                ..ATA_ZEROES
            },
        ),
        // NVMe.
        (
            "beszel/nvme0.json",
            Facts {
                model: Some("PELADN 512GB"),
                capacity: Some(512_110_190_592),
                temperature: Some(61),
                power_on_hours: Some(4399),
                ..NVME_HEALTHY
            },
        ),
        // Apple NVMe through IOService, exit 4, no capacity reported.
        (
            "beszel/apple_nvme.json",
            Facts {
                model: Some("APPLE SSD AP0256Q"),
                temperature: Some(42),
                power_on_hours: Some(2850),
                exit_status: Some(4),
                ..NVME_HEALTHY
            },
        ),
        // 7 media errors and 62 error log entries, health still PASSED.
        (
            "scrutiny/smart-nvme-failed.json",
            Facts {
                model: Some("Samsung SSD 970 EVO 500GB"),
                capacity: Some(500_107_862_016),
                temperature: Some(35),
                power_on_hours: Some(12798),
                uncorrectable: Some(7),
                nvme_media_errors: Some(7),
                error_log_count: Some(62),
                ..NVME_HEALTHY
            },
        ),
        (
            "scrutiny/smart-nvme.json",
            Facts {
                model: Some("INTEL SSDPEKNW010T8"),
                capacity: Some(1_024_209_543_168),
                temperature: Some(36),
                power_on_hours: Some(2401),
                ..NVME_HEALTHY
            },
        ),
        (
            "smartctl-rs/nvme0.json",
            Facts {
                model: Some("WDS100T1X0E-00AFY0"),
                capacity: Some(1_000_204_886_016),
                temperature: Some(37),
                power_on_hours: Some(10531),
                ..NVME_HEALTHY
            },
        ),
        // No user_capacity: nvme_total_capacity stands in.
        (
            "smartctl_exporter/nvme-null-INTEL_SSDPE2KX040T8-nvme10.json",
            Facts {
                model: Some("INTEL SSDPE2KX040T8"),
                capacity: Some(4_000_787_030_016),
                temperature: Some(29),
                power_on_hours: Some(2434),
                ..NVME_HEALTHY
            },
        ),
        // SCSI/SAS, 7.3 key names (scsi_model_name …).
        (
            "beszel/scsi.json",
            Facts {
                model: Some("YADRO WUH721414AL4204"),
                capacity: Some(14_000_519_643_136),
                temperature: Some(34),
                power_on_hours: Some(458),
                ..SCSI_HEALTHY
            },
        ),
        // Pre-7.3 key names (vendor/product/model_name), no smartctl block at all, 56 grown
        // defects.
        (
            "scrutiny/smart-scsi.json",
            Facts {
                model: Some("SEAGATE ST4000NM0043"),
                capacity: Some(4_000_787_030_016),
                temperature: Some(34),
                power_on_hours: Some(43549),
                reallocated: Some(56),
                scsi_grown_defects: Some(56),
                exit_status: None,
                ..SCSI_HEALTHY
            },
        ),
        // smartctl 6.7.
        (
            "scrutiny/smart-scsi2.json",
            Facts {
                model: Some("SEAGATE ST1200MM0088"),
                capacity: Some(1_200_243_695_616),
                temperature: Some(31),
                power_on_hours: Some(5675),
                ..SCSI_HEALTHY
            },
        ),
        // Parallel SCSI, 7.4, no power-on time.
        (
            "smartctl_exporter/HP_73.4G_MAS3735NC_25.json",
            Facts {
                model: Some("HP 73.4G MAS3735NC"),
                capacity: Some(73_407_865_856),
                temperature: Some(28),
                ..SCSI_HEALTHY
            },
        ),
        // SAS with read, write and verify counters.
        (
            "smartctl_exporter/HITACHI_H109060SESUN600G_10.json",
            Facts {
                model: Some("HITACHI H109060SESUN600G"),
                capacity: Some(600_127_266_816),
                temperature: Some(26),
                power_on_hours: Some(22364),
                ..SCSI_HEALTHY
            },
        ),
        // An Intel RAID volume posing as SCSI: no health, temperature 0 (= not reported), no
        // defect list; exit 4.
        (
            "scrutiny/smart-raid.json",
            Facts {
                protocol: Some("SCSI"),
                device_type: Some("scsi"),
                model: Some("Intel Raid 1 Volume"),
                capacity: Some(1_000_202_043_392),
                exit_status: Some(4),
                ..UNKNOWN
            },
        ),
    ]
}

#[test]
fn chosen_outputs_give_the_values_an_operator_acts_on() {
    let table = device_table();
    assert!(table.len() >= 25);
    for (rel, expected) in table {
        let device = device_of(rel);
        assert_eq!(facts(&device), expected, "{rel}");
        assert_eq!(device.evidence.is_some(), expected.failing, "{rel}");
    }
}

#[test]
fn open_errors_are_reasons_not_devices() {
    for (rel, reason) in [
        (
            "smartctl-rs/perm.json",
            "/dev/sda failed: Permission denied",
        ),
        ("scrutiny/smart-fail.json", "Open failed, Error=5"),
    ] {
        let out = parse_device(&read(rel), None).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(out.device.is_none(), "{rel}");
        assert_eq!(out.exit_status, Some(2), "{rel}");
        let failure = out.failure().unwrap_or_default();
        assert!(failure.contains(reason), "{rel}: {failure}");
        assert!(failure.contains("device open failed"), "{rel}: {failure}");
    }
}

/// Name, `-d` type and protocol of a scanned device.
type Scanned = (&'static str, &'static str, &'static str);

#[test]
fn scans_list_every_device_with_its_type() {
    let cases: [(&str, &[Scanned]); 5] = [
        (
            "beszel/scan.json",
            &[("/dev/sda", "sat", "ATA"), ("/dev/nvme0", "nvme", "NVMe")],
        ),
        (
            "smartctl-rs/scan.json",
            &[
                ("/dev/sda", "scsi", "SCSI"),
                ("/dev/sdb", "scsi", "SCSI"),
                ("/dev/nvme0", "nvme", "NVMe"),
            ],
        ),
        (
            "scrutiny/smartctl_scan_megaraid.json",
            &[
                ("/dev/bus/0", "megaraid,0", "SCSI"),
                ("/dev/bus/0", "megaraid,1", "SCSI"),
            ],
        ),
        (
            "scrutiny/smartctl_scan_nvme.json",
            &[("/dev/nvme0", "nvme", "NVMe")],
        ),
        (
            "scrutiny/smartctl_scan_simple.json",
            &[
                ("/dev/sda", "scsi", "SCSI"),
                ("/dev/sdb", "scsi", "SCSI"),
                ("/dev/sdc", "scsi", "SCSI"),
                ("/dev/sdd", "scsi", "SCSI"),
                ("/dev/sde", "scsi", "SCSI"),
                ("/dev/sdf", "scsi", "SCSI"),
                ("/dev/sdg", "scsi", "SCSI"),
            ],
        ),
    ];
    for (rel, expected) in cases {
        let scan = parse_scan(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let got: Vec<(&str, &str, &str)> = scan
            .devices
            .iter()
            .map(|d| {
                assert_eq!(d.open_error, None, "{rel}");
                (
                    d.name.as_str(),
                    d.device_type.as_deref().unwrap_or_default(),
                    d.protocol.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{rel}");
        assert_eq!(scan.exit_status, Some(0), "{rel}");
    }
}

#[test]
fn the_traps_in_the_corpus_are_read_right() {
    // Raw values above 2^53 are kept exactly (jq, going through f64, prints them off by one);
    // attribute 9's string gives the hours.
    let head = device_of("smartctl-rs/hdd.json");
    let flying = head.attributes.iter().find(|a| a.id == 240);
    assert_eq!(flying.and_then(|a| a.raw), Some(12_884_541_110_758_725));
    assert_eq!(
        flying.and_then(|a| a.raw_string.as_deref()),
        Some("11589h+49m+59.916s")
    );
    let seagate = device_of(
        "smartctl_exporter/sat-Seagate_Enterprise_Capacity_3.5_HDD-ST1000NM0008-2F2100-sda.json",
    );
    let poh = seagate.attributes.iter().find(|a| a.id == 9);
    assert_eq!(poh.and_then(|a| a.raw), Some(9_023_116_403_587_028));
    assert_eq!(seagate.power_on_hours, Some(47060));

    // "36 (Min/Max 0/51)": the temperature is the leading number, not the packed raw value.
    let megaraid = device_of("scrutiny/smart-megaraid1.json");
    let temp = megaraid.attributes.iter().find(|a| a.id == 194);
    assert_eq!(temp.and_then(|a| a.raw), Some(3_342_372));
    assert_eq!(
        temp.and_then(|a| a.raw_string.as_deref()),
        Some("36 (Min/Max 0/51)")
    );
    assert_eq!(temp.and_then(|a| a.thresh), Some(0));
    assert_eq!(megaraid.wwn.as_deref(), Some("0x50014ee2b6578d5f"));

    // Attribute 5 failing now, with its prefail flag; exit 216 decoded.
    let failing = device_of("scrutiny/smart-fail2.json");
    let realloc = failing.attributes.iter().find(|a| a.id == 5);
    assert_eq!(
        realloc.map(|a| (
            a.value,
            a.worst,
            a.thresh,
            a.when_failed.as_deref(),
            a.prefailure
        )),
        Some((Some(1), Some(1), Some(5), Some("now"), true))
    );
    assert_eq!(
        failing.exit_flags,
        vec![
            SmartctlExitFlag::HealthFailing,
            SmartctlExitFlag::PrefailAttributeAtThreshold,
            SmartctlExitFlag::ErrorLogHasEntries,
            SmartctlExitFlag::SelfTestErrors
        ]
    );
    let tests = failing.self_test_log.unwrap_or_default();
    assert_eq!((tests.count, tests.error_count), (Some(21), Some(3)));

    // The upstream author edited raw values without their strings (value 10, string "0"):
    // both are kept, and the count follows smartctl's rendering, as it must for packed raws.
    let edited = device_of("scrutiny/smart-ata-date2.json");
    let realloc = edited.attributes.iter().find(|a| a.id == 5);
    assert_eq!(
        realloc.map(|a| (a.raw, a.raw_string.as_deref())),
        Some((Some(10), Some("0")))
    );
    assert_eq!(edited.reallocated_sectors, Some(0));

    // A comma-decimal locale's gigabytes stay text; SCSI firmware from 7.3's key.
    let sas = device_of("beszel/scsi.json");
    let scsi = sas.scsi.clone().unwrap_or_default();
    assert_eq!(
        scsi.write.and_then(|w| w.gigabytes_processed).as_deref(),
        Some("2124,590")
    );
    assert_eq!(sas.firmware.as_deref(), Some("C240"));
    assert_eq!(sas.wwn.as_deref(), Some("0x5000cca29063dc00"));
    assert_eq!(sas.serial.as_deref(), Some("9YHSDH9B"));

    // NVMe: temperature sensors, spare and its threshold, units, the warning byte.
    let nvme = device_of("scrutiny/smart-nvme-failed.json");
    let log = nvme.nvme.clone().unwrap_or_default();
    assert_eq!(log.temperature_sensors_celsius, vec![35, 39]);
    assert_eq!(
        (
            log.available_spare_percent,
            log.available_spare_threshold_percent
        ),
        (Some(99), Some(10))
    );
    assert_eq!(log.percentage_used, Some(3));
    assert_eq!(log.data_units_written, Some(65_602_088));
    assert_eq!(log.unsafe_shutdowns, Some(10));
    assert_eq!(log.critical_warnings, Vec::<NvmeCriticalWarning>::new());
    assert_eq!(nvme.wwn.as_deref(), Some("eui.0025385791b4f537"));

    // Redacted serials are kept as they are.
    let redacted = device_of("smartctl_exporter/HGST_HUS724020ALE640_28.json");
    assert_eq!(redacted.serial.as_deref(), Some("REDACTED"));
    let errors = redacted.error_log.unwrap_or_default();
    assert_eq!(errors.count, Some(12));

    // A warning message is kept with its severity.
    let warned = device_of("scrutiny/smart-megaraid0.json");
    assert_eq!(
        warned
            .messages
            .iter()
            .map(|m| (m.severity.as_deref(), m.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(
            Some("warning"),
            "Warning: This result is based on an Attribute check."
        )]
    );
}

/// smartctl's JSON writer passes bytes ≥ 0x80 from the disk through unchanged, so a Latin-1
/// byte in a model name makes the output invalid UTF-8. The device must still be reported, with
/// the byte replaced (U+FFFD) and every other value as in the clean output.
#[test]
fn a_byte_that_is_not_utf8_costs_one_character_not_the_device() {
    let rel = "scrutiny/smart-ata.json";
    let clean = read(rel);
    let model = b"\"model_name\": \"WDC WD140EDFZ-11A0VA0\"";
    let at = clean
        .windows(model.len())
        .position(|w| w == model)
        .unwrap_or_else(|| panic!("{rel} no longer has the model name this test expects"));
    // After `"model_name": "WDC `: 0xE9 is é in Latin-1 and starts no valid UTF-8 sequence here.
    let mut dirty = clean.clone();
    dirty.insert(at + b"\"model_name\": \"WDC ".len(), 0xE9);
    assert!(std::str::from_utf8(&dirty).is_err());

    let out = parse_device(&dirty, None).unwrap_or_else(|e| panic!("{rel} with 0xE9: {e}"));
    let mut device = out
        .device
        .unwrap_or_else(|| panic!("{rel} with 0xE9: no device"));
    assert_eq!(
        device.model.as_deref(),
        Some("WDC \u{FFFD}WD140EDFZ-11A0VA0")
    );

    let expected = device_of(rel);
    device.model = expected.model.clone();
    assert_eq!(device.evidence.is_some(), expected.evidence.is_some());
    device.evidence = expected.evidence.clone();
    assert_eq!(device, expected, "only the model name may differ");
}

#[test]
fn the_project_copy_is_the_whole_shared_corpus_when_it_is_beside_the_repository() {
    // CI and developer machines have ../shared beside the clone: there the copy walked above must
    // hold every smartctl capture of the shared corpus, byte for byte. A plain clone has only
    // the copy, which the other tests walk.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/real");
    if !shared.is_dir() {
        eprintln!(
            "{} not present; the project copy alone is walked",
            shared.display()
        );
        return;
    }
    let mut paths = Vec::new();
    for dir in ["beszel", "scrutiny", "smartctl-rs", "smartctl_exporter"] {
        json_files(&shared.join(dir), &mut paths);
    }
    assert!(
        paths.len() > 150,
        "the shared corpus has {} smartctl files",
        paths.len()
    );
    for path in paths {
        let rel = path
            .strip_prefix(&shared)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let theirs = std::fs::read(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let ours = std::fs::read(fixtures().join(&rel))
            .unwrap_or_else(|e| panic!("{rel} is in the shared corpus but not copied: {e}"));
        assert!(ours == theirs, "{rel} differs from the shared corpus");
    }
}
