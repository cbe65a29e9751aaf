//! etcd's backend quota, as checked before proposing (`backendQuota`): the backend's
//! size plus an estimate of what the request adds must stay below
//! `--quota-backend-bytes`; otherwise this member raises NOSPACE (through Raft, so every
//! member refuses writes that grow the store from then on) and the request is refused
//! with "database space exceeded".
//!
//! The check compares this member's backend file size, which differs between members,
//! so it runs here, before proposing, and never in apply. What NOSPACE then caps, and
//! until when, is decided in apply (`apply/alarm.rs`).

use std::sync::Arc;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AlarmRequest, AlarmType, InternalRaftRequest, LeaseGrantRequest, PutRequest, RequestOp,
    TxnRequest, alarm_request::AlarmAction, request_op,
};

use crate::errors::RequestError;
use crate::node::{NodeHandle, NodeStatus};

/// etcd's estimate of what a key's metadata costs in the backend.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of what a lease costs in the backend.
const LEASE_OVERHEAD: u64 = 64;

/// The proposer-side quota check of one member.
#[derive(Clone)]
pub struct Quota {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
}

impl Quota {
    pub fn new(handle: Arc<NodeHandle>, status: Arc<NodeStatus>) -> Quota {
        Quota { handle, status }
    }

    /// Refuses a request that adds `cost` bytes (by etcd's estimate) if the backend
    /// would reach the quota, raising NOSPACE for this member first unless it is raised
    /// already. The alarm then stays until an operator disarms it.
    pub async fn check(&self, cost: u64) -> Result<(), RequestError> {
        let size = self.status.db_file_bytes();
        let quota = self.status.quota_backend_bytes();
        if fits(size, cost, quota) {
            return Ok(());
        }
        let me = self.status.member_id().0;
        let raised = self
            .status
            .alarms()
            .list(AlarmType::Nospace)
            .iter()
            .any(|a| a.member_id == me);
        if !raised {
            tracing::warn!(
                size,
                quota,
                "the backend reached its quota: raising NOSPACE"
            );
            // As in etcd, the refusal does not depend on the alarm's own outcome.
            let _ = self
                .handle
                .propose(InternalRaftRequest {
                    alarm: Some(AlarmRequest {
                        action: AlarmAction::Activate as i32,
                        member_id: me,
                        alarm: AlarmType::Nospace as i32,
                    }),
                    ..Default::default()
                })
                .await;
        }
        Err(EtcdError::NoSpace.into())
    }
}

/// What a put adds to the backend, by etcd's estimate.
pub fn put_cost(r: &PutRequest) -> u64 {
    let lease = if r.lease != 0 { LEASE_OVERHEAD } else { 0 };
    KV_OVERHEAD + r.key.len() as u64 + r.value.len() as u64 + lease
}

/// What a txn adds: the costlier branch's puts (nested txns are not counted, as in etcd).
pub fn txn_cost(r: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

/// What a lease grant adds.
pub fn lease_grant_cost(_r: &LeaseGrantRequest) -> u64 {
    LEASE_OVERHEAD
}

/// Whether a request of `cost` fits: the backend's size plus the cost stays below the
/// quota (etcd's `backendQuota.Available`).
pub fn fits(db_size: u64, cost: u64, quota: u64) -> bool {
    db_size.saturating_add(cost) < quota
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: etcd's cost estimates: key + value + 256, + 64 with a lease; a txn costs its
    // costlier branch.
    #[test]
    fn costs_follow_etcd() {
        let put = |k: &str, v: &str, lease: i64| PutRequest {
            key: k.to_owned().into(),
            value: v.to_owned().into(),
            lease,
            ..Default::default()
        };
        assert_eq!(put_cost(&put("ab", "cde", 0)), 261);
        assert_eq!(put_cost(&put("ab", "cde", 5)), 325);
        let op = |p: PutRequest| RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        };
        let txn = TxnRequest {
            success: vec![op(put("a", "", 0))],
            failure: vec![op(put("a", "", 0)), op(put("b", "", 0))],
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn), 2 * 257);
        assert_eq!(txn_cost(&TxnRequest::default()), 0);
        assert!(fits(100, 10, 111));
        assert!(!fits(100, 11, 111));
    }
}
