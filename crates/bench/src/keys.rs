//! Deterministic keys and values.
//!
//! Request `i` of a run always writes the same key, whichever client happens
//! to send it: the key index is a pure function of `(seed, i)`, so two runs
//! with the same flags write the same keys, against retcd and etcd alike.
//! Keys are readable: `--key-prefix` followed by the key index in decimal,
//! zero-padded to `--key-size` bytes (etcd's benchmark writes the index as a
//! binary varint; the size, which is what costs, is the same).

use bytes::Bytes;

use crate::error::BenchError;

/// SplitMix64's finaliser: a fast bijective mixer of 64-bit values, good
/// enough to scatter request numbers over the key space.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Number of decimal digits of `n` (1 for 0).
pub fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Maps request numbers to keys.
#[derive(Debug, Clone)]
pub struct KeyGen {
    prefix: Vec<u8>,
    // Invariant: decimal_digits(key_space_size - 1) <= digits.
    digits: usize,
    key_space_size: u64,
    sequential: bool,
    seed: u64,
}

impl KeyGen {
    /// Keys of exactly `key_size` bytes, `prefix` included, drawn from
    /// `key_space_size` distinct keys.
    pub fn new(
        prefix: &[u8],
        key_size: usize,
        key_space_size: u64,
        sequential: bool,
        seed: u64,
    ) -> Result<Self, BenchError> {
        if key_space_size == 0 {
            return Err(BenchError::InvalidArgument(
                "--key-space-size must be > 0".into(),
            ));
        }
        let needed = decimal_digits(key_space_size - 1);
        let digits = key_size.saturating_sub(prefix.len());
        if digits < needed {
            return Err(BenchError::InvalidArgument(format!(
                "--key-size {key_size} cannot hold a {}-byte prefix and {needed} digits \
                 for --key-space-size {key_space_size}",
                prefix.len()
            )));
        }
        Ok(KeyGen {
            prefix: prefix.to_vec(),
            digits,
            key_space_size,
            sequential,
            seed,
        })
    }

    /// One distinct key per request, in request order, for workloads that
    /// must tell requests apart by key (watch). The key grows past
    /// `key_size` when `requests` needs more digits.
    pub fn per_request(prefix: &[u8], key_size: usize, requests: u64) -> Self {
        let requests = requests.max(1);
        let digits = key_size
            .saturating_sub(prefix.len())
            .max(decimal_digits(requests - 1));
        KeyGen {
            prefix: prefix.to_vec(),
            digits,
            key_space_size: requests,
            sequential: true,
            seed: 0,
        }
    }

    /// The number of distinct keys.
    pub fn key_space_size(&self) -> u64 {
        self.key_space_size
    }

    /// The key index that request `request` writes.
    pub fn key_index(&self, request: u64) -> u64 {
        if self.sequential {
            request % self.key_space_size
        } else {
            splitmix64(self.seed ^ splitmix64(request)) % self.key_space_size
        }
    }

    /// The key with index `index` (taken modulo the key space).
    pub fn key_at(&self, index: u64) -> Bytes {
        let index = index % self.key_space_size;
        let mut key = Vec::with_capacity(self.prefix.len() + self.digits);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(format!("{index:0width$}", width = self.digits).as_bytes());
        Bytes::from(key)
    }

    /// The key that request `request` writes.
    pub fn key(&self, request: u64) -> Bytes {
        self.key_at(self.key_index(request))
    }

    /// The key index of a key this generator made, or None for a foreign key.
    pub fn parse_index(&self, key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(self.prefix.as_slice())?;
        if digits.is_empty() {
            return None;
        }
        // By hand rather than str::parse: the watch workload calls this for
        // every event it receives.
        digits.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }
}

