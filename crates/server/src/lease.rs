//! The lessor: leases, the keys attached to them, and when each expires.
//!
//! # Replicated state and local deadlines
//! A lease's *record* (id, TTL, the index of the entry that last granted or renewed it,
//! and the proposer's wall clock then) is replicated state: apply changes it from
//! committed entries only, identically on every member, and keeps it in the backend's
//! `lease` bucket in the batch's transaction. The keys attached to a lease are derived from
//! the keys themselves (each key-value names its lease) and rebuilt at open.
//!
//! The *deadline* of a lease is local: each member sets it from its monotonic clock when
//! it applies the grant or a renewal (now + TTL). Only the leader acts on deadlines: once
//! per tick it proposes a [`LeaseExpireRequest`] for the expired leases (at most
//! [`REVOKES_PER_TICK`], so a burst of expiries cannot starve client writes), naming the
//! renewal it saw; apply revokes a lease only if no renewal came in between.
//!
//! # Keep-alives are replicated (unlike etcd)
//! etcd renews leases on the leader only and, without checkpoints, a new leader restarts
//! every lease from its full TTL. Here every keep-alive goes through Raft (batched: one
//! [`LeaseRenewRequest`] per round of keep-alives, see `grpc/lease.rs`), and is answered
//! after it is applied, so every member's deadline for a lease is at least its last
//! acknowledged renewal + TTL (minus apply skew). On promotion the new leader keeps its
//! deadlines, bounded by the wall-clock estimate (`wall_ms` + TTL) plus one election
//! timeout, which also covers a restart: replayed renewals would otherwise count the
//! downtime as lease time. So a lease ends no earlier than TTL after its last
//! acknowledged keep-alive and, leader changes and restarts included, no later than TTL
//! plus one election timeout plus a tick, unless members' wall clocks disagree by more
//! than an election timeout.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::LeaseExpiry;
use retcd_backend::{Backend, BackendError, Bucket, ReadTx, WriteTx};
use retcd_mvcc::{KvStore, MvccError, RangeOptions};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Most expired leases the leader proposes to revoke per tick (etcd revokes at most 1,000
/// a second; at the default 100 ms tick this is the same rate).
pub const REVOKES_PER_TICK: usize = 100;

/// Format byte of a lease record.
const RECORD_FORMAT: u8 = 1;

/// One lease.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Keys attached (derived from the keys' `lease` fields).
    pub keys: BTreeSet<Vec<u8>>,
    /// Proposer's wall clock at the grant or last renewal, ms since the Unix epoch.
    pub wall_ms: i64,
    /// Raft index of the entry that granted or last renewed the lease.
    pub renewed_index: u64,
    /// Local: when this member considers the lease expired.
    pub deadline: Instant,
}

impl Lease {
    /// Time left before the local deadline.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// Milliseconds since the Unix epoch, for proposals.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Every lease of this member.
#[derive(Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    /// Records changed or removed since the last [`Lessor::write_dirty`].
    dirty: BTreeSet<i64>,
    /// Leases the leader proposed to revoke and has not seen applied.
    pending_expiry: HashSet<i64>,
}

impl Lessor {
    /// Loads the records from the backend and attaches every live key that names a lease.
    /// Deadlines start from now (see [`Lessor::on_promotion`] for how a leader bounds
    /// them).
    pub fn load<B: Backend>(kv: &KvStore<B>) -> Result<Lessor, MvccError> {
        let now = Instant::now();
        let mut lessor = Lessor::default();
        {
            let tx = kv.backend().begin_read()?;
            let mut failure = None;
            tx.scan(
                Bucket::Lease,
                &[],
                None,
                &mut |key, value| match decode_record(key, value) {
                    Ok(mut lease) => {
                        lease.deadline = now + ttl_duration(lease.ttl);
                        lessor.leases.insert(lease.id, lease);
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        ControlFlow::Break(())
                    }
                },
            )?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        let all = kv.range(&[0], &[0], RangeOptions::default())?;
        for key in all.kvs {
            if key.lease != 0 {
                lessor.attach(key.lease, &key.key);
            }
        }
        Ok(lessor)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Applies a grant. `ttl` was already raised to the minimum by the proposer.
    pub fn grant(
        &mut self,
        id: i64,
        ttl: i64,
        wall_ms: i64,
        index: u64,
        now: Instant,
    ) -> Result<(), EtcdError> {
        if id == 0 || self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                keys: BTreeSet::new(),
                wall_ms,
                renewed_index: index,
                deadline: now + ttl_duration(ttl),
            },
        );
        self.dirty.insert(id);
        Ok(())
    }

