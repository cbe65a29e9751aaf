//! Shared by the integration tests: a seeded PRNG, a model of what the WAL should recover,
//! and a generator of Raft-like batches.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use retcd_raft::{ConfState, Entry, EntryType, HardState};
use retcd_wal::sim::SimVfs;
use retcd_wal::{Recovered, SnapshotMarker, Vfs, WalOptions};

pub const META: &[u8] = b"node=1 cluster=7";

/// retcd-prng's splitmix64, with the conveniences these tests use.
#[derive(Clone, Debug)]
pub struct Rng(retcd_prng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(retcd_prng::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Seeds to run: `RETCD_WAL_SEED=n` replays one; `RETCD_WAL_SEEDS=n` runs `0..n` (soak);
/// otherwise `0..default_count`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("RETCD_WAL_SEED") {
        return vec![s.parse().expect("RETCD_WAL_SEED must be a number")];
    }
    let count = std::env::var("RETCD_WAL_SEEDS").map_or(default_count, |s| {
        s.parse().expect("RETCD_WAL_SEEDS must be a number")
    });
    (0..count).collect()
}

/// Runs `f` for every seed; a failure names the seed and how to replay it.
pub fn for_each_seed(default_count: u64, f: impl Fn(u64)) {
    for seed in seeds(default_count) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed)));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("seed {seed} failed: {msg}\nreplay with RETCD_WAL_SEED={seed}");
        }
    }
}

pub fn sim_opts(vfs: &SimVfs, segment_size_bytes: u64, seed: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        max_record_bytes: 4096,
        vfs: Arc::new(vfs.clone()) as Arc<dyn Vfs>,
        salt_seed: Some(seed),
    }
}

pub fn std_opts(segment_size_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        max_record_bytes: 4096,
        ..WalOptions::default()
    }
}

/// One record's effect, in the order the WAL writes them.
#[derive(Clone, Debug)]
pub enum Ev {
    Entry(Entry),
    HardState(HardState),
    Marker(SnapshotMarker),
}

/// The log (from index 1) and hard state that a prefix of the records produces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelState {
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub marker_index: u64,
}

impl ModelState {
    pub fn apply(&mut self, ev: &Ev) {
        match ev {
            Ev::Entry(e) => {
                let pos = (e.index - 1) as usize;
                assert!(pos <= self.entries.len(), "generator made a gap");
                self.entries.truncate(pos);
                self.entries.push(e.clone());
            }
            Ev::HardState(hs) => self.hard_state = *hs,
            Ev::Marker(m) => self.marker_index = self.marker_index.max(m.index),
        }
    }

    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Whether `rec`, read from snapshot marker `from`, is exactly this state.
    pub fn matches(&self, rec: &Recovered, from: &SnapshotMarker) -> bool {
        rec.hard_state == self.hard_state
            && rec.entries.len() as u64 == self.last_index().saturating_sub(from.index)
            && rec
                .entries
                .iter()
                .zip(self.entries.iter().skip(from.index as usize))
                .all(|(a, b)| a == b)
    }
}

/// Everything written since a known-good base, and how much of it was acknowledged.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub base: ModelState,
    pub events: Vec<Ev>,
    /// `events[..acked]` were acknowledged (a save, sync or marker returned Ok after them).
    pub acked: usize,
    /// What the writer believes: base plus all events.
    pub view: ModelState,
}

impl History {
    pub fn new(base: ModelState) -> Self {
        History {
            view: base.clone(),
            base,
            events: Vec::new(),
            acked: 0,
        }
    }

    pub fn push(&mut self, ev: Ev) {
        self.view.apply(&ev);
        self.events.push(ev);
    }

    pub fn ack(&mut self) {
        self.acked = self.events.len();
    }

