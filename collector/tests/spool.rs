//! The spool as a library: order, exact round trip, removal, the three bounds and the drop
//! count they leave for the next report, reports of another contract version, corrupt and
//! stray files (counted as dropped), temp files of killed runs, locks, directories that cannot
//! be used, and the `[spool]` configuration table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use phonehome_collector::Config;
use phonehome_collector::spool::{DropReason, KEEP_SET_ASIDE, SetAside, Spool, SpoolSettings};
use phonehome_schema::Report;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The contract's example report, with a fresh id and the given collection time.
fn report(collected_at: DateTime<Utc>) -> Report {
    let mut report: Report =
        serde_json::from_str(include_str!("../../schema/examples/report.json"))
            .unwrap_or_else(|e| panic!("example report: {e}"));
    report.report_id = Uuid::new_v4();
    report.collected_at = collected_at;
    report
}

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        dir: dir.join("spool"),
        ..SpoolSettings::default()
    }
}

fn ids(spool: &Spool) -> Vec<Uuid> {
    spool
        .lock()
        .and_then(|l| l.entries())
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|e| e.report_id)
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn reports_are_listed_in_the_order_spooled_and_load_back_exactly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(settings(tmp.path()))?;
    let now = Utc::now();
    // The clock went backwards between the second and the third run: order still follows the
    // sequence in which reports were spooled.
    let mut reports = vec![
        report(now - TimeDelta::hours(2)),
        report(now - TimeDelta::hours(1)),
        report(now - TimeDelta::hours(5)),
    ];
    let locked = spool.lock()?;
    for r in &mut reports {
        let stored = locked.store(r, now)?;
        assert!(stored.dropped.is_empty());
        assert_eq!(stored.carries_dropped, 0);
        assert_eq!(stored.entry.report_id, r.report_id);
    }
    let entries = locked.entries()?;
    let listed: Vec<Uuid> = entries.iter().map(|e| e.report_id).collect();
    let expected: Vec<Uuid> = reports.iter().map(|r| r.report_id).collect();
    assert_eq!(listed, expected);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for (entry, original) in entries.iter().zip(&reports) {
        let loaded = entry.load()?;
        assert_eq!(loaded.report_id, original.report_id);
        assert_eq!(
            loaded.serial.as_deref(),
            Some(original.identity.serial.as_str())
        );
        assert_eq!(serde_json::from_slice::<Report>(&loaded.json)?, *original);
        assert_eq!(entry.size, loaded.json.len() as u64);
        assert_eq!(
            entry.path.file_name().and_then(|n| n.to_str()),
            Some(&*entry.name())
        );
    }

    // Removing is durable and idempotent; later entries keep growing the sequence.
    locked.remove(&entries[1])?;
    locked.remove(&entries[1])?;
    assert_eq!(
        locked
            .entries()?
            .iter()
            .map(|e| e.report_id)
            .collect::<Vec<_>>(),
        [expected[0], expected[2]]
    );
    let mut later = report(now);
    let stored = locked.store(&mut later, now)?;
    assert!(stored.entry.seq > seqs[2]);
    drop(locked);
    assert_eq!(ids(&spool), [expected[0], expected[2], later.report_id]);
    // Only entries and the lock file: no temp files are left behind by successful writes.
    let files = names(spool.dir());
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files
            .iter()
            .all(|n| n.ends_with(".json") || n == "spool.lock")
    );
    Ok(())
}

#[test]
fn the_count_bound_drops_the_oldest_and_the_next_report_carries_the_count() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(SpoolSettings {
        max_reports: 3,
        ..settings(tmp.path())
    })?;
    let now = Utc::now();
    let locked = spool.lock()?;
    let mut all = Vec::new();
    let mut carried = Vec::new();
    for _ in 0..5 {
        let mut r = report(now);
        let stored = locked.store(&mut r, now)?;
        assert_eq!(r.collector.dropped_reports, stored.carries_dropped);
        assert!(
            stored
                .dropped
                .iter()
                .all(|d| d.reason == DropReason::SpoolFull)
        );
        carried.push(stored.carries_dropped);
        all.push(r.report_id);
    }
    assert_eq!(carried, [0, 0, 0, 1, 1]);
    assert_eq!(locked.entries()?.len(), 3);
    assert_eq!(
        locked
            .entries()?
            .iter()
            .map(|e| e.report_id)
            .collect::<Vec<_>>(),
        all[2..]
    );
    // The count went into the reports; nothing is pending.
    assert_eq!(locked.pending_dropped(), 0);
    // The spooled reports themselves say so.
    let on_disk: Vec<u64> = locked
        .entries()?
        .iter()
        .map(|e| {
            e.load()
                .and_then(|l| serde_json::from_slice::<Report>(&l.json).map_err(|e| e.to_string()))
                .map(|r| r.collector.dropped_reports)
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(on_disk, [0, 1, 1]);
    Ok(())
}

#[test]
fn a_dropped_report_passes_its_own_count_on() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(SpoolSettings {
        max_reports: 1,
        ..settings(tmp.path())
    })?;
    let now = Utc::now();
    let locked = spool.lock()?;
    let carried: Vec<u64> = (0..4)
        .map(|_| {
            locked
                .store(&mut report(now), now)
                .map(|s| s.carries_dropped)
        })
        .collect::<Result<_, _>>()?;
    // Every report but the newest was dropped, and the newest says how many: 3.
    assert_eq!(carried, [0, 1, 2, 3]);
    assert_eq!(locked.entries()?.len(), 1);
    Ok(())
}

