//! A request that runs out of its ttrpc deadline while waiting for a device
//! gets the agent's own error in time, and what it did before is undone.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{create_sandbox_request, status_message, storage, TestEnv};
use protocols::agent::Storage;
use ttrpc::Code;

const EXT4_SIZE: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_undoes_partial_request() {
    if !common::running_as_root("deadline_undoes_partial_request") {
        return;
    }
    let mut env = TestEnv::new("deadline");
    let ext4 = env.add_loop("ext4", EXT4_SIZE, Some("ext4"));
    env.start_agent();
    let client = env.client().await;
    let present = env.storage_root().join("present");
    // No SCSI disk with this address exists on the test machine.
    let missing = Storage {
        driver: "scsi".into(),
        source: "0:4093".into(),
        fstype: "ext4".into(),
        mount_point: env.storage_root().join("missing").display().to_string(),
        ..Default::default()
    };
    let request = create_sandbox_request(vec![storage(&ext4, "ext4", &present, &[]), missing]);

    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let result = client
        .create_sandbox(
            ttrpc::context::with_timeout(deadline.as_nanos() as i64),
            &request,
        )
        .await;
    let elapsed = started.elapsed();
    let (code, message) = status_message(result);
    assert_eq!(code, Code::DEADLINE_EXCEEDED, "{message}");
    assert!(
        message.contains("0:4093"),
        "the agent's error, naming the address, arrives before the deadline: {message}"
    );
    assert!(elapsed < deadline, "reply after {elapsed:?}");
    assert_eq!(
        common::mounts_under(env.path()),
        Vec::<PathBuf>::new(),
        "the storage mounted before the wait is undone"
    );
    assert_eq!(common::saved_storage_count(&env.state_file()), 0);
    assert!(!present.exists(), "no directory left: {present:?}");
}
