//! The real `volume-agent` binary, started on a unix socket in a scratch
//! directory and stopped by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocols::agent_ttrpc::AgentServiceClient;

use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::fixture::ScratchDir;

/// Maximum time from exec to the agent's first Health response.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A tmpfs, like the guest's /run.
pub const TMPFS: &str = "/dev/shm";
/// How long the agent may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Environment variable naming another agent binary to run, e.g. a build
/// with symbols for profiling.
pub const BINARY_OVERRIDE: &str = "VOLUME_AGENT_BENCH_BINARY";

/// Returns the agent binary to run: the override, else the one cargo built
/// for this bench, which lives in the same `target/<profile>` directory as
/// the bench executable.
pub fn binary() -> PathBuf {
    std::env::var_os(BINARY_OVERRIDE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_volume-agent")))
}

/// A running agent and the paths it was given. Its files live on tmpfs, as
/// in a guest, where the state file defaults to /run/volume-agent: on a disk
/// filesystem each state save would pay two fsyncs the guest does not pay.
pub struct AgentProcess {
    child: Child,
    pub address: String,
    pub storage_root: PathBuf,
    log_path: PathBuf,
    /// Dropped after the child is stopped, so it unmounts the storages the
    /// agent left behind.
    _dir: ScratchDir,
}

/// One mapping of the agent's address space, from /proc/PID/smaps.
pub struct Mapping {
    /// File path, `[heap]`, `[stack]` and the like; `None` when anonymous.
    pub name: Option<String>,
    pub size: u64,
    pub rss: u64,
}

/// The two services of one connection.
#[derive(Clone)]
pub struct Clients {
    pub agent: AgentServiceClient,
    pub health: HealthClient,
}

impl AgentProcess {
    /// Starts the agent with its socket, storage root, state file and log
    /// in a new directory on /dev/shm, without uevents, and waits until
    /// Health responds.
    pub async fn start() -> anyhow::Result<AgentProcess> {
        AgentProcess::start_with(&[]).await
    }

    /// Like [`AgentProcess::start`], with `extra_args` added to the command
    /// line (e.g. `--log-level warning`).
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<AgentProcess> {
        let dir = ScratchDir::new_in(Path::new(TMPFS))?;
        let socket = dir.path().join("agent.sock");
        let storage_root = dir.subdir("storage")?;
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {} failed", log_path.display()))?;
        let address = format!("unix://{}", socket.display());
        let child = Command::new(binary())
            .arg("--listen")
            .arg(&address)
            .arg("--no-uevents")
            .arg("--storage-root")
            .arg(&storage_root)
            .arg("--state-file")
            .arg(dir.path().join("state.json"))
            // The host's own kernel command line is not the agent's business.
            .arg("--cmdline")
            .arg("/dev/null")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} failed; build it first", binary().display()))?;
        let agent = AgentProcess {
            child,
            address,
            storage_root,
            log_path,
            _dir: dir,
        };
        agent.wait_until_serving().await?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens a new connection to the agent.
    pub async fn connect(&self) -> anyhow::Result<Clients> {
        let client = ttrpc::r#async::Client::connect(&self.address)
            .await
            .with_context(|| format!("connecting to {} failed", self.address))?;
        Ok(Clients {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
        })
    }

    /// Reads a number field (`Threads`) of /proc/PID/status.
    pub fn status_count(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("reading {path} failed"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("{path} has no numeric {field} line"))
    }

    /// Reads a `kB` field (`VmRSS`, `VmHWM`) of /proc/PID/status, in bytes.
    pub fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("reading {path} failed"))?;
        let kilobytes = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("{path} has no {field} line in kB"))?;
        Ok(kilobytes * 1024)
    }

    /// Parses /proc/PID/smaps into its mappings.
    pub fn mappings(&self) -> anyhow::Result<Vec<Mapping>> {
        let path = format!("/proc/{}/smaps", self.pid());
        let smaps =
            std::fs::read_to_string(&path).with_context(|| format!("reading {path} failed"))?;
        let mut mappings: Vec<Mapping> = Vec::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or_default();
            if let Some(kilobytes) = line.strip_prefix("Rss:") {
                let kilobytes = kilobytes.trim().trim_end_matches("kB").trim();
                if let (Some(mapping), Ok(kilobytes)) =
                    (mappings.last_mut(), kilobytes.parse::<u64>())
                {
                    mapping.rss = kilobytes * 1024;
                }
            } else if let Some((start, end)) = first.split_once('-') {
                // A mapping header: `start-end perms offset dev inode [path]`.
                let address = |text| u64::from_str_radix(text, 16).unwrap_or(0);
                mappings.push(Mapping {
                    name: fields.nth(4).map(str::to_string),
                    size: address(end).saturating_sub(address(start)),
                    rss: 0,
                });
            }
        }
        Ok(mappings)
    }

    /// Sums the resident bytes of each mapped file, largest first.
    pub fn file_rss(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut by_file: Vec<(String, u64)> = Vec::new();
        for mapping in self.mappings()? {
            let Some(file) = mapping.name.filter(|name| name.starts_with('/')) else {
                continue;
            };
            match by_file.iter_mut().find(|(name, _)| *name == file) {
                Some((_, total)) => *total += mapping.rss,
                None => by_file.push((file, mapping.rss)),
            }
        }
        by_file.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        Ok(by_file)
    }

    /// Returns the last lines the agent logged, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let attempt = async {
                let clients = self.connect().await?;
                let context = ttrpc::context::with_duration(Duration::from_secs(1));
                clients.health.check(context, &CheckRequest::new()).await?;
                anyhow::Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(error) if started.elapsed() > START_TIMEOUT => {
                    bail!(
                        "the agent returned no Health response on {} within {START_TIMEOUT:?}: {error:#}\n{}",
                        self.address,
                        self.log_tail()
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
