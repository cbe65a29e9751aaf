//! The stable log as the core sees it, and an in-memory implementation.
//!
//! The host owns durability: it writes what `Ready` hands it to its WAL and then into a
//! `Storage` (retcd keeps a [`MemStorage`] in front of its WAL, as etcd does). The core only
//! reads from it.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// What a node restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Read access to the persisted log.
///
/// Invariant: the entries in `[first_index, last_index]` are contiguous, and
/// `term(first_index - 1)` is available (the entry the latest snapshot ends at).
pub trait Storage {
    fn initial_state(&self) -> StorageResult<RaftState>;
    /// Entries in `[lo, hi)`, their total payload capped at `max_size` (at least one entry
    /// is returned when the range is non-empty).
    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> StorageResult<Vec<Entry>>;
    /// The term of the entry at `index`, for `index` in `[first_index - 1, last_index]`.
    fn term(&self, index: u64) -> StorageResult<u64>;
    fn first_index(&self) -> StorageResult<u64>;
    fn last_index(&self) -> StorageResult<u64>;
    /// The most recent snapshot. `request_index` lets a storage that produces snapshots
    /// lazily know which index the leader needs at least.
    ///
    /// The snapshot's `ConfState` must include every member the leader replicates to, so it
    /// must be taken at or after the last applied configuration change: a member refuses a
    /// snapshot of a configuration it is not part of, and would keep refusing it.
    fn snapshot(&self, request_index: u64) -> StorageResult<Snapshot>;
}

/// Keeps the entries whose total payload stays within `max_size`, but always the first.
pub(crate) fn limit_size(entries: &mut Vec<Entry>, max_size: u64) {
    if entries.len() <= 1 {
        return;
    }
    let mut size = 0u64;
    let keep = entries
        .iter()
        .take_while(|e| {
            size = size.saturating_add(e.payload_size());
            size <= max_size
        })
        .count()
        .max(1);
    entries.truncate(keep);
}

