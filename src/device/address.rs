//! Device addresses from `Storage.driver` and `Storage.source`, parsed
//! without touching the system.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::DeviceError;

/// Maximum number of slots in a PCI path. A PCI hierarchy has at most 256
/// buses, but no virtual machine nests bridges this deep. The limit keeps a
/// hostile source from costing more than a few sysfs lookups.
pub const MAX_PCI_PATH_SLOTS: usize = 32;

/// Maximum length of any source, in bytes (Linux `PATH_MAX`).
pub const MAX_SOURCE_BYTES: usize = 4096;

/// Disk location parsed from `Storage.driver` and `Storage.source`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceAddress {
    /// `blk`: a virtio-blk disk at a PCI path.
    Pci(PciPath),
    /// `scsi`: a disk on a virtio-scsi controller.
    Scsi(ScsiAddress),
    /// `nvdimm`: a persistent memory disk.
    Pmem(PmemName),
    /// `mmioblk`: a `/dev` path.
    DevPath(PathBuf),
}

/// One PCI device in a [`PciPath`]: slot 0x00-0x1f, function 0-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciSlot {
    pub slot: u8,
    pub function: u8,
}

/// Slots from the root bus down to a device, e.g. `02/00`: the device in slot
/// 0 of the bus behind the bridge or root port in slot 2 of the root bus.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciPath(pub Vec<PciSlot>);

/// A virtio-scsi target and LUN, `<target>:<lun>` (channel 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScsiAddress {
    pub target: u32,
    pub lun: u64,
}

/// A persistent memory disk number: `N` of `/dev/pmemN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PmemName(pub u32);

impl DeviceAddress {
    /// Parses a storage's driver and source without touching the system.
    ///
    /// # Errors
    /// [`DeviceError::InvalidSource`] for an unknown driver or a source that
    /// does not parse for its driver.
    pub fn parse(driver: &str, source: &str) -> Result<DeviceAddress, DeviceError> {
        let invalid = |reason: &str| DeviceError::InvalidSource {
            driver: driver.to_string(),
            source_text: source.chars().take(256).collect(),
            reason: reason.to_string(),
        };
        if source.len() > MAX_SOURCE_BYTES {
            return Err(invalid("the source is longer than 4096 bytes"));
        }
        match driver {
            "blk" => PciPath::parse(source)
                .map(DeviceAddress::Pci)
                .map_err(invalid),
            "scsi" => ScsiAddress::parse(source)
                .map(DeviceAddress::Scsi)
                .map_err(invalid),
            "nvdimm" => PmemName::parse(source)
                .map(DeviceAddress::Pmem)
                .map_err(invalid),
            "mmioblk" => parse_dev_path(source)
                .map(DeviceAddress::DevPath)
                .map_err(invalid),
            _ => Err(invalid(
                "unknown driver; expected blk, scsi, mmioblk or nvdimm",
            )),
        }
    }

    /// Returns the `Storage.driver` value of this address.
    pub fn driver(&self) -> &'static str {
        match self {
            DeviceAddress::Pci(_) => "blk",
            DeviceAddress::Scsi(_) => "scsi",
            DeviceAddress::Pmem(_) => "nvdimm",
            DeviceAddress::DevPath(_) => "mmioblk",
        }
    }
}

/// Formats the address as a `Storage.source`.
impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAddress::Pci(path) => path.fmt(f),
            DeviceAddress::Scsi(address) => address.fmt(f),
            DeviceAddress::Pmem(name) => write!(f, "/dev/{name}"),
            DeviceAddress::DevPath(path) => path.display().fmt(f),
        }
    }
}

impl PciSlot {
    /// Parses `SS` or `SS.F`: two hex digits of slot, one digit of function.
    pub fn parse(text: &str) -> Result<PciSlot, &'static str> {
        let (slot_text, function_text) = match text.split_once('.') {
            Some((slot, function)) => (slot, Some(function)),
            None => (text, None),
        };
        if slot_text.len() != 2 || !slot_text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err("each PCI slot must be two hex digits, e.g. 02/00");
        }
        let slot = u8::from_str_radix(slot_text, 16).map_err(|_| "invalid PCI slot")?;
        if slot > 0x1f {
            return Err("a PCI slot must be in 00-1f");
        }
        let function = match function_text {
            None => 0,
            Some(digit) if digit.len() == 1 && matches!(digit.as_bytes()[0], b'0'..=b'7') => {
                digit.as_bytes()[0] - b'0'
            }
            Some(_) => return Err("a PCI function must be one digit in 0-7"),
        };
        Ok(PciSlot { slot, function })
    }
}

