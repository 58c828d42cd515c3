//! Container binds: each OCI mount whose source is a storage mount point,
//! or a path inside one, is bound to `<Root.Path>/<destination>`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use protocols::oci::Spec;
use slog::{info, warn};

use super::manager::StorageManager;
use super::options::{MountOptions, OptionContext};
use super::path::{self, ResolvedPath};
use super::state::BindRecord;
use super::StorageError;
use crate::mountinfo;

/// One OCI mount that may come from a storage, checked up front.
#[derive(Debug, Clone)]
pub(super) struct BindRequest {
    pub rootfs: PathBuf,
    /// Cleaned absolute source.
    pub source: PathBuf,
    /// Cleaned destination, relative to the rootfs.
    pub destination: PathBuf,
    pub options: MountOptions,
}

impl StorageManager {
    /// Picks the OCI mounts whose source lies under the storage root and
    /// validates them; other mounts are not this manager's concern.
    pub(super) fn parse_binds(
        &self,
        spec: Option<&Spec>,
    ) -> Result<Vec<BindRequest>, StorageError> {
        let Some(spec) = spec else {
            return Ok(Vec::new());
        };
        let mut binds = Vec::new();
        for mount in &spec.Mounts {
            let Ok(source) = path::clean_absolute("source", &mount.source) else {
                continue;
            };
            if !source.starts_with(&self.config.root) {
                continue;
            }
            let rootfs_text = spec
                .Root
                .as_ref()
                .map(|root| root.Path.as_str())
                .unwrap_or_default();
            let rootfs = path::clean_absolute("Root.Path", rootfs_text)?;
            let destination = path::clean_absolute("destination", &mount.destination)?;
            let destination = destination
                .strip_prefix("/")
                .unwrap_or(&destination)
                .to_path_buf();
            if destination.as_os_str().is_empty() {
                return Err(StorageError::Invalid {
                    field: "destination",
                    value: mount.destination.clone(),
                    reason: "resolves to the container root itself".into(),
                });
            }
            // The bind is later unmounted by this path, so it must fit too.
            if let Err(reason) = path::check_path_limits(&rootfs.join(&destination)) {
                return Err(StorageError::Invalid {
                    field: "destination",
                    value: mount.destination.clone(),
                    reason: format!("joined to Root.Path, the path {reason}"),
                });
            }
            let options = MountOptions::parse(&mount.options, OptionContext::Bind)?;
            if !options.data.is_empty() {
                warn!(self.logger, "ignoring filesystem options on a bind";
                    "destination" => &mount.destination, "options" => options.data.join(","));
            }
            binds.push(BindRequest {
                rootfs,
                source,
                destination,
                options,
            });
        }
        Ok(binds)
    }

