//! The Lease service (etcd's `v3rpc/lease.go`).
//!
//! Grants and revocations go through Raft like writes. Keep-alives go through Raft too
//! (see the `retcd_lease` crate for why): a per-member [`Renewer`] task gathers the keep-alives of every
//! stream into one [`LeaseRenewRequest`] at a time, so a thousand keep-alives in flight
//! cost one proposal, and each is answered once its renewal is applied. TimeToLive and
//! Leases answer from this member's lessor after a ReadIndex, so they see every grant,
//! renewal and revocation acknowledged before them.
//!
//! With auth on (etcd's fixed releases): every call needs a user; a keep-alive needs
//! write on every key attached to the lease, TimeToLive with keys read on them, Leases
//! read on every attached key of every lease (the root role needs none of these);
//! revocation is checked by apply's auth gate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::lease_server::Lease;
use retcd_api::etcdserverpb::{
    InternalRaftRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRenewRequest,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::ApplyResponse;
use crate::auth::state::Access;
use crate::auth::{self, Auth, Credentials};
use crate::clock;
use crate::errors::RequestError;
use crate::grpc::require_leader;
use crate::node::{LeaseView, Node, NodeHandle, NodeStatus};
use crate::quota::{self, Quota};
use retcd_lease::MAX_LEASE_TTL;

/// Most keep-alives renewed by one proposal.
const RENEW_BATCH: usize = 8192;
/// Renewal rounds in flight at once.
const RENEWS_IN_FLIGHT: usize = 4;
/// Keep-alives of one stream in flight at once (later ones wait).
const STREAM_IN_FLIGHT: usize = 1024;

type RenewReply = oneshot::Sender<Result<i64, RequestError>>;

/// What a keep-alive stream answers next, in the order its requests came: a renewal's
/// reply (holding one of the stream's in-flight slots), or the error that ends it.
enum InOrder {
    Renewal(
        i64,
        oneshot::Receiver<Result<i64, RequestError>>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    End(Status),
}

pub struct LeaseService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    leases: LeaseView,
    quota: Quota,
    min_ttl: i64,
    renewer: mpsc::Sender<(i64, RenewReply)>,
    auth: Arc<Auth>,
}

impl LeaseService {
    pub fn new(node: &Node, quota: Quota, min_ttl: i64) -> Self {
        let (tx, rx) = mpsc::channel(RENEW_BATCH);
        tokio::spawn(renewer(node.handle.clone(), rx));
        LeaseService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            leases: node.leases.clone(),
            quota,
            min_ttl,
            renewer: tx,
            auth: node.auth.clone(),
        }
    }

    /// The caller needs `access` on every key attached to the leases `ids` (none for
    /// the root role, or while auth is off).
    async fn check_lease_keys(
        &self,
        creds: &Credentials,
        ids: Option<i64>,
        access: Access,
    ) -> Result<(), RequestError> {
        check_lease_keys(&self.auth, &self.leases, creds, ids, access).await
    }

    async fn grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<LeaseGrantResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.require_user(&Credentials::of(&req)).await?;
        let mut r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        r.ttl = r.ttl.max(self.min_ttl);
        self.quota.check(quota::lease_grant_cost(&r)).await?;
        while r.id == 0 {
            r.id = (self.handle.new_id() & (i64::MAX as u64)) as i64;
        }
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                lease_grant: Some(r),
                wall_clock_ms: clock::wall_clock_ms(),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::LeaseGrant(mut resp) = out else {
            return Err(RequestError::Internal(format!(
                "lease grant answered {out:?}"
            )));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<LeaseRevokeResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.require_user(&Credentials::of(&req)).await?;
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                lease_revoke: Some(req.into_inner()),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::LeaseRevoke(mut resp) = out else {
            return Err(RequestError::Internal(format!(
                "lease revoke answered {out:?}"
            )));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<LeaseTimeToLiveResponse, RequestError> {
        require_leader(&req, &self.status)?;
        self.auth.require_user(&Credentials::of(&req)).await?;
        if req.get_ref().keys {
            self.check_lease_keys(&Credentials::of(&req), Some(req.get_ref().id), Access::Read)
                .await?;
        }
        let r = req.into_inner();
        self.handle.read_index().await?;
        // etcd answers an unknown lease with TTL -1, not an error.
        let resp = match self.leases.time_to_live(r.id, r.keys) {
            Some(l) => LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                ttl: l.remaining,
                granted_ttl: l.granted,
                keys: l.keys.into_iter().map(bytes::Bytes::from).collect(),
            },
            None => LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.status.header(None)),
            ..resp
        })
    }

    async fn leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<LeaseLeasesResponse, RequestError> {
        require_leader(&req, &self.status)?;
        self.auth.require_user(&Credentials::of(&req)).await?;
        self.check_lease_keys(&Credentials::of(&req), None, Access::Read)
            .await?;
        self.handle.read_index().await?;
        let ids = self.leases.ids();
        Ok(LeaseLeasesResponse {
            header: Some(self.status.header(None)),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        })
    }
}