#[test]
fn the_byte_bound_drops_the_oldest_but_never_the_new_report() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let now = Utc::now();
    let size = serde_json::to_vec(&report(now))?.len() as u64;
    let spool = Spool::open(SpoolSettings {
        max_bytes: size * 5 / 2,
        ..settings(tmp.path())
    })?;
    let locked = spool.lock()?;
    let mut all = Vec::new();
    for _ in 0..4 {
        let mut r = report(now);
        locked.store(&mut r, now)?;
        all.push(r.report_id);
    }
    let entries = locked.entries()?;
    assert_eq!(
        entries.iter().map(|e| e.report_id).collect::<Vec<_>>(),
        all[2..]
    );
    assert!(entries.iter().map(|e| e.size).sum::<u64>() <= size * 5 / 2);
    drop(locked);

    let tiny = Spool::open(SpoolSettings {
        max_bytes: 10,
        dir: tmp.path().join("tiny"),
        ..SpoolSettings::default()
    })?;
    let locked = tiny.lock()?;
    let mut first = report(now);
    locked.store(&mut first, now)?;
    let mut second = report(now);
    let stored = locked.store(&mut second, now)?;
    assert_eq!(stored.dropped.len(), 1);
    assert_eq!(stored.dropped[0].entry.report_id, first.report_id);
    assert_eq!(
        locked
            .entries()?
            .iter()
            .map(|e| e.report_id)
            .collect::<Vec<_>>(),
        [second.report_id]
    );
    Ok(())
}

#[test]
fn the_age_bound_drops_reports_older_than_max_age() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(SpoolSettings {
        max_age: TimeDelta::days(30),
        ..settings(tmp.path())
    })?;
    let now = Utc::now();
    let locked = spool.lock()?;
    let mut old = report(now - TimeDelta::days(31));
    let mut recent = report(now - TimeDelta::days(29));
    locked.store(&mut old, now - TimeDelta::days(31))?;
    locked.store(&mut recent, now - TimeDelta::days(29))?;
    let stored = locked.store(&mut report(now), now)?;
    assert_eq!(stored.dropped.len(), 1);
    assert_eq!(stored.dropped[0].entry.report_id, old.report_id);
    assert_eq!(stored.dropped[0].reason, DropReason::TooOld);
    assert_eq!(stored.carries_dropped, 1);
    let left: Vec<Uuid> = locked.entries()?.iter().map(|e| e.report_id).collect();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0], recent.report_id);
    Ok(())
}

