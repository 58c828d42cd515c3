//! The real volume-agent binary driven by the real volumectl binary over a
//! unix socket (and over a stand-in hybrid vsock socket): health calls,
//! unimplemented methods, and requests the agent must reject while it
//! keeps serving other clients. Runs without root.

mod cli_support;
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cli_support::fake_vmm::{FakeVmm, Reply};
use cli_support::frames::{read_response_status, request_bytes, write_frame, MESSAGE_TYPE_REQUEST};
use cli_support::{
    agent_command, assert_failed_with, assert_succeeded, attach_args, stderr, stdout, volumectl,
    Agent,
};

#[test]
fn check_reports_serving() {
    let agent = Agent::start();
    let output = volumectl(&["--address", &agent.address, "check"]);
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "SERVING\n");

    let output = volumectl(&["--address", &agent.address, "--json", "check"]);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["status"], "SERVING");
}

#[test]
fn version_reports_package_version() {
    let agent = Agent::start();
    let output = volumectl(&["--address", &agent.address, "--json", "version"]);
    assert_succeeded(&output);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(value["grpc_version"], volume_agent::API_VERSION);

    let output = volumectl(&["--address", &agent.address, "version"]);
    assert!(stdout(&output).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn unimplemented_method_names_itself() {
    let agent = Agent::start();
    for method in ["ExecProcess", "GetGuestDetails", "SetPolicy"] {
        let output = volumectl(&["--address", &agent.address, "call", method]);
        let path = format!("/grpc.AgentService/{method}");
        let text = assert_failed_with(&output, "UNIMPLEMENTED");
        assert!(
            text.contains(&format!("{path} is not implemented by volume-agent")),
            "{text}"
        );
        assert!(
            stdout(&output).starts_with(&format!("{path}: UNIMPLEMENTED: ")),
            "{}",
            stdout(&output)
        );
    }
}

#[test]
fn unknown_method_is_unimplemented() {
    let agent = Agent::start();
    let output = volumectl(&["--address", &agent.address, "call", "NoSuchMethod"]);
    let text = assert_failed_with(&output, "UNIMPLEMENTED");
    assert!(text.contains("NoSuchMethod"), "{text}");
}

#[test]
fn served_method_via_call_is_ok() {
    let agent = Agent::start();
    let output = volumectl(&[
        "--address",
        &agent.address,
        "call",
        "--service",
        "grpc.Health",
        "Check",
    ]);
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "/grpc.Health/Check: OK\n");
}

fn assert_check_works(agent: &mut Agent) {
    assert!(agent.is_running(), "the agent exited");
    let output = volumectl(&["--address", &agent.address, "--timeout", "10", "check"]);
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "SERVING\n");
}

#[test]
fn garbage_frame_keeps_serving() {
    let mut agent = Agent::start();

    // A request frame whose payload is not a ttrpc Request message.
    let mut garbage = UnixStream::connect(&agent.socket).unwrap();
    write_frame(
        &mut garbage,
        1,
        MESSAGE_TYPE_REQUEST,
        &[0xff, 0xfe, 0x01, 0x80, 0x80],
    );
    let status = read_response_status(&mut garbage, 1);
    assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::INVALID_ARGUMENT));

    // Bytes that are no frame at all, on a connection left open.
    let mut junk = UnixStream::connect(&agent.socket).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
        .unwrap();

    assert_check_works(&mut agent);
    drop(junk);
    drop(garbage);
    assert_check_works(&mut agent);
}

#[test]
fn undecodable_payload_is_invalid_argument() {
    let mut agent = Agent::start();
    let mut stream = UnixStream::connect(&agent.socket).unwrap();
    // Field 3 (storages) as length-delimited with a length past the end.
    let request = request_bytes("grpc.AgentService", "CreateSandbox", vec![0x1a, 0x7f, 0x01]);
    write_frame(&mut stream, 1, MESSAGE_TYPE_REQUEST, &request);
    let status = read_response_status(&mut stream, 1);
    assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::INVALID_ARGUMENT));
    assert!(
        status.message.contains("/grpc.AgentService/CreateSandbox"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("not a valid protobuf"),
        "{}",
        status.message
    );
    assert_check_works(&mut agent);
}

