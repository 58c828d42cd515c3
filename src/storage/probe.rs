//! Checks before mounting: does the kernel know the filesystem type, and
//! does the device hold that filesystem.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::StorageError;

/// Filesystems recognised from their superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superblock {
    /// ext2, ext3 and ext4 share the magic 0xEF53 at byte 1080.
    Ext,
    /// xfs starts with "XFSB".
    Xfs,
}

impl Superblock {
    fn name(self) -> &'static str {
        match self {
            Superblock::Ext => "ext2/ext3/ext4",
            Superblock::Xfs => "xfs",
        }
    }

    /// The superblock a filesystem type must have, for the types probed.
    fn expected_for(fstype: &str) -> Option<Superblock> {
        match fstype {
            "ext2" | "ext3" | "ext4" => Some(Superblock::Ext),
            "xfs" => Some(Superblock::Xfs),
            _ => None,
        }
    }
}

const EXT_MAGIC_OFFSET: u64 = 1080;
const EXT_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
const XFS_MAGIC: &[u8; 4] = b"XFSB";

/// Reads the first 2 KiB of `device` and names the filesystem found there.
pub fn read_superblock(device: &Path) -> std::io::Result<Option<Superblock>> {
    let file = std::fs::File::open(device)?;
    let mut head = [0u8; 2048];
    let mut filled = 0;
    while filled < head.len() {
        let count = file.read_at(&mut head[filled..], filled as u64)?;
        if count == 0 {
            break;
        }
        filled += count;
    }
    Ok(classify(&head[..filled]))
}

fn classify(head: &[u8]) -> Option<Superblock> {
    let ext_offset = EXT_MAGIC_OFFSET as usize;
    if head.get(..4) == Some(XFS_MAGIC.as_slice()) {
        Some(Superblock::Xfs)
    } else if head.get(ext_offset..ext_offset + 2) == Some(EXT_MAGIC.as_slice()) {
        Some(Superblock::Ext)
    } else {
        None
    }
}

/// Checks that `device` holds a filesystem `fstype` can mount, for the types
/// whose superblock is known; other types are left to the kernel.
pub fn check_superblock(device: &Path, fstype: &str) -> Result<(), StorageError> {
    let Some(expected) = Superblock::expected_for(fstype) else {
        return Ok(());
    };
    let found = read_superblock(device).map_err(|error| StorageError::ReadSuperblock {
        device: device.to_path_buf(),
        error,
    })?;
    if found == Some(expected) {
        return Ok(());
    }
    Err(StorageError::FilesystemMismatch {
        device: device.to_path_buf(),
        fstype: fstype.to_string(),
        found: match found {
            Some(other) => format!("an {} filesystem", other.name()),
            None => "no ext2/ext3/ext4 or xfs filesystem".to_string(),
        },
    })
}

/// Checks that `fstype` is a plausible name and that the kernel supports it:
/// it is listed in `/proc/filesystems`, or a module alias `fs-<type>` exists
/// so the kernel loads it on the first mount.
pub fn check_fstype(fstype: &str) -> Result<(), StorageError> {
    let valid_name = fstype
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'));
    if fstype.is_empty() || !valid_name || fstype.len() > 64 {
        return Err(StorageError::Invalid {
            field: "fstype",
            value: fstype.to_string(),
            reason: "is not a filesystem type name (letters, digits, '.', '_' and '-')".into(),
        });
    }
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map_err(|error| StorageError::ReadKernelFilesystems { error })?;
    if kernel_lists_nodev(&listed, fstype) {
        // A nodev filesystem (tmpfs, proc, sysfs...) ignores the device, so
        // the container would get a kernel filesystem instead of its volume.
        return Err(StorageError::NodevFilesystem {
            fstype: fstype.to_string(),
            supported: block_filesystems(&listed).join(", "),
        });
    }
    // NOTE: a type that only a module alias provides is not known to need a
    // device until the module is loaded, so a nodev module type passes here.
    if kernel_lists(&listed, fstype) || module_alias_exists(fstype) {
        return Ok(());
    }
    Err(StorageError::UnsupportedFilesystem {
        fstype: fstype.to_string(),
        supported: block_filesystems(&listed).join(", "),
    })
}

fn kernel_lists(proc_filesystems: &str, fstype: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some(fstype))
}

fn kernel_lists_nodev(proc_filesystems: &str, fstype: &str) -> bool {
    proc_filesystems.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("nodev") && words.next() == Some(fstype)
    })
}

/// Filesystems that need a device (the lines without `nodev`).
fn block_filesystems(proc_filesystems: &str) -> Vec<&str> {
    proc_filesystems
        .lines()
        .filter(|line| !line.starts_with("nodev"))
        .filter_map(|line| line.split_whitespace().last())
        .collect()
}

fn module_alias_exists(fstype: &str) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let path = format!("/lib/modules/{}/modules.alias", release.trim());
    let Ok(aliases) = std::fs::read_to_string(path) else {
        return false;
    };
    let alias_prefix = format!("alias fs-{fstype} ");
    aliases.lines().any(|line| line.starts_with(&alias_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_finds_ext_and_xfs() {
        let mut head = vec![0u8; 2048];
        assert_eq!(classify(&head), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(classify(&head), Some(Superblock::Ext));
        head[..4].copy_from_slice(b"XFSB");
        assert_eq!(classify(&head), Some(Superblock::Xfs));
        assert_eq!(classify(&head[..3]), None);
    }

    #[test]
    fn kernel_lists_matches_whole_names() {
        let text = "nodev\tsysfs\n\text4\n\txfs\nnodev\ttmpfs\n";
        assert!(kernel_lists(text, "xfs"));
        assert!(kernel_lists(text, "tmpfs"));
        assert!(!kernel_lists(text, "ext"));
        assert!(kernel_lists_nodev(text, "tmpfs"));
        assert!(!kernel_lists_nodev(text, "xfs"));
        assert!(!kernel_lists_nodev(text, "nodev"));
        assert_eq!(block_filesystems(text), vec!["ext4", "xfs"]);
    }

    #[test]
    fn check_fstype_rejects_bad_names() {
        for name in ["../xfs", "ext4,ro", "", "a b"] {
            let error = check_fstype(name).unwrap_err();
            assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{name:?}");
        }
        let error = check_fstype("nosuchfs").unwrap_err();
        assert!(
            matches!(error, StorageError::UnsupportedFilesystem { .. }),
            "{error}"
        );
    }
}
