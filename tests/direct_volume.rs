//! `volumectl direct-volume` against the on-disk layout of
//! `kata-runtime direct-volume`: `<root>/<padded base64url of the volume
//! path>/mountInfo.json`, directories mode 0700 and the file mode 0600.

mod cli_support;
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cli_support::{assert_failed_with, assert_succeeded, attach_args, stdout, volumectl};

/// Mount information as a CSI driver writes it, in one line as upstream stores it.
const MOUNT_INFO: &str = concat!(
    r#"{"volume-type":"block","device":"/dev/sdb","fstype":"ext4","#,
    r#""metadata":{"fsGroup":"1000","fsGroupChangePolicy":"OnRootMismatch"},"#,
    r#""options":["noatime"]}"#
);

/// Returns every path below `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            paths.insert(path.strip_prefix(dir).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            }
        }
    }
    paths
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `volumectl direct-volume` with the records under `root`.
fn direct_volume(root: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "--direct-volumes-root",
        root.to_str().unwrap(),
        "direct-volume",
    ];
    all.extend_from_slice(args);
    volumectl(&all)
}

#[test]
fn add_then_remove_leaves_upstream_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("direct-volumes");
    let volume_path = "/kubelet/kata-test-vol-001/volume001";
    // Padded base64url of the volume path, computed independently.
    let name = "L2t1YmVsZXQva2F0YS10ZXN0LXZvbC0wMDEvdm9sdW1lMDAx";

    let output = direct_volume(
        &root,
        &[
            "add",
            "--volume-path",
            volume_path,
            "--mount-info",
            MOUNT_INFO,
        ],
    );
    assert_succeeded(&output);
    let expected: BTreeSet<PathBuf> = [
        PathBuf::from("direct-volumes"),
        PathBuf::from(format!("direct-volumes/{name}")),
        PathBuf::from(format!("direct-volumes/{name}/mountInfo.json")),
    ]
    .into();
    assert_eq!(tree(dir.path()), expected);
    assert_eq!(mode(&root.join(name)), 0o700);
    assert_eq!(mode(&root.join(name).join("mountInfo.json")), 0o600);

    // Stored byte for byte, with the upstream key names.
    let stored = std::fs::read_to_string(root.join(name).join("mountInfo.json")).unwrap();
    assert_eq!(stored, MOUNT_INFO);
    let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["volume-type", "device", "fstype", "metadata", "options"])
    );

    let output = direct_volume(&root, &["remove", "--volume-path", volume_path]);
    assert_succeeded(&output);
    assert_eq!(
        tree(dir.path()),
        BTreeSet::from([PathBuf::from("direct-volumes")])
    );
}

#[test]
fn directory_name_is_padded_base64url() {
    let dir = tempfile::tempdir().unwrap();
    // Both need padding, and the second uses the URL-safe `-` in place of `+`.
    let cases = [
        (
            "/var/lib/kubelet/pods/7d/volumes/kubernetes.io~csi/pvc-1/mount",
            "L3Zhci9saWIva3ViZWxldC9wb2RzLzdkL3ZvbHVtZXMva3ViZXJuZXRlcy5pb35jc2kvcHZjLTEvbW91bnQ=",
        ),
        ("/>>>", "Lz4-Pg=="),
    ];
    for (volume_path, name) in cases {
        let output = direct_volume(
            dir.path(),
            &["add", "--volume-path", volume_path, "--mount-info", "{}"],
        );
        assert_succeeded(&output);
        assert!(
            dir.path().join(name).join("mountInfo.json").is_file(),
            "{name} missing"
        );
    }
    assert_eq!(tree(dir.path()).len(), 4);
}

#[test]
fn invalid_mount_info_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("direct-volumes");
    for mount_info in [
        "not json",
        r#"{"device": 5}"#,
        r#"{"options": "ro"}"#,
        "[]",
        "null",
    ] {
        let output = direct_volume(
            &root,
            &["add", "--volume-path", "/vol", "--mount-info", mount_info],
        );
        let text = assert_failed_with(&output, "INVALID_ARGUMENT");
        assert!(text.contains("invalid --mount-info"), "{text}");
    }
    assert!(tree(dir.path()).is_empty());
}

