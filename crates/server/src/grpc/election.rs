//! The Election service (`v3electionpb`), on the server as etcd's `v3election` (which
//! runs clientv3/concurrency's Election inside the server).
//!
//! Candidates queue exactly as lock waiters do (see `lock.rs`): each campaign's key is
//! `<name>/<lease in hex>` holding its proposal, and the key with the lowest create
//! revision leads. Campaign returns once the caller leads; Proclaim rewrites the
//! leader's value if its key still has the campaign's create revision ("election: not
//! leader" otherwise); Resign deletes it under the same condition; Leader reads the
//! lowest key ("election: no leader" if none); Observe streams the leader's key-value
//! each time the leader or its value changes, from the watchable store.
//!
//! As in etcd, Campaign and Proclaim without a lease (0) grant a fresh 60 s lease that
//! nobody keeps alive: a Proclaim with lease 0 moves the leader key onto it. Errors go
//! out as etcd's do: code `Unknown`, etcd's message
//! (`crate::errors::embedded_client_status`).

use std::sync::Arc;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    Compare, DeleteRangeRequest, InternalRaftRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare, range_request, request_op,
};
use retcd_api::mvccpb;
use retcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use retcd_mvcc::WatchOptions;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::lock::{
    Caller, DeleteOnDrop, caller, create_or_get, grant_session, lease_hex, own_create_revision,
    prefix_end, wait_for_older,
};
use crate::apply::{self, ApplyResponse};
use crate::auth::{self, Credentials, state::Access};
use crate::errors::{RequestError, embedded_client_status};
use crate::node::Node;

pub struct ElectionService {
    node: Node,
    min_ttl: i64,
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// The leader's key-value under `prefix`: the lowest create revision (serializable, on
/// this member's applied state).
fn leader_kv(node: &Node, prefix: &[u8]) -> Result<Option<mvccpb::KeyValue>, RequestError> {
    let req = RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    };
    let view = node.store.kv.view()?;
    let resp = apply::execute_range(&view, &req, &node.metrics)?;
    Ok(resp.kvs.into_iter().next())
}

fn leader_guard(leader: &LeaderKey) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: leader.key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(leader.rev)),
        range_end: Bytes::new(),
    }
}

impl ElectionService {
    pub fn new(node: &Node, min_ttl: i64) -> Self {
        ElectionService {
            node: node.clone(),
            min_ttl,
        }
    }

    async fn txn(&self, txn: TxnRequest, who: &Caller) -> Result<(bool, i64), RequestError> {
        let out = self
            .node
            .handle
            .propose(InternalRaftRequest {
                header: who.clone(),
                txn: Some(txn),
                ..Default::default()
            })
            .await?;
        match out {
            ApplyResponse::Txn(t) => Ok((t.succeeded, t.header.map_or(0, |h| h.revision))),
            other => Err(RequestError::Internal(format!("txn answered {other:?}"))),
        }
    }

    async fn proclaim_value(
        &self,
        leader: &LeaderKey,
        value: Bytes,
        who: &Caller,
    ) -> Result<i64, RequestError> {
        let (ok, revision) = self
            .txn(
                TxnRequest {
                    compare: vec![leader_guard(leader)],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: leader.key.clone(),
                            value,
                            lease: leader.lease,
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                },
                who,
            )
            .await?;
        if !ok {
            return Err(EtcdError::ElectionNotLeader.into());
        }
        Ok(revision)
    }

