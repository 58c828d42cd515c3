//! Block device discovery: the registry of present disks, and the matchers
//! that turn a `Storage.driver` and `Storage.source` into one of them.
//!
//! Logging: `debug` for each device added, removed or found; `warn` for a
//! stale entry replaced or a SCSI scan request that failed. Failed requests
//! are returned as [`DeviceError`] and logged by the caller that handles them.

mod address;
mod pci;
mod registry;
mod scsi;
mod wait;

#[cfg(test)]
mod fake_sysfs;
#[cfg(test)]
mod stress_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use address::{
    DeviceAddress, PciPath, PciSlot, PmemName, ScsiAddress, MAX_PCI_PATH_SLOTS, MAX_SOURCE_BYTES,
};
pub use registry::{DeviceRegistry, RegistryStats};

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

/// Change that the registry applied, sent to every [`DeviceRegistry::subscribe`] receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    pub kind: DeviceEventKind,
    pub device: BlockDevice,
    /// The `change` uevent carried `RESIZE=1`: the disk capacity changed.
    pub resize: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEventKind {
    Added,
    Changed,
    Removed,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid {driver} source {source_text:?}: {reason}")]
    InvalidSource {
        driver: String,
        source_text: String,
        reason: String,
    },
    #[error("timed out after {waited:?} waiting for {driver} device {source_text:?}; {seen}")]
    Timeout {
        driver: String,
        source_text: String,
        waited: Duration,
        seen: String,
    },
    #[error(
        "several virtio-scsi controllers have a disk at SCSI address {address}: {}; \
         attach the volume to one controller only",
        disks.iter().map(|disk| disk.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousScsi {
        address: ScsiAddress,
        disks: Vec<PathBuf>,
    },
    #[error("reading sysfs directory {path} failed")]
    ReadSysfs {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("checking device node {path} failed")]
    StatNode {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl DeviceError {
    /// Returns the ttrpc status code of a request that fails with this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            DeviceError::InvalidSource { .. } => ttrpc::Code::INVALID_ARGUMENT,
            DeviceError::Timeout { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            DeviceError::AmbiguousScsi { .. } => ttrpc::Code::FAILED_PRECONDITION,
            DeviceError::ReadSysfs { .. } | DeviceError::StatNode { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// Reads a sysfs attribute, trimmed.
pub fn read_attribute(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|text| text.trim().to_string())
}
