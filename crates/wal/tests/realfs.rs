//! The crash harness on the real file system: write batches (some fsynced, then some not),
//! then play the power cut by hand on the tail segment: the unsynced bytes are cut at a
//! random point (zeroed inside the preallocated size, truncated beyond it) and sometimes
//! garbled; reopen, and check that every acknowledged record is back and nothing torn is.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use common::*;
use retcd_wal::{SnapshotMarker, Wal};

fn tear(
    rng: &mut Rng,
    path: &std::path::Path,
    durable: u64,
    written: u64,
    prealloc: u64,
) -> String {
    let cut = durable + rng.below(written - durable + 1);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    if cut >= prealloc {
        file.set_len(cut).unwrap();
    } else {
        file.seek(SeekFrom::Start(cut)).unwrap();
        file.write_all(&vec![0u8; (written - cut) as usize])
            .unwrap();
        if len > prealloc {
            file.set_len(prealloc).unwrap();
        }
    }
    let mut what = format!("cut the unsynced bytes {durable}..{written} at {cut}");
    if cut > durable && rng.chance(1, 2) {
        // Garble a few bytes at the end of what was kept, as a half-written sector would.
        let from = cut - (cut - durable).min(64);
        for _ in 0..1 + rng.below(4) {
            let at = from + rng.below(cut - from);
            file.seek(SeekFrom::Start(at)).unwrap();
            file.write_all(&[rng.next_u64() as u8 | 1]).unwrap();
            what.push_str(&format!(", garbled {at}"));
        }
    }
    file.sync_all().unwrap();
    what
}

#[test]
fn torn_unsynced_tail_on_a_real_disk_is_repaired_and_acked_records_survive() {
    for_each_seed(60, |seed| {
        let mut rng = Rng::new(seed);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let seg = [4096, 16384][rng.below(2) as usize];
        let opts = std_opts(seg);
        let mut wal = Wal::create_with(&dir, META, opts.clone()).unwrap();
        let mut hist = History::default();
        for _ in 0..1 + rng.below(8) {
            let (hs, entries) = gen_batch(&mut rng, &hist.view, 400);
            for ev in save_events(&wal.hard_state(), &hs, &entries) {
                hist.push(ev);
            }
            wal.save(&hs, &entries).unwrap();
            hist.ack();
        }
        for _ in 0..1 + rng.below(4) {
            let (hs, entries) = gen_batch(&mut rng, &hist.view, 400);
            for ev in save_events(&wal.hard_state(), &hs, &entries) {
                hist.push(ev);
            }
            wal.save_no_sync(&hs, &entries).unwrap();
        }
        let tail = wal.tail_position();
        drop(wal);
        let what = tear(
            &mut rng,
            &tail.file,
            tail.durable_bytes,
            tail.written_bytes,
            seg,
        );
        let (mut wal, rec) = Wal::open_with(&dir, &SnapshotMarker::default(), opts.clone())
            .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        let state = hist.check_recovered(&rec, &SnapshotMarker::default());
        // The repaired log takes new writes and serves them, not the torn ones.
        let mut hist = History::new(state);
        let (hs, entries) = gen_batch(&mut rng, &hist.view, 400);
        for ev in save_events(&wal.hard_state(), &hs, &entries) {
            hist.push(ev);
        }
        wal.save(&hs, &entries).unwrap();
        hist.ack();
        drop(wal);
        let (_, rec) = Wal::open_with(&dir, &SnapshotMarker::default(), opts).unwrap();
        assert!(rec.torn_tail.is_none(), "{what}");
        let st = hist.check_recovered(&rec, &SnapshotMarker::default());
        assert_eq!(st, hist.view, "{what}");
    });
}
