//! The storage manager: mounts storages, counts their references and
//! unmounts them after the last one.
//!
//! Locking: each mount point has its own async lock, held across the mount
//! or unmount of that storage and the binds made from it. The state mutex
//! is a plain mutex held only for bookkeeping, never across an await, a
//! device wait or a mount.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use protocols::agent::Storage;
use protocols::oci::Spec;
use slog::{info, warn};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

use super::mounter::{Mounter, SystemMounter};
use super::path::{self, NodeKind};
use super::request::StorageRequest;
use super::state::{State, StorageRecord};
use super::{fsgroup, probe, ManagedVolume, Owner, StorageConfig, StorageError};
use crate::device::{BlockDevice, DeviceRegistry};
use crate::mountinfo::{self, MountInfoEntry};

pub struct StorageManager {
    pub(super) logger: slog::Logger,
    pub(super) config: StorageConfig,
    registry: Arc<DeviceRegistry>,
    pub(super) mounter: Arc<dyn Mounter>,
    state: Mutex<State>,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::RwLock<()>>>>,
}

impl StorageManager {
    /// Creates the manager and rebuilds its state from the state file and
    /// the mount table.
    pub fn new(
        logger: slog::Logger,
        config: StorageConfig,
        registry: Arc<DeviceRegistry>,
    ) -> Result<Arc<StorageManager>, StorageError> {
        StorageManager::with_mounter(logger, config, registry, Arc::new(SystemMounter))
    }

    /// Creates the manager like [`StorageManager::new`], but makes the mount
    /// syscalls through `mounter`.
    pub fn with_mounter(
        logger: slog::Logger,
        mut config: StorageConfig,
        registry: Arc<DeviceRegistry>,
        mounter: Arc<dyn Mounter>,
    ) -> Result<Arc<StorageManager>, StorageError> {
        let root_text = config.root.to_string_lossy().into_owned();
        config.root = path::clean_absolute("storage root", &root_text)?;
        let mut state = State::load(&config.state_file)?;
        let entries = mountinfo::read().map_err(|error| StorageError::ReadMountinfo { error })?;
        reconcile(&logger, &mut state, &entries);
        state.save(&config.state_file)?;
        info!(logger, "storage state restored";
            "storages" => state.storages.len(), "containers" => state.binds.len());
        Ok(Arc::new(StorageManager {
            logger,
            config,
            registry,
            mounter,
            state: Mutex::new(state),
            locks: Mutex::new(HashMap::new()),
        }))
    }

    /// Mounts each storage for `owner`; all or nothing.
    pub async fn add_storages(
        &self,
        owner: &Owner,
        storages: &[Storage],
        timeout: Duration,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let (mount_points, _) = self.add_storages_undoable(owner, storages, timeout).await?;
        Ok(mount_points)
    }

    /// Mounts each storage for `owner` and returns the mount points and the
    /// change made for each. A caller that fails later passes the changes to
    /// [`StorageManager::undo_additions`].
    pub(super) async fn add_storages_undoable(
        &self,
        owner: &Owner,
        storages: &[Storage],
        timeout: Duration,
    ) -> Result<(Vec<PathBuf>, Vec<Addition>), StorageError> {
        // Every storage is checked before the first one is mounted, so a bad
        // entry anywhere leaves the system untouched.
        let requests = storages
            .iter()
            .map(|storage| StorageRequest::parse(storage, &self.config.root))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + timeout;

        let mut mount_points = Vec::new();
        let mut additions = Vec::new();
        for request in &requests {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.add_storage(owner, request, remaining).await {
                Ok(addition) => {
                    additions.push(addition);
                    mount_points.push(request.mount_point.clone());
                }
                Err(error) => {
                    self.undo_additions(owner, &additions).await;
                    return Err(error);
                }
            }
        }
        Ok((mount_points, additions))
    }

