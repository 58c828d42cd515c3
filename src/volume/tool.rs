//! Grow tools: which one a filesystem type needs, the capability its
//! ioctl checks, and where its binary is.

use std::path::PathBuf;

use crate::storage::ManagedVolume;

/// Directories searched for grow tools after `PATH`, because a guest init
/// often starts the agent with a `PATH` that lacks the sbin directories.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Capability numbers from <linux/capability.h>.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// The grow tool of a filesystem type and the argument it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GrowTool {
    /// `resize2fs <device>`.
    Resize2fs,
    /// `xfs_growfs <mount point>`; the device form fails on xfsprogs 6.x.
    XfsGrowfs,
    /// `btrfs filesystem resize max <mount point>`.
    Btrfs,
}

impl GrowTool {
    pub(super) fn for_fstype(fstype: &str) -> Option<GrowTool> {
        match fstype {
            "ext2" | "ext3" | "ext4" => Some(GrowTool::Resize2fs),
            "xfs" => Some(GrowTool::XfsGrowfs),
            "btrfs" => Some(GrowTool::Btrfs),
            _ => None,
        }
    }

    pub(super) fn program(self) -> &'static str {
        match self {
            GrowTool::Resize2fs => "resize2fs",
            GrowTool::XfsGrowfs => "xfs_growfs",
            GrowTool::Btrfs => "btrfs",
        }
    }

    /// Returns the capability that the kernel's grow ioctl checks and its
    /// name: `ext4_resize_begin` and `btrfs_ioctl_resize` in Linux
    /// fs/ext4/resize.c and fs/btrfs/ioctl.c, and `XFS_IOC_FSGROWFSDATA`
    /// in fs/xfs/xfs_ioctl.c. Without it the tool fails with EPERM.
    pub(super) fn capability(self) -> (u32, &'static str) {
        match self {
            GrowTool::Resize2fs => (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
            GrowTool::XfsGrowfs | GrowTool::Btrfs => (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        }
    }

    /// Returns the path the tool works on and its full argument vector.
    pub(super) fn arguments(self, volume: &ManagedVolume) -> (PathBuf, Vec<PathBuf>) {
        match self {
            GrowTool::Resize2fs => (volume.dev_path.clone(), vec![volume.dev_path.clone()]),
            GrowTool::XfsGrowfs => (volume.mount_point.clone(), vec![volume.mount_point.clone()]),
            GrowTool::Btrfs => (
                volume.mount_point.clone(),
                vec![
                    "filesystem".into(),
                    "resize".into(),
                    "max".into(),
                    volume.mount_point.clone(),
                ],
            ),
        }
    }
}

/// Joins the non-empty lines of a tool's stdout and stderr with "; ", so
/// the output fits in one error message and one log line.
pub(super) fn one_line(streams: &[&[u8]]) -> String {
    let text: Vec<String> = streams
        .iter()
        .map(|stream| String::from_utf8_lossy(stream))
        .flat_map(|stream| {
            stream
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    text.join("; ")
}

/// Tells whether this process has `capability` in its effective set, from
/// the `CapEff` line of `/proc/self/status`. When that line cannot be read
/// it returns true, so that the tool runs and reports for itself.
pub(super) fn has_effective_capability(capability: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
    effective.map_or(true, |mask| {
        capability >= 64 || mask & (1 << capability) != 0
    })
}

/// Finds `name` in `PATH`, then in [`TOOL_DIRS`].
pub(super) fn find_tool(name: &str) -> std::io::Result<PathBuf> {
    find_tool_in(name, &std::env::var_os("PATH").unwrap_or_default())
}

/// Finds the executable `name` in the directories of `path_var`, then in
/// [`TOOL_DIRS`]. Relative and empty entries (the working directory) are
/// skipped, so that the agent, which runs as root, never runs a tool from
/// wherever it was started. A file without an execute bit is skipped too,
/// as execvp(3) does.
fn find_tool_in(name: &str, path_var: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    let dirs = std::env::split_paths(path_var).chain(TOOL_DIRS.iter().map(PathBuf::from));
    for dir in dirs.filter(|dir| dir.is_absolute()) {
        let candidate = dir.join(name);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "no executable {name} in the absolute PATH directories nor in {}",
            TOOL_DIRS.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn volume(fstype: &str) -> ManagedVolume {
        ManagedVolume {
            mount_point: PathBuf::from("/run/storage/v"),
            driver: "blk".into(),
            source: "02/00".into(),
            fstype: fstype.into(),
            dev_path: PathBuf::from("/dev/vdb"),
            major: 254,
            minor: 16,
        }
    }

    #[test]
    fn tool_choice_by_fstype() {
        assert_eq!(GrowTool::for_fstype("ext4"), Some(GrowTool::Resize2fs));
        assert_eq!(GrowTool::for_fstype("ext3"), Some(GrowTool::Resize2fs));
        assert_eq!(GrowTool::for_fstype("xfs"), Some(GrowTool::XfsGrowfs));
        assert_eq!(GrowTool::for_fstype("btrfs"), Some(GrowTool::Btrfs));
        assert_eq!(GrowTool::for_fstype("vfat"), None);
    }

    #[test]
    fn tool_arguments() {
        let (target, arguments) = GrowTool::Resize2fs.arguments(&volume("ext4"));
        assert_eq!(target, Path::new("/dev/vdb"));
        assert_eq!(arguments, vec![PathBuf::from("/dev/vdb")]);
        let (target, arguments) = GrowTool::XfsGrowfs.arguments(&volume("xfs"));
        assert_eq!(target, Path::new("/run/storage/v"));
        assert_eq!(arguments, vec![PathBuf::from("/run/storage/v")]);
        let (_, arguments) = GrowTool::Btrfs.arguments(&volume("btrfs"));
        let expected: Vec<PathBuf> = ["filesystem", "resize", "max", "/run/storage/v"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(arguments, expected);
    }

    #[test]
    fn tool_output_on_one_line() {
        let joined = one_line(&[b"first\n\n  second \n", b"resize2fs: denied\n"]);
        assert_eq!(joined, "first; second; resize2fs: denied");
        assert_eq!(one_line(&[b"", b"\n"]), "");
    }

    #[test]
    fn find_tool_skips_relative_and_non_executable() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        let runnable = dir.path().join("runnable");
        std::fs::create_dir(&plain).unwrap();
        std::fs::create_dir(&runnable).unwrap();
        let name = "volume-test-grow-tool";
        std::fs::write(plain.join(name), "").unwrap();
        std::fs::write(runnable.join(name), "").unwrap();
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(runnable.join(name), mode).unwrap();

        let path_var = std::env::join_paths([&plain, &runnable]).unwrap();
        assert_eq!(
            find_tool_in(name, &path_var).unwrap(),
            runnable.join(name),
            "a file without an execute bit is skipped"
        );

        // A relative entry that leads from the working directory to the
        // tool, as `../../tmp/...`, is still skipped.
        let relative = runnable.strip_prefix("/").unwrap();
        let cwd_relative = std::env::current_dir()
            .unwrap()
            .ancestors()
            .count()
            .saturating_sub(1);
        let up: PathBuf = std::iter::repeat("..").take(cwd_relative).collect();
        let path_var = std::env::join_paths([up.join(relative)]).unwrap();
        assert!(
            up.join(relative).join(name).is_file(),
            "the relative entry reaches the tool"
        );
        let error = find_tool_in(name, &path_var).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn find_tool_missing() {
        let error = find_tool("no-such-grow-tool").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        assert!(error.to_string().contains("no-such-grow-tool"));
    }
}
