//! The `grpc.Health` service.

use async_trait::async_trait;
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::health_ttrpc::Health;
use ttrpc::r#async::TtrpcContext;

pub struct HealthService;

#[async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _request: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        let mut response = HealthCheckResponse::new();
        response.status = ServingStatus::SERVING.into();
        Ok(response)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _request: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut response = VersionCheckResponse::new();
        response.grpc_version = crate::API_VERSION.to_string();
        response.agent_version = crate::AGENT_VERSION.to_string();
        Ok(response)
    }
}
