//! `attach` and `detach`: CreateSandbox / CreateContainer and
//! DestroySandbox / RemoveContainer.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{ArgGroup, Args, ValueEnum};
use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, FSGroup,
    RemoveContainerRequest, Storage,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci::{Mount, Root, Spec};
use protocols::types::FSGroupChangePolicy;
use serde::Deserialize;

use crate::direct_volume;
use crate::error::CliError;
use crate::Session;

/// Directory under which the upstream runtime places storage mount points.
pub const STORAGE_ROOT: &str = "/run/kata-containers/sandbox/storage";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// virtio-blk over PCI; the source is a PCI path such as 02/00.
    Blk,
    /// virtio-scsi; the source is <target>:<lun> such as 0:1.
    Scsi,
    /// virtio-blk over MMIO; the source is a /dev path.
    Mmioblk,
    /// Persistent memory; the source is a /dev/pmemN path.
    Nvdimm,
}

impl Driver {
    /// Returns the `Storage.driver` string for this driver.
    fn wire_name(self) -> &'static str {
        match self {
            Driver::Blk => "blk",
            Driver::Scsi => "scsi",
            Driver::Mmioblk => "mmioblk",
            Driver::Nvdimm => "nvdimm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsGroupPolicy {
    /// Change ownership of every file at each mount.
    Always,
    /// Change ownership only when the volume root does not match.
    OnRootMismatch,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("storage").required(true).args(["driver", "storage_json"])))]
#[command(group(ArgGroup::new("owner").required(true).args(["sandbox", "container"])))]
pub struct AttachArgs {
    /// How the disk is attached to the guest, which decides how `--source` is read.
    #[arg(long, value_enum, requires = "source")]
    pub driver: Option<Driver>,

    /// Disk address: a PCI path (blk), <target>:<lun> (scsi) or a /dev path.
    #[arg(long, requires = "driver")]
    pub source: Option<String>,

    /// Filesystem type to mount, e.g. ext4 or xfs.
    #[arg(long, default_value = "ext4", conflicts_with = "storage_json")]
    pub fstype: String,

    /// Mount option, such as ro or noatime; repeat for several.
    #[arg(
        long = "option",
        value_name = "OPTION",
        conflicts_with = "storage_json"
    )]
    pub options: Vec<String>,

    /// Driver-specific option passed through as Storage.driver_options; repeat for several.
    #[arg(
        long = "driver-option",
        value_name = "OPTION",
        conflicts_with = "storage_json"
    )]
    pub driver_options: Vec<String>,

    /// Guest mount point. Default: /run/kata-containers/sandbox/storage/
    /// followed by the source in unpadded base64url, as the upstream runtime names it.
    #[arg(long, conflicts_with = "storage_json")]
    pub mount_point: Option<String>,

    /// Group id that should own the volume's files.
    #[arg(long, value_name = "GID", conflicts_with = "storage_json")]
    pub fs_group: Option<u32>,

    /// When to apply --fs-group.
    #[arg(
        long,
        value_enum,
        requires = "fs_group",
        conflicts_with = "storage_json"
    )]
    pub fs_group_policy: Option<FsGroupPolicy>,

    /// Keep the mount until the sandbox is destroyed, whatever uses it.
    #[arg(long, conflicts_with = "storage_json")]
    pub shared: bool,

    /// Read the whole Storage from a JSON object with the Storage field names
    /// (driver, driver_options, source, fstype, options, mount_point,
    /// fs_group {group_id, group_change_policy}, shared); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub storage_json: Option<PathBuf>,

    /// Attach for the sandbox (CreateSandbox).
    #[arg(long)]
    pub sandbox: bool,

    /// Attach for this container (CreateContainer); needs --rootfs.
    #[arg(long, value_name = "ID", requires = "rootfs")]
    pub container: Option<String>,

    /// Guest path of the container's root filesystem (OCI Root.Path).
    #[arg(long, value_name = "PATH", requires = "container")]
    pub rootfs: Option<String>,

    /// Bind the storage into the container at DEST, with comma-separated
    /// mount options after a colon, e.g. /data:ro; repeat for several.
    #[arg(long = "mount", value_name = "DEST[:OPTIONS]", requires = "container")]
    pub mounts: Vec<String>,

    /// Host path of a direct volume added with `direct-volume add`: its
    /// record then gets the guest mount point, for `direct-volume stats` and
    /// `direct-volume resize`.
    #[arg(long, value_name = "HOST_PATH")]
    pub volume_path: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["sandbox", "container"])))]
pub struct DetachArgs {
    /// Remove every storage and bind of the sandbox (DestroySandbox).
    #[arg(long)]
    pub sandbox: bool,

    /// Remove this container's binds and its references (RemoveContainer).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
}