impl fmt::Display for PciSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.slot)?;
        if self.function != 0 {
            write!(f, ".{}", self.function)?;
        }
        Ok(())
    }
}

impl PciPath {
    /// Parses slots separated by `/`, e.g. `02/00` or `02/01.1/00`.
    pub fn parse(text: &str) -> Result<PciPath, &'static str> {
        if text.is_empty() {
            return Err("a PCI path must not be empty");
        }
        let slots = text
            .split('/')
            .map(PciSlot::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if slots.len() > MAX_PCI_PATH_SLOTS {
            return Err("a PCI path must have at most 32 slots");
        }
        Ok(PciPath(slots))
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, slot) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("/")?;
            }
            slot.fmt(f)?;
        }
        Ok(())
    }
}

impl ScsiAddress {
    /// Parses `<target>:<lun>`, both decimal.
    pub fn parse(text: &str) -> Result<ScsiAddress, &'static str> {
        const FORMAT: &str = "a SCSI address must be <target>:<lun> in decimal, e.g. 0:1";
        let (target, lun) = text.split_once(':').ok_or(FORMAT)?;
        Ok(ScsiAddress {
            target: parse_decimal(target).ok_or(FORMAT)?,
            lun: parse_decimal(lun).ok_or(FORMAT)?,
        })
    }
}

impl fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.target, self.lun)
    }
}

impl PmemName {
    /// Parses `/dev/pmemN` or `pmemN`.
    pub fn parse(text: &str) -> Result<PmemName, &'static str> {
        const FORMAT: &str = "an nvdimm source must be /dev/pmemN or pmemN";
        let name = text.strip_prefix("/dev/").unwrap_or(text);
        let number = name.strip_prefix("pmem").ok_or(FORMAT)?;
        parse_decimal(number).map(PmemName).ok_or(FORMAT)
    }
}

impl fmt::Display for PmemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pmem{}", self.0)
    }
}

