//! A deterministic in-memory cluster for tests and benchmarks.
//!
//! [`SimNode`] is a host that follows the duties in the crate docs exactly: it persists a
//! `Ready` into its [`MemStorage`] (which stands for its disk: a crash keeps it and loses
//! everything else), sends, applies into a toy state machine (a hash chain over applied
//! entries) and advances.
//!
//! [`Network`] delivers messages in lock-step for scripted scenario tests. [`Simulation`]
//! runs one seeded random schedule: message loss, duplication, delay and reordering,
//! partitions, crashes and restarts, configuration changes, leader transfers, reads and
//! snapshots, while a [`Checker`] verifies Raft's safety properties after every event.
//! A failing run names its seed; the same seed replays the same run.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use retcd_prng::SplitMix64;

use crate::config::{Config, InjectedFaults};
use crate::raw_node::{RawNode, SnapshotStatus};
use crate::storage::{MemStorage, Storage};
use crate::types::*;

/// Folds `x` into the running hash `h`.
fn mix(h: u64, x: u64) -> u64 {
    let mut z = (h ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_bytes(b: &[u8]) -> u64 {
    b.chunks(8).fold(b.len() as u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mix(h, u64::from_le_bytes(w))
    })
}

/// The hash of a log prefix ending with `e`, given the hash of the prefix before it. Two
/// logs have equal prefix hashes at an index exactly when they hold the same entries up to
/// it (up to hash collisions).
pub fn chain(prev: u64, e: &Entry) -> u64 {
    mix(
        mix(mix(prev, e.term), e.entry_type.code() as u64),
        hash_bytes(&e.data),
    )
}

/// Global safety checks over everything every node has persisted, observed and applied.
#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<u64, NodeId>,
    /// Prefix hash of every (index, term) any node persisted: equal index and term must
    /// mean equal prefixes (Log Matching).
    prefix_by_index_term: BTreeMap<(u64, u64), u64>,
    /// The entry applied at each index (term, prefix hash), by whoever applied it first.
    applied: Vec<Option<(u64, u64)>>,
    /// For each index, the lowest term at which some node knew it committed. The entry was
    /// committed by a leader of at most that term, so every leader of a later term must
    /// hold it (Leader Completeness).
    commit_term: Vec<u64>,
    /// Highest index applied anywhere.
    pub max_applied: u64,
    /// Reads in flight: context -> highest index applied anywhere when it was issued.
    pending_reads: BTreeMap<Bytes, u64>,
    pub reads_served: u64,
}

impl Checker {
    fn grow(&mut self, index: u64) {
        let n = index as usize + 1;
        if self.applied.len() < n {
            self.applied.resize(n, None);
            self.commit_term.resize(n, u64::MAX);
        }
    }

    /// At most one leader per term.
    pub fn on_leader(&mut self, id: NodeId, term: u64) -> Result<(), String> {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => {
                Err(format!("two leaders in term {term}: {other} and {id}"))
            }
            _ => Ok(()),
        }
    }

    fn on_persisted(
        &mut self,
        id: NodeId,
        index: u64,
        term: u64,
        prefix: u64,
    ) -> Result<(), String> {
        match self.prefix_by_index_term.insert((index, term), prefix) {
            Some(p) if p != prefix => Err(format!(
                "log matching violated: node {id} persisted ({index}, term {term}) after a \
                 prefix different from another node's"
            )),
            _ => Ok(()),
        }
    }

    fn on_commit(&mut self, from: u64, to: u64, term: u64) {
        self.grow(to);
        for i in from..=to {
            let t = &mut self.commit_term[i as usize];
            *t = (*t).min(term);
        }
    }

    fn on_apply(&mut self, id: NodeId, index: u64, term: u64, prefix: u64) -> Result<(), String> {
        self.grow(index);
        self.max_applied = self.max_applied.max(index);
        match self.applied[index as usize] {
            Some((t, p)) if (t, p) != (term, prefix) => Err(format!(
                "state machine safety violated: node {id} applied (term {term}) at index {index}, \
                 another node applied term {t} there"
            )),
            Some(_) => Ok(()),
            None => {
                self.applied[index as usize] = Some((term, prefix));
                Ok(())
            }
        }
    }

    fn committed_prefix(&self, index: u64) -> Option<u64> {
        self.applied
            .get(index as usize)
            .copied()
            .flatten()
            .map(|(_, p)| p)
    }

    /// A new leader of `term` must hold every entry committed in an earlier term.
    fn check_leader_completeness(&self, node: &SimNode, term: u64) -> Result<(), String> {
        let Some(k) = (1..self.commit_term.len())
            .rev()
            .find(|&i| self.commit_term[i] < term && self.applied[i].is_some())
        else {
            return Ok(());
        };
        let k = k as u64;
        let want = self.committed_prefix(k).expect("found above");
        if k < node.log_base {
            // Covered by the leader's snapshot, whose hash was checked when it was installed.
            return Ok(());
        }
        match node.log_prefix(k) {
            Some(p) if p == want => Ok(()),
            Some(_) => Err(format!(
                "leader completeness violated: leader {} of term {term} has a different entry \
                 at committed index {k}",
                node.id
            )),
            None => Err(format!(
                "leader completeness violated: leader {} of term {term} lacks committed index {k}",
                node.id
            )),
        }
    }

    pub fn on_read_requested(&mut self, ctx: Bytes) {
        self.pending_reads.insert(ctx, self.max_applied);
    }

    /// A read may be served at `index` only if that covers every write applied anywhere
    /// before the read was issued.
    fn on_read_state(&mut self, id: NodeId, rs: &ReadState) -> Result<(), String> {
        let Some(floor) = self.pending_reads.remove(&rs.request_ctx) else {
            return Ok(());
        };
        self.reads_served += 1;
        if rs.index < floor {
            return Err(format!(
                "stale read on node {id}: read index {} is below index {floor} applied before the \
                 read was issued",
                rs.index
            ));
        }
        Ok(())
    }
}

