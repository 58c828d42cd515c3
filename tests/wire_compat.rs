//! Wire compatibility with the full upstream agent API.
//!
//! Requests are written field by field with `CodedOutputStream`, including
//! fields of the upstream messages that this subset does not declare, and
//! must decode into our messages with every declared field intact. Our
//! replies are read back tag by tag with `CodedInputStream` by a decoder
//! written from the field numbers alone. All field numbers follow
//! agent.proto, oci.proto, csi.proto and health.proto of Kata Containers
//! (src/libs/protocols/protos).

mod cli_support;

use std::os::unix::net::UnixStream;

use protobuf::rt::WireType;
use protobuf::{CodedInputStream, CodedOutputStream, Message};
use protocols::agent::{CreateContainerRequest, CreateSandboxRequest, Storage};
use protocols::csi::volume_usage::Unit;
use protocols::csi::{VolumeCondition, VolumeStatsResponse, VolumeUsage};
use protocols::types::FSGroupChangePolicy;

use cli_support::frames::{read_response, request_bytes, write_frame, MESSAGE_TYPE_REQUEST};
use cli_support::Agent;

/// Encodes one message with `write`, which adds its fields.
fn encode(write: impl FnOnce(&mut CodedOutputStream)) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut stream = CodedOutputStream::vec(&mut bytes);
        write(&mut stream);
        stream.flush().unwrap();
    }
    bytes
}

/// A `Storage` with the upstream fields 1 to 7, `shared` (field 8 here) and
/// a field number that no version declares.
fn upstream_storage() -> Vec<u8> {
    let fs_group = encode(|out| {
        out.write_uint32(2, 1000).unwrap(); // group_id
        out.write_enum(3, 1).unwrap(); // group_change_policy = OnRootMismatch
    });
    encode(|out| {
        out.write_string(1, "scsi").unwrap(); // driver
        out.write_string(2, "queue_size=128").unwrap(); // driver_options
        out.write_string(2, "discard=on").unwrap();
        out.write_string(3, "0:1").unwrap(); // source
        out.write_string(4, "xfs").unwrap(); // fstype
        out.write_string(5, "noatime").unwrap(); // options
        out.write_string(6, "/run/kata-containers/sandbox/storage/MDox")
            .unwrap(); // mount_point
        out.write_bytes(7, &fs_group).unwrap(); // fs_group
        out.write_bool(8, true).unwrap(); // shared
                                          // A field number no version of Storage uses yet.
        out.write_string(15, "from a newer runtime").unwrap();
    })
}

fn assert_upstream_storage(storage: &Storage) {
    assert_eq!(storage.driver, "scsi");
    assert_eq!(storage.driver_options, vec!["queue_size=128", "discard=on"]);
    assert_eq!(storage.source, "0:1");
    assert_eq!(storage.fstype, "xfs");
    assert_eq!(storage.options, vec!["noatime"]);
    assert_eq!(
        storage.mount_point,
        "/run/kata-containers/sandbox/storage/MDox"
    );
    assert_eq!(storage.fs_group.group_id, 1000);
    assert_eq!(
        storage.fs_group.group_change_policy.enum_value(),
        Ok(FSGroupChangePolicy::OnRootMismatch)
    );
    assert!(storage.shared);
}

/// Encodes an upstream OCI `Spec` with Version, Process, Hostname, Hooks,
/// Annotations and Linux around the Root and Mounts this subset reads.
fn upstream_spec() -> Vec<u8> {
    let user = encode(|out| {
        out.write_uint32(1, 0).unwrap(); // UID
        out.write_uint32(2, 0).unwrap(); // GID
        out.write_string(4, "root").unwrap(); // Username
    });
    let process = encode(|out| {
        out.write_bool(1, true).unwrap(); // Terminal
        out.write_bytes(3, &user).unwrap(); // User
        out.write_string(4, "/bin/sh").unwrap(); // Args
        out.write_string(4, "-c").unwrap();
        out.write_string(5, "PATH=/bin").unwrap(); // Env
        out.write_string(6, "/").unwrap(); // Cwd
    });
    let root = encode(|out| {
        out.write_string(1, "/run/kata-containers/c1/rootfs")
            .unwrap(); // Path
        out.write_bool(2, true).unwrap(); // Readonly
    });
    let mount = encode(|out| {
        out.write_string(1, "/data").unwrap(); // destination
        out.write_string(2, "/run/kata-containers/sandbox/storage/MDox")
            .unwrap(); // source
        out.write_string(3, "bind").unwrap(); // type
        out.write_string(4, "rbind").unwrap(); // options
        out.write_string(4, "ro").unwrap();
    });
    let hook = encode(|out| {
        out.write_string(1, "/usr/bin/hook").unwrap(); // Hook.Path
        out.write_int64(4, 5).unwrap(); // Hook.Timeout
    });
    let hooks = encode(|out| out.write_bytes(1, &hook).unwrap()); // Prestart
    let annotation = encode(|out| {
        out.write_string(1, "io.kubernetes.cri.sandbox-id").unwrap(); // map key
        out.write_string(2, "abc123").unwrap(); // map value
    });
    let linux = encode(|out| out.write_string(5, "/kubepods/pod1").unwrap()); // CgroupsPath

    encode(|out| {
        out.write_string(1, "1.0.2").unwrap(); // Version
        out.write_bytes(2, &process).unwrap(); // Process
        out.write_bytes(3, &root).unwrap(); // Root
        out.write_string(4, "pod-host").unwrap(); // Hostname
        out.write_bytes(5, &mount).unwrap(); // Mounts
        out.write_bytes(6, &hooks).unwrap(); // Hooks
        out.write_bytes(7, &annotation).unwrap(); // Annotations
        out.write_bytes(8, &linux).unwrap(); // Linux
    })
}

