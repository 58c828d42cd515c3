//! Path checks: mount points stay under the storage root, and bind targets
//! are resolved inside the container rootfs so that `..` and symbolic links
//! cannot lead outside it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::StorageError;

/// File type a mount point or bind target must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    /// Anything but a directory, for a raw block volume or a bind of a single
    /// file; a regular file is created when missing.
    File,
}

/// Cleans an absolute path lexically: drops `.`, applies `..` (never above
/// `/`) and rejects empty, relative or NUL-containing text.
pub fn clean_absolute(field: &'static str, text: &str) -> Result<PathBuf, StorageError> {
    let invalid = |reason: &str| StorageError::Invalid {
        field,
        value: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(invalid("is empty; give an absolute path"));
    }
    if text.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if !text.starts_with('/') {
        return Err(invalid("is not an absolute path"));
    }
    let clean = clean_components(Path::new(text));
    check_path_limits(&clean).map_err(|reason| invalid(&reason))?;
    Ok(clean)
}

/// Longest file name, in bytes, that Linux filesystems accept (NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path, in bytes, that system calls such as mount(2) and rmdir(2)
/// accept (PATH_MAX less the terminating NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// Checks `path` against [`MAX_NAME_BYTES`] and [`MAX_PATH_BYTES`], so that a
/// path the kernel cannot take is rejected before anything is created.
pub fn check_path_limits(path: &Path) -> Result<(), String> {
    let length = path.as_os_str().len();
    if length > MAX_PATH_BYTES {
        return Err(format!(
            "is {length} bytes long once cleaned; paths are limited to {MAX_PATH_BYTES} bytes"
        ));
    }
    let longest_name = path
        .components()
        .map(|component| component.as_os_str().len())
        .max()
        .unwrap_or(0);
    if longest_name > MAX_NAME_BYTES {
        return Err(format!(
            "has a {longest_name}-byte name; names are limited to {MAX_NAME_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Applies `.` and `..` lexically, clamping at `/`.
fn clean_components(path: &Path) -> PathBuf {
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// Checks that `text` names a path strictly below `root` once cleaned, and
/// returns the cleaned path.
pub fn validate_mount_point(root: &Path, text: &str) -> Result<PathBuf, StorageError> {
    let mount_point = clean_absolute("mount_point", text)?;
    if mount_point == root || !mount_point.starts_with(root) {
        return Err(StorageError::Invalid {
            field: "mount_point",
            value: text.to_string(),
            reason: format!(
                "resolves to {}, which is not below the storage root {}; \
                 choose a mount point below it",
                mount_point.display(),
                root.display()
            ),
        });
    }
    Ok(mount_point)
}

/// Creates `mount_point` (below `root`) and any missing parents without
/// following symbolic links, and returns the paths it created, outermost
/// first, so a failed mount can remove exactly those.
pub fn create_mount_point(
    root: &Path,
    mount_point: &Path,
    kind: NodeKind,
) -> Result<Vec<PathBuf>, StorageError> {
    let relative = mount_point
        .strip_prefix(root)
        .map_err(|_| StorageError::Invalid {
            field: "mount_point",
            value: mount_point.display().to_string(),
            reason: format!("is not below the storage root {}", root.display()),
        })?;
    std::fs::create_dir_all(root).map_err(|error| StorageError::CreateMountPoint {
        path: root.to_path_buf(),
        error,
    })?;
    let io_error = |path: &Path, errno: Errno| StorageError::CreateMountPoint {
        path: path.to_path_buf(),
        error: errno.into(),
    };

    let mut created = Vec::new();
    let mut directory =
        open_path(root, OFlags::DIRECTORY).map_err(|errno| io_error(root, errno))?;
    let mut current = root.to_path_buf();
    let names: Vec<_> = relative.components().collect();
    for (index, name) in names.iter().enumerate() {
        let name = name.as_os_str();
        current.push(name);
        let last = index + 1 == names.len();
        let expected_kind = if last { kind } else { NodeKind::Directory };
        let result = open_or_create(&directory, name, expected_kind);
        let (fd, was_created) = match result {
            Ok(opened) => opened,
            Err(error) => {
                remove_created(&created);
                return Err(match error {
                    OpenError::Errno(errno) => io_error(&current, errno),
                    OpenError::Symlink => StorageError::Invalid {
                        field: "mount_point",
                        value: mount_point.display().to_string(),
                        reason: format!(
                            "{} is a symbolic link; mount points may not pass through links",
                            current.display()
                        ),
                    },
                    OpenError::WrongType(found) => StorageError::Invalid {
                        field: "mount_point",
                        value: mount_point.display().to_string(),
                        reason: format!(
                            "{} exists as a {found}, expected a {}",
                            current.display(),
                            kind_name(expected_kind)
                        ),
                    },
                });
            }
        };
        if was_created {
            created.push(current.clone());
        }
        directory = fd;
    }
    Ok(created)
}

/// Removes paths made by [`create_mount_point`] or [`resolve_in_root`],
/// innermost first; only empty directories and empty files go.
pub fn remove_created(created: &[PathBuf]) {
    for path in created.iter().rev() {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                let _ = std::fs::remove_dir(path);
            }
            Ok(metadata) if metadata.is_file() && metadata.len() == 0 => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
    }
}

enum OpenError {
    Errno(Errno),
    Symlink,
    WrongType(&'static str),
}

/// Opens `name` in `directory` without following a link, creating it as
/// `kind` when missing; returns the `O_PATH` descriptor and whether it was
/// created.
fn open_or_create(
    directory: &OwnedFd,
    name: &std::ffi::OsStr,
    kind: NodeKind,
) -> Result<(OwnedFd, bool), OpenError> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (fd, created) = match rustix::fs::openat(directory, name, flags, Mode::empty()) {
        Ok(fd) => (fd, false),
        Err(Errno::NOENT) => {
            create_node(directory, name, kind).map_err(OpenError::Errno)?;
            let fd = rustix::fs::openat(directory, name, flags, Mode::empty())
                .map_err(OpenError::Errno)?;
            (fd, true)
        }
        Err(errno) => return Err(OpenError::Errno(errno)),
    };
    check_kind(&fd, kind)?;
    Ok((fd, created))
}

fn create_node(directory: &OwnedFd, name: &std::ffi::OsStr, kind: NodeKind) -> Result<(), Errno> {
    match kind {
        NodeKind::Directory => rustix::fs::mkdirat(directory, name, Mode::from_raw_mode(0o755)),
        NodeKind::File => {
            let flags =
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(directory, name, flags, Mode::from_raw_mode(0o644)).map(drop)
        }
    }
}

fn check_kind(fd: &OwnedFd, kind: NodeKind) -> Result<(), OpenError> {
    let stat = rustix::fs::fstat(fd).map_err(OpenError::Errno)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    // A bind over a file target leaves whatever the source was (a device
    // node for a raw block volume), so any non-directory serves as a file.
    match (file_type, kind) {
        (FileType::Symlink, _) => Err(OpenError::Symlink),
        (FileType::Directory, NodeKind::Directory) => Ok(()),
        (FileType::Directory, NodeKind::File) => Err(OpenError::WrongType("directory")),
        (_, NodeKind::File) => Ok(()),
        (FileType::RegularFile, NodeKind::Directory) => Err(OpenError::WrongType("regular file")),
        (_, NodeKind::Directory) => Err(OpenError::WrongType("special file")),
    }
}

fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Directory => "directory",
        NodeKind::File => "file (not a directory)",
    }
}

fn open_path(path: &Path, extra: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC | extra, Mode::empty())
}

/// Maximum attempts of one openat2(2) resolution that fails with EAGAIN
/// because of concurrent renames or mounts.
const MAX_RESOLVE_ATTEMPTS: u32 = 64;

/// A path opened inside a root, held as an `O_PATH` descriptor so that a
/// mount can target it through `/proc/self/fd` without resolving the path
/// again.
#[derive(Debug)]
pub struct ResolvedPath {
    pub fd: OwnedFd,
    /// The path the descriptor refers to, as the kernel reports it.
    pub real_path: PathBuf,
    /// Paths created to make this one exist, outermost first.
    pub created: Vec<PathBuf>,
}

impl ResolvedPath {
    /// Returns the kind of node the descriptor refers to.
    pub fn node_kind(&self) -> Result<NodeKind, Errno> {
        let stat = rustix::fs::fstat(&self.fd)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Ok(NodeKind::Directory),
            _ => Ok(NodeKind::File),
        }
    }

    /// Returns the `/proc/self/fd` magic link to hand to mount(2).
    pub fn proc_path(&self) -> PathBuf {
        fd_proc_path(&self.fd)
    }
}

