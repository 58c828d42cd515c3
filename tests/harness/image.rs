//! The guest image built by `rootfs-hooks/build-test-guest.sh`, and the
//! host-side disk images the tests hot-plug.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Kernel and initramfs of the test guest.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Kernel release and vmlinuz size, which key the KVM probe cache: the
    /// probe's outcome depends on the kernel, not on the initramfs.
    pub kernel_key: String,
}

impl GuestImage {
    /// Finds the image in `$VOLUME_AGENT_GUEST_DIR`, else in `target/guest`
    /// of this repository, where `rootfs-hooks/test.sh` builds it.
    pub fn locate() -> Result<GuestImage, String> {
        let dir = match std::env::var_os("VOLUME_AGENT_GUEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest"),
        };
        let kernel = dir.join("vmlinuz");
        let initramfs = dir.join("initramfs.img");
        for file in [&kernel, &initramfs] {
            if !file.is_file() {
                return Err(format!(
                    "guest image file {} is missing; run rootfs-hooks/build-test-guest.sh {}",
                    file.display(),
                    dir.display()
                ));
            }
        }
        let release = std::fs::read_to_string(dir.join("kernel-version")).unwrap_or_default();
        let kernel_size = std::fs::metadata(&kernel)
            .map(|meta| meta.len())
            .unwrap_or(0);
        let kernel_key = format!("{}/{kernel_size}", release.trim());
        Ok(GuestImage {
            dir,
            kernel,
            initramfs,
            kernel_key,
        })
    }
}

/// Filesystem put on a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fstype {
    Ext4,
    Xfs,
}

impl Fstype {
    /// Returns the name used in `Storage.fstype` and by mount(8).
    pub fn name(self) -> &'static str {
        match self {
            Fstype::Ext4 => "ext4",
            Fstype::Xfs => "xfs",
        }
    }
}

/// A sparse raw disk image on the host with a filesystem made by mkfs.
#[derive(Debug)]
pub struct DiskImage {
    pub path: PathBuf,
    pub fstype: Fstype,
}

impl DiskImage {
    /// Creates `dir/name.img` of `size` bytes and formats it. XFS needs at
    /// least 300 MB (mkfs.xfs rejects smaller devices).
    pub fn create(dir: &Path, name: &str, size: u64, fstype: Fstype) -> Result<DiskImage> {
        let path = dir.join(format!("{name}.img"));
        let file = std::fs::File::create_new(&path)
            .with_context(|| format!("creating disk image {}", path.display()))?;
        file.set_len(size)
            .with_context(|| format!("sizing disk image {} to {size} bytes", path.display()))?;
        drop(file);
        let path_text = path.to_str().context("disk image path is not UTF-8")?;
        match fstype {
            Fstype::Ext4 => run("mkfs.ext4", &["-q", "-F", path_text])?,
            Fstype::Xfs => run("mkfs.xfs", &["-q", "-f", path_text])?,
        };
        Ok(DiskImage { path, fstype })
    }

    /// Size of the image file in bytes, which is the disk size QEMU shows.
    pub fn size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .with_context(|| format!("reading the size of {}", self.path.display()))?
            .len())
    }

    /// Checks the filesystem read-only (`e2fsck -fn`, `xfs_repair -n`) and
    /// fails with the checker's output unless it is clean. Run it only
    /// when no guest has the image open.
    pub fn check_filesystem(&self) -> Result<()> {
        let path_text = self.path.to_str().context("disk image path is not UTF-8")?;
        match self.fstype {
            Fstype::Ext4 => run("e2fsck", &["-f", "-n", path_text])?,
            Fstype::Xfs => run("xfs_repair", &["-n", path_text])?,
        };
        Ok(())
    }
}

/// Runs `program` with `args` and returns its stdout, or an error that
/// carries its exit status and output.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}; is it installed?"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{program} {} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
