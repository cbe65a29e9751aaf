//! The Raft state machine: roles, elections, replication, reads, transfers and
//! configuration, driven by `step` and `tick`. Outputs accumulate in `msgs`,
//! `read_states` and the log; `RawNode` packages them into `Ready`.

use bytes::Bytes;
use retcd_prng::SplitMix64;

use crate::confchange::{self, Changer};
use crate::config::{Config, InjectedFaults, ReadOnlyOption};
use crate::error::{DropReason, Error, Result, StorageError};
use crate::log::RaftLog;
use crate::quorum::VoteResult;
use crate::read_only::ReadOnly;
use crate::storage::Storage;
use crate::tracker::{ProgressMap, ProgressState, ProgressTracker, TrackerConfig};
use crate::types::*;

/// Context of vote requests sent because the leader asked us to take over: they bypass
/// the followers' leader lease.
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignType {
    PreElection,
    Election,
    Transfer,
}

pub struct Raft<S: Storage> {
    pub id: NodeId,
    pub term: u64,
    pub vote: NodeId,
    pub raft_log: RaftLog<S>,
    pub prs: ProgressTracker,
    pub state: StateRole,
    /// Whether this node is a learner in the current configuration.
    pub is_learner: bool,
    pub leader_id: NodeId,
    /// The member a leadership transfer is going to, or NONE.
    pub lead_transferee: NodeId,
    /// Index of the latest configuration change proposed; a new one may be proposed only
    /// once this has been applied.
    pub pending_conf_index: u64,
    /// Payload bytes appended by this leader and not yet committed.
    /// Invariant: uncommitted_size <= max_uncommitted_size unless a single entry exceeds it.
    pub uncommitted_size: u64,
    pub msgs: Vec<Message>,
    pub read_states: Vec<ReadState>,
    read_only: ReadOnly,
    read_only_option: ReadOnlyOption,
    /// ReadIndex requests that arrived before this leader committed an entry of its term;
    /// answered once it has.
    pending_read_index_messages: Vec<Message>,

    election_elapsed: u64,
    heartbeat_elapsed: u64,
    heartbeat_timeout: u64,
    election_timeout: u64,
    /// Invariant: election_timeout <= randomized_election_timeout < 2 * election_timeout.
    randomized_election_timeout: u64,
    check_quorum: bool,
    pre_vote: bool,
    disable_proposal_forwarding: bool,
    max_msg_size: u64,
    max_uncommitted_size: u64,
    rng: SplitMix64,
    faults: InjectedFaults,
}

impl<S: Storage> Raft<S> {
    pub fn new(c: &Config, store: S) -> Result<Self> {
        c.validate()?;
        let rs = store.initial_state()?;
        let raft_log = RaftLog::new(store)?;
        let mut r = Raft {
            id: c.id,
            term: 0,
            vote: NONE,
            raft_log,
            prs: ProgressTracker::new(c.max_inflight_msgs),
            state: StateRole::Follower,
            is_learner: false,
            leader_id: NONE,
            lead_transferee: NONE,
            pending_conf_index: 0,
            uncommitted_size: 0,
            msgs: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            read_only_option: c.read_only_option,
            pending_read_index_messages: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            heartbeat_timeout: c.heartbeat_tick,
            election_timeout: c.election_tick,
            randomized_election_timeout: c.election_tick,
            check_quorum: c.check_quorum,
            pre_vote: c.pre_vote,
            disable_proposal_forwarding: c.disable_proposal_forwarding,
            max_msg_size: c.max_size_per_msg,
            max_uncommitted_size: c.uncommitted_limit(),
            rng: SplitMix64::new(c.seed ^ c.id.rotate_left(32)),
            faults: c.injected_faults,
        };
        let last_index = r.raft_log.last_index();
        confchange::restore(&mut r.prs, last_index, &rs.conf_state)?;
        let cs = r.prs.conf_state();
        assert_eq!(
            cs, rs.conf_state,
            "restored configuration differs from the stored one"
        );
        r.is_learner = r.prs.get(r.id).is_some_and(|p| p.is_learner);
        if !rs.hard_state.is_empty() {
            r.load_state(rs.hard_state);
        }
        if c.applied > 0 {
            r.raft_log.applied_to(c.applied.min(r.raft_log.committed));
        }
        let term = r.term;
        r.become_follower(term, NONE);
        Ok(r)
    }

