//! Helpers shared by the volumectl integration tests: a real volume-agent
//! process on a unix socket in a temporary directory, and volumectl runs.

#![allow(dead_code)]

pub mod fake_vmm;
pub mod frames;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Time the agent gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running volume-agent, killed by PID when dropped.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub address: String,
    /// Keeps the socket, storage root and state file until the agent is gone.
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on `unix://<tmp>/agent.sock` without uevents and
    /// waits until its socket exists.
    pub fn start() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("volumectl-spine-")
            .tempdir()
            .expect("creating the test directory failed");
        let socket = dir.path().join("agent.sock");
        let address = format!("unix://{}", socket.display());
        let child = agent_command(dir.path(), &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting volume-agent failed");
        let mut agent = Agent {
            child,
            socket,
            address,
            dir,
        };
        agent.wait_for_socket();
        agent
    }

    fn wait_for_socket(&mut self) {
        let started = Instant::now();
        while !self.socket.exists() {
            if let Some(status) = self.child.try_wait().expect("polling volume-agent failed") {
                panic!(
                    "volume-agent exited with {status} before creating {:?}",
                    self.socket
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "volume-agent did not create {:?} within {START_TIMEOUT:?}",
                self.socket
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("polling volume-agent failed")
            .is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the agent command line for a test under `dir`, listening on `listen`.
pub fn agent_command(dir: &Path, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_volume-agent"));
    command
        .arg("--listen")
        .arg(listen)
        .arg("--no-uevents")
        .arg("--storage-root")
        .arg(dir.join("storage"))
        .arg("--state-file")
        .arg(dir.join("state.json"))
        // An empty kernel command line, so the host's /proc/cmdline cannot
        // change the defaults under test.
        .arg("--cmdline")
        .arg("/dev/null");
    command
}

/// Runs volumectl with `args` and returns its output. The address and
/// direct-volume root come only from `args`, never from the environment.
pub fn volumectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volumectl"))
        .args(args)
        .env_remove("VOLUMECTL_ADDRESS")
        .env_remove("VOLUMECTL_DIRECT_VOLUMES_ROOT")
        .stdin(Stdio::null())
        .output()
        .expect("running volumectl failed")
}

/// Returns stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that volumectl failed and printed `code` first on stderr.
/// Returns stderr.
pub fn assert_failed_with(output: &Output, code: &str) -> String {
    let text = stderr(output);
    assert!(
        !output.status.success(),
        "volumectl succeeded: {}",
        stdout(output)
    );
    assert!(
        text.starts_with(&format!("volumectl: {code}: ")),
        "expected {code} on stderr, got: {text}"
    );
    text
}

/// Asserts that volumectl exited with status 0, showing stderr otherwise.
pub fn assert_succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "volumectl failed: {}",
        stderr(output)
    );
}

/// Builds `attach` arguments for the block device `device` (driver mmioblk)
/// with a `fstype` filesystem mounted at `mount_point`, followed by `rest`.
pub fn attach_args<'a>(
    device: &'a str,
    fstype: &'a str,
    mount_point: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "attach",
        "--driver",
        "mmioblk",
        "--source",
        device,
        "--fstype",
        fstype,
        "--mount-point",
        mount_point,
    ];
    args.extend_from_slice(rest);
    args
}
