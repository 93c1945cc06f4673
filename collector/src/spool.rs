//! The spool: reports wait on disk, oldest first, until the ingest has acknowledged them, so an
//! ingest outage or a crash at any moment loses nothing.
//!
//! Layout of the spool directory (created 0700):
//!
//! - `NNNNNNNNNNNN-YYYYMMDDTHHMMSSZ-<report_id>.json`: one waiting report, exactly the JSON that
//!   is posted. `N…` is a sequence number that only grows, so the delivery order never depends on
//!   clocks or modification times; the UTC time is the report's `collected_at`, used for the age
//!   bound without opening the file.
//! - `.<name>.tmp`: a file being written. Every file is written as temp file, fsync, rename,
//!   directory fsync, so a reader sees a complete file or none. All writes happen under
//!   `spool.lock`, so a temp file seen while holding it was left by a killed run and is removed.
//! - `*.corrupt`, `*.rejected`: entries set aside (unreadable, or refused for good by the ingest),
//!   kept for a human to look at; only the newest [`KEEP_SET_ASIDE`] of each kind are kept.
//! - `dropped`: how many reports were deleted undelivered or set aside as corrupt, and are not
//!   yet counted in a spooled report's `collector.dropped_reports`. Corrupt entries count too,
//!   because they will never be delivered either: the fleet learns of them from the next report.
//! - `spool.lock`: `flock`ed for every short change of the directory (store, remove, set aside).
//! - `send.lock`: `flock`ed by the one run that delivers the spool, for as long as it does.
//!
//! Reading an entry back needs only its `report_id` and `identity.serial` (see [`Entry::load`]),
//! never the whole current [`Report`] type: a report spooled by an older or newer collector (a
//! field added, an enum value this version does not know) is still delivered byte for byte, and
//! the ingest, which knows the contract's history, judges it.
//!
//! Test hook: when `PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS` is set to a number of milliseconds,
//! every write sleeps that long between its steps (create, first half, second half, fsync,
//! rename), so a test can kill the process inside each step. It only slows writes down.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use phonehome_schema::{MAX_REPORT_AGE_DAYS, Report};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use serde::Deserialize;
use uuid::Uuid;

use crate::machine::read_bounded;

/// Where reports wait when the configuration does not say.
pub const DEFAULT_DIR: &str = "/var/spool/phonehome";
/// Two months of daily reports.
pub const DEFAULT_MAX_REPORTS: u64 = 60;
/// Room for the count bound even with bulky SMART evidence in every report.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Older reports are of little use to operations; the ingest itself refuses any older than
/// [`MAX_REPORT_AGE_DAYS`].
pub const DEFAULT_MAX_AGE_DAYS: u64 = 30;
/// How long one run keeps retrying, in total, before it leaves the rest for the next run.
pub const DEFAULT_RETRY_BUDGET_SECONDS: u64 = 300;
/// The longest single wait between two attempts, also the longest `Retry-After` honoured.
pub const DEFAULT_MAX_RETRY_WAIT_SECONDS: u64 = 60;
/// Set-aside files of each kind kept for inspection; older ones are deleted.
pub const KEEP_SET_ASIDE: usize = 10;
/// Environment variable of the test hook that slows every write down (see the module docs).
pub const TEST_STEP_ENV: &str = "PHONEHOME_COLLECTOR_TEST_SPOOL_STEP_MS";

/// `spool.lock` is only held for a few file operations; waiting longer means something is stuck.
const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(20);
/// A spooled report is what this collector wrote; anything far larger is not one.
const ENTRY_LIMIT: u64 = 256 * 1024 * 1024;
const DIR_LOCK: &str = "spool.lock";
const SEND_LOCK: &str = "send.lock";
const DROPPED: &str = "dropped";
const ENTRY_SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const SEQ_DIGITS: usize = 12;

