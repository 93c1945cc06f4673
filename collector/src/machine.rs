//! Reading the machine's `/sys`, `/proc` and `/etc` below a chosen root directory, and turning
//! what goes wrong into the report's [`CollectionError`]s.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use phonehome_schema::{CollectionError, ErrorKind};

/// Bound for single-value kernel attribute files (sysfs, procfs); real ones are a few bytes, so
/// anything longer is not what we think it is.
pub const ATTRIBUTE_LIMIT: u64 = 4096;

/// The directory that stands for `/`: the live machine, or a recorded tree in tests.
#[derive(Debug, Clone)]
pub struct MachineRoot {
    base: PathBuf,
}

impl MachineRoot {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        MachineRoot { base: base.into() }
    }

    /// The live machine.
    pub fn live() -> Self {
        MachineRoot::new("/")
    }

    /// True when this is the real `/`, where mount points can be measured directly.
    pub fn is_live(&self) -> bool {
        self.base == Path::new("/")
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Where the machine path `machine_path` (absolute, as on the appliance) is found here.
    pub fn path(&self, machine_path: &str) -> PathBuf {
        self.base.join(machine_path.trim_start_matches('/'))
    }

    /// Reads at most `limit` bytes of a machine file; a longer file is an error rather than a
    /// silently truncated value.
    pub fn read_bytes(&self, machine_path: &str, limit: u64) -> Result<Vec<u8>, CollectionError> {
        read_bounded(&self.path(machine_path), limit).map_err(|e| io_error(machine_path, &e))
    }

    /// Reads a small attribute file as text: lossily decoded, surrounding whitespace trimmed.
    pub fn read_attribute(&self, machine_path: &str) -> Result<String, CollectionError> {
        self.read_attribute_io(machine_path)
            .map_err(|e| io_error(machine_path, &e))
    }

    /// [`read_attribute`](Self::read_attribute) with the OS error kept, for callers to whom some
    /// errors mean "not applicable" rather than failure.
    pub fn read_attribute_io(&self, machine_path: &str) -> io::Result<String> {
        let bytes = read_bounded(&self.path(machine_path), ATTRIBUTE_LIMIT)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
    }
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// The report's view of an OS error.
pub fn error_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        io::ErrorKind::InvalidData => ErrorKind::Invalid,
        _ => ErrorKind::Failed,
    }
}

/// A collection error for `item` caused by an OS error.
pub fn io_error(item: &str, e: &io::Error) -> CollectionError {
    CollectionError {
        item: item.to_owned(),
        kind: error_kind(e),
        message: e.to_string(),
    }
}

/// A collection error for content that was read but could not be understood.
pub fn invalid(item: &str, message: impl Into<String>) -> CollectionError {
    CollectionError {
        item: item.to_owned(),
        kind: ErrorKind::Invalid,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_keep_their_meaning_in_the_report() {
        let cases = [
            (io::ErrorKind::NotFound, ErrorKind::NotFound),
            (io::ErrorKind::PermissionDenied, ErrorKind::PermissionDenied),
            (io::ErrorKind::TimedOut, ErrorKind::Timeout),
            (io::ErrorKind::InvalidData, ErrorKind::Invalid),
            (io::ErrorKind::InvalidInput, ErrorKind::Failed),
        ];
        for (io_kind, expected) in cases {
            let e = io_error("/sys/x", &io::Error::from(io_kind));
            assert_eq!(e.kind, expected, "{io_kind:?}");
            assert_eq!(e.item, "/sys/x");
        }
    }

    #[test]
    fn machine_paths_stay_below_the_root() {
        let root = MachineRoot::new("/tmp/fixture");
        assert_eq!(
            root.path("/etc/machine-id"),
            Path::new("/tmp/fixture/etc/machine-id")
        );
        assert!(!root.is_live());
        assert!(MachineRoot::live().is_live());
    }

    #[test]
    fn oversized_files_are_refused_not_truncated() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("big"), vec![b'x'; 10])?;
        std::fs::write(dir.path().join("fits"), vec![b'x'; 4])?;
        let root = MachineRoot::new(dir.path());
        let err = root
            .read_bytes("/big", 4)
            .err()
            .ok_or("oversized file was accepted")?;
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert_eq!(root.read_bytes("/fits", 4).map_err(|e| e.message)?.len(), 4);
        Ok(())
    }
}
