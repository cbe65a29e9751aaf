//! Scenario tests of the KV store's public API. Each states the behaviour it pins down.

use std::ops::ControlFlow;

use retcd_backend::{Backend, Bucket, MemBackend, ReadTx, RedbBackend, RedbConfig, WriteTx, meta};
use retcd_mvcc::{
    Committed, ConsistentIndex, EventKind, KeyValue, KvStore, MvccError, RangeOptions, Revision,
    RevisionKey,
};

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.into(),
        lease: 0,
    }
}

fn put<B: Backend>(store: &KvStore<B>, key: &str, value: &str) -> Committed {
    let mut batch = store.begin_batch().unwrap();
    batch
        .txn()
        .put(key.as_bytes(), value.as_bytes(), 0)
        .unwrap();
    batch.commit().unwrap()
}

fn delete<B: Backend>(store: &KvStore<B>, key: &str, range_end: &str) -> Committed {
    let mut batch = store.begin_batch().unwrap();
    batch
        .txn()
        .delete_range(key.as_bytes(), range_end.as_bytes())
        .unwrap();
    batch.commit().unwrap()
}

fn compact<B: Backend>(store: &KvStore<B>, rev: i64) -> Result<Committed, MvccError> {
    let mut batch = store.begin_batch().unwrap();
    batch.compact(rev)?;
    batch.commit()
}

fn get<B: Backend>(store: &KvStore<B>, key: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
    let result = store.range(
        key.as_bytes(),
        b"",
        RangeOptions {
            revision: rev,
            ..Default::default()
        },
    )?;
    Ok(result.kvs.into_iter().next())
}