/// One node and its host.
pub struct SimNode {
    pub id: NodeId,
    /// The node's disk. Survives crashes.
    pub storage: MemStorage,
    /// The running node; None while crashed.
    pub raw: Option<RawNode<MemStorage>>,
    pub config: Config,
    pub restarts: u64,
    /// Volatile state machine: the index and prefix hash of what is applied, the data of
    /// applied normal entries, and the configuration.
    pub applied_index: u64,
    pub applied_hash: u64,
    pub applied_data: Vec<Bytes>,
    pub conf_state: ConfState,
    pub read_states: Vec<ReadState>,
    /// Snapshot after this many applied entries since the last one; 0 never.
    pub snapshot_interval: u64,
    /// Entries kept in the log behind a snapshot.
    pub compaction_margin: u64,
    /// Prefix hashes of the durable log from `log_base` on.
    log_hashes: Vec<u64>,
    log_base: u64,
    persisted_commit: u64,
}

impl SimNode {
    pub fn new(config: Config, conf_state: ConfState) -> Self {
        let storage = MemStorage::new_with_conf_state(conf_state.clone());
        let raw = RawNode::new(&config, storage.clone()).expect("valid config");
        SimNode {
            id: config.id,
            storage,
            raw: Some(raw),
            config,
            restarts: 0,
            applied_index: 0,
            applied_hash: 0,
            applied_data: Vec::new(),
            conf_state,
            read_states: Vec::new(),
            snapshot_interval: 0,
            compaction_margin: 0,
            log_hashes: vec![0],
            log_base: 0,
            persisted_commit: 0,
        }
    }

    pub fn raw(&mut self) -> &mut RawNode<MemStorage> {
        self.raw.as_mut().expect("node is crashed")
    }

    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    fn log_prefix(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(self.log_base)?;
        self.log_hashes.get(i as usize).copied()
    }

    /// Loses everything but the disk.
    pub fn crash(&mut self) {
        self.raw = None;
        self.read_states.clear();
    }

    /// Restarts from the disk: the state machine restarts from the latest snapshot and
    /// replays committed entries.
    pub fn restart(&mut self) {
        assert!(self.raw.is_none(), "restart of a running node");
        self.restarts += 1;
        let snap = self.storage.snapshot(0).expect("mem storage");
        let mut config = self.config.clone();
        config.applied = snap.metadata.index;
        config.seed = mix(self.config.seed, self.restarts);
        self.applied_index = snap.metadata.index;
        self.applied_hash = snapshot_hash(&snap);
        self.applied_data.clear();
        self.conf_state = snap.metadata.conf_state.clone();
        self.raw = Some(RawNode::new(&config, self.storage.clone()).expect("restart"));
    }

