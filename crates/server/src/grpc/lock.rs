//! The Lock service (`v3lockpb`), on the server as etcd's `v3lock` (which runs
//! clientv3/concurrency's Mutex inside the server).
//!
//! Lock(name, lease): the caller's key is `<name>/<lease in hex>` ([`lease_hex`]),
//! created with the lease by a Txn (or found, if this lease already asked). Its create
//! revision orders the waiters: the caller owns the lock once no key under `<name>/` has
//! a lower create revision. It waits on the newest older key only, until that key is deleted, then
//! looks again (no herd). Before answering it checks that its own key still exists: a
//! waiter whose lease expired or was revoked meanwhile is never granted
//! (`session: session is expired`). If the caller goes away while waiting, its key is
//! deleted. Lease 0 gets a fresh 60 s lease that nobody keeps alive (etcd's session
//! default, orphaned as etcd's server does). The response header is etcd's: the one of
//! the Txn that created the key when the lock was free, else the current revision when
//! the wait ended. Errors go out as etcd's do: code `Unknown`, etcd's message
//! (`crate::errors::embedded_client_status`).

use std::sync::Arc;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    Compare, DeleteRangeRequest, InternalRaftRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestHeader, RequestOp, ResponseHeader, TxnRequest, compare, range_request, request_op,
    response_op,
};
use retcd_api::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use retcd_mvcc::watch::Out;
use retcd_mvcc::{EventKind, WatchOptions};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::apply::{self, ApplyResponse};
use crate::auth::{self, Credentials, state::Access};
use crate::clock;
use crate::errors::{RequestError, embedded_client_status};
use crate::node::Node;

/// TTL of the lease granted for a Lock without one (clientv3/concurrency's default).
const SESSION_TTL: i64 = 60;

pub struct LockService {
    node: Node,
    min_ttl: i64,
}

impl LockService {
    pub fn new(node: &Node, min_ttl: i64) -> Self {
        LockService {
            node: node.clone(),
            min_ttl,
        }
    }

    async fn lock_inner(&self, req: Request<LockRequest>) -> Result<LockResponse, RequestError> {
        let prefix = [req.get_ref().name.as_ref(), b"/"].concat();
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
        let (header, my_rev, _) =
            create_or_get(&self.node, &key, Bytes::new(), lease, &who).await?;
        let mut guard = DeleteOnDrop {
            node: self.node.clone(),
            key: Some(key.clone()),
            who,
        };
        let waited = wait_for_older(&self.node, &prefix, my_rev).await?;
        if own_create_revision(&self.node, &key).await? != Some(my_rev) {
            guard.key = None;
            return Err(EtcdError::SessionExpired.into());
        }
        guard.key = None;
        // etcd's Mutex answers with the Txn's header when it owned the lock at once, and
        // after a wait with the header of its last read (of its own key): the current
        // revision when the wait ended, not the revision of its key.
        let revision = (!waited).then_some(header.revision);
        Ok(LockResponse {
            header: Some(self.node.status.header(revision)),
            key: Bytes::from(key),
        })
    }

    async fn unlock_inner(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<UnlockResponse, RequestError> {
        let who = auth::header(self.node.auth.info(&Credentials::of(&req)).await?.as_ref());
        let key = req.into_inner().key;
        // etcd's Unlock is a client Delete, which refuses an empty key before proposing.
        if key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let revision = delete_key(&self.node, key, &who).await?;
        Ok(UnlockResponse {
            header: Some(self.node.status.header(Some(revision))),
        })
    }
}

/// The lease part of a lock or election key, as etcd writes it (Go's `%x` of the signed
/// id): lowercase hex, with a minus sign for a negative lease (a lease granted with a
/// negative id works like any other), so the key is the one etcd would use.
pub(crate) fn lease_hex(lease: i64) -> String {
    if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    }
}

/// Whom the internal requests of a Lock or Election call are made for: the caller's
/// credentials, which apply's auth gate checks as it checks the caller's own requests
/// (etcd runs these services as a client inside the server, with the caller's token).
pub(crate) type Caller = Option<RequestHeader>;

/// The caller of a call on the keys under `prefix`, which it must be allowed every
/// access of `accesses` to (the whole range, as its waits read it).
pub(crate) async fn caller(
    node: &Node,
    creds: &Credentials,
    prefix: &[u8],
    accesses: &[Access],
) -> Result<Caller, RequestError> {
    let info = node.auth.info(creds).await?;
    let state = node.auth.state();
    let end = prefix_end(prefix);
    for &access in accesses {
        state.check_range(info.as_ref(), prefix, &end, access)?;
    }
    Ok(auth::header(info.as_ref()))
}

/// A lease for a caller that brought none.
pub(crate) async fn grant_session(
    node: &Node,
    min_ttl: i64,
    who: &Caller,
) -> Result<i64, RequestError> {
    let mut id = 0;
    while id == 0 {
        id = (node.handle.new_id() & (i64::MAX as u64)) as i64;
    }
    let out = node
        .handle
        .propose(InternalRaftRequest {
            header: who.clone(),
            lease_grant: Some(LeaseGrantRequest {
                ttl: SESSION_TTL.max(min_ttl),
                id,
            }),
            wall_clock_ms: clock::wall_clock_ms(),
            ..Default::default()
        })
        .await?;
    match out {
        ApplyResponse::LeaseGrant(g) => Ok(g.id),
        other => Err(RequestError::Internal(format!(
            "lease grant answered {other:?}"
        ))),
    }
}