/// The `[spool]` table of the configuration, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The spool directory (`dir`, default [`DEFAULT_DIR`]).
    pub dir: PathBuf,
    /// At most this many reports wait, the new one included (`max_reports`).
    pub max_reports: u64,
    /// Waiting reports take at most this many bytes, the new one included (`max_bytes`); a
    /// single report larger than this is still kept.
    pub max_bytes: u64,
    /// Reports collected longer ago than this are dropped (`max_age_days`).
    pub max_age: TimeDelta,
    /// Total time one run spends waiting between retries (`retry_budget_seconds`; 0: no
    /// retries).
    pub retry_budget: Duration,
    /// Longest single wait between attempts (`max_retry_wait_seconds`).
    pub max_retry_wait: Duration,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from(DEFAULT_DIR),
            max_reports: DEFAULT_MAX_REPORTS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: TimeDelta::days(DEFAULT_MAX_AGE_DAYS as i64),
            retry_budget: Duration::from_secs(DEFAULT_RETRY_BUDGET_SECONDS),
            max_retry_wait: Duration::from_secs(DEFAULT_MAX_RETRY_WAIT_SECONDS),
        }
    }
}

/// The `[spool]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    dir: Option<PathBuf>,
    max_reports: Option<u64>,
    max_bytes: Option<u64>,
    max_age_days: Option<u64>,
    retry_budget_seconds: Option<u64>,
    max_retry_wait_seconds: Option<u64>,
}

impl SpoolSettings {
    /// Checks the table; a relative `dir` is resolved against `config_dir`.
    pub(crate) fn from_raw(raw: RawSpool, config_dir: &Path) -> Result<SpoolSettings, String> {
        let defaults = SpoolSettings::default();
        let dir = match raw.dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err("[spool] dir must not be empty".into());
            }
            Some(dir) if dir.is_relative() => config_dir.join(dir),
            Some(dir) => dir,
            None => defaults.dir,
        };
        let max_reports = raw.max_reports.unwrap_or(defaults.max_reports);
        if max_reports == 0 {
            return Err("[spool] max_reports must be at least 1".into());
        }
        let max_bytes = raw.max_bytes.unwrap_or(defaults.max_bytes);
        if max_bytes == 0 {
            return Err("[spool] max_bytes must be at least 1".into());
        }
        let max_age_days = raw.max_age_days.unwrap_or(DEFAULT_MAX_AGE_DAYS);
        if max_age_days == 0 || max_age_days >= MAX_REPORT_AGE_DAYS as u64 {
            return Err(format!(
                "[spool] max_age_days must be between 1 and {} (the ingest refuses reports \
                 older than {MAX_REPORT_AGE_DAYS} days)",
                MAX_REPORT_AGE_DAYS - 1
            ));
        }
        let max_retry_wait = raw
            .max_retry_wait_seconds
            .unwrap_or(DEFAULT_MAX_RETRY_WAIT_SECONDS);
        if max_retry_wait == 0 {
            return Err("[spool] max_retry_wait_seconds must be at least 1".into());
        }
        Ok(SpoolSettings {
            dir,
            max_reports,
            max_bytes,
            max_age: TimeDelta::days(max_age_days as i64),
            retry_budget: Duration::from_secs(
                raw.retry_budget_seconds
                    .unwrap_or(DEFAULT_RETRY_BUDGET_SECONDS),
            ),
            max_retry_wait: Duration::from_secs(max_retry_wait),
        })
    }
}

/// A spool operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct SpoolError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The `action` of the error [`Spool::open`] returns when the directory cannot be made.
const CREATE_DIR: &str = "create the spool directory";

