//! The leader's view of each follower (`Progress`) and of the configuration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::NodeId;
use crate::quorum::{JointConfig, VoteResult};
use crate::types::ConfState;

/// The last indexes of append messages in flight to one follower, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflights {
    queue: VecDeque<u64>,
    capacity: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Self {
        Inflights {
            queue: VecDeque::new(),
            capacity,
        }
    }

    pub fn full(&self) -> bool {
        self.queue.len() >= self.capacity
    }

    pub fn count(&self) -> usize {
        self.queue.len()
    }

    pub fn add(&mut self, last_index: u64) {
        assert!(!self.full(), "cannot add into a full inflights window");
        if let Some(&back) = self.queue.back() {
            assert!(
                last_index > back,
                "inflight {last_index} added after {back}"
            );
        }
        self.queue.push_back(last_index);
    }

    /// Frees every message whose last index is `<= to` (acknowledged).
    pub fn free_le(&mut self, to: u64) {
        while self.queue.front().is_some_and(|&i| i <= to) {
            self.queue.pop_front();
        }
    }

    pub fn free_first_one(&mut self) {
        self.queue.pop_front();
    }

    pub fn reset(&mut self) {
        self.queue.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader sends one append at a time until it learns where the follower's log
    /// matches.
    Probe,
    /// The follower's log matches; appends are pipelined within the inflight window.
    Replicate,
    /// The follower needs a snapshot; nothing is sent until it is reported.
    Snapshot,
}

/// What the leader knows about one member's log.
///
/// Invariant: `matched < next_idx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Highest index known to be replicated on the member.
    pub matched: u64,
    /// Next index to send.
    pub next_idx: u64,
    pub state: ProgressState,
    /// In `Snapshot` state: the index of the snapshot sent.
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In `Probe` state: an append was sent and not yet answered.
    pub probe_sent: bool,
    pub inflights: Inflights,
    pub is_learner: bool,
}

impl Progress {
    pub fn new(next_idx: u64, max_inflight: usize, is_learner: bool) -> Self {
        Progress {
            matched: 0,
            next_idx,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            is_learner,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            // Resume after the snapshot: the follower has at least its contents, or (if it
            // failed) we probe again from what it has matched.
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_idx = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_idx = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_idx = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records an acknowledgement up to `n`. Returns whether `matched` advanced.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next_idx = self.next_idx.max(n + 1);
        updated
    }

    /// Pipelining: assume the append up to `n` will succeed.
    pub fn optimistic_update(&mut self, n: u64) {
        self.next_idx = n + 1;
    }

    /// Handles a rejection of the append that followed `rejected`, with the follower's
    /// hint of where its log may match. Returns false if the rejection is stale.
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next_idx = self.matched + 1;
            return true;
        }
        if self.next_idx == 0 || self.next_idx - 1 != rejected {
            return false;
        }
        self.next_idx = rejected.min(match_hint + 1).max(self.matched + 1).max(1);
        self.probe_sent = false;
        true
    }

    /// Whether sending to this member must wait.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

/// The configuration as the tracker sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    pub voters: JointConfig,
    pub learners: BTreeSet<NodeId>,
    /// Members that become learners when the joint configuration is left (they are voters
    /// in the outgoing half until then).
    pub learners_next: BTreeSet<NodeId>,
    pub auto_leave: bool,
}

impl TrackerConfig {
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.voters.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }
}

pub type ProgressMap = BTreeMap<NodeId, Progress>;

#[derive(Clone, Debug)]
pub struct ProgressTracker {
    pub config: TrackerConfig,
    pub progress: ProgressMap,
    votes: BTreeMap<NodeId, bool>,
    pub max_inflight: usize,
}

impl ProgressTracker {
    pub fn new(max_inflight: usize) -> Self {
        ProgressTracker {
            config: TrackerConfig::default(),
            progress: ProgressMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        }
    }

    pub fn conf_state(&self) -> ConfState {
        self.config.conf_state()
    }

    pub fn is_singleton(&self) -> bool {
        self.config.voters.incoming.voters.len() == 1 && !self.config.voters.is_joint()
    }

    pub fn get(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.progress.get_mut(&id)
    }

    /// The largest index replicated on a quorum of voters.
    pub fn committed(&self) -> u64 {
        self.config
            .voters
            .committed_index(|id| self.progress.get(&id).map(|p| p.matched))
    }

    /// Whether a quorum of voters has been heard from recently.
    pub fn quorum_active(&self) -> bool {
        self.config
            .voters
            .vote_result(|id| self.progress.get(&id).map(|p| p.recent_active))
            == VoteResult::Won
    }

    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.config.voters.ids()
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote; the first answer of each member counts.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// Granted and rejected counts among voters, and the outcome so far.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for (id, pr) in &self.progress {
            if pr.is_learner {
                continue;
            }
            match self.votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        let result = self
            .config
            .voters
            .vote_result(|id| self.votes.get(&id).copied());
        (granted, rejected, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_window_fills_and_frees_in_order() {
        let mut inf = Inflights::new(3);
        inf.add(1);
        inf.add(4);
        inf.add(9);
        assert!(inf.full());
        inf.free_le(4);
        assert_eq!(inf.count(), 1);
        inf.free_first_one();
        assert_eq!(inf.count(), 0);
    }

    #[test]
    fn probe_rejection_uses_the_hint_and_ignores_stale_ones() {
        let mut pr = Progress::new(10, 8, false);
        pr.probe_sent = true;
        // Stale: we did not send the append after index 5.
        assert!(!pr.maybe_decr_to(5, 2));
        assert!(pr.maybe_decr_to(9, 3));
        assert_eq!(pr.next_idx, 4);
        assert!(!pr.probe_sent);
    }

    #[test]
    fn replicate_rejection_falls_back_to_matched() {
        let mut pr = Progress::new(1, 8, false);
        pr.maybe_update(5);
        pr.become_replicate();
        pr.optimistic_update(9);
        assert!(
            !pr.maybe_decr_to(4, 0),
            "rejection at or below matched is stale"
        );
        assert!(pr.maybe_decr_to(8, 0));
        assert_eq!(pr.next_idx, 6);
    }

    #[test]
    fn snapshot_state_resumes_after_the_snapshot() {
        let mut pr = Progress::new(1, 8, false);
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next_idx, 21);
    }
}
