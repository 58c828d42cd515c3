//! Volume condition: whether a volume is healthy, from what the kernel
//! shows about its device and filesystem.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use protocols::csi::VolumeCondition;

use super::probe::ProbeStall;
use super::usage::FsCounts;
use crate::mountinfo::MountInfoEntry;

/// Message of a healthy volume.
pub const OK_MESSAGE: &str = "OK";

/// Results of the blocking part of a filesystem probe at its mount root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsObservation {
    pub statfs: Result<FsCounts, Errno>,
    /// Opening the root directory: a shut-down xfs still returns statfs
    /// numbers but fails this with EIO.
    pub root_open: Result<(), Errno>,
}

impl FsObservation {
    /// Runs statfs and opens the root directory of `mount_point`. Blocks on
    /// a hung device, so call it through a probe.
    pub fn collect(mount_point: &Path) -> FsObservation {
        let statfs = nix::sys::statvfs::statvfs(mount_point).map(|stat| FsCounts::from(&stat));
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root_open = nix::fcntl::open(mount_point, flags, Mode::empty()).map(|fd| {
            let _ = nix::unistd::close(fd);
        });
        FsObservation { statfs, root_open }
    }
}

/// Everything the condition of a filesystem volume is judged from.
#[derive(Debug)]
pub struct FsFacts<'a> {
    pub mount_point: &'a Path,
    /// `major:minor` of the device, for messages.
    pub devno: &'a str,
    /// Whether the device's sysfs directory still exists.
    pub device_present: bool,
    /// The mount table entry of the mount point, `None` when it is missing.
    pub mount: Option<&'a MountInfoEntry>,
    /// A problem that `/sys/fs/<fstype>/<device>` shows, see [`fs_sysfs_problem`].
    pub sysfs_problem: Option<String>,
    pub probe: Result<&'a FsObservation, &'a ProbeStall>,
}

/// The problems found, in the order they were checked; none means healthy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Condition {
    pub problems: Vec<String>,
}

impl Condition {
    pub fn is_abnormal(&self) -> bool {
        !self.problems.is_empty()
    }

    /// Joins the problems into one message, or returns [`OK_MESSAGE`].
    pub fn message(&self) -> String {
        if self.problems.is_empty() {
            OK_MESSAGE.to_string()
        } else {
            self.problems.join("; ")
        }
    }

    pub fn to_proto(&self) -> VolumeCondition {
        let mut condition = VolumeCondition::new();
        condition.abnormal = self.is_abnormal();
        condition.message = self.message();
        condition
    }

    /// Builds a normal condition with its own message, for paths the agent
    /// does not manage and so does not judge.
    pub fn unjudged(message: String) -> VolumeCondition {
        let mut condition = VolumeCondition::new();
        condition.abnormal = false;
        condition.message = message;
        condition
    }
}

/// Judges a filesystem volume from `facts`.
pub fn assess_filesystem(facts: &FsFacts) -> Condition {
    let mount_point = facts.mount_point.display();
    let mut problems = Vec::new();
    if !facts.device_present {
        problems.push(format!("device {} is gone from sysfs", facts.devno));
    }
    match facts.mount {
        None => problems.push(format!("{mount_point} is no longer in the mount table")),
        Some(entry) if entry.forced_read_only() => problems.push(format!(
            "filesystem was remounted read-only after an error (super options {})",
            entry.super_options.join(",")
        )),
        Some(_) => {}
    }
    if let Some(problem) = &facts.sysfs_problem {
        problems.push(problem.clone());
    }
    match facts.probe {
        Err(stall) => problems.push(format!(
            "probing {mount_point} {stall}; the device may be hung"
        )),
        Ok(observation) => {
            if let Err(errno) = observation.statfs {
                problems.push(format!("statfs on {mount_point} failed: {}", errno.desc()));
            }
            if let Err(errno) = observation.root_open {
                problems.push(format!(
                    "opening the root of {mount_point} failed: {}",
                    errno.desc()
                ));
            }
        }
    }
    Condition { problems }
}