    /// Makes the binds of one container; on failure the ones bound by this
    /// call are undone.
    pub(super) async fn bind_container(
        &self,
        container_id: &str,
        binds: &[BindRequest],
    ) -> Result<(), StorageError> {
        let mut bound: Vec<BindRecord> = Vec::new();
        for request in binds {
            match self.bind_one(container_id, request).await {
                Ok(Some(record)) => bound.push(record),
                Ok(None) => {}
                Err(error) => {
                    for record in bound.iter().rev() {
                        self.undo_bind(container_id, record).await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Binds one OCI mount; returns `None` when the container already has
    /// this bind (a repeated request).
    async fn bind_one(
        &self,
        container_id: &str,
        request: &BindRequest,
    ) -> Result<Option<BindRecord>, StorageError> {
        let Some(volume) = self.lookup_storage(&request.source) else {
            return Err(not_in_storage(&request.source));
        };
        let _guard = self.lock_key(&volume).await;
        // The storage may have been removed while this request waited.
        if !self.lock_state().storages.contains_key(&volume) {
            return Err(not_in_storage(&request.source));
        }
        let relative = request
            .source
            .strip_prefix(&volume)
            .unwrap_or(Path::new(""));
        let source = path::resolve_in_root("source", &volume, relative, None)?;
        let kind = source
            .node_kind()
            .map_err(|errno| resolve_error("source", &volume, relative, errno))?;

        let target = path::resolve_in_root(
            "destination",
            &request.rootfs,
            &request.destination,
            Some(kind),
        )?;
        let already_bound = self
            .lock_state()
            .binds
            .get(container_id)
            .is_some_and(|binds| binds.iter().any(|bind| bind.target == target.real_path));
        if already_bound {
            return Ok(None);
        }
        if let Some(record) = self.adopt_bind(container_id, &volume, &source, &target)? {
            return Ok(Some(record));
        }

        let record = BindRecord {
            storage: volume.clone(),
            target: target.real_path.clone(),
            created: target.created.clone(),
        };
        if let Err(error) = self.mount_bind(request, &volume, &source, &target) {
            path::remove_created(&target.created);
            return Err(error);
        }
        let saved = self.save_bind(container_id, &record);
        if let Err(error) = saved {
            self.undo_mount(&record.target);
            path::remove_created(&record.created);
            return Err(error);
        }
        info!(self.logger, "storage bound into container";
            "container_id" => container_id, "storage" => %volume.display(),
            "mount_point" => %record.target.display());
        Ok(Some(record))
    }

    /// Records a bind of `source` found on `target` in mountinfo but not in
    /// the state (the agent stopped between binding and saving), so that a
    /// repeated request does not stack a second bind there.
    fn adopt_bind(
        &self,
        container_id: &str,
        storage: &Path,
        source: &ResolvedPath,
        target: &ResolvedPath,
    ) -> Result<Option<BindRecord>, StorageError> {
        let entries = mountinfo::read().map_err(|error| StorageError::ReadMountinfo { error })?;
        let storage_mount = mountinfo::find_mount_at(&entries, storage);
        let target_mount = mountinfo::find_mount_at(&entries, &target.real_path);
        let (Some(storage_mount), Some(target_mount)) = (storage_mount, target_mount) else {
            return Ok(None);
        };
        // A bind shows the storage's device and, as its root, the path of
        // the source inside the storage's filesystem.
        let relative = source
            .real_path
            .strip_prefix(storage)
            .unwrap_or(Path::new(""));
        let same_device =
            (target_mount.major, target_mount.minor) == (storage_mount.major, storage_mount.minor);
        if !same_device || target_mount.root != storage_mount.root.join(relative) {
            return Ok(None);
        }

        let record = BindRecord {
            storage: storage.to_path_buf(),
            target: target.real_path.clone(),
            created: target.created.clone(),
        };
        self.save_bind(container_id, &record)?;
        info!(self.logger, "bind already mounted, recorded";
            "container_id" => container_id, "storage" => %storage.display(),
            "mount_point" => %record.target.display());
        Ok(Some(record))
    }

    fn save_bind(&self, container_id: &str, record: &BindRecord) -> Result<(), StorageError> {
        self.update_state(|state| {
            state
                .binds
                .entry(container_id.to_string())
                .or_default()
                .push(record.clone())
        })
    }

    /// Finds the mount point of the storage that `source` is or lies inside.
    fn lookup_storage(&self, source: &Path) -> Option<PathBuf> {
        let state = self.lock_state();
        state
            .storages
            .keys()
            .filter(|mount_point| source.starts_with(mount_point))
            .max_by_key(|mount_point| mount_point.components().count())
            .cloned()
    }

    /// Binds `source` onto `target`, then applies per-mount flags with a
    /// bind remount and sets the propagation (private unless the OCI mount
    /// names another).
    fn mount_bind(
        &self,
        request: &BindRequest,
        storage: &Path,
        source: &ResolvedPath,
        target: &ResolvedPath,
    ) -> Result<(), StorageError> {
        let bind_flags = request.options.bind.unwrap_or(MsFlags::MS_BIND);
        self.mounter
            .mount(
                Some(&source.proc_path()),
                &target.proc_path(),
                None,
                bind_flags,
                None,
            )
            .map_err(|error| StorageError::Bind {
                source_path: source.real_path.clone(),
                target: target.real_path.clone(),
                error,
            })?;

        let finish = || -> Result<(), StorageError> {
            // The target descriptor still names the directory under the new
            // mount, so the bind is reached again through the rootfs.
            let mounted =
                path::resolve_in_root("destination", &request.rootfs, &request.destination, None)?;
            let flags = self.storage_flags(storage) | request.options.per_mount_flags();
            if !flags.is_empty() {
                self.remount(&mounted.proc_path(), MsFlags::MS_BIND | flags)?;
            }
            let propagation = request.options.propagation.unwrap_or(MsFlags::MS_PRIVATE);
            self.set_propagation(&mounted.proc_path(), propagation)
        };
        finish().inspect_err(|_| self.undo_mount(&target.real_path))
    }

    /// Per-mount flags of the storage mount, which a bind remount would
    /// otherwise clear.
    fn storage_flags(&self, storage: &Path) -> MsFlags {
        let state = self.lock_state();
        let bits = state.storages.get(storage).map_or(0, |record| record.flags);
        MsFlags::from_bits_truncate(bits)
    }

    /// Unmounts one bind and removes what was created for it.
    async fn undo_bind(&self, container_id: &str, record: &BindRecord) {
        let _guard = self.lock_key(&record.storage).await;
        if let Err(error) = self.remove_bind(container_id, record) {
            warn!(self.logger, "undoing bind failed";
                "container_id" => container_id, "mount_point" => %record.target.display(),
                "error" => %error);
        }
    }

    fn remove_bind(&self, container_id: &str, record: &BindRecord) -> Result<(), StorageError> {
        self.unmount(&record.target)?;
        path::remove_created(&record.created);
        self.update_state(|state| {
            if let Some(binds) = state.binds.get_mut(container_id) {
                binds.retain(|bind| bind != record);
                if binds.is_empty() {
                    state.binds.remove(container_id);
                }
            }
        })
    }

    /// Removes every bind of a container, trying all of them; returns the
    /// first failure.
    pub(super) async fn unbind_container(&self, container_id: &str) -> Result<(), StorageError> {
        let binds = self
            .lock_state()
            .binds
            .get(container_id)
            .cloned()
            .unwrap_or_default();
        let mut first_error = None;
        for record in binds.iter().rev() {
            let _guard = self.lock_key(&record.storage).await;
            match self.remove_bind(container_id, record) {
                Ok(()) => info!(self.logger, "bind removed";
                    "container_id" => container_id, "mount_point" => %record.target.display()),
                Err(error) => {
                    warn!(self.logger, "removing bind failed";
                        "container_id" => container_id, "mount_point" => %record.target.display(),
                        "error" => %error);
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn not_in_storage(source: &Path) -> StorageError {
    StorageError::Invalid {
        field: "source",
        value: source.display().to_string(),
        reason: "is under the storage root but not inside a mounted storage; \
                 list the storage in the request"
            .into(),
    }
}

fn resolve_error(
    field: &'static str,
    root: &Path,
    path: &Path,
    errno: rustix::io::Errno,
) -> StorageError {
    StorageError::Resolve {
        field,
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        error: errno.into(),
    }
}
