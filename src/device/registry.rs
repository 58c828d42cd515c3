//! The registry of present block devices, filled by a sysfs scan and kept
//! current from uevents, with indexes by the keys that requests look up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use slog::{debug, info, warn};
use tokio::sync::{broadcast, oneshot};

use super::address::{PciPath, ScsiAddress};
use super::{pci, read_attribute, scsi, BlockDevice, DeviceError, DeviceEvent, DeviceEventKind};
use crate::uevent::Uevent;

/// Capacity of the [`DeviceRegistry::subscribe`] channel. A subscriber that
/// falls further behind loses the oldest events.
const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Key that a request looks a disk up by. It is computed from the disk's
/// DEVPATH and name, so an event finds its waiters in one hash lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DeviceKey {
    Pci(PciPath),
    Scsi(ScsiAddress),
    /// Node name below `/dev`, e.g. `vda`, `loop3` or `pmem0`.
    Name(String),
}

/// A present device with the keys it is indexed under.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub device: BlockDevice,
    pub pci: Option<PciPath>,
    pub scsi: Option<scsi::ScsiDisk>,
}

impl Entry {
    fn keys(&self) -> Vec<DeviceKey> {
        let mut keys = vec![DeviceKey::Name(self.device.name.clone())];
        keys.extend(self.pci.clone().map(DeviceKey::Pci));
        keys.extend(self.scsi.map(|disk| DeviceKey::Scsi(disk.address)));
        keys
    }
}

/// Registry contents; every field is guarded by the one registry mutex so
/// that a lookup and the registration of a waiter are atomic.
#[derive(Default)]
pub(crate) struct State {
    /// Present devices by DEVPATH (below `/sys`, starting with `/devices/`).
    pub devices: HashMap<String, Entry>,
    /// DEVPATHs by key. A SCSI address may be on several controllers; every
    /// other key names one device.
    pub by_key: HashMap<DeviceKey, Vec<String>>,
    pub by_devno: HashMap<(u32, u32), String>,
    /// Pending requests by the key their disk will have, then by waiter id.
    pub waiters: HashMap<DeviceKey, HashMap<u64, oneshot::Sender<()>>>,
    pub next_waiter_id: u64,
}

impl State {
    pub(crate) fn device_by_devno(&self, devno: (u32, u32)) -> Option<&BlockDevice> {
        let devpath = self.by_devno.get(&devno)?;
        self.devices.get(devpath).map(|entry| &entry.device)
    }
}

/// Sizes of the registry maps, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryStats {
    pub devices: usize,
    pub keys: usize,
    pub devnos: usize,
    pub waiter_keys: usize,
    pub waiters: usize,
}

/// Check applied to a device node before its disk counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeCheck {
    /// A block device node with the disk's major and minor numbers.
    BlockDevice,
    /// Any file; for unit tests on a fake `/dev` that cannot hold real nodes.
    #[cfg(test)]
    AnyFile,
}

/// The set of block devices present in the system.
pub struct DeviceRegistry {
    pub(crate) logger: slog::Logger,
    pub(crate) sysfs_root: PathBuf,
    pub(crate) dev_root: PathBuf,
    pub(crate) node_check: NodeCheck,
    pub(crate) state: Mutex<State>,
    events: broadcast::Sender<DeviceEvent>,
}

impl DeviceRegistry {
    /// Creates an empty registry over the given sysfs and `/dev` roots. Call
    /// [`DeviceRegistry::scan_sysfs`] to record the disks already present.
    pub fn new(
        logger: slog::Logger,
        sysfs_root: PathBuf,
        dev_root: PathBuf,
    ) -> Arc<DeviceRegistry> {
        Arc::new(Self::build(
            logger,
            sysfs_root,
            dev_root,
            NodeCheck::BlockDevice,
        ))
    }