impl SpoolError {
    fn new(action: &'static str, path: &Path, source: io::Error) -> SpoolError {
        SpoolError {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether a human must fix the configuration, as opposed to a disk or filesystem failing.
    ///
    /// Configuration: the configured directory is missing and cannot be created (a parent is a
    /// file, it would lie in `/proc`, no permission to create it), or the path exists and is not
    /// a directory. Everything else, in particular a directory that exists but cannot be
    /// written (read-only filesystem, I/O error, disk full), is the machine failing: the same
    /// configuration worked before and may work again.
    ///
    /// A read-only or failing filesystem can also stop the directory from being created; those
    /// errors are failures, not configuration, wherever they happen.
    pub fn is_configuration(&self) -> bool {
        let failing = self.source.raw_os_error().is_some_and(|code| {
            let errno = Errno::from_raw_os_error(code);
            [Errno::ROFS, Errno::IO, Errno::NOSPC, Errno::DQUOT].contains(&errno)
        });
        self.action == CREATE_DIR && !failing
    }
}

/// An open spool directory.
#[derive(Debug)]
pub struct Spool {
    settings: SpoolSettings,
    /// See [`TEST_STEP_ENV`].
    test_step: Option<Duration>,
}

impl Spool {
    /// Creates the directory (mode 0700) when missing and checks that its lock file can be
    /// opened, so a spool that cannot work is found before anything is collected.
    pub fn open(settings: SpoolSettings) -> Result<Spool, SpoolError> {
        let dir = &settings.dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| SpoolError::new(CREATE_DIR, dir, e))?;
        let spool = Spool {
            test_step: std::env::var(TEST_STEP_ENV)
                .ok()
                .and_then(|ms| ms.trim().parse().ok())
                .map(Duration::from_millis),
            settings,
        };
        spool.open_lock_file(DIR_LOCK)?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    pub fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    /// Takes `spool.lock`, waiting a bounded time for another run's short operation to end.
    pub fn lock(&self) -> Result<Locked<'_>, SpoolError> {
        let file = self.open_lock_file(DIR_LOCK)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match try_flock(&file) {
                Ok(true) => {
                    return Ok(Locked {
                        spool: self,
                        _file: file,
                    });
                }
                Ok(false) if Instant::now() < deadline => std::thread::sleep(LOCK_POLL),
                Ok(false) => {
                    let e = io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another process has held it for more than {} s",
                            LOCK_WAIT.as_secs()
                        ),
                    );
                    return Err(SpoolError::new("lock", &self.dir().join(DIR_LOCK), e));
                }
                Err(e) => return Err(SpoolError::new("lock", &self.dir().join(DIR_LOCK), e)),
            }
        }
    }

    /// Takes `send.lock` if no other run holds it. Only its holder sends and removes entries.
    pub fn try_lock_sender(&self) -> Result<Option<SenderLock>, SpoolError> {
        let file = self.open_lock_file(SEND_LOCK)?;
        match try_flock(&file) {
            Ok(true) => Ok(Some(SenderLock { _file: file })),
            Ok(false) => Ok(None),
            Err(e) => Err(SpoolError::new("lock", &self.dir().join(SEND_LOCK), e)),
        }
    }

    /// Path of the lock the delivering run holds, for messages.
    pub fn sender_lock_path(&self) -> PathBuf {
        self.dir().join(SEND_LOCK)
    }

    fn open_lock_file(&self, name: &str) -> Result<File, SpoolError> {
        let path = self.dir().join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpoolError::new("open", &path, e))
    }

    fn step(&self) {
        if let Some(pause) = self.test_step {
            std::thread::sleep(pause);
        }
    }

    /// Writes `bytes` as `name` so that the name never refers to a partial file, even if the
    /// process or the machine dies at any instant.
    fn write_atomically(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir();
        let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            self.step();
            // Two halves, so the test hook can stop the process with half a file written.
            let (first, second) = bytes.split_at(bytes.len() / 2);
            file.write_all(first)?;
            self.step();
            file.write_all(second)?;
            self.step();
            file.sync_all()?;
            self.step();
            drop(file);
            fs::rename(&temp, dir.join(name))?;
            self.step();
            sync_dir(dir)
        })();
        if result.is_err() {
            // Leftovers would be removed by the next run anyway; this is only tidiness.
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// Proof that `spool.lock` is held: every change to the directory goes through it.
#[derive(Debug)]
pub struct Locked<'a> {
    spool: &'a Spool,
    _file: File,
}

/// Held by the run that delivers the spool; released when dropped.
#[derive(Debug)]
pub struct SenderLock {
    _file: File,
}

/// What [`Locked::tidy`] cleaned up; problems are reported, never fatal.
#[derive(Debug, Default)]
pub struct Tidy {
    /// Temp files of killed runs, removed.
    pub temp_files_removed: usize,
    /// `.json` files whose names are not spool entries, set aside as `.corrupt`.
    pub set_aside: Vec<PathBuf>,
    /// What could not be cleaned up.
    pub problems: Vec<String>,
}

