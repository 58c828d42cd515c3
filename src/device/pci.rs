//! virtio-blk matching: PCI paths read from a disk's sysfs path, and PCI paths
//! resolved to a disk through the root bus and each bridge in sysfs.

use std::path::{Path, PathBuf};

use super::address::{PciPath, PciSlot, MAX_PCI_PATH_SLOTS};
use super::read_attribute;

/// The root bus that PCI paths start from: domain 0000, bus 00.
const ROOT_BUS_DIR: &str = "pci0000:00";

/// A PCI device directory name, `DDDD:BB:SS.F`, split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PciAddress {
    domain: u16,
    bus: u8,
    slot: PciSlot,
}

impl PciAddress {
    fn parse(name: &str) -> Option<PciAddress> {
        let mut parts = name.split(':');
        let domain = parts.next()?;
        let bus = parts.next()?;
        let (slot, function) = parts.next()?.split_once('.')?;
        let fixed_width = domain.len() == 4 && bus.len() == 2 && slot.len() == 2;
        if parts.next().is_some() || !fixed_width || function.len() != 1 {
            return None;
        }
        let slot = PciSlot {
            slot: u8::from_str_radix(slot, 16)
                .ok()
                .filter(|slot| *slot <= 0x1f)?,
            function: function.parse().ok().filter(|function| *function <= 7)?,
        };
        Some(PciAddress {
            domain: u16::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            slot,
        })
    }

    fn dir_name(&self) -> String {
        format!(
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.slot.slot, self.slot.function
        )
    }
}

/// Returns the PCI path of a virtio-blk whole disk from its DEVPATH, e.g.
/// `02/00` for `/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio2/block/vda`.
///
/// Returns `None` for partitions and for disks that are not a virtio device
/// below PCI devices of the root bus. The bus numbers in the path are the
/// kernel's, so none are assumed.
pub fn disk_pci_path(devpath: &str) -> Option<PciPath> {
    let parts: Vec<&str> = devpath.strip_prefix("/devices/")?.split('/').collect();
    let (&root, rest) = parts.split_first()?;
    if root != ROOT_BUS_DIR || rest.len() < 4 || rest.len() > MAX_PCI_PATH_SLOTS + 3 {
        return None;
    }
    let (pci_parts, tail) = rest.split_at(rest.len() - 3);
    if !tail[0].starts_with("virtio") || tail[1] != "block" {
        return None;
    }

    let mut slots = Vec::with_capacity(pci_parts.len());
    for (index, part) in pci_parts.iter().enumerate() {
        let address = PciAddress::parse(part)?;
        // Only the first device must sit on the root bus; the others carry
        // whatever bus number the kernel gave the bridge above them.
        if address.domain != 0 || (index == 0 && address.bus != 0) {
            return None;
        }
        slots.push(address.slot);
    }
    Some(PciPath(slots))
}

/// Finds the sysfs directory of the PCI device at `path`, following the bus
/// number behind each bridge or root port from sysfs.
pub fn resolve_device(sysfs_root: &Path, path: &PciPath) -> Option<PathBuf> {
    let mut dir = sysfs_root.join("devices").join(ROOT_BUS_DIR);
    let mut bus = 0u8;
    for (index, slot) in path.0.iter().enumerate() {
        let address = PciAddress {
            domain: 0,
            bus,
            slot: *slot,
        };
        dir = dir.join(address.dir_name());
        if !dir.is_dir() {
            return None;
        }
        if index + 1 < path.0.len() {
            bus = secondary_bus(&dir)?;
        }
    }
    Some(dir)
}

/// Finds the whole disk of the virtio-blk device at `path`: the one
/// `virtioN/block/<name>` directory below its PCI device.
pub fn resolve_disk(sysfs_root: &Path, path: &PciPath) -> Option<PathBuf> {
    let device = resolve_device(sysfs_root, path)?;
    for entry in std::fs::read_dir(&device).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("virtio") {
            continue;
        }
        // A virtio device of another kind (e.g. virtio-scsi) has no `block`.
        let Ok(disks) = std::fs::read_dir(entry.path().join("block")) else {
            continue;
        };
        if let Some(disk) = disks.flatten().next() {
            return Some(disk.path());
        }
    }
    None
}

/// Reads the number of the bus behind a bridge or root port.
fn secondary_bus(bridge: &Path) -> Option<u8> {
    if let Ok(text) = read_attribute(&bridge.join("secondary_bus_number")) {
        return text.parse().ok();
    }
    // Kernels before 4.15 lack the attribute but list the bus as `DDDD:BB`.
    let entry = std::fs::read_dir(bridge.join("pci_bus"))
        .ok()?
        .flatten()
        .next()?;
    let name = entry.file_name();
    let (_, bus) = name.to_str()?.split_once(':')?;
    u8::from_str_radix(bus, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn disk_pci_path_reads_devpath() {
        let path = disk_pci_path("/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio2/block/vda");
        assert_eq!(path.map(|path| path.to_string()).as_deref(), Some("02/00"));
        let nested = disk_pci_path(
            "/devices/pci0000:00/0000:00:1e.0/0000:05:01.3/0000:06:00.0/virtio7/block/vdc",
        );
        assert_eq!(
            nested.map(|path| path.to_string()).as_deref(),
            Some("1e/01.3/00")
        );
        let root = disk_pci_path("/devices/pci0000:00/0000:00:04.0/virtio1/block/vdb");
        assert_eq!(root.map(|path| path.to_string()).as_deref(), Some("04"));
    }

    #[test]
    fn disk_pci_path_rejects_others() {
        for devpath in [
            "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio2/block/vda/vda1",
            "/devices/virtual/block/loop0",
            "/devices/pci0000:00/0000:00:03.0/virtio1/host0/target0:0:0/0:0:0:1/block/sda",
            "/devices/pci0000:10/0000:10:02.0/virtio2/block/vda",
            "/devices/pci0000:00/0000:01:02.0/virtio2/block/vda",
            "/devices/pci0000:00/0000:00:20.0/virtio2/block/vda",
            "/devices/pci0000:00/virtio2/block/vda",
        ] {
            assert_eq!(disk_pci_path(devpath), None, "{devpath}");
        }
    }

    proptest! {
        #[test]
        fn disk_pci_path_never_panics(devpath in "/devices/pci0000:00(/[0-9a-f:.]{0,14}){0,5}/virtio[0-9]/block/vd[a-z]") {
            if let Some(path) = disk_pci_path(&devpath) {
                prop_assert!(!path.0.is_empty());
            }
        }
    }
}
