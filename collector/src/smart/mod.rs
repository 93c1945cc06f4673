//! SMART status of every disk, through `smartctl --json`: discovery with `--scan-open` plus the
//! configured devices, then `smartctl --json -x -n standby` per device, so a sleeping disk is
//! reported as such and never woken.
//!
//! Nothing smartctl does can stop the report: a missing smartctl, a denied permission, a disk
//! that cannot be opened, a hung run (killed at the timeout) or unreadable output each become
//! one of the section's errors, and the other devices are still reported. Nor can it delay the
//! report without bound: all runs together share a time budget (`total_timeout_seconds`), and
//! devices not reached within it are reported as not read.

pub mod capacity;
pub mod exec;
mod json;
pub mod parse;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phonehome_schema::{CollectionError, ErrorKind, SmartDevice, SmartSection};
use serde::Deserialize;

use crate::machine;
use exec::{RunError, Smartctl};
use parse::{ScannedDevice, parse_device, parse_scan};

/// Default per-run timeout: a healthy disk answers in well under a second, a dying one can
/// take many (retries), a hung controller forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for all smartctl runs together. Disks on one hung controller tend to hang together:
/// without an overall bound, N of them × the per-run timeout could outlast the systemd unit's
/// `TimeoutStartSec` (15 min), which kills the run and loses the whole report. 300 s leaves
/// ten hung disks at the default timeout, and most of the unit's time for delivery.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest smartctl output kept as one device's evidence: a report must stay well inside the
/// ingest's body limit (1 MiB by default).
pub const EVIDENCE_LIMIT: usize = 256 * 1024;
/// Most evidence kept for all devices together, for the same reason.
pub const EVIDENCE_TOTAL_LIMIT: usize = 512 * 1024;

const INSTALL_HINT: &str =
    "install smartmontools (7.0 or later), or name the binary with --smartctl or [smart] smartctl";

/// How SMART data is collected (the `[smart]` table of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartOptions {
    /// The smartctl binary; `None` looks on PATH, then in /usr/sbin, /sbin, /usr/local/sbin.
    pub smartctl: Option<PathBuf>,
    /// Limit for each smartctl run.
    pub timeout: Duration,
    /// Limit for all smartctl runs together; devices not reached by then are not read.
    pub total_timeout: Duration,
    /// Discover devices with `smartctl --scan-open`.
    pub scan: bool,
    /// Devices read in addition to those discovered, e.g. disks behind a RAID controller.
    pub devices: Vec<SmartTarget>,
}

impl Default for SmartOptions {
    fn default() -> Self {
        SmartOptions {
            smartctl: None,
            timeout: DEFAULT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            scan: true,
            devices: Vec::new(),
        }
    }
}

/// The `[smart]` table as written:
///
/// ```toml
/// [smart]
/// smartctl = "/usr/sbin/smartctl"   # default: from PATH, then /usr/sbin
/// timeout_seconds = 30              # per smartctl run
/// total_timeout_seconds = 300       # all smartctl runs together
/// scan = true                       # discover with `smartctl --scan-open`
/// devices = [{ path = "/dev/bus/0", type = "megaraid,0" }, { path = "/dev/sdb" }]
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmart {
    smartctl: Option<PathBuf>,
    timeout_seconds: Option<u64>,
    total_timeout_seconds: Option<u64>,
    scan: Option<bool>,
    #[serde(default)]
    devices: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    path: String,
    #[serde(rename = "type")]
    device_type: Option<String>,
}

impl SmartOptions {
    /// Checks the `[smart]` table; `dir` anchors a relative smartctl path (a bare name is still
    /// looked up on PATH).
    pub fn from_raw(raw: RawSmart, dir: &Path) -> Result<SmartOptions, String> {
        let timeout = match raw.timeout_seconds {
            Some(0) => return Err("[smart] timeout_seconds must be at least 1".to_owned()),
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_TIMEOUT,
        };
        let total_timeout = match raw.total_timeout_seconds {
            Some(0) => return Err("[smart] total_timeout_seconds must be at least 1".to_owned()),
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_TOTAL_TIMEOUT,
        };
        let smartctl = raw.smartctl.map(|p| {
            if p.is_relative() && p.components().count() > 1 {
                dir.join(p)
            } else {
                p
            }
        });
        let devices = raw
            .devices
            .into_iter()
            .map(|d| {
                let path = d.path.trim().to_owned();
                if path.is_empty() || path.starts_with('-') {
                    return Err(format!(
                        "[smart] devices: {:?} is not a device name",
                        d.path
                    ));
                }
                let device_type = d
                    .device_type
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty());
                Ok(SmartTarget { path, device_type })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SmartOptions {
            smartctl,
            timeout,
            total_timeout,
            scan: raw.scan.unwrap_or(true),
            devices,
        })
    }
}

