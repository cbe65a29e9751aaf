//! The Lease service. Not implemented yet (leases arrive with the lessor).

use retcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use tonic::codegen::BoxStream;

use super::unimplemented_service;

pub struct LeaseService;

unimplemented_service! {
    LeaseService, Lease;
    [
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;
    ]
    lease_grant(LeaseGrantRequest) -> LeaseGrantResponse;
    lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse;
    lease_keep_alive(tonic::Streaming<LeaseKeepAliveRequest>) -> Self::LeaseKeepAliveStream;
    lease_time_to_live(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse;
    lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse;
}
