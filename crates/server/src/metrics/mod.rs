//! A small Prometheus registry of our own: atomic counters, gauges and histograms, and
//! their text exposition (format 0.0.4) for `/metrics`.
//!
//! Names, types and histogram buckets are etcd's, because operators' dashboards and
//! alerts are written against them. A full client library would bring labels, registries
//! and a dependency tree we do not need for a fixed set of families.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{CLUSTER_VERSION, SERVER_VERSION};

pub mod grpc;
pub mod peer;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// etcd's buckets for disk latencies (`prometheus.ExponentialBuckets(0.001, 2, 14)`):
/// 1 ms to 8.192 s.
pub const DISK_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// etcd's buckets for defragmentation (`prometheus.ExponentialBuckets(.1, 2, 13)`): 100 ms
/// to 409.6 s.
pub const DEFRAG_BUCKETS_SECONDS: [f64; 13] = [
    0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6,
];

/// A latency histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes_seen: Counter,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub wal_fsync_duration: Histogram,
    pub backend_commit_duration: Histogram,
    pub backend_defrag_duration: Histogram,
    pub mvcc_put: Counter,
    pub mvcc_delete: Counter,
    pub mvcc_range: Counter,
    pub mvcc_txn: Counter,
    pub health_success: Counter,
    pub health_failures: Counter,
    /// The gRPC server families (`grpc_server_*`).
    pub grpc: std::sync::Arc<grpc::GrpcMetrics>,
    /// The peer network families (`etcd_network_peer_*`).
    pub peer: peer::PeerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

impl Metrics {
    /// Every family at zero; `extensive` (`--metrics extensive`) adds the gRPC latency
    /// histograms.
    pub fn new(extensive: bool) -> Self {
        Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            wal_fsync_duration: Histogram::new(&DISK_BUCKETS_SECONDS),
            backend_commit_duration: Histogram::new(&DISK_BUCKETS_SECONDS),
            backend_defrag_duration: Histogram::new(&DEFRAG_BUCKETS_SECONDS),
            mvcc_put: Counter::default(),
            mvcc_delete: Counter::default(),
            mvcc_range: Counter::default(),
            mvcc_txn: Counter::default(),
            health_success: Counter::default(),
            health_failures: Counter::default(),
            grpc: std::sync::Arc::new(grpc::GrpcMetrics::new(extensive)),
            peer: peer::PeerMetrics::default(),
        }
    }
}

/// Values read at scrape time rather than kept in the registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrapeValues {
    /// This member's id.
    pub server_id: u64,
    pub is_learner: bool,
    pub db_total_size_bytes: i64,
    pub db_total_size_in_use_bytes: i64,
    pub quota_backend_bytes: i64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub watch_streams: u64,
    pub watchers: u64,
    pub slow_watchers: u64,
    pub watch_events: u64,
    pub watch_outbox_bytes: u64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    family(out, name, "histogram", help);
    histogram_samples(out, name, "", h);
}

