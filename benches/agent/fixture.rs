//! Scratch directories, loop devices and mounts that clean up after
//! themselves when dropped, also while a panic unwinds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use nix::mount::{umount2, MntFlags, MsFlags};

/// Returns whether this process runs as root, which loop devices and mounts need.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A unique temporary directory. On drop it first detaches every mount
/// below itself (the agent's storages and binds included), deepest first,
/// so that removing the tree never descends into a mounted filesystem.
pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
}

impl ScratchDir {
    /// Creates the directory under `parent` (e.g. `/tmp`, or `/dev/shm`
    /// for a tmpfs).
    pub fn new_in(parent: &Path) -> anyhow::Result<ScratchDir> {
        let dir = tempfile::Builder::new()
            .prefix("volume-agent-bench-")
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "creating a scratch directory in {} failed",
                    parent.display()
                )
            })?;
        Ok(ScratchDir { dir: Some(dir) })
    }

    pub fn new() -> anyhow::Result<ScratchDir> {
        ScratchDir::new_in(&std::env::temp_dir())
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives until drop")
            .path()
    }

    /// Creates `name` below the scratch directory and returns its path.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating {} failed", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let mut below = mounts_below(dir.path());
        // Deepest first, so that a bind inside a storage goes before the storage.
        below.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
        for mount_point in below {
            if let Err(error) = umount2(&mount_point, MntFlags::MNT_DETACH) {
                eprintln!(
                    "bench cleanup: unmounting {} failed: {error}",
                    mount_point.display()
                );
            }
        }
        if let Err(error) = dir.close() {
            eprintln!("bench cleanup: removing the scratch directory failed: {error}");
        }
    }
}

/// Returns the mount points at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect()
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4);
        match escape.map(std::str::from_utf8) {
            Some(Ok(digits)) if bytes[index] == b'\\' => {
                if let Ok(value) = u8::from_str_radix(digits, 8) {
                    decoded.push(value);
                    index += 4;
                    continue;
                }
                decoded.push(bytes[index]);
            }
            _ => decoded.push(bytes[index]),
        }
        index += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&decoded).into_owned(),
    ))
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program} failed; is it installed?"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// ext4 options that initialise inode tables and the journal at mkfs time,
/// so that no background `ext4lazyinit` writes disturb the timed mounts.
const EXT4_EXTENDED_OPTIONS: &str = "nodiscard,lazy_itable_init=0,lazy_journal_init=0";

/// Creates a sparse image file of `bytes` and formats it with `mkfs`
/// (`ext4` or `xfs`).
pub fn make_image(path: &Path, bytes: u64, fstype: &str) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating {} failed", path.display()))?;
    file.set_len(bytes)
        .with_context(|| format!("sizing {} to {bytes} bytes failed", path.display()))?;
    let image = path.to_str().context("image path is not UTF-8")?;
    match fstype {
        "ext4" => run_tool(
            "mkfs.ext4",
            &["-q", "-F", "-E", EXT4_EXTENDED_OPTIONS, image],
        )?,
        "xfs" => run_tool("mkfs.xfs", &["-q", "-f", "-K", image])?,
        _ => bail!("no mkfs for filesystem type {fstype:?}; use ext4 or xfs"),
    };
    Ok(())
}

/// Copies an image, keeping it sparse.
pub fn copy_image(from: &Path, to: &Path) -> anyhow::Result<()> {
    let from = from.to_str().context("image path is not UTF-8")?;
    let to = to.to_str().context("image path is not UTF-8")?;
    run_tool("cp", &["--sparse=always", from, to]).map(|_| ())
}

/// A loop device this process attached; detached on drop.
pub struct LoopDevice {
    pub dev_path: PathBuf,
}

impl LoopDevice {
    pub fn attach(image: &Path) -> anyhow::Result<LoopDevice> {
        let image = image.to_str().context("image path is not UTF-8")?;
        let dev_path = run_tool("losetup", &["--find", "--show", image])?;
        Ok(LoopDevice {
            dev_path: PathBuf::from(dev_path),
        })
    }

    pub fn dev_str(&self) -> &str {
        self.dev_path
            .to_str()
            .expect("losetup prints UTF-8 device paths")
    }

    /// Makes the kernel reread the size of the backing file (`losetup -c`).
    pub fn refresh_size(&self) -> anyhow::Result<()> {
        run_tool("losetup", &["--set-capacity", self.dev_str()]).map(|_| ())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // A device still mounted is marked autoclear by the kernel and goes
        // away with its last unmount, which ScratchDir performs.
        if let Err(error) = run_tool("losetup", &["--detach", self.dev_str()]) {
            eprintln!("bench cleanup: {error}");
        }
    }
}

/// A mount made by this process; lazily unmounted on drop.
pub struct Mount {
    pub target: PathBuf,
}

impl Mount {
    pub fn new(source: &Path, target: &Path, fstype: &str) -> anyhow::Result<Mount> {
        nix::mount::mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting {} on {} failed",
                source.display(),
                target.display()
            )
        })?;
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(error) = umount2(&self.target, MntFlags::MNT_DETACH) {
            eprintln!(
                "bench cleanup: unmounting {} failed: {error}",
                self.target.display()
            );
        }
    }
}
