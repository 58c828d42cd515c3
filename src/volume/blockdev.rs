//! The block device behind a volume: its sysfs directory, size and rescan.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::device::{read_attribute, DeviceRegistry};

/// Sector unit of the sysfs `size` attribute, whatever the device's
/// logical block size.
const SYSFS_SECTOR_BYTES: u64 = 512;

// BLKGETSIZE64 = _IOR(0x12, 114, size_t) in <linux/fs.h>.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Returns the sysfs directory of device `major:minor`: the registry's entry
/// when it has the device, else the `dev/block/MAJ:MIN` link resolved.
/// The result may not exist, which means the device is gone.
pub fn sysfs_dir(registry: &DeviceRegistry, sysfs_root: &Path, major: u32, minor: u32) -> PathBuf {
    if let Some(device) = registry.find_by_devno(major, minor) {
        return device.sysfs_path;
    }
    let link = sysfs_root
        .join("dev/block")
        .join(format!("{major}:{minor}"));
    std::fs::canonicalize(&link).unwrap_or(link)
}

/// Returns the kernel name (`vda`, `sdb`, `loop3`) of the device whose
/// sysfs directory is `sysfs_dir`, which also names its `/sys/fs/<fs>/` entry.
pub fn kernel_name(sysfs_dir: &Path) -> Option<String> {
    if let Ok(uevent) = std::fs::read_to_string(sysfs_dir.join("uevent")) {
        let name = uevent
            .lines()
            .find_map(|line| line.strip_prefix("DEVNAME="));
        if let Some(name) = name {
            return Some(name.to_string());
        }
    }
    sysfs_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// Reads the size in bytes from the sysfs `size` attribute.
pub fn sysfs_size(sysfs_dir: &Path) -> std::io::Result<u64> {
    let path = sysfs_dir.join("size");
    let text = read_attribute(&path)?;
    let sectors: u64 = text.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} contains {text:?}, not a sector count", path.display()),
        )
    })?;
    Ok(sectors.saturating_mul(SYSFS_SECTOR_BYTES))
}

/// Reads the size in bytes of the block device node at `dev_path` with the
/// BLKGETSIZE64 ioctl. Opening a device node can block on a hung device:
/// call it through a probe.
pub fn ioctl_size(dev_path: &Path) -> std::io::Result<u64> {
    let file = File::open(dev_path)?;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the whole call and `size` is a valid,
    // writable u64, which is what BLKGETSIZE64 stores through its pointer.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// Asks a SCSI disk to re-read its capacity by writing `1` to its
/// `device/rescan`. For a partition this rescans the disk that contains it.
/// Returns the rescan path written, or `None` when the device has no rescan
/// attribute (virtio-blk and loop devices update their size themselves).
pub fn rescan(sysfs_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let disk_dir = if sysfs_dir.join("partition").exists() {
        sysfs_dir.parent().unwrap_or(sysfs_dir)
    } else {
        sysfs_dir
    };
    let path = disk_dir.join("device/rescan");
    if !path.exists() {
        return Ok(None);
    }
    std::fs::write(&path, b"1")?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_size_in_sectors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("size"), "2048\n").unwrap();
        assert_eq!(sysfs_size(dir.path()).unwrap(), 2048 * 512);
        std::fs::write(dir.path().join("size"), "lots\n").unwrap();
        let error = sysfs_size(dir.path()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn kernel_name_from_uevent_or_dir() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("sdb");
        std::fs::create_dir(&disk).unwrap();
        assert_eq!(kernel_name(&disk).as_deref(), Some("sdb"));
        std::fs::write(
            disk.join("uevent"),
            "MAJOR=8\nMINOR=16\nDEVNAME=sdc\nDEVTYPE=disk\n",
        )
        .unwrap();
        assert_eq!(kernel_name(&disk).as_deref(), Some("sdc"));
    }

    #[test]
    fn rescan_scsi_disk_and_partition() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("sdb");
        let partition = disk.join("sdb1");
        std::fs::create_dir_all(disk.join("device")).unwrap();
        std::fs::create_dir_all(&partition).unwrap();
        std::fs::write(partition.join("partition"), "1\n").unwrap();
        assert_eq!(rescan(&disk).unwrap(), None, "no rescan attribute");

        std::fs::write(disk.join("device/rescan"), "").unwrap();
        let written = rescan(&partition).unwrap();
        assert_eq!(written, Some(disk.join("device/rescan")));
        assert_eq!(
            std::fs::read_to_string(disk.join("device/rescan")).unwrap(),
            "1"
        );
    }
}
