//! The state machine: committed entries in, store changes and answers out. Every request
//! kind is decided here, and each in one file:
//!
//! | kind | file |
//! |---|---|
//! | put, delete, txn, range, compaction | `kv.rs` (request checks in `validate.rs`) |
//! | lease grant, revoke, renew, expire | `lease.rs` (rules in the `retcd_lease` crate) |
//! | alarm, and the CORRUPT and NOSPACE gates | `alarm.rs` |
//! | configuration changes, member attributes | `membership.rs` |
//! | users, roles, permissions, authentication, and the auth gate | `auth.rs` |
//!
//! # The chain
//! Like etcd's appliers, a request passes through layers before it is carried out. Each
//! layer is a [`Gate`]: it sees the request and the applied state and lets it through or
//! refuses it with the error its proposer gets. The chain is the auth gate (who proposed
//! the entry may do what it asks: etcd's auth applier), the corrupt gate (CORRUPT
//! refuses keyspace and lease requests), then the capped gate (NOSPACE refuses what
//! grows the store). The auth gate stays first whatever alarm is raised (etcd 3.5 lost
//! it under NOSPACE: etcd PR #22386). Then
//! [`ApplyBatch`] dispatches the request to the file that decides its kind.
//!
//! # Contract
//! - **Deterministic.** The outcome of an entry depends only on the applied state and the
//!   entry: no clock, no randomness, no configuration that could differ between members.
//!   What varies by member and time comes in as an input: the batch's [`BatchContext`]
//!   (`now`, for lease deadlines, which are local) and the proposer's wall clock in the
//!   entry. `#![deny(clippy::disallowed_methods)]` below makes clippy refuse a clock read
//!   anywhere in this module (the methods are listed in the crate's `clippy.toml`).
//! - **Idempotent.** Entries at or below the backend's consistent index are skipped; the
//!   consistent index commits in the same transaction as the entries' effects.
//!   Configuration changes among them still reach Raft, whose configuration lives in
//!   memory, but only those the membership accepted when they were first applied: the
//!   membership as of the Raft snapshot (the snapshot's data) is replayed alongside, so
//!   a change refused then is refused again now.
//! - **Client errors are answers.** A request that cannot take effect (a put with
//!   `ignore_value` on a missing key, an unknown lease, a compacted revision, a refused
//!   membership change) changes nothing and yields an [`EtcdError`] for its proposer;
//!   apply goes on. Entry bytes are not trusted: every request is checked again with
//!   etcd's request checks, an entry that does not decode is skipped on every member
//!   alike, and no input reaches a panic.
//! - **Storage errors stop the node.** An I/O or corruption error from MVCC or the
//!   backend is an [`ApplyError`]; the raft loop stops without answering anyone, so no
//!   client is told "success" for a write that may not be stored.

#![deny(clippy::disallowed_methods)]

mod alarm;
mod auth;
mod kv;
mod lease;
mod membership;
mod request;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AlarmMember, CompactionResponse, DeleteRangeResponse, InternalRaftRequest, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, RangeResponse, TxnResponse,
};
use retcd_backend::{Backend, BackendError, Bucket, ConsistentIndex, ReadTx, WriteTx};
use retcd_lease::{Lessor, Time};
use retcd_mvcc::{Event, KvStore, MvccError, RangeOptions, WriteBatch};
use retcd_raft::{ConfChangeV2, EntryType};

pub use alarm::{Alarms, CappedGate, CorruptGate};
pub use auth::{AuthAnswer, AuthGate, check_txn};
pub use kv::{KvRead, execute_range, execute_read_only_txn, txn_is_read_only, txn_is_serializable};
pub use membership::DecodedConfChange;
pub use request::Request;

pub use crate::published::Published;

use crate::auth::state::{AuthInfo, AuthState};
use crate::auth::tokens::{SimpleTokens, TokenChange};
use crate::ids::MemberId;
use crate::membership::Membership;
use crate::metrics::Metrics;

/// A successful answer to a proposed request.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    /// A membership change: the members after it.
    Members(Vec<retcd_api::etcdserverpb::Member>),
    /// A member's attributes were recorded (or the id is not a member).
    MemberAttrs,
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// Renewed leases' TTLs, in the request's order; 0 for a lease that does not exist.
    LeaseRenew(Vec<i64>),
    /// The leader's expiry proposal was carried out (for the leases it still applied to).
    LeaseExpire,
    /// The alarm an activation or deactivation changed (empty if none).
    Alarm(Vec<AlarmMember>),
    /// An auth request's answer.
    Auth(AuthAnswer),
}

