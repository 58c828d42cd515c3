//! Host side of the guest's vsock: the hybrid vsock unix socket of
//! vhost-device-vsock, where a host program writes `CONNECT <port>\n` and
//! reads `OK <host port>\n` once a guest process accepted.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Guest vsock port the agent serves on (the `--listen` of the image's init).
pub const AGENT_PORT: u32 = 1024;

/// Returns the `volumectl --address` for guest `port` behind the hybrid vsock
/// socket `uds`.
pub fn hvsock_address(uds: &Path, port: u32) -> String {
    format!("hvsock://{}:{port}", uds.display())
}

/// Opens a stream to guest `port` through `uds`, or fails with the reply
/// (or the lack of one) when no guest process accepts it.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)
        .with_context(|| format!("connecting to hybrid vsock socket {}", uds.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // One byte at a time: what follows the newline belongs to the guest stream.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => bail!(
                "guest port {port} closed the connection (nothing listens yet?) after {:?}",
                String::from_utf8_lossy(&reply)
            ),
            Ok(_) => reply.push(byte[0]),
            Err(error) => return Err(error).context(format!("reading CONNECT {port} reply")),
        }
        if reply.len() > 64 {
            bail!(
                "CONNECT {port} reply too long: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    if !reply.starts_with(b"OK ") {
        bail!(
            "CONNECT {port} rejected: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Waits up to `timeout` until a guest process accepts connections on
/// `port`, and returns how long that took.
pub fn wait_for_port(uds: &Path, port: u32, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        match connect(uds, port) {
            Ok(_) => return Ok(start.elapsed()),
            Err(error) if start.elapsed() >= timeout => {
                return Err(error).context(format!("guest port {port} not up after {timeout:?}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
