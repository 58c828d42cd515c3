//! Helpers shared by the integration tests: guards that clean up loop
//! devices, mounts and agent processes even when a test fails, and request
//! builders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocols::agent::{FSGroup, Storage};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci::{Mount, Root, Spec};

/// Returns false, after printing why, when the test cannot run as this user.
pub fn running_as_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: it needs root for loop devices and mounts");
    false
}

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("starting {program} failed: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A sparse file attached as a loop device; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
    pub backing_file: PathBuf,
}

impl LoopDevice {
    /// Creates a sparse `size` byte file in `directory`, formats it with
    /// `fstype` (`None` leaves it blank) and attaches it.
    pub fn new(directory: &Path, name: &str, size: u64, fstype: Option<&str>) -> LoopDevice {
        let backing_file = directory.join(format!("{name}.img"));
        let file = std::fs::File::create(&backing_file).expect("creating the backing file");
        file.set_len(size).expect("sizing the backing file");
        drop(file);
        let backing_text = backing_file.to_str().unwrap();
        match fstype {
            Some("ext4") => {
                run("mkfs.ext4", &["-q", "-F", backing_text]);
            }
            Some("xfs") => {
                run("mkfs.xfs", &["-q", "-f", backing_text]);
            }
            Some(other) => panic!("no mkfs known for {other}"),
            None => {}
        }
        let path = PathBuf::from(run("losetup", &["--find", "--show", backing_text]));
        LoopDevice { path, backing_file }
    }

    pub fn source(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Sends Health.Check to the agent on `socket` and returns whether it replied.
/// Runs on its own thread and runtime, so that it works inside async tests.
fn answers_health_check(socket: &Path) -> bool {
    let address = format!("unix://{}", socket.display());
    let check = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("creating a tokio runtime");
        runtime.block_on(async {
            let Ok(client) = ttrpc::r#async::Client::connect(&address).await else {
                return false;
            };
            let health = protocols::health_ttrpc::HealthClient::new(client);
            let request = protocols::health::CheckRequest::new();
            let context = ttrpc::context::with_timeout(Duration::from_secs(1).as_nanos() as i64);
            health.check(context, &request).await.is_ok()
        })
    };
    std::thread::scope(|scope| scope.spawn(check).join().unwrap())
}

/// Mount points under `prefix`, from /proc/self/mountinfo, in mount order.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(volume_agent::mountinfo::unescape(field)))
        .filter(|mount_point| mount_point.starts_with(prefix))
        .collect()
}

/// Detaches, on drop, every mount left under its prefix, innermost first.
pub struct MountCleanup {
    pub prefix: PathBuf,
}

