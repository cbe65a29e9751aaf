//! The raft loop: the Raft core, the WAL and the write side of the store, driven one turn
//! at a time.
//!
//! A turn takes the inputs queued since the last one ([`RaftLoop::take`]), then
//! [`RaftLoop::turn`] does the host's duties for every `Ready` in order (persist, send,
//! apply, release reads, advance) and the periodic work (ticks, durable commits,
//! snapshots, defragmentation). The time of a turn is an argument: the thread's driver
//! ([`RaftLoop::run`]) passes the monotonic clock, a test harness passes whatever it
//! simulates, and nothing in a turn reads the clock to decide anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{InternalRaftRequest, LeaseExpireRequest, LeaseExpiry};
use retcd_backend::{Backend, RedbBackend, WriteTx};
use retcd_lease::REVOKES_PER_TICK;
use retcd_mvcc::{KvStore, WatchableStore};
use retcd_raft::{
    ConfChangeV2, ConfState, MemStorage, Message, MessageType, RawNode, SnapshotStatus, StateRole,
};
use retcd_wal::{Snapshotter, Wal};
use tokio::sync::oneshot;

use super::handle::{INPUT_QUEUE_CAPACITY, Input};
use super::network::{Network, NetworkEvent, peer_list};
use super::reads::ReadQueue;
use super::status::NodeStatus;
use super::{DEFRAG_PATIENCE, NodeError};
use crate::apply::{Applier, ApplyResult, BatchContext, RaftConfig};
use crate::clock;
use crate::ids::MemberId;
use crate::metrics::Metrics;

/// What the driver does after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// The loop was asked to stop, or this member was removed: finish with
    /// [`RaftLoop::finish`].
    Stop,
}

/// The raft loop's state. Fields the sibling modules (snapshots) work on are
/// `pub(super)`.
pub struct RaftLoop {
    pub(super) raw: RawNode<MemStorage>,
    pub(super) storage: MemStorage,
    pub(super) wal: Wal,
    pub(super) snapshotter: Snapshotter,
    pub(super) applier: Applier<RedbBackend>,
    pub(super) kv: Arc<KvStore<RedbBackend>>,
    pub(super) watch: Arc<WatchableStore<RedbBackend>>,
    pub(super) status: Arc<NodeStatus>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) network: Box<dyn Network>,
    /// Peers a joining member knew of at its start (see `recover::JOIN_PEERS_KEY`).
    pub(super) join_peers: Vec<(MemberId, Vec<String>)>,
    /// Whether the lone-voter campaign at start was made.
    campaigned: bool,
    /// Take a Raft snapshot at the next chance, whatever `--snapshot-count` says.
    pub(super) force_snapshot: bool,
    /// Proposers waiting for their entry to be applied, by request id.
    waiters: HashMap<u64, oneshot::Sender<ApplyResult>>,
    /// Callers of Maintenance.Defragment waiting for the next run.
    defrag_requests: Vec<oneshot::Sender<Result<(), String>>>,
    reads: ReadQueue,
    // Invariant: applied_index <= the Raft log's commit index, and it is the backend's
    // consistent index (published, maybe not durable).
    pub(super) applied_index: u64,
    // Invariant: durable_index <= applied_index; the backend's consistent index as of its
    // last durable commit.
    pub(super) durable_index: u64,
    pub(super) last_durable_commit: Instant,
    pub(super) entries_since_durable: u64,
    // Invariant: snapshot_index <= durable_index.
    pub(super) snapshot_index: u64,
    pub(super) limits: LoopLimits,
    pub(super) conf_state: ConfState,
    heartbeat_interval: Duration,
    election_ticks: u64,
    next_tick: Instant,
    last_waiter_sweep: Instant,
    stopping: bool,
    /// The time of the turn in progress.
    pub(super) now: Instant,
}

