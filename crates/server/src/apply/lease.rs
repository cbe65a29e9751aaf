//! Lease requests are decided here: grant, revoke, and retcd's replicated renewals and
//! leader-proposed expiries. The rules themselves (what a grant refuses, when an expiry
//! is void) are the lessor's (`retcd_lease`); this file carries them out against the
//! store: a revocation deletes the lease's keys at one new revision.
//!
//! Deadlines are local: they start from the batch's `now` ([`super::BatchContext`]),
//! which the raft loop hands in, so nothing here reads a clock.

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    LeaseExpireRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRenewRequest,
    LeaseRevokeRequest, LeaseRevokeResponse, ResponseHeader,
};
use retcd_backend::Backend;
use retcd_lease::{Expiry, LeaseError, LeaseId, Lessor, Time};
use retcd_mvcc::{MvccError, WriteBatch};

use super::{ApplyResponse, ApplyResult};

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Where a lease request is applied.
pub(super) struct LeaseApply<'x, 'a, B: Backend> {
    pub batch: &'x mut WriteBatch<'a, B>,
    pub lessor: &'x mut Lessor,
    /// Raft index of the entry.
    pub index: u64,
    /// The proposer's wall clock (`InternalRaftRequest.wall_clock_ms`).
    pub wall_ms: i64,
    pub now: Time,
}

impl<B: Backend> LeaseApply<'_, '_, B> {
    pub fn grant(&mut self, g: &LeaseGrantRequest) -> ApplyResult {
        match self
            .lessor
            .grant(LeaseId(g.id), g.ttl, self.wall_ms, self.index, self.now)
        {
            Ok(()) => Ok(ApplyResponse::LeaseGrant(LeaseGrantResponse {
                header: header(self.batch.current_revision()),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })),
            Err(LeaseError::NotFound) => Err(EtcdError::LeaseNotFound),
            Err(LeaseError::Exists) => Err(EtcdError::LeaseExist),
            Err(LeaseError::TtlTooLarge) => Err(EtcdError::LeaseTtlTooLarge),
        }
    }

    pub fn revoke(&mut self, r: &LeaseRevokeRequest) -> Result<ApplyResult, MvccError> {
        Ok(match self.remove(LeaseId(r.id))? {
            Some(revision) => Ok(ApplyResponse::LeaseRevoke(LeaseRevokeResponse {
                header: header(revision),
            })),
            None => Err(EtcdError::LeaseNotFound),
        })
    }

    /// Renews each lease that still exists; answers the TTLs in the request's order, 0
    /// for a lease that does not exist (what a keep-alive of it answers).
    pub fn renew(&mut self, r: &LeaseRenewRequest) -> ApplyResult {
        let ttls = r
            .ids
            .iter()
            .map(|&id| {
                self.lessor
                    .renew(LeaseId(id), self.wall_ms, self.index, self.now)
                    .unwrap_or(0)
            })
            .collect();
        Ok(ApplyResponse::LeaseRenew(ttls))
    }

    /// Revokes each lease whose expiry still applies (not renewed since the leader saw it
    /// expire); voids the others.
    pub fn expire(&mut self, x: &LeaseExpireRequest) -> Result<ApplyResult, MvccError> {
        for e in &x.leases {
            let expiry = Expiry {
                id: LeaseId(e.id),
                renewed_index: e.renewed_index,
            };
            if self.lessor.expiry_applies(&expiry) {
                self.remove(expiry.id)?;
            } else {
                self.lessor.expiry_void(expiry.id);
            }
        }
        Ok(Ok(ApplyResponse::LeaseExpire))
    }

    /// Removes a lease and deletes its keys at one new revision (the current one if it
    /// had none); `None` if the lease does not exist.
    fn remove(&mut self, id: LeaseId) -> Result<Option<i64>, MvccError> {
        let Some(lease) = self.lessor.revoke(id) else {
            return Ok(None);
        };
        let mut txn = self.batch.txn();
        for key in lease.keys() {
            txn.delete_range(key, b"")?;
        }
        Ok(Some(txn.end()))
    }
}
