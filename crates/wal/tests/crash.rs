//! Crash consistency on the simulated disk: write Raft-like batches, crash at random
//! moments (between calls and inside them, with torn, reordered and garbled unsynced
//! writes, lost directory updates, failed fsyncs and writes), restart, and check that the
//! recovered log and hard state are exactly what some prefix of the written records
//! produces, a prefix that includes every acknowledged record. Several crash rounds per
//! seed, so repaired logs are written to and crashed again.

mod common;

use std::path::Path;

use common::*;
use retcd_wal::sim::{Fault, SimVfs};
use retcd_wal::{Recovered, SnapshotMarker, Wal, WalError};

const DIR: &str = "/data/member/wal";

/// Starts the writer after a crash (or for the first time), crashing again if an injected
/// fault kills it, until it comes up. Returns the writer and what it recovered.
fn start(
    rng: &mut Rng,
    vfs: &SimVfs,
    seg: u64,
    seed: u64,
    from: &SnapshotMarker,
    hist: &History,
) -> (Wal, Option<Recovered>) {
    let dir = Path::new(DIR);
    for attempt in 0.. {
        assert!(
            attempt < 10,
            "the WAL did not come up after {attempt} attempts"
        );
        if attempt < 3 && rng.chance(1, 4) {
            vfs.set_fault(Fault::CrashAt(rng.below(6)));
        }
        let result = if Wal::exists(dir, vfs).unwrap() {
            Wal::open_with(dir, from, sim_opts(vfs, seg, seed)).map(|(w, r)| (w, Some(r)))
        } else {
            // Nothing was ever acknowledged if the first segment never got its name.
            assert_eq!(hist.acked, 0, "an acknowledged WAL lost its segments");
            Wal::create_with(dir, META, sim_opts(vfs, seg, seed)).map(|w| (w, None))
        };
        match result {
            Ok(ok) => {
                vfs.clear_fault();
                return ok;
            }
            Err(WalError::Io { .. }) => vfs.crash(),
            Err(other) => panic!("restart failed with a non-I/O error: {other}"),
        }
    }
    unreachable!()
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let vfs = SimVfs::new(seed.wrapping_mul(31).wrapping_add(7));
    let seg = [512, 1024, 4096][rng.below(3) as usize];
    let max_data = [16, 200, 1500][rng.below(3) as usize];
    let mut hist = History::default();
    let mut from = SnapshotMarker::default();
    for round in 0..4 {
        let (mut wal, recovered) = start(&mut rng, &vfs, seg, seed, &from, &hist);
        if let Some(rec) = recovered {
            assert_eq!(&rec.metadata[..], META, "round {round}");
            let mut state = hist.check_recovered(&rec, &from);
            // A marker whose save failed may still be on disk; like Raft, never write below
            // a snapshot that may exist.
            state.marker_index = state.marker_index.max(hist.view.marker_index);
            hist = History::new(state);
        }
        let mut fault_armed = false;
        for _ in 0..rng.below(40) {
            if !fault_armed && rng.chance(1, 25) {
                fault_armed = true;
                vfs.set_fault(match rng.below(3) {
                    0 => Fault::CrashAt(rng.below(8)),
                    1 => Fault::SyncFails(rng.below(3)),
                    _ => Fault::WriteFails(rng.below(3)),
                });
            }
            let op = rng.below(20);
            let result = match op {
                0..=11 => {
                    let (hs, entries) = gen_batch(&mut rng, &hist.view, max_data);
                    for ev in save_events(&wal.hard_state(), &hs, &entries) {
                        hist.push(ev);
                    }
                    wal.save(&hs, &entries).map(|()| hist.ack())
                }
                12..=14 => {
                    let (hs, entries) = gen_batch(&mut rng, &hist.view, max_data);
                    for ev in save_events(&wal.hard_state(), &hs, &entries) {
                        hist.push(ev);
                    }
                    wal.save_no_sync(&hs, &entries)
                }
                15 => wal.sync().map(|()| hist.ack()),
                16 | 17 => match gen_marker(&mut rng, &hist.view) {
                    Some(m) => {
                        hist.push(Ev::Marker(m.clone()));
                        wal.save_snapshot_marker(&m).map(|()| {
                            hist.ack();
                            from = m;
                        })
                    }
                    None => Ok(()),
                },
                // Keeping 0, 1 or 2 segments, without drawing from the seeded stream.
                18 => wal
                    .purge_to(from.index, (from.index % 3) as usize)
                    .map(|_| ()),
                _ => {
                    // A record over the limit is refused before anything is written.
                    let view = &hist.view;
                    let big = retcd_raft::Entry {
                        term: view.last_term().max(1),
                        index: view.last_index() + 1,
                        data: vec![1u8; 5000].into(),
                        ..Default::default()
                    };
                    match wal.save(&view.hard_state, &[big]) {
                        Err(WalError::RecordTooLarge { .. }) => Ok(()),
                        Err(e @ WalError::Poisoned { .. }) => Err(e),
                        other => panic!("oversized entry: {other:?}"),
                    }
                }
            };
            if let Err(e) = result {
                assert!(fault_armed, "error without an injected fault: {e}");
                // After a failed write or fsync nothing more may be acknowledged. (A failed
                // purge only leaves extra old segments behind.)
                if op != 18 {
                    let again = wal.save(&hist.view.hard_state, &[]);
                    assert!(
                        matches!(again, Err(WalError::Poisoned { .. })),
                        "after {e}: {again:?}"
                    );
                }
                break;
            }
        }
        vfs.crash();
        drop(wal);
    }
    let (_wal, rec) = start(&mut rng, &vfs, seg, seed, &from, &hist);
    hist.check_recovered(&rec.expect("the WAL exists"), &from);
}