    /// Mounts one storage, or adds `owner` to it when it is mounted already.
    async fn add_storage(
        &self,
        owner: &Owner,
        request: &StorageRequest,
        timeout: Duration,
    ) -> Result<Addition, StorageError> {
        let device = self.registry.wait_for(&request.address, timeout).await?;
        let mount_point = &request.mount_point;
        let _guard = self.lock_key(mount_point).await;

        if let Some(is_new) = self.add_to_recorded(owner, request, &device)? {
            return Ok(Addition::referenced(mount_point, is_new));
        }
        let entries = mountinfo::read().map_err(|error| StorageError::ReadMountinfo { error })?;
        if let Some(entry) = mountinfo::find_mount_at(&entries, mount_point) {
            self.adopt_mount(owner, request, &device, entry)?;
            return Ok(Addition::Referenced(mount_point.clone()));
        }
        // NOTE: two concurrent requests for nested mount points hold different
        // locks, so both can pass this check before either mounts.
        if let Some(entry) = find_nested_mount(&entries, &self.config.root, mount_point) {
            return Err(StorageError::NestedMountPoint {
                mount_point: mount_point.clone(),
                other: entry.mount_point.clone(),
            });
        }

        if !request.is_raw_block() {
            probe::check_superblock(&device.dev_path, &request.fstype)?;
        }
        let kind = if request.is_raw_block() {
            NodeKind::File
        } else {
            NodeKind::Directory
        };
        let created = path::create_mount_point(&self.config.root, mount_point, kind)?;
        let started = Instant::now();
        if let Err(error) = run_blocking(|| self.mount_storage(request, &device)) {
            path::remove_created(&created);
            return Err(error);
        }

        let record = new_record(request, &device, created.clone());
        let saved = self.update_state(|state| {
            state.storages.insert(mount_point.clone(), record);
            state.add_owner(mount_point, owner, request.shared)
        });
        if let Err(error) = saved {
            self.undo_mount(mount_point);
            path::remove_created(&created);
            return Err(error);
        }
        info!(self.logger, "storage mounted";
            "storage_id" => storage_id(mount_point),
            "mount_point" => %mount_point.display(),
            "device" => %device.dev_path.display(),
            "fstype" => &request.fstype,
            "elapsed_ms" => started.elapsed().as_millis() as u64);
        Ok(Addition::Mounted(mount_point.clone()))
    }

    /// Handles a storage the state already records: the same device adds a
    /// reference, another device is a conflict. `None` when unrecorded.
    fn add_to_recorded(
        &self,
        owner: &Owner,
        request: &StorageRequest,
        device: &BlockDevice,
    ) -> Result<Option<bool>, StorageError> {
        let mut state = self.lock_state();
        let Some(record) = state.storages.get(&request.mount_point) else {
            return Ok(None);
        };
        let volume = &record.volume;
        if (volume.major, volume.minor) != (device.major, device.minor) {
            return Err(device_conflict(
                &request.mount_point,
                format!(
                    "{} ({}:{})",
                    volume.dev_path.display(),
                    volume.major,
                    volume.minor
                ),
                device,
            ));
        }
        let previous = state.clone();
        let is_new = state.add_owner(&request.mount_point, owner, request.shared);
        if *state != previous {
            if let Err(error) = state.save(&self.config.state_file) {
                *state = previous;
                return Err(error);
            }
        }
        Ok(Some(is_new))
    }

    /// Records a mount found in mountinfo but not in the state (the agent
    /// stopped between mounting and saving), if it is the requested device.
    fn adopt_mount(
        &self,
        owner: &Owner,
        request: &StorageRequest,
        device: &BlockDevice,
        entry: &MountInfoEntry,
    ) -> Result<(), StorageError> {
        let mount_point = &request.mount_point;
        let mounted = mounted_device_number(entry, request.is_raw_block());
        if mounted != Some((device.major, device.minor)) {
            let (major, minor) = mounted.unwrap_or((entry.major, entry.minor));
            return Err(device_conflict(
                mount_point,
                format!("{} ({major}:{minor})", entry.source),
                device,
            ));
        }
        // The directories listed in the lost record are unknown. The mount
        // point itself lies in the agent's storage root, so the unmount
        // removes it too when it is empty.
        let record = new_record(request, device, vec![mount_point.clone()]);
        self.update_state(|state| {
            state.storages.insert(mount_point.clone(), record);
            state.add_owner(mount_point, owner, request.shared)
        })?;
        info!(self.logger, "storage already mounted, recorded";
            "storage_id" => storage_id(mount_point),
            "mount_point" => %mount_point.display(),
            "device" => %device.dev_path.display());
        Ok(())
    }

