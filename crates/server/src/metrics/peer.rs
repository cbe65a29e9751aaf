//! Peer network metrics with etcd's names and labels (its rafthttp's), per peer by member
//! id in hex: bytes sent and received, failed sends, and the round trip time of a probe
//! sent every few seconds on each connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::{Counter, Histogram};

/// etcd's buckets for the peer round trip (`prometheus.ExponentialBuckets(0.0001, 2, 16)`):
/// 0.1 ms to 3.3 s.
const RTT_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];

#[derive(Debug)]
struct PeerStats {
    sent_bytes: Counter,
    received_bytes: Counter,
    sent_failures: Counter,
    rtt: Histogram,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            sent_failures: Counter::default(),
            rtt: Histogram::new(&RTT_BUCKETS_SECONDS),
        }
    }
}

/// The peer families of one member.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    peers: Mutex<BTreeMap<u64, PeerStats>>,
}

impl PeerMetrics {
    fn with(&self, peer: u64, f: impl FnOnce(&PeerStats)) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        f(peers.entry(peer).or_default());
    }

    /// `bytes` of Raft messages sent to `peer`.
    pub fn sent(&self, peer: u64, bytes: u64) {
        self.with(peer, |s| s.sent_bytes.add(bytes));
    }

    /// `bytes` of Raft messages received from `peer`.
    pub fn received(&self, peer: u64, bytes: u64) {
        self.with(peer, |s| s.received_bytes.add(bytes));
    }

    /// A batch for `peer` that could not be sent (no connection, or it failed).
    pub fn send_failed(&self, peer: u64) {
        self.with(peer, |s| s.sent_failures.inc());
    }

    /// A probe of `peer` came back after `rtt`.
    pub fn round_trip(&self, peer: u64, rtt: Duration) {
        self.with(peer, |s| s.rtt.observe(rtt));
    }

    pub fn render(&self, out: &mut String) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        super::family(
            out,
            "etcd_network_peer_sent_bytes_total",
            "counter",
            "The total number of bytes sent to peers.",
        );
        for (id, s) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_sent_bytes_total{{To=\"{id:x}\"}} {}",
                s.sent_bytes.get()
            );
        }
        super::family(
            out,
            "etcd_network_peer_received_bytes_total",
            "counter",
            "The total number of bytes received from peers.",
        );
        for (id, s) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_received_bytes_total{{From=\"{id:x}\"}} {}",
                s.received_bytes.get()
            );
        }
        super::family(
            out,
            "etcd_network_peer_sent_failures_total",
            "counter",
            "The total number of send failures from peers.",
        );
        for (id, s) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_sent_failures_total{{To=\"{id:x}\"}} {}",
                s.sent_failures.get()
            );
        }
        super::family(
            out,
            "etcd_network_peer_round_trip_time_seconds",
            "histogram",
            "Round-Trip-Time histogram between peers",
        );
        for (id, s) in peers.iter() {
            super::histogram_samples(
                out,
                "etcd_network_peer_round_trip_time_seconds",
                &format!("To=\"{id:x}\""),
                &s.rtt,
            );
        }
    }
}
