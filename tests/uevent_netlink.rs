//! The uevent listener on the real `NETLINK_KOBJECT_UEVENT` socket, driven by
//! loop devices: needs root, and skips with a printed reason otherwise.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::sync::broadcast;
use volume_agent::device::{DeviceAddress, DeviceEvent, DeviceEventKind, DeviceRegistry};

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A loop device over a file in a temporary directory, detached on drop.
struct LoopDevice {
    dev_path: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    fn attach() -> LoopDevice {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("running losetup failed");
        assert!(
            output.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let dev_path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        let name = dev_path.file_name().unwrap().to_string_lossy().into_owned();
        LoopDevice {
            dev_path,
            name,
            _dir: dir,
        }
    }

    fn devno(&self) -> (u32, u32) {
        let text = std::fs::read_to_string(format!("/sys/class/block/{}/dev", self.name)).unwrap();
        let (major, minor) = text.trim().split_once(':').unwrap();
        (major.parse().unwrap(), minor.parse().unwrap())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let status = Command::new("losetup")
            .arg("--detach")
            .arg(&self.dev_path)
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("detaching {} failed: {status:?}", self.dev_path.display());
        }
    }
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: loop devices and the uevent socket need root");
    false
}

fn listening_registry() -> Arc<DeviceRegistry> {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let registry = DeviceRegistry::new(logger.clone(), "/sys".into(), "/dev".into());
    volume_agent::uevent::spawn_listener(logger, registry.clone())
        .expect("opening the uevent socket failed");
    registry
}

/// Waits for an event of `kind` on the device named `name`.
async fn next_event_for(
    events: &mut broadcast::Receiver<DeviceEvent>,
    name: &str,
    kinds: &[DeviceEventKind],
) -> DeviceEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if event.device.name == name && kinds.contains(&event.kind) => {
                    return event
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(error) => panic!("event channel closed: {error}"),
            }
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("no {kinds:?} uevent for {name} within {EVENT_TIMEOUT:?}"))
}

fn write_change(name: &str) {
    std::fs::write(Path::new("/sys/block").join(name).join("uevent"), "change").unwrap();
}

#[tokio::test]
async fn losetup_uevent_reaches_registry() {
    if !is_root() {
        return;
    }
    let registry = listening_registry();
    let mut events = registry.subscribe();

    let device = LoopDevice::attach();
    let event = next_event_for(
        &mut events,
        &device.name,
        &[DeviceEventKind::Added, DeviceEventKind::Changed],
    )
    .await;
    assert_eq!(event.device.dev_path, device.dev_path);

    let (major, minor) = device.devno();
    let found = registry
        .find_by_devno(major, minor)
        .expect("the registry missed the loop device");
    assert_eq!(found.name, device.name);
    assert_eq!(
        found.sysfs_path,
        PathBuf::from(format!("/sys/devices/virtual/block/{}", device.name))
    );

    let address = DeviceAddress::parse("mmioblk", &device.dev_path.to_string_lossy()).unwrap();
    let ready = registry.wait_for(&address, EVENT_TIMEOUT).await.unwrap();
    assert_eq!((ready.major, ready.minor), (major, minor));
}

#[tokio::test]
async fn change_uevent_reaches_registry() {
    if !is_root() {
        return;
    }
    let device = LoopDevice::attach();
    let registry = listening_registry();
    let mut events = registry.subscribe();

    write_change(&device.name);
    let event = next_event_for(
        &mut events,
        &device.name,
        &[DeviceEventKind::Added, DeviceEventKind::Changed],
    )
    .await;
    assert!(!event.resize);
    let (major, minor) = device.devno();
    assert_eq!(
        registry.find_by_devno(major, minor).map(|found| found.name),
        Some(device.name.clone())
    );

    // A second change updates the entry in place.
    write_change(&device.name);
    let event = next_event_for(&mut events, &device.name, &[DeviceEventKind::Changed]).await;
    assert_eq!((event.device.major, event.device.minor), (major, minor));
}

#[tokio::test]
async fn forged_uevent_is_dropped() {
    if !is_root() {
        return;
    }
    let device = LoopDevice::attach();
    let registry = listening_registry();
    let mut events = registry.subscribe();

    // A process sends a well-formed uevent to the kernel's group.
    let forger = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .unwrap();
    let forged =
        b"add@/devices/virtual/block/forged0\0ACTION=add\0DEVPATH=/devices/virtual/block/forged0\0\
SUBSYSTEM=block\0DEVNAME=forged0\0DEVTYPE=disk\0MAJOR=7\0MINOR=999\0SEQNUM=1\0";
    sendto(
        forger.as_raw_fd(),
        forged,
        &NetlinkAddr::new(0, 1),
        MsgFlags::empty(),
    )
    .unwrap();

    // The kernel's event that follows proves the forged one was read first.
    write_change(&device.name);
    let mut seen = Vec::new();
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if event.device.name == device.name => return,
                Ok(event) => seen.push(event.device.name),
                Err(error) => panic!("event channel failed: {error}"),
            }
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, wait)
        .await
        .expect("no uevent for the loop device");
    assert!(
        !seen.contains(&"forged0".to_string()),
        "forged uevent applied: {seen:?}"
    );
    assert_eq!(registry.find_by_devno(7, 999), None);
}

#[tokio::test]
async fn scan_finds_loop_attached_before_start() {
    if !is_root() {
        return;
    }
    let device = LoopDevice::attach();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let registry = DeviceRegistry::new(logger, "/sys".into(), "/dev".into());
    let (major, minor) = device.devno();
    assert_eq!(registry.find_by_devno(major, minor), None);

    registry.scan_sysfs().unwrap();
    let found = registry
        .find_by_devno(major, minor)
        .expect("the scan missed the loop device");
    assert_eq!(found.name, device.name);
    assert_eq!(found.dev_path, device.dev_path);
}

#[tokio::test]
async fn mmioblk_rejects_character_device() {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let registry = DeviceRegistry::new(logger, "/sys".into(), "/dev".into());
    let address = DeviceAddress::parse("mmioblk", "/dev/null").unwrap();
    let started = std::time::Instant::now();
    let error = registry
        .wait_for(&address, EVENT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a character device was waited for"
    );
    assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{error}");
}
