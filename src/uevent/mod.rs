//! Kernel uevents: the parser of the netlink message format and the
//! `NETLINK_KOBJECT_UEVENT` listener that feeds the device registry.

mod netlink;
mod parse;

use std::collections::HashMap;

pub use netlink::spawn_listener;
pub use parse::UeventError;

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
    /// Partition number, set on `partition` events only.
    pub partn: Option<u32>,
    pub seqnum: Option<u64>,
    /// `RESIZE=1`: a `change` event sent because the disk capacity changed.
    pub resize: bool,
    /// Every `KEY=VALUE` pair of the message.
    pub env: HashMap<String, String>,
}

impl Uevent {
    /// True for a whole disk of the block subsystem (not a partition).
    pub fn is_block_disk(&self) -> bool {
        self.subsystem == "block" && self.devtype.as_deref() == Some("disk")
    }
}
