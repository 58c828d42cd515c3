//! Loop-device and agent fixtures shared by the volume integration tests. Every
//! fixture undoes what it set up when dropped, also when a test panics.

#![allow(dead_code)]

pub mod agent;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

#[path = "../common/mod.rs"]
mod common;

use volume_agent::device::DeviceRegistry;
use volume_agent::storage::{ManagedVolume, StorageConfig, StorageManager};
use volume_agent::volume::VolumeService;

pub const MIB: u64 = 1 << 20;

/// Returns why the loop-device tests cannot run here, if they cannot.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root for losetup and mount".to_string());
    }
    for tool in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Skips the calling test, printing why, unless it can run.
#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(reason) = volume_support::skip_reason(&[$($tool),*]) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

pub use common::run;

/// A sparse image file attached to a loop device, with an optional
/// filesystem mounted in a private temporary directory.
pub struct LoopDisk {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub device: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Mounts made on this disk, unmounted in reverse order on drop.
    mounts: Vec<PathBuf>,
    /// Set once the loop device is detached and removed, so that drop does
    /// not detach a device another process may have attached since.
    removed: bool,
}

impl LoopDisk {
    /// Attaches a `size`-byte image; `fstype` "" leaves it unformatted.
    pub fn new(size: u64, fstype: &str, mkfs_args: &[&str]) -> LoopDisk {
        let dir = tempfile::Builder::new()
            .prefix("volume-test-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        let disk = LoopDisk {
            mount_point: dir.path().join("storage"),
            dir,
            image,
            device: PathBuf::from(device.trim()),
            fstype: fstype.to_string(),
            mounts: Vec::new(),
            removed: false,
        };
        if !fstype.is_empty() {
            let mkfs = format!("mkfs.{fstype}");
            let mut args: Vec<&str> = mkfs_args.to_vec();
            args.push(disk.device.to_str().unwrap());
            run(&mkfs, &args);
        }
        disk
    }

    /// Creates a `size`-byte disk with a fresh `fstype` mounted read-write.
    pub fn mounted(size: u64, fstype: &str) -> LoopDisk {
        let mut disk = LoopDisk::new(size, fstype, &[]);
        disk.mount("rw");
        disk
    }

    /// Mounts the filesystem at [`LoopDisk::mount_point`] with `options`.
    pub fn mount(&mut self, options: &str) {
        std::fs::create_dir_all(&self.mount_point).unwrap();
        let device = self.device.to_str().unwrap().to_string();
        let target = self.mount_point.to_str().unwrap().to_string();
        run("mount", &["-o", options, &device, &target]);
        self.mounts.push(self.mount_point.clone());
    }

    /// Bind-mounts the storage into a fake container rootfs and returns
    /// the bind target.
    pub fn bind_into_container(&mut self) -> PathBuf {
        let target = self.dir.path().join("rootfs/data");
        std::fs::create_dir_all(&target).unwrap();
        run(
            "mount",
            &[
                "--bind",
                self.mount_point.to_str().unwrap(),
                target.to_str().unwrap(),
            ],
        );
        self.mounts.push(target.clone());
        target
    }

    /// Grows the image and makes the loop device re-read its size.
    pub fn grow_device(&self, size: u64) {
        grow_loop(&self.image, &self.device, size);
    }

    /// Detaches the unmounted loop device and removes it from the system
    /// (LOOP_CTL_REMOVE), the way an unplugged disk vanishes from sysfs and
    /// `/dev`. Returns false when another process attached the device
    /// between the two steps, so it could not be removed.
    pub fn remove_device(&mut self) -> bool {
        const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
        run("losetup", &["--detach", self.device.to_str().unwrap()]);
        self.removed = true;
        let number: libc::c_int = self.kernel_name()["loop".len()..].parse().unwrap();
        let control = std::fs::File::open("/dev/loop-control").unwrap();
        // SAFETY: LOOP_CTL_REMOVE takes the loop number as a plain integer
        // argument and the control fd is open for the whole call.
        let result = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&control),
                LOOP_CTL_REMOVE,
                number,
            )
        };
        // Success is any non-negative return (0 on Linux 6.18).
        result >= 0
    }

    /// Returns the device's kernel name, e.g. `loop3`.
    pub fn kernel_name(&self) -> String {
        self.device
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Builds the storage record the agent would keep for this disk.
    pub fn managed_volume(&self) -> ManagedVolume {
        let rdev = std::fs::metadata(&self.device).unwrap().rdev();
        ManagedVolume {
            mount_point: if self.fstype.is_empty() {
                self.device.clone()
            } else {
                self.mount_point.clone()
            },
            driver: "mmioblk".into(),
            source: self.device.display().to_string(),
            fstype: self.fstype.clone(),
            dev_path: self.device.clone(),
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
        }
    }
}

