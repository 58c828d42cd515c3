//! fsGroup, raw block volumes and parallel requests through the real agent
//! on loop devices.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    context, create_container_request, mount_count, remove_container_request, spec, storage,
    with_fs_group, TestEnv,
};

const EXT4_SIZE: u64 = 64 << 20;
const GROUP_ID: u32 = 4321;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn gid(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().gid()
}

/// Mounts `device` at `mount_point` by hand, runs `change`, unmounts.
fn with_manual_mount(device: &str, mount_point: &Path, change: impl FnOnce(&Path)) {
    std::fs::create_dir_all(mount_point).unwrap();
    nix::mount::mount(
        Some(device),
        mount_point,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    change(mount_point);
    nix::mount::umount(mount_point).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_group_always_and_on_root_mismatch() {
    if !common::running_as_root("fs_group_always_and_on_root_mismatch") {
        return;
    }
    let mut env = TestEnv::new("fsgroup");
    let device = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let manual = env.path().join("manual");
    with_manual_mount(&device, &manual, |root| {
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/file"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("dir/file"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    });
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");

    let volume = with_fs_group(storage(&device, "ext4", &mount_point, &[]), GROUP_ID, false);
    common::create_sandbox(&client, &env, vec![volume]).await;
    assert_eq!(gid(&mount_point), GROUP_ID);
    assert_eq!(
        mode(&mount_point) & 0o2070,
        0o2070,
        "root: group rwx and setgid"
    );
    assert_eq!(gid(&mount_point.join("dir/file")), GROUP_ID);
    assert_eq!(mode(&mount_point.join("dir/file")), 0o660);
    assert_eq!(mode(&mount_point.join("dir")) & 0o2070, 0o2070);
    common::destroy_sandbox(&client, &env).await;

    // The root still matches; a file regrouped by hand shows whether the
    // walk ran.
    with_manual_mount(&device, &manual, |root| {
        nix::unistd::chown(
            &root.join("dir/file"),
            None,
            Some(nix::unistd::Gid::from_raw(0)),
        )
        .unwrap();
    });
    let volume = with_fs_group(storage(&device, "ext4", &mount_point, &[]), GROUP_ID, true);
    common::create_sandbox(&client, &env, vec![volume]).await;
    assert_eq!(
        gid(&mount_point.join("dir/file")),
        0,
        "OnRootMismatch skipped the walk"
    );
    common::destroy_sandbox(&client, &env).await;

    let volume = with_fs_group(storage(&device, "ext4", &mount_point, &[]), GROUP_ID, false);
    common::create_sandbox(&client, &env, vec![volume]).await;
    assert_eq!(
        gid(&mount_point.join("dir/file")),
        GROUP_ID,
        "Always walked again"
    );
    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_group_on_read_only_volume() {
    if !common::running_as_root("fs_group_on_read_only_volume") {
        return;
    }
    let mut env = TestEnv::new("fsgroup-ro");
    let device = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");

    let volume = with_fs_group(
        storage(&device, "ext4", &mount_point, &["ro"]),
        GROUP_ID,
        false,
    );
    common::create_sandbox(&client, &env, vec![volume]).await;

    assert_eq!(gid(&mount_point), GROUP_ID);
    assert_eq!(
        mode(&mount_point) & 0o2050,
        0o2050,
        "group read and search, setgid"
    );
    let error = std::fs::write(mount_point.join("file"), b"x").unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EROFS),
        "the volume ends read-only"
    );
    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_block_volume_binds_device_node() {
    if !common::running_as_root("raw_block_volume_binds_device_node") {
        return;
    }
    let mut env = TestEnv::new("raw");
    let device = env.add_loop("raw", EXT4_SIZE, None);
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("raw");
    let rootfs = env.rootfs("c1");
    let oci = spec(
        &rootfs,
        &[(&mount_point.display().to_string(), "/dev/xvdb", &[])],
    );
    let request = create_container_request(
        "c1",
        vec![storage(&device, "", &mount_point, &[])],
        Some(oci),
    );

    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));

    let expected_rdev = std::fs::metadata(&device).unwrap().rdev();
    for path in [mount_point.clone(), rootfs.join("dev/xvdb")] {
        let metadata = std::fs::metadata(&path).unwrap();
        assert!(
            metadata.file_type().is_block_device(),
            "{} is a block device",
            path.display()
        );
        assert_eq!(metadata.rdev(), expected_rdev, "{}", path.display());
    }
    client
        .remove_container(context(), &remove_container_request("c1"))
        .await
        .unwrap();
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());
    assert!(!mount_point.exists(), "the mount point file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_mount_once() {
    if !common::running_as_root("parallel_requests_mount_once") {
        return;
    }
    let mut env = TestEnv::new("parallel");
    let first = env.add_loop("first", EXT4_SIZE, Some("ext4"));
    let second = env.add_loop("second", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let first_mount = env.storage_root().join("first");
    let second_mount = env.storage_root().join("second");

    // Six containers at once: three on each storage.
    let mut tasks = Vec::new();
    for index in 0..6 {
        let (device, mount_point) = if index % 2 == 0 {
            (&first, &first_mount)
        } else {
            (&second, &second_mount)
        };
        let id = format!("c{index}");
        let rootfs = env.rootfs(&id);
        let oci = spec(
            &rootfs,
            &[(&mount_point.display().to_string(), "/data", &[])],
        );
        let request = create_container_request(
            &id,
            vec![storage(device, "ext4", mount_point, &[])],
            Some(oci),
        );
        let client = env.client().await;
        tasks.push(tokio::spawn(async move {
            client.create_container(context(), &request).await
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert_eq!(mount_count(&first_mount), 1);
    assert_eq!(mount_count(&second_mount), 1);
    assert_eq!(
        common::mounts_under(env.path()).len(),
        8,
        "two storages and six binds"
    );

    let client = env.client().await;
    let mut removals = Vec::new();
    for index in 0..6 {
        let client = client.clone();
        removals.push(tokio::spawn(async move {
            client
                .remove_container(context(), &remove_container_request(&format!("c{index}")))
                .await
        }));
    }
    for removal in removals {
        removal.await.unwrap().unwrap();
    }
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());
}