#[derive(Debug, Default)]
struct MemStorageCore {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0]` is a placeholder standing for the snapshot's last entry (its index and
    /// term only); real entries follow it.
    entries: Vec<Entry>,
}

impl MemStorageCore {
    fn offset(&self) -> u64 {
        self.entries[0].index
    }

    fn last_index(&self) -> u64 {
        self.offset() + self.entries.len() as u64 - 1
    }
}

/// An in-memory [`Storage`], shareable between the host (which writes) and the core (which
/// reads). Cloning gives another handle to the same log.
#[derive(Clone, Debug)]
pub struct MemStorage {
    core: Arc<RwLock<MemStorageCore>>,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStorage {
    pub fn new() -> Self {
        MemStorage {
            core: Arc::new(RwLock::new(MemStorageCore {
                entries: vec![Entry::default()],
                ..Default::default()
            })),
        }
    }

    /// A storage for a brand-new cluster member whose initial configuration is `conf_state`
    /// (recorded as if in a snapshot at index 0).
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        let s = Self::new();
        s.wl().snapshot.metadata.conf_state = conf_state;
        s
    }

    fn rl(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        self.core.read().expect("MemStorage lock poisoned")
    }

    fn wl(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.core.write().expect("MemStorage lock poisoned")
    }

    pub fn hard_state(&self) -> HardState {
        self.rl().hard_state
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.wl().hard_state = hs;
    }

    /// Replaces the conf state recorded with the current snapshot.
    pub fn set_conf_state(&self, cs: ConfState) {
        self.wl().snapshot.metadata.conf_state = cs;
    }

    /// Replaces the whole log with `snapshot`.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> StorageResult<()> {
        let mut core = self.wl();
        if snapshot.metadata.index <= core.snapshot.metadata.index && !core.snapshot.is_empty() {
            return Err(StorageError::SnapshotOutOfDate);
        }
        let meta = &snapshot.metadata;
        core.entries = vec![Entry {
            term: meta.term,
            index: meta.index,
            ..Default::default()
        }];
        if core.hard_state.commit < meta.index {
            core.hard_state.commit = meta.index;
        }
        if core.hard_state.term < meta.term {
            core.hard_state.term = meta.term;
        }
        core.snapshot = snapshot;
        Ok(())
    }

    /// Makes a snapshot at `index` (which must be applied, so within the log) holding `data`.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
        data: bytes::Bytes,
    ) -> StorageResult<Snapshot> {
        let mut core = self.wl();
        if index <= core.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        let last = core.last_index();
        assert!(
            index <= last,
            "snapshot index {index} is beyond the last index {last}"
        );
        let term = core.entries[(index - core.offset()) as usize].term;
        let conf_state = conf_state.unwrap_or_else(|| core.snapshot.metadata.conf_state.clone());
        core.snapshot = Snapshot {
            data,
            metadata: SnapshotMetadata {
                conf_state,
                index,
                term,
            },
        };
        Ok(core.snapshot.clone())
    }

    /// Discards the entries before `compact_index`. The caller must not compact past what
    /// it has applied and snapshotted.
    pub fn compact(&self, compact_index: u64) -> StorageResult<()> {
        let mut core = self.wl();
        let offset = core.offset();
        if compact_index <= offset {
            return Err(StorageError::Compacted);
        }
        let last = core.last_index();
        assert!(
            compact_index <= last,
            "compact {compact_index} is beyond the last index {last}"
        );
        let i = (compact_index - offset) as usize;
        let term = core.entries[i].term;
        core.entries.drain(..i);
        core.entries[0] = Entry {
            term,
            index: compact_index,
            ..Default::default()
        };
        Ok(())
    }

    /// Appends (or overwrites from the first entry's index onward) `entries`.
    pub fn append(&self, entries: &[Entry]) -> StorageResult<()> {
        let Some(first_new) = entries.first() else {
            return Ok(());
        };
        let mut core = self.wl();
        let first = core.offset() + 1;
        let last_new = first_new.index + entries.len() as u64 - 1;
        if last_new < first {
            // Everything offered is already compacted away.
            return Ok(());
        }
        let entries = if first > first_new.index {
            &entries[(first - first_new.index) as usize..]
        } else {
            entries
        };
        let start = entries[0].index;
        let last = core.last_index();
        assert!(
            start <= last + 1,
            "missing log entries: last index {last}, appended at {start}"
        );
        let keep = (start - core.offset()) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> StorageResult<RaftState> {
        let core = self.rl();
        Ok(RaftState {
            hard_state: core.hard_state,
            conf_state: core.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> StorageResult<Vec<Entry>> {
        let core = self.rl();
        let offset = core.offset();
        if lo <= offset {
            return Err(StorageError::Compacted);
        }
        let last = core.last_index();
        if hi > last + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut ents = core.entries[(lo - offset) as usize..(hi - offset) as usize].to_vec();
        limit_size(&mut ents, max_size);
        Ok(ents)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        let core = self.rl();
        let offset = core.offset();
        if index < offset {
            return Err(StorageError::Compacted);
        }
        if index > core.last_index() {
            return Err(StorageError::Unavailable);
        }
        Ok(core.entries[(index - offset) as usize].term)
    }

    fn first_index(&self) -> StorageResult<u64> {
        Ok(self.rl().offset() + 1)
    }

    fn last_index(&self) -> StorageResult<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, _request_index: u64) -> StorageResult<Snapshot> {
        Ok(self.rl().snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn sized(index: u64, term: u64, size: usize) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(vec![0u8; size]),
            ..Default::default()
        }
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        s.append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.term(3), Err(StorageError::Unavailable));
    }

    #[test]
    fn compact_keeps_the_term_of_the_boundary_entry() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 2), ent(3, 3)]).unwrap();
        s.compact(2).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.entries(2, 3, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.compact(2), Err(StorageError::Compacted));
        // Appending entries that are all compacted is a no-op.
        s.append(&[ent(1, 1), ent(2, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
    }

    #[test]
    fn entries_respect_the_size_limit_but_return_at_least_one() {
        let s = MemStorage::new();
        s.append(&[sized(1, 1, 10), sized(2, 1, 10), sized(3, 1, 10)])
            .unwrap();
        assert_eq!(s.entries(1, 4, 5).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 20).unwrap().len(), 2);
        assert_eq!(s.entries(1, 4, u64::MAX).unwrap().len(), 3);
        assert_eq!(s.entries(1, 5, u64::MAX), Err(StorageError::Unavailable));
    }

    #[test]
    fn snapshot_replaces_the_log() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1)]).unwrap();
        let snap = Snapshot {
            data: Bytes::from_static(b"x"),
            metadata: SnapshotMetadata {
                index: 10,
                term: 3,
                ..Default::default()
            },
        };
        s.apply_snapshot(snap.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(10).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.apply_snapshot(snap), Err(StorageError::SnapshotOutOfDate));
        let made = s.create_snapshot(10, None, Bytes::new());
        assert_eq!(made, Err(StorageError::SnapshotOutOfDate));
    }
}