    /// Handles one `Ready` if there is one, returning the messages to send.
    pub fn handle_ready(&mut self, checker: &mut Checker) -> Result<Vec<Message>, String> {
        let id = self.id;
        let Some(raw) = self.raw.as_mut() else {
            return Ok(Vec::new());
        };
        if !raw.has_ready() {
            return Ok(Vec::new());
        }
        let mut rd = raw.ready();

        // 1. Persist: snapshot, entries, hard state.
        if let Some(snap) = &rd.snapshot {
            self.storage
                .apply_snapshot(snap.clone())
                .map_err(|e| e.to_string())?;
            let h = snapshot_hash(snap);
            let index = snap.metadata.index;
            if let Some(want) = checker.committed_prefix(index)
                && want != h
            {
                return Err(format!(
                    "node {id} installed a snapshot at {index} that differs from the committed log"
                ));
            }
            self.log_base = index;
            self.log_hashes = vec![h];
        }
        if let Some(first) = rd.entries.first() {
            self.storage
                .append(&rd.entries)
                .map_err(|e| e.to_string())?;
            let start = first.index;
            assert!(
                start > self.log_base,
                "node {id} appended {start} at or before its snapshot {}",
                self.log_base
            );
            self.log_hashes.truncate((start - self.log_base) as usize);
            for e in &rd.entries {
                let prev = *self.log_hashes.last().expect("base hash");
                let h = chain(prev, e);
                self.log_hashes.push(h);
                checker.on_persisted(id, e.index, e.term, h)?;
            }
        }
        if let Some(hs) = rd.hard_state {
            if hs.commit < self.persisted_commit {
                return Err(format!(
                    "node {id}: commit index went back from {} to {}",
                    self.persisted_commit, hs.commit
                ));
            }
            if hs.commit > self.persisted_commit {
                checker.on_commit(self.persisted_commit + 1, hs.commit, hs.term);
            }
            self.persisted_commit = hs.commit;
            self.storage.set_hard_state(hs);
        }
        if rd.soft_state.is_some_and(|s| s.role == StateRole::Leader) {
            let term = raw.raft.term;
            checker.on_leader(id, term)?;
            checker.check_leader_completeness(self, term)?;
        }

        // 2. Install the snapshot into the state machine.
        if let Some(snap) = &rd.snapshot {
            self.applied_index = snap.metadata.index;
            self.applied_hash = snapshot_hash(snap);
            self.conf_state = snap.metadata.conf_state.clone();
        }

        // 3. Send, now that the above is durable.
        let msgs = rd.take_messages();

        // 4. Apply committed entries.
        let raw = self.raw.as_mut().expect("running");
        let mut conf_changed = false;
        for e in &rd.committed_entries {
            assert_eq!(
                e.index,
                self.applied_index + 1,
                "node {id} applied out of order"
            );
            self.applied_hash = chain(self.applied_hash, e);
            self.applied_index = e.index;
            checker.on_apply(id, e.index, e.term, self.applied_hash)?;
            let cc = match e.entry_type {
                EntryType::Normal => {
                    if !e.data.is_empty() {
                        self.applied_data.push(e.data.clone());
                    }
                    None
                }
                EntryType::ConfChange => ConfChange::decode(&e.data).ok().map(ConfChangeV2::from),
                EntryType::ConfChangeV2 => ConfChangeV2::decode(&e.data).ok(),
            };
            if let Some(cc) = cc {
                // An invalid change is refused identically by every node: a no-op.
                if let Ok(cs) = raw.apply_conf_change(&cc) {
                    self.conf_state = cs;
                    conf_changed = true;
                }
            }
        }
        for rs in &rd.read_states {
            checker.on_read_state(id, rs)?;
        }
        self.read_states.append(&mut rd.read_states);

        // 5. Advance.
        raw.advance();

        // The host's own duty: snapshot and compact now and then, and after every
        // configuration change, so that a snapshot sent to a new member includes it (see
        // `Storage::snapshot`).
        let snap_index = self.storage.snapshot(0).expect("mem").metadata.index;
        let due = self.applied_index >= snap_index + self.snapshot_interval
            || (conf_changed && self.applied_index > snap_index);
        if self.snapshot_interval > 0 && due {
            let data = Bytes::copy_from_slice(&self.applied_hash.to_le_bytes());
            self.storage
                .create_snapshot(self.applied_index, Some(self.conf_state.clone()), data)
                .map_err(|e| e.to_string())?;
            let compact_to = self.applied_index.saturating_sub(self.compaction_margin);
            if compact_to >= self.storage.first_index().expect("mem") {
                self.storage
                    .compact(compact_to)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(msgs)
    }
}

fn snapshot_hash(snap: &Snapshot) -> u64 {
    if snap.data.len() == 8 {
        u64::from_le_bytes(snap.data[..8].try_into().expect("8 bytes"))
    } else {
        0
    }
}

/// The running leader with the highest term, if any.
fn leader_of(nodes: &BTreeMap<NodeId, SimNode>) -> Option<NodeId> {
    nodes
        .values()
        .filter_map(|n| n.raw.as_ref().map(|r| (r.raft.term, n.id, r.raft.state)))
        .filter(|(_, _, s)| *s == StateRole::Leader)
        .map(|(term, id, _)| (term, id))
        .max()
        .map(|(_, id)| id)
}

fn conf_state_of(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        ..Default::default()
    }
}

/// A lock-step network for scripted scenarios: `drain` delivers every message (and every
/// message those cause) until the cluster is quiet, except on cut links.
pub struct Network {
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// Directed links that lose everything: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Message types lost on every link.
    pub drop_types: BTreeSet<MessageType>,
    pub checker: Checker,
    /// Messages delivered so far, for tests that look at traffic.
    pub delivered: Vec<Message>,
}

impl Network {
    /// A cluster of `voters`, all up, configured by `configure` (starting from etcd's
    /// defaults with a short election timeout).
    pub fn new(voters: &[NodeId], configure: impl Fn(&mut Config)) -> Self {
        Self::with_learners(voters, &[], configure)
    }

