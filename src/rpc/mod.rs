//! ttrpc services and the listener they are served on.

pub mod agent;
pub mod decode;
pub mod health;
pub mod repeat;
pub mod status;
pub mod unimplemented;
pub mod validate;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use slog::{error, info};
use tokio::io::{AsyncRead, AsyncWrite};
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

pub use agent::AgentServiceImpl;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid listen address {address:?}: expected vsock://CID:PORT or unix:///PATH")]
    InvalidAddress { address: String },
    #[error("{path} exists and is not a socket; remove it or choose another --listen path")]
    NotASocket { path: PathBuf },
    #[error("another server is listening on {path}; stop it or choose another --listen path")]
    SocketInUse { path: PathBuf },
    #[error("vsock port {port} is in use; stop the other listener or choose another port")]
    VsockPortInUse { port: u32 },
    #[error("binding {address} failed")]
    Bind {
        address: String,
        #[source]
        error: std::io::Error,
    },
}

/// Pause after a failed accept(2). A failure such as EMFILE leaves the
/// connection queued, so an immediate retry fails again and the accept loop
/// of the ttrpc server would spin on a CPU.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Binds the listener for `address` (`unix:///PATH` or `vsock://CID:PORT`).
///
/// A stale unix socket left by a dead agent is replaced, but a live one, or
/// a path that is not a socket, is an error: the agent never deletes a
/// file it did not create. Accept failures are logged to `logger`.
pub fn bind(address: &str, logger: &slog::Logger) -> Result<Listener, ListenError> {
    if let Some(path) = address.strip_prefix("unix://") {
        let listener = bind_unix(address, Path::new(path))?;
        let accepted = futures::stream::unfold(listener, |listener| async move {
            let result = listener.accept().await.map(|(stream, _)| stream);
            Some((result, listener))
        });
        return Ok(paced_listener(accepted, logger.clone()));
    }
    if let Some(rest) = address.strip_prefix("vsock://") {
        let invalid = || ListenError::InvalidAddress {
            address: address.to_string(),
        };
        let (cid, port) = rest.split_once(':').ok_or_else(invalid)?;
        let cid = if cid == "-1" {
            libc::VMADDR_CID_ANY
        } else {
            cid.parse().map_err(|_| invalid())?
        };
        let port: u32 = port.parse().map_err(|_| invalid())?;
        let vsock_address = tokio_vsock::VsockAddr::new(cid, port);
        return match tokio_vsock::VsockListener::bind(vsock_address) {
            Ok(listener) => Ok(paced_listener(listener.incoming(), logger.clone())),
            Err(error) if error.raw_os_error() == Some(libc::EADDRINUSE) => {
                Err(ListenError::VsockPortInUse { port })
            }
            Err(error) => Err(ListenError::Bind {
                address: address.to_string(),
                error,
            }),
        };
    }
    Err(ListenError::InvalidAddress {
        address: address.to_string(),
    })
}

fn bind_unix(address: &str, path: &Path) -> Result<tokio::net::UnixListener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_socket() => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            // No process accepts on it, so an agent that died left it behind.
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
    let bind_error = |error| ListenError::Bind {
        address: address.to_string(),
        error,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    tokio::net::UnixListener::from_std(listener).map_err(bind_error)
}

/// Wraps a stream of accepted connections so that each failed accept is
/// followed by [`ACCEPT_RETRY_PAUSE`]. Only the first failure of a run is
/// logged, and the recovery reports how many there were.
fn paced_listener<S>(
    accepted: impl Stream<Item = std::io::Result<S>> + Send + 'static,
    logger: slog::Logger,
) -> Listener
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    let start = (Box::pin(accepted), logger, 0u64);
    let paced = futures::stream::unfold(start, |(mut accepted, logger, failures)| async move {
        let result = accepted.next().await?;
        let failures = match &result {
            Ok(_) => {
                if failures > 0 {
                    info!(logger, "accepting connections again"; "failed_accepts" => failures);
                }
                0
            }
            Err(err) => {
                if failures == 0 {
                    error!(logger, "accepting a connection failed; retrying every 100 ms";
                        "error" => %err);
                }
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                failures + 1
            }
        };
        Some((result, (accepted, logger, failures)))
    });
    Listener::new(paced)
}

/// Builds the server with the agent and health services on `listener`.
/// Upstream agent methods that this agent does not serve get an explicit
/// UNIMPLEMENTED reply, and undecodable payloads get INVALID_ARGUMENT.
pub fn create_server(listener: Listener, agent: Arc<AgentServiceImpl>) -> Server {
    let logger = agent.logger.clone();
    let mut services = protocols::agent_ttrpc::create_agent_service(agent);
    services.extend(protocols::health_ttrpc::create_health(Arc::new(
        health::HealthService,
    )));
    unimplemented::register(&mut services, &logger);
    decode::reject_undecodable_requests(&mut services, &logger);
    Server::new()
        .add_listener(listener)
        .register_service(services)
}
