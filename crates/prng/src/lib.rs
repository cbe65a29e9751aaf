//! SplitMix64: a tiny seeded pseudo-random number generator (Steele, Lea and Flood's
//! splitmix64, the generator behind Java's `SplittableRandom`).
//!
//! Everything random in retcd that must replay from a seed draws from it: the Raft core's
//! election-timeout jitter (the seed comes from `Config::seed`, so a simulated run replays
//! message for message), the WAL's per-segment CRC salts and its simulated disk's faults,
//! and every seeded test (fault runs, crash cycles, hostile inputs, the checkers' mutation
//! tests, the fault proxy's loss). It is not for anything that must be unpredictable.
//!
//! # Why its own crate
//! It used to live in the Raft crate, so the WAL and the tests imported their randomness
//! from the consensus core, and the core's public API carried a utility it does not own.
//! As a crate of its own it has one job and no dependencies: the core can depend on it
//! without weakening its purity (`crates/raft/tests/purity.rs` checks both crates), and
//! everyone else can use it without depending on Raft.

/// The generator: 64 bits of state, one addition and a mixing function per draw. The
/// same seed gives the same sequence on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next value, uniform over all of `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`). The modulo bias is irrelevant at our bounds.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        self.next_u64() % bound
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// True or false, evenly.
    pub fn flag(&mut self) -> bool {
        self.below(2) == 0
    }

    /// One of `xs` (not empty), evenly.
    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }

    /// An `i64` that breaks careless code half the time (zero, -1, the edges of the type,
    /// a negative), else one of `0..small` (values that hit real state: revisions, ids).
    pub fn hostile_i64(&mut self, small: u64) -> i64 {
        match self.below(10) {
            0 => 0,
            1 => -1,
            2 => i64::MIN,
            3 => i64::MAX,
            4 => -(self.below(1000) as i64),
            _ => self.below(small) as i64,
        }
    }

    /// An enum number as a hostile client sends it: the defined ones and a few no enum
    /// defines (proto3 decodes unknown numbers as they are).
    pub fn hostile_enum(&mut self) -> i32 {
        self.pick(&[0, 1, 2, 3, 4, 5, -1, 99, i32::MAX, i32::MIN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_bounded() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    // Goal: the hostile values reach the edges they are meant to, and stay in range
    // otherwise.
    #[test]
    fn hostile_values_reach_the_edges() {
        let mut r = SplitMix64::new(3);
        let ints: Vec<i64> = (0..1000).map(|_| r.hostile_i64(12)).collect();
        for edge in [0, -1, i64::MIN, i64::MAX] {
            assert!(ints.contains(&edge), "{edge} never came up");
        }
        assert!(ints.iter().all(|&i| i < 12 || i == i64::MAX));
        let enums: Vec<i32> = (0..1000).map(|_| r.hostile_enum()).collect();
        assert!(enums.contains(&99) && enums.contains(&i32::MIN));
        assert!((0..100).any(|_| r.flag()) && (0..100).any(|_| !r.flag()));
    }
}
