//! End-to-end tests of the agent in a real QEMU guest: disks hot-plugged
//! over QMP, the agent driven by `volumectl` over hybrid vsock, results
//! checked in the guest shell and on the host.
//!
//! Needs root, QEMU, vhost-device-vsock and the guest image from
//! `rootfs-hooks/build-test-guest.sh target/guest`. Without them each test
//! prints why and passes, except with `CI=true`, where it fails. Each test
//! boots one guest and runs its cases in sequence in it.

mod harness;

use std::time::{Duration, Instant};

use harness::volume::{checksum, mount_count, write_payload, Bus, Disk, Plug};
use harness::volumectl::Volumectl;
use harness::{DiskImage, Fstype, Guest};

const MIB: u64 = 1024 * 1024;
/// Disk size before growing; mkfs.xfs needs at least 300 MB.
const DISK_SIZE: u64 = 320 * MIB;
const GROWN_SIZE: u64 = 512 * MIB;
/// Bind destination of the volume inside each container rootfs.
const DESTINATION: &str = "/data";
/// A second, read-only bind of the same volume in the matrix cases.
const READ_ONLY_DESTINATION: &str = "/data-ro";

#[test]
fn guest_boots_and_sees_hotplug() {
    let Some(prerequisites) = harness::require_guest("guest_boots_and_sees_hotplug") else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, "smoke").expect("booting the guest");
    eprintln!("guest up in {:?} under {}", guest.boot_time, guest.accel);

    let volumectl = Volumectl::new(&guest.agent_address());
    let health = volumectl.run(&["check"]).expect("volumectl check");
    assert!(
        health.contains("SERVING"),
        "unexpected check output {health:?}"
    );

    let disk = DiskImage::create(guest.dir(), "smoke", 64 * MIB, Fstype::Ext4).unwrap();
    guest.qmp.blockdev_add_raw("smoke", &disk.path).unwrap();
    let plugged = Instant::now();
    guest
        .qmp
        .device_add_blk("smoke-blk", "smoke", "rp0")
        .unwrap();
    let sysfs = wait_guest_block_device(&mut guest, "vd", Duration::from_secs(30));
    eprintln!(
        "disk seen in the guest {:?} after device_add",
        plugged.elapsed()
    );
    assert!(
        sysfs.contains("0000:00:02.0/0000:01:00.0"),
        "disk not behind root port rp0 (slot 02): {sysfs}"
    );

    guest
        .qmp
        .device_del("smoke-blk", Duration::from_secs(30))
        .unwrap();
    guest.qmp.blockdev_del_raw("smoke").unwrap();
    let listing = guest.shell.run("ls /sys/block").unwrap().output;
    assert!(
        !listing.contains("vd"),
        "disk still present after unplug: {listing}"
    );
    guest.shutdown().unwrap();
}

#[test]
fn blk_attach_grow_detach() {
    let cases = [
        (Bus::Blk { root_port: 0 }, Fstype::Ext4, Plug::BeforeRequest),
        (Bus::Blk { root_port: 1 }, Fstype::Ext4, Plug::AfterRequest),
        (Bus::Blk { root_port: 2 }, Fstype::Xfs, Plug::BeforeRequest),
        (Bus::Blk { root_port: 3 }, Fstype::Xfs, Plug::AfterRequest),
    ];
    run_matrix("blk_attach_grow_detach", &cases);
}

#[test]
fn scsi_attach_grow_detach() {
    let cases = [
        (Bus::Scsi { lun: 1 }, Fstype::Ext4, Plug::BeforeRequest),
        (Bus::Scsi { lun: 2 }, Fstype::Ext4, Plug::AfterRequest),
        (Bus::Scsi { lun: 3 }, Fstype::Xfs, Plug::BeforeRequest),
        (Bus::Scsi { lun: 4 }, Fstype::Xfs, Plug::AfterRequest),
    ];
    run_matrix("scsi_attach_grow_detach", &cases);
}

/// Boots one guest, runs every case in it, shuts it down and checks every
/// disk image's filesystem on the host.
fn run_matrix(test: &str, cases: &[(Bus, Fstype, Plug)]) {
    let Some(prerequisites) = harness::require_guest(test) else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, test).expect("booting the guest");
    eprintln!(
        "{test}: guest up in {:?} under {}",
        guest.boot_time, guest.accel
    );
    let volumectl = Volumectl::new(&guest.agent_address());

    let mut images = Vec::new();
    for (index, &(bus, fstype, plug)) in cases.iter().enumerate() {
        let started = Instant::now();
        let disk = attach_grow_detach(&mut guest, &volumectl, index, bus, fstype, plug);
        eprintln!(
            "{test}: case {bus:?} {} {plug:?} passed in {:?}",
            fstype.name(),
            started.elapsed()
        );
        images.push(disk.image);
    }

    guest.shutdown().expect("shutting the guest down");
    for image in &images {
        image.check_filesystem().unwrap_or_else(|error| {
            panic!("{test}: {} not clean: {error:#}", image.path.display())
        });
    }
}

