//! The work an attach and a detach do beyond mount(2) and umount(2), each
//! step timed alone in the bench process, to account for the gap between
//! the agent and the bare syscalls.
//!
//! NOTE: the step list follows an strace of the agent's CreateSandbox and
//! DestroySandbox of an ext4 `mmioblk` storage. It goes stale when the
//! storage manager changes the system calls it makes.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::agent_process::Clients;
use crate::measure::{format_duration, time, Samples};
use crate::report::Row;
use crate::requests::health_check;

/// Size of the state file the agent writes with one storage recorded.
const STATE_FILE_BYTES: usize = 600;

/// Times each step `repeats` times and returns one row per step plus their
/// sum, all at p50.
pub async fn measure(
    clients: &Clients,
    device: &Path,
    scratch: &Path,
    repeats: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut steps: Vec<(&str, Samples)> = Vec::new();

    let mut round_trips = Samples::default();
    for _ in 0..repeats {
        let started = std::time::Instant::now();
        health_check(clients).await?;
        health_check(clients).await?;
        round_trips.push(started.elapsed());
    }
    steps.push(("2 ttrpc round trips (Health Check)", round_trips));

    steps.push((
        "read /proc/self/mountinfo and /proc/filesystems",
        repeat(repeats, || {
            std::fs::read_to_string("/proc/self/mountinfo")?;
            std::fs::read_to_string("/proc/filesystems")?;
            Ok(())
        })?,
    ));
    steps.push((
        "open the device, pread 2 KiB superblock",
        repeat(repeats, || {
            let file = std::fs::File::open(device)?;
            file.read_at(&mut [0u8; 2048], 0)?;
            Ok(())
        })?,
    ));
    let mount_point = scratch.join("step-mount-point");
    steps.push((
        "mkdir + rmdir of the mount point",
        repeat(repeats, || {
            std::fs::create_dir(&mount_point)?;
            std::fs::remove_dir(&mount_point)?;
            Ok(())
        })?,
    ));
    let state_file = scratch.join("step-state.json");
    steps.push((
        "2 state saves (write, fsync, rename, fsync dir)",
        repeat(repeats, || {
            save_state(&state_file)?;
            save_state(&state_file)
        })?,
    ));

    let mut rows = Vec::new();
    let mut sum = Duration::ZERO;
    for (name, mut samples) in steps {
        let p50 = samples.p50();
        sum += p50;
        rows.push(Row::info(
            format!("step: {name}, p50"),
            format_duration(p50),
            "",
        ));
    }
    rows.push(Row::info("sum of the steps", format_duration(sum), ""));
    Ok(rows)
}

fn repeat(
    repeats: usize,
    mut step: impl FnMut() -> std::io::Result<()>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..repeats {
        time(&mut samples, &mut step).context("a timed step failed")?;
    }
    Ok(samples)
}

/// Writes the state file as the agent does: a temporary file, fsync, rename,
/// fsync of the directory.
fn save_state(path: &Path) -> std::io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&[b' '; STATE_FILE_BYTES])?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}
