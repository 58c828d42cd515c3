//! Manager tests through [`RecordingMounter`]: the mount calls and the
//! refcount, without root.
//!
//! Where a device is needed the tests use raw block storages (empty
//! fstype), because those need no superblock read. Any block device node in
//! /dev works, since nothing is really mounted.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use protocols::agent::Storage;
use protocols::oci::{Mount, Root, Spec};

use super::mounter::{MountCall, RecordingMounter};
use super::request::StorageRequest;
use super::{StorageConfig, StorageManager};
use crate::device::{BlockDevice, DeviceRegistry};

const TIMEOUT: Duration = Duration::from_secs(1);

struct Fixture {
    directory: tempfile::TempDir,
    mounter: Arc<RecordingMounter>,
    manager: Arc<StorageManager>,
}

impl Fixture {
    fn new() -> Fixture {
        let directory = tempfile::tempdir().unwrap();
        let mounter = Arc::new(RecordingMounter::default());
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let registry = DeviceRegistry::new(logger.clone(), "/sys".into(), "/dev".into());
        let config = StorageConfig {
            root: directory.path().join("storage"),
            state_file: directory.path().join("state.json"),
        };
        let manager =
            StorageManager::with_mounter(logger, config, registry, mounter.clone()).unwrap();
        Fixture {
            directory,
            mounter,
            manager,
        }
    }

    fn root(&self) -> PathBuf {
        self.directory.path().join("storage")
    }

    fn rootfs(&self, container_id: &str) -> PathBuf {
        let rootfs = self.directory.path().join(container_id);
        std::fs::create_dir_all(&rootfs).unwrap();
        rootfs
    }

    fn fail_next(&self, outcomes: &[Option<Errno>]) {
        self.mounter
            .failures
            .lock()
            .unwrap()
            .extend(outcomes.iter().copied());
    }

    fn saved_storages(&self) -> usize {
        let state = super::state::State::load(&self.directory.path().join("state.json")).unwrap();
        state.storages.len()
    }
}

/// Any block device node, or `None` (the test then skips) when /dev has none.
fn any_block_device() -> Option<PathBuf> {
    std::fs::read_dir("/dev")
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_block_device())
        })
}

fn raw_storage(device: &Path, mount_point: &Path) -> Storage {
    Storage {
        driver: "mmioblk".into(),
        source: device.display().to_string(),
        mount_point: mount_point.display().to_string(),
        ..Default::default()
    }
}

fn spec(rootfs: &Path, source: &Path, destination: &str, options: &[&str]) -> Spec {
    let mut mount = Mount::new();
    mount.source = source.display().to_string();
    mount.destination = destination.into();
    mount.options = options.iter().map(|option| option.to_string()).collect();
    let mut root = Root::new();
    root.Path = rootfs.display().to_string();
    let mut spec = Spec::new();
    spec.Root = Some(root).into();
    spec.Mounts.push(mount);
    spec
}

fn flags_of(call: &MountCall) -> MsFlags {
    match call {
        MountCall::Mount { flags, .. } => *flags,
        MountCall::Umount { .. } => panic!("expected a mount call, got {call:?}"),
    }
}