/// Creates `key` with `lease` unless it exists; returns the Txn's header, the key's
/// create revision, and the value it already had (`None` when this call created it).
pub(crate) async fn create_or_get(
    node: &Node,
    key: &[u8],
    value: Bytes,
    lease: i64,
    who: &Caller,
) -> Result<(ResponseHeader, i64, Option<Bytes>), RequestError> {
    let key = Bytes::copy_from_slice(key);
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: Bytes::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
        }],
    };
    let out = node
        .handle
        .propose(InternalRaftRequest {
            header: who.clone(),
            txn: Some(txn),
            ..Default::default()
        })
        .await?;
    let ApplyResponse::Txn(resp) = out else {
        return Err(RequestError::Internal(format!("txn answered {out:?}")));
    };
    let header = resp.header.unwrap_or_default();
    if resp.succeeded {
        return Ok((header, header.revision, None));
    }
    let existing = resp.responses.into_iter().find_map(|r| match r.response {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
        _ => None,
    });
    match existing {
        Some(kv) => Ok((header, kv.create_revision, Some(kv.value))),
        // Created and gone between the compare and now: the caller's lease is gone.
        None => Err(EtcdError::SessionExpired.into()),
    }
}

/// Linearizable range under `prefix`, newest create revision at or below `max_create`
/// first, one key: the key a waiter at `max_create + 1` waits on.
async fn newest_older(
    node: &Node,
    prefix: &[u8],
    max_create: i64,
) -> Result<Option<(Bytes, i64)>, RequestError> {
    node.handle.read_index().await?;
    let req = RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    };
    let view = node.store.kv.view()?;
    let resp = apply::execute_range(&view, &req, &node.metrics)?;
    let at = resp.header.map_or(view.revision(), |h| h.revision);
    Ok(resp.kvs.into_iter().next().map(|kv| (kv.key, at)))
}

/// Waits until no key under `prefix` was created before `my_rev`, one key at a time;
/// returns whether there was any to wait for.
pub(crate) async fn wait_for_older(
    node: &Node,
    prefix: &[u8],
    my_rev: i64,
) -> Result<bool, RequestError> {
    let mut waited = false;
    while let Some((older, at)) = newest_older(node, prefix, my_rev - 1).await? {
        waited = true;
        wait_delete(node, &older, at + 1).await;
    }
    Ok(waited)
}

/// Waits for a DELETE of `key` at or after `from` (a compaction cancel also returns:
/// the caller looks again).
async fn wait_delete(node: &Node, key: &[u8], from: i64) {
    let data = Arc::new(Notify::new());
    let stream = node.store.watch.open_stream(
        Box::new({
            let data = data.clone();
            move || data.notify_one()
        }),
        Box::new(|| {}),
    );
    stream.create(WatchOptions {
        key: key.to_vec(),
        start_revision: from,
        filter_put: true,
        ..WatchOptions::default()
    });
    loop {
        while let Some(out) = stream.outbox().pop() {
            match out {
                Out::Events { events, .. } => {
                    if events.iter().any(|e| e.kind == EventKind::Delete) {
                        return;
                    }
                }
                Out::Canceled { .. } => return,
                Out::Created {
                    cancel_reason: Some(_),
                    ..
                } => return,
                Out::Created { .. } | Out::Progress { .. } => {}
            }
        }
        if stream.outbox().is_closed() {
            return;
        }
        data.notified().await;
    }
}

/// The create revision of `key` now (linearizable), if it exists.
pub(crate) async fn own_create_revision(
    node: &Node,
    key: &[u8],
) -> Result<Option<i64>, RequestError> {
    node.handle.read_index().await?;
    let r = node
        .store
        .kv
        .range(key, b"", retcd_mvcc::RangeOptions::default())?;
    Ok(r.kvs.first().map(|kv| kv.create_revision))
}

/// Deletes `key`; returns the revision after.
pub(crate) async fn delete_key(node: &Node, key: Bytes, who: &Caller) -> Result<i64, RequestError> {
    let out = node
        .handle
        .propose(InternalRaftRequest {
            header: who.clone(),
            delete_range: Some(DeleteRangeRequest {
                key,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    match out {
        ApplyResponse::DeleteRange(d) => Ok(d.header.map_or(0, |h| h.revision)),
        other => Err(RequestError::Internal(format!("delete answered {other:?}"))),
    }
}

/// etcd's prefix end: the prefix with its last byte below 0xff incremented.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Deletes a waiter's key if its call goes away before it is answered.
pub(crate) struct DeleteOnDrop {
    pub node: Node,
    pub key: Option<Vec<u8>>,
    pub who: Caller,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (node, who) = (self.node.clone(), self.who.take());
            tokio::spawn(async move {
                let _ = delete_key(&node, Bytes::from(key), &who).await;
            });
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let resp = self.lock_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let resp = self.unlock_inner(req).await;
        Ok(Response::new(resp.map_err(embedded_client_status)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: lock keys are etcd's for every lease id, negative ones included.
    #[test]
    fn lease_hex_is_gos_signed_hex() {
        assert_eq!(lease_hex(0x694d), "694d");
        assert_eq!(lease_hex(-1), "-1");
        assert_eq!(lease_hex(-77), "-4d");
        assert_eq!(lease_hex(i64::MIN), "-8000000000000000");
        assert_eq!(lease_hex(i64::MAX), "7fffffffffffffff");
    }
}
