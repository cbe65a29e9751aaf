//! One storage contract, run against every backend implementation.

use std::ops::ControlFlow;
use std::time::Duration;

use retcd_backend::meta::{self, ConsistentIndex};
use retcd_backend::{
    Backend, BackendError, Bucket, MemBackend, ReadTx, RedbBackend, RedbConfig, WriteTx,
};

fn collect(
    tx: &impl ReadTx,
    bucket: Bucket,
    start: &[u8],
    end: Option<&[u8]>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    tx.scan(bucket, start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Everything in every bucket, for comparing whole databases.
fn dump(backend: &impl Backend) -> Vec<(Bucket, Entries)> {
    let tx = backend.begin_read().unwrap();
    Bucket::ALL
        .iter()
        .map(|&b| (b, collect(&tx, b, &[], None)))
        .collect()
}

fn fill(backend: &impl Backend) {
    let mut tx = backend.begin_write().unwrap();
    for i in 0..50u32 {
        tx.put(
            Bucket::Key,
            &i.to_be_bytes(),
            format!("value-{i}").as_bytes(),
        )
        .unwrap();
    }
    tx.put(Bucket::Lease, b"lease-1", b"").unwrap();
    tx.put(Bucket::Members, b"m", &[0u8; 300]).unwrap();
    meta::write_consistent_index(&mut tx, ConsistentIndex { index: 9, term: 2 }).unwrap();
    tx.commit().unwrap();
}

// Goal: writes are visible inside their transaction at once, to readers only after commit.
fn writes_become_visible_at_commit(backend: &impl Backend) {
    let before = backend.begin_read().unwrap();
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"a", b"1").unwrap();
    tx.put(Bucket::Meta, b"a", b"meta").unwrap();
    assert_eq!(tx.get(Bucket::Key, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        backend
            .begin_read()
            .unwrap()
            .get(Bucket::Key, b"a")
            .unwrap(),
        None
    );
    tx.commit().unwrap();
    let after = backend.begin_read().unwrap();
    assert_eq!(after.get(Bucket::Key, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        after.get(Bucket::Meta, b"a").unwrap(),
        Some(b"meta".to_vec())
    );
    assert_eq!(
        after.get(Bucket::Lease, b"a").unwrap(),
        None,
        "buckets are separate"
    );
    // A reader keeps the snapshot it began with.
    assert_eq!(before.get(Bucket::Key, b"a").unwrap(), None);
}

// Goal: a write transaction dropped without commit leaves no trace.
fn dropped_write_tx_is_discarded(backend: &impl Backend) {
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"a", b"1").unwrap();
    tx.commit().unwrap();
    {
        let mut tx = backend.begin_write().unwrap();
        tx.put(Bucket::Key, b"b", b"2").unwrap();
        assert!(tx.delete(Bucket::Key, b"a").unwrap());
    }
    let r = backend.begin_read().unwrap();
    assert_eq!(collect(&r, Bucket::Key, &[], None), vec![kv("a", "1")]);
}

// Goal: scan visits [start, end) in key order, stops on Break, and accepts empty ranges.
fn scan_bounds_and_order(backend: &impl Backend) {
    let mut tx = backend.begin_write().unwrap();
    for k in ["d", "b", "a", "c", "e"] {
        tx.put(Bucket::Key, k.as_bytes(), k.as_bytes()).unwrap();
    }
    let inside = collect(&tx, Bucket::Key, b"b", Some(b"d"));
    assert_eq!(
        inside,
        vec![kv("b", "b"), kv("c", "c")],
        "scan inside the write tx"
    );
    tx.commit().unwrap();
    let r = backend.begin_read().unwrap();
    assert_eq!(
        collect(&r, Bucket::Key, b"b", Some(b"d")),
        vec![kv("b", "b"), kv("c", "c")]
    );
    assert_eq!(
        collect(&r, Bucket::Key, b"c", None),
        vec![kv("c", "c"), kv("d", "d"), kv("e", "e")]
    );
    assert_eq!(collect(&r, Bucket::Key, &[], None).len(), 5);
    assert!(
        collect(&r, Bucket::Key, b"d", Some(b"b")).is_empty(),
        "end < start"
    );
    assert!(
        collect(&r, Bucket::Key, b"c", Some(b"c")).is_empty(),
        "end == start"
    );
    let mut seen = Vec::new();
    r.scan(Bucket::Key, &[], None, &mut |k, _| {
        seen.push(k.to_vec());
        if seen.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
}

// Goal: delete reports presence; clear empties one bucket only.
fn delete_and_clear(backend: &impl Backend) {
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"a", b"1").unwrap();
    tx.put(Bucket::Key, b"b", b"2").unwrap();
    tx.put(Bucket::Auth, b"enabled", b"1").unwrap();
    tx.commit().unwrap();
    let mut tx = backend.begin_write().unwrap();
    assert!(tx.delete(Bucket::Key, b"a").unwrap());
    assert!(!tx.delete(Bucket::Key, b"a").unwrap());
    assert!(!tx.delete(Bucket::Key, b"zzz").unwrap());
    tx.clear(Bucket::Key).unwrap();
    assert!(collect(&tx, Bucket::Key, &[], None).is_empty());
    tx.put(Bucket::Key, b"c", b"3").unwrap();
    tx.commit().unwrap();
    let r = backend.begin_read().unwrap();
    assert_eq!(collect(&r, Bucket::Key, &[], None), vec![kv("c", "3")]);
    assert_eq!(
        r.get(Bucket::Auth, b"enabled").unwrap(),
        Some(b"1".to_vec())
    );
}

// Goal: the consistent index is stored in meta, starts at zero and round-trips.
fn consistent_index_round_trip(backend: &impl Backend) {
    assert_eq!(
        meta::read_consistent_index(&backend.begin_read().unwrap()).unwrap(),
        ConsistentIndex::default()
    );
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"k", b"v").unwrap();
    meta::write_consistent_index(&mut tx, ConsistentIndex { index: 7, term: 3 }).unwrap();
    tx.commit().unwrap();
    let r = backend.begin_read().unwrap();
    assert_eq!(
        meta::read_consistent_index(&r).unwrap(),
        ConsistentIndex { index: 7, term: 3 }
    );
    assert_eq!(
        r.get(Bucket::Meta, meta::CONSISTENT_INDEX_KEY).unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
}

// Goal: a snapshot image restores to an identical database, replacing what was there.
fn snapshot_round_trip(source: &impl Backend, target: &impl Backend) {
    fill(source);
    let mut tx = target.begin_write().unwrap();
    tx.put(Bucket::Key, b"stale", b"gone after restore")
        .unwrap();
    tx.commit().unwrap();
    let mut image = Vec::new();
    let written = source
        .begin_read()
        .unwrap()
        .write_snapshot(&mut image)
        .unwrap();
    assert_eq!(written.entries, 54);
    assert_eq!(written.bytes, image.len() as u64);
    let restored = target.restore_snapshot(&mut image.as_slice()).unwrap();
    assert_eq!(restored, written);
    assert_eq!(dump(source), dump(target));
}

// Goal: a damaged image is rejected and leaves the target untouched.
fn damaged_snapshot_is_rejected(source: &impl Backend, target: &impl Backend) {
    fill(source);
    let mut tx = target.begin_write().unwrap();
    tx.put(Bucket::Key, b"keep", b"me").unwrap();
    tx.commit().unwrap();
    let before = dump(target);
    let mut image = Vec::new();
    source
        .begin_read()
        .unwrap()
        .write_snapshot(&mut image)
        .unwrap();
    let mut flipped = image.clone();
    flipped[image.len() / 2] ^= 0x40;
    let truncated = &image[..image.len() - 3];
    let mut trailing = image.clone();
    trailing.push(0);
    for (name, bad) in [
        ("flipped", &flipped[..]),
        ("truncated", truncated),
        ("trailing", &trailing[..]),
        ("empty", &[][..]),
    ] {
        let err = target.restore_snapshot(&mut &bad[..]).unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidSnapshot(_)),
            "{name}: {err:?}"
        );
        assert_eq!(dump(target), before, "{name} image changed the target");
    }
}

// Goal: the size reflects stored data.
fn size_grows_with_data(backend: &impl Backend) {
    let empty = backend.size_bytes().unwrap();
    let mut tx = backend.begin_write().unwrap();
    // More than redb's initial allocation, so the file has to grow.
    for i in 0..4000u32 {
        tx.put(Bucket::Key, &i.to_be_bytes(), &[7u8; 1024]).unwrap();
    }
    tx.commit().unwrap();
    let full = backend.size_bytes().unwrap();
    assert!(
        full >= 4000 * 1024 && full > empty,
        "size {empty} -> {full}"
    );
    let in_use = backend.size_in_use_bytes().unwrap();
    assert!(
        in_use <= full && in_use >= 4000 * 1024,
        "in use {in_use} of {full}"
    );
    backend.defragment(Duration::from_secs(5)).unwrap();
}

macro_rules! suite {
    ($module:ident, $open:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn writes_become_visible_at_commit() {
                let (_guard, b) = $open;
                super::writes_become_visible_at_commit(&b);
            }
            #[test]
            fn dropped_write_tx_is_discarded() {
                let (_guard, b) = $open;
                super::dropped_write_tx_is_discarded(&b);
            }
            #[test]
            fn scan_bounds_and_order() {
                let (_guard, b) = $open;
                super::scan_bounds_and_order(&b);
            }
            #[test]
            fn delete_and_clear() {
                let (_guard, b) = $open;
                super::delete_and_clear(&b);
            }
            #[test]
            fn consistent_index_round_trip() {
                let (_guard, b) = $open;
                super::consistent_index_round_trip(&b);
            }
            #[test]
            fn snapshot_round_trip_to_both_kinds() {
                let (_g1, source) = $open;
                super::snapshot_round_trip(&source, &MemBackend::new());
                let dir = tempfile::tempdir().unwrap();
                let redb = RedbBackend::open(dir.path().join("target.db"), &RedbConfig::default())
                    .unwrap();
                super::snapshot_round_trip(&source, &redb);
            }
            #[test]
            fn damaged_snapshot_is_rejected() {
                let (_g1, source) = $open;
                let (_g2, target) = $open;
                super::damaged_snapshot_is_rejected(&source, &target);
            }
            #[test]
            fn size_grows_with_data() {
                let (_guard, b) = $open;
                super::size_grows_with_data(&b);
            }
        }
    };
}