fn fd_proc_path(fd: &impl AsFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

fn real_path(fd: &impl AsFd) -> Result<PathBuf, Errno> {
    std::fs::read_link(fd_proc_path(fd))
        .map_err(|error| Errno::from_io_error(&error).unwrap_or(Errno::IO))
}

/// Opens `relative` inside `root`, as if `root` were `/`: `..` stops at it
/// and symbolic links, absolute ones included, resolve below it. With
/// `create`, missing components are made (directories, and a `kind` node
/// at the end); otherwise a missing path is an error.
pub fn resolve_in_root(
    field: &'static str,
    root: &Path,
    relative: &Path,
    create: Option<NodeKind>,
) -> Result<ResolvedPath, StorageError> {
    let fail = |path: &Path, errno: Errno| StorageError::Resolve {
        field,
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        error: errno.into(),
    };
    let relative = clean_components(relative);
    let relative = relative
        .strip_prefix("/")
        .unwrap_or(&relative)
        .to_path_buf();
    if create.is_none() && relative.as_os_str().is_empty() {
        // The root itself, which may be a file (a raw block mount point).
        let fd = open_path(root, OFlags::empty()).map_err(|errno| fail(Path::new("/"), errno))?;
        let real_path = real_path(&fd).map_err(|errno| fail(Path::new("/"), errno))?;
        return Ok(ResolvedPath {
            fd,
            real_path,
            created: Vec::new(),
        });
    }
    let root_fd =
        open_path(root, OFlags::DIRECTORY).map_err(|errno| fail(Path::new("/"), errno))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |path: &Path| {
        let mut attempts = 1;
        loop {
            let result = rustix::fs::openat2(
                &root_fd,
                path,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            );
            // EAGAIN: a rename or mount anywhere in the system ran during a
            // `..` step, so the kernel could not vouch for it. Try again.
            match result {
                Err(Errno::AGAIN) if attempts < MAX_RESOLVE_ATTEMPTS => attempts += 1,
                other => return other,
            }
        }
    };

    let Some(kind) = create else {
        let fd = open(&relative).map_err(|errno| fail(&relative, errno))?;
        let real_path = real_path(&fd).map_err(|errno| fail(&relative, errno))?;
        return Ok(ResolvedPath {
            fd,
            real_path,
            created: Vec::new(),
        });
    };

    let mut created = Vec::new();
    let mut directory = root_fd.try_clone().map_err(|error| StorageError::Resolve {
        field,
        root: root.to_path_buf(),
        path: relative.clone(),
        error,
    })?;
    let mut prefix = PathBuf::new();
    let names: Vec<_> = relative.components().collect();
    if names.is_empty() {
        return Err(StorageError::Invalid {
            field,
            value: relative.display().to_string(),
            reason: format!("resolves to the root {} itself", root.display()),
        });
    }
    for (index, name) in names.iter().enumerate() {
        let name = name.as_os_str();
        prefix.push(name);
        let expected_kind = if index + 1 == names.len() {
            kind
        } else {
            NodeKind::Directory
        };
        let fd = match open(&prefix) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                // The parent is already resolved inside the root, so the new
                // node is made there. A dangling link in its place makes the
                // creation fail with EEXIST rather than follow the link.
                let step = (|| {
                    create_node(&directory, name, expected_kind)?;
                    let parent = real_path(&directory)?;
                    created.push(parent.join(name));
                    open(&prefix)
                })();
                match step {
                    Ok(fd) => fd,
                    Err(Errno::EXIST) => {
                        remove_created(&created);
                        return Err(StorageError::Invalid {
                            field,
                            value: prefix.display().to_string(),
                            reason: format!(
                                "is a symbolic link whose target does not exist inside {}",
                                root.display()
                            ),
                        });
                    }
                    Err(errno) => {
                        remove_created(&created);
                        return Err(fail(&prefix, errno));
                    }
                }
            }
            Err(errno) => {
                remove_created(&created);
                return Err(fail(&prefix, errno));
            }
        };
        if let Err(error) = check_kind(&fd, expected_kind) {
            remove_created(&created);
            let found = match error {
                OpenError::Errno(errno) => return Err(fail(&prefix, errno)),
                OpenError::Symlink => "symbolic link",
                OpenError::WrongType(found) => found,
            };
            return Err(StorageError::Invalid {
                field,
                value: prefix.display().to_string(),
                reason: format!(
                    "exists inside {} as a {found}, expected a {}",
                    root.display(),
                    kind_name(expected_kind)
                ),
            });
        }
        directory = fd;
    }
    let real_path = real_path(&directory).map_err(|errno| fail(&relative, errno))?;
    Ok(ResolvedPath {
        fd: directory,
        real_path,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_traversal_rejected() {
        let root = Path::new("/run/storage");
        let accepted = [
            ("/run/storage/a", "/run/storage/a"),
            ("/run/storage/./a/", "/run/storage/a"),
            ("/run/storage/x/../a", "/run/storage/a"),
            ("//run//storage//a", "/run/storage/a"),
        ];
        for (text, expected) in accepted {
            assert_eq!(
                validate_mount_point(root, text).unwrap(),
                PathBuf::from(expected),
                "{text}"
            );
        }
        let rejected = [
            "",
            "relative/a",
            "/run/storage",
            "/run/storage/",
            "/run/storage/..",
            "/run/storage/../escape",
            "/run/storage/a/../../escape",
            "/run/storage/../../../../etc",
            "/run/storagex/a",
            "/etc",
            "/run/storage/a\0b",
        ];
        for text in rejected {
            let error = validate_mount_point(root, text).unwrap_err();
            assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{text:?}");
        }
    }

    #[test]
    fn create_mount_point_rejects_symlink_components() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("storage");
        let outside = directory.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let error =
            create_mount_point(&root, &root.join("link/vol"), NodeKind::Directory).unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);
        let error = create_mount_point(&root, &root.join("link"), NodeKind::Directory).unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing made outside"
        );
    }

    #[test]
    fn create_mount_point_records_what_it_made() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("storage");
        std::fs::create_dir_all(root.join("existing")).unwrap();

        let created =
            create_mount_point(&root, &root.join("existing/a/b"), NodeKind::Directory).unwrap();
        assert_eq!(
            created,
            vec![root.join("existing/a"), root.join("existing/a/b")]
        );
        assert!(root.join("existing/a/b").is_dir());

        remove_created(&created);
        assert!(!root.join("existing/a").exists());
        assert!(
            root.join("existing").is_dir(),
            "pre-existing directories stay"
        );

        let created = create_mount_point(&root, &root.join("raw"), NodeKind::File).unwrap();
        assert_eq!(created, vec![root.join("raw")]);
        assert!(root.join("raw").is_file());
        let error = create_mount_point(&root, &root.join("raw"), NodeKind::Directory).unwrap_err();
        assert!(error.to_string().contains("regular file"), "{error}");
    }

    #[test]
    fn resolve_in_root_keeps_links_inside() {
        let directory = tempfile::tempdir().unwrap();
        let rootfs = directory.path().join("rootfs");
        let outside = directory.path().join("outside");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute link, a relative link climbing out, and a link to the
        // outside directory by its host path.
        std::os::unix::fs::symlink("/", rootfs.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", rootfs.join("up")).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("host")).unwrap();

        let cases = [
            ("abs/etc/target", rootfs.join("etc/target")),
            ("up/target-up", rootfs.join("target-up")),
            ("../../target-dots", rootfs.join("target-dots")),
        ];
        for (destination, expected) in cases {
            let resolved = resolve_in_root(
                "destination",
                &rootfs,
                Path::new(destination),
                Some(NodeKind::Directory),
            )
            .unwrap();
            let real_rootfs = rootfs.canonicalize().unwrap();
            assert!(
                resolved.real_path.starts_with(&real_rootfs),
                "{destination}: {:?}",
                resolved.real_path
            );
            assert_eq!(
                resolved.real_path,
                expected.canonicalize().unwrap(),
                "{destination}"
            );
        }
        // The link names a host path that does not exist inside the rootfs.
        let error = resolve_in_root(
            "destination",
            &rootfs,
            Path::new("host/x"),
            Some(NodeKind::Directory),
        )
        .unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{error}");
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing made outside"
        );
    }

    #[test]
    fn resolve_in_root_creates_files_and_cleans_up() {
        let directory = tempfile::tempdir().unwrap();
        let rootfs = directory.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();

        let resolved = resolve_in_root(
            "destination",
            &rootfs,
            Path::new("/a/b/file"),
            Some(NodeKind::File),
        )
        .unwrap();
        assert!(rootfs.join("a/b/file").is_file());
        assert_eq!(resolved.created.len(), 3);

        std::fs::create_dir(rootfs.join("dir")).unwrap();
        let error = resolve_in_root(
            "destination",
            &rootfs,
            Path::new("/dir"),
            Some(NodeKind::File),
        )
        .unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);

        remove_created(&resolved.created);
        assert!(!rootfs.join("a").exists());

        let error = resolve_in_root("source", &rootfs, Path::new("missing"), None).unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::NOT_FOUND);
        let error = resolve_in_root(
            "destination",
            &rootfs,
            Path::new("/.."),
            Some(NodeKind::File),
        )
        .unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);
    }
}
