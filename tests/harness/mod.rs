//! Test harness for the agent in a real guest. It boots the image that
//! `rootfs-hooks/build-test-guest.sh` built in QEMU and hot-plugs disks over
//! QMP. It runs guest commands over a serial shell and drives the agent
//! with the real `volumectl` over hybrid vsock.
//!
//! Shared by `tests/guest_e2e.rs` and the demo example.

#![allow(dead_code, unused_imports)]

pub mod guest_shell;
pub mod image;
pub mod qemu;
pub mod qmp;
pub mod volume;
pub mod volumectl;
pub mod vsock;

pub use image::{DiskImage, Fstype};
pub use qemu::{Guest, Prerequisites};

/// Returns the prerequisites for booting a guest, or `None` after printing
/// why `test` is skipped. With `CI=true` a missing prerequisite panics
/// instead, so CI cannot pass by skipping.
pub fn require_guest(test: &str) -> Option<Prerequisites> {
    match Prerequisites::find() {
        Ok(prerequisites) => Some(prerequisites),
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: {reason} (CI=true, so this is a failure, not a skip)")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}
