//! Errors of the volume service and their ttrpc codes.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume path {path} not found; give an existing path in the guest")]
    NotFound { path: PathBuf },

    #[error("volume path {path} is invalid: it {reason}")]
    InvalidPath { path: PathBuf, reason: String },

    #[error("resolving volume path {path} failed")]
    ResolvePath {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },

    #[error("statfs on {path} failed")]
    Statfs {
        path: PathBuf,
        #[source]
        error: nix::Error,
    },

    #[error("{probe} on {path} did not return within {waited:?}; the device may be hung")]
    ProbeTimeout {
        probe: &'static str,
        path: PathBuf,
        waited: Duration,
    },

    #[error("{path} is not on a volume this agent manages; only managed volumes can be resized")]
    NotManaged { path: PathBuf },

    #[error("reading the mount table failed")]
    ReadMountinfo {
        #[source]
        error: std::io::Error,
    },

    #[error("storage mount point {mount_point} is not mounted; recreate the storage")]
    NotMounted { mount_point: PathBuf },

    #[error(
        "{path} is backed by device {mounted}, but the storage was set up on device {recorded}"
    )]
    DeviceMismatch {
        path: PathBuf,
        recorded: String,
        mounted: String,
    },

    #[error("device {devno} of volume {path} is gone from sysfs; the disk was removed")]
    DeviceGone { path: PathBuf, devno: String },

    #[error(
        "device {device} of volume {path} reports 0 bytes; its backing storage is gone, so \
         reattach the disk"
    )]
    EmptyDevice { path: PathBuf, device: PathBuf },

    #[error("reading the size of device {device} failed")]
    DeviceSize {
        device: PathBuf,
        #[source]
        error: std::io::Error,
    },

    #[error("rescanning SCSI device {device} through {path} failed")]
    Rescan {
        device: String,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },

    #[error(
        "device {device} reports {seen} bytes after {waited:?}, less than the requested \
         {requested} bytes; grow the disk on the host first"
    )]
    DeviceTooSmall {
        device: PathBuf,
        requested: u64,
        seen: u64,
        waited: Duration,
    },

    #[error(
        "requested size {requested} bytes of {path} is below the filesystem size {current} \
         bytes; shrinking is not supported"
    )]
    Shrink {
        path: PathBuf,
        requested: u64,
        current: u64,
    },

    #[error(
        "storage {mount_point} is mounted read-only ({options}); a read-only filesystem \
         cannot grow, so mount the storage read-write to resize it"
    )]
    ReadOnly {
        mount_point: PathBuf,
        options: String,
    },

    #[error("filesystem at {mount_point} has errors ({reason}); repair it before growing")]
    FilesystemErrors {
        mount_point: PathBuf,
        reason: String,
    },

    #[error("growing a {fstype:?} filesystem at {mount_point} is not supported")]
    UnsupportedFstype {
        mount_point: PathBuf,
        fstype: String,
    },

    #[error("reading the {fstype} geometry of {path} failed: {reason}")]
    Geometry {
        fstype: String,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "the agent lacks {capability}, which {tool} needs to grow a mounted filesystem; \
         start the agent with that capability"
    )]
    MissingCapability {
        tool: &'static str,
        capability: &'static str,
    },

    #[error("starting {tool} failed; install it in the guest image")]
    SpawnTool {
        tool: &'static str,
        #[source]
        error: std::io::Error,
    },

    #[error("{tool} on {target} did not finish within {waited:?}")]
    ToolTimeout {
        tool: &'static str,
        target: PathBuf,
        waited: Duration,
    },

    #[error("{tool} on {target} failed ({status}) and the filesystem did not grow: {output}")]
    GrowTool {
        tool: &'static str,
        target: PathBuf,
        status: String,
        output: String,
    },

    #[error(
        "{tool} reported success, but {mount_point} still has {after} bytes (was {before}); \
         the filesystem did not grow"
    )]
    NotGrown {
        tool: &'static str,
        mount_point: PathBuf,
        before: u64,
        after: u64,
    },
}

impl VolumeError {
    /// Returns the ttrpc status code of a request that fails with this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            VolumeError::NotFound { .. } => ttrpc::Code::NOT_FOUND,
            VolumeError::InvalidPath { .. } | VolumeError::Shrink { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            VolumeError::ProbeTimeout { .. }
            | VolumeError::DeviceTooSmall { .. }
            | VolumeError::ToolTimeout { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            VolumeError::NotManaged { .. }
            | VolumeError::NotMounted { .. }
            | VolumeError::DeviceMismatch { .. }
            | VolumeError::DeviceGone { .. }
            | VolumeError::EmptyDevice { .. }
            | VolumeError::ReadOnly { .. }
            | VolumeError::FilesystemErrors { .. }
            | VolumeError::UnsupportedFstype { .. }
            | VolumeError::MissingCapability { .. } => ttrpc::Code::FAILED_PRECONDITION,
            VolumeError::SpawnTool { error, .. }
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                ttrpc::Code::FAILED_PRECONDITION
            }
            VolumeError::ResolvePath { .. }
            | VolumeError::Statfs { .. }
            | VolumeError::ReadMountinfo { .. }
            | VolumeError::DeviceSize { .. }
            | VolumeError::Rescan { .. }
            | VolumeError::Geometry { .. }
            | VolumeError::SpawnTool { .. }
            | VolumeError::GrowTool { .. }
            | VolumeError::NotGrown { .. } => ttrpc::Code::INTERNAL,
        }
    }
}