fn keys(result: &retcd_mvcc::RangeResult) -> Vec<String> {
    result
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

/// Every entry of the key bucket, as revision keys.
fn stored_revisions(backend: &impl Backend) -> Vec<RevisionKey> {
    let tx = backend.begin_read().unwrap();
    let mut out = Vec::new();
    tx.scan(Bucket::Key, &[], None, &mut |k, _| {
        out.push(RevisionKey::from_bytes(k).unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn rk(main: i64, sub: i64, tombstone: bool) -> RevisionKey {
    RevisionKey {
        rev: Revision::new(main, sub),
        tombstone,
    }
}

// Goal: a fresh store is at revision 1, the first write gets revision 2, and versions and
// create revisions follow etcd (a delete resets the version; a re-put starts a new life).
#[test]
fn revisions_versions_and_create_revisions_follow_etcd() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    assert_eq!(
        (store.current_revision(), store.compact_revision()),
        (1, -1)
    );
    assert_eq!(put(&store, "a", "1").revision, 2);
    put(&store, "a", "2");
    assert_eq!(get(&store, "a", 0).unwrap(), Some(kv("a", "2", 2, 3, 2)));
    let deleted = delete(&store, "a", "");
    assert_eq!(deleted.revision, 4);
    assert_eq!(deleted.events[0].kind, EventKind::Delete);
    assert_eq!(deleted.events[0].kv, KeyValue::tombstone(b"a", 4));
    assert_eq!(deleted.events[0].prev_kv, Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(get(&store, "a", 0).unwrap(), None);
    put(&store, "a", "3");
    assert_eq!(get(&store, "a", 0).unwrap(), Some(kv("a", "3", 5, 5, 1)));
    // History stays readable.
    assert_eq!(get(&store, "a", 2).unwrap(), Some(kv("a", "1", 2, 2, 1)));
    assert_eq!(get(&store, "a", 4).unwrap(), None);
    assert_eq!(get(&store, "a", 1).unwrap(), None);
}

// Goal: a transaction is atomic at one revision with increasing sub revisions; reads inside
// it see its own writes; a transaction that changes nothing takes no revision.
#[test]
fn a_transaction_takes_one_revision() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    put(&store, "x", "old");
    let mut batch = store.begin_batch().unwrap();
    {
        let mut txn = batch.txn();
        assert_eq!(txn.current_revision(), 2);
        let first = txn.put(b"a", b"1", 7).unwrap();
        assert_eq!(
            first.kv,
            KeyValue {
                lease: 7,
                ..kv("a", "1", 3, 3, 1)
            }
        );
        let second = txn.put(b"a", b"2", 0).unwrap();
        assert_eq!(
            second.prev_kv,
            Some(first.kv.clone()),
            "PutResponse.prev_kv is the state just before"
        );
        assert_eq!(second.kv, kv("a", "2", 3, 3, 2));
        let deleted = txn.delete_range(b"x", b"").unwrap();
        assert_eq!(deleted, vec![kv("x", "old", 2, 2, 1)]);
        let seen = txn.range(b"a", b"\0", RangeOptions::default()).unwrap();
        assert_eq!((keys(&seen), seen.revision), (vec!["a".to_string()], 3));
        assert_eq!(txn.end(), 3);
    }
    {
        let mut txn = batch.txn();
        assert!(txn.delete_range(b"nothing", b"").unwrap().is_empty());
        assert_eq!(
            txn.end(),
            3,
            "a transaction without changes takes no revision"
        );
    }
    // Not visible outside the batch before commit.
    assert_eq!(store.current_revision(), 2);
    assert_eq!(get(&store, "a", 0).unwrap(), None);
    let committed = batch.commit().unwrap();
    assert_eq!(committed.revision, 3);
    let kinds: Vec<_> = committed
        .events
        .iter()
        .map(|e| (e.kind, e.kv.mod_revision))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, 3),
            (EventKind::Put, 3),
            (EventKind::Delete, 3)
        ]
    );
    // Watch events carry the state before the transaction.
    assert_eq!(committed.events[1].prev_kv, None);
    assert_eq!(
        stored_revisions(store.backend()),
        vec![
            rk(2, 0, false),
            rk(3, 0, false),
            rk(3, 1, false),
            rk(3, 2, true)
        ]
    );
}

// Goal: ranges follow etcd's key conventions, and count ignores limit.
#[test]
fn range_conventions_limit_and_count() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    for key in ["a", "foo", "foo/1", "foo/2", "fop", "z"] {
        put(&store, key, key);
    }
    let all = |key: &str, end: &str, limit: i64| {
        store
            .range(
                key.as_bytes(),
                end.as_bytes(),
                RangeOptions {
                    limit,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    assert_eq!(keys(&all("foo", "", 0)), vec!["foo"]);
    assert_eq!(keys(&all("foo", "fop", 0)), vec!["foo", "foo/1", "foo/2"]);
    assert_eq!(
        keys(&all("foo", "\0", 0)),
        vec!["foo", "foo/1", "foo/2", "fop", "z"]
    );
    assert_eq!(keys(&all("\0", "\0", 0)).len(), 6);
    assert!(all("z", "a", 0).kvs.is_empty());
    let limited = all("\0", "\0", 2);
    assert_eq!(
        (keys(&limited), limited.count, limited.more),
        (vec!["a".to_string(), "foo".into()], 6, true)
    );
    let exact = all("\0", "\0", 6);
    assert_eq!((exact.count, exact.more), (6, false));
    let counted = store
        .range(
            b"foo",
            b"fop",
            RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (
            counted.kvs.len(),
            counted.count,
            counted.more,
            counted.revision
        ),
        (0, 3, false, 7)
    );
    let past = store
        .range(
            b"\0",
            b"\0",
            RangeOptions {
                revision: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (keys(&past), past.revision),
        (vec!["a".to_string(), "foo".into()], 7)
    );
}

// Goal: a future revision is rejected before a compacted one, for reads and compactions.
#[test]
fn future_and_compacted_revisions_are_rejected() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    for i in 0..4 {
        put(&store, "k", &i.to_string());
    }
    assert!(matches!(
        get(&store, "k", 6),
        Err(MvccError::FutureRevision {
            requested: 6,
            current_revision: 5
        })
    ));
    assert!(matches!(
        compact(&store, 6),
        Err(MvccError::FutureRevision { .. })
    ));
    compact(&store, 4).unwrap();
    assert!(matches!(
        get(&store, "k", 3),
        Err(MvccError::Compacted {
            requested: 3,
            compact_revision: 4
        })
    ));
    assert_eq!(get(&store, "k", 4).unwrap(), Some(kv("k", "2", 2, 4, 3)));
    assert!(matches!(
        compact(&store, 4),
        Err(MvccError::Compacted { .. })
    ));
    assert!(matches!(
        compact(&store, 3),
        Err(MvccError::Compacted { .. })
    ));
    // A rejected compaction leaves the batch usable.
    let mut batch = store.begin_batch().unwrap();
    assert!(batch.compact(2).is_err());
    batch.txn().put(b"k", b"after", 0).unwrap();
    assert_eq!(batch.commit().unwrap().revision, 6);
}

// Goal: compaction removes from the backend every version at or below R except the newest
// version of each live key and tombstones at exactly R, and the result survives a restart.
#[test]
fn compaction_removes_the_right_revisions() {
    let backend = MemBackend::new();
    let store = KvStore::open(backend.clone()).unwrap();
    put(&store, "a", "1"); // 2
    put(&store, "a", "2"); // 3
    put(&store, "b", "1"); // 4
    delete(&store, "b", ""); // 5
    put(&store, "c", "1"); // 6
    delete(&store, "c", ""); // 7
    put(&store, "a", "3"); // 8
    compact(&store, 7).unwrap();
    // a@3 is a's newest at or below 7; b's tombstone at 5 < 7 goes with its history; c's
    // tombstone at exactly 7 stays for watchers starting at 7.
    let expected = vec![rk(3, 0, false), rk(7, 0, true), rk(8, 0, false)];
    assert_eq!(stored_revisions(&backend), expected);
    assert_eq!(get(&store, "a", 7).unwrap(), Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(get(&store, "c", 7).unwrap(), None);
    let history = store.view().unwrap().events(7, 8).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.kind, e.kv.mod_revision))
            .collect::<Vec<_>>(),
        vec![(EventKind::Delete, 7), (EventKind::Put, 8)]
    );
    assert_eq!(history[0].prev_kv, None, "the state at 6 is compacted");
    assert_eq!(history[1].prev_kv, Some(kv("a", "2", 2, 3, 2)));
    assert!(matches!(
        store.view().unwrap().events(6, 8),
        Err(MvccError::Compacted { .. })
    ));
    drop(store);
    let store = KvStore::open(backend.clone()).unwrap();
    assert_eq!((store.current_revision(), store.compact_revision()), (8, 7));
    assert_eq!(get(&store, "a", 0).unwrap(), Some(kv("a", "3", 2, 8, 3)));
    compact(&store, 8).unwrap();
    assert_eq!(stored_revisions(&backend), vec![rk(8, 0, false)]);
}

// Goal: the current revision survives a restart even when compaction removed every record
// of the last revisions, so revisions never go backwards.
#[test]
fn revision_never_goes_backwards_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store =
            KvStore::open(RedbBackend::open(&path, &RedbConfig::default()).unwrap()).unwrap();
        put(&store, "a", "1");
        put(&store, "b", "1");
        delete(&store, "\0", "\0"); // 4
        put(&store, "c", "1"); // 5
        delete(&store, "c", ""); // 6
        compact(&store, 5).unwrap();
        let mut batch = store.begin_batch().unwrap();
        batch
            .set_consistent_index(ConsistentIndex { index: 42, term: 3 })
            .unwrap();
        batch.commit().unwrap();
    }
    let store = KvStore::open(RedbBackend::open(&path, &RedbConfig::default()).unwrap()).unwrap();
    assert_eq!((store.current_revision(), store.compact_revision()), (6, 5));
    assert_eq!(
        store.consistent_index(),
        ConsistentIndex { index: 42, term: 3 }
    );
    compact(&store, 6).unwrap();
    drop(store);
    let store = KvStore::open(RedbBackend::open(&path, &RedbConfig::default()).unwrap()).unwrap();
    assert_eq!((store.current_revision(), store.compact_revision()), (6, 6));
    // Only c's tombstone at exactly 6 remains; the restored index must still serve its
    // DELETE event to a watcher starting at 6 (etcd #19179).
    assert_eq!(stored_revisions(store.backend()), vec![rk(6, 0, true)]);
    let events = store.view().unwrap().events(6, 6).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.kv.key.clone()))
            .collect::<Vec<_>>(),
        vec![(EventKind::Delete, b"c".to_vec())]
    );
    assert_eq!(get(&store, "c", 0).unwrap(), None);
    assert_eq!(put(&store, "c", "2").revision, 7);
    assert_eq!(get(&store, "c", 0).unwrap(), Some(kv("c", "2", 7, 7, 1)));
}

