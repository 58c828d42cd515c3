//! Volume statistics and online grow.
//!
//! [`VolumeService::stats`] serves `GetVolumeStats` for a storage mount
//! point, a bind target of one in a container rootfs, or any path inside
//! either: byte and inode usage from `statfs`, or the device size for a raw
//! block volume, and a condition judged from sysfs, the mount table and
//! probes of the mount root. [`VolumeService::resize`] serves
//! `ResizeVolume`: rescan the device, wait for its new size, grow the
//! filesystem online and confirm the growth by `statfs`.
//!
//! Calls that can sleep forever on a dead device (statfs, open, ioctls)
//! run as bounded probes, see [`probe`]. A resize holds its storage's lock
//! ([`StorageManager::lock_storage`]) exclusively, and statistics hold it
//! shared. So statistics run in parallel with each other, but never during
//! a resize, mount or unmount of the same storage.

pub mod blockdev;
pub mod condition;
mod error;
pub mod geometry;
mod grow;
pub mod probe;
mod resolve;
mod stats;
mod tool;
pub mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slog::info;

use crate::device::DeviceRegistry;
use crate::mountinfo;
use crate::storage::{ManagedVolume, StorageManager};

pub use error::VolumeError;
pub use grow::ResizeOutcome;
use probe::Prober;

/// Largest part of a resize timeout reserved for the reply, see [`reply_margin`].
const MAX_REPLY_MARGIN: Duration = Duration::from_secs(1);

/// Default bound on one blocking probe of a volume.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct VolumeService {
    logger: slog::Logger,
    storage: Arc<StorageManager>,
    registry: Arc<DeviceRegistry>,
    sysfs_root: PathBuf,
    prober: Prober,
    /// Mount table for the condition checks of GetVolumeStats.
    mount_table: mountinfo::MountTable,
    /// Condition message last reported per mount point, to log changes only.
    last_conditions: Mutex<HashMap<PathBuf, String>>,
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
            sysfs_root: PathBuf::from("/sys"),
            prober: Prober::new(DEFAULT_PROBE_TIMEOUT),
            mount_table: mountinfo::MountTable::new(),
            last_conditions: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the sysfs root used for devices the registry does not know and
    /// for `/sys/fs/<fstype>` (default `/sys`).
    pub fn with_sysfs_root(mut self, sysfs_root: PathBuf) -> VolumeService {
        self.sysfs_root = sysfs_root;
        self
    }

    /// Sets the bound on one blocking probe (default [`DEFAULT_PROBE_TIMEOUT`]).
    pub fn with_probe_timeout(mut self, timeout: Duration) -> VolumeService {
        self.prober = Prober::new(timeout);
        self
    }

    /// Returns byte and inode usage and the condition of the volume at `path`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a path longer than the kernel accepts, NOT_FOUND
    /// when `path` does not exist. A path on no managed volume gets
    /// the `statfs` numbers alone and a normal condition whose message
    /// states that.
    pub async fn stats(
        &self,
        path: &str,
    ) -> Result<protocols::csi::VolumeStatsResponse, VolumeError> {
        let path = checked_path(path)?;
        match self.find_volume(&path).await {
            None => self.unmanaged_stats(&path).await,
            Some(volume) => {
                let _guard = self.storage.lock_storage_shared(&volume.mount_point).await;
                self.volume_stats(&path, &volume).await
            }
        }
    }

    /// Grows the volume at `path` to at least `size` bytes (0: to whatever
    /// the device now has). It gives up a little before `timeout`, so that
    /// its error reaches a client waiting exactly `timeout`.
    ///
    /// # Errors
    /// NOT_FOUND for a missing path, FAILED_PRECONDITION for a path on no
    /// managed volume or a filesystem with errors, INVALID_ARGUMENT for a
    /// shrink or a path longer than the kernel accepts, DEADLINE_EXCEEDED when the device stays smaller than `size`.
    pub async fn resize(
        &self,
        path: &str,
        size: u64,
        timeout: Duration,
    ) -> Result<(), VolumeError> {
        let started = Instant::now();
        let path = checked_path(path)?;
        self.check_exists(&path).await?;
        let volume = self
            .find_volume(&path)
            .await
            .ok_or_else(|| VolumeError::NotManaged { path: path.clone() })?;
        let _guard = self.storage.lock_storage(&volume.mount_point).await;
        let deadline = started + timeout.saturating_sub(reply_margin(timeout));
        let outcome = self.resize_volume(&volume, size, deadline).await?;
        info!(self.logger, "volume resized";
            "mount_point" => %volume.mount_point.display(),
            "device" => %volume.dev_path.display(),
            "fstype" => &volume.fstype,
            "size" => size,
            "outcome" => ?outcome,
            "elapsed_ms" => started.elapsed().as_millis() as u64);
        Ok(())
    }

    /// Returns NOT_FOUND when `path` does not exist. Other stat errors (EIO
    /// from a shut-down filesystem) mean the path exists.
    async fn check_exists(&self, path: &Path) -> Result<(), VolumeError> {
        let owned = path.to_path_buf();
        let result = self
            .prober
            .run(path, move || std::fs::metadata(owned).map(|_| ()))
            .await
            .map_err(|stall| self.probe_timeout("stat", path, stall))?;
        match result {
            Err(error) if is_missing(&error) => Err(VolumeError::NotFound {
                path: path.to_path_buf(),
            }),
            _ => Ok(()),
        }
    }

    fn probe_timeout(
        &self,
        probe: &'static str,
        path: &Path,
        stall: probe::ProbeStall,
    ) -> VolumeError {
        let waited = match stall {
            probe::ProbeStall::TimedOut { waited } => waited,
            probe::ProbeStall::StillRunning { since } => since,
        };
        VolumeError::ProbeTimeout {
            probe,
            path: path.to_path_buf(),
            waited,
        }
    }

    /// Returns `major:minor` and the sysfs directory of the volume's device.
    fn device_dir(&self, volume: &ManagedVolume) -> (String, PathBuf) {
        let dir = blockdev::sysfs_dir(&self.registry, &self.sysfs_root, volume.major, volume.minor);
        (format!("{}:{}", volume.major, volume.minor), dir)
    }
}

