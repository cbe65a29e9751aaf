//! Configuration of one Raft node. Every limit has etcd's default.

use crate::NodeId;
use crate::error::{Error, Result};

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// The leader confirms it is still leader with a round of heartbeats acknowledged by a
    /// quorum before answering (etcd's `ReadOnlySafe`). Safe whatever the clocks do.
    #[default]
    Safe,
    /// The leader answers from its lease: it trusts that no other leader can exist within
    /// an election timeout of its last quorum contact. Requires `check_quorum`, and is only
    /// as safe as the clocks' drift is small.
    LeaseBased,
}

/// Deliberate safety bugs, only for proving that the simulation harness catches them.
/// Never set outside tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Commit an entry of an earlier term by counting replicas (the Raft paper's figure 8).
    pub commit_old_term_by_counting: bool,
    /// Grant votes without checking that the candidate's log is at least as up to date.
    pub vote_without_log_check: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// Ticks a follower waits without hearing from a leader before campaigning. The actual
    /// timeout is randomized in `[election_tick, 2 * election_tick)`.
    pub election_tick: u64,
    /// Ticks between a leader's heartbeats. Must be less than `election_tick`.
    pub heartbeat_tick: u64,
    /// The last applied index, when restarting: committed entries up to it are not
    /// returned again.
    pub applied: u64,
    /// Largest total payload of entries in one append message (at least one entry is
    /// always sent). etcd's default: 1 MiB.
    pub max_size_per_msg: u64,
    /// Largest total payload of committed entries in one `Ready`; 0 means `max_size_per_msg`.
    pub max_committed_size_per_ready: u64,
    /// Largest total payload of entries appended by the leader but not yet committed; a
    /// proposal over it is refused. 0 means unlimited.
    pub max_uncommitted_entries_size: u64,
    /// Append messages in flight to one follower in the replicate state. etcd's default: 256.
    pub max_inflight_msgs: usize,
    /// The leader steps down when it has not heard from a quorum for an election timeout,
    /// and followers ignore vote requests while they have a live leader.
    pub check_quorum: bool,
    /// Candidates first ask whether they could win (without raising their term), so a
    /// partitioned node that rejoins does not disrupt the cluster.
    pub pre_vote: bool,
    pub read_only_option: ReadOnlyOption,
    /// Followers refuse proposals instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// Seed for the election-timeout jitter. Hosts give each node a different seed.
    pub seed: u64,
    #[doc(hidden)]
    pub injected_faults: InjectedFaults,
}

impl Config {
    /// etcd's defaults for a node with this id: election 10 ticks, heartbeat 1 tick,
    /// 1 MiB messages, 256 inflight messages, 1 GiB of uncommitted entries, pre-vote and
    /// check-quorum on (as etcd 3.5 servers run).
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: 0,
            max_size_per_msg: 1024 * 1024,
            max_committed_size_per_ready: 0,
            max_uncommitted_entries_size: 1 << 30,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            disable_proposal_forwarding: false,
            seed: id,
            injected_faults: InjectedFaults::default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.to_string()));
        if self.id == crate::NONE {
            return bad("cannot use none as id");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat tick must be greater than 0");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad("election tick must be greater than heartbeat tick");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max inflight messages must be greater than 0");
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return bad("check_quorum must be enabled when read_only_option is LeaseBased");
        }
        Ok(())
    }

    pub(crate) fn uncommitted_limit(&self) -> u64 {
        if self.max_uncommitted_entries_size == 0 {
            u64::MAX
        } else {
            self.max_uncommitted_entries_size
        }
    }

    pub(crate) fn committed_limit(&self) -> u64 {
        if self.max_committed_size_per_ready == 0 {
            self.max_size_per_msg
        } else {
            self.max_committed_size_per_ready
        }
    }
}
