//! A fake sysfs tree and `/dev` for unit tests, laid out like a q35 guest's.
//! PCI devices nest below the bridge or root port whose bus they sit on.
//! Virtio devices link to their driver, and `/sys/class` entries link to the
//! device directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::registry::{DeviceRegistry, NodeCheck};
use crate::uevent::Uevent;

pub struct FakeSystem {
    pub dir: tempfile::TempDir,
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

/// A block device created in the fake tree.
#[derive(Debug, Clone)]
pub struct FakeDisk {
    pub name: String,
    /// DEVPATH, starting with `/devices/`.
    pub devpath: String,
    pub major: u32,
    pub minor: u32,
    pub partition: bool,
}

impl FakeDisk {
    pub fn event(&self, action: &str) -> Uevent {
        Uevent {
            action: action.into(),
            devpath: self.devpath.clone(),
            subsystem: "block".into(),
            devname: Some(self.name.clone()),
            devtype: Some(if self.partition { "partition" } else { "disk" }.into()),
            major: Some(self.major),
            minor: Some(self.minor),
            ..Uevent::default()
        }
    }
}

impl FakeSystem {
    pub fn new() -> FakeSystem {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = dir.path().join("sys");
        let dev = dir.path().join("dev");
        for sub in [
            "class/block",
            "class/scsi_host",
            "dev/block",
            "bus/virtio/drivers/virtio_blk",
            "bus/virtio/drivers/virtio_scsi",
            "bus/virtio/drivers/virtio_net",
            "devices/pci0000:00",
        ] {
            std::fs::create_dir_all(sysfs.join(sub)).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        FakeSystem { dir, sysfs, dev }
    }

    /// Creates a registry over this tree that accepts plain files as device nodes.
    pub fn registry(&self) -> Arc<DeviceRegistry> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Arc::new(DeviceRegistry::build(
            logger,
            self.sysfs.clone(),
            self.dev.clone(),
            NodeCheck::AnyFile,
        ))
    }

    fn mkdir(&self, devpath: &str) -> PathBuf {
        let path = self.sysfs.join(devpath.trim_start_matches('/'));
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Adds a PCI device below `parent` (a DEVPATH), e.g. a root port, and
    /// returns its DEVPATH. `secondary_bus` makes it a bridge to that bus.
    pub fn add_pci(&self, parent: &str, bus: u8, slot: u8, secondary_bus: Option<u8>) -> String {
        let devpath = format!("{parent}/0000:{bus:02x}:{slot:02x}.0");
        let dir = self.mkdir(&devpath);
        if let Some(secondary) = secondary_bus {
            std::fs::write(dir.join("secondary_bus_number"), format!("{secondary}\n")).unwrap();
            std::fs::create_dir_all(dir.join(format!("pci_bus/0000:{secondary:02x}"))).unwrap();
        }
        devpath
    }

    /// Adds `virtioN` below a PCI device, bound to `driver`; returns its DEVPATH.
    pub fn add_virtio(&self, pci: &str, index: u32, driver: &str) -> String {
        let devpath = format!("{pci}/virtio{index}");
        let dir = self.mkdir(&devpath);
        let target = self.sysfs.join("bus/virtio/drivers").join(driver);
        std::os::unix::fs::symlink(target, dir.join("driver")).unwrap();
        devpath
    }

    /// Adds a block device directory with its attributes and class links.
    pub fn add_block(&self, parent: &str, name: &str, major: u32, minor: u32) -> FakeDisk {
        let partition = parent.rsplit('/').nth(1) == Some("block");
        let devpath = format!("{parent}/{name}");
        let dir = self.mkdir(&devpath);
        std::fs::write(dir.join("dev"), format!("{major}:{minor}\n")).unwrap();
        let devtype = if partition { "partition" } else { "disk" };
        let uevent = format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE={devtype}\n");
        std::fs::write(dir.join("uevent"), uevent).unwrap();
        if partition {
            std::fs::write(dir.join("partition"), "1\n").unwrap();
        }
        std::os::unix::fs::symlink(&dir, self.sysfs.join("class/block").join(name)).unwrap();
        let devno_link = self.sysfs.join(format!("dev/block/{major}:{minor}"));
        std::os::unix::fs::symlink(&dir, devno_link).unwrap();
        FakeDisk {
            name: name.into(),
            devpath,
            major,
            minor,
            partition,
        }
    }

    /// Adds a virtio-blk disk: `<pci>/virtioN/block/<name>`.
    pub fn add_virtio_blk(&self, pci: &str, index: u32, name: &str, minor: u32) -> FakeDisk {
        let virtio = self.add_virtio(pci, index, "virtio_blk");
        self.add_block(&format!("{virtio}/block"), name, 254, minor)
    }

    /// Adds SCSI host `hostH` below `parent` with its class entry and `scan`
    /// attribute; returns its DEVPATH.
    pub fn add_scsi_host(&self, parent: &str, host: u32) -> String {
        let devpath = format!("{parent}/host{host}");
        let class_dir = self.mkdir(&format!("{devpath}/scsi_host/host{host}"));
        std::fs::write(class_dir.join("scan"), "").unwrap();
        let link = self
            .sysfs
            .join("class/scsi_host")
            .join(format!("host{host}"));
        std::os::unix::fs::symlink(class_dir, link).unwrap();
        devpath
    }

    /// Adds a SCSI disk at `host:0:target:lun`.
    pub fn add_scsi_disk(
        &self,
        host_devpath: &str,
        host: u32,
        target: u32,
        lun: u64,
        name: &str,
        minor: u32,
    ) -> FakeDisk {
        let parent =
            format!("{host_devpath}/target{host}:0:{target}/{host}:0:{target}:{lun}/block");
        self.add_block(&parent, name, 8, minor)
    }

    /// Creates the `/dev` node of `disk` (a plain file).
    pub fn create_node(&self, disk: &FakeDisk) {
        std::fs::write(self.dev.join(&disk.name), "").unwrap();
    }

    /// Deletes `disk` from the tree and `/dev`.
    pub fn remove(&self, disk: &FakeDisk) {
        let _ = std::fs::remove_dir_all(self.sysfs.join(disk.devpath.trim_start_matches('/')));
        let _ = std::fs::remove_file(self.sysfs.join("class/block").join(&disk.name));
        let _ = std::fs::remove_file(
            self.sysfs
                .join(format!("dev/block/{}:{}", disk.major, disk.minor)),
        );
        let _ = std::fs::remove_file(self.dev.join(&disk.name));
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.sysfs.join(path)).unwrap_or_default()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// The root bus DEVPATH.
pub const ROOT: &str = "/devices/pci0000:00";
