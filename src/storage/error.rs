//! Errors of the storage manager and the ttrpc codes they map to.

use std::path::PathBuf;

use nix::errno::Errno;

use crate::device::DeviceError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("invalid storage {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "filesystem type {fstype:?} is not supported by this kernel (not in /proc/filesystems \
         and no fs-{fstype} module); supported block filesystems: {supported}"
    )]
    UnsupportedFilesystem { fstype: String, supported: String },
    #[error(
        "filesystem type {fstype:?} does not mount a block device (the kernel lists it as \
         nodev); use a block filesystem: {supported}"
    )]
    NodevFilesystem { fstype: String, supported: String },
    #[error("reading /proc/filesystems failed")]
    ReadKernelFilesystems {
        #[source]
        error: std::io::Error,
    },
    #[error(
        "device {device} holds {found}, so it cannot be mounted as {fstype}; \
         check the storage's fstype or format the disk"
    )]
    FilesystemMismatch {
        device: PathBuf,
        fstype: String,
        found: String,
    },
    #[error("reading the superblock of {device} failed")]
    ReadSuperblock {
        device: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "mount point {mount_point} already has {mounted} mounted, not the requested {requested}; \
         use another mount point or remove the storage first"
    )]
    DeviceConflict {
        mount_point: PathBuf,
        mounted: String,
        requested: String,
    },
    #[error(
        "mount point {mount_point} lies inside or over the mount at {other}; \
         choose a mount point outside it or remove that storage first"
    )]
    NestedMountPoint {
        mount_point: PathBuf,
        other: PathBuf,
    },
    #[error("creating mount point {path} failed")]
    CreateMountPoint {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "resolving {field} {path} inside {root} failed; check that {root} exists \
         (a container rootfs must be created before CreateContainer)"
    )]
    Resolve {
        field: &'static str,
        root: PathBuf,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "mounting {device} ({fstype}) on {mount_point} with options {options:?} failed; \
         check the options and the filesystem on the disk"
    )]
    Mount {
        device: PathBuf,
        fstype: String,
        mount_point: PathBuf,
        /// The request's options as given, for the message.
        options: String,
        #[source]
        error: Errno,
    },
    #[error("remounting {mount_point} with flags {flags:?} failed")]
    Remount {
        mount_point: PathBuf,
        flags: String,
        #[source]
        error: Errno,
    },
    #[error("setting propagation {flags:?} on {mount_point} failed")]
    SetPropagation {
        mount_point: PathBuf,
        flags: String,
        #[source]
        error: Errno,
    },
    #[error("binding {source_path} onto {target} failed")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        error: Errno,
    },
    #[error("unmounting {mount_point} failed")]
    Unmount {
        mount_point: PathBuf,
        #[source]
        error: Errno,
    },
    #[error("applying fsGroup to {path} failed")]
    FsGroup {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("reading /proc/self/mountinfo failed")]
    ReadMountinfo {
        #[source]
        error: std::io::Error,
    },
    #[error("reading state file {path} failed")]
    LoadState {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("state file {path} is not valid; fix or delete it (mounts are then not tracked)")]
    ParseState {
        path: PathBuf,
        #[source]
        error: serde_json::Error,
    },
    #[error("writing state file {path} failed")]
    SaveState {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl StorageError {
    /// Returns the ttrpc status code for a request that fails with this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            StorageError::Device(error) => error.code(),
            StorageError::Invalid { .. }
            | StorageError::UnsupportedFilesystem { .. }
            | StorageError::NodevFilesystem { .. } => Code::INVALID_ARGUMENT,
            StorageError::FilesystemMismatch { .. }
            | StorageError::DeviceConflict { .. }
            | StorageError::NestedMountPoint { .. } => Code::FAILED_PRECONDITION,
            StorageError::Resolve { error, .. } => {
                match Errno::from_raw(error.raw_os_error().unwrap_or(0)) {
                    Errno::ENOENT => Code::NOT_FOUND,
                    // A path through a file, or a loop of links: bad input.
                    Errno::ENOTDIR | Errno::ELOOP => Code::INVALID_ARGUMENT,
                    _ => Code::INTERNAL,
                }
            }
            StorageError::Mount { error, .. } | StorageError::Remount { error, .. } => {
                errno_code(*error)
            }
            StorageError::Bind { error, .. } | StorageError::Unmount { error, .. } => {
                errno_code(*error)
            }
            _ => Code::INTERNAL,
        }
    }
}

/// Codes for mount(2) failures: EINVAL is most often a bad option or a
/// damaged filesystem, EBUSY a mount point in use.
fn errno_code(error: Errno) -> ttrpc::Code {
    match error {
        Errno::EINVAL => ttrpc::Code::INVALID_ARGUMENT,
        Errno::EBUSY => ttrpc::Code::FAILED_PRECONDITION,
        Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => ttrpc::Code::NOT_FOUND,
        _ => ttrpc::Code::INTERNAL,
    }
}
