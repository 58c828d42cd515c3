//! `GetVolumeStats`: usage and condition of managed and unmanaged paths.

use std::path::{Path, PathBuf};

use protocols::csi::VolumeStatsResponse;
use slog::{info, warn};

use super::condition::{self, Condition, FsFacts, FsObservation};
use super::probe::ProbeStall;
use super::usage::{self, FsCounts};
use super::{blockdev, is_missing, mount_entry_at, VolumeError, VolumeService};
use crate::mountinfo;
use crate::storage::ManagedVolume;

impl VolumeService {
    /// Returns the statistics of `path` on the managed `volume`, which the
    /// caller looked up and locked. An I/O error or a hung probe gives an
    /// abnormal condition and no usage, not an error.
    ///
    /// # Errors
    /// NOT_FOUND when `path` does not exist.
    pub async fn volume_stats(
        &self,
        path: &Path,
        volume: &ManagedVolume,
    ) -> Result<VolumeStatsResponse, VolumeError> {
        if volume.fstype.is_empty() {
            self.block_device_stats(path, volume).await
        } else {
            self.filesystem_stats(path, volume).await
        }
    }

    /// Returns the statistics of a path on no managed volume from `statfs`
    /// alone.
    pub(super) async fn unmanaged_stats(
        &self,
        path: &Path,
    ) -> Result<VolumeStatsResponse, VolumeError> {
        let owned = path.to_path_buf();
        let probed = self
            .prober
            .run(path, move || nix::sys::statvfs::statvfs(&owned))
            .await
            .map_err(|stall| self.probe_timeout("statfs", path, stall))?;
        let stat = match probed {
            Err(nix::errno::Errno::ENOENT)
            | Err(nix::errno::Errno::ENOTDIR)
            | Err(nix::errno::Errno::ELOOP) => {
                return Err(VolumeError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(error) => {
                return Err(VolumeError::Statfs {
                    path: path.to_path_buf(),
                    error,
                })
            }
            Ok(stat) => stat,
        };
        let counts = FsCounts::from(&stat);
        let mut response = VolumeStatsResponse::new();
        response.usage.push(usage::byte_usage(&counts));
        response.usage.push(usage::inode_usage(&counts));
        let message = format!(
            "{} is not on a volume this agent manages, so usage is statfs of the path \
             and the condition is not checked",
            path.display()
        );
        response.volume_condition = Some(Condition::unjudged(message)).into();
        Ok(response)
    }

    async fn filesystem_stats(
        &self,
        path: &Path,
        volume: &ManagedVolume,
    ) -> Result<VolumeStatsResponse, VolumeError> {
        let requested = path.to_path_buf();
        let mount_point = volume.mount_point.clone();
        let probed = self
            .prober
            .run(&volume.mount_point, move || {
                let exists = std::fs::metadata(&requested).map(|_| ());
                (exists, FsObservation::collect(&mount_point))
            })
            .await;
        let observation = require_path(path, probed)?;

        let (devno, sysfs_dir) = self.device_dir(volume);
        let device_present = sysfs_dir.exists();
        let sysfs_problem = blockdev::kernel_name(&sysfs_dir)
            .filter(|_| device_present)
            .and_then(|name| condition::fs_sysfs_problem(&self.sysfs_root, &volume.fstype, &name));

        // The cached mount table is current for mounts and remounts, but a
        // filesystem that turns itself read-only after an error changes its
        // superblock options without a mount table event. On ext4 that error
        // also raises errors_count, and a shut-down xfs fails the probe, so
        // then the table is read anew.
        // NOTE: other filesystem types that go read-only on their own without
        // such a sign are seen only after the next mount table event.
        let healthy_probe = matches!(
            &observation,
            Ok(FsObservation {
                statfs: Ok(_),
                root_open: Ok(()),
            })
        );
        let entries = if device_present && sysfs_problem.is_none() && healthy_probe {
            self.mount_table.entries()
        } else {
            mountinfo::read().map(std::sync::Arc::new)
        }
        .map_err(|error| VolumeError::ReadMountinfo { error })?;
        let mount = mount_entry_at(&entries, &volume.mount_point);
        let facts = FsFacts {
            mount_point: &volume.mount_point,
            devno: &devno,
            device_present,
            mount: mount.as_ref(),
            sysfs_problem,
            probe: observation.as_ref(),
        };
        let mut condition = condition::assess_filesystem(&facts);
        let mismatch = mount
            .as_ref()
            .and_then(|entry| device_mismatch(entry, volume));
        // statfs of a mount point that lost its mount, or that another
        // mount covers, describes some other filesystem.
        let statfs_is_volume = mount.is_some() && mismatch.is_none();
        condition.problems.extend(mismatch);

        let mut response = VolumeStatsResponse::new();
        let counts = match &observation {
            Ok(FsObservation {
                statfs: Ok(counts), ..
            }) if statfs_is_volume => Some(counts),
            _ => None,
        };
        let device_bytes = blockdev::sysfs_size(&sysfs_dir).ok();
        if let (Some(counts), Some(device_bytes)) = (counts, device_bytes) {
            condition.problems.extend(condition::shrunk_device_problem(
                &volume.fstype,
                &devno,
                device_bytes,
                counts,
            ));
        }
        if let Some(counts) = counts {
            response.usage.push(usage::byte_usage(counts));
            response.usage.push(usage::inode_usage(counts));
        }
        self.log_condition(volume, &condition);
        response.volume_condition = Some(condition.to_proto()).into();
        Ok(response)
    }

    async fn block_device_stats(
        &self,
        path: &Path,
        volume: &ManagedVolume,
    ) -> Result<VolumeStatsResponse, VolumeError> {
        let requested = path.to_path_buf();
        let dev_path = volume.dev_path.clone();
        let probed = self
            .prober
            .run(&volume.dev_path, move || {
                let exists = std::fs::metadata(&requested).map(|_| ());
                (exists, blockdev::ioctl_size(&dev_path))
            })
            .await;
        let size = match require_path(path, probed)? {
            Ok(size) => size.map_err(|error| error.to_string()),
            Err(stall) => Err(format!("the probe {stall}; the device may be hung")),
        };

        let (devno, sysfs_dir) = self.device_dir(volume);
        let condition = condition::assess_block_device(
            &volume.dev_path,
            &devno,
            sysfs_dir.exists(),
            size.as_ref(),
        );
        let mut response = VolumeStatsResponse::new();
        if let Ok(size) = size {
            response.usage.push(usage::block_device_usage(size));
        }
        self.log_condition(volume, &condition);
        response.volume_condition = Some(condition.to_proto()).into();
        Ok(response)
    }

    /// Logs a change of the volume's condition once. Stats are polled
    /// (by kubelet every minute by default, `--volume-stats-agg-period`),
    /// so an unchanged condition is not logged again.
    fn log_condition(&self, volume: &ManagedVolume, condition: &Condition) {
        let message = condition.message();
        let previous = {
            let mut last = self
                .last_conditions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            last.insert(volume.mount_point.clone(), message.clone())
        };
        let changed = previous
            .as_deref()
            .map_or(condition.is_abnormal(), |previous| previous != message);
        if !changed {
            return;
        }
        if condition.is_abnormal() {
            warn!(self.logger, "volume is abnormal";
                "mount_point" => %volume.mount_point.display(),
                "device" => %volume.dev_path.display(),
                "condition" => message);
        } else {
            info!(self.logger, "volume is healthy again";
                "mount_point" => %volume.mount_point.display(),
                "device" => %volume.dev_path.display());
        }
    }
}

/// Unpacks a probe that also ran `metadata` on the requested path: NOT_FOUND
/// when that path is missing, else what the probe returned.
fn require_path<T>(
    path: &Path,
    probed: Result<(std::io::Result<()>, T), ProbeStall>,
) -> Result<Result<T, ProbeStall>, VolumeError> {
    match probed {
        Ok((Err(error), _)) if is_missing(&error) => Err(VolumeError::NotFound {
            path: path.to_path_buf(),
        }),
        Ok((_, result)) => Ok(Ok(result)),
        Err(stall) => Ok(Err(stall)),
    }
}

/// Describes a mount whose device differs from the storage's record. An
/// anonymous device (major 0) is what btrfs reports for its own disks, so
/// such a mount differs only when its filesystem type does, as a tmpfs
/// mounted over the storage does.
pub(super) fn device_mismatch(
    entry: &mountinfo::MountInfoEntry,
    volume: &ManagedVolume,
) -> Option<String> {
    let differs = if entry.major == 0 {
        entry.fstype != volume.fstype
    } else {
        (entry.major, entry.minor) != (volume.major, volume.minor)
    };
    differs.then(|| {
        format!(
            "{} is backed by device {} ({}), but the storage was set up on device {}:{} ({})",
            PathBuf::from(&entry.mount_point).display(),
            entry.devno(),
            entry.fstype,
            volume.major,
            volume.minor,
            volume.fstype
        )
    })
}