impl Drop for MountCleanup {
    fn drop(&mut self) {
        for mount_point in mounts_under(&self.prefix).iter().rev() {
            let _ = nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A running `volume-agent` on a unix socket; killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
}

impl Agent {
    /// Starts the agent binary and waits until it replies to a health check.
    /// The socket accepts connections before the agent has restored its
    /// state, so a connection alone does not mean it is ready.
    pub fn start(socket: &Path, storage_root: &Path, state_file: &Path, log: &Path) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_volume-agent"))
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--storage-root")
            .arg(storage_root)
            .arg("--state-file")
            .arg(state_file)
            .arg("--no-uevents")
            .arg("--device-timeout")
            .arg("5")
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting volume-agent");
        let mut agent = Agent {
            child,
            socket: socket.to_path_buf(),
        };
        let started = Instant::now();
        while !answers_health_check(socket) {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("volume-agent exited at start with {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "volume-agent did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub async fn client(&self) -> AgentServiceClient {
        let address = format!("unix://{}", self.socket.display());
        let client = ttrpc::r#async::Client::connect(&address)
            .await
            .expect("connecting to volume-agent");
        AgentServiceClient::new(client)
    }

    /// Kills the agent with SIGKILL, so it cannot clean anything up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One test's world: a private directory with a storage root, a state
/// file and container rootfs directories. Fields drop in order: the agent
/// first, then leftover mounts, then loop devices, then the directory.
pub struct TestEnv {
    pub agent: Option<Agent>,
    pub mounts: MountCleanup,
    pub loops: Vec<LoopDevice>,
    pub directory: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        let directory = tempfile::Builder::new()
            .prefix(&format!("volume-agent-{name}-"))
            .tempdir_in("/tmp")
            .expect("creating the test directory");
        std::fs::create_dir_all(directory.path().join("storage")).unwrap();
        TestEnv {
            agent: None,
            mounts: MountCleanup {
                prefix: directory.path().to_path_buf(),
            },
            loops: Vec::new(),
            directory,
        }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    pub fn storage_root(&self) -> PathBuf {
        self.path().join("storage")
    }

    pub fn state_file(&self) -> PathBuf {
        self.path().join("state/state.json")
    }

    pub fn start_agent(&mut self) -> &Agent {
        let agent = Agent::start(
            &self.path().join("agent.sock"),
            &self.storage_root(),
            &self.state_file(),
            &self.path().join("agent.log"),
        );
        self.agent.insert(agent)
    }

    pub async fn client(&self) -> AgentServiceClient {
        self.agent.as_ref().expect("agent started").client().await
    }

    /// Attaches a new loop device and returns its index in `loops`.
    pub fn add_loop(&mut self, name: &str, size: u64, fstype: Option<&str>) -> String {
        let device = LoopDevice::new(self.path(), name, size, fstype);
        let source = device.source();
        self.loops.push(device);
        source
    }

    /// Creates an empty container rootfs directory and returns its path.
    pub fn rootfs(&self, container_id: &str) -> PathBuf {
        let rootfs = self
            .path()
            .join("containers")
            .join(container_id)
            .join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        rootfs
    }

    /// Reads the agent log, for assertion messages.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path().join("agent.log")).unwrap_or_default()
    }

    /// Panics with `error` and the agent log, which records why a request failed.
    pub fn fail(&self, error: impl std::fmt::Debug) -> ! {
        panic!(
            "request failed: {error:?}\nagent log:\n{}",
            self.agent_log()
        )
    }
}

pub fn storage(source: &str, fstype: &str, mount_point: &Path, options: &[&str]) -> Storage {
    Storage {
        driver: "mmioblk".into(),
        source: source.into(),
        fstype: fstype.into(),
        mount_point: mount_point.display().to_string(),
        options: options.iter().map(|option| option.to_string()).collect(),
        ..Default::default()
    }
}

pub fn with_fs_group(mut storage: Storage, group_id: u32, on_root_mismatch: bool) -> Storage {
    let mut group = FSGroup::new();
    group.group_id = group_id;
    if on_root_mismatch {
        group.group_change_policy = protocols::types::FSGroupChangePolicy::OnRootMismatch.into();
    }
    storage.fs_group = Some(group).into();
    storage
}

/// Builds an OCI spec with `rootfs` and bind mounts of (source,
/// destination, options).
pub fn spec(rootfs: &Path, mounts: &[(&str, &str, &[&str])]) -> Spec {
    let mut spec = Spec::new();
    let mut root = Root::new();
    root.Path = rootfs.display().to_string();
    spec.Root = Some(root).into();
    for (source, destination, options) in mounts {
        let mut mount = Mount::new();
        mount.source = source.to_string();
        mount.destination = destination.to_string();
        mount.type_ = "bind".into();
        mount.options = options.iter().map(|option| option.to_string()).collect();
        spec.Mounts.push(mount);
    }
    spec
}

/// Builds a request context with a 20 s deadline.
pub fn context() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

/// Counts the mounts stacked at exactly `path`.
pub fn mount_count(path: &Path) -> usize {
    mounts_under(path)
        .iter()
        .filter(|mount_point| *mount_point == path)
        .count()
}

/// Returns the status code and message of a failed call.
pub fn status_message<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message.clone()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

pub fn create_container_request(
    container_id: &str,
    storages: Vec<Storage>,
    oci: Option<Spec>,
) -> protocols::agent::CreateContainerRequest {
    protocols::agent::CreateContainerRequest {
        container_id: container_id.into(),
        storages,
        OCI: oci.into(),
        ..Default::default()
    }
}

pub fn remove_container_request(container_id: &str) -> protocols::agent::RemoveContainerRequest {
    protocols::agent::RemoveContainerRequest {
        container_id: container_id.into(),
        ..Default::default()
    }
}

pub fn create_sandbox_request(storages: Vec<Storage>) -> protocols::agent::CreateSandboxRequest {
    protocols::agent::CreateSandboxRequest {
        storages,
        sandbox_id: "sandbox".into(),
        ..Default::default()
    }
}

/// Storage records in the agent's state file.
pub fn saved_storage_count(state_file: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(state_file) else {
        return 0;
    };
    let state: serde_json::Value = serde_json::from_str(&text).expect("state file is JSON");
    state["storages"]
        .as_object()
        .map_or(0, |storages| storages.len())
}

/// Sends CreateSandbox with `storages` and panics, with the agent log,
/// if it fails.
pub async fn create_sandbox(client: &AgentServiceClient, env: &TestEnv, storages: Vec<Storage>) {
    client
        .create_sandbox(context(), &create_sandbox_request(storages))
        .await
        .unwrap_or_else(|error| env.fail(error));
}

/// Sends DestroySandbox and checks that no mount is left in the test
/// directory.
pub async fn destroy_sandbox(client: &AgentServiceClient, env: &TestEnv) {
    client
        .destroy_sandbox(context(), &protocols::agent::DestroySandboxRequest::new())
        .await
        .unwrap_or_else(|error| env.fail(error));
    assert_eq!(
        mounts_under(env.path()),
        Vec::<PathBuf>::new(),
        "mounts left after DestroySandbox"
    );
}