// Goal: readers see only committed revisions, and a view keeps its revision while writes
// commit, until a compaction passes it.
#[test]
fn readers_are_isolated_from_the_open_batch() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    put(&store, "a", "1");
    let early = store.view().unwrap();
    let mut batch = store.begin_batch().unwrap();
    batch.txn().put(b"a", b"2", 0).unwrap();
    batch.txn().put(b"b", b"1", 0).unwrap();
    let during = store.range(b"\0", b"\0", RangeOptions::default()).unwrap();
    assert_eq!((keys(&during), during.revision), (vec!["a".to_string()], 2));
    assert!(matches!(
        get(&store, "a", 3),
        Err(MvccError::FutureRevision { .. })
    ));
    batch.commit().unwrap();
    let after = store.range(b"\0", b"\0", RangeOptions::default()).unwrap();
    assert_eq!((after.count, after.revision), (2, 4));
    let old = early.range(b"\0", b"\0", RangeOptions::default()).unwrap();
    assert_eq!((old.kvs, old.revision), (vec![kv("a", "1", 2, 2, 1)], 2));
    compact(&store, 3).unwrap();
    assert!(matches!(
        early.range(b"a", b"", RangeOptions::default()),
        Err(MvccError::Compacted { .. })
    ));
}

// Goal: a failed commit poisons the store instead of leaving it half-applied; reopening
// recovers the last committed state.
#[test]
fn failed_commit_poisons_the_store() {
    let backend = MemBackend::new();
    let store = KvStore::open(backend.clone()).unwrap();
    put(&store, "a", "1");
    backend.fail_next_commit();
    let mut batch = store.begin_batch().unwrap();
    batch.txn().put(b"a", b"2", 0).unwrap();
    assert!(matches!(batch.commit(), Err(MvccError::Backend(_))));
    assert!(matches!(
        store.begin_batch().err(),
        Some(MvccError::Poisoned)
    ));
    assert_eq!(
        get(&store, "a", 0).unwrap(),
        Some(kv("a", "1", 2, 2, 1)),
        "reads still serve committed data"
    );
    drop(store);
    let store = KvStore::open(backend).unwrap();
    assert_eq!(store.current_revision(), 2);
    assert_eq!(put(&store, "a", "2").revision, 3);
}