/// Parses unsigned decimal digits only: no sign, no spaces, no empty text.
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Checks an `mmioblk` source: an absolute path below `/dev` with no `.` or
/// `..` component.
fn parse_dev_path(text: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(text);
    let relative = path
        .strip_prefix("/dev")
        .map_err(|_| "an mmioblk source must be a path below /dev")?;
    let plain = relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if relative.as_os_str().is_empty() || !plain || text.contains("/./") || text.ends_with("/.") {
        return Err("an mmioblk source must name a node below /dev without . or ..");
    }
    if text.contains('\0') {
        return Err("an mmioblk source must not contain NUL");
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(slot: u8, function: u8) -> PciSlot {
        PciSlot { slot, function }
    }

    #[test]
    fn pci_path_parses() {
        assert_eq!(
            PciPath::parse("02/00"),
            Ok(PciPath(vec![slot(2, 0), slot(0, 0)]))
        );
        assert_eq!(
            PciPath::parse("02/01.3/1f"),
            Ok(PciPath(vec![slot(2, 0), slot(1, 3), slot(0x1f, 0)]))
        );
        assert_eq!(PciPath::parse("1F.7"), Ok(PciPath(vec![slot(0x1f, 7)])));
        assert_eq!(PciPath::parse("02.0/00").unwrap().to_string(), "02/00");
    }

    #[test]
    fn pci_path_rejects_bad_sources() {
        let too_long = vec!["00"; MAX_PCI_PATH_SLOTS + 1].join("/");
        for text in [
            "",
            "02//00",
            "/02",
            "02/",
            "zz",
            "2",
            "002",
            "20",
            "02.8",
            "02.",
            "02.00",
            "+2",
            "02/-1",
            too_long.as_str(),
        ] {
            assert!(PciPath::parse(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn scsi_address_parses() {
        assert_eq!(
            ScsiAddress::parse("0:1"),
            Ok(ScsiAddress { target: 0, lun: 1 })
        );
        assert_eq!(
            ScsiAddress::parse("255:16383"),
            Ok(ScsiAddress {
                target: 255,
                lun: 16383
            })
        );
        for text in [
            "", "0:", ":1", "-1:2", "1:-2", "+1:2", "0:1:2", " 0:1", "a:b", "0",
        ] {
            assert!(ScsiAddress::parse(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn pmem_and_dev_path_parse() {
        assert_eq!(PmemName::parse("/dev/pmem3"), Ok(PmemName(3)));
        assert_eq!(PmemName::parse("pmem0"), Ok(PmemName(0)));
        for text in ["pmem", "/dev/pmemx", "/dev/vda", "/tmp/pmem0", "pmem-1"] {
            assert!(PmemName::parse(text).is_err(), "accepted {text:?}");
        }
        assert_eq!(
            parse_dev_path("/dev/loop3"),
            Ok(PathBuf::from("/dev/loop3"))
        );
        assert_eq!(
            parse_dev_path("/dev/mapper/vg-lv"),
            Ok(PathBuf::from("/dev/mapper/vg-lv"))
        );
        for text in [
            "/dev",
            "/dev/",
            "dev/vda",
            "/tmp/vda",
            "/dev/../etc/passwd",
            "/dev/./vda",
            "/devx",
        ] {
            assert!(parse_dev_path(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn parse_maps_driver_and_rejects_unknown() {
        assert_eq!(
            DeviceAddress::parse("scsi", "0:1").unwrap(),
            DeviceAddress::Scsi(ScsiAddress { target: 0, lun: 1 })
        );
        assert_eq!(
            DeviceAddress::parse("blk", "02/00").unwrap().to_string(),
            "02/00"
        );
        assert_eq!(
            DeviceAddress::parse("nvdimm", "pmem1").unwrap().to_string(),
            "/dev/pmem1"
        );
        for (driver, source) in [
            ("virtio-fs", "x"),
            ("blk", "zz"),
            ("scsi", "0:"),
            ("mmioblk", "vda"),
        ] {
            let error = DeviceAddress::parse(driver, source).unwrap_err();
            assert_eq!(
                error.code(),
                ttrpc::Code::INVALID_ARGUMENT,
                "{driver} {source}"
            );
        }
        let long = format!("/dev/{}", "a".repeat(MAX_SOURCE_BYTES));
        assert!(DeviceAddress::parse("mmioblk", &long).is_err());
    }

    proptest! {
        #[test]
        fn pci_path_round_trips(slots in proptest::collection::vec((0u8..=0x1f, 0u8..=7), 1..=MAX_PCI_PATH_SLOTS)) {
            let path = PciPath(slots.iter().map(|&(s, f)| slot(s, f)).collect());
            prop_assert_eq!(PciPath::parse(&path.to_string()), Ok(path));
        }

        #[test]
        fn pci_path_parse_never_panics(text in "[0-9a-fA-F./+-]{0,40}") {
            if let Ok(path) = PciPath::parse(&text) {
                prop_assert!(path.0.iter().all(|s| s.slot <= 0x1f && s.function <= 7));
                prop_assert_eq!(PciPath::parse(&path.to_string()), Ok(path));
            }
        }

        #[test]
        fn scsi_address_round_trips(target in any::<u32>(), lun in any::<u64>()) {
            let address = ScsiAddress { target, lun };
            prop_assert_eq!(ScsiAddress::parse(&address.to_string()), Ok(address));
        }

        #[test]
        fn scsi_address_parse_never_panics(text in "[0-9:+ -]{0,30}") {
            if let Ok(address) = ScsiAddress::parse(&text) {
                let (target, lun) = text.split_once(':').unwrap();
                prop_assert_eq!(target.parse::<u32>().ok(), Some(address.target));
                prop_assert_eq!(lun.parse::<u64>().ok(), Some(address.lun));
                prop_assert!(!text.contains(['-', '+', ' ']));
            }
        }
    }
}
