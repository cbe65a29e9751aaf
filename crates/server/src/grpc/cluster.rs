//! The Cluster service: list, add (voter or learner), remove, promote and update
//! members. Changes go through Raft as configuration-change entries whose context is the
//! member's record; they are checked here for a quick, precise error and again at apply,
//! where the decision is made identically on every member.
//!
//! Checks and their order are etcd's: peer URLs as Go's `net/url` reads them
//! (`peer_urls.rs`); then, with `--strict-reconfig-check` (on by default), the quorum
//! rules before proposing ([`StrictCheck`]): a voter added, removed or promoted must
//! leave enough started voters for a quorum (`MemberNotEnoughStarted`, which etcd sends
//! as `Unknown`), and an add or a removal must not cost the quorum of the members this
//! one is connected to (`Unhealthy`, "etcdserver: unhealthy cluster"). Without the flag
//! none of these is checked, as in etcd; Raft and apply still refuse a change that would
//! leave no voter. One exception: etcd's
//! MemberUpdate takes any peer URLs, and a member that applies an update of *another*
//! member with URLs Go cannot parse panics, at every restart too (the entry is in the
//! log). retcd refuses such URLs with `MemberBadUrls`, for every member, instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::auth::{Auth, Credentials};
use crate::clock;
use crate::errors::RequestError;
use crate::ids::{self, MemberId};
use crate::membership::{Member, Membership};
use crate::node::{Node, NodeHandle, NodeStatus};
use crate::peer::activity::PeerActivity;
use crate::peer::dial::Dialer;

use super::peer_urls::parse_peer_urls;

/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once its log is within this fraction of the leader's
/// (etcd's readyPercent).
const LEARNER_READY_PERCENT: f64 = 0.9;
/// How long a peer must have been connected to count towards the quorum a change keeps
/// (etcd's `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// The one Cluster method the peer listener serves (see `grpc::promote_route`).
pub const PROMOTE_PATH: &str = "/etcdserverpb.Cluster/MemberPromote";
/// Metadata on a promotion a member forwarded to the leader: the receiver does not
/// forward it again (a leader that just lost its leadership answers "no leader", and
/// the client retries), so a promotion never bounces between members.
const FORWARDED: &str = "retcd-forwarded";

pub struct ClusterService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    strict: StrictCheck,
    /// Dials the leader's peer URLs to forward a promotion.
    dialer: Dialer,
    auth: Arc<Auth>,
    /// Whether `retcd-forwarded` metadata is believed: only on the peer listener, which
    /// only members reach (a client could send the metadata on the client port to skip
    /// the admin check).
    trusts_forwarded: bool,
}

