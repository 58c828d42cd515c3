//! Parser of the kernel uevent wire format: an `ACTION@DEVPATH` header,
//! then NUL-separated `KEY=VALUE` fields.

use std::collections::HashMap;

use super::Uevent;

/// Prefix of the messages that udev's monitor (libudev) sends; these carry a
/// binary header, not the kernel format.
const LIBUDEV_MAGIC: &[u8] = b"libudev\0";

/// Errors from [`Uevent::parse`]. Each names the part of the message that is
/// malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UeventError {
    #[error("empty uevent message")]
    Empty,
    #[error("uevent message is from libudev, not the kernel")]
    Libudev,
    #[error("uevent message is not valid UTF-8 at byte {offset}")]
    NotUtf8 { offset: usize },
    #[error("uevent header {header:?} is not ACTION@DEVPATH")]
    Header { header: String },
    #[error("uevent field {field:?} is not KEY=VALUE")]
    Field { field: String },
    #[error("uevent is missing the {key} field")]
    MissingKey { key: &'static str },
    #[error("uevent {key} field {value:?} differs from the header value {header:?}")]
    HeaderMismatch {
        key: &'static str,
        value: String,
        header: String,
    },
    #[error("uevent DEVPATH {devpath:?} is not an absolute path without `.` or `..`")]
    Devpath { devpath: String },
    #[error("uevent {key} field {value:?} is not a decimal number")]
    Number { key: &'static str, value: String },
}

impl UeventError {
    /// Returns the ttrpc status code of a request that fails with this error.
    pub fn code(&self) -> ttrpc::Code {
        ttrpc::Code::INTERNAL
    }
}

impl Uevent {
    /// Parses one kernel uevent message as read from the netlink socket.
    ///
    /// # Errors
    /// Returns [`UeventError::Libudev`] for udev monitor messages, and another
    /// variant for any message that is not in the kernel format.
    pub fn parse(message: &[u8]) -> Result<Uevent, UeventError> {
        if message.iter().all(|&byte| byte == 0) {
            return Err(UeventError::Empty);
        }
        if message.starts_with(LIBUDEV_MAGIC) {
            return Err(UeventError::Libudev);
        }
        let text = std::str::from_utf8(message).map_err(|error| UeventError::NotUtf8 {
            offset: error.valid_up_to(),
        })?;

        let mut fields = text.split('\0');
        let header = fields.next().unwrap_or_default();
        let (header_action, header_devpath) = match header.split_once('@') {
            Some((action, devpath)) if !action.is_empty() && !devpath.is_empty() => {
                (action, devpath)
            }
            _ => {
                return Err(UeventError::Header {
                    header: header.to_string(),
                })
            }
        };

        let mut env = HashMap::new();
        for field in fields.filter(|field| !field.is_empty()) {
            match field.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    env.insert(key.to_string(), value.to_string());
                }
                _ => {
                    return Err(UeventError::Field {
                        field: field.to_string(),
                    })
                }
            }
        }

        let action = field_matching_header(&env, "ACTION", header_action)?;
        let devpath = field_matching_header(&env, "DEVPATH", header_devpath)?;
        check_devpath(&devpath)?;
        let subsystem = env
            .get("SUBSYSTEM")
            .cloned()
            .ok_or(UeventError::MissingKey { key: "SUBSYSTEM" })?;

        Ok(Uevent {
            action,
            devpath,
            subsystem,
            devname: env.get("DEVNAME").cloned(),
            devtype: env.get("DEVTYPE").cloned(),
            major: number_field(&env, "MAJOR")?,
            minor: number_field(&env, "MINOR")?,
            partn: number_field(&env, "PARTN")?,
            seqnum: number_field(&env, "SEQNUM")?,
            resize: env.get("RESIZE").map(String::as_str) == Some("1"),
            env,
        })
    }
}

/// Returns the field `key`, which must equal the header's copy when present.
fn field_matching_header(
    env: &HashMap<String, String>,
    key: &'static str,
    header: &str,
) -> Result<String, UeventError> {
    match env.get(key) {
        Some(value) if value != header => Err(UeventError::HeaderMismatch {
            key,
            value: value.clone(),
            header: header.to_string(),
        }),
        _ => Ok(header.to_string()),
    }
}

/// Rejects a DEVPATH that could leave `/sys` once joined to the sysfs root.
fn check_devpath(devpath: &str) -> Result<(), UeventError> {
    let escapes = devpath
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..");
    if !devpath.starts_with('/') || escapes {
        return Err(UeventError::Devpath {
            devpath: devpath.to_string(),
        });
    }
    Ok(())
}

