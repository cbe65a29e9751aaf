//! The history of one key: generations of revisions, each ended by a tombstone.
//!
//! A generation is one life of the key, from the put that created it to the delete that
//! ended it. `put(2); put(3); delete(4); put(6)` on a key gives
//!
//! ```text
//! generation 0: created 2, revs [2, 3, 4(t)]   (closed by the tombstone at 4)
//! generation 1: created 6, revs [6]            (the current, open generation)
//! ```
//!
//! and a key that is currently deleted has an empty last generation. `version` at a
//! revision counts the puts of the generation up to it, so it restarts at 1 after a delete.
//!
//! Compaction at revision R forgets, per key, every revision before the newest one at or
//! below R in the generation R falls into, and every older generation. A tombstone at exactly
//! R is kept, so that watchers starting at R still see that deletion (etcd PR #18274).

use std::collections::HashSet;

use crate::Revision;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Generation {
    /// Puts in this generation, including compacted ones; the tombstone counts too.
    ver: i64,
    /// Revision of the put that opened the generation.
    created: Revision,
    /// Ascending; in a closed generation the last one is the tombstone.
    revs: Vec<Revision>,
}

impl Generation {
    const fn empty() -> Self {
        Self {
            ver: 0,
            created: Revision::new(0, 0),
            revs: Vec::new(),
        }
    }
}

/// What a read at some revision finds for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// Revision of the version visible at the read revision.
    pub modified: Revision,
    /// Revision of the put that created the generation.
    pub created: Revision,
    /// Version of the visible version.
    pub version: i64,
}

/// A violated precondition of a key index mutation. On the live write path these are bugs
/// (callers panic); while restoring from disk they mean corrupted data.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyIndexError {
    /// Revisions of a key must strictly increase.
    #[error("revision {given:?} is not after the last modification {modified:?}")]
    NotIncreasing {
        /// Last revision recorded.
        modified: Revision,
        /// Rejected revision.
        given: Revision,
    },
    /// Only a live key can be deleted.
    #[error("tombstone at {0:?} on a key that is already deleted")]
    TombstoneOnDeleted(Revision),
    /// Restore only starts an empty index.
    #[error("restore into a key index that already has revisions")]
    RestoreIntoNonEmpty,
}

/// All retained revisions of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    /// Last revision recorded (zero when nothing was).
    modified: Revision,
    // Invariant: never empty; every generation but the last is non-empty and ends with its
    // tombstone; revisions strictly increase across all generations.
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            modified: Revision::default(),
            generations: vec![Generation::empty()],
        }
    }
}

impl KeyIndex {
    /// An index with no revisions.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no revision is retained; the tree drops such keys.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }

