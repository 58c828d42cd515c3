//! `direct-volume`: records of direct-assigned volumes on the host, in the
//! layout of `kata-runtime direct-volume` (Kata Containers 3.x Go runtime).
//!
//! Each volume has the directory `<root>/<name>`, where `<name>` is the
//! host volume path in base64url *with* `=` padding (Go's
//! `base64.URLEncoding`), holding `mountInfo.json`. `attach --volume-path`
//! adds [`GUEST_MOUNT_POINT_FILE`] beside it, which `stats` and `resize`
//! read to find the volume in the guest.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::error::CliError;
use crate::size::parse_size;
use crate::volume;
use crate::Session;

/// Root of the records, as the upstream runtime defines it.
pub const DEFAULT_ROOT: &str = "/run/kata-containers/shared/direct-volumes";
/// Record written by `direct-volume add`, named as upstream names it.
pub const MOUNT_INFO_FILE: &str = "mountInfo.json";
/// Guest mount point of the volume, one line, written by `attach --volume-path`.
///
/// NOTE: the upstream runtime takes the first file other than
/// `mountInfo.json` in a volume directory as the sandbox id (files are
/// listed in byte order). This name starts with `g`, so it sorts after the
/// 64-digit lowercase hex sandbox ids of Kubernetes pods, but a sandbox id
/// above `g` would be listed after it.
pub const GUEST_MOUNT_POINT_FILE: &str = "guest-mount-point";

#[derive(Debug, Subcommand)]
pub enum DirectVolumeCommand {
    /// Record how to mount a host block device for a volume path.
    Add(AddArgs),
    /// Remove the record of a volume path (its directory and the files in it).
    Remove(VolumePathArgs),
    /// Print usage statistics of the volume, from its recorded guest mount point.
    Stats(VolumePathArgs),
    /// Grow the volume's filesystem, at its recorded guest mount point.
    Resize(ResizeArgs),
}

#[derive(Debug, Args)]
pub struct VolumePathArgs {
    /// Host path of the volume, as the container orchestrator names it.
    #[arg(long)]
    pub volume_path: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Host path of the volume, as the container orchestrator names it.
    #[arg(long)]
    pub volume_path: String,
    /// The mount information as a JSON object with the keys volume-type,
    /// device, fstype, metadata (string map) and options (string list).
    #[arg(long)]
    pub mount_info: String,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// Host path of the volume, as the container orchestrator names it.
    #[arg(long)]
    pub volume_path: String,
    /// Requested size in bytes or with a unit (K, M, G, T, KiB..TiB, KB..TB);
    /// 0 means the size the device has now.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
}

/// The content of `mountInfo.json`, with the upstream JSON key names.
/// Missing keys are allowed, as upstream allows them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MountInfo {
    #[serde(rename = "volume-type")]
    pub volume_type: String,
    pub device: String,
    pub fstype: String,
    pub metadata: BTreeMap<String, String>,
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectVolumeError {
    #[error("invalid volume path {volume_path:?}: {reason}")]
    InvalidVolumePath {
        volume_path: String,
        reason: &'static str,
    },
    #[error(
        "invalid --mount-info; expected a JSON object such as \
         {{\"volume-type\":\"block\",\"device\":\"/dev/sdb\",\"fstype\":\"ext4\",\
         \"metadata\":{{}},\"options\":[]}}"
    )]
    MountInfo {
        #[source]
        error: serde_json::Error,
    },
    #[error("invalid --mount-info: expected a JSON object, not an array, string or number")]
    MountInfoNotObject,
    #[error("{path} exists and is not a directory; remove it to record volume {volume_path:?}")]
    NotADirectory { path: PathBuf, volume_path: String },
    #[error("creating {path} failed")]
    CreateDir {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("writing {path} failed")]
    WriteFile {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("reading {path} failed")]
    ReadFile {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("removing {path} failed")]
    Remove {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "volume {volume_path:?} has no record at {path}; run `volumectl direct-volume add \
         --volume-path {volume_path}` first"
    )]
    NotAdded { volume_path: String, path: PathBuf },
    #[error(
        "no guest mount point is recorded for volume {volume_path:?}; run `volumectl attach \
         --volume-path {volume_path} ...` first"
    )]
    NotAttached { volume_path: String },
}

