//! Brute-force protection for Authenticate, which etcd does not have: after
//! [`FREE_FAILURES`] failed logins for a user, or from a client address, further
//! attempts for that user or from that address are refused without checking the
//! password until a back-off has passed since the last failure (100 ms, doubling with
//! each failure, at most [`MAX_BACKOFF`]). A successful login clears the user's and the
//! address's record. Refusals are etcd's "authentication failed" (clients know no other
//! error), logged as throttled.
//!
//! Memory is bounded: at most [`MAX_RECORDS`] records; when full, records idle for more
//! than [`MAX_BACKOFF`] are dropped, and if that frees nothing, the oldest half.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before any back-off.
pub const FREE_FAILURES: u32 = 5;
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Records kept at most.
pub const MAX_RECORDS: usize = 100_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

impl Record {
    fn backoff(&self) -> Duration {
        let over = self.failures.saturating_sub(FREE_FAILURES);
        if over == 0 {
            return Duration::ZERO;
        }
        FIRST_BACKOFF
            .saturating_mul(1u32 << (over - 1).min(16))
            .min(MAX_BACKOFF)
    }
}

#[derive(Debug, Default)]
pub struct LoginThrottle {
    records: Mutex<HashMap<Key, Record>>,
}

fn keys(user: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::User(user.to_string())).chain(addr.map(Key::Addr))
}

impl LoginThrottle {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long until a login for `user` from `addr` may be checked at `now` (zero: now).
    pub fn wait(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Duration {
        let records = self.records();
        keys(user, addr)
            .filter_map(|k| records.get(&k))
            .map(|r| (r.last + r.backoff()).saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    pub fn failed(&self, user: &str, addr: Option<IpAddr>, now: Instant) {
        let mut records = self.records();
        if records.len() >= MAX_RECORDS {
            records.retain(|_, r| now.saturating_duration_since(r.last) <= MAX_BACKOFF);
            if records.len() >= MAX_RECORDS {
                let mut lasts: Vec<Instant> = records.values().map(|r| r.last).collect();
                lasts.sort();
                let median = lasts[lasts.len() / 2];
                records.retain(|_, r| r.last > median);
            }
        }
        for k in keys(user, addr) {
            let r = records.entry(k).or_insert(Record {
                failures: 0,
                last: now,
            });
            r.failures = r.failures.saturating_add(1);
            r.last = now;
        }
    }

    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>) {
        let mut records = self.records();
        for k in keys(user, addr) {
            records.remove(&k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: five failures are free, then each failure doubles the wait, for the user
    // and for the address alike, up to the cap; a success clears both.
    #[test]
    fn backoff_by_user_and_address() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        let addr: Option<IpAddr> = Some("127.0.0.9".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.wait("u", addr, t0), Duration::ZERO);
            t.failed("u", addr, t0);
        }
        assert_eq!(t.wait("u", None, t0), Duration::ZERO, "5 failures are free");
        t.failed("u", addr, t0);
        assert_eq!(t.wait("u", None, t0), Duration::from_millis(100));
        assert_eq!(
            t.wait("other", addr, t0),
            Duration::from_millis(100),
            "same address"
        );
        assert_eq!(t.wait("other", None, t0), Duration::ZERO);
        t.failed("u", addr, t0);
        assert_eq!(t.wait("u", addr, t0), Duration::from_millis(200));
        assert_eq!(
            t.wait("u", addr, t0 + Duration::from_millis(150)),
            Duration::from_millis(50)
        );
        for _ in 0..40 {
            t.failed("u", addr, t0);
        }
        assert_eq!(t.wait("u", addr, t0), MAX_BACKOFF);
        t.succeeded("u", addr);
        assert_eq!(t.wait("u", addr, t0), Duration::ZERO);
    }

    // Goal: the records stay bounded however many names and addresses fail.
    #[test]
    fn records_stay_bounded() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_RECORDS + 10) {
            t.failed(
                &format!("user{i}"),
                None,
                t0 + Duration::from_nanos(i as u64),
            );
        }
        assert!(t.len() <= MAX_RECORDS, "{}", t.len());
    }
}
