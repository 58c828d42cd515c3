//! virtio-scsi matching: SCSI addresses read from a disk's sysfs path, the
//! SCSI hosts that belong to virtio-scsi controllers, and target scans.

use std::path::{Path, PathBuf};

use super::address::ScsiAddress;

/// Driver name of virtio-scsi controllers below `/sys/bus/virtio/drivers`.
const VIRTIO_SCSI_DRIVER: &str = "virtio_scsi";

/// A whole disk on a virtio-scsi controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiDisk {
    pub address: ScsiAddress,
    /// Number `H` of the SCSI host `hostH` the disk is on.
    pub host: u32,
}

/// Returns the SCSI address of a whole disk from its DEVPATH, e.g. `0:1` for
/// `/devices/.../virtio1/host0/target0:0:0/0:0:0:1/block/sda`.
///
/// Returns `None` for partitions, for channels other than 0, and for disks
/// whose SCSI host is not the child of a device bound to `virtio_scsi`. That
/// last check reads one symlink below `sysfs_root`.
pub fn disk_scsi_address(sysfs_root: &Path, devpath: &str) -> Option<ScsiDisk> {
    let parts: Vec<&str> = devpath.split('/').collect();
    let [.., virtio, host, target, lun_dir, block, _name] = parts.as_slice() else {
        return None;
    };
    if !virtio.starts_with("virtio") || *block != "block" {
        return None;
    }
    let host: u32 = host.strip_prefix("host")?.parse().ok()?;
    let [lun_host, channel, lun_target, lun] = split_numbers::<4>(lun_dir)?;
    let [target_host, target_channel, target_id] =
        split_numbers::<3>(target.strip_prefix("target")?)?;
    let consistent = lun_host == u64::from(host)
        && target_host == u64::from(host)
        && channel == 0
        && target_channel == 0
        && target_id == lun_target;
    if !consistent {
        return None;
    }

    // The DEVPATH up to and including `virtioN`.
    let virtio_end = parts.len() - 5;
    let virtio_dir = sysfs_root.join(parts[1..virtio_end].join("/"));
    if !is_virtio_scsi(&virtio_dir) {
        return None;
    }
    Some(ScsiDisk {
        address: ScsiAddress {
            target: u32::try_from(target_id).ok()?,
            lun,
        },
        host,
    })
}

/// True when the virtio device at `virtio_dir` is bound to `virtio_scsi`.
fn is_virtio_scsi(virtio_dir: &Path) -> bool {
    std::fs::read_link(virtio_dir.join("driver"))
        .map(|driver| driver.file_name() == Some(VIRTIO_SCSI_DRIVER.as_ref()))
        .unwrap_or(false)
}

/// Splits `H:C:T:L` (or `H:C:T`) into decimal numbers.
fn split_numbers<const N: usize>(text: &str) -> Option<[u64; N]> {
    let mut numbers = [0u64; N];
    let mut parts = text.split(':');
    for number in numbers.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        *number = part.parse().ok()?;
    }
    parts.next().is_none().then_some(numbers)
}

/// A SCSI host of a virtio-scsi controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioScsiHost {
    /// Number `H` of `hostH`.
    pub number: u32,
    /// The `hostH` directory below the controller's `virtioN` directory.
    pub dir: PathBuf,
}

/// Lists the SCSI hosts in `/sys/class/scsi_host` that belong to virtio-scsi
/// controllers, whatever their host numbers.
pub fn virtio_scsi_hosts(sysfs_root: &Path) -> Vec<VirtioScsiHost> {
    let Ok(entries) = std::fs::read_dir(sysfs_root.join("class/scsi_host")) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_prefix("host"))
            .and_then(|number| number.parse().ok())
        else {
            continue;
        };
        // The class entry links to `.../virtioN/hostH/scsi_host/hostH`.
        let Ok(class_dir) = std::fs::canonicalize(entry.path()) else {
            continue;
        };
        let Some(host_dir) = class_dir.parent().and_then(Path::parent) else {
            continue;
        };
        let Some(virtio_dir) = host_dir.parent() else {
            continue;
        };
        let is_virtio = virtio_dir
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("virtio"));
        if is_virtio && is_virtio_scsi(virtio_dir) {
            hosts.push(VirtioScsiHost {
                number,
                dir: host_dir.to_path_buf(),
            });
        }
    }
    hosts.sort_by_key(|host| host.number);
    hosts
}

/// Finds the whole disks at `address` on every virtio-scsi host.
pub fn find_disks(hosts: &[VirtioScsiHost], address: ScsiAddress) -> Vec<PathBuf> {
    let mut disks = Vec::new();
    for host in hosts {
        let ScsiAddress { target, lun } = address;
        let number = host.number;
        let block = host
            .dir
            .join(format!("target{number}:0:{target}"))
            .join(format!("{number}:0:{target}:{lun}"))
            .join("block");
        if let Ok(entries) = std::fs::read_dir(block) {
            disks.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    disks
}

/// Asks each host to scan for the disk at `address` (channel 0), so a LUN
/// that the controller has not reported yet is probed now.
///
/// Returns the hosts whose scan failed, with the error.
pub fn request_scan(
    sysfs_root: &Path,
    hosts: &[VirtioScsiHost],
    address: ScsiAddress,
) -> Vec<(PathBuf, std::io::Error)> {
    let request = format!("0 {} {}", address.target, address.lun);
    let mut failures = Vec::new();
    for host in hosts {
        let scan = sysfs_root
            .join("class/scsi_host")
            .join(format!("host{}", host.number))
            .join("scan");
        if let Err(error) = std::fs::write(&scan, &request) {
            failures.push((scan, error));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_numbers_checks_count_and_digits() {
        assert_eq!(split_numbers::<4>("2:0:3:1"), Some([2, 0, 3, 1]));
        assert_eq!(split_numbers::<4>("2:0:3"), None);
        assert_eq!(split_numbers::<3>("2:0:3:1"), None);
        assert_eq!(split_numbers::<3>("2:+0:3"), None);
        assert_eq!(split_numbers::<3>("2::3"), None);
    }

    proptest! {
        #[test]
        fn disk_scsi_address_never_panics(devpath in "(/[a-z0-9:]{0,12}){0,8}") {
            let root = Path::new("/nonexistent-sysfs");
            prop_assert_eq!(disk_scsi_address(root, &devpath), None);
        }
    }
}