// Goal: dropping a batch poisons the store only if it changed the index.
#[test]
fn dropping_a_batch_poisons_only_if_it_wrote() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    {
        let mut batch = store.begin_batch().unwrap();
        batch
            .txn()
            .range(b"a", b"", RangeOptions::default())
            .unwrap();
        batch.compact(1).unwrap();
    }
    assert_eq!(
        store.compact_revision(),
        -1,
        "an uncommitted compaction has no effect"
    );
    {
        let mut batch = store.begin_batch().unwrap();
        batch.txn().put(b"a", b"1", 0).unwrap();
    }
    assert!(matches!(
        store.begin_batch().err(),
        Some(MvccError::Poisoned)
    ));
    assert_eq!(store.current_revision(), 1);
}

// Goal: a compaction that was scheduled but not finished (meta says so) is finished on open.
#[test]
fn open_finishes_a_scheduled_compaction() {
    let backend = MemBackend::new();
    let store = KvStore::open(backend.clone()).unwrap();
    for i in 0..4 {
        put(&store, "k", &i.to_string()); // 2..=5
    }
    drop(store);
    let mut tx = backend.begin_write().unwrap();
    tx.put(
        Bucket::Meta,
        meta::SCHEDULED_COMPACT_KEY,
        &Revision::new(4, 0).to_bytes(),
    )
    .unwrap();
    tx.commit().unwrap();
    let store = KvStore::open(backend.clone()).unwrap();
    assert_eq!(store.compact_revision(), 4);
    assert_eq!(
        stored_revisions(&backend),
        vec![rk(4, 0, false), rk(5, 0, false)]
    );
    let finished = backend
        .begin_read()
        .unwrap()
        .get(Bucket::Meta, meta::FINISHED_COMPACT_KEY)
        .unwrap();
    assert_eq!(finished, Some(Revision::new(4, 0).to_bytes().to_vec()));
}

