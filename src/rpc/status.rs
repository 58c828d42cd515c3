//! The one place where typed errors become ttrpc statuses.

use crate::device::DeviceError;
use crate::storage::StorageError;
use crate::volume::VolumeError;

/// An error that maps to one ttrpc status code.
pub trait StatusCode: std::error::Error {
    fn code(&self) -> ttrpc::Code;
}

impl StatusCode for DeviceError {
    fn code(&self) -> ttrpc::Code {
        DeviceError::code(self)
    }
}

impl StatusCode for StorageError {
    fn code(&self) -> ttrpc::Code {
        StorageError::code(self)
    }
}

impl StatusCode for VolumeError {
    fn code(&self) -> ttrpc::Code {
        VolumeError::code(self)
    }
}

/// Renders `error` with its chain of sources, outermost first.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Builds the ttrpc error returned for `error`.
pub fn to_ttrpc(error: &dyn StatusCode) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error_chain(error)))
}

/// A request that fails validation in the handler itself.
pub fn invalid_argument(message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        message.into(),
    ))
}
