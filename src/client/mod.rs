//! Host-side connections to the agent, used by `volumectl` and the tests.
//!
//! [`connect`] opens a ttrpc client over a unix socket, AF_VSOCK or hybrid
//! vsock, and keeps retrying while the failure means the agent is not up
//! yet, so that a caller can start right after booting the guest.

mod address;
mod hybrid_vsock;

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::Instant;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

pub use address::{Address, AddressSyntaxError};
use hybrid_vsock::HandshakeFailure;

/// First pause between connection attempts, which doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(20);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid agent address {address:?}: {reason}")]
    InvalidAddress {
        address: String,
        reason: &'static str,
    },
    #[error("connecting to {address} failed; check the address and that you may open the socket")]
    Connect {
        address: String,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "hybrid vsock handshake on {address} failed: the VMM replied {reply:?} to \
         CONNECT {port}; check that the agent listens on vsock port {port} in the guest"
    )]
    HandshakeRejected {
        address: String,
        port: u32,
        reply: String,
    },
    #[error(
        "hybrid vsock handshake on {address} failed: the VMM closed the socket after \
         CONNECT {port} (partial reply {partial:?}); the guest may not be listening on \
         port {port} yet"
    )]
    HandshakeClosed {
        address: String,
        port: u32,
        partial: String,
    },
    #[error(
        "hybrid vsock handshake on {address} failed: the reply to CONNECT {port} has no \
         newline in its first bytes; check that {address} is a VMM's hybrid vsock socket"
    )]
    HandshakeReplyTooLong { address: String, port: u32 },
    #[error("hybrid vsock handshake on {address} failed while sending or reading CONNECT {port}")]
    Handshake {
        address: String,
        port: u32,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "connecting to {address} timed out after {} ms; check that the agent (and for hvsock \
         the VMM) is running and listening there, or allow more time",
        timeout.as_millis()
    )]
    TimedOut {
        address: String,
        timeout: Duration,
        /// The failure of the last attempt, if one finished before the deadline.
        #[source]
        last: Option<Box<ClientError>>,
    },
}

impl ClientError {
    /// Returns the ttrpc status code that best describes this failure.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            ClientError::InvalidAddress { .. } => ttrpc::Code::INVALID_ARGUMENT,
            ClientError::TimedOut { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            ClientError::Connect { .. }
            | ClientError::HandshakeRejected { .. }
            | ClientError::HandshakeClosed { .. }
            | ClientError::HandshakeReplyTooLong { .. }
            | ClientError::Handshake { .. } => ttrpc::Code::UNAVAILABLE,
        }
    }

    /// Tells whether this failure can mean that the agent, the guest or the VMM
    /// is still starting, so that another attempt may succeed.
    fn is_not_up_yet(&self) -> bool {
        match self {
            ClientError::Connect { error, .. } => is_not_up_yet(error),
            ClientError::Handshake { error, .. } => is_not_up_yet(error),
            // A VMM closes the socket or sends a non-OK line while nothing in
            // the guest accepts on the port. NOTE: a rejection for another
            // reason is retried as well, until the timeout.
            ClientError::HandshakeRejected { .. } | ClientError::HandshakeClosed { .. } => true,
            _ => false,
        }
    }
}

fn is_not_up_yet(error: &std::io::Error) -> bool {
    // AF_VSOCK returns ENODEV while no VM has the CID, such as before the
    // VMM opened its vhost-vsock device (vhost_transport_send_pkt in Linux
    // drivers/vhost/vsock.c). NOTE: a host without any vsock transport
    // returns it too, and is then retried until the timeout.
    let vsock_not_up = error.raw_os_error() == Some(libc::ENODEV);
    vsock_not_up
        || matches!(
            error.kind(),
            ErrorKind::NotFound
                | ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::BrokenPipe
                | ErrorKind::TimedOut
        )
}

