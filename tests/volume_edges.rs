//! GetVolumeStats and ResizeVolume on hostile but valid requests: a
//! read-only storage, symlinks into and out of a volume, `..` through a
//! symlink.

mod volume_support;

use std::time::{Duration, Instant};

use volume_agent::volume::VolumeError;
use volume_support::{service, statfs_total, LoopDisk, MIB};

async fn check_read_only_resize(fstype: &str, size: u64) {
    let mut disk = LoopDisk::new(size, fstype, &[]);
    disk.mount("ro");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    let before = statfs_total(&disk.mount_point);
    disk.grow_device(2 * size);

    let error = service
        .resize_volume(&volume, 2 * size, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION, "{error}");
    assert!(
        matches!(error, VolumeError::ReadOnly { .. }),
        "rejected before the grow tool runs: {error}"
    );
    assert!(error.to_string().contains("read-only"), "{error}");
    assert_eq!(statfs_total(&disk.mount_point), before);
}

#[tokio::test]
async fn xfs_read_only_resize_rejected() {
    require!("mkfs.xfs", "xfs_growfs");
    check_read_only_resize("xfs", 320 * MIB).await;
}

#[tokio::test]
async fn ext4_read_only_resize_rejected() {
    require!("mkfs.ext4", "resize2fs");
    check_read_only_resize("ext4", 64 * MIB).await;
}