/// Why an entry was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAside {
    /// It cannot be read as the report its name promises.
    Corrupt,
    /// The ingest refused it for good (400, 413, 415, 422).
    Rejected,
}

impl SetAside {
    fn suffix(self) -> &'static str {
        match self {
            SetAside::Corrupt => ".corrupt",
            SetAside::Rejected => ".rejected",
        }
    }
}

/// One waiting report, as its file name describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// `collected_at`, to the second.
    pub collected_at: DateTime<Utc>,
    pub report_id: Uuid,
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
}

/// A report the bounds deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub entry: Entry,
    pub reason: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Older than `max_age_days`.
    TooOld,
    /// `max_reports` or `max_bytes` would have been exceeded.
    SpoolFull,
}

/// What [`Locked::store`] did.
#[derive(Debug)]
pub struct Stored {
    pub entry: Entry,
    /// Older reports deleted to respect the bounds, oldest first.
    pub dropped: Vec<Dropped>,
    /// The `collector.dropped_reports` the stored report carries.
    pub carries_dropped: u64,
}

/// A spooled report read back: the exact bytes to post, and the little delivery needs to know
/// about them.
#[derive(Debug)]
pub struct Loaded {
    /// The file's bytes, posted as they are.
    pub json: Vec<u8>,
    pub report_id: Uuid,
    /// `identity.serial`, if the report has one as a string (a 403 for a report of another
    /// serial sets that report aside instead of stopping delivery).
    pub serial: Option<String>,
}

/// What [`Entry::load`] reads of a spooled report; serde ignores every other field, so the
/// rest of the document may be of any version of the contract.
#[derive(Deserialize)]
struct Envelope {
    report_id: Uuid,
    /// A raw value rather than a typed struct, so that even a reshaped `identity` costs only
    /// the serial, not the report.
    #[serde(default)]
    identity: Option<serde_json::Value>,
}

impl Entry {
    /// The file's name.
    pub fn name(&self) -> String {
        entry_name(self.seq, self.collected_at, self.report_id)
    }

    /// Reads the report back. Only a file that cannot be read, is not a JSON object with a
    /// `report_id`, or holds another report than its name says is corrupt; everything else in
    /// the document is the ingest's to judge.
    pub fn load(&self) -> Result<Loaded, String> {
        let json = read_bounded(&self.path, ENTRY_LIMIT).map_err(|e| e.to_string())?;
        let envelope: Envelope =
            serde_json::from_slice(&json).map_err(|e| format!("not a report: {e}"))?;
        if envelope.report_id != self.report_id {
            return Err(format!(
                "holds report {}, not the {} its name says",
                envelope.report_id, self.report_id
            ));
        }
        let serial = envelope
            .identity
            .as_ref()
            .and_then(|identity| identity.get("serial"))
            .and_then(|serial| serial.as_str())
            .map(str::to_owned);
        Ok(Loaded {
            json,
            report_id: envelope.report_id,
            serial,
        })
    }
}

