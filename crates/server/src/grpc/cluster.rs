//! The Cluster service: list, add (voter or learner), remove, promote and update
//! members. Changes go through Raft as configuration-change entries whose context is the
//! member's record; they are checked here for a quick, precise error and again at apply,
//! where the decision is made identically on every member.
//!
//! Checks and their order are etcd's: peer URLs as Go's `net/url` reads them
//! (`peer_urls.rs`); `--strict-reconfig-check`'s quorum rules before proposing (a
//! voter added, removed or promoted must leave enough started voters for a quorum:
//! `MemberNotEnoughStarted`, which etcd sends as `Unknown`). One exception: etcd's
//! MemberUpdate takes any peer URLs, and a member that applies an update of *another*
//! member with URLs Go cannot parse panics, at every restart too (the entry is in the
//! log). retcd refuses such URLs with `MemberBadUrls`, for every member, instead.

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
use crate::membership::{Member, Membership};
use crate::node::{Node, NodeHandle, NodeStatus};

use super::peer_urls::parse_peer_urls;

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
        let peer_urls = parse_peer_urls(&req.peer_ur_ls).ok_or(EtcdError::MemberBadUrls)?;
        let now = clock::wall_clock_ms() / 1000;
        // etcd's id for an added member: its peer URLs and the time of the request.
        let member = Member {
            id: ids::member_id(&peer_urls, &now.to_string()),
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let current = self.status.membership();
        if !member.is_learner && !quorum::ready_to_add_voter(&current) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
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
        let learner = current.get(id).is_some_and(|m| m.is_learner);
        if !learner && !quorum::ready_to_remove_voter(&current, id) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
        current.check_remove(id).map_err(|r| r.to_error())?;
        let member = current.get(id).cloned().ok_or(EtcdError::MemberNotFound)?;
        let members = self.change(ConfChangeType::RemoveNode, &member).await?;
        Ok(MemberRemoveResponse {
            header: Some(self.status.header_without_revision()),
            members,
        })
    }

    async fn update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse, RequestError> {
        let id = MemberId(req.id);
        let current = self.status.membership();
        current
            .check_update(id, &req.peer_ur_ls)
            .map_err(|r| r.to_error())?;
        // etcd stores the URLs as given, unchecked; URLs it could not parse would stop
        // every other member (see the module docs), so retcd refuses them, after etcd's
        // own checks.
        if parse_peer_urls(&req.peer_ur_ls).is_none() {
            return Err(EtcdError::MemberBadUrls.into());
        }
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
        // The progress the loop published at its last heartbeat. It lacks the leader
        // until the first heartbeat after an election, and a learner until the first one
        // after it was added: a learner whose progress is unknown is not ready (promoting
        // a learner that never started would cost the cluster its quorum).
        let progress = self.status.progress();
        let (Some(&leader_match), Some(&learner_match)) = (
            progress.get(&self.status.member_id().0),
            progress.get(&id.0),
        ) else {
            return Err(EtcdError::LearnerNotReady.into());
        };
        if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_PERCENT {
            return Err(EtcdError::LearnerNotReady.into());
        }
        if !quorum::ready_to_promote(&current) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
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
        // The leader's client URLs, dialed in the clear: promotion is forwarded only
        // between members with plaintext client URLs for now.
        let channel = crate::peer::dial::Dialer::default()
            .connect(&urls)
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

/// etcd's `--strict-reconfig-check` (on by default): a configuration change must leave
/// enough *started* voters (members that have published their name) for a quorum
/// (etcd's `IsReadyToAddVotingMember`, `IsReadyToRemoveVotingMember`,
/// `IsReadyToPromoteMember`).
mod quorum {
    use super::Membership;
    use crate::ids::MemberId;

    /// (voters other than `except`, of which started).
    fn voters(m: &Membership, except: Option<MemberId>) -> (usize, usize) {
        let voters = m
            .members
            .values()
            .filter(|v| !v.is_learner && Some(v.id) != except);
        voters.fold((0, 0), |(n, started), v| {
            (n + 1, started + usize::from(!v.name.is_empty()))
        })
    }

    pub fn ready_to_add_voter(m: &Membership) -> bool {
        let (n, started) = voters(m, None);
        let members = n + 1;
        // etcd's exception: a second member for a one-member cluster (restoring a
        // cluster from a backup starts that way), although the pair has no quorum
        // until the new member starts.
        (started == 1 && members == 2) || started > members / 2
    }

    pub fn ready_to_remove_voter(m: &Membership, id: MemberId) -> bool {
        let (members, started) = voters(m, Some(id));
        started > members / 2
    }

    /// The learner counts as a started voter.
    pub fn ready_to_promote(m: &Membership) -> bool {
        let (n, started) = voters(m, None);
        let (members, started) = (n + 1, started + 1);
        started > members / 2
    }
}