/// One device to read: its name and, where smartctl cannot guess it, its `-d` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartTarget {
    pub path: String,
    /// e.g. `megaraid,0`, `sat`, `nvme`.
    pub device_type: Option<String>,
}

impl SmartTarget {
    /// How the device is named in errors: `/dev/bus/0 -d megaraid,0`.
    fn label(&self) -> String {
        match &self.device_type {
            Some(t) => format!("{} -d {t}", self.path),
            None => self.path.clone(),
        }
    }

    /// The same disk: same name, and the same type unless one of them leaves it to smartctl.
    fn same_as(&self, other: &SmartTarget) -> bool {
        self.path == other.path
            && match (&self.device_type, &other.device_type) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Collects the SMART section: never fails, records what it could not do.
pub fn collect(options: &SmartOptions) -> SmartSection {
    // The scan counts too: `--scan-open` opens every disk, and can hang on them like a read.
    let budget = Budget::start(options.total_timeout);
    let mut section = SmartSection::default();
    let Some(smartctl) = Smartctl::locate(options.smartctl.as_deref(), options.timeout) else {
        section.errors.push(CollectionError {
            item: "smartctl".to_owned(),
            kind: ErrorKind::NotFound,
            message: format!("smartctl is not on PATH nor in /usr/sbin; {INSTALL_HINT}"),
        });
        return section;
    };

    let mut targets: Vec<SmartTarget> = Vec::new();
    // Devices the scan could not open: already reported, so not read again when configured.
    let mut unopened: Vec<SmartTarget> = Vec::new();
    if options.scan {
        match scan(&smartctl, &budget, &mut section) {
            Ok(found) => (targets, unopened) = found,
            // Without a runnable smartctl nothing else can work; one error says it all.
            Err(Fatal) => return section,
        }
    }
    for configured in &options.devices {
        if !targets
            .iter()
            .chain(&unopened)
            .any(|t| t.same_as(configured))
        {
            targets.push(configured.clone());
        }
    }

    let mut evidence_budget = EVIDENCE_TOTAL_LIMIT;
    // Controllers smartctl pointed at ("please try adding '-d megaraid,N'"): their disks are
    // probed below, or the appliance would report a RAID volume and no disk in it.
    // (the volume smartctl could not read, the controller family it named)
    let mut hinted: Vec<(SmartTarget, &'static str)> = Vec::new();
    let mut note_hint = |target: &SmartTarget, text: &str| {
        if let Some(family) = controller_hint(text) {
            if !hinted
                .iter()
                .any(|(t, f)| t.path == target.path && *f == family)
            {
                hinted.push((target.clone(), family));
            }
        }
    };
    for target in &targets {
        if budget.left().is_zero() {
            // Listed, so that a disk missing from the report is never silent.
            section.errors.push(CollectionError {
                item: target.label(),
                kind: ErrorKind::Timeout,
                message: format!("not read: SMART time budget spent ({})", budget.setting()),
            });
            continue;
        }
        let version = &mut section.smartctl_version;
        match read_device(&smartctl, target, &budget, &mut evidence_budget, version) {
            Ok(device) => {
                for m in &device.messages {
                    note_hint(target, &m.text);
                }
                section.devices.push(device);
            }
            Err(Failure::Device(error)) => {
                note_hint(target, &error.message);
                section.errors.push(error);
            }
            Err(Failure::Fatal(error)) => {
                section.errors.push(error);
                return section;
            }
        }
    }
    for (volume, family) in hinted {
        let path = volume.path.clone();
        let mut found = 0usize;
        for n in 0..controller_slots(family) {
            let member = SmartTarget {
                path: path.clone(),
                device_type: Some(format!("{family},{n}")),
            };
            if targets.iter().chain(&unopened).any(|t| t.same_as(&member)) {
                continue;
            }
            if budget.left().is_zero() {
                section.errors.push(CollectionError {
                    item: format!("{path} -d {family},{n}.."),
                    kind: ErrorKind::Timeout,
                    message: format!("not probed: SMART time budget spent ({})", budget.setting()),
                });
                break;
            }
            let version = &mut section.smartctl_version;
            match read_device(&smartctl, &member, &budget, &mut evidence_budget, version) {
                Ok(device) => {
                    found = found.saturating_add(1);
                    section.devices.push(device);
                }
                // An empty slot: nothing to report.
                Err(Failure::Device(_)) => {}
                Err(Failure::Fatal(error)) => {
                    section.errors.push(error);
                    return section;
                }
            }
        }
        if found > 0 {
            // The volume smartctl could not open is read through its disks instead: its error,
            // or its empty entry, goes.
            let label = volume.label();
            section.errors.retain(|e| e.item != label);
            section.devices.retain(|d| {
                !(d.name == volume.path
                    && d.device_type == volume.device_type
                    && d.model.is_none()
                    && d.serial.is_none())
            });
        }
    }
    section
}

/// The controller family smartctl's message asks to be named with `-d`, if any.
fn controller_hint(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    ["megaraid", "cciss"]
        .into_iter()
        .find(|f| t.contains(&format!("-d {f}")))
}

/// Disk slots probed behind a controller smartctl pointed at: MegaRAID device ids in use are
/// small numbers on appliance-sized enclosures; cciss (HP Smart Array) numbers 0 to 15.
fn controller_slots(family: &str) -> u32 {
    match family {
        "megaraid" => 32,
        _ => 16,
    }
}

/// smartctl itself cannot run; the error is already recorded.
struct Fatal;

/// The time left for all smartctl runs together.
struct Budget {
    total: Duration,
    deadline: Instant,
}

impl Budget {
    fn start(total: Duration) -> Budget {
        Budget {
            total,
            deadline: Instant::now() + total,
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The setting, as errors name it so that an operator knows what to raise.
    fn setting(&self) -> String {
        format!("[smart] total_timeout_seconds = {}", self.total.as_secs())
    }
}

enum Failure {
    /// This device could not be read; go on with the next.
    Device(CollectionError),
    /// smartctl cannot run at all.
    Fatal(CollectionError),
}

/// The devices `--scan-open` found: those to read, and those it could not open (reported).
fn scan(
    smartctl: &Smartctl,
    budget: &Budget,
    section: &mut SmartSection,
) -> Result<(Vec<SmartTarget>, Vec<SmartTarget>), Fatal> {
    let item = "smartctl --scan-open";
    let out = match smartctl.run_within(&["--scan-open", "--json"], budget.left()) {
        Ok(out) => out,
        Err(e) => {
            let (error, fatal) = run_error(item, smartctl, budget, e);
            section.errors.push(error);
            return if fatal {
                Err(Fatal)
            } else {
                Ok(Default::default())
            };
        }
    };
    let scanned = match parse_scan(&out.stdout) {
        Ok(scanned) => scanned,
        Err(e) => {
            section.errors.push(CollectionError {
                item: item.to_owned(),
                kind: ErrorKind::Invalid,
                message: with_stderr(e.to_string(), &out.stderr),
            });
            return Ok(Default::default());
        }
    };
    section.smartctl_version = scanned.smartctl_version;
    let mut targets: Vec<SmartTarget> = Vec::new();
    let mut unopened: Vec<SmartTarget> = Vec::new();
    for ScannedDevice {
        name,
        device_type,
        open_error,
        ..
    } in scanned.devices
    {
        let target = SmartTarget {
            path: name,
            device_type,
        };
        if let Some(reason) = open_error {
            // smartctl could not open it to scan; reading it would fail the same way.
            section.errors.push(CollectionError {
                item: target.label(),
                kind: open_error_kind(&reason),
                message: format!("smartctl cannot open the device: {reason}"),
            });
            unopened.push(target);
        } else if !targets.iter().any(|t| t.same_as(&target)) {
            targets.push(target);
        }
    }
    Ok((targets, unopened))
}

fn read_device(
    smartctl: &Smartctl,
    target: &SmartTarget,
    budget: &Budget,
    evidence_budget: &mut usize,
    version: &mut Option<String>,
) -> Result<SmartDevice, Failure> {
    let item = target.label();
    if target.path.starts_with('-') {
        // smartctl would take it for an option.
        return Err(Failure::Device(CollectionError {
            item,
            kind: ErrorKind::Invalid,
            message: "a device name may not start with '-'".to_owned(),
        }));
    }
    let mut args: Vec<&str> = vec!["--json", "-x", "-n", "standby"];
    if let Some(t) = &target.device_type {
        args.extend(["-d", t]);
    }
    args.push(&target.path);
    let out = smartctl.run_within(&args, budget.left()).map_err(|e| {
        match run_error(&item, smartctl, budget, e) {
            (error, true) => Failure::Fatal(error),
            (error, false) => Failure::Device(error),
        }
    })?;
    // A status beyond one byte is not smartctl's; the one in its JSON then stands.
    let status = out.status.and_then(|s| u8::try_from(s).ok());
    let parsed = parse_device(&out.stdout, status).map_err(|e| {
        let mut message = e.to_string();
        match status {
            Some(status) => message.push_str(&format!(" (exit status {status})")),
            None => message.push_str(" (smartctl was killed by a signal)"),
        }
        Failure::Device(CollectionError {
            item: item.clone(),
            kind: ErrorKind::Invalid,
            message: with_stderr(message, &out.stderr),
        })
    })?;
    let reason = parsed.failure();
    if version.is_none() {
        *version = parsed.smartctl_version;
    }
    let Some(mut device) = parsed.device else {
        let reason = reason.unwrap_or_default();
        return Err(Failure::Device(CollectionError {
            item,
            kind: open_error_kind(&reason),
            message: reason,
        }));
    };
    // The name we asked about is the one this machine knows the disk by.
    device.name = target.path.clone();
    if device.device_type.is_none() {
        device.device_type = target.device_type.clone();
    }
    if device.evidence.is_some() {
        if out.stdout.len() <= EVIDENCE_LIMIT && out.stdout.len() <= *evidence_budget {
            *evidence_budget -= out.stdout.len();
        } else {
            device.evidence = None;
        }
    }
    Ok(device)
}

/// A failed run as a section error, and whether smartctl cannot run at all (so trying the
/// next device is pointless).
fn run_error(
    item: &str,
    smartctl: &Smartctl,
    budget: &Budget,
    e: RunError,
) -> (CollectionError, bool) {
    let path = smartctl.path.display();
    match e {
        RunError::Spawn { source, .. } => {
            // Classified like every other OS error in the report; only the advice is ours.
            let kind = machine::error_kind(&source);
            let message = match kind {
                ErrorKind::NotFound => format!("{path} not found; {INSTALL_HINT}"),
                ErrorKind::PermissionDenied => {
                    format!("{path} may not be run by this user: {source}")
                }
                _ => format!("cannot run {path}: {source}"),
            };
            let item = "smartctl".to_owned();
            (
                CollectionError {
                    item,
                    kind,
                    message,
                },
                true,
            )
        }
        // Cut short by what was left of the overall budget, not by its own timeout.
        RunError::Timeout { timeout } if timeout < smartctl.timeout => (
            CollectionError {
                item: item.to_owned(),
                kind: ErrorKind::Timeout,
                message: format!(
                    "smartctl was killed after {:.1} s when the SMART time budget ran out ({})",
                    timeout.as_secs_f32(),
                    budget.setting()
                ),
            },
            false,
        ),
        RunError::Timeout { timeout } => (
            CollectionError {
                item: item.to_owned(),
                kind: ErrorKind::Timeout,
                message: format!(
                    "smartctl gave no answer within {} s and was killed",
                    timeout.as_secs_f32()
                ),
            },
            false,
        ),
        other => (
            CollectionError {
                item: item.to_owned(),
                kind: ErrorKind::Failed,
                message: other.to_string(),
            },
            false,
        ),
    }
}

/// The error kind an open failure's message stands for.
fn open_error_kind(reason: &str) -> ErrorKind {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("permission denied") || reason.contains("operation not permitted") {
        ErrorKind::PermissionDenied
    } else if reason.contains("no such device") || reason.contains("no such file") {
        ErrorKind::NotFound
    } else {
        ErrorKind::Failed
    }
}

fn with_stderr(mut message: String, stderr: &str) -> String {
    if !stderr.is_empty() {
        message.push_str(": ");
        message.push_str(&json::bounded(stderr));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str, t: Option<&str>) -> SmartTarget {
        SmartTarget {
            path: path.to_owned(),
            device_type: t.map(str::to_owned),
        }
    }

    #[test]
    fn devices_are_the_same_unless_their_types_differ() {
        let sda = target("/dev/sda", Some("sat"));
        assert!(sda.same_as(&target("/dev/sda", None)));
        assert!(sda.same_as(&target("/dev/sda", Some("sat"))));
        assert!(!sda.same_as(&target("/dev/sda", Some("megaraid,0"))));
        assert!(!sda.same_as(&target("/dev/sdb", Some("sat"))));
        assert_eq!(
            target("/dev/bus/0", Some("megaraid,1")).label(),
            "/dev/bus/0 -d megaraid,1"
        );
    }

    #[test]
    fn open_errors_are_classified_by_their_message() {
        assert_eq!(
            open_error_kind("Smartctl open device: /dev/sda failed: Permission denied"),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            open_error_kind("/dev/sdz: No such device"),
            ErrorKind::NotFound
        );
        assert_eq!(open_error_kind("INQUIRY failed"), ErrorKind::Failed);
    }

    fn from_toml(text: &str) -> Result<SmartOptions, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            smart: RawSmart,
        }
        let raw: Wrapper = toml::from_str(text).map_err(|e| e.to_string())?;
        SmartOptions::from_raw(raw.smart, Path::new("/etc/phonehome"))
    }

    #[test]
    fn the_smart_table_is_read_and_checked() -> Result<(), String> {
        let options = from_toml(
            "[smart]\nsmartctl = \"bin/smartctl\"\ntimeout_seconds = 5\nscan = false\n\
             total_timeout_seconds = 60\n\
             devices = [{ path = \"/dev/bus/0\", type = \"megaraid,0\" }, { path = \"/dev/sdb\" }]\n",
        )?;
        assert_eq!(
            options.smartctl.as_deref(),
            Some(Path::new("/etc/phonehome/bin/smartctl"))
        );
        assert_eq!(options.timeout, Duration::from_secs(5));
        assert_eq!(options.total_timeout, Duration::from_secs(60));
        assert!(!options.scan);
        assert_eq!(
            options.devices,
            vec![
                target("/dev/bus/0", Some("megaraid,0")),
                target("/dev/sdb", None)
            ]
        );
        let bare = from_toml("[smart]\nsmartctl = \"smartctl\"")?;
        assert_eq!(bare.smartctl.as_deref(), Some(Path::new("smartctl")));
        assert_eq!(from_toml("[smart]")?, SmartOptions::default());
        for (text, expected) in [
            ("[smart]\ntimeout_seconds = 0", "at least 1"),
            ("[smart]\ntotal_timeout_seconds = 0", "at least 1"),
            ("[smart]\ntotal_timeout_seconds = -5", "invalid value"),
            (
                "[smart]\ndevices = [{ path = \"-a\" }]",
                "not a device name",
            ),
            (
                "[smart]\ndevices = [{ name = \"/dev/sda\" }]",
                "unknown field `name`",
            ),
            ("[smart]\nsmartctl_path = \"x\"", "unknown field"),
        ] {
            match from_toml(text) {
                Ok(o) => panic!("{text:?} was accepted: {o:?}"),
                Err(e) => assert!(e.contains(expected), "{text:?}: {e}"),
            }
        }
        Ok(())
    }

    /// A smartctl that cannot be started is classified like any OS error elsewhere in the
    /// report (`machine::error_kind`), and stops the section.
    #[test]
    fn spawn_errors_are_classified_like_every_other_os_error() {
        let smartctl = Smartctl {
            path: PathBuf::from("/usr/sbin/smartctl"),
            timeout: DEFAULT_TIMEOUT,
        };
        let budget = Budget::start(DEFAULT_TOTAL_TIMEOUT);
        for io_kind in [
            std::io::ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::InvalidData,
            std::io::ErrorKind::OutOfMemory,
        ] {
            let source = std::io::Error::from(io_kind);
            let expected = machine::error_kind(&source);
            let spawn = RunError::Spawn {
                path: smartctl.path.clone(),
                source,
            };
            let (error, fatal) = run_error("/dev/sda", &smartctl, &budget, spawn);
            assert_eq!(error.kind, expected, "{io_kind:?}");
            assert_eq!(error.item, "smartctl");
            assert!(fatal, "{io_kind:?}");
        }
        let (timed_out, _) = run_error(
            "/dev/sda",
            &smartctl,
            &budget,
            RunError::Timeout {
                timeout: Duration::from_millis(1500),
            },
        );
        assert!(
            timed_out.message.contains("1.5 s")
                && timed_out.message.contains("total_timeout_seconds = 300"),
            "{timed_out:?}"
        );
    }

    #[test]
    fn a_missing_smartctl_is_one_not_found_error_with_a_hint() {
        let section = collect(&SmartOptions {
            smartctl: Some(PathBuf::from("/nonexistent/smartctl")),
            devices: vec![target("/dev/sda", None), target("/dev/sdb", None)],
            ..SmartOptions::default()
        });
        assert!(section.devices.is_empty());
        assert_eq!(section.errors.len(), 1, "{:?}", section.errors);
        assert_eq!(section.errors[0].kind, ErrorKind::NotFound);
        assert!(section.errors[0].message.contains("smartmontools"));
    }
}
