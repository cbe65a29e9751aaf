//! The lessor: every lease of a member, its keys, and the expiry queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{LeaseId, MAX_LEASE_TTL, Record, Time, ttl_duration};

/// Why a grant was refused (etcd's lessor errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// A grant of lease id 0, which means "no lease" (etcd's `ErrLeaseNotFound`).
    #[error("requested lease not found")]
    NotFound,
    /// A grant of an id in use.
    #[error("lease already exists")]
    Exists,
    /// A grant above [`MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    record: Record,
    /// Keys attached, derived from the keys' `lease` fields.
    keys: BTreeSet<Vec<u8>>,
    /// Local: when this member considers the lease expired.
    deadline: Time,
}

impl Lease {
    pub fn id(&self) -> LeaseId {
        self.record.id
    }
    /// Granted TTL, seconds.
    pub fn ttl(&self) -> i64 {
        self.record.ttl
    }
    /// The replicated part.
    pub fn record(&self) -> &Record {
        &self.record
    }
    /// Keys attached, ascending.
    pub fn keys(&self) -> &BTreeSet<Vec<u8>> {
        &self.keys
    }
    pub fn deadline(&self) -> Time {
        self.deadline
    }
    /// Time left before the local deadline.
    pub fn remaining(&self, now: Time) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// The leader's proposal to revoke a lease: it expired after the renewal at
/// `renewed_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub id: LeaseId,
    pub renewed_index: u64,
}

/// Every lease of this member.
///
/// Invariant: `queue` holds exactly `(deadline, id)` of every lease in `leases`.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<LeaseId, Lease>,
    /// The expiry queue: earliest deadline first, ties by id, so every member (and every
    /// replay of a test) takes expired leases in the same order.
    queue: BTreeSet<(Time, LeaseId)>,
    /// Leases whose record changed (or went) since the last [`Lessor::take_changes`].
    changed: BTreeSet<LeaseId>,
    /// Leases the leader proposed to revoke and has not seen applied.
    pending_expiry: BTreeSet<LeaseId>,
}

impl Lessor {
    pub fn new() -> Lessor {
        Lessor::default()
    }

