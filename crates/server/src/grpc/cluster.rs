//! The Cluster service: list, add (voter or learner), remove, promote and update
//! members. Changes go through Raft as configuration-change entries whose context is the
//! member's record; they are checked here for a quick, precise error and again at apply,
//! where the decision is made identically on every member.

use std::sync::Arc;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_client::ClusterClient,
    cluster_server::Cluster,
};
use retcd_raft::{ConfChange, ConfChangeType};
use tonic::{Request, Response, Status};

use crate::apply::ApplyResponse;
use crate::clock;
use crate::errors::RequestError;
use crate::ids::{self, MemberId};
use crate::membership::Member;
use crate::node::{Node, NodeHandle, NodeStatus};

/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once its log is within this fraction of the leader's
/// (etcd's readyPercent).
const LEARNER_READY_PERCENT: f64 = 0.9;

pub struct ClusterService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
}

impl ClusterService {
    pub fn new(node: &Node) -> Self {
        ClusterService {
            handle: node.handle.clone(),
            status: node.status.clone(),
        }
    }

    fn members(&self) -> Vec<retcd_api::etcdserverpb::Member> {
        self.status
            .membership()
            .members
            .values()
            .map(Member::to_api)
            .collect()
    }

    async fn change(
        &self,
        change_type: ConfChangeType,
        member: &Member,
    ) -> Result<Vec<retcd_api::etcdserverpb::Member>, RequestError> {
        let context = Bytes::from(member.encode());
        let node_id = member.id.0;
        match self
            .handle
            .propose_conf_change(|id| ConfChange {
                id,
                change_type,
                node_id,
                context,
            })
            .await?
        {
            ApplyResponse::Members(list) => Ok(list),
            other => Err(RequestError::Internal(format!(
                "a configuration change answered {other:?}"
            ))),
        }
    }

    async fn add(&self, req: MemberAddRequest) -> Result<MemberAddResponse, RequestError> {
        if req.peer_ur_ls.is_empty() || req.peer_ur_ls.iter().any(|u| !valid_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        let now = clock::wall_clock_ms() / 1000;
        // etcd's id for an added member: its peer URLs and the time of the request.
        let member = Member {
            id: ids::member_id(&req.peer_ur_ls, &now.to_string()),
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let current = self.status.membership();
        current.check_add(&member).map_err(|r| r.to_error())?;
        if member.is_learner && current.learners() >= MAX_LEARNERS {
            return Err(EtcdError::TooManyLearners.into());
        }
        let kind = if member.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self.change(kind, &member).await?;
        Ok(MemberAddResponse {
            header: Some(self.status.header_without_revision()),
            member: Some(member.to_api()),
            members,
        })
    }

    async fn remove(&self, req: MemberRemoveRequest) -> Result<MemberRemoveResponse, RequestError> {
        let id = MemberId(req.id);
        let current = self.status.membership();
        current.check_remove(id).map_err(|r| r.to_error())?;
        let member = current.get(id).cloned().ok_or(EtcdError::MemberNotFound)?;
        let members = self.change(ConfChangeType::RemoveNode, &member).await?;
        Ok(MemberRemoveResponse {
            header: Some(self.status.header_without_revision()),
            members,
        })
    }

    async fn update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse, RequestError> {
        if req.peer_ur_ls.is_empty() || req.peer_ur_ls.iter().any(|u| !valid_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        let id = MemberId(req.id);
        let current = self.status.membership();
        current
            .check_update(id, &req.peer_ur_ls)
            .map_err(|r| r.to_error())?;
        let mut member = current.get(id).cloned().ok_or(EtcdError::MemberNotFound)?;
        member.peer_urls = req.peer_ur_ls;
        let members = self.change(ConfChangeType::UpdateNode, &member).await?;
        Ok(MemberUpdateResponse {
            header: Some(self.status.header_without_revision()),
            members,
        })
    }

    async fn promote(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, RequestError> {
        let id = MemberId(req.id);
        let current = self.status.membership();
        current.check_promote(id).map_err(|r| r.to_error())?;
        if !self.status.is_leader() {
            // Only the leader knows how far the learner is; etcd forwards there too.
            return self.forward_promote(req).await;
        }
        let progress = self.status.progress();
        let leader_match = progress
            .get(&self.status.member_id().0)
            .copied()
            .unwrap_or(0);
        let learner_match = progress.get(&id.0).copied().unwrap_or(0);
        if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_PERCENT {
            return Err(EtcdError::LearnerNotReady.into());
        }
        let mut member = current.get(id).cloned().ok_or(EtcdError::MemberNotFound)?;
        member.is_learner = false;
        let members = self.change(ConfChangeType::AddNode, &member).await?;
        Ok(MemberPromoteResponse {
            header: Some(self.status.header_without_revision()),
            members,
        })
    }

    async fn forward_promote(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, RequestError> {
        let leader = self.status.leader();
        if leader == 0 {
            return Err(EtcdError::NoLeader.into());
        }
        let urls = self
            .status
            .membership()
            .get(MemberId(leader))
            .map(|m| m.client_urls.clone())
            .unwrap_or_default();
        let channel = crate::peer::transport::connect(&urls)
            .await
            .map_err(|_| RequestError::from(EtcdError::NoLeader))?;
        match ClusterClient::new(channel).member_promote(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => Err(EtcdError::from_status(&status)
                .map(RequestError::from)
                .unwrap_or_else(|| RequestError::Internal(status.message().to_string()))),
        }
    }
}

/// etcd's check of a peer URL: a scheme (http or https) and a host:port.
fn valid_url(u: &str) -> bool {
    let Some((scheme, rest)) = u.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
        return false;
    }
    let host_port = rest.trim_end_matches('/');
    match host_port.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Ok(Response::new(self.add(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Ok(Response::new(self.remove(request.into_inner()).await?))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.handle.read_index().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.status.header_without_revision()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Ok(Response::new(self.promote(request.into_inner()).await?))
    }
}
