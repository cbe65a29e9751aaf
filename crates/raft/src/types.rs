//! The values that cross the core's boundary: log entries, hard state, snapshots,
//! configuration changes and messages. They mirror etcd's `raftpb` so that the rest of
//! retcd (WAL, transport, dump tool) speaks the same nouns as etcd's operators.
//!
//! Terms and indexes are plain `u64`, as in etcd-io/raft: they appear in almost every
//! expression of the algorithm and a newtype would add noise without catching the mix-ups
//! that matter (those are caught by the invariant assertions instead).

use bytes::Bytes;

/// Identifies a member. 0 means "none" (no vote, no leader), as in etcd.
pub type NodeId = u64;

/// The id meaning "nobody".
pub const NONE: NodeId = 0;

/// What an entry's `data` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EntryType {
    /// An application command (or empty: the leader's no-op at the start of its term).
    #[default]
    Normal,
    /// A single-step configuration change (etcd's `ConfChange`), encoded by [`ConfChange::encode`].
    ConfChange,
    /// A possibly joint configuration change (etcd's `ConfChangeV2`), encoded by
    /// [`ConfChangeV2::encode`].
    ConfChangeV2,
}

impl EntryType {
    /// Stable numeric code, used by on-disk and wire encodings (etcd's values).
    pub fn code(self) -> u8 {
        match self {
            EntryType::Normal => 0,
            EntryType::ConfChange => 1,
            EntryType::ConfChangeV2 => 2,
        }
    }

    /// Inverse of [`EntryType::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(EntryType::Normal),
            1 => Some(EntryType::ConfChange),
            2 => Some(EntryType::ConfChangeV2),
            _ => None,
        }
    }
}

/// One record of the replicated log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub entry_type: EntryType,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in size limits (`max_size_per_msg`,
    /// `max_uncommitted_entries_size`): its payload, as etcd counts it.
    pub fn payload_size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// The state a node must persist before it sends any message that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: u64,
    /// Who this node voted for in `term` (or [`NONE`]).
    pub vote: NodeId,
    pub commit: u64,
}

impl HardState {
    pub fn is_empty(&self) -> bool {
        *self == HardState::default()
    }
}

/// The membership a snapshot (or the applied log) describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Voters of the outgoing configuration; non-empty only while joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Learners that become learners when the joint configuration is left; they are still
    /// voters in the outgoing configuration until then.
    pub learners_next: Vec<NodeId>,
    /// Whether the joint configuration is left automatically once committed.
    pub auto_leave: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMetadata {
    pub conf_state: ConfState,
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

/// A point-in-time image of the state machine plus the log position it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub data: Bytes,
    pub metadata: SnapshotMetadata,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeType {
    AddNode,
    RemoveNode,
    /// Changes nothing Raft tracks (etcd uses it to change a member's peer URLs).
    UpdateNode,
    AddLearnerNode,
}

impl ConfChangeType {
    pub fn code(self) -> u8 {
        match self {
            ConfChangeType::AddNode => 0,
            ConfChangeType::RemoveNode => 1,
            ConfChangeType::UpdateNode => 2,
            ConfChangeType::AddLearnerNode => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ConfChangeType::AddNode),
            1 => Some(ConfChangeType::RemoveNode),
            2 => Some(ConfChangeType::UpdateNode),
            3 => Some(ConfChangeType::AddLearnerNode),
            _ => None,
        }
    }
}

/// One membership edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfChangeSingle {
    pub change_type: ConfChangeType,
    pub node_id: NodeId,
}

/// A single-step membership change (etcd's v1 `ConfChange`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub id: u64,
    pub change_type: ConfChangeType,
    pub node_id: NodeId,
    /// Opaque to Raft; etcd puts the member's attributes here.
    pub context: Bytes,
}

/// How a [`ConfChangeV2`] moves between configurations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConfChangeTransition {
    /// A single change that touches at most one voter is applied directly; anything else
    /// goes through a joint configuration that is left automatically.
    #[default]
    Auto,
    /// Always joint, left automatically once the entering change is committed.
    JointImplicit,
    /// Always joint, left only by an explicit empty `ConfChangeV2`.
    JointExplicit,
}

impl ConfChangeTransition {
    pub fn code(self) -> u8 {
        match self {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::JointImplicit => 1,
            ConfChangeTransition::JointExplicit => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ConfChangeTransition::Auto),
            1 => Some(ConfChangeTransition::JointImplicit),
            2 => Some(ConfChangeTransition::JointExplicit),
            _ => None,
        }
    }
}

