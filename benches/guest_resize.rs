//! Measures what ResizeVolume costs over running the grow tool by hand, in
//! one QEMU guest boot.
//!
//! For ext4 and xfs it plugs two identical virtio-blk disks: the agent
//! mounts the first (`volumectl attach`) and the guest shell mounts the
//! second by hand. Each round grows both disks by 64 MiB with QMP
//! `block_resize` and waits until the guest reports the new size of both.
//! Then it times `volumectl resize MOUNT_POINT 0` on the host, as wall time
//! over hybrid vsock with volumectl's process start included. It also times
//! `resize2fs DEVICE` or `xfs_growfs MOUNT_POINT` in the guest shell, on the
//! guest's CLOCK_MONOTONIC. The agent's own `elapsed_ms` comes from its
//! "volume resized" log line on the serial console. Every round checks that
//! both filesystems grew.
//!
//! Run: `cargo bench --bench guest_resize -- [--quick] [--rounds N]
//! [--write PATH]`. `--quick` runs one round per filesystem, for breakage
//! checks. `--rounds N` sets the count (default 15). `--write PATH` writes the
//! results as a markdown section. `--profile dev` before `--` reuses the
//! debug build. The bench needs root, QEMU, vhost-device-vsock and the guest
//! image from `rootfs-hooks/build-test-guest.sh target/guest`. Without them it
//! prints why and exits 0, unless `CI=true`, where it panics.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use harness::qemu::FIRST_ROOT_PORT_SLOT;
use harness::volume::{Bus, Disk, Plug};
use harness::volumectl::Volumectl;
use harness::{Fstype, Guest};

const MIB: u64 = 1024 * 1024;
/// Default rounds per filesystem. The count is odd, so the p50 is one
/// measured round.
const ROUNDS: usize = 15;
const GROWTH: u64 = 64 * MIB;
/// Time the guest gets to see a `block_resize` (about 20 ms when idle).
const SIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the agent's log line gets to reach the serial log after the reply.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// Command-line options after `--`.
struct Options {
    rounds: usize,
    write: Option<PathBuf>,
}

/// One filesystem's pair of disks: `agent` mounted by the agent, `direct`
/// mounted by hand in the guest shell.
struct Pair {
    fstype: Fstype,
    agent: Disk,
    agent_device: String,
    mount_point: String,
    direct: Disk,
    direct_device: String,
    direct_mount: String,
    size: u64,
}

