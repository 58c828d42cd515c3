//! Reader for `/proc/self/mountinfo` (format in proc(5)), shared by the
//! storage manager (restart recovery, nesting and bind checks) and the
//! volume service (condition checks, device cross-checks).

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfoEntry {
    /// `st_dev` of files on this mount; major 0 is an anonymous device
    /// (tmpfs, btrfs subvolumes, overlay).
    pub major: u32,
    pub minor: u32,
    /// Path inside the filesystem that is mounted here (`/` for a whole
    /// filesystem, a subdirectory for a bind of one).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options: `rw`/`ro` of this mount alone, `nosuid`, ...
    pub mount_options: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options, shared by every mount of the filesystem.
    pub super_options: Vec<String>,
}

impl MountInfoEntry {
    /// Tells whether the filesystem went read-only under a writable mount,
    /// as `errors=remount-ro` does after an error. Linux 6.1 sets the
    /// superblock read-only (`ro` in the super options); Linux 6.18 ext4
    /// keeps `rw` there and adds `emergency_ro` instead.
    pub fn forced_read_only(&self) -> bool {
        let mount_writable = self.mount_options.iter().any(|option| option == "rw");
        let super_read_only = self
            .super_options
            .iter()
            .any(|option| option == "ro" || option == "emergency_ro");
        mount_writable && super_read_only
    }

    /// Returns `major:minor` as the kernel prints it.
    pub fn devno(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Reads and parses the calling process's mount table.
pub fn read() -> std::io::Result<Vec<MountInfoEntry>> {
    read_from(&mut std::fs::File::open("/proc/self/mountinfo")?)
}

/// Reads and parses a mount table from the current position of `file`.
/// Path bytes that are not UTF-8, which the kernel writes as they are, are
/// decoded lossily, so one such mount does not fail the whole read.
fn read_from(file: &mut std::fs::File) -> std::io::Result<Vec<MountInfoEntry>> {
    use std::io::Read;

    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountInfoEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfoEntry> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    if fields.len() < 6 {
        return None;
    }
    let (major, minor) = fields[2].split_once(':')?;
    let mut tail = after.split(' ');
    let fstype = tail.next()?;
    let source = tail.next()?;
    let super_options = tail.next().unwrap_or("");
    Some(MountInfoEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        mount_options: split_options(fields[5]),
        fstype: unescape(fstype),
        source: unescape(source),
        super_options: split_options(super_options),
    })
}

fn split_options(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|option| !option.is_empty())
        .map(String::from)
        .collect()
}

/// Decodes the `\ooo` octal escapes the kernel writes for space, tab,
/// newline and backslash.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4);
        let code = escape
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(code) => {
                out.push(code);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the mount made exactly at `mount_point`. Of mounts stacked on
/// one point the kernel lists the later one after the earlier, so the last
/// match is the visible one.
pub fn find_mount_at<'a>(
    entries: &'a [MountInfoEntry],
    mount_point: &Path,
) -> Option<&'a MountInfoEntry> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.mount_point == mount_point)
}

/// Finds the mount that `path` (absolute, symlinks resolved) lies on: the
/// longest mount point that contains it, and of stacked mounts on one
/// point the last, which is the visible one.
pub fn find_mount<'a>(entries: &'a [MountInfoEntry], path: &Path) -> Option<&'a MountInfoEntry> {
    let mut found: Option<&MountInfoEntry> = None;
    for entry in entries {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let longer = found.map_or(true, |best| {
            entry.mount_point.as_os_str().len() >= best.mount_point.as_os_str().len()
        });
        if longer {
            found = Some(entry);
        }
    }
    found
}

/// A cached copy of the calling process's mount table that is read again
/// only after the kernel reports a change.
///
/// The kernel marks `/proc/self/mountinfo` with POLLPRI | POLLERR whenever a
/// mount or unmount changes the mount namespace, and clears the mark in the
/// poll call that reports it. So a zero-timeout poll before each use shows
/// whether the cached entries are still current, and GetVolumeStats does not
/// parse the whole table on every call.
pub struct MountTable {
    cached: std::sync::Mutex<Option<CachedTable>>,
}

struct CachedTable {
    file: std::fs::File,
    entries: std::sync::Arc<Vec<MountInfoEntry>>,
}

impl MountTable {
    pub fn new() -> MountTable {
        MountTable {
            cached: std::sync::Mutex::new(None),
        }
    }

    /// Returns the current mount table, reading it again only when it
    /// changed since the last call.
    pub fn entries(&self) -> std::io::Result<std::sync::Arc<Vec<MountInfoEntry>>> {
        use std::io::Seek;
        use std::os::fd::AsFd;

        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(table) = cached.as_mut() {
            let mut fds = [nix::poll::PollFd::new(
                table.file.as_fd(),
                nix::poll::PollFlags::POLLPRI,
            )];
            let changed = match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
                Ok(_) => fds[0].revents().map_or(true, |events| {
                    events.intersects(nix::poll::PollFlags::POLLPRI | nix::poll::PollFlags::POLLERR)
                }),
                // Without a working poll there is no way to know: read again.
                Err(_) => true,
            };
            if !changed {
                return Ok(table.entries.clone());
            }
            table.file.rewind()?;
            table.entries = std::sync::Arc::new(read_from(&mut table.file)?);
            return Ok(table.entries.clone());
        }

