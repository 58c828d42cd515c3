//! Volume statistics and online grow.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocols::csi::{VolumeCondition, VolumeStatsResponse, VolumeUsage};

use crate::device::DeviceRegistry;
use crate::storage::StorageManager;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume path {path} not found")]
    NotFound { path: PathBuf },
    #[error("statfs on {path} failed")]
    Statfs {
        path: PathBuf,
        #[source]
        error: nix::Error,
    },
    #[error("resizing {path} is not available yet")]
    ResizeUnavailable { path: PathBuf },
}

impl VolumeError {
    /// The ttrpc status code a request failing with this error gets.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            VolumeError::NotFound { .. } => ttrpc::Code::NOT_FOUND,
            VolumeError::Statfs { .. } => ttrpc::Code::INTERNAL,
            VolumeError::ResizeUnavailable { .. } => ttrpc::Code::UNIMPLEMENTED,
        }
    }
}

pub struct VolumeService {
    logger: slog::Logger,
    storage: Arc<StorageManager>,
    registry: Arc<DeviceRegistry>,
}

impl VolumeService {
    pub fn new(
        logger: slog::Logger,
        storage: Arc<StorageManager>,
        registry: Arc<DeviceRegistry>,
    ) -> VolumeService {
        VolumeService {
            logger,
            storage,
            registry,
        }
    }

    /// Returns byte and inode usage and the condition of the volume at `path`.
    pub async fn stats(&self, path: &str) -> Result<VolumeStatsResponse, VolumeError> {
        let path = PathBuf::from(path);
        let _ = (&self.logger, &self.storage, &self.registry);
        if !path.exists() {
            return Err(VolumeError::NotFound { path });
        }
        let stat = nix::sys::statvfs::statvfs(&path).map_err(|error| VolumeError::Statfs {
            path: path.clone(),
            error,
        })?;
        let frsize = stat.fragment_size();
        let mut bytes = VolumeUsage::new();
        bytes.unit = protocols::csi::volume_usage::Unit::BYTES.into();
        bytes.total = stat.blocks() * frsize;
        bytes.used = stat.blocks().saturating_sub(stat.blocks_free()) * frsize;
        bytes.available = stat.blocks_available() * frsize;
        let mut response = VolumeStatsResponse::new();
        response.usage.push(bytes);
        let mut condition = VolumeCondition::new();
        condition.message = "OK".into();
        response.volume_condition = Some(condition).into();
        Ok(response)
    }

    /// Grows the filesystem at `path` to at least `size` bytes.
    pub async fn resize(
        &self,
        path: &str,
        _size: u64,
        _timeout: Duration,
    ) -> Result<(), VolumeError> {
        Err(VolumeError::ResizeUnavailable {
            path: PathBuf::from(path),
        })
    }
}
