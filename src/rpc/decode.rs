//! INVALID_ARGUMENT for request payloads that do not decode.
//!
//! The generated ttrpc handlers (ttrpc 0.10) return a decode failure as
//! `Error::Others("Unpack request error ...")`, which the server turns into
//! status UNKNOWN. The wrapper here replies INVALID_ARGUMENT with the method
//! path instead, because the client sent a bad request and can fix it.

use std::collections::HashMap;

use async_trait::async_trait;
use slog::error;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use super::repeat::RepeatCounter;

/// Prefix of the error text the generated handlers use for a payload that
/// does not decode as the method's request message.
const DECODE_ERROR_PREFIX: &str = "Unpack request error";

struct RejectUndecodable {
    path: String,
    inner: Box<dyn MethodHandler + Send + Sync>,
    logger: slog::Logger,
    failures: RepeatCounter,
}

#[async_trait]
impl MethodHandler for RejectUndecodable {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        request: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let payload_len = request.payload.len();
        match self.inner.handler(ctx, request).await {
            Err(ttrpc::Error::Others(text)) if text.starts_with(DECODE_ERROR_PREFIX) => {
                let detail = text[DECODE_ERROR_PREFIX.len()..].trim();
                if let Some(count) = self.failures.record() {
                    error!(self.logger, "request payload does not decode";
                        "method" => &self.path, "payload_len" => payload_len,
                        "error" => detail, "count" => count);
                }
                let message = format!(
                    "{}: the request payload ({payload_len} bytes) is not a valid protobuf \
                     request message ({detail}); send the request message of this method",
                    self.path
                );
                let mut response = ttrpc::Response::new();
                response.status =
                    Some(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, message)).into();
                Ok(response)
            }
            other => other,
        }
    }
}

/// Wraps every unary method of `services` so that an undecodable payload
/// gets INVALID_ARGUMENT.
pub fn reject_undecodable_requests(services: &mut HashMap<String, Service>, logger: &slog::Logger) {
    for (service_name, service) in services.iter_mut() {
        let methods = std::mem::take(&mut service.methods);
        service.methods = methods
            .into_iter()
            .map(|(method, inner)| {
                let wrapped: Box<dyn MethodHandler + Send + Sync> = Box::new(RejectUndecodable {
                    path: format!("/{service_name}/{method}"),
                    inner,
                    logger: logger.clone(),
                    failures: RepeatCounter::default(),
                });
                (method, wrapped)
            })
            .collect();
    }
}