/// Runs one matrix case: attach through CreateContainer with a bind, write a
/// file, stats, grow the disk and the filesystem, stats again, checksum,
/// detach, unplug. Returns the disk, unplugged, for the filesystem check.
fn attach_grow_detach(
    guest: &mut Guest,
    volumectl: &Volumectl,
    index: usize,
    bus: Bus,
    fstype: Fstype,
    plug: Plug,
) -> Disk {
    let name = format!("case{index}");
    let container = format!("container-{index}");
    let rootfs = format!("/run/e2e/{container}/rootfs");
    let bind_target = format!("{rootfs}{DESTINATION}");
    let read_only_target = format!("{rootfs}{READ_ONLY_DESTINATION}");
    let disk = Disk::create(guest, &name, bus, fstype, DISK_SIZE).unwrap();

    let read_only_mount = format!("{READ_ONLY_DESTINATION}:ro");
    let mounts = [DESTINATION, read_only_mount.as_str()];
    let mount_point = disk
        .attach(guest, volumectl, plug, &container, &rootfs, &mounts)
        .unwrap();
    let expected_mount_point = format!(
        "/run/kata-containers/sandbox/storage/{}",
        base64_url(&bus.source())
    );
    assert_eq!(mount_point, expected_mount_point);
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 1);
    assert_eq!(mount_count(&mut guest.shell, &bind_target).unwrap(), 1);
    assert_eq!(mount_count(&mut guest.shell, &read_only_target).unwrap(), 1);

    let payload = format!("{bind_target}/payload");
    let sum = write_payload(&mut guest.shell, &payload, 8).unwrap();
    let through_mount = checksum(&mut guest.shell, &format!("{mount_point}/payload")).unwrap();
    assert_eq!(
        through_mount, sum,
        "file differs between bind target and mount point"
    );
    let through_read_only = checksum(&mut guest.shell, &format!("{read_only_target}/payload"));
    assert_eq!(through_read_only.unwrap(), sum);
    let write_read_only = guest
        .shell
        .run(&format!("touch {read_only_target}/denied"))
        .unwrap();
    assert_ne!(write_read_only.status, 0, "read-only bind accepted a write");
    assert!(
        write_read_only.output.contains("Read-only file system"),
        "unexpected error writing to the read-only bind: {}",
        write_read_only.output
    );

    let before = volumectl.stats(&mount_point).unwrap();
    let before_bind = volumectl.stats(&bind_target).unwrap();
    assert_eq!(before.bytes_total, before_bind.bytes_total);
    assert!(
        !before.abnormal,
        "condition abnormal before grow: {}",
        before.message
    );
    assert!(
        before.bytes_total > DISK_SIZE / 2,
        "total {} too small",
        before.bytes_total
    );
    assert!(before.bytes_total <= DISK_SIZE);
    assert!(
        before.bytes_used >= 8 * MIB,
        "8 MiB payload not counted: {before:?}"
    );

    guest.qmp.block_resize(&disk.node, GROWN_SIZE).unwrap();
    volumectl
        .run(&["resize", &mount_point, &GROWN_SIZE.to_string()])
        .unwrap();
    let after = volumectl.stats(&bind_target).unwrap();
    assert!(
        after.bytes_total >= before.bytes_total + (GROWN_SIZE - DISK_SIZE) * 9 / 10,
        "filesystem did not grow: {} -> {}",
        before.bytes_total,
        after.bytes_total
    );
    assert!(after.bytes_total <= GROWN_SIZE);
    assert!(
        !after.abnormal,
        "condition abnormal after grow: {}",
        after.message
    );
    // A repeat of a finished grow succeeds without changing anything.
    volumectl
        .run(&["resize", &mount_point, &GROWN_SIZE.to_string()])
        .unwrap();
    assert_eq!(
        volumectl.stats(&mount_point).unwrap().bytes_total,
        after.bytes_total
    );
    assert_eq!(checksum(&mut guest.shell, &payload).unwrap(), sum);

    let detached = volumectl
        .run(&["detach", "--container", &container])
        .unwrap();
    assert!(
        detached.contains(&container),
        "unexpected detach output {detached:?}"
    );
    assert_eq!(mount_count(&mut guest.shell, &bind_target).unwrap(), 0);
    assert_eq!(mount_count(&mut guest.shell, &read_only_target).unwrap(), 0);
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 0);

    disk.unplug(guest).unwrap();
    disk
}