#[test]
fn remove_without_add_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other-file"), b"x").unwrap();
    let output = direct_volume(dir.path(), &["remove", "--volume-path", "/never/added"]);
    assert_succeeded(&output);
    assert_eq!(
        tree(dir.path()),
        BTreeSet::from([PathBuf::from("other-file")])
    );
}

#[test]
fn remove_keeps_other_volumes() {
    let dir = tempfile::tempdir().unwrap();
    for volume_path in ["/vol/a", "/vol/b"] {
        let output = direct_volume(
            dir.path(),
            &[
                "add",
                "--volume-path",
                volume_path,
                "--mount-info",
                MOUNT_INFO,
            ],
        );
        assert_succeeded(&output);
    }
    let output = direct_volume(dir.path(), &["remove", "--volume-path", "/vol/a"]);
    assert_succeeded(&output);
    // base64url("/vol/b") is "L3ZvbC9i".
    let expected = BTreeSet::from([
        PathBuf::from("L3ZvbC9i"),
        PathBuf::from("L3ZvbC9i/mountInfo.json"),
    ]);
    assert_eq!(tree(dir.path()), expected);
}

#[test]
fn stats_before_attach_says_attach_first() {
    let dir = tempfile::tempdir().unwrap();
    let output = direct_volume(
        dir.path(),
        &["add", "--volume-path", "/vol", "--mount-info", MOUNT_INFO],
    );
    assert_succeeded(&output);
    let before = tree(dir.path());

    let output = direct_volume(dir.path(), &["stats", "--volume-path", "/vol"]);
    let text = assert_failed_with(&output, "FAILED_PRECONDITION");
    assert!(
        text.contains("volumectl attach --volume-path /vol"),
        "{text}"
    );
    let output = direct_volume(
        dir.path(),
        &["resize", "--volume-path", "/vol", "--size", "2G"],
    );
    let text = assert_failed_with(&output, "FAILED_PRECONDITION");
    assert!(
        text.contains("volumectl attach --volume-path /vol"),
        "{text}"
    );
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn stats_before_add_says_add_first() {
    let dir = tempfile::tempdir().unwrap();
    let output = direct_volume(dir.path(), &["stats", "--volume-path", "/vol"]);
    let text = assert_failed_with(&output, "FAILED_PRECONDITION");
    assert!(
        text.contains("volumectl direct-volume add --volume-path /vol"),
        "{text}"
    );
    assert!(tree(dir.path()).is_empty());
}

#[test]
fn attach_volume_path_checked_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // No agent listens here: a FAILED_PRECONDITION rather than a connect
    // timeout shows that nothing was sent.
    let address = format!("unix://{}/absent.sock", dir.path().display());
    let output = volumectl(&[
        "--address",
        &address,
        "--timeout",
        "30",
        "--direct-volumes-root",
        dir.path().to_str().unwrap(),
        "attach",
        "--driver",
        "scsi",
        "--source",
        "0:0",
        "--sandbox",
        "--volume-path",
        "/vol",
    ]);
    let text = assert_failed_with(&output, "FAILED_PRECONDITION");
    assert!(text.contains("direct-volume add"), "{text}");
    assert!(stdout(&output).is_empty());
    assert!(tree(dir.path()).is_empty());
}

/// A volume added with `direct-volume add` and attached for the sandbox
/// with `attach --volume-path`, on a loop device, for the root tests.
struct AttachedVolume {
    env: common::TestEnv,
    device: String,
    address: String,
    root: PathBuf,
    mount_point: PathBuf,
    volume_path: &'static str,
}

impl AttachedVolume {
    /// Formats a `size` byte loop device with `fstype`, starts the agent,
    /// adds `volume_path` and attaches it.
    fn attach(name: &str, size: u64, fstype: &str, volume_path: &'static str) -> AttachedVolume {
        let mut env = common::TestEnv::new(name);
        let device = env.add_loop(name, size, Some(fstype));
        env.start_agent();
        let volume = AttachedVolume {
            address: format!("unix://{}", env.path().join("agent.sock").display()),
            root: env.path().join("direct-volumes"),
            mount_point: env.storage_root().join(name),
            device,
            env,
            volume_path,
        };

        let mount_info = serde_json::json!({
            "volume-type": "block",
            "device": volume.device,
            "fstype": fstype,
            "metadata": {},
            "options": [],
        })
        .to_string();
        let add = [
            "direct-volume",
            "add",
            "--volume-path",
            volume_path,
            "--mount-info",
            &mount_info,
        ];
        assert_succeeded(&volume.volumectl(&add));

        let mount_point = volume.mount_point.to_str().unwrap();
        let rest = ["--sandbox", "--volume-path", volume_path];
        let output = volume.volumectl(&attach_args(&volume.device, fstype, mount_point, &rest));
        assert_succeeded(&output);
        assert_eq!(
            stdout(&output),
            format!("{mount_point}\n"),
            "{}",
            volume.env.agent_log()
        );
        volume
    }

