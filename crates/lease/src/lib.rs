//! retcd's lessor: leases, the keys attached to them, and when each one expires.
//!
//! A pure state machine, like the Raft core: no clock, no threads, no I/O. The host hands
//! it the time ([`Time`], a point on the host's monotonic clock) with every call that
//! needs one, and persists the records that [`Lessor::take_changes`] returns. That is
//! what lets the rules below be tested with simulated time and no sleeps, and what keeps
//! the server's apply step a function of the log (`clippy.toml` bans clocks here).
//!
//! # Place in the data flow
//! ```text
//! LeaseGrant / LeaseRevoke / LeaseRenew / LeaseExpire entries
//!   --> server::apply::lease  --> Lessor (records change; keys deleted by apply)
//!   --> take_changes()        --> the backend's `lease` bucket, in the apply batch
//! puts and deletes            --> attach / detach (the keys each lease holds)
//! leader, once a tick         --> take_expired(now) --> proposes LeaseExpire
//! ```
//!
//! # Replicated state and local deadlines
//! A lease's [`Record`] (id, TTL, the index of the entry that last granted or renewed
//! it, and the proposer's wall clock then) is replicated state: it changes only when a
//! committed entry is applied, identically on every member. The keys attached to a lease
//! are derived from the keys themselves (each key-value names its lease), so the host
//! rebuilds them with [`Lessor::attach`] after [`Lessor::restore`].
//!
//! The *deadline* of a lease is local: each member sets it from the `now` it is handed
//! when it applies the grant or a renewal (now + TTL). Only the leader acts on deadlines:
//! [`Lessor::take_expired`] gives it the leases to propose for revocation, each naming
//! the renewal it saw expire ([`Expiry`]); apply revokes a lease only if no renewal came
//! in between ([`Lessor::expiry_applies`]).
//!
//! # Why keep-alives are replicated (unlike etcd)
//! etcd renews leases on the leader only, and without checkpoints a new leader restarts
//! every lease from its full TTL. retcd replicates renewals, so every member's deadline
//! for a lease is at least its last acknowledged renewal + TTL. On promotion
//! ([`Lessor::on_promotion`]) the new leader keeps its deadlines, bounded by the
//! wall-clock estimate (`wall_ms` + TTL) plus a grace (one election timeout), which also
//! covers a restart: replayed renewals would otherwise count the downtime as lease time.
//! So a lease ends no earlier than TTL after its last acknowledged keep-alive and, leader
//! changes and restarts included, no later than TTL plus one election timeout plus a
//! tick, unless members' wall clocks disagree by more than an election timeout.
//!
//! # Key types
//! [`Lessor`], [`Lease`], [`LeaseId`], [`Record`] (and its backend encoding in
//! [`record`]), [`Expiry`], [`Time`].

mod lessor;
pub mod record;
mod time;

use std::time::Duration;

pub use lessor::{Expiry, Lease, LeaseError, Lessor};
pub use record::Record;
pub use time::Time;

/// A lease's id, as clients see it (`int64` on the wire; 0 means "no lease").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// "No lease", as a key-value's `lease` field says it.
    pub const NONE: LeaseId = LeaseId(0);
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Most expired leases the leader proposes to revoke per tick (etcd revokes at most 1,000
/// a second; at the default 100 ms tick this is the same rate).
pub const REVOKES_PER_TICK: usize = 100;

/// etcd's minimum lease TTL for a member's timing: 1.5 election timeouts, in whole
/// seconds rounded up (`minTTL = (3 * electionTicks / 2) * heartbeat`). The proposer
/// applies it, so apply stays independent of configuration.
pub fn min_ttl(heartbeat: Duration, election_ticks: u64) -> i64 {
    let ticks = u32::try_from(3 * election_ticks / 2).unwrap_or(u32::MAX);
    let min = heartbeat.saturating_mul(ticks);
    i64::try_from(min.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// A TTL in seconds as a duration; zero for a negative TTL (only a hostile entry carries
/// one: proposers raise every TTL to the minimum).
pub fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: etcd's minimum TTL (2 s at the defaults), rounded up to whole seconds.
    #[test]
    fn min_ttl_follows_etcd() {
        assert_eq!(min_ttl(Duration::from_millis(100), 10), 2);
        assert_eq!(min_ttl(Duration::from_millis(50), 10), 1);
        assert_eq!(min_ttl(Duration::from_millis(100), 30), 5);
        assert_eq!(min_ttl(Duration::from_millis(70), 10), 2);
    }
}