/// Timings of one round, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Host wall time of `volumectl resize`.
    agent_wall: f64,
    /// `elapsed_ms` the agent logged for the grow, if its line was found.
    agent_logged: Option<f64>,
    /// Agent time from the request to starting the tool, from the `ts` of
    /// its "growing filesystem" line.
    agent_before_tool: Option<f64>,
    /// Guest time of the grow tool run by hand. `run` subtracts the cost of
    /// the clock reads around it.
    direct: f64,
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("guest_resize: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let Some(prerequisites) = harness::require_guest("guest_resize bench") else {
        return ExitCode::SUCCESS;
    };
    let mut guest = match Guest::boot(&prerequisites, "bench-resize") {
        Ok(guest) => guest,
        Err(error) => {
            eprintln!("guest_resize: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "guest booted in {:.1} s under {}",
        guest.boot_time.as_secs_f64(),
        guest.accel
    );
    match run(&mut guest, &options, &prerequisites.image.dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Dropping the guest prints where its serial log was kept.
            guest.keep_logs();
            eprintln!("guest_resize failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(args: impl Iterator<Item = String>) -> Result<Options> {
    let mut options = Options {
        rounds: ROUNDS,
        write: None,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.rounds = 1,
            "--rounds" => {
                let count = args.next().context("--rounds needs a count")?;
                options.rounds = count
                    .parse()
                    .ok()
                    .filter(|&count: &usize| count > 0)
                    .with_context(|| {
                        format!("invalid --rounds {count:?}; expected a count of 1 or more")
                    })?;
            }
            "--write" => {
                let path = args.next().context("--write needs a file path")?;
                options.write = Some(PathBuf::from(path));
            }
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => {}
            other => {
                bail!("unknown option {other:?}; expected --quick, --rounds N or --write PATH")
            }
        }
    }
    Ok(options)
}

fn run(guest: &mut Guest, options: &Options, image_dir: &Path) -> Result<()> {
    let volumectl = Volumectl::new(&guest.agent_address());
    let clock_overhead = measure_clock_overhead(guest).context("timing an empty guest command")?;
    println!("guest clock reads around an empty command: {clock_overhead:.1} ms");
    let mut results = Vec::new();
    for (fstype, size, root_ports) in [
        (Fstype::Ext4, 256 * MIB, (0, 1)),
        (Fstype::Xfs, 320 * MIB, (2, 3)),
    ] {
        let mut pair = set_up(guest, &volumectl, fstype, size, root_ports)
            .with_context(|| format!("setting up the {} disks", fstype.name()))?;
        let mut rounds = Vec::new();
        for index in 0..options.rounds {
            let mut round = measure_round(guest, &volumectl, &mut pair, index)
                .with_context(|| format!("{} round {}", fstype.name(), index + 1))?;
            round.direct = (round.direct - clock_overhead).max(0.0);
            println!(
                "{} round {}: agent {:.0} ms wall, {} ms logged, {} ms before the tool; \
                 direct {:.0} ms",
                fstype.name(),
                index + 1,
                round.agent_wall,
                format_ms(round.agent_logged),
                format_ms(round.agent_before_tool),
                round.direct
            );
            rounds.push(round);
        }
        results.push((fstype, rounds));
    }

    let section = render(guest, options.rounds, clock_overhead, image_dir, &results);
    println!("\n{section}");
    if let Some(path) = &options.write {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, &section).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    guest.shutdown()
}

/// Creates, plugs and mounts both disks of one filesystem.
fn set_up(
    guest: &mut Guest,
    volumectl: &Volumectl,
    fstype: Fstype,
    size: u64,
    (agent_port, direct_port): (u8, u8),
) -> Result<Pair> {
    let name = fstype.name();
    let agent = Disk::create(
        guest,
        &format!("{name}-agent"),
        Bus::Blk {
            root_port: agent_port,
        },
        fstype,
        size,
    )?;
    let direct = Disk::create(
        guest,
        &format!("{name}-direct"),
        Bus::Blk {
            root_port: direct_port,
        },
        fstype,
        size,
    )?;

    let mount_point = agent.attach(
        guest,
        volumectl,
        Plug::BeforeRequest,
        &format!("bench-{name}"),
        &format!("/run/bench/{name}/rootfs"),
        &["/data"],
    )?;
    let agent_device = block_device_on_port(guest, agent_port)?;

    direct.plug(guest)?;
    let direct_device = wait_block_device_on_port(guest, direct_port)?;
    let direct_mount = format!("/mnt/direct-{name}");
    guest.shell.run_ok(&format!(
        "mkdir -p {direct_mount} && mount -t {name} /dev/{direct_device} {direct_mount}"
    ))?;
    println!(
        "{name}: agent disk {agent_device} at {mount_point}, direct disk {direct_device} at {direct_mount}"
    );
    Ok(Pair {
        fstype,
        agent,
        agent_device,
        mount_point,
        direct,
        direct_device,
        direct_mount,
        size,
    })
}

/// Grows both disks by [`GROWTH`] and times each grow. Round `index`
/// (from 0) grows the agent's disk first when it is even.
fn measure_round(
    guest: &mut Guest,
    volumectl: &Volumectl,
    pair: &mut Pair,
    index: usize,
) -> Result<Round> {
    let new_size = pair.size + GROWTH;
    let agent_before = volumectl.stats(&pair.mount_point)?.bytes_total;
    let direct_before = df_bytes(guest, &pair.direct_mount)?;

    guest.qmp.block_resize(&pair.agent.node, new_size)?;
    guest.qmp.block_resize(&pair.direct.node, new_size)?;
    // Neither grow may start before the guest reports the new size, or the
    // agent's `resize 0` would find nothing to grow.
    wait_guest_size(guest, &pair.agent_device, new_size)?;
    wait_guest_size(guest, &pair.direct_device, new_size)?;
    pair.size = new_size;

    // Alternating which grow goes first keeps an order effect (a warm
    // page cache, the other disk's writeback) out of the comparison.
    let direct_first = index % 2 == 1;
    let mut direct = None;
    if direct_first {
        direct = Some(time_direct_grow(guest, pair)?);
    }
    let logged_before = GrowLog::read(&guest.serial_log(), &pair.mount_point)
        .resized
        .len();
    let started = Instant::now();
    volumectl.run(&["resize", &pair.mount_point, "0"])?;
    let agent_wall = started.elapsed().as_secs_f64() * 1000.0;
    let logged = wait_logged_grow(&guest.serial_log(), &pair.mount_point, logged_before);
    let direct = match direct {
        Some(direct) => direct,
        None => time_direct_grow(guest, pair)?,
    };

    let agent_after = volumectl.stats(&pair.mount_point)?.bytes_total;
    let direct_after = df_bytes(guest, &pair.direct_mount)?;
    for (who, before, after) in [
        ("agent", agent_before, agent_after),
        ("direct", direct_before, direct_after),
    ] {
        ensure!(
            after >= before + GROWTH * 9 / 10,
            "the {who} filesystem grew only from {before} to {after} bytes"
        );
    }
    Ok(Round {
        agent_wall,
        agent_logged: logged.map(|(elapsed, _)| elapsed),
        agent_before_tool: logged.and_then(|(_, before_tool)| before_tool),
        direct,
    })
}

/// Runs the grow tool on the hand-mounted disk and returns its run time in
/// ms.
fn time_direct_grow(guest: &mut Guest, pair: &Pair) -> Result<f64> {
    let tool = match pair.fstype {
        Fstype::Ext4 => format!("resize2fs /dev/{}", pair.direct_device),
        Fstype::Xfs => format!("xfs_growfs {}", pair.direct_mount),
    };
    time_guest_command(guest, &tool)
}

/// Returns the p50 in ms of timing `true` five times with
/// [`time_guest_command`]: the cost of the clock reads themselves, which
/// `run` subtracts from every direct time.
fn measure_clock_overhead(guest: &mut Guest) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(time_guest_command(guest, "true")?);
    }
    Ok(median(samples).unwrap_or_default())
}