#[test]
fn oversized_request_is_rejected() {
    let mut agent = Agent::start();
    let mut stream = UnixStream::connect(&agent.socket).unwrap();
    let limit = ttrpc::proto::MESSAGE_LENGTH_MAX;
    let request = request_bytes("grpc.Health", "Check", vec![b'x'; limit + 1]);
    assert!(request.len() > limit);
    write_frame(&mut stream, 1, MESSAGE_TYPE_REQUEST, &request);
    let status = read_response_status(&mut stream, 1);
    assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::INVALID_ARGUMENT));
    assert!(status.message.contains("exceed"), "{}", status.message);

    // The same connection still serves a well-formed request.
    write_frame(
        &mut stream,
        3,
        MESSAGE_TYPE_REQUEST,
        &request_bytes("grpc.Health", "Check", vec![]),
    );
    let status = read_response_status(&mut stream, 3);
    assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::OK));
    assert_check_works(&mut agent);
}

#[test]
fn unknown_enum_value_is_invalid_argument() {
    let mut agent = Agent::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let client = volume_agent::client::connect(&agent.address, Duration::from_secs(10))
            .await
            .unwrap();
        let client = protocols::agent_ttrpc::AgentServiceClient::new(client);
        let mut fs_group = protocols::agent::FSGroup::new();
        fs_group.group_id = 1000;
        fs_group.group_change_policy = protobuf::EnumOrUnknown::from_i32(7);
        let mut storage = protocols::agent::Storage::new();
        storage.driver = "scsi".into();
        storage.source = "0:0".into();
        storage.mount_point = format!("{}/storage/MDow", agent.dir.path().display());
        storage.fs_group = Some(fs_group).into();
        let mut request = protocols::agent::CreateSandboxRequest::new();
        request.storages.push(storage);
        client
            .create_sandbox(ttrpc::context::with_timeout(10_000_000_000), &request)
            .await
    });
    match status {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code.enum_value(), Ok(ttrpc::Code::INVALID_ARGUMENT));
            assert!(
                status.message.contains("group_change_policy 7"),
                "{}",
                status.message
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(!agent.dir.path().join("storage/MDow").exists());
    assert_check_works(&mut agent);
}

#[test]
fn empty_required_fields_are_invalid_argument() {
    let mut agent = Agent::start();
    let address = agent.address.clone();

    let output = volumectl(&["--address", &address, "stats", ""]);
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("volume_guest_path is empty"), "{text}");

    let output = volumectl(&["--address", &address, "resize", "", "1G"]);
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("volume_guest_path is empty"), "{text}");

    let output = volumectl(&["--address", &address, "detach", "--container", ""]);
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("container_id is empty"), "{text}");

    let storage_json = agent.dir.path().join("storage.json");
    std::fs::write(
        &storage_json,
        r#"{"driver":"blk","source":"","fstype":"ext4"}"#,
    )
    .unwrap();
    let output = volumectl(&[
        "--address",
        &address,
        "attach",
        "--storage-json",
        storage_json.to_str().unwrap(),
        "--sandbox",
    ]);
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("storages[0].source is empty"), "{text}");
    assert_check_works(&mut agent);
}

#[test]
fn relative_volume_path_is_invalid_argument() {
    let agent = Agent::start();
    let output = volumectl(&["--address", &agent.address, "stats", "data/volume"]);
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("is not absolute"), "{text}");
}

#[test]
fn missing_socket_times_out_naming_address() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/absent.sock", dir.path().display());
    let started = Instant::now();
    let output = volumectl(&["--address", &address, "--timeout", "0.5", "check"]);
    let elapsed = started.elapsed();
    let text = assert_failed_with(&output, "DEADLINE_EXCEEDED");
    assert!(text.contains(&address), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(400),
        "gave up after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn invalid_address_is_invalid_argument() {
    for address in [
        "tcp://127.0.0.1:1",
        "unix://relative.sock",
        "hvsock:///run/vm.sock",
    ] {
        let output = volumectl(&["--address", address, "--timeout", "1", "check"]);
        let text = assert_failed_with(&output, "INVALID_ARGUMENT");
        assert!(text.contains(address), "{text}");
    }
}

