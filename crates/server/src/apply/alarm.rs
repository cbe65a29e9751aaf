//! Alarms are decided here: the alarm set, what an Alarm entry changes, and the capped
//! gate that NOSPACE puts in front of every request (etcd's alarm store and
//! `applierV3Capped`).
//!
//! An alarm is a (member, type) pair, raised and cleared through Raft and kept in the
//! backend's `alarm` bucket, so every member agrees on the set and it survives restarts.
//!
//! While any NOSPACE alarm is raised, the capped gate refuses what would grow the store
//! (puts, txns with a put in either branch, lease grants) on every member, and keeps
//! refusing after compaction and defragmentation freed space, until an operator disarms
//! the alarm, as etcd does. Ranges, deletes, compaction and defragmentation go on.
//!
//! The other half of etcd's quota, the check before proposing that raises NOSPACE, is
//! `crate::quota`: it compares this member's backend size, which differs between
//! members, so it cannot be decided here.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, RequestOp, TxnRequest, alarm_request::AlarmAction,
    request_op,
};
use retcd_backend::{BackendError, Bucket, ReadTx, WriteTx};

use super::request::Request;
use super::{Gate, GateState};

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

/// etcd's capped applier: while NOSPACE is raised, requests that grow the store are
/// refused with "database space exceeded".
pub struct CappedGate;

impl Gate for CappedGate {
    fn name(&self) -> &'static str {
        "capped"
    }

    fn admit(&self, req: &Request<'_>, state: &GateState<'_>) -> Result<(), EtcdError> {
        if state.alarms.no_space() && grows_store(req) {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }
}

/// Whether `req` may grow the store: a put, a txn with a put in either branch (etcd
/// looks at the top level only: its quota cost of the txn is then > 0), a lease grant.
fn grows_store(req: &Request<'_>) -> bool {
    match req {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(t) => txn_has_put(t),
        _ => false,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    let has = |ops: &[RequestOp]| {
        ops.iter()
            .any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
    };
    has(&t.success) || has(&t.failure)
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

    // Goal: etcd's capped applier: with NOSPACE raised, puts, txns with a put in either
    // branch (top level) and lease grants are refused; everything else goes through.
    #[test]
    fn capped_gate_refuses_what_grows_the_store() {
        use retcd_api::etcdserverpb::{
            DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        };
        let backend = MemBackend::new();
        let mut alarms = Alarms::default();
        let put = PutRequest::default();
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(put.clone())),
        };
        let with_put = TxnRequest {
            failure: vec![op.clone()],
            ..Default::default()
        };
        let nested_put = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![op],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let grant = LeaseGrantRequest::default();
        let revoke = LeaseRevokeRequest::default();
        let del = DeleteRangeRequest::default();
        let admit = |alarms: &Alarms, r: Request<'_>| CappedGate.admit(&r, &GateState { alarms });
        assert_eq!(admit(&alarms, Request::Put(&put)), Ok(()));
        let mut tx = backend.begin_write().unwrap();
        alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 1, AlarmType::Nospace))
            .unwrap();
        assert_eq!(admit(&alarms, Request::Put(&put)), Err(EtcdError::NoSpace));
        assert_eq!(
            admit(&alarms, Request::Txn(&with_put)),
            Err(EtcdError::NoSpace)
        );
        assert_eq!(
            admit(&alarms, Request::LeaseGrant(&grant)),
            Err(EtcdError::NoSpace)
        );
        assert_eq!(
            admit(&alarms, Request::Txn(&nested_put)),
            Ok(()),
            "as etcd: top level only"
        );
        assert_eq!(admit(&alarms, Request::LeaseRevoke(&revoke)), Ok(()));
        assert_eq!(admit(&alarms, Request::DeleteRange(&del)), Ok(()));
    }
}
