//! A second agent started on the socket of a running one fails before it
//! touches the state that the running agent owns.

mod cli_support;

use std::os::unix::fs::MetadataExt;

use cli_support::{agent_command, Agent};

#[test]
fn live_socket_leaves_state_untouched() {
    let mut first = Agent::start();
    let state_file = first.dir.path().join("state.json");
    let started = std::time::Instant::now();
    while !state_file.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the first agent wrote no state file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = std::fs::metadata(&state_file).unwrap();

    // The same socket, storage root and state file, as a second copy of the
    // agent started by mistake would have them.
    let output = agent_command(first.dir.path(), &first.address)
        .output()
        .expect("starting the second volume-agent failed");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second agent started");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    let after = std::fs::metadata(&state_file).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (before.ino(), before.mtime_nsec()),
        "the second agent rewrote the state file"
    );
    assert!(first.is_running(), "the first agent stopped");
}
