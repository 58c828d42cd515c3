//! Storage manager: mounts found devices under the storage root, binds them
//! into container rootfs, counts references and cleans up.
//!
//! A storage with an empty `fstype` is a raw block volume: its mount point
//! is a regular file and the device node is bind-mounted onto it, so a
//! container receives the device itself rather than a filesystem.
//!
//! Logging: the request handler logs each failed request once at `error`.
//! Here `warn` marks a harmless anomaly such as a lazy unmount or a dropped
//! stale record, and `info` marks a mount, unmount or bind.

mod bind;
mod error;
mod fsgroup;
mod manager;
#[cfg(test)]
mod manager_tests;
pub mod mounter;
pub mod options;
pub mod path;
#[cfg(test)]
mod path_race_tests;
pub mod probe;
mod remove;
mod request;
mod state;

use std::path::PathBuf;

pub use error::StorageError;
pub use fsgroup::ChangePolicy;
pub use manager::StorageManager;

/// Holder of a reference to a storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Sandbox,
    Container(String),
}

/// Paths the manager works under.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Every mount point must lie under this directory.
    pub root: PathBuf,
    /// Persisted state, rewritten atomically after each change.
    pub state_file: PathBuf,
}

/// A mounted storage, as the volume service uses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManagedVolume {
    pub mount_point: PathBuf,
    pub driver: String,
    pub source: String,
    /// Empty for a raw block volume.
    pub fstype: String,
    /// Device node the filesystem was mounted from.
    pub dev_path: PathBuf,
    pub major: u32,
    pub minor: u32,
}