impl Locked<'_> {
    /// Waiting reports, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, SpoolError> {
        Ok(self.scan()?.entries)
    }

    /// Removes temp files left by killed runs, sets aside `.json` files that are not entries,
    /// and deletes all but the newest [`KEEP_SET_ASIDE`] set-aside files of each kind.
    pub fn tidy(&self) -> Tidy {
        let mut tidy = Tidy::default();
        let scan = match self.scan() {
            Ok(scan) => scan,
            Err(e) => {
                tidy.problems.push(e.to_string());
                return tidy;
            }
        };
        for temp in &scan.temp_files {
            match fs::remove_file(temp) {
                Ok(()) => tidy.temp_files_removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tidy
                    .problems
                    .push(format!("cannot remove {}: {e}", temp.display())),
            }
        }
        for odd in &scan.odd_json {
            match self.move_aside(odd, SetAside::Corrupt) {
                Ok(to) => tidy.set_aside.push(to),
                Err(e) => tidy.problems.push(e.to_string()),
            }
        }
        for (suffix, mut files) in [
            (SetAside::Corrupt.suffix(), scan.corrupt),
            (SetAside::Rejected.suffix(), scan.rejected),
        ] {
            // Names start with the sequence number, so name order is age order.
            files.sort();
            let excess = files.len().saturating_sub(KEEP_SET_ASIDE);
            for old in files.iter().take(excess) {
                if let Err(e) = fs::remove_file(old) {
                    tidy.problems.push(format!(
                        "cannot remove old {suffix} file {}: {e}",
                        old.display()
                    ));
                }
            }
        }
        if tidy.temp_files_removed > 0 || !tidy.set_aside.is_empty() {
            if let Err(e) = sync_dir(self.spool.dir()) {
                tidy.problems
                    .push(format!("cannot sync {}: {e}", self.spool.dir().display()));
            }
        }
        tidy
    }

    /// Spools `report`: first deletes the oldest reports the bounds no longer allow (counting
    /// them), then writes the report carrying that count in `collector.dropped_reports`.
    ///
    /// The newest report is always kept, even if it alone exceeds `max_bytes`.
    pub fn store(&self, report: &mut Report, now: DateTime<Utc>) -> Result<Stored, SpoolError> {
        let dir = self.spool.dir();
        let settings = &self.spool.settings;
        let scan = self.scan()?;
        // The count digits may grow by a few bytes once set; the margin keeps the bound honest.
        let new_size = serde_json::to_vec(report)
            .map(|json| json.len() as u64 + 24)
            .unwrap_or(0);

        let (too_old, mut kept): (Vec<Entry>, Vec<Entry>) = scan
            .entries
            .into_iter()
            .partition(|e| now.signed_duration_since(e.collected_at) > settings.max_age);
        let mut dropped: Vec<Dropped> = too_old
            .into_iter()
            .map(|entry| Dropped {
                entry,
                reason: DropReason::TooOld,
            })
            .collect();
        let mut bytes: u64 = kept.iter().map(|e| e.size).sum();
        while !kept.is_empty()
            && (kept.len() as u64 + 1 > settings.max_reports
                || bytes.saturating_add(new_size) > settings.max_bytes)
        {
            let entry = kept.remove(0);
            bytes = bytes.saturating_sub(entry.size);
            dropped.push(Dropped {
                entry,
                reason: DropReason::SpoolFull,
            });
        }
        dropped.sort_by_key(|d| d.entry.seq);

        let counter_path = dir.join(DROPPED);
        let mut carried = read_counter(&counter_path);
        if !dropped.is_empty() {
            // A dropped report's own count would be lost with it, so it passes on to the next.
            for d in &dropped {
                carried = carried
                    .saturating_add(1)
                    .saturating_add(carried_count(&d.entry));
            }
            // Counted before deleting: a crash in between can only count a drop twice, never
            // hide one.
            self.spool
                .write_atomically(DROPPED, format!("{carried}\n").as_bytes())
                .map_err(|e| SpoolError::new("write", &counter_path, e))?;
            for d in &dropped {
                match fs::remove_file(&d.entry.path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(SpoolError::new("remove", &d.entry.path, e));
                    }
                    _ => {}
                }
            }
            sync_dir(dir).map_err(|e| SpoolError::new("sync", dir, e))?;
        }

        report.collector.dropped_reports = carried;
        let json = serde_json::to_vec(report)
            .map_err(|e| SpoolError::new("encode the report for", dir, io::Error::other(e)))?;
        let entry = Entry {
            seq: scan.max_seq + 1,
            collected_at: truncate_to_second(report.collected_at),
            report_id: report.report_id,
            path: PathBuf::new(),
            size: json.len() as u64,
        };
        let name = entry.name();
        let entry = Entry {
            path: dir.join(&name),
            ..entry
        };
        self.spool
            .write_atomically(&name, &json)
            .map_err(|e| SpoolError::new("write", &entry.path, e))?;
        if carried > 0 {
            // The report carries the count now. A crash before this line makes the next report
            // carry it again: counted twice rather than lost.
            self.spool
                .write_atomically(DROPPED, b"0\n")
                .map_err(|e| SpoolError::new("write", &counter_path, e))?;
        }
        Ok(Stored {
            entry,
            dropped,
            carries_dropped: carried,
        })
    }

    /// Deletes a delivered entry (durably). An entry already gone is not an error.
    pub fn remove(&self, entry: &Entry) -> Result<(), SpoolError> {
        match fs::remove_file(&entry.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SpoolError::new("remove", &entry.path, e)),
        }
        sync_dir(self.spool.dir()).map_err(|e| SpoolError::new("sync", self.spool.dir(), e))
    }

    /// Renames an entry to `<name>.corrupt` or `<name>.rejected`, where it is never sent again.
    /// Returns the new path; an entry already gone is not an error.
    ///
    /// A corrupt entry is a report that will never arrive, so it is counted in the `dropped`
    /// counter (with whatever count it carried itself) and the next spooled report tells the
    /// fleet. A rejected one is not: the ingest has seen it and logged why.
    pub fn set_aside(&self, entry: &Entry, why: SetAside) -> Result<PathBuf, SpoolError> {
        if why == SetAside::Corrupt && entry.path.exists() {
            let counter_path = self.spool.dir().join(DROPPED);
            let carried = read_counter(&counter_path)
                .saturating_add(1)
                .saturating_add(carried_count(entry));
            // Counted before moving, as in `store`: a crash in between counts it twice at
            // worst, never not at all.
            self.spool
                .write_atomically(DROPPED, format!("{carried}\n").as_bytes())
                .map_err(|e| SpoolError::new("write", &counter_path, e))?;
        }
        self.move_aside(&entry.path, why)
    }

    /// Undelivered reports deleted and not yet carried by a spooled report.
    pub fn pending_dropped(&self) -> u64 {
        read_counter(&self.spool.dir().join(DROPPED))
    }

    fn move_aside(&self, path: &Path, why: SetAside) -> Result<PathBuf, SpoolError> {
        let mut to = path.as_os_str().to_owned();
        to.push(why.suffix());
        let to = PathBuf::from(to);
        match fs::rename(path, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(to),
            Err(e) => return Err(SpoolError::new("set aside", path, e)),
        }
        sync_dir(self.spool.dir()).map_err(|e| SpoolError::new("sync", self.spool.dir(), e))?;
        Ok(to)
    }

    fn scan(&self) -> Result<Scan, SpoolError> {
        let dir = self.spool.dir();
        let mut scan = Scan::default();
        let listing = fs::read_dir(dir).map_err(|e| SpoolError::new("list", dir, e))?;
        for item in listing {
            let item = item.map_err(|e| SpoolError::new("list", dir, e))?;
            let Ok(name) = item.file_name().into_string() else {
                // Not a name this collector writes; leave it to whoever put it there.
                continue;
            };
            let path = item.path();
            if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                scan.temp_files.push(path);
                continue;
            }
            if let Some(seq) = seq_prefix(&name) {
                scan.max_seq = scan.max_seq.max(seq);
            }
            if name.ends_with(SetAside::Corrupt.suffix()) {
                scan.corrupt.push(path);
            } else if name.ends_with(SetAside::Rejected.suffix()) {
                scan.rejected.push(path);
            } else if name.ends_with(ENTRY_SUFFIX) {
                let is_file = item.file_type().is_ok_and(|t| t.is_file());
                match parse_entry_name(&name) {
                    Some((seq, collected_at, report_id)) if is_file => {
                        let size = item.metadata().map(|m| m.len()).unwrap_or(0);
                        scan.entries.push(Entry {
                            seq,
                            collected_at,
                            report_id,
                            path,
                            size,
                        });
                    }
                    _ => scan.odd_json.push(path),
                }
            }
        }
        scan.entries
            .sort_by(|a, b| (a.seq, &a.path).cmp(&(b.seq, &b.path)));
        Ok(scan)
    }
}