impl ClusterService {
    /// `strict_reconfig_check` is the flag; `peers` the transport's view of which peer
    /// connections work; `dialer` the peer transport's (TLS included).
    pub fn new(
        node: &Node,
        strict_reconfig_check: bool,
        peers: Arc<PeerActivity>,
        dialer: Dialer,
    ) -> Self {
        ClusterService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            strict: StrictCheck {
                enabled: strict_reconfig_check,
                peers,
            },
            dialer,
            auth: node.auth.clone(),
            trusts_forwarded: false,
        }
    }

    /// The instance the peer listener serves, which takes promotions forwarded by other
    /// members as already checked.
    pub fn for_peer_listener(mut self) -> Self {
        self.trusts_forwarded = true;
        self
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
        self.strict
            .may_add(&current, self.status.member_id(), &member, Instant::now())?;
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
        self.strict
            .may_remove(&current, self.status.member_id(), id, Instant::now())?;
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
        forwarded: bool,
    ) -> Result<MemberPromoteResponse, RequestError> {
        let id = MemberId(req.id);
        let current = self.status.membership();
        current.check_promote(id).map_err(|r| r.to_error())?;
        if !self.status.is_leader() {
            if forwarded {
                return Err(EtcdError::NoLeader.into());
            }
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
        self.strict.may_promote(&current)?;
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
        // The leader's peer URLs, dialed as the peer transport dials them (TLS with
        // the peer certificates when they are https), as etcd forwards to the leader's
        // peer HTTP handler.
        let urls = self
            .status
            .membership()
            .get(MemberId(leader))
            .map(|m| m.peer_urls.clone())
            .unwrap_or_default();
        let channel = self
            .dialer
            .connect(&urls)
            .await
            .map_err(|_| RequestError::from(EtcdError::NoLeader))?;
        let mut req = Request::new(req);
        req.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
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
        self.auth.require_admin(&Credentials::of(&request)).await?;
        Ok(Response::new(self.add(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&request)).await?;
        Ok(Response::new(self.remove(request.into_inner()).await?))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&request)).await?;
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // Any user (etcd's fixed releases; PR #21551 let non-admins list members).
        self.auth.require_user(&Credentials::of(&request)).await?;
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
        // A forwarded promotion comes from a member over the peer listener, which serves
        // nothing else; the member that took it from the client checked it. On the
        // client port the metadata means nothing.
        let forwarded = self.trusts_forwarded && request.metadata().contains_key(FORWARDED);
        if !forwarded {
            self.auth.require_admin(&Credentials::of(&request)).await?;
        }
        Ok(Response::new(
            self.promote(request.into_inner(), forwarded).await?,
        ))
    }
}

/// etcd's `--strict-reconfig-check` (on by default): a configuration change must leave
/// enough *started* voters (members that have published their name) for a quorum
/// (etcd's `IsReadyToAddVotingMember`, `IsReadyToRemoveVotingMember`,
/// `IsReadyToPromoteMember`), and enough voters this member has been connected to for
/// [`HEALTH_INTERVAL`] (etcd's `isConnectedFullySince`, `numConnectedSince`). Disabled,
/// it allows everything.
struct StrictCheck {
    enabled: bool,
    peers: Arc<PeerActivity>,
}

