//! Matcher tests on fake sysfs trees, with the disk announced before, during
//! and after the request, or never.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fake_sysfs::{FakeDisk, FakeSystem, ROOT};
use super::registry::{DeviceRegistry, NodeCheck};
use super::{BlockDevice, DeviceAddress, DeviceError, DeviceEventKind};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Copy)]
enum Order {
    /// Announced by uevent before the request.
    Before,
    /// Present in sysfs before the registry started: found by `scan_sysfs`.
    BeforeStart,
    /// Announced while the request waits.
    During,
    /// Announced after the request timed out; a new request then finds it.
    After,
    /// Never announced.
    Never,
}

const ORDERS: [Order; 5] = [
    Order::Before,
    Order::BeforeStart,
    Order::During,
    Order::After,
    Order::Never,
];

/// Starts a request for `address` with a long timeout on a new task.
fn spawn_wait(
    registry: &Arc<DeviceRegistry>,
    address: &DeviceAddress,
) -> tokio::task::JoinHandle<Result<BlockDevice, DeviceError>> {
    let registry = registry.clone();
    let address = address.clone();
    tokio::spawn(async move { registry.wait_for(&address, LONG).await })
}

async fn wait_until_waiting(registry: &DeviceRegistry, waiters: usize) {
    let started = Instant::now();
    while registry.stats().waiters < waiters {
        assert!(
            started.elapsed() < LONG,
            "request never registered a waiter"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Requests `address` with the disk announced in `order` by `announce`, which
/// creates the disk and returns its add event. Returns `None` for `Never`.
async fn request_in_order(
    order: Order,
    fake: &FakeSystem,
    registry: &Arc<DeviceRegistry>,
    address: &DeviceAddress,
    announce: impl FnOnce(&FakeSystem) -> FakeDisk,
) -> Result<BlockDevice, DeviceError> {
    match order {
        Order::Before => {
            let disk = announce(fake);
            registry.handle_uevent(&disk.event("add"));
            fake.create_node(&disk);
            registry.wait_for(address, SHORT).await
        }
        Order::BeforeStart => {
            let disk = announce(fake);
            fake.create_node(&disk);
            registry.scan_sysfs().unwrap();
            registry.wait_for(address, SHORT).await
        }
        Order::During => {
            let task = spawn_wait(registry, address);
            wait_until_waiting(registry, 1).await;
            let disk = announce(fake);
            registry.handle_uevent(&disk.event("add"));
            // devtmpfs creates the node after the event.
            tokio::time::sleep(Duration::from_millis(20)).await;
            fake.create_node(&disk);
            task.await.unwrap()
        }
        Order::After => {
            let error = registry.wait_for(address, SHORT).await.unwrap_err();
            assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED);
            assert_eq!(registry.stats().waiters, 0, "timed-out waiter left behind");
            let disk = announce(fake);
            registry.handle_uevent(&disk.event("add"));
            fake.create_node(&disk);
            registry.wait_for(address, SHORT).await
        }
        Order::Never => registry.wait_for(address, SHORT).await,
    }
}

/// Checks the outcome of [`request_in_order`].
fn check_outcome(
    order: Order,
    result: Result<BlockDevice, DeviceError>,
    expected: &str,
    fake: &FakeSystem,
) {
    match order {
        Order::Never => {
            let error = result.expect_err("a disk that never appears was found");
            assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{error}");
        }
        _ => {
            let device = result.unwrap_or_else(|error| panic!("{order:?}: {error}"));
            assert_eq!(device.name, expected, "{order:?}");
            assert_eq!(device.dev_path, fake.dev.join(expected), "{order:?}");
            assert!(device.sysfs_path.starts_with(&fake.sysfs), "{order:?}");
        }
    }
}

fn blk_behind_root_port(fake: &FakeSystem, bus: u8) -> FakeDisk {
    let port = fake.add_pci(ROOT, 0, 2, Some(bus));
    let device = fake.add_pci(&port, bus, 0, None);
    fake.add_virtio_blk(&device, 3, "vda", 0)
}

#[tokio::test]
async fn blk_in_every_order() {
    for order in ORDERS {
        let fake = FakeSystem::new();
        let registry = fake.registry();
        let address = DeviceAddress::parse("blk", "02/00").unwrap();
        // The bus behind the root port is 5, not 1: it must be read from sysfs.
        let result = request_in_order(order, &fake, &registry, &address, |fake| {
            blk_behind_root_port(fake, 5)
        })
        .await;
        check_outcome(order, result, "vda", &fake);
        assert_eq!(registry.stats().waiters, 0, "{order:?}");
    }
}

#[tokio::test]
async fn blk_found_in_sysfs_without_event() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let disk = blk_behind_root_port(&fake, 7);
    fake.create_node(&disk);

    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    let device = registry.wait_for(&address, SHORT).await.unwrap();
    assert_eq!(device.name, "vda");
    assert_eq!(
        device.sysfs_path,
        fake.sysfs.join(disk.devpath.trim_start_matches('/'))
    );
    assert_eq!(registry.find_by_devno(254, 0), Some(device));
}

#[tokio::test]
async fn blk_other_slots_do_not_match() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let port = fake.add_pci(ROOT, 0, 3, Some(1));
    let other = fake.add_pci(&port, 1, 0, None);
    let disk = fake.add_virtio_blk(&other, 2, "vdb", 16);
    let root_disk = fake.add_virtio_blk(&fake.add_pci(ROOT, 0, 4, None), 4, "vdc", 32);
    for disk in [&disk, &root_disk] {
        registry.handle_uevent(&disk.event("add"));
        fake.create_node(disk);
    }

    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("\"02/00\""), "{message}");
    assert!(message.contains("vdb at 03/00"), "{message}");
    assert!(message.contains("vdc at 04"), "{message}");

    let address = DeviceAddress::parse("blk", "04").unwrap();
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "vdc"
    );
}