/// What [`RaftLoop::new`] starts from.
pub(super) struct LoopParts {
    pub raw: RawNode<MemStorage>,
    pub storage: MemStorage,
    pub wal: Wal,
    pub snapshotter: Snapshotter,
    pub applier: Applier<RedbBackend>,
    pub kv: Arc<KvStore<RedbBackend>>,
    pub watch: Arc<WatchableStore<RedbBackend>>,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    pub network: Box<dyn Network>,
    pub join_peers: Vec<(MemberId, Vec<String>)>,
    pub snapshot_index: u64,
    pub limits: LoopLimits,
    pub conf_state: ConfState,
    pub heartbeat_interval: Duration,
    pub election_ticks: u64,
    pub now: Instant,
}

/// How often the loop makes the backend durable and snapshots, and what it keeps (the
/// flags, through [`super::NodeConfig`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct LoopLimits {
    /// Applied entries between two Raft snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in memory behind a snapshot for followers that lag a little.
    pub snapshot_catchup_entries: u64,
    /// Snapshot files kept; 0 keeps all.
    pub max_snapshots: u64,
    /// WAL segments kept once a snapshot released them; 0 keeps all.
    pub max_wals: u64,
    /// Longest a non-durable backend commit may stay the newest.
    pub backend_batch_interval: Duration,
    /// Most applied entries between two durable backend commits.
    pub backend_batch_limit: u64,
}

/// The Raft core as apply sees it.
struct RaftConf<'a> {
    raw: &'a mut RawNode<MemStorage>,
    conf_state: &'a mut ConfState,
}

impl RaftConfig for RaftConf<'_> {
    fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<(), String> {
        let cs = self.raw.apply_conf_change(cc).map_err(|e| e.to_string())?;
        *self.conf_state = cs;
        Ok(())
    }
}

impl RaftLoop {
    pub(super) fn new(p: LoopParts) -> RaftLoop {
        let ci = p.kv.consistent_index().index;
        RaftLoop {
            raw: p.raw,
            storage: p.storage,
            wal: p.wal,
            snapshotter: p.snapshotter,
            applier: p.applier,
            kv: p.kv,
            watch: p.watch,
            status: p.status,
            metrics: p.metrics,
            network: p.network,
            join_peers: p.join_peers,
            campaigned: false,
            force_snapshot: false,
            waiters: HashMap::new(),
            defrag_requests: Vec::new(),
            reads: ReadQueue::default(),
            applied_index: ci,
            durable_index: ci,
            last_durable_commit: p.now,
            entries_since_durable: 0,
            snapshot_index: p.snapshot_index,
            limits: p.limits,
            conf_state: p.conf_state,
            heartbeat_interval: p.heartbeat_interval,
            election_ticks: p.election_ticks,
            next_tick: p.now + p.heartbeat_interval,
            last_waiter_sweep: p.now,
            stopping: false,
            now: p.now,
        }
    }

