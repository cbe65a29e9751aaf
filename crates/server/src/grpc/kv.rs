//! The KV service: request validation with etcd's exact errors, then reads on this
//! member (serializable, or after a ReadIndex) and writes through Raft.
//!
//! Validation follows etcd's `v3rpc/key.go` and runs before anything is proposed, so a
//! malformed request never reaches the log. Errors that depend on the store's state (a
//! missing key for `ignore_value`, a compacted revision) are decided by apply instead,
//! where every member decides them the same way.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::kv_server::Kv;
use retcd_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    InternalRaftRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, range_request, request_op,
};
use tonic::{Request, Response, Status};

use crate::alarms;
use crate::apply::{self, ApplyResponse};
use crate::errors::RequestError;
use crate::grpc::require_leader;
use crate::raft_node::NodeHandle;

pub struct KvService {
    node: Arc<NodeHandle>,
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(node: Arc<NodeHandle>, max_txn_ops: usize) -> Self {
        KvService { node, max_txn_ops }
    }

    async fn range_inner(&self, req: Request<RangeRequest>) -> Result<RangeResponse, RequestError> {
        require_leader(&req, &self.node)?;
        let r = req.into_inner();
        check_range(&r)?;
        if !r.serializable {
            self.node.read_index().await?;
        }
        let shared = self.node.shared();
        let mut resp = {
            let view = shared.kv.view()?;
            apply::execute_range(&view, &r, &shared.metrics)?
        };
        resp.header = Some(shared.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn put_inner(&self, req: Request<PutRequest>) -> Result<PutResponse, RequestError> {
        require_leader(&req, &self.node)?;
        let r = req.into_inner();
        check_put(&r)?;
        self.node.check_quota(alarms::put_cost(&r)).await?;
        let out = self
            .node
            .propose(InternalRaftRequest {
                put: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Put(mut resp) = out else {
            return Err(mismatch("put", &out));
        };
        resp.header = Some(self.node.shared().header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn delete_inner(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<DeleteRangeResponse, RequestError> {
        require_leader(&req, &self.node)?;
        let r = req.into_inner();
        check_delete(&r)?;
        let out = self
            .node
            .propose(InternalRaftRequest {
                delete_range: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::DeleteRange(mut resp) = out else {
            return Err(mismatch("delete_range", &out));
        };
        resp.header = Some(self.node.shared().header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn txn_inner(&self, req: Request<TxnRequest>) -> Result<TxnResponse, RequestError> {
        require_leader(&req, &self.node)?;
        let r = req.into_inner();
        check_txn(&r, self.max_txn_ops)?;
        // Checked after the cheap checks, so a huge request cannot make this quadratic.
        check_intervals(&r.success)?;
        check_intervals(&r.failure)?;
        // As etcd, every txn passes the quota check, read-only ones included (they cost
        // nothing, so they fail only once the backend is at the quota).
        self.node.check_quota(alarms::txn_cost(&r)).await?;
        let shared = self.node.shared();
        if apply::txn_is_read_only(&r) {
            // etcd serves read-only txns like ranges: no Raft entry, one read view.
            if !apply::txn_is_serializable(&r) {
                self.node.read_index().await?;
            }
            let mut resp = {
                let view = shared.kv.view()?;
                apply::execute_read_only_txn(&view, &r, &shared.metrics)??
            };
            resp.header = Some(shared.header(resp.header.map(|h| h.revision)));
            return Ok(resp);
        }
        let out = self
            .node
            .propose(InternalRaftRequest {
                txn: Some(r),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Txn(mut resp) = out else {
            return Err(mismatch("txn", &out));
        };
        resp.header = Some(shared.header(resp.header.map(|h| h.revision)));
        Ok(resp)
    }

    async fn compact_inner(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<CompactionResponse, RequestError> {
        require_leader(&req, &self.node)?;
        // A compaction commits its batch durably (see `raft_node`), so `physical` needs no
        // extra wait: the answer comes after the durable commit either way.
        let out = self
            .node
            .propose(InternalRaftRequest {
                compaction: Some(req.into_inner()),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Compaction(mut resp) = out else {
            return Err(mismatch("compaction", &out));
        };
        resp.header = Some(self.node.shared().header(resp.header.map(|h| h.revision)));
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

/// etcd's `checkRangeRequest` (the sort option check is etcd 3.6's).
fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the widest of compares, success and failure counts against
/// `max_txn_ops`, and what is left of the budget bounds each nested txn.
fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_txn_ops),
        // An empty op: etcd answers "key not found".
        None => Err(EtcdError::KeyNotFound),
    }
}

/// Keys a delete covers: one key, or `[start, end)` (`end` `None`: every key from start).
#[derive(Clone, Debug)]
enum DeleteSpan {
    Key(Bytes),
    Range(Bytes, Option<Bytes>),
}

impl DeleteSpan {
    fn of(r: &DeleteRangeRequest) -> DeleteSpan {
        match r.range_end.as_ref() {
            [] => DeleteSpan::Key(r.key.clone()),
            [0] => DeleteSpan::Range(r.key.clone(), None),
            _ => DeleteSpan::Range(r.key.clone(), Some(r.range_end.clone())),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self {
            DeleteSpan::Key(k) => k.as_ref() == key,
            DeleteSpan::Range(start, end) => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }
}

fn deleted(dels: &[DeleteSpan], key: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(key))
}

/// etcd's duplicate-key rule (`checkIntervals`): within one branch no key may be put twice
/// or both put and deleted, nested txns included. Overlapping deletes are fine, and a key
/// put in both branches of one nested txn is fine (only one branch runs).
///
/// One deliberate difference: a delete with `range_end` "\0" covers every key from its
/// start, as it does when applied. etcd's interval check treats that range as empty and
/// lets a put of a covered key through.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<DeleteSpan>), EtcdError> {
    let mut dels: Vec<DeleteSpan> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(DeleteSpan::of(d)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_api::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::from(k.to_string()),
                    range_end: Bytes::from(end.to_string()),
                    ..Default::default()
                },
            )),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn dup(ops: Vec<RequestOp>) -> bool {
        matches!(check_intervals(&ops), Err(EtcdError::DuplicateKey))
    }

    // Goal: etcd's duplicate-key rule, case by case.
    #[test]
    fn duplicate_key_rule() {
        assert!(dup(vec![put("a"), put("a")]));
        assert!(!dup(vec![put("a"), put("b")]));
        // A put inside a deleted range, single-key deletes, "\0" ranges.
        assert!(dup(vec![put("b"), del("a", "c")]));
        assert!(!dup(vec![put("c"), del("a", "c")]));
        assert!(dup(vec![del("a", ""), put("a")]));
        assert!(dup(vec![put("zz"), del("a", "\0")]));
        // Overlapping deletes are fine.
        assert!(!dup(vec![del("a", "c"), del("b", "d")]));
        // Nested: a put in a child against a put or delete of the parent.
        assert!(dup(vec![put("a"), nested(vec![put("a")], vec![])]));
        assert!(dup(vec![del("a", "b"), nested(vec![put("a")], vec![])]));
        assert!(dup(vec![nested(vec![del("a", "b")], vec![]), put("a")]));
        // The same key in both branches of one nested txn: only one runs.
        assert!(!dup(vec![nested(vec![put("a")], vec![put("a")])]));
        // ...but not in two different nested txns.
        assert!(dup(vec![
            nested(vec![put("a")], vec![]),
            nested(vec![], vec![put("a")])
        ]));
        // Deeper nesting propagates deletes upward.
        assert!(dup(vec![
            nested(vec![nested(vec![del("k", "l")], vec![])], vec![]),
            put("k1")
        ]));
    }

    // Goal: the txn size rule counts the widest of compares/success/failure, and nested
    // txns get what is left of the budget.
    #[test]
    fn txn_ops_limit() {
        let t = |n: usize| TxnRequest {
            compare: vec![],
            success: (0..n).map(|i| put(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        assert_eq!(check_txn(&t(128), 128), Ok(()));
        assert_eq!(check_txn(&t(129), 128), Err(EtcdError::TooManyOps));
        let outer = TxnRequest {
            compare: vec![],
            success: vec![put("x"), nested(vec![put("y"), put("z")], vec![])],
            failure: vec![],
        };
        assert_eq!(check_txn(&outer, 3), Err(EtcdError::TooManyOps));
        assert_eq!(check_txn(&outer, 4), Ok(()));
        let empty_compare = TxnRequest {
            compare: vec![Compare::default()],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty_compare, 128), Err(EtcdError::EmptyKey));
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty_op, 128), Err(EtcdError::KeyNotFound));
    }

    // Goal: single-request validation errors, in etcd's order.
    #[test]
    fn request_validation() {
        let mut r = RangeRequest::default();
        assert_eq!(check_range(&r), Err(EtcdError::EmptyKey));
        r.key = Bytes::from_static(b"k");
        r.sort_order = 99;
        assert_eq!(check_range(&r), Err(EtcdError::InvalidSortOption));
        r.sort_order = 0;
        r.sort_target = 99;
        assert_eq!(check_range(&r), Err(EtcdError::InvalidSortOption));
        let mut p = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::ValueProvided));
        p.ignore_value = false;
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(check_put(&p), Err(EtcdError::LeaseProvided));
    }
}