#[derive(Debug, Default)]
struct Scan {
    entries: Vec<Entry>,
    temp_files: Vec<PathBuf>,
    odd_json: Vec<PathBuf>,
    corrupt: Vec<PathBuf>,
    rejected: Vec<PathBuf>,
    /// Highest sequence number in any name, set-aside files included, so numbers never repeat
    /// while those are around.
    max_seq: u64,
}

/// `Ok(true)` when the exclusive lock was taken, `Ok(false)` when someone else holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn entry_name(seq: u64, collected_at: DateTime<Utc>, report_id: Uuid) -> String {
    format!(
        "{seq:0width$}-{}-{report_id}{ENTRY_SUFFIX}",
        collected_at.format(TIME_FORMAT),
        width = SEQ_DIGITS
    )
}

fn seq_prefix(name: &str) -> Option<u64> {
    let digits = name.get(..SEQ_DIGITS)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || name.as_bytes().get(SEQ_DIGITS) != Some(&b'-')
    {
        return None;
    }
    digits.parse().ok()
}

fn parse_entry_name(name: &str) -> Option<(u64, DateTime<Utc>, Uuid)> {
    let seq = seq_prefix(name)?;
    let rest = name.get(SEQ_DIGITS + 1..)?.strip_suffix(ENTRY_SUFFIX)?;
    let (time, id) = rest.split_once('-')?;
    let collected_at = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()?
        .and_utc();
    let report_id = Uuid::try_parse(id).ok()?;
    // Only the canonical spelling, so that one report has exactly one possible name.
    (entry_name(seq, collected_at, report_id) == name).then_some((seq, collected_at, report_id))
}

