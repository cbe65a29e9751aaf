//! The in-memory index of every key's history, ordered by key for range reads.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use crate::Revision;
use crate::key_index::{KeyAt, KeyIndex, KeyIndexError};

/// The keys a range request names, with etcd's conventions for `range_end`:
/// empty means the single key, `"\0"` means every key from `key` on, anything else is the
/// exclusive end (so `range_end <= key` selects nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange<'a> {
    start: &'a [u8],
    end: RangeEnd<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeEnd<'a> {
    Single,
    Unbounded,
    Before(&'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Interprets a request's `key` and `range_end`.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        };
        Self { start: key, end }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            RangeEnd::Single => key == self.start,
            RangeEnd::Unbounded => key >= self.start,
            RangeEnd::Before(end) => key >= self.start && key < end,
        }
    }

    fn bounds(&self) -> Option<KeyBounds<'a>> {
        let upper = match self.end {
            RangeEnd::Single => Bound::Included(self.start),
            RangeEnd::Unbounded => Bound::Unbounded,
            RangeEnd::Before(end) if end <= self.start => return None,
            RangeEnd::Before(end) => Bound::Excluded(end),
        };
        Some((Bound::Included(self.start), upper))
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Key -> [`KeyIndex`].
#[derive(Clone, Debug, Default)]
pub(crate) struct TreeIndex {
    // Invariant: no key maps to an empty KeyIndex.
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

impl TreeIndex {
    pub(crate) fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyAt> {
        self.keys.get(key).and_then(|ki| ki.get(at_rev))
    }

    pub(crate) fn put(&mut self, key: &[u8], rev: Revision) -> Result<(), KeyIndexError> {
        match self.keys.get_mut(key) {
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::new();
                ki.put(rev)?;
                self.keys.insert(key.to_vec(), ki);
                Ok(())
            }
        }
    }

    pub(crate) fn tombstone(&mut self, key: &[u8], rev: Revision) -> Result<(), KeyIndexError> {
        match self.keys.get_mut(key) {
            Some(ki) => ki.tombstone(rev),
            None => Err(KeyIndexError::TombstoneOnDeleted(rev)),
        }
    }

    /// Adds a revision read from the backend while rebuilding the index, oldest first.
    /// For a key's first retained revision, `created` and `version` come from its record.
    pub(crate) fn restore(
        &mut self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: Revision,
        version: i64,
    ) -> Result<(), KeyIndexError> {
        match self.keys.get_mut(key) {
            Some(ki) if tombstone => ki.tombstone(rev),
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::new();
                if tombstone {
                    ki.restore_tombstone(rev)?;
                } else {
                    ki.restore(created, rev, version)?;
                }
                self.keys.insert(key.to_vec(), ki);
                Ok(())
            }
        }
    }

    /// Calls `visit` with every key of `range` that exists at `at_rev`, in key order.
    pub(crate) fn visit(
        &self,
        range: KeyRange<'_>,
        at_rev: i64,
        mut visit: impl FnMut(&[u8], KeyAt),
    ) {
        let Some(bounds) = range.bounds() else {
            return;
        };
        for (key, ki) in self.keys.range::<[u8], _>(bounds) {
            if let Some(found) = ki.get(at_rev) {
                visit(key, found);
            }
        }
    }

    /// The revisions of the first `limit` keys of `range` existing at `at_rev` (all if
    /// `limit` is `None`), and the number of all such keys.
    pub(crate) fn range(
        &self,
        range: KeyRange<'_>,
        at_rev: i64,
        limit: Option<usize>,
    ) -> (Vec<Revision>, u64) {
        let mut revs = Vec::new();
        let mut count = 0u64;
        self.visit(range, at_rev, |_, found| {
            count += 1;
            if limit.is_none_or(|limit| revs.len() < limit) {
                revs.push(found.modified);
            }
        });
        (revs, count)
    }

    /// Compacts every key at `at_rev`, drops keys left without revisions, and returns the
    /// revisions the backend must keep at or below `at_rev`.
    pub(crate) fn compact(&mut self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, ki| {
            ki.compact(at_rev, &mut keep);
            !ki.is_empty()
        });
        keep
    }

    /// What [`TreeIndex::compact`] would return, without compacting.
    pub(crate) fn compaction_keep(&self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.compaction_keep(at_rev, &mut keep);
        }
        keep
    }

    /// The revisions at or below `at_rev` that HashKV covers (see [`KeyIndex::hash_keep`]).
    pub(crate) fn hash_keep(&self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.hash_keep(at_rev, &mut keep);
        }
        keep
    }

    #[cfg(test)]
    pub(crate) fn key_index(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn key_range_follows_etcd_conventions() {
        let single = KeyRange::new(b"b", b"");
        assert!(single.contains(b"b") && !single.contains(b"ba") && !single.contains(b"a"));
        let from = KeyRange::new(b"b", b"\0");
        assert!(from.contains(b"b") && from.contains(b"zzz") && !from.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0") && all.contains(b"\xff\xff"));
        let prefix = KeyRange::new(b"foo", b"fop");
        assert!(prefix.contains(b"foo") && prefix.contains(b"foo/bar") && !prefix.contains(b"fop"));
        let backwards = KeyRange::new(b"c", b"a");
        assert!(!backwards.contains(b"b") && backwards.bounds().is_none());
    }

    #[test]
    fn range_counts_every_live_key_but_returns_at_most_limit() {
        let mut tree = TreeIndex::default();
        for (i, key) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            tree.put(*key, r(2 + i as i64)).unwrap();
        }
        tree.tombstone(b"b", r(6)).unwrap();
        let all = KeyRange::new(b"a", b"\0");
        assert_eq!(tree.range(all, 6, None), (vec![r(2), r(4), r(5)], 3));
        assert_eq!(tree.range(all, 6, Some(2)), (vec![r(2), r(4)], 3));
        assert_eq!(
            tree.range(all, 5, Some(2)),
            (vec![r(2), r(3)], 4),
            "b still live at 5"
        );
        assert_eq!(tree.range(all, 1, None), (vec![], 0));
        assert_eq!(tree.range(KeyRange::new(b"b", b""), 6, None), (vec![], 0));
        assert_eq!(tree.range(KeyRange::new(b"c", b"a"), 6, None), (vec![], 0));
    }

    #[test]
    fn compaction_drops_keys_deleted_before_the_compaction_revision() {
        let mut tree = TreeIndex::default();
        tree.put(b"gone", r(2)).unwrap();
        tree.tombstone(b"gone", r(3)).unwrap();
        tree.put(b"live", r(4)).unwrap();
        tree.put(b"live", r(5)).unwrap();
        assert_eq!(tree.compaction_keep(5), HashSet::from([r(5)]));
        assert_eq!(tree.hash_keep(5), HashSet::from([r(5)]));
        assert_eq!(tree.compact(5), HashSet::from([r(5)]));
        assert!(tree.key_index(b"gone").is_none());
        assert_eq!(
            tree.key_index(b"live").unwrap().generations(),
            vec![(4, 2, vec![r(5)])]
        );
    }

    #[test]
    fn restore_rejects_a_tombstone_on_an_already_deleted_key() {
        let mut tree = TreeIndex::default();
        tree.restore(b"k", r(2), false, r(2), 1).unwrap();
        tree.restore(b"k", r(3), true, r(0), 0).unwrap();
        let err = tree.restore(b"k", r(4), true, r(0), 0).unwrap_err();
        assert_eq!(err, KeyIndexError::TombstoneOnDeleted(r(4)));
    }
}
