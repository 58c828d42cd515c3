//! Filesystem geometry (block size and block count) and the size a grow
//! tool would produce on a device, so that a finished grow is recognised
//! without running the tool again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Byte offset of the primary ext2/3/4 superblock on the device.
const EXT4_SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_SUPERBLOCK_SIZE: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_FEATURE_INCOMPAT_64BIT: u32 = 0x80;
/// resize2fs drops a last block group smaller than its overhead plus this
/// many blocks (`adjust_fs_info` in e2fsprogs resize/resize2fs.c).
const EXT4_MIN_GROUP_SLACK: u64 = 50;
/// The kernel drops a new last allocation group smaller than this many
/// blocks when growing xfs (`XFS_MIN_AG_BLOCKS` in xfs_fs.h, used by
/// `xfs_growfs_data_private`).
const XFS_MIN_AG_BLOCKS: u64 = 64;

/// Rules a grow tool follows when it sizes the filesystem to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowRule {
    Ext4 {
        first_data_block: u64,
        blocks_per_group: u64,
        /// Metadata blocks of a group with a superblock backup, not counting
        /// its descriptor blocks: two bitmaps, the inode table, the
        /// superblock and the reserved descriptor blocks.
        group_overhead_base: u64,
        /// Bytes of one group descriptor.
        descriptor_size: u64,
        /// Largest block count the descriptor format allows.
        max_blocks: u64,
        /// resize2fs rounds the new size down to whole pages.
        blocks_per_page: u64,
    },
    Xfs {
        ag_blocks: u64,
    },
}

/// Size of a filesystem as its own metadata records it. This is larger
/// than the `statfs` total, which leaves out the filesystem's overhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsGeometry {
    pub block_size: u64,
    pub blocks: u64,
    pub rule: GrowRule,
}

impl FsGeometry {
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }

    /// Returns the block count the grow tool gives the filesystem on a
    /// device of `device_bytes`. It may be below the current count when the
    /// device is smaller; callers compare, they do not shrink.
    pub fn grown_blocks(&self, device_bytes: u64) -> u64 {
        let whole = device_bytes / self.block_size.max(1);
        match self.rule {
            GrowRule::Ext4 {
                first_data_block,
                blocks_per_group,
                group_overhead_base,
                descriptor_size,
                max_blocks,
                blocks_per_page,
            } => {
                let mut blocks = whole.min(max_blocks);
                blocks -= blocks % blocks_per_page.max(1);
                let data_blocks = blocks.saturating_sub(first_data_block);
                let groups = data_blocks.div_ceil(blocks_per_group.max(1));
                let descriptor_blocks = (groups * descriptor_size).div_ceil(self.block_size.max(1));
                // Assumes the last group contains a superblock backup, so a
                // tail slightly above what resize2fs keeps may be counted
                // as dropped.
                let overhead = group_overhead_base + descriptor_blocks;
                let tail = data_blocks % blocks_per_group.max(1);
                if tail != 0 && tail < overhead + EXT4_MIN_GROUP_SLACK {
                    blocks -= tail;
                }
                blocks
            }
            GrowRule::Xfs { ag_blocks } => {
                let tail = whole % ag_blocks.max(1);
                if tail != 0 && tail < XFS_MIN_AG_BLOCKS {
                    whole - tail
                } else {
                    whole
                }
            }
        }
    }

    /// Tells whether growing to `device_bytes` would add nothing.
    pub fn covers(&self, device_bytes: u64) -> bool {
        self.blocks >= self.grown_blocks(device_bytes)
    }
}

/// Reads the geometry of an ext2/3/4 filesystem from the primary superblock
/// on `dev_path`. The read goes through the block device's page cache,
/// which contains the same superblock buffer the mounted ext4 updates.
pub fn read_ext4(dev_path: &Path) -> Result<FsGeometry, String> {
    let file = File::open(dev_path).map_err(|error| format!("opening the device: {error}"))?;
    let mut superblock = [0u8; EXT4_SUPERBLOCK_SIZE];
    file.read_exact_at(&mut superblock, EXT4_SUPERBLOCK_OFFSET)
        .map_err(|error| format!("reading the superblock: {error}"))?;
    parse_ext4_superblock(&superblock, page_size())
}

/// Byte offsets of the `struct ext4_super_block` fields read here.
mod ext4_offset {
    pub const BLOCKS_COUNT_LO: usize = 0x04;
    pub const FIRST_DATA_BLOCK: usize = 0x14;
    pub const LOG_BLOCK_SIZE: usize = 0x18;
    pub const BLOCKS_PER_GROUP: usize = 0x20;
    pub const INODES_PER_GROUP: usize = 0x28;
    pub const MAGIC: usize = 0x38;
    pub const INODE_SIZE: usize = 0x58;
    pub const FEATURE_INCOMPAT: usize = 0x60;
    pub const RESERVED_GDT_BLOCKS: usize = 0xCE;
    pub const DESC_SIZE: usize = 0xFE;
    pub const BLOCKS_COUNT_HI: usize = 0x150;
}

