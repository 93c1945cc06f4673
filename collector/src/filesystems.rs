//! Filesystem use: the real (non-pseudo) mounts from `/proc/self/mountinfo`, measured with
//! `statvfs` in bytes and inodes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phonehome_schema::{CollectionError, ErrorKind, Filesystem, FilesystemsSection};

use crate::machine::{MachineRoot, invalid, io_error};

const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Hosts with thousands of container mounts have mountinfo files of a few hundred KiB.
const MOUNTINFO_LIMIT: u64 = 4 * 1024 * 1024;

/// Filesystem types that hold no user data: kernel interfaces, memory-backed scratch space and
/// read-only images. `overlay` is deliberately absent: its upper layer fills up like a disk.
pub const PSEUDO_FS_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "ramfs",
    "rpc_pipefs",
    "efivarfs",
    "squashfs",
    "selinuxfs",
    "nfsd",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
];

/// One line of mountinfo, the parts the report needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point as the kernel knows it (octal escapes undone; may be non-UTF-8).
    pub path: PathBuf,
    pub fs_type: String,
    pub device: String,
    pub read_only: bool,
    /// `major:minor` of the filesystem's device, as mountinfo gives it.
    pub dev: String,
}

impl Mount {
    /// The mount point for the report (non-UTF-8 bytes replaced).
    pub fn mount_point(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

/// Types whose `statvfs` goes over the network or through a user-space daemon and can block for
/// as long as the server is gone (a hard NFS mount blocks forever).
const REMOTE_FS_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "davfs",
    "lustre",
    "gpfs",
    "sshfs",
];
/// How long one remote filesystem may take to answer `statvfs`.
const REMOTE_STATVFS_TIMEOUT: Duration = Duration::from_secs(5);

/// `skip_types`: filesystem types left out (by default [`PSEUDO_FS_TYPES`]).
pub fn collect(root: &MachineRoot, skip_types: &[String]) -> FilesystemsSection {
    let mut section = FilesystemsSection::default();
    let bytes = match root.read_bytes(MOUNTINFO, MOUNTINFO_LIMIT) {
        Ok(bytes) => bytes,
        Err(e) => {
            section.errors.push(e);
            return section;
        }
    };
    let (mounts, bad_lines) = parse_mountinfo(&bytes);
    section.errors.extend(bad_lines);
    for mount in real_mounts(mounts, skip_types) {
        match measure(root, &mount) {
            Ok(mut fs) => {
                fs.device = device_name(root, &mount);
                section.filesystems.push(fs)
            }
            Err(e) => section.errors.push(e),
        }
    }
    section
}

/// Parses mountinfo (proc(5)): `id parent major:minor root MOUNT_POINT OPTIONS [optional…] -
/// FSTYPE SOURCE SUPER_OPTIONS`. Lines that do not fit are returned as errors.
pub fn parse_mountinfo(bytes: &[u8]) -> (Vec<Mount>, Vec<CollectionError>) {
    let mut mounts = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line) {
            Some(mount) => mounts.push(mount),
            None => errors.push(invalid(
                MOUNTINFO,
                format!(
                    "line {} is not a mountinfo entry: {:?}",
                    index + 1,
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ),
            )),
        }
    }
    (mounts, errors)
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    let fields: Vec<&[u8]> = line
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    let dev = *fields.get(2)?;
    let mount_point = *fields.get(4)?;
    let options = *fields.get(5)?;
    // Optional fields (`shared:1`, `master:2`, …) run until a lone `-`.
    let separator = 6 + fields.get(6..)?.iter().position(|f| *f == b"-")?;
    let fs_type = *fields.get(separator + 1)?;
    let source = *fields.get(separator + 2)?;
    let super_options = fields.get(separator + 3).copied().unwrap_or_default();
    let has_ro = |opts: &[u8]| opts.split(|b| *b == b',').any(|o| o == b"ro");
    Some(Mount {
        path: PathBuf::from(OsStr::from_bytes(&unescape(mount_point))),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
        device: String::from_utf8_lossy(&unescape(source)).into_owned(),
        read_only: has_ro(options) || has_ro(super_options),
        dev: String::from_utf8_lossy(dev).into_owned(),
    })
}

/// The device a filesystem is on, by the name the rest of the report uses. A root filesystem
/// the kernel mounted itself (`root=/dev/sda1` without an initramfs) is named `/dev/root` in
/// mountinfo, a name no disk has: it is then looked up by its device number in
/// `/sys/dev/block/MAJOR:MINOR`, a link to the real block device. Left as mountinfo has it when
/// that cannot be read.
pub fn device_name(root: &MachineRoot, mount: &Mount) -> String {
    if mount.device != "/dev/root" {
        return mount.device.clone();
    }
    let valid = mount.dev.split_once(':').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    });
    if !valid {
        return mount.device.clone();
    }
    std::fs::read_link(root.path(&format!("/sys/dev/block/{}", mount.dev)))
        .ok()
        .and_then(|target| target.file_name()?.to_str().map(|n| format!("/dev/{n}")))
        .unwrap_or_else(|| mount.device.clone())
}