/// Grows `image` to `size` bytes and runs `losetup -c` on `device`.
pub fn grow_loop(image: &Path, device: &Path, size: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap()
        .set_len(size)
        .unwrap();
    run("losetup", &["--set-capacity", device.to_str().unwrap()]);
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for mount in self.mounts.iter().rev() {
            if nix::mount::umount(mount).is_err() {
                let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if !self.removed {
            let _ = Command::new("losetup")
                .arg("--detach")
                .arg(&self.device)
                .status();
        }
    }
}

/// A private tmpfs, so that statfs numbers stay still while a test compares
/// them, unlike a filesystem that other processes write to.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("volume-tmpfs-")
            .tempdir()
            .unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=16m",
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount(self.dir.path()).is_err() {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Creates a volume service over a storage manager that manages nothing,
/// for calling the per-volume functions directly.
pub fn service() -> (VolumeService, tempfile::TempDir) {
    let logger = volume_agent::logging::discard();
    let state = tempfile::Builder::new()
        .prefix("volume-state-")
        .tempdir()
        .unwrap();
    let registry = DeviceRegistry::new(logger.clone(), "/sys".into(), "/dev".into());
    let storage: Arc<StorageManager> = StorageManager::new(
        logger.clone(),
        StorageConfig {
            root: state.path().join("storage"),
            state_file: state.path().join("state.json"),
        },
        registry.clone(),
    )
    .expect("storage manager starts on an empty state directory");
    (VolumeService::new(logger, storage, registry), state)
}

/// Asserts that `response` reports an abnormal condition whose message
/// contains each of `expected`.
pub fn assert_abnormal(response: &protocols::csi::VolumeStatsResponse, expected: &[&str]) {
    let condition = response
        .volume_condition
        .as_ref()
        .expect("condition is set");
    assert!(condition.abnormal, "not abnormal: {}", condition.message);
    for text in expected {
        assert!(
            condition.message.contains(text),
            "{text:?} missing: {}",
            condition.message
        );
    }
}

/// Returns the usage of `unit` in `response`.
pub fn usage_of(
    response: &protocols::csi::VolumeStatsResponse,
    unit: protocols::csi::volume_usage::Unit,
) -> &protocols::csi::VolumeUsage {
    response
        .usage
        .iter()
        .find(|usage| usage.unit == unit.into())
        .unwrap_or_else(|| panic!("no {unit:?} usage in {response:?}"))
}

/// Asserts that `response` carries exactly the kernel's numbers for `path`.
pub fn assert_matches_kernel(response: &protocols::csi::VolumeStatsResponse, path: &Path) {
    use protocols::csi::volume_usage::Unit;

    let stat = kernel_statvfs(path);
    let frsize = stat.fragment_size();
    let path_text = path.display();
    let bytes = usage_of(response, Unit::BYTES);
    assert_eq!(
        bytes.total,
        stat.blocks() * frsize,
        "bytes total of {path_text}"
    );
    let used = (stat.blocks() - stat.blocks_free()) * frsize;
    assert_eq!(bytes.used, used, "bytes used of {path_text}");
    let available = stat.blocks_available() * frsize;
    assert_eq!(bytes.available, available, "bytes available of {path_text}");

    let inodes = usage_of(response, Unit::INODES);
    assert_eq!(inodes.total, stat.files(), "inodes total of {path_text}");
    let used = stat.files() - stat.files_free();
    assert_eq!(inodes.used, used, "inodes used of {path_text}");
    assert_eq!(
        inodes.available,
        stat.files_free(),
        "inodes available of {path_text}"
    );
}

/// Returns the statfs total of the filesystem at `path`, in bytes.
pub fn statfs_total(path: &Path) -> u64 {
    let stat = kernel_statvfs(path);
    stat.blocks() * stat.fragment_size()
}

/// Kernel statfs numbers for `path`, the reference the agent must match.
pub fn kernel_statvfs(path: &Path) -> nix::sys::statvfs::Statvfs {
    nix::sys::statvfs::statvfs(path).unwrap()
}