/// Runs `command` in the guest shell and returns its run time in ms, read
/// from the guest's CLOCK_MONOTONIC (`now at` in /proc/timer_list, because
/// busybox date has no `%N`). Fails with the command's output unless it
/// exits 0.
fn time_guest_command(guest: &mut Guest, command: &str) -> Result<f64> {
    let clock = "grep -m1 'now at' /proc/timer_list";
    let output = guest.shell.run_ok(&format!(
        "t0=$({clock}); {command} >/tmp/timed.log 2>&1; s=$?; t1=$({clock}); \
         echo \"$t0 $t1\"; [ $s -eq 0 ] || {{ cat /tmp/timed.log; exit $s; }}"
    ))?;
    let stamps: Vec<u64> = output
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [t0, t1] = stamps[..] else {
        bail!("found no two `now at N nsecs` stamps around {command} in output {output:?}");
    };
    Ok(t1.saturating_sub(t0) as f64 / 1e6)
}

/// Returns the name (`vdb`) of the virtio-blk disk behind root port `rpN`.
fn block_device_on_port(guest: &mut Guest, root_port: u8) -> Result<String> {
    let port = format!("/0000:00:{:02x}.0/", FIRST_ROOT_PORT_SLOT + root_port);
    let listing = guest
        .shell
        .run_ok("for d in /sys/block/vd*; do echo $(basename $d) $(readlink -f $d); done")?;
    listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(_, sysfs)| sysfs.contains(&port))
        .map(|(name, _)| name.to_string())
        .with_context(|| format!("no /sys/block/vd* behind {port}: {listing}"))
}