/// Judges a raw block volume from whether its sysfs entry exists and what
/// reading its size through the device node returned.
pub fn assess_block_device(
    dev_path: &Path,
    devno: &str,
    device_present: bool,
    size: Result<&u64, &String>,
) -> Condition {
    let mut problems = Vec::new();
    if !device_present {
        problems.push(format!("device {devno} is gone from sysfs"));
    }
    match size {
        Err(reason) => problems.push(format!(
            "reading the size of {} failed: {reason}",
            dev_path.display()
        )),
        // A detached loop device or a drive without its medium.
        Ok(0) => problems.push(format!(
            "device {} ({devno}) has 0 bytes; its backing storage is gone",
            dev_path.display()
        )),
        Ok(_) => {}
    }
    Condition { problems }
}

/// Describes a device that now has fewer bytes than the filesystem on it
/// counts in `statfs`, as when the host shrinks a disk under a mounted
/// filesystem: reads past the end fail, yet statfs and the root still work.
/// The statfs total leaves out overhead, so it never exceeds the size the
/// filesystem was made with. btrfs is skipped, because its total spans all
/// of its devices.
pub fn shrunk_device_problem(
    fstype: &str,
    devno: &str,
    device_bytes: u64,
    counts: &FsCounts,
) -> Option<String> {
    let fs_bytes = counts.total_bytes();
    (fstype != "btrfs" && device_bytes < fs_bytes).then(|| {
        format!(
            "device {devno} has {device_bytes} bytes, smaller than the filesystem's \
             {fs_bytes} bytes; the disk was shrunk under the mounted filesystem, so give it \
             back its size"
        )
    })
}