        // Opened before the first read, so a change between the two shows
        // up as a poll event on the next call rather than being missed.
        let mut file = std::fs::File::open("/proc/self/mountinfo")?;
        let entries = std::sync::Arc::new(read_from(&mut file)?);
        *cached = Some(CachedTable {
            file,
            entries: entries.clone(),
        });
        Ok(entries)
    }
}

impl Default for MountTable {
    fn default() -> MountTable {
        MountTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
45 22 7:3 / /run/storage/MDow rw,relatime shared:30 - xfs /dev/loop3 rw,inode64,noquota
46 22 7:3 / /run/c1/rootfs/data ro,relatime shared:30 - xfs /dev/loop3 rw,inode64,noquota
47 22 7:4 / /run/storage/with\\040space rw - ext4 /dev/loop4 ro,errors=remount-ro
48 22 7:5 / /run/storage/six rw,relatime - ext4 /dev/loop5 rw,errors=remount-ro,emergency_ro
49 45 0:50 / /run/storage/MDow rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parse_fields() {
        let entries = parse(TABLE);
        assert_eq!(entries.len(), 6);
        let xfs = &entries[1];
        assert_eq!((xfs.major, xfs.minor), (7, 3));
        assert_eq!(xfs.mount_point, Path::new("/run/storage/MDow"));
        assert_eq!(xfs.fstype, "xfs");
        assert_eq!(xfs.source, "/dev/loop3");
        assert_eq!(xfs.mount_options, vec!["rw", "relatime"]);
        assert_eq!(xfs.super_options, vec!["rw", "inode64", "noquota"]);
        assert_eq!(xfs.devno(), "7:3");
    }

    #[test]
    fn parse_octal_escape() {
        let entries = parse(TABLE);
        assert_eq!(entries[3].mount_point, Path::new("/run/storage/with space"));
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn forced_read_only_cases() {
        let entries = parse(TABLE);
        assert!(!entries[1].forced_read_only(), "rw over rw");
        assert!(!entries[2].forced_read_only(), "ro bind over rw superblock");
        assert!(entries[3].forced_read_only(), "rw mount over ro superblock");
        assert!(entries[4].forced_read_only(), "emergency_ro superblock");
    }

    #[test]
    fn find_mount_longest_and_last() {
        let entries = parse(TABLE);
        let inside = find_mount(&entries, Path::new("/run/storage/MDow/a/b")).unwrap();
        assert_eq!(
            inside.fstype, "tmpfs",
            "stacked mount: the last one is visible"
        );
        let bind = find_mount(&entries, Path::new("/run/c1/rootfs/data/x")).unwrap();
        assert_eq!(bind.mount_point, Path::new("/run/c1/rootfs/data"));
        let root = find_mount(&entries, Path::new("/run/storage/MDowX")).unwrap();
        assert_eq!(
            root.mount_point,
            Path::new("/"),
            "prefix match is by component"
        );
    }

    #[test]
    fn mount_table_follows_mounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_path_buf();
        let table = MountTable::new();
        let mounted = |table: &MountTable| {
            let entries = table.entries().unwrap();
            entries.iter().any(|entry| entry.mount_point == target)
        };
        assert!(
            !mounted(&table),
            "{} listed before the mount",
            target.display()
        );

        nix::mount::mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let unmount = scopeguard::guard(target.clone(), |target| {
            let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        });
        assert!(mounted(&table), "cached table missed the new mount");

        nix::mount::umount2(&*unmount, nix::mount::MntFlags::empty()).unwrap();
        assert!(!mounted(&table), "cached table kept the unmounted entry");
    }

    const STACKED: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 7:3 / /run/storage/with\\040space rw,nosuid shared:5 - xfs /dev/loop3 rw,attr2
31 30 7:3 /sub /run/c1/rootfs/data rw - xfs /dev/loop3 rw
32 22 7:4 / /run/storage/with\\040space rw - ext4 /dev/loop4 rw
bad line without separator
";

    #[test]
    fn find_mount_at_returns_topmost() {
        let entries = parse(STACKED);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].root, PathBuf::from("/sub"));
        let top = find_mount_at(&entries, Path::new("/run/storage/with space")).unwrap();
        assert_eq!((top.major, top.minor), (7, 4));
        assert!(find_mount_at(&entries, Path::new("/run/storage")).is_none());
    }

    #[test]
    fn unescape_backslash_and_partial_escapes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("tab\\011x\\012"), "tab\tx\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("not\\9998"), "not\\9998");
    }
}
