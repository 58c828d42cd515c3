//! GetVolumeStats on real loop devices: usage must equal the kernel's
//! statfs numbers on the mount point and on a bind target, a raw block
//! volume reports its device size, and real faults make the condition
//! abnormal.

mod volume_support;

use std::path::Path;

use protocols::csi::volume_usage::Unit;
use volume_support::{
    assert_abnormal, assert_matches_kernel, kernel_statvfs, run, service, usage_of, LoopDisk,
    Tmpfs, MIB,
};

async fn check_filesystem_stats(fstype: &str, size: u64) {
    let mut disk = LoopDisk::new(size, fstype, &[]);
    disk.mount("rw");
    // Some data, so that used differs from a fresh filesystem.
    std::fs::write(disk.mount_point.join("data"), vec![7u8; 3 * MIB as usize]).unwrap();
    nix::unistd::sync();
    let bind = disk.bind_into_container();
    let volume = disk.managed_volume();
    let (service, _state) = service();

    let started = std::time::Instant::now();
    let at_mount = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    eprintln!("{fstype} stats took {:?}", started.elapsed());
    assert_matches_kernel(&at_mount, &disk.mount_point);
    let at_bind = service.volume_stats(&bind, &volume).await.unwrap();
    assert_matches_kernel(&at_bind, &bind);
    assert_eq!(
        at_mount.usage, at_bind.usage,
        "mount point and bind target differ"
    );
    let inside = service
        .volume_stats(&bind.join("data"), &volume)
        .await
        .unwrap();
    assert_eq!(
        inside.usage, at_mount.usage,
        "a file inside gives the same answer"
    );

    let condition = at_mount.volume_condition.as_ref().unwrap();
    assert!(!condition.abnormal, "{}", condition.message);
    assert_eq!(condition.message, "OK");
}

#[tokio::test]
async fn ext4_stats_equal_statfs() {
    require!("mkfs.ext4");
    check_filesystem_stats("ext4", 64 * MIB).await;
}

#[tokio::test]
async fn xfs_stats_equal_statfs() {
    require!("mkfs.xfs");
    check_filesystem_stats("xfs", 320 * MIB).await;
}

#[tokio::test]
async fn raw_block_reports_device_size() {
    require!();
    let disk = LoopDisk::new(48 * MIB, "", &[]);
    let volume = disk.managed_volume();
    let (service, _state) = service();

    let response = service.volume_stats(&disk.device, &volume).await.unwrap();
    assert_eq!(response.usage.len(), 1, "no inode usage: {response:?}");
    let bytes = usage_of(&response, Unit::BYTES);
    assert_eq!(bytes.total, 48 * MIB);
    assert_eq!(bytes.used, 0);
    let devtmpfs = kernel_statvfs(&disk.device);
    assert_ne!(
        bytes.total,
        devtmpfs.blocks() * devtmpfs.fragment_size(),
        "must not be the numbers of the filesystem holding /dev"
    );
    assert!(
        !response.volume_condition.abnormal,
        "{}",
        response.volume_condition.message
    );
}

#[tokio::test]
async fn missing_path_is_not_found() {
    require!("mkfs.ext4");
    let (service, state) = service();
    let missing = state.path().join("no-such-volume");
    let error = service.stats(missing.to_str().unwrap()).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::NOT_FOUND, "{error}");
    assert!(error.to_string().contains("no-such-volume"), "{error}");

    let disk = LoopDisk::mounted(64 * MIB, "ext4");
    let volume = disk.managed_volume();
    let inside = disk.mount_point.join("missing");
    let error = service.volume_stats(&inside, &volume).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::NOT_FOUND, "{error}");
}

#[tokio::test]
async fn unmanaged_path_uses_statfs() {
    require!();
    let (service, _state) = service();
    let quiet = Tmpfs::mount();
    let response = service.stats(quiet.path().to_str().unwrap()).await.unwrap();
    assert_matches_kernel(&response, quiet.path());
    let condition = response.volume_condition.as_ref().unwrap();
    assert!(!condition.abnormal);
    assert!(
        condition
            .message
            .contains("not on a volume this agent manages"),
        "{}",
        condition.message
    );
}

#[tokio::test]
async fn ext4_fs_error_is_abnormal() {
    require!("mkfs.ext4");
    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    disk.mount("rw,errors=remount-ro");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    let healthy = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert!(
        !healthy.volume_condition.abnormal,
        "{}",
        healthy.volume_condition.message
    );

    let trigger = Path::new("/sys/fs/ext4")
        .join(disk.kernel_name())
        .join("trigger_fs_error");
    std::fs::write(&trigger, "1").unwrap();
    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert_abnormal(
        &response,
        &["ext4 recorded 1 errors", "remounted read-only"],
    );
}

#[tokio::test]
async fn ext4_error_count_is_abnormal() {
    require!("mkfs.ext4", "debugfs");
    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    run(
        "debugfs",
        &[
            "-w",
            "-R",
            "ssv error_count 2",
            disk.device.to_str().unwrap(),
        ],
    );
    disk.mount("rw");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert_abnormal(&response, &["ext4 recorded 2 errors"]);
    assert!(!response.usage.is_empty(), "usage is still reported");
}

#[tokio::test]
async fn xfs_shutdown_is_abnormal() {
    require!("mkfs.xfs", "xfs_io");
    let mut disk = LoopDisk::mounted(320 * MIB, "xfs");
    let bind = disk.bind_into_container();
    let volume = disk.managed_volume();
    let (service, _state) = service();

    run(
        "xfs_io",
        &["-x", "-c", "shutdown", disk.mount_point.to_str().unwrap()],
    );
    let response = service.volume_stats(&bind, &volume).await.unwrap();
    assert_abnormal(&response, &["opening the root", "I/O error"]);
}

#[tokio::test]
async fn gone_device_is_abnormal() {
    require!("mkfs.ext4");
    let disk = LoopDisk::mounted(64 * MIB, "ext4");
    let volume = disk.managed_volume();
    // An empty sysfs tree stands for a disk the host has unplugged: a
    // mounted loop device cannot really disappear.
    let empty_sysfs = tempfile::tempdir().unwrap();
    let (service, _state) = service();
    let service = service.with_sysfs_root(empty_sysfs.path().to_path_buf());
    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    let expected = format!(
        "device {}:{} is gone from sysfs",
        volume.major, volume.minor
    );
    assert_abnormal(&response, &[&expected]);
}

#[tokio::test]
async fn removed_raw_device_is_abnormal() {
    require!();
    let mut disk = LoopDisk::new(16 * MIB, "", &[]);
    let volume = disk.managed_volume();
    let (service, _state) = service();
    if !disk.remove_device() {
        eprintln!(
            "skipped: another process attached {} first",
            disk.device.display()
        );
        return;
    }

    // The device node is gone too, so stat the record's path through a
    // path that still exists: the test's own directory.
    let response = service
        .volume_stats(disk.dir.path(), &volume)
        .await
        .unwrap();
    let expected = format!(
        "device {}:{} is gone from sysfs",
        volume.major, volume.minor
    );
    assert_abnormal(&response, &[&expected, "reading the size of"]);
    assert!(response.usage.is_empty(), "no size to report: {response:?}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let error = service
        .resize_volume(&volume, 0, deadline)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION, "{error}");
    assert!(error.to_string().contains("gone from sysfs"), "{error}");
}