#[test]
fn agent_started_late_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let address = format!("unix://{}", socket.display());
    let client = std::process::Command::new(env!("CARGO_BIN_EXE_volumectl"))
        .args(["--address", &address, "--timeout", "20", "check"])
        .env_remove("VOLUMECTL_ADDRESS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let mut agent_process = agent_command(dir.path(), &address)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let output = client.wait_with_output().unwrap();
    let _ = agent_process.kill();
    let _ = agent_process.wait();
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "SERVING\n");
}

#[test]
fn hybrid_vsock_retries_until_ok() {
    let agent = Agent::start();
    let vmm_socket = agent.dir.path().join("vmm.sock");
    let replies = vec![
        Reply::Close,
        Reply::Reject("ERR no listener"),
        Reply::Accept,
    ];
    let vmm = FakeVmm::start(&vmm_socket, &agent.socket, replies);
    let address = format!("hvsock://{}:1024", vmm_socket.display());

    let output = volumectl(&["--address", &address, "--timeout", "20", "check"]);
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "SERVING\n");
    assert_eq!(vmm.requests(), vec!["CONNECT 1024"; 3]);
}

#[test]
fn hybrid_vsock_rejection_quotes_reply() {
    let agent = Agent::start();
    let vmm_socket = agent.dir.path().join("vmm.sock");
    let vmm = FakeVmm::start(
        &vmm_socket,
        &agent.socket,
        vec![Reply::Reject("ERR port 77")],
    );
    let address = format!("hvsock://{}:77", vmm_socket.display());

    let output = volumectl(&["--address", &address, "--timeout", "0.5", "check"]);
    let text = assert_failed_with(&output, "DEADLINE_EXCEEDED");
    assert!(text.contains("\"ERR port 77\""), "{text}");
    assert!(text.contains("CONNECT 77"), "{text}");
    assert!(vmm.requests().len() >= 2, "no retry: {:?}", vmm.requests());
}

#[test]
fn listen_path_regular_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let output = agent_command(dir.path(), &format!("unix://{}", path.display()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("is not a socket"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn vsock_port_in_use_is_rejected() {
    // Bind a port first; a host without a vsock transport cannot run this.
    let port = 40_000 + (std::process::id() % 20_000);
    let holder = match bind_vsock_port(port) {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("skipped: binding vsock port {port} failed ({error}); no vsock transport");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let output = agent_command(dir.path(), &format!("vsock://-1:{port}"))
        .output()
        .unwrap();
    drop(holder);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains(&format!("vsock port {port} is in use")),
        "{text}"
    );
}

/// Binds and listens on vsock `port` for any CID.
fn bind_vsock_port(port: u32) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    let socket = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port),
    )?;
    listen(&socket, Backlog::new(1)?)?;
    Ok(socket)
}

/// Runs volumectl against the agent of `env` with `args` after the address.
fn volumectl_at(env: &common::TestEnv, args: &[&str]) -> std::process::Output {
    let address = format!("unix://{}", env.path().join("agent.sock").display());
    let mut all = vec!["--address", address.as_str(), "--timeout", "30"];
    all.extend_from_slice(args);
    volumectl(&all)
}

