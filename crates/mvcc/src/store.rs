//! The KV store: opening (index rebuild), read views, HashKV and history.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use retcd_backend::meta::{self, ConsistentIndex};
use retcd_backend::{Backend, Bucket, ReadTx, WriteTx};

use crate::key_value::{self, KeyValue};
use crate::revision::{Revision, RevisionKey, main_revision_start};
use crate::tree_index::{KeyRange, TreeIndex};
use crate::write::{self, WriteBatch};
use crate::{Event, EventKind, MvccError};

/// Options of a range read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Revision to read at; `<= 0` means the current revision.
    pub revision: i64,
    /// Most key-values to return; `<= 0` means no limit. `count` is not affected.
    pub limit: i64,
    /// Return only `count`, no key-values (never touches the backend).
    pub count_only: bool,
}

/// Result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// Matching key-values in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision, before `limit`.
    pub count: u64,
    /// `limit` cut the result short.
    pub more: bool,
    /// The store's current revision when the read was served (`ResponseHeader.revision`),
    /// not the revision read at.
    pub revision: i64,
}

/// Result of HashKV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C over the history up to `hash_revision` (see [`ReadView::hash_by_rev`]).
    pub hash: u32,
    /// The store's current revision.
    pub revision: i64,
    /// The store's compaction revision (-1 if never compacted).
    pub compact_revision: i64,
    /// Revision the hash covers.
    pub hash_revision: i64,
}

/// Published state: what readers may see.
pub(crate) struct State {
    pub(crate) index: TreeIndex,
    // Invariant: current_rev >= 1 and never decreases; every change at or below it is
    // committed in the backend. The index may also hold changes of the open write batch,
    // all above current_rev.
    pub(crate) current_rev: i64,
    // Invariant: compact_rev <= current_rev and never decreases; -1 until the first
    // compaction. The index and the backend are compacted at it.
    pub(crate) compact_rev: i64,
    pub(crate) consistent_index: ConsistentIndex,
}

pub(crate) struct Writer {
    pub(crate) poisoned: bool,
}

/// A multi-version key-value store with etcd's revision semantics over a [`Backend`].
///
/// Reads ([`KvStore::view`]) run concurrently with the single write batch
/// ([`KvStore::begin_batch`]) and see only committed revisions.
pub struct KvStore<B: Backend> {
    pub(crate) backend: B,
    pub(crate) state: RwLock<State>,
    pub(crate) writer: Mutex<Writer>,
}

impl<B: Backend> KvStore<B> {
    /// Opens the store on `backend`: rebuilds the key index from the `key` bucket, restores
    /// the current and compaction revisions, and finishes a compaction that was scheduled
    /// but not finished.
    pub fn open(backend: B) -> Result<Self, MvccError> {
        let state = load_state(&backend)?;
        Ok(Self {
            backend,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { poisoned: false }),
        })
    }

    /// Replaces the whole store with a backend snapshot image (a Raft snapshot from the
    /// leader), atomically: readers see the old store or the new one, never a mix. On a
    /// bad image nothing changes. Clears a poisoned writer, since the state is reloaded.
    pub fn restore_snapshot(&self, image: &mut dyn std::io::Read) -> Result<(), MvccError> {
        let mut writer = self.writer.lock().expect("mvcc writer lock poisoned");
        self.backend.restore_snapshot(image)?;
        let state = load_state(&self.backend)?;
        *self.state.write().expect("mvcc state lock poisoned") = state;
        writer.poisoned = false;
        Ok(())
    }

    /// The backend, for size, defragment and snapshots. Writing MVCC data through it
    /// behind the store's back breaks the store.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Closes the store and returns its backend (to restore a snapshot into it, then reopen).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The last committed revision.
    pub fn current_revision(&self) -> i64 {
        self.state().current_rev
    }

    /// The compaction revision, -1 if the store was never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.state().compact_rev
    }

    /// Index and term of the last applied entry, as committed.
    pub fn consistent_index(&self) -> ConsistentIndex {
        self.state().consistent_index
    }

    /// A consistent read view at the current revision.
    pub fn view(&self) -> Result<ReadView<'_, B>, MvccError> {
        let state = self.state();
        // Begin the backend transaction while holding the state lock: a commit that
        // compacts takes the lock for writing before it commits, so this snapshot holds
        // every revision the index may still point to.
        let tx = self.backend.begin_read()?;
        Ok(ReadView {
            store: self,
            tx,
            rev: state.current_rev,
        })
    }

    /// Range read at the current revision; shorthand for `view()?.range(..)`.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.view()?.range(key, range_end, options)
    }

    /// HashKV; shorthand for `view()?.hash_by_rev(..)`.
    pub fn hash_by_rev(&self, revision: i64) -> Result<KvHash, MvccError> {
        self.view()?.hash_by_rev(revision)
    }

    /// Starts the write batch: one backend write transaction holding any number of
    /// transactions, compactions and consistent-index updates, committed together.
    /// Waits while another batch is open.
    pub fn begin_batch(&self) -> Result<WriteBatch<'_, B>, MvccError> {
        let writer = self.writer.lock().expect("mvcc writer lock poisoned");
        if writer.poisoned {
            return Err(MvccError::Poisoned);
        }
        let tx = self.backend.begin_write()?;
        let (current_rev, compact_rev, consistent_index) = {
            let state = self.state();
            (state.current_rev, state.compact_rev, state.consistent_index)
        };
        Ok(WriteBatch::new(
            self,
            writer,
            tx,
            current_rev,
            compact_rev,
            consistent_index,
        ))
    }

    pub(crate) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("mvcc state lock poisoned")
    }

    pub(crate) fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("mvcc state lock poisoned")
    }
}

