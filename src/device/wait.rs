//! Requests for a disk: a lookup in the registry that, on a miss, registers a
//! waiter under the same lock, then a short poll for the `/dev` node.

use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use slog::{debug, warn};
use tokio::sync::oneshot;

use super::address::{DeviceAddress, ScsiAddress};
use super::registry::{DeviceKey, DeviceRegistry, NodeCheck, State};
use super::{pci, scsi, BlockDevice, DeviceError};

/// How often the `/dev` node of an announced disk is checked. devtmpfs creates
/// the node right after the kernel sends the `add` uevent, so the first or
/// second check normally succeeds.
const NODE_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Period after which a waiting request looks in sysfs again. It finds disks
/// whose uevent never arrives: the listener is off, or the event was lost.
const SYSFS_RECHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Number of present disks that a timeout error lists.
const SEEN_LIST_MAX: usize = 16;

/// A registered waiter; dropping it (on timeout or when the request is
/// cancelled) removes it from the registry.
struct Waiter<'a> {
    registry: &'a DeviceRegistry,
    key: DeviceKey,
    id: u64,
    receiver: oneshot::Receiver<()>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if let Some(waiters) = state.waiters.get_mut(&self.key) {
            waiters.remove(&self.id);
            if waiters.is_empty() {
                state.waiters.remove(&self.key);
            }
        }
    }
}

/// The outcome of one lookup.
enum Lookup {
    Found(BlockDevice),
    Missing,
}

impl DeviceRegistry {
    /// Waits until the disk at `address` is present with its `/dev` node.
    ///
    /// A disk already in the registry (or in sysfs) is returned at once; a
    /// later one is found from its uevent. For `scsi`, each virtio-scsi host
    /// is asked to scan for the target and LUN once.
    ///
    /// # Errors
    /// - [`DeviceError::InvalidSource`] at once for an `mmioblk` path that
    ///   exists but is not a block device;
    /// - [`DeviceError::AmbiguousScsi`] when several virtio-scsi controllers
    ///   have a disk at the address;
    /// - [`DeviceError::Timeout`] when `timeout` passes first; the error lists
    ///   the disks that are present instead.
    pub async fn wait_for(
        &self,
        address: &DeviceAddress,
        timeout: Duration,
    ) -> Result<BlockDevice, DeviceError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut scan_requested = false;

        let device = loop {
            let waiter = {
                let mut state = self.lock();
                match self.lookup_locked(&mut state, address)? {
                    Lookup::Found(device) => break device,
                    Lookup::Missing => self.register_waiter(&mut state, waiter_key(address)),
                }
            };
            if let (DeviceAddress::Scsi(scsi_address), false) = (address, scan_requested) {
                scan_requested = true;
                self.request_scsi_scan(*scsi_address).await;
            }

            let mut waiter = waiter;
            let recheck = (tokio::time::Instant::now() + SYSFS_RECHECK_INTERVAL).min(deadline);
            let woken = tokio::time::timeout_at(recheck, &mut waiter.receiver).await;
            drop(waiter);
            if woken.is_err() && tokio::time::Instant::now() >= deadline {
                return Err(self.timeout_error(address, timeout, None));
            }
            // Woken by an event for the key, or time to recheck sysfs: look
            // up again, because the disk may already be gone or have a twin
            // on another SCSI controller.
        };

