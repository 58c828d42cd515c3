//! The agent under connection pressure: a full descriptor table must not
//! make it spin, and it serves again once clients go away.

mod cli_support;

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cli_support::{agent_command, stderr, stdout, volumectl};

/// Descriptor limit of the agent under test, low enough for a test to use
/// up and high enough for the agent to start.
const AGENT_MAX_FILES: u64 = 64;

/// Kills the agent by PID when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns the user plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of proc(5), so 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn full_descriptor_table_does_not_spin() {
    let dir = tempfile::Builder::new()
        .prefix("volume-agent-fd-limit-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let address = format!("unix://{}", socket.display());
    let mut command = agent_command(dir.path(), &address);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure makes one setrlimit(2) system call, which is
    // async-signal-safe, and changes only the child process.
    unsafe {
        command.pre_exec(|| {
            let limit = rustix::process::Rlimit {
                current: Some(AGENT_MAX_FILES),
                maximum: Some(AGENT_MAX_FILES),
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                .map_err(std::io::Error::from)
        });
    }
    let agent = ChildGuard(command.spawn().expect("starting volume-agent failed"));
    let started = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Twice the limit: the kernel queues the connections the agent cannot
    // accept, so accept(2) keeps failing with EMFILE.
    let clients: Vec<UnixStream> = (0..2 * AGENT_MAX_FILES)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(agent.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(agent.0.id()) - before;
    // A spinning accept loop burns a whole core: about 200 ticks in 2 s at
    // the usual 100 ticks per second.
    assert!(
        used < 40,
        "the agent used {used} clock ticks in 2 s while idle"
    );

    drop(clients);
    let output = volumectl(&["--address", &address, "--timeout", "10", "check"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "SERVING\n");
}
