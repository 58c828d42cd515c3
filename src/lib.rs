//! volume-agent: the guest half of direct-assigned block volumes.
//!
//! The pipeline reads top to bottom. Kernel [`uevent`]s keep the [`device`]
//! registry current, and its matchers turn a `Storage.source` into a block
//! device. The [`storage`] manager mounts it and binds it into containers.
//! The [`volume`] service reports statistics and grows filesystems, and
//! [`rpc`] maps ttrpc requests onto all of that. [`client`] is the host side
//! used by `volumectl`.

pub mod client;
pub mod config;
pub mod device;
pub mod logging;
pub mod mountinfo;
pub mod rpc;
pub mod storage;
pub mod uevent;
pub mod volume;

/// Version reported by the Health `Version` call.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Protocol version reported beside [`AGENT_VERSION`], matching the ttrpc
/// API revision that upstream agents report.
pub const API_VERSION: &str = "0.0.1";
