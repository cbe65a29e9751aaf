//! Alarms are decided here: the alarm set, what an Alarm entry changes, and the gates
//! that CORRUPT and NOSPACE put in front of every request (etcd's alarm store,
//! `applierV3Corrupt` and `applierV3Capped`).
//!
//! An alarm is a (member, type) pair, raised and cleared through Raft and kept in the
//! backend's `alarm` bucket, so every member agrees on the set and it survives restarts.
//!
//! While any NOSPACE alarm is raised, the capped gate refuses what would grow the store
//! (puts, txns with a put in either branch, lease grants) on every member, and keeps
//! refusing after compaction and defragmentation freed space, until an operator disarms
//! the alarm, as etcd does. Ranges, deletes, compaction and defragmentation go on.
//! While any CORRUPT alarm is raised, the corrupt gate refuses every keyspace and lease
//! request of the log. With both raised, CORRUPT answers: the order etcd's appliers have
//! when a member starts with both alarms (at run time etcd keeps whichever was raised
//! last, and clearing either type lifts both, which would let writes through under
//! CORRUPT).
//!
//! Like etcd, any type number may be raised (and is listed and shown by Status), NONE
//! included; only NONE for member 0 is ignored, which etcd cannot store (its alarm key is
//! the encoded `AlarmMember`, empty for that one, and the member stops at every start).
//! The Maintenance service refuses it before proposing.
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

    /// Every raised alarm of type `of` (every alarm for `None`, 0), by member. `of` may be
    /// a number no type has, as etcd's GET allows.
    pub fn list(&self, of: impl Into<i32>) -> Vec<AlarmMember> {
        let of = of.into();
        self.raised
            .iter()
            .filter(|(_, a)| of == AlarmType::None as i32 || *a == of)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether writes that grow the store are refused.
    pub fn no_space(&self) -> bool {
        self.raised
            .iter()
            .any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    /// Whether the keyspace is closed (a CORRUPT alarm is raised).
    pub fn corrupt(&self) -> bool {
        self.raised
            .iter()
            .any(|(_, a)| *a == AlarmType::Corrupt as i32)
    }

    /// Applies an activation or deactivation, as etcd answers them: an activation with
    /// the alarm (raised now or before), a deactivation with the alarm it cleared (none
    /// if it was not raised). Anything else (a GET, an unknown action, NONE for member
    /// 0) changes nothing and answers nothing.
    pub fn apply(
        &mut self,
        tx: &mut impl WriteTx,
        req: &AlarmRequest,
    ) -> Result<Vec<AlarmMember>, BackendError> {
        let entry = (req.member_id, req.alarm);
        let alarm = AlarmMember {
            member_id: entry.0,
            alarm: entry.1,
        };
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) if entry != (0, AlarmType::None as i32) => {
                if self.raised.insert(entry) {
                    tx.put(Bucket::Alarm, &key(entry.0, entry.1), &[])?;
                }
                Ok(vec![alarm])
            }
            Ok(AlarmAction::Deactivate) if self.raised.remove(&entry) => {
                tx.delete(Bucket::Alarm, &key(entry.0, entry.1))?;
                Ok(vec![alarm])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// etcd's corrupt applier: while CORRUPT is raised, the requests of the log that read or
/// change keys or leases are refused with "corrupt cluster". Alarms (so an operator can
/// disarm it), members, and retcd's renewals and expiries go on; reads served outside
/// the log (Range) go on too, as in etcd.
pub struct CorruptGate;

impl Gate for CorruptGate {
    fn name(&self) -> &'static str {
        "corrupt"
    }

    fn admit(&self, req: &Request<'_>, state: &GateState<'_>) -> Result<(), EtcdError> {
        let keyspace = matches!(
            req,
            Request::Range(_)
                | Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Txn(_)
                | Request::Compaction(_)
                | Request::LeaseGrant(_)
                | Request::LeaseRevoke(_)
        );
        if keyspace && state.alarms.corrupt() {
            return Err(EtcdError::Corrupt);
        }
        Ok(())
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
    use crate::auth::state::AuthState;

    /// What `gate` says of `r` under `alarms`, with auth off and no leases.
    fn admit(gate: &dyn Gate, alarms: &Alarms, r: Request<'_>) -> Result<(), EtcdError> {
        let (auth, lessor) = (AuthState::default(), retcd_lease::Lessor::new());
        gate.admit(
            &r,
            &GateState {
                alarms,
                auth: &auth,
                info: None,
                lessor: &lessor,
            },
        )
    }
    use retcd_backend::{Backend, MemBackend};

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    // Goal: activations and deactivations are idempotent and persist; they answer as
    // etcd does (an activation always with its alarm, a deactivation with what it
    // cleared); any type number is kept, NONE for member 0 never; NOSPACE caps writes.
    #[test]
    fn alarms_apply_list_and_persist() {
        let backend = MemBackend::new();
        let mut alarms = Alarms::default();
        let mut tx = backend.begin_write().unwrap();
        let raised = alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 7, AlarmType::Nospace))
            .unwrap();
        assert_eq!(raised.len(), 1);
        assert_eq!(
            alarms
                .apply(&mut tx, &req(AlarmAction::Activate, 7, AlarmType::Nospace))
                .unwrap(),
            raised
        );
        alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 9, AlarmType::Corrupt))
            .unwrap();
        assert_eq!(
            alarms
                .apply(&mut tx, &req(AlarmAction::Activate, 9, AlarmType::None))
                .unwrap()
                .len(),
            1
        );
        assert!(
            alarms
                .apply(&mut tx, &req(AlarmAction::Activate, 0, AlarmType::None))
                .unwrap()
                .is_empty()
        );
        let unknown = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 3,
            alarm: 99,
        };
        assert_eq!(alarms.apply(&mut tx, &unknown).unwrap().len(), 1);
        assert_eq!(alarms.list(99).len(), 1);
        assert!(alarms.list(98).is_empty());
        let bogus_action = AlarmRequest {
            action: 7,
            ..unknown
        };
        assert!(alarms.apply(&mut tx, &bogus_action).unwrap().is_empty());
        tx.commit().unwrap();
        assert!(alarms.no_space() && alarms.corrupt());
        assert_eq!(alarms.list(AlarmType::None).len(), 4);
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
        assert!(
            alarms
                .apply(
                    &mut tx,
                    &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
                )
                .unwrap()
                .is_empty(),
            "not raised any more"
        );
        tx.commit().unwrap();
        assert!(!alarms.no_space());
        let loaded = Alarms::load(&backend.begin_read().unwrap()).unwrap();
        assert_eq!(loaded.list(AlarmType::None).len(), 3);
    }

    // Goal: etcd's corrupt applier: with CORRUPT raised, every keyspace and lease request
    // of the log is refused; alarms still go through, so it can be disarmed.
    #[test]
    fn corrupt_gate_closes_the_keyspace() {
        use retcd_api::etcdserverpb::{
            CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRenewRequest, PutRequest,
        };
        let backend = MemBackend::new();
        let mut alarms = Alarms::default();
        let put = PutRequest::default();
        let del = DeleteRangeRequest::default();
        let compact = CompactionRequest::default();
        let grant = LeaseGrantRequest::default();
        let renew = LeaseRenewRequest::default();
        let disarm = req(AlarmAction::Deactivate, 0, AlarmType::Corrupt);
        let admit = |alarms: &Alarms, r: Request<'_>| admit(&CorruptGate, alarms, r);
        assert_eq!(admit(&alarms, Request::Put(&put)), Ok(()));
        let mut tx = backend.begin_write().unwrap();
        alarms
            .apply(&mut tx, &req(AlarmAction::Activate, 0, AlarmType::Corrupt))
            .unwrap();
        for r in [
            Request::Put(&put),
            Request::DeleteRange(&del),
            Request::Compaction(&compact),
            Request::LeaseGrant(&grant),
        ] {
            assert_eq!(admit(&alarms, r), Err(EtcdError::Corrupt), "{r:?}");
        }
        assert_eq!(admit(&alarms, Request::LeaseRenew(&renew)), Ok(()));
        assert_eq!(admit(&alarms, Request::Alarm(&disarm)), Ok(()));
        alarms.apply(&mut tx, &disarm).unwrap();
        assert_eq!(admit(&alarms, Request::Put(&put)), Ok(()));
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
        let admit = |alarms: &Alarms, r: Request<'_>| admit(&CappedGate, alarms, r);
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
