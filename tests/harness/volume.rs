//! Steps shared by the end-to-end tests and the demo: plug a disk image
//! into the guest, attach it to a container through the agent, write and
//! checksum a file through the bind, grow it, detach and unplug it.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::guest_shell::GuestShell;
use super::image::{DiskImage, Fstype};
use super::qemu::Guest;
use super::volumectl::Volumectl;

/// Time a unplug may take, from device_del to QEMU's DEVICE_DELETED.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a disk is plugged in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// virtio-blk on PCIe root port `rp<root_port>`.
    Blk { root_port: u8 },
    /// scsi-hd on the virtio-scsi controller, target 0.
    Scsi { lun: u32 },
}

impl Bus {
    /// `Storage.driver` for disks on this bus.
    pub fn driver(self) -> &'static str {
        match self {
            Bus::Blk { .. } => "blk",
            Bus::Scsi { .. } => "scsi",
        }
    }

    /// `Storage.source`: the PCI path or the `<target>:<lun>` address.
    pub fn source(self) -> String {
        match self {
            Bus::Blk { root_port } => Guest::blk_pci_path(root_port),
            Bus::Scsi { lun } => format!("0:{lun}"),
        }
    }
}

/// Whether the disk is plugged before the attach request or while the
/// agent already waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug {
    BeforeRequest,
    AfterRequest,
}

/// A disk image and the QMP names of its block node and device.
#[derive(Debug)]
pub struct Disk {
    pub image: DiskImage,
    pub bus: Bus,
    /// QMP block node name.
    pub node: String,
    /// QMP device id.
    pub device: String,
}

impl Disk {
    /// Creates and formats a `size`-byte image named `name` in the guest's
    /// working directory; it is not plugged yet.
    pub fn create(guest: &Guest, name: &str, bus: Bus, fstype: Fstype, size: u64) -> Result<Disk> {
        let image = DiskImage::create(guest.dir(), name, size, fstype)?;
        Ok(Disk {
            image,
            bus,
            node: format!("{name}-node"),
            device: format!("{name}-dev"),
        })
    }

    /// Adds the block node and hot-plugs the device.
    pub fn plug(&self, guest: &mut Guest) -> Result<()> {
        guest.qmp.blockdev_add_raw(&self.node, &self.image.path)?;
        match self.bus {
            Bus::Blk { root_port } => {
                guest
                    .qmp
                    .device_add_blk(&self.device, &self.node, &format!("rp{root_port}"))
            }
            Bus::Scsi { lun } => guest.qmp.device_add_scsi(&self.device, &self.node, 0, lun),
        }
    }

    /// Unplugs the device, waiting for DEVICE_DELETED, and removes the node.
    pub fn unplug(&self, guest: &mut Guest) -> Result<()> {
        guest.qmp.device_del(&self.device, UNPLUG_TIMEOUT)?;
        guest.qmp.blockdev_del_raw(&self.node)
    }

    /// Returns the `volumectl attach` arguments that mount this disk for
    /// container `container` and bind it into `rootfs` once per entry of
    /// `mounts` (`DEST` or `DEST:ro`).
    pub fn attach_args(&self, container: &str, rootfs: &str, mounts: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "attach",
            "--driver",
            self.bus.driver(),
            "--source",
            &self.bus.source(),
            "--fstype",
            self.image.fstype.name(),
            "--container",
            container,
            "--rootfs",
            rootfs,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        for mount in mounts {
            args.push("--mount".to_string());
            args.push(mount.to_string());
        }
        args
    }

    /// Attaches the disk to `container` with its rootfs at `rootfs` (created
    /// in the guest first) and the binds in `mounts`, plugging it before or
    /// after the request as `plug` selects. Returns the mount point.
    pub fn attach(
        &self,
        guest: &mut Guest,
        volumectl: &Volumectl,
        plug: Plug,
        container: &str,
        rootfs: &str,
        mounts: &[&str],
    ) -> Result<String> {
        guest.shell.run_ok(&format!("mkdir -p {rootfs}"))?;
        let args = self.attach_args(container, rootfs, mounts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = match plug {
            Plug::BeforeRequest => {
                self.plug(guest)?;
                volumectl.run(&args)?
            }
            Plug::AfterRequest => {
                let child = volumectl.spawn(&args)?;
                // Long enough for the request to reach the agent and wait.
                std::thread::sleep(Duration::from_secs(1));
                let plugged = self.plug(guest);
                let output = Volumectl::finish(&args, child);
                plugged?;
                output?
            }
        };
        let mount_point = output.lines().last().unwrap_or_default().trim().to_string();
        if !mount_point.starts_with('/') {
            bail!("volumectl attach printed {output:?}, expected a mount point");
        }
        Ok(mount_point)
    }
}

/// Writes `mib` MiB of random data to `path` in the guest, syncs it, and
/// returns its SHA-256.
pub fn write_payload(shell: &mut GuestShell, path: &str, mib: u32) -> Result<String> {
    shell.run_ok(&format!(
        "dd if=/dev/urandom of={path} bs=1M count={mib} 2>/dev/null && sync"
    ))?;
    checksum(shell, path)
}

/// SHA-256 of the guest file `path`.
pub fn checksum(shell: &mut GuestShell, path: &str) -> Result<String> {
    let output = shell.run_ok(&format!("sha256sum {path}"))?;
    let sum = output.split_whitespace().next().unwrap_or_default();
    if sum.len() != 64 {
        bail!("sha256sum {path} printed {output:?}");
    }
    Ok(sum.to_string())
}

/// Number of mounts whose mount point is `path` in the guest.
pub fn mount_count(shell: &mut GuestShell, path: &str) -> Result<usize> {
    let mounts = shell
        .run_ok("cat /proc/self/mounts")
        .context("reading the guest's mounts")?;
    Ok(mounts
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some(path))
        .count())
}