    fn load_state(&mut self, hs: HardState) {
        let (first, last) = (self.raft_log.committed, self.raft_log.last_index());
        assert!(
            hs.commit >= first && hs.commit <= last,
            "hard state commit {} is out of range [{first}, {last}]",
            hs.commit
        );
        self.raft_log.committed = hs.commit;
        self.term = hs.term;
        self.vote = hs.vote;
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.raft_log.committed,
        }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.leader_id,
            role: self.state,
        }
    }

    /// Whether this node can become leader: a voter of the current configuration with no
    /// snapshot waiting to be applied.
    pub fn promotable(&self) -> bool {
        self.prs.get(self.id).is_some_and(|p| !p.is_learner)
            && !self.raft_log.has_pending_snapshot()
    }

    fn past_election_timeout(&self) -> bool {
        self.election_elapsed >= self.randomized_election_timeout
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout =
            self.election_timeout + self.rng.below(self.election_timeout);
    }

    // ---- sending ----------------------------------------------------------------------

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        match m.msg_type {
            MessageType::RequestVote
            | MessageType::RequestPreVote
            | MessageType::RequestVoteResponse
            | MessageType::RequestPreVoteResponse => {
                // Vote messages carry the term being campaigned for, set by the caller.
                assert!(
                    m.term != 0,
                    "term should be set when sending {:?}",
                    m.msg_type
                );
            }
            MessageType::Propose | MessageType::ReadIndex => {
                // Forwarded requests are local to the receiver's term handling.
                assert!(
                    m.term == 0,
                    "term must not be set when sending {:?}",
                    m.msg_type
                );
            }
            _ => {
                assert!(
                    m.term == 0,
                    "term must not be set when sending {:?}",
                    m.msg_type
                );
                m.term = self.term;
            }
        }
        self.msgs.push(m);
    }

    fn send_append(&mut self, to: NodeId) {
        self.maybe_send_append(to, true);
    }

    /// Sends an append (or a snapshot, if the entries are compacted) to `to`. Returns
    /// whether a message was sent.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.get(to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next_idx;
        let term = self.raft_log.term(next - 1);
        let ents = self.raft_log.entries(next, self.max_msg_size);
        if let (Ok(log_term), Ok(entries)) = (&term, &ents) {
            if entries.is_empty() && !send_if_empty {
                return false;
            }
            let (log_term, entries) = (*log_term, entries.clone());
            let last = entries.last().map(|e| e.index);
            let pr = self.prs.get_mut(to).expect("checked above");
            if let Some(last) = last {
                match pr.state {
                    ProgressState::Replicate => {
                        pr.optimistic_update(last);
                        pr.inflights.add(last);
                    }
                    ProgressState::Probe => pr.probe_sent = true,
                    ProgressState::Snapshot => unreachable!("paused"),
                }
            }
            let commit = self.raft_log.committed;
            self.send(Message {
                msg_type: MessageType::Append,
                to,
                index: next - 1,
                log_term,
                entries,
                commit,
                ..Default::default()
            });
            return true;
        }
        // The entries the follower needs are compacted: send a snapshot instead.
        if !self.prs.get(to).expect("checked").recent_active {
            return false;
        }
        let snapshot = match self.raft_log.snapshot() {
            Ok(s) => s,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("failed to get a snapshot for {to}: {e}"),
        };
        assert!(!snapshot.is_empty(), "need a non-empty snapshot for {to}");
        let index = snapshot.metadata.index;
        self.prs
            .get_mut(to)
            .expect("checked")
            .become_snapshot(index);
        self.send(Message {
            msg_type: MessageType::Snapshot,
            to,
            snapshot: Some(snapshot),
            ..Default::default()
        });
        true
    }

    fn send_heartbeat(&mut self, to: NodeId, context: Bytes) {
        // A follower might not have all of the leader's log; it must not commit past what
        // it is known to hold.
        let matched = self.prs.get(to).map_or(0, |p| p.matched);
        let commit = matched.min(self.raft_log.committed);
        self.send(Message {
            msg_type: MessageType::Heartbeat,
            to,
            commit,
            context,
            ..Default::default()
        });
    }

    fn peers(&self) -> Vec<NodeId> {
        self.prs
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn bcast_append(&mut self) {
        for id in self.peers() {
            self.send_append(id);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let ctx = self
            .read_only
            .last_pending_request_ctx()
            .unwrap_or_default();
        self.bcast_heartbeat_with_ctx(ctx);
    }

    fn bcast_heartbeat_with_ctx(&mut self, ctx: Bytes) {
        for id in self.peers() {
            self.send_heartbeat(id, ctx.clone());
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.send(Message {
            msg_type: MessageType::TimeoutNow,
            to,
            ..Default::default()
        });
    }

    // ---- commit and apply -------------------------------------------------------------

    /// Advances the commit index to what a quorum holds. Returns whether it moved.
    fn maybe_commit(&mut self) -> bool {
        let mci = self.prs.committed();
        if self.faults.commit_old_term_by_counting {
            // Deliberately broken (figure 8): commit whatever a quorum holds, whatever its term.
            let mci = mci.min(self.raft_log.last_index());
            if mci > self.raft_log.committed {
                self.raft_log.commit_to(mci);
                return true;
            }
            return false;
        }
        self.raft_log.maybe_commit(mci, self.term)
    }

    /// Called by the host (through `RawNode::advance`) once entries up to `applied` are
    /// applied.
    pub fn applied_to(&mut self, applied: u64) {
        self.raft_log.applied_to(applied);
        // Leave an automatic joint configuration once the change that entered it applies.
        if self.prs.config.auto_leave
            && applied >= self.pending_conf_index
            && self.state == StateRole::Leader
        {
            let leave = ConfChangeV2::default();
            let ent = Entry {
                entry_type: EntryType::ConfChangeV2,
                data: leave.encode(),
                ..Default::default()
            };
            // The leave proposal carries no payload, so flow control cannot refuse it.
            if self.append_entry(vec![ent]) {
                self.pending_conf_index = self.raft_log.last_index();
                self.bcast_append();
            }
        }
    }

    /// Appends new entries as the leader. Returns false when refused by flow control.
    fn append_entry(&mut self, mut ents: Vec<Entry>) -> bool {
        let li = self.raft_log.last_index();
        for (i, e) in ents.iter_mut().enumerate() {
            e.term = self.term;
            e.index = li + 1 + i as u64;
        }
        if !self.increase_uncommitted_size(&ents) {
            return false;
        }
        let li = self.raft_log.append(&ents);
        let id = self.id;
        self.prs
            .get_mut(id)
            .expect("leader has progress")
            .maybe_update(li);
        self.maybe_commit();
        true
    }

    fn increase_uncommitted_size(&mut self, ents: &[Entry]) -> bool {
        let s: u64 = ents.iter().map(Entry::payload_size).sum();
        if self.uncommitted_size > 0
            && s > 0
            && self.uncommitted_size.saturating_add(s) > self.max_uncommitted_size
        {
            return false;
        }
        self.uncommitted_size += s;
        true
    }

    /// Committed entries were handed to the host: they no longer count as uncommitted.
    pub fn reduce_uncommitted_size(&mut self, committed_payload: u64) {
        self.uncommitted_size = self.uncommitted_size.saturating_sub(committed_payload);
    }

    // ---- roles ------------------------------------------------------------------------

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = NONE;
        }
        self.leader_id = NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.abort_leader_transfer();
        self.prs.reset_votes();
        let last = self.raft_log.last_index();
        let id = self.id;
        for (&pid, pr) in self.prs.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = crate::tracker::Progress::new(last + 1, self.prs.max_inflight, is_learner);
            if pid == id {
                pr.matched = last;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_size = 0;
        self.read_only = ReadOnly::default();
    }

    pub fn become_follower(&mut self, term: u64, leader_id: NodeId) {
        self.reset(term);
        self.leader_id = leader_id;
        self.state = StateRole::Follower;
        self.pending_read_index_messages.clear();
    }

    fn become_candidate(&mut self) {
        assert!(
            self.state != StateRole::Leader,
            "invalid transition [leader -> candidate]"
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.state = StateRole::Candidate;
    }

    fn become_pre_candidate(&mut self) {
        assert!(
            self.state != StateRole::Leader,
            "invalid transition [leader -> pre-candidate]"
        );
        // A pre-candidate changes neither its term nor its vote: that is the whole point.
        self.prs.reset_votes();
        self.leader_id = NONE;
        self.state = StateRole::PreCandidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.state != StateRole::Follower,
            "invalid transition [follower -> leader]"
        );
        let term = self.term;
        self.reset(term);
        self.leader_id = self.id;
        self.state = StateRole::Leader;
        let id = self.id;
        let pr = self
            .prs
            .get_mut(id)
            .expect("leader is in the configuration");
        pr.become_replicate();
        // The leader is trivially active; check-quorum preserves this.
        pr.recent_active = true;
        // Conservatively treat any unapplied entry as a possible configuration change, so
        // a new one is not proposed before the old ones apply.
        self.pending_conf_index = self.raft_log.last_index();
        // An empty entry of the new term lets the leader commit (and learn the commit index
        // of) everything before it (Raft §5.4.2, §6.4).
        let appended = self.append_entry(vec![Entry::default()]);
        assert!(appended, "empty entry was refused by flow control");
    }

    fn hup(&mut self, t: CampaignType) {
        if self.state == StateRole::Leader {
            return;
        }
        if !self.promotable() {
            return;
        }
        // A configuration change that is committed but not yet applied might remove us:
        // campaigning before it applies could elect a node that is no longer a member.
        let pending = self
            .raft_log
            .pending_entries_after_applied()
            .unwrap_or_default();
        if pending.iter().any(|e| e.entry_type != EntryType::Normal) {
            return;
        }
        self.campaign(t);
    }

    fn campaign(&mut self, t: CampaignType) {
        if !self.promotable() {
            return;
        }
        let (vote_msg, term) = if t == CampaignType::PreElection {
            self.become_pre_candidate();
            // Pre-votes are asked for the next term without moving to it.
            (MessageType::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::RequestVote, self.term)
        };
        let id = self.id;
        if self.poll(id, vote_msg.vote_response(), true) == VoteResult::Won {
            // A single-voter configuration wins at once.
            if t == CampaignType::PreElection {
                self.campaign(CampaignType::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let context = if t == CampaignType::Transfer {
            Bytes::from_static(CAMPAIGN_TRANSFER)
        } else {
            Bytes::new()
        };
        let (index, log_term) = (self.raft_log.last_index(), self.raft_log.last_term());
        for to in self.prs.voter_ids() {
            if to == id {
                continue;
            }
            self.send(Message {
                msg_type: vote_msg,
                to,
                term,
                index,
                log_term,
                context: context.clone(),
                ..Default::default()
            });
        }
    }

    fn poll(&mut self, id: NodeId, _t: MessageType, granted: bool) -> VoteResult {
        self.prs.record_vote(id, granted);
        self.prs.tally_votes().2
    }

    // ---- ticks ------------------------------------------------------------------------

    pub fn tick(&mut self) {
        match self.state {
            StateRole::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.past_election_timeout() {
            self.election_elapsed = 0;
            let m = Message {
                msg_type: MessageType::Hup,
                from: self.id,
                ..Default::default()
            };
            // Stepping a local message cannot fail.
            let _ = self.step(m);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum {
                let m = Message {
                    msg_type: MessageType::CheckQuorum,
                    from: self.id,
                    ..Default::default()
                };
                let _ = self.step(m);
            }
            // A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateRole::Leader && self.lead_transferee != NONE {
                self.abort_leader_transfer();
            }
        }
        if self.state != StateRole::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            let m = Message {
                msg_type: MessageType::Beat,
                from: self.id,
                ..Default::default()
            };
            let _ = self.step(m);
        }
    }

    fn abort_leader_transfer(&mut self) {
        self.lead_transferee = NONE;
    }

    // ---- step -------------------------------------------------------------------------

    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.term == 0 {
            // Local message.
        } else if m.term > self.term {
            if matches!(
                m.msg_type,
                MessageType::RequestVote | MessageType::RequestPreVote
            ) {
                let force = m.context.as_ref() == CAMPAIGN_TRANSFER;
                let in_lease = self.check_quorum
                    && self.leader_id != NONE
                    && self.election_elapsed < self.election_timeout;
                if !force && in_lease {
                    // We heard from a leader within the minimum election timeout: ignore
                    // the request without raising our term (Raft thesis §4.2.3).
                    return Ok(());
                }
            }
            match m.msg_type {
                // Never change our term in response to a pre-vote.
                MessageType::RequestPreVote => {}
                // A granted pre-vote carries a future term; we adopt it only after winning.
                MessageType::RequestPreVoteResponse if !m.reject => {}
                MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                    self.become_follower(m.term, m.from);
                }
                _ => self.become_follower(m.term, NONE),
            }
        } else if m.term < self.term {
            if (self.check_quorum || self.pre_vote)
                && matches!(m.msg_type, MessageType::Heartbeat | MessageType::Append)
            {
                // A stale leader (e.g. one that was partitioned) learns the new term from
                // this response and steps down; otherwise, with check-quorum or pre-vote,
                // it could keep a higher-term node from ever hearing about it.
                self.send(Message {
                    msg_type: MessageType::AppendResponse,
                    to: m.from,
                    ..Default::default()
                });
            } else if m.msg_type == MessageType::RequestPreVote {
                // Reject with our term so the pre-candidate learns it is behind.
                let term = self.term;
                self.send(Message {
                    msg_type: MessageType::RequestPreVoteResponse,
                    to: m.from,
                    term,
                    reject: true,
                    ..Default::default()
                });
            }
            return Ok(());
        }

        match m.msg_type {
            MessageType::Hup => {
                let t = if self.pre_vote {
                    CampaignType::PreElection
                } else {
                    CampaignType::Election
                };
                self.hup(t);
                Ok(())
            }
            MessageType::RequestVote | MessageType::RequestPreVote => {
                self.handle_vote_request(m);
                Ok(())
            }
            _ => match self.state {
                StateRole::Leader => self.step_leader(m),
                StateRole::Candidate | StateRole::PreCandidate => self.step_candidate(m),
                StateRole::Follower => self.step_follower(m),
            },
        }
    }

    fn handle_vote_request(&mut self, m: Message) {
        // We can vote for m.from if we already did this term, or if we have not voted and
        // know no leader, or (pre-vote) if the request is for a later term.
        let can_vote = self.vote == m.from
            || (self.vote == NONE && self.leader_id == NONE)
            || (m.msg_type == MessageType::RequestPreVote && m.term > self.term);
        let up_to_date =
            self.faults.vote_without_log_check || self.raft_log.is_up_to_date(m.index, m.log_term);
        let resp_type = m.msg_type.vote_response();
        // Every answer tells the candidate what we know is committed (see `learn_commit`).
        let commit = self.raft_log.committed;
        let commit_term = self.raft_log.term_or_zero(commit);
        if can_vote && up_to_date {
            // The response carries the requested term: for a pre-vote that is a term we
            // are not in yet, and the pre-candidate recognises its own answer by it.
            self.send(Message {
                msg_type: resp_type,
                to: m.from,
                term: m.term,
                commit,
                log_term: commit_term,
                ..Default::default()
            });
            if m.msg_type == MessageType::RequestVote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            let term = self.term;
            self.send(Message {
                msg_type: resp_type,
                to: m.from,
                term,
                reject: true,
                commit,
                log_term: commit_term,
                ..Default::default()
            });
        }
    }

    /// A candidate learns the commit index from a vote response when its own log holds the
    /// same term at that index: by Log Matching the two logs are identical up to there, so
    /// those entries are committed in ours too.
    ///
    /// Without this an election can deadlock. Configurations take effect when applied, so
    /// when a leader applies its own removal and steps down before the remaining voters
    /// learn that the change committed, they campaign under the old configuration, and the
    /// removed member, whose log is longer, refuses them forever.
    fn learn_commit(&mut self, m: &Message) {
        if m.commit > self.raft_log.committed && self.raft_log.match_term(m.commit, m.log_term) {
            self.raft_log.commit_to(m.commit);
        }
    }

    fn step_leader(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::Beat => {
                self.bcast_heartbeat();
                return Ok(());
            }
            MessageType::CheckQuorum => {
                if !self.prs.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, NONE);
                }
                // Everyone but us must prove they are alive again before the next round.
                let id = self.id;
                for (&pid, pr) in self.prs.progress.iter_mut() {
                    if pid != id {
                        pr.recent_active = false;
                    }
                }
                return Ok(());
            }
            MessageType::Propose => {
                assert!(!m.entries.is_empty(), "stepped empty proposal");
                if self.prs.get(self.id).is_none() {
                    // Removed from the configuration while still leading: drop, the
                    // proposal could never commit through us.
                    return Err(Error::ProposalDropped(DropReason::NotInConfiguration));
                }
                if self.lead_transferee != NONE {
                    return Err(Error::ProposalDropped(DropReason::TransferInProgress));
                }
                let last = self.raft_log.last_index();
                for (i, e) in m.entries.iter_mut().enumerate() {
                    if e.entry_type == EntryType::Normal {
                        continue;
                    }
                    let cc = match e.entry_type {
                        EntryType::ConfChange => {
                            ConfChange::decode(&e.data).map(ConfChangeV2::from)
                        }
                        _ => ConfChangeV2::decode(&e.data),
                    };
                    let refused = match cc {
                        Err(_) => true,
                        Ok(cc) => {
                            let already_pending = self.pending_conf_index > self.raft_log.applied;
                            let already_joint = self.prs.config.voters.is_joint();
                            let wants_leave = cc.leaves_joint();
                            already_pending || already_joint != wants_leave
                        }
                    };
                    if refused {
                        // Keep the slot but make it a no-op, so indexes stay as proposed.
                        *e = Entry::default();
                    } else {
                        self.pending_conf_index = last + i as u64 + 1;
                    }
                }
                if !self.append_entry(m.entries) {
                    return Err(Error::ProposalDropped(DropReason::UncommittedSizeExceeded));
                }
                self.bcast_append();
                return Ok(());
            }
            MessageType::ReadIndex => {
                if self.prs.is_singleton() {
                    let committed = self.raft_log.committed;
                    let resp = self.response_to_read_index_req(m, committed);
                    if resp.to != NONE {
                        self.send(resp);
                    }
                    return Ok(());
                }
                // A new leader does not know the commit index until it has committed an
                // entry of its own term; reads wait for that.
                if !self.committed_entry_in_current_term() {
                    self.pending_read_index_messages.push(m);
                    return Ok(());
                }
                self.send_read_index_response(m);
                return Ok(());
            }
            _ => {}
        }

        let from = m.from;
        if self.prs.get(from).is_none() {
            return Ok(());
        }
        match m.msg_type {
            MessageType::AppendResponse => self.handle_append_response(m),
            MessageType::HeartbeatResponse => self.handle_heartbeat_response(m),
            MessageType::SnapStatus => {
                let pr = self.prs.get_mut(from).expect("checked");
                if pr.state != ProgressState::Snapshot {
                    return Ok(());
                }
                if m.reject {
                    // The snapshot did not get there: forget it and probe from scratch.
                    pr.pending_snapshot = 0;
                }
                pr.become_probe();
                // Wait for the follower's response (or a heartbeat response) before the
                // next append, so we do not flood a follower still installing it.
                pr.probe_sent = true;
            }
            MessageType::Unreachable => {
                // A dropped append in the replicate state likely lost messages: go back to
                // probing.
                let pr = self.prs.get_mut(from).expect("checked");
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
            }
            MessageType::TransferLeader => {
                let transferee = from;
                if self.prs.get(transferee).expect("checked").is_learner {
                    return Ok(());
                }
                if self.lead_transferee != NONE {
                    if self.lead_transferee == transferee {
                        return Ok(());
                    }
                    self.abort_leader_transfer();
                }
                if transferee == self.id {
                    return Ok(());
                }
                // The transfer must finish within an election timeout.
                self.election_elapsed = 0;
                self.lead_transferee = transferee;
                let matched = self.prs.get(transferee).expect("checked").matched;
                if matched == self.raft_log.last_index() {
                    self.send_timeout_now(transferee);
                } else {
                    self.send_append(transferee);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_response(&mut self, m: Message) {
        let from = m.from;
        let pr = self.prs.get_mut(from).expect("checked by caller");
        pr.recent_active = true;
        if m.reject {
            let mut next_probe = m.reject_hint;
            if m.log_term > 0 {
                // The follower told us the term at its hint: skip every entry of ours with
                // a larger term, since none of them can match.
                next_probe = self
                    .raft_log
                    .find_conflict_by_term(m.reject_hint, m.log_term)
                    .0;
            }
            let pr = self.prs.get_mut(from).expect("checked");
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        let old_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr.matched + 1 >= self.raft_log.first_index() {
                    // The follower caught up through the snapshot (or otherwise): resume.
                    pr.become_probe();
                    pr.become_replicate();
                }
            }
            ProgressState::Replicate => pr.inflights.free_le(m.index),
        }
        if self.maybe_commit() {
            self.release_pending_read_index_messages();
            self.bcast_append();
        } else if old_paused {
            self.send_append(from);
        }
        // Fill the window while there is more to send.
        while self.maybe_send_append(from, false) {}
        let matched = self.prs.get(from).map_or(0, |p| p.matched);
        if from == self.lead_transferee && matched == self.raft_log.last_index() {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: Message) {
        let from = m.from;
        let pr = self.prs.get_mut(from).expect("checked by caller");
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        if pr.matched < self.raft_log.last_index() {
            self.send_append(from);
        }
        if self.read_only_option != ReadOnlyOption::Safe || m.context.is_empty() {
            return;
        }
        let Some(acks) = self.read_only.recv_ack(from, &m.context) else {
            return;
        };
        let won = self
            .prs
            .config
            .voters
            .vote_result(|id| acks.contains(&id).then_some(true));
        if won != VoteResult::Won {
            return;
        }
        for rs in self.read_only.advance(&m.context) {
            let resp = self.response_to_read_index_req(rs.req, rs.index);
            if resp.to != NONE {
                self.send(resp);
            }
        }
    }

    fn committed_entry_in_current_term(&self) -> bool {
        self.raft_log.term_or_zero(self.raft_log.committed) == self.term
    }

    fn release_pending_read_index_messages(&mut self) {
        if self.pending_read_index_messages.is_empty() || !self.committed_entry_in_current_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_read_index_messages) {
            self.send_read_index_response(m);
        }
    }

    fn send_read_index_response(&mut self, m: Message) {
        let committed = self.raft_log.committed;
        match self.read_only_option {
            ReadOnlyOption::Safe => {
                let ctx = m.entries[0].data.clone();
                self.read_only.add_request(committed, m);
                // The leader acknowledges its own heartbeat.
                let id = self.id;
                self.read_only.recv_ack(id, &ctx);
                self.bcast_heartbeat_with_ctx(ctx);
            }
            ReadOnlyOption::LeaseBased => {
                let resp = self.response_to_read_index_req(m, committed);
                if resp.to != NONE {
                    self.send(resp);
                }
            }
        }
    }

    /// Answers a read request: locally as a read state, or to the follower that asked.
    /// Returns a message with `to == NONE` when there is nothing to send.
    fn response_to_read_index_req(&mut self, req: Message, read_index: u64) -> Message {
        let ctx = req
            .entries
            .first()
            .map(|e| e.data.clone())
            .unwrap_or_default();
        if req.from == NONE || req.from == self.id {
            self.read_states.push(ReadState {
                index: read_index,
                request_ctx: ctx,
            });
            return Message::default();
        }
        Message {
            msg_type: MessageType::ReadIndexResponse,
            to: req.from,
            index: read_index,
            entries: req.entries,
            ..Default::default()
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<()> {
        let my_response = if self.state == StateRole::PreCandidate {
            MessageType::RequestPreVoteResponse
        } else {
            MessageType::RequestVoteResponse
        };
        match m.msg_type {
            MessageType::Propose => return Err(Error::ProposalDropped(DropReason::Campaigning)),
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            t if t == my_response => {
                self.learn_commit(&m);
                self.tally_response(m.from, t, !m.reject);
            }
            _ => {}
        }
        Ok(())
    }

    fn tally_response(&mut self, from: NodeId, t: MessageType, granted: bool) {
        match self.poll(from, t, granted) {
            VoteResult::Won if !self.promotable() => {
                // A configuration change applied during the campaign (its commit learned
                // from a vote response) removed or demoted us: we must not lead.
                let term = self.term;
                self.become_follower(term, NONE);
            }
            VoteResult::Won => {
                if self.state == StateRole::PreCandidate {
                    self.campaign(CampaignType::Election);
                } else {
                    self.become_leader();
                    self.bcast_append();
                }
            }
            VoteResult::Lost => {
                // A pre-candidate's rejection with a higher term was handled above; at
                // our own term, go back to following and wait.
                let term = self.term;
                self.become_follower(term, NONE);
            }
            VoteResult::Pending => {}
        }
    }

    fn step_follower(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::Propose => {
                if self.leader_id == NONE {
                    return Err(Error::ProposalDropped(DropReason::NoLeader));
                }
                if self.disable_proposal_forwarding {
                    return Err(Error::ProposalDropped(DropReason::ForwardingDisabled));
                }
                m.to = self.leader_id;
                self.send(m);
            }
            MessageType::Append => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append_entries(m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
            }
            MessageType::TransferLeader => {
                if self.leader_id == NONE {
                    return Err(Error::ProposalDropped(DropReason::NoLeader));
                }
                m.to = self.leader_id;
                self.send(m);
            }
            MessageType::TimeoutNow => {
                // Leadership transfers never use pre-vote: the leader asked for it.
                self.hup(CampaignType::Transfer);
            }
            MessageType::ReadIndex => {
                if self.leader_id == NONE {
                    return Err(Error::ProposalDropped(DropReason::NoLeader));
                }
                m.to = self.leader_id;
                self.send(m);
            }
            MessageType::ReadIndexResponse => {
                if m.entries.len() != 1 {
                    return Ok(());
                }
                self.read_states.push(ReadState {
                    index: m.index,
                    request_ctx: m.entries[0].data.clone(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_entries(&mut self, m: Message) {
        if m.index < self.raft_log.committed {
            let committed = self.raft_log.committed;
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: committed,
                ..Default::default()
            });
            return;
        }
        if let Some(last_new) = self
            .raft_log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: last_new,
                ..Default::default()
            });
            return;
        }
        // Our log does not match at m.index: hint the largest index at or before it whose
        // term is at most the leader's term there, so the leader can skip whole terms.
        let hint = m.index.min(self.raft_log.last_index());
        let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint, m.log_term);
        self.send(Message {
            msg_type: MessageType::AppendResponse,
            to: m.from,
            index: m.index,
            reject: true,
            reject_hint: hint_index,
            log_term: hint_term,
            ..Default::default()
        });
    }

    fn handle_heartbeat(&mut self, m: Message) {
        self.raft_log.commit_to(m.commit);
        self.send(Message {
            msg_type: MessageType::HeartbeatResponse,
            to: m.from,
            context: m.context,
            ..Default::default()
        });
    }

    fn handle_snapshot(&mut self, m: Message) {
        let snap = m.snapshot.expect("snapshot message carries a snapshot");
        let index = if self.restore(snap) {
            self.raft_log.last_index()
        } else {
            self.raft_log.committed
        };
        self.send(Message {
            msg_type: MessageType::AppendResponse,
            to: m.from,
            index,
            ..Default::default()
        });
    }

    /// Installs a snapshot from the leader. Returns false if it is stale or not needed.
    pub fn restore(&mut self, snap: Snapshot) -> bool {
        let meta = &snap.metadata;
        if meta.index <= self.raft_log.committed {
            return false;
        }
        if self.state != StateRole::Follower {
            // Only a follower is sent snapshots; anything else is a bug elsewhere, so be
            // defensive and refuse it.
            let term = self.term + 1;
            self.become_follower(term, NONE);
            return false;
        }
        let cs = &meta.conf_state;
        let in_config = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&id| id == self.id);
        if !in_config {
            return false;
        }
        if self.raft_log.match_term(meta.index, meta.term) {
            // We already have everything the snapshot covers: just fast-forward the commit.
            self.raft_log.commit_to(meta.index);
            return false;
        }
        let cs = cs.clone();
        self.raft_log.restore(snap);
        let mut prs = ProgressTracker::new(self.prs.max_inflight);
        let last = self.raft_log.last_index();
        confchange::restore(&mut prs, last, &cs).expect("snapshot conf state is valid");
        assert_eq!(
            prs.conf_state(),
            cs,
            "snapshot configuration did not restore exactly"
        );
        self.prs = prs;
        let id = self.id;
        let pr = self.prs.get_mut(id).expect("checked membership above");
        let next = pr.next_idx;
        pr.maybe_update(next - 1);
        self.is_learner = pr.is_learner;
        true
    }

    // ---- configuration ----------------------------------------------------------------

    /// Applies a committed configuration change and returns the resulting configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        let changer = Changer {
            tracker: &self.prs,
            last_index: self.raft_log.last_index(),
        };
        let next = if cc.leaves_joint() {
            changer.leave_joint()?
        } else if let Some(auto_leave) = cc.enter_joint() {
            changer.enter_joint(auto_leave, &cc.changes)?
        } else {
            changer.simple(&cc.changes)?
        };
        Ok(self.switch_to_config(next))
    }

    fn switch_to_config(&mut self, (cfg, prs): (TrackerConfig, ProgressMap)) -> ConfState {
        self.prs.config = cfg;
        self.prs.progress = prs;
        let cs = self.prs.conf_state();
        let me = self.prs.get(self.id).map(|p| p.is_learner);
        self.is_learner = me == Some(true);
        if (me.is_none() || self.is_learner) && self.state == StateRole::Leader {
            // A leader removed or demoted by the change steps down; the rest of the
            // configuration elects a new leader among themselves.
            let term = self.term;
            self.become_follower(term, NONE);
            return cs;
        }
        if self.state != StateRole::Leader || cs.voters.is_empty() {
            return cs;
        }
        if self.maybe_commit() {
            // The change can make entries committed (e.g. a removed slow voter).
            self.release_pending_read_index_messages();
            self.bcast_append();
        } else {
            // Otherwise still probe any new member right away.
            for id in self.peers() {
                self.maybe_send_append(id, false);
            }
        }
        if self.lead_transferee != NONE && !self.prs.config.voters.contains(self.lead_transferee) {
            self.abort_leader_transfer();
        }
        cs
    }
}
