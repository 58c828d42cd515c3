//! Storage lifecycle through the real agent binary on real loop devices:
//! mount, bind into containers, refcount, unmount.

mod common;

use std::path::Path;

use common::{
    context, create_container_request, mount_count, remove_container_request, spec, storage,
    TestEnv,
};

const EXT4_SIZE: u64 = 64 << 20;
const XFS_SIZE: u64 = 320 << 20;

/// Writes a file at `path` and returns the OS error number on failure.
fn write_errno(path: &Path) -> Option<i32> {
    std::fs::write(path, b"data")
        .err()
        .map(|error| error.raw_os_error().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_and_rw_binds_on_ext4_and_xfs() {
    if !common::running_as_root("ro_and_rw_binds_on_ext4_and_xfs") {
        return;
    }
    let mut env = TestEnv::new("rorw");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let xfs = env.add_loop("xfs", XFS_SIZE, Some("xfs"));
    env.start_agent();
    let client = env.client().await;
    let root = env.storage_root();

    for (name, source, fstype) in [("ext4vol", &ext4, "ext4"), ("xfsvol", &xfs, "xfs")] {
        let mount_point = root.join(name);
        let mount_text = mount_point.display().to_string();
        let rw_rootfs = env.rootfs(&format!("{name}-rw"));
        let ro_rootfs = env.rootfs(&format!("{name}-ro"));
        let volume = storage(source, fstype, &mount_point, &["nodev"]);

        let request = create_container_request(
            &format!("{name}-rw"),
            vec![volume.clone()],
            Some(spec(&rw_rootfs, &[(&mount_text, "/data", &["rbind"])])),
        );
        client
            .create_container(context(), &request)
            .await
            .unwrap_or_else(|error| env.fail(error));
        let request = create_container_request(
            &format!("{name}-ro"),
            vec![volume.clone()],
            Some(spec(
                &ro_rootfs,
                &[(&mount_text, "/mnt/data", &["bind", "ro"])],
            )),
        );
        client
            .create_container(context(), &request)
            .await
            .unwrap_or_else(|error| env.fail(error));

        let mounts = common::mounts_under(env.path());
        assert_eq!(mount_count(&mount_point), 1, "{fstype} mounted once");
        assert!(
            mounts.contains(&rw_rootfs.join("data")),
            "{fstype} rw bind: {mounts:?}"
        );
        assert!(
            mounts.contains(&ro_rootfs.join("mnt/data")),
            "{fstype} ro bind: {mounts:?}"
        );

        assert_eq!(
            write_errno(&rw_rootfs.join("data/file")),
            None,
            "{fstype} rw bind writes"
        );
        assert_eq!(
            std::fs::read(mount_point.join("file")).unwrap(),
            b"data",
            "{fstype} write visible in the storage"
        );
        assert_eq!(
            write_errno(&ro_rootfs.join("mnt/data/other")),
            Some(libc::EROFS),
            "{fstype} ro bind rejects writes"
        );
        assert_eq!(
            write_errno(&mount_point.join("other")),
            None,
            "{fstype} storage stays rw"
        );

        client
            .remove_container(context(), &remove_container_request(&format!("{name}-ro")))
            .await
            .unwrap();
        let mounts = common::mounts_under(env.path());
        assert!(
            mounts.contains(&mount_point),
            "{fstype} still used by the rw container"
        );
        assert!(!mounts.contains(&ro_rootfs.join("mnt/data")));
        client
            .remove_container(context(), &remove_container_request(&format!("{name}-rw")))
            .await
            .unwrap();
        assert!(!common::mounts_under(env.path()).contains(&mount_point));
        assert!(
            !mount_point.exists(),
            "{fstype} mount point removed after the last user"
        );
    }
    assert_eq!(
        common::mounts_under(env.path()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refcount_across_three_containers() {
    if !common::running_as_root("refcount_across_three_containers") {
        return;
    }
    // Each order removes the three containers differently; the storage must
    // stay mounted until the last one goes.
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let mut env = TestEnv::new("refcount");
        let source = env.add_loop("disk", EXT4_SIZE, Some("ext4"));
        env.start_agent();
        let client = env.client().await;
        let mount_point = env.storage_root().join("shared-disk");
        let mount_text = mount_point.display().to_string();
        let volume = storage(&source, "ext4", &mount_point, &[]);
        let ids = ["c0", "c1", "c2"];
        for id in ids {
            let rootfs = env.rootfs(id);
            let oci = spec(&rootfs, &[(&mount_text, "/vol", &[])]);
            let request = create_container_request(id, vec![volume.clone()], Some(oci));
            client
                .create_container(context(), &request)
                .await
                .unwrap_or_else(|error| env.fail(error));
        }
        assert_eq!(
            mount_count(&mount_point),
            1,
            "mounted once for three containers"
        );

        for (step, index) in order.iter().enumerate() {
            let id = ids[*index];
            client
                .remove_container(context(), &remove_container_request(id))
                .await
                .unwrap();
            assert_eq!(
                mount_count(&env.rootfs(id).join("vol")),
                0,
                "bind of {id} removed"
            );
            let expected = if step < 2 { 1 } else { 0 };
            assert_eq!(
                mount_count(&mount_point),
                expected,
                "order {order:?} after removing {id}"
            );
        }
        assert_eq!(
            common::mounts_under(env.path()),
            Vec::<std::path::PathBuf>::new()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_and_shared_storages_last_until_destroy() {
    if !common::running_as_root("sandbox_and_shared_storages_last_until_destroy") {
        return;
    }
    let mut env = TestEnv::new("sandbox");
    let sandbox_disk = env.add_loop("sandbox", EXT4_SIZE, Some("ext4"));
    let shared_disk = env.add_loop("shared", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let sandbox_mount = env.storage_root().join("sandbox");
    let shared_mount = env.storage_root().join("shared");

    let sandbox_storage = storage(&sandbox_disk, "ext4", &sandbox_mount, &[]);
    common::create_sandbox(&client, &env, vec![sandbox_storage]).await;
    let mut shared = storage(&shared_disk, "ext4", &shared_mount, &[]);
    shared.shared = true;
    let rootfs = env.rootfs("c1");
    let oci = spec(
        &rootfs,
        &[
            (&sandbox_mount.display().to_string(), "/sandbox", &[]),
            (&shared_mount.display().to_string(), "/shared", &[]),
        ],
    );
    let request = create_container_request("c1", vec![shared], Some(oci));
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));

    client
        .remove_container(context(), &remove_container_request("c1"))
        .await
        .unwrap();
    let mounts = common::mounts_under(env.path());
    assert_eq!(mounts, vec![sandbox_mount.clone(), shared_mount.clone()]);

    // A container still running at DestroySandbox loses its binds too.
    let rootfs = env.rootfs("c2");
    let oci = spec(
        &rootfs,
        &[(&shared_mount.display().to_string(), "/shared", &["ro"])],
    );
    let request = create_container_request("c2", vec![], Some(oci));
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(mount_count(&rootfs.join("shared")), 1);

    common::destroy_sandbox(&client, &env).await;
    assert!(!sandbox_mount.exists());
    assert!(!shared_mount.exists());
}