    /// Applies a renewal: the lease's TTL starts over. Returns the TTL, or `None` for an
    /// unknown lease.
    pub fn renew(&mut self, id: i64, wall_ms: i64, index: u64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        lease.wall_ms = wall_ms;
        lease.renewed_index = index;
        lease.deadline = now + ttl_duration(lease.ttl);
        self.dirty.insert(id);
        Some(lease.ttl)
    }

    /// Removes a lease (revoke or expiry); the caller deletes its keys.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.dirty.insert(id);
        self.pending_expiry.remove(&id);
        Some(lease)
    }

    /// Whether an expiry the leader proposed still applies: the lease exists and was not
    /// renewed since the leader saw it expire.
    pub fn expiry_applies(&self, e: &LeaseExpiry) -> bool {
        self.leases
            .get(&e.id)
            .is_some_and(|l| l.renewed_index == e.renewed_index)
    }

    /// Forgets a proposed expiry that apply did not carry out.
    pub fn expiry_done(&mut self, id: i64) {
        self.pending_expiry.remove(&id);
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Writes the changed records into the batch's transaction.
    pub fn write_dirty(&mut self, tx: &mut impl WriteTx) -> Result<(), BackendError> {
        for id in std::mem::take(&mut self.dirty) {
            let key = id.to_be_bytes();
            match self.leases.get(&id) {
                Some(lease) => tx.put(Bucket::Lease, &key, &encode_record(lease))?,
                None => {
                    tx.delete(Bucket::Lease, &key)?;
                }
            }
        }
        Ok(())
    }

    /// On the leader: leases past their deadline that are not already being revoked, at
    /// most `max`, oldest deadline first; they are marked pending.
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<LeaseExpiry> {
        let mut expired: Vec<&Lease> = self
            .leases
            .values()
            .filter(|l| l.deadline <= now && !self.pending_expiry.contains(&l.id))
            .collect();
        expired.sort_by_key(|l| (l.deadline, l.id));
        let out: Vec<LeaseExpiry> = expired
            .into_iter()
            .take(max)
            .map(|l| LeaseExpiry {
                id: l.id,
                renewed_index: l.renewed_index,
            })
            .collect();
        for e in &out {
            self.pending_expiry.insert(e.id);
        }
        out
    }

    /// This member stopped being the leader: its proposed expiries may never apply.
    pub fn on_demotion(&mut self) {
        self.pending_expiry.clear();
    }

    /// The raft loop was held up for `by` (a defragmentation): no renewal could be applied
    /// meanwhile, so no lease may expire for that. (etcd renews in memory on the leader,
    /// so its keep-alives go on through a defrag; this keeps the same promise.)
    pub fn postpone(&mut self, by: Duration) {
        for lease in self.leases.values_mut() {
            lease.deadline += by;
        }
    }

    /// This member became the leader: each deadline is bounded by the wall-clock estimate
    /// of the last grant or renewal plus `grace` (one election timeout), so neither a
    /// restart (deadlines set at replay) nor a lost renewal extends a lease further.
    pub fn on_promotion(&mut self, now: Instant, wall_now_ms: i64, grace: Duration) {
        self.pending_expiry.clear();
        for lease in self.leases.values_mut() {
            let ttl_ms = lease.ttl.saturating_mul(1000);
            let left_ms = lease
                .wall_ms
                .saturating_add(ttl_ms)
                .saturating_sub(wall_now_ms);
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            lease.deadline = lease.deadline.min(now + left + grace);
        }
    }
}