#[test]
fn container_binds_via_volumectl() {
    if !common::running_as_root("container_binds_via_volumectl") {
        return;
    }
    let mut env = common::TestEnv::new("volumectl-binds");
    let device = env.add_loop("binds", 64 << 20, Some("ext4"));
    env.start_agent();
    let mount_point = env.storage_root().join("binds");
    let mount_point_text = mount_point.to_str().unwrap().to_string();
    let rootfs = env.rootfs("c1");
    let rootfs_text = rootfs.to_str().unwrap().to_string();

    let rest = [
        "--container",
        "c1",
        "--rootfs",
        &rootfs_text,
        "--mount",
        "/data",
        "--mount",
        "/config:ro",
    ];
    let output = volumectl_at(
        &env,
        &attach_args(&device, "ext4", &mount_point_text, &rest),
    );
    assert_succeeded(&output);
    assert_eq!(
        stdout(&output),
        format!("{mount_point_text}\n"),
        "{}",
        env.agent_log()
    );
    let mounts = common::mounts_under(env.path());
    assert!(mounts.contains(&mount_point), "{mounts:?}");
    assert!(mounts.contains(&rootfs.join("data")), "{mounts:?}");
    assert!(mounts.contains(&rootfs.join("config")), "{mounts:?}");

    // The rw bind writes through to the storage; the ro bind rejects writes.
    std::fs::write(rootfs.join("data/hello"), b"from the container").unwrap();
    assert_eq!(
        std::fs::read(mount_point.join("hello")).unwrap(),
        b"from the container"
    );
    let error = std::fs::write(rootfs.join("config/denied"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS));

    // Stats through the bind target equal stats at the mount point.
    let at_mount = volumectl_at(&env, &["--json", "stats", &mount_point_text]);
    assert_succeeded(&at_mount);
    let at_bind = volumectl_at(&env, &["--json", "stats", &format!("{rootfs_text}/data")]);
    assert_succeeded(&at_bind);
    let at_mount: serde_json::Value = serde_json::from_slice(&at_mount.stdout).unwrap();
    let at_bind: serde_json::Value = serde_json::from_slice(&at_bind.stdout).unwrap();
    assert_eq!(at_mount["usage"][0]["unit"], "BYTES");
    assert!(at_mount["usage"][0]["total"].as_u64().unwrap() > 32 << 20);
    assert_eq!(at_mount["usage"][0]["total"], at_bind["usage"][0]["total"]);

    let output = volumectl_at(&env, &["detach", "--container", "c1"]);
    assert_succeeded(&output);
    assert_eq!(stdout(&output), "detached container c1\n");
    let mounts = common::mounts_under(env.path());
    assert!(
        mounts.is_empty(),
        "left mounted: {mounts:?}\n{}",
        env.agent_log()
    );
}

#[test]
fn default_mount_point_outside_root_is_rejected() {
    if !common::running_as_root("default_mount_point_outside_root_is_rejected") {
        return;
    }
    let mut env = common::TestEnv::new("volumectl-outside");
    let device = env.add_loop("outside", 64 << 20, Some("ext4"));
    env.start_agent();

    // The default mount point is under /run/kata-containers/sandbox/storage,
    // which is not this agent's storage root.
    let output = volumectl_at(
        &env,
        &[
            "attach",
            "--driver",
            "mmioblk",
            "--source",
            &device,
            "--sandbox",
        ],
    );
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(
        text.contains("/run/kata-containers/sandbox/storage/"),
        "{text}"
    );
    assert!(common::mounts_under(env.path()).is_empty());
    let default_mount_point = std::path::Path::new(text.split('"').nth(1).unwrap_or_default());
    assert!(
        common::mounts_under(default_mount_point).is_empty(),
        "{default_mount_point:?} was mounted"
    );
}

#[test]
fn silent_server_times_out_request() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // Accepts one connection and reads it to the end without replying.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut received);
        received.len()
    });

    let address = format!("unix://{}", socket.display());
    let started = Instant::now();
    let output = volumectl(&["--address", &address, "--timeout", "0.5", "check"]);
    let elapsed = started.elapsed();
    let text = assert_failed_with(&output, "DEADLINE_EXCEEDED");
    assert!(
        text.contains(&format!(
            "Check request to {address} got no reply within 500 ms"
        )),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let received = server.join().unwrap();
    assert!(received > 10, "the request never reached the server");
}

#[test]
fn storage_json_from_stdin() {
    let agent = Agent::start();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_volumectl"))
        .args([
            "--address",
            &agent.address,
            "attach",
            "--storage-json",
            "-",
            "--sandbox",
        ])
        .env_remove("VOLUMECTL_ADDRESS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A driver the agent does not know reaches the agent, which rejects it.
    let storage = r#"{"driver":"9p","source":"share","fstype":"9p","mount_point":"/x"}"#;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(storage.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = assert_failed_with(&output, "INVALID_ARGUMENT");
    assert!(text.contains("9p"), "{text}");
}
