//! Snapshot files: atomic saves, CRC-checked loads that skip and report broken files,
//! choosing the newest snapshot the WAL can replay from, and the whole restart sequence.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use retcd_raft::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use retcd_wal::sim::{Fault, SimVfs};
use retcd_wal::{
    SnapshotMarker, Snapshotter, Vfs, Wal, WalError, snapshot_file_name, valid_snapshot_markers,
};

fn snap(term: u64, index: u64, data: &[u8]) -> Snapshot {
    Snapshot {
        data: Bytes::copy_from_slice(data),
        metadata: SnapshotMetadata {
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                ..Default::default()
            },
            index,
            term,
        },
    }
}

#[test]
fn save_and_load_round_trip_with_etcd_style_names() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshotter::new(tmp.path().join("snap")).unwrap();
    let path = s.save(&snap(2, 0x20, b"state at 32")).unwrap().unwrap();
    assert_eq!(
        path.file_name().unwrap(),
        "0000000000000002-0000000000000020.snap"
    );
    assert_eq!(s.load(&path).unwrap(), snap(2, 0x20, b"state at 32"));
    assert_eq!(
        s.save(&Snapshot::default()).unwrap(),
        None,
        "empty snapshots are not written"
    );
    assert_eq!(s.snapshot_files().unwrap().len(), 1);
}

#[test]
fn load_newest_picks_the_highest_index_and_skips_broken_files() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshotter::new(tmp.path()).unwrap();
    assert!(s.load_newest().unwrap().snapshot.is_none());
    s.save(&snap(1, 10, b"ten")).unwrap();
    s.save(&snap(2, 30, b"thirty")).unwrap();
    let newest = s.save(&snap(3, 50, b"fifty")).unwrap().unwrap();
    assert_eq!(
        s.load_newest().unwrap().snapshot,
        Some(snap(3, 50, b"fifty"))
    );
    // Flip one bit of the newest file's data.
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x04;
    std::fs::write(&newest, &bytes).unwrap();
    // And a file whose name does not match its contents.
    std::fs::copy(
        tmp.path().join(snapshot_file_name(1, 10)),
        tmp.path().join(snapshot_file_name(2, 40)),
    )
    .unwrap();
    let load = s.load_newest().unwrap();
    assert_eq!(load.snapshot, Some(snap(2, 30, b"thirty")));
    assert_eq!(load.file, Some(tmp.path().join(snapshot_file_name(2, 30))));
    let broken: Vec<_> = load.broken.iter().map(|b| b.file.clone()).collect();
    assert_eq!(
        broken,
        vec![newest.clone(), tmp.path().join(snapshot_file_name(2, 40))]
    );
    assert!(
        matches!(&load.broken[0].error, WalError::Corrupt { reason, .. } if reason.contains("CRC"))
    );
    assert!(
        matches!(&load.broken[1].error, WalError::Corrupt { reason, .. } if reason.contains("name says"))
    );
}

#[test]
fn load_matching_ignores_snapshots_the_wal_has_no_marker_for() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshotter::new(tmp.path()).unwrap();
    s.save(&snap(1, 10, b"ten")).unwrap();
    s.save(&snap(2, 30, b"thirty")).unwrap();
    let markers = [
        SnapshotMarker::new(0, 0),
        SnapshotMarker::new(10, 1),
        SnapshotMarker::new(30, 1),
    ];
    // 30 has a marker, but with another term: not the same snapshot.
    assert_eq!(
        s.load_matching(&markers).unwrap().snapshot,
        Some(snap(1, 10, b"ten"))
    );
    assert!(s.load_matching(&markers[..1]).unwrap().snapshot.is_none());
}

#[test]
fn temporary_files_are_ignored_and_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshotter::new(tmp.path()).unwrap();
    for i in 1..=5 {
        s.save(&snap(1, i * 10, b"x")).unwrap();
    }
    std::fs::write(
        tmp.path()
            .join("0000000000000001-0000000000000064.snap.tmp"),
        b"half written",
    )
    .unwrap();
    assert_eq!(
        s.load_newest().unwrap().snapshot.unwrap().metadata.index,
        50
    );
    let removed = s.purge(2).unwrap();
    assert_eq!(removed.len(), 4);
    let left: Vec<u64> = s.snapshot_files().unwrap().iter().map(|f| f.1).collect();
    assert_eq!(left, vec![50, 40]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn random_damage_to_a_snapshot_file_is_always_detected() {
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        let vfs = SimVfs::new(seed);
        let s = Snapshotter::with_vfs(Arc::new(vfs.clone()), "/snap").unwrap();
        let len = rng.below(2000) as usize;
        let data = rng.bytes(len);
        let (term, index) = (1 + rng.below(5), 1 + rng.below(1000));
        let path = s.save(&snap(term, index, &data)).unwrap().unwrap();
        vfs.corrupt(&path, |d| {
            let at = rng.below(d.len() as u64) as usize;
            match rng.below(3) {
                0 => d[at] ^= 1 << rng.below(8),
                1 => d.truncate(at),
                _ => {
                    let v = rng.next_u64() as u8;
                    d[at] = if d[at] == v { v.wrapping_add(1) } else { v };
                }
            }
        });
        let err = s.load(&path).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        let load = s.load_newest().unwrap();
        assert!(load.snapshot.is_none() && load.broken.len() == 1);
    });
}

