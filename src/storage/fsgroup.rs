//! fsGroup: gives a pod's supplemental group access to a volume.
//!
//! The rules follow `SetVolumeOwnership` in the Kubernetes kubelet
//! (`pkg/volume/volume_linux.go`). Every file and directory gets the group
//! and the bits 0660 (0440 on a read-only volume). Directories also get
//! group search and setgid, so that new files inherit the group. Symbolic
//! links are skipped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::StorageError;

/// `types.FSGroupChangePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangePolicy {
    /// Walk the whole volume every time.
    Always,
    /// Walk only when the root directory does not already match.
    OnRootMismatch,
}

/// Permission bits that Kubernetes adds to files (and directories).
const READ_WRITE_MASK: u32 = 0o660;
const READ_ONLY_MASK: u32 = 0o440;
/// Bits that Kubernetes adds to directories on top of the file mask.
const DIRECTORY_EXTRA: u32 = 0o110 | libc::S_ISGID;

fn mask(is_directory: bool, read_only: bool) -> u32 {
    let base = if read_only {
        READ_ONLY_MASK
    } else {
        READ_WRITE_MASK
    };
    if is_directory {
        base | DIRECTORY_EXTRA
    } else {
        base
    }
}

/// Applies `group_id` below `root` according to `policy` and returns
/// whether it walked the tree. The walk stays on the filesystem of `root`.
///
/// Every entry is opened relative to its parent's descriptor without
/// following links, and changed through that descriptor, so an entry
/// swapped for a symbolic link during the walk is never followed.
pub fn apply_fs_group(
    root: &Path,
    group_id: u32,
    policy: ChangePolicy,
    read_only: bool,
) -> Result<bool, StorageError> {
    let metadata = std::fs::symlink_metadata(root).map_err(|error| fs_group_error(root, error))?;
    if policy == ChangePolicy::OnRootMismatch && root_matches(&metadata, group_id, read_only) {
        return Ok(false);
    }
    let fd = rustix::fs::open(root, path_flags(), Mode::empty())
        .map_err(|errno| fs_group_error(root, errno.into()))?;
    walk(fd, root, metadata.dev(), group_id, read_only)?;
    Ok(true)
}

/// Checks whether the root already has the group and the mask bits.
fn root_matches(metadata: &std::fs::Metadata, group_id: u32, read_only: bool) -> bool {
    let required = mask(metadata.is_dir(), read_only);
    metadata.gid() == group_id && metadata.mode() & required == required
}

/// Flags of the `O_PATH` descriptor held for each entry of the walk.
fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Applies the group to the entry behind `fd` (an `O_PATH` descriptor) and,
/// for a directory, to everything below it. `path` is for messages only.
fn walk(
    fd: OwnedFd,
    path: &Path,
    device: u64,
    group_id: u32,
    read_only: bool,
) -> Result<(), StorageError> {
    let fail = |errno: Errno| fs_group_error(path, errno.into());
    let stat = rustix::fs::fstat(&fd).map_err(fail)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if stat.st_dev != device || file_type == FileType::Symlink {
        return Ok(());
    }
    let is_directory = file_type == FileType::Directory;
    set_ownership(&fd, stat.st_mode, is_directory, group_id, read_only).map_err(fail)?;
    if !is_directory {
        return Ok(());
    }

    let directory = rustix::fs::openat(
        &fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    for entry in rustix::fs::Dir::read_from(&directory).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let child_path = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let child = match rustix::fs::openat(&directory, name, path_flags(), Mode::empty()) {
            Ok(child) => child,
            // Removed since the directory was read.
            Err(Errno::NOENT) => continue,
            Err(errno) => return Err(fs_group_error(&child_path, errno.into())),
        };
        walk(child, &child_path, device, group_id, read_only)?;
    }
    Ok(())
}

/// Sets the group and adds the mask bits through `fd`, an `O_PATH`
/// descriptor of a file or directory.
fn set_ownership(
    fd: &OwnedFd,
    mode: u32,
    is_directory: bool,
    group_id: u32,
    read_only: bool,
) -> Result<(), Errno> {
    rustix::fs::chownat(
        fd,
        "",
        None,
        Some(rustix::fs::Gid::from_raw(group_id)),
        AtFlags::EMPTY_PATH,
    )?;
    // fchmod(2) rejects an O_PATH descriptor, but chmod(2) on its
    // /proc/self/fd link changes the inode the descriptor refers to.
    let mode = (mode | mask(is_directory, read_only)) & 0o7777;
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(mode))
}

fn fs_group_error(path: &Path, error: std::io::Error) -> StorageError {
    StorageError::FsGroup {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn fs_group_sets_masks_for_files_and_directories() {
        let root = tempfile::tempdir().unwrap();
        let directory = root.path().join("sub");
        std::fs::create_dir(&directory).unwrap();
        std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = directory.join("file");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A link to a file outside the volume must not reach that file.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(outside.path(), directory.join("link")).unwrap();
        // The caller's own group always works for chown, root or not.
        let group_id = nix::unistd::getegid().as_raw();

        let walked = apply_fs_group(root.path(), group_id, ChangePolicy::Always, false).unwrap();

        assert!(walked);
        assert_eq!(mode(&directory), 0o700 | 0o660 | 0o110 | libc::S_ISGID);
        assert_eq!(mode(&file), 0o660);
        assert_eq!(std::fs::metadata(&file).unwrap().gid(), group_id);
        assert_eq!(mode(outside.path()), 0o600, "links are not followed");
    }

    #[test]
    fn fs_group_survives_symlink_swap_race() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        // Two names that a second thread keeps exchanging: at any moment one
        // is a regular file and the other a link to the file outside.
        let file = root.path().join("file");
        let link = root.path().join("link");
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let group_id = nix::unistd::getegid().as_raw();

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let (file, link) = (file.clone(), link.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &file,
                        rustix::fs::CWD,
                        &link,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            })
        };
        let started = std::time::Instant::now();
        let mut walks = 0;
        while started.elapsed() < std::time::Duration::from_secs(2) {
            // A walk may fail on an entry that vanished under it; that is fine
            // as long as it never changes the file outside.
            let _ = apply_fs_group(root.path(), group_id, ChangePolicy::Always, false);
            walks += 1;
            if mode(outside.path()) != 0o600 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            mode(outside.path()),
            0o600,
            "a link swapped in during the walk was followed (after {walks} walks)"
        );
    }

    #[test]
    fn fs_group_read_only_gets_group_read() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let group_id = nix::unistd::getegid().as_raw();

        apply_fs_group(root.path(), group_id, ChangePolicy::Always, true).unwrap();

        assert_eq!(mode(&file), 0o640);
    }

    #[test]
    fn on_root_mismatch_skips_matching_root() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let group_id = nix::unistd::getegid().as_raw();
        let root_mode = 0o770 | libc::S_ISGID;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(root_mode)).unwrap();

        let walked =
            apply_fs_group(root.path(), group_id, ChangePolicy::OnRootMismatch, false).unwrap();

        assert!(!walked);
        assert_eq!(mode(&file), 0o600, "the walk must not touch files");

        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let walked =
            apply_fs_group(root.path(), group_id, ChangePolicy::OnRootMismatch, false).unwrap();
        assert!(walked);
        assert_eq!(mode(&file), 0o660);
    }
}