        self.wait_for_node(address, &device, deadline, timeout)
            .await?;
        debug!(self.logger, "block device ready"; "driver" => address.driver(),
            "source" => %address, "device" => %device.dev_path.display(),
            "elapsed_ms" => started.elapsed().as_millis() as u64);
        Ok(device)
    }

    fn register_waiter(&self, state: &mut State, key: DeviceKey) -> Waiter<'_> {
        let (sender, receiver) = oneshot::channel();
        let id = state.next_waiter_id;
        state.next_waiter_id += 1;
        state
            .waiters
            .entry(key.clone())
            .or_default()
            .insert(id, sender);
        Waiter {
            registry: self,
            key,
            id,
            receiver,
        }
    }

    /// Finds the disk at `address` in the registry, or else in sysfs (which
    /// covers disks whose uevent has not been read yet).
    fn lookup_locked(
        &self,
        state: &mut State,
        address: &DeviceAddress,
    ) -> Result<Lookup, DeviceError> {
        match address {
            DeviceAddress::Pci(path) => {
                let key = DeviceKey::Pci(path.clone());
                if !state.by_key.contains_key(&key) {
                    if let Some(disk) = pci::resolve_disk(&self.sysfs_root, path) {
                        self.record_from_sysfs(state, &disk);
                    }
                }
                Ok(single(state, &key))
            }
            DeviceAddress::Scsi(scsi_address) => {
                // sysfs is read even on a hit, so that a twin on another
                // controller whose uevent is still unread is not missed.
                let key = DeviceKey::Scsi(*scsi_address);
                let hosts = scsi::virtio_scsi_hosts(&self.sysfs_root);
                for disk in scsi::find_disks(&hosts, *scsi_address) {
                    self.record_from_sysfs(state, &disk);
                }
                let devpaths = state.by_key.get(&key).cloned().unwrap_or_default();
                if devpaths.len() > 1 {
                    let disks = devpaths
                        .iter()
                        .filter_map(|devpath| state.devices.get(devpath))
                        .map(|entry| entry.device.sysfs_path.clone())
                        .collect();
                    return Err(DeviceError::AmbiguousScsi {
                        address: *scsi_address,
                        disks,
                    });
                }
                Ok(single(state, &key))
            }
            DeviceAddress::Pmem(name) => {
                let key = DeviceKey::Name(name.to_string());
                if !state.by_key.contains_key(&key) {
                    let class_entry = self.sysfs_root.join("class/block").join(name.to_string());
                    self.record_from_sysfs(state, &class_entry);
                }
                Ok(single(state, &key))
            }
            DeviceAddress::DevPath(path) => self.lookup_dev_path(state, path),
        }
    }

    /// Looks an `mmioblk` path up: by device number when the node exists,
    /// else by node name among announced disks whose node is not there yet.
    fn lookup_dev_path(&self, state: &mut State, path: &Path) -> Result<Lookup, DeviceError> {
        let relative = path.strip_prefix("/dev").unwrap_or(path);
        let node = self.dev_root.join(relative);
        let key = DeviceKey::Name(relative.to_string_lossy().into_owned());
        let metadata = match std::fs::metadata(&node) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(single(state, &key));
            }
            Err(error) => return Err(DeviceError::StatNode { path: node, error }),
        };

        if !metadata.file_type().is_block_device() {
            if self.node_check == NodeCheck::BlockDevice {
                return Err(DeviceError::InvalidSource {
                    driver: "mmioblk".into(),
                    source_text: path.display().to_string(),
                    reason: "the path exists but is not a block device".into(),
                });
            }
            return Ok(single(state, &key));
        }

        let rdev = metadata.rdev();
        let devno = (major_of(rdev), minor_of(rdev));
        if let Some(device) = state.device_by_devno(devno) {
            return Ok(Lookup::Found(device.clone()));
        }
        let sysfs_entry = self
            .sysfs_root
            .join(format!("dev/block/{}:{}", devno.0, devno.1));
        self.record_from_sysfs(state, &sysfs_entry);
        if let Some(device) = state.device_by_devno(devno) {
            return Ok(Lookup::Found(device.clone()));
        }

        // NOTE: a block node with no sysfs entry (a stale node, or a sysfs
        // root that is not the running kernel's) is trusted as it is.
        let name = node
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        Ok(Lookup::Found(BlockDevice {
            name,
            dev_path: node,
            major: devno.0,
            minor: devno.1,
            sysfs_path: sysfs_entry,
        }))
    }

    /// Records the block device whose sysfs directory is `path`, unless it
    /// is missing or already known.
    fn record_from_sysfs(&self, state: &mut State, path: &Path) {
        let Some(event) = self.event_from_sysfs(path) else {
            return;
        };
        if !state.devices.contains_key(&event.devpath) {
            self.upsert_locked(state, &event);
        }
    }

    async fn request_scsi_scan(&self, address: ScsiAddress) {
        let sysfs_root = self.sysfs_root.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let hosts = scsi::virtio_scsi_hosts(&sysfs_root);
            scsi::request_scan(&sysfs_root, &hosts, address)
        });
        match scan.await {
            Ok(failures) => {
                for (path, error) in failures {
                    warn!(self.logger, "requesting a SCSI scan failed";
                        "path" => %path.display(), "scsi_address" => %address, "error" => %error);
                }
            }
            Err(error) => warn!(self.logger, "requesting a SCSI scan failed";
                "scsi_address" => %address, "error" => %error),
        }
    }

    /// Polls until the node of an announced disk exists, because devtmpfs
    /// creates it asynchronously.
    async fn wait_for_node(
        &self,
        address: &DeviceAddress,
        device: &BlockDevice,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(), DeviceError> {
        loop {
            if self.node_ready(device) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout_error(address, timeout, Some(device)));
            }
            let next = (tokio::time::Instant::now() + NODE_POLL_INTERVAL).min(deadline);
            tokio::time::sleep_until(next).await;
        }
    }

    fn node_ready(&self, device: &BlockDevice) -> bool {
        let Ok(metadata) = std::fs::metadata(&device.dev_path) else {
            return false;
        };
        match self.node_check {
            NodeCheck::BlockDevice => {
                let rdev = metadata.rdev();
                metadata.file_type().is_block_device()
                    && (major_of(rdev), minor_of(rdev)) == (device.major, device.minor)
            }
            #[cfg(test)]
            NodeCheck::AnyFile => true,
        }
    }

    fn timeout_error(
        &self,
        address: &DeviceAddress,
        timeout: Duration,
        announced: Option<&BlockDevice>,
    ) -> DeviceError {
        let seen = match announced {
            Some(device) => format!(
                "the kernel announced {} but its node {} did not appear",
                device.name,
                device.dev_path.display()
            ),
            None => self.describe_present(address),
        };
        DeviceError::Timeout {
            driver: address.driver().to_string(),
            source_text: address.to_string(),
            waited: timeout,
            seen,
        }
    }

    /// Lists the disks present that a request for `address` could have meant.
    fn describe_present(&self, address: &DeviceAddress) -> String {
        let state = self.lock();
        let mut present: Vec<String> = state
            .devices
            .values()
            .filter_map(|entry| {
                let name = &entry.device.name;
                match address {
                    DeviceAddress::Pci(_) => {
                        entry.pci.as_ref().map(|path| format!("{name} at {path}"))
                    }
                    DeviceAddress::Scsi(_) => entry
                        .scsi
                        .map(|disk| format!("{name} at {} on host{}", disk.address, disk.host)),
                    _ => Some(name.clone()),
                }
            })
            .collect();
        present.sort();
        let kind = match address {
            DeviceAddress::Pci(_) => "virtio-blk disks",
            DeviceAddress::Scsi(_) => "virtio-scsi disks",
            _ => "block devices",
        };
        if present.is_empty() {
            return format!("no {kind} are present; check that the host attached the disk");
        }
        let mut text = format!("{kind} present: ");
        let total = present.len();
        text.push_str(
            &present
                .into_iter()
                .take(SEEN_LIST_MAX)
                .collect::<Vec<_>>()
                .join(", "),
        );
        if total > SEEN_LIST_MAX {
            let _ = write!(text, " and {} more", total - SEEN_LIST_MAX);
        }
        text
    }
}

