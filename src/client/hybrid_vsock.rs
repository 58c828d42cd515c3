//! The hybrid vsock handshake of Firecracker, Cloud Hypervisor and
//! vhost-device-vsock: the host connects to the VMM's unix socket, writes
//! `CONNECT <port>\n` and reads one line that starts with `OK ` once the
//! guest has accepted the connection. After that line the socket carries the
//! guest stream unchanged.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest reply line read before giving up. A real reply is `OK <port>\n`,
/// under 20 bytes.
const MAX_REPLY_LEN: usize = 256;

/// Outcome of a handshake that did not end with an `OK ` line.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The VMM replied with a line that does not start with `OK `.
    Rejected {
        reply: String,
    },
    /// The VMM closed the socket before a full line, as it may do while
    /// nothing in the guest listens on the port.
    Closed {
        partial: String,
    },
    /// The reply exceeded [`MAX_REPLY_LEN`] without a newline.
    ReplyTooLong,
    Io(std::io::Error),
}

/// Asks the VMM behind `stream` for guest vsock `port`.
pub async fn handshake(stream: &mut UnixStream, port: u32) -> Result<(), HandshakeFailure> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(HandshakeFailure::Io)?;

    let line = read_line(stream).await?;
    if line.starts_with("OK ") {
        Ok(())
    } else {
        Err(HandshakeFailure::Rejected { reply: line })
    }
}

/// Reads up to and including `\n`, one byte at a time so that no byte of the
/// guest stream that follows is consumed here.
async fn read_line(stream: &mut UnixStream) -> Result<String, HandshakeFailure> {
    let mut line = Vec::with_capacity(32);
    loop {
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte).await.map_err(HandshakeFailure::Io)?;
        if read == 0 {
            return Err(HandshakeFailure::Closed {
                partial: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LEN {
            return Err(HandshakeFailure::ReplyTooLong);
        }
    }
}
