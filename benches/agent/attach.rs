//! Attach of present loop devices through CreateSandbox and DestroySandbox,
//! next to bare mount(2) and umount(2) of the same devices.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protocols::agent::Storage;

use crate::agent_process::{AgentProcess, Clients, TMPFS};
use crate::fixture::{copy_image, make_image, LoopDevice, ScratchDir};
use crate::measure::{format_duration, ratio, time, Samples};
use crate::report::{ratio_verdict, Row, Section, Verdict};
use crate::requests::{create_sandbox, destroy_sandbox, mmioblk_storage};
use crate::steps;

/// Target: attach + destroy at most this multiple of mount + umount.
const MAX_ATTACH_RATIO: f64 = 1.1;
/// Target: attach + destroy at most this much slower than mount + umount at p50.
const MAX_ATTACH_EXTRA: Duration = Duration::from_millis(1);
/// Target: 64 concurrent attaches at most this multiple of 64 bare mounts.
const MAX_CONCURRENT_RATIO: f64 = 1.2;
/// Worker threads of the agent's tokio runtime (set in src/main.rs), and
/// so the number of cores the agent's request handling is sized for.
const AGENT_WORKER_THREADS: usize = 2;
/// Devices in the concurrent case.
const CONCURRENT_DEVICES: usize = 64;
const IMAGE_BYTES: u64 = 16 << 20;

pub struct Plan {
    /// Attach + destroy cycles of one device.
    pub single_cycles: usize,
    /// Rounds of 64 concurrent attaches.
    pub concurrent_rounds: usize,
}

pub const FULL: Plan = Plan {
    single_cycles: 200,
    concurrent_rounds: 10,
};
pub const QUICK: Plan = Plan {
    single_cycles: 3,
    concurrent_rounds: 1,
};

/// Mounts the ext4 on `device` at `target` with a bare mount(2).
fn bare_mount(device: &Path, target: &Path) -> anyhow::Result<()> {
    mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting {} on {} failed",
            device.display(),
            target.display()
        )
    })
}

/// Unmounts `target` with a bare umount(2).
fn bare_umount(target: &Path) -> anyhow::Result<()> {
    umount2(target, MntFlags::empty())
        .with_context(|| format!("unmounting {} failed", target.display()))
}

/// Mounts and unmounts `device` on `target` with bare syscalls.
fn bare_mount_cycle(device: &Path, target: &Path) -> anyhow::Result<()> {
    bare_mount(device, target)?;
    bare_umount(target)
}

/// Latencies of one agent's attach + destroy cycles.
#[derive(Default)]
struct CycleSamples {
    attach: Samples,
    destroy: Samples,
    cycle: Samples,
}

/// Attaches `storage` with CreateSandbox, destroys it, and records both.
async fn attach_cycle(
    clients: &Clients,
    storage: &Storage,
    samples: &mut CycleSamples,
) -> anyhow::Result<()> {
    let created = Instant::now();
    create_sandbox(clients, vec![storage.clone()]).await?;
    let attach_time = created.elapsed();
    let destroyed = Instant::now();
    destroy_sandbox(clients).await?;
    let destroy_time = destroyed.elapsed();
    samples.attach.push(attach_time);
    samples.destroy.push(destroy_time);
    samples.cycle.push(attach_time + destroy_time);

    let mount_point = Path::new(&storage.mount_point);
    anyhow::ensure!(
        !mount_point.exists() || std::fs::read_dir(mount_point)?.next().is_none(),
        "DestroySandbox left {} mounted",
        mount_point.display()
    );
    Ok(())
}