/// The key under which the disk for `address` will be indexed.
fn waiter_key(address: &DeviceAddress) -> DeviceKey {
    match address {
        DeviceAddress::Pci(path) => DeviceKey::Pci(path.clone()),
        DeviceAddress::Scsi(scsi_address) => DeviceKey::Scsi(*scsi_address),
        DeviceAddress::Pmem(name) => DeviceKey::Name(name.to_string()),
        // No uevent carries the name of a udev symlink such as
        // /dev/disk/by-id/..., so a request for one that does not exist yet
        // finds it at the next sysfs recheck, up to SYSFS_RECHECK_INTERVAL
        // after it appears.
        DeviceAddress::DevPath(path) => {
            let relative = path.strip_prefix("/dev").unwrap_or(path);
            DeviceKey::Name(relative.to_string_lossy().into_owned())
        }
    }
}

/// Returns the one device indexed under `key`.
fn single(state: &State, key: &DeviceKey) -> Lookup {
    let device = state
        .by_key
        .get(key)
        .and_then(|devpaths| devpaths.first())
        .and_then(|devpath| state.devices.get(devpath));
    match device {
        Some(entry) => Lookup::Found(entry.device.clone()),
        None => Lookup::Missing,
    }
}

fn major_of(rdev: u64) -> u32 {
    nix::sys::stat::major(rdev) as u32
}

fn minor_of(rdev: u64) -> u32 {
    nix::sys::stat::minor(rdev) as u32
}
