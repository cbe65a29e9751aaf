//! The writer's contract on the real file system and on the simulated one: round trips,
//! overwrites, snapshot markers, segment cuts, purging, locking, limits, fsync discipline.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use retcd_raft::{ConfState, Entry, EntryType, HardState};
use retcd_wal::sim::SimVfs;
use retcd_wal::{SnapshotMarker, Vfs, Wal, WalError, valid_snapshot_markers};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        entry_type: EntryType::Normal,
        data: Bytes::from(format!("put k{index} v{term}")),
    }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

const ZERO: SnapshotMarker = SnapshotMarker {
    index: 0,
    term: 0,
    conf_state: ConfState {
        voters: Vec::new(),
        learners: Vec::new(),
        voters_outgoing: Vec::new(),
        learners_next: Vec::new(),
        auto_leave: false,
    },
};

#[test]
fn create_save_reopen_round_trips_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member/wal");
    let mut wal = Wal::create_with(&dir, META, std_opts(1 << 20)).unwrap();
    let mut ents = entries(1, 1..=3);
    ents[1].entry_type = EntryType::ConfChange;
    ents[2] = Entry {
        data: Bytes::new(),
        ..ents[2].clone()
    };
    wal.save(&hs(1, 1, 2), &ents).unwrap();
    wal.save(&hs(1, 1, 3), &[]).unwrap();
    drop(wal);
    let (wal, rec) = Wal::open_with(&dir, &ZERO, std_opts(1 << 20)).unwrap();
    assert_eq!(&rec.metadata[..], META);
    assert_eq!(rec.hard_state, hs(1, 1, 3));
    assert_eq!(rec.entries, ents);
    assert_eq!(rec.last_snapshot, Some(ZERO));
    assert_eq!(rec.torn_tail, None);
    assert_eq!(wal.last_index(), 3);
    assert_eq!(wal.hard_state(), hs(1, 1, 3));
}

#[test]
fn create_refuses_an_existing_wal_and_open_refuses_an_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    assert!(matches!(
        Wal::open_with(&dir, &ZERO, std_opts(4096)),
        Err(WalError::NotFound { .. })
    ));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!Wal::exists(&dir, &retcd_wal::StdVfs).unwrap());
    assert!(matches!(
        Wal::open_with(&dir, &ZERO, std_opts(4096)),
        Err(WalError::NotFound { .. })
    ));
    drop(Wal::create_with(&dir, META, std_opts(4096)).unwrap());
    assert!(Wal::exists(&dir, &retcd_wal::StdVfs).unwrap());
    assert!(matches!(
        Wal::create_with(&dir, META, std_opts(4096)),
        Err(WalError::AlreadyExists { .. })
    ));
}

#[test]
fn a_second_writer_is_locked_out_until_the_first_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::create_with(tmp.path(), META, std_opts(4096)).unwrap();
    let err = Wal::open_with(tmp.path(), &ZERO, std_opts(4096)).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    // Readers need no lock.
    assert!(Wal::read_all(tmp.path(), &ZERO, &std_opts(4096)).is_ok());
    drop(wal);
    assert!(Wal::open_with(tmp.path(), &ZERO, std_opts(4096)).is_ok());
}

#[test]
fn later_entries_replace_conflicting_ones_and_everything_after_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(1 << 20)).unwrap();
    wal.save(&hs(1, 1, 2), &entries(1, 1..=10)).unwrap();
    wal.save(&hs(2, 2, 2), &entries(2, 5..=7)).unwrap();
    wal.save(&hs(3, 3, 2), &entries(3, 8..=8)).unwrap();
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &ZERO, std_opts(1 << 20)).unwrap();
    let mut want = entries(1, 1..=4);
    want.extend(entries(2, 5..=7));
    want.extend(entries(3, 8..=8));
    assert_eq!(rec.entries, want);
}

