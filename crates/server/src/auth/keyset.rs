//! Sets of keys as unions of half-open ranges: what a user may read, what it may write.
//!
//! A permission names one key (`range_end` empty), a range `[key, range_end)`, or every
//! key from `key` on (`range_end` = `"\0"`), as etcd's requests do. A request is permitted
//! when the keys it names lie inside the user's set: for a range, inside one merged range
//! of the set (the ranges are merged when the set is built, so "inside the union" and
//! "inside one range" are the same test).

use std::cmp::Ordering;

/// The end of a range: a key (exclusive) or no end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Key(Vec<u8>),
    Unbounded,
}

impl Ord for End {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (End::Key(a), End::Key(b)) => a.cmp(b),
            (End::Key(_), End::Unbounded) => Ordering::Less,
            (End::Unbounded, End::Key(_)) => Ordering::Greater,
            (End::Unbounded, End::Unbounded) => Ordering::Equal,
        }
    }
}

impl PartialOrd for End {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The keys `(key, range_end)` names as etcd reads it: one key, `[key, range_end)`, or
/// every key from `key` on. `None` for a range that names no key at all (`range_end`
/// at or before `key`).
pub fn range_of(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, End)> {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            Some((key.to_vec(), End::Key(next)))
        }
        [0] => Some((key.to_vec(), End::Unbounded)),
        end if end > key => Some((key.to_vec(), End::Key(end.to_vec()))),
        _ => None,
    }
}

/// A union of ranges, sorted and merged: no two overlap or touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    ranges: Vec<(Vec<u8>, End)>,
}

impl KeySet {
    /// The union of `ranges`.
    pub fn from_ranges(mut ranges: Vec<(Vec<u8>, End)>) -> KeySet {
        ranges.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            if let Some((_, last_end)) = merged.last_mut() {
                let touches = match last_end {
                    End::Unbounded => true,
                    End::Key(k) => start <= *k,
                };
                if touches {
                    if end > *last_end {
                        *last_end = end;
                    }
                    continue;
                }
            }
            merged.push((start, end));
        }
        KeySet { ranges: merged }
    }

    /// Whether every key of `[start, end)` is in the set.
    pub fn contains(&self, start: &[u8], end: &End) -> bool {
        // The last range starting at or before `start` is the only one that can hold it.
        let after = self.ranges.partition_point(|(s, _)| s.as_slice() <= start);
        let Some((_, range_end)) = after.checked_sub(1).map(|i| &self.ranges[i]) else {
            return false;
        };
        end <= range_end
            && match range_end {
                End::Unbounded => true,
                End::Key(k) => start < k.as_slice(),
            }
    }

    /// Whether the keys `(key, range_end)` names (as a request names them) are in the
    /// set. A range that names no key is judged by its first key, so that a reversed
    /// range never reads as permitted everywhere.
    pub fn permits(&self, key: &[u8], range_end: &[u8]) -> bool {
        match range_of(key, range_end).or_else(|| range_of(key, &[])) {
            Some((start, end)) => self.contains(&start, &end),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(perms: &[(&[u8], &[u8])]) -> KeySet {
        KeySet::from_ranges(perms.iter().filter_map(|(k, e)| range_of(k, e)).collect())
    }

    // Goal: points, ranges and from-key grants cover exactly the keys etcd's grants name.
    #[test]
    fn grants_cover_what_they_name() {
        let s = set(&[(b"a", b""), (b"c", b"f"), (b"x", b"\0")]);
        assert!(s.permits(b"a", b""));
        assert!(
            !s.permits(b"a", b"b"),
            "a point grant does not cover a range"
        );
        assert!(!s.permits(b"a\0", b""));
        assert!(s.permits(b"c", b"f"));
        assert!(s.permits(b"d", b"e"));
        assert!(s.permits(b"e\xff", b""));
        assert!(!s.permits(b"c", b"g"));
        assert!(!s.permits(b"b", b"d"));
        assert!(!s.permits(b"f", b""));
        assert!(s.permits(b"x", b"\0"));
        assert!(s.permits(b"zzz", b""));
        assert!(!s.permits(b"w", b"\0"));
        assert!(
            !s.permits(b"\0", b"\0"),
            "the whole key space is not granted"
        );
    }

    // Goal: adjacent and overlapping grants merge, so a request spanning two grants that
    // touch is permitted and one spanning a gap is not.
    #[test]
    fn touching_grants_merge_and_gaps_do_not() {
        let s = set(&[(b"a", b"c"), (b"c", b"e"), (b"b", b"d"), (b"g", b"h")]);
        assert!(s.permits(b"a", b"e"));
        assert!(!s.permits(b"a", b"h"));
        assert!(!s.permits(b"e", b""));
        let s = set(&[(b"a", b""), (b"a\0", b"b")]);
        assert!(
            s.permits(b"a", b"b"),
            "a point and the range right after it touch"
        );
    }

    // Goal: reversed or empty ranges grant nothing, and a reversed request is judged by
    // its first key.
    #[test]
    fn reversed_ranges() {
        assert_eq!(range_of(b"b", b"a"), None);
        assert_eq!(range_of(b"b", b"b"), None);
        let s = set(&[(b"b", b"a")]);
        assert_eq!(s, KeySet::default());
        let s = set(&[(b"a", b"c")]);
        assert!(s.permits(b"b", b"a"));
        assert!(!s.permits(b"d", b"a"));
        assert!(!KeySet::default().permits(b"a", b""));
    }
}
