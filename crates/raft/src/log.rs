//! The Raft log: the stable part (in `Storage`) followed by the unstable part (entries and
//! possibly a snapshot the host has not persisted yet).

use crate::error::StorageError;
use crate::storage::{Storage, StorageResult, limit_size};
use crate::types::{Entry, Snapshot};

/// Entries and a snapshot not yet handed to (or not yet confirmed persisted by) the host.
///
/// Invariant: if `snapshot` is set, `offset == snapshot.index + 1`; `entries[i].index ==
/// offset + i`.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub offset: u64,
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(|s| s.metadata.index),
        }
    }

    fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            let snap = self.snapshot.as_ref()?;
            return (snap.metadata.index == index).then_some(snap.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// The host has persisted entries up to `index` (whose term was `term`).
    fn stable_to(&mut self, index: u64, term: u64) {
        // Only entries still unstable with the same term are stable now: if the entry was
        // overwritten by a newer leader meanwhile, it must stay unstable.
        if self.maybe_term(index) != Some(term) || index < self.offset {
            return;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
    }

    fn stable_snap_to(&mut self, index: u64) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.snapshot = None;
        }
    }

    fn restore(&mut self, snap: Snapshot) {
        self.offset = snap.metadata.index + 1;
        self.entries.clear();
        self.snapshot = Some(snap);
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        if after == self.offset + self.entries.len() as u64 {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // Replaces everything unstable (and shadows stable entries at or after `after`).
            self.offset = after;
            self.entries = ents.to_vec();
        } else {
            let keep = (after - self.offset) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(ents);
        }
    }

    fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        assert!(
            lo >= self.offset && hi <= self.offset + self.entries.len() as u64 && lo <= hi,
            "invalid unstable slice [{lo}, {hi}) of [{}, {})",
            self.offset,
            self.offset + self.entries.len() as u64
        );
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}