/// Undoes the kernel's `\ooo` octal escapes (space, tab, newline and backslash in paths).
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (field[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                // `\400` and above cannot be a byte; keep such text as written.
                match u8::try_from(value) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&field[i..i + 4]),
                }
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The mounts worth reporting: where a mount point appears more than once only the last
/// (topmost, the one `statvfs` sees) counts, and pseudo filesystems are left out.
pub fn real_mounts(mounts: Vec<Mount>, skip_types: &[String]) -> Vec<Mount> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Mount> = mounts
        .into_iter()
        .rev()
        .filter(|m| seen.insert(m.path.clone()))
        .collect();
    kept.reverse();
    kept.retain(|m| !skip_types.contains(&m.fs_type));
    kept
}

fn measure(root: &MachineRoot, mount: &Mount) -> Result<Filesystem, CollectionError> {
    let mount_point = mount.mount_point();
    let target = if root.is_live() {
        mount.path.clone()
    } else {
        // A recorded tree has the mount table but not the mounts: measure the directory that
        // stands for the mount point, if the tree has one.
        let below = root
            .base()
            .join(mount.path.strip_prefix("/").unwrap_or(&mount.path));
        if !below.exists() {
            return Err(CollectionError {
                item: mount_point,
                kind: ErrorKind::NotFound,
                message: format!("mount point is not present below {}", root.base().display()),
            });
        }
        below
    };
    let remote =
        REMOTE_FS_TYPES.contains(&mount.fs_type.as_str()) || mount.fs_type.starts_with("fuse.");
    let stat = if remote {
        within(REMOTE_STATVFS_TIMEOUT, move || statvfs(&target)).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => CollectionError {
                item: mount_point.clone(),
                kind: ErrorKind::Timeout,
                message: format!(
                    "{} filesystem did not answer statvfs within {} s (server unreachable?)",
                    mount.fs_type,
                    REMOTE_STATVFS_TIMEOUT.as_secs()
                ),
            },
            _ => io_error(&mount_point, &e),
        })?
    } else {
        statvfs(&target).map_err(|e| io_error(&mount_point, &e))?
    };
    Ok(filesystem_from(mount, &stat))
}

/// Runs `f` on a helper thread and gives up after `timeout`. A thread stuck on a dead server is
/// abandoned; it dies with the process (NFS waits are killable).
fn within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout)
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

fn statvfs(path: &Path) -> io::Result<rustix::fs::StatVfs> {
    rustix::fs::statvfs(path).map_err(io::Error::from)
}