#[test]
fn create_container_keeps_declared_fields() {
    let string_user = encode(|out| {
        out.write_string(1, "1000").unwrap(); // uid
        out.write_string(2, "1000").unwrap(); // gid
        out.write_string(3, "10").unwrap(); // additionalGids
    });
    let device = encode(|out| {
        out.write_string(1, "0000:00:02.0").unwrap(); // id
        out.write_string(2, "blk").unwrap(); // type
        out.write_string(3, "/dev/vdb").unwrap(); // vm_path
        out.write_string(4, "/dev/xvdb").unwrap(); // container_path
    });
    let shared_mount = encode(|out| {
        out.write_string(1, "shared").unwrap(); // name
        out.write_string(2, "c0").unwrap(); // src_ctr
    });
    let bytes = encode(|out| {
        out.write_string(1, "c1").unwrap(); // container_id
        out.write_string(2, "e1").unwrap(); // exec_id
        out.write_bytes(3, &string_user).unwrap(); // string_user
        out.write_bytes(4, &device).unwrap(); // devices
        out.write_bytes(5, &upstream_storage()).unwrap(); // storages
        out.write_bytes(6, &upstream_spec()).unwrap(); // OCI
        out.write_bool(7, true).unwrap(); // sandbox_pidns
        out.write_bytes(8, &shared_mount).unwrap(); // shared_mounts
    });

    let request = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(request.container_id, "c1");
    assert_eq!(request.exec_id, "e1");
    assert_eq!(request.storages.len(), 1);
    assert_upstream_storage(&request.storages[0]);

    let spec = request.OCI.as_ref().expect("OCI spec missing");
    assert_eq!(spec.Root.Path, "/run/kata-containers/c1/rootfs");
    assert!(spec.Root.Readonly);
    assert_eq!(spec.Mounts.len(), 1);
    assert_eq!(spec.Mounts[0].destination, "/data");
    assert_eq!(
        spec.Mounts[0].source,
        "/run/kata-containers/sandbox/storage/MDox"
    );
    assert_eq!(spec.Mounts[0].type_, "bind");
    assert_eq!(spec.Mounts[0].options, vec!["rbind", "ro"]);

    // Undeclared fields are kept as unknown fields, not dropped.
    let unknown: Vec<u32> = request
        .special_fields
        .unknown_fields()
        .iter()
        .map(|(number, _)| number)
        .collect();
    for number in [3, 4, 7, 8] {
        assert!(
            unknown.contains(&number),
            "field {number} lost: {unknown:?}"
        );
    }
}

#[test]
fn create_sandbox_keeps_declared_fields() {
    let kernel_module = encode(|out| {
        out.write_string(1, "virtio_scsi").unwrap(); // name
        out.write_string(2, "max_luns=8").unwrap(); // parameters
    });
    let bytes = encode(|out| {
        out.write_string(1, "pod-host").unwrap(); // hostname
        out.write_string(2, "nameserver 10.0.0.10").unwrap(); // dns
        out.write_bytes(3, &upstream_storage()).unwrap(); // storages
        out.write_bool(4, true).unwrap(); // sandbox_pidns
        out.write_string(5, "sandbox-1").unwrap(); // sandbox_id
        out.write_string(6, "/usr/share/oci/hooks").unwrap(); // guest_hook_path
        out.write_bytes(7, &kernel_module).unwrap(); // kernel_modules
        out.write_bool(8, true).unwrap(); // guest_userns
    });

    let request = CreateSandboxRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(request.hostname, "pod-host");
    assert_eq!(request.dns, vec!["nameserver 10.0.0.10"]);
    assert_eq!(request.storages.len(), 1);
    assert_upstream_storage(&request.storages[0]);
    assert!(request.sandbox_pidns);
    assert_eq!(request.sandbox_id, "sandbox-1");
}

/// Upstream `VolumeUsage` as read by hand.
#[derive(Debug, Default, PartialEq)]
struct DecodedUsage {
    available: u64,
    total: u64,
    used: u64,
    unit: i32,
}

/// Splits a raw tag into field number and wire type.
fn next_tag(input: &mut CodedInputStream) -> Option<(u32, WireType)> {
    let tag = input.read_raw_tag_or_eof().unwrap()?;
    let wire_type = WireType::new(tag & 7).expect("invalid wire type");
    Some((tag >> 3, wire_type))
}