#[test]
fn a_crash_during_save_leaves_the_old_snapshot_or_the_new_one_never_a_broken_one() {
    for crash_at in 0..6 {
        for seed in 0..20 {
            let vfs = SimVfs::new(seed * 10 + crash_at);
            let s = Snapshotter::with_vfs(Arc::new(vfs.clone()), "/snap").unwrap();
            s.save(&snap(1, 10, b"old")).unwrap();
            vfs.set_fault(Fault::CrashAt(crash_at));
            let acked = s.save(&snap(2, 20, b"new")).is_ok();
            vfs.crash();
            let load = s.load_newest().unwrap();
            assert!(
                load.broken.is_empty(),
                "crash_at {crash_at} seed {seed}: {:?}",
                load.broken
            );
            let got = load.snapshot.unwrap();
            assert!(
                got == snap(1, 10, b"old") || got == snap(2, 20, b"new"),
                "crash_at {crash_at}"
            );
            if acked {
                assert_eq!(got, snap(2, 20, b"new"), "crash_at {crash_at} seed {seed}");
            }
        }
    }
}

/// The server's restart sequence, end to end on the simulated disk: snapshot file, WAL
/// marker, purge; crash; pick the snapshot through the WAL's markers; replay after it.
#[test]
fn restart_recovers_the_newest_snapshot_the_wal_knows_and_the_log_after_it() {
    for seed in 0..30 {
        let vfs = SimVfs::new(seed);
        let opts = sim_opts(&vfs, 1024, seed);
        let s = Snapshotter::with_vfs(Arc::new(vfs.clone()), "/member/snap").unwrap();
        let mut wal = Wal::create_with("/member/wal", META, opts.clone()).unwrap();
        let e = |i: u64| Entry {
            term: 1,
            index: i,
            data: Bytes::from(vec![i as u8; 60]),
            ..Default::default()
        };
        for i in 1..=60 {
            wal.save(
                &HardState {
                    term: 1,
                    vote: 1,
                    commit: i - 1,
                },
                &[e(i)],
            )
            .unwrap();
            if i % 20 == 0 {
                let sn = snap(1, i - 1, format!("state@{}", i - 1).as_bytes());
                s.save(&sn).unwrap();
                wal.save_snapshot_marker(&SnapshotMarker::from(&sn.metadata))
                    .unwrap();
                wal.purge_to(i - 1, 0).unwrap();
            }
        }
        // A snapshot file newer than any marker: the crash came before its marker.
        s.save(&snap(1, 60, b"no marker")).unwrap();
        vfs.crash();
        drop(wal);
        let markers = valid_snapshot_markers("/member/wal", &opts).unwrap();
        let load = s.load_matching(&markers).unwrap();
        let sn = load.snapshot.expect("a snapshot with a marker");
        assert_eq!(
            (sn.metadata.index, &sn.data[..]),
            (59, &b"state@59"[..]),
            "seed {seed}"
        );
        let (_, rec) =
            Wal::open_with("/member/wal", &SnapshotMarker::from(&sn.metadata), opts).unwrap();
        assert_eq!(rec.entries, vec![e(60)], "seed {seed}");
        assert_eq!(rec.hard_state.commit, 59);
        assert!(
            vfs.list_dir(Path::new("/member/wal")).unwrap().len() < 8,
            "old segments were purged"
        );
    }
}

#[test]
fn a_snapshot_in_a_missing_directory_is_an_io_error_not_a_panic() {
    let vfs = SimVfs::new(1);
    let s = Snapshotter::with_vfs(Arc::new(vfs.clone()), "/snap").unwrap();
    let err = s
        .load(Path::new("/snap/0000000000000001-0000000000000001.snap"))
        .unwrap_err();
    assert!(matches!(err, WalError::Io { op: "read", .. }), "{err}");
    let err = s.load(Path::new("/snap/garbage.snap")).unwrap_err();
    assert!(matches!(err, WalError::BadSnapshotFile { .. }), "{err}");
}