/// Connects a ttrpc client to the agent at `address` (`unix:///PATH`,
/// `vsock://CID:PORT` or `hvsock:///PATH:PORT`).
///
/// Retries until `timeout` while the agent is not up yet: a missing socket
/// file, a refused or reset connection, no VM with the vsock CID yet, or a
/// hybrid vsock handshake that the VMM rejects or closes. Other failures
/// return at once.
///
/// # Errors
///
/// [`ClientError::InvalidAddress`] for a malformed address,
/// [`ClientError::TimedOut`] (with the last failure as source) when no
/// attempt succeeded in time, or the first failure that retrying cannot fix.
pub async fn connect(address: &str, timeout: Duration) -> Result<Client, ClientError> {
    let parsed = Address::parse(address).map_err(|AddressSyntaxError(reason)| {
        ClientError::InvalidAddress {
            address: address.to_string(),
            reason,
        }
    })?;
    let deadline = Instant::now() + timeout;
    let timed_out = |last| ClientError::TimedOut {
        address: address.to_string(),
        timeout,
        last,
    };

    let mut delay = FIRST_RETRY_DELAY;
    let mut last_error = None;
    loop {
        let attempt = tokio::time::timeout_at(deadline, open_socket(&parsed)).await;
        match attempt {
            Ok(Ok(socket)) => return Ok(Client::new(socket)),
            Ok(Err(error)) if error.is_not_up_yet() => last_error = Some(Box::new(error)),
            Ok(Err(error)) => return Err(error),
            // An attempt cut off by the deadline reports the one before it.
            Err(_elapsed) => return Err(timed_out(last_error)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(last_error));
        }
        // The last pause ends at the deadline, so one more attempt happens then.
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Makes one connection attempt, including the hybrid vsock handshake.
async fn open_socket(address: &Address) -> Result<Socket, ClientError> {
    let text = address.to_string();
    match address {
        Address::Unix(path) => Ok(Socket::from(connect_unix(path, text).await?)),
        Address::Vsock { cid, port } => {
            let vsock_address = tokio_vsock::VsockAddr::new(*cid, *port);
            let stream = tokio_vsock::VsockStream::connect(vsock_address)
                .await
                .map_err(|error| ClientError::Connect {
                    address: text,
                    error,
                })?;
            Ok(Socket::from(stream))
        }
        Address::HybridVsock { uds_path, port } => {
            let port = *port;
            let mut stream = connect_unix(uds_path, text.clone()).await?;
            hybrid_vsock::handshake(&mut stream, port)
                .await
                .map_err(|failure| handshake_error(text, port, failure))?;
            Ok(Socket::new(stream))
        }
    }
}

async fn connect_unix(path: &Path, address: String) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|error| ClientError::Connect { address, error })
}

fn handshake_error(address: String, port: u32, failure: HandshakeFailure) -> ClientError {
    match failure {
        HandshakeFailure::Rejected { reply } => ClientError::HandshakeRejected {
            address,
            port,
            reply,
        },
        HandshakeFailure::Closed { partial } => ClientError::HandshakeClosed {
            address,
            port,
            partial,
        },
        HandshakeFailure::ReplyTooLong => ClientError::HandshakeReplyTooLong { address, port },
        HandshakeFailure::Io(error) => ClientError::Handshake {
            address,
            port,
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// Serves one hybrid vsock handshake on `listener`, replying `reply`,
    /// and returns the request line it read.
    async fn serve_handshake(listener: UnixListener, reply: Vec<u8>) -> String {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        reader.get_mut().write_all(&reply).await.unwrap();
        line
    }

    #[tokio::test]
    async fn hybrid_vsock_ok_reply_connects() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vmm.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_handshake(listener, b"OK 1073741824\n".to_vec()));

        let address = format!("hvsock://{}:1024", socket.display());
        let result = connect(&address, Duration::from_secs(10)).await;
        assert!(result.is_ok(), "{:?}", result.err());
        assert_eq!(server.await.unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn hybrid_vsock_endless_reply_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vmm.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_handshake(listener, vec![b'x'; 1000]));

        let address = format!("hvsock://{}:7", socket.display());
        let started = std::time::Instant::now();
        let error = connect(&address, Duration::from_secs(30))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, ClientError::HandshakeReplyTooLong { port: 7, .. }),
            "{error:?}"
        );
        assert_eq!(error.code(), ttrpc::Code::UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(5), "it was retried");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn invalid_address_is_not_retried() {
        let error = connect("tcp://127.0.0.1:1", Duration::from_secs(30))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, ClientError::InvalidAddress { .. }),
            "{error:?}"
        );
        assert_eq!(error.code(), ttrpc::Code::INVALID_ARGUMENT);
    }
}
