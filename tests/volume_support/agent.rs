//! A `volume-agent` process on a private unix socket, with a ttrpc client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, RemoveContainerRequest,
    ResizeVolumeRequest, Storage, VolumeStatsRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::csi::VolumeStatsResponse;
use protocols::oci::{Mount, Root, Spec};

/// Deadline every request is sent with.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent. Dropping it stops the process and unmounts whatever it
/// left under its directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub storage_root: PathBuf,
    child: Child,
    log: PathBuf,
    client: AgentServiceClient,
}

impl Agent {
    /// Starts the agent binary and waits until it accepts connections.
    pub async fn start() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("volume-agent-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let storage_root = dir.path().join("storage");
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "").unwrap();
        let log = dir.path().join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_volume-agent"))
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--storage-root")
            .arg(&storage_root)
            .arg("--state-file")
            .arg(dir.path().join("state.json"))
            .arg("--cmdline")
            .arg(&cmdline)
            .args(["--log-level", "debug", "--device-timeout", "10"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("volume-agent starts");

        let address = format!("unix://{}", socket.display());
        let started = Instant::now();
        let client = loop {
            if socket.exists() {
                if let Ok(client) = ttrpc::r#async::Client::connect(&address).await {
                    break client;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "agent did not listen on {address}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Agent {
            dir,
            storage_root,
            child,
            log,
            client: AgentServiceClient::new(client),
        }
    }

    fn context() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(REQUEST_TIMEOUT.as_nanos() as i64)
    }

    /// Mounts `storages` for the sandbox.
    pub async fn create_sandbox(&self, storages: Vec<Storage>) -> ttrpc::Result<()> {
        let mut request = CreateSandboxRequest::new();
        request.sandbox_id = "volume-test".into();
        request.storages = storages;
        self.client
            .create_sandbox(Self::context(), &request)
            .await
            .map(|_| ())
    }

    /// Creates container `id` whose rootfs gets `source` bound at
    /// `destination`, and returns the bind target.
    pub async fn create_container(
        &self,
        id: &str,
        source: &Path,
        destination: &str,
    ) -> ttrpc::Result<PathBuf> {
        let rootfs = self.dir.path().join(id).join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let mut mount = Mount::new();
        mount.destination = destination.into();
        mount.source = source.display().to_string();
        mount.type_ = "bind".into();
        mount.options = vec!["rbind".into()];
        let mut root = Root::new();
        root.Path = rootfs.display().to_string();
        let mut spec = Spec::new();
        spec.Root = Some(root).into();
        spec.Mounts = vec![mount];
        let mut request = CreateContainerRequest::new();
        request.container_id = id.into();
        request.OCI = Some(spec).into();
        self.client
            .create_container(Self::context(), &request)
            .await?;
        Ok(rootfs.join(destination.trim_start_matches('/')))
    }

    pub async fn remove_container(&self, id: &str) -> ttrpc::Result<()> {
        let mut request = RemoveContainerRequest::new();
        request.container_id = id.into();
        self.client
            .remove_container(Self::context(), &request)
            .await
            .map(|_| ())
    }

    pub async fn destroy_sandbox(&self) -> ttrpc::Result<()> {
        let request = DestroySandboxRequest::new();
        self.client
            .destroy_sandbox(Self::context(), &request)
            .await
            .map(|_| ())
    }

    pub async fn stats(&self, path: &Path) -> ttrpc::Result<VolumeStatsResponse> {
        let mut request = VolumeStatsRequest::new();
        request.volume_guest_path = path.display().to_string();
        self.client
            .get_volume_stats(Self::context(), &request)
            .await
    }

    pub async fn resize(&self, path: &Path, size: u64) -> ttrpc::Result<()> {
        self.resize_within(path, size, REQUEST_TIMEOUT).await
    }

    /// Sends ResizeVolume with a `timeout` deadline.
    pub async fn resize_within(
        &self,
        path: &Path,
        size: u64,
        timeout: Duration,
    ) -> ttrpc::Result<()> {
        let mut request = ResizeVolumeRequest::new();
        request.volume_guest_path = path.display().to_string();
        request.size = size;
        let context = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        self.client
            .resize_volume(context, &request)
            .await
            .map(|_| ())
    }

    /// Returns the agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Builds an `mmioblk` storage for `device` mounted at `mount_point`.
pub fn storage(device: &Path, fstype: &str, mount_point: &Path) -> Storage {
    let mut storage = Storage::new();
    storage.driver = "mmioblk".into();
    storage.source = device.display().to_string();
    storage.fstype = fstype.into();
    storage.mount_point = mount_point.display().to_string();
    storage
}

/// Returns the ttrpc status code of a failed request.
pub fn status_code(error: &ttrpc::Error) -> ttrpc::Code {
    match error {
        ttrpc::Error::RpcStatus(status) => status.code.enum_value_or_default(),
        other => panic!("not an RPC status: {other:?}"),
    }
}

/// Returns the status message of a failed request.
pub fn status_message(error: &ttrpc::Error) -> String {
    match error {
        ttrpc::Error::RpcStatus(status) => status.message.clone(),
        other => panic!("not an RPC status: {other:?}"),
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("agent log:\n{}", self.log());
        }
        unmount_under(self.dir.path());
    }
}

/// Unmounts every mount under `dir`, deepest and latest first.
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let entries = volume_agent::mountinfo::parse(&text);
    for entry in entries.iter().rev() {
        if entry.mount_point.starts_with(dir) {
            let target = &entry.mount_point;
            if nix::mount::umount(target).is_err() {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