/// Rebuilds the key index from the `key` bucket, restores the current and compaction
/// revisions, and finishes a compaction that was scheduled but not finished.
fn load_state<B: Backend>(backend: &B) -> Result<State, MvccError> {
    let rtx = backend.begin_read()?;
    let consistent_index = meta::read_consistent_index(&rtx)?;
    let scheduled = read_compact_rev(&rtx, meta::SCHEDULED_COMPACT_KEY)?;
    let finished = read_compact_rev(&rtx, meta::FINISHED_COMPACT_KEY)?;
    let (mut index, max_rev) = rebuild_index(&rtx)?;
    drop(rtx);

    let mut compact_rev = finished.unwrap_or(-1);
    if let Some(scheduled) = scheduled.filter(|&s| s > compact_rev) {
        let keep = index.compaction_keep(scheduled);
        let mut tx = backend.begin_write()?;
        write::physical_compaction(&mut tx, scheduled, &keep)?;
        tx.commit()?;
        compact_rev = scheduled;
    }
    if compact_rev >= 0 {
        index.compact(compact_rev);
    }
    // A fresh store is at revision 1, so the first write gets revision 2, as in etcd.
    // Compaction always keeps the newest change, so max_rev is the last committed
    // revision; compact_rev covers a history whose last changes were all compacted away.
    let current_rev = max_rev.max(compact_rev).max(1);
    Ok(State {
        index,
        current_rev,
        compact_rev,
        consistent_index,
    })
}

fn read_compact_rev(tx: &impl ReadTx, key: &[u8]) -> Result<Option<i64>, MvccError> {
    match tx.get(Bucket::Meta, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(Revision::from_bytes(&bytes)?.main)),
    }
}

