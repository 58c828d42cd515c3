//! Many concurrent requests against a long stream of uevents.

use std::time::{Duration, Instant};

use super::fake_sysfs::FakeSystem;
use super::{DeviceAddress, RegistryStats};
use crate::uevent::Uevent;

const WAITERS: usize = 200;
const EVENTS: usize = 10_000;

fn block_event(
    action: &str,
    devpath: String,
    name: &str,
    devtype: &str,
    major: u32,
    minor: u32,
) -> Uevent {
    Uevent {
        action: action.into(),
        devpath,
        subsystem: "block".into(),
        devname: Some(name.into()),
        devtype: Some(devtype.into()),
        major: Some(major),
        minor: Some(minor),
        ..Uevent::default()
    }
}

/// PCI path and DEVPATH of target disk `index`: 25 devices behind each of
/// the root ports in slots 01-08, on a bus number that is not the slot's.
fn target(index: usize) -> (String, String, String) {
    let port = 1 + index / 25;
    let slot = index % 25;
    let bus = 0x10 + port;
    let name = format!("vdt{index}");
    let devpath = format!(
        "/devices/pci0000:00/0000:00:{port:02x}.0/0000:{bus:02x}:{slot:02x}.0/virtio{index}/block/{name}"
    );
    (format!("{port:02x}/{slot:02x}"), devpath, name)
}

/// The events other than the targets' adds: disks coming and going at other
/// slots, partitions of target disks (which must not satisfy a request), and
/// uevents of other subsystems.
fn noise_events() -> Vec<Uevent> {
    let mut events = Vec::new();
    for index in 0..100 {
        let (_, devpath, name) = target(index);
        let minor = 1 + index as u32 * 16;
        let partition = format!("{name}p1");
        events.push(block_event(
            "add",
            format!("{devpath}/{partition}"),
            &partition,
            "partition",
            254,
            minor,
        ));
    }
    // Budget for the disks that come and go, after the partition adds and
    // before the partition removes.
    let budget = EVENTS - WAITERS - 100;
    let mut serial = 0;
    while events.len() + 3 <= budget {
        let port = 0x10 + serial % 8;
        let slot = (serial / 8) % 32;
        let name = format!("noise{}", serial % 64);
        let devpath = format!(
            "/devices/pci0000:00/0000:00:{port:02x}.0/0000:20:{slot:02x}.0/virtio900/block/{name}"
        );
        let minor = (serial % 64) as u32;
        if serial % 5 == 0 {
            let mut other = block_event("add", devpath.clone(), &name, "disk", 253, minor);
            other.subsystem = "virtio".into();
            events.push(other);
        }
        events.push(block_event(
            "add",
            devpath.clone(),
            &name,
            "disk",
            253,
            minor,
        ));
        events.push(block_event("remove", devpath, &name, "disk", 253, minor));
        serial += 1;
    }
    while events.len() < budget {
        let devpath = "/devices/virtual/net/lo".to_string();
        let mut other = block_event("change", devpath, "lo", "disk", 0, 0);
        other.subsystem = "net".into();
        events.push(other);
    }
    for index in 0..100 {
        let (_, devpath, name) = target(index);
        let partition = format!("{name}p1");
        let minor = 1 + index as u32 * 16;
        events.push(block_event(
            "remove",
            format!("{devpath}/{partition}"),
            &partition,
            "partition",
            254,
            minor,
        ));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_their_disks_under_load() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let base = registry.stats();
    assert_eq!(
        base,
        RegistryStats {
            devices: 0,
            keys: 0,
            devnos: 0,
            waiter_keys: 0,
            waiters: 0
        }
    );

    let mut tasks = Vec::new();
    for index in 0..WAITERS {
        let (pci_path, _, name) = target(index);
        std::fs::write(fake.dev.join(&name), "").unwrap();
        let address = DeviceAddress::parse("blk", &pci_path).unwrap();
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let device = registry.wait_for(&address, Duration::from_secs(60)).await;
            (name, device)
        }));
    }
    let started = Instant::now();
    while registry.stats().waiters < WAITERS {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waiters did not register"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // One target add after every 49 other events.
    let noise = noise_events();
    let mut events = Vec::with_capacity(EVENTS);
    let mut noise = noise.into_iter();
    for index in 0..WAITERS {
        events.extend(noise.by_ref().take(49));
        let (_, devpath, name) = target(index);
        events.push(block_event(
            "add",
            devpath,
            &name,
            "disk",
            254,
            index as u32 * 16,
        ));
    }
    events.extend(noise);
    assert_eq!(events.len(), EVENTS);

    let handled = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || {
            let mut handling = Duration::ZERO;
            let mut max_devices = 0;
            for event in &events {
                let started = Instant::now();
                registry.handle_uevent(event);
                handling += started.elapsed();
                max_devices = max_devices.max(registry.stats().devices);
            }
            (handling, max_devices)
        })
    };
    let (elapsed, max_devices) = handled.await.unwrap();
    println!("handled {EVENTS} events with {WAITERS} waiters in {elapsed:?}");
    // Only the targets and the few disks between an add and its remove.
    assert!(
        max_devices <= WAITERS + 100 + 2,
        "registry grew to {max_devices} devices"
    );

    for task in tasks {
        let (name, device) = task.await.unwrap();
        let device = device.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(device.name, name);
    }
    let after = registry.stats();
    assert_eq!(after.waiters, 0);
    assert_eq!(after.waiter_keys, 0);
    assert_eq!(after.devices, WAITERS);

    for index in 0..WAITERS {
        let (_, devpath, name) = target(index);
        registry.handle_uevent(&block_event(
            "remove",
            devpath,
            &name,
            "disk",
            254,
            index as u32 * 16,
        ));
    }
    assert_eq!(registry.stats(), base);
}