impl DirectVolumeError {
    /// Returns the ttrpc status code printed with this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            DirectVolumeError::InvalidVolumePath { .. }
            | DirectVolumeError::MountInfo { .. }
            | DirectVolumeError::MountInfoNotObject => ttrpc::Code::INVALID_ARGUMENT,
            DirectVolumeError::NotADirectory { .. }
            | DirectVolumeError::NotAdded { .. }
            | DirectVolumeError::NotAttached { .. } => ttrpc::Code::FAILED_PRECONDITION,
            DirectVolumeError::CreateDir { .. }
            | DirectVolumeError::WriteFile { .. }
            | DirectVolumeError::ReadFile { .. }
            | DirectVolumeError::Remove { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// Returns the directory name of `volume_path`'s record: padded base64url.
/// Longest volume path, in bytes, whose padded base64url encoding fits in a
/// 255-byte file name: 4 characters for every 3 bytes, rounded up.
pub const MAX_VOLUME_PATH_LEN: usize = 189;

pub fn encode_volume_path(volume_path: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(volume_path)
}

/// The record directory of one volume path.
pub struct Record {
    volume_path: String,
    dir: PathBuf,
}

impl Record {
    /// Names the record of `volume_path` under `root`, without touching the disk.
    fn locate(root: &Path, volume_path: &str) -> Result<Record, DirectVolumeError> {
        if volume_path.is_empty() {
            return Err(DirectVolumeError::InvalidVolumePath {
                volume_path: volume_path.to_string(),
                reason: "it is empty; give the volume's host path",
            });
        }
        if volume_path.len() > MAX_VOLUME_PATH_LEN {
            return Err(DirectVolumeError::InvalidVolumePath {
                volume_path: volume_path.to_string(),
                reason: "it is longer than 189 bytes, so its base64url record name \
                         would exceed the 255-byte file name limit",
            });
        }
        Ok(Record {
            volume_path: volume_path.to_string(),
            dir: root.join(encode_volume_path(volume_path)),
        })
    }

    /// Opens the existing record of `volume_path`, which `direct-volume add` created.
    pub fn open(root: &Path, volume_path: &str) -> Result<Record, DirectVolumeError> {
        let record = Record::locate(root, volume_path)?;
        let mount_info = record.dir.join(MOUNT_INFO_FILE);
        if !mount_info.is_file() {
            return Err(DirectVolumeError::NotAdded {
                volume_path: volume_path.to_string(),
                path: mount_info,
            });
        }
        Ok(record)
    }

    /// Stores `mount_point` as the volume's guest mount point.
    pub fn save_guest_mount_point(&self, mount_point: &str) -> Result<(), DirectVolumeError> {
        write_private_file(
            &self.dir.join(GUEST_MOUNT_POINT_FILE),
            format!("{mount_point}\n").as_bytes(),
        )
    }

    /// Reads the guest mount point stored by `attach --volume-path`.
    pub fn guest_mount_point(&self) -> Result<String, DirectVolumeError> {
        let path = self.dir.join(GUEST_MOUNT_POINT_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim_end_matches('\n').to_string()),
            Ok(_) => Err(DirectVolumeError::NotAttached {
                volume_path: self.volume_path.clone(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(DirectVolumeError::NotAttached {
                    volume_path: self.volume_path.clone(),
                })
            }
            Err(error) => Err(DirectVolumeError::ReadFile { path, error }),
        }
    }
}

/// Runs one `direct-volume` subcommand.
pub async fn run(session: &Session, command: DirectVolumeCommand) -> Result<(), CliError> {
    let root = &session.direct_volumes_root;
    match command {
        DirectVolumeCommand::Add(args) => {
            let dir = add(root, &args.volume_path, &args.mount_info)?;
            report(session, "added", &args.volume_path, &dir);
        }
        DirectVolumeCommand::Remove(args) => {
            let dir = remove(root, &args.volume_path)?;
            report(session, "removed", &args.volume_path, &dir);
        }
        DirectVolumeCommand::Stats(args) => {
            let mount_point = Record::open(root, &args.volume_path)?.guest_mount_point()?;
            volume::stats_at(session, &mount_point).await?;
        }
        DirectVolumeCommand::Resize(args) => {
            let mount_point = Record::open(root, &args.volume_path)?.guest_mount_point()?;
            volume::resize_at(session, &mount_point, args.size).await?;
        }
    }
    Ok(())
}

fn report(session: &Session, action: &str, volume_path: &str, dir: &Path) {
    if session.json {
        let object = serde_json::json!({
            "action": action,
            "volume_path": volume_path,
            "directory": dir,
        });
        println!("{object}");
    } else {
        println!("{action} {volume_path}: {}", dir.display());
    }
}

/// Writes `mount_info` (after checking that it parses) as the record of
/// `volume_path`, creating the directories with mode 0700 as upstream does.
/// Returns the record directory.
pub fn add(root: &Path, volume_path: &str, mount_info: &str) -> Result<PathBuf, DirectVolumeError> {
    let record = Record::locate(root, volume_path)?;
    parse_mount_info(mount_info)?;

    match std::fs::symlink_metadata(&record.dir) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(DirectVolumeError::NotADirectory {
                path: record.dir,
                volume_path: volume_path.to_string(),
            });
        }
        Ok(_) => {}
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&record.dir)
            .map_err(|error| DirectVolumeError::CreateDir {
                path: record.dir.clone(),
                error,
            })?,
    }
    // Stored byte for byte, as upstream stores it.
    write_private_file(&record.dir.join(MOUNT_INFO_FILE), mount_info.as_bytes())?;
    Ok(record.dir)
}

