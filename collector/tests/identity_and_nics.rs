//! What the collector reads from recorded machines (real sysfs trees from node_exporter and
//! procfs, see fixtures/SOURCES.tsv) and from small synthetic trees built for the edge cases
//! real firmware produces.

use std::path::{Path, PathBuf};

use phonehome_collector::{CollectOptions, MachineRoot, collect_report};
use phonehome_schema::{ErrorKind, Report, Serial, SerialSource};

const MACHINE_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A machine tree in a temporary directory, from `(machine path, content)` pairs.
fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for (path, content) in files {
        let full = dir.path().join(path.trim_start_matches('/'));
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&full, content).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    }
    dir
}

fn collect(root: &Path) -> Report {
    collect_report(&MachineRoot::new(root), &CollectOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

struct Expected {
    serial: &'static str,
    source: SerialSource,
    system_uuid: Option<&'static str>,
    nics: &'static [&'static str],
    /// (interface, counter, value)
    counters: &'static [(&'static str, &'static str, u64)],
    /// (interface, speed in Mb/s)
    speeds: &'static [(&'static str, Option<u32>)],
}

#[test]
fn recorded_machines_report_their_identity_and_interfaces() {
    let cases = [
        (
            "sysfs/node_exporter",
            Expected {
                serial: "7N62AI2",
                source: SerialSource::DmiProduct,
                system_uuid: Some("83340ca8-cb49-4474-8c29-d2088ca84dd9"),
                // `lo` absent in the recording; `bonding_masters` is a control file, not a NIC.
                nics: &["bond0", "dmz", "ens10f0", "eth0", "int"],
                counters: &[
                    ("ens10f0", "rx_dropped", 29220),
                    ("ens10f0", "rx_bytes", 10013625365),
                    ("ens10f0", "tx_packets", 47308115),
                    ("ens10f0", "multicast", 656633),
                ],
                // bond0 records speed -1: unknown, not a huge number.
                speeds: &[
                    ("bond0", None),
                    ("dmz", Some(1000)),
                    ("ens10f0", Some(1000)),
                ],
            },
        ),
        (
            "sysfs/procfs",
            Expected {
                serial: "7N62AI2",
                source: SerialSource::DmiProduct,
                system_uuid: Some("83340ca8-cb49-4474-8c29-d2088ca84dd9"),
                nics: &["eth0"],
                counters: &[],
                speeds: &[("eth0", Some(1000))],
            },
        ),
    ];
    for (name, expected) in cases {
        let report = collect(&fixture(name));
        let id = &report.identity;
        assert_eq!(id.serial.as_str(), expected.serial, "{name}");
        assert_eq!(id.serial_source, expected.source, "{name}");
        assert_eq!(
            id.system_uuid.map(|u| u.to_string()).as_deref(),
            expected.system_uuid,
            "{name}"
        );
        // The recordings have no /etc or /proc: said so, not invented.
        assert!(
            id.errors
                .iter()
                .any(|e| e.item == "/etc/machine-id" && e.kind == ErrorKind::NotFound)
        );

        let names: Vec<&str> = report.nics.nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, expected.nics, "{name}");
        assert!(
            report.nics.errors.is_empty(),
            "{name}: {:?}",
            report.nics.errors
        );
        for (nic, counter, value) in expected.counters {
            let found = report
                .nics
                .nics
                .iter()
                .find(|n| n.name == *nic)
                .and_then(|n| n.counters.get(*counter));
            assert_eq!(found, Some(value), "{name} {nic} {counter}");
        }
        for (nic, speed) in expected.speeds {
            let found = report
                .nics
                .nics
                .iter()
                .find(|n| n.name == *nic)
                .map(|n| n.speed_mbps);
            assert_eq!(found, Some(*speed), "{name} {nic} speed");
        }
        assert_eq!(report.check(report.collected_at), Ok(()), "{name}");
    }
}

#[test]
fn a_recorded_interface_has_its_link_details() {
    let report = collect(&fixture("sysfs/node_exporter"));
    let nic = report.nics.nics.iter().find(|n| n.name == "ens10f0");
    let nic = nic.unwrap_or_else(|| panic!("ens10f0 missing: {:?}", report.nics));
    assert_eq!(nic.operstate.as_deref(), Some("up"));
    assert_eq!(nic.carrier, Some(true));
    assert_eq!(nic.mtu, Some(1500));
    assert_eq!(nic.mac.as_deref(), Some("68:05:ca:f0:cb:12"));
    assert_eq!(nic.counters.len(), 24);
    // The recording's device link points at a PCI device without a bound driver.
    assert_eq!(nic.driver, None);
}

