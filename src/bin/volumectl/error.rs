//! Errors of volumectl and the ttrpc code each is reported with.

use std::path::PathBuf;
use std::time::Duration;

use volume_agent::client::ClientError;

use crate::direct_volume::DirectVolumeError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The agent replied with a non-OK status, whose message is printed unchanged.
    #[error("{message}")]
    Status { code: ttrpc::Code, message: String },
    #[error(
        "{method} request to {address} got no reply within {} ms; raise --timeout if the \
         agent is busy waiting for a device",
        timeout.as_millis()
    )]
    RequestTimedOut {
        method: &'static str,
        address: String,
        timeout: Duration,
    },
    #[error(
        "{method} request to {address} failed: {detail}; check that the agent is still running"
    )]
    Transport {
        method: &'static str,
        address: String,
        detail: String,
    },
    #[error("invalid {input} {value:?}: {reason}")]
    InvalidInput {
        input: &'static str,
        value: String,
        reason: String,
    },
    #[error("reading {path} failed")]
    ReadInput {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error(
        "parsing the storage JSON from {path} failed; give an object with Storage field names"
    )]
    StorageJson {
        path: PathBuf,
        #[source]
        error: serde_json::Error,
    },
    #[error(transparent)]
    DirectVolume(#[from] DirectVolumeError),
    #[error(
        "the storage is attached at {mount_point}, but recording that mount point failed; \
         fix the cause and repeat the same attach, which the agent treats as done"
    )]
    RecordAfterAttach {
        mount_point: String,
        #[source]
        error: DirectVolumeError,
    },
}

impl CliError {
    /// Returns the ttrpc status code printed with this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            CliError::Connect(error) => error.code(),
            CliError::Status { code, .. } => *code,
            CliError::RequestTimedOut { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            CliError::Transport { .. } => ttrpc::Code::UNAVAILABLE,
            CliError::InvalidInput { .. }
            | CliError::ReadInput { .. }
            | CliError::StorageJson { .. } => ttrpc::Code::INVALID_ARGUMENT,
            CliError::DirectVolume(error) | CliError::RecordAfterAttach { error, .. } => {
                error.code()
            }
        }
    }

    /// Converts the failure of the `method` request sent to `address`.
    pub fn from_rpc(
        method: &'static str,
        address: &str,
        timeout: Duration,
        error: ttrpc::Error,
    ) -> CliError {
        match error {
            ttrpc::Error::RpcStatus(status) => CliError::Status {
                code: status.code.enum_value_or(ttrpc::Code::UNKNOWN),
                message: status.message,
            },
            // The client reports its own deadline as this text (ttrpc 0.10).
            ttrpc::Error::Others(text) if text.contains("deadline") => CliError::RequestTimedOut {
                method,
                address: address.to_string(),
                timeout,
            },
            other => CliError::Transport {
                method,
                address: address.to_string(),
                detail: other.to_string(),
            },
        }
    }
}
