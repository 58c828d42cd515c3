//! Block device discovery: the registry of present disks, and the matchers
//! that turn a `Storage.driver` and `Storage.source` into one of them.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::uevent::Uevent;

/// Where the host says the disk is, parsed from `Storage.driver` and `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAddress {
    /// `mmioblk`: a `/dev` path.
    DevPath(PathBuf),
}

impl DeviceAddress {
    /// Parses a storage's driver and source without touching the system.
    pub fn parse(driver: &str, source: &str) -> Result<DeviceAddress, DeviceError> {
        match driver {
            "mmioblk" => Ok(DeviceAddress::DevPath(PathBuf::from(source))),
            _ => Err(DeviceError::InvalidSource {
                driver: driver.to_string(),
                source_text: source.to_string(),
                reason: "unknown driver".into(),
            }),
        }
    }
}

/// A whole disk (or partition) known to the kernel, with its `/dev` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda`, `sdb`, `loop3`.
    pub name: String,
    /// Device node, e.g. `/dev/vda`.
    pub dev_path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// Directory in sysfs, e.g. `/sys/devices/pci0000:00/.../block/vda`.
    pub sysfs_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid {driver} source {source_text:?}: {reason}")]
    InvalidSource {
        driver: String,
        source_text: String,
        reason: String,
    },
    #[error("timed out after {waited:?} waiting for {driver} device {source_text:?}: {seen}")]
    Timeout {
        driver: String,
        source_text: String,
        waited: Duration,
        seen: String,
    },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl DeviceError {
    /// The ttrpc status code a request failing with this error gets.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            DeviceError::InvalidSource { .. } => ttrpc::Code::INVALID_ARGUMENT,
            DeviceError::Timeout { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            DeviceError::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// The set of block devices present in the system.
pub struct DeviceRegistry {
    logger: slog::Logger,
    sysfs_root: PathBuf,
    dev_root: PathBuf,
}

impl DeviceRegistry {
    pub fn new(
        logger: slog::Logger,
        sysfs_root: PathBuf,
        dev_root: PathBuf,
    ) -> Arc<DeviceRegistry> {
        Arc::new(DeviceRegistry {
            logger,
            sysfs_root,
            dev_root,
        })
    }

    /// Records the disks already present in sysfs.
    pub fn scan_sysfs(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Applies one kernel uevent.
    pub fn handle_uevent(&self, _event: &Uevent) {}

    /// Waits until the disk at `address` is present with its `/dev` node.
    pub async fn wait_for(
        &self,
        address: &DeviceAddress,
        _timeout: Duration,
    ) -> Result<BlockDevice, DeviceError> {
        let DeviceAddress::DevPath(path) = address;
        let metadata = std::fs::metadata(path).map_err(|error| DeviceError::Io {
            path: path.clone(),
            error,
        })?;
        if !metadata.file_type().is_block_device() {
            return Err(DeviceError::InvalidSource {
                driver: "mmioblk".into(),
                source_text: path.display().to_string(),
                reason: "not a block device".into(),
            });
        }
        let rdev = metadata.rdev();
        let (major, minor) = (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        );
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let _ = (&self.logger, &self.dev_root);
        Ok(BlockDevice {
            sysfs_path: self
                .sysfs_root
                .join("dev/block")
                .join(format!("{major}:{minor}")),
            name,
            dev_path: path.clone(),
            major,
            minor,
        })
    }

    /// Looks a present device up by its device number.
    pub fn find_by_devno(&self, _major: u32, _minor: u32) -> Option<BlockDevice> {
        None
    }
}

/// Reads a sysfs attribute, trimmed.
pub fn read_attribute(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|text| text.trim().to_string())
}