#[tokio::test]
async fn blk_partition_never_satisfies_disk() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let disk = blk_behind_root_port(&fake, 1);
    let partition = fake.add_block(&disk.devpath, "vda1", 254, 1);
    fake.create_node(&partition);
    registry.handle_uevent(&partition.event("add"));

    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    // Remove the disk from sysfs so only the partition event is known.
    std::fs::remove_file(fake.sysfs.join("class/block/vda")).unwrap();
    let vda = fake.sysfs.join(disk.devpath.trim_start_matches('/'));
    std::fs::rename(&vda, fake.root().join("vda-hidden")).unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED);
    assert!(error.to_string().contains("no virtio-blk disks"), "{error}");

    std::fs::rename(fake.root().join("vda-hidden"), &vda).unwrap();
    registry.handle_uevent(&disk.event("add"));
    fake.create_node(&disk);
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "vda"
    );
}

#[tokio::test]
async fn blk_waits_for_dev_node() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let disk = blk_behind_root_port(&fake, 1);
    registry.handle_uevent(&disk.event("add"));

    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED);
    assert!(error.to_string().contains("did not appear"), "{error}");

    let task = spawn_wait(&registry, &address);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !task.is_finished(),
        "request returned before the node existed"
    );
    fake.create_node(&disk);
    assert_eq!(task.await.unwrap().unwrap().name, "vda");
}

