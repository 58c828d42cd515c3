//! Reads `/proc/self/mountinfo` (proc(5)) to learn what is mounted where.

use std::path::{Path, PathBuf};

/// One line of mountinfo, with the fields the storage manager uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the filesystem that is mounted (`/` unless a bind).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Reads and parses the mount table of this process. The kernel writes
/// path bytes that are not UTF-8 as they are, so they are decoded lossily:
/// such a mount matches no path, and the other entries still parse.
pub fn read_mountinfo() -> std::io::Result<Vec<MountEntry>> {
    let bytes = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&String::from_utf8_lossy(&bytes)))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Finds the top-most mount at `mount_point`. The kernel lists mounts in
/// the order they were made, so a later line covers an earlier one.
pub fn find_mount<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.mount_point == mount_point)
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let _parent_id = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let mut after = after.split(' ');
    let fstype = unescape(after.next()?);
    let source = unescape(after.next().unwrap_or_default());
    Some(MountEntry {
        mount_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        fstype,
        source,
    })
}

/// Decodes the octal escapes (`\040` for space, `\011` tab, `\012` newline,
/// `\134` backslash) that the kernel writes in mountinfo paths.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4);
        let value = octal.filter(|_| bytes[index] == b'\\').and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match value {
            Some(value) => {
                decoded.push(value);
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 7:3 / /run/storage/with\\040space rw,nosuid shared:5 - xfs /dev/loop3 rw,attr2
31 30 7:3 /sub /run/c1/rootfs/data rw - xfs /dev/loop3 rw
32 22 7:4 / /run/storage/with\\040space rw - ext4 /dev/loop4 rw
bad line without separator
";

    #[test]
    fn mountinfo_decodes_octal_escapes() {
        let entries = parse_mountinfo(SAMPLE);
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[1].mount_point,
            PathBuf::from("/run/storage/with space")
        );
        assert_eq!(entries[1].fstype, "xfs");
        assert_eq!(entries[1].source, "/dev/loop3");
        assert_eq!((entries[1].major, entries[1].minor), (7, 3));
        assert_eq!(entries[2].root, PathBuf::from("/sub"));
    }

    #[test]
    fn find_mount_returns_topmost() {
        let entries = parse_mountinfo(SAMPLE);
        let top = find_mount(&entries, Path::new("/run/storage/with space")).unwrap();
        assert_eq!(top.mount_id, 32);
        assert_eq!(top.minor, 4);
        assert!(find_mount(&entries, Path::new("/run/storage")).is_none());
    }

    #[test]
    fn unescape_handles_backslash_and_partial_escapes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("tab\\011x\\012"), "tab\tx\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("not\\9998"), "not\\9998");
    }
}