    fn open_generation(&mut self) -> &mut Generation {
        self.generations
            .last_mut()
            .expect("a key index always has a generation")
    }

    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) -> Result<(), KeyIndexError> {
        if rev <= self.modified {
            return Err(KeyIndexError::NotIncreasing {
                modified: self.modified,
                given: rev,
            });
        }
        let generation = self.open_generation();
        if generation.revs.is_empty() {
            generation.created = rev;
        }
        generation.revs.push(rev);
        generation.ver += 1;
        self.modified = rev;
        Ok(())
    }

    /// Records a deletion at `rev`: closes the open generation and starts an empty one.
    pub fn tombstone(&mut self, rev: Revision) -> Result<(), KeyIndexError> {
        if self.open_generation().revs.is_empty() {
            return Err(KeyIndexError::TombstoneOnDeleted(rev));
        }
        self.put(rev)?;
        self.generations.push(Generation::empty());
        Ok(())
    }

    /// Starts a restored index at its oldest retained revision, a put whose record says it
    /// belongs to a generation created at `created` and has version `version`.
    pub fn restore(
        &mut self,
        created: Revision,
        rev: Revision,
        version: i64,
    ) -> Result<(), KeyIndexError> {
        if !self.is_empty() || self.modified != Revision::default() {
            return Err(KeyIndexError::RestoreIntoNonEmpty);
        }
        self.generations[0] = Generation {
            ver: version,
            created,
            revs: vec![rev],
        };
        self.modified = rev;
        Ok(())
    }

    /// Starts a restored index whose oldest retained revision is a tombstone (what compaction
    /// keeps when a key was deleted exactly at the compaction revision).
    pub fn restore_tombstone(&mut self, rev: Revision) -> Result<(), KeyIndexError> {
        self.restore(Revision::default(), rev, 1)?;
        self.generations.push(Generation::empty());
        Ok(())
    }

    /// The version visible at `at_rev`, or `None` if the key does not exist then.
    pub fn get(&self, at_rev: i64) -> Option<KeyAt> {
        let last = self.generations.len() - 1;
        for (i, generation) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(final_rev)) = (generation.revs.first(), generation.revs.last())
            else {
                continue;
            };
            if i != last && final_rev.main <= at_rev {
                // A closed generation whose tombstone is at or before `at_rev`: deleted then.
                return None;
            }
            if first.main <= at_rev {
                let n = generation.revs.partition_point(|r| r.main <= at_rev) - 1;
                let newer = (generation.revs.len() - 1 - n) as i64;
                return Some(KeyAt {
                    modified: generation.revs[n],
                    created: generation.created,
                    version: generation.ver - newer,
                });
            }
        }
        None
    }

    /// The generation a compaction at `at_rev` stops in, and the position in it of the newest
    /// revision at or below `at_rev`.
    ///
    /// A closed generation is passed over when its tombstone is below `at_rev`, or when the
    /// next generation already starts at or below `at_rev`. The second case arises only when
    /// one transaction deletes and re-creates the key, so both generations share a main
    /// revision; etcd's server forbids such transactions, but the store must not lose the
    /// re-created version if one gets through.
    fn compaction_point(&self, at_rev: i64) -> (usize, Option<usize>) {
        let mut gi = 0;
        while gi < self.generations.len() - 1 {
            let tombstone = self.generations[gi]
                .revs
                .last()
                .expect("closed generations are not empty");
            let next_start = self.generations[gi + 1].revs.first();
            if tombstone.main >= at_rev && next_start.is_none_or(|next| next.main > at_rev) {
                break;
            }
            gi += 1;
        }
        let revs = &self.generations[gi].revs;
        (
            gi,
            revs.partition_point(|r| r.main <= at_rev).checked_sub(1),
        )
    }

    /// Compacts at `at_rev` (see the module docs) and adds the revision of this key that
    /// must stay in the backend to `keep`.
    pub fn compact(&mut self, at_rev: i64, keep: &mut HashSet<Revision>) {
        let (gi, ri) = self.compaction_point(at_rev);
        if let Some(ri) = ri {
            let revs = &mut self.generations[gi].revs;
            keep.insert(revs[ri]);
            revs.drain(..ri);
        }
        self.generations.drain(..gi);
    }

    /// The revision [`KeyIndex::compact`] would keep, without compacting.
    pub fn compaction_keep(&self, at_rev: i64, keep: &mut HashSet<Revision>) {
        let (gi, ri) = self.compaction_point(at_rev);
        if let Some(ri) = ri {
            keep.insert(self.generations[gi].revs[ri]);
        }
    }

    /// Like [`KeyIndex::compaction_keep`] but without a tombstone at exactly `at_rev`:
    /// the set HashKV hashes below the compaction revision. Leaving that tombstone out keeps
    /// the hash equal to etcd's before it started keeping such tombstones.
    pub fn hash_keep(&self, at_rev: i64, keep: &mut HashSet<Revision>) {
        let (gi, ri) = self.compaction_point(at_rev);
        if let Some(ri) = ri {
            let revs = &self.generations[gi].revs;
            let is_tombstone = ri == revs.len() - 1 && gi != self.generations.len() - 1;
            if !is_tombstone {
                keep.insert(revs[ri]);
            }
        }
    }

    /// Generations as `(created main, ver, revisions)`, oldest first; for tests and debugging.
    pub fn generations(&self) -> Vec<(i64, i64, Vec<Revision>)> {
        self.generations
            .iter()
            .map(|g| (g.created.main, g.ver, g.revs.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put(2) put(3) delete(4) put(6) put(7) delete(8) put(10): three generations.
    fn three_generations() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2)).unwrap();
        ki.put(r(3)).unwrap();
        ki.tombstone(r(4)).unwrap();
        ki.put(r(6)).unwrap();
        ki.put(r(7)).unwrap();
        ki.tombstone(r(8)).unwrap();
        ki.put(r(10)).unwrap();
        ki
    }

    fn at(ki: &KeyIndex, rev: i64) -> Option<(i64, i64, i64)> {
        ki.get(rev)
            .map(|k| (k.modified.main, k.created.main, k.version))
    }

    #[test]
    fn generations_end_at_tombstones_and_versions_restart() {
        let ki = three_generations();
        assert_eq!(
            ki.generations(),
            vec![
                (2, 3, vec![r(2), r(3), r(4)]),
                (6, 3, vec![r(6), r(7), r(8)]),
                (10, 1, vec![r(10)]),
            ]
        );
        // (mod, create, version) visible at each revision; None where the key is absent.
        let expected = [
            (1, None),
            (2, Some((2, 2, 1))),
            (3, Some((3, 2, 2))),
            (4, None),
            (5, None),
            (6, Some((6, 6, 1))),
            (7, Some((7, 6, 2))),
            (8, None),
            (9, None),
            (10, Some((10, 10, 1))),
            (99, Some((10, 10, 1))),
        ];
        for (rev, want) in expected {
            assert_eq!(at(&ki, rev), want, "at revision {rev}");
        }
    }

    #[test]
    fn sub_revisions_in_one_transaction_count_as_versions() {
        let mut ki = KeyIndex::new();
        ki.put(Revision::new(5, 0)).unwrap();
        ki.put(Revision::new(5, 1)).unwrap();
        let got = ki.get(5).unwrap();
        assert_eq!((got.modified, got.version), (Revision::new(5, 1), 2));
        assert_eq!(ki.get(4), None);
    }

    #[test]
    fn mutations_reject_broken_preconditions() {
        let mut ki = KeyIndex::new();
        assert_eq!(
            ki.tombstone(r(2)),
            Err(KeyIndexError::TombstoneOnDeleted(r(2)))
        );
        ki.put(r(3)).unwrap();
        assert!(matches!(
            ki.put(r(3)),
            Err(KeyIndexError::NotIncreasing { .. })
        ));
        assert!(matches!(
            ki.put(r(2)),
            Err(KeyIndexError::NotIncreasing { .. })
        ));
        ki.tombstone(r(4)).unwrap();
        assert_eq!(
            ki.tombstone(r(5)),
            Err(KeyIndexError::TombstoneOnDeleted(r(5)))
        );
        assert_eq!(
            ki.restore(r(1), r(1), 1),
            Err(KeyIndexError::RestoreIntoNonEmpty)
        );
    }

    /// Compacting `three_generations()` at each revision: what stays in the index, what the
    /// backend keeps, and what HashKV hashes below the compaction revision.
    #[test]
    fn compaction_keeps_the_newest_revision_at_or_below_the_compaction_point() {
        type Gens = Vec<(i64, i64, Vec<Revision>)>;
        let cases: Vec<(i64, Gens, Vec<Revision>, Vec<Revision>)> = vec![
            // Nothing at or below 1: unchanged.
            (1, three_generations().generations(), vec![], vec![]),
            // 3 is the newest at or below 3; 2 goes.
            (
                3,
                vec![
                    (2, 3, vec![r(3), r(4)]),
                    (6, 3, vec![r(6), r(7), r(8)]),
                    (10, 1, vec![r(10)]),
                ],
                vec![r(3)],
                vec![r(3)],
            ),
            // The tombstone at exactly 4 stays (watchers from 4 must see the delete), but
            // HashKV leaves it out.
            (
                4,
                vec![
                    (2, 3, vec![r(4)]),
                    (6, 3, vec![r(6), r(7), r(8)]),
                    (10, 1, vec![r(10)]),
                ],
                vec![r(4)],
                vec![],
            ),
            // Past the tombstone: the first generation is gone entirely.
            (
                5,
                vec![(6, 3, vec![r(6), r(7), r(8)]), (10, 1, vec![r(10)])],
                vec![],
                vec![],
            ),
            (
                7,
                vec![(6, 3, vec![r(7), r(8)]), (10, 1, vec![r(10)])],
                vec![r(7)],
                vec![r(7)],
            ),
            (9, vec![(10, 1, vec![r(10)])], vec![], vec![]),
            (10, vec![(10, 1, vec![r(10)])], vec![r(10)], vec![r(10)]),
            (50, vec![(10, 1, vec![r(10)])], vec![r(10)], vec![r(10)]),
        ];
        for (rev, gens, keep, hash_keep) in cases {
            let mut ki = three_generations();
            let mut predicted = HashSet::new();
            ki.compaction_keep(rev, &mut predicted);
            let mut hashed = HashSet::new();
            ki.hash_keep(rev, &mut hashed);
            let mut kept = HashSet::new();
            ki.compact(rev, &mut kept);
            assert_eq!(ki.generations(), gens, "generations after compact({rev})");
            assert_eq!(
                kept,
                keep.iter().copied().collect(),
                "kept by compact({rev})"
            );
            assert_eq!(predicted, kept, "compaction_keep({rev}) predicts compact");
            assert_eq!(hashed, hash_keep.into_iter().collect(), "hash_keep({rev})");
            // Reads at or after the compaction revision are unaffected.
            let original = three_generations();
            for read in rev..12 {
                assert_eq!(
                    ki.get(read),
                    original.get(read),
                    "read at {read} after compact({rev})"
                );
            }
        }
    }

    #[test]
    fn compaction_keeps_a_key_deleted_and_recreated_in_one_transaction() {
        // put(2), then one transaction at 4: delete (4.0) and put again (4.1).
        let mut ki = KeyIndex::new();
        ki.put(r(2)).unwrap();
        ki.tombstone(Revision::new(4, 0)).unwrap();
        ki.put(Revision::new(4, 1)).unwrap();
        let mut hashed = HashSet::new();
        ki.hash_keep(4, &mut hashed);
        let mut keep = HashSet::new();
        ki.compact(4, &mut keep);
        assert_eq!(
            keep,
            HashSet::from([Revision::new(4, 1)]),
            "the live version at 4.1 is the one to keep"
        );
        assert_eq!(hashed, keep);
        assert_eq!(ki.generations(), vec![(4, 1, vec![Revision::new(4, 1)])]);
        assert_eq!(ki.get(4).map(|k| k.version), Some(1));
    }

    #[test]
    fn compacting_a_deleted_key_past_its_tombstone_empties_it() {
        let mut ki = KeyIndex::new();
        ki.put(r(2)).unwrap();
        ki.tombstone(r(3)).unwrap();
        let mut keep = HashSet::new();
        ki.compact(3, &mut keep);
        assert!(!ki.is_empty(), "the tombstone at exactly 3 is kept");
        assert_eq!(keep, HashSet::from([r(3)]));
        keep.clear();
        ki.compact(4, &mut keep);
        assert!(ki.is_empty());
        assert!(keep.is_empty());
    }

    #[test]
    fn compaction_is_idempotent_and_keeps_versions() {
        let mut ki = KeyIndex::new();
        for main in 2..8 {
            ki.put(r(main)).unwrap();
        }
        let mut keep = HashSet::new();
        ki.compact(5, &mut keep);
        let once = ki.clone();
        ki.compact(5, &mut keep);
        assert_eq!(ki, once);
        assert_eq!(
            ki.get(5).unwrap().version,
            4,
            "versions count compacted puts"
        );
        assert_eq!(ki.get(7).unwrap().version, 6);
    }

    #[test]
    fn restore_from_compacted_history_reads_like_the_live_index() {
        // Live: put(2..=5), compact(4) keeps 4 and 5 with versions 3 and 4.
        let mut live = KeyIndex::new();
        for main in 2..=5 {
            live.put(r(main)).unwrap();
        }
        live.compact(4, &mut HashSet::new());
        let mut restored = KeyIndex::new();
        restored.restore(r(2), r(4), 3).unwrap();
        restored.put(r(5)).unwrap();
        for read in 4..7 {
            assert_eq!(restored.get(read), live.get(read), "at {read}");
        }
        // A key whose only retained revision is a tombstone reads as deleted.
        let mut tomb = KeyIndex::new();
        tomb.restore_tombstone(r(6)).unwrap();
        assert_eq!(tomb.get(6), None);
        assert_eq!(tomb.get(100), None);
        tomb.put(r(7)).unwrap();
        assert_eq!(at(&tomb, 7), Some((7, 7, 1)));
    }
}