    /// A lessor holding `records` (as stored), every deadline a full TTL from `now`;
    /// [`Lessor::on_promotion`] bounds them when this member leads. Keys are attached
    /// afterwards with [`Lessor::attach`].
    pub fn restore(records: impl IntoIterator<Item = Record>, now: Time) -> Lessor {
        let mut lessor = Lessor::default();
        for record in records {
            let deadline = now + ttl_duration(record.ttl);
            lessor.insert(Lease {
                record,
                keys: BTreeSet::new(),
                deadline,
            });
        }
        lessor
    }

    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<LeaseId> {
        self.leases.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Applies a grant of `ttl` seconds at `index` (the proposer raised `ttl` to the
    /// minimum already): etcd's rules, in etcd's order.
    pub fn grant(
        &mut self,
        id: LeaseId,
        ttl: i64,
        wall_ms: i64,
        index: u64,
        now: Time,
    ) -> Result<(), LeaseError> {
        if id == LeaseId::NONE {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        self.insert(Lease {
            record: Record {
                id,
                ttl,
                wall_ms,
                renewed_index: index,
            },
            keys: BTreeSet::new(),
            deadline: now + ttl_duration(ttl),
        });
        self.changed.insert(id);
        Ok(())
    }

    /// Applies a renewal at `index`: the lease's TTL starts over from `now`. Returns the
    /// TTL, or `None` for an unknown lease.
    pub fn renew(&mut self, id: LeaseId, wall_ms: i64, index: u64, now: Time) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        lease.record.wall_ms = wall_ms;
        lease.record.renewed_index = index;
        let ttl = lease.record.ttl;
        let old = lease.deadline;
        lease.deadline = now + ttl_duration(ttl);
        let new = lease.deadline;
        self.requeue(id, old, new);
        self.changed.insert(id);
        Some(ttl)
    }

    /// Removes a lease (revoke or expiry) and returns it; the caller deletes its keys.
    pub fn revoke(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.queue.remove(&(lease.deadline, id));
        self.changed.insert(id);
        self.pending_expiry.remove(&id);
        Some(lease)
    }

    /// Whether an expiry the leader proposed still applies: the lease exists and was not
    /// renewed since the leader saw it expire.
    pub fn expiry_applies(&self, e: &Expiry) -> bool {
        self.leases
            .get(&e.id)
            .is_some_and(|l| l.record.renewed_index == e.renewed_index)
    }

    /// Forgets a proposed expiry that will not be carried out (renewed meanwhile, or the
    /// proposal was dropped): the lease may be taken again once it expires again.
    pub fn expiry_void(&mut self, id: LeaseId) {
        self.pending_expiry.remove(&id);
    }

    /// `key` now names lease `id` (a put with the lease was applied).
    pub fn attach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    /// `key` no longer names lease `id` (deleted, or put with another lease).
    pub fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// The records changed since the last call, ascending by id: `Some` to store, `None`
    /// to delete. The host writes them in the same backend transaction as the entries
    /// that changed them.
    pub fn take_changes(&mut self) -> Vec<(LeaseId, Option<Record>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|id| (id, self.leases.get(&id).map(|l| l.record)))
            .collect()
    }

    /// On the leader: leases whose deadline is at or before `now` and which are not
    /// already being revoked, at most `max`, earliest deadline first; they become pending
    /// until applied or voided.
    pub fn take_expired(&mut self, now: Time, max: usize) -> Vec<Expiry> {
        let mut out = Vec::new();
        for &(deadline, id) in &self.queue {
            if deadline > now || out.len() == max {
                break;
            }
            if self.pending_expiry.contains(&id) {
                continue;
            }
            let renewed_index = self.leases[&id].record.renewed_index;
            out.push(Expiry { id, renewed_index });
        }
        for e in &out {
            self.pending_expiry.insert(e.id);
        }
        out
    }

    /// This member stopped being the leader: its proposed expiries may never apply.
    pub fn on_demotion(&mut self) {
        self.pending_expiry.clear();
    }

    /// Nothing could renew a lease for `by` (the host was held up, by a defragmentation
    /// say), so no lease may expire for that: every deadline moves by `by`.
    pub fn postpone(&mut self, by: Duration) {
        for lease in self.leases.values_mut() {
            lease.deadline = lease.deadline + by;
        }
        self.rebuild_queue();
    }

    /// This member became the leader at `now` (wall clock `wall_now_ms`): each deadline is
    /// bounded by the wall-clock estimate of the last grant or renewal plus `grace` (one
    /// election timeout), so neither a restart (deadlines set at replay) nor a renewal
    /// this member applied late extends a lease further.
    pub fn on_promotion(&mut self, now: Time, wall_now_ms: i64, grace: Duration) {
        self.pending_expiry.clear();
        for lease in self.leases.values_mut() {
            let ttl_ms = lease.record.ttl.saturating_mul(1000);
            let left_ms = lease
                .record
                .wall_ms
                .saturating_add(ttl_ms)
                .saturating_sub(wall_now_ms);
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            lease.deadline = lease.deadline.min(now + left + grace);
        }
        self.rebuild_queue();
    }

    fn insert(&mut self, lease: Lease) {
        let id = lease.record.id;
        self.queue.insert((lease.deadline, id));
        if let Some(old) = self.leases.insert(id, lease) {
            self.queue.remove(&(old.deadline, id));
        }
    }

    fn requeue(&mut self, id: LeaseId, old: Time, new: Time) {
        let was = self.queue.remove(&(old, id));
        assert!(was, "lease {id} was missing from the expiry queue");
        self.queue.insert((new, id));
    }

    fn rebuild_queue(&mut self) {
        self.queue = self
            .leases
            .values()
            .map(|l| (l.deadline, l.record.id))
            .collect();
    }

    /// Checks the invariant between the map and the queue (tests call it after every
    /// step).
    pub fn check_invariants(&self) {
        assert_eq!(
            self.queue.len(),
            self.leases.len(),
            "expiry queue and lease map differ in size"
        );
        for lease in self.leases.values() {
            assert!(
                self.queue.contains(&(lease.deadline, lease.record.id)),
                "lease {} with deadline {:?} is not queued",
                lease.record.id,
                lease.deadline
            );
        }
        for id in &self.pending_expiry {
            assert!(
                self.leases.contains_key(id),
                "pending expiry of a lease that is gone: {id}"
            );
        }
    }
}