/// Parses `text` as a JSON object with the `mountInfo.json` keys. serde
/// would also fill a struct from a JSON array, which upstream rejects.
fn parse_mount_info(text: &str) -> Result<MountInfo, DirectVolumeError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| DirectVolumeError::MountInfo { error })?;
    if !value.is_object() {
        return Err(DirectVolumeError::MountInfoNotObject);
    }
    serde_json::from_value(value).map_err(|error| DirectVolumeError::MountInfo { error })
}

/// Removes the record directory of `volume_path` and the files in it, and
/// nothing above it. A volume without a record is not an error, as upstream.
pub fn remove(root: &Path, volume_path: &str) -> Result<PathBuf, DirectVolumeError> {
    let record = Record::locate(root, volume_path)?;
    match std::fs::remove_dir_all(&record.dir) {
        Ok(()) => Ok(record.dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(record.dir),
        Err(error) => Err(DirectVolumeError::Remove {
            path: record.dir,
            error,
        }),
    }
}

/// Writes `content` to `path` with mode 0600, replacing an older file.
fn write_private_file(path: &Path, content: &[u8]) -> Result<(), DirectVolumeError> {
    let write_error = |error| DirectVolumeError::WriteFile {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(content).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_path_encoding_is_padded_base64url() {
        // 5 bytes: one padding character; "?" and ">" show the URL-safe alphabet.
        assert_eq!(encode_volume_path("/a/b?"), "L2EvYj8=");
        assert_eq!(encode_volume_path("/>>>"), "Lz4-Pg==");
        assert_eq!(encode_volume_path("/??"), "Lz8_");
    }

    #[test]
    fn add_rejects_bad_json_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let result = add(root.path(), "/vol", r#"{"device": 5}"#);
        assert!(matches!(result, Err(DirectVolumeError::MountInfo { .. })));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn guest_mount_point_needs_attach() {
        let root = tempfile::tempdir().unwrap();
        add(root.path(), "/vol", "{}").unwrap();
        let record = Record::open(root.path(), "/vol").unwrap();
        assert!(matches!(
            record.guest_mount_point(),
            Err(DirectVolumeError::NotAttached { .. })
        ));
        record.save_guest_mount_point("/run/s/MDow").unwrap();
        assert_eq!(record.guest_mount_point().unwrap(), "/run/s/MDow");
    }

    #[test]
    fn add_rejects_overlong_volume_path() {
        let root = tempfile::tempdir().unwrap();
        // 190 bytes encode to 256 characters, one more than a file name allows.
        let longest = format!("/{}", "a".repeat(MAX_VOLUME_PATH_LEN - 1));
        let too_long = format!("/{}", "a".repeat(MAX_VOLUME_PATH_LEN));
        add(root.path(), &longest, "{}").unwrap();
        let error = add(root.path(), &too_long, "{}").unwrap_err();
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT, "{error}");
        assert!(error.to_string().contains("189 bytes"), "{error}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn open_without_add_says_to_add() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            Record::open(root.path(), "/vol"),
            Err(DirectVolumeError::NotAdded { .. })
        ));
    }
}