#[tokio::test]
async fn blk_removed_then_replaced() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let mut events = registry.subscribe();
    let old = blk_behind_root_port(&fake, 1);
    registry.handle_uevent(&old.event("add"));
    fake.create_node(&old);

    fake.remove(&old);
    registry.handle_uevent(&old.event("remove"));
    assert_eq!(registry.find_by_devno(254, 0), None);
    let stats = registry.stats();
    assert_eq!((stats.devices, stats.keys, stats.devnos), (0, 0, 0));

    // The same slot, re-plugged: a new virtio index, name and minor.
    let port = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0";
    let new = fake.add_virtio_blk(port, 6, "vdb", 16);
    registry.handle_uevent(&new.event("add"));
    fake.create_node(&new);
    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "vdb"
    );

    let kinds: Vec<DeviceEventKind> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|event| event.kind)
        .collect();
    let expected = [
        DeviceEventKind::Added,
        DeviceEventKind::Removed,
        DeviceEventKind::Added,
    ];
    assert_eq!(kinds, expected);
}

#[tokio::test]
async fn blk_cancelled_request_leaves_no_waiter() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    let task = spawn_wait(&registry, &address);
    wait_until_waiting(&registry, 1).await;
    task.abort();
    let _ = task.await;
    assert_eq!(registry.stats().waiters, 0);
    assert_eq!(registry.stats().waiter_keys, 0);
}

fn virtio_scsi_host(fake: &FakeSystem, slot: u8, virtio: u32, host: u32) -> String {
    let pci = fake.add_pci(ROOT, 0, slot, None);
    let controller = fake.add_virtio(&pci, virtio, "virtio_scsi");
    fake.add_scsi_host(&controller, host)
}

#[tokio::test]
async fn scsi_in_every_order_on_host_0_and_2() {
    for host in [0, 2] {
        for order in ORDERS {
            let fake = FakeSystem::new();
            let registry = fake.registry();
            let host_devpath = virtio_scsi_host(&fake, 3, 1, host);
            let address = DeviceAddress::parse("scsi", "0:1").unwrap();
            let result = request_in_order(order, &fake, &registry, &address, |fake| {
                fake.add_scsi_disk(&host_devpath, host, 0, 1, "sda", 0)
            })
            .await;
            check_outcome(order, result, "sda", &fake);

            // A request that found nothing at first asked the host to scan.
            let scan = fake.read(&format!("class/scsi_host/host{host}/scan"));
            match order {
                Order::Before | Order::BeforeStart => assert_eq!(scan, "", "{order:?}"),
                _ => assert_eq!(scan, "0 0 1", "{order:?} host{host}"),
            }
        }
    }
}

#[tokio::test]
async fn scsi_ignores_hosts_that_are_not_virtio_scsi() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let ata_port = fake.add_pci(ROOT, 0, 0x1f, None);
    let ata_host = fake.add_scsi_host(&format!("{ata_port}/ata1"), 1);
    let ata_disk = fake.add_scsi_disk(&ata_host, 1, 0, 1, "sdb", 16);
    // A virtio device with a SCSI host child that is bound to another driver.
    let other = fake.add_virtio(&fake.add_pci(ROOT, 0, 5, None), 2, "virtio_net");
    let other_host = fake.add_scsi_host(&other, 3);
    let other_disk = fake.add_scsi_disk(&other_host, 3, 0, 1, "sdc", 32);
    for disk in [&ata_disk, &other_disk] {
        registry.handle_uevent(&disk.event("add"));
        fake.create_node(disk);
    }
    registry.scan_sysfs().unwrap();

    let address = DeviceAddress::parse("scsi", "0:1").unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED);
    assert!(
        error.to_string().contains("no virtio-scsi disks"),
        "{error}"
    );
    assert_eq!(fake.read("class/scsi_host/host1/scan"), "");
    assert_eq!(fake.read("class/scsi_host/host3/scan"), "");

    // The virtio-scsi disk at the same address is the one found.
    let host = virtio_scsi_host(&fake, 3, 1, 0);
    let disk = fake.add_scsi_disk(&host, 0, 0, 1, "sdd", 48);
    registry.handle_uevent(&disk.event("add"));
    fake.create_node(&disk);
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "sdd"
    );
}