// Goal: damaged records are reported as corruption on open, not silently skipped.
#[test]
fn corrupted_history_is_detected_on_open() {
    let backend = MemBackend::new();
    let store = KvStore::open(backend.clone()).unwrap();
    put(&store, "k", "1");
    put(&store, "k", "2");
    drop(store);
    let mut tx = backend.begin_write().unwrap();
    // Claim version 5 for the second put: it contradicts the history before it.
    let bad = KvStore::open(MemBackend::new()).unwrap();
    let mut batch = bad.begin_batch().unwrap();
    for _ in 0..5 {
        batch.txn().put(b"k", b"2", 0).unwrap();
    }
    batch.commit().unwrap();
    let record = bad
        .backend()
        .begin_read()
        .unwrap()
        .get(Bucket::Key, &Revision::new(6, 0).to_bytes())
        .unwrap()
        .unwrap();
    tx.put(Bucket::Key, &Revision::new(3, 0).to_bytes(), &record)
        .unwrap();
    tx.commit().unwrap();
    assert!(matches!(
        KvStore::open(backend.clone()).err(),
        Some(MvccError::Corrupted(_))
    ));
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, &Revision::new(3, 0).to_bytes(), b"garbage")
        .unwrap();
    tx.commit().unwrap();
    assert!(matches!(
        KvStore::open(backend.clone()).err(),
        Some(MvccError::Corrupted(_))
    ));
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"not-a-revision", b"x").unwrap();
    tx.commit().unwrap();
    assert!(matches!(
        KvStore::open(backend).err(),
        Some(MvccError::Corrupted(_))
    ));
}

// Goal: HashKV depends only on the history: equal for equal histories on different
// backends and across restarts, different when a value differs.
#[test]
fn hash_by_rev_is_a_function_of_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    fn history<B: Backend>(store: &KvStore<B>) {
        put(store, "a", "1");
        put(store, "b", "1");
        put(store, "a", "2");
        delete(store, "b", "");
        compact(store, 4).unwrap();
        put(store, "c", "1");
    }
    let mem = KvStore::open(MemBackend::new()).unwrap();
    history(&mem);
    let redb = KvStore::open(RedbBackend::open(&path, &RedbConfig::default()).unwrap()).unwrap();
    history(&redb);
    let expected = mem.hash_by_rev(0).unwrap();
    assert_eq!(
        (
            expected.revision,
            expected.compact_revision,
            expected.hash_revision
        ),
        (6, 4, 6)
    );
    assert_eq!(redb.hash_by_rev(0).unwrap(), expected);
    assert_eq!(redb.hash_by_rev(5).unwrap(), mem.hash_by_rev(5).unwrap());
    assert_ne!(mem.hash_by_rev(5).unwrap().hash, expected.hash);
    drop(redb);
    let redb = KvStore::open(RedbBackend::open(&path, &RedbConfig::default()).unwrap()).unwrap();
    assert_eq!(redb.hash_by_rev(0).unwrap(), expected);
    assert!(matches!(
        redb.hash_by_rev(3),
        Err(MvccError::Compacted { .. })
    ));
    assert!(matches!(
        redb.hash_by_rev(7),
        Err(MvccError::FutureRevision { .. })
    ));
    let other = KvStore::open(MemBackend::new()).unwrap();
    put(&other, "a", "1");
    put(&other, "b", "1");
    put(&other, "a", "X");
    delete(&other, "b", "");
    compact(&other, 4).unwrap();
    put(&other, "c", "1");
    assert_ne!(other.hash_by_rev(0).unwrap().hash, expected.hash);
}

