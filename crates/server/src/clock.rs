//! The server's clocks, read in this one place.
//!
//! The raft loop and the services read time here and hand it to what needs it: the Raft
//! core gets ticks, the lessor and apply get a [`retcd_lease::Time`] (the monotonic clock
//! as time since this process started), proposals carry the proposer's wall clock. Apply
//! never calls in here (its module denies `clippy::disallowed_methods`, and
//! `tests/purity.rs` checks its sources).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use retcd_lease::Time;

/// The origin of [`lease_time`]: the first time anyone asked.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// A point of the monotonic clock as the lessor's [`Time`] (earlier than the origin: the
/// origin).
pub fn lease_time(at: Instant) -> Time {
    Time::from_since_origin(at.saturating_duration_since(origin()))
}

/// Now, as the lessor's [`Time`].
pub fn lease_now() -> Time {
    lease_time(Instant::now())
}

/// Seconds since the Unix epoch (JWT expiry).
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, for proposals (`InternalRaftRequest.wall_clock_ms`)
/// and for a new leader's bound on lease deadlines.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