fn encode_record(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&lease.ttl.to_be_bytes());
    out.extend_from_slice(&lease.wall_ms.to_be_bytes());
    out.extend_from_slice(&lease.renewed_index.to_be_bytes());
    out
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<Lease, MvccError> {
    let corrupt = |why: &str| MvccError::Corrupted(format!("lease record: {why}"));
    let id = i64::from_be_bytes(key.try_into().map_err(|_| corrupt("key is not 8 bytes"))?);
    if value.len() != 25 || value[0] != RECORD_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let field = |i: usize| -> [u8; 8] { value[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes") };
    Ok(Lease {
        id,
        ttl: i64::from_be_bytes(field(0)),
        keys: BTreeSet::new(),
        wall_ms: i64::from_be_bytes(field(1)),
        renewed_index: u64::from_be_bytes(field(2)),
        deadline: Instant::now(),
    })
}

/// etcd's minimum lease TTL for this member's timing: 1.5 election timeouts, in whole
/// seconds rounded up (`minTTL = (3 * electionTicks / 2) * heartbeat`). Applied by the
/// proposer, so apply stays independent of configuration.
pub fn min_ttl(heartbeat: Duration, election_ticks: u64) -> i64 {
    let min = heartbeat * u32::try_from(3 * election_ticks / 2).unwrap_or(u32::MAX);
    i64::try_from(min.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// Applies a lease request of `req` (grant, revoke, renew, expire) at `index`, if it is one.
/// Revocations delete the lease's keys in one transaction (one revision).
pub fn apply_lease_request<B: Backend>(
    batch: &mut retcd_mvcc::WriteBatch<'_, B>,
    lessor: &mut Lessor,
    req: &retcd_api::etcdserverpb::InternalRaftRequest,
    index: u64,
) -> Result<Option<crate::apply::ApplyResult>, MvccError> {
    use crate::apply::ApplyResponse;
    use retcd_api::etcdserverpb::{LeaseGrantResponse, ResponseHeader};
    let now = Instant::now();
    let header = |revision| {
        Some(ResponseHeader {
            revision,
            ..Default::default()
        })
    };
    if let Some(g) = &req.lease_grant {
        return Ok(Some(
            lessor
                .grant(g.id, g.ttl, req.wall_clock_ms, index, now)
                .map(|()| {
                    ApplyResponse::LeaseGrant(LeaseGrantResponse {
                        header: header(batch.current_revision()),
                        id: g.id,
                        ttl: g.ttl,
                        error: String::new(),
                    })
                }),
        ));
    }
    if let Some(r) = &req.lease_revoke {
        return Ok(Some(match revoke(batch, lessor, r.id)? {
            Some(revision) => Ok(ApplyResponse::LeaseRevoke(
                retcd_api::etcdserverpb::LeaseRevokeResponse {
                    header: header(revision),
                },
            )),
            None => Err(EtcdError::LeaseNotFound),
        }));
    }
    if let Some(r) = &req.lease_renew {
        let ttls = r
            .ids
            .iter()
            .map(|&id| lessor.renew(id, req.wall_clock_ms, index, now).unwrap_or(0))
            .collect();
        return Ok(Some(Ok(ApplyResponse::LeaseRenew(ttls))));
    }
    if let Some(x) = &req.lease_expire {
        for e in &x.leases {
            if lessor.expiry_applies(e) {
                revoke(batch, lessor, e.id)?;
            } else {
                lessor.expiry_done(e.id);
            }
        }
        return Ok(Some(Ok(ApplyResponse::LeaseRenew(Vec::new()))));
    }
    Ok(None)
}

/// Removes a lease and deletes its keys at one new revision (the current one if it had
/// none); `None` if the lease does not exist.
fn revoke<B: Backend>(
    batch: &mut retcd_mvcc::WriteBatch<'_, B>,
    lessor: &mut Lessor,
    id: i64,
) -> Result<Option<i64>, MvccError> {
    let Some(lease) = lessor.remove(id) else {
        return Ok(None);
    };
    let mut txn = batch.txn();
    for key in &lease.keys {
        txn.delete_range(key, b"")?;
    }
    Ok(Some(txn.end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_backend::MemBackend;

    // Goal: etcd's minimum TTL (2 s at the defaults) and the record format round trip.
    #[test]
    fn min_ttl_and_records() {
        assert_eq!(min_ttl(Duration::from_millis(100), 10), 2);
        assert_eq!(min_ttl(Duration::from_millis(50), 10), 1);
        assert_eq!(min_ttl(Duration::from_millis(100), 30), 5);
        let lease = Lease {
            id: 7,
            ttl: 30,
            keys: BTreeSet::new(),
            wall_ms: 1_700_000_000_000,
            renewed_index: 42,
            deadline: Instant::now(),
        };
        let back = decode_record(&7i64.to_be_bytes(), &encode_record(&lease)).unwrap();
        assert_eq!(
            (back.id, back.ttl, back.wall_ms, back.renewed_index),
            (7, 30, 1_700_000_000_000, 42)
        );
        assert!(decode_record(&[1, 2], &encode_record(&lease)).is_err());
    }

    // Goal: a lease whose renewals were held up (the loop was busy) gets that time back,
    // and only that.
    #[test]
    fn postponed_deadlines_move_by_the_pause() {
        let now = Instant::now();
        let mut lessor = Lessor::default();
        lessor.grant(1, 10, 5, 3, now).unwrap();
        lessor.postpone(Duration::from_secs(4));
        assert!(
            lessor
                .take_expired(now + Duration::from_secs(13), 10)
                .is_empty()
        );
        let expired = lessor.take_expired(now + Duration::from_secs(14), 10);
        assert_eq!(expired.len(), 1);
    }

    // Goal: grants, renewals and removals reach the backend; keys attach back at load.
    #[test]
    fn records_persist_and_keys_reattach() {
        let kv = KvStore::open(MemBackend::new()).unwrap();
        let now = Instant::now();
        let mut lessor = Lessor::default();
        lessor.grant(1, 10, 5, 3, now).unwrap();
        lessor.grant(2, 20, 5, 4, now).unwrap();
        assert_eq!(lessor.grant(1, 10, 5, 5, now), Err(EtcdError::LeaseExist));
        assert_eq!(lessor.renew(2, 9, 6, now), Some(20));
        assert_eq!(lessor.renew(3, 9, 6, now), None);
        {
            let mut batch = kv.begin_batch().unwrap();
            batch.txn().put(b"a", b"v", 2).unwrap();
            lessor.write_dirty(batch.backend_tx()).unwrap();
            batch.commit().unwrap();
        }
        let loaded = Lessor::load(&kv).unwrap();
        assert_eq!(loaded.ids(), vec![1, 2]);
        let two = loaded.get(2).unwrap();
        assert_eq!((two.ttl, two.wall_ms, two.renewed_index), (20, 9, 6));
        assert_eq!(two.keys.iter().collect::<Vec<_>>(), vec![&b"a".to_vec()]);
        lessor.remove(1).unwrap();
        {
            let mut batch = kv.begin_batch().unwrap();
            lessor.write_dirty(batch.backend_tx()).unwrap();
            batch.commit().unwrap();
        }
        assert_eq!(Lessor::load(&kv).unwrap().ids(), vec![2]);
    }

    // Goal: the leader takes each expired lease once, oldest first, bounded; an expiry
    // is void once the lease was renewed; promotion bounds deadlines by the wall clock.
    #[test]
    fn expiry_rules() {
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        for id in 1..=5 {
            lessor.grant(id, 2, 0, id as u64, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(3);
        let first = lessor.take_expired(later, 3);
        assert_eq!(first.len(), 3);
        assert_eq!(
            lessor.take_expired(later, 10).len(),
            2,
            "pending ones are not taken twice"
        );
        lessor.renew(1, 0, 99, later);
        assert!(
            !lessor.expiry_applies(&first[0]),
            "renewed since: the expiry is void"
        );
        assert!(lessor.expiry_applies(&first[1]));
        lessor.on_demotion();
        assert_eq!(
            lessor.take_expired(later, 10).len(),
            4,
            "lease 1 was renewed"
        );

        // A lease whose wall-clock estimate ran out long ago: promotion brings its
        // deadline to now + grace.
        let mut lessor = Lessor::default();
        lessor.grant(9, 60, 1_000, 1, t0).unwrap();
        let grace = Duration::from_secs(1);
        lessor.on_promotion(t0, 1_000_000, grace);
        assert_eq!(lessor.get(9).unwrap().deadline, t0 + grace);
        // A fresh one keeps its local deadline.
        let mut lessor = Lessor::default();
        lessor.grant(9, 60, 1_000, 1, t0).unwrap();
        lessor.on_promotion(t0, 1_000, grace);
        assert_eq!(
            lessor.get(9).unwrap().deadline,
            t0 + Duration::from_secs(60)
        );
    }
}