fn filesystem_from(mount: &Mount, stat: &rustix::fs::StatVfs) -> Filesystem {
    // Block counts are in fragment-size units; a few filesystems leave f_frsize at 0.
    let unit = if stat.f_frsize > 0 {
        stat.f_frsize
    } else {
        stat.f_bsize
    };
    let bytes = |blocks: u64| blocks.saturating_mul(unit);
    Filesystem {
        mount_point: mount.mount_point(),
        device: mount.device.clone(),
        fs_type: mount.fs_type.clone(),
        read_only: mount.read_only || stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        bytes_total: bytes(stat.f_blocks),
        bytes_used: bytes(stat.f_blocks.saturating_sub(stat.f_bfree)),
        bytes_available: bytes(stat.f_bavail),
        inodes_total: stat.f_files,
        inodes_used: stat.f_files.saturating_sub(stat.f_ffree),
        inodes_available: stat.f_favail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
48 27 8:3 / /boot rw,relatime shared:92 master:3 - ext2 /dev/sda3 rw
3148 27 8:0 / /srv/backup\\040disk\\011two rw,relatime shared:31 - ext4 /dev/disk/by-label/my\\040disk rw
49 27 0:25 / /mnt/cdrom ro,nosuid - iso9660 /dev/sr0 ro
50 27 0:26 / /var/lib/docker rw - overlay overlay rw,lowerdir=/a
51 27 0:27 / /boot rw,relatime - xfs /dev/sdb1 ro
52 27 0:28 / /snap/core/1 ro - squashfs /dev/loop0 ro
garbage line
";

    #[test]
    fn mountinfo_entries_are_parsed_and_unescaped() {
        let (mounts, errors) = parse_mountinfo(MOUNTINFO_SAMPLE.as_bytes());
        assert_eq!(mounts.len(), 8);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("line 9"),
            "{}",
            errors[0].message
        );

        let backup = &mounts[3];
        assert_eq!(backup.mount_point(), "/srv/backup disk\ttwo");
        assert_eq!(backup.device, "/dev/disk/by-label/my disk");
        assert_eq!(backup.fs_type, "ext4");
        assert!(!backup.read_only);

        let boot = &mounts[2];
        assert_eq!(
            (boot.fs_type.as_str(), boot.device.as_str()),
            ("ext2", "/dev/sda3")
        );
        assert!(mounts[4].read_only, "per-mount ro option");
        assert!(mounts[6].read_only, "superblock ro option");
    }

    #[test]
    fn pseudo_filesystems_and_shadowed_mounts_are_left_out() {
        let (mounts, _) = parse_mountinfo(MOUNTINFO_SAMPLE.as_bytes());
        let kept: Vec<(String, String)> = real_mounts(mounts, &default_skip())
            .iter()
            .map(|m| (m.mount_point(), m.fs_type.clone()))
            .collect();
        let expected = [
            ("/", "ext4"),
            ("/srv/backup disk\ttwo", "ext4"),
            ("/mnt/cdrom", "iso9660"),
            ("/var/lib/docker", "overlay"),
            // The later xfs mount on /boot hides the earlier ext2 one.
            ("/boot", "xfs"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(kept, expected);
    }

    fn default_skip() -> Vec<String> {
        PSEUDO_FS_TYPES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_skip_list_is_the_callers() {
        let (mounts, _) = parse_mountinfo(MOUNTINFO_SAMPLE.as_bytes());
        let kept: Vec<String> = real_mounts(mounts, &["ext4".to_string(), "proc".to_string()])
            .iter()
            .map(|m| m.fs_type.clone())
            .collect();
        assert_eq!(kept, ["iso9660", "overlay", "xfs", "squashfs"]);
    }

    #[test]
    fn a_call_that_never_answers_is_given_up() {
        let started = std::time::Instant::now();
        let hung = within(Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        });
        assert_eq!(hung.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(2));
        let live = within(Duration::from_secs(5), || statvfs(Path::new("/")));
        assert!(live.is_ok(), "{:?}", live.err());
    }

    #[test]
    fn a_root_named_dev_root_is_named_by_its_block_device() -> Result<(), Box<dyn std::error::Error>>
    {
        // A kernel that mounts root itself (no initramfs) calls it /dev/root; 8:1 is sda1.
        let (mounts, errors) = parse_mountinfo(
            b"19 1 8:1 / / rw,relatime - ext4 /dev/root rw\n\
              20 19 259:1 / /data rw - ext4 /dev/nvme0n1 rw\n\
              21 19 8:2 / /broken rw - ext4 /dev/root rw\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let dir = tempfile::tempdir()?;
        let links = dir.path().join("sys/dev/block");
        std::fs::create_dir_all(&links)?;
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1",
            links.join("8:1"),
        )?;
        let root = MachineRoot::new(dir.path());
        let names: Vec<String> = mounts.iter().map(|m| device_name(&root, m)).collect();
        assert_eq!(names, ["/dev/sda1", "/dev/nvme0n1", "/dev/root"]);
        let odd = Mount {
            dev: "../8:1".to_owned(),
            ..mounts[0].clone()
        };
        assert_eq!(
            device_name(&root, &odd),
            "/dev/root",
            "no path from mountinfo"
        );
        Ok(())
    }

    #[test]
    fn escapes_that_are_not_bytes_stay_as_written() {
        assert_eq!(unescape(br"a\040b"), b"a b");
        assert_eq!(unescape(br"a\134b"), br"a\b");
        assert_eq!(unescape(br"a\777"), br"a\777");
        assert_eq!(unescape(br"trailing\04"), br"trailing\04");
        assert_eq!(unescape(br"\"), br"\");
    }

    #[test]
    fn the_live_root_filesystem_is_measured() {
        let section = collect(&MachineRoot::live(), &default_skip());
        let root = section.filesystems.iter().find(|f| f.mount_point == "/");
        let root = root.unwrap_or_else(|| panic!("no / in {:?}", section.filesystems));
        assert!(root.bytes_total > 0);
        assert!(root.bytes_used <= root.bytes_total);
        assert!(root.bytes_available <= root.bytes_total);
        assert!(root.inodes_used <= root.inodes_total || root.inodes_total == 0);
        assert!(
            section
                .filesystems
                .iter()
                .all(|f| !PSEUDO_FS_TYPES.contains(&f.fs_type.as_str()))
        );
    }

    #[test]
    fn a_recorded_tree_reports_missing_mount_points() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("proc/self"))?;
        std::fs::write(
            dir.path().join("proc/self/mountinfo"),
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n28 27 8:1 / /data rw - xfs /dev/sdb1 rw\n",
        )?;
        let section = collect(&MachineRoot::new(dir.path()), &default_skip());
        let mounts: Vec<&str> = section
            .filesystems
            .iter()
            .map(|f| f.mount_point.as_str())
            .collect();
        assert_eq!(mounts, ["/"]);
        assert_eq!(section.errors.len(), 1, "{:?}", section.errors);
        assert_eq!(section.errors[0].item, "/data");
        assert_eq!(section.errors[0].kind, ErrorKind::NotFound);
        Ok(())
    }
}