#[test]
fn open_from_a_snapshot_marker_returns_only_the_log_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(1 << 20)).unwrap();
    wal.save(&hs(1, 1, 6), &entries(1, 1..=8)).unwrap();
    let marker = SnapshotMarker {
        index: 5,
        term: 1,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    };
    wal.save_snapshot_marker(&marker).unwrap();
    drop(wal);
    let (_, rec) =
        Wal::open_with(tmp.path(), &SnapshotMarker::new(5, 1), std_opts(1 << 20)).unwrap();
    assert_eq!(rec.entries, entries(1, 6..=8));
    assert_eq!(rec.last_snapshot, Some(marker));
    let err =
        Wal::open_with(tmp.path(), &SnapshotMarker::new(6, 1), std_opts(1 << 20)).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::SnapshotNotFound {
                index: 6,
                term: 1,
                ..
            }
        ),
        "{err}"
    );
    let err =
        Wal::open_with(tmp.path(), &SnapshotMarker::new(5, 2), std_opts(1 << 20)).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::SnapshotMismatch {
                index: 5,
                expected_term: 2,
                found_term: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn entries_may_start_after_a_received_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(1 << 20)).unwrap();
    wal.save(&hs(1, 1, 2), &entries(1, 1..=2)).unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(100, 4))
        .unwrap();
    wal.save(&hs(4, 1, 100), &entries(4, 101..=102)).unwrap();
    drop(wal);
    let (wal, rec) =
        Wal::open_with(tmp.path(), &SnapshotMarker::new(100, 4), std_opts(1 << 20)).unwrap();
    assert_eq!(rec.entries, entries(4, 101..=102));
    assert_eq!(wal.last_index(), 102);
    // Replaying from before the received snapshot finds the hole.
    let err = Wal::read_all(tmp.path(), &ZERO, &std_opts(1 << 20)).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("gap")),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "would leave a gap")]
fn saving_entries_with_a_gap_is_a_caller_bug() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(4096)).unwrap();
    wal.save(&hs(1, 1, 0), &entries(1, 2..=3)).unwrap();
}

#[test]
fn segments_are_cut_named_preallocated_and_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = 1024;
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(seg)).unwrap();
    for i in 1..=40 {
        wal.save(&hs(1, 1, i - 1), &entries(1, i..=i)).unwrap();
    }
    let files = wal.segment_files();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(
        files[0].file_name().unwrap(),
        "0000000000000000-0000000000000000.wal"
    );
    let mut prev_first = 0;
    for (seq, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_str().unwrap();
        let (s, first) = name.trim_end_matches(".wal").split_once('-').unwrap();
        assert_eq!(u64::from_str_radix(s, 16).unwrap(), seq as u64);
        let first = u64::from_str_radix(first, 16).unwrap();
        assert!(seq == 0 || first > prev_first, "{name}");
        prev_first = first;
        let len = std::fs::metadata(f).unwrap().len();
        if seq + 1 < files.len() {
            // Sealed: truncated to the last record, at least the segment size.
            assert!(len >= seg && len % 8 == 0, "{name}: {len}");
        } else {
            assert_eq!(len, seg, "the tail is preallocated");
        }
    }
    assert!(
        !tmp.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .ends_with(".tmp"))
    );
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &ZERO, std_opts(seg)).unwrap();
    assert_eq!(rec.entries, entries(1, 1..=40));
    assert_eq!(rec.hard_state, hs(1, 1, 39));
}

#[test]
fn a_batch_larger_than_a_segment_is_written_whole_then_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(512)).unwrap();
    let big: Vec<Entry> = (1..=20)
        .map(|i| Entry {
            data: vec![i as u8; 100].into(),
            ..entry(1, i)
        })
        .collect();
    wal.save(&hs(1, 1, 20), &big).unwrap();
    assert_eq!(wal.segment_files().len(), 2);
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &ZERO, std_opts(512)).unwrap();
    assert_eq!(rec.entries, big);
}

#[test]
fn purge_deletes_whole_segments_before_the_snapshot_and_keeps_open_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(512)).unwrap();
    for i in 1..=30 {
        wal.save(&hs(1, 1, i), &entries(1, i..=i)).unwrap();
    }
    let before = wal.segment_files();
    wal.save_snapshot_marker(&SnapshotMarker::new(20, 1))
        .unwrap();
    let removed = wal.purge_to(20, 0).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(
        removed[..],
        before[..removed.len()],
        "oldest segments go first"
    );
    for f in &removed {
        assert!(!f.exists());
    }
    assert!(
        wal.purge_to(20, 0).unwrap().is_empty(),
        "purging again removes nothing"
    );
    wal.save(&hs(1, 1, 31), &entries(1, 31..=31)).unwrap();
    drop(wal);
    let (mut wal, rec) =
        Wal::open_with(tmp.path(), &SnapshotMarker::new(20, 1), std_opts(512)).unwrap();
    assert_eq!(rec.entries, entries(1, 21..=31));
    let err = Wal::read_all(tmp.path(), &ZERO, &std_opts(512)).unwrap_err();
    assert!(
        matches!(err, WalError::SnapshotNotFound { index: 0, .. }),
        "{err}"
    );
    // A reopened writer still knows every segment, so later purges leave no holes.
    wal.save(&hs(1, 1, 40), &entries(1, 32..=40)).unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(38, 1))
        .unwrap();
    wal.purge_to(38, 0).unwrap();
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &SnapshotMarker::new(38, 1), std_opts(512)).unwrap();
    assert_eq!(rec.entries, entries(1, 39..=40));
}