/// What the proposer of an entry is told.
pub type ApplyResult = Result<ApplyResponse, EtcdError>;

/// A failure of storage while applying: fatal for the node (see the contract).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stored state is corrupted: {0}")]
    Corrupted(String),
}

/// What a batch of entries is applied with, besides the entries: inputs that differ by
/// member and time, so that apply itself reads neither.
#[derive(Clone, Copy, Debug)]
pub struct BatchContext {
    /// This member's monotonic time, from which lease deadlines start.
    pub now: Time,
}

/// What the layers of the chain see besides the request: the state as applied so far
/// in the batch.
pub struct GateState<'a> {
    pub alarms: &'a Alarms,
    pub auth: &'a AuthState,
    /// Who proposed the entry (`None`: no user, as a request without a token).
    pub info: Option<&'a AuthInfo>,
    pub lessor: &'a Lessor,
}

/// One layer of the chain, in front of the request itself (etcd's applier wrappers).
pub trait Gate: Send {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Lets `req` through, or refuses it with what its proposer is told. Must decide
    /// from `req` and `state` only.
    fn admit(&self, req: &Request<'_>, state: &GateState<'_>) -> Result<(), EtcdError>;
}

/// The Raft core, as apply sees it: configuration changes that the membership accepts
/// are handed to it.
pub trait RaftConfig {
    /// Applies the change to the core's configuration; `Err` if the core refuses it.
    fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<(), String>;
}

/// Applies committed entries to the store, the lessor, the alarms and the membership.
/// Owned by the raft loop; what it publishes is read by everyone else.
pub struct Applier<B: Backend> {
    kv: Arc<KvStore<B>>,
    lessor: Arc<Mutex<Lessor>>,
    membership: Published<Membership>,
    alarms: Published<Alarms>,
    auth: Published<Arc<AuthState>>,
    /// This member's simple tokens: Authenticate entries assign them.
    tokens: Arc<SimpleTokens>,
    gates: Vec<Box<dyn Gate>>,
    metrics: Arc<Metrics>,
    /// This member: a configuration change that removes it is reported.
    local: MemberId,
    /// While Raft re-delivers entries the store already holds (after a restart): the
    /// membership as of those entries, replayed to decide their configuration changes
    /// as they were decided the first time. `None` once the replay reached the store's
    /// consistent index, or when the Raft snapshot does not carry a membership (an older
    /// data directory: every replayed change then goes to Raft, as it used to).
    replay: Option<Membership>,
}

impl<B: Backend> Applier<B> {
    /// Loads the lessor (deadlines a full TTL from `now`), the alarms and the membership
    /// from the store. `replay_from` is the membership as of the entry Raft re-delivers
    /// first (the Raft snapshot's, or the empty one of a log that starts at index 1).
    /// Authenticate entries assign `tokens`.
    pub fn open(
        kv: Arc<KvStore<B>>,
        local: MemberId,
        metrics: Arc<Metrics>,
        now: Time,
        replay_from: Option<Membership>,
        tokens: Arc<SimpleTokens>,
    ) -> Result<Self, ApplyError> {
        let (lessor, membership, alarms, auth) = load(&kv, now)?;
        Ok(Applier {
            kv,
            lessor: Arc::new(Mutex::new(lessor)),
            membership: Published::new(membership),
            alarms: Published::new(alarms),
            auth: Published::new(Arc::new(auth)),
            tokens,
            gates: vec![
                Box::new(AuthGate),
                Box::new(CorruptGate),
                Box::new(CappedGate),
            ],
            metrics,
            local,
            replay: replay_from,
        })
    }

    /// Reloads everything from the store after it was replaced (a snapshot installed).
    pub fn reload(&mut self, now: Time) -> Result<(), ApplyError> {
        let (lessor, membership, alarms, auth) = load(&self.kv, now)?;
        *lock(&self.lessor) = lessor;
        self.membership.set(membership);
        self.alarms.set(alarms);
        self.auth.set(Arc::new(auth));
        // Tokens name entries of the replaced history.
        self.tokens.apply(vec![TokenChange::Clear], now);
        // Raft's configuration is the snapshot's now; nothing before it is replayed.
        self.replay = None;
        Ok(())
    }

    /// The lessor: the raft loop takes expired leases from it, the Lease service reads
    /// TTLs.
    pub fn lessor(&self) -> &Arc<Mutex<Lessor>> {
        &self.lessor
    }

    /// The membership as of the last committed batch.
    pub fn membership(&self) -> &Published<Membership> {
        &self.membership
    }

    /// The raised alarms as of the last committed batch.
    pub fn alarms(&self) -> &Published<Alarms> {
        &self.alarms
    }

