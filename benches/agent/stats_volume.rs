//! The volume that GetVolumeStats is measured on: a real ext4 loop device
//! attached through CreateSandbox when that works, else a tmpfs directory.

use std::path::{Path, PathBuf};

use crate::agent_process::{AgentProcess, Clients, TMPFS};
use crate::fixture::{is_root, make_image, LoopDevice, ScratchDir};
use crate::requests::{create_sandbox, mmioblk_storage};

/// Size of the ext4 image behind the measured volume.
const IMAGE_BYTES: u64 = 64 << 20;

/// The measured path and what keeps it alive. Fields drop in declaration
/// order: the loop device goes after the agent's mount is gone with the
/// scratch directory (a mounted loop device is autocleared on unmount).
pub struct StatsVolume {
    pub path: PathBuf,
    /// Origin of the path, for the results page.
    pub description: String,
    _loop_device: Option<LoopDevice>,
    _tmpfs_dir: Option<ScratchDir>,
}

impl StatsVolume {
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("bench paths are UTF-8")
    }
}

/// Attaches an ext4 loop device through the agent when running as root and
/// the agent's storage works; else falls back to a directory on /dev/shm.
pub async fn prepare(
    agent: &AgentProcess,
    clients: &Clients,
    scratch: &ScratchDir,
) -> anyhow::Result<StatsVolume> {
    let attach_error = if is_root() {
        match attach(agent, clients, scratch).await {
            Ok(volume) => return Ok(volume),
            Err(error) => format!("attaching an ext4 loop device failed ({error:#})"),
        }
    } else {
        "the bench does not run as root, which loop devices need".to_string()
    };
    let dir = ScratchDir::new_in(Path::new(TMPFS))?;
    let path = dir.subdir("volume")?;
    Ok(StatsVolume {
        path,
        description: format!("a tmpfs directory on /dev/shm, because {attach_error}"),
        _loop_device: None,
        _tmpfs_dir: Some(dir),
    })
}

async fn attach(
    agent: &AgentProcess,
    clients: &Clients,
    scratch: &ScratchDir,
) -> anyhow::Result<StatsVolume> {
    let image = scratch.path().join("stats.img");
    make_image(&image, IMAGE_BYTES, "ext4")?;
    let loop_device = LoopDevice::attach(&image)?;
    let mount_point = agent.storage_root.join("stats");
    create_sandbox(
        clients,
        vec![mmioblk_storage(loop_device.dev_str(), "ext4", &mount_point)],
    )
    .await?;
    Ok(StatsVolume {
        path: mount_point,
        description: format!(
            "the storage mount point of a {} MiB ext4 loop device attached with CreateSandbox",
            IMAGE_BYTES >> 20
        ),
        _loop_device: Some(loop_device),
        _tmpfs_dir: None,
    })
}
