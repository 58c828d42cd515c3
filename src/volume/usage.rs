//! Byte and inode usage computed from `statvfs` counters.

use nix::sys::statvfs::Statvfs;
use protocols::csi::volume_usage::Unit;
use protocols::csi::VolumeUsage;

/// The `statvfs` counters that usage is computed from, in the kernel's units:
/// block counts are in units of `fragment_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsCounts {
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks available to an unprivileged writer (`f_bavail`).
    pub blocks_available: u64,
    pub fragment_size: u64,
    pub files: u64,
    pub files_free: u64,
}

impl From<&Statvfs> for FsCounts {
    // The counters are narrower than u64 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    fn from(stat: &Statvfs) -> FsCounts {
        FsCounts {
            blocks: u64::from(stat.blocks()),
            blocks_free: u64::from(stat.blocks_free()),
            blocks_available: u64::from(stat.blocks_available()),
            fragment_size: u64::from(stat.fragment_size()),
            files: u64::from(stat.files()),
            files_free: u64::from(stat.files_free()),
        }
    }
}

impl FsCounts {
    /// Total size of the filesystem in bytes as `statfs` reports it, which
    /// excludes the metadata overhead that ext4 and xfs keep for themselves.
    pub fn total_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.fragment_size)
    }
}

/// Builds the BYTES usage: `available` is `f_bavail`, what an unprivileged
/// writer can still use (the number kubelet reports), so `used + available`
/// is less than `total` when the filesystem reserves blocks for root.
/// Products saturate at `u64::MAX`, and a free count above the block count
/// gives `used` 0 instead of wrapping.
pub fn byte_usage(counts: &FsCounts) -> VolumeUsage {
    let used_blocks = counts.blocks.saturating_sub(counts.blocks_free);
    usage(
        Unit::BYTES,
        counts.total_bytes(),
        used_blocks.saturating_mul(counts.fragment_size),
        counts.blocks_available.saturating_mul(counts.fragment_size),
    )
}

/// Builds the INODES usage from `f_files` and `f_ffree`.
pub fn inode_usage(counts: &FsCounts) -> VolumeUsage {
    usage(
        Unit::INODES,
        counts.files,
        counts.files.saturating_sub(counts.files_free),
        counts.files_free,
    )
}

/// Builds the BYTES usage of a raw block volume: only `total` (the device
/// size) is known, because the agent cannot see what the container stores
/// on the device, so `used` and `available` stay 0.
pub fn block_device_usage(size_bytes: u64) -> VolumeUsage {
    usage(Unit::BYTES, size_bytes, 0, 0)
}

fn usage(unit: Unit, total: u64, used: u64, available: u64) -> VolumeUsage {
    let mut usage = VolumeUsage::new();
    usage.unit = unit.into();
    usage.total = total;
    usage.used = used;
    usage.available = available;
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(blocks: u64, free: u64, available: u64, fragment_size: u64) -> FsCounts {
        FsCounts {
            blocks,
            blocks_free: free,
            blocks_available: available,
            fragment_size,
            files: 1000,
            files_free: 990,
        }
    }

    #[test]
    fn bytes_from_counts() {
        let usage = byte_usage(&counts(100, 40, 30, 4096));
        assert_eq!(usage.unit, Unit::BYTES.into());
        assert_eq!(usage.total, 100 * 4096);
        assert_eq!(usage.used, 60 * 4096);
        assert_eq!(usage.available, 30 * 4096);
    }

    #[test]
    fn bytes_free_above_blocks() {
        let usage = byte_usage(&counts(100, 150, 150, 1024));
        assert_eq!(usage.used, 0);
        assert_eq!(usage.total, 100 * 1024);
        assert_eq!(usage.available, 150 * 1024);
    }

    #[test]
    fn bytes_huge_fragment_size() {
        let usage = byte_usage(&counts(u64::MAX / 2, 1, u64::MAX / 4, 1 << 20));
        assert_eq!(usage.total, u64::MAX);
        assert_eq!(usage.used, u64::MAX);
        assert_eq!(usage.available, u64::MAX);
    }

    #[test]
    fn bytes_zero_fragment_size() {
        let usage = byte_usage(&counts(100, 10, 10, 0));
        assert_eq!(usage.total, 0);
        assert_eq!(usage.used, 0);
        assert_eq!(usage.available, 0);
    }

    #[test]
    fn inodes_from_counts() {
        let usage = inode_usage(&counts(1, 1, 1, 1));
        assert_eq!(usage.unit, Unit::INODES.into());
        assert_eq!(usage.total, 1000);
        assert_eq!(usage.used, 10);
        assert_eq!(usage.available, 990);
    }

    #[test]
    fn inodes_free_above_files() {
        let mut counts = counts(1, 1, 1, 1);
        counts.files = 5;
        counts.files_free = 9;
        let usage = inode_usage(&counts);
        assert_eq!(usage.used, 0);
        assert_eq!(usage.total, 5);
        assert_eq!(usage.available, 9);
    }

    #[test]
    fn block_device_total_only() {
        let usage = block_device_usage(1 << 30);
        assert_eq!(usage.unit, Unit::BYTES.into());
        assert_eq!(usage.total, 1 << 30);
        assert_eq!(usage.used, 0);
        assert_eq!(usage.available, 0);
    }
}
