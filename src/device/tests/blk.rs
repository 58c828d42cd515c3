//! virtio-blk requests by PCI path.

use std::time::Duration;

use super::*;
use crate::device::DeviceEventKind;

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

#[tokio::test]
async fn blk_skips_scsi_controller() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    // Slot 3 contains a virtio-scsi controller, whose disk is not a blk disk.
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
