//! The write path: a batch of transactions in one backend write transaction.
//!
//! The apply layer opens one [`WriteBatch`] per group of committed Raft entries. Each
//! request that writes becomes a [`TxnWrite`]: all its changes get one main revision and
//! increasing sub revisions, so a Txn is atomic at one revision. The batch records the
//! consistent index in the same backend transaction and commits everything at once.
//!
//! Visibility: changes go into the key index as they are made (reads inside the batch see
//! them), above the published current revision, so concurrent readers ignore them. Commit
//! publishes the new current revision. Index compaction is deferred to commit, because it
//! removes entries that readers of older, still valid revisions need until the physical
//! deletion is committed.

use std::collections::HashSet;
use std::sync::MutexGuard;

use retcd_backend::meta::{self, ConsistentIndex};
use retcd_backend::{Backend, Bucket, WriteTx};

use crate::key_value::{self, KeyValue};
use crate::revision::{Revision, RevisionKey};
use crate::store::{
    self, KvStore, RangeOptions, RangeResult, Writer, compactable, finish_range, limit_of,
    resolve_read_rev,
};
use crate::tree_index::KeyRange;
use crate::{Event, EventKind, MvccError};

/// What a committed batch changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The store's current revision after the batch.
    pub revision: i64,
    /// The compaction revision after the batch.
    pub compact_revision: i64,
    /// The consistent index after the batch.
    pub consistent_index: ConsistentIndex,
    /// Every change of the batch, in revision order: hand them to the watchers now, not
    /// before the commit returned.
    pub events: Vec<Event>,
}

/// Result of [`TxnWrite::put`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The key as written.
    pub kv: KeyValue,
    /// The key just before this put (`PutResponse.prev_kv`).
    pub prev_kv: Option<KeyValue>,
}

/// The open write batch. Dropping it without [`WriteBatch::commit`] discards the backend
/// transaction; if any transaction had changed keys, the store is then poisoned (its index
/// holds changes the backend never got) and must be reopened.
pub struct WriteBatch<'a, B: Backend + 'a> {
    store: &'a KvStore<B>,
    writer: MutexGuard<'a, Writer>,
    tx: Option<B::WriteTx<'a>>,
    /// Revision of the last transaction of this batch that changed something.
    current_rev: i64,
    compact_rev: i64,
    /// Compactions to apply to the index at commit, in order.
    compactions: Vec<i64>,
    consistent_index: ConsistentIndex,
    events: Vec<Event>,
    /// The index holds changes of this batch.
    dirty: bool,
    /// A backend write failed part-way: committing could store half a transaction.
    failed: bool,
}

impl<'a, B: Backend> WriteBatch<'a, B> {
    pub(crate) fn new(
        store: &'a KvStore<B>,
        writer: MutexGuard<'a, Writer>,
        tx: B::WriteTx<'a>,
        current_rev: i64,
        compact_rev: i64,
        consistent_index: ConsistentIndex,
    ) -> Self {
        Self {
            store,
            writer,
            tx: Some(tx),
            current_rev,
            compact_rev,
            compactions: Vec::new(),
            consistent_index,
            events: Vec::new(),
            dirty: false,
            failed: false,
        }
    }

    /// The revision including this batch's transactions so far.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The compaction revision including this batch's compactions.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Starts a transaction at revision `current_revision() + 1`. Ending it (or dropping
    /// it) advances the batch's revision if it changed anything.
    pub fn txn(&mut self) -> TxnWrite<'_, 'a, B> {
        let main = self.current_rev + 1;
        TxnWrite {
            batch: self,
            main,
            sub: 0,
            touched: HashSet::new(),
        }
    }

