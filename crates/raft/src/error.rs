//! Errors the core returns to its host.

use thiserror::Error;

/// Why a proposal (or a forwarded request) was not accepted. The host maps these to
/// client errors: most become etcd's `etcdserver: too many requests` or `no leader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No leader is known to forward the proposal to.
    NoLeader,
    /// Proposal forwarding from followers is turned off.
    ForwardingDisabled,
    /// A leadership transfer is in progress; proposals wait for the new leader.
    TransferInProgress,
    /// Accepting the proposal would exceed `max_uncommitted_entries_size`.
    UncommittedSizeExceeded,
    /// This node is no longer a member of the configuration.
    NotInConfiguration,
    /// A pre-candidate or candidate has no leader to hand the proposal to.
    Campaigning,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    /// The requested index is older than the storage's first index.
    #[error("requested index is unavailable due to compaction")]
    Compacted,
    /// The requested index is newer than the storage's last index.
    #[error("requested entry at index is unavailable")]
    Unavailable,
    /// The snapshot is being produced; try again later.
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// A snapshot older than the current one was offered.
    #[error("requested index is older than the existing snapshot")]
    SnapshotOutOfDate,
    /// Anything else the storage hit. The core treats it as fatal.
    #[error("storage failure: {0}")]
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    #[error("raft proposal dropped: {0:?}")]
    ProposalDropped(DropReason),
    #[error("raft: cannot step raft local message {0:?}")]
    StepLocalMessage(crate::MessageType),
    #[error("raft: cannot step as peer {0} not found")]
    StepPeerNotFound(u64),
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(String),
    #[error("malformed encoding: {0}")]
    Decode(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T> = std::result::Result<T, Error>;