    pub(crate) fn build(
        logger: slog::Logger,
        sysfs_root: PathBuf,
        dev_root: PathBuf,
        node_check: NodeCheck,
    ) -> DeviceRegistry {
        DeviceRegistry {
            logger,
            sysfs_root,
            dev_root,
            node_check,
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent: every
        // update completes before any call that could panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the registry match `/sys/class/block`: records every block device
    /// there, and drops entries for devices that are gone.
    ///
    /// Called at start and after the uevent socket overflowed. SCSI disks are
    /// listed there too, and their address is read from their DEVPATH.
    ///
    /// # Errors
    /// [`DeviceError::ReadSysfs`] when `/sys/class/block` cannot be listed.
    pub fn scan_sysfs(&self) -> Result<(), DeviceError> {
        let class_dir = self.sysfs_root.join("class/block");
        let entries = std::fs::read_dir(&class_dir).map_err(|error| DeviceError::ReadSysfs {
            path: class_dir.clone(),
            error,
        })?;
        let mut events = Vec::new();
        for entry in entries.flatten() {
            match self.event_from_sysfs(&entry.path()) {
                Some(event) => events.push(event),
                None => {
                    debug!(self.logger, "skipped unreadable block device"; "path" => %entry.path().display())
                }
            }
        }

        // Events read while the directory was listed may have added or removed
        // devices since, so sysfs is checked again under the lock.
        let present: HashSet<&str> = events.iter().map(|event| event.devpath.as_str()).collect();
        let mut state = self.lock();
        let gone: Vec<String> = state
            .devices
            .iter()
            .filter(|(devpath, entry)| {
                !present.contains(devpath.as_str()) && !entry.device.sysfs_path.exists()
            })
            .map(|(devpath, _)| devpath.clone())
            .collect();
        for devpath in gone {
            self.remove_locked(&mut state, &devpath);
        }
        for event in &events {
            let sysfs_path = self.sysfs_root.join(event.devpath.trim_start_matches('/'));
            if sysfs_path.exists() {
                self.upsert_locked(&mut state, event);
            }
        }
        info!(self.logger, "scanned sysfs"; "devices" => state.devices.len());
        Ok(())
    }

    /// Builds the `add` event of the block device behind a `/sys/class/block`
    /// link (or any directory of a block device in sysfs).
    pub(crate) fn event_from_sysfs(&self, path: &Path) -> Option<Uevent> {
        let real = std::fs::canonicalize(path).ok()?;
        let root = std::fs::canonicalize(&self.sysfs_root).ok()?;
        let devpath = format!("/{}", real.strip_prefix(&root).ok()?.to_str()?);
        let (major, minor) = parse_devno(&read_attribute(&real.join("dev")).ok()?)?;
        let name = real.file_name()?.to_str()?.to_string();

        // The `uevent` attribute contains DEVNAME, which differs from the
        // directory name for nodes in subdirectories of /dev.
        let uevent = read_attribute(&real.join("uevent")).unwrap_or_default();
        let devname = uevent
            .lines()
            .find_map(|line| line.strip_prefix("DEVNAME="))
            .map_or(name, str::to_string);
        let is_partition = real.join("partition").exists();
        Some(Uevent {
            action: "add".into(),
            devpath,
            subsystem: "block".into(),
            devname: Some(devname),
            devtype: Some(if is_partition { "partition" } else { "disk" }.into()),
            major: Some(major),
            minor: Some(minor),
            ..Uevent::default()
        })
    }

    /// Applies one kernel uevent. `add` and `change` record the device and
    /// wake the requests waiting for it, `remove` drops it, and `move` renames
    /// it. Other subsystems and actions are ignored.
    pub fn handle_uevent(&self, event: &Uevent) {
        if event.subsystem != "block" {
            return;
        }
        match event.action.as_str() {
            "add" | "change" | "online" => {
                let mut state = self.lock();
                self.upsert_locked(&mut state, event);
            }
            "move" => {
                let mut state = self.lock();
                if let Some(old) = event.env.get("DEVPATH_OLD") {
                    self.remove_locked(&mut state, old);
                }
                self.upsert_locked(&mut state, event);
            }
            "remove" => {
                let mut state = self.lock();
                self.remove_locked(&mut state, &event.devpath);
            }
            _ => {}
        }
    }

    /// Looks a present device up by its device number.
    pub fn find_by_devno(&self, major: u32, minor: u32) -> Option<BlockDevice> {
        self.lock().device_by_devno((major, minor)).cloned()
    }

    /// Returns a receiver of every add, change and remove the registry
    /// applies from now on (e.g. a `change` with `resize` after a disk grew).
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceEvent> {
        self.events.subscribe()
    }

    /// Returns the sizes of the registry maps.
    pub fn stats(&self) -> RegistryStats {
        let state = self.lock();
        RegistryStats {
            devices: state.devices.len(),
            keys: state.by_key.len(),
            devnos: state.by_devno.len(),
            waiter_keys: state.waiters.len(),
            waiters: state.waiters.values().map(HashMap::len).sum(),
        }
    }

    /// Records the device of `event`, replacing a stale entry that has the
    /// same DEVPATH, name, device number or PCI path, then wakes its waiters.
    pub(crate) fn upsert_locked(&self, state: &mut State, event: &Uevent) {
        let (Some(major), Some(minor)) = (event.major, event.minor) else {
            debug!(self.logger, "ignored block uevent without a device number";
                "devpath" => &event.devpath, "action" => &event.action);
            return;
        };
        // The kernel sends DEVNAME for every block device; the DEVPATH's last
        // component is the same name.
        let devname = match &event.devname {
            Some(devname) => devname.as_str(),
            None => event.devpath.rsplit('/').next().unwrap_or_default(),
        };
        let is_disk = event.devtype.as_deref() != Some("partition");
        let entry = Entry {
            device: BlockDevice {
                name: devname.to_string(),
                dev_path: self.dev_root.join(devname),
                major,
                minor,
                sysfs_path: self.sysfs_root.join(event.devpath.trim_start_matches('/')),
            },
            pci: is_disk
                .then(|| pci::disk_pci_path(&event.devpath))
                .flatten(),
            scsi: is_disk
                .then(|| scsi::disk_scsi_address(&self.sysfs_root, &event.devpath))
                .flatten(),
        };

        let known = state.devices.contains_key(&event.devpath);
        self.remove_conflicts(state, &event.devpath, &entry);
        if known {
            self.unindex(state, &event.devpath);
        }
        let keys = entry.keys();
        for key in &keys {
            let devpaths = state.by_key.entry(key.clone()).or_default();
            if !devpaths.contains(&event.devpath) {
                devpaths.push(event.devpath.clone());
            }
        }
        state.by_devno.insert((major, minor), event.devpath.clone());
        let device = entry.device.clone();
        let (entry_pci, entry_scsi) = (entry.pci.clone(), entry.scsi);
        state.devices.insert(event.devpath.clone(), entry);

        if !known {
            let pci_path = entry_pci.map(|path| path.to_string());
            let scsi_address = entry_scsi.map(|disk| disk.address.to_string());
            debug!(self.logger, "block device added"; "device" => &device.name,
                "devpath" => &event.devpath, "major" => major, "minor" => minor,
                "pci_path" => pci_path, "scsi_address" => scsi_address);
        }
        for key in &keys {
            if let Some(waiters) = state.waiters.remove(key) {
                for (_, waiter) in waiters {
                    // A waiter that gave up dropped its receiver; that is fine.
                    let _ = waiter.send(());
                }
            }
        }
        let kind = if known {
            DeviceEventKind::Changed
        } else {
            DeviceEventKind::Added
        };
        let _ = self.events.send(DeviceEvent {
            kind,
            device,
            resize: event.resize,
        });
    }

    /// Removes entries that a new device at `devpath` supersedes: the kernel
    /// reuses names, device numbers and addresses only after the old device
    /// is gone, so such an entry is stale (its `remove` event was lost).
    fn remove_conflicts(&self, state: &mut State, devpath: &str, entry: &Entry) {
        let mut stale: Vec<String> = Vec::new();
        let mut single_keys = vec![DeviceKey::Name(entry.device.name.clone())];
        single_keys.extend(entry.pci.clone().map(DeviceKey::Pci));
        for key in &single_keys {
            stale.extend(state.by_key.get(key).into_iter().flatten().cloned());
        }
        if let Some(disk) = entry.scsi {
            let same_host = state
                .by_key
                .get(&DeviceKey::Scsi(disk.address))
                .into_iter()
                .flatten()
                .filter(|other| {
                    let host = state.devices.get(*other).and_then(|other| other.scsi);
                    host.map(|other| other.host) == Some(disk.host)
                });
            stale.extend(same_host.cloned());
        }
        stale.extend(
            state
                .by_devno
                .get(&(entry.device.major, entry.device.minor))
                .cloned(),
        );

        stale.retain(|other| other != devpath);
        stale.sort();
        stale.dedup();
        for other in stale {
            warn!(self.logger, "replaced stale block device entry";
                "devpath" => &other, "new_devpath" => devpath);
            self.remove_locked(state, &other);
        }
    }

    /// Forgets the device at `devpath` and every index entry pointing to it.
    pub(crate) fn remove_locked(&self, state: &mut State, devpath: &str) {
        self.unindex(state, devpath);
        if let Some(entry) = state.devices.remove(devpath) {
            debug!(self.logger, "block device removed"; "device" => &entry.device.name, "devpath" => devpath);
            let _ = self.events.send(DeviceEvent {
                kind: DeviceEventKind::Removed,
                device: entry.device,
                resize: false,
            });
        }
    }

    fn unindex(&self, state: &mut State, devpath: &str) {
        let Some(entry) = state.devices.get(devpath) else {
            return;
        };
        let devno = (entry.device.major, entry.device.minor);
        for key in entry.keys() {
            if let Some(devpaths) = state.by_key.get_mut(&key) {
                devpaths.retain(|other| other != devpath);
                if devpaths.is_empty() {
                    state.by_key.remove(&key);
                }
            }
        }
        if state.by_devno.get(&devno).map(String::as_str) == Some(devpath) {
            state.by_devno.remove(&devno);
        }
    }
}

/// Parses a `dev` attribute, `MAJOR:MINOR`.
pub(crate) fn parse_devno(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