    /// Compacts history at `revision`: every version at or below it is removed from the
    /// backend except the newest version of each live key and tombstones at exactly
    /// `revision`. Reads below `revision` fail with [`MvccError::Compacted`] once committed.
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        self.usable()?;
        if revision <= self.compact_rev {
            return Err(MvccError::Compacted {
                requested: revision,
                compact_revision: self.compact_rev,
            });
        }
        if revision > self.current_rev {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current_revision: self.current_rev,
            });
        }
        let keep = self.store.state().index.compaction_keep(revision);
        let result = physical_compaction(self.tx(), revision, &keep);
        self.check(result)?;
        // Invariant: the compaction revision only moves forward and never passes the
        // current revision.
        assert!(
            revision > self.compact_rev && revision <= self.current_rev,
            "compaction to {revision} with compacted {} and current {}",
            self.compact_rev,
            self.current_rev
        );
        self.compact_rev = revision;
        self.compactions.push(revision);
        Ok(())
    }

    /// Records the index and term of the last Raft entry applied in this batch, in the same
    /// backend transaction as its effects.
    pub fn set_consistent_index(
        &mut self,
        consistent_index: ConsistentIndex,
    ) -> Result<(), MvccError> {
        self.usable()?;
        let result =
            meta::write_consistent_index(self.tx(), consistent_index).map_err(MvccError::from);
        self.check(result)?;
        self.consistent_index = consistent_index;
        Ok(())
    }

    /// The backend transaction, for the lease, auth and membership layers to write their
    /// buckets atomically with this batch. They must leave the `key` bucket and the MVCC
    /// keys of `meta` alone.
    pub fn backend_tx(&mut self) -> &mut B::WriteTx<'a> {
        self.tx()
    }

    /// Commits the batch durably and publishes it to readers.
    ///
    /// On error the store is poisoned: the backend may or may not hold the batch, and the
    /// node must stop (fail-stop) and recover by reopening.
    pub fn commit(mut self) -> Result<Committed, MvccError> {
        if self.failed {
            self.writer.poisoned = true;
            return Err(MvccError::Poisoned);
        }
        let tx = self
            .tx
            .take()
            .expect("the backend transaction is present until commit");
        let events = std::mem::take(&mut self.events);
        let result = if self.compactions.is_empty() {
            tx.commit()
                .map(|()| self.publish(&mut self.store.state_mut(), events))
        } else {
            // Readers begin their backend snapshot under the state lock. Holding it across
            // the commit means no reader pairs a snapshot that lacks the deleted revisions
            // with the old index that still points at them.
            let mut state = self.store.state_mut();
            tx.commit().map(|()| {
                for &revision in &self.compactions {
                    state.index.compact(revision);
                }
                self.publish(&mut state, events)
            })
        };
        if result.is_err() {
            self.writer.poisoned = true;
        }
        Ok(result?)
    }

    fn publish(&self, state: &mut store::State, events: Vec<Event>) -> Committed {
        // Invariant: published revisions never go backwards.
        assert!(
            self.current_rev >= state.current_rev && self.compact_rev >= state.compact_rev,
            "publishing revision {} / compacted {} over {} / {}",
            self.current_rev,
            self.compact_rev,
            state.current_rev,
            state.compact_rev
        );
        state.current_rev = self.current_rev;
        state.compact_rev = self.compact_rev;
        state.consistent_index = self.consistent_index;
        Committed {
            revision: self.current_rev,
            compact_revision: self.compact_rev,
            consistent_index: self.consistent_index,
            events,
        }
    }

    fn tx(&mut self) -> &mut B::WriteTx<'a> {
        self.tx
            .as_mut()
            .expect("the backend transaction is present until commit")
    }

    fn usable(&self) -> Result<(), MvccError> {
        if self.failed {
            Err(MvccError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Marks the batch failed when a backend operation that may have half-written fails.
    fn check<T>(&mut self, result: Result<T, MvccError>) -> Result<T, MvccError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

impl<B: Backend> Drop for WriteBatch<'_, B> {
    fn drop(&mut self) {
        if self.tx.is_some() && (self.dirty || self.failed) {
            self.writer.poisoned = true;
        }
    }
}

/// Removes from the backend every revision at or below `revision` not in `keep`, and
/// records the compaction in `meta`.
pub(crate) fn physical_compaction(
    tx: &mut impl WriteTx,
    revision: i64,
    keep: &HashSet<Revision>,
) -> Result<(), MvccError> {
    for key in compactable(tx, revision, keep)? {
        tx.delete(Bucket::Key, &key)?;
    }
    let at = Revision::new(revision, 0).to_bytes();
    tx.put(Bucket::Meta, meta::SCHEDULED_COMPACT_KEY, &at)?;
    tx.put(Bucket::Meta, meta::FINISHED_COMPACT_KEY, &at)?;
    Ok(())
}

/// One transaction of a batch: every change gets revision `main` and the next sub revision.
pub struct TxnWrite<'b, 'a, B: Backend + 'a> {
    batch: &'b mut WriteBatch<'a, B>,
    main: i64,
    sub: i64,
    /// Keys already changed by this transaction.
    touched: HashSet<Vec<u8>>,
}

impl<B: Backend> TxnWrite<'_, '_, B> {
    /// The revision this transaction's changes get.
    pub fn revision(&self) -> i64 {
        self.main
    }

    /// The revision a read in this transaction sees as current: its own revision once it
    /// changed something, the previous one before.
    pub fn current_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    /// Range read that sees this batch's and this transaction's changes; otherwise like
    /// [`crate::ReadView::range`].
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let current = self.current_revision();
        let rev = resolve_read_rev(options.revision, current, self.batch.compact_rev)?;
        let (revs, count) = self.batch.store.state().index.range(
            KeyRange::new(key, range_end),
            rev,
            limit_of(options),
        );
        let tx = self
            .batch
            .tx
            .as_ref()
            .expect("the backend transaction is present until commit");
        finish_range(tx, revs, count, options, current)
    }

    /// Puts `key`: a new version if it exists (keeping its create revision), else version 1
    /// of a new generation.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<PutResult, MvccError> {
        self.batch.usable()?;
        let result = self.put_inner(key, value, lease);
        self.batch.check(result)
    }

    fn put_inner(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<PutResult, MvccError> {
        let rev = Revision::new(self.main, self.sub);
        let (latest, before_txn) = self.lookup(key);
        let tx = self.batch.tx();
        let prev_kv = latest.map(|r| store::fetch(tx, r.modified)).transpose()?;
        let (create_revision, version) =
            latest.map_or((self.main, 1), |r| (r.created.main, r.version + 1));
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: self.main,
            version,
            value: value.to_vec(),
            lease,
        };
        tx.put(
            Bucket::Key,
            &RevisionKey {
                rev,
                tombstone: false,
            }
            .to_bytes(),
            &key_value::encode(&kv),
        )?;
        let event_prev = self.prev_before_txn(key, before_txn, &prev_kv)?;
        {
            let mut state = self.batch.store.state_mut();
            // Invariant: changes of the open batch stay above the published revision.
            assert!(
                rev.main > state.current_rev,
                "put at {rev:?} with published revision {}",
                state.current_rev
            );
            state
                .index
                .put(key, rev)
                .unwrap_or_else(|e| panic!("key index rejected put of {key:?}: {e}"));
        }
        self.record(
            key,
            Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev_kv: event_prev,
            },
        );
        Ok(PutResult { kv, prev_kv })
    }

    /// Deletes every key of `[key, range_end)` (etcd's conventions) and returns the deleted
    /// key-values as they were just before.
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<KeyValue>, MvccError> {
        self.batch.usable()?;
        let result = self.delete_inner(key, range_end);
        self.batch.check(result)
    }

    fn delete_inner(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        let mut targets = Vec::new();
        self.batch
            .store
            .state()
            .index
            .visit(KeyRange::new(key, range_end), self.main, |k, at| {
                targets.push((k.to_vec(), at.modified));
            });
        let mut deleted = Vec::with_capacity(targets.len());
        for (k, modified) in targets {
            let rev = Revision::new(self.main, self.sub);
            let (_, before_txn) = self.lookup(&k);
            let tx = self.batch.tx();
            let prev = store::fetch(tx, modified)?;
            let tombstone = KeyValue::tombstone(&k, self.main);
            tx.put(
                Bucket::Key,
                &RevisionKey {
                    rev,
                    tombstone: true,
                }
                .to_bytes(),
                &key_value::encode(&tombstone),
            )?;
            let event_prev = self.prev_before_txn(&k, before_txn, &Some(prev.clone()))?;
            {
                let mut state = self.batch.store.state_mut();
                // Invariant: changes of the open batch stay above the published revision.
                assert!(
                    rev.main > state.current_rev,
                    "delete at {rev:?} with published revision {}",
                    state.current_rev
                );
                state
                    .index
                    .tombstone(&k, rev)
                    .unwrap_or_else(|e| panic!("key index rejected delete of {k:?}: {e}"));
            }
            self.record(
                &k,
                Event {
                    kind: EventKind::Delete,
                    kv: tombstone,
                    prev_kv: event_prev,
                },
            );
            deleted.push(prev);
        }
        Ok(deleted)
    }

    /// Ends the transaction; returns its revision (`ResponseHeader.revision`): its own if it
    /// changed something, else the current one.
    pub fn end(self) -> i64 {
        self.current_revision()
    }

    /// The key's latest state, and, if this transaction already changed the key, its state
    /// before the transaction.
    fn lookup(&self, key: &[u8]) -> (Option<crate::key_index::KeyAt>, Option<Revision>) {
        let state = self.batch.store.state();
        let latest = state.index.get(key, self.main);
        let before = if self.touched.contains(key) {
            state.index.get(key, self.main - 1).map(|at| at.modified)
        } else {
            latest.map(|at| at.modified)
        };
        (latest, before)
    }

    /// The event's `prev_kv`: the key at `main - 1`, which is the latest state unless this
    /// transaction already changed the key.
    fn prev_before_txn(
        &mut self,
        key: &[u8],
        before_txn: Option<Revision>,
        latest: &Option<KeyValue>,
    ) -> Result<Option<KeyValue>, MvccError> {
        if !self.touched.contains(key) {
            return Ok(latest.clone());
        }
        // main - 1 is the batch's current revision, never below its compaction revision,
        // so the version visible there is still in the backend.
        before_txn
            .map(|rev| store::fetch(self.batch.tx(), rev))
            .transpose()
    }

    fn record(&mut self, key: &[u8], event: Event) {
        self.batch.dirty = true;
        self.batch.events.push(event);
        self.touched.insert(key.to_vec());
        self.sub += 1;
    }
}

impl<B: Backend> Drop for TxnWrite<'_, '_, B> {
    fn drop(&mut self) {
        if self.sub > 0 {
            // Invariant: each changing transaction takes the next revision.
            assert_eq!(
                self.main,
                self.batch.current_rev + 1,
                "transaction revisions must be consecutive"
            );
            self.batch.current_rev = self.main;
        }
    }
}