    /// Mounts the filesystem (or binds the raw device) and applies the
    /// propagation and fsGroup; undoes the mount if a later step fails.
    pub(super) fn mount_storage(
        &self,
        request: &StorageRequest,
        device: &BlockDevice,
    ) -> Result<(), StorageError> {
        let mount_point = &request.mount_point;
        let options = &request.options;
        // A read-only volume with an fsGroup is mounted read-write first, so
        // the ownership change can be written, then remounted read-only.
        let remount_read_only = request.fs_group.is_some() && options.read_only();

        let mounted = if request.is_raw_block() {
            self.mounter.mount(
                Some(&device.dev_path),
                mount_point,
                None,
                MsFlags::MS_BIND,
                None,
            )
        } else {
            let mut flags = options.flags;
            if remount_read_only {
                flags.remove(MsFlags::MS_RDONLY);
            }
            let data = options.data_string();
            self.mounter.mount(
                Some(&device.dev_path),
                mount_point,
                Some(&request.fstype),
                flags,
                data.as_deref(),
            )
        };
        mounted.map_err(|error| StorageError::Mount {
            device: device.dev_path.clone(),
            fstype: request.fstype.clone(),
            mount_point: mount_point.clone(),
            options: request.options_text.clone(),
            error,
        })?;

        let finish = || -> Result<(), StorageError> {
            if request.is_raw_block() && !options.per_mount_flags().is_empty() {
                let flags = MsFlags::MS_BIND | options.per_mount_flags();
                self.remount(mount_point, flags)?;
            }
            if let Some(propagation) = options.propagation {
                self.set_propagation(mount_point, propagation)?;
            }
            // NOTE: a raw block volume gets no fsGroup; its device node keeps
            // the owner and mode that the guest's /dev gave it.
            if let (Some((group_id, policy)), false) = (request.fs_group, request.is_raw_block()) {
                fsgroup::apply_fs_group(mount_point, group_id, policy, options.read_only())?;
                if remount_read_only {
                    self.remount(mount_point, options.flags)?;
                }
            }
            Ok(())
        };
        finish().inspect_err(|_| self.undo_mount(mount_point))
    }

    /// Unmounts after a later step failed; an unmount failure is logged
    /// because the caller returns the first error.
    pub(super) fn undo_mount(&self, target: &Path) {
        if let Err(error) = self.unmount(target) {
            warn!(self.logger, "undoing mount failed";
                "mount_point" => %target.display(), "error" => %error);
        }
    }

    pub(super) fn remount(&self, mount_point: &Path, flags: MsFlags) -> Result<(), StorageError> {
        self.mounter
            .remount(mount_point, flags, None)
            .map_err(|error| StorageError::Remount {
                mount_point: mount_point.to_path_buf(),
                flags: format!("{flags:?}"),
                error,
            })
    }

    pub(super) fn set_propagation(
        &self,
        mount_point: &Path,
        flags: MsFlags,
    ) -> Result<(), StorageError> {
        self.mounter
            .mount(None, mount_point, None, flags, None)
            .map_err(|error| StorageError::SetPropagation {
                mount_point: mount_point.to_path_buf(),
                flags: format!("{flags:?}"),
                error,
            })
    }

    /// Mounts the container's storages and binds its OCI mounts.
    pub async fn create_container(
        &self,
        container_id: &str,
        storages: &[Storage],
        spec: Option<&Spec>,
        timeout: Duration,
    ) -> Result<(), StorageError> {
        let owner = Owner::Container(container_id.to_string());
        let binds = self.parse_binds(spec)?;
        let (_, additions) = self
            .add_storages_undoable(&owner, storages, timeout)
            .await?;
        if let Err(error) = self.bind_container(container_id, &binds).await {
            self.undo_additions(&owner, &additions).await;
            return Err(error);
        }
        Ok(())
    }

    /// Finds the managed storage that `path` (a mount point, a bind target
    /// or a path inside either) belongs to.
    pub fn lookup_path(&self, path: &Path) -> Option<ManagedVolume> {
        let path = path::clean_absolute("path", path.to_str()?).ok()?;
        let state = self.lock_state();
        state.lookup(&path).map(|record| record.volume.clone())
    }

    /// Serializes requests on one storage: `path` is a mount point, a bind
    /// target or a path inside either, and maps to its storage's lock.
    pub async fn lock_storage(&self, path: &Path) -> OwnedRwLockWriteGuard<()> {
        self.storage_lock(path).write_owned().await
    }

    /// Takes the storage's lock shared, for requests that only read it
    /// (GetVolumeStats): they run in parallel with each other and wait for
    /// any request that changes the storage.
    pub async fn lock_storage_shared(&self, path: &Path) -> OwnedRwLockReadGuard<()> {
        self.storage_lock(path).read_owned().await
    }

    fn storage_lock(&self, path: &Path) -> Arc<tokio::sync::RwLock<()>> {
        let key = match self.lookup_path(path) {
            Some(volume) => volume.mount_point,
            None => path.to_path_buf(),
        };
        self.lock_for(&key)
    }

    pub(super) async fn lock_key(&self, mount_point: &Path) -> OwnedRwLockWriteGuard<()> {
        self.lock_for(mount_point).write_owned().await
    }

    fn lock_for(&self, mount_point: &Path) -> Arc<tokio::sync::RwLock<()>> {
        // NOTE: locks are never removed from the map, so it keeps one small
        // entry per mount point used since the agent started.
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(mount_point.to_path_buf()).or_default().clone()
    }

