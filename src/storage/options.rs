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
    ("iversion", "noiversion", MsFlags::MS_I_VERSION),
    ("noatime", "atime", MsFlags::MS_NOATIME),
    ("relatime", "norelatime", MsFlags::MS_RELATIME),
    ("strictatime", "nostrictatime", MsFlags::MS_STRICTATIME),
];

/// Access-time modes; the kernel takes at most one of them.
const ATIME_MODES: &[(&str, MsFlags)] = &[
    ("noatime", MsFlags::MS_NOATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("shared", MsFlags::MS_SHARED),
    ("private", MsFlags::MS_PRIVATE),
    ("slave", MsFlags::MS_SLAVE),
    ("unbindable", MsFlags::MS_UNBINDABLE),
];

/// Options that only mount(8) and fstab use. mount(8) removes them before
/// calling mount(2), so they are accepted and dropped here too.
const USERSPACE_ONLY: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
];

/// Options that ask for another kind of mount (a remount, a move, a loop
/// device), which a request never gets.
const OTHER_MOUNT_KINDS: &[&str] = &["remount", "move", "loop"];

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

/// Longest filesystem data string that mount(2) passes on whole. The kernel
/// copies one page (4096 bytes on x86-64) and
/// ends it with a NUL, so anything longer is cut without an error.
pub const MAX_MOUNT_DATA_BYTES: usize = 4095;

