//! The standard `grpc.health.v1.Health` service, registered as etcd does: the server as a
//! whole (service name "") is SERVING while its raft loop runs and a leader is known.

use std::sync::Arc;

use retcd_api::health::health_check_response::ServingStatus;
use retcd_api::health::health_server::Health;
use retcd_api::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::errors::RequestError;
use crate::node::NodeStatus;

pub struct HealthService {
    status: Arc<NodeStatus>,
}

impl HealthService {
    pub fn new(status: Arc<NodeStatus>) -> Self {
        HealthService { status }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !req.get_ref().service.is_empty() {
            return Err(RequestError::NotFound("unknown service".into()).into());
        }
        let status = if self.status.is_running() && self.status.leader() != 0 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(RequestError::Unimplemented("retcd does not implement watch yet".into()).into())
    }
}