fn open_redb() -> (tempfile::TempDir, RedbBackend) {
    let dir = tempfile::tempdir().unwrap();
    let backend = RedbBackend::open(dir.path().join("db"), &RedbConfig::default()).unwrap();
    (dir, backend)
}

suite!(mem, ((), MemBackend::new()));
suite!(redb, open_redb());

// Goal: a committed transaction survives closing and reopening the file; an uncommitted one
// does not.
#[test]
fn redb_commit_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let backend = RedbBackend::open(&path, &RedbConfig::default()).unwrap();
        fill(&backend);
        let mut tx = backend.begin_write().unwrap();
        tx.put(Bucket::Key, b"uncommitted", b"x").unwrap();
        drop(tx);
    }
    let backend = RedbBackend::open(&path, &RedbConfig::default()).unwrap();
    let r = backend.begin_read().unwrap();
    assert_eq!(collect(&r, Bucket::Key, &[], None).len(), 50);
    assert_eq!(r.get(Bucket::Key, b"uncommitted").unwrap(), None);
    assert_eq!(
        meta::read_consistent_index(&r).unwrap(),
        ConsistentIndex { index: 9, term: 2 }
    );
}

// Goal: a non-durable commit is visible to readers at once, and the next durable commit
// makes it durable too (the server's apply batches rely on both).
#[test]
fn redb_non_durable_commit_is_visible_and_made_durable_by_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let backend = RedbBackend::open(&path, &RedbConfig::default()).unwrap();
        for i in 0..3u8 {
            let mut tx = backend.begin_write().unwrap();
            tx.set_durable(false).unwrap();
            tx.put(Bucket::Key, &[i], b"lazy").unwrap();
            meta::write_consistent_index(
                &mut tx,
                ConsistentIndex {
                    index: u64::from(i) + 1,
                    term: 1,
                },
            )
            .unwrap();
            tx.commit().unwrap();
            let r = backend.begin_read().unwrap();
            assert_eq!(r.get(Bucket::Key, &[i]).unwrap(), Some(b"lazy".to_vec()));
        }
        // An empty durable transaction is enough to persist the earlier ones.
        backend.begin_write().unwrap().commit().unwrap();
    }
    let backend = RedbBackend::open(&path, &RedbConfig::default()).unwrap();
    let r = backend.begin_read().unwrap();
    assert_eq!(collect(&r, Bucket::Key, &[], None).len(), 3);
    assert_eq!(
        meta::read_consistent_index(&r).unwrap(),
        ConsistentIndex { index: 3, term: 1 }
    );
}