fn le16(bytes: &[u8], offset: usize) -> u64 {
    u64::from(u16::from_le_bytes([bytes[offset], bytes[offset + 1]]))
}

fn le32(bytes: &[u8], offset: usize) -> u64 {
    let field = [
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ];
    u64::from(u32::from_le_bytes(field))
}

/// Decodes an ext4 superblock (little endian) into its geometry.
pub fn parse_ext4_superblock(superblock: &[u8], page_size: u64) -> Result<FsGeometry, String> {
    use ext4_offset::*;

    if superblock.len() < EXT4_SUPERBLOCK_SIZE {
        return Err(format!(
            "superblock is {} bytes, expected {EXT4_SUPERBLOCK_SIZE}",
            superblock.len()
        ));
    }
    let magic = le16(superblock, MAGIC);
    if magic != u64::from(EXT4_MAGIC) {
        return Err(format!(
            "invalid ext4 magic {magic:#x}, expected {EXT4_MAGIC:#x}"
        ));
    }
    let log_block_size = le32(superblock, LOG_BLOCK_SIZE);
    if log_block_size > 6 {
        return Err(format!(
            "block size exponent {log_block_size} is out of range 0..=6"
        ));
    }
    let blocks_per_group = le32(superblock, BLOCKS_PER_GROUP);
    if blocks_per_group == 0 {
        return Err("blocks per group is 0".to_string());
    }

    let block_size = 1024u64 << log_block_size;
    let is_64bit = le32(superblock, FEATURE_INCOMPAT) & u64::from(EXT4_FEATURE_INCOMPAT_64BIT) != 0;
    let blocks_hi = if is_64bit {
        le32(superblock, BLOCKS_COUNT_HI)
    } else {
        0
    };
    let blocks = (blocks_hi << 32) | le32(superblock, BLOCKS_COUNT_LO);
    let max_blocks = if is_64bit {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };

    // Revision 0 superblocks leave the inode size 0, meaning 128 bytes.
    let inode_size = le16(superblock, INODE_SIZE).max(128);
    let inode_table_blocks = (le32(superblock, INODES_PER_GROUP) * inode_size).div_ceil(block_size);
    let descriptor_size = if is_64bit {
        le16(superblock, DESC_SIZE).max(32)
    } else {
        32
    };
    let group_overhead_base = 2 + inode_table_blocks + 1 + le16(superblock, RESERVED_GDT_BLOCKS);

    Ok(FsGeometry {
        block_size,
        blocks,
        rule: GrowRule::Ext4 {
            first_data_block: le32(superblock, FIRST_DATA_BLOCK),
            blocks_per_group,
            group_overhead_base,
            descriptor_size,
            max_blocks,
            blocks_per_page: (page_size / block_size).max(1),
        },
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// `struct xfs_fsop_geom_v1` from <xfs/xfs_fs.h>, the oldest geometry
/// layout, which every kernel supports.
#[repr(C)]
#[derive(Debug, Default)]
pub struct XfsGeometryV1 {
    pub blocksize: u32,
    pub rtextsize: u32,
    pub agblocks: u32,
    pub agcount: u32,
    pub logblocks: u32,
    pub sectsize: u32,
    pub inodesize: u32,
    pub imaxpct: u32,
    pub datablocks: u64,
    pub rtblocks: u64,
    pub rtextents: u64,
    pub logstart: u64,
    pub uuid: [u8; 16],
    pub sunit: u32,
    pub swidth: u32,
    pub version: i32,
    pub flags: u32,
    pub logsectsize: u32,
    pub rtsectsize: u32,
    pub dirblocksize: u32,
}

// The ioctl number encodes the struct size, 112 bytes with tail padding.
const _: () = assert!(std::mem::size_of::<XfsGeometryV1>() == 112);

// XFS_IOC_FSGEOMETRY_V1 = _IOR('X', 100, struct xfs_fsop_geom_v1).
nix::ioctl_read!(xfs_fsgeometry_v1, b'X', 100, XfsGeometryV1);

/// Reads the geometry of the xfs mounted at `mount_point` from the kernel.
/// Blocks on a hung device like any call on the mount.
pub fn read_xfs(mount_point: &Path) -> Result<FsGeometry, String> {
    let root =
        File::open(mount_point).map_err(|error| format!("opening the mount root: {error}"))?;
    let mut geometry = XfsGeometryV1::default();
    // SAFETY: the fd is open for the whole call and `geometry` is a
    // writable struct with the kernel's xfs_fsop_geom_v1 layout (size
    // checked above), which is what this ioctl fills in.
    unsafe { xfs_fsgeometry_v1(root.as_raw_fd(), &mut geometry) }
        .map_err(|errno| format!("XFS_IOC_FSGEOMETRY_V1: {}", errno.desc()))?;
    Ok(FsGeometry {
        block_size: u64::from(geometry.blocksize),
        blocks: geometry.datablocks,
        rule: GrowRule::Xfs {
            ag_blocks: u64::from(geometry.agblocks),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xfs(blocks: u64, ag_blocks: u64) -> FsGeometry {
        FsGeometry {
            block_size: 4096,
            blocks,
            rule: GrowRule::Xfs { ag_blocks },
        }
    }

    #[test]
    fn xfs_drops_small_last_group() {
        let geometry = xfs(4 * 1000, 1000);
        assert_eq!(geometry.grown_blocks(4096 * 4000), 4000);
        assert_eq!(
            geometry.grown_blocks(4096 * 4063),
            4000,
            "63-block tail is dropped"
        );
        assert_eq!(geometry.grown_blocks(4096 * 4064), 4064);
        assert_eq!(
            geometry.grown_blocks(4096 * 4000 + 4095),
            4000,
            "partial block"
        );
        assert!(geometry.covers(4096 * 4063));
        assert!(!geometry.covers(4096 * 4064));
    }

    fn ext4_superblock(blocks: u32, log_block_size: u32, incompat: u32) -> Vec<u8> {
        let mut superblock = vec![0u8; 1024];
        let mut put32 = |offset: usize, value: u32| {
            superblock[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        };
        put32(0x04, blocks);
        put32(0x14, u32::from(log_block_size == 0));
        put32(0x18, log_block_size);
        put32(0x20, 8192);
        put32(0x28, 2048);
        put32(0x60, incompat);
        superblock[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        superblock[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        superblock[0xCE..0xD0].copy_from_slice(&63u16.to_le_bytes());
        superblock
    }

    #[test]
    fn ext4_superblock_fields() {
        let geometry = parse_ext4_superblock(&ext4_superblock(65536, 0, 0), 4096).unwrap();
        assert_eq!(geometry.block_size, 1024);
        assert_eq!(geometry.blocks, 65536);
        assert_eq!(geometry.bytes(), 64 << 20);
        let GrowRule::Ext4 {
            first_data_block,
            blocks_per_page,
            group_overhead_base,
            descriptor_size,
            max_blocks,
            ..
        } = geometry.rule
        else {
            panic!("not an ext4 rule: {:?}", geometry.rule);
        };
        assert_eq!(first_data_block, 1);
        assert_eq!(blocks_per_page, 4);
        // 2 bitmaps + 512 inode table blocks + 1 superblock + 63 reserved.
        assert_eq!(group_overhead_base, 2 + 512 + 1 + 63);
        assert_eq!(descriptor_size, 32);
        assert_eq!(max_blocks, u64::from(u32::MAX));
    }

    #[test]
    fn ext4_grown_blocks_rounding() {
        let geometry = parse_ext4_superblock(&ext4_superblock(32768, 2, 0), 4096).unwrap();
        assert_eq!(geometry.block_size, 4096);
        assert_eq!(geometry.grown_blocks(4096 * 32768), 32768);
        assert!(geometry.covers(4096 * 32768));
        assert_eq!(
            geometry.grown_blocks(4096 * 40960),
            40960,
            "a whole new group"
        );
        assert_eq!(
            geometry.grown_blocks(4096 * 32778),
            32768,
            "10-block tail is dropped"
        );
        assert!(!geometry.covers(4096 * 40960));
    }

    #[test]
    fn ext4_64bit_keeps_partial_group() {
        let mut superblock = ext4_superblock(32768, 2, EXT4_FEATURE_INCOMPAT_64BIT);
        superblock[0xFE..0x100].copy_from_slice(&64u16.to_le_bytes());
        let geometry = parse_ext4_superblock(&superblock, 4096).unwrap();
        // Overhead of the new group: 2 + 128 + 1 + 63 + 1 descriptor block.
        let kept = 32768 + 195 + EXT4_MIN_GROUP_SLACK;
        assert_eq!(geometry.grown_blocks(4096 * kept), kept);
        assert_eq!(geometry.grown_blocks(4096 * (kept - 1)), 32768);
        assert!(
            !geometry.covers(4096 * 36864),
            "half a group more is a grow"
        );
    }

    #[test]
    fn ext4_superblock_rejects_garbage() {
        let mut superblock = ext4_superblock(100, 0, 0);
        superblock[0x38] = 0;
        assert!(parse_ext4_superblock(&superblock, 4096)
            .unwrap_err()
            .contains("magic"));
        let short = parse_ext4_superblock(&[0u8; 10], 4096).unwrap_err();
        assert!(short.contains("10 bytes"), "{short}");
    }
}