#[tokio::test]
async fn scsi_two_controllers_is_ambiguous() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let first = virtio_scsi_host(&fake, 3, 1, 0);
    let second = virtio_scsi_host(&fake, 4, 2, 2);
    let disks = [
        fake.add_scsi_disk(&first, 0, 0, 1, "sda", 0),
        fake.add_scsi_disk(&second, 2, 0, 1, "sdb", 16),
    ];
    for disk in &disks {
        registry.handle_uevent(&disk.event("add"));
        fake.create_node(disk);
    }

    let address = DeviceAddress::parse("scsi", "0:1").unwrap();
    let started = Instant::now();
    let error = registry.wait_for(&address, LONG).await.unwrap_err();
    assert!(started.elapsed() < SHORT, "an ambiguous address waited");
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION);
    let message = error.to_string();
    assert!(
        message.contains("host0/target0:0:0/0:0:0:1/block/sda"),
        "{message}"
    );
    assert!(
        message.contains("host2/target2:0:0/2:0:0:1/block/sdb"),
        "{message}"
    );

    // Other addresses on either controller still resolve.
    let lun2 = fake.add_scsi_disk(&second, 2, 0, 2, "sdc", 32);
    registry.handle_uevent(&lun2.event("add"));
    fake.create_node(&lun2);
    let address = DeviceAddress::parse("scsi", "0:2").unwrap();
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "sdc"
    );
}

#[tokio::test]
async fn scsi_partition_never_satisfies_disk() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let host = virtio_scsi_host(&fake, 3, 1, 0);
    let disk = fake.add_scsi_disk(&host, 0, 0, 1, "sda", 0);
    let partition = fake.add_block(&disk.devpath, "sda1", 8, 1);
    fake.create_node(&partition);
    registry.handle_uevent(&partition.event("add"));

    let stats = registry.stats();
    // The partition is indexed by name only.
    assert_eq!((stats.devices, stats.keys), (1, 1));

    // Hide the disk from sysfs so that only events can announce it.
    let sda = fake.sysfs.join(disk.devpath.trim_start_matches('/'));
    std::fs::rename(&sda, fake.root().join("sda-hidden")).unwrap();
    let address = DeviceAddress::parse("scsi", "0:1").unwrap();
    let task = spawn_wait(&registry, &address);
    wait_until_waiting(&registry, 1).await;
    registry.handle_uevent(&partition.event("change"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !task.is_finished(),
        "a partition event satisfied the request"
    );
    std::fs::rename(fake.root().join("sda-hidden"), &sda).unwrap();
    registry.handle_uevent(&disk.event("add"));
    fake.create_node(&disk);
    assert_eq!(task.await.unwrap().unwrap().name, "sda");
}

#[tokio::test]
async fn mmioblk_and_nvdimm_in_every_order() {
    for order in ORDERS {
        let fake = FakeSystem::new();
        let registry = fake.registry();
        let address = DeviceAddress::parse("mmioblk", "/dev/vdc").unwrap();
        let result = request_in_order(order, &fake, &registry, &address, |fake| {
            let mmio = fake
                .add_pci(ROOT, 0, 0, None)
                .replace("pci0000:00/0000:00:00.0", "platform/a003e00.virtio_mmio");
            let virtio = fake.add_virtio(&mmio, 0, "virtio_blk");
            fake.add_block(&format!("{virtio}/block"), "vdc", 254, 32)
        })
        .await;
        check_outcome(order, result, "vdc", &fake);

        let fake = FakeSystem::new();
        let registry = fake.registry();
        let address = DeviceAddress::parse("nvdimm", "/dev/pmem0").unwrap();
        let result = request_in_order(order, &fake, &registry, &address, |fake| {
            fake.add_block(
                "/devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/namespace0.0/block",
                "pmem0",
                259,
                0,
            )
        })
        .await;
        check_outcome(order, result, "pmem0", &fake);
    }
}

