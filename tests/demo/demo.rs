//! Demo of volume-agent in a real guest. It boots the test guest and
//! hot-plugs a virtio-blk disk with ext4 and a virtio-scsi disk with xfs.
//! It attaches each to a container, writes a file through the bind, grows
//! both disks online and shows usage before and after. Then it detaches
//! and shuts down.
//!
//! Every step checks what it claims; the exit status is 0 only if all of
//! them passed. Run it with `rootfs-hooks/demo.sh`, which builds the agent,
//! volumectl and the guest image first.

#[path = "../harness/mod.rs"]
mod harness;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use harness::volume::{checksum, mount_count, write_payload, Bus, Disk, Plug};
use harness::volumectl::{VolumeStats, Volumectl};
use harness::{Fstype, Guest, Prerequisites};

const MIB: u64 = 1024 * 1024;
const PAYLOAD_MIB: u32 = 16;

/// One disk of the demo and where it is attached.
struct Volume {
    label: &'static str,
    disk: Disk,
    plug: Plug,
    size: u64,
    grown_size: u64,
    container: String,
    rootfs: String,
    mount_point: String,
    checksum: String,
}

impl Volume {
    fn bind_target(&self) -> String {
        format!("{}/data", self.rootfs)
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let prerequisites = match Prerequisites::find() {
        Ok(prerequisites) => prerequisites,
        Err(reason) => {
            eprintln!("demo: cannot run: {reason}");
            return ExitCode::FAILURE;
        }
    };
    let mut guest = match step("boot the guest", || Guest::boot(&prerequisites, "demo")) {
        Ok(guest) => guest,
        Err(_) => return ExitCode::FAILURE,
    };
    println!(
        "    booted in {:.1} s under {}; logs in {} (kept only if the demo fails)",
        guest.boot_time.as_secs_f64(),
        guest.accel,
        guest.dir().display()
    );
    match run(&mut guest) {
        Ok(()) => {
            println!("demo passed in {:.1} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(_) => {
            // Dropping the guest prints where its serial log was kept.
            guest.keep_logs();
            eprintln!("demo failed");
            ExitCode::FAILURE
        }
    }
}

/// Prints `what`, runs `action`, and prints its outcome and duration.
fn step<T>(what: &str, action: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {what}");
    let started = Instant::now();
    let result = action();
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => println!("    ok ({seconds:.1} s)"),
        Err(error) => eprintln!("    FAILED after {seconds:.1} s: {error:#}"),
    }
    result
}

fn run(guest: &mut Guest) -> Result<()> {
    let volumectl = Volumectl::new(&guest.agent_address());
    step("check the agent over hybrid vsock", || {
        let output = volumectl.run(&["check"])?;
        ensure!(
            output.contains("SERVING"),
            "volumectl check printed {output:?}"
        );
        println!("    {output}");
        Ok(())
    })?;

    let mut volumes = Vec::new();
    for (label, bus, fstype, size, plug) in [
        (
            "virtio-blk ext4",
            Bus::Blk { root_port: 0 },
            Fstype::Ext4,
            256 * MIB,
            Plug::BeforeRequest,
        ),
        (
            "virtio-scsi xfs",
            Bus::Scsi { lun: 1 },
            Fstype::Xfs,
            320 * MIB,
            Plug::AfterRequest,
        ),
    ] {
        let name = if matches!(bus, Bus::Blk { .. }) {
            "blk"
        } else {
            "scsi"
        };
        let disk = step(
            &format!("create a {} MiB {label} disk image", size / MIB),
            || Disk::create(guest, name, bus, fstype, size),
        )?;
        volumes.push(Volume {
            label,
            disk,
            plug,
            size,
            grown_size: size * 4,
            container: format!("demo-{name}"),
            rootfs: format!("/run/demo/{name}/rootfs"),
            mount_point: String::new(),
            checksum: String::new(),
        });
    }

    for volume in &mut volumes {
        let when = match volume.plug {
            Plug::BeforeRequest => "plugged before the request",
            Plug::AfterRequest => "plugged 1 s after the request",
        };
        let what = format!(
            "attach the {} disk (source {}, {when}) to container {}",
            volume.label,
            volume.disk.bus.source(),
            volume.container
        );
        let mount_point = step(&what, || {
            let mount_point = volume.disk.attach(
                guest,
                &volumectl,
                volume.plug,
                &volume.container,
                &volume.rootfs,
                &["/data"],
            )?;
            ensure!(
                mount_count(&mut guest.shell, &volume.bind_target())? == 1,
                "{} is not mounted in the guest",
                volume.bind_target()
            );
            println!(
                "    mounted at {mount_point}, bound to {}",
                volume.bind_target()
            );
            Ok(mount_point)
        })?;
        volume.mount_point = mount_point;

        let payload = format!("{}/payload", volume.bind_target());
        let sum = step(&format!("write {PAYLOAD_MIB} MiB to {payload}"), || {
            let sum = write_payload(&mut guest.shell, &payload, PAYLOAD_MIB)?;
            println!("    sha256 {sum}");
            Ok(sum)
        })?;
        volume.checksum = sum;
    }

    for volume in &volumes {
        let before = step(&format!("stats of the {} volume", volume.label), || {
            stats(&volumectl, &volume.mount_point)
        })?;
        let what = format!(
            "grow the {} disk to {} MiB (QMP block_resize, then ResizeVolume)",
            volume.label,
            volume.grown_size / MIB
        );
        step(&what, || {
            guest
                .qmp
                .block_resize(&volume.disk.node, volume.grown_size)?;
            volumectl.run(&[
                "resize",
                &volume.mount_point,
                &volume.grown_size.to_string(),
            ])?;
            Ok(())
        })?;
        step(
            &format!("stats of the {} volume after the grow", volume.label),
            || {
                let after = stats(&volumectl, &volume.bind_target())?;
                let growth = volume.grown_size - volume.size;
                ensure!(
                    after.bytes_total >= before.bytes_total + growth * 9 / 10,
                    "filesystem grew from {} to only {} bytes",
                    before.bytes_total,
                    after.bytes_total
                );
                Ok(())
            },
        )?;
        step(
            &format!("checksum the {} payload again", volume.label),
            || {
                let payload = format!("{}/payload", volume.bind_target());
                let sum = checksum(&mut guest.shell, &payload)?;
                ensure!(
                    sum == volume.checksum,
                    "checksum changed: {} -> {sum}",
                    volume.checksum
                );
                println!("    unchanged");
                Ok(())
            },
        )?;
    }

    for volume in &volumes {
        step(
            &format!("detach container {} and unplug its disk", volume.container),
            || {
                volumectl.run(&["detach", "--container", &volume.container])?;
                for path in [volume.bind_target(), volume.mount_point.clone()] {
                    let count = mount_count(&mut guest.shell, &path)?;
                    ensure!(
                        count == 0,
                        "{path} still mounted {count} times after detach"
                    );
                }
                volume.disk.unplug(guest)
            },
        )?;
    }

    step("shut the guest down", || guest.shutdown())?;
    for volume in &volumes {
        let checker = match volume.disk.image.fstype {
            Fstype::Ext4 => "e2fsck -fn",
            Fstype::Xfs => "xfs_repair -n",
        };
        step(&format!("{checker} on the {} image", volume.label), || {
            volume.disk.image.check_filesystem()
        })?;
    }
    Ok(())
}

/// Sends GetVolumeStats for `path`, prints it, and fails on an abnormal
/// condition.
fn stats(volumectl: &Volumectl, path: &str) -> Result<VolumeStats> {
    let stats = volumectl
        .stats(path)
        .with_context(|| format!("stats of {path}"))?;
    println!(
        "    {path}: {} MiB total, {} MiB used, {} MiB available, {} inodes used",
        stats.bytes_total / MIB,
        stats.bytes_used / MIB,
        stats.bytes_available / MIB,
        stats.inodes_used
    );
    if stats.abnormal {
        bail!("condition abnormal: {}", stats.message);
    }
    Ok(stats)
}
