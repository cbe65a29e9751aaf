//! Damage to bytes that were once durable (bit rot, bad sectors, truncation, lost files):
//! it is refused with an error naming the file and offset, never repaired into silence,
//! never served, and never a panic or a huge allocation.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use retcd_raft::{Entry, HardState};
use retcd_wal::dump::{DumpRecord, read_records};
use retcd_wal::sim::SimVfs;
use retcd_wal::{Record, SnapshotMarker, Vfs, Wal, WalError, WalOptions};

const DIR: &str = "/wal";

/// A WAL where every batch was acknowledged. Returns the history and how many records
/// came before the last batch that wrote anything.
fn build(opts: &WalOptions, rng: &mut Rng, batches: usize, max_data: usize) -> (History, usize) {
    let mut wal = Wal::create_with(DIR, META, opts.clone()).unwrap();
    let mut hist = History::default();
    let mut before_last = 0;
    for _ in 0..batches {
        let before = hist.events.len();
        if rng.chance(1, 8)
            && let Some(m) = gen_marker(rng, &hist.view)
        {
            hist.push(Ev::Marker(m.clone()));
            wal.save_snapshot_marker(&m).unwrap();
        } else {
            let (hs, entries) = gen_batch(rng, &hist.view, max_data);
            for ev in save_events(&wal.hard_state(), &hs, &entries) {
                hist.push(ev);
            }
            wal.save(&hs, &entries).unwrap();
        }
        hist.ack();
        if hist.events.len() > before {
            before_last = before;
        }
    }
    drop(wal);
    (hist, before_last)
}

fn records(opts: &WalOptions) -> Vec<DumpRecord> {
    let mut out = Vec::new();
    read_records(DIR, opts, &mut |r| out.push(r)).unwrap();
    out
}

fn open(opts: &WalOptions) -> retcd_wal::Result<retcd_wal::Recovered> {
    Wal::open_with(DIR, &SnapshotMarker::default(), opts.clone()).map(|(_, rec)| rec)
}

fn entry_only_wal(seg: u64) -> (SimVfs, WalOptions) {
    let vfs = SimVfs::new(1);
    let opts = sim_opts(&vfs, seg, 1);
    let mut wal = Wal::create_with(DIR, META, opts.clone()).unwrap();
    wal.save(
        &HardState {
            term: 1,
            vote: 1,
            commit: 0,
        },
        &[],
    )
    .unwrap();
    for i in 1..=40 {
        let e = Entry {
            term: 1,
            index: i,
            data: vec![i as u8; 40].into(),
            ..Default::default()
        };
        wal.save(
            &HardState {
                term: 1,
                vote: 1,
                commit: 0,
            },
            &[e],
        )
        .unwrap();
    }
    (vfs, opts)
}

