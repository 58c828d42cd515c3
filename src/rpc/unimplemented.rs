//! Explicit UNIMPLEMENTED replies for the upstream `grpc.AgentService`
//! methods this agent does not serve.
//!
//! Without a handler the ttrpc server (0.10) replies `UNIMPLEMENTED` with
//! only "<Method> method" as the message. A handler per upstream name lets
//! the message give the full method path and name the agent that replied, so
//! that a host runtime's log shows why a call failed.

use std::collections::HashMap;

use async_trait::async_trait;
use slog::warn;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use super::repeat::RepeatCounter;

/// Service name of the agent API.
pub const AGENT_SERVICE: &str = "grpc.AgentService";

/// Methods of the upstream Kata Containers `AgentService` (agent.proto of
/// Kata Containers 3.x) that this agent leaves unimplemented.
pub const UPSTREAM_ONLY_METHODS: &[&str] = &[
    "StartContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "SetPolicy",
];

/// Returns the status message for the unimplemented method at `path`.
pub fn message(path: &str) -> String {
    format!("{path} is not implemented by volume-agent, which serves only the storage methods")
}

struct UnimplementedMethod {
    path: String,
    logger: slog::Logger,
    requests: RepeatCounter,
}

#[async_trait]
impl MethodHandler for UnimplementedMethod {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        _request: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        if let Some(count) = self.requests.record() {
            warn!(self.logger, "request for an unimplemented method";
                "method" => &self.path, "count" => count);
        }
        let mut response = ttrpc::Response::new();
        response.status = Some(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            message(&self.path),
        ))
        .into();
        Ok(response)
    }
}

/// Adds a handler to `services` for each of [`UPSTREAM_ONLY_METHODS`] that
/// no service registered, so served methods are never shadowed.
pub fn register(services: &mut HashMap<String, Service>, logger: &slog::Logger) {
    let service = services
        .entry(AGENT_SERVICE.to_string())
        .or_insert_with(|| Service {
            methods: HashMap::new(),
            streams: HashMap::new(),
        });
    for method in UPSTREAM_ONLY_METHODS {
        service
            .methods
            .entry(method.to_string())
            .or_insert_with(|| {
                Box::new(UnimplementedMethod {
                    path: format!("/{AGENT_SERVICE}/{method}"),
                    logger: logger.clone(),
                    requests: RepeatCounter::default(),
                })
            });
    }
}
