//! Mount options: splits the util-linux option vocabulary into mount(2)
//! flags, a propagation change and filesystem data.

use nix::mount::MsFlags;

use super::StorageError;

/// Mount options parsed from `Storage.options` or an OCI mount's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags passed to the mount(2) call itself.
    pub flags: MsFlags,
    /// Propagation applied by a second mount(2) call after mounting, because
    /// the kernel treats a call carrying a propagation flag as a propagation
    /// change only.
    pub propagation: Option<MsFlags>,
    /// Filesystem-specific options, passed as mount(2) data.
    pub data: Vec<String>,
    /// `bind` or `rbind` was given (allowed for container binds only).
    pub bind: Option<MsFlags>,
}

/// Where the options are used, which decides what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionContext {
    /// Mounting a filesystem from a block device.
    Device,
    /// Binding a storage into a container rootfs.
    Bind,
}

/// Options that set or clear one flag; a request may not give both sides.
const FLAG_PAIRS: &[(&str, &str, MsFlags)] = &[
    ("ro", "rw", MsFlags::MS_RDONLY),
    ("nosuid", "suid", MsFlags::MS_NOSUID),
    ("nodev", "dev", MsFlags::MS_NODEV),
    ("noexec", "exec", MsFlags::MS_NOEXEC),
    ("sync", "async", MsFlags::MS_SYNCHRONOUS),
    ("dirsync", "nodirsync", MsFlags::MS_DIRSYNC),
    ("nodiratime", "diratime", MsFlags::MS_NODIRATIME),
    ("lazytime", "nolazytime", MsFlags::MS_LAZYTIME),
    ("silent", "loud", MsFlags::MS_SILENT),
    ("mand", "nomand", MsFlags::MS_MANDLOCK),
];

/// Access-time modes; the kernel takes at most one of them.
const ATIME_MODES: &[(&str, MsFlags)] = &[
    ("noatime", MsFlags::MS_NOATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
];

/// Options that undo an access-time mode rather than select one.
const ATIME_CLEARS: &[&str] = &["atime", "norelatime", "nostrictatime"];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("shared", MsFlags::MS_SHARED),
    ("private", MsFlags::MS_PRIVATE),
    ("slave", MsFlags::MS_SLAVE),
    ("unbindable", MsFlags::MS_UNBINDABLE),
];

/// Options that only userspace mount(8) or fstab reads; the kernel never
/// sees them, so they are accepted and dropped.
const USERSPACE_ONLY: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
];

/// Options that describe a different kind of mount than mounting a device.
const NOT_FOR_DEVICE: &[&str] = &["remount", "move", "loop"];

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: None,
            data: Vec::new(),
            bind: None,
        }
    }
}

impl MountOptions {
    /// Parses `options`; each entry may itself be a comma-separated list,
    /// and commas inside double quotes (`context="a,b"`) do not split.
    pub fn parse(options: &[String], context: OptionContext) -> Result<MountOptions, StorageError> {
        let mut parsed = MountOptions::default();
        let mut seen_flags: Vec<(&'static str, MsFlags)> = Vec::new();
        let mut atime: Option<&str> = None;
        let mut propagation: Option<String> = None;

        for entry in options {
            for option in split_options(entry)? {
                let option = option.as_str();
                let name = option.split('=').next().unwrap_or_default();

                if let Some(&(set, clear, flag)) =
                    FLAG_PAIRS.iter().find(|(set, clear, _)| option == *set || option == *clear)
                {
                    let side = if option == set { set } else { clear };
                    let other = if side == set { clear } else { set };
                    if seen_flags.iter().any(|(seen, _)| *seen == other) {
                        return Err(conflict(side, other));
                    }
                    seen_flags.push((side, flag));
                    parsed.flags.set(flag, side == set);
                } else if let Some(&(mode, flag)) = ATIME_MODES.iter().find(|(mode, _)| option == *mode)
                {
                    if let Some(previous) = atime.filter(|previous| *previous != mode) {
                        return Err(conflict(mode, previous));
                    }
                    atime = Some(mode);
                    parsed.flags.insert(flag);
                } else if ATIME_CLEARS.contains(&option) {
                    if let Some(previous) = atime {
                        return Err(conflict(option, previous));
                    }
                } else if let Some(flag) = propagation_flag(option) {
                    if let Some(previous) = propagation.as_deref().filter(|previous| *previous != option)
                    {
                        return Err(conflict(option, previous));
                    }
                    propagation = Some(option.to_string());
                    parsed.propagation = Some(flag);
                } else if option == "bind" || option == "rbind" {
                    if context == OptionContext::Device {
                        return Err(not_for_device(option));
                    }
                    let recursive = if option == "rbind" { MsFlags::MS_REC } else { MsFlags::empty() };
                    parsed.bind = Some(MsFlags::MS_BIND | recursive);
                } else if NOT_FOR_DEVICE.contains(&name) {
                    return Err(not_for_device(option));
                } else if USERSPACE_ONLY.contains(&option)
                    || name.starts_with("x-")
                    || name.starts_with("X-")
                {
                    // mount(8) drops these before calling the kernel.
                } else {
                    parsed.data.push(option.to_string());
                }
            }
        }
        Ok(parsed)
    }

    /// Filesystem data as mount(2) takes it, or `None` when there is none.
    pub fn data_string(&self) -> Option<String> {
        if self.data.is_empty() {
            None
        } else {
            Some(self.data.join(","))
        }
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    /// The flags that are per mount rather than per superblock, which a bind
    /// remount sets as a whole.
    pub fn per_mount_flags(&self) -> MsFlags {
        self.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME)
    }
}

/// Maps `shared`, `rshared` and the like to their mount(2) flags.
fn propagation_flag(option: &str) -> Option<MsFlags> {
    let (name, recursive) = match option.strip_prefix('r') {
        Some(rest) if PROPAGATION.iter().any(|(name, _)| *name == rest) => (rest, true),
        _ => (option, false),
    };
    let (_, flag) = PROPAGATION.iter().find(|(candidate, _)| *candidate == name)?;
    Some(if recursive { *flag | MsFlags::MS_REC } else { *flag })
}

fn conflict(option: &str, previous: &str) -> StorageError {
    StorageError::Invalid {
        field: "options",
        value: format!("{previous},{option}"),
        reason: format!("{option:?} conflicts with {previous:?}; keep only one of them"),
    }
}

fn not_for_device(option: &str) -> StorageError {
    StorageError::Invalid {
        field: "options",
        value: option.to_string(),
        reason: "this option describes a bind, remount, move or loop mount, not mounting a \
                 block device; remove it"
            .into(),
    }
}

/// Splits one option string on commas that are not inside double quotes.
fn split_options(text: &str) -> Result<Vec<String>, StorageError> {
    if text.contains('\0') {
        return Err(StorageError::Invalid {
            field: "options",
            value: text.to_string(),
            reason: "contains a NUL byte".into(),
        });
    }
    let mut options = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in text.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                current.push(character);
            }
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            _ => current.push(character),
        }
    }
    if quoted {
        return Err(StorageError::Invalid {
            field: "options",
            value: text.to_string(),
            reason: "a double quote is not closed".into(),
        });
    }
    options.push(current);
    Ok(options
        .into_iter()
        .map(|option| option.trim().to_string())
        .filter(|option| !option.is_empty())
        .collect())
}
