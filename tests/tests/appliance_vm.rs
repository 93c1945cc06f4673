//! The virtual appliance: Debian's kernel, busybox, Debian's smartctl and the collector's
//! release binary, booted under QEMU (software emulation) with an SMBIOS serial and UUID, an
//! NVMe drive with two namespaces, a SATA disk, an e1000 NIC, and user-mode networking that
//! reaches only the ingest on this machine's loopback. It enrols with a one-time token, phones
//! home to a real ingest and PostgreSQL, spools while the ingest is down (exit 75) and delivers
//! both reports, once each, at the next boot.
//!
//! Three boots of about a minute each; `scripts/vm/build-image.sh` and `scripts/vm/boot.sh` do
//! the work (docs/appliance-vm.md). Needs qemu-system-x86, socat, busybox-static, cpio,
//! e2fsprogs (scripts/deps.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, bin, cargo};
use phonehome_tests::pki::TestPki;
use serde_json::Value;

/// The appliance's SMBIOS identity, as `scripts/vm/boot.sh --serial/--uuid` sets it.
const SERIAL: &str = "PHVM-TEST-0001";
const UUID: &str = "3b6f1d0e-8c2a-4f5e-9a71-0c4d2e8b9f16";
/// Where the guest reaches the ingest (forwarded by QEMU to the host's loopback).
const GUEST_INGEST_ADDR: &str = "10.0.2.100";
const MIB: u64 = 1024 * 1024;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

/// Fails, saying how to get them, when the tools the appliance needs are missing.
fn require_tools() {
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "socat",
        "mkfs.ext4",
        "debugfs",
        "cpio",
        "busybox",
        "dpkg-deb",
        "apt-get",
    ]
    .into_iter()
    .filter(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect();
    assert!(
        missing.is_empty(),
        "the virtual appliance test needs {missing:?}: run scripts/deps.sh (Debian packages \
         qemu-system-x86, socat, e2fsprogs, cpio, busybox-static)"
    );
}

