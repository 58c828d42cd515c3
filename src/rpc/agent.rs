//! The storage subset of `grpc.AgentService`. Handlers stay thin: they
//! validate the request shape, pick the deadline and hand over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, RemoveContainerRequest,
    ResizeVolumeRequest, VolumeStatsRequest,
};
use protocols::agent_ttrpc::AgentService;
use protocols::csi::VolumeStatsResponse;
use slog::{debug, error, info};
use ttrpc::r#async::TtrpcContext;

use super::status::{error_chain, invalid_argument, to_ttrpc, StatusCode};
use super::validate::validate_storages;
use crate::storage::{Owner, StorageManager};
use crate::volume::VolumeService;

/// Maximum time kept back from a client deadline. The ttrpc server drops a
/// handler at the deadline, so without a margin a request that timed out
/// would skip its undo and the client would never see the agent's error.
/// A tenth of the deadline is kept back, up to this maximum.
// NOTE: an undo that takes longer than the margin is still cut short.
const MAX_REPLY_MARGIN: Duration = Duration::from_secs(1);

pub struct AgentServiceImpl {
    pub logger: slog::Logger,
    pub storage: Arc<StorageManager>,
    pub volumes: Arc<VolumeService>,
    /// Wait used when the client set no deadline.
    pub default_timeout: Duration,
}

impl AgentServiceImpl {
    /// Returns how long this request may wait: the client's deadline less a
    /// reply margin when it set one, else the configured default.
    fn request_timeout(&self, ctx: &TtrpcContext) -> Duration {
        if ctx.timeout_nano > 0 {
            let deadline = Duration::from_nanos(ctx.timeout_nano as u64);
            deadline - (deadline / 10).min(MAX_REPLY_MARGIN)
        } else {
            self.default_timeout
        }
    }

    /// Logs the outcome of one request and converts its error.
    fn finish<T, E: StatusCode>(
        &self,
        method: &str,
        started: Instant,
        result: Result<T, E>,
    ) -> ttrpc::Result<T> {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(value) => {
                debug!(self.logger, "request done"; "method" => method, "elapsed_ms" => elapsed_ms);
                Ok(value)
            }
            Err(err) => {
                error!(self.logger, "request failed";
                    "method" => method,
                    "code" => format!("{:?}", err.code()),
                    "error" => error_chain(&err),
                    "elapsed_ms" => elapsed_ms);
                Err(to_ttrpc(&err))
            }
        }
    }
}

#[async_trait]
impl AgentService for AgentServiceImpl {
    async fn create_sandbox(
        &self,
        ctx: &TtrpcContext,
        request: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let started = Instant::now();
        validate_storages("CreateSandbox", &request.storages)?;
        let timeout = self.request_timeout(ctx);
        info!(self.logger, "create sandbox";
            "sandbox_id" => &request.sandbox_id, "storages" => request.storages.len());
        let result = self
            .storage
            .add_storages(&Owner::Sandbox, &request.storages, timeout)
            .await;
        self.finish("CreateSandbox", started, result)
            .map(|_| Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _request: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let started = Instant::now();
        let result = self.storage.destroy_sandbox().await;
        self.finish("DestroySandbox", started, result)
            .map(|_| Empty::new())
    }

    async fn create_container(
        &self,
        ctx: &TtrpcContext,
        request: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let started = Instant::now();
        if request.container_id.is_empty() {
            return Err(invalid_argument(
                "CreateContainer: container_id is empty; set it to the container's id",
            ));
        }
        validate_storages("CreateContainer", &request.storages)?;
        let timeout = self.request_timeout(ctx);
        info!(self.logger, "create container";
            "container_id" => &request.container_id, "storages" => request.storages.len());
        let result = self
            .storage
            .create_container(
                &request.container_id,
                &request.storages,
                request.OCI.as_ref(),
                timeout,
            )
            .await;
        self.finish("CreateContainer", started, result)
            .map(|_| Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        request: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let started = Instant::now();
        if request.container_id.is_empty() {
            return Err(invalid_argument(
                "RemoveContainer: container_id is empty; set it to the container's id",
            ));
        }
        info!(self.logger, "remove container"; "container_id" => &request.container_id);
        let result = self.storage.remove_container(&request.container_id).await;
        self.finish("RemoveContainer", started, result)
            .map(|_| Empty::new())
    }

    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        request: VolumeStatsRequest,
    ) -> ttrpc::Result<VolumeStatsResponse> {
        let started = Instant::now();
        validate_guest_path("GetVolumeStats", &request.volume_guest_path)?;
        let result = self.volumes.stats(&request.volume_guest_path).await;
        self.finish("GetVolumeStats", started, result)
    }

    async fn resize_volume(
        &self,
        ctx: &TtrpcContext,
        request: ResizeVolumeRequest,
    ) -> ttrpc::Result<Empty> {
        let started = Instant::now();
        validate_guest_path("ResizeVolume", &request.volume_guest_path)?;
        let timeout = self.request_timeout(ctx);
        info!(self.logger, "resize volume";
            "volume_guest_path" => &request.volume_guest_path, "size" => request.size);
        let result = self
            .volumes
            .resize(&request.volume_guest_path, request.size, timeout)
            .await;
        self.finish("ResizeVolume", started, result)
            .map(|_| Empty::new())
    }
}

/// Rejects a `volume_guest_path` that cannot name a guest path at all.
fn validate_guest_path(method: &str, path: &str) -> ttrpc::Result<()> {
    if path.is_empty() {
        return Err(invalid_argument(format!(
            "{method}: volume_guest_path is empty; set it to the volume's path in the guest"
        )));
    }
    if path.contains('\0') {
        return Err(invalid_argument(format!(
            "{method}: volume_guest_path {path:?} contains a NUL byte"
        )));
    }
    if !path.starts_with('/') {
        return Err(invalid_argument(format!(
            "{method}: volume_guest_path {path:?} is not absolute; give the full guest path"
        )));
    }
    Ok(())
}
