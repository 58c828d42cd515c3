//! Long storage work (an fsGroup walk over many files) must not stop the
//! agent from serving other requests, such as the health checks a runtime
//! sends to decide whether the agent is alive.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{create_sandbox_request, storage, with_fs_group, TestEnv};

const IMAGE_SIZE: u64 = 256 << 20;
/// Files in each volume: enough that a walk takes a noticeable time.
const DIRECTORIES: usize = 100;
const FILES_PER_DIRECTORY: usize = 200;

/// Creates an ext4 image at `image` holding `DIRECTORIES` x
/// `FILES_PER_DIRECTORY` empty files, built by mkfs from a tree in `work`.
fn populated_image(work: &Path, image: &Path) {
    let tree = work.join("tree");
    for directory in 0..DIRECTORIES {
        let directory = tree.join(format!("d{directory}"));
        std::fs::create_dir_all(&directory).unwrap();
        for file in 0..FILES_PER_DIRECTORY {
            std::fs::File::create(directory.join(format!("f{file}"))).unwrap();
        }
    }
    let file = std::fs::File::create(image).unwrap();
    file.set_len(IMAGE_SIZE).unwrap();
    let tree = tree.to_str().unwrap();
    let image = image.to_str().unwrap();
    common::run("mkfs.ext4", &["-q", "-F", "-N", "50000", "-d", tree, image]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_group_walks_leave_health_served() {
    if !common::running_as_root("fs_group_walks_leave_health_served") {
        return;
    }
    let mut env = TestEnv::new("blocking");
    let first_image = env.path().join("first.img");
    populated_image(env.path(), &first_image);
    let second_image = env.path().join("second.img");
    common::run(
        "cp",
        &[
            "--sparse=always",
            first_image.to_str().unwrap(),
            second_image.to_str().unwrap(),
        ],
    );
    let mut sources = Vec::new();
    for image in [first_image, second_image] {
        let path = common::run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        env.loops.push(common::LoopDevice {
            path: path.clone().into(),
            backing_file: image,
        });
        sources.push(path);
    }
    env.start_agent();
    let client = env.client().await;
    let socket = format!("unix://{}", env.path().join("agent.sock").display());
    let health = protocols::health_ttrpc::HealthClient::new(
        ttrpc::r#async::Client::connect(&socket).await.unwrap(),
    );

    // One walk per runtime worker of the agent, each on its own connection
    // as two runtime processes would send them.
    let mut attaches = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let client = env.client().await;
        let mount_point = env.storage_root().join(format!("vol{index}"));
        let request = create_sandbox_request(vec![with_fs_group(
            storage(source, "ext4", &mount_point, &[]),
            4321,
            false,
        )]);
        attaches.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = client.create_sandbox(common::context(), &request).await;
            (result, started.elapsed())
        }));
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest_check = Duration::ZERO;
    while !attaches.iter().all(|attach| attach.is_finished()) {
        let started = Instant::now();
        health
            .check(common::context(), &protocols::health::CheckRequest::new())
            .await
            .unwrap_or_else(|error| env.fail(error));
        slowest_check = slowest_check.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut quickest_attach = Duration::MAX;
    for attach in attaches {
        let (result, elapsed) = attach.await.unwrap();
        result.unwrap_or_else(|error| env.fail(error));
        quickest_attach = quickest_attach.min(elapsed);
    }

    assert!(
        slowest_check < quickest_attach / 2,
        "a health check took {slowest_check:?} while the fsGroup walks took at least \
         {quickest_attach:?}"
    );
    common::destroy_sandbox(&client, &env).await;
}