pub async fn run_single(section: &mut Section, plan: &Plan) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let image = scratch.path().join("single.img");
    make_image(&image, IMAGE_BYTES, "ext4")?;
    let device = LoopDevice::attach(&image)?;
    let agent = AgentProcess::start().await?;
    let clients = agent.connect().await?;
    // The same agent logging only warnings and errors, to show what the
    // info records of each attach and detach cost.
    let quiet_agent = AgentProcess::start_with(&["--log-level", "warning"]).await?;
    let quiet_clients = quiet_agent.connect().await?;
    let bare_dir = ScratchDir::new_in(Path::new(TMPFS))?;
    let bare_target = bare_dir.subdir("bare")?;
    let storage = mmioblk_storage(device.dev_str(), "ext4", &agent.storage_root.join("single"));
    let quiet_storage = mmioblk_storage(
        device.dev_str(),
        "ext4",
        &quiet_agent.storage_root.join("single"),
    );

    let mut ours = CycleSamples::default();
    let mut quiet = CycleSamples::default();
    let mut bare = Samples::default();
    for _ in 0..plan.single_cycles {
        attach_cycle(&clients, &storage, &mut ours).await?;
        attach_cycle(&quiet_clients, &quiet_storage, &mut quiet).await?;
        time(&mut bare, || {
            bare_mount_cycle(&device.dev_path, &bare_target)
        })?;
    }

    let (ours_p50, floor) = (ours.cycle.p50(), bare.p50());
    let mut p50 = Row::latency(
        "attach + destroy p50",
        ours_p50,
        "mount+umount",
        floor,
        None,
    );
    p50.target = format!(
        "≤ {MAX_ATTACH_RATIO:.2}x and ≤ +{}",
        format_duration(MAX_ATTACH_EXTRA)
    );
    let extra = ours_p50.saturating_sub(floor);
    p50.verdict = match ratio_verdict(ratio(ours_p50, floor), MAX_ATTACH_RATIO) {
        Verdict::Met if extra <= MAX_ATTACH_EXTRA => Verdict::Met,
        _ => Verdict::Missed(format!(
            "{:.2}x, +{}",
            ratio(ours_p50, floor),
            format_duration(extra)
        )),
    };
    section.rows.push(p50);
    section.rows.push(Row::latency(
        "attach + destroy p99",
        ours.cycle.p99(),
        "mount+umount",
        bare.p99(),
        Some(MAX_ATTACH_RATIO),
    ));
    section.rows.push(Row::info(
        "CreateSandbox alone p50 / p99",
        pair(&mut ours.attach),
        "",
    ));
    section.rows.push(Row::info(
        "DestroySandbox alone p50 / p99",
        pair(&mut ours.destroy),
        "",
    ));
    section.rows.push(Row::latency(
        "attach + destroy p50, --log-level warning",
        quiet.cycle.p50(),
        "mount+umount",
        floor,
        None,
    ));
    section.rows.push(Row::info(
        "gap at p50 (agent − mount+umount)",
        format_duration(extra),
        "",
    ));
    let repeats = plan.single_cycles;
    section
        .rows
        .extend(steps::measure(&clients, &device.dev_path, bare_dir.path(), repeats).await?);
    section.note(format!(
        "{} rounds on one {} MiB ext4 loop device; each round runs a cycle of the agent at \
         its default log level (info), one of a second agent at --log-level warning, then a \
         bare mount+umount of the same device. The step rows time, alone, the other \
         system calls an attach and a detach make (found with strace), to account for the gap.",
        plan.single_cycles,
        IMAGE_BYTES >> 20
    ));
    Ok(())
}

fn pair(samples: &mut Samples) -> String {
    format!(
        "{} / {}",
        format_duration(samples.p50()),
        format_duration(samples.p99())
    )
}

