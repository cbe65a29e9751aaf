//! The lessor's clock: points the host hands in, never read here.

use std::ops::Add;
use std::time::Duration;

/// A point on the host's monotonic clock, as the time since an origin the host chose
/// (the server uses its process start; tests start at [`Time::ZERO`]). Only differences
/// between points mean anything, and only within one process.
///
/// Arithmetic saturates: a lease with a TTL of `i64::MAX` seconds (which only a hostile
/// entry carries) gets a deadline at the end of time rather than a panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(Duration::ZERO);
    /// The last representable point: "never", for practical purposes.
    pub const MAX: Time = Time(Duration::MAX);

    /// The point `since_origin` after the origin.
    pub const fn from_since_origin(since_origin: Duration) -> Time {
        Time(since_origin)
    }

    /// How long after the origin this point is.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this point is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the clock never panics on a hostile TTL and differences never go negative.
    #[test]
    fn arithmetic_saturates() {
        let t = Time::ZERO + Duration::from_secs(5);
        assert_eq!(t.since_origin(), Duration::from_secs(5));
        assert_eq!(t + Duration::MAX, Time::MAX);
        assert_eq!(Time::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(
            t.saturating_duration_since(Time::ZERO),
            Duration::from_secs(5)
        );
    }
}
