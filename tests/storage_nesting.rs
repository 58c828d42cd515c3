//! Mount points that nest inside, or cover, another storage's mount point
//! are rejected: the inner directory would be written into the outer
//! volume, or the outer mount would hide the inner one and DestroySandbox
//! could not unmount it.

mod common;

use std::path::PathBuf;

use common::{context, create_sandbox_request, mount_count, status_message, storage, TestEnv};
use ttrpc::Code;

const EXT4_SIZE: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_mount_points_are_rejected() {
    if !common::running_as_root("nested_mount_points_are_rejected") {
        return;
    }
    let mut env = TestEnv::new("nesting");
    let outer_device = env.add_loop("outer", EXT4_SIZE, Some("ext4"));
    let inner_device = env.add_loop("inner", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let outer = env.storage_root().join("outer");
    let inner = outer.join("inner");

    // Inner first, then a storage whose mount would cover it.
    common::create_sandbox(
        &client,
        &env,
        vec![storage(&inner_device, "ext4", &inner, &[])],
    )
    .await;
    let request = create_sandbox_request(vec![storage(&outer_device, "ext4", &outer, &[])]);
    let (code, message) = status_message(client.create_sandbox(context(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(message.contains(&inner.display().to_string()), "{message}");
    assert_eq!(mount_count(&outer), 0, "the outer storage is not mounted");
    assert_eq!(mount_count(&inner), 1, "the inner storage stays mounted");
    assert_eq!(common::saved_storage_count(&env.state_file()), 1);
    common::destroy_sandbox(&client, &env).await;
    assert!(!outer.exists(), "no directory left: {outer:?}");

    // Outer first, then a storage whose mount point lies inside its volume.
    common::create_sandbox(
        &client,
        &env,
        vec![storage(&outer_device, "ext4", &outer, &[])],
    )
    .await;
    let request = create_sandbox_request(vec![storage(&inner_device, "ext4", &inner, &[])]);
    let (code, message) = status_message(client.create_sandbox(context(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(message.contains(&outer.display().to_string()), "{message}");
    assert!(
        !inner.exists(),
        "nothing is created inside the outer volume"
    );
    assert_eq!(
        common::mounts_under(env.path()),
        vec![outer.clone()],
        "only the outer storage is mounted"
    );
    common::destroy_sandbox(&client, &env).await;

    // Both in one request: the second one is rejected and the first undone.
    let request = create_sandbox_request(vec![
        storage(&outer_device, "ext4", &outer, &[]),
        storage(&inner_device, "ext4", &inner, &[]),
    ]);
    let (code, message) = status_message(client.create_sandbox(context(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert_eq!(common::mounts_under(env.path()), Vec::<PathBuf>::new());
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);
    assert!(!outer.exists(), "no directory left: {outer:?}");
}