fn umount_targets(calls: &[MountCall]) -> Vec<PathBuf> {
    calls
        .iter()
        .filter_map(|call| match call {
            MountCall::Umount { target, .. } => Some(target.clone()),
            MountCall::Mount { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn refcount_mounts_once_and_unmounts_after_last() {
    let Some(device) = any_block_device() else {
        eprintln!("skipping: no block device node in /dev");
        return;
    };
    let fixture = Fixture::new();
    let mount_point = fixture.root().join("raw");
    let storage = raw_storage(&device, &mount_point);

    let rootfs1 = fixture.rootfs("c1");
    let spec1 = spec(&rootfs1, &mount_point, "/dev/xvdb", &["ro"]);
    fixture
        .manager
        .create_container("c1", std::slice::from_ref(&storage), Some(&spec1), TIMEOUT)
        .await
        .unwrap();
    let calls = fixture.mounter.calls();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(
        calls[0],
        MountCall::Mount {
            source: Some(device.clone()),
            target: mount_point.clone(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        }
    );
    assert_eq!(
        flags_of(&calls[1]),
        MsFlags::MS_BIND,
        "bind into the rootfs"
    );
    assert_eq!(
        flags_of(&calls[2]),
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY
    );
    assert_eq!(
        flags_of(&calls[3]),
        MsFlags::MS_PRIVATE,
        "default propagation"
    );
    assert!(
        rootfs1.join("dev/xvdb").is_file(),
        "a file target for a file source"
    );

    let rootfs2 = fixture.rootfs("c2");
    let spec2 = spec(&rootfs2, &mount_point, "/dev/xvdb", &["rslave"]);
    fixture
        .manager
        .create_container("c2", std::slice::from_ref(&storage), Some(&spec2), TIMEOUT)
        .await
        .unwrap();
    let calls = fixture.mounter.calls();
    assert_eq!(calls.len(), 6, "no second device mount: {calls:#?}");
    assert_eq!(flags_of(&calls[5]), MsFlags::MS_SLAVE | MsFlags::MS_REC);

    fixture.manager.remove_container("c1").await.unwrap();
    let real_rootfs1 = rootfs1.canonicalize().unwrap();
    assert_eq!(
        umount_targets(&fixture.mounter.calls()),
        vec![real_rootfs1.join("dev/xvdb")]
    );
    assert!(
        fixture.manager.lookup_path(&mount_point).is_some(),
        "still used by c2"
    );
    assert!(!rootfs1.join("dev").exists(), "created bind target removed");

    fixture.manager.remove_container("c2").await.unwrap();
    let unmounted = umount_targets(&fixture.mounter.calls());
    assert_eq!(unmounted.len(), 3);
    assert_eq!(unmounted[2], mount_point);
    assert!(fixture.manager.lookup_path(&mount_point).is_none());
    assert!(!mount_point.exists(), "mount point removed");
    assert_eq!(fixture.saved_storages(), 0);
}

#[tokio::test]
async fn failed_mount_leaves_nothing() {
    let Some(device) = any_block_device() else {
        eprintln!("skipping: no block device node in /dev");
        return;
    };
    let fixture = Fixture::new();
    let first = fixture.root().join("first");
    let second = fixture.root().join("nested/second");
    // A shared storage is kept past its owners, but not when the request
    // that mounted it fails.
    let shared = Storage {
        shared: true,
        ..raw_storage(&device, &first)
    };
    let storages = [shared, raw_storage(&device, &second)];
    fixture.fail_next(&[None, Some(Errno::EPERM)]);

    let error = fixture
        .manager
        .add_storages(&super::Owner::Sandbox, &storages, TIMEOUT)
        .await
        .unwrap_err();

    assert_eq!(error.code(), ttrpc::Code::INTERNAL, "{error}");
    assert_eq!(
        umount_targets(&fixture.mounter.calls()),
        vec![first.clone()],
        "first undone"
    );
    assert!(!first.exists());
    assert!(!fixture.root().join("nested").exists());
    assert!(fixture.manager.state_snapshot().storages.is_empty());
    assert_eq!(fixture.saved_storages(), 0);

    fixture
        .manager
        .add_storages(&super::Owner::Sandbox, &storages, TIMEOUT)
        .await
        .unwrap();
    assert!(second.is_file(), "a retry does the whole work again");
    assert_eq!(fixture.saved_storages(), 2);
}

#[tokio::test]
async fn failed_bind_releases_new_references() {
    let Some(device) = any_block_device() else {
        eprintln!("skipping: no block device node in /dev");
        return;
    };
    let fixture = Fixture::new();
    let mount_point = fixture.root().join("raw");
    let rootfs = fixture.rootfs("c1");
    let container_spec = spec(&rootfs, &mount_point, "/data/disk", &[]);
    fixture.fail_next(&[None, Some(Errno::EACCES)]);

    let result = fixture
        .manager
        .create_container(
            "c1",
            &[raw_storage(&device, &mount_point)],
            Some(&container_spec),
            TIMEOUT,
        )
        .await;

    assert!(result.is_err());
    assert_eq!(
        umount_targets(&fixture.mounter.calls()),
        vec![mount_point.clone()]
    );
    assert!(!rootfs.join("data").exists(), "bind target removed");
    assert!(!mount_point.exists());
    assert!(fixture.manager.state_snapshot().binds.is_empty());
    assert_eq!(fixture.saved_storages(), 0);
}

#[tokio::test]
async fn bad_request_touches_nothing() {
    let fixture = Fixture::new();
    let valid_device = any_block_device().unwrap_or_else(|| PathBuf::from("/dev/loop0"));
    let cases = [
        (
            "unknown driver",
            Storage {
                driver: "floppy".into(),
                ..raw_storage(&valid_device, &fixture.root().join("a"))
            },
        ),
        (
            "escape",
            raw_storage(&valid_device, &fixture.root().join("../escape")),
        ),
        (
            "conflict",
            Storage {
                options: vec!["ro".into(), "rw".into()],
                ..raw_storage(&valid_device, &fixture.root().join("b"))
            },
        ),
        (
            "bind option",
            Storage {
                options: vec!["bind".into()],
                ..raw_storage(&valid_device, &fixture.root().join("c"))
            },
        ),
        (
            "fstype",
            Storage {
                fstype: "nosuchfs".into(),
                ..raw_storage(&valid_device, &fixture.root().join("d"))
            },
        ),
    ];
    for (name, storage) in cases {
        // A valid storage first: it must not be mounted either.
        let storages = [
            raw_storage(&valid_device, &fixture.root().join("good")),
            storage,
        ];
        let error = fixture
            .manager
            .add_storages(&super::Owner::Sandbox, &storages, TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            ttrpc::Code::INVALID_ARGUMENT,
            "{name}: {error}"
        );
    }
    assert!(fixture.mounter.calls().is_empty());
    assert!(!fixture.root().join("good").exists());
    assert!(!fixture.directory.path().join("escape").exists());
}

#[tokio::test]
async fn read_only_fs_group_mounts_rw_then_remounts() {
    let fixture = Fixture::new();
    let mount_point = fixture.root().join("vol");
    std::fs::create_dir_all(&mount_point).unwrap();
    let mut group = protocols::agent::FSGroup::new();
    group.group_id = nix::unistd::getegid().as_raw();
    let storage = Storage {
        driver: "mmioblk".into(),
        source: "/dev/fake".into(),
        fstype: "ext4".into(),
        options: vec!["ro,nosuid,discard".into(), "rshared".into()],
        mount_point: mount_point.display().to_string(),
        fs_group: Some(group).into(),
        ..Default::default()
    };
    let request = StorageRequest::parse(&storage, &fixture.root()).unwrap();
    let device = BlockDevice {
        name: "fake".into(),
        dev_path: "/dev/fake".into(),
        major: 7,
        minor: 99,
        sysfs_path: "/sys/dev/block/7:99".into(),
    };

    fixture.manager.mount_storage(&request, &device).unwrap();

    let calls = fixture.mounter.calls();
    assert_eq!(
        calls[0],
        MountCall::Mount {
            source: Some("/dev/fake".into()),
            target: mount_point.clone(),
            fstype: Some("ext4".into()),
            flags: MsFlags::MS_NOSUID,
            data: Some("discard".into()),
        },
        "mounted read-write for the ownership change"
    );
    assert_eq!(flags_of(&calls[1]), MsFlags::MS_SHARED | MsFlags::MS_REC);
    assert_eq!(
        flags_of(&calls[2]),
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
    );
    assert_eq!(calls.len(), 3);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&mount_point).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o2050,
        0o2050,
        "group read, search and setgid on the root"
    );
}

#[tokio::test]
async fn busy_unmount_falls_back_to_detach() {
    let fixture = Fixture::new();
    fixture.fail_next(&[Some(Errno::EBUSY), None]);

    fixture.manager.unmount(Path::new("/busy")).unwrap();

    let calls = fixture.mounter.calls();
    let flags: Vec<MntFlags> = calls
        .iter()
        .map(|call| match call {
            MountCall::Umount { flags, .. } => *flags,
            MountCall::Mount { .. } => panic!("unexpected mount"),
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            MntFlags::UMOUNT_NOFOLLOW,
            MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH
        ]
    );
}

#[tokio::test]
async fn storage_lock_serializes_one_storage_only() {
    let Some(device) = any_block_device() else {
        eprintln!("skipping: no block device node in /dev");
        return;
    };
    let fixture = Fixture::new();
    let locked = fixture.root().join("locked");
    let free = fixture.root().join("free");
    let guard = fixture.manager.lock_storage(&locked).await;

    let manager = fixture.manager.clone();
    let locked_storage = [raw_storage(&device, &locked)];
    let blocked = tokio::spawn(async move {
        manager
            .add_storages(&super::Owner::Sandbox, &locked_storage, TIMEOUT)
            .await
    });
    let free_storage = [raw_storage(&device, &free)];
    let other = fixture
        .manager
        .add_storages(&super::Owner::Sandbox, &free_storage, TIMEOUT);
    tokio::time::timeout(Duration::from_secs(5), other)
        .await
        .expect("another storage proceeds while one is locked")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !blocked.is_finished(),
        "the locked storage waits for its lock"
    );
    assert!(!locked.exists());

    drop(guard);
    tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(fixture.manager.lookup_path(&locked).is_some());
}

#[tokio::test]
async fn destroy_sandbox_unmounts_every_storage() {
    let Some(device) = any_block_device() else {
        eprintln!("skipping: no block device node in /dev");
        return;
    };
    let fixture = Fixture::new();
    // More storages than are unmounted at once, so several batches run.
    let mount_points: Vec<PathBuf> = (0..40)
        .map(|index| fixture.root().join(format!("raw{index}")))
        .collect();
    let storages: Vec<Storage> = mount_points
        .iter()
        .map(|mount_point| raw_storage(&device, mount_point))
        .collect();
    fixture
        .manager
        .add_storages(&super::Owner::Sandbox, &storages, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(fixture.saved_storages(), 40);

    fixture.manager.destroy_sandbox().await.unwrap();
    let mut unmounted = umount_targets(&fixture.mounter.calls());
    unmounted.sort();
    let mut expected = mount_points.clone();
    expected.sort();
    assert_eq!(unmounted, expected, "each storage unmounted exactly once");
    for mount_point in &mount_points {
        assert!(fixture.manager.lookup_path(mount_point).is_none());
        assert!(
            !mount_point.exists(),
            "{} left behind",
            mount_point.display()
        );
    }
    assert_eq!(fixture.saved_storages(), 0);
}