// Goal: the consistent index is committed with the batch and never goes backwards.
#[test]
#[should_panic(expected = "consistent index went backwards")]
fn consistent_index_never_goes_backwards() {
    let store = KvStore::open(MemBackend::new()).unwrap();
    let mut batch = store.begin_batch().unwrap();
    batch
        .set_consistent_index(ConsistentIndex { index: 10, term: 2 })
        .unwrap();
    let committed = batch.commit().unwrap();
    assert_eq!(
        committed.consistent_index,
        ConsistentIndex { index: 10, term: 2 }
    );
    let mut batch = store.begin_batch().unwrap();
    let _ = batch.set_consistent_index(ConsistentIndex { index: 9, term: 2 });
}

// Goal: readers running while batches (with compactions) commit always see whole
// revisions: every key holds the value written at the revision they read, or the read
// fails cleanly as compacted.
#[test]
fn concurrent_readers_see_whole_revisions() {
    use std::sync::atomic::{AtomicBool, Ordering};

    fn assert_shareable<T: Send + Sync>() {}
    assert_shareable::<KvStore<MemBackend>>();
    assert_shareable::<KvStore<RedbBackend>>();

    const KEYS: usize = 8;
    let store = KvStore::open(MemBackend::new()).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                let mut batch = store.begin_batch().unwrap();
                // Compacting first keeps the compaction uncommitted while the batch's
                // transaction runs, which is when a reader could see it too early.
                if i % 5 == 4 {
                    let target = batch.current_revision() - 3;
                    batch.compact(target).unwrap();
                }
                let mut txn = batch.txn();
                let value = txn.revision().to_string();
                for k in 0..KEYS {
                    txn.put(format!("k{k}").as_bytes(), value.as_bytes(), 0)
                        .unwrap();
                }
                drop(txn);
                batch.commit().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut reads = 0;
                while reads < 200 || !done.load(Ordering::SeqCst) {
                    reads += 1;
                    let view = store.view().unwrap();
                    let latest = view.revision();
                    for back in 0..6 {
                        let rev = latest - back;
                        if rev < 2 {
                            continue;
                        }
                        let options = RangeOptions {
                            revision: rev,
                            ..Default::default()
                        };
                        match view.range(b"k", b"l", options) {
                            Ok(result) => {
                                assert_eq!(result.count, KEYS as u64, "at {rev}");
                                for kv in &result.kvs {
                                    assert_eq!(kv.mod_revision, rev);
                                    assert_eq!(kv.value, rev.to_string().into_bytes());
                                }
                            }
                            Err(MvccError::Compacted {
                                compact_revision, ..
                            }) => {
                                assert!(rev < compact_revision)
                            }
                            Err(other) => panic!("read at {rev}: {other}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(store.current_revision(), 301);
}

// Goal: restoring a snapshot image replaces the whole store in place: keys, history,
// compaction revision and consistent index become the image's, and a bad image changes
// nothing.
#[test]
fn restore_snapshot_replaces_the_store_in_place() {
    let source = KvStore::open(MemBackend::default()).unwrap();
    put(&source, "a", "1");
    put(&source, "b", "2");
    put(&source, "a", "3");
    compact(&source, 3).unwrap();
    let mut image = Vec::new();
    source
        .backend()
        .begin_read()
        .unwrap()
        .write_snapshot(&mut image)
        .unwrap();

    let target = KvStore::open(MemBackend::default()).unwrap();
    for i in 0..10 {
        put(&target, &format!("old{i}"), "x");
    }
    // A truncated image is refused and the target keeps its data.
    assert!(
        target
            .restore_snapshot(&mut &image[..image.len() - 3])
            .is_err()
    );
    assert_eq!(target.current_revision(), 11);
    target.restore_snapshot(&mut image.as_slice()).unwrap();
    assert_eq!(target.current_revision(), source.current_revision());
    assert_eq!(target.compact_revision(), 3);
    assert_eq!(get(&target, "old0", 0).unwrap(), None);
    assert_eq!(get(&target, "a", 0).unwrap(), Some(kv("a", "3", 2, 4, 2)));
    assert!(matches!(
        get(&target, "a", 2),
        Err(MvccError::Compacted { .. })
    ));
    // The restored store takes writes after the image's revision.
    assert_eq!(
        put(&target, "c", "4").revision,
        source.current_revision() + 1
    );
}