#[test]
fn disk_removed_while_mounted() {
    let test = "disk_removed_while_mounted";
    let Some(prerequisites) = harness::require_guest(test) else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, test).expect("booting the guest");
    let volumectl = Volumectl::new(&guest.agent_address());

    for (index, bus, fstype) in [
        (0, Bus::Blk { root_port: 0 }, Fstype::Ext4),
        (1, Bus::Scsi { lun: 1 }, Fstype::Xfs),
    ] {
        let container = format!("removed-{index}");
        let rootfs = format!("/run/e2e/{container}/rootfs");
        let bind_target = format!("{rootfs}{DESTINATION}");
        let disk = Disk::create(&guest, &container, bus, fstype, DISK_SIZE).unwrap();
        let mount_point = disk
            .attach(
                &mut guest,
                &volumectl,
                Plug::BeforeRequest,
                &container,
                &rootfs,
                &[DESTINATION],
            )
            .unwrap();
        write_payload(&mut guest.shell, &format!("{bind_target}/payload"), 1).unwrap();
        assert!(!volumectl.stats(&mount_point).unwrap().abnormal);

        // Pulled out from under the mount, as a host-side failure would.
        disk.unplug(&mut guest).unwrap();
        let stats = volumectl.stats(&mount_point).unwrap();
        assert!(
            stats.abnormal,
            "{bus:?}: condition stayed normal after removal: {stats:?}"
        );
        assert!(
            !stats.message.is_empty(),
            "abnormal condition without a message"
        );

        volumectl
            .run(&["detach", "--container", &container])
            .unwrap();
        assert_eq!(mount_count(&mut guest.shell, &bind_target).unwrap(), 0);
        assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 0);
    }
    guest.shutdown().unwrap();
}

#[test]
fn agent_killed_between_attach_and_detach() {
    let test = "agent_killed_between_attach_and_detach";
    let Some(prerequisites) = harness::require_guest(test) else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, test).expect("booting the guest");
    let volumectl = Volumectl::new(&guest.agent_address());
    let container = "restarted";
    let rootfs = "/run/e2e/restarted/rootfs";
    let bind_target = format!("{rootfs}{DESTINATION}");
    let disk = Disk::create(
        &guest,
        "restart",
        Bus::Blk { root_port: 0 },
        Fstype::Ext4,
        DISK_SIZE,
    )
    .unwrap();
    let mount_point = disk
        .attach(
            &mut guest,
            &volumectl,
            Plug::BeforeRequest,
            container,
            rootfs,
            &[DESTINATION],
        )
        .unwrap();
    let sum = write_payload(&mut guest.shell, &format!("{bind_target}/payload"), 4).unwrap();
    let before = volumectl.stats(&mount_point).unwrap();

    let old_pid = guest.shell.run_ok("pidof volume-agent").unwrap();
    guest.shell.run_ok("kill -9 $(pidof volume-agent)").unwrap();
    let new_pid = wait_new_agent_pid(&mut guest, old_pid.trim(), Duration::from_secs(60));
    eprintln!("agent restarted: pid {} -> {new_pid}", old_pid.trim());

    // The restarted agent rebuilt its state: stats work, a repeated attach
    // succeeds without mounting twice, and detach removes everything.
    let after = volumectl.stats(&bind_target).unwrap();
    assert_eq!(after.bytes_total, before.bytes_total);
    let args = disk.attach_args(container, rootfs, &[DESTINATION]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(volumectl.run(&args).unwrap(), mount_point);
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 1);
    assert_eq!(mount_count(&mut guest.shell, &bind_target).unwrap(), 1);
    assert_eq!(
        checksum(&mut guest.shell, &format!("{bind_target}/payload")).unwrap(),
        sum
    );

    volumectl
        .run(&["detach", "--container", container])
        .unwrap();
    assert_eq!(mount_count(&mut guest.shell, &bind_target).unwrap(), 0);
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 0);
    disk.unplug(&mut guest).unwrap();
    guest.shutdown().unwrap();
    disk.image.check_filesystem().unwrap();
}