/// Replays the `key` bucket, oldest revision first, into a fresh index.
fn rebuild_index(tx: &impl ReadTx) -> Result<(TreeIndex, i64), MvccError> {
    let mut index = TreeIndex::default();
    let mut max_rev = 0;
    let mut failure = None;
    tx.scan(
        Bucket::Key,
        &[],
        None,
        &mut |key, value| match restore_one(&mut index, key, value) {
            Ok(main) => {
                max_rev = main;
                ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok((index, max_rev)),
    }
}

fn restore_one(index: &mut TreeIndex, key: &[u8], value: &[u8]) -> Result<i64, MvccError> {
    let rk = RevisionKey::from_bytes(key)?;
    let kv = key_value::decode(value)?;
    let corrupt = |why: String| MvccError::Corrupted(format!("revision {:?}: {why}", rk.rev));
    if kv.mod_revision != rk.rev.main {
        return Err(corrupt(format!(
            "record says mod_revision {}",
            kv.mod_revision
        )));
    }
    index
        .restore(
            &kv.key,
            rk.rev,
            rk.tombstone,
            Revision::new(kv.create_revision, 0),
            kv.version,
        )
        .map_err(|e| corrupt(e.to_string()))?;
    if !rk.tombstone {
        let at = index
            .get(&kv.key, rk.rev.main)
            .expect("a revision just added is visible");
        if at.version != kv.version || at.created.main != kv.create_revision {
            return Err(corrupt(format!(
                "record has version {} created at {}, history gives version {} created at {}",
                kv.version, kv.create_revision, at.version, at.created.main
            )));
        }
    }
    Ok(rk.rev.main)
}

/// Checks a requested revision against the current and compaction revisions, in etcd's
/// order (future first), and resolves `<= 0` to `current`.
pub(crate) fn resolve_read_rev(
    requested: i64,
    current: i64,
    compact: i64,
) -> Result<i64, MvccError> {
    if requested > current {
        return Err(MvccError::FutureRevision {
            requested,
            current_revision: current,
        });
    }
    let rev = if requested <= 0 { current } else { requested };
    if rev < compact {
        return Err(MvccError::Compacted {
            requested: rev,
            compact_revision: compact,
        });
    }
    Ok(rev)
}

/// The record a live index entry points to.
pub(crate) fn fetch(tx: &(impl ReadTx + ?Sized), rev: Revision) -> Result<KeyValue, MvccError> {
    match tx.get(Bucket::Key, &rev.to_bytes())? {
        Some(bytes) => key_value::decode(&bytes),
        None => Err(MvccError::Corrupted(format!(
            "index points at revision {rev:?}, which the backend lacks"
        ))),
    }
}

/// Fetches the records of `revs` and assembles a [`RangeResult`].
pub(crate) fn finish_range(
    tx: &(impl ReadTx + ?Sized),
    revs: Vec<Revision>,
    count: u64,
    options: RangeOptions,
    current: i64,
) -> Result<RangeResult, MvccError> {
    if options.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            count,
            more: false,
            revision: current,
        });
    }
    let kvs = revs
        .into_iter()
        .map(|rev| fetch(tx, rev))
        .collect::<Result<Vec<_>, _>>()?;
    let more = (kvs.len() as u64) < count;
    Ok(RangeResult {
        kvs,
        count,
        more,
        revision: current,
    })
}

pub(crate) fn limit_of(options: RangeOptions) -> Option<usize> {
    if options.count_only {
        Some(0)
    } else if options.limit > 0 {
        Some(usize::try_from(options.limit).unwrap_or(usize::MAX))
    } else {
        None
    }
}

/// Reads at one revision of the store: a backend read transaction plus the index.
pub struct ReadView<'a, B: Backend + 'a> {
    store: &'a KvStore<B>,
    tx: B::ReadTx<'a>,
    rev: i64,
}