pub async fn run_concurrent(section: &mut Section, plan: &Plan) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let template = scratch.path().join("template.img");
    make_image(&template, IMAGE_BYTES, "ext4")?;
    let mut devices = Vec::new();
    for index in 0..CONCURRENT_DEVICES {
        let image = scratch.path().join(format!("disk{index}.img"));
        copy_image(&template, &image)?;
        devices.push(LoopDevice::attach(&image)?);
    }
    let agent = AgentProcess::start().await?;
    let mut connections = Vec::new();
    for _ in 0..CONCURRENT_DEVICES {
        connections.push(agent.connect().await?);
    }
    let bare_dir = ScratchDir::new_in(Path::new(TMPFS))?;
    let mut bare_targets = Vec::new();
    for index in 0..CONCURRENT_DEVICES {
        bare_targets.push(bare_dir.subdir(&format!("disk{index}"))?);
    }

    let mut totals = ConcurrentTotals::default();
    for _ in 0..plan.concurrent_rounds {
        totals.attach += attach_all(&agent, &connections, &devices).await?;
        let destroyed = Instant::now();
        destroy_sandbox(&connections[0]).await?;
        totals.destroy += destroyed.elapsed();

        let threads = CONCURRENT_DEVICES;
        let (mount, umount) = mount_all(&devices, &bare_targets, threads, threads)?;
        totals.mount += mount;
        totals.umount += umount;

        // Narrower floors: mounts on as many threads as the agent has runtime
        // workers, and unmounts one after another, as DestroySandbox makes them.
        let (mount, umount) = mount_all(&devices, &bare_targets, AGENT_WORKER_THREADS, 1)?;
        totals.narrow_mount += mount;
        totals.serial_umount += umount;
    }

    let rounds = plan.concurrent_rounds as u32;
    let mean = |total: Duration| total / rounds;
    section.rows.push(Row::latency(
        "64 CreateSandbox in parallel, wall time",
        mean(totals.attach),
        "64 mount(2) threads",
        mean(totals.mount),
        Some(MAX_CONCURRENT_RATIO),
    ));
    section.rows.push(Row::latency(
        "one DestroySandbox of 64 storages",
        mean(totals.destroy),
        "64 umount(2) threads",
        mean(totals.umount),
        None,
    ));
    section.rows.push(Row::latency(
        "attach + destroy of 64, wall time",
        mean(totals.attach + totals.destroy),
        "mount+umount",
        mean(totals.mount + totals.umount),
        Some(MAX_CONCURRENT_RATIO),
    ));
    section.rows.push(Row::latency(
        "64 CreateSandbox vs mounts on 2 threads",
        mean(totals.attach),
        "64 mount(2), 2 threads",
        mean(totals.narrow_mount),
        None,
    ));
    section.rows.push(Row::latency(
        "DestroySandbox vs sequential unmounts",
        mean(totals.destroy),
        "64 umount(2), 1 thread",
        mean(totals.serial_umount),
        None,
    ));
    section.note(format!(
        "Mean of {} rounds; each CreateSandbox has one storage and its own connection, \
         all connected before timing. The last two rows compare with narrower floors: \
         mount(2) on {AGENT_WORKER_THREADS} threads, the agent's runtime worker count, and \
         umount(2) one after another, as DestroySandbox unmounts.",
        plan.concurrent_rounds
    ));
    Ok(())
}

#[derive(Default)]
struct ConcurrentTotals {
    attach: Duration,
    destroy: Duration,
    mount: Duration,
    umount: Duration,
    narrow_mount: Duration,
    serial_umount: Duration,
}

/// Sends one CreateSandbox per device, all at once, and returns the time
/// until the last one returned.
async fn attach_all(
    agent: &AgentProcess,
    connections: &[Clients],
    devices: &[LoopDevice],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (clients, device)) in connections.iter().zip(devices).enumerate() {
        let clients = clients.clone();
        let mount_point = agent.storage_root.join(format!("disk{index}"));
        let storage = mmioblk_storage(device.dev_str(), "ext4", &mount_point);
        tasks.spawn(async move { create_sandbox(&clients, vec![storage]).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a CreateSandbox task panicked")??;
    }
    Ok(started.elapsed())
}

/// Mounts every device using `mount_threads` threads, then unmounts them
/// using `umount_threads`; returns both wall times.
fn mount_all(
    devices: &[LoopDevice],
    targets: &[PathBuf],
    mount_threads: usize,
    umount_threads: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let pairs: Vec<(&Path, &Path)> = devices
        .iter()
        .map(|device| device.dev_path.as_path())
        .zip(targets.iter().map(PathBuf::as_path))
        .collect();
    let mount_wall = on_threads(&pairs, mount_threads, |&(device, target)| {
        bare_mount(device, target)
    })?;
    let umount_wall = on_threads(&pairs, umount_threads, |&(_, target)| bare_umount(target))?;
    Ok((mount_wall, umount_wall))
}

/// Runs `operation` once per item on `threads` threads that take the next
/// item until none is left; returns the wall time until all finished.
fn on_threads<T: Sync>(
    items: &[T],
    threads: usize,
    operation: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        operation(item)?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a mount thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(started.elapsed())
}
