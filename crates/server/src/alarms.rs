//! Alarms and the backend quota (etcd's alarm store and `backendQuota`).
//!
//! An alarm is a (member, type) pair, raised and cleared through Raft and kept in the
//! backend's `alarm` bucket, so every member agrees on the set and it survives restarts.
//!
//! The quota: before a put, a txn or a lease grant is proposed, the backend's size plus
//! an estimate of what the request adds (etcd's) must stay below `--quota-backend-bytes`;
//! otherwise the member raises NOSPACE and refuses with "database space exceeded". While
//! any NOSPACE alarm is raised, apply refuses what would grow the store (puts, txns that
//! hold a put, lease grants) on every member, and keeps refusing after compaction and
//! defragmentation freed space, until an operator disarms the alarm (as etcd does).
//! Ranges, deletes, compaction and defragmentation go on.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use retcd_api::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, InternalRaftRequest, LeaseGrantRequest, PutRequest,
    RequestOp, TxnRequest, alarm_request::AlarmAction, request_op,
};
use retcd_backend::{BackendError, Bucket, ReadTx, WriteTx};

/// etcd's estimate of what a key's metadata costs in the backend.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of what a lease costs in the backend.
const LEASE_OVERHEAD: u64 = 64;

/// The raised alarms, as of the applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    raised: BTreeSet<(u64, i32)>,
}

fn key(member: u64, alarm: i32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&member.to_be_bytes());
    k[8..].copy_from_slice(&alarm.to_be_bytes());
    k
}

impl Alarms {
    /// Reads the `alarm` bucket.
    pub fn load(tx: &impl ReadTx) -> Result<Self, BackendError> {
        let mut raised = BTreeSet::new();
        let mut bad = None;
        tx.scan(Bucket::Alarm, &[], None, &mut |k, _| {
            match (k.get(..8), k.get(8..)) {
                (Some(m), Some(a)) if k.len() == 12 => {
                    let m = u64::from_be_bytes(m.try_into().expect("8 bytes"));
                    let a = i32::from_be_bytes(a.try_into().expect("4 bytes"));
                    raised.insert((m, a));
                }
                _ => bad = Some(k.len()),
            }
            ControlFlow::Continue(())
        })?;
        if let Some(len) = bad {
            return Err(BackendError::Corrupted(format!(
                "alarm bucket: a key of {len} bytes, not 12"
            )));
        }
        Ok(Alarms { raised })
    }

    /// Every raised alarm of type `of` (every alarm for `None`), by member.
    pub fn list(&self, of: AlarmType) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(_, a)| of == AlarmType::None || *a == of as i32)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether writes that grow the store are refused.
    pub fn no_space(&self) -> bool {
        self.raised
            .iter()
            .any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    /// Applies an activation or deactivation; returns the alarm that changed (none if it
    /// was already so, or for a GET or the NONE type).
    pub fn apply(
        &mut self,
        tx: &mut impl WriteTx,
        req: &AlarmRequest,
    ) -> Result<Vec<AlarmMember>, BackendError> {
        if req.alarm == AlarmType::None as i32 {
            return Ok(Vec::new());
        }
        let entry = (req.member_id, req.alarm);
        let changed = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) if self.raised.insert(entry) => {
                tx.put(Bucket::Alarm, &key(entry.0, entry.1), &[])?;
                true
            }
            Ok(AlarmAction::Deactivate) if self.raised.remove(&entry) => {
                tx.delete(Bucket::Alarm, &key(entry.0, entry.1))?;
                true
            }
            _ => false,
        };
        Ok(if changed {
            vec![AlarmMember {
                member_id: entry.0,
                alarm: entry.1,
            }]
        } else {
            Vec::new()
        })
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

/// Whether apply refuses `req` while NOSPACE is raised (etcd's capped applier): puts,
/// txns with a put in either branch, lease grants.
pub fn grows_store(req: &InternalRaftRequest) -> bool {
    req.put.is_some()
        || req.lease_grant.is_some()
        || req.txn.as_ref().is_some_and(|t| txn_cost(t) > 0)
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
    use retcd_backend::{Backend, MemBackend};

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    // Goal: activations and deactivations are idempotent, answer with what changed, and
    // persist; NOSPACE is what caps writes.
    #[test]
    fn alarms_apply_list_and_persist() {
        let backend = MemBackend::new();
        let mut alarms = Alarms::default();
        let mut tx = backend.begin_write().unwrap();
        let raised = alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 7, AlarmType::Nospace))
            .unwrap();
        assert_eq!(raised.len(), 1);
        assert!(
            alarms
                .apply(&mut tx, &req(AlarmAction::Activate, 7, AlarmType::Nospace))
                .unwrap()
                .is_empty()
        );
        alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 9, AlarmType::Corrupt))
            .unwrap();
        assert!(
            alarms
                .apply(&mut tx, &req(AlarmAction::Activate, 9, AlarmType::None))
                .unwrap()
                .is_empty()
        );
        tx.commit().unwrap();
        assert!(alarms.no_space());
        assert_eq!(alarms.list(AlarmType::None).len(), 2);
        assert_eq!(
            alarms.list(AlarmType::Corrupt),
            [AlarmMember {
                member_id: 9,
                alarm: AlarmType::Corrupt as i32
            }]
        );
        let loaded = Alarms::load(&backend.begin_read().unwrap()).unwrap();
        assert_eq!(loaded, alarms);

        let mut tx = backend.begin_write().unwrap();
        let cleared = alarms
            .apply(
                &mut tx,
                &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
            )
            .unwrap();
        assert_eq!(cleared, raised);
        tx.commit().unwrap();
        assert!(!alarms.no_space());
        let loaded = Alarms::load(&backend.begin_read().unwrap()).unwrap();
        assert_eq!(loaded.list(AlarmType::None).len(), 1);
    }

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