/// Returns the part of a request timeout reserved for sending the reply.
/// A client whose deadline passes first gets only its own timeout error,
/// not the error that names the sizes.
fn reply_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(MAX_REPLY_MARGIN)
}

/// Rejects a path that the kernel would refuse as too long (ENAMETOOLONG),
/// so that it is reported as invalid, not as a failed statfs.
fn checked_path(path: &str) -> Result<PathBuf, VolumeError> {
    use crate::storage::path::{MAX_NAME_BYTES, MAX_PATH_BYTES};

    let longest_name = path.split('/').map(str::len).max().unwrap_or(0);
    let reason = if path.len() > MAX_PATH_BYTES {
        format!(
            "is {} bytes long; paths are limited to {MAX_PATH_BYTES} bytes",
            path.len()
        )
    } else if longest_name > MAX_NAME_BYTES {
        format!("has a {longest_name}-byte name; names are limited to {MAX_NAME_BYTES} bytes")
    } else {
        return Ok(PathBuf::from(path));
    };
    Err(VolumeError::InvalidPath {
        path: PathBuf::from(path),
        reason,
    })
}

/// Tells whether a stat error means the path does not exist. A symlink
/// loop (ELOOP) leads to no file either.
fn is_missing(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Resolves symlinks in a mount point. The mount root itself may fail to
/// stat (a shut-down xfs gives EIO), so on failure the parent is resolved
/// and the last component kept.
fn resolve_mount_point(mount_point: &Path) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(mount_point) {
        return resolved;
    }
    match (mount_point.parent(), mount_point.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|parent| parent.join(name))
            .unwrap_or_else(|_| mount_point.to_path_buf()),
        _ => mount_point.to_path_buf(),
    }
}

/// Finds the mount table entry mounted exactly at `mount_point`; of
/// stacked mounts, the visible (last) one.
fn mount_entry_at(
    entries: &[mountinfo::MountInfoEntry],
    mount_point: &Path,
) -> Option<mountinfo::MountInfoEntry> {
    let resolved = resolve_mount_point(mount_point);
    mountinfo::find_mount_at(entries, &resolved).cloned()
}
