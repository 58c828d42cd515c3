//! The manager's records of which storage is mounted where, which owners
//! reference it and which binds each container has, and their persistence
//! in the state file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ManagedVolume, Owner, StorageError};

/// Key under which the sandbox's references are stored.
const SANDBOX_KEY: &str = "";

/// One mounted storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRecord {
    pub volume: ManagedVolume,
    /// Kept until DestroySandbox even without owners.
    pub shared: bool,
    /// Owner keys: a container id, or "" for the sandbox.
    pub owners: BTreeSet<String>,
    /// Paths the manager created for the mount point, outermost first;
    /// they are removed after the unmount.
    pub created: Vec<PathBuf>,
    /// Per-mount flags of the storage mount, which its binds keep.
    pub flags: u64,
}

/// A storage (or a path inside it) bound into a container rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRecord {
    /// Mount point of the storage the bind comes from.
    pub storage: PathBuf,
    /// Bind mount point, as the kernel resolved it.
    pub target: PathBuf,
    /// Paths created inside the rootfs for the target, outermost first.
    pub created: Vec<PathBuf>,
}

/// All records of the manager, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub storages: BTreeMap<PathBuf, StorageRecord>,
    /// Binds by container id.
    pub binds: BTreeMap<String, Vec<BindRecord>>,
}

/// Returns the key an owner's reference is stored under.
pub fn owner_key(owner: &Owner) -> String {
    match owner {
        Owner::Sandbox => SANDBOX_KEY.to_string(),
        Owner::Container(id) => id.clone(),
    }
}

impl State {
    /// Adds `owner`'s reference to the storage at `mount_point`; returns
    /// whether the reference is new.
    pub fn add_owner(&mut self, mount_point: &Path, owner: &Owner, shared: bool) -> bool {
        let Some(record) = self.storages.get_mut(mount_point) else {
            return false;
        };
        record.shared |= shared;
        record.owners.insert(owner_key(owner))
    }

    /// Drops `owner`'s reference to one storage; returns whether the storage
    /// is now unused and should be unmounted.
    pub fn drop_owner(&mut self, mount_point: &Path, owner: &Owner) -> bool {
        let Some(record) = self.storages.get_mut(mount_point) else {
            return false;
        };
        record.owners.remove(&owner_key(owner));
        record.owners.is_empty() && !record.shared
    }

    /// Returns true when the storage at `mount_point` has no owner.
    pub fn is_unowned(&self, mount_point: &Path) -> bool {
        let record = self.storages.get(mount_point);
        record.is_some_and(|record| record.owners.is_empty())
    }

    /// Returns the mount points of the storages that `owner` references.
    pub fn referenced_by(&self, owner: &Owner) -> Vec<PathBuf> {
        let key = owner_key(owner);
        let referenced = self
            .storages
            .iter()
            .filter(|(_, record)| record.owners.contains(&key));
        referenced
            .map(|(mount_point, _)| mount_point.clone())
            .collect()
    }