pub struct RaftLog<S: Storage> {
    pub(crate) store: S,
    pub(crate) unstable: Unstable,
    /// Highest index known to be stored on a quorum.
    /// Invariant: applied <= committed <= last_index.
    pub committed: u64,
    /// Highest index the host has applied.
    pub applied: u64,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(store: S) -> StorageResult<Self> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        Ok(RaftLog {
            store,
            unstable: Unstable {
                offset: last + 1,
                ..Default::default()
            },
            committed: first - 1,
            applied: first - 1,
        })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            None => self
                .store
                .first_index()
                .expect("storage first_index failed"),
        }
    }

    pub fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.store.last_index().expect("storage last_index failed"),
        }
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index())
            .expect("term of the last index must be known")
    }

    /// The term at `index`, for `index` in `[first_index - 1, last_index]`.
    pub fn term(&self, index: u64) -> StorageResult<u64> {
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        match self.store.term(index) {
            Ok(t) => Ok(t),
            Err(e @ (StorageError::Compacted | StorageError::Unavailable)) => Err(e),
            Err(e) => panic!("unexpected storage error reading term {index}: {e}"),
        }
    }

    /// The term at `index`, or 0 when it is not (or no longer) in the log.
    pub fn term_or_zero(&self, index: u64) -> u64 {
        self.term(index).unwrap_or(0)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Whether a log ending at (`last_index`, `term`) is at least as up to date as ours
    /// (Raft §5.4.1: compare last terms, then lengths).
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let our_term = self.last_term();
        term > our_term || (term == our_term && last_index >= self.last_index())
    }

    /// Appends `ents` from a leader whose log matches ours at (`index`, `log_term`).
    /// Returns the index of the last new entry, or None when the logs do not match there.
    pub fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        ents: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(index, log_term) {
            return None;
        }
        let last_new = index + ents.len() as u64;
        let conflict = self.find_conflict(ents);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (committed {})",
                self.committed
            );
            let start = (conflict - (index + 1)) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    /// Appends entries at the end (truncating any conflicting suffix); returns the new last
    /// index.
    pub fn append(&mut self, ents: &[Entry]) -> u64 {
        if ents.is_empty() {
            return self.last_index();
        }
        let after = ents[0].index - 1;
        assert!(
            after >= self.committed,
            "appending after {after} would truncate committed entries (committed {})",
            self.committed
        );
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    /// The index of the first entry in `ents` that is not already in the log with the same
    /// term, or 0 if all are.
    fn find_conflict(&self, ents: &[Entry]) -> u64 {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, with that term. Used to skip a
    /// whole term's entries per rejection instead of one entry at a time.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index;
        loop {
            match self.term(i) {
                Ok(t) if t > term => i -= 1,
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    pub fn has_pending_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some()
    }

    /// Committed entries not yet applied, their payload capped at `max_size`. None while a
    /// snapshot waits to be applied: it must go first.
    pub fn next_committed_entries(&self, max_size: u64) -> Vec<Entry> {
        if self.has_pending_snapshot() {
            return Vec::new();
        }
        let lo = (self.applied + 1).max(self.first_index());
        let hi = self.committed + 1;
        if lo >= hi {
            return Vec::new();
        }
        self.slice(lo, hi, max_size)
            .expect("committed entries must be readable")
    }

    pub fn has_next_committed_entries(&self) -> bool {
        !self.has_pending_snapshot() && self.committed > self.applied.max(self.first_index() - 1)
    }

    pub fn snapshot(&self) -> StorageResult<Snapshot> {
        if let Some(s) = &self.unstable.snapshot {
            return Ok(s.clone());
        }
        self.store.snapshot(self.applied)
    }

    pub fn commit_to(&mut self, to: u64) {
        if to > self.committed {
            let last = self.last_index();
            assert!(
                to <= last,
                "commit index {to} is beyond the last index {last}"
            );
            self.committed = to;
        }
    }

    /// Commits up to `max_index` if that entry is from `term` (a leader only counts
    /// replicas of entries of its own term: Raft §5.4.2).
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term_or_zero(max_index) == term {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            index <= self.committed && index >= self.applied,
            "applied({index}) out of range [applied({}), committed({})]",
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    pub fn stable_to(&mut self, index: u64, term: u64) {
        self.unstable.stable_to(index, term);
    }

    pub fn stable_snap_to(&mut self, index: u64) {
        self.unstable.stable_snap_to(index);
    }

    /// Entries from `index` to the end, capped at `max_size`.
    pub fn entries(&self, index: u64, max_size: u64) -> StorageResult<Vec<Entry>> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_size)
    }

    /// Entries in `[lo, hi)` from storage and the unstable part.
    pub fn slice(&self, lo: u64, hi: u64, max_size: u64) -> StorageResult<Vec<Entry>> {
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted);
        }
        let last = self.last_index();
        assert!(
            lo <= hi && hi <= last + 1,
            "invalid slice [{lo}, {hi}) of log [{first}, {last}]"
        );
        if lo == hi {
            return Ok(Vec::new());
        }
        let mut ents = Vec::new();
        if lo < self.unstable.offset {
            let stored_hi = hi.min(self.unstable.offset);
            ents = self.store.entries(lo, stored_hi, max_size)?;
            if (ents.len() as u64) < stored_hi - lo {
                return Ok(ents);
            }
        }
        if hi > self.unstable.offset {
            let u = self.unstable.slice(lo.max(self.unstable.offset), hi);
            ents.extend_from_slice(u);
        }
        limit_size(&mut ents, max_size);
        Ok(ents)
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn restore(&mut self, snap: Snapshot) {
        self.committed = snap.metadata.index;
        self.unstable.restore(snap);
    }

    /// Committed entries whose application is still pending, from `applied + 1`.
    pub fn pending_entries_after_applied(&self) -> StorageResult<Vec<Entry>> {
        let lo = (self.applied + 1).max(self.first_index());
        if lo > self.committed {
            return Ok(Vec::new());
        }
        self.slice(lo, self.committed + 1, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn log_with(ents: &[Entry]) -> RaftLog<MemStorage> {
        let s = MemStorage::new();
        s.append(ents).unwrap();
        RaftLog::new(s).unwrap()
    }

    #[test]
    fn maybe_append_truncates_only_the_conflicting_suffix() {
        let mut log = log_with(&[ent(1, 1), ent(2, 2), ent(3, 3)]);
        // Leader's log matches at (1,1) and has term 4 entries from index 2.
        assert_eq!(log.maybe_append(1, 1, 0, &[ent(2, 4), ent(3, 4)]), Some(3));
        assert_eq!(log.term(2), Ok(4));
        assert_eq!(log.term(3), Ok(4));
        // A mismatch at the previous entry is refused.
        assert_eq!(log.maybe_append(3, 3, 0, &[ent(4, 4)]), None);
        // Already-present entries do not truncate what follows.
        log.append(&[ent(4, 4)]);
        assert_eq!(log.maybe_append(1, 1, 2, &[ent(2, 4)]), Some(2));
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.committed, 2);
    }

    #[test]
    #[should_panic(expected = "conflicts with committed entry")]
    fn overwriting_a_committed_entry_is_a_bug() {
        let mut log = log_with(&[ent(1, 1), ent(2, 1)]);
        log.commit_to(2);
        log.maybe_append(1, 1, 2, &[ent(2, 2)]);
    }

    #[test]
    fn only_entries_of_the_current_term_commit_by_counting() {
        let mut log = log_with(&[ent(1, 1), ent(2, 2)]);
        assert!(
            !log.maybe_commit(2, 3),
            "term-2 entry must not commit under term 3"
        );
        assert!(log.maybe_commit(2, 2));
        assert_eq!(log.committed, 2);
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = log_with(&[ent(1, 1), ent(2, 2), ent(3, 2), ent(4, 5), ent(5, 5)]);
        assert_eq!(log.find_conflict_by_term(5, 3), (3, 2));
        assert_eq!(log.find_conflict_by_term(5, 5), (5, 5));
        assert_eq!(log.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn up_to_date_compares_term_then_length() {
        let log = log_with(&[ent(1, 1), ent(2, 2)]);
        assert!(log.is_up_to_date(1, 3));
        assert!(log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(1, 2));
        assert!(!log.is_up_to_date(5, 1));
    }

    #[test]
    fn stable_to_ignores_an_overwritten_entry() {
        let mut log = log_with(&[]);
        log.append(&[ent(1, 1), ent(2, 1)]);
        log.append(&[ent(2, 2)]);
        log.stable_to(2, 1);
        assert_eq!(log.unstable_entries().len(), 2);
        log.stable_to(2, 2);
        assert!(log.unstable_entries().is_empty());
    }

    #[test]
    fn slice_spans_storage_and_unstable() {
        let mut log = log_with(&[ent(1, 1), ent(2, 1)]);
        log.append(&[ent(3, 2), ent(4, 2)]);
        let all: Vec<u64> = log
            .slice(1, 5, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
        log.commit_to(3);
        let next: Vec<u64> = log
            .next_committed_entries(u64::MAX)
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(next, vec![1, 2, 3]);
    }
}