    pub fn with_learners(
        voters: &[NodeId],
        learners: &[NodeId],
        configure: impl Fn(&mut Config),
    ) -> Self {
        let cs = conf_state_of(voters, learners);
        let nodes = voters
            .iter()
            .chain(learners)
            .map(|&id| {
                let mut c = Config::new(id);
                c.seed = id * 7919;
                configure(&mut c);
                (id, SimNode::new(c, cs.clone()))
            })
            .collect();
        Network {
            nodes,
            cut: BTreeSet::new(),
            drop_types: BTreeSet::new(),
            checker: Checker::default(),
            delivered: Vec::new(),
        }
    }

    /// Adds a node that starts with an empty configuration (it learns it from the leader).
    pub fn add_node(&mut self, id: NodeId, configure: impl Fn(&mut Config)) {
        let mut c = Config::new(id);
        c.seed = id * 7919;
        configure(&mut c);
        self.nodes.insert(id, SimNode::new(c, ConfState::default()));
    }

    pub fn node(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("unknown node")
    }

    pub fn raw(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.node(id).raw()
    }

    /// The running node `id`'s Raft state machine.
    fn raft_of(&self, id: NodeId) -> &crate::raft::Raft<MemStorage> {
        &self.nodes[&id].raw.as_ref().expect("node is up").raft
    }

    pub fn role(&self, id: NodeId) -> StateRole {
        self.raft_of(id).state
    }

    pub fn term(&self, id: NodeId) -> u64 {
        self.raft_of(id).term
    }

    pub fn committed(&self, id: NodeId) -> u64 {
        self.raft_of(id).raft_log.committed
    }

    pub fn last_index(&self, id: NodeId) -> u64 {
        self.raft_of(id).raft_log.last_index()
    }

    /// The leader among running nodes with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        leader_of(&self.nodes)
    }

    /// Delivers everything until quiet. Panics with the checker's complaint on a violation.
    pub fn drain(&mut self) {
        self.drain_with(|_| true);
    }

    /// `drain` through a filter: `keep` sees every message before delivery and may refuse
    /// it (return false) or edit it (e.g. shorten an append's batch).
    pub fn drain_with(&mut self, mut keep: impl FnMut(&mut Message) -> bool) {
        for _round in 0..100_000 {
            if !self.round(&mut keep) {
                return;
            }
        }
        panic!("network did not quiesce");
    }

    /// One round: every node handles its `Ready` once, and what they sent is delivered
    /// (except on cut links, dropped types, and what `keep` refuses). Returns whether
    /// there was anything to do; the network is quiet only when no message was sent and
    /// no node has a `Ready` left (a size-limited `Ready` can leave committed entries).
    pub fn round(&mut self, keep: &mut impl FnMut(&mut Message) -> bool) -> bool {
        let mut batch = Vec::new();
        for node in self.nodes.values_mut() {
            let msgs = node
                .handle_ready(&mut self.checker)
                .unwrap_or_else(|e| panic!("{e}"));
            batch.extend(msgs);
        }
        let pending = self
            .nodes
            .values()
            .any(|n| n.raw.as_ref().is_some_and(|r| r.has_ready()));
        if batch.is_empty() && !pending {
            return false;
        }
        for mut m in batch {
            if keep(&mut m) {
                self.deliver(m);
            }
        }
        true
    }

