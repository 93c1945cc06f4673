//! The real `phonehome-collector run`, killed with SIGKILL at many points while it spools, never
//! leaves a corrupt or partial entry, never loses an entry that was already there, and never
//! under-counts the reports its bounds dropped.
//!
//! The collector's test hook `PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS` makes every spool write
//! pause between its steps (create, half written, fully written, fsynced, renamed), so the kills
//! land inside each step rather than only before or after the write.
//!
//! Where a kill lands depends on scheduling, which a loaded machine makes erratic. So the test
//! does not run a fixed number of kills and hope: it keeps killing, with varied delays and
//! aiming at whichever kind of kill it still lacks, until it has seen enough of each kind (or
//! an iteration cap, and then it says which kind it could not get).

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CollectorConfig, SERIAL, fixture, unreachable};
use phonehome_collector::deliver::random_unit;
use phonehome_collector::spool::{Spool, SpoolSettings};
use phonehome_schema::Report;

const STEP_MS: &str = "6";

fn write_config(path: &Path, max_reports: u64) {
    let mut config = CollectorConfig::new(&format!(
        "retry_budget_seconds = 0\nmax_reports = {max_reports}"
    ));
    config.timeout_seconds = 2;
    config.write(path);
}

/// What the spool directory holds, checked file by file.
#[derive(Debug, Default)]
struct Seen {
    /// Complete entries: report id and the drop count it carries.
    entries: Vec<(String, u64)>,
    temp_files: usize,
    /// The `dropped` counter, if present.
    counter: u64,
}

/// Every file must be a lock file, a valid counter, an ignorable temp file, or a complete
/// report whose name matches its content.
fn inspect(spool: &Path, context: &str) -> Seen {
    let mut seen = Seen::default();
    let Ok(dir) = std::fs::read_dir(spool) else {
        return seen;
    };
    for item in dir {
        let item = item.unwrap_or_else(|e| panic!("{e}"));
        let name = item.file_name().to_string_lossy().into_owned();
        let bytes = match std::fs::read(item.path()) {
            Ok(bytes) => bytes,
            // Renamed or removed since the listing (only possible while a run is alive).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{name}: {e}"),
        };
        if name == "spool.lock" || name == "send.lock" {
            continue;
        }
        if name.starts_with('.') && name.ends_with(".tmp") {
            seen.temp_files += 1;
            continue;
        }
        if name == "dropped" {
            let text = String::from_utf8(bytes).unwrap_or_default();
            assert!(text.ends_with('\n'), "{context}: partial counter {text:?}");
            seen.counter = text
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{context}: counter {text:?}: {e}"));
            continue;
        }
        assert!(
            name.ends_with(".json"),
            "{context}: unexpected file {name} (corrupt entries must never appear)"
        );
        let report: Report = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{context}: {name} is not a complete report: {e}"));
        let id = report.report_id.to_string();
        assert!(name.contains(&id), "{context}: {name} holds {id}");
        assert_eq!(report.identity.serial.as_str(), SERIAL, "{context}");
        seen.entries.push((id, report.collector.dropped_reports));
    }
    seen
}

/// True while a write is in progress (or was cut short): a temp file exists. Names only, so it
/// is safe to call while the collector runs.
fn has_temp_file(spool: &Path) -> bool {
    std::fs::read_dir(spool).is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('.') && name.ends_with(".tmp")
        })
    })
}

/// True once an entry exists that `before` did not have. Names only, like [`has_temp_file`].
fn has_new_entry(spool: &Path, before: &Seen) -> bool {
    std::fs::read_dir(spool).is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".json") && !before.entries.iter().any(|(id, _)| name.contains(id))
        })
    })
}

