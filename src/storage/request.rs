//! A `Storage` message checked and parsed before anything is touched.

use std::path::{Path, PathBuf};

use protocols::agent::Storage;
use protocols::types::FSGroupChangePolicy;

use super::fsgroup::ChangePolicy;
use super::options::{MountOptions, OptionContext};
use super::{path, probe, StorageError};
use crate::device::DeviceAddress;

/// A validated storage request.
#[derive(Debug, Clone)]
pub struct StorageRequest {
    pub driver: String,
    pub source: String,
    pub address: DeviceAddress,
    pub mount_point: PathBuf,
    /// Empty for a raw block volume.
    pub fstype: String,
    pub options: MountOptions,
    /// `Storage.options` joined with commas, for messages.
    pub options_text: String,
    pub fs_group: Option<(u32, ChangePolicy)>,
    pub shared: bool,
}

impl StorageRequest {
    /// Validates `storage` against the storage root without side effects.
    pub fn parse(storage: &Storage, root: &Path) -> Result<StorageRequest, StorageError> {
        let address = DeviceAddress::parse(&storage.driver, &storage.source)?;
        let mount_point = path::validate_mount_point(root, &storage.mount_point)?;
        if !storage.fstype.is_empty() {
            probe::check_fstype(&storage.fstype)?;
        }
        let options = MountOptions::parse(&storage.options, OptionContext::Device)?;
        let fs_group = match storage.fs_group.as_ref() {
            None => None,
            Some(group) => {
                let policy = match group.group_change_policy.enum_value() {
                    Ok(FSGroupChangePolicy::Always) => ChangePolicy::Always,
                    Ok(FSGroupChangePolicy::OnRootMismatch) => ChangePolicy::OnRootMismatch,
                    Err(value) => {
                        return Err(StorageError::Invalid {
                            field: "fs_group.group_change_policy",
                            value: value.to_string(),
                            reason: "expected 0 (Always) or 1 (OnRootMismatch)".into(),
                        })
                    }
                };
                Some((group.group_id, policy))
            }
        };
        Ok(StorageRequest {
            driver: storage.driver.clone(),
            source: storage.source.clone(),
            address,
            mount_point,
            fstype: storage.fstype.clone(),
            options,
            options_text: storage.options.join(","),
            fs_group,
            shared: storage.shared,
        })
    }

    /// Returns true for a raw block volume, where no filesystem is mounted.
    pub fn is_raw_block(&self) -> bool {
        self.fstype.is_empty()
    }
}
