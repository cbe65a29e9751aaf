//! The Election service (`v3electionpb`). Not implemented yet (it needs leases and
//! watches).

use retcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use tonic::codegen::BoxStream;

use super::unimplemented_service;

pub struct ElectionService;

unimplemented_service! {
    ElectionService, Election;
    [
    type ObserveStream = BoxStream<LeaderResponse>;
    ]
    campaign(CampaignRequest) -> CampaignResponse;
    proclaim(ProclaimRequest) -> ProclaimResponse;
    leader(LeaderRequest) -> LeaderResponse;
    observe(LeaderRequest) -> Self::ObserveStream;
    resign(ResignRequest) -> ResignResponse;
}