impl StrictCheck {
    /// Adding `member`: a voter must keep a quorum of started voters, and this member
    /// must have been connected to every voter for the health interval (learners too:
    /// etcd checks the connections for every add).
    fn may_add(
        &self,
        m: &Membership,
        local: MemberId,
        member: &Member,
        now: Instant,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if !member.is_learner && !quorum::ready_to_add_voter(m) {
            tracing::warn!(member = %member.id, "rejecting member add: not enough started members");
            return Err(EtcdError::MemberNotEnoughStarted);
        }
        let connected = |id| self.connected_since(local, id, now);
        if !quorum::voters(m).all(|v| connected(v.id)) {
            tracing::warn!(member = %member.id, "rejecting member add: this member has not been connected to every voter for 5 s");
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// Removing `id`: a learner always may go; a voter must leave a quorum of started
    /// voters and, unless it is down already (then it is not part of the active quorum),
    /// a quorum of the voters this member is connected to.
    fn may_remove(
        &self,
        m: &Membership,
        local: MemberId,
        id: MemberId,
        now: Instant,
    ) -> Result<(), EtcdError> {
        if !self.enabled || m.get(id).is_some_and(|v| v.is_learner) {
            return Ok(());
        }
        if !quorum::ready_to_remove_voter(m, id) {
            tracing::warn!(member = %id, "rejecting member remove: not enough started members");
            return Err(EtcdError::MemberNotEnoughStarted);
        }
        if id != local && self.peers.active_since(id).is_none() {
            return Ok(());
        }
        let voters = quorum::voters(m).count();
        let active = quorum::voters(m)
            .filter(|v| self.connected_since(local, v.id, now))
            .count();
        // The removed member counts among the active ones; without it, the rest must
        // still be a quorum of the voters that remain.
        if active.saturating_sub(1) < 1 + voters.saturating_sub(1) / 2 {
            tracing::warn!(member = %id, active, voters, "rejecting member remove: it would break the active quorum");
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// Promoting a learner that is ready: the started voters, the learner among them,
    /// must be a quorum of the voters after it.
    fn may_promote(&self, m: &Membership) -> Result<(), EtcdError> {
        if self.enabled && !quorum::ready_to_promote(m) {
            return Err(EtcdError::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// This member itself, or a peer connected for at least the health interval.
    fn connected_since(&self, local: MemberId, id: MemberId, now: Instant) -> bool {
        id == local
            || self
                .peers
                .active_since(id)
                .is_some_and(|t| now.saturating_duration_since(t) >= HEALTH_INTERVAL)
    }
}

/// The started-voter counts of `--strict-reconfig-check`.
mod quorum {
    use super::{Member, Membership};
    use crate::ids::MemberId;

    /// The voting members.
    pub fn voters(m: &Membership) -> impl Iterator<Item = &Member> {
        m.members.values().filter(|v| !v.is_learner)
    }

    /// (voters other than `except`, of which started).
    fn started(m: &Membership, except: Option<MemberId>) -> (usize, usize) {
        voters(m)
            .filter(|v| Some(v.id) != except)
            .fold((0, 0), |(n, started), v| {
                (n + 1, started + usize::from(!v.name.is_empty()))
            })
    }

    pub fn ready_to_add_voter(m: &Membership) -> bool {
        let (n, started) = started(m, None);
        let members = n + 1;
        // etcd's exception: a second member for a one-member cluster (restoring a
        // cluster from a backup starts that way), although the pair has no quorum
        // until the new member starts.
        (started == 1 && members == 2) || started > members / 2
    }

    pub fn ready_to_remove_voter(m: &Membership, id: MemberId) -> bool {
        let (members, started) = started(m, Some(id));
        started > members / 2
    }

    /// The learner counts as a started voter.
    pub fn ready_to_promote(m: &Membership) -> bool {
        let (n, started) = started(m, None);
        let (members, started) = (n + 1, started + 1);
        started > members / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voters 1..=n (started ones have a name), learners from `learners`; this member is 1.
    fn membership(voters: &[(u64, bool)], learners: &[u64]) -> Membership {
        let mut m = Membership::default();
        let member = |id: u64, started: bool, is_learner: bool| Member {
            id: MemberId(id),
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: Vec::new(),
            is_learner,
        };
        for &(id, started) in voters {
            m.members.insert(MemberId(id), member(id, started, false));
        }
        for &id in learners {
            m.members.insert(MemberId(id), member(id, false, true));
        }
        m
    }

    fn candidate(is_learner: bool) -> Member {
        Member {
            id: MemberId(99),
            name: String::new(),
            peer_urls: vec!["http://127.0.0.1:9999".into()],
            client_urls: Vec::new(),
            is_learner,
        }
    }

    /// A check (enabled or not) whose peers became active at the given offsets before
    /// `now` (in seconds); the rest are not active.
    fn check(enabled: bool, now: Instant, active: &[(u64, u64)]) -> StrictCheck {
        let peers = Arc::new(PeerActivity::default());
        for &(id, secs_ago) in active {
            peers.activate(MemberId(id), now - Duration::from_secs(secs_ago));
        }
        StrictCheck { enabled, peers }
    }

    const LOCAL: MemberId = MemberId(1);

    // Goal: with the flag, an add needs every voter connected for the health interval
    // (a learner add too) and, for a voter, a quorum of started voters; without it,
    // the same adds go through.
    #[test]
    fn strict_adds_need_started_voters_and_connections_of_five_seconds() {
        let now = Instant::now() + Duration::from_secs(60);
        let healthy = [(2, 6), (3, 30)];
        let m = membership(&[(1, true), (2, true), (3, true)], &[]);
        for learner in [false, true] {
            let add = |c: &StrictCheck| c.may_add(&m, LOCAL, &candidate(learner), now);
            assert_eq!(add(&check(true, now, &healthy)), Ok(()));
            // A peer connected 4 s ago, or not at all.
            assert_eq!(
                add(&check(true, now, &[(2, 4), (3, 30)])),
                Err(EtcdError::Unhealthy)
            );
            assert_eq!(
                add(&check(true, now, &[(3, 30)])),
                Err(EtcdError::Unhealthy)
            );
            assert_eq!(add(&check(false, now, &[])), Ok(()));
        }
        // Two of three voters never started: a fourth voter would leave no quorum of
        // started ones (a learner may still come).
        let m = membership(&[(1, true), (2, false), (3, false)], &[]);
        let c = check(true, now, &healthy);
        assert_eq!(
            c.may_add(&m, LOCAL, &candidate(false), now),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        assert_eq!(c.may_add(&m, LOCAL, &candidate(true), now), Ok(()));
        assert_eq!(
            check(false, now, &[]).may_add(&m, LOCAL, &candidate(false), now),
            Ok(())
        );
        // etcd's exception: a second voter for a one-member cluster.
        let m = membership(&[(1, true)], &[]);
        assert_eq!(
            check(true, now, &[]).may_add(&m, LOCAL, &candidate(false), now),
            Ok(())
        );
    }

    // Goal: with the flag, removing a voter must leave a quorum of started voters and of
    // the voters this member is connected to; a member that is down, and a learner, may
    // always go; without the flag every removal goes through.
    #[test]
    fn strict_removals_keep_the_active_quorum() {
        let now = Instant::now() + Duration::from_secs(60);
        let m = membership(&[(1, true), (2, true), (3, true)], &[4]);
        // All connected: any one voter may go, this member included.
        let all = check(true, now, &[(2, 10), (3, 10), (4, 10)]);
        for id in [1, 2, 3, 4] {
            assert_eq!(all.may_remove(&m, LOCAL, MemberId(id), now), Ok(()), "{id}");
        }
        // 3 is down: removing 2 would leave 1 alone with a dead 3.
        let three_down = check(true, now, &[(2, 10)]);
        assert_eq!(
            three_down.may_remove(&m, LOCAL, MemberId(2), now),
            Err(EtcdError::Unhealthy)
        );
        assert_eq!(
            three_down.may_remove(&m, LOCAL, LOCAL, now),
            Err(EtcdError::Unhealthy)
        );
        // ... but 3 itself, being down, may go; so may the learner.
        assert_eq!(three_down.may_remove(&m, LOCAL, MemberId(3), now), Ok(()));
        assert_eq!(three_down.may_remove(&m, LOCAL, MemberId(4), now), Ok(()));
        // A connection younger than the health interval does not count.
        let young = check(true, now, &[(2, 10), (3, 1)]);
        assert_eq!(
            young.may_remove(&m, LOCAL, MemberId(2), now),
            Err(EtcdError::Unhealthy)
        );
        // Without the flag.
        let off = check(false, now, &[]);
        for id in [1, 2, 3, 4] {
            assert_eq!(off.may_remove(&m, LOCAL, MemberId(id), now), Ok(()), "{id}");
        }
        // The only voter: no started voter would remain.
        let alone = membership(&[(1, true)], &[]);
        assert_eq!(
            check(true, now, &[]).may_remove(&alone, LOCAL, LOCAL, now),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        assert_eq!(
            check(false, now, &[]).may_remove(&alone, LOCAL, LOCAL, now),
            Ok(())
        );
    }

    // Goal: promotion counts the learner as a started voter, only with the flag.
    #[test]
    fn strict_promotion_needs_a_quorum_of_started_voters() {
        let now = Instant::now();
        let m = membership(&[(1, true), (2, false), (3, false)], &[4]);
        assert_eq!(
            check(true, now, &[]).may_promote(&m),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        assert_eq!(check(false, now, &[]).may_promote(&m), Ok(()));
        let m = membership(&[(1, true), (2, true), (3, false)], &[4]);
        assert_eq!(check(true, now, &[]).may_promote(&m), Ok(()));
    }
}
