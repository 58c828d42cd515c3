//! Bad input through the real agent: rejected with a clear code, and
//! nothing left behind (no mount, no directory, no record, no data
//! written). Also a failed first mount followed by a successful retry.

mod common;

use std::path::{Path, PathBuf};

use common::{
    context, create_container_request, create_sandbox_request, mount_count, spec, status_message,
    storage, TestEnv,
};
use protocols::agent::Storage;
use ttrpc::Code;

const EXT4_SIZE: u64 = 64 << 20;

/// Files and directories below `directory`, sorted.
fn tree(directory: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(child.clone());
            }
            paths.push(child);
        }
    }
    paths.sort();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_mount_then_retry() {
    if !common::running_as_root("failed_first_mount_then_retry") {
        return;
    }
    let mut env = TestEnv::new("retry");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let second = env.add_loop("second", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let first_mount = env.storage_root().join("first");
    let second_mount = env.storage_root().join("second");

    // The kernel rejects the value of errors=, so mount(2) itself fails.
    let bad = storage(&ext4, "ext4", &first_mount, &["errors=bogus"]);
    let request = create_sandbox_request(vec![bad]);
    let (code, message) = status_message(client.create_sandbox(context(), &request).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(
        message.contains(&ext4),
        "the message names the device: {message}"
    );
    assert!(
        message.contains("errors=bogus"),
        "the message names the options: {message}"
    );
    assert!(!first_mount.exists(), "no directory left");
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);

    // Part way: the first storage mounts, the second fails, the first is undone.
    let request = create_sandbox_request(vec![
        storage(&second, "ext4", &second_mount, &[]),
        storage(&ext4, "ext4", &first_mount, &["errors=bogus"]),
    ]);
    let (code, _) = status_message(client.create_sandbox(context(), &request).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(
        mount_count(&second_mount),
        0,
        "the storage that mounted is undone"
    );
    assert!(!second_mount.exists());
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);

    let request = create_sandbox_request(vec![
        storage(&second, "ext4", &second_mount, &[]),
        storage(&ext4, "ext4", &first_mount, &["errors=remount-ro"]),
    ]);
    client
        .create_sandbox(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(mount_count(&first_mount), 1);
    assert_eq!(mount_count(&second_mount), 1);
    assert_eq!(common::saved_storage_count(&env.state_file()), 2);

    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_storages_change_nothing() {
    if !common::running_as_root("invalid_storages_change_nothing") {
        return;
    }
    let mut env = TestEnv::new("invalid");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let blank = env.add_loop("blank", EXT4_SIZE, None);
    env.start_agent();
    let client = env.client().await;
    let root = env.storage_root();
    let mount_point = root.join("vol");
    let ext4_image = std::fs::read(&env.loops[0].backing_file).unwrap();
    let blank_image = std::fs::read(&env.loops[1].backing_file).unwrap();
    let before = tree(env.path());

    let with = |change: fn(&mut Storage)| {
        let mut storage = storage(&ext4, "ext4", &mount_point, &[]);
        change(&mut storage);
        storage
    };
    let cases: Vec<(&str, Storage, Code, &str)> = vec![
        (
            "blank device",
            storage(&blank, "ext4", &mount_point, &[]),
            Code::FAILED_PRECONDITION,
            "no ext2/ext3/ext4 or xfs",
        ),
        (
            "wrong fstype",
            storage(&ext4, "xfs", &mount_point, &[]),
            Code::FAILED_PRECONDITION,
            "ext2/ext3/ext4 filesystem",
        ),
        (
            "unknown fstype",
            with(|s| s.fstype = "nosuchfs".into()),
            Code::INVALID_ARGUMENT,
            "nosuchfs",
        ),
        (
            "tmpfs fstype",
            with(|s| s.fstype = "tmpfs".into()),
            Code::INVALID_ARGUMENT,
            "nodev",
        ),
        (
            "proc fstype",
            with(|s| s.fstype = "proc".into()),
            Code::INVALID_ARGUMENT,
            "nodev",
        ),
        (
            "fstype with comma",
            with(|s| s.fstype = "ext4,ro".into()),
            Code::INVALID_ARGUMENT,
            "fstype",
        ),
        (
            "unknown driver",
            with(|s| s.driver = "floppy".into()),
            Code::INVALID_ARGUMENT,
            "floppy",
        ),
        (
            "ro and rw",
            with(|s| s.options = vec!["ro".into(), "rw".into()]),
            Code::INVALID_ARGUMENT,
            "conflicts",
        ),
        (
            "bind option",
            with(|s| s.options = vec!["bind".into()]),
            Code::INVALID_ARGUMENT,
            "bind",
        ),
        (
            "loop option",
            with(|s| s.options = vec!["loop".into()]),
            Code::INVALID_ARGUMENT,
            "loop",
        ),
        (
            // mount(2) would cut the data after 4095 bytes and so silently
            // drop errors=bogus, which must fail the mount.
            "options over a page",
            with(|s| {
                s.options = vec!["user_xattr".to_string(); 370];
                s.options.push(format!("commit={}5", "0".repeat(17)));
                s.options.push("errors=bogus".into());
            }),
            Code::INVALID_ARGUMENT,
            "4095",
        ),
        (
            "open quote",
            with(|s| s.options = vec!["context=\"x".into()]),
            Code::INVALID_ARGUMENT,
            "quote",
        ),
        (
            "empty mount point",
            with(|s| s.mount_point = String::new()),
            Code::INVALID_ARGUMENT,
            "empty",
        ),
        (
            "NUL in mount point",
            with(|s| s.mount_point.push_str("\0x")),
            Code::INVALID_ARGUMENT,
            "NUL",
        ),
        (
            "mount point name over 255 bytes",
            with(|s| s.mount_point.push_str(&format!("/{}", "x".repeat(256)))),
            Code::INVALID_ARGUMENT,
            "255",
        ),
        (
            // Every name fits, but mount(2) and rmdir(2) reject the whole path.
            "mount point over 4095 bytes",
            with(|s| {
                s.mount_point
                    .push_str(&format!("/{}", "y".repeat(200)).repeat(21))
            }),
            Code::INVALID_ARGUMENT,
            "4095",
        ),
        (
            "relative mount point",
            with(|s| s.mount_point = "vol".into()),
            Code::INVALID_ARGUMENT,
            "absolute",
        ),
        (
            "not a block device",
            with(|s| s.source = "/dev/null".into()),
            Code::INVALID_ARGUMENT,
            "not a block device",
        ),
    ];
    for (name, storage, code, needle) in cases {
        let request = create_sandbox_request(vec![storage]);
        let (got, message) = status_message(client.create_sandbox(context(), &request).await);
        assert_eq!(got, code, "{name}: {message}");
        assert!(
            message.contains(needle),
            "{name}: {message:?} lacks {needle:?}"
        );
        assert_eq!(
            common::mounts_under(env.path()),
            Vec::<PathBuf>::new(),
            "{name}"
        );
        assert_eq!(tree(env.path()), before, "{name}: files changed");
    }
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);
    assert!(
        std::fs::read(&env.loops[0].backing_file).unwrap() == ext4_image,
        "ext4 image changed"
    );
    assert!(
        std::fs::read(&env.loops[1].backing_file).unwrap() == blank_image,
        "blank image changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_suite_nothing_escapes() {
    if !common::running_as_root("traversal_suite_nothing_escapes") {
        return;
    }
    let mut env = TestEnv::new("traversal");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let root = env.storage_root();
    let root_text = root.display().to_string();
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

    // Mount points that leave the storage root.
    let escapes = [
        format!("{root_text}/../escape"),
        format!("{root_text}/a/../../escape"),
        format!("{root_text}/.."),
        format!("{root_text}/link/vol"),
        format!("{root_text}/link"),
        root_text.clone(),
        "/etc/volume-agent-escape".to_string(),
        format!("{}/escape", env.path().display()),
    ];
    for mount_point in &escapes {
        let mut volume = storage(&ext4, "ext4", Path::new("/"), &[]);
        volume.mount_point = mount_point.clone();
        let request = create_sandbox_request(vec![volume]);
        let (code, message) = status_message(client.create_sandbox(context(), &request).await);
        assert_eq!(code, Code::INVALID_ARGUMENT, "{mount_point}: {message}");
    }
    assert!(!env.path().join("escape").exists());
    assert!(!Path::new("/etc/volume-agent-escape").exists());
    assert_eq!(
        tree(&outside),
        Vec::<PathBuf>::new(),
        "nothing made through the link"
    );
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());

    // A storage to bind from, with a link inside its filesystem that
    // points at the host's /etc.
    let mount_point = root.join("vol");
    let mount_text = mount_point.display().to_string();
    let volume = storage(&ext4, "ext4", &mount_point, &[]);
    common::create_sandbox(&client, &env, vec![volume]).await;
    std::fs::create_dir_all(mount_point.join("etc")).unwrap();
    std::fs::write(mount_point.join("etc/marker"), b"inside the volume").unwrap();
    std::os::unix::fs::symlink("/etc", mount_point.join("escape")).unwrap();

    // Destinations that try to leave the rootfs through `..` and links.
    let rootfs = env.rootfs("c1");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::os::unix::fs::symlink("/", rootfs.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", rootfs.join("up")).unwrap();
    let escape_source = format!("{mount_text}/escape");
    let climbing_source = format!("{mount_text}/../../../../etc");
    let mounts: &[(&str, &str, &[&str])] = &[
        (&mount_text, "/../../../../dots", &[]),
        (&mount_text, "/abs/etc/abs-target", &[]),
        (&mount_text, "/up/up-target", &[]),
        (&escape_source, "/link-source", &["ro"]),
        (&climbing_source, "/ignored", &[]),
    ];
    let request = create_container_request("c1", vec![], Some(spec(&rootfs, mounts)));
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));

    let real_rootfs = rootfs.canonicalize().unwrap();
    for target in ["dots", "etc/abs-target", "up-target", "link-source"] {
        assert_eq!(
            mount_count(&real_rootfs.join(target)),
            1,
            "{target} bound inside the rootfs"
        );
    }
    for mount in common::mounts_under(env.path()) {
        assert!(
            mount.starts_with(&real_rootfs) || mount == mount_point,
            "{} is outside the rootfs and the storage",
            mount.display()
        );
    }
    assert_eq!(mount_count(Path::new("/dots")), 0);
    assert_eq!(mount_count(Path::new("/up-target")), 0);
    assert_eq!(mount_count(Path::new("/etc/abs-target")), 0);
    assert!(
        !rootfs.join("ignored").exists(),
        "a source outside any storage is not bound"
    );
    assert_eq!(
        std::fs::read(real_rootfs.join("link-source/marker")).unwrap(),
        b"inside the volume",
        "the link in the volume resolves inside the volume"
    );

    // Bad destinations fail without leaving binds or references.
    let bad_destinations: &[(&str, Code)] = &[
        ("", Code::INVALID_ARGUMENT),
        ("/", Code::INVALID_ARGUMENT),
        ("/a\0b", Code::INVALID_ARGUMENT),
        ("relative", Code::INVALID_ARGUMENT),
    ];
    for (destination, expected) in bad_destinations {
        let rootfs = env.rootfs("c2");
        let oci = spec(&rootfs, &[(&mount_text, destination, &[])]);
        let request = create_container_request("c2", vec![], Some(oci));
        let (code, message) = status_message(client.create_container(context(), &request).await);
        assert_eq!(code, *expected, "{destination:?}: {message}");
        assert_eq!(tree(&rootfs), Vec::<PathBuf>::new(), "{destination:?}");
    }
    // A link to a host path that does not exist inside the rootfs.
    let rootfs = env.rootfs("c3");
    std::os::unix::fs::symlink(&outside, rootfs.join("host")).unwrap();
    let second_mount = root.join("second");
    let oci = spec(
        &rootfs,
        &[(&second_mount.display().to_string(), "/host/x", &[])],
    );
    let request = create_container_request(
        "c3",
        vec![storage(&ext4, "ext4", &second_mount, &[])],
        Some(oci),
    );
    let result = client.create_container(context(), &request).await;
    // The same device at a second mount point is a separate storage; it
    // mounts, then the bind fails and the storage is undone.
    let (code, message) = status_message(result);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert_eq!(mount_count(&second_mount), 0, "the new storage is undone");
    assert_eq!(tree(&outside), Vec::<PathBuf>::new());

    client
        .remove_container(context(), &common::remove_container_request("c1"))
        .await
        .unwrap();
    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_bind_target_is_rejected() {
    if !common::running_as_root("overlong_bind_target_is_rejected") {
        return;
    }
    let mut env = TestEnv::new("long-target");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");
    let rootfs = env.rootfs("c1");
    let before = tree(env.path());
    // Every name fits and the destination alone is 4091 bytes, but joined to
    // the rootfs it is longer than mount(2) and umount2(2) accept.
    let destination = format!("/{}", "d".repeat(200)).repeat(20) + "/" + &"e".repeat(70);
    let source = mount_point.display().to_string();
    let request = create_container_request(
        "c1",
        vec![storage(&ext4, "ext4", &mount_point, &[])],
        Some(spec(
            &rootfs,
            &[(source.as_str(), destination.as_str(), &[])],
        )),
    );

    let (code, message) = status_message(client.create_container(context(), &request).await);

    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("4095"), "{message}");
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());
    assert_eq!(tree(env.path()), before, "files changed");
}
