//! GetVolumeStats and ResizeVolume on hostile but valid requests and on
//! real faults. The storage is read-only, unmounted, covered, frozen or
//! shut down, or its disk shrank or emptied. Paths run through symlinks
//! into and out of a volume, and the mount table has a non-UTF-8 path.

mod volume_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use volume_agent::volume::VolumeError;
use volume_support::agent::{status_code, storage, Agent};
use volume_support::{
    assert_abnormal, assert_matches_kernel, grow_loop, run, service, statfs_total, LoopDisk, Tmpfs,
    MIB,
};

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

/// Starts an agent with `disk` mounted as the storage `name`.
async fn start_with_storage(disk: &LoopDisk, name: &str) -> (Agent, PathBuf) {
    let agent = Agent::start().await;
    let mount_point = agent.storage_root.join(name);
    agent
        .create_sandbox(vec![storage(&disk.device, &disk.fstype, &mount_point)])
        .await
        .unwrap();
    (agent, mount_point)
}

#[tokio::test]
async fn symlink_into_volume_is_managed() {
    require!("mkfs.xfs", "xfs_growfs");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let (agent, mount_point) = start_with_storage(&disk, "vol-link-in").await;
    let link = agent.dir.path().join("link-to-volume");
    std::os::unix::fs::symlink(&mount_point, &link).unwrap();

    let stats = agent.stats(&link).await.unwrap();
    assert_matches_kernel(&stats, &mount_point);
    assert_eq!(
        stats.volume_condition.message, "OK",
        "the condition of the volume is judged"
    );

    let before = statfs_total(&mount_point);
    disk.grow_device(400 * MIB);
    agent.resize(&link, 400 * MIB).await.unwrap();
    let after = statfs_total(&mount_point);
    assert!(
        after > before + 50 * MIB,
        "statfs total {before} -> {after}"
    );

    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn path_leaving_volume_is_unmanaged() {
    require!("mkfs.xfs");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let outside = Tmpfs::mount();
    let (agent, mount_point) = start_with_storage(&disk, "vol-link-out").await;
    let bind = agent
        .create_container("c1", &mount_point, "/data")
        .await
        .unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), mount_point.join("out")).unwrap();

    let cases = [
        mount_point.join("out"),
        bind.join("out"),
        bind.join("out/.."),
    ];
    for path in &cases {
        let stats = agent.stats(path).await.unwrap();
        assert_matches_kernel(&stats, outside.path());
        let message = &stats.volume_condition.message;
        assert!(
            message.contains("not on a volume this agent manages"),
            "{} resolves outside the volume: {message}",
            path.display()
        );
        let error = agent.resize(path, 0).await.unwrap_err();
        assert_eq!(
            status_code(&error),
            ttrpc::Code::FAILED_PRECONDITION,
            "{}: {error:?}",
            path.display()
        );
    }
    agent.remove_container("c1").await.unwrap();
    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn shut_down_xfs_stays_managed() {
    require!("mkfs.xfs", "xfs_io");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let (agent, mount_point) = start_with_storage(&disk, "vol-shutdown").await;
    let bind = agent
        .create_container("c1", &mount_point, "/data")
        .await
        .unwrap();
    run(
        "xfs_io",
        &["-x", "-c", "shutdown", mount_point.to_str().unwrap()],
    );

    // Resolving the path fails with EIO here, so the volume is found by
    // its recorded paths.
    for path in [&mount_point, &bind] {
        let stats = agent.stats(path).await.unwrap();
        let condition = &stats.volume_condition;
        assert!(
            condition.abnormal,
            "{}: {}",
            path.display(),
            condition.message
        );
        assert!(
            condition.message.contains("I/O error"),
            "{}: {}",
            path.display(),
            condition.message
        );
    }

    let error = agent.resize(&bind, 0).await.unwrap_err();
    assert_eq!(
        status_code(&error),
        ttrpc::Code::FAILED_PRECONDITION,
        "{error:?}"
    );

    agent.remove_container("c1").await.unwrap();
    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn unmounted_storage_reports_no_usage() {
    require!("mkfs.ext4");
    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    disk.mount("rw");
    let bind = disk.bind_into_container();
    let volume = disk.managed_volume();
    let (service, _state) = service();
    // The bind target keeps the filesystem mounted, so only the storage
    // mount point loses it; statfs there now describes the parent
    // filesystem.
    nix::mount::umount(&disk.mount_point).unwrap();

    for path in [&disk.mount_point, &bind] {
        let response = service.volume_stats(path, &volume).await.unwrap();
        assert_abnormal(&response, &["no longer in the mount table"]);
        assert!(
            response.usage.is_empty(),
            "{}: usage of another filesystem: {:?}",
            path.display(),
            response.usage
        );
    }
}

#[tokio::test]
async fn other_mount_reports_no_usage() {
    require!("mkfs.ext4");
    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    disk.mount("rw");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    run(
        "mount",
        &["-t", "tmpfs", "cover", disk.mount_point.to_str().unwrap()],
    );
    let _cover = Unmount(disk.mount_point.clone());

    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert_abnormal(&response, &["but the storage was set up on device"]);
    assert!(
        response.usage.is_empty(),
        "usage of the covering tmpfs: {:?}",
        response.usage
    );

    disk.grow_device(128 * MIB);
    let error = service
        .resize_volume(&volume, 128 * MIB, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(error, VolumeError::DeviceMismatch { .. }),
        "the covered storage is not grown: {error}"
    );
}

/// Unmounts a path on drop, before the disk under it is torn down.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test]
async fn shrunk_device_is_abnormal() {
    require!("mkfs.ext4");
    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    disk.mount("rw");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    // The host shrinks the disk under the mounted filesystem: `grow_loop`
    // sets any image size, a smaller one too.
    grow_loop(&disk.image, &disk.device, 32 * MIB);

    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert_abnormal(&response, &["smaller than the filesystem"]);

    let error = service
        .resize_volume(&volume, 0, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION, "{error}");
    assert!(
        error.to_string().contains("smaller than the filesystem"),
        "{error}"
    );
}

#[tokio::test]
async fn empty_raw_device_is_abnormal() {
    require!();
    let disk = LoopDisk::new(16 * MIB, "", &[]);
    let volume = disk.managed_volume();
    let (service, _state) = service();
    // The backing file truncated to nothing: the node and sysfs entry stay
    // with size 0, as for a drive whose medium is gone. Detaching would
    // give the same, but a parallel test may attach the freed device.
    grow_loop(&disk.image, &disk.device, 0);

    let response = service.volume_stats(&disk.device, &volume).await.unwrap();
    assert_abnormal(&response, &["has 0 bytes"]);

    let error = service
        .resize_volume(&volume, 0, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION, "{error}");
    assert!(error.to_string().contains("0 bytes"), "{error}");
}

/// Directory in which the child test mounts a tmpfs with a non-UTF-8 name.
const ODD_MOUNT_DIR_ENV: &str = "VOLUME_TEST_ODD_MOUNT_DIR";

#[test]
fn non_utf8_mount_keeps_stats() {
    require!("mkfs.ext4", "unshare");
    // The odd mount goes into a private mount namespace, so that other
    // processes on this machine never see it.
    let dir = tempfile::Builder::new()
        .prefix("volume-odd-")
        .tempdir()
        .unwrap();
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "non_utf8_mount_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env(ODD_MOUNT_DIR_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child test failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "child test did not run: {stdout}"
    );
}