/// The collector's own view agrees: every entry it lists loads.
fn library_view(spool: &Path) -> usize {
    let spool = Spool::open(SpoolSettings {
        dir: spool.to_owned(),
        ..SpoolSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let locked = spool.lock().unwrap_or_else(|e| panic!("{e}"));
    let entries = locked.entries().unwrap_or_else(|e| panic!("{e}"));
    for entry in &entries {
        entry
            .load()
            .unwrap_or_else(|e| panic!("{}: {e}", entry.path.display()));
    }
    entries.len()
}

/// Where the test aims a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// Blind: anywhere from startup on.
    Blind,
    /// From the moment the first temp file appears, into the write.
    MidWrite,
    /// Just after the new entry is complete: the directory fsync, the counter reset, the
    /// delivery attempt.
    AfterEntry,
}

/// How many kills of each kind a phase needs before it means something.
#[derive(Debug, Clone, Copy)]
struct Needs {
    killed: usize,
    mid_write: usize,
    after_entry: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    runs: usize,
    killed: usize,
    mid_write: usize,
    after_entry: usize,
}

impl Counts {
    fn satisfy(&self, needs: &Needs) -> bool {
        self.killed >= needs.killed
            && self.mid_write >= needs.mid_write
            && self.after_entry >= needs.after_entry
    }

    /// What to aim at next: first a little of everything, then whatever is still missing.
    fn next_aim(&self, needs: &Needs, i: usize) -> Aim {
        const ROTATION: [Aim; 5] = [
            Aim::Blind,
            Aim::AfterEntry,
            Aim::MidWrite,
            Aim::MidWrite,
            Aim::MidWrite,
        ];
        if i < 2 * ROTATION.len() {
            ROTATION[i % ROTATION.len()]
        } else if self.mid_write < needs.mid_write {
            Aim::MidWrite
        } else if self.after_entry < needs.after_entry {
            Aim::AfterEntry
        } else {
            ROTATION[i % ROTATION.len()]
        }
    }
}

/// Polls `ready` (cheap, names only) until it holds, the child exits, or a generous deadline.
fn wait_for(child: &mut Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() && Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sigkill_while_spooling_never_leaves_a_partial_entry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("collector.toml");
    let spool = dir.path().join("spool");
    let server = unreachable();
    let root = fixture("sysfs/procfs");

    let mut ever: BTreeSet<String> = BTreeSet::new();
    let mut summary = Vec::new();
    // Phase 1 keeps every report (nothing may disappear); phase 2 bounds the spool to three, so
    // every run also drops the oldest and rewrites the drop counter under the kills, which makes
    // its spooling take three writes instead of one: a longer range of kill delays.
    let phases = [
        (
            1,
            60,
            Needs {
                killed: 15,
                mid_write: 3,
                after_entry: 5,
            },
            45,
        ),
        (
            2,
            3,
            Needs {
                killed: 10,
                mid_write: 3,
                after_entry: 3,
            },
            130,
        ),
    ];
    // Enough for a badly loaded machine; a healthy one needs a few dozen runs in all.
    const MAX_RUNS_PER_PHASE: usize = 300;
    for (phase, max_reports, needs, max_delay_ms) in phases {
        write_config(&config, max_reports);
        let mut counts = Counts::default();
        let mut i = 0;
        while !counts.satisfy(&needs) {
            assert!(
                i < MAX_RUNS_PER_PHASE,
                "phase {phase}: after {i} runs the kills did not land where needed: {counts:?}, \
                 needed {needs:?} (killed: all kills; mid_write: a temp file was left; \
                 after_entry: the new entry was complete)"
            );
            let context = format!("phase {phase}, run {i}");
            let aim = counts.next_aim(&needs, i);
            i += 1;
            let before = inspect(&spool, &context);
            let mut child = Command::new(env!("CARGO_BIN_EXE_phonehome-collector"))
                .arg("run")
                .arg("--config")
                .arg(&config)
                .arg("--root")
                .arg(&root)
                .env("PHONEHOME_COLLECTOR_SERVER", &server)
                .env("PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS", STEP_MS)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{e}"));
            // Varied, so the kills spread over every step of the writes.
            let delay = Duration::from_millis(max_delay_ms).mul_f64(random_unit());
            match aim {
                Aim::Blind => std::thread::sleep(delay),
                Aim::AfterEntry => {
                    wait_for(&mut child, || has_new_entry(&spool, &before));
                    std::thread::sleep(delay / 8);
                }
                Aim::MidWrite => {
                    wait_for(&mut child, || has_temp_file(&spool));
                    std::thread::sleep(delay);
                }
            }
            let _ = child.kill();
            let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
            counts.runs += 1;

            let after = inspect(&spool, &context);
            if status.signal() == Some(9) {
                counts.killed += 1;
                if after.temp_files > 0 {
                    counts.mid_write += 1;
                }
                if after.entries.len() > before.entries.len()
                    || after
                        .entries
                        .iter()
                        .any(|(id, _)| !before.entries.iter().any(|(b, _)| b == id))
                {
                    counts.after_entry += 1;
                }
            } else {
                assert_eq!(status.code(), Some(75), "{context}: {status}");
            }
            if phase == 1 {
                for (id, _) in &before.entries {
                    assert!(
                        after.entries.iter().any(|(a, _)| a == id),
                        "{context}: entry {id} vanished"
                    );
                }
            }
            ever.extend(after.entries.iter().map(|(id, _)| id.clone()));
            // Drops are never under-counted: what vanished is accounted for by the counter and
            // the counts the remaining reports carry.
            let present: BTreeSet<&String> = after.entries.iter().map(|(id, _)| id).collect();
            let vanished = ever.iter().filter(|id| !present.contains(id)).count() as u64;
            let accounted: u64 = after.counter + after.entries.iter().map(|(_, n)| n).sum::<u64>();
            assert!(
                accounted >= vanished,
                "{context}: {vanished} reports dropped, only {accounted} counted"
            );
            assert!(after.entries.len() as u64 <= max_reports.max(before.entries.len() as u64 + 1));
        }
        summary.push(format!("phase {phase}: {counts:?}"));
    }
    eprintln!("{}", summary.join("; "));

    // A run that is left alone cleans up and finds a consistent spool.
    let before = inspect(&spool, "final");
    let out = Command::new(env!("CARGO_BIN_EXE_phonehome-collector"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(&root)
        .env("PHONEHOME_COLLECTOR_SERVER", &server)
        .env_remove("PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    let after = inspect(&spool, "final");
    assert_eq!(after.temp_files, 0, "temp files of killed runs are removed");
    assert_eq!(after.entries.len(), 3, "{stderr}");
    assert!(before.entries.len() <= 3);
    assert_eq!(library_view(&spool), 3);
    assert!(stderr.contains("saved, 3 reports in"), "{stderr}");
}
