//! Matcher tests on fake sysfs trees, with the disk announced before, during
//! and after the request, or never.

mod blk;
mod other;
mod scsi;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fake_sysfs::{FakeDisk, FakeSystem, ROOT};
use super::registry::DeviceRegistry;
use super::{BlockDevice, DeviceAddress, DeviceError};

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

fn virtio_scsi_host(fake: &FakeSystem, slot: u8, virtio: u32, host: u32) -> String {
    let pci = fake.add_pci(ROOT, 0, slot, None);
    let controller = fake.add_virtio(&pci, virtio, "virtio_scsi");
    fake.add_scsi_host(&controller, host)
}
