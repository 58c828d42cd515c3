//! Taking storages down: unmounting, undoing failed requests, and the
//! RemoveContainer and DestroySandbox flows.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MntFlags;
use slog::{info, warn};

use super::manager::{storage_id, Addition, StorageManager};
use super::{path, Owner, StorageError};

/// Storages DestroySandbox unmounts at once.
const PARALLEL_UNMOUNTS: usize = 16;

impl StorageManager {
    /// Undoes the container's binds and drops its references. Every bind and
    /// storage is tried; the first failure is returned.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), StorageError> {
        let mut first_error = self.unbind_container(container_id).await.err();
        let owner = Owner::Container(container_id.to_string());
        let referenced = self.lock_state().referenced_by(&owner);
        for mount_point in referenced {
            if let Err(error) = self.release_one(&owner, &mount_point).await {
                warn!(self.logger, "releasing storage failed";
                    "mount_point" => %mount_point.display(), "error" => %error);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes every bind and storage.
    pub async fn destroy_sandbox(&self) -> Result<(), StorageError> {
        let mut first_error = None;
        let containers: Vec<String> = self.lock_state().binds.keys().cloned().collect();
        for container_id in containers {
            if let Err(error) = self.unbind_container(&container_id).await {
                first_error.get_or_insert(error);
            }
        }
        let mount_points: Vec<PathBuf> = self.lock_state().storages.keys().cloned().collect();
        let mut guards = Vec::with_capacity(mount_points.len());
        for mount_point in &mount_points {
            guards.push(self.lock_key(mount_point).await);
        }

        // Unmounting ext4 or xfs waits for the device's cache flush, so the
        // storages are removed in parallel, a bounded number at a time.
        // The order does not matter because storages do not nest: requests
        // that would nest are rejected, and should two racing requests nest
        // anyway, the busy parent falls back to a lazy detach.
        let results: Vec<(&PathBuf, Result<(), StorageError>)> = std::thread::scope(|scope| {
            let mut results = Vec::with_capacity(mount_points.len());
            for chunk in mount_points.chunks(PARALLEL_UNMOUNTS) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|mount_point| {
                        scope.spawn(move || (mount_point, self.remove_storage(mount_point)))
                    })
                    .collect();
                for handle in handles {
                    match handle.join() {
                        Ok(result) => results.push(result),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            }
            results
        });
        drop(guards);

        for (mount_point, result) in results {
            if let Err(error) = result {
                warn!(self.logger, "removing storage failed";
                    "mount_point" => %mount_point.display(), "error" => %error);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Unmounts `target`, falling back to a lazy detach when it is busy;
    /// a target that is no longer mounted counts as done.
    pub(super) fn unmount(&self, target: &Path) -> Result<(), StorageError> {
        let result = match self.mounter.umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Err(Errno::EBUSY) => {
                warn!(self.logger, "mount busy, detaching lazily";
                    "mount_point" => %target.display());
                self.mounter
                    .umount2(target, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH)
            }
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EINVAL | Errno::ENOENT) => {
                warn!(self.logger, "not mounted any more"; "mount_point" => %target.display());
                Ok(())
            }
            Err(error) => Err(StorageError::Unmount {
                mount_point: target.to_path_buf(),
                error,
            }),
        }
    }

    /// Undoes `additions` of a request that failed: drops `owner`'s new
    /// references and unmounts what the request mounted, even a shared
    /// storage, unless another owner now uses it. Failures are logged
    /// because the caller is already returning another error.
    pub(super) async fn undo_additions(&self, owner: &Owner, additions: &[Addition]) {
        for addition in additions.iter().rev() {
            let (mount_point, mounted_here) = match addition {
                Addition::Mounted(mount_point) => (mount_point, true),
                Addition::Referenced(mount_point) => (mount_point, false),
                Addition::Unchanged => continue,
            };
            let _guard = self.lock_key(mount_point).await;
            let result = self.update_state(|state| {
                let unused = state.drop_owner(mount_point, owner);
                unused || (mounted_here && state.is_unowned(mount_point))
            });
            let result = match result {
                Ok(true) => self.remove_storage(mount_point),
                other => other.map(drop),
            };
            if let Err(error) = result {
                warn!(self.logger, "undoing storage failed";
                    "mount_point" => %mount_point.display(), "error" => %error);
            }
        }
    }

    /// Drops `owner`'s reference to one storage and unmounts it when unused.
    pub(super) async fn release_one(
        &self,
        owner: &Owner,
        mount_point: &Path,
    ) -> Result<(), StorageError> {
        let _guard = self.lock_key(mount_point).await;
        let unused = self.update_state(|state| state.drop_owner(mount_point, owner))?;
        if unused {
            self.remove_storage(mount_point)?;
        }
        Ok(())
    }

    /// Unmounts a recorded storage and deletes its record. The caller holds
    /// the storage lock.
    pub(super) fn remove_storage(&self, mount_point: &Path) -> Result<(), StorageError> {
        let Some(record) = self.lock_state().storages.get(mount_point).cloned() else {
            return Ok(());
        };
        self.unmount(mount_point)?;
        path::remove_created(&record.created);
        self.update_state(|state| state.storages.remove(mount_point))?;
        info!(self.logger, "storage unmounted";
            "storage_id" => storage_id(mount_point),
            "mount_point" => %mount_point.display(),
            "device" => %record.volume.dev_path.display());
        Ok(())
    }
}
