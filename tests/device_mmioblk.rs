//! `mmioblk` sources that name a symlink to a real loop device, in a
//! private `/dev` root, as udev's `/dev/disk/by-*` links do.

mod volume_support;

use std::time::{Duration, Instant};

use volume_agent::device::{DeviceAddress, DeviceRegistry};
use volume_support::{LoopDisk, MIB};

const WAIT: Duration = Duration::from_secs(5);

/// Creates a private `/dev` root containing a block node for `disk`, as
/// devtmpfs has one.
fn dev_root_with_node(disk: &LoopDisk) -> tempfile::TempDir {
    let dev_root = tempfile::tempdir().unwrap();
    let volume = disk.managed_volume();
    let devno = nix::sys::stat::makedev(u64::from(volume.major), u64::from(volume.minor));
    nix::sys::stat::mknod(
        &dev_root.path().join(disk.kernel_name()),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        devno,
    )
    .unwrap();
    dev_root
}

fn registry(dev_root: &std::path::Path) -> std::sync::Arc<DeviceRegistry> {
    let logger = volume_agent::logging::discard();
    DeviceRegistry::new(logger, "/sys".into(), dev_root.to_path_buf())
}

#[tokio::test]
async fn mmioblk_symlink_to_loop() {
    require!();
    let disk = LoopDisk::new(8 * MIB, "", &[]);
    let dev_root = dev_root_with_node(&disk);
    std::fs::create_dir(dev_root.path().join("disk")).unwrap();
    let target = format!("../{}", disk.kernel_name());
    std::os::unix::fs::symlink(target, dev_root.path().join("disk/data")).unwrap();
    let registry = registry(dev_root.path());

    let address = DeviceAddress::parse("mmioblk", "/dev/disk/data").unwrap();
    let found = registry.wait_for(&address, WAIT).await.unwrap();
    let expected = disk.managed_volume();
    assert_eq!((found.major, found.minor), (expected.major, expected.minor));
    assert_eq!(found.name, disk.kernel_name());
}

#[tokio::test]
async fn mmioblk_symlink_appears_later() {
    require!();
    let disk = LoopDisk::new(8 * MIB, "", &[]);
    let dev_root = dev_root_with_node(&disk);
    let link = dev_root.path().join("late");
    let target = disk.kernel_name();
    let creator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::os::unix::fs::symlink(target, link).unwrap();
    });
    let registry = registry(dev_root.path());

    let address = DeviceAddress::parse("mmioblk", "/dev/late").unwrap();
    let started = Instant::now();
    let found = registry.wait_for(&address, WAIT).await;
    creator.join().unwrap();
    let found = found.unwrap();
    assert_eq!(found.name, disk.kernel_name());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "found by a sysfs recheck, not at the timeout: {:?}",
        started.elapsed()
    );
}