    fn deliver(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.drop_types.contains(&m.msg_type) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&m.to) else {
            return;
        };
        let Some(raw) = node.raw.as_mut() else { return };
        let (from, to, is_snap) = (m.from, m.to, m.msg_type == MessageType::Snapshot);
        self.delivered.push(m.clone());
        // Errors here are the receiver refusing a message (e.g. from a removed peer).
        let _ = raw.step(m);
        if is_snap && let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
            sender.report_snapshot(to, SnapshotStatus::Finish);
        }
    }

    /// Ticks `id` once and drains.
    pub fn tick(&mut self, id: NodeId) {
        self.raw(id).tick();
        self.drain();
    }

    /// Ticks every running node `n` times, draining after each round.
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                if let Some(raw) = node.raw.as_mut() {
                    raw.tick();
                }
            }
            self.drain();
        }
    }

    /// Makes `id` campaign now and delivers the election.
    pub fn campaign(&mut self, id: NodeId) {
        self.raw(id).campaign().expect("local step");
        self.drain();
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> crate::Result<()> {
        let r = self.raw(id).propose(Bytes::copy_from_slice(data));
        self.drain();
        r
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    /// Splits the cluster: no messages between `a` and the rest.
    pub fn partition(&mut self, a: &[NodeId]) {
        let rest: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !a.contains(id))
            .collect();
        for &x in a {
            for &y in &rest {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.drop_types.clear();
    }

    pub fn crash(&mut self, id: NodeId) {
        self.node(id).crash();
    }

    pub fn restart(&mut self, id: NodeId) {
        self.node(id).restart();
        self.drain();
    }
}

/// Knobs of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: u64,
    pub seed: u64,
    pub steps: u64,
    pub faults: InjectedFaults,
    /// Record a human-readable trace (slow; for replaying a failing seed).
    pub trace: bool,
}

impl SimConfig {
    pub fn new(nodes: u64, seed: u64, steps: u64) -> Self {
        SimConfig {
            nodes,
            seed,
            steps,
            faults: InjectedFaults::default(),
            trace: false,
        }
    }
}

/// What a run did, for determinism checks and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// A hash over every event in order: equal for equal seeds.
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub committed: u64,
    pub leaders_elected: u64,
    pub crashes: u64,
    pub conf_changes_applied: u64,
    pub snapshots_sent: u64,
    pub reads_served: u64,
    pub transfers: u64,
}

struct InFlightMsg {
    deliver_at: u64,
    msg: Message,
}

/// One seeded randomized run. See the module docs.
pub struct Simulation {
    cfg: SimConfig,
    rng: SplitMix64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pool: Vec<InFlightMsg>,
    cut: BTreeSet<(NodeId, NodeId)>,
    pub checker: Checker,
    now: u64,
    /// Fault intensities for this run, drawn from the seed.
    drop_per_mille: u64,
    dup_per_mille: u64,
    max_delay_ticks: u64,
    next_proposal: u64,
    report: SimReport,
}