    pub(super) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the state and saves it; on a failed save the
    /// change is rolled back so memory and file agree.
    pub(super) fn update_state<T>(
        &self,
        change: impl FnOnce(&mut State) -> T,
    ) -> Result<T, StorageError> {
        let mut state = self.lock_state();
        let previous = state.clone();
        let value = change(&mut state);
        if let Err(error) = state.save(&self.config.state_file) {
            *state = previous;
            return Err(error);
        }
        Ok(value)
    }

    #[cfg(test)]
    pub(super) fn state_snapshot(&self) -> State {
        self.lock_state().clone()
    }
}

/// Runs `work`, which blocks (mount(2), an fsGroup walk over a whole
/// volume), so that the other tasks of this runtime worker, such as health
/// checks, move to another thread meanwhile. A current-thread runtime, as in
/// unit tests, runs it in place.
fn run_blocking<T>(work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Returns the storage's id as the host names it, which is the last
/// component of its mount point.
pub(super) fn storage_id(mount_point: &Path) -> String {
    let name = mount_point.file_name().unwrap_or_default();
    name.to_string_lossy().into_owned()
}

/// Change made by adding one storage, which an undo reverses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Addition {
    /// The request mounted the storage.
    Mounted(PathBuf),
    /// The storage was mounted already and the owner's reference is new.
    Referenced(PathBuf),
    /// The owner already held a reference.
    Unchanged,
}

impl Addition {
    fn referenced(mount_point: &Path, is_new: bool) -> Addition {
        if is_new {
            Addition::Referenced(mount_point.to_path_buf())
        } else {
            Addition::Unchanged
        }
    }
}

fn new_record(
    request: &StorageRequest,
    device: &BlockDevice,
    created: Vec<PathBuf>,
) -> StorageRecord {
    StorageRecord {
        volume: ManagedVolume {
            mount_point: request.mount_point.clone(),
            driver: request.driver.clone(),
            source: request.source.clone(),
            fstype: request.fstype.clone(),
            dev_path: device.dev_path.clone(),
            major: device.major,
            minor: device.minor,
        },
        shared: request.shared,
        owners: Default::default(),
        created,
        flags: request.options.per_mount_flags().bits(),
    }
}

fn device_conflict(mount_point: &Path, mounted: String, requested: &BlockDevice) -> StorageError {
    StorageError::DeviceConflict {
        mount_point: mount_point.to_path_buf(),
        mounted,
        requested: format!(
            "{} ({}:{})",
            requested.dev_path.display(),
            requested.major,
            requested.minor
        ),
    }
}

/// Finds a mount below `root` that lies inside `mount_point` or contains it.
/// Mounting there would write a directory into another volume, or hide a
/// mount so that it could no longer be unmounted by its path.
fn find_nested_mount<'a>(
    entries: &'a [MountInfoEntry],
    root: &Path,
    mount_point: &Path,
) -> Option<&'a MountInfoEntry> {
    entries.iter().find(|entry| {
        let other = &entry.mount_point;
        other != root
            && other != mount_point
            && other.starts_with(root)
            && (other.starts_with(mount_point) || mount_point.starts_with(other))
    })
}

/// Returns the device number behind a mount: the filesystem's, or for a raw
/// block volume that of the device node bound onto the mount point file.
fn mounted_device_number(entry: &MountInfoEntry, raw_block: bool) -> Option<(u32, u32)> {
    if !raw_block {
        return Some((entry.major, entry.minor));
    }
    let metadata = std::fs::metadata(&entry.mount_point).ok()?;
    if !metadata.file_type().is_block_device() {
        return None;
    }
    let rdev = metadata.rdev();
    Some((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// Drops records whose mount is gone or now has another device, so that
/// the state matches the mount table after a restart.
fn reconcile(logger: &slog::Logger, state: &mut State, entries: &[MountInfoEntry]) {
    state.storages.retain(|mount_point, record| {
        let volume = &record.volume;
        let mounted = mountinfo::find_mount_at(entries, mount_point)
            .and_then(|entry| mounted_device_number(entry, volume.fstype.is_empty()));
        let keep = mounted == Some((volume.major, volume.minor));
        if !keep {
            warn!(logger, "dropping storage record: its mount is gone";
                "mount_point" => %mount_point.display(), "device" => %volume.dev_path.display());
            path::remove_created(&record.created);
        }
        keep
    });
    for (container_id, binds) in state.binds.iter_mut() {
        binds.retain(|bind| {
            let keep = mountinfo::find_mount_at(entries, &bind.target).is_some();
            if !keep {
                warn!(logger, "dropping bind record: its mount is gone";
                    "container_id" => container_id, "mount_point" => %bind.target.display());
            }
            keep
        });
    }
    state.binds.retain(|_, binds| !binds.is_empty());
}
