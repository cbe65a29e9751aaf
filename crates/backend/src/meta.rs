//! Keys of the `meta` bucket and the consistent index.
//!
//! The apply layer writes [`ConsistentIndex`] in the same write transaction as the data of the
//! entries it applied. After a crash the backend holds either both or neither, so replay
//! can skip every entry with `index <= consistent_index.index` and stay idempotent.

use crate::{BackendError, Bucket, ReadTx, WriteTx};

/// `meta` key of the index of the last applied Raft entry (u64, big-endian).
pub const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
/// `meta` key of the term of the last applied Raft entry (u64, big-endian).
pub const TERM_KEY: &[u8] = b"term";
/// `meta` key of the revision of the last compaction requested (MVCC revision key encoding).
pub const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
/// `meta` key of the revision of the last compaction finished (MVCC revision key encoding).
pub const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";

/// Index and term of the last Raft entry whose effects are in the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsistentIndex {
    /// Raft log index.
    pub index: u64,
    /// Raft term of that entry.
    pub term: u64,
}

/// Reads the consistent index; a fresh backend has `{index: 0, term: 0}`.
pub fn read_consistent_index(tx: &(impl ReadTx + ?Sized)) -> Result<ConsistentIndex, BackendError> {
    Ok(ConsistentIndex {
        index: read_u64(tx, CONSISTENT_INDEX_KEY)?.unwrap_or(0),
        term: read_u64(tx, TERM_KEY)?.unwrap_or(0),
    })
}

/// Records `ci` in `tx`.
///
/// Panics if `ci` is older than the stored value: applying an entry twice, or out of order,
/// is a bug in the caller that must not reach the disk.
pub fn write_consistent_index(
    tx: &mut (impl WriteTx + ?Sized),
    ci: ConsistentIndex,
) -> Result<(), BackendError> {
    let old = read_consistent_index(tx)?;
    // Invariant: the consistent index and its term never decrease.
    assert!(
        ci.index >= old.index && ci.term >= old.term,
        "consistent index went backwards: stored {old:?}, new {ci:?}"
    );
    tx.put(Bucket::Meta, CONSISTENT_INDEX_KEY, &ci.index.to_be_bytes())?;
    tx.put(Bucket::Meta, TERM_KEY, &ci.term.to_be_bytes())
}

/// Reads a big-endian u64 from the `meta` bucket.
pub fn read_u64(tx: &(impl ReadTx + ?Sized), key: &[u8]) -> Result<Option<u64>, BackendError> {
    match tx.get(Bucket::Meta, key)? {
        None => Ok(None),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                BackendError::Corrupted(format!(
                    "meta key {:?} holds {} bytes, want 8",
                    String::from_utf8_lossy(key),
                    bytes.len()
                ))
            })?;
            Ok(Some(u64::from_be_bytes(array)))
        }
    }
}