#[test]
fn acknowledged_records_survive_crashes_and_torn_writes_never_resurrect() {
    for_each_seed(1000, run);
}

#[test]
fn failed_fsync_poisons_and_the_unacknowledged_batch_is_gone_after_restart() {
    for_each_seed(40, |seed| {
        let vfs = SimVfs::new(seed);
        let dir = Path::new(DIR);
        let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 1 << 20, seed)).unwrap();
        let e = |i: u64| retcd_raft::Entry {
            term: 1,
            index: i,
            data: vec![i as u8; 10].into(),
            ..Default::default()
        };
        let hs = retcd_raft::HardState {
            term: 1,
            vote: 1,
            commit: 0,
        };
        wal.save(&hs, &[e(1), e(2)]).unwrap();
        vfs.set_fault(Fault::SyncFails(0));
        let err = wal.save(&hs, &[e(3)]).unwrap_err();
        assert!(matches!(err, WalError::Io { op: "fsync", .. }), "{err}");
        // fsyncgate: retrying would "succeed" on pages the kernel already dropped.
        assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
        assert!(matches!(
            wal.save(&hs, &[e(4)]),
            Err(WalError::Poisoned { .. })
        ));
        vfs.crash();
        drop(wal);
        let (_wal, rec) = Wal::open_with(
            dir,
            &SnapshotMarker::default(),
            sim_opts(&vfs, 1 << 20, seed),
        )
        .unwrap();
        assert_eq!(rec.entries, vec![e(1), e(2)]);
        assert_eq!(rec.hard_state, hs);
    });
}

#[test]
fn crash_at_every_call_of_a_cut_recovers() {
    // Crash at each mutating call of a save that cuts a new segment, to cover every step
    // of the seal / create / rename / fsync-dir sequence.
    let e = |i: u64| retcd_raft::Entry {
        term: 1,
        index: i,
        data: vec![7u8; 150].into(),
        ..Default::default()
    };
    let hs = |c: u64| retcd_raft::HardState {
        term: 1,
        vote: 2,
        commit: c,
    };
    for crash_at in 0..12 {
        for seed in 0..10 {
            let vfs = SimVfs::new(seed * 100 + crash_at);
            let dir = Path::new(DIR);
            let mut wal = Wal::create_with(dir, META, sim_opts(&vfs, 512, seed)).unwrap();
            wal.save(&hs(1), &[e(1), e(2), e(3)]).unwrap();
            vfs.set_fault(Fault::CrashAt(crash_at));
            let acked = wal.save(&hs(3), &[e(4), e(5)]).is_ok();
            vfs.crash();
            drop(wal);
            let (mut wal, rec) =
                Wal::open_with(dir, &SnapshotMarker::default(), sim_opts(&vfs, 512, seed))
                    .unwrap_or_else(|err| panic!("crash_at {crash_at} seed {seed}: {err}"));
            let n = rec.entries.len();
            assert!(
                n >= 3 && (!acked || n == 5),
                "crash_at {crash_at} seed {seed}: {n} entries, acked {acked}"
            );
            assert_eq!(rec.entries[..], [e(1), e(2), e(3), e(4), e(5)][..n]);
            // The log continues after the repair and survives another restart.
            wal.save(&hs(6), &[e(n as u64 + 1)]).unwrap();
            drop(wal);
            vfs.crash();
            let (_, rec) =
                Wal::open_with(dir, &SnapshotMarker::default(), sim_opts(&vfs, 512, seed)).unwrap();
            assert_eq!(rec.entries.len(), n + 1, "crash_at {crash_at} seed {seed}");
            assert_eq!(rec.hard_state, hs(6));
        }
    }
}