/// The Storage message as a JSON object with its protobuf field names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StorageJson {
    driver: String,
    driver_options: Vec<String>,
    source: String,
    fstype: String,
    options: Vec<String>,
    mount_point: String,
    fs_group: Option<FsGroupJson>,
    shared: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FsGroupJson {
    group_id: u32,
    /// `Always` or `OnRootMismatch`, the enum value names of the protocol.
    group_change_policy: Option<String>,
}

/// Returns the mount point the upstream runtime picks for `source`.
pub fn default_mount_point(source: &str) -> String {
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(source);
    format!("{STORAGE_ROOT}/{name}")
}

/// Sends CreateSandbox or CreateContainer for one storage and prints its mount point.
pub async fn attach(session: &Session, args: AttachArgs) -> Result<(), CliError> {
    let storage = match &args.storage_json {
        Some(path) => storage_from_json(path)?,
        None => storage_from_flags(&args)?,
    };
    // Checked before anything is sent, so that a wrong path changes nothing.
    let record = match &args.volume_path {
        Some(volume_path) => Some(direct_volume::Record::open(
            &session.direct_volumes_root,
            volume_path,
        )?),
        None => None,
    };
    let mount_point = storage.mount_point.clone();
    let client = AgentServiceClient::new(session.connect().await?);

    if let Some(container_id) = &args.container {
        let rootfs = args.rootfs.as_deref().unwrap_or_default();
        let mut request = CreateContainerRequest::new();
        request.container_id = container_id.clone();
        request.OCI = Some(build_spec(rootfs, &mount_point, &args.mounts)?).into();
        request.storages.push(storage);
        client
            .create_container(session.context(), &request)
            .await
            .map_err(|error| {
                CliError::from_rpc("CreateContainer", &session.address, session.timeout, error)
            })?;
    } else {
        let mut request = CreateSandboxRequest::new();
        request.storages.push(storage);
        client
            .create_sandbox(session.context(), &request)
            .await
            .map_err(|error| {
                CliError::from_rpc("CreateSandbox", &session.address, session.timeout, error)
            })?;
    }

    if let Some(record) = record {
        record
            .save_guest_mount_point(&mount_point)
            .map_err(|error| CliError::RecordAfterAttach {
                mount_point: mount_point.clone(),
                error,
            })?;
    }
    if session.json {
        println!("{}", serde_json::json!({ "mount_point": mount_point }));
    } else {
        println!("{mount_point}");
    }
    Ok(())
}

/// Sends RemoveContainer or DestroySandbox.
pub async fn detach(session: &Session, args: DetachArgs) -> Result<(), CliError> {
    let client = AgentServiceClient::new(session.connect().await?);
    let detached = match &args.container {
        Some(container_id) => {
            let mut request = RemoveContainerRequest::new();
            request.container_id = container_id.clone();
            client
                .remove_container(session.context(), &request)
                .await
                .map_err(|error| {
                    CliError::from_rpc("RemoveContainer", &session.address, session.timeout, error)
                })?;
            format!("container {container_id}")
        }
        None => {
            client
                .destroy_sandbox(session.context(), &DestroySandboxRequest::new())
                .await
                .map_err(|error| {
                    CliError::from_rpc("DestroySandbox", &session.address, session.timeout, error)
                })?;
            "sandbox".to_string()
        }
    };
    if session.json {
        println!("{}", serde_json::json!({ "detached": detached }));
    } else {
        println!("detached {detached}");
    }
    Ok(())
}

fn storage_from_flags(args: &AttachArgs) -> Result<Storage, CliError> {
    let driver = args
        .driver
        .expect("clap requires --driver without --storage-json");
    let source = args.source.clone().unwrap_or_default();
    if source.is_empty() {
        return Err(invalid("--source", &source, "must not be empty"));
    }

    let mut storage = Storage::new();
    storage.driver = driver.wire_name().to_string();
    storage.mount_point = match &args.mount_point {
        Some(mount_point) => mount_point.clone(),
        None => default_mount_point(&source),
    };
    storage.source = source;
    storage.fstype = args.fstype.clone();
    storage.options = args.options.clone();
    storage.driver_options = args.driver_options.clone();
    storage.shared = args.shared;
    if let Some(group_id) = args.fs_group {
        let mut fs_group = FSGroup::new();
        fs_group.group_id = group_id;
        fs_group.group_change_policy = match args.fs_group_policy {
            Some(FsGroupPolicy::OnRootMismatch) => FSGroupChangePolicy::OnRootMismatch,
            Some(FsGroupPolicy::Always) | None => FSGroupChangePolicy::Always,
        }
        .into();
        storage.fs_group = Some(fs_group).into();
    }
    Ok(storage)
}