#[tokio::test]
async fn mmioblk_rejects_non_block_path_at_once() {
    let fake = FakeSystem::new();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let registry = DeviceRegistry::build(
        logger,
        fake.sysfs.clone(),
        fake.dev.clone(),
        NodeCheck::BlockDevice,
    );
    std::fs::write(fake.dev.join("notadisk"), "").unwrap();

    let address = DeviceAddress::parse("mmioblk", "/dev/notadisk").unwrap();
    let started = Instant::now();
    let error = registry.wait_for(&address, LONG).await.unwrap_err();
    assert!(started.elapsed() < SHORT, "a regular file was waited for");
    assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert!(error.to_string().contains("not a block device"), "{error}");
    assert_eq!(registry.stats().waiters, 0);
}

#[tokio::test]
async fn scan_sysfs_drops_vanished_devices() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let kept = blk_behind_root_port(&fake, 1);
    let gone = fake.add_virtio_blk(&fake.add_pci(ROOT, 0, 4, None), 4, "vdc", 32);
    registry.scan_sysfs().unwrap();
    assert_eq!(registry.stats().devices, 2);

    fake.remove(&gone);
    registry.scan_sysfs().unwrap();
    assert_eq!(registry.stats().devices, 1);
    assert_eq!(registry.find_by_devno(254, 32), None);
    assert_eq!(
        registry.find_by_devno(254, 0).map(|device| device.name),
        Some(kept.name)
    );
}

#[tokio::test]
async fn resize_change_is_published() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let disk = blk_behind_root_port(&fake, 1);
    registry.handle_uevent(&disk.event("add"));
    let mut events = registry.subscribe();

    let mut change = disk.event("change");
    change.resize = true;
    registry.handle_uevent(&change);
    let event = events.try_recv().unwrap();
    assert_eq!(event.kind, DeviceEventKind::Changed);
    assert!(event.resize);
    assert_eq!(event.device.name, "vda");
    assert_eq!(registry.stats().devices, 1);
}

#[tokio::test]
async fn scan_sysfs_keeps_devices_added_by_events() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    // An add event read while the scan ran: the device is in sysfs but was
    // not listed when the scan read `/sys/class/block`.
    let disk = blk_behind_root_port(&fake, 1);
    std::fs::remove_file(fake.sysfs.join("class/block/vda")).unwrap();
    registry.handle_uevent(&disk.event("add"));
    registry.scan_sysfs().unwrap();
    assert_eq!(
        registry.find_by_devno(254, 0).map(|device| device.name),
        Some(disk.name)
    );
}

#[tokio::test]
async fn blk_path_of_scsi_controller_is_not_a_disk() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    // Slot 3 holds a virtio-scsi controller: its disk is not a blk disk.
    let host = virtio_scsi_host(&fake, 3, 1, 0);
    let scsi_disk = fake.add_scsi_disk(&host, 0, 0, 0, "sda", 0);
    fake.create_node(&scsi_disk);
    let address = DeviceAddress::parse("blk", "03").unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::DEADLINE_EXCEEDED);

    // A virtio-blk function beside it in the same slot is still found.
    let pci = "/devices/pci0000:00/0000:00:03.0";
    let blk_disk = fake.add_virtio_blk(pci, 0, "vda", 0);
    fake.create_node(&blk_disk);
    assert_eq!(
        registry.wait_for(&address, SHORT).await.unwrap().name,
        "vda"
    );
}

#[tokio::test]
async fn blk_found_without_uevent_while_waiting() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let address = DeviceAddress::parse("blk", "02/00").unwrap();
    let task = spawn_wait(&registry, &address);
    wait_until_waiting(&registry, 1).await;

    // The disk appears in sysfs, but its uevent is never read.
    let disk = blk_behind_root_port(&fake, 4);
    fake.create_node(&disk);
    let device = task.await.unwrap().unwrap();
    assert_eq!(device.name, "vda");
    assert_eq!(registry.stats().waiters, 0);
}