fn assert_corrupt_at(err: WalError, file: &Path, offset: u64) -> String {
    match err {
        WalError::Corrupt {
            file: f,
            offset: o,
            reason,
        } => {
            assert_eq!((f.as_path(), o), (file, offset), "{reason}");
            reason
        }
        other => panic!(
            "expected Corrupt at {} offset {offset}, got {other}",
            file.display()
        ),
    }
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_corrupt_at_that_record() {
    let (vfs, opts) = entry_only_wal(512);
    let recs = records(&opts);
    let victim = recs
        .iter()
        .find(|r| matches!(r.record, Record::Entry(_)))
        .unwrap();
    assert!(
        victim
            .file
            .ends_with("0000000000000000-0000000000000000.wal")
    );
    vfs.corrupt(&victim.file, |d| d[victim.offset as usize + 30] ^= 0x01);
    let err = open(&opts).unwrap_err();
    let reason = assert_corrupt_at(err, &victim.file, victim.offset);
    assert!(reason.contains("CRC"), "{reason}");
    // The dump shows everything before the damage, then fails the same way.
    let mut seen = Vec::new();
    let err = read_records(DIR, &opts, &mut |r| seen.push(r)).unwrap_err();
    assert_corrupt_at(err, &victim.file, victim.offset);
    assert_eq!(seen.last().map(|r| r.offset < victim.offset), Some(true));
}

#[test]
fn a_bad_crc_followed_by_fsynced_records_is_corrupt_not_a_torn_tail() {
    let (vfs, opts) = entry_only_wal(1 << 20);
    let recs = records(&opts);
    let victim = recs
        .iter()
        .filter(|r| matches!(r.record, Record::Entry(_)))
        .nth(5)
        .unwrap();
    vfs.corrupt(&victim.file, |d| d[victim.offset as usize + 40] ^= 0x80);
    let reason = assert_corrupt_at(open(&opts).unwrap_err(), &victim.file, victim.offset);
    assert!(
        reason.contains("CRC") && reason.contains("fsynced"),
        "{reason}"
    );
    // Nothing was repaired: the file is as damaged as before, and still refused.
    assert!(open(&opts).is_err());
}

#[test]
fn a_zeroed_header_in_the_middle_is_corrupt() {
    let (vfs, opts) = entry_only_wal(1 << 20);
    let recs = records(&opts);
    let victim = recs
        .iter()
        .filter(|r| matches!(r.record, Record::Entry(_)))
        .nth(3)
        .unwrap();
    vfs.corrupt(&victim.file, |d| {
        d[victim.offset as usize..victim.offset as usize + 20].fill(0)
    });
    let reason = assert_corrupt_at(open(&opts).unwrap_err(), &victim.file, victim.offset);
    assert!(reason.contains("zeroed"), "{reason}");
}

#[test]
fn an_absurd_length_is_rejected_before_allocating() {
    let (vfs, opts) = entry_only_wal(1 << 20);
    let recs = records(&opts);
    let victim = recs
        .iter()
        .filter(|r| matches!(r.record, Record::Entry(_)))
        .nth(2)
        .unwrap();
    let at = victim.offset as usize + 4;
    vfs.corrupt(&victim.file, |d| {
        d[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    let reason = assert_corrupt_at(open(&opts).unwrap_err(), &victim.file, victim.offset);
    assert!(reason.contains("exceeds the limit"), "{reason}");
}

#[test]
fn a_missing_segment_is_corrupt() {
    let (vfs, opts) = entry_only_wal(512);
    let files = files_with_suffix(&vfs, Path::new(DIR), ".wal");
    assert!(files.len() >= 4);
    vfs.remove_file(&files[2]).unwrap();
    let reason = assert_corrupt_at(open(&opts).unwrap_err(), &files[3], 0);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn a_truncated_segment_is_corrupt() {
    let (vfs, opts) = entry_only_wal(512);
    let files = files_with_suffix(&vfs, Path::new(DIR), ".wal");
    for victim in [&files[1], files.last().unwrap()] {
        let original = vfs.read_file(victim).unwrap();
        vfs.corrupt(victim, |d| d.truncate(200));
        let reason = assert_corrupt_at(open(&opts).unwrap_err(), victim, 200);
        assert!(reason.contains("truncated"), "{reason}");
        vfs.corrupt(victim, |d| *d = original);
        assert!(open(&opts).is_ok());
    }
}

#[test]
fn records_lost_from_the_end_of_a_sealed_segment_are_detected() {
    let (vfs, opts) = entry_only_wal(512);
    let recs = records(&opts);
    let first = recs[0].file.clone();
    let last_in_first: &DumpRecord = recs.iter().filter(|r| r.file == first).last().unwrap();
    assert!(matches!(last_in_first.record, Record::Entry(_)));
    vfs.corrupt(&first, |d| d[last_in_first.offset as usize..].fill(0));
    let reason = assert_corrupt_at(open(&opts).unwrap_err(), &first, last_in_first.offset);
    assert!(reason.contains("records are missing"), "{reason}");
}

#[test]
fn garbage_after_the_end_of_a_sealed_segment_is_corrupt() {
    let (vfs, opts) = entry_only_wal(512);
    let files = files_with_suffix(&vfs, Path::new(DIR), ".wal");
    vfs.corrupt(&files[0], |d| {
        d.extend_from_slice(&[0u8, 0, 0, 0, 0, 0, 0, 0, 0x42])
    });
    let err = open(&opts).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { file, reason, .. } if *file == files[0] && reason.contains("sealed")),
        "{err}"
    );
}

/// One random mutation of one random segment file.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    // Mostly inside the bytes written, sometimes in the preallocated zeros.
    let written = data
        .iter()
        .rposition(|b| *b != 0)
        .map_or(data.len(), |p| p + 1);
    let span = if rng.chance(4, 5) {
        written
    } else {
        data.len()
    };
    let at = rng.below(span as u64) as usize;
    match rng.below(4) {
        0 => {
            let bit = rng.below(8);
            data[at] ^= 1 << bit;
            format!("flip bit {bit} at {at}")
        }
        1 => {
            let v = rng.next_u64() as u8;
            data[at] = v;
            format!("set byte {at} to {v:#04x}")
        }
        2 => {
            data.truncate(at);
            format!("truncate at {at}")
        }
        _ => {
            let sector = at / 512 * 512;
            let end = (sector + 512).min(data.len());
            data[sector..end].fill(0);
            format!("zero sector at {sector}")
        }
    }
}

#[test]
fn random_damage_is_refused_or_repaired_and_never_served() {
    for_each_seed(500, |seed| {
        let mut rng = Rng::new(seed);
        let vfs = SimVfs::new(seed);
        let seg = [512, 2048, 1 << 16][rng.below(3) as usize];
        let opts = sim_opts(&vfs, seg, seed);
        let batches = 5 + rng.below(30) as usize;
        let (hist, before_last) = build(&opts, &mut rng, batches, 300);
        let files: Vec<PathBuf> = files_with_suffix(&vfs, Path::new(DIR), ".wal");
        let victim = &files[rng.below(files.len() as u64) as usize];
        let mut what = String::new();
        vfs.corrupt(victim, |d| what = mutate(&mut rng, d));
        // A flipped or changed byte leaves the records after it as witnesses, so only the
        // last batch may be taken for a torn write. Zeroing or cutting off the whole end
        // of the log removes the witnesses too and is indistinguishable from a crash
        // before those writes: then any prefix is acceptable, but never garbage.
        let min_records = if what.starts_with("flip") || what.starts_with("set") {
            before_last
        } else {
            0
        };
        let context = format!("{what} in {}", victim.display());
        // Readers must not panic either.
        let _ = Wal::read_all(DIR, &SnapshotMarker::default(), &opts);
        let _ = read_records(DIR, &opts, &mut |_| {});
        match open(&opts) {
            Ok(rec) => {
                assert!(
                    hist.find_match(&rec, &SnapshotMarker::default(), min_records)
                        .is_some(),
                    "{context}: recovered state is not a prefix of at least {min_records} records ({} entries)",
                    rec.entries.len()
                );
                // A repair leaves a log that opens cleanly and keeps what it recovered.
                let again =
                    open(&opts).unwrap_or_else(|e| panic!("{context}: reopen after repair: {e}"));
                assert_eq!(again.entries, rec.entries, "{context}");
                assert!(again.torn_tail.is_none(), "{context}");
            }
            Err(WalError::Corrupt {
                file,
                offset,
                reason,
            }) => {
                let len = vfs.read_file(&file).map(|d| d.len() as u64).unwrap_or(0);
                assert!(
                    files.contains(&file) && offset <= len,
                    "{context}: {} {offset}: {reason}",
                    file.display()
                );
            }
            Err(WalError::SnapshotNotFound { .. } | WalError::UnsupportedVersion { .. }) => {}
            Err(other) => panic!("{context}: unexpected error {other}"),
        }
    });
}
