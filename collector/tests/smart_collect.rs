//! SMART collection end to end: the real collector binary against a recorded machine
//! (`--root`), with `--smartctl` pointing at a stand-in (`tests/smartctl-standin`) that replays
//! real smartctl outputs from `fixtures/smartctl`, sleeps like a hung disk, or is missing.
//! Hung disks are bounded twice: per run (`timeout_seconds`) and for all runs together
//! (`total_timeout_seconds`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use phonehome_schema::{CollectionError, ErrorKind, Report, SmartDevice};
use serde_json::{Value, json};

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn fixture(rel: &str) -> String {
    manifest_path("tests/fixtures/smartctl")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn standin() -> PathBuf {
    manifest_path("tests/smartctl-standin")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `phonehome-collector ARGS` against the recorded node_exporter machine, with the
/// stand-in replaying `machine_dir`.
fn collector(args: &[&str], machine_dir: &Path, log: &Path) -> Output {
    let root = manifest_path("tests/fixtures/sysfs/node_exporter");
    Command::new(env!("CARGO_BIN_EXE_phonehome-collector"))
        .args(args)
        .args(["--root", root.to_str().unwrap_or_default()])
        .env("SMARTCTL_STANDIN_DIR", machine_dir)
        .env("SMARTCTL_STANDIN_LOG", log)
        .env_remove("PHONEHOME_COLLECTOR_SERVER")
        .output()
        .unwrap_or_else(|e| panic!("cannot start the collector: {e}"))
}

fn report(out: &Output) -> Report {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let report: Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a report: {e}\nstderr: {stderr}"));
    assert_eq!(report.check(report.collected_at), Ok(()));
    report
}

fn find<'a>(devices: &'a [SmartDevice], name: &str, device_type: &str) -> &'a SmartDevice {
    devices
        .iter()
        .find(|d| d.name == name && d.device_type.as_deref() == Some(device_type))
        .unwrap_or_else(|| panic!("no {name} -d {device_type} in {devices:#?}"))
}

fn error_for<'a>(errors: &'a [CollectionError], item: &str) -> &'a CollectionError {
    errors
        .iter()
        .find(|e| e.item == item)
        .unwrap_or_else(|| panic!("no error for {item} in {errors:#?}"))
}

