//! The `NETLINK_KOBJECT_UEVENT` socket: kernel uevents read with tokio and
//! applied to the device registry.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use slog::{error, warn};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{Uevent, UeventError};
use crate::device::DeviceRegistry;

/// Multicast group on which the kernel sends uevents (group 2 is udev's).
const KERNEL_GROUP: u32 = 1;

/// Receive buffer requested for the socket, in bytes. Hot-plugging hundreds of
/// disks at once sends several events per disk. If the buffer still
/// overflows, the listener rescans sysfs instead.
const RECEIVE_BUFFER_BYTES: usize = 8 << 20;

/// Largest message read. The kernel caps a uevent's fields at 2048 bytes
/// (`UEVENT_BUFFER_SIZE`) plus the `ACTION@DEVPATH` header.
const MESSAGE_BYTES: usize = 16 << 10;

/// Opens the uevent socket and starts applying kernel uevents to `registry`
/// on a tokio task.
///
/// The socket is opened and bound before returning, so a missing capability
/// or kernel option is reported to the caller at once.
///
/// # Panics
/// Panics when called outside a tokio runtime.
pub fn spawn_listener(logger: slog::Logger, registry: Arc<DeviceRegistry>) -> io::Result<()> {
    let socket = open_socket(&logger)?;
    // SAFETY: `socket` is an open descriptor that the AsyncFd owns from here
    // on; nothing else closes it, and `OwnedFd::as_raw_fd` always returns it.
    let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
    tokio::spawn(read_events(logger, socket, registry));
    Ok(())
}

fn open_socket(logger: &slog::Logger) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )?;

    // RcvBufForce passes the rmem_max limit but needs CAP_NET_ADMIN.
    if let Err(forced) = setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER_BYTES) {
        if let Err(error) = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER_BYTES) {
            warn!(logger, "setting the uevent receive buffer failed";
                "bytes" => RECEIVE_BUFFER_BYTES, "error" => %error, "force_error" => %forced);
        }
    }

    // Port id 0 lets the kernel assign a unique one.
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
    Ok(fd)
}

async fn read_events(
    logger: slog::Logger,
    socket: AsyncFd<OwnedFd>,
    registry: Arc<DeviceRegistry>,
) {
    let mut buffer = vec![0u8; MESSAGE_BYTES];
    let mut drops = DropCounts::default();
    loop {
        let received = match socket.readable().await {
            Ok(mut guard) => guard.try_io(|fd| {
                recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buffer).map_err(io::Error::from)
            }),
            Err(error) => {
                error!(logger, "polling the uevent socket failed, so uevents are no longer read";
                    "error" => %error);
                return;
            }
        };
        match received {
            // Not ready after all: wait for the next readiness event.
            Err(_would_block) => continue,
            Ok(Ok((length, sender))) => {
                handle_message(&logger, &registry, &buffer[..length], sender, &mut drops);
            }
            Ok(Err(error)) if error.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                // The kernel dropped events: rebuild the registry from sysfs.
                warn!(logger, "uevent socket overflowed, so sysfs is rescanned");
                let resync = registry.clone();
                let outcome = tokio::task::spawn_blocking(move || resync.scan_sysfs()).await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => error!(logger, "rescanning sysfs failed"; "error" => %error),
                    Err(error) => error!(logger, "rescanning sysfs failed"; "error" => %error),
                }
            }
            Ok(Err(error)) => {
                drops.read_errors += 1;
                if is_log_worthy(drops.read_errors) {
                    error!(logger, "reading the uevent socket failed";
                        "error" => %error, "count" => drops.read_errors);
                }
                // Errors that repeat (none are expected) must not spin a core.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts of messages dropped and read errors, so that a flood of them is
/// logged at the 1st, 2nd, 4th, 8th... occurrence only.
#[derive(Default)]
struct DropCounts {
    foreign: u64,
    malformed: u64,
    read_errors: u64,
}

fn is_log_worthy(count: u64) -> bool {
    count.is_power_of_two()
}

fn handle_message(
    logger: &slog::Logger,
    registry: &DeviceRegistry,
    message: &[u8],
    sender: Option<NetlinkAddr>,
    drops: &mut DropCounts,
) {
    // Only the kernel sends from port id 0, but any process may send to the
    // group from its own port.
    let sender_port = sender.map(|address| address.pid());
    if sender_port != Some(0) {
        drops.foreign += 1;
        if is_log_worthy(drops.foreign) {
            warn!(logger, "dropped uevent not sent by the kernel";
                "sender_port" => ?sender_port, "count" => drops.foreign);
        }
        return;
    }
    match Uevent::parse(message) {
        Ok(event) => registry.handle_uevent(&event),
        Err(UeventError::Libudev) => {}
        Err(error) => {
            drops.malformed += 1;
            if is_log_worthy(drops.malformed) {
                warn!(logger, "dropped malformed uevent"; "error" => %error, "count" => drops.malformed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_log_worthy;

    #[test]
    fn drop_logging_thins_out() {
        let logged: Vec<u64> = (1..=100).filter(|&count| is_log_worthy(count)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
    }
}
