//! ResizeVolume on the host: an xfs loop device grown by truncate and
//! `losetup --set-capacity`, then ResizeVolume, next to a direct
//! `xfs_growfs` of an identical second device.

use std::path::Path;

use anyhow::Context as _;

use crate::agent_process::{AgentProcess, Clients};
use crate::fixture::{make_image, run_tool, LoopDevice, Mount, ScratchDir};
use crate::measure::{format_duration, time, Samples};
use crate::report::{Row, Section};
use crate::requests::{create_sandbox, destroy_sandbox, mmioblk_storage, resize_volume};

/// mkfs.xfs rejects devices much smaller than 300 MB.
const INITIAL_BYTES: u64 = 320 << 20;
/// Growth per round.
const STEP_BYTES: u64 = 32 << 20;

pub async fn run(section: &mut Section, rounds: usize) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let agent_image = scratch.path().join("agent.img");
    let direct_image = scratch.path().join("direct.img");
    // Two mkfs runs, because xfs refuses to mount two filesystems with one UUID.
    make_image(&agent_image, INITIAL_BYTES, "xfs")?;
    make_image(&direct_image, INITIAL_BYTES, "xfs")?;
    let agent_device = LoopDevice::attach(&agent_image)?;
    let direct_device = LoopDevice::attach(&direct_image)?;
    let agent = AgentProcess::start().await?;
    let clients = agent.connect().await?;
    let mount_point = agent.storage_root.join("resize");
    create_sandbox(
        &clients,
        vec![mmioblk_storage(agent_device.dev_str(), "xfs", &mount_point)],
    )
    .await?;
    let direct_mount = Mount::new(&direct_device.dev_path, &scratch.subdir("direct")?, "xfs")?;
    let direct_target = direct_mount
        .target
        .to_str()
        .context("scratch path is not UTF-8")?
        .to_string();
    let volume_path = mount_point
        .to_str()
        .context("scratch path is not UTF-8")?
        .to_string();

    let mut ours = Samples::default();
    let mut direct = Samples::default();
    for round in 1..=rounds as u64 {
        let size = INITIAL_BYTES + round * STEP_BYTES;
        grow_device(&agent_image, &agent_device, size)?;
        grow_device(&direct_image, &direct_device, size)?;

        // Alternate which grow goes first, so that neither always runs on a
        // page cache the other has just warmed.
        if round % 2 == 0 {
            time_resize(&clients, &volume_path, size, &mut ours).await?;
            time(&mut direct, || {
                run_tool("xfs_growfs", &["-d", &direct_target])
            })?;
        } else {
            time(&mut direct, || {
                run_tool("xfs_growfs", &["-d", &direct_target])
            })?;
            time_resize(&clients, &volume_path, size, &mut ours).await?;
        }

        let grown = filesystem_bytes(&mount_point)?;
        let direct_grown = filesystem_bytes(&direct_mount.target)?;
        anyhow::ensure!(
            grown == direct_grown,
            "after ResizeVolume to {size} bytes the agent's xfs has {grown} bytes, \
             the directly grown one {direct_grown}"
        );
    }
    destroy_sandbox(&clients).await?;

    let (ours_p50, direct_p50) = (ours.p50(), direct.p50());
    section.rows.push(Row::latency(
        "ResizeVolume p50",
        ours_p50,
        "xfs_growfs",
        direct_p50,
        None,
    ));
    section.rows.push(Row::latency(
        "ResizeVolume p99",
        ours.p99(),
        "xfs_growfs",
        direct.p99(),
        None,
    ));
    let overhead = if ours_p50 >= direct_p50 {
        format_duration(ours_p50 - direct_p50)
    } else {
        format!("−{}", format_duration(direct_p50 - ours_p50))
    };
    section.rows.push(Row::info(
        "planning overhead at p50 (ours − xfs_growfs)",
        overhead,
        "",
    ));
    section.note(format!(
        "{rounds} rounds, each growing both {} MiB xfs loop devices by {} MiB; the \
         truncate and losetup --set-capacity are outside the timing.",
        INITIAL_BYTES >> 20,
        STEP_BYTES >> 20
    ));
    section.note(
        "Measured on the host: loop devices need no rescan. The guest path (virtio-blk or \
         virtio-scsi rescan after QEMU block_resize) is not measured here.",
    );
    Ok(())
}

async fn time_resize(
    clients: &Clients,
    volume_path: &str,
    size: u64,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    resize_volume(clients, volume_path, size).await?;
    samples.push(started.elapsed());
    Ok(())
}

/// Grows the backing file and makes the loop device see the new size.
fn grow_device(image: &Path, device: &LoopDevice, size: u64) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|file| file.set_len(size))
        .with_context(|| format!("growing {} to {size} bytes failed", image.display()))?;
    device.refresh_size()
}

fn filesystem_bytes(path: &Path) -> anyhow::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)
        .with_context(|| format!("statvfs on {} failed", path.display()))?;
    Ok(stat.blocks() * stat.fragment_size())
}