fn truncate_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// The dropped-reports counter; missing or unreadable counts as 0 (it is written atomically, so
/// unreadable means someone else wrote it).
fn read_counter(path: &Path) -> u64 {
    read_bounded(path, 64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The `collector.dropped_reports` a spooled report carries (0 if it cannot be read).
fn carried_count(entry: &Entry) -> u64 {
    #[derive(Deserialize)]
    struct Partial {
        collector: PartialCollector,
    }
    #[derive(Deserialize)]
    struct PartialCollector {
        #[serde(default)]
        dropped_reports: u64,
    }
    read_bounded(&entry.path, ENTRY_LIMIT)
        .ok()
        .and_then(|json| serde_json::from_slice::<Partial>(&json).ok())
        .map_or(0, |p| p.collector.dropped_reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip_and_only_the_canonical_spelling_parses() {
        let id = Uuid::new_v4();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let name = entry_name(42, at, id);
        assert!(name.starts_with("000000000042-20231114T221320Z-"), "{name}");
        assert_eq!(parse_entry_name(&name), Some((42, at, id)));
        let upper = name.to_uppercase().replace(".JSON", ".json");
        assert_eq!(parse_entry_name(&upper), None, "{upper}");
        for odd in [
            "42-20231114T221320Z-x.json",
            "000000000042-20231114T221320Z.json",
            "000000000042-2023-x.json",
            "notes.json",
        ] {
            assert_eq!(parse_entry_name(odd), None, "{odd}");
        }
    }

    #[test]
    fn settings_defaults_and_limits() {
        let ok = |raw: RawSpool| SpoolSettings::from_raw(raw, Path::new("/etc/phonehome"));
        let defaults = ok(RawSpool::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults, SpoolSettings::default());
        assert_eq!(defaults.dir, Path::new("/var/spool/phonehome"));
        let relative = ok(RawSpool {
            dir: Some("spool".into()),
            ..RawSpool::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(relative.dir, Path::new("/etc/phonehome/spool"));
        for (raw, needle) in [
            (
                RawSpool {
                    max_age_days: Some(400),
                    ..RawSpool::default()
                },
                "between 1 and 399",
            ),
            (
                RawSpool {
                    max_reports: Some(0),
                    ..RawSpool::default()
                },
                "max_reports",
            ),
            (
                RawSpool {
                    dir: Some(PathBuf::new()),
                    ..RawSpool::default()
                },
                "dir",
            ),
        ] {
            let err = ok(raw).err().unwrap_or_default();
            assert!(err.contains(needle), "{err}");
        }
    }
}
