//! `ResizeVolume`: rescan, wait for the device size, grow online, confirm.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use slog::{info, warn};

use super::condition::{self, FsFacts, FsObservation};
use super::geometry::{self, FsGeometry};
use super::stats::device_mismatch;
use super::tool::{find_tool, has_effective_capability, one_line, GrowTool};
use super::usage::FsCounts;
use super::{blockdev, mount_entry_at, VolumeError, VolumeService};
use crate::mountinfo;
use crate::storage::ManagedVolume;

/// Interval between two reads of the device size while waiting for it.
const SIZE_POLL_INTERVAL: Duration = Duration::from_millis(50);

type GeometryReader = fn(&Path) -> Result<FsGeometry, String>;

/// Result of a successful resize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResizeOutcome {
    /// A raw block volume: the device reports `device_bytes`, nothing grown.
    DeviceOnly { device_bytes: u64 },
    /// The filesystem already uses all of the device the tool would give it.
    AlreadyGrown { device_bytes: u64, fs_bytes: u64 },
    /// The tool ran and `statfs` shows the filesystem grew.
    Grown { before: u64, after: u64 },
}

impl VolumeService {
    /// Grows the managed `volume`, which the caller looked up and locked, to
    /// at least `size` bytes (0: whatever the device now has), giving up at
    /// `deadline`.
    pub async fn resize_volume(
        &self,
        volume: &ManagedVolume,
        size: u64,
        deadline: Instant,
    ) -> Result<ResizeOutcome, VolumeError> {
        let (devno, sysfs_dir) = self.device_dir(volume);
        if !sysfs_dir.exists() {
            return Err(VolumeError::DeviceGone {
                path: volume.mount_point.clone(),
                devno,
            });
        }
        if volume.fstype.is_empty() {
            self.check_device_node(volume)?;
            self.rescan(&devno, &sysfs_dir).await?;
            let device_bytes = self
                .wait_for_size(volume, &sysfs_dir, size, deadline)
                .await?;
            if device_bytes == 0 {
                return Err(VolumeError::EmptyDevice {
                    path: volume.mount_point.clone(),
                    device: volume.dev_path.clone(),
                });
            }
            return Ok(ResizeOutcome::DeviceOnly { device_bytes });
        }

        let tool =
            GrowTool::for_fstype(&volume.fstype).ok_or_else(|| VolumeError::UnsupportedFstype {
                mount_point: volume.mount_point.clone(),
                fstype: volume.fstype.clone(),
            })?;
        self.check_filesystem(volume, &devno, &sysfs_dir).await?;
        let geometry = self.read_geometry(volume, tool).await?;
        let before = self.statfs(&volume.mount_point).await?;
        let current = geometry.map_or(before.total_bytes(), |geometry| geometry.bytes());
        if size > 0 && size < current {
            return Err(VolumeError::Shrink {
                path: volume.mount_point.clone(),
                requested: size,
                current,
            });
        }

        self.rescan(&devno, &sysfs_dir).await?;
        let device_bytes = self
            .wait_for_size(volume, &sysfs_dir, size, deadline)
            .await?;
        if let Some(geometry) = geometry.filter(|geometry| geometry.covers(device_bytes)) {
            return Ok(ResizeOutcome::AlreadyGrown {
                device_bytes,
                fs_bytes: geometry.bytes(),
            });
        }

        let (capability, capability_name) = tool.capability();
        if !has_effective_capability(capability) {
            return Err(VolumeError::MissingCapability {
                tool: tool.program(),
                capability: capability_name,
            });
        }

        info!(self.logger, "growing filesystem";
            "mount_point" => %volume.mount_point.display(),
            "device" => %volume.dev_path.display(),
            "fstype" => &volume.fstype,
            "size" => size,
            "device_bytes" => device_bytes);
        let tool_result = self.run_tool(tool, volume, deadline).await;
        let after = self.statfs(&volume.mount_point).await?;
        let grew = after.total_bytes() > before.total_bytes();
        match tool_result {
            Ok(()) if grew => {}
            // NOTE: btrfs has no geometry check above, so a repeated grow
            // reaches the tool, which succeeds without growing.
            Ok(()) if tool == GrowTool::Btrfs => {
                return Ok(ResizeOutcome::AlreadyGrown {
                    device_bytes,
                    fs_bytes: after.total_bytes(),
                })
            }
            Ok(()) => {
                return Err(VolumeError::NotGrown {
                    tool: tool.program(),
                    mount_point: volume.mount_point.clone(),
                    before: before.total_bytes(),
                    after: after.total_bytes(),
                })
            }
            Err(error) if grew => {
                warn!(self.logger, "grow tool failed but the filesystem grew";
                    "mount_point" => %volume.mount_point.display(),
                    "error" => %error);
            }
            Err(error) => return Err(error),
        }
        Ok(ResizeOutcome::Grown {
            before: before.total_bytes(),
            after: after.total_bytes(),
        })
    }