fn decode_usage(bytes: &[u8]) -> DecodedUsage {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut usage = DecodedUsage::default();
    while let Some((number, wire_type)) = next_tag(&mut input) {
        match (number, wire_type) {
            (1, WireType::Varint) => usage.available = input.read_uint64().unwrap(),
            (2, WireType::Varint) => usage.total = input.read_uint64().unwrap(),
            (3, WireType::Varint) => usage.used = input.read_uint64().unwrap(),
            (4, WireType::Varint) => usage.unit = input.read_int32().unwrap(),
            (number, wire_type) => panic!("unexpected VolumeUsage field {number} ({wire_type:?})"),
        }
    }
    usage
}

/// Decodes `VolumeStatsResponse{usage=1, volume_condition=2}` by hand.
fn decode_stats(bytes: &[u8]) -> (Vec<DecodedUsage>, Option<(bool, String)>) {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut usages = Vec::new();
    let mut condition = None;
    while let Some((number, wire_type)) = next_tag(&mut input) {
        assert_eq!(wire_type, WireType::LengthDelimited, "field {number}");
        let nested = input.read_bytes().unwrap();
        match number {
            1 => usages.push(decode_usage(&nested)),
            2 => {
                let mut inner = CodedInputStream::from_bytes(&nested);
                let (mut abnormal, mut message) = (false, String::new());
                while let Some((number, _)) = next_tag(&mut inner) {
                    match number {
                        1 => abnormal = inner.read_bool().unwrap(),
                        2 => message = inner.read_string().unwrap(),
                        other => panic!("unexpected VolumeCondition field {other}"),
                    }
                }
                condition = Some((abnormal, message));
            }
            other => panic!("unexpected VolumeStatsResponse field {other}"),
        }
    }
    (usages, condition)
}

#[test]
fn volume_stats_reply_decodes_by_field_number() {
    let mut bytes_usage = VolumeUsage::new();
    bytes_usage.unit = Unit::BYTES.into();
    bytes_usage.total = 10 << 30;
    bytes_usage.used = 3 << 30;
    bytes_usage.available = (6 << 30) + 17;
    let mut inode_usage = VolumeUsage::new();
    inode_usage.unit = Unit::INODES.into();
    inode_usage.total = 655_360;
    inode_usage.used = 12;
    inode_usage.available = 655_348;
    let mut condition = VolumeCondition::new();
    condition.abnormal = true;
    condition.message = "filesystem is mounted read-only".into();
    let mut reply = VolumeStatsResponse::new();
    reply.usage = vec![bytes_usage, inode_usage];
    reply.volume_condition = Some(condition).into();

    let (usages, condition) = decode_stats(&reply.write_to_bytes().unwrap());
    let expected_bytes = DecodedUsage {
        available: (6 << 30) + 17,
        total: 10 << 30,
        used: 3 << 30,
        unit: 1,
    };
    let expected_inodes = DecodedUsage {
        available: 655_348,
        total: 655_360,
        used: 12,
        unit: 2,
    };
    assert_eq!(usages, vec![expected_bytes, expected_inodes]);
    assert_eq!(
        condition,
        Some((true, "filesystem is mounted read-only".to_string()))
    );
}

/// Sends `/grpc.Health/<method>` to the real agent and returns the reply payload.
fn health_reply(agent: &Agent, method: &str) -> Vec<u8> {
    let mut stream = UnixStream::connect(&agent.socket).unwrap();
    // CheckRequest{service=1}.
    let check_request = encode(|out| out.write_string(1, "").unwrap());
    let request = request_bytes("grpc.Health", method, check_request);
    write_frame(&mut stream, 1, MESSAGE_TYPE_REQUEST, &request);
    let response = read_response(&mut stream, 1);
    assert_eq!(response.status.code.enum_value(), Ok(ttrpc::Code::OK));
    response.payload
}

#[test]
fn health_replies_decode_by_field_number() {
    let agent = Agent::start();

    // HealthCheckResponse{status=1}, SERVING = 1.
    let payload = health_reply(&agent, "Check");
    let mut input = CodedInputStream::from_bytes(&payload);
    let mut status = None;
    while let Some((number, wire_type)) = next_tag(&mut input) {
        assert_eq!((number, wire_type), (1, WireType::Varint));
        status = Some(input.read_int32().unwrap());
    }
    assert_eq!(status, Some(1));

    // VersionCheckResponse{grpc_version=1, agent_version=2}.
    let payload = health_reply(&agent, "Version");
    let mut input = CodedInputStream::from_bytes(&payload);
    let (mut grpc_version, mut agent_version) = (None, None);
    while let Some((number, wire_type)) = next_tag(&mut input) {
        assert_eq!(wire_type, WireType::LengthDelimited, "field {number}");
        match number {
            1 => grpc_version = Some(input.read_string().unwrap()),
            2 => agent_version = Some(input.read_string().unwrap()),
            other => panic!("unexpected VersionCheckResponse field {other}"),
        }
    }
    assert_eq!(grpc_version.as_deref(), Some(volume_agent::API_VERSION));
    assert_eq!(agent_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
}