    /// The auth store as of the last committed batch.
    pub fn auth(&self) -> &Published<Arc<AuthState>> {
        &self.auth
    }

    /// Applies `entries` (consecutive, in log order) in one write batch, which the caller
    /// then commits with [`ApplyBatch::commit`]. `None` when the store already holds every
    /// one of them (a replay); their configuration changes reached `raft` all the same.
    pub fn apply(
        &mut self,
        entries: &[retcd_raft::Entry],
        ctx: BatchContext,
        raft: &mut dyn RaftConfig,
    ) -> Result<Option<ApplyBatch<'_, B>>, ApplyError> {
        let consistent = self.kv.consistent_index().index;
        for e in entries.iter().filter(|e| e.index <= consistent) {
            if let Some(cc) = DecodedConfChange::of(e) {
                self.replay_conf_change(e.index, &cc, raft);
            }
        }
        if entries.last().is_some_and(|e| e.index >= consistent) {
            self.end_replay();
        }
        let this: &Self = self;
        let mut todo = entries.iter().filter(|e| e.index > consistent).peekable();
        if todo.peek().is_none() {
            return Ok(None);
        }
        let mut batch = ApplyBatch {
            batch: this.kv.begin_batch()?,
            lessor: lock(&this.lessor),
            membership: this.membership.get(),
            alarms: this.alarms.get(),
            alarms_changed: false,
            auth: this.auth.get(),
            auth_changed: false,
            token_changes: Vec::new(),
            applier: this,
            ctx,
            last: None,
            entries: 0,
            results: Vec::new(),
            effects: Effects::default(),
        };
        let no_space_before = batch.alarms.no_space();
        for (expected, e) in (consistent + 1..).zip(todo) {
            // Invariant: entries are applied once each, in log order, without gaps.
            assert_eq!(e.index, expected, "entries must be applied in order");
            batch.apply_entry(e, raft)?;
        }
        if batch.alarms.no_space() != no_space_before {
            batch.effects.no_space = Some(batch.alarms.no_space());
        }
        Ok(Some(batch))
    }

    /// A configuration change the store already holds, re-delivered by Raft after a
    /// restart: it reaches Raft only if the membership accepted it the first time.
    fn replay_conf_change(
        &mut self,
        index: u64,
        cc: &DecodedConfChange,
        raft: &mut dyn RaftConfig,
    ) {
        let Some(replayed) = self.replay.as_mut() else {
            if let Err(err) = raft.apply_conf_change(&cc.change) {
                tracing::warn!(index, error = %err, "raft refused a replayed configuration change");
            }
            return;
        };
        match membership::decide(cc, replayed) {
            Ok(next) => match raft.apply_conf_change(&cc.change) {
                Ok(()) => *replayed = next,
                Err(err) => {
                    tracing::warn!(index, error = %err, "raft refused a replayed configuration change")
                }
            },
            Err(r) => {
                tracing::debug!(index, error = %r.to_error(), "a replayed configuration change was refused when first applied")
            }
        }
    }

    /// The replay reached the store's consistent index: the replayed membership must be
    /// the stored one (as far as Raft's configuration goes), or Raft's configuration and
    /// the membership disagree.
    fn end_replay(&mut self) {
        let Some(replayed) = self.replay.take() else {
            return;
        };
        let stored = self.membership.get();
        if replayed.configuration() != stored.configuration() {
            tracing::error!(
                replayed = ?replayed.configuration(),
                stored = ?stored.configuration(),
                "the configuration replayed from the log differs from the stored membership"
            );
        }
    }
}

/// Locks the lessor. A panic while it was held cannot leave it half-changed in a way a
/// reader could act on wrongly (the node stops on any apply failure), so a poisoned lock
/// is taken as is.
fn lock(lessor: &Mutex<Lessor>) -> MutexGuard<'_, Lessor> {
    lessor.lock().unwrap_or_else(|p| p.into_inner())
}

type Loaded = (Lessor, Membership, Alarms, AuthState);