// Goal: with `keep`, purging deletes the oldest segments wholly before the index only
// while more than `keep` segments remain (etcd's `--max-wals`), never the segment the
// index falls in, and the log still opens from the snapshot.
#[test]
fn purge_keeps_the_newest_segments_up_to_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(512)).unwrap();
    for i in 1..=60 {
        wal.save(&hs(1, 1, i), &entries(1, i..=i)).unwrap();
    }
    wal.save_snapshot_marker(&SnapshotMarker::new(50, 1))
        .unwrap();
    let before = wal.segment_files();
    assert!(before.len() >= 6, "{} segments", before.len());
    // How many segments lie wholly before index 50.
    let releasable = {
        let probe_dir = tempfile::tempdir().unwrap();
        let mut probe = Wal::create_with(probe_dir.path(), META, std_opts(512)).unwrap();
        for i in 1..=60 {
            probe.save(&hs(1, 1, i), &entries(1, i..=i)).unwrap();
        }
        probe
            .save_snapshot_marker(&SnapshotMarker::new(50, 1))
            .unwrap();
        probe.purge_to(50, 0).unwrap().len()
    };
    assert!(releasable >= 3, "{releasable} segments before index 50");
    assert!(releasable < before.len());

    // More segments kept than exist: nothing goes.
    assert!(wal.purge_to(50, before.len()).unwrap().is_empty());
    // Down to `keep`, oldest first.
    let keep = before.len() - 2;
    let removed = wal.purge_to(50, keep).unwrap();
    assert_eq!(removed[..], before[..2]);
    assert_eq!(wal.segment_files()[..], before[2..]);
    // `keep` 1 would leave one segment, but only those before the index may go.
    let removed = wal.purge_to(50, 1).unwrap();
    assert_eq!(removed[..], before[2..releasable]);
    assert_eq!(wal.segment_files()[..], before[releasable..]);
    assert!(wal.purge_to(50, 1).unwrap().is_empty());
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &SnapshotMarker::new(50, 1), std_opts(512)).unwrap();
    assert_eq!(rec.entries, entries(1, 51..=60));
}

#[test]
fn oversized_records_are_refused_without_writing_or_poisoning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(1 << 20)).unwrap();
    let pos = wal.tail_position();
    let big = Entry {
        data: vec![0u8; 5000].into(),
        ..entry(1, 2)
    };
    let err = wal.save(&hs(1, 1, 0), &[entry(1, 1), big]).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::RecordTooLarge {
                len: 5017,
                max: 4096
            }
        ),
        "{err}"
    );
    assert_eq!(wal.tail_position(), pos, "nothing of the batch was written");
    wal.save(&hs(1, 1, 1), &[entry(1, 1)]).unwrap();
    drop(wal);
    let (_, rec) = Wal::open_with(tmp.path(), &ZERO, std_opts(1 << 20)).unwrap();
    assert_eq!(rec.entries, vec![entry(1, 1)]);
}

#[test]
fn fsync_only_when_something_was_written() {
    let vfs = SimVfs::new(1);
    let dir = Path::new("/wal");
    let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 1 << 20, 1)).unwrap();
    wal.save(&hs(1, 1, 0), &entries(1, 1..=2)).unwrap();
    let calls = vfs.mutations();
    wal.save(&hs(1, 1, 0), &[]).unwrap();
    wal.save(&HardState::default(), &[]).unwrap();
    wal.sync().unwrap();
    assert_eq!(
        vfs.mutations(),
        calls,
        "an unchanged hard state and no entries write nothing"
    );
    wal.save(&hs(1, 1, 2), &[]).unwrap();
    assert_eq!(
        vfs.mutations(),
        calls + 2,
        "a changed hard state is written and fsynced"
    );
    wal.save_no_sync(&hs(1, 1, 2), &entries(1, 3..=3)).unwrap();
    wal.save_no_sync(&hs(1, 1, 3), &entries(1, 4..=4)).unwrap();
    let pos = wal.tail_position();
    assert!(pos.durable_bytes < pos.written_bytes);
    wal.sync().unwrap();
    assert_eq!(vfs.mutations(), calls + 5, "two writes, one fsync");
    let pos = wal.tail_position();
    assert_eq!(pos.durable_bytes, pos.written_bytes);
    // What sync covered survives a crash.
    vfs.crash();
    drop(wal);
    let (_, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 1 << 20, 1)).unwrap();
    assert_eq!(rec.entries, entries(1, 1..=4));
    assert_eq!(rec.hard_state, hs(1, 1, 3));
}

