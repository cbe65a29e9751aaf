//! The KV service: request validation with etcd's exact errors, then reads on this
//! member (serializable, or after a ReadIndex) and writes through Raft.
//!
//! Validation (`apply::validate`, etcd's `v3rpc/key.go`) runs before anything is
//! proposed, so a malformed request never reaches the log; apply runs it again on the
//! entry. Errors that depend on the store's state (a missing key for `ignore_value`, a
//! compacted revision) are decided by apply, where every member decides them the same
//! way.
//!
//! With auth on, reads are checked here against the applied auth store (etcd's
//! `doSerialize`: a read whose credentials went stale while it ran is refused with
//! "revision of auth store is old"); writes carry the caller's credentials into the log
//! and apply's auth gate checks them.

use std::sync::Arc;

use retcd_api::etcdserverpb::kv_server::Kv;
use retcd_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    InternalRaftRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::apply::validate::{check_delete, check_put, check_range, check_txn_request};
use crate::apply::{self, ApplyResponse};
use crate::auth::state::{Access, AuthInfo};
use crate::auth::{self, Auth, Credentials};
use crate::errors::RequestError;
use crate::grpc::require_leader;
use crate::metrics::Metrics;
use crate::node::{Node, NodeHandle, NodeStatus, Store};
use crate::quota::{self, Quota};

pub struct KvService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    store: Store,
    metrics: Arc<Metrics>,
    quota: Quota,
    max_txn_ops: usize,
    auth: Arc<Auth>,
}

impl KvService {
    pub fn new(node: &Node, quota: Quota, max_txn_ops: usize) -> Self {
        KvService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            store: node.store.clone(),
            metrics: node.metrics.clone(),
            quota,
            max_txn_ops,
            auth: node.auth.clone(),
        }
    }

    /// etcd's `doSerialize` after the read: the credentials must still be current.
    fn still_current(&self, info: Option<&AuthInfo>) -> Result<(), RequestError> {
        match info {
            Some(i) if i.revision != 0 && i.revision != self.auth.state().revision => {
                Err(retcd_api::errors::EtcdError::AuthOldRevision.into())
            }
            _ => Ok(()),
        }
    }

    async fn range_inner(&self, req: Request<RangeRequest>) -> Result<RangeResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_range(&r)?;
        // As etcd: a linearizable read first waits for the read index, so the check sees
        // the auth store at least as new as the cluster's when the read began.
        if !r.serializable {
            self.handle.read_index().await?;
        }
        self.auth
            .state()
            .check_range(info.as_ref(), &r.key, &r.range_end, Access::Read)?;
        let mut resp = {
            let view = self.store.kv.view()?;
            apply::execute_range(&view, &r, &self.metrics)?
        };
        self.still_current(info.as_ref())?;
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn put_inner(&self, req: Request<PutRequest>) -> Result<PutResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_put(&r)?;
        self.quota.check(quota::put_cost(&r)).await?;
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                put: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Put(mut resp) = out else {
            return Err(mismatch("put", &out));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn delete_inner(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<DeleteRangeResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_delete(&r)?;
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                delete_range: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::DeleteRange(mut resp) = out else {
            return Err(mismatch("delete_range", &out));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn txn_inner(&self, req: Request<TxnRequest>) -> Result<TxnResponse, RequestError> {
        require_leader(&req, &self.status)?;
        let info = self.auth.info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_txn_request(&r, Some(self.max_txn_ops))?;
        // As etcd, every txn passes the quota check, read-only ones included (they cost
        // nothing, so they fail only once the backend is at the quota).
        self.quota.check(quota::txn_cost(&r)).await?;
        if apply::txn_is_read_only(&r) {
            // etcd serves read-only txns like ranges: no Raft entry, one read view.
            if !apply::txn_is_serializable(&r) {
                self.handle.read_index().await?;
            }
            let auth = self.auth.state();
            if auth.enabled {
                // A read-only txn puts nothing, so no lease is consulted.
                apply::check_txn(&auth, info.as_ref(), &retcd_lease::Lessor::new(), &r)?;
            }
            let mut resp = {
                let view = self.store.kv.view()?;
                apply::execute_read_only_txn(&view, &r, &self.metrics)??
            };
            self.still_current(info.as_ref())?;
            resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
            return Ok(resp);
        }
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                txn: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Txn(mut resp) = out else {
            return Err(mismatch("txn", &out));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn compact_inner(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<CompactionResponse, RequestError> {
        require_leader(&req, &self.status)?;
        // etcd 3.4.23 lets anyone compact; its fixed releases need the root role.
        let info = self.auth.require_admin(&Credentials::of(&req)).await?;
        // A compaction commits its batch durably (see `node`), so `physical` needs no
        // extra wait: the answer comes after the durable commit either way.
        let out = self
            .handle
            .propose(InternalRaftRequest {
                header: auth::header(info.as_ref()),
                compaction: Some(req.into_inner()),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Compaction(mut resp) = out else {
            return Err(mismatch("compaction", &out));
        };
        resp.header = Some(self.status.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }
}

fn mismatch(kind: &str, got: &ApplyResponse) -> RequestError {
    tracing::error!(?got, kind, "apply answered a different request kind");
    RequestError::Internal(format!("apply answered a {kind} with another kind"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.range_inner(req).await?))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.put_inner(req).await?))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(self.delete_inner(req).await?))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(self.txn_inner(req).await?))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(self.compact_inner(req).await?))
    }
}