#[tokio::test]
#[ignore = "needs a private mount namespace; non_utf8_mount_keeps_stats starts it in one"]
async fn non_utf8_mount_child() {
    use std::os::unix::ffi::OsStrExt;

    let dir = std::env::var_os(ODD_MOUNT_DIR_ENV).expect("started by non_utf8_mount_keeps_stats");
    let odd = PathBuf::from(dir).join(std::ffi::OsStr::from_bytes(b"odd-\xff"));
    std::fs::create_dir(&odd).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "odd"])
        .arg(&odd)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs on {odd:?} failed");
    let _odd_mount = Unmount(odd);

    let mut disk = LoopDisk::new(64 * MIB, "ext4", &[]);
    disk.mount("rw");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    let response = service
        .volume_stats(&disk.mount_point, &volume)
        .await
        .unwrap();
    assert_matches_kernel(&response, &disk.mount_point);
    assert_eq!(response.volume_condition.message, "OK");
}

/// Thaws a frozen filesystem on drop, before its disk is torn down.
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn frozen_xfs_resize_is_bounded() {
    require!("mkfs.xfs", "xfs_growfs", "fsfreeze");
    let disk = LoopDisk::mounted(320 * MIB, "xfs");
    let volume = disk.managed_volume();
    let (service, _state) = service();
    disk.grow_device(400 * MIB);
    run(
        "fsfreeze",
        &["--freeze", disk.mount_point.to_str().unwrap()],
    );
    let thaw = Thaw(disk.mount_point.clone());

    let started = Instant::now();
    let result = service
        .resize_volume(&volume, 400 * MIB, started + Duration::from_secs(2))
        .await;
    let elapsed = started.elapsed();
    drop(thaw);
    let error = result.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{error}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}

#[tokio::test]
async fn overlong_path_is_invalid() {
    let (service, _state) = service();
    let long_path = format!("/{}", "a/".repeat(3000));
    let long_name = format!("/tmp/{}", "b".repeat(300));
    for path in [&long_path, &long_name] {
        let error = service.stats(path).await.unwrap_err();
        assert_eq!(
            error.code(),
            ttrpc::Code::INVALID_ARGUMENT,
            "stats: {error}"
        );
        assert!(error.to_string().contains("limited to"), "{error}");
        let error = service
            .resize(path, 0, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            ttrpc::Code::INVALID_ARGUMENT,
            "resize: {error}"
        );
    }
}

#[tokio::test]
async fn symlink_loop_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    std::os::unix::fs::symlink(dir.path().join("second"), &first).unwrap();
    std::os::unix::fs::symlink(&first, dir.path().join("second")).unwrap();
    let (service, _state) = service();
    let path = first.to_str().unwrap();

    let error = service.stats(path).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::NOT_FOUND, "stats: {error}");
    let error = service
        .resize(path, 0, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::NOT_FOUND, "resize: {error}");
}

#[tokio::test]
async fn mount_inside_volume_is_unmanaged() {
    require!("mkfs.xfs");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let (agent, mount_point) = start_with_storage(&disk, "vol-nested").await;
    let nested = mount_point.join("nested");
    std::fs::create_dir(&nested).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "nested",
            nested.to_str().unwrap(),
        ],
    );
    let nested_mount = Unmount(nested.clone());

    let stats = agent.stats(&nested).await.unwrap();
    assert_matches_kernel(&stats, &nested);
    let message = &stats.volume_condition.message;
    assert!(
        message.contains("not on a volume this agent manages"),
        "a tmpfs inside the volume is not the volume: {message}"
    );
    let at_volume = agent.stats(&mount_point).await.unwrap();
    assert_matches_kernel(&at_volume, &mount_point);

    drop(nested_mount);
    agent.destroy_sandbox().await.unwrap();
}