/// A histogram's samples; `labels` (`a="x",b="y"`) go before `le`.
fn histogram_samples(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (open, sep, close) = if labels.is_empty() {
        ("", "", "")
    } else {
        ("{", ",", "}")
    };
    let mut cumulative = 0u64;
    for (bound, bucket) in h.bounds.iter().zip(&h.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{open}{labels}{close} {sum}");
    let _ = writeln!(out, "{name}_count{open}{labels}{close} {count}");
}

impl Metrics {
    /// The Prometheus text exposition of every family.
    pub fn render(&self, scrape: ScrapeValues) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        sample(
            o,
            "etcd_server_has_leader",
            "gauge",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            self.has_leader.get(),
        );
        sample(
            o,
            "etcd_server_is_leader",
            "gauge",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            self.is_leader.get(),
        );
        sample(
            o,
            "etcd_server_is_learner",
            "gauge",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            i32::from(scrape.is_learner),
        );
        family(
            o,
            "etcd_server_id",
            "gauge",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        );
        let _ = writeln!(
            o,
            "etcd_server_id{{server_id=\"{:x}\"}} 1",
            scrape.server_id
        );
        family(
            o,
            "etcd_cluster_version",
            "gauge",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
        );
        let _ = writeln!(
            o,
            "etcd_cluster_version{{cluster_version=\"{}\"}} 1",
            cluster_version_label()
        );
        sample(
            o,
            "etcd_server_leader_changes_seen_total",
            "counter",
            "The number of leader changes seen.",
            self.leader_changes_seen.get(),
        );
        sample(
            o,
            "etcd_server_proposals_committed_total",
            "gauge",
            "The total number of consensus proposals committed.",
            self.proposals_committed.get(),
        );
        sample(
            o,
            "etcd_server_proposals_applied_total",
            "gauge",
            "The total number of consensus proposals applied.",
            self.proposals_applied.get(),
        );
        sample(
            o,
            "etcd_server_proposals_pending",
            "gauge",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get(),
        );
        sample(
            o,
            "etcd_server_proposals_failed_total",
            "counter",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        sample(
            o,
            "etcd_server_health_success",
            "counter",
            "The total number of successful health checks",
            self.health_success.get(),
        );
        sample(
            o,
            "etcd_server_health_failures",
            "counter",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        sample(
            o,
            "etcd_server_quota_backend_bytes",
            "gauge",
            "Current backend storage quota size in bytes.",
            scrape.quota_backend_bytes,
        );
        family(
            o,
            "etcd_server_version",
            "gauge",
            "Which version is running. 1 for 'server_version' label with current version.",
        );
        let _ = writeln!(
            o,
            "etcd_server_version{{server_version=\"{SERVER_VERSION}\"}} 1"
        );
        sample(
            o,
            "etcd_mvcc_db_total_size_in_bytes",
            "gauge",
            "Total size of the underlying database physically allocated in bytes.",
            scrape.db_total_size_bytes,
        );
        sample(
            o,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "gauge",
            "Total size of the underlying database logically in use in bytes.",
            scrape.db_total_size_in_use_bytes,
        );
        sample(
            o,
            "etcd_mvcc_put_total",
            "counter",
            "Total number of puts seen by this member.",
            self.mvcc_put.get(),
        );
        sample(
            o,
            "etcd_mvcc_delete_total",
            "counter",
            "Total number of deletes seen by this member.",
            self.mvcc_delete.get(),
        );
        sample(
            o,
            "etcd_mvcc_range_total",
            "counter",
            "Total number of ranges seen by this member.",
            self.mvcc_range.get(),
        );
        sample(
            o,
            "etcd_mvcc_txn_total",
            "counter",
            "Total number of txns seen by this member.",
            self.mvcc_txn.get(),
        );
        sample(
            o,
            "etcd_debugging_mvcc_current_revision",
            "gauge",
            "The current revision of store.",
            scrape.current_revision,
        );
        sample(
            o,
            "etcd_debugging_mvcc_compact_revision",
            "gauge",
            "The revision of the last compaction in store.",
            scrape.compact_revision,
        );
        sample(
            o,
            "etcd_debugging_mvcc_watch_stream_total",
            "gauge",
            "Total number of watch streams.",
            scrape.watch_streams,
        );
        sample(
            o,
            "etcd_debugging_mvcc_watcher_total",
            "gauge",
            "Total number of watchers.",
            scrape.watchers,
        );
        sample(
            o,
            "etcd_debugging_mvcc_slow_watcher_total",
            "gauge",
            "Total number of unsynced slow watchers.",
            scrape.slow_watchers,
        );
        sample(
            o,
            "etcd_debugging_mvcc_events_total",
            "counter",
            "Total number of events sent by this member.",
            scrape.watch_events,
        );
        sample(
            o,
            "retcd_watch_outbox_bytes",
            "gauge",
            "Estimated bytes of watch responses queued for clients, all streams.",
            scrape.watch_outbox_bytes,
        );
        histogram(
            o,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync_duration,
        );
        histogram(
            o,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit_duration,
        );
        histogram(
            o,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
            &self.backend_defrag_duration,
        );
        self.grpc.render(o);
        self.peer.render(o);
        let process = process_stats();
        sample(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            process.resident_memory_bytes,
        );
        sample(
            o,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            process.open_fds,
        );
        out
    }
}

/// The cluster version as etcd labels it: major.minor (`3.5`).
fn cluster_version_label() -> &'static str {
    CLUSTER_VERSION
        .rsplit_once('.')
        .map_or(CLUSTER_VERSION, |(major_minor, _)| major_minor)
}

#[derive(Clone, Copy, Debug, Default)]
struct ProcessStats {
    resident_memory_bytes: u64,
    open_fds: u64,
}

/// Resident memory from `/proc/self/statm` (pages) and the page size from the auxiliary
/// vector; open descriptors from `/proc/self/fd`. Zero where `/proc` is unavailable.
fn process_stats() -> ProcessStats {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    ProcessStats {
        resident_memory_bytes: pages * page_size(),
        open_fds,
    }
}

/// `AT_PAGESZ` from `/proc/self/auxv` (pairs of native-endian words), else 4096.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    auxv.chunks_exact(16)
        .map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().expect("8 bytes"));
            let value = u64::from_ne_bytes(pair[8..].try_into().expect("8 bytes"));
            (key, value)
        })
        .find(|&(key, _)| key == AT_PAGESZ)
        .map_or(4096, |(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: histogram buckets are cumulative in the exposition and sum/count agree.
    #[test]
    fn histogram_exposition() {
        let m = Metrics::default();
        m.wal_fsync_duration.observe(Duration::from_micros(500));
        m.wal_fsync_duration.observe(Duration::from_millis(3));
        m.wal_fsync_duration.observe(Duration::from_secs(20));
        let text = m.render(ScrapeValues::default());
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 2\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 2\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_count 3\n"));
        assert!(text.contains("etcd_server_version{server_version=\"3.5.17\"} 1\n"));
        let stats = process_stats();
        assert!(stats.resident_memory_bytes > 0 && stats.open_fds > 0);
    }
}