    /// Runs volumectl with this agent's address and direct-volume root.
    fn volumectl(&self, args: &[&str]) -> std::process::Output {
        let root = self.root.to_str().unwrap();
        let mut all = vec!["--address", &self.address, "--direct-volumes-root", root];
        all.extend_from_slice(args);
        volumectl(&all)
    }

    /// Returns the byte total that `direct-volume stats` reports.
    fn stats_total(&self) -> u64 {
        let args = [
            "--json",
            "direct-volume",
            "stats",
            "--volume-path",
            self.volume_path,
        ];
        let output = self.volumectl(&args);
        assert_succeeded(&output);
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(value["usage"][0]["unit"], "BYTES");
        value["usage"][0]["total"].as_u64().unwrap()
    }

    /// Detaches the sandbox and checks that nothing stays mounted.
    fn detach(&self) {
        assert_succeeded(&self.volumectl(&["detach", "--sandbox"]));
        let mounts = common::mounts_under(self.env.path());
        assert!(mounts.is_empty(), "{mounts:?}\n{}", self.env.agent_log());
    }
}

fn statvfs_total(path: &Path) -> u64 {
    let statvfs = nix::sys::statvfs::statvfs(path).unwrap();
    statvfs.blocks() * statvfs.fragment_size()
}

#[test]
fn attach_records_guest_mount_point() {
    if !common::running_as_root("attach_records_guest_mount_point") {
        return;
    }
    let volume_path = "/var/lib/kubelet/pods/p1/volumes/dv";
    let volume = AttachedVolume::attach("dv", 64 << 20, "ext4", volume_path);

    let record = volume
        .root
        .join("L3Zhci9saWIva3ViZWxldC9wb2RzL3AxL3ZvbHVtZXMvZHY=");
    let recorded = std::fs::read_to_string(record.join("guest-mount-point")).unwrap();
    assert_eq!(recorded, format!("{}\n", volume.mount_point.display()));
    assert_eq!(mode(&record.join("guest-mount-point")), 0o600);

    // The stats come from the recorded mount point.
    assert_eq!(volume.stats_total(), statvfs_total(&volume.mount_point));

    volume.detach();
    let remove = ["direct-volume", "remove", "--volume-path", volume_path];
    assert_succeeded(&volume.volumectl(&remove));
    assert!(tree(&volume.root).is_empty());
}

#[test]
fn direct_volume_resize_grows_xfs() {
    if !common::running_as_root("direct_volume_resize_grows_xfs") {
        return;
    }
    // mkfs.xfs needs a disk of at least 300 MB.
    let volume_path = "/var/lib/kubelet/pods/p2/volumes/grow";
    let volume = AttachedVolume::attach("grow", 320 << 20, "xfs", volume_path);
    let total_before = statvfs_total(&volume.mount_point);

    // Grow the disk, as a host does before calling resize.
    let backing = &volume.env.loops[0].backing_file;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(backing)
        .unwrap();
    file.set_len(640 << 20).unwrap();
    common::run("losetup", &["--set-capacity", &volume.device]);

    let resize = [
        "direct-volume",
        "resize",
        "--volume-path",
        volume_path,
        "--size",
        "600MiB",
    ];
    assert_succeeded(&volume.volumectl(&resize));
    let total_after = volume.stats_total();
    assert!(
        total_after > total_before,
        "{total_before} -> {total_after}\n{}",
        volume.env.agent_log()
    );
    // statvfs leaves out the xfs log, so compare the growth, not the size:
    // the disk grew by 320 MiB.
    let growth = total_after - total_before;
    assert!(growth >= 256 << 20, "grew by {growth} bytes only");

    volume.detach();
}