#[test]
fn unsynced_saves_may_be_lost_but_synced_ones_never() {
    let mut lost = 0;
    for seed in 0..100 {
        let vfs = SimVfs::new(seed);
        let dir = Path::new("/wal");
        let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 1 << 20, seed)).unwrap();
        wal.save(&hs(1, 1, 1), &entries(1, 1..=3)).unwrap();
        wal.save_no_sync(&hs(1, 1, 3), &entries(1, 4..=6)).unwrap();
        vfs.crash();
        drop(wal);
        let (_, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 1 << 20, seed)).unwrap();
        assert!(
            rec.entries.len() >= 3 && rec.entries[..] == entries(1, 1..=6)[..rec.entries.len()],
            "seed {seed}"
        );
        lost += usize::from(rec.entries.len() < 6);
    }
    assert!(
        lost > 10,
        "the simulated crash should often lose unsynced entries ({lost})"
    );
}

#[test]
fn valid_snapshot_markers_excludes_markers_beyond_the_committed_index() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = Wal::create_with(tmp.path(), META, std_opts(512)).unwrap();
    wal.save(&hs(1, 1, 5), &entries(1, 1..=10)).unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(3, 1))
        .unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(5, 1))
        .unwrap();
    // Received from a leader, but the process died before the hard state followed.
    wal.save_snapshot_marker(&SnapshotMarker::new(50, 2))
        .unwrap();
    drop(wal);
    let markers = valid_snapshot_markers(tmp.path(), &std_opts(512)).unwrap();
    let got: Vec<(u64, u64)> = markers.iter().map(|m| (m.index, m.term)).collect();
    assert_eq!(got, vec![(0, 0), (3, 1), (5, 1)]);
}

#[test]
fn read_all_reports_a_torn_tail_without_touching_the_file_and_open_cuts_it_away() {
    let vfs = SimVfs::new(9);
    let dir = Path::new("/wal");
    let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 4096, 9)).unwrap();
    wal.save(&hs(1, 1, 1), &entries(1, 1..=2)).unwrap();
    let good_end = wal.tail_position().written_bytes;
    wal.save_no_sync(&hs(1, 1, 2), &entries(1, 3..=4)).unwrap();
    let tail = wal.tail_position();
    drop(wal);
    // Tear the unsynced batch: keep its first 30 bytes and garble the next 8.
    vfs.corrupt(&tail.file, |d| {
        let start = good_end as usize + 30;
        for b in &mut d[start..start + 8] {
            *b ^= 0x5a;
        }
        for b in &mut d[start + 8..tail.written_bytes as usize] {
            *b = 0;
        }
    });
    let before = vfs.read_file(&tail.file).unwrap();
    let rec = Wal::read_all(dir, &ZERO, &sim_opts(&vfs, 4096, 9)).unwrap();
    assert_eq!(rec.entries, entries(1, 1..=2));
    let torn = rec.torn_tail.expect("a torn tail is reported");
    assert_eq!(
        (torn.file.as_path(), torn.offset),
        (tail.file.as_path(), good_end)
    );
    assert_eq!(
        vfs.read_file(&tail.file).unwrap(),
        before,
        "read_all writes nothing"
    );
    let (mut wal, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 4096, 9)).unwrap();
    assert_eq!(rec.entries, entries(1, 1..=2));
    assert!(rec.torn_tail.is_some());
    let after = vfs.read_file(&tail.file).unwrap();
    assert_eq!(after.len(), 4096);
    assert!(
        after[good_end as usize..].iter().all(|b| *b == 0),
        "the torn bytes are zeroed"
    );
    // New entries at the same indexes are what a restart sees, not the torn ones.
    let fresh = vec![Entry {
        data: Bytes::from_static(b"fresh"),
        ..entry(2, 3)
    }];
    wal.save(&hs(2, 1, 2), &fresh).unwrap();
    drop(wal);
    let (_, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 4096, 9)).unwrap();
    assert_eq!(rec.entries[2..], fresh[..]);
    assert!(rec.torn_tail.is_none());
}