#[test]
fn corrupt_entries_stray_files_and_temp_files() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(settings(tmp.path()))?;
    let dir = spool.dir().to_owned();
    let now = Utc::now();
    let locked = spool.lock()?;
    let mut good = report(now);
    locked.store(&mut good, now)?;
    let mut truncated = report(now);
    let stored = locked.store(&mut truncated, now)?;
    // A file cut short (by a disk error; the collector itself never leaves one).
    let bytes = std::fs::read(&stored.entry.path)?;
    std::fs::write(&stored.entry.path, &bytes[..bytes.len() / 2])?;
    // A complete report under another report's name.
    let mut other = report(now);
    let renamed = locked.store(&mut other, now)?;
    let swapped = report(now);
    std::fs::write(&renamed.entry.path, serde_json::to_vec(&swapped)?)?;

    std::fs::write(dir.join("notes.json"), "{}")?;
    std::fs::write(dir.join(".000000000009-x.json.tmp"), "{\"repo")?;
    std::fs::write(dir.join("README"), "operator's file")?;

    // Listing ignores what is not an entry; loading finds the damage.
    let entries = locked.entries()?;
    assert_eq!(entries.len(), 3);
    assert!(entries[0].load().is_ok());
    let err = entries[1].load().err().unwrap_or_default();
    assert!(err.contains("not a report"), "{err}");
    let err = entries[2].load().err().unwrap_or_default();
    assert!(err.contains("not the"), "{err}");

    let tidy = locked.tidy();
    assert!(tidy.problems.is_empty(), "{:?}", tidy.problems);
    assert_eq!(tidy.temp_files_removed, 1);
    assert_eq!(tidy.set_aside, [dir.join("notes.json.corrupt")]);
    // A file that was never an entry is no lost report.
    assert_eq!(locked.pending_dropped(), 0);
    let moved = locked.set_aside(&entries[1], SetAside::Corrupt)?;
    assert!(moved.to_string_lossy().ends_with(".json.corrupt"));
    // A corrupt entry is a report that will never arrive: the next report counts it.
    assert_eq!(locked.pending_dropped(), 1);
    let moved = locked.set_aside(&entries[2], SetAside::Corrupt)?;
    assert!(moved.to_string_lossy().ends_with(".json.corrupt"));
    assert_eq!(locked.pending_dropped(), 2);
    // Setting aside one already gone counts nothing.
    locked.set_aside(&entries[2], SetAside::Corrupt)?;
    assert_eq!(locked.pending_dropped(), 2);
    let files = names(&dir);
    assert!(files.contains(&"README".to_owned()), "{files:?}");
    assert!(!files.iter().any(|n| n.ends_with(".tmp")), "{files:?}");
    assert_eq!(
        locked
            .entries()?
            .iter()
            .map(|e| e.report_id)
            .collect::<Vec<_>>(),
        [good.report_id]
    );
    // A set-aside file is never listed again, and numbers are not reused while it exists.
    let mut next = report(now);
    let stored = locked.store(&mut next, now)?;
    assert!(stored.entry.seq > entries[2].seq);
    assert_eq!(stored.carries_dropped, 2);
    assert_eq!(next.collector.dropped_reports, 2);
    assert_eq!(locked.pending_dropped(), 0);
    Ok(())
}

#[test]
fn entries_of_another_contract_version_load_and_keep_their_bytes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(settings(tmp.path()))?;
    let now = Utc::now();
    let locked = spool.lock()?;
    let mut original = report(now);
    let stored = locked.store(&mut original, now)?;
    // An older collector's report lacks a section today's contract requires; a newer one's has
    // a field and an enum value this version does not know.
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stored.entry.path)?)?;
    let object = json.as_object_mut().ok_or("not an object")?;
    object.remove("filesystems");
    object.insert("quantum".into(), serde_json::json!([1, 2, 3]));
    json["identity"]["serial_source"] = "tpm_endorsement".into();
    let written = serde_json::to_vec_pretty(&json)?;
    assert!(serde_json::from_slice::<Report>(&written).is_err());
    std::fs::write(&stored.entry.path, &written)?;

    let entries = locked.entries()?;
    let loaded = entries[0].load()?;
    assert_eq!(loaded.report_id, original.report_id);
    assert_eq!(
        loaded.serial.as_deref(),
        Some(original.identity.serial.as_str())
    );
    assert_eq!(loaded.json, written, "posted as written");

    // Without an identity it still loads: the ingest says what is wrong with it.
    json.as_object_mut()
        .ok_or("not an object")?
        .remove("identity");
    std::fs::write(&stored.entry.path, serde_json::to_vec(&json)?)?;
    let loaded = entries[0].load()?;
    assert_eq!(loaded.serial, None);

    // Not JSON, or no report_id: corrupt.
    for bad in [
        &b"{\"report_id\": \"abc"[..],
        b"[]",
        b"{\"identity\": {}}",
        b"\xff\xfe",
    ] {
        std::fs::write(&stored.entry.path, bad)?;
        let err = entries[0].load().err().unwrap_or_default();
        assert!(err.contains("not a report"), "{err}");
    }
    Ok(())
}

