//! Shape checks of request messages, done before any work starts so that
//! a malformed request changes nothing.

use protocols::agent::Storage;

use super::status::invalid_argument;

/// Rejects a storage with an empty `driver` or `source`, or with an enum
/// value that this protocol version does not define.
pub fn validate_storages(method: &str, storages: &[Storage]) -> ttrpc::Result<()> {
    for (index, storage) in storages.iter().enumerate() {
        if storage.driver.is_empty() {
            return Err(invalid_argument(format!(
                "{method}: storages[{index}].driver is empty; set it to blk, scsi, mmioblk \
                 or nvdimm"
            )));
        }
        if storage.source.is_empty() {
            return Err(invalid_argument(format!(
                "{method}: storages[{index}].source is empty; set it to the device's PCI path, \
                 SCSI <target>:<lun> or /dev path"
            )));
        }
        if let Some(fs_group) = storage.fs_group.as_ref() {
            if let Err(value) = fs_group.group_change_policy.enum_value() {
                return Err(invalid_argument(format!(
                    "{method}: storages[{index}].fs_group.group_change_policy {value} is not a \
                     known FSGroupChangePolicy; use 0 (Always) or 1 (OnRootMismatch)"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::FSGroup;

    fn storage() -> Storage {
        let mut storage = Storage::new();
        storage.driver = "scsi".into();
        storage.source = "0:0".into();
        storage.mount_point = "/run/kata-containers/sandbox/storage/MDow".into();
        storage
    }

    fn message(result: ttrpc::Result<()>) -> String {
        match result {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::INVALID_ARGUMENT));
                status.message
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn accepts_complete_storage() {
        assert!(validate_storages("CreateSandbox", &[storage()]).is_ok());
    }

    #[test]
    fn rejects_empty_driver_and_source() {
        let mut no_driver = storage();
        no_driver.driver.clear();
        let text = message(validate_storages("CreateSandbox", &[storage(), no_driver]));
        assert!(text.contains("storages[1].driver is empty"), "{text}");

        let mut no_source = storage();
        no_source.source.clear();
        let text = message(validate_storages("CreateContainer", &[no_source]));
        assert!(
            text.starts_with("CreateContainer: storages[0].source"),
            "{text}"
        );
    }

    #[test]
    fn rejects_unknown_fs_group_policy() {
        let mut fs_group = FSGroup::new();
        fs_group.group_id = 1000;
        fs_group.group_change_policy = protobuf::EnumOrUnknown::from_i32(7);
        let mut with_policy = storage();
        with_policy.fs_group = Some(fs_group).into();
        let text = message(validate_storages("CreateSandbox", &[with_policy]));
        assert!(text.contains("group_change_policy 7"), "{text}");
    }
}