#[test]
fn sandbox_storage_attach_detach() {
    let test = "sandbox_storage_attach_detach";
    let Some(prerequisites) = harness::require_guest(test) else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, test).expect("booting the guest");
    let volumectl = Volumectl::new(&guest.agent_address());
    let bus = Bus::Scsi { lun: 2 };
    let disk = Disk::create(&guest, "sandbox", bus, Fstype::Xfs, DISK_SIZE).unwrap();
    disk.plug(&mut guest).unwrap();

    let source = bus.source();
    let attach = [
        "attach",
        "--driver",
        "scsi",
        "--source",
        &source,
        "--fstype",
        "xfs",
        "--sandbox",
    ];
    let mount_point = volumectl.run(&attach).unwrap();
    assert_eq!(
        mount_point,
        format!(
            "/run/kata-containers/sandbox/storage/{}",
            base64_url(&source)
        )
    );
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 1);
    let sum = write_payload(&mut guest.shell, &format!("{mount_point}/payload"), 2).unwrap();
    let stats = volumectl.stats(&mount_point).unwrap();
    assert!(!stats.abnormal, "condition abnormal: {}", stats.message);
    assert!(
        stats.bytes_used >= 2 * MIB,
        "payload not counted: {stats:?}"
    );
    assert_eq!(
        checksum(&mut guest.shell, &format!("{mount_point}/payload")).unwrap(),
        sum
    );

    volumectl.run(&["detach", "--sandbox"]).unwrap();
    assert_eq!(mount_count(&mut guest.shell, &mount_point).unwrap(), 0);
    disk.unplug(&mut guest).unwrap();
    guest.shutdown().unwrap();
    disk.image.check_filesystem().unwrap();
}

/// Polls until the supervisor has started an agent with a PID other than
/// `old_pid` that accepts vsock connections, and returns the new PID.
fn wait_new_agent_pid(guest: &mut Guest, old_pid: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let result = guest.shell.run("pidof volume-agent").unwrap();
        let pid = result.output.trim().to_string();
        if result.status == 0 && !pid.is_empty() && pid != old_pid {
            let vsock = guest.vsock_path();
            harness::vsock::wait_for_port(&vsock, harness::vsock::AGENT_PORT, timeout).unwrap();
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "agent not restarted within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the guest until a block device whose name starts with `prefix`
/// exists, and returns its sysfs link target.
fn wait_guest_block_device(guest: &mut Guest, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let result = guest
            .shell
            .run(&format!("readlink /sys/block/{prefix}*"))
            .expect("guest shell");
        if result.status == 0 {
            return result.output.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no /sys/block/{prefix}* after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Encodes `text` in unpadded base64url, as the runtime names mount points.
fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[test]
fn install_hook_dry_run_and_idempotent() {
    let hook = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rootfs-hooks/install-volume-agent.sh"
    );
    let agent = env!("CARGO_BIN_EXE_volume-agent");
    let tree = tempfile::tempdir().unwrap();
    let tree_path = tree.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(hook)
            .args([tree_path, "--agent", agent])
            .args(extra)
            .output()
            .expect("running install-volume-agent.sh");
        assert!(
            output.status.success(),
            "hook {extra:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let dry_run = run(&["--dry-run"]);
    assert!(
        dry_run.contains("-> /usr/bin/volume-agent"),
        "dry run lists no agent: {dry_run}"
    );
    assert!(dry_run.contains("write /usr/lib/systemd/system/volume-agent.service"));
    let left = std::fs::read_dir(tree.path()).unwrap().count();
    assert_eq!(left, 0, "dry run wrote into the tree");

    let first = run(&[]);
    assert!(first.contains("installed /usr/bin/volume-agent"), "{first}");
    let unit_path = tree
        .path()
        .join("usr/lib/systemd/system/volume-agent.service");
    let unit = std::fs::read_to_string(unit_path).unwrap();
    assert!(unit.contains("Before=kata-containers.target"), "{unit}");
    assert!(unit.contains("WantedBy=kata-containers.target"), "{unit}");
    let wants = tree
        .path()
        .join("etc/systemd/system/kata-containers.target.wants/volume-agent.service");
    assert!(wants.symlink_metadata().is_ok(), "unit not enabled");
    let installed_agent = std::fs::read(tree.path().join("usr/bin/volume-agent")).unwrap();
    assert_eq!(installed_agent, std::fs::read(agent).unwrap());
    for tool in ["resize2fs", "e2fsck", "xfs_growfs"] {
        assert!(
            tree.path().join("usr/sbin").join(tool).is_file(),
            "{tool} missing"
        );
    }
    assert!(
        tree.path().join("lib64/ld-linux-x86-64.so.2").is_file(),
        "loader missing"
    );

    let second = run(&[]);
    assert!(
        second.contains("done: 0 changed"),
        "second run changed files: {second}"
    );
}