/// A machine with SATA, NVMe, SAS and MegaRAID disks (real outputs), a sleeping disk, a
/// disk smartctl may not open, one that hangs, one that prints garbage, and one `--scan-open`
/// could not open.
#[test]
fn a_recorded_machine_reports_every_disk_and_every_failure() {
    let machine = tempdir();
    // `--scan-open` output as smartmontools writes it (smartctl.cpp: `jref["open_error"]` for a
    // device it could not open); no capture of one exists in the corpus.
    write(
        &machine.path().join("scan.json"),
        &json!({
            "json_format_version": [1, 0],
            "smartctl": {"version": [7, 3], "argv": ["smartctl", "--scan-open", "--json"], "exit_status": 0},
            "devices": [
                {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"},
                {"name": "/dev/nvme0", "info_name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"},
                {"name": "/dev/sdb", "info_name": "/dev/sdb", "type": "scsi", "protocol": "SCSI"},
                {"name": "/dev/sdc", "info_name": "/dev/sdc [SAT]", "type": "sat", "protocol": "ATA"},
                {"name": "/dev/sdd", "info_name": "/dev/sdd", "type": "scsi", "protocol": "SCSI"},
                {"name": "/dev/sde", "info_name": "/dev/sde", "type": "scsi", "protocol": "SCSI",
                 "open_error": "INQUIRY failed: Permission denied"},
                {"name": "/dev/sdf", "info_name": "/dev/sdf [SAT]", "type": "sat", "protocol": "ATA"},
                {"name": "/dev/sdg", "info_name": "/dev/sdg [SAT]", "type": "sat", "protocol": "ATA"},
                {"name": "/dev/sdh", "info_name": "/dev/sdh [SAT]", "type": "sat", "protocol": "ATA"}
            ]
        })
        .to_string(),
    );
    // What `smartctl -n standby` prints for a sleeping ATA disk (ataprint.cpp: "Device is in
    // %s mode, exit(%d)", exit status 2).
    write(
        &machine.path().join("standby.json"),
        &json!({
            "json_format_version": [1, 0],
            "smartctl": {"version": [7, 3], "exit_status": 2, "messages": [
                {"string": "Device is in STANDBY mode, exit(2)", "severity": "information"}]},
            "device": {"name": "/dev/sdc", "info_name": "/dev/sdc [SAT]", "type": "sat", "protocol": "ATA"}
        })
        .to_string(),
    );
    write(
        &machine.path().join("machine.json"),
        &json!({
            "scan": {"output": "scan.json"},
            "devices": {
                "/dev/sda -d sat": {"output": fixture("beszel/sda.json")},
                "/dev/nvme0 -d nvme": {"output": fixture("scrutiny/smart-nvme-failed.json")},
                "/dev/sdb -d scsi": {"output": fixture("scrutiny/smart-scsi.json")},
                "/dev/sdc -d sat": {"output": "standby.json"},
                "/dev/sdd -d scsi": {"output": fixture("smartctl-rs/perm.json")},
                "/dev/sdf -d sat": {"output": fixture("smartctl-rs/hdd.json"), "sleep_seconds": 30},
                "/dev/sdg -d sat": {"text": "{\"smartctl\": {\"exit_status\": 0}, \"device\": {\"na"},
                "/dev/sdh -d sat": {"output": fixture("scrutiny/smart-fail2.json"), "exit_status": 216},
                "/dev/bus/0 -d megaraid,0": {"output": fixture("scrutiny/smart-megaraid0.json")},
                "/dev/bus/0 -d megaraid,1": {"output": fixture("scrutiny/smart-megaraid1.json")}
            }
        })
        .to_string(),
    );
    // The configured smartctl does not exist: --smartctl must win. /dev/sda is listed again
    // without a type and must not be read twice; /dev/sde, which the scan could not open, is
    // listed too and must not be tried again.
    let config = machine.path().join("collector.toml");
    write(
        &config,
        "[smart]\nsmartctl = \"/nonexistent/smartctl\"\ntimeout_seconds = 1\ndevices = [\n  \
         { path = \"/dev/bus/0\", type = \"megaraid,0\" },\n  \
         { path = \"/dev/bus/0\", type = \"megaraid,1\" },\n  { path = \"/dev/sda\" },\n  \
         { path = \"/dev/sde\" },\n]\n",
    );
    let log = machine.path().join("argv.log");
    let started = Instant::now();
    let out = collector(
        &[
            "collect",
            "--config",
            config.to_str().unwrap_or_default(),
            "--smartctl",
            standin().to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    let report = report(&out);
    // Only /dev/sdf waits for its 1 s timeout; it is killed, not waited for (it sleeps 30 s).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let smart = &report.smart;
    assert_eq!(smart.smartctl_version.as_deref(), Some("7.3"));

    let names: Vec<(&str, Option<&str>)> = smart
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.device_type.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("/dev/sda", Some("sat")),
            ("/dev/nvme0", Some("nvme")),
            ("/dev/sdb", Some("scsi")),
            ("/dev/sdc", Some("sat")),
            // smartctl's resolved type wins over the one asked for: a USB bridge.
            ("/dev/sdh", Some("usbjmicron")),
            ("/dev/bus/0", Some("sat+megaraid,0")),
            ("/dev/bus/0", Some("sat+megaraid,1")),
        ]
    );

    let sata = find(&smart.devices, "/dev/sda", "sat");
    assert_eq!(sata.serial.as_deref(), Some("9C40918040082"));
    assert_eq!(sata.crc_errors, Some(131));
    assert!(sata.failing && sata.evidence.is_some());

    let nvme = find(&smart.devices, "/dev/nvme0", "nvme");
    assert_eq!(nvme.nvme.as_ref().and_then(|n| n.media_errors), Some(7));
    assert!(!nvme.failing && nvme.evidence.is_none());

    let sas = find(&smart.devices, "/dev/sdb", "scsi");
    assert_eq!(sas.reallocated_sectors, Some(56));

    let asleep = find(&smart.devices, "/dev/sdc", "sat");
    assert!(asleep.in_standby);
    assert_eq!((asleep.health_passed, asleep.failing), (None, false));

    let megaraid = find(&smart.devices, "/dev/bus/0", "sat+megaraid,1");
    assert_eq!(megaraid.reallocated_sectors, Some(387));
    assert_eq!(megaraid.exit_status, Some(4));

    let failing = find(&smart.devices, "/dev/sdh", "usbjmicron");
    assert_eq!(failing.health_passed, Some(false));
    assert_eq!(failing.exit_status, Some(216));
    assert_eq!(failing.reallocated_sectors, Some(1975));
    let evidence = failing.evidence.clone().unwrap_or_default();
    let recorded: Value = serde_json::from_slice(
        &std::fs::read(fixture("scrutiny/smart-fail2.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(evidence, recorded, "the whole output is the evidence");

    let kinds: Vec<(&str, ErrorKind)> = smart
        .errors
        .iter()
        .map(|e| (e.item.as_str(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("/dev/sde -d scsi", ErrorKind::PermissionDenied),
            ("/dev/sdd -d scsi", ErrorKind::PermissionDenied),
            ("/dev/sdf -d sat", ErrorKind::Timeout),
            ("/dev/sdg -d sat", ErrorKind::Invalid),
        ],
        "{:#?}",
        smart.errors
    );
    let denied = error_for(&smart.errors, "/dev/sdd -d scsi");
    assert!(
        denied.message.contains("Permission denied") && denied.message.contains("exit status 2"),
        "{denied:?}"
    );
    let hung = error_for(&smart.errors, "/dev/sdf -d sat");
    assert!(hung.message.contains("killed"), "{hung:?}");

    // Every device was read without waking it and with its type; nothing was read twice.
    let calls: Vec<Vec<String>> = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        calls.first().map(Vec::as_slice),
        Some(&["--scan-open".to_owned(), "--json".to_owned()][..])
    );
    let reads: Vec<String> = calls.iter().skip(1).map(|c| c.join(" ")).collect();
    assert_eq!(
        reads,
        [
            "--json -x -n standby -d sat /dev/sda",
            "--json -x -n standby -d nvme /dev/nvme0",
            "--json -x -n standby -d scsi /dev/sdb",
            "--json -x -n standby -d sat /dev/sdc",
            "--json -x -n standby -d scsi /dev/sdd",
            "--json -x -n standby -d sat /dev/sdf",
            "--json -x -n standby -d sat /dev/sdg",
            "--json -x -n standby -d sat /dev/sdh",
            "--json -x -n standby -d megaraid,0 /dev/bus/0",
            "--json -x -n standby -d megaraid,1 /dev/bus/0",
        ]
    );
}

/// Disks behind one hung controller hang together. Each is killed at its own timeout, but
/// all runs together must also end within `[smart] total_timeout_seconds`, or a few dozen hung
/// disks would outlast the systemd unit's TimeoutStartSec and lose the whole report.
#[test]
fn hung_disks_stop_at_the_total_budget_and_the_rest_are_listed_as_not_read() {
    let machine = tempdir();
    let hung = json!({"output": fixture("smartctl-rs/hdd.json"), "sleep_seconds": 60});
    write(
        &machine.path().join("machine.json"),
        &json!({
            "devices": {
                "/dev/sda": {"output": fixture("beszel/sda.json")},
                "/dev/sdf": hung,
                "/dev/sdg": hung,
                "/dev/sdh": hung,
            }
        })
        .to_string(),
    );
    // Each run may take 3 s, all of them together 2 s: without the budget this takes 9 s.
    let config = machine.path().join("collector.toml");
    write(
        &config,
        "[smart]\nscan = false\ntimeout_seconds = 3\ntotal_timeout_seconds = 2\ndevices = [\n  \
         { path = \"/dev/sda\" },\n  { path = \"/dev/sdf\" },\n  { path = \"/dev/sdg\" },\n  \
         { path = \"/dev/sdh\" },\n]\n",
    );
    let log = machine.path().join("argv.log");
    let started = Instant::now();
    let out = collector(
        &[
            "collect",
            "--config",
            config.to_str().unwrap_or_default(),
            "--smartctl",
            standin().to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    let elapsed = started.elapsed();
    let report = report(&out);
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    let smart = &report.smart;

    // The disk that answered in time is reported as usual.
    let names: Vec<&str> = smart.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/sda"]);

    let kinds: Vec<(&str, ErrorKind)> = smart
        .errors
        .iter()
        .map(|e| (e.item.as_str(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("/dev/sdf", ErrorKind::Timeout),
            ("/dev/sdg", ErrorKind::Timeout),
            ("/dev/sdh", ErrorKind::Timeout),
        ],
        "{:#?}",
        smart.errors
    );
    // The one tried was cut short by the budget, before its own 3 s.
    let tried = error_for(&smart.errors, "/dev/sdf");
    assert!(
        tried.message.contains("killed")
            && tried.message.contains("budget")
            && tried.message.contains("total_timeout_seconds = 2"),
        "{tried:?}"
    );
    for item in ["/dev/sdg", "/dev/sdh"] {
        let skipped = error_for(&smart.errors, item);
        assert!(
            skipped
                .message
                .contains("not read: SMART time budget spent")
                && skipped.message.contains("total_timeout_seconds = 2"),
            "{skipped:?}"
        );
    }

    // The disks past the budget were not even tried.
    let reads: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(|l| {
            let argv: Vec<String> = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            argv.last().cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(reads, ["/dev/sda", "/dev/sdf"]);
}

#[test]
fn a_missing_smartctl_is_one_error_and_the_rest_of_the_report_stands() {
    let machine = tempdir();
    let log = machine.path().join("argv.log");
    let out = collector(
        &["collect", "--smartctl", "/nonexistent/sbin/smartctl"],
        machine.path(),
        &log,
    );
    let report = report(&out);
    assert!(report.smart.devices.is_empty());
    assert_eq!(report.smart.errors.len(), 1, "{:#?}", report.smart.errors);
    let error = &report.smart.errors[0];
    assert_eq!(
        (error.item.as_str(), error.kind),
        ("smartctl", ErrorKind::NotFound)
    );
    assert!(error.message.contains("install smartmontools"), "{error:?}");
    assert!(
        !report.nics.nics.is_empty(),
        "the other sections are still collected"
    );
    assert_eq!(report.identity.serial.as_str(), "7N62AI2");
}

#[test]
fn a_smartctl_that_may_not_be_run_is_permission_denied() {
    let machine = tempdir();
    let not_executable = machine.path().join("smartctl");
    write(&not_executable, "#!/bin/sh\nexit 0\n");
    let log = machine.path().join("argv.log");
    let out = collector(
        &[
            "collect",
            "--smartctl",
            not_executable.to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    let report = report(&out);
    let kinds: Vec<ErrorKind> = report.smart.errors.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [ErrorKind::PermissionDenied],
        "{:#?}",
        report.smart.errors
    );
}

#[test]
fn a_machine_without_disks_reports_none_and_no_error() {
    let machine = tempdir();
    write(&machine.path().join("machine.json"), "{}");
    let log = machine.path().join("argv.log");
    let out = collector(
        &[
            "collect",
            "--smartctl",
            standin().to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    let report = report(&out);
    assert_eq!(report.smart.devices, []);
    assert_eq!(report.smart.errors, []);
}

#[test]
fn run_takes_the_smartctl_flag_too() {
    let machine = tempdir();
    let log = machine.path().join("argv.log");
    let missing = machine.path().join("missing.toml");
    // A usage error would be exit 2; 78 means --smartctl was accepted and the config checked.
    let out = collector(
        &[
            "run",
            "--smartctl",
            standin().to_str().unwrap_or_default(),
            "--config",
            missing.to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real smartctl (smartmontools, installed by `scripts/deps.sh`), found the way cron finds
/// it: it accepts the command line the collector builds for every `-d` type, and its open
/// errors and argument errors become section errors naming the device.
#[test]
fn the_real_smartctl_accepts_our_command_lines_and_its_errors_are_reported() {
    let dir = tempdir();
    let config = dir.path().join("collector.toml");
    // No scan: on a machine with disks (and root) it would read them, and this test must not
    // depend on the machine's hardware.
    write(
        &config,
        "[smart]\nscan = false\ndevices = [\n  \
         { path = \"/dev/phonehome-no-such-disk\", type = \"sat\" },\n  \
         { path = \"/dev/phonehome-no-such-disk\", type = \"megaraid,3\" },\n  \
         { path = \"/dev/phonehome-no-such-nvme\", type = \"nvme\" },\n  \
         { path = \"/dev/phonehome-no-such-disk\", type = \"no-such-type\" },\n]\n",
    );
    let log = dir.path().join("argv.log");
    let out = collector(
        &["collect", "--config", config.to_str().unwrap_or_default()],
        dir.path(),
        &log,
    );
    let report = report(&out);
    let smart = &report.smart;
    assert!(
        smart
            .smartctl_version
            .as_deref()
            .is_some_and(|v| v.starts_with('7')),
        "smartmontools 7 must be installed (scripts/deps.sh): {smart:#?}"
    );
    assert!(smart.devices.is_empty(), "{smart:#?}");
    let errors: Vec<(&str, ErrorKind)> = smart
        .errors
        .iter()
        .map(|e| (e.item.as_str(), e.kind))
        .collect();
    assert_eq!(
        errors,
        [
            ("/dev/phonehome-no-such-disk -d sat", ErrorKind::NotFound),
            (
                "/dev/phonehome-no-such-disk -d megaraid,3",
                ErrorKind::NotFound
            ),
            ("/dev/phonehome-no-such-nvme -d nvme", ErrorKind::NotFound),
            (
                "/dev/phonehome-no-such-disk -d no-such-type",
                ErrorKind::Failed
            ),
        ],
        "{:#?}",
        smart.errors
    );
    for error in &smart.errors[..3] {
        assert!(
            error.message.contains("No such device")
                && error.message.contains("exit status 2: device open failed"),
            "{error:?}"
        );
    }
    let bad_type = &smart.errors[3];
    assert!(
        bad_type.message.contains("Unknown device type")
            && bad_type
                .message
                .contains("exit status 1: command line not understood"),
        "{bad_type:?}"
    );
}

/// A PERC or MegaRAID volume: smartctl cannot open it as a disk and says to add
/// `-d megaraid,N`; the collector probes the controller's slots and reports the disks it finds
/// there instead of the error.
#[test]
fn a_controller_smartctl_points_at_is_probed_for_its_disks() {
    let machine = tempdir();
    write(
        &machine.path().join("scan.json"),
        &json!({
            "smartctl": {"version": [7, 3], "exit_status": 0},
            "devices": [{"name": "/dev/sda", "info_name": "/dev/sda", "type": "sat", "protocol": "ATA"}]
        })
        .to_string(),
    );
    // What smartctl prints for a disk behind a DELL or MegaRAID controller (os_linux.cpp).
    write(
        &machine.path().join("perc.json"),
        &json!({
            "smartctl": {"version": [7, 3], "exit_status": 2, "messages": [{
                "string": "Smartctl open device: /dev/sda [SAT] failed: DELL or MegaRaid controller, please try adding '-d megaraid,N'",
                "severity": "error"}]},
            "device": {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"}
        })
        .to_string(),
    );
    write(
        &machine.path().join("machine.json"),
        &json!({
            "scan": {"output": "scan.json"},
            "devices": {
                "/dev/sda -d sat": {"output": "perc.json"},
                "/dev/sda -d megaraid,0": {"output": fixture("scrutiny/smart-megaraid0.json")},
                "/dev/sda -d megaraid,3": {"output": fixture("scrutiny/smart-megaraid1.json")}
            }
        })
        .to_string(),
    );
    let log = machine.path().join("argv.log");
    let out = collector(
        &[
            "collect",
            "--smartctl",
            standin().to_str().unwrap_or_default(),
        ],
        machine.path(),
        &log,
    );
    let report = report(&out);
    let members: Vec<&str> = report
        .smart
        .devices
        .iter()
        .filter_map(|d| d.device_type.as_deref())
        .collect();
    // smartctl names them by what it found there (SATA disks behind the controller).
    assert_eq!(
        members,
        ["sat+megaraid,0", "sat+megaraid,1"],
        "{:#?}",
        report.smart
    );
    assert!(report.smart.devices.iter().all(|d| d.model.is_some()));
    assert!(
        report.smart.errors.is_empty(),
        "the volume is read through its disks: {:?}",
        report.smart.errors
    );
    let probes = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("megaraid,"))
        .count();
    assert_eq!(probes, 32, "every slot of the controller, once");
}
