//! Finding the managed volume that a request path lies on.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::VolumeService;
use crate::storage::ManagedVolume;

/// Real location of a path: its canonical form and the device it lies on.
struct RealLocation {
    path: PathBuf,
    /// `st_dev`: the filesystem that contains the path.
    dev: u64,
    /// `st_rdev` of a block device node, `None` for any other file type.
    block_rdev: Option<u64>,
}

impl VolumeService {
    /// Finds the managed volume that `path` lies on, judged by where the
    /// path really is: a symlink into a volume finds that volume, and a
    /// symlink or `..` that leaves a volume does not count as on it.
    ///
    /// A path on another filesystem mounted inside a volume is not on it.
    ///
    /// Resolving runs in a bounded probe. When it fails (a shut-down xfs
    /// returns EIO, a hung device never returns) the lexical match of the
    /// storage records is used, so that stats still report the fault.
    pub(super) async fn find_volume(&self, path: &Path) -> Option<ManagedVolume> {
        let lexical = self.storage.lookup_path(path);
        // Keyed like the volume's own probes, so that after a hung resolve
        // they fail at once instead of waiting out a second timeout.
        let key = lexical
            .as_ref()
            .map_or(path.to_path_buf(), |volume| volume.mount_point.clone());
        let owned = path.to_path_buf();
        let located = self.prober.run(&key, move || locate(&owned)).await;
        let Ok(Ok(real)) = located else {
            return lexical;
        };

        let Some(volume) = self.storage.lookup_path(&real.path) else {
            // A record whose own path runs through a symlink matches only
            // lexically. Such a match is kept when the path is on the
            // volume's device.
            // NOTE: btrfs reports an anonymous st_dev, so a btrfs volume is
            // found this way only through its canonical path.
            return lexical.filter(|volume| is_on_device(volume, &real));
        };
        if volume.fstype.is_empty() || is_on_device(&volume, &real) {
            return Some(volume);
        }

        // A path on another filesystem mounted inside the volume is not on
        // the volume. A path on the same filesystem as the mount point
        // still is: that covers a storage that lost its mount and the
        // anonymous st_dev of btrfs.
        let mount_point = volume.mount_point.clone();
        let mount_point_dev = self
            .prober
            .run(&volume.mount_point, move || {
                std::fs::metadata(mount_point).map(|metadata| metadata.dev())
            })
            .await;
        match mount_point_dev {
            Ok(Ok(dev)) if dev != real.dev => None,
            _ => Some(volume),
        }
    }
}

fn locate(path: &Path) -> std::io::Result<RealLocation> {
    let real = std::fs::canonicalize(path)?;
    let metadata = std::fs::metadata(&real)?;
    let block_rdev = metadata
        .file_type()
        .is_block_device()
        .then(|| metadata.rdev());
    Ok(RealLocation {
        path: real,
        dev: metadata.dev(),
        block_rdev,
    })
}

/// Tells whether `real` is on the device of `volume`: a file on its
/// filesystem, or for a raw block volume, a node of the device itself.
fn is_on_device(volume: &ManagedVolume, real: &RealLocation) -> bool {
    let devno = nix::sys::stat::makedev(u64::from(volume.major), u64::from(volume.minor));
    if volume.fstype.is_empty() {
        real.block_rdev == Some(devno)
    } else {
        real.dev == devno
    }
}