struct Synthetic {
    what: &'static str,
    files: Vec<(&'static str, &'static [u8])>,
    serial: &'static str,
    source: SerialSource,
    system_uuid: Option<&'static str>,
    /// (item, kind) that must be among identity.errors.
    errors: &'static [(&'static str, ErrorKind)],
}

#[test]
fn firmware_quirks_fall_back_in_order() {
    const DMI: &str = "/sys/class/dmi/id";
    let mid: (&str, &[u8]) = ("/etc/machine-id", b"3d1219c7c4c5404aaa1f6d2a48adfda4\n");
    let cases = vec![
        Synthetic {
            what: "O.E.M. placeholders everywhere: machine-id stands in",
            files: vec![
                (
                    "/sys/class/dmi/id/product_serial",
                    b"To Be Filled By O.E.M.\n",
                ),
                (
                    "/sys/class/dmi/id/chassis_serial",
                    b"To Be Filled By O.E.M.\n",
                ),
                ("/sys/class/dmi/id/board_serial", b"Default string\n"),
                (
                    "/sys/class/dmi/id/product_uuid",
                    b"03000200-0400-0500-0006-000700080009\n",
                ),
                mid,
            ],
            serial: MACHINE_ID,
            source: SerialSource::MachineId,
            system_uuid: Some("03000200-0400-0500-0006-000700080009"),
            errors: &[],
        },
        Synthetic {
            what: "placeholder product serial, real chassis serial",
            files: vec![
                (
                    "/sys/class/dmi/id/product_serial",
                    b"System Serial Number\n",
                ),
                ("/sys/class/dmi/id/chassis_serial", b"CZJ1234ABC\n"),
                (
                    "/sys/class/dmi/id/product_uuid",
                    b"00000000-0000-0000-0000-000000000000\n",
                ),
                mid,
            ],
            serial: "CZJ1234ABC",
            source: SerialSource::DmiChassis,
            system_uuid: None,
            errors: &[],
        },
        Synthetic {
            what: "non-UTF-8 product serial is refused, board serial used",
            files: vec![
                ("/sys/class/dmi/id/product_serial", b"7N6\xff\xfe2AI2\n"),
                ("/sys/class/dmi/id/chassis_serial", b"0000000000\n"),
                (
                    "/sys/class/dmi/id/board_serial",
                    b".7N62AI2.GRTCL6944100GP.\n",
                ),
                (
                    "/sys/class/dmi/id/product_uuid",
                    b"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n",
                ),
                mid,
            ],
            serial: ".7N62AI2.GRTCL6944100GP.",
            source: SerialSource::DmiBoard,
            system_uuid: None,
            errors: &[("/sys/class/dmi/id/product_serial", ErrorKind::Invalid)],
        },
        Synthetic {
            what: "no DMI at all (virtual machine): machine-id, and no DMI errors",
            files: vec![mid, ("/proc/sys/kernel/hostname", b"appliance-7\n")],
            serial: MACHINE_ID,
            source: SerialSource::MachineId,
            system_uuid: None,
            errors: &[],
        },
        Synthetic {
            what: "DMI directory without serial files: each absence is reported",
            files: vec![("/sys/class/dmi/id/bios_vendor", b"SeaBIOS\n"), mid],
            serial: MACHINE_ID,
            source: SerialSource::MachineId,
            system_uuid: None,
            errors: &[
                ("/sys/class/dmi/id/product_serial", ErrorKind::NotFound),
                ("/sys/class/dmi/id/board_serial", ErrorKind::NotFound),
                ("/sys/class/dmi/id/product_uuid", ErrorKind::NotFound),
            ],
        },
        Synthetic {
            what: "garbage UUID is reported, serial still found",
            files: vec![
                ("/sys/class/dmi/id/product_serial", b"  SN-42  \n"),
                ("/sys/class/dmi/id/product_uuid", b"not-a-uuid\n"),
            ],
            serial: "SN-42",
            source: SerialSource::DmiProduct,
            system_uuid: None,
            errors: &[
                ("/sys/class/dmi/id/product_uuid", ErrorKind::Invalid),
                ("/etc/machine-id", ErrorKind::NotFound),
            ],
        },
    ];
    for case in cases {
        let dir = tree(&case.files);
        let report = collect(dir.path());
        let id = &report.identity;
        assert_eq!(id.serial.as_str(), case.serial, "{}", case.what);
        assert_eq!(id.serial_source, case.source, "{}", case.what);
        assert_eq!(
            id.system_uuid.map(|u| u.to_string()).as_deref(),
            case.system_uuid,
            "{}",
            case.what
        );
        for (item, kind) in case.errors {
            assert!(
                id.errors.iter().any(|e| e.item == *item && e.kind == *kind),
                "{}: expected {kind:?} for {item} in {:?}",
                case.what,
                id.errors
            );
        }
        if case.errors.is_empty() {
            assert!(
                id.errors.iter().all(|e| !e.item.starts_with(DMI)),
                "{}: unexpected DMI errors {:?}",
                case.what,
                id.errors
            );
        }
        assert_eq!(report.check(report.collected_at), Ok(()), "{}", case.what);
    }
}