    async fn campaign_inner(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<CampaignResponse, RequestError> {
        let prefix = prefix_of(&req.get_ref().name);
        let who = caller(
            &self.node,
            &Credentials::of(&req),
            &prefix,
            &[Access::Read, Access::Write],
        )
        .await?;
        let r = req.into_inner();
        let lease = if r.lease == 0 {
            grant_session(&self.node, self.min_ttl, &who).await?
        } else {
            r.lease
        };
        let key = [prefix.as_slice(), lease_hex(lease).as_bytes()].concat();
        let (header, my_rev, existing) =
            create_or_get(&self.node, &key, r.value.clone(), lease, &who).await?;
        let mut guard = DeleteOnDrop {
            node: self.node.clone(),
            key: Some(key.clone()),
            who: who.clone(),
        };
        let leader = LeaderKey {
            name: r.name.clone(),
            key: Bytes::from(key.clone()),
            rev: my_rev,
            lease,
        };
        // A campaign that found its key (same lease again) takes the new value; one
        // that brings the same value writes nothing (etcd's Campaign proclaims only a
        // different value).
        if existing.is_some_and(|v| v != r.value) {
            self.proclaim_value(&leader, r.value.clone(), &who).await?;
        }
        wait_for_older(&self.node, &prefix, my_rev).await?;
        if own_create_revision(&self.node, &key).await? != Some(my_rev) {
            guard.key = None;
            return Err(EtcdError::SessionExpired.into());
        }
        guard.key = None;
        Ok(CampaignResponse {
            header: Some(self.node.status.header(Some(header.revision))),
            leader: Some(leader),
        })
    }

    async fn proclaim_inner(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<ProclaimResponse, RequestError> {
        let who = auth::header(self.node.auth.info(&Credentials::of(&req)).await?.as_ref());
        let r = req.into_inner();
        let mut leader = r.leader.ok_or(EtcdError::ElectionMissingLeaderKey)?;
        if leader.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        // etcd resumes the election in a session made from `leader.lease`: lease 0 is a
        // new orphaned lease, and the leader key is put with it.
        if leader.lease == 0 {
            leader.lease = grant_session(&self.node, self.min_ttl, &who).await?;
        }
        let revision = self.proclaim_value(&leader, r.value, &who).await?;
        Ok(ProclaimResponse {
            header: Some(self.node.status.header(Some(revision))),
        })
    }

    async fn resign_inner(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<ResignResponse, RequestError> {
        let who = auth::header(self.node.auth.info(&Credentials::of(&req)).await?.as_ref());
        let leader = req
            .into_inner()
            .leader
            .ok_or(EtcdError::ElectionMissingLeaderKey)?;
        if leader.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let (_, revision) = self
            .txn(
                TxnRequest {
                    compare: vec![leader_guard(&leader)],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: leader.key.clone(),
                                ..Default::default()
                            },
                        )),
                    }],
                    failure: vec![],
                },
                &who,
            )
            .await?;
        Ok(ResignResponse {
            header: Some(self.node.status.header(Some(revision))),
        })
    }

    async fn leader_inner(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<LeaderResponse, RequestError> {
        let prefix = prefix_of(&req.get_ref().name);
        caller(&self.node, &Credentials::of(&req), &prefix, &[Access::Read]).await?;
        self.node.handle.read_index().await?;
        let kv = leader_kv(&self.node, &prefix)?.ok_or(EtcdError::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: Some(self.node.status.header(None)),
            kv: Some(kv),
        })
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = BoxStream<LeaderResponse>;

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let resp = self.campaign_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let resp = self.proclaim_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let resp = self.leader_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }

    /// Sends the leader's key-value now (if there is a leader) and at every change of
    /// leader or value, until the client goes away.
    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let node = self.node.clone();
        let prefix = prefix_of(&req.get_ref().name);
        caller(&node, &Credentials::of(&req), &prefix, &[Access::Read])
            .await
            .map_err(embedded_client_status)?;
        node.handle
            .read_index()
            .await
            .map_err(embedded_client_status)?;
        let (tx, rx) = mpsc::channel::<Result<LeaderResponse, Status>>(16);
        tokio::spawn(async move {
            let data = Arc::new(Notify::new());
            let stream = node.store.watch.open_stream(
                Box::new({
                    let data = data.clone();
                    move || data.notify_one()
                }),
                Box::new(|| {}),
            );
            stream.create(WatchOptions {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                ..WatchOptions::default()
            });
            let mut last: Option<(Bytes, i64)> = None;
            // Whether a read found no leader since the last message.
            let mut leaderless = false;
            loop {
                // The watcher exists before this read, so no change after it is missed.
                match leader_kv(&node, &prefix) {
                    Ok(Some(kv)) => {
                        let now = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&now) {
                            // etcd's headers: a leader its read found gets that read's
                            // (the current revision); a change its watch saw (a new value
                            // of the same key, or the first leader after none) gets the
                            // revision of that change.
                            let seen_by_watch =
                                leaderless || last.as_ref().is_some_and(|(k, _)| *k == kv.key);
                            let revision = seen_by_watch.then_some(kv.mod_revision);
                            leaderless = false;
                            last = Some(now);
                            let resp = LeaderResponse {
                                header: Some(node.status.header(revision)),
                                kv: Some(kv),
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => leaderless = true,
                    Err(e) => {
                        let _ = tx.send(Err(embedded_client_status(e))).await;
                        return;
                    }
                }
                // Wait for any change under the prefix, or the client leaving.
                loop {
                    let mut changed = false;
                    while let Some(out) = stream.outbox().pop() {
                        changed |= matches!(out, retcd_mvcc::watch::Out::Events { .. });
                    }
                    if changed {
                        break;
                    }
                    if stream.outbox().is_closed() {
                        let stopped = RequestError::from(EtcdError::Stopped);
                        let _ = tx.send(Err(embedded_client_status(stopped))).await;
                        return;
                    }
                    tokio::select! {
                        _ = data.notified() => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let resp = self.resign_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }
}
