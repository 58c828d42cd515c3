//! mmioblk and nvdimm requests, sysfs scans and change events.

use std::time::Instant;

use super::*;
use crate::device::registry::NodeCheck;
use crate::device::DeviceEventKind;

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
async fn move_event_renames_device() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let disk = fake.add_block("/devices/virtual/block", "old0", 252, 0);
    registry.handle_uevent(&disk.event("add"));

    fake.remove(&disk);
    // A different minor, so that only DEVPATH_OLD links the two entries.
    let renamed = fake.add_block("/devices/virtual/block", "new0", 252, 1);
    let mut event = renamed.event("move");
    event.env.insert("DEVPATH_OLD".into(), disk.devpath.clone());
    registry.handle_uevent(&event);

    assert_eq!(registry.find_by_devno(252, 0), None);
    let found = registry.find_by_devno(252, 1).unwrap();
    assert_eq!(found.name, "new0");
    assert_eq!(registry.stats().devices, 1);
}
