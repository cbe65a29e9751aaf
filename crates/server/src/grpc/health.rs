//! The standard `grpc.health.v1.Health` service, registered as etcd does: the server as a
//! whole (service name "") is SERVING while its raft loop runs and a leader is known.

use std::sync::Arc;

use retcd_api::health::health_check_response::ServingStatus;
use retcd_api::health::health_server::Health;
use retcd_api::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::raft_node::NodeHandle;

pub struct HealthService {
    node: Arc<NodeHandle>,
}

impl HealthService {
    pub fn new(node: Arc<NodeHandle>) -> Self {
        HealthService { node }
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
            return Err(Status::not_found("unknown service"));
        }
        let shared = self.node.shared();
        let status = if shared.is_running() && shared.leader() != 0 {
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
        Err(Status::unimplemented("retcd does not implement watch yet"))
    }
}