    /// Rejects a raw block volume whose device node is now another device.
    fn check_device_node(&self, volume: &ManagedVolume) -> Result<(), VolumeError> {
        let metadata =
            std::fs::metadata(&volume.dev_path).map_err(|error| VolumeError::DeviceSize {
                device: volume.dev_path.clone(),
                error,
            })?;
        let rdev = metadata.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        if !metadata.file_type().is_block_device()
            || (major, minor) != (u64::from(volume.major), u64::from(volume.minor))
        {
            return Err(VolumeError::DeviceMismatch {
                path: volume.dev_path.clone(),
                recorded: format!("{}:{}", volume.major, volume.minor),
                mounted: format!("{major}:{minor}"),
            });
        }
        Ok(())
    }

    /// Fails unless the mount point is mounted read-write from the recorded
    /// device and the filesystem shows no errors; such a filesystem is left
    /// untouched.
    async fn check_filesystem(
        &self,
        volume: &ManagedVolume,
        devno: &str,
        sysfs_dir: &Path,
    ) -> Result<(), VolumeError> {
        let entries = mountinfo::read().map_err(|error| VolumeError::ReadMountinfo { error })?;
        let mount = mount_entry_at(&entries, &volume.mount_point).ok_or_else(|| {
            VolumeError::NotMounted {
                mount_point: volume.mount_point.clone(),
            }
        })?;
        if let Some(entry_device) = device_mismatch(&mount, volume).map(|_| mount.devno()) {
            return Err(VolumeError::DeviceMismatch {
                path: volume.mount_point.clone(),
                recorded: devno.to_string(),
                mounted: entry_device,
            });
        }
        // The grow ioctls need write access (EROFS otherwise), so a
        // read-only storage is rejected before any tool runs.
        if mount.mount_options.iter().any(|option| option == "ro") {
            return Err(VolumeError::ReadOnly {
                mount_point: volume.mount_point.clone(),
                options: mount.mount_options.join(","),
            });
        }

        let mount_point = volume.mount_point.clone();
        let observation = self
            .prober
            .run(&volume.mount_point, move || {
                FsObservation::collect(&mount_point)
            })
            .await
            .map_err(|stall| self.probe_timeout("statfs", &volume.mount_point, stall))?;
        let sysfs_problem = blockdev::kernel_name(sysfs_dir)
            .and_then(|name| condition::fs_sysfs_problem(&self.sysfs_root, &volume.fstype, &name));
        let facts = FsFacts {
            mount_point: &volume.mount_point,
            devno,
            device_present: true,
            mount: Some(&mount),
            sysfs_problem,
            probe: Ok(&observation),
        };
        let mut condition = condition::assess_filesystem(&facts);
        if let (Ok(counts), Ok(device_bytes)) =
            (&observation.statfs, blockdev::sysfs_size(sysfs_dir))
        {
            condition.problems.extend(condition::shrunk_device_problem(
                &volume.fstype,
                devno,
                device_bytes,
                counts,
            ));
        }
        if condition.is_abnormal() {
            return Err(VolumeError::FilesystemErrors {
                mount_point: volume.mount_point.clone(),
                reason: condition.message(),
            });
        }
        Ok(())
    }