fn storage_from_json(path: &Path) -> Result<Storage, CliError> {
    let read_error = |error| CliError::ReadInput {
        path: path.to_path_buf(),
        error,
    };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        text
    } else {
        std::fs::read_to_string(path).map_err(read_error)?
    };
    let parsed: StorageJson =
        serde_json::from_str(&text).map_err(|error| CliError::StorageJson {
            path: path.to_path_buf(),
            error,
        })?;

    let mut storage = Storage::new();
    storage.mount_point = if parsed.mount_point.is_empty() {
        default_mount_point(&parsed.source)
    } else {
        parsed.mount_point
    };
    storage.driver = parsed.driver;
    storage.driver_options = parsed.driver_options;
    storage.source = parsed.source;
    storage.fstype = parsed.fstype;
    storage.options = parsed.options;
    storage.shared = parsed.shared;
    if let Some(group) = parsed.fs_group {
        let mut fs_group = FSGroup::new();
        fs_group.group_id = group.group_id;
        fs_group.group_change_policy = match group.group_change_policy.as_deref() {
            None | Some("Always") => FSGroupChangePolicy::Always,
            Some("OnRootMismatch") => FSGroupChangePolicy::OnRootMismatch,
            Some(other) => {
                return Err(invalid(
                    "fs_group.group_change_policy",
                    other,
                    "expected Always or OnRootMismatch",
                ))
            }
        }
        .into();
        storage.fs_group = Some(fs_group).into();
    }
    Ok(storage)
}

/// Builds the OCI spec of a container whose root is `rootfs`, with one bind
/// of `mount_point` per `--mount DEST[:OPTIONS]`.
fn build_spec(rootfs: &str, mount_point: &str, mounts: &[String]) -> Result<Spec, CliError> {
    let mut root = Root::new();
    root.Path = rootfs.to_string();
    let mut spec = Spec::new();
    spec.Root = Some(root).into();

    for text in mounts {
        let (destination, options) = match text.split_once(':') {
            Some((destination, options)) => (destination, options),
            None => (text.as_str(), ""),
        };
        if !destination.starts_with('/') {
            return Err(invalid(
                "--mount",
                text,
                "the destination must be an absolute path in the container, e.g. /data:ro",
            ));
        }
        let mut mount = Mount::new();
        mount.destination = destination.to_string();
        mount.source = mount_point.to_string();
        mount.type_ = "bind".to_string();
        mount.options.push("rbind".to_string());
        mount.options.extend(
            options
                .split(',')
                .filter(|option| !option.is_empty())
                .map(str::to_string),
        );
        spec.Mounts.push(mount);
    }
    Ok(spec)
}

fn invalid(input: &'static str, value: &str, reason: &str) -> CliError {
    CliError::InvalidInput {
        input,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mount_point_matches_upstream_naming() {
        assert_eq!(default_mount_point("0:0"), format!("{STORAGE_ROOT}/MDow"));
        // "02/00" has 5 bytes, so the padded form would end in "=".
        assert_eq!(
            default_mount_point("02/00"),
            format!("{STORAGE_ROOT}/MDIvMDA")
        );
    }

    #[test]
    fn spec_binds_each_mount_with_rbind_first() {
        let mounts = vec!["/data:ro".to_string(), "/logs".to_string()];
        let spec = build_spec("/run/c1/rootfs", "/run/s/MDow", &mounts).unwrap();
        assert_eq!(spec.Root.Path, "/run/c1/rootfs");
        assert_eq!(spec.Mounts.len(), 2);
        assert_eq!(spec.Mounts[0].destination, "/data");
        assert_eq!(spec.Mounts[0].source, "/run/s/MDow");
        assert_eq!(spec.Mounts[0].type_, "bind");
        assert_eq!(spec.Mounts[0].options, vec!["rbind", "ro"]);
        assert_eq!(spec.Mounts[1].options, vec!["rbind"]);
    }

    #[test]
    fn spec_rejects_relative_destination() {
        assert!(build_spec("/r", "/m", &["data:ro".to_string()]).is_err());
    }

    #[test]
    fn storage_json_fills_default_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.json");
        let text = r#"{"driver":"scsi","source":"0:0","fstype":"xfs",
            "fs_group":{"group_id":1000,"group_change_policy":"OnRootMismatch"}}"#;
        std::fs::write(&path, text).unwrap();
        let storage = storage_from_json(&path).unwrap();
        assert_eq!(storage.driver, "scsi");
        assert_eq!(storage.mount_point, format!("{STORAGE_ROOT}/MDow"));
        assert_eq!(storage.fs_group.group_id, 1000);
        assert_eq!(
            storage.fs_group.group_change_policy,
            FSGroupChangePolicy::OnRootMismatch.into()
        );
    }

    #[test]
    fn storage_json_rejects_unknown_field_and_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.json");
        std::fs::write(&path, r#"{"driver":"blk","sauce":"02/00"}"#).unwrap();
        assert!(storage_from_json(&path).is_err());
        std::fs::write(&path, r#"{"fs_group":{"group_change_policy":"Sometimes"}}"#).unwrap();
        assert!(storage_from_json(&path).is_err());
    }
}