#[test]
fn a_configured_serial_wins_over_dmi() {
    let dir = tree(&[("/sys/class/dmi/id/product_serial", b"7N62AI2\n")]);
    let options = CollectOptions {
        serial_override: Some(Serial::parse("IMAGED-0001").unwrap_or_else(|e| panic!("{e}"))),
        ..CollectOptions::default()
    };
    let report =
        collect_report(&MachineRoot::new(dir.path()), &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.identity.serial.as_str(), "IMAGED-0001");
    assert_eq!(report.identity.serial_source, SerialSource::Config);
}

/// The report names the unreadable DMI product serial file, with the kind of failure.
fn assert_product_serial_error(report: &Report, kind: ErrorKind) {
    let error = report
        .identity
        .errors
        .iter()
        .find(|e| e.item == "/sys/class/dmi/id/product_serial");
    assert_eq!(
        error.map(|e| e.kind),
        Some(kind),
        "{:?}",
        report.identity.errors
    );
}

#[test]
fn unreadable_serial_files_are_reported_and_skipped() {
    let dir = tree(&[
        ("/sys/class/dmi/id/chassis_serial", b"CH-77\n"),
        ("/etc/machine-id", b"3d1219c7c4c5404aaa1f6d2a48adfda4\n"),
    ]);
    // A directory where the file should be: unreadable for everyone, root included.
    std::fs::create_dir_all(dir.path().join("sys/class/dmi/id/product_serial"))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = collect(dir.path());
    assert_eq!(report.identity.serial.as_str(), "CH-77");
    assert_eq!(report.identity.serial_source, SerialSource::DmiChassis);
    assert_product_serial_error(&report, ErrorKind::Failed);
}

#[test]
fn a_root_only_serial_file_is_a_configuration_error_not_another_identity() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tree(&[
        ("/sys/class/dmi/id/product_serial", b"SECRET-1\n"),
        ("/etc/machine-id", b"3d1219c7c4c5404aaa1f6d2a48adfda4\n"),
    ]);
    let serial_file = dir.path().join("sys/class/dmi/id/product_serial");
    std::fs::set_permissions(&serial_file, std::fs::Permissions::from_mode(0o400))
        .unwrap_or_else(|e| panic!("{e}"));
    // The tree must be traversable by the unprivileged user; only the serial file is private.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    // Root reads anything, so as root the collector runs as `nobody`, as it would on an
    // appliance whose cron job is not root.
    let collector = env!("CARGO_BIN_EXE_phonehome-collector");
    let root_arg = dir.path().to_str().unwrap_or_default();
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--", collector]);
        c
    } else {
        std::process::Command::new(collector)
    };
    let out = cmd
        .args(["collect", "--compact", "--root", root_arg])
        .output()
        .unwrap_or_else(|e| panic!("run the collector (as root this needs runuser): {e}"));
    // Falling back to the machine-id would give the appliance an identity its certificate does
    // not carry: the collector refuses, as a configuration error, and says what to do.
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/sys/class/dmi/id/product_serial"),
        "{stderr}"
    );
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("run the collector as root"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report is printed");
}

#[test]
fn no_serial_at_all_is_an_error_that_names_machine_id() {
    let dir = tree(&[
        (
            "/sys/class/dmi/id/product_serial",
            b"To Be Filled By O.E.M.\n",
        ),
        ("/etc/machine-id", b"uninitialized\n"),
    ]);
    let err = collect_report(&MachineRoot::new(dir.path()), &CollectOptions::default())
        .err()
        .unwrap_or_else(|| panic!("a report without a serial was produced"));
    let message = err.to_string();
    assert!(message.contains("/etc/machine-id"), "{message}");
    assert!(
        message.contains("not 32 lowercase hexadecimal digits"),
        "{message}"
    );
}

#[test]
fn an_all_zero_machine_id_is_no_identity() {
    let dir = tree(&[("/etc/machine-id", b"00000000000000000000000000000000\n")]);
    let err = collect_report(&MachineRoot::new(dir.path()), &CollectOptions::default())
        .err()
        .unwrap_or_else(|| panic!("an all-zero machine-id became a serial"));
    assert!(err.to_string().contains("/etc/machine-id"), "{err}");
    assert!(err.to_string().contains("all zeros"), "{err}");
}