fn wait_block_device_on_port(guest: &mut Guest, root_port: u8) -> Result<String> {
    let deadline = Instant::now() + SIZE_TIMEOUT;
    loop {
        match block_device_on_port(guest, root_port) {
            Ok(name) => {
                // The /sys/block entry exists before devtmpfs creates the node.
                if guest.shell.run(&format!("test -b /dev/{name}"))?.status == 0 {
                    return Ok(name);
                }
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("the disk on root port rp{root_port} has no /dev node after {SIZE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `/sys/block/DEVICE/size` (512-byte sectors) shows `bytes`.
fn wait_guest_size(guest: &mut Guest, device: &str, bytes: u64) -> Result<()> {
    let deadline = Instant::now() + SIZE_TIMEOUT;
    loop {
        let sectors: u64 = guest
            .shell
            .run_ok(&format!("cat /sys/block/{device}/size"))?
            .trim()
            .parse()
            .with_context(|| format!("reading /sys/block/{device}/size"))?;
        if sectors * 512 == bytes {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{device} has {} bytes, expected {bytes}, {SIZE_TIMEOUT:?} after block_resize",
                sectors * 512
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Total bytes of the filesystem at `mount_point` from busybox `df -k`.
fn df_bytes(guest: &mut Guest, mount_point: &str) -> Result<u64> {
    let output = guest.shell.run_ok(&format!("df -k {mount_point}"))?;
    let kib: u64 = output
        .lines()
        .last()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("no size column in df -k {mount_point}: {output:?}"))?;
    Ok(kib * 1024)
}

/// The agent's log lines about growing one mount point.
#[derive(Debug, Default)]
struct GrowLog {
    /// `ts` of each "growing filesystem" line, in seconds since midnight.
    growing: Vec<f64>,
    /// `ts` and `elapsed_ms` of each "volume resized" line.
    resized: Vec<(f64, u64)>,
}

impl GrowLog {
    /// Reads the JSON log lines for `mount_point` from the serial log.
    fn read(serial_log: &Path, mount_point: &str) -> GrowLog {
        let text = std::fs::read_to_string(serial_log).unwrap_or_default();
        let mut log = GrowLog::default();
        // Kernel messages may precede the JSON object on the same line.
        let entries = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(&line[line.find('{')?..]).ok())
            .filter(|entry| entry["mount_point"] == mount_point);
        for entry in entries {
            let Some(ts) = entry["ts"].as_str().and_then(seconds_of_day) else {
                continue;
            };
            match entry["msg"].as_str() {
                Some("growing filesystem") => log.growing.push(ts),
                Some("volume resized") => {
                    if let Some(elapsed_ms) = entry["elapsed_ms"].as_u64() {
                        log.resized.push((ts, elapsed_ms));
                    }
                }
                _ => {}
            }
        }
        log
    }

    /// Returns the agent's total time and its time before starting the
    /// tool, in ms, for grow number `index` (from 0).
    fn grow(&self, index: usize) -> Option<(f64, Option<f64>)> {
        let &(resized_ts, elapsed_ms) = self.resized.get(index)?;
        let started = resized_ts - elapsed_ms as f64 / 1000.0;
        let before_tool = self
            .growing
            .get(index)
            .map(|growing_ts| (growing_ts - started) * 1000.0);
        Some((elapsed_ms as f64, before_tool))
    }
}

/// Converts the time of an RFC 3339 timestamp (`2026-12-04T17:23:01.123+00:00`)
/// to seconds since midnight.
// NOTE: a grow that spans midnight gets a wrong time before the tool.
fn seconds_of_day(timestamp: &str) -> Option<f64> {
    let (_, time) = timestamp.split_once('T')?;
    let end = time.find(['Z', '+', '-']).unwrap_or(time.len());
    let mut fields = time[..end].split(':');
    let hours: f64 = fields.next()?.parse().ok()?;
    let minutes: f64 = fields.next()?.parse().ok()?;
    let seconds: f64 = fields.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Waits for grow number `index` of `mount_point` to be logged and returns
/// its times as [`GrowLog::grow`] does, or `None` after [`LOG_TIMEOUT`].
fn wait_logged_grow(
    serial_log: &Path,
    mount_point: &str,
    index: usize,
) -> Option<(f64, Option<f64>)> {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        if let Some(times) = GrowLog::read(serial_log, mount_point).grow(index) {
            return Some(times);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(values: Vec<f64>) -> Option<f64> {
    percentile(values, 0.5)
}

/// Returns the `fraction` quantile of `values`, interpolating linearly
/// between the two nearest samples.
fn percentile(mut values: Vec<f64>, fraction: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let position = fraction * (values.len() - 1) as f64;
    let lower = values[position.floor() as usize];
    let upper = values[position.ceil() as usize];
    Some(lower + (upper - lower) * position.fract())
}

/// Renders the results as a markdown section with the machine it ran on.
fn render(
    guest: &Guest,
    rounds: usize,
    clock_overhead: f64,
    image_dir: &Path,
    results: &[(Fstype, Vec<Round>)],
) -> String {
    let mut text = String::new();
    let rounds_text = if rounds == 1 {
        "1 round".to_string()
    } else {
        format!("{rounds} rounds")
    };
    let guest_kernel =
        std::fs::read_to_string(image_dir.join("kernel-version")).unwrap_or_default();
    let volumectl_build = if cfg!(debug_assertions) {
        "debug (`--profile dev`)"
    } else {
        "optimized (`cargo bench`)"
    };
    let _ = writeln!(
        text,
        "## ResizeVolume overhead in a QEMU guest

`benches/guest_resize.rs` boots one guest and, for ext4 and then xfs, plugs
two identical virtio-blk disks: the agent mounts one, the guest shell mounts
the other by hand. It runs {rounds_text}: each grows both disks by {growth} MiB
with QMP `block_resize`, waits until the guest reports the new size of both,
grows each filesystem (the agent's first in odd rounds, the hand-mounted
one first in even rounds) and checks that both grew.

- *agent wall*: host wall time of `volumectl resize MOUNT_POINT 0` over
  hybrid vsock, volumectl's process start included.
- *agent logged*: `elapsed_ms` of the agent's \"volume resized\" log line.
- *agent before tool*: agent time from the request to its \"growing
  filesystem\" log line (mount, device and error checks, geometry read,
  size wait).
- *direct*: `resize2fs DEVICE` (ext4) or `xfs_growfs MOUNT_POINT` (xfs) in
  the guest shell, timed with the guest's CLOCK_MONOTONIC, less the
  {clock_overhead:.1} ms that the two clock reads add (p50 of timing the
  shell builtin `true`).
- *agent/direct* and *overhead*: agent wall against direct, taken per
  round because both grows of a round share the host's load at that time;
  *overhead in guest*: agent logged minus direct, per round.

All times are in ms, p50 over the rounds unless a range is given.

- date: {date}
- host: {cpu}, {cpus} CPUs, kernel {host_kernel}, load average {load}
  (1, 5, 15 min) at the end
- guest: kernel {guest_kernel}, QEMU q35 under {accel}, 2 vCPUs, 1 GiB
- builds: volumectl {volumectl_build}; the agent as built into the
  guest image (debug unless the image was built with `--release`)
",
        growth = GROWTH / MIB,
        date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu = cpu_model(),
        cpus = cpu_count(),
        host_kernel = command_line("uname", &["-r"]),
        load = load_average(),
        guest_kernel = guest_kernel.trim(),
        accel = guest.accel,
    );
    let _ = writeln!(
        text,
        "| filesystem | rounds | agent wall | agent logged | agent before tool | direct \
         | agent/direct | overhead (p25..p75) | overhead in guest |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|");
    for (fstype, measured) in results {
        let column = |value: fn(&Round) -> Option<f64>| -> Vec<f64> {
            measured.iter().filter_map(value).collect()
        };
        let wall = median(column(|round| Some(round.agent_wall)));
        let logged = median(column(|round| round.agent_logged));
        let before_tool = median(column(|round| round.agent_before_tool));
        let direct = median(column(|round| Some(round.direct)));
        let ratio = median(column(|round| {
            (round.direct > 0.0).then(|| round.agent_wall / round.direct)
        }));
        let overheads = column(|round| Some(round.agent_wall - round.direct));
        let overhead = match (
            median(overheads.clone()),
            percentile(overheads.clone(), 0.25),
            percentile(overheads, 0.75),
        ) {
            (Some(p50), Some(p25), Some(p75)) => format!("{p50:+.0} ({p25:+.0}..{p75:+.0})"),
            _ => "n/a".to_string(),
        };
        let guest_overhead = median(column(|round| {
            round.agent_logged.map(|logged| logged - round.direct)
        }));
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {overhead} | {} |",
            fstype.name(),
            measured.len(),
            format_ms(wall),
            format_ms(logged),
            format_ms(before_tool),
            format_ms(direct),
            ratio.map_or("n/a".to_string(), |ratio| format!("{ratio:.1}x")),
            guest_overhead.map_or("n/a".to_string(), |ms| format!("{ms:+.0}")),
        );
    }
    if guest.accel == "tcg" {
        let _ = writeln!(
            text,
            "\nQEMU ran under TCG (software emulation), so the absolute times are far\n\
             above what KVM would give. Compare the ratio and the overhead, not the\n\
             absolute times."
        );
    }
    text
}

fn format_ms(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |ms| format!("{ms:.0}"))
}

fn command_line(program: &str, args: &[&str]) -> String {
    harness::image::run(program, args)
        .map(|output| output.trim().to_string())
        .unwrap_or_else(|_| format!("unknown ({program} failed)"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Returns the 1, 5 and 15 minute load averages from /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}
