//! GetVolumeStats and ResizeVolume through the real `volume-agent` binary
//! over ttrpc, on storages it mounts from loop devices and binds into a
//! container rootfs.

mod volume_support;

use std::time::Duration;

use protocols::csi::volume_usage::Unit;
use volume_support::agent::{status_code, status_message, storage, Agent};
use volume_support::{assert_matches_kernel, statfs_total, usage_of, LoopDisk, Tmpfs, MIB};

/// Mounts a fresh `fstype` disk through the agent, binds it into a
/// container and checks stats on both paths against statfs.
async fn check_stats_through_agent(fstype: &str, size: u64) {
    let disk = LoopDisk::new(size, fstype, &[]);
    let agent = Agent::start().await;
    let mount_point = agent.storage_root.join(format!("vol-{fstype}"));
    let storages = vec![storage(&disk.device, fstype, &mount_point)];
    agent.create_sandbox(storages).await.unwrap();
    std::fs::write(mount_point.join("data"), vec![1u8; 2 * MIB as usize]).unwrap();
    nix::unistd::sync();
    let bind = agent
        .create_container("c1", &mount_point, "/data")
        .await
        .unwrap();

    let at_mount = agent.stats(&mount_point).await.unwrap();
    assert_matches_kernel(&at_mount, &mount_point);
    let at_bind = agent.stats(&bind).await.unwrap();
    assert_matches_kernel(&at_bind, &bind);
    assert_eq!(at_mount.usage, at_bind.usage);
    assert!(
        !at_bind.volume_condition.abnormal,
        "{}",
        at_bind.volume_condition.message
    );
    assert_eq!(at_bind.volume_condition.message, "OK");

    agent.remove_container("c1").await.unwrap();
    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn agent_ext4_stats_equal_statfs() {
    require!("mkfs.ext4");
    check_stats_through_agent("ext4", 64 * MIB).await;
}

#[tokio::test]
async fn agent_xfs_stats_equal_statfs() {
    require!("mkfs.xfs");
    check_stats_through_agent("xfs", 320 * MIB).await;
}

#[tokio::test]
async fn agent_raw_block_stats() {
    require!();
    let disk = LoopDisk::new(40 * MIB, "", &[]);
    let agent = Agent::start().await;
    let mount_point = agent.storage_root.join("vol-raw");
    agent
        .create_sandbox(vec![storage(&disk.device, "", &mount_point)])
        .await
        .unwrap();

    let response = agent.stats(&mount_point).await.unwrap();
    assert_eq!(response.usage.len(), 1, "BYTES only: {response:?}");
    let bytes = usage_of(&response, Unit::BYTES);
    assert_eq!(bytes.total, 40 * MIB);
    assert_eq!(bytes.used, 0);
    assert!(
        !response.volume_condition.abnormal,
        "{}",
        response.volume_condition.message
    );
    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn agent_missing_path_not_found() {
    require!();
    let agent = Agent::start().await;
    let missing = agent.dir.path().join("no-such-volume");
    let error = agent.stats(&missing).await.unwrap_err();
    assert_eq!(status_code(&error), ttrpc::Code::NOT_FOUND, "{error:?}");
    let error = agent.resize(&missing, 0).await.unwrap_err();
    assert_eq!(status_code(&error), ttrpc::Code::NOT_FOUND, "{error:?}");
}

#[tokio::test]
async fn agent_unmanaged_path() {
    require!();
    let agent = Agent::start().await;
    let quiet = Tmpfs::mount();
    let path = quiet.path();
    let response = agent.stats(path).await.unwrap();
    assert_matches_kernel(&response, path);
    assert!(!response.volume_condition.abnormal);
    let message = &response.volume_condition.message;
    assert!(
        message.contains("not on a volume this agent manages"),
        "{message}"
    );

    let error = agent.resize(path, 0).await.unwrap_err();
    assert_eq!(
        status_code(&error),
        ttrpc::Code::FAILED_PRECONDITION,
        "{error:?}"
    );
}

#[tokio::test]
async fn agent_xfs_grows_through_bind() {
    require!("mkfs.xfs", "xfs_growfs");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let agent = Agent::start().await;
    let mount_point = agent.storage_root.join("vol-grow");
    agent
        .create_sandbox(vec![storage(&disk.device, "xfs", &mount_point)])
        .await
        .unwrap();
    let bind = agent
        .create_container("c1", &mount_point, "/data")
        .await
        .unwrap();
    let before = statfs_total(&mount_point);

    let error = agent.resize(&bind, 100 * MIB).await.unwrap_err();
    assert_eq!(
        status_code(&error),
        ttrpc::Code::INVALID_ARGUMENT,
        "{error:?}"
    );

    disk.grow_device(400 * MIB);
    agent.resize(&bind, 400 * MIB).await.unwrap();
    let after = statfs_total(&mount_point);
    assert!(
        after > before + 50 * MIB,
        "statfs total {before} -> {after}"
    );
    assert_eq!(
        statfs_total(&bind),
        after,
        "the bind target sees the growth"
    );

    agent.resize(&mount_point, 400 * MIB).await.unwrap();
    assert_eq!(
        statfs_total(&mount_point),
        after,
        "a repeat changes nothing"
    );

    let timeout = Duration::from_secs(2);
    let error = agent
        .resize_within(&bind, 800 * MIB, timeout)
        .await
        .unwrap_err();
    assert_eq!(
        status_code(&error),
        ttrpc::Code::DEADLINE_EXCEEDED,
        "{error:?}"
    );
    let message = status_message(&error);
    assert!(
        message.contains(&(800 * MIB).to_string()),
        "names the request: {message}"
    );
    assert!(
        message.contains(&(400 * MIB).to_string()),
        "names the size seen: {message}"
    );

    agent.remove_container("c1").await.unwrap();
    agent.destroy_sandbox().await.unwrap();
}

#[tokio::test]
async fn agent_concurrent_resizes_one_storage() {
    require!("mkfs.xfs", "xfs_growfs");
    let disk = LoopDisk::new(320 * MIB, "xfs", &[]);
    let agent = Agent::start().await;
    let mount_point = agent.storage_root.join("vol-concurrent");
    let storages = vec![storage(&disk.device, "xfs", &mount_point)];
    agent.create_sandbox(storages).await.unwrap();
    let bind = agent
        .create_container("c1", &mount_point, "/data")
        .await
        .unwrap();
    let before = statfs_total(&mount_point);

    disk.grow_device(480 * MIB);
    let (first, second, stats) = tokio::join!(
        agent.resize(&bind, 480 * MIB),
        agent.resize(&mount_point, 480 * MIB),
        agent.stats(&bind),
    );
    first.unwrap();
    second.unwrap();
    let stats = stats.unwrap();
    assert!(
        !stats.volume_condition.abnormal,
        "{}",
        stats.volume_condition.message
    );
    let after = statfs_total(&mount_point);
    assert!(
        after > before + 100 * MIB,
        "statfs total {before} -> {after}"
    );
    let log = agent.log();
    let grows = log.matches("\"msg\":\"growing filesystem\"").count();
    assert_eq!(grows, 1, "serialized requests grow once:\n{log}");

    agent.remove_container("c1").await.unwrap();
    agent.destroy_sandbox().await.unwrap();
}
