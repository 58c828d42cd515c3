//! A storm of synthetic block uevents through `DeviceRegistry::handle_uevent`
//! while requests wait for devices that never come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use volume_agent::device::{DeviceAddress, DeviceRegistry};
use volume_agent::uevent::Uevent;

use crate::alloc::Snapshot;
use crate::fixture::ScratchDir;
use crate::measure::{format_bytes, format_duration};
use crate::report::{Row, Section};

pub struct Plan {
    pub events: usize,
    pub waiters: usize,
}

pub const FULL: Plan = Plan {
    events: 10_000,
    waiters: 200,
};
pub const QUICK: Plan = Plan {
    events: 1_000,
    waiters: 200,
};

/// The waiters' timeout: far beyond the storm, so none expires during it.
const WAITER_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(section: &mut Section, plan: &Plan) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let sysfs_root = scratch.subdir("sys")?;
    let dev_root = scratch.subdir("dev")?;
    let events = synthetic_events(plan.events);

    let idle = storm(&sysfs_root, &dev_root, &events, 0).await?;
    let busy = storm(&sysfs_root, &dev_root, &events, plan.waiters).await?;

    let per_event = |outcome: &Outcome| outcome.elapsed / events.len() as u32;
    section.rows.push(Row::latency(
        format!("time per event, {} waiters", plan.waiters),
        per_event(&busy),
        "0 waiters",
        per_event(&idle),
        None,
    ));
    section.rows.push(Row::info(
        format!("peak heap growth, {} waiters", plan.waiters),
        format_bytes(busy.peak_heap),
        format!("0 waiters {}", format_bytes(idle.peak_heap)),
    ));
    section.rows.push(Row::info(
        "heap held after the storm",
        format_bytes(busy.held_heap),
        format!("0 waiters {}", format_bytes(idle.held_heap)),
    ));
    section.rows.push(Row::info(
        "allocations per event",
        format!("{:.1}", busy.allocations as f64 / events.len() as f64),
        format!(
            "0 waiters {:.1}",
            idle.allocations as f64 / events.len() as f64
        ),
    ));
    section.note(format!(
        "{} events on a fake sysfs tree (add, change and remove of disks and partitions \
         that no waiter matches); heap counted by a counting global allocator in the bench \
         process, including the waiters' own tasks. Whole storm: {}.",
        events.len(),
        format_duration(busy.elapsed)
    ));
    Ok(())
}

struct Outcome {
    elapsed: Duration,
    peak_heap: u64,
    /// Heap still live after the storm, with the registry and waiters alive.
    held_heap: u64,
    allocations: u64,
}

/// Feeds `events` to a new registry while `waiters` requests wait on it.
async fn storm(
    sysfs_root: &std::path::Path,
    dev_root: &std::path::Path,
    events: &[Uevent],
    waiters: usize,
) -> anyhow::Result<Outcome> {
    let snapshot = Snapshot::start();
    let registry = DeviceRegistry::new(
        volume_agent::logging::discard(),
        sysfs_root.to_path_buf(),
        dev_root.to_path_buf(),
    );
    let mut tasks = Vec::new();
    for index in 0..waiters {
        let registry = Arc::clone(&registry);
        let address = DeviceAddress::parse("mmioblk", &format!("/dev/bench-missing-{index}"))?;
        tasks.push(tokio::spawn(async move {
            registry.wait_for(&address, WAITER_TIMEOUT).await
        }));
    }
    tokio::task::yield_now().await;

    let started = Instant::now();
    for event in events {
        registry.handle_uevent(event);
    }
    let elapsed = started.elapsed();
    let outcome = Outcome {
        elapsed,
        peak_heap: snapshot.peak_growth(),
        held_heap: snapshot.live_growth(),
        allocations: snapshot.allocations(),
    };
    for task in tasks {
        task.abort();
    }
    Ok(outcome)
}

/// Builds `count` block uevents cycling through add, change and remove of
/// disks and their partitions.
fn synthetic_events(count: usize) -> Vec<Uevent> {
    (0..count)
        .map(|index| {
            let disk = index / 6 % 1000;
            let partition = index % 2 == 1;
            let action = ["add", "change", "remove"][index / 2 % 3];
            let name = if partition {
                format!("vdx{disk}p1")
            } else {
                format!("vdx{disk}")
            };
            let devpath = if partition {
                format!("/devices/virtual/block/vdx{disk}/{name}")
            } else {
                format!("/devices/virtual/block/{name}")
            };
            let mut event = Uevent {
                action: action.into(),
                devpath,
                subsystem: "block".into(),
                devname: Some(name),
                devtype: Some(if partition { "partition" } else { "disk" }.into()),
                major: Some(254),
                minor: Some((disk * 2 + usize::from(partition)) as u32),
                seqnum: Some(index as u64),
                ..Uevent::default()
            };
            for (key, value) in [
                ("ACTION", event.action.clone()),
                ("DEVPATH", event.devpath.clone()),
                ("SUBSYSTEM", event.subsystem.clone()),
            ] {
                event.env.insert(key.into(), value);
            }
            event
        })
        .collect()
}