#[test]
fn only_the_newest_set_aside_files_are_kept() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(settings(tmp.path()))?;
    let now = Utc::now();
    let locked = spool.lock()?;
    let mut rejected = Vec::new();
    for _ in 0..KEEP_SET_ASIDE + 5 {
        let stored = locked.store(&mut report(now), now)?;
        rejected.push(locked.set_aside(&stored.entry, SetAside::Rejected)?);
    }
    let tidy = locked.tidy();
    assert!(tidy.problems.is_empty(), "{:?}", tidy.problems);
    let left: Vec<PathBuf> = names(spool.dir())
        .iter()
        .filter(|n| n.ends_with(".rejected"))
        .map(|n| spool.dir().join(n))
        .collect();
    assert_eq!(left, rejected[5..]);
    Ok(())
}

#[test]
fn one_sender_at_a_time_and_directory_changes_wait_for_each_other() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let spool = Spool::open(settings(tmp.path()))?;
    let sender = spool.try_lock_sender()?;
    assert!(sender.is_some());
    assert!(spool.try_lock_sender()?.is_none(), "a second sender");
    drop(sender);
    assert!(spool.try_lock_sender()?.is_some(), "released on drop");

    let other = Spool::open(settings(tmp.path()))?;
    let held = spool.lock()?;
    let started = Instant::now();
    let waiter = std::thread::spawn(move || other.lock().map(|_| started.elapsed()));
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let waited = waiter
        .join()
        .map_err(|_| "waiting thread panicked")?
        .map_err(|e| e.to_string())?;
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    Ok(())
}

#[test]
fn a_spool_directory_that_cannot_be_made_is_an_error_naming_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("file");
    std::fs::write(&file, "")?;
    let err = Spool::open(SpoolSettings {
        dir: file.join("spool"),
        ..SpoolSettings::default()
    })
    .err()
    .ok_or("a spool below a file was accepted")?;
    let message = err.to_string();
    assert!(
        message.contains(&*file.join("spool").to_string_lossy()),
        "{message}"
    );
    assert!(message.contains("spool directory"), "{message}");
    assert!(err.is_configuration(), "a path below a file: {message}");

    // Below /proc nothing can be created: the configuration names an impossible place.
    let err = Spool::open(SpoolSettings {
        dir: PathBuf::from("/proc/phonehome-spool-test"),
        ..SpoolSettings::default()
    })
    .err()
    .ok_or("a spool below /proc was accepted")?;
    assert!(err.is_configuration(), "{err}");

    // A directory that exists but takes no files is a failing filesystem, not configuration
    // (a read-only remount after disk errors looks the same).
    let err = Spool::open(SpoolSettings {
        dir: PathBuf::from("/proc"),
        ..SpoolSettings::default()
    })
    .err()
    .ok_or("/proc was accepted as a spool")?;
    assert!(!err.is_configuration(), "{err}");
    assert!(err.to_string().contains("/proc/spool.lock"), "{err}");
    Ok(())
}

#[test]
fn the_spool_table_of_the_configuration() -> TestResult {
    let path = Path::new("/etc/phonehome/collector.toml");
    let config = Config::parse(
        "[spool]\ndir = \"queue\"\nmax_reports = 7\nmax_bytes = 1000\nmax_age_days = 14\n\
         retry_budget_seconds = 0\nmax_retry_wait_seconds = 5\n",
        path,
        None,
    )?;
    assert_eq!(config.spool.dir, Path::new("/etc/phonehome/queue"));
    assert_eq!(config.spool.max_reports, 7);
    assert_eq!(config.spool.max_bytes, 1000);
    assert_eq!(config.spool.max_age, TimeDelta::days(14));
    assert_eq!(config.spool.retry_budget, Duration::ZERO);
    assert_eq!(config.spool.max_retry_wait, Duration::from_secs(5));

    let defaults = Config::parse("", path, None)?.spool;
    assert_eq!(defaults.dir, Path::new("/var/spool/phonehome"));
    assert_eq!(defaults.max_reports, 60);
    assert_eq!(defaults.max_bytes, 16 * 1024 * 1024);
    assert_eq!(defaults.max_age, TimeDelta::days(30));
    assert_eq!(defaults.retry_budget, Duration::from_secs(300));
    assert_eq!(defaults.max_retry_wait, Duration::from_secs(60));

    for (text, needle) in [
        ("[spool]\nmax_age_days = 400", "between 1 and 399"),
        ("[spool]\nmax_reports = 0", "max_reports must be at least 1"),
        ("[spool]\nmax_retry_wait_seconds = 0", "at least 1"),
        ("[spool]\nmax_reprots = 3", "unknown field `max_reprots`"),
    ] {
        let err = Config::parse(text, path, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("/etc/phonehome/collector.toml: "), "{err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    Ok(())
}