    /// The state after the shortest prefix of at least `min` events that `rec` equals.
    pub fn find_match(
        &self,
        rec: &Recovered,
        from: &SnapshotMarker,
        min: usize,
    ) -> Option<(usize, ModelState)> {
        let mut st = self.base.clone();
        for r in 0..=self.events.len() {
            if r > 0 {
                st.apply(&self.events[r - 1]);
            }
            if r >= min && st.matches(rec, from) {
                return Some((r, st));
            }
        }
        None
    }

    /// Panics unless `rec` is the state after some prefix that includes every
    /// acknowledged record. Returns that state.
    pub fn check_recovered(&self, rec: &Recovered, from: &SnapshotMarker) -> ModelState {
        match self.find_match(rec, from, self.acked) {
            Some((_, st)) => st,
            None => {
                let lost = self.find_match(rec, from, 0).map(|(r, _)| r);
                panic!(
                    "recovered state is not a state after >= {} of {} records (it matches a prefix of {:?}): \
                     recovered {} entries (last {:?}), hard state {:?}; expected at least {} entries",
                    self.acked,
                    self.events.len(),
                    lost,
                    rec.entries.len(),
                    rec.entries.last().map(|e| (e.index, e.term)),
                    rec.hard_state,
                    self.acked_state().last_index().saturating_sub(from.index),
                )
            }
        }
    }

    pub fn acked_state(&self) -> ModelState {
        let mut st = self.base.clone();
        for ev in &self.events[..self.acked] {
            st.apply(ev);
        }
        st
    }
}

/// A Raft-like batch after `view`: entries that may overwrite a short suffix above the last
/// snapshot marker (with a higher term, as a new leader would), and maybe a new hard state.
pub fn gen_batch(rng: &mut Rng, view: &ModelState, max_data: usize) -> (HardState, Vec<Entry>) {
    let last = view.last_index();
    let low = (view.marker_index + 1).max(last.saturating_sub(3)).max(1);
    let start = if last + 1 >= low {
        low + rng.below(last + 2 - low)
    } else {
        last + 1
    };
    let count = rng.below(6);
    let mut term = view.last_term().max(view.hard_state.term).max(1);
    if start <= last {
        term += 1;
    }
    let entries: Vec<Entry> = (0..count)
        .map(|i| {
            let entry_type = match rng.below(10) {
                0 => EntryType::ConfChange,
                1 => EntryType::ConfChangeV2,
                _ => EntryType::Normal,
            };
            let len = rng.below(max_data as u64 + 1) as usize;
            Entry {
                term,
                index: start + i,
                entry_type,
                data: Bytes::from(rng.bytes(len)),
            }
        })
        .collect();
    let mut hs = view.hard_state;
    if entries.is_empty() || rng.chance(1, 2) {
        let new_last = if entries.is_empty() {
            last
        } else {
            start + count - 1
        };
        hs.term = hs.term.max(term) + rng.below(2);
        hs.vote = rng.below(4);
        let commit = hs.commit.min(new_last);
        hs.commit = commit + rng.below(new_last - commit + 1);
    }
    (hs, entries)
}

/// The events a `save(hs, entries)` writes, given the writer's last hard state.
pub fn save_events(prev: &HardState, hs: &HardState, entries: &[Entry]) -> Vec<Ev> {
    let mut evs: Vec<Ev> = entries.iter().cloned().map(Ev::Entry).collect();
    if !hs.is_empty() && hs != prev {
        evs.push(Ev::HardState(*hs));
    }
    evs
}

pub fn gen_marker(rng: &mut Rng, view: &ModelState) -> Option<SnapshotMarker> {
    let last = view.last_index();
    if last <= view.marker_index {
        return None;
    }
    let index = view.marker_index + 1 + rng.below(last - view.marker_index);
    let term = view.entries[(index - 1) as usize].term;
    let voters = (1..=1 + rng.below(5)).collect();
    Some(SnapshotMarker {
        index,
        term,
        conf_state: ConfState {
            voters,
            ..ConfState::default()
        },
    })
}

/// Files of a directory with a suffix, sorted.
pub fn files_with_suffix(vfs: &dyn Vfs, dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut names: Vec<String> = vfs
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}