/// Checks what the filesystem driver exports about device `device_name` in
/// sysfs: an ext4 error count above 0, or no xfs entry for a mounted xfs.
pub fn fs_sysfs_problem(sysfs_root: &Path, fstype: &str, device_name: &str) -> Option<String> {
    match fstype {
        "ext2" | "ext3" | "ext4" => {
            let path = sysfs_root
                .join("fs/ext4")
                .join(device_name)
                .join("errors_count");
            let count: u64 = crate::device::read_attribute(&path).ok()?.parse().ok()?;
            (count > 0).then(|| {
                format!(
                    "ext4 recorded {count} errors on {device_name} ({}); unmount it and run e2fsck",
                    path.display()
                )
            })
        }
        "xfs" => {
            let xfs_root = sysfs_root.join("fs/xfs");
            let entry: PathBuf = xfs_root.join(device_name);
            (xfs_root.is_dir() && !entry.exists()).then(|| {
                format!(
                    "xfs has no sysfs entry {} for the mounted device",
                    entry.display()
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo;

    const COUNTS: FsCounts = FsCounts {
        blocks: 10,
        blocks_free: 5,
        blocks_available: 5,
        fragment_size: 4096,
        files: 10,
        files_free: 5,
    };

    fn healthy() -> FsObservation {
        FsObservation {
            statfs: Ok(COUNTS),
            root_open: Ok(()),
        }
    }

    fn entry(line: &str) -> MountInfoEntry {
        mountinfo::parse(line).pop().expect("test line parses")
    }

    fn facts<'a>(
        mount: Option<&'a MountInfoEntry>,
        probe: Result<&'a FsObservation, &'a ProbeStall>,
    ) -> FsFacts<'a> {
        FsFacts {
            mount_point: Path::new("/run/storage/v"),
            devno: "7:3",
            device_present: true,
            mount,
            sysfs_problem: None,
            probe,
        }
    }

    #[test]
    fn healthy_filesystem_is_ok() {
        let rw = entry("45 22 7:3 / /run/storage/v rw,relatime - xfs /dev/loop3 rw,noquota");
        let observation = healthy();
        let condition = assess_filesystem(&facts(Some(&rw), Ok(&observation)));
        assert!(!condition.is_abnormal());
        assert_eq!(condition.message(), "OK");
        assert!(!condition.to_proto().abnormal);
    }

    #[test]
    fn remounted_read_only_is_abnormal() {
        let ro = entry("45 22 7:3 / /run/storage/v rw - ext4 /dev/loop3 ro,errors=remount-ro");
        let observation = healthy();
        let condition = assess_filesystem(&facts(Some(&ro), Ok(&observation)));
        assert!(condition.is_abnormal());
        assert!(
            condition.message().contains("remounted read-only"),
            "{}",
            condition.message()
        );
    }

    #[test]
    fn mounted_read_only_is_ok() {
        let ro = entry("45 22 7:3 / /run/storage/v ro,relatime - ext4 /dev/loop3 ro");
        let observation = healthy();
        assert!(!assess_filesystem(&facts(Some(&ro), Ok(&observation))).is_abnormal());
    }

    #[test]
    fn io_errors_are_abnormal() {
        let rw = entry("45 22 7:3 / /run/storage/v rw - xfs /dev/loop3 rw");
        let observation = FsObservation {
            statfs: Err(Errno::EIO),
            root_open: Err(Errno::EIO),
        };
        let condition = assess_filesystem(&facts(Some(&rw), Ok(&observation)));
        assert_eq!(condition.problems.len(), 2, "{:?}", condition.problems);
        assert!(condition.problems[0].starts_with("statfs on /run/storage/v failed"));
        assert!(condition.problems[1].starts_with("opening the root"));
    }

    #[test]
    fn stalled_probe_is_abnormal() {
        let rw = entry("45 22 7:3 / /run/storage/v rw - xfs /dev/loop3 rw");
        let stall = ProbeStall::TimedOut {
            waited: std::time::Duration::from_secs(5),
        };
        let condition = assess_filesystem(&facts(Some(&rw), Err(&stall)));
        assert!(condition.is_abnormal());
        assert!(
            condition.message().contains("did not return within 5s"),
            "{}",
            condition.message()
        );
    }

    #[test]
    fn gone_device_and_missing_mount() {
        let observation = healthy();
        let mut facts = facts(None, Ok(&observation));
        facts.device_present = false;
        let condition = assess_filesystem(&facts);
        assert_eq!(condition.problems.len(), 2, "{:?}", condition.problems);
        assert_eq!(condition.problems[0], "device 7:3 is gone from sysfs");
        assert!(condition.problems[1].contains("no longer in the mount table"));
    }

    #[test]
    fn ext4_errors_count_from_fake_sysfs() {
        let sysfs = tempfile::tempdir().unwrap();
        let device = sysfs.path().join("fs/ext4/vdb");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("errors_count"), "0\n").unwrap();
        assert_eq!(fs_sysfs_problem(sysfs.path(), "ext4", "vdb"), None);

        std::fs::write(device.join("errors_count"), "3\n").unwrap();
        let problem = fs_sysfs_problem(sysfs.path(), "ext4", "vdb").expect("errors reported");
        assert!(
            problem.starts_with("ext4 recorded 3 errors on vdb"),
            "{problem}"
        );
        assert_eq!(
            fs_sysfs_problem(sysfs.path(), "ext4", "vdc"),
            None,
            "no entry, no claim"
        );
    }

    #[test]
    fn xfs_entry_from_fake_sysfs() {
        let sysfs = tempfile::tempdir().unwrap();
        assert_eq!(
            fs_sysfs_problem(sysfs.path(), "xfs", "vdb"),
            None,
            "xfs not loaded"
        );
        std::fs::create_dir_all(sysfs.path().join("fs/xfs/vdb")).unwrap();
        assert_eq!(fs_sysfs_problem(sysfs.path(), "xfs", "vdb"), None);
        let problem = fs_sysfs_problem(sysfs.path(), "xfs", "vdc").expect("missing entry");
        assert!(problem.contains("fs/xfs/vdc"), "{problem}");
    }

    #[test]
    fn shrunk_device_cases() {
        let fs_bytes = COUNTS.total_bytes();
        let problem = shrunk_device_problem("ext4", "7:3", fs_bytes - 512, &COUNTS).unwrap();
        assert!(problem.contains("7:3"), "{problem}");
        assert!(problem.contains(&fs_bytes.to_string()), "{problem}");
        assert_eq!(shrunk_device_problem("xfs", "7:3", fs_bytes, &COUNTS), None);
        assert_eq!(shrunk_device_problem("btrfs", "7:3", 0, &COUNTS), None);
    }

    #[test]
    fn block_device_conditions() {
        let path = Path::new("/dev/vdb");
        assert!(!assess_block_device(path, "254:16", true, Ok(&1)).is_abnormal());
        let gone = assess_block_device(path, "254:16", false, Err(&"No such device".to_string()));
        assert_eq!(gone.problems.len(), 2, "{:?}", gone.problems);
        assert!(gone
            .message()
            .contains("reading the size of /dev/vdb failed: No such device"));
        let empty = assess_block_device(path, "254:16", true, Ok(&0));
        assert_eq!(
            empty.message(),
            "device /dev/vdb (254:16) has 0 bytes; its backing storage is gone"
        );
    }
}