    /// The loop's thread: waits for inputs (or the next tick), takes every queued one,
    /// and turns, until told to stop; then [`RaftLoop::finish`].
    pub(super) fn run(
        mut self,
        rx: Receiver<Input>,
        events: Receiver<NetworkEvent>,
    ) -> Result<(), NodeError> {
        let result = self.drive(&rx, &events);
        // Inputs still queued: their replies are dropped, which their callers read as
        // "server stopped".
        while let Ok(input) = rx.try_recv() {
            drop(input);
        }
        match result {
            Ok(()) => self.finish(Instant::now()),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn drive(
        &mut self,
        rx: &Receiver<Input>,
        events: &Receiver<NetworkEvent>,
    ) -> Result<(), NodeError> {
        loop {
            let wait = self.next_wakeup().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(input) => self.take(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            // Everything queued now joins this turn, bounded by the queue's capacity.
            for _ in 0..INPUT_QUEUE_CAPACITY {
                match rx.try_recv() {
                    Ok(input) => self.take(input),
                    Err(_) => break,
                }
            }
            while let Ok(event) = events.try_recv() {
                self.on_transport_event(event);
            }
            if self.turn(Instant::now())? == Control::Stop {
                return Ok(());
            }
        }
    }

    /// When the loop next has work without new input: at once if Raft has a `Ready`
    /// (the first campaign, say), else at the next tick.
    pub fn next_wakeup(&self) -> Instant {
        if self.raw.has_ready() {
            self.now
        } else {
            self.next_tick
        }
    }

    /// Takes one input for the next turn.
    pub fn take(&mut self, input: Input) {
        match input {
            Input::Propose {
                id, data, reply, ..
            } => match self.raw.propose(data) {
                Ok(()) => {
                    self.waiters.insert(id, reply);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "proposal dropped");
                    self.metrics.proposals_failed.inc();
                    let _ = reply.send(Err(EtcdError::NoLeader));
                }
            },
            Input::ReadIndex { reply, .. } => self.reads.push(reply),
            Input::Step { message, .. } => {
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
            }
            Input::ConfChange { cc, reply, .. } => {
                let id = cc.id;
                match self.raw.propose_conf_change(&cc) {
                    Ok(()) => {
                        self.waiters.insert(id, reply);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "configuration change dropped");
                        let _ = reply.send(Err(EtcdError::NoLeader));
                    }
                }
            }
            Input::TransferLeader { to, .. } => self.raw.transfer_leader(to),
            Input::Defragment { reply, .. } => self.defrag_requests.push(reply),
            Input::Stop => self.stopping = true,
        }
    }

    /// Takes what the transport reports: unreachable peers, delivered snapshots, and a
    /// peer telling this member it was removed.
    pub fn on_transport_event(&mut self, event: NetworkEvent) {
        match event {
            NetworkEvent::Unreachable(id) => self.raw.report_unreachable(id.0),
            NetworkEvent::Removed(by) => {
                tracing::warn!(peer = %by, "a peer refuses this member as removed");
                self.stop_as_removed();
            }
            NetworkEvent::SnapshotDone(id, ok) => self.raw.report_snapshot(
                id.0,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
        }
    }

    /// One turn at time `now`: reads and ticks, every `Ready`, then the periodic work.
    pub fn turn(&mut self, now: Instant) -> Result<Control, NodeError> {
        assert!(
            now >= self.now,
            "a turn's time went back from {:?} to {now:?}",
            self.now
        );
        self.now = now;
        self.reads.flush(&mut self.raw, self.status.member_id());
        self.tick_if_due();
        while self.raw.has_ready() {
            self.handle_ready()?;
        }
        // A lone voter need not wait an election timeout to learn nobody else leads.
        if !self.campaigned && self.conf_state.voters == [self.status.member_id().0] {
            self.campaigned = true;
            if self.raw.raft.state != StateRole::Leader {
                self.raw.campaign()?;
            }
            return Ok(Control::Continue);
        }
        if self.durable_index < self.applied_index
            && now.saturating_duration_since(self.last_durable_commit)
                >= self.limits.backend_batch_interval
        {
            self.durable_commit()?;
        }
        self.maybe_snapshot()?;
        if !self.defrag_requests.is_empty() {
            self.defragment()?;
        }
        self.sweep_abandoned_waiters();
        self.check_invariants();
        Ok(if self.stopping {
            Control::Stop
        } else {
            Control::Continue
        })
    }

    /// The loop's invariants, checked after every turn with the values in the message.
    fn check_invariants(&self) {
        let committed = self.raw.raft.raft_log.committed;
        let ci = self.kv.consistent_index().index;
        assert!(
            self.applied_index <= committed.max(self.snapshot_index),
            "applied index {} is beyond the commit index {committed}",
            self.applied_index
        );
        assert_eq!(
            self.applied_index, ci,
            "applied index and the backend's consistent index differ"
        );
        assert!(
            self.durable_index <= self.applied_index,
            "durable index {} is beyond the applied index {}",
            self.durable_index,
            self.applied_index
        );
        assert!(
            self.snapshot_index <= self.durable_index,
            "snapshot index {} is beyond the durable index {}",
            self.snapshot_index,
            self.durable_index
        );
    }

    /// Ends the loop after a clean stop: connections closed, every waiter told "server
    /// stopped", everything applied made durable.
    pub fn finish(mut self, now: Instant) -> Result<(), NodeError> {
        self.now = now;
        self.abandon();
        self.durable_commit()?;
        tracing::info!(
            applied_index = self.applied_index,
            "raft loop stopped; backend and WAL are durable"
        );
        Ok(())
    }

    /// Closes connections and fails every waiter (the loop is stopping, cleanly or not).
    fn abandon(&mut self) {
        self.network.shutdown();
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(EtcdError::Stopped));
        }
        self.reads.fail_all(EtcdError::Stopped);
        for reply in self.defrag_requests.drain(..) {
            drop(reply);
        }
    }

