//! Since when each peer's connection has been working, as the transport sees it (etcd's
//! peer status `activeSince`): set when a peer first answers on a connection, cleared
//! when the connection fails or the peer leaves. `--strict-reconfig-check` reads it: a
//! membership change that needs a peer counts it only once it has been active for
//! etcd's health interval, so a link that flaps does not count.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::ids::MemberId;

/// Each active peer and the instant it became active. Written by the peer tasks, read by
/// the Cluster service; never held across an `.await`.
#[derive(Debug, Default)]
pub struct PeerActivity {
    since: Mutex<BTreeMap<MemberId, Instant>>,
}

impl PeerActivity {
    /// `peer` answered at `now`; an already active peer keeps its earlier instant.
    pub fn activate(&self, peer: MemberId, now: Instant) {
        self.lock().entry(peer).or_insert(now);
    }

    /// `peer`'s connection failed, or it is no longer a peer.
    pub fn deactivate(&self, peer: MemberId) {
        self.lock().remove(&peer);
    }

    /// Since when `peer` has been active; `None` while it is not.
    pub fn active_since(&self, peer: MemberId) -> Option<Instant> {
        self.lock().get(&peer).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<MemberId, Instant>> {
        // The map stays consistent whatever a panicking holder did: each call is one
        // insert, remove or read.
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // Goal: activity starts at the first answer, survives later answers, and ends with
    // the connection; a peer never seen is not active.
    #[test]
    fn a_peer_is_active_from_its_first_answer_until_its_connection_fails() {
        let a = PeerActivity::default();
        let t0 = Instant::now();
        let (p, q) = (MemberId(1), MemberId(2));
        assert_eq!(a.active_since(p), None);
        a.activate(p, t0);
        a.activate(p, t0 + Duration::from_secs(3));
        assert_eq!(a.active_since(p), Some(t0));
        assert_eq!(a.active_since(q), None);
        a.deactivate(p);
        assert_eq!(a.active_since(p), None);
        a.activate(p, t0 + Duration::from_secs(9));
        assert_eq!(a.active_since(p), Some(t0 + Duration::from_secs(9)));
    }
}