    /// Reads the filesystem's own size; `None` for btrfs, whose size only
    /// `statfs` gives here.
    async fn read_geometry(
        &self,
        volume: &ManagedVolume,
        tool: GrowTool,
    ) -> Result<Option<FsGeometry>, VolumeError> {
        let (key, read): (PathBuf, GeometryReader) = match tool {
            GrowTool::Resize2fs => (volume.dev_path.clone(), geometry::read_ext4),
            GrowTool::XfsGrowfs => (volume.mount_point.clone(), geometry::read_xfs),
            GrowTool::Btrfs => return Ok(None),
        };
        let target = key.clone();
        let result = self
            .prober
            .run(&key, move || read(&target))
            .await
            .map_err(|stall| self.probe_timeout("reading the geometry", &key, stall))?;
        result.map(Some).map_err(|reason| VolumeError::Geometry {
            fstype: volume.fstype.clone(),
            path: key,
            reason,
        })
    }

    async fn statfs(&self, mount_point: &Path) -> Result<FsCounts, VolumeError> {
        let owned = mount_point.to_path_buf();
        self.prober
            .run(mount_point, move || nix::sys::statvfs::statvfs(&owned))
            .await
            .map_err(|stall| self.probe_timeout("statfs", mount_point, stall))?
            .map(|stat| FsCounts::from(&stat))
            .map_err(|error| VolumeError::Statfs {
                path: mount_point.to_path_buf(),
                error,
            })
    }

    /// Rescans a SCSI device; other devices update their size themselves.
    async fn rescan(&self, devno: &str, sysfs_dir: &Path) -> Result<(), VolumeError> {
        let dir = sysfs_dir.to_path_buf();
        let result = self
            .prober
            .run(sysfs_dir, move || blockdev::rescan(&dir))
            .await
            .map_err(|stall| self.probe_timeout("SCSI rescan", sysfs_dir, stall))?;
        match result {
            Ok(Some(path)) => {
                info!(self.logger, "rescanned device"; "device" => devno, "path" => %path.display());
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => Err(VolumeError::Rescan {
                device: devno.to_string(),
                path: sysfs_dir.join("device/rescan"),
                error,
            }),
        }
    }

    /// Polls the sysfs size until the device reports at least `size` bytes
    /// and returns the size seen; `size` 0 takes the first reading.
    async fn wait_for_size(
        &self,
        volume: &ManagedVolume,
        sysfs_dir: &Path,
        size: u64,
        deadline: Instant,
    ) -> Result<u64, VolumeError> {
        let started = Instant::now();
        loop {
            let seen =
                blockdev::sysfs_size(sysfs_dir).map_err(|error| VolumeError::DeviceSize {
                    device: volume.dev_path.clone(),
                    error,
                })?;
            if seen >= size {
                return Ok(seen);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VolumeError::DeviceTooSmall {
                    device: volume.dev_path.clone(),
                    requested: size,
                    seen,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(SIZE_POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Runs the grow tool without a shell and bounded by `deadline`. A
    /// failure carries the tool's stdout and stderr.
    async fn run_tool(
        &self,
        tool: GrowTool,
        volume: &ManagedVolume,
        deadline: Instant,
    ) -> Result<(), VolumeError> {
        let (target, arguments) = tool.arguments(volume);
        let program = find_tool(tool.program()).map_err(|error| VolumeError::SpawnTool {
            tool: tool.program(),
            error,
        })?;
        let child = tokio::process::Command::new(&program)
            .args(&arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| VolumeError::SpawnTool {
                tool: tool.program(),
                error,
            })?;
        let waited = deadline.saturating_duration_since(Instant::now());
        let output = tokio::time::timeout(waited, child.wait_with_output())
            .await
            .map_err(|_| VolumeError::ToolTimeout {
                tool: tool.program(),
                target: target.clone(),
                waited,
            })?
            .map_err(|error| VolumeError::SpawnTool {
                tool: tool.program(),
                error,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(VolumeError::GrowTool {
            tool: tool.program(),
            target,
            status: output.status.to_string(),
            output: one_line(&[&output.stdout, &output.stderr]),
        })
    }
}