    /// Turns elapsed monotonic time into ticks. After a long stall at most one election
    /// timeout's worth is replayed: the core needs to know time passed, not how much.
    fn tick_if_due(&mut self) {
        let now = self.now;
        let mut ticks = 0;
        while now >= self.next_tick {
            self.next_tick += self.heartbeat_interval;
            ticks += 1;
        }
        if ticks > self.election_ticks {
            self.next_tick = now + self.heartbeat_interval;
            ticks = self.election_ticks;
        }
        for _ in 0..ticks {
            self.raw.tick();
        }
        if ticks > 0 {
            let leads = self.raw.raft.state == StateRole::Leader;
            // Once a heartbeat: what MemberPromote checks a learner against.
            let progress: HashMap<u64, u64> = if leads {
                self.raw
                    .raft
                    .prs
                    .progress
                    .iter()
                    .map(|(id, p)| (*id, p.matched))
                    .collect()
            } else {
                HashMap::new()
            };
            self.status.set_progress(progress);
            if leads {
                self.propose_lease_expiries();
            }
        }
    }

    /// On the leader, once a tick: proposes the revocation of leases past their deadline
    /// (at most [`REVOKES_PER_TICK`]), each naming the renewal it expired after.
    fn propose_lease_expiries(&mut self) {
        let now = clock::lease_time(self.now);
        let expired = lock(self.applier.lessor()).take_expired(now, REVOKES_PER_TICK);
        if expired.is_empty() {
            return;
        }
        let req = InternalRaftRequest {
            lease_expire: Some(LeaseExpireRequest {
                leases: expired
                    .iter()
                    .map(|e| LeaseExpiry {
                        id: e.id.0,
                        renewed_index: e.renewed_index,
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        if let Err(e) = self.raw.propose(Bytes::from(req.encode_to_vec())) {
            tracing::debug!(error = %e, "lease expiry proposal dropped; retried next tick");
            let mut lessor = lock(self.applier.lessor());
            for e in expired {
                lessor.expiry_void(e.id);
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.soft_state {
            self.soft_state_changed(ss.leader_id, ss.role == StateRole::Leader);
        }
        // 1. Persist: WAL first, then the core's storage.
        if let Some(snap) = rd.snapshot.take() {
            self.install_snapshot(snap, rd.hard_state)?;
        }
        if !rd.entries.is_empty() || rd.hard_state.is_some() {
            let hs = rd.hard_state.unwrap_or_else(|| self.wal.hard_state());
            if rd.must_sync {
                let start = Instant::now();
                self.wal.save(&hs, &rd.entries)?;
                self.metrics.wal_fsync_duration.observe(start.elapsed());
            } else {
                self.wal.save_no_sync(&hs, &rd.entries)?;
            }
            self.storage.append(&rd.entries)?;
            if let Some(hs) = rd.hard_state {
                self.storage.set_hard_state(hs);
                self.metrics.proposals_committed.set(hs.commit as i64);
                self.status.set_committed_index(hs.commit);
            }
        }
        self.status.set_term(self.raw.raft.term);

        // 2. Send, now that the above is durable.
        let messages = rd.take_messages();
        self.send_messages(messages)?;

        // 3. Apply.
        let committed = std::mem::take(&mut rd.committed_entries);
        self.apply_committed(&committed)?;

        // 4. Reads.
        self.reads
            .answered(std::mem::take(&mut rd.read_states), self.status.member_id());
        self.reads.release(self.applied_index);

        // 5. Advance.
        self.raw.advance();
        Ok(())
    }

    /// The leader or this member's role changed.
    fn soft_state_changed(&mut self, leader: u64, leads: bool) {
        let old = self.status.swap_leader(leader);
        if old != leader {
            if leader != 0 {
                self.metrics.leader_changes_seen.inc();
            }
            if old != 0 {
                self.reads.leader_changed();
            }
            tracing::info!(
                leader = %MemberId(leader),
                term = self.raw.raft.term,
                "raft leader changed"
            );
        }
        let led = self.status.swap_leader_role(leads);
        if leads != led {
            let mut lessor = lock(self.applier.lessor());
            if leads {
                let election_timeout = self
                    .heartbeat_interval
                    .saturating_mul(u32::try_from(self.election_ticks).unwrap_or(u32::MAX));
                lessor.on_promotion(
                    clock::lease_time(self.now),
                    clock::wall_clock_ms(),
                    election_timeout,
                );
            } else {
                lessor.on_demotion();
            }
        }
        self.metrics.has_leader.set(i64::from(leader != 0));
        self.metrics.is_leader.set(i64::from(leads));
    }

    fn send_messages(&mut self, messages: Vec<Message>) -> Result<(), NodeError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (snaps, rest): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| m.msg_type == MessageType::Snapshot);
        for id in self.network.send(rest) {
            self.raw.report_unreachable(id.0);
        }
        for m in snaps {
            self.send_snapshot(m)?;
        }
        Ok(())
    }

    /// Applies committed entries in one backend transaction, commits it (durably when due,
    /// after syncing the WAL), tells the watchers, then acts on what changed and answers
    /// the proposers.
    fn apply_committed(&mut self, entries: &[retcd_raft::Entry]) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let ctx = BatchContext {
            now: clock::lease_time(self.now),
        };
        let mut raft = RaftConf {
            raw: &mut self.raw,
            conf_state: &mut self.conf_state,
        };
        let Some(batch) = self.applier.apply(entries, ctx, &mut raft)? else {
            // Replayed entries the backend already holds.
            self.set_applied(last.index.max(self.applied_index));
            return Ok(());
        };
        let n = batch.entries();
        let durable = batch.must_be_durable()
            || self.stopping
            || self.now.saturating_duration_since(self.last_durable_commit)
                >= self.limits.backend_batch_interval
            || self.entries_since_durable + n >= self.limits.backend_batch_limit;
        if durable {
            // Invariant: the WAL's commit index is durable before the backend's is.
            self.wal.sync()?;
        }
        let start = Instant::now();
        let applied = batch.commit(durable)?;
        self.metrics
            .backend_commit_duration
            .observe(start.elapsed());
        self.note_db_size()?;
        // Watchers hear of the batch before its proposers do, as in etcd.
        self.watch.notify(applied.revision, applied.events);
        if durable {
            self.durable_index = applied.index;
            self.last_durable_commit = self.now;
            self.entries_since_durable = 0;
        } else {
            self.entries_since_durable += n;
        }
        self.set_applied(applied.index);
        let effects = applied.effects;
        if let Some(raised) = effects.no_space {
            tracing::warn!(
                raised,
                "NOSPACE alarm changed: writes that grow the store are {}",
                if raised { "refused" } else { "allowed again" }
            );
        }
        if effects.membership_changed {
            self.update_peers();
        }
        if effects.conf_changed {
            // A member added now may need a snapshot that includes it (see
            // `Storage::snapshot`): take one at the applied index right away.
            self.force_snapshot = true;
        }
        if effects.removed_self {
            self.stop_as_removed();
        }
        // Only now, after the WAL fsync and the apply, do proposers hear back.
        for (id, result) in applied.results {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(result);
            }
        }
        Ok(())
    }

    /// Points the network at the members as applied.
    pub(super) fn update_peers(&mut self) {
        let m = self.applier.membership().get();
        self.network
            .set_peers(&peer_list(&m, self.status.member_id(), &self.join_peers));
    }

    /// This member is out of the cluster: finish the turn and stop serving.
    fn stop_as_removed(&mut self) {
        tracing::warn!("the local member has been permanently removed from the cluster; stopping");
        self.status.mark_removed();
        self.stopping = true;
    }

    pub(super) fn set_applied(&mut self, index: u64) {
        assert!(
            index >= self.applied_index,
            "applied index went back from {} to {index}",
            self.applied_index
        );
        self.applied_index = index;
        self.status.set_applied_index(index);
        self.metrics.proposals_applied.set(index as i64);
    }

    /// Publishes the backend file's size for the quota check.
    pub(super) fn note_db_size(&self) -> Result<(), NodeError> {
        let size = self.kv.backend().size_bytes()?;
        self.status.set_db_file_bytes(size);
        Ok(())
    }

    /// Makes the backend durable up to the applied index (an empty durable commit makes
    /// the earlier non-durable ones durable).
    pub(super) fn durable_commit(&mut self) -> Result<(), NodeError> {
        if self.durable_index == self.applied_index {
            return Ok(());
        }
        self.wal.sync()?;
        let start = Instant::now();
        let tx = self.kv.backend().begin_write()?;
        tx.commit()?;
        self.metrics
            .backend_commit_duration
            .observe(start.elapsed());
        self.durable_index = self.applied_index;
        self.last_durable_commit = self.now;
        self.entries_since_durable = 0;
        Ok(())
    }

    /// Defragments the backend for everyone who asked this turn (one run serves them all).
    /// Like etcd's, it holds up this member: no entry is applied, and no backend
    /// transaction begins, until it ends.
    fn defragment(&mut self) -> Result<(), NodeError> {
        // Invariant: compaction commits durably, so everything applied is made durable
        // first, behind the WAL (see the module docs).
        self.durable_commit()?;
        let start = Instant::now();
        let result = self
            .kv
            .backend()
            .defragment(DEFRAG_PATIENCE)
            .map_err(|e| e.to_string());
        let took = start.elapsed();
        self.metrics.backend_defrag_duration.observe(took);
        self.note_db_size()?;
        // Keep-alives waited in the queue meanwhile: leases must not expire for that.
        lock(self.applier.lessor()).postpone(took);
        self.status.forget_db_in_use();
        match &result {
            Ok(()) => tracing::info!(took = ?took, "backend defragmented"),
            Err(e) => tracing::warn!(error = %e, "backend defragmentation failed"),
        }
        for reply in self.defrag_requests.drain(..) {
            let _ = reply.send(result.clone());
        }
        Ok(())
    }

    /// Drops waiters whose caller gave up (timed out or went away), so entries that will
    /// never be applied (dropped with a lost leadership) cannot grow the map forever.
    fn sweep_abandoned_waiters(&mut self) {
        if self.now.saturating_duration_since(self.last_waiter_sweep) < Duration::from_secs(1) {
            return;
        }
        self.last_waiter_sweep = self.now;
        self.waiters.retain(|_, w| !w.is_closed());
        self.reads.sweep();
    }
}

/// Locks the lessor; a poisoned lock is taken as is (see `apply`'s `lock`).
fn lock(
    lessor: &std::sync::Mutex<retcd_lease::Lessor>,
) -> std::sync::MutexGuard<'_, retcd_lease::Lessor> {
    lessor.lock().unwrap_or_else(|p| p.into_inner())
}