#[test]
fn records_after_a_hole_in_the_same_unsynced_write_are_dropped_not_flagged() {
    // Writeback can persist a later page of an unsynced write without an earlier one.
    let vfs = SimVfs::new(4);
    let dir = Path::new("/wal");
    let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 4096, 4)).unwrap();
    wal.save(&hs(1, 1, 1), &entries(1, 1..=2)).unwrap();
    let good_end = wal.tail_position().written_bytes as usize;
    wal.save_no_sync(&hs(1, 1, 1), &entries(1, 3..=6)).unwrap();
    let tail = wal.tail_position();
    drop(wal);
    vfs.corrupt(&tail.file, |d| d[good_end..good_end + 24].fill(0));
    let (_, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 4096, 4)).unwrap();
    assert_eq!(rec.entries, entries(1, 1..=2));
    assert_eq!(rec.torn_tail.map(|t| t.offset), Some(good_end as u64));
}

#[test]
fn metadata_from_another_member_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, meta) in [(&a, &b"member a"[..]), (&b, &b"member b"[..])] {
        let mut wal = Wal::create_with(dir, meta, std_opts(512)).unwrap();
        for i in 1..=12 {
            wal.save(&hs(1, 1, i), &entries(1, i..=i)).unwrap();
        }
    }
    let names: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let second = names
        .iter()
        .find(|n| n.to_str().unwrap().starts_with("0000000000000001-"))
        .unwrap();
    std::fs::copy(b.join(second), a.join(second)).unwrap();
    let err = Wal::read_all(&a, &ZERO, &std_opts(512)).unwrap_err();
    assert!(
        matches!(&err, WalError::MetadataConflict { file } if file.ends_with(second)),
        "{err}"
    );
}

#[test]
fn what_open_recovers_is_durable_before_open_returns() {
    // The process died (the page cache survived) before an fsync; the next process reads
    // the records and may act on them (acknowledge them to a leader), so a power cut right
    // after open must not take them away.
    for seed in 0..20 {
        let vfs = SimVfs::new(seed);
        let dir = Path::new("/wal");
        let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 4096, seed)).unwrap();
        wal.save(&hs(1, 1, 1), &entries(1, 1..=2)).unwrap();
        wal.save_no_sync(&hs(1, 1, 2), &entries(1, 3..=5)).unwrap();
        drop(wal);
        let (wal, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 4096, seed)).unwrap();
        assert_eq!(rec.entries, entries(1, 1..=5));
        vfs.crash();
        drop(wal);
        let (_, rec) = Wal::open_with(dir, &ZERO, sim_opts(&vfs, 4096, seed)).unwrap();
        assert_eq!(rec.entries, entries(1, 1..=5), "seed {seed}");
        assert_eq!(rec.hard_state, hs(1, 1, 2), "seed {seed}");
    }
}

#[test]
fn the_writer_and_snapshotter_can_move_to_the_servers_blocking_threads() {
    fn is_send<T: Send>() {}
    fn is_send_sync<T: Send + Sync>() {}
    is_send::<Wal>();
    is_send_sync::<retcd_wal::Snapshotter>();
    is_send_sync::<SimVfs>();
}

/// Every directory and file under `root` (`root` included), with its permission bits.
fn modes_under(root: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = vec![(
        root.to_path_buf(),
        std::fs::metadata(root).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes_under(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            ));
        }
    }
    out
}

// Goal: on the real file system the WAL and the snapshotter create their directories
// (missing parents included) and files private to the owner, as etcd does (0700, 0600):
// whatever the umask, no group or other bit is set.
#[test]
fn directories_and_files_are_private_to_the_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let mut wal = Wal::create_with(root.join("member/wal"), META, std_opts(512)).unwrap();
    for i in 1..=30 {
        wal.save(&hs(1, 1, i), &entries(1, i..=i)).unwrap();
    }
    assert!(wal.segment_files().len() > 1, "segments were cut");
    let snapshotter = retcd_wal::Snapshotter::new(root.join("member/snap")).unwrap();
    let snap = retcd_raft::Snapshot {
        data: Bytes::from_static(b"state"),
        metadata: retcd_raft::SnapshotMetadata {
            conf_state: ConfState::default(),
            index: 20,
            term: 1,
        },
    };
    snapshotter.save(&snap).unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(20, 1))
        .unwrap();
    let modes = modes_under(&root);
    assert!(modes.len() >= 7, "{modes:?}");
    for (path, mode) in &modes {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode & !want,
            0,
            "{} has mode {mode:o}, more than {want:o}",
            path.display()
        );
    }
}
