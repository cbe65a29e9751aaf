//! MVCC errors.

use retcd_backend::BackendError;

/// Errors of the MVCC store.
///
/// [`MvccError::Compacted`] and [`MvccError::FutureRevision`] are deterministic answers to a
/// request and go back to the client. The others mean the node must stop applying.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision is below the compaction revision.
    #[error(
        "mvcc: required revision has been compacted (requested {requested}, compacted at {compact_revision})"
    )]
    Compacted {
        /// Revision asked for.
        requested: i64,
        /// The store's compaction revision.
        compact_revision: i64,
    },
    /// The requested revision is above the current revision.
    #[error(
        "mvcc: required revision is a future revision (requested {requested}, current {current_revision})"
    )]
    FutureRevision {
        /// Revision asked for.
        requested: i64,
        /// The store's current revision.
        current_revision: i64,
    },
    /// Stored data contradicts itself or cannot be decoded.
    #[error("mvcc: stored data is corrupted: {0}")]
    Corrupted(String),
    /// A write batch failed part-way or was dropped after changing the index: no more writes
    /// are accepted until the store is reopened from the backend.
    #[error("mvcc: an earlier write batch failed; the store must be reopened")]
    Poisoned,
    /// A write reached a transaction opened for reading only (a read-only txn served
    /// outside Raft): a bug in the caller's read-only check, answered as an error rather
    /// than a panic.
    #[error("mvcc: a write reached a read-only transaction")]
    ReadOnly,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