impl<B: Backend> ReadView<'_, B> {
    /// The store's current revision when the view was opened.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Keys in `[key, range_end)` (etcd's conventions, see [`KeyRange::new`]) at
    /// `options.revision`.
    ///
    /// Fails with [`MvccError::FutureRevision`] above the view's revision and with
    /// [`MvccError::Compacted`] below the compaction revision, including a compaction
    /// committed after the view was opened.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let (revs, count) = {
            let state = self.store.state();
            let rev = resolve_read_rev(options.revision, self.rev, state.compact_rev)?;
            state
                .index
                .range(KeyRange::new(key, range_end), rev, limit_of(options))
        };
        finish_range(&self.tx, revs, count, options, self.rev)
    }

    /// etcd's HashKV (`HashByRev`): a CRC-32C over the `key` bucket entries up to
    /// `revision` (`<= 0`: the view's revision), preceded by the bucket name, each record
    /// in etcd's encoding (`key_value::etcd_bytes`). Below the
    /// compaction revision only the revisions a compaction at the hashed revision would
    /// keep count (every stored one when there are none), as etcd 3.4 and 3.5 decide it, so
    /// members with the same history agree whatever their physical state, the hash does
    /// not change across restarts, and it is etcd's number for the same history.
    pub fn hash_by_rev(&self, revision: i64) -> Result<KvHash, MvccError> {
        let (rev, compact, keep) = {
            let state = self.store.state();
            let compact = state.compact_rev;
            let rev = resolve_read_rev(revision, self.rev, compact)?;
            (rev, compact, state.index.hash_keep(rev))
        };
        let mut hasher = crate::crc32c::Crc32c::new();
        hasher.update(Bucket::Key.name().as_bytes());
        let end = main_revision_start(rev + 1);
        let mut failure = None;
        self.tx.scan(
            Bucket::Key,
            &[],
            Some(&end),
            &mut |key, value| match RevisionKey::from_bytes(key) {
                Ok(rk) => {
                    if rk.rev.main > compact || keep.is_empty() || keep.contains(&rk.rev) {
                        match crate::key_value::decode(value) {
                            Ok(kv) => {
                                hasher.update(key);
                                hasher.update(&crate::key_value::etcd_bytes(&kv, rk.tombstone));
                            }
                            Err(e) => {
                                failure = Some(e);
                                return ControlFlow::Break(());
                            }
                        }
                    }
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(KvHash {
            hash: hasher.finalize(),
            revision: self.rev,
            compact_revision: compact,
            hash_revision: rev,
        })
    }

    /// etcd's Hash: a CRC-32 over the whole backend, bucket by bucket in name order (the
    /// name, then each key and value), leaving out the consistent index and term in
    /// `meta` as etcd does. Unlike HashKV it sees everything stored (leases, members,
    /// compaction bookkeeping), as stored: members agree once they applied the same
    /// entries and finished the same compactions.
    pub fn hash_all(&self) -> Result<u32, MvccError> {
        let mut buckets = Bucket::ALL;
        buckets.sort_by_key(|b| b.name());
        let mut hasher = crc32fast::Hasher::new();
        for bucket in buckets {
            hasher.update(bucket.name().as_bytes());
            self.tx.scan(bucket, &[], None, &mut |key, value| {
                let ignored = bucket == Bucket::Meta
                    && (key == meta::CONSISTENT_INDEX_KEY || key == meta::TERM_KEY);
                if !ignored {
                    hasher.update(key);
                    hasher.update(value);
                }
                ControlFlow::Continue(())
            })?;
        }
        Ok(hasher.finalize())
    }

    /// Every change with `from <= revision <= to`, in revision order, from the backend: the
    /// history a watcher that fell behind replays. `prev_kv` is the key at revision - 1
    /// when that is not compacted. At exactly the compaction revision only the last change
    /// of each key is left.
    pub fn events(&self, from: i64, to: i64) -> Result<Vec<Event>, MvccError> {
        if to > self.rev {
            return Err(MvccError::FutureRevision {
                requested: to,
                current_revision: self.rev,
            });
        }
        // Revisions start at 1; clamping keeps the encoding (non-negative only) total.
        let from = from.max(0);
        if from > to {
            return Ok(Vec::new());
        }
        let start = main_revision_start(from);
        let end = main_revision_start(to + 1);
        let mut events = Vec::new();
        let mut failure = None;
        self.tx
            .scan(
                Bucket::Key,
                &start,
                Some(&end),
                &mut |key, value| match RevisionKey::from_bytes(key)
                    .and_then(|rk| Ok((rk, key_value::decode(value)?)))
                {
                    Ok((rk, kv)) => {
                        let kind = if rk.tombstone {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        };
                        events.push(Event {
                            kind,
                            kv,
                            prev_kv: None,
                        });
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        ControlFlow::Break(())
                    }
                },
            )?;
        if let Some(e) = failure {
            return Err(e);
        }
        let prev_revs: Vec<Option<Revision>> = {
            let state = self.store.state();
            if from < state.compact_rev {
                return Err(MvccError::Compacted {
                    requested: from,
                    compact_revision: state.compact_rev,
                });
            }
            events
                .iter()
                .map(|event| {
                    let before = event.kv.mod_revision - 1;
                    if before < state.compact_rev {
                        None
                    } else {
                        state.index.get(&event.kv.key, before).map(|at| at.modified)
                    }
                })
                .collect()
        };
        for (event, prev) in events.iter_mut().zip(prev_revs) {
            if let Some(prev) = prev {
                event.prev_kv = Some(fetch(&self.tx, prev)?);
            }
        }
        Ok(events)
    }
}

/// Revisions in the `key` bucket at or below `rev` that `keep` does not name.
pub(crate) fn compactable(
    tx: &(impl ReadTx + ?Sized),
    rev: i64,
    keep: &HashSet<Revision>,
) -> Result<Vec<Vec<u8>>, MvccError> {
    let end = main_revision_start(rev + 1);
    let mut doomed = Vec::new();
    let mut failure = None;
    tx.scan(
        Bucket::Key,
        &[],
        Some(&end),
        &mut |key, _| match RevisionKey::from_bytes(key) {
            Ok(rk) => {
                if !keep.contains(&rk.rev) {
                    doomed.push(key.to_vec());
                }
                ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(doomed),
    }
}
