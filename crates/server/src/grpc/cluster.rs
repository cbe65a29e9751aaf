//! The Cluster service. Not implemented yet (membership arrives with multi-member
//! clusters).

use retcd_api::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};

use super::unimplemented_service;

pub struct ClusterService;

unimplemented_service! {
    ClusterService, Cluster;
    []
    member_add(MemberAddRequest) -> MemberAddResponse;
    member_remove(MemberRemoveRequest) -> MemberRemoveResponse;
    member_update(MemberUpdateRequest) -> MemberUpdateResponse;
    member_list(MemberListRequest) -> MemberListResponse;
    member_promote(MemberPromoteRequest) -> MemberPromoteResponse;
}
