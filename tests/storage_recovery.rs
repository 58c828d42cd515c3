//! Restart recovery: the agent is killed with SIGKILL between attach and
//! remove, restarted, and still removes everything, rebuilding its state
//! from the state file and /proc/self/mountinfo.

mod common;

use common::{
    context, create_container_request, create_sandbox_request, mount_count,
    remove_container_request, spec, status_message, storage, TestEnv,
};
use ttrpc::Code;

const EXT4_SIZE: u64 = 64 << 20;
const XFS_SIZE: u64 = 320 << 20;

/// Lines of /proc/self/mountinfo that mention `needle`.
fn mountinfo_lines(needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_removes_everything() {
    if !common::running_as_root("kill9_then_restart_removes_everything") {
        return;
    }
    let mut env = TestEnv::new("kill9");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let xfs = env.add_loop("xfs", XFS_SIZE, Some("xfs"));
    let raw = env.add_loop("raw", EXT4_SIZE, None);
    let test_path = env.path().display().to_string();
    let mountinfo_before = mountinfo_lines(&test_path);
    assert_eq!(mountinfo_before, Vec::<String>::new());

    env.start_agent();
    let client = env.client().await;
    let sandbox_mount = env.storage_root().join("sandbox vol");
    let container_mount = env.storage_root().join("container-vol");
    let raw_mount = env.storage_root().join("raw");
    let sandbox_storages = vec![
        storage(&ext4, "ext4", &sandbox_mount, &[]),
        storage(&raw, "", &raw_mount, &[]),
    ];
    let container_storage = storage(&xfs, "xfs", &container_mount, &[]);
    common::create_sandbox(&client, &env, sandbox_storages.clone()).await;
    let rootfs = env.rootfs("c1");
    let oci = spec(
        &rootfs,
        &[
            (&sandbox_mount.display().to_string(), "/sandbox", &["ro"]),
            (&container_mount.display().to_string(), "/data", &[]),
            (&raw_mount.display().to_string(), "/dev/xvdc", &[]),
        ],
    );
    let request = create_container_request("c1", vec![container_storage.clone()], Some(oci));
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    let attached = common::mounts_under(env.path());
    assert_eq!(
        attached.len(),
        6,
        "three storages and three binds: {attached:?}"
    );

    env.agent.as_mut().unwrap().kill9();
    assert_eq!(
        common::mounts_under(env.path()),
        attached,
        "mounts outlive the agent"
    );
    env.agent = None;
    env.start_agent();
    let client = env.client().await;

    // Repeats after the restart succeed without a second mount.
    common::create_sandbox(&client, &env, sandbox_storages).await;
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(
        common::mounts_under(env.path()),
        attached,
        "nothing mounted twice"
    );

    client
        .remove_container(context(), &remove_container_request("c1"))
        .await
        .unwrap();
    assert_eq!(
        common::mounts_under(env.path()),
        vec![sandbox_mount.clone(), raw_mount.clone()]
    );
    common::destroy_sandbox(&client, &env).await;
    assert_eq!(
        mountinfo_lines(&test_path),
        mountinfo_before,
        "mountinfo ends as it began"
    );
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);
    assert!(!sandbox_mount.exists());
    assert!(!container_mount.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_unrecorded_mount() {
    if !common::running_as_root("restart_adopts_unrecorded_mount") {
        return;
    }
    let mut env = TestEnv::new("adopt");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    let other = env.add_loop("other", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");
    let volume = storage(&ext4, "ext4", &mount_point, &[]);
    common::create_sandbox(&client, &env, vec![volume.clone()]).await;

    // Losing the state file is what a crash between mount and save leaves.
    env.agent.as_mut().unwrap().kill9();
    std::fs::remove_file(env.state_file()).unwrap();
    env.agent = None;
    env.start_agent();
    let client = env.client().await;

    common::create_sandbox(&client, &env, vec![volume]).await;
    assert_eq!(
        mount_count(&mount_point),
        1,
        "the existing mount is recorded, not repeated"
    );

    let conflicting = storage(&other, "ext4", &mount_point, &[]);
    let result = client
        .create_sandbox(context(), &create_sandbox_request(vec![conflicting]))
        .await;
    let (code, message) = status_message(result);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message.contains(&ext4),
        "names the mounted device: {message}"
    );
    assert!(
        message.contains(&other),
        "names the requested device: {message}"
    );

    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drops_records_of_gone_mounts() {
    if !common::running_as_root("restart_drops_records_of_gone_mounts") {
        return;
    }
    let mut env = TestEnv::new("gone");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");
    let volume = storage(&ext4, "ext4", &mount_point, &[]);
    common::create_sandbox(&client, &env, vec![volume.clone()]).await;
    assert_eq!(common::saved_storage_count(&env.state_file()), 1);

    env.agent.as_mut().unwrap().kill9();
    nix::mount::umount2(&mount_point, nix::mount::MntFlags::empty()).unwrap();
    env.agent = None;
    env.start_agent();
    let client = env.client().await;

    assert_eq!(
        common::saved_storage_count(&env.state_file()),
        0,
        "stale record dropped at start"
    );
    assert!(
        !mount_point.exists(),
        "the directory the agent made is removed with the record"
    );
    common::create_sandbox(&client, &env, vec![volume]).await;
    assert_eq!(mount_count(&mount_point), 1, "mounted again after the drop");
    common::destroy_sandbox(&client, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_unrecorded_bind() {
    if !common::running_as_root("restart_adopts_unrecorded_bind") {
        return;
    }
    let mut env = TestEnv::new("adopt-bind");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let mount_point = env.storage_root().join("vol");
    let volume = storage(&ext4, "ext4", &mount_point, &[]);
    let rootfs = env.rootfs("c1");
    let target = rootfs.join("data");
    let source = mount_point.display().to_string();
    let request = create_container_request(
        "c1",
        vec![volume],
        Some(spec(&rootfs, &[(source.as_str(), "/data", &[])])),
    );
    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(mount_count(&target), 1);

    // A crash between the bind and the save leaves the bind unrecorded.
    env.agent.as_mut().unwrap().kill9();
    let text = std::fs::read_to_string(env.state_file()).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["binds"] = serde_json::json!({});
    std::fs::write(env.state_file(), state.to_string()).unwrap();
    env.agent = None;
    env.start_agent();
    let client = env.client().await;

    client
        .create_container(context(), &request)
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(mount_count(&target), 1, "the bind is not stacked twice");
    client
        .remove_container(context(), &remove_container_request("c1"))
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(
        mount_count(&target),
        0,
        "no bind left after RemoveContainer"
    );
    assert_eq!(mount_count(&mount_point), 0, "the storage is unmounted");
}
