//! fsGroup: gives a pod's supplemental group access to a volume.
//!
//! The rules follow `SetVolumeOwnership` in the Kubernetes kubelet
//! (`pkg/volume/volume_linux.go`). Every file and directory gets the group
//! and the bits 0660 (0440 on a read-only volume). Directories also get
//! group search and setgid, so that new files inherit the group. Symbolic
//! links are skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid};

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
    walk(root, metadata.dev(), group_id, read_only)?;
    Ok(true)
}

/// Checks whether the root already has the group and the mask bits.
fn root_matches(metadata: &std::fs::Metadata, group_id: u32, read_only: bool) -> bool {
    let required = mask(metadata.is_dir(), read_only);
    metadata.gid() == group_id && metadata.mode() & required == required
}

fn walk(path: &Path, device: u64, group_id: u32, read_only: bool) -> Result<(), StorageError> {
    let metadata = std::fs::symlink_metadata(path).map_err(|error| fs_group_error(path, error))?;
    if metadata.dev() != device || metadata.file_type().is_symlink() {
        return Ok(());
    }
    set_ownership(path, &metadata, group_id, read_only)?;
    if metadata.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|error| fs_group_error(path, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| fs_group_error(path, error))?;
            walk(&entry.path(), device, group_id, read_only)?;
        }
    }
    Ok(())
}

fn set_ownership(
    path: &Path,
    metadata: &std::fs::Metadata,
    group_id: u32,
    read_only: bool,
) -> Result<(), StorageError> {
    nix::unistd::fchownat(
        None,
        path,
        None::<Uid>,
        Some(Gid::from_raw(group_id)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| fs_group_error(path, errno.into()))?;
    let mode = metadata.mode() | mask(metadata.is_dir(), read_only);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|error| fs_group_error(path, error))
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