fn number_field<T: std::str::FromStr>(
    env: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<T>, UeventError> {
    let Some(value) = env.get(key) else {
        return Ok(None);
    };
    // `parse` accepts a leading `+`, which the kernel never writes.
    let digits = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    match value.parse() {
        Ok(number) if digits => Ok(Some(number)),
        _ => Err(UeventError::Number {
            key,
            value: value.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(header: &str, fields: &[&str]) -> Vec<u8> {
        let mut bytes = header.as_bytes().to_vec();
        for field in fields {
            bytes.push(0);
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes.push(0);
        bytes
    }

    const VDA: &str = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio2/block/vda";

    #[test]
    fn parse_virtio_blk_add() {
        let bytes = message(
            &format!("add@{VDA}"),
            &[
                "ACTION=add",
                &format!("DEVPATH={VDA}"),
                "SUBSYSTEM=block",
                "MAJOR=254",
                "MINOR=0",
                "DEVNAME=vda",
                "DEVTYPE=disk",
                "DISKSEQ=9",
                "SEQNUM=2291",
            ],
        );
        let event = Uevent::parse(&bytes).unwrap();
        assert_eq!(event.action, "add");
        assert_eq!(event.devpath, VDA);
        assert_eq!(event.subsystem, "block");
        assert_eq!(event.devname.as_deref(), Some("vda"));
        assert_eq!(event.major, Some(254));
        assert_eq!(event.minor, Some(0));
        assert_eq!(event.seqnum, Some(2291));
        assert_eq!(event.partn, None);
        assert!(!event.resize);
        assert!(event.is_block_disk());
        assert_eq!(event.env.get("DISKSEQ").map(String::as_str), Some("9"));
    }

    #[test]
    fn parse_resize_change_and_partition() {
        let resize = message(
            &format!("change@{VDA}"),
            &[
                "ACTION=change",
                "SUBSYSTEM=block",
                "DEVTYPE=disk",
                "RESIZE=1",
            ],
        );
        let event = Uevent::parse(&resize).unwrap();
        assert!(event.resize);
        assert_eq!(event.action, "change");

        let part = message(
            &format!("add@{VDA}/vda1"),
            &[
                "SUBSYSTEM=block",
                "DEVTYPE=partition",
                "PARTN=1",
                "DEVNAME=vda1",
            ],
        );
        let event = Uevent::parse(&part).unwrap();
        assert_eq!(event.partn, Some(1));
        assert!(!event.is_block_disk());
    }

    #[test]
    fn parse_rejects_malformed() {
        let cases: Vec<(Vec<u8>, UeventError)> = vec![
            (Vec::new(), UeventError::Empty),
            (vec![0, 0], UeventError::Empty),
            (b"libudev\0\xfe\xed".to_vec(), UeventError::Libudev),
            (
                b"add@/devices/\xff".to_vec(),
                UeventError::NotUtf8 { offset: 13 },
            ),
            (
                message("add", &["SUBSYSTEM=block"]),
                UeventError::Header {
                    header: "add".into(),
                },
            ),
            (
                message("@/devices/x", &["SUBSYSTEM=block"]),
                UeventError::Header {
                    header: "@/devices/x".into(),
                },
            ),
            (
                message("add@/devices/x", &["SUBSYSTEM"]),
                UeventError::Field {
                    field: "SUBSYSTEM".into(),
                },
            ),
            (
                message("add@/devices/x", &["=block"]),
                UeventError::Field {
                    field: "=block".into(),
                },
            ),
            (
                message("add@/devices/x", &["ACTION=add"]),
                UeventError::MissingKey { key: "SUBSYSTEM" },
            ),
            (
                message("add@/devices/x", &["ACTION=remove", "SUBSYSTEM=block"]),
                UeventError::HeaderMismatch {
                    key: "ACTION",
                    value: "remove".into(),
                    header: "add".into(),
                },
            ),
            (
                message("add@/devices/../../etc", &["SUBSYSTEM=block"]),
                UeventError::Devpath {
                    devpath: "/devices/../../etc".into(),
                },
            ),
            (
                message("add@devices/x", &["SUBSYSTEM=block"]),
                UeventError::Devpath {
                    devpath: "devices/x".into(),
                },
            ),
            (
                message("add@/devices/x", &["SUBSYSTEM=block", "MAJOR=+8"]),
                UeventError::Number {
                    key: "MAJOR",
                    value: "+8".into(),
                },
            ),
            (
                message("add@/devices/x", &["SUBSYSTEM=block", "MINOR=99999999999"]),
                UeventError::Number {
                    key: "MINOR",
                    value: "99999999999".into(),
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Uevent::parse(&bytes), Err(expected), "message {bytes:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Uevent::parse(&bytes);
        }

        #[test]
        fn parsed_devpath_stays_below_sys(
            devpath in "(/(\\.{1,3}|[a-z0-9:]{1,6})){0,6}/?",
        ) {
            let bytes = message(&format!("add@{devpath}"), &["SUBSYSTEM=block"]);
            if let Ok(event) = Uevent::parse(&bytes) {
                prop_assert!(event.devpath.starts_with('/'));
                prop_assert!(!event.devpath.split('/').any(|part| part == ".."));
                prop_assert!(!event.devpath.ends_with('/'));
            }
        }

        #[test]
        fn parse_never_panics_on_near_valid(
            action in "[a-z@=]{0,8}",
            devpath in "[/a-z0-9:.=@]{0,40}",
            fields in proptest::collection::vec("[A-Z=+0-9a-z]{0,12}", 0..8),
        ) {
            let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            let _ = Uevent::parse(&message(&format!("{action}@{devpath}"), &field_refs));
        }

        #[test]
        fn parse_round_trips_fields(
            action in "(add|remove|change)",
            name in "[a-z]{1,6}",
            major in any::<u32>(),
            minor in any::<u32>(),
            seqnum in any::<u64>(),
        ) {
            let devpath = format!("/devices/virtual/block/{name}");
            let bytes = message(
                &format!("{action}@{devpath}"),
                &[
                    &format!("ACTION={action}"),
                    "SUBSYSTEM=block",
                    &format!("DEVNAME={name}"),
                    &format!("MAJOR={major}"),
                    &format!("MINOR={minor}"),
                    &format!("SEQNUM={seqnum}"),
                ],
            );
            let event = Uevent::parse(&bytes).unwrap();
            prop_assert_eq!(event.action, action);
            prop_assert_eq!(event.devpath, devpath);
            prop_assert_eq!(event.devname, Some(name));
            prop_assert_eq!(event.major, Some(major));
            prop_assert_eq!(event.minor, Some(minor));
            prop_assert_eq!(event.seqnum, Some(seqnum));
        }
    }
}
