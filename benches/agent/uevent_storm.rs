//! A storm of synthetic block uevents through `DeviceRegistry::handle_uevent`
//! while requests wait for devices that never come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use volume_agent::device::{DeviceAddress, DeviceRegistry};
use volume_agent::uevent::Uevent;

use crate::alloc::Snapshot;
use crate::fixture::ScratchDir;
use crate::measure::{format_bytes, format_duration, Samples};
use crate::report::{Row, Section};

pub struct Plan {
    pub events: usize,
    pub waiters: usize,
    /// Storms of each kind; the time per event is their median.
    pub repeats: usize,
}

pub const FULL: Plan = Plan {
    events: 10_000,
    waiters: 200,
    repeats: 9,
};
pub const QUICK: Plan = Plan {
    events: 1_000,
    waiters: 200,
    repeats: 1,
};

/// Maximum time for the waiter tasks to register before the storm starts.
const WAITER_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The waiters' timeout: far beyond the storm, so none expires during it.
const WAITER_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(section: &mut Section, plan: &Plan) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let sysfs_root = scratch.subdir("sys")?;
    let dev_root = scratch.subdir("dev")?;
    let events = synthetic_events(plan.events);

    // Storms with and without waiters alternate, because one storm lasts
    // about 10 ms and a single preemption changes its time.
    let mut idle_times = Samples::default();
    let mut busy_times = Samples::default();
    let mut last = None;
    for _ in 0..plan.repeats {
        let idle = storm(&sysfs_root, &dev_root, &events, 0).await?;
        let busy = storm(&sysfs_root, &dev_root, &events, plan.waiters).await?;
        idle_times.push(idle.elapsed);
        busy_times.push(busy.elapsed);
        last = Some((idle, busy));
    }
    let (idle, busy) = last.context("the plan runs no storm")?;

    let per_event = |elapsed: Duration| elapsed / events.len() as u32;
    section.rows.push(Row::latency(
        format!("time per event, {} waiters (median storm)", plan.waiters),
        per_event(busy_times.p50()),
        "0 waiters",
        per_event(idle_times.p50()),
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
        "{} events of virtio-blk disks and partitions behind PCI root ports 01-08 (add, \
         change, remove), on an empty sysfs tree, while the waiters wait for PCI slots \
         18-1f that no event names. Heap counted by a counting global allocator in the \
         bench process, including the waiters' tasks; heap rows are from the last storm. \
         {} storms of each kind; the median storm with waiters took {}.",
        events.len(),
        plan.repeats,
        format_duration(busy_times.p50())
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

/// Feeds `events` to a new registry while `waiters` requests wait on it,
/// and checks that every waiter stays registered through the storm.
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
        let address = DeviceAddress::parse("blk", &missing_pci_path(index))?;
        tasks.push(tokio::spawn(async move {
            registry.wait_for(&address, WAITER_TIMEOUT).await
        }));
    }
    let registered = Instant::now();
    while registry.stats().waiters < waiters {
        anyhow::ensure!(
            registered.elapsed() < WAITER_REGISTRATION_TIMEOUT,
            "only {} of {waiters} waiters registered within {WAITER_REGISTRATION_TIMEOUT:?}",
            registry.stats().waiters
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

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

    let stats = registry.stats();
    let returned = tasks.iter().filter(|task| task.is_finished()).count();
    for task in &tasks {
        task.abort();
    }
    // Wait until the cancelled waiters are dropped, so that their registry
    // is freed before the next storm starts counting heap.
    for task in tasks {
        let _ = task.await;
    }
    anyhow::ensure!(
        returned == 0,
        "{returned} waiters returned during the storm, but no event named their PCI paths"
    );
    anyhow::ensure!(
        stats.devices == 0,
        "{} devices were left in the registry, but every disk and partition was removed",
        stats.devices
    );
    anyhow::ensure!(
        stats.waiters == waiters,
        "{} of {waiters} waiters were still registered after the storm, \
         but no event named their PCI paths",
        stats.waiters
    );
    Ok(outcome)
}

/// PCI path of waiter `index`: slots 0x18-0x1f on the root bus, where no
/// event puts a disk.
fn missing_pci_path(index: usize) -> String {
    format!("{:02x}/{:02x}", 0x18 + index / 32 % 8, index % 32)
}

/// Builds `count` block uevents of virtio-blk disks behind root ports
/// 01-08, cycling through add, partition add, change (resize), partition
/// remove and remove, so that the registry grows and shrinks.
fn synthetic_events(count: usize) -> Vec<Uevent> {
    const STEPS: usize = 5;
    (0..count)
        .map(|index| {
            let disk = index / STEPS % 256;
            let (port, slot) = (1 + disk / 32, disk % 32);
            let name = format!("vd{disk}");
            let disk_devpath = format!(
                "/devices/pci0000:00/0000:00:{port:02x}.0/0000:{:02x}:{slot:02x}.0/virtio{disk}/block/{name}",
                0x10 + port
            );
            let (action, partition) = match index % STEPS {
                0 => ("add", false),
                1 => ("add", true),
                2 => ("change", false),
                3 => ("remove", true),
                _ => ("remove", false),
            };
            let (devpath, devname, minor) = if partition {
                let partition_name = format!("{name}p1");
                (format!("{disk_devpath}/{partition_name}"), partition_name, disk * 16 + 1)
            } else {
                (disk_devpath, name, disk * 16)
            };
            let mut event = Uevent {
                action: action.into(),
                devpath,
                subsystem: "block".into(),
                devname: Some(devname),
                devtype: Some(if partition { "partition" } else { "disk" }.into()),
                major: Some(254),
                minor: Some(minor as u32),
                seqnum: Some(index as u64),
                resize: action == "change",
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