    /// Finds the storage that `path` is, or lies inside, directly or through
    /// a container bind. The longest match wins.
    pub fn lookup(&self, path: &Path) -> Option<&StorageRecord> {
        let by_mount = self
            .storages
            .keys()
            .filter(|mount_point| path.starts_with(mount_point))
            .map(|mount_point| (mount_point.components().count(), mount_point.clone()));
        let by_bind = self
            .binds
            .values()
            .flatten()
            .filter(|bind| path.starts_with(&bind.target))
            .map(|bind| (bind.target.components().count(), bind.storage.clone()));
        let (_, storage) = by_mount.chain(by_bind).max_by_key(|(depth, _)| *depth)?;
        self.storages.get(&storage)
    }

    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StorageError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State::default())
            }
            Err(error) => {
                return Err(StorageError::LoadState {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        serde_json::from_slice(&text).map_err(|error| StorageError::ParseState {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Writes the state file atomically: a temporary file in the same
    /// directory, fsync, rename over the old file, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        let fail = |error: std::io::Error| StorageError::SaveState {
            path: path.to_path_buf(),
            error,
        };
        let directory = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(directory).map_err(fail)?;
        let text = serde_json::to_vec_pretty(self).map_err(|error| fail(error.into()))?;

        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file = std::fs::File::create(&temporary).map_err(fail)?;
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
            let _ = std::fs::remove_file(&temporary);
            return Err(fail(error));
        }
        std::fs::File::open(directory)
            .and_then(|directory| directory.sync_all())
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mount_point: &str) -> StorageRecord {
        StorageRecord {
            volume: ManagedVolume {
                mount_point: PathBuf::from(mount_point),
                driver: "mmioblk".into(),
                source: "/dev/loop9".into(),
                fstype: "ext4".into(),
                dev_path: PathBuf::from("/dev/loop9"),
                major: 7,
                minor: 9,
            },
            shared: false,
            owners: BTreeSet::new(),
            created: Vec::new(),
            flags: 0,
        }
    }

    /// Drops `owner` everywhere, as RemoveContainer does, and returns the
    /// storages left unused.
    fn drop_everywhere(state: &mut State, owner: &Owner) -> Vec<PathBuf> {
        let referenced = state.referenced_by(owner);
        referenced
            .into_iter()
            .filter(|mount_point| state.drop_owner(mount_point, owner))
            .collect()
    }

    #[test]
    fn refcount_unmounts_after_last_owner() {
        let mut state = State::default();
        let mount_point = PathBuf::from("/s/a");
        state.storages.insert(mount_point.clone(), record("/s/a"));
        let first = Owner::Container("c1".into());
        let second = Owner::Container("c2".into());

        assert!(state.add_owner(&mount_point, &first, false));
        assert!(state.add_owner(&mount_point, &second, false));
        assert!(
            !state.add_owner(&mount_point, &second, false),
            "a repeat is not a new reference"
        );

        assert!(drop_everywhere(&mut state, &first).is_empty());
        assert_eq!(
            drop_everywhere(&mut state, &second),
            vec![mount_point.clone()]
        );
    }

    #[test]
    fn shared_storage_outlives_its_owners() {
        let mut state = State::default();
        let mount_point = PathBuf::from("/s/a");
        state.storages.insert(mount_point.clone(), record("/s/a"));
        let owner = Owner::Container("c1".into());

        state.add_owner(&mount_point, &owner, true);

        assert!(drop_everywhere(&mut state, &owner).is_empty());
        assert!(state.storages[&mount_point].owners.is_empty());
    }

    #[test]
    fn sandbox_reference_keeps_storage() {
        let mut state = State::default();
        let mount_point = PathBuf::from("/s/a");
        state.storages.insert(mount_point.clone(), record("/s/a"));
        let container = Owner::Container("c1".into());
        state.add_owner(&mount_point, &Owner::Sandbox, false);
        state.add_owner(&mount_point, &container, false);

        assert!(drop_everywhere(&mut state, &container).is_empty());
        assert_eq!(
            drop_everywhere(&mut state, &Owner::Sandbox),
            vec![mount_point]
        );
    }

    #[test]
    fn lookup_follows_binds_and_prefers_longest() {
        let mut state = State::default();
        state.storages.insert(PathBuf::from("/s/a"), record("/s/a"));
        state
            .storages
            .insert(PathBuf::from("/s/a/b"), record("/s/a/b"));
        state.binds.insert(
            "c1".into(),
            vec![BindRecord {
                storage: PathBuf::from("/s/a/b"),
                target: PathBuf::from("/c1/rootfs/data"),
                created: Vec::new(),
            }],
        );

        let found = |path: &str| {
            state
                .lookup(Path::new(path))
                .map(|r| r.volume.mount_point.clone())
        };
        assert_eq!(found("/s/a/x"), Some(PathBuf::from("/s/a")));
        assert_eq!(found("/s/a/b/x"), Some(PathBuf::from("/s/a/b")));
        assert_eq!(found("/c1/rootfs/data/file"), Some(PathBuf::from("/s/a/b")));
        assert_eq!(
            found("/s/ab"),
            None,
            "a sibling with a common prefix is not inside"
        );
        assert_eq!(found("/c1/rootfs"), None);
    }

    #[test]
    fn save_then_load_round_trips() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested/state.json");
        let mut state = State::default();
        state.storages.insert(PathBuf::from("/s/a"), record("/s/a"));
        state.add_owner(Path::new("/s/a"), &Owner::Sandbox, true);

        state.save(&path).unwrap();

        assert_eq!(State::load(&path).unwrap(), state);
        assert!(!directory.path().join("nested/state.json.tmp").exists());
        assert_eq!(
            State::load(&directory.path().join("missing")).unwrap(),
            State::default()
        );
    }
}
