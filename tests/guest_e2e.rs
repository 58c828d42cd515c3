//! End-to-end tests of the agent in a real QEMU guest: disks hot-plugged
//! over QMP, the agent driven by `volumectl` over hybrid vsock, results
//! checked in the guest shell and on the host.
//!
//! Needs root, QEMU, vhost-device-vsock and the guest image from
//! `rootfs-hooks/build-test-guest.sh target/guest`; without them each test
//! prints why and passes, except with `CI=true`, where it fails.

mod harness;

use std::time::{Duration, Instant};

use harness::volumectl::Volumectl;
use harness::{DiskImage, Fstype, Guest};

const MIB: u64 = 1024 * 1024;

#[test]
fn guest_boots_and_sees_hotplug() {
    let Some(prerequisites) = harness::require_guest("guest_boots_and_sees_hotplug") else {
        return;
    };
    let mut guest = Guest::boot(&prerequisites, "smoke").expect("booting the guest");
    eprintln!("guest up in {:?} under {}", guest.boot_time, guest.accel);

    let volumectl = Volumectl::new(&guest.agent_address());
    let health = volumectl.run(&["check"]).expect("volumectl check");
    assert!(health.contains("SERVING"), "unexpected check output {health:?}");

    let disk = DiskImage::create(guest.dir(), "smoke", 64 * MIB, Fstype::Ext4).unwrap();
    guest.qmp.blockdev_add_raw("smoke", &disk.path).unwrap();
    let plugged = Instant::now();
    guest.qmp.device_add_blk("smoke-blk", "smoke", "rp0").unwrap();
    let sysfs = wait_guest_block_device(&mut guest, "vd", Duration::from_secs(30));
    eprintln!("disk seen in the guest {:?} after device_add", plugged.elapsed());
    assert!(
        sysfs.contains("0000:00:02.0/0000:01:00.0"),
        "disk not behind root port rp0 (slot 02): {sysfs}"
    );

    guest.qmp.device_del("smoke-blk", Duration::from_secs(30)).unwrap();
    guest.qmp.blockdev_del_raw("smoke").unwrap();
    let listing = guest.shell.run("ls /sys/block").unwrap().output;
    assert!(!listing.contains("vd"), "disk still present after unplug: {listing}");
    guest.shutdown().unwrap();
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
        assert!(Instant::now() < deadline, "no /sys/block/{prefix}* after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