/// Gathers keep-alives from every stream into one renewal proposal per round. Up to
/// [`RENEWS_IN_FLIGHT`] rounds run at once, so a proposal lost with a dead leader (it
/// waits for its timeout) does not hold up the renewals after it; a round that takes
/// longer than [`renew_timeout`] fails its keep-alives (their streams end, as etcd's do
/// when the leader cannot be reached, and clients open new ones).
async fn renewer(node: Arc<NodeHandle>, mut rx: mpsc::Receiver<(i64, RenewReply)>) {
    let rounds = Arc::new(tokio::sync::Semaphore::new(RENEWS_IN_FLIGHT));
    let timeout = renew_timeout(&node);
    while let Some(first) = rx.recv().await {
        let Ok(round) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < RENEW_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            let _round = round;
            renew_round(&node, batch, timeout).await;
        });
    }
}

/// How long one renewal round may take: three election timeouts.
fn renew_timeout(node: &NodeHandle) -> Duration {
    (3 * node.election_timeout()).max(Duration::from_secs(1))
}

async fn renew_round(node: &NodeHandle, batch: Vec<(i64, RenewReply)>, timeout: Duration) {
    let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let proposal = node.propose(InternalRaftRequest {
        lease_renew: Some(LeaseRenewRequest { ids: ids.clone() }),
        wall_clock_ms: clock::wall_clock_ms(),
        ..Default::default()
    });
    let out = match tokio::time::timeout(timeout, proposal).await {
        Ok(out) => out,
        Err(_) => Err(EtcdError::Timeout.into()),
    };
    match out {
        Ok(ApplyResponse::LeaseRenew(ttls)) => {
            let by_id: HashMap<i64, i64> = ids.into_iter().zip(ttls).collect();
            for (id, reply) in batch {
                let _ = reply.send(Ok(by_id.get(&id).copied().unwrap_or(0)));
            }
        }
        Ok(other) => {
            let e = RequestError::Internal(format!("lease renew answered {other:?}"));
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(self.grant(req).await?))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(self.revoke(req).await?))
    }

    /// Each request renews one lease; the answer carries its TTL, or 0 if it does not
    /// exist. Answers may come out of order across leases. A renewal that fails (no
    /// leader, timeout) ends the stream with that error, as etcd does.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        require_leader(&req, &self.status).map_err(Status::from)?;
        let creds = Credentials::of(&req);
        let mut inbound = req.into_inner();
        let (auth, leases) = (self.auth.clone(), self.leases.clone());
        let (out_tx, out_rx) = mpsc::channel::<Result<LeaseKeepAliveResponse, Status>>(64);
        let renewer = self.renewer.clone();
        let status = self.status.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
        // Renewals are in flight together, but answered in the order they were asked,
        // as etcd answers them: one task sends each reply once those before it are sent.
        // An error that ends the stream takes its place in that order too, so the replies
        // asked for before it are sent first.
        let (order_tx, mut order_rx) = mpsc::channel::<InOrder>(STREAM_IN_FLIGHT);
        let replies_tx = out_tx.clone();
        tokio::spawn(async move {
            while let Some(item) = order_rx.recv().await {
                let (id, rx, slot) = match item {
                    InOrder::Renewal(id, rx, slot) => (id, rx, slot),
                    InOrder::End(status) => {
                        let _ = replies_tx.send(Err(status)).await;
                        return;
                    }
                };
                let resp = match rx.await {
                    Ok(Ok(ttl)) => Ok(LeaseKeepAliveResponse {
                        header: Some(status.header(None)),
                        id,
                        ttl,
                    }),
                    Ok(Err(e)) => Err(Status::from(e)),
                    Err(_) => Err(Status::from(RequestError::from(EtcdError::Stopped))),
                };
                drop(slot);
                if replies_tx.send(resp).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = inbound.message() => msg,
                    _ = out_tx.closed() => return,
                };
                let Ok(Some(r)) = msg else { return };
                // etcd's `checkLeaseRenew`, for each keep-alive.
                if let Err(e) =
                    check_lease_keys(&auth, &leases, &creds, Some(r.id), Access::Write).await
                {
                    let _ = order_tx.send(InOrder::End(Status::from(e))).await;
                    return;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (reply, rx) = oneshot::channel();
                if renewer.send((r.id, reply)).await.is_err() {
                    let stopped = Status::from(RequestError::from(EtcdError::Stopped));
                    let _ = order_tx.send(InOrder::End(stopped)).await;
                    return;
                }
                if order_tx
                    .send(InOrder::Renewal(r.id, rx, slot))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(self.time_to_live(req).await?))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.leases(req).await?))
    }
}

/// While auth is on, the caller must be a user with `access` on every key attached to
/// lease `id` (every lease, for `None`); the root role needs none.
async fn check_lease_keys(
    auth: &Auth,
    leases: &LeaseView,
    creds: &Credentials,
    id: Option<i64>,
    access: Access,
) -> Result<(), RequestError> {
    let state = auth.state();
    if !state.enabled {
        return Ok(());
    }
    let Some(info) = auth.info(creds).await? else {
        return Err(EtcdError::UserEmpty.into());
    };
    if state.check_admin(Some(&info)).is_ok() {
        return Ok(());
    }
    let keys = match id {
        Some(id) => leases.keys(id),
        None => leases.all_keys(),
    };
    for key in keys {
        state.check_range(Some(&info), &key, &[], access)?;
    }
    // A user with no key to check still needs valid, current credentials.
    state.check_user(Some(&info))?;
    Ok(())
}