impl Simulation {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SplitMix64::new(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes).collect();
        let cs = conf_state_of(&ids, &[]);
        // Like every etcd deployment, all members share pre-vote and check-quorum settings.
        let pre_vote = rng.chance(3, 4);
        let check_quorum = rng.chance(3, 4);
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut c = Config::new(id);
            c.election_tick = 10;
            c.heartbeat_tick = 1;
            c.seed = mix(cfg.seed, id);
            c.max_inflight_msgs = 1 + rng.below(8) as usize;
            c.max_size_per_msg = 1 + rng.below(64);
            c.max_uncommitted_entries_size = 64 + rng.below(1024);
            c.pre_vote = pre_vote;
            c.check_quorum = check_quorum;
            c.injected_faults = cfg.faults;
            let mut n = SimNode::new(c, cs.clone());
            n.snapshot_interval = if rng.chance(1, 2) {
                5 + rng.below(40)
            } else {
                0
            };
            n.compaction_margin = rng.below(4);
            nodes.insert(id, n);
        }
        let drop_per_mille = [0, 10, 50, 150][rng.below(4) as usize];
        let dup_per_mille = [0, 10, 50][rng.below(3) as usize];
        let max_delay_ticks = [0, 1, 3, 8][rng.below(4) as usize];
        Simulation {
            cfg,
            rng,
            nodes,
            pool: Vec::new(),
            cut: BTreeSet::new(),
            checker: Checker::default(),
            now: 0,
            drop_per_mille,
            dup_per_mille,
            max_delay_ticks,
            next_proposal: 0,
            report: SimReport::default(),
        }
    }

    fn trace(&mut self, event: impl FnOnce() -> String, key: &[u64]) {
        let mut h = self.report.trace_hash;
        for &k in key {
            h = mix(h, k);
        }
        self.report.trace_hash = h;
        if self.cfg.trace {
            let line = format!("[{}] {}", self.now, event());
            self.report.trace.push(line);
        }
    }

    fn fail(&self, step: u64, why: String) -> String {
        let mut s = format!(
            "raft simulation failed: seed {} ({} nodes), step {step}: {why}\nreplay: \
             RAFT_SIM_SEED={} RAFT_SIM_NODES={} cargo test -p retcd-raft --release --test simulation replay -- --nocapture",
            self.cfg.seed, self.cfg.nodes, self.cfg.seed, self.cfg.nodes
        );
        if self.cfg.trace {
            let tail = self.report.trace.len().saturating_sub(60);
            for line in &self.report.trace[tail..] {
                s.push('\n');
                s.push_str(line);
            }
        }
        s
    }

    /// Handles readies of `id` until it has none, queueing what it sends.
    fn process(&mut self, id: NodeId) -> Result<(), String> {
        loop {
            let node = self.nodes.get_mut(&id).expect("node");
            let msgs = node.handle_ready(&mut self.checker)?;
            if msgs.is_empty() && !self.nodes[&id].raw.as_ref().is_some_and(|r| r.has_ready()) {
                return Ok(());
            }
            for m in msgs {
                let delay = if self.max_delay_ticks == 0 {
                    0
                } else {
                    self.rng.below(self.max_delay_ticks + 1)
                };
                self.pool.push(InFlightMsg {
                    deliver_at: self.now + delay,
                    msg: m,
                });
            }
        }
    }

    fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    fn leader(&self) -> Option<NodeId> {
        leader_of(&self.nodes)
    }

    /// Runs the schedule: a chaos phase of `steps` steps, then a healing phase that must
    /// elect a leader and commit within a bounded number of ticks.
    pub fn run(mut self) -> Result<SimReport, String> {
        for step in 0..self.cfg.steps {
            self.chaos_step(step).map_err(|e| self.fail(step, e))?;
        }
        self.heal().map_err(|e| self.fail(self.cfg.steps, e))?;
        self.report.committed = self.checker.max_applied;
        self.report.leaders_elected = self.checker.leaders.len() as u64;
        self.report.reads_served = self.checker.reads_served;
        Ok(self.report)
    }

    fn chaos_step(&mut self, _step: u64) -> Result<(), String> {
        let r = self.rng.below(1000);
        match r {
            0..=199 => self.tick_all(),
            200..=699 => self.deliver_one(true),
            700..=819 => self.propose_random(),
            820..=839 => self.read_random(),
            840..=854 => self.crash_or_restart(),
            855..=874 => self.change_partition(),
            875..=889 => self.conf_change(),
            890..=899 => self.transfer(),
            _ => self.deliver_one(true),
        }
    }

    fn tick_all(&mut self) -> Result<(), String> {
        self.now += 1;
        self.trace(|| "tick".into(), &[1]);
        for id in self.up_ids() {
            self.nodes.get_mut(&id).expect("node").raw().tick();
            self.process(id)?;
        }
        Ok(())
    }

    /// Delivers one message that is due, chosen at random (which reorders them).
    fn deliver_one(&mut self, faulty: bool) -> Result<(), String> {
        let due: Vec<usize> = (0..self.pool.len())
            .filter(|&i| self.pool[i].deliver_at <= self.now)
            .collect();
        if due.is_empty() {
            return self.tick_all();
        }
        let pick = due[self.rng.below(due.len() as u64) as usize];
        let InFlightMsg { msg, .. } = self.pool.swap_remove(pick);
        let (from, to, t) = (msg.from, msg.to, msg.msg_type);
        let lost = self.cut.contains(&(from, to))
            || (faulty && self.rng.below(1000) < self.drop_per_mille)
            || !self.nodes.get(&to).is_some_and(|n| n.is_up());
        if faulty && !lost && self.rng.below(1000) < self.dup_per_mille {
            let delay = self.rng.below(self.max_delay_ticks + 1);
            self.pool.push(InFlightMsg {
                deliver_at: self.now + delay,
                msg: msg.clone(),
            });
        }
        let key = [
            2,
            from,
            to,
            t.code() as u64,
            msg.term,
            msg.index,
            lost as u64,
        ];
        self.trace(
            || {
                format!(
                    "{from}->{to} {t:?} term {} index {} lost={lost}",
                    msg.term, msg.index
                )
            },
            &key,
        );
        if t == MessageType::Snapshot {
            self.report.snapshots_sent += 1;
            if let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
                let status = if lost {
                    SnapshotStatus::Failure
                } else {
                    SnapshotStatus::Finish
                };
                sender.report_snapshot(to, status);
            }
            self.process(from)?;
        }
        if lost {
            if matches!(t, MessageType::Append) {
                if let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut())
                    && self.rng.chance(1, 2)
                {
                    sender.report_unreachable(to);
                }
                if self.nodes[&from].is_up() {
                    self.process(from)?;
                }
            }
            return Ok(());
        }
        let node = self.nodes.get_mut(&to).expect("checked up");
        let _ = node.raw().step(msg);
        self.process(to)
    }

    fn propose_random(&mut self) -> Result<(), String> {
        let up = self.up_ids();
        if up.is_empty() {
            return Ok(());
        }
        // Mostly to the leader, sometimes to a follower (which forwards).
        let id = match self.leader() {
            Some(l) if self.rng.chance(4, 5) => l,
            _ => up[self.rng.below(up.len() as u64) as usize],
        };
        self.next_proposal += 1;
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(&id.to_le_bytes());
        data.extend_from_slice(&self.next_proposal.to_le_bytes());
        self.trace(|| format!("propose at {id}"), &[3, id]);
        let _ = self
            .nodes
            .get_mut(&id)
            .expect("up")
            .raw()
            .propose(data.into());
        self.process(id)
    }

    fn read_random(&mut self) -> Result<(), String> {
        let up = self.up_ids();
        if up.is_empty() {
            return Ok(());
        }
        let id = up[self.rng.below(up.len() as u64) as usize];
        self.next_proposal += 1;
        let ctx = Bytes::from(format!("read-{}", self.next_proposal).into_bytes());
        self.checker.on_read_requested(ctx.clone());
        self.trace(|| format!("read_index at {id}"), &[4, id]);
        let _ = self.nodes.get_mut(&id).expect("up").raw().read_index(ctx);
        self.process(id)
    }

    fn crash_or_restart(&mut self) -> Result<(), String> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        let down = self.nodes.values().filter(|n| !n.is_up()).count() as u64;
        let node = self.nodes.get_mut(&id).expect("node");
        if node.is_up() {
            // Keep a majority of the original nodes running most of the time, but allow
            // losing it: liveness is only required after healing.
            if down + 1 > self.cfg.nodes / 2 && self.rng.chance(3, 4) {
                return Ok(());
            }
            node.crash();
            self.report.crashes += 1;
            self.trace(|| format!("crash {id}"), &[5, id]);
        } else {
            node.restart();
            self.trace(|| format!("restart {id}"), &[6, id]);
            self.process(id)?;
        }
        Ok(())
    }

    fn change_partition(&mut self) -> Result<(), String> {
        let n = self.cfg.nodes;
        match self.rng.below(3) {
            0 => self.cut.clear(),
            1 => {
                // Isolate one node.
                let x = 1 + self.rng.below(n);
                for y in 1..=n {
                    if y != x {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
            }
            _ => {
                // Split into two random sides.
                self.cut.clear();
                let side: Vec<bool> = (0..=n).map(|_| self.rng.chance(1, 2)).collect();
                for x in 1..=n {
                    for y in 1..=n {
                        if side[x as usize] != side[y as usize] {
                            self.cut.insert((x, y));
                        }
                    }
                }
            }
        }
        let cut = self.cut.len() as u64;
        self.trace(|| format!("partition: {cut} directed links cut"), &[7, cut]);
        Ok(())
    }

    fn conf_change(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let cs = self.nodes[&leader]
            .raw
            .as_ref()
            .expect("up")
            .raft
            .prs
            .conf_state();
        let n = self.cfg.nodes;
        let all: Vec<NodeId> = (1..=n).collect();
        let cc = if !cs.voters_outgoing.is_empty() {
            // Explicit joint configurations must be left by hand.
            ConfChangeV2::default()
        } else {
            let pick =
                |rng: &mut SplitMix64, from: &[NodeId]| from[rng.below(from.len() as u64) as usize];
            let non_members: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|id| !cs.voters.contains(id) && !cs.learners.contains(id))
                .collect();
            let single = |t, id| ConfChangeSingle {
                change_type: t,
                node_id: id,
            };
            let mut changes = Vec::new();
            match self.rng.below(4) {
                0 if !non_members.is_empty() => {
                    changes.push(single(
                        ConfChangeType::AddLearnerNode,
                        pick(&mut self.rng, &non_members),
                    ));
                }
                1 if !cs.learners.is_empty() => {
                    changes.push(single(
                        ConfChangeType::AddNode,
                        pick(&mut self.rng, &cs.learners),
                    ));
                }
                2 if cs.voters.len() > 1 => {
                    let t = if self.rng.chance(1, 2) {
                        ConfChangeType::RemoveNode
                    } else {
                        ConfChangeType::AddLearnerNode
                    };
                    changes.push(single(t, pick(&mut self.rng, &cs.voters)));
                }
                3 if cs.voters.len() > 1 && !(non_members.is_empty() && cs.learners.is_empty()) => {
                    // Swap a voter for another member at once: needs a joint configuration.
                    let candidates: Vec<NodeId> =
                        non_members.iter().chain(&cs.learners).copied().collect();
                    changes.push(single(
                        ConfChangeType::AddNode,
                        pick(&mut self.rng, &candidates),
                    ));
                    changes.push(single(
                        ConfChangeType::RemoveNode,
                        pick(&mut self.rng, &cs.voters),
                    ));
                }
                _ => return Ok(()),
            }
            let transition = match self.rng.below(3) {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::JointImplicit,
                _ => ConfChangeTransition::JointExplicit,
            };
            ConfChangeV2 {
                transition,
                changes,
                context: Bytes::new(),
            }
        };
        self.trace(
            || format!("conf change at {leader}: {cc:?}"),
            &[8, leader, cc.changes.len() as u64],
        );
        let raw = self.nodes.get_mut(&leader).expect("leader").raw();
        if raw.propose_conf_change_v2(&cc).is_ok() {
            self.report.conf_changes_applied += 1;
        }
        self.process(leader)
    }

    fn transfer(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let to = 1 + self.rng.below(self.cfg.nodes);
        self.trace(|| format!("transfer {leader} -> {to}"), &[9, leader, to]);
        self.report.transfers += 1;
        self.nodes
            .get_mut(&leader)
            .expect("leader")
            .raw()
            .transfer_leader(to);
        self.process(leader)
    }

    /// Heals every fault and requires a leader to commit a new entry within a bound.
    fn heal(&mut self) -> Result<(), String> {
        self.cut.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if !self.nodes[&id].is_up() {
                self.nodes.get_mut(&id).expect("node").restart();
                self.process(id)?;
            }
        }
        self.trace(|| "heal".into(), &[10]);
        // Bound: 60 election timeouts (each election takes at most 2x the base timeout,
        // and a few may split or be disturbed by joint-config transitions).
        let max_ticks = 60 * 10;
        let target = self.checker.max_applied;
        let mut proposed_at = None;
        for _ in 0..max_ticks {
            self.tick_all()?;
            // Drain the network reliably.
            for _ in 0..10_000 {
                if !self.pool.iter().any(|m| m.deliver_at <= self.now) {
                    break;
                }
                self.deliver_one(false)?;
            }
            if let Some(l) = self.leader()
                && (proposed_at.is_none() || self.rng.chance(1, 10))
            {
                self.next_proposal += 1;
                let data = Bytes::from(format!("heal-{}", self.next_proposal).into_bytes());
                let raw = self.nodes.get_mut(&l).expect("leader").raw();
                if raw.propose(data).is_ok() {
                    proposed_at = Some(self.now);
                }
                self.process(l)?;
            }
            if proposed_at.is_some() && self.checker.max_applied > target {
                let committed_heal = self
                    .nodes
                    .values()
                    .any(|n| n.applied_data.iter().any(|d| d.starts_with(b"heal-")));
                if committed_heal {
                    return Ok(());
                }
            }
        }
        let leader_view = self.leader().map(|l| {
            let st = self.nodes[&l].raw.as_ref().expect("up").status();
            format!(
                "{:?} committed {} last {} {:?}",
                st.conf_state, st.hard_state.commit, st.last_index, st.progress
            )
        });
        Err(format!(
            "liveness: no leader committed a new entry within {max_ticks} ticks after healing \
             (leader: {:?}, roles: {:?}, leader's view: {leader_view:?})",
            self.leader(),
            self.nodes
                .values()
                .map(|n| (
                    n.id,
                    n.raw.as_ref().map(|r| (
                        r.raft.state,
                        r.raft.term,
                        r.raft.raft_log.last_index(),
                        r.raft.raft_log.committed,
                        r.raft.raft_log.applied,
                        r.raft.prs.conf_state()
                    ))
                ))
                .collect::<Vec<_>>()
        ))
    }
}