/// A membership change that may touch several members at once (etcd's `ConfChangeV2`).
/// An empty `changes` list means "leave the joint configuration".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChangeV2 {
    pub transition: ConfChangeTransition,
    pub changes: Vec<ConfChangeSingle>,
    pub context: Bytes,
}

impl ConfChangeV2 {
    /// Whether this change asks to leave a joint configuration.
    pub fn leaves_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether applying this change enters a joint configuration, and if so whether it
    /// is left automatically.
    pub fn enter_joint(&self) -> Option<bool> {
        if self.changes.is_empty() {
            return None;
        }
        let needs_joint = self.transition != ConfChangeTransition::Auto || self.changes.len() > 1;
        if !needs_joint {
            return None;
        }
        Some(self.transition != ConfChangeTransition::JointExplicit)
    }
}

impl From<ConfChange> for ConfChangeV2 {
    fn from(cc: ConfChange) -> Self {
        ConfChangeV2 {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle {
                change_type: cc.change_type,
                node_id: cc.node_id,
            }],
            context: cc.context,
        }
    }
}

/// Kinds of messages, named as in etcd's raftpb. The "local" ones (`Hup`, `Beat`,
/// `Unreachable`, `SnapStatus`, `CheckQuorum`) are never sent over the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    #[default]
    Hup,
    Beat,
    Propose,
    Append,
    AppendResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    Heartbeat,
    HeartbeatResponse,
    Unreachable,
    SnapStatus,
    CheckQuorum,
    TransferLeader,
    TimeoutNow,
    ReadIndex,
    ReadIndexResponse,
    RequestPreVote,
    RequestPreVoteResponse,
}

impl MessageType {
    const ALL: [MessageType; 19] = [
        MessageType::Hup,
        MessageType::Beat,
        MessageType::Propose,
        MessageType::Append,
        MessageType::AppendResponse,
        MessageType::RequestVote,
        MessageType::RequestVoteResponse,
        MessageType::Snapshot,
        MessageType::Heartbeat,
        MessageType::HeartbeatResponse,
        MessageType::Unreachable,
        MessageType::SnapStatus,
        MessageType::CheckQuorum,
        MessageType::TransferLeader,
        MessageType::TimeoutNow,
        MessageType::ReadIndex,
        MessageType::ReadIndexResponse,
        MessageType::RequestPreVote,
        MessageType::RequestPreVoteResponse,
    ];

    /// etcd's numeric value for this message type.
    pub fn code(self) -> u8 {
        Self::ALL.iter().position(|t| *t == self).expect("listed") as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    /// Messages generated and consumed on the same node.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            MessageType::Hup
                | MessageType::Beat
                | MessageType::Unreachable
                | MessageType::SnapStatus
                | MessageType::CheckQuorum
        )
    }

    /// Responses to requests: a node that receives one from a higher term may have to
    /// step down, but it never grants anything because of it.
    pub fn is_response(self) -> bool {
        matches!(
            self,
            MessageType::AppendResponse
                | MessageType::RequestVoteResponse
                | MessageType::HeartbeatResponse
                | MessageType::Unreachable
                | MessageType::RequestPreVoteResponse
        )
    }

    /// The response type that answers a vote request of this type.
    pub fn vote_response(self) -> MessageType {
        match self {
            MessageType::RequestVote => MessageType::RequestVoteResponse,
            MessageType::RequestPreVote => MessageType::RequestPreVoteResponse,
            other => panic!("{other:?} is not a vote request"),
        }
    }
}

/// A message between Raft nodes (or from the host to its own node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub msg_type: MessageType,
    pub to: NodeId,
    pub from: NodeId,
    pub term: u64,
    /// For `Append`: the term of the entry just before `entries`. For votes: the
    /// candidate's last log term.
    pub log_term: u64,
    /// For `Append`: the index just before `entries`. For votes: the candidate's last
    /// index. For responses: the index acknowledged or rejected.
    pub index: u64,
    pub entries: Vec<Entry>,
    pub commit: u64,
    pub snapshot: Option<Snapshot>,
    pub reject: bool,
    /// On a rejected append: the follower's guess of where the leader should probe next.
    pub reject_hint: u64,
    /// ReadIndex request context, or the campaign type on vote messages.
    pub context: Bytes,
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateRole {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A linearizable read that is ready: once the node has applied up to `index`, a read
/// identified by `request_ctx` may be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub request_ctx: Bytes,
}

/// The volatile state that changes with leadership, reported to the host when it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftState {
    pub leader_id: NodeId,
    pub role: StateRole,
}
