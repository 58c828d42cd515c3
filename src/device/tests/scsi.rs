//! virtio-scsi requests by target and LUN.

use std::time::{Duration, Instant};

use super::*;

#[tokio::test]
async fn scsi_every_order_hosts_0_2() {
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
async fn scsi_twin_only_in_sysfs_is_ambiguous() {
    let fake = FakeSystem::new();
    let registry = fake.registry();
    let first = virtio_scsi_host(&fake, 3, 1, 0);
    let second = virtio_scsi_host(&fake, 4, 2, 1);
    let announced = fake.add_scsi_disk(&first, 0, 2, 0, "sda", 0);
    registry.handle_uevent(&announced.event("add"));
    fake.create_node(&announced);
    // Its twin's uevent has not been read yet.
    let twin = fake.add_scsi_disk(&second, 1, 2, 0, "sdb", 16);
    fake.create_node(&twin);

    let address = DeviceAddress::parse("scsi", "2:0").unwrap();
    let error = registry.wait_for(&address, SHORT).await.unwrap_err();
    assert_eq!(error.code(), ttrpc::Code::FAILED_PRECONDITION);
    assert!(error.to_string().contains("/block/sdb"), "{error}");
}