// Goal: one file cannot be opened by two handles at once (two writers would corrupt it).
#[test]
fn redb_second_open_of_one_file_fails() {
    let (dir, _backend) = open_redb();
    let err = RedbBackend::open(dir.path().join("db"), &RedbConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, BackendError::AlreadyOpen), "{err:?}");
}

// Goal: defragment refuses to run under an open reader, and shrinks the file once data is gone.
#[test]
fn redb_defragment_needs_exclusive_use_and_shrinks_the_file() {
    let (_dir, backend) = open_redb();
    let mut tx = backend.begin_write().unwrap();
    for i in 0..2000u32 {
        tx.put(Bucket::Key, &i.to_be_bytes(), &[1u8; 2048]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = backend.begin_write().unwrap();
    tx.clear(Bucket::Key).unwrap();
    tx.commit().unwrap();
    let full = backend.size_bytes().unwrap();
    let reader = backend.begin_read().unwrap();
    let err = backend.defragment(Duration::ZERO).unwrap_err();
    assert!(matches!(err, BackendError::Busy(_)), "{err:?}");
    drop(reader);
    backend.defragment(Duration::ZERO).unwrap();
    let after = backend.size_bytes().unwrap();
    assert!(after < full / 2, "defragment left {after} of {full} bytes");
}

// Goal: an injected commit failure surfaces as an error and discards the transaction.
#[test]
fn mem_injected_commit_failure_discards_the_transaction() {
    let backend = MemBackend::new();
    backend.fail_next_commit();
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"a", b"1").unwrap();
    assert!(matches!(tx.commit(), Err(BackendError::Injected(_))));
    assert_eq!(
        backend
            .begin_read()
            .unwrap()
            .get(Bucket::Key, b"a")
            .unwrap(),
        None
    );
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, b"a", b"1").unwrap();
    tx.commit().unwrap();
    assert_eq!(
        backend
            .begin_read()
            .unwrap()
            .get(Bucket::Key, b"a")
            .unwrap(),
        Some(b"1".to_vec())
    );
}

// Goal: writing an older consistent index is a bug that must stop the node, not reach disk.
#[test]
#[should_panic(expected = "consistent index went backwards")]
fn consistent_index_going_backwards_panics() {
    let backend = MemBackend::new();
    let mut tx = backend.begin_write().unwrap();
    meta::write_consistent_index(&mut tx, ConsistentIndex { index: 5, term: 2 }).unwrap();
    meta::write_consistent_index(&mut tx, ConsistentIndex { index: 4, term: 2 }).unwrap();
}