/// The collector's release binary and the image built from it, once per test process.
fn image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = IMAGE.get_or_init(|| {
        let out = cargo()
            .args(["build", "--quiet", "--release", "-p", "phonehome-collector"])
            .current_dir(repo())
            .output()
            .map_err(|e| format!("run cargo: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        // target/<profile>/deps/<test exe> → target
        let target = bin("phonehome-collector")
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let dir = target.join("vm");
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/vm/build-image.sh"))
            .arg("--out")
            .arg(&dir)
            .arg("--collector")
            .arg(target.join("release/phonehome-collector"))
            .output()
            .map_err(|e| format!("run build-image.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "build-image.sh: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!(
            "appliance image built in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(dir)
    });
    match built {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("building the appliance image failed:\n{e}"),
    }
}

/// One boot's outcome: the collector's exit code in the guest and the console.
struct Boot {
    code: Option<i32>,
    console: String,
}

fn boot(state: &Path, ingest_port: u16) -> Boot {
    let started = Instant::now();
    let out = Command::new(repo().join("scripts/vm/boot.sh"))
        .arg("--state")
        .arg(state)
        .arg("--image")
        .arg(image())
        .args(["--ingest", &format!("127.0.0.1:{ingest_port}")])
        .args(["--serial", SERIAL, "--uuid", UUID, "--timeout", "400"])
        .output()
        .expect("run boot.sh");
    let console = std::fs::read_to_string(state.join("console.log")).unwrap_or_default();
    eprintln!(
        "boot took {:.1} s, exit {:?}; {}",
        started.elapsed().as_secs_f64(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Boot {
        code: out.status.code(),
        console,
    }
}

/// A file on one of the appliance's ext4 disk images, read without mounting it.
fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The report ids waiting in the appliance's spool (on its SATA disk).
fn spooled(state: &Path) -> Vec<String> {
    debugfs(&state.join("sata.img"), "ls -p /phonehome/spool")
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter_map(|name| name.strip_suffix(".json"))
        .filter_map(|stem| stem.get(stem.len().checked_sub(36)?..))
        .map(str::to_owned)
        .collect()
}

/// Every stored report of the appliance, oldest first: (report_id, collected_at - received_at
/// in seconds).
async fn stored(db: &TestDb) -> Vec<(String, f64)> {
    db.client()
        .await
        .query(
            "SELECT r.report_id::text,
                    extract(epoch FROM r.collected_at - r.received_at)::float8
             FROM reports r JOIN appliances a ON a.id = r.appliance_id
             WHERE a.serial = $1 ORDER BY r.collected_at",
            &[&SERIAL],
        )
        .await
        .expect("query reports")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn report_json(ingest: &IngestProcess, report_id: &str) -> Value {
    let r = phonehome_tests::client::get(
        ingest.ops_addr,
        &format!("/api/v1/appliances/{SERIAL}/reports/{report_id}"),
    )
    .await
    .expect("GET the report");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("the API answers JSON")
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|x| x[key] == value))
        .unwrap_or_else(|| panic!("no {key} = {value} in {list:#}"))
}

/// What an operator checks on the first report: the appliance is who its firmware says, both
/// drives are there with health, temperature and hours, both filesystems and the NIC.
fn check_report(r: &Value) {
    let id = &r["identity"];
    assert_eq!(id["serial"], SERIAL);
    assert_eq!(id["serial_source"], "dmi_product", "{id:#}");
    assert_eq!(id["system_uuid"], UUID);
    assert_eq!(id["hostname"], "phonehome-vm");
    assert!(
        id["machine_id"].as_str().is_some_and(|m| m.len() == 32),
        "{id:#}"
    );
    assert_eq!(id["errors"].as_array().map_or(0, Vec::len), 0, "{id:#}");

    let smart = &r["smart"];
    assert_eq!(smart["errors"], Value::Array(vec![]), "{smart:#}");
    let devices = &smart["devices"];
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{devices:#}");
    let nvme = find(devices, "name", "/dev/nvme0");
    let sata = find(devices, "name", "/dev/sda");
    for (d, serial) in [(nvme, "NVME-"), (sata, "SATA-")] {
        assert_eq!(d["serial"], format!("{serial}{SERIAL}"), "{d:#}");
        assert_eq!(d["health_passed"], true, "{d:#}");
        // `failing` is left out when false.
        assert!(!d["failing"].as_bool().unwrap_or(false), "{d:#}");
        assert!(
            d["temperature_celsius"].as_i64().is_some_and(|t| t > 0),
            "{d:#}"
        );
        assert!(d["power_on_hours"].as_u64().is_some(), "{d:#}");
    }
    // Two namespaces of 256 MiB and 64 MiB: smartctl says no capacity for the controller.
    assert_eq!(nvme["capacity_bytes"], 320 * MIB, "{nvme:#}");
    assert_eq!(sata["capacity_bytes"], 256 * MIB, "{sata:#}");
    assert_eq!(sata["protocol"], "ATA");
    // QEMU's AHCI disk aborts the SMART log directory read: smartctl's bit 2, kept as a fact.
    assert_eq!(
        sata["exit_flags"],
        serde_json::json!(["smart_command_failed"])
    );
    assert!(
        sata["attributes"].as_array().is_some_and(|a| !a.is_empty()),
        "{sata:#}"
    );

    let fs = &r["filesystems"];
    assert_eq!(fs["errors"], Value::Array(vec![]), "{fs:#}");
    for (mount, device) in [("/persist", "/dev/sda"), ("/data", "/dev/nvme0n1")] {
        let f = find(&fs["filesystems"], "mount_point", mount);
        assert_eq!(f["device"], device, "{f:#}");
        assert_eq!(f["fs_type"], "ext4", "{f:#}");
        let total = f["bytes_total"].as_u64().unwrap_or(0);
        assert!((200 * MIB..=256 * MIB).contains(&total), "{f:#}");
        assert!(f["inodes_total"].as_u64().is_some_and(|n| n > 0), "{f:#}");
    }

    let nic = find(&r["nics"]["nics"], "name", "eth0");
    assert_eq!(nic["mac"], "52:54:00:12:34:56", "{nic:#}");
    assert_eq!(nic["driver"], "e1000", "{nic:#}");
    assert_eq!(nic["operstate"], "up", "{nic:#}");
    assert_eq!(nic["carrier"], true, "{nic:#}");
    assert!(
        nic["counters"]["tx_packets"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{nic:#}"
    );

    let system = &r["system"];
    assert_eq!(system["os"]["id"], "phonehome-vm", "{system:#}");
    assert!(
        system["kernel"]
            .as_str()
            .is_some_and(|k| k.ends_with("-amd64")),
        "{system:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_appliance_enrols_reports_spools_while_the_ingest_is_down_and_delivers_once() {
    require_tools();
    let started = Instant::now();
    let db = TestDb::new().await;
    let pki = TestPki::with_server_names(&[GUEST_INGEST_ADDR]);
    let ca_dir = pki.dir().join("fleet").display().to_string();
    let env = [("PHONEHOME_PKI_CA_DIR", ca_dir.as_str())];
    let mut ingest = IngestProcess::start_with(&db, &pki, &env).await;

    // Imaging: the fleet CA and a one-time token for the serial its firmware carries.
    let state = tempfile::tempdir().expect("temp dir");
    std::fs::copy(pki.ca_cert(), state.path().join("ca.crt")).expect("copy the CA");
    let token = Command::new(bin("phonehome-ingest"))
        .args(["ca", "issue-token", "--serial", SERIAL, "--ttl", "1h"])
        .env("PHONEHOME_DATABASE_URL", db.url())
        .output()
        .expect("run phonehome-ingest ca issue-token");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    std::fs::write(state.path().join("token"), &token.stdout).expect("write the token");

    // First boot: enrols with the token and delivers its report.
    let first = boot(state.path(), ingest.report_addr.port());
    assert!(
        first.console.contains("phonehome-vm: enroll exit=0"),
        "enrolment failed:\n{}",
        first.console
    );
    assert_eq!(first.code, Some(0), "console:\n{}", first.console);
    let reports = stored(&db).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    // The guest's clock is the host's (QEMU's RTC): no skew for the ingest to flag.
    assert!(reports[0].1.abs() < 120.0, "clock skew {reports:?}");
    check_report(&report_json(&ingest, &reports[0].0).await);

    // Second boot with the ingest down: the report waits in the spool on the SATA disk.
    let port = ingest.report_addr.port();
    ingest.stop();
    let second = boot(state.path(), port);
    assert_eq!(second.code, Some(75), "console:\n{}", second.console);
    let waiting = spooled(state.path());
    assert_eq!(waiting.len(), 1, "spool: {waiting:?}");

    // Third boot with the ingest back: both reports delivered, each stored once.
    let ingest = IngestProcess::start_with(&db, &pki, &env).await;
    let third = boot(state.path(), ingest.report_addr.port());
    assert_eq!(third.code, Some(0), "console:\n{}", third.console);
    assert!(
        !third.console.contains("phonehome-vm: enroll"),
        "enrolled again:\n{}",
        third.console
    );
    assert_eq!(spooled(state.path()), Vec::<String>::new());
    let reports = stored(&db).await;
    let ids: Vec<&str> = reports.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{reports:?}");
    assert_eq!(
        ids[1], waiting[0],
        "the spooled report is the second one stored"
    );
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 3, "a report stored twice: {ids:?}");
    let last = report_json(&ingest, ids[2]).await;
    check_report(&last);
    let spooled_one = report_json(&ingest, ids[1]).await;
    assert_eq!(spooled_one["identity"]["serial"], SERIAL);
    // The same certificate, from enrolment, delivered all three.
    let certs = db
        .client()
        .await
        .query_one(
            "SELECT count(DISTINCT r.cert_id) FROM reports r
             JOIN appliances a ON a.id = r.appliance_id WHERE a.serial = $1",
            &[&SERIAL],
        )
        .await
        .expect("query certificates");
    assert_eq!(certs.get::<_, i64>(0), 1);
    // A healthy appliance with a right clock: nothing for operations to look at.
    let alerts: Vec<(String, String, String)> = db
        .client()
        .await
        .query(
            "SELECT al.rule, al.subject, al.state FROM alerts al
             JOIN appliances a ON a.id = al.appliance_id WHERE a.serial = $1",
            &[&SERIAL],
        )
        .await
        .expect("query alerts")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(alerts, Vec::new(), "alerts for a healthy appliance");
    eprintln!(
        "virtual appliance test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
