//! The syscall seam: every mount(2) and umount2(2) the storage manager makes
//! goes through [`Mounter`], so option and refcount logic can be unit tested
//! without root by recording calls instead of making them.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// The mount syscalls the storage manager uses.
pub trait Mounter: Send + Sync {
    /// Calls mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;

    /// Calls umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;

    /// Changes the flags of an existing mount (mount(2) with `MS_REMOUNT`).
    fn remount(&self, target: &Path, flags: MsFlags, data: Option<&str>) -> nix::Result<()> {
        self.mount(None, target, None, flags | MsFlags::MS_REMOUNT, data)
    }
}

/// The real syscalls.
#[derive(Debug, Default)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
}

/// One recorded call of [`RecordingMounter`].
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Mount {
        source: Option<std::path::PathBuf>,
        target: std::path::PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: std::path::PathBuf,
        flags: MntFlags,
    },
}

/// A [`Mounter`] that records calls and fails the ones a test selects.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct RecordingMounter {
    pub calls: std::sync::Mutex<Vec<MountCall>>,
    /// Errors returned by the next calls, in order; empty means success.
    pub failures: std::sync::Mutex<std::collections::VecDeque<Option<nix::Error>>>,
}

#[cfg(test)]
impl RecordingMounter {
    pub fn calls(&self) -> Vec<MountCall> {
        self.calls.lock().unwrap().clone()
    }

    fn outcome(&self) -> nix::Result<()> {
        match self.failures.lock().unwrap().pop_front().flatten() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
impl Mounter for RecordingMounter {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.calls.lock().unwrap().push(MountCall::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        self.outcome()
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.calls.lock().unwrap().push(MountCall::Umount {
            target: target.to_path_buf(),
            flags,
        });
        self.outcome()
    }
}