impl MountOptions {
    /// Parses `options`; each entry may itself be a comma-separated list,
    /// and commas inside double quotes (`context="a,b"`) do not split.
    pub fn parse(options: &[String], context: OptionContext) -> Result<MountOptions, StorageError> {
        let mut parsed = MountOptions::default();
        let mut seen_flags: Vec<&str> = Vec::new();
        let mut propagation: Option<String> = None;

        for entry in options {
            for option in split_options(entry)? {
                let option = option.as_str();
                let name = option.split('=').next().unwrap_or_default();

                if let Some(&(set, clear, flag)) = FLAG_PAIRS
                    .iter()
                    .find(|(set, clear, _)| option == *set || option == *clear)
                {
                    let side = if option == set { set } else { clear };
                    let other = if side == set { clear } else { set };
                    if seen_flags.contains(&other) {
                        return Err(conflict(side, other));
                    }
                    seen_flags.push(side);
                    parsed.flags.set(flag, side == set);
                } else if let Some(flag) = propagation_flag(option) {
                    if let Some(previous) = propagation
                        .as_deref()
                        .filter(|previous| *previous != option)
                    {
                        return Err(conflict(option, previous));
                    }
                    propagation = Some(option.to_string());
                    parsed.propagation = Some(flag);
                } else if option == "bind" || option == "rbind" {
                    if context == OptionContext::Device {
                        return Err(not_for_device(option));
                    }
                    let recursive = if option == "rbind" {
                        MsFlags::MS_REC
                    } else {
                        MsFlags::empty()
                    };
                    parsed.bind = Some(MsFlags::MS_BIND | recursive);
                } else if OTHER_MOUNT_KINDS.contains(&name) {
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
        let atime_modes: Vec<&str> = ATIME_MODES
            .iter()
            .filter(|(_, flag)| parsed.flags.contains(*flag))
            .map(|(name, _)| *name)
            .collect();
        if let [first, second, ..] = atime_modes.as_slice() {
            return Err(conflict(second, first));
        }
        let data_len = parsed.data_string().map_or(0, |data| data.len());
        if data_len > MAX_MOUNT_DATA_BYTES {
            return Err(StorageError::Invalid {
                field: "options",
                value: options.join(","),
                reason: format!(
                    "the filesystem options are {data_len} bytes long, but mount(2) reads at \
                     most {MAX_MOUNT_DATA_BYTES} and would drop the rest; remove options"
                ),
            });
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

    /// Returns true when the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    /// Returns the flags that belong to the mount rather than the superblock,
    /// which a bind remount replaces as a whole.
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
    let (_, flag) = PROPAGATION
        .iter()
        .find(|(candidate, _)| *candidate == name)?;
    Some(if recursive {
        *flag | MsFlags::MS_REC
    } else {
        *flag
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(options: &[&str], context: OptionContext) -> Result<MountOptions, StorageError> {
        let options: Vec<String> = options.iter().map(|option| option.to_string()).collect();
        MountOptions::parse(&options, context)
    }

    fn device(options: &[&str]) -> MountOptions {
        parse(options, OptionContext::Device).unwrap()
    }

    fn rejected(options: &[&str], context: OptionContext) -> String {
        let error = parse(options, context).unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{options:?}");
        error.to_string()
    }

    #[test]
    fn data_longer_than_a_page_is_rejected() {
        // 4095 bytes of data pass, because mount(2) keeps one page including
        // the terminating NUL.
        let filler = format!("commit={}", "0".repeat(MAX_MOUNT_DATA_BYTES - 8));
        let longest = [filler.as_str(), "5"].concat();
        assert_eq!(longest.len(), MAX_MOUNT_DATA_BYTES);
        assert!(parse(&[longest.as_str()], OptionContext::Device).is_ok());

        let text = rejected(
            &[longest.as_str(), "errors=remount-ro"],
            OptionContext::Device,
        );
        assert!(text.contains("4095"), "{text}");
    }

    #[test]
    fn flags_and_their_opposites() {
        let cases: &[(&[&str], MsFlags)] = &[
            (&["ro"], MsFlags::MS_RDONLY),
            (&["rw"], MsFlags::empty()),
            (
                &["nosuid", "nodev", "noexec"],
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            ),
            (&["suid", "dev", "exec"], MsFlags::empty()),
            (
                &["sync", "dirsync"],
                MsFlags::MS_SYNCHRONOUS | MsFlags::MS_DIRSYNC,
            ),
            (&["async"], MsFlags::empty()),
            (
                &["noatime", "nodiratime"],
                MsFlags::MS_NOATIME | MsFlags::MS_NODIRATIME,
            ),
            (&["relatime"], MsFlags::MS_RELATIME),
            (
                &["strictatime", "lazytime"],
                MsFlags::MS_STRICTATIME | MsFlags::MS_LAZYTIME,
            ),
            (&["atime", "diratime", "nolazytime"], MsFlags::empty()),
            (&["relatime", "atime"], MsFlags::MS_RELATIME),
            (&["noatime", "norelatime"], MsFlags::MS_NOATIME),
            (&["iversion"], MsFlags::MS_I_VERSION),
            (&["ro,nosuid"], MsFlags::MS_RDONLY | MsFlags::MS_NOSUID),
            (
                &[
                    "defaults",
                    "noauto",
                    "nofail",
                    "x-systemd.automount",
                    "_netdev",
                ],
                MsFlags::empty(),
            ),
        ];
        for (options, flags) in cases {
            let parsed = device(options);
            assert_eq!(parsed.flags, *flags, "{options:?}");
            assert!(
                parsed.data.is_empty(),
                "{options:?} gave data {:?}",
                parsed.data
            );
            assert_eq!(parsed.propagation, None, "{options:?}");
        }
    }

    #[test]
    fn data_keeps_quoted_commas() {
        let parsed = device(&[
            r#"ro,discard,context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2",errors=remount-ro"#,
        ]);
        assert_eq!(parsed.flags, MsFlags::MS_RDONLY);
        assert_eq!(
            parsed.data,
            vec![
                "discard".to_string(),
                r#"context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2""#.to_string(),
                "errors=remount-ro".to_string(),
            ]
        );
        assert_eq!(
            parsed.data_string().unwrap(),
            r#"discard,context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2",errors=remount-ro"#
        );
        assert_eq!(device(&["ro"]).data_string(), None);
    }

    #[test]
    fn propagation_plain_and_recursive() {
        let cases = [
            ("shared", MsFlags::MS_SHARED),
            ("rshared", MsFlags::MS_SHARED | MsFlags::MS_REC),
            ("private", MsFlags::MS_PRIVATE),
            ("rprivate", MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            ("slave", MsFlags::MS_SLAVE),
            ("rslave", MsFlags::MS_SLAVE | MsFlags::MS_REC),
            ("unbindable", MsFlags::MS_UNBINDABLE),
            ("runbindable", MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
        ];
        for (option, flags) in cases {
            let parsed = device(&[option]);
            assert_eq!(parsed.propagation, Some(flags), "{option}");
            assert_eq!(
                parsed.flags,
                MsFlags::empty(),
                "{option} must not reach the mount flags"
            );
        }
        assert!(propagation_flag("rdiscard").is_none());
    }

    #[test]
    fn conflicting_options_rejected() {
        let cases: &[&[&str]] = &[
            &["ro", "rw"],
            &["rw,ro"],
            &["nosuid", "suid"],
            &["dev", "nodev"],
            &["exec", "noexec"],
            &["sync", "async"],
            &["noatime", "relatime"],
            &["strictatime", "noatime"],
            &["relatime", "norelatime"],
            &["atime", "noatime"],
            &["shared", "private"],
            &["rslave", "slave"],
        ];
        for options in cases {
            let message = rejected(options, OptionContext::Device);
            assert!(message.contains("conflicts"), "{options:?}: {message}");
        }
        assert_eq!(
            device(&["ro", "ro"]).flags,
            MsFlags::MS_RDONLY,
            "a repeat is no conflict"
        );
        assert_eq!(device(&["noatime", "noatime"]).flags, MsFlags::MS_NOATIME);
    }

    #[test]
    fn device_rejects_bind_remount_and_loop() {
        for option in [
            "bind",
            "rbind",
            "remount",
            "move",
            "loop",
            "loop=/dev/loop0",
        ] {
            let message = rejected(&[option], OptionContext::Device);
            assert!(message.contains(option), "{option}: {message}");
        }
    }

    #[test]
    fn bind_context_accepts_bind_and_rbind() {
        let bind = parse(&["bind", "ro"], OptionContext::Bind).unwrap();
        assert_eq!(bind.bind, Some(MsFlags::MS_BIND));
        assert_eq!(bind.per_mount_flags(), MsFlags::MS_RDONLY);
        let rbind = parse(&["rbind"], OptionContext::Bind).unwrap();
        assert_eq!(rbind.bind, Some(MsFlags::MS_BIND | MsFlags::MS_REC));
        rejected(&["remount"], OptionContext::Bind);
    }

    #[test]
    fn malformed_text_rejected() {
        let message = rejected(&[r#"context="open"#], OptionContext::Device);
        assert!(message.contains("quote"), "{message}");
        let message = rejected(&["ro\0rw"], OptionContext::Device);
        assert!(message.contains("NUL"), "{message}");
        assert_eq!(
            device(&["", " , ro ,"]).flags,
            MsFlags::MS_RDONLY,
            "empty entries skipped"
        );
    }

    #[test]
    fn per_mount_flags_drop_superblock_flags() {
        let parsed = device(&["ro", "sync", "nosuid", "lazytime", "noatime"]);
        assert_eq!(
            parsed.per_mount_flags(),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOATIME
        );
    }
}