/// A value of `size` printable bytes, the same for the same seed.
pub fn value(size: usize, seed: u64) -> Bytes {
    let mut state = seed;
    (0..size)
        .map(|_| {
            state = splitmix64(state);
            b'a' + (state % 26) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The exclusive end of the range of keys starting with `prefix`, as etcd
/// computes it (clientv3's GetPrefixRangeEnd): the prefix with its last byte
/// below 0xff incremented and the rest cut off; `\0` (every key) when the
/// prefix is empty or all 0xff.
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end.into()
        }
        None => Bytes::from_static(&[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_prefix() {
        let keys = KeyGen::new(b"p/", 8, 1000, true, 7).unwrap();
        assert_eq!(&keys.key(0)[..], b"p/000000");
        assert_eq!(&keys.key(999)[..], b"p/000999");
        assert_eq!(&keys.key(1000)[..], b"p/000000", "sequential keys wrap");
        for i in 0..2000 {
            assert_eq!(keys.key(i).len(), 8);
        }
        // etcd's defaults: 8-byte keys, one key.
        let keys = KeyGen::new(b"", 8, 1, false, 1).unwrap();
        assert_eq!(&keys.key(12345)[..], b"00000000");
    }

    #[test]
    fn random_keys_are_deterministic_per_seed_and_cover_the_space() {
        let a = KeyGen::new(b"", 8, 100, false, 42).unwrap();
        let b = KeyGen::new(b"", 8, 100, false, 42).unwrap();
        let c = KeyGen::new(b"", 8, 100, false, 43).unwrap();
        let seq_a: Vec<u64> = (0..1000).map(|i| a.key_index(i)).collect();
        let seq_b: Vec<u64> = (0..1000).map(|i| b.key_index(i)).collect();
        let seq_c: Vec<u64> = (0..1000).map(|i| c.key_index(i)).collect();
        assert_eq!(seq_a, seq_b);
        assert_ne!(seq_a, seq_c, "another seed gives another order");
        assert!(seq_a.iter().all(|&k| k < 100));
        let distinct: std::collections::BTreeSet<_> = seq_a.iter().collect();
        assert!(
            distinct.len() > 95,
            "only {} of 100 keys hit",
            distinct.len()
        );
        assert_ne!(
            seq_a[..100],
            (0..100).collect::<Vec<_>>()[..],
            "not sequential"
        );
    }

    #[test]
    fn key_size_must_hold_the_key_space() {
        assert!(KeyGen::new(b"", 3, 1000, false, 0).is_ok());
        assert!(KeyGen::new(b"", 3, 1001, false, 0).is_err());
        assert!(KeyGen::new(b"abc", 4, 11, false, 0).is_err());
        assert!(KeyGen::new(b"abc", 4, 10, false, 0).is_ok());
        assert!(KeyGen::new(b"", 8, 0, false, 0).is_err());
    }

    #[test]
    fn per_request_keys_are_distinct_and_parse_back() {
        let keys = KeyGen::per_request(b"w/", 4, 1000);
        assert_eq!(&keys.key(7)[..], b"w/007");
        for i in [0, 1, 99, 999] {
            assert_eq!(keys.parse_index(&keys.key(i)), Some(i));
        }
        assert_eq!(keys.parse_index(b"x/001"), None);
        assert_eq!(keys.parse_index(b"w/"), None);
        assert_eq!(keys.parse_index(b"w/1a"), None);
    }

    #[test]
    fn values_are_printable_sized_and_seeded() {
        assert_eq!(value(0, 1).len(), 0);
        let v = value(256, 9);
        assert_eq!(v.len(), 256);
        assert!(v.iter().all(u8::is_ascii_lowercase));
        assert_eq!(v, value(256, 9));
        assert_ne!(v, value(256, 10));
    }

    #[test]
    fn prefix_range_end_matches_clientv3() {
        assert_eq!(&prefix_range_end(b"abc")[..], b"abd");
        assert_eq!(&prefix_range_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_range_end(b"\xff\xff")[..], b"\0");
        assert_eq!(&prefix_range_end(b"")[..], b"\0");
    }

    #[test]
    fn decimal_digits_counts() {
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(9), 1);
        assert_eq!(decimal_digits(10), 2);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }
}