fn load<B: Backend>(kv: &KvStore<B>, now: Time) -> Result<Loaded, ApplyError> {
    let tx = kv.backend().begin_read()?;
    let mut records = Vec::new();
    let mut failure = None;
    tx.scan(Bucket::Lease, &[], None, &mut |key, value| {
        match retcd_lease::record::decode(key, value) {
            Ok(r) => records.push(r),
            Err(e) => failure = Some(e),
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if let Some(e) = failure {
        return Err(ApplyError::Corrupted(e.to_string()));
    }
    let membership = Membership::load(&tx)?;
    let alarms = Alarms::load(&tx)?;
    let auth = AuthState::load(&tx).map_err(|e| match e {
        crate::auth::state::StateError::Backend(b) => ApplyError::Backend(b),
        crate::auth::state::StateError::Corrupted(c) => ApplyError::Corrupted(c),
    })?;
    drop(tx);
    let mut lessor = Lessor::restore(records, now);
    // Keys name their lease: the attachments are rebuilt from them.
    let all = kv.range(&[0], &[0], RangeOptions::default())?;
    for key in all.kvs {
        if key.lease != 0 {
            lessor.attach(retcd_lease::LeaseId(key.lease), &key.key);
        }
    }
    Ok((lessor, membership, alarms, auth))
}

/// What a committed batch changed besides the store, for the raft loop to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The membership changed (members added, removed, updated, attributes published).
    pub membership_changed: bool,
    /// A configuration change was applied (accepted or refused): Raft's configuration
    /// may have changed.
    pub conf_changed: bool,
    /// This member was removed from the cluster.
    pub removed_self: bool,
    /// A compaction ran.
    pub compacted: bool,
    /// NOSPACE was raised (`Some(true)`) or cleared (`Some(false)`) by the batch.
    pub no_space: Option<bool>,
}

/// Entries applied but not yet committed: the open MVCC write batch and the working
/// copies of everything apply changes besides it.
pub struct ApplyBatch<'a, B: Backend> {
    batch: WriteBatch<'a, B>,
    lessor: MutexGuard<'a, Lessor>,
    membership: Membership,
    alarms: Alarms,
    alarms_changed: bool,
    /// The auth store as applied so far (copied on its first change in the batch).
    auth: Arc<AuthState>,
    auth_changed: bool,
    token_changes: Vec<TokenChange>,
    applier: &'a Applier<B>,
    ctx: BatchContext,
    /// The last entry applied: (index, term).
    last: Option<(u64, u64)>,
    entries: u64,
    results: Vec<(u64, ApplyResult)>,
    effects: Effects,
}

/// A committed batch.
#[derive(Debug)]
pub struct Applied {
    /// The store's revision after the batch.
    pub revision: i64,
    /// Every change of the batch, in revision order, for the watchers.
    pub events: Vec<Event>,
    /// Each answered request's id and answer, in log order.
    pub results: Vec<(u64, ApplyResult)>,
    pub effects: Effects,
    /// The index of the last entry applied (the backend's consistent index now).
    pub index: u64,
}

impl<'a, B: Backend> ApplyBatch<'a, B> {
    /// Whether the batch must commit durably: compactions and configuration changes are
    /// made durable at once (see the raft loop's durability rules).
    pub fn must_be_durable(&self) -> bool {
        self.effects.compacted || self.effects.conf_changed
    }

    /// How many entries the batch applied.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn apply_entry(
        &mut self,
        e: &retcd_raft::Entry,
        raft: &mut dyn RaftConfig,
    ) -> Result<(), ApplyError> {
        self.last = Some((e.index, e.term));
        self.entries += 1;
        match e.entry_type {
            // The empty entry a new leader appends.
            EntryType::Normal if e.data.is_empty() => {}
            EntryType::Normal => match InternalRaftRequest::decode(e.data.as_ref()) {
                Ok(req) => {
                    let id = req.header.as_ref().map_or(req.id, |h| h.id);
                    let result = self.apply_request(&req, e.index)?;
                    self.results.push((id, result));
                }
                // Every member decodes the same bytes the same way, so skipping is
                // deterministic; stopping every member at every replay would not help.
                Err(err) => tracing::error!(
                    index = e.index,
                    error = %err,
                    "a committed entry does not decode as a request; skipped on every member"
                ),
            },
            EntryType::ConfChange | EntryType::ConfChangeV2 => {
                self.effects.conf_changed = true;
                let Some(cc) = DecodedConfChange::of(e) else {
                    tracing::error!(
                        index = e.index,
                        "a configuration change does not decode; skipped on every member"
                    );
                    return Ok(());
                };
                let outcome = membership::apply_conf_change(
                    &cc,
                    &mut self.membership,
                    self.batch.backend_tx(),
                    raft,
                    self.applier.local,
                )?;
                self.effects.membership_changed |= outcome.accepted;
                self.effects.removed_self |= outcome.removed_self;
                self.results.push(outcome.answer);
            }
        }
        Ok(())
    }

    /// One request through the chain: every gate, then the file that decides its kind.
    fn apply_request(
        &mut self,
        req: &InternalRaftRequest,
        index: u64,
    ) -> Result<ApplyResult, ApplyError> {
        let request = Request::of(req);
        let info = req
            .header
            .as_ref()
            .filter(|h| !h.username.is_empty())
            .map(|h| AuthInfo {
                user: h.username.clone(),
                revision: h.auth_revision,
            });
        let state = GateState {
            alarms: &self.alarms,
            auth: &self.auth,
            info: info.as_ref(),
            lessor: &self.lessor,
        };
        let applier = self.applier;
        for gate in &applier.gates {
            if let Err(e) = gate.admit(&request, &state) {
                tracing::debug!(gate = gate.name(), error = %e, index, "request refused");
                return Ok(Err(e));
            }
        }
        let metrics = &applier.metrics;
        let wall_ms = req.wall_clock_ms;
        Ok(match request {
            Request::Range(r) => kv::range(&self.batch.txn(), r, metrics)?,
            Request::Put(p) => kv::put(&mut self.leased_txn(), p, metrics)?,
            Request::DeleteRange(d) => kv::delete(&mut self.leased_txn(), d, metrics)?,
            Request::Txn(t) => kv::txn(&mut self.leased_txn(), t, metrics)?,
            Request::Compaction(c) => {
                self.effects.compacted = true;
                kv::compaction(&mut self.batch, c)?
            }
            Request::LeaseGrant(g) => self.leases(index, wall_ms).grant(g),
            Request::LeaseRevoke(r) => self.leases(index, wall_ms).revoke(r)?,
            Request::LeaseRenew(r) => self.leases(index, wall_ms).renew(r),
            Request::LeaseExpire(x) => self.leases(index, wall_ms).expire(x)?,
            Request::Alarm(a) => {
                let changed = self.alarms.apply(self.batch.backend_tx(), a)?;
                self.alarms_changed |= !changed.is_empty();
                Ok(ApplyResponse::Alarm(changed))
            }
            Request::Auth(a) => auth::AuthApply {
                tx: self.batch.backend_tx(),
                state: &mut self.auth,
                tokens: &mut self.token_changes,
                changed: &mut self.auth_changed,
                index,
                checked_revision: req.header.as_ref().map_or(0, |h| h.auth_revision),
            }
            .apply(&a)?,
            Request::MemberAttrSet(a) => {
                let changed =
                    membership::apply_attrs(a, &mut self.membership, self.batch.backend_tx())?;
                self.effects.membership_changed |= changed;
                Ok(ApplyResponse::MemberAttrs)
            }
            Request::Unsupported(what) => {
                tracing::debug!(index, what, "a request this version does not apply");
                Err(EtcdError::NotCapable)
            }
        })
    }

    /// Where a lease request of the entry at `index` is applied.
    fn leases(&mut self, index: u64, wall_ms: i64) -> lease::LeaseApply<'_, 'a, B> {
        lease::LeaseApply {
            batch: &mut self.batch,
            lessor: &mut self.lessor,
            index,
            wall_ms,
            now: self.ctx.now,
        }
    }

    /// A transaction of the batch that keeps the lessor's key attachments in step.
    fn leased_txn(&mut self) -> kv::LeasedTxn<'_, retcd_mvcc::TxnWrite<'_, 'a, B>> {
        kv::LeasedTxn {
            txn: self.batch.txn(),
            lessor: &mut self.lessor,
        }
    }

    /// Records the lessor's changes and the consistent index in the batch's transaction
    /// and commits it (`durable`: with an fsync; the caller synced the WAL first), then
    /// publishes the membership and the alarms.
    pub fn commit(mut self, durable: bool) -> Result<Applied, ApplyError> {
        let (index, term) = self.last.expect("a batch holds at least one entry");
        for (id, record) in self.lessor.take_changes() {
            let key = retcd_lease::record::key(id);
            let tx = self.batch.backend_tx();
            match record {
                Some(r) => tx.put(Bucket::Lease, &key, &retcd_lease::record::encode(&r))?,
                None => {
                    tx.delete(Bucket::Lease, &key)?;
                }
            }
        }
        self.batch
            .set_consistent_index(ConsistentIndex { index, term })?;
        self.batch.backend_tx().set_durable(durable)?;
        let committed = self.batch.commit()?;
        drop(self.lessor);
        if self.alarms_changed {
            self.applier.alarms.set(self.alarms);
        }
        if self.effects.membership_changed {
            self.applier.membership.set(self.membership);
        }
        if self.auth_changed {
            self.applier.auth.set(self.auth);
        }
        if !self.token_changes.is_empty() {
            self.applier.tokens.apply(self.token_changes, self.ctx.now);
        }
        Ok(Applied {
            revision: committed.revision,
            events: committed.events,
            results: self.results,
            effects: self.effects,
            index,
        })
    }
}
