//! gRPC server metrics as etcd exports them (go-grpc-prometheus's names and labels), so
//! etcd's dashboards and alerts (its mixin's `grpc_server_handled_total` error ratios,
//! `grpc_server_handling_seconds` latency) work unchanged:
//!
//! - `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`
//! - `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`
//! - `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` (messages, counted
//!   from the length-prefixed frames of the bodies)
//! - `grpc_server_handling_seconds` (a histogram, with `--metrics extensive` only, as etcd)
//!
//! Every method of etcd's services is listed from the start with zeros, as
//! go-grpc-prometheus pre-registers them. A call's code is its `grpc-status` (in the
//! headers of a trailers-only answer, else in the trailers); a call whose response body is
//! dropped before its end (the client went away) counts as `Canceled`.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Buf as _;
use http_body::Frame;

use super::{Counter, Histogram};

/// go-grpc-prometheus's default histogram buckets (Prometheus' `DefBuckets`), seconds.
const HANDLING_BUCKETS_SECONDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// gRPC's codes in order, by the names Go's `codes.Code.String()` gives them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Every method served on the client port: (service, method, grpc_type).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
];

/// One method's counters.
#[derive(Debug)]
struct MethodStats {
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    started: Counter,
    received: Counter,
    sent: Counter,
    handled: [Counter; 17],
    seconds: Histogram,
}

/// The gRPC server metrics of one member.
#[derive(Debug)]
pub struct GrpcMetrics {
    methods: Vec<MethodStats>,
    /// `--metrics extensive`: keep and export the latency histograms.
    extensive: bool,
}

impl GrpcMetrics {
    pub fn new(extensive: bool) -> GrpcMetrics {
        GrpcMetrics {
            methods: METHODS
                .iter()
                .map(|&(service, method, kind)| MethodStats {
                    service,
                    method,
                    kind,
                    started: Counter::default(),
                    received: Counter::default(),
                    sent: Counter::default(),
                    handled: Default::default(),
                    seconds: Histogram::new(&HANDLING_BUCKETS_SECONDS),
                })
                .collect(),
            extensive,
        }
    }

    /// The method a request path (`/etcdserverpb.KV/Range`) calls, if it is one of ours.
    fn lookup(&self, path: &str) -> Option<usize> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.methods
            .iter()
            .position(|m| m.service == service && m.method == method)
    }

    /// The four families, in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let labels = |m: &MethodStats| {
            format!(
                "grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"",
                m.method, m.service, m.kind
            )
        };
        super::family(
            out,
            "grpc_server_started_total",
            "counter",
            "Total number of RPCs started on the server.",
        );
        for m in &self.methods {
            let _ = writeln!(
                out,
                "grpc_server_started_total{{{}}} {}",
                labels(m),
                m.started.get()
            );
        }
        super::family(
            out,
            "grpc_server_handled_total",
            "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        for m in &self.methods {
            for (code, count) in CODES.iter().zip(&m.handled) {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{code}\",{}}} {}",
                    labels(m),
                    count.get()
                );
            }
        }
        super::family(
            out,
            "grpc_server_msg_received_total",
            "counter",
            "Total number of RPC stream messages received on the server.",
        );
        for m in &self.methods {
            let _ = writeln!(
                out,
                "grpc_server_msg_received_total{{{}}} {}",
                labels(m),
                m.received.get()
            );
        }
        super::family(
            out,
            "grpc_server_msg_sent_total",
            "counter",
            "Total number of gRPC stream messages sent by the server.",
        );
        for m in &self.methods {
            let _ = writeln!(
                out,
                "grpc_server_msg_sent_total{{{}}} {}",
                labels(m),
                m.sent.get()
            );
        }
        if self.extensive {
            super::family(
                out,
                "grpc_server_handling_seconds",
                "histogram",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            );
            for m in &self.methods {
                super::histogram_samples(
                    out,
                    "grpc_server_handling_seconds",
                    &labels(m),
                    &m.seconds,
                );
            }
        }
    }
}

/// The axum middleware that counts every gRPC call on the client port.
pub async fn track(metrics: Arc<GrpcMetrics>, req: Request, next: Next) -> Response {
    let Some(index) = metrics.lookup(req.uri().path()) else {
        return next.run(req).await;
    };
    let stats = &metrics.methods[index];
    stats.started.inc();
    let started = Instant::now();
    let req = req.map(|body| {
        Body::new(Frames {
            inner: body,
            counter: Count {
                metrics: metrics.clone(),
                index,
                sent: false,
            },
            state: FrameState::default(),
        })
    });
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    // A trailers-only answer (an error before any message) carries its status here.
    let code_in_headers = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = Body::new(Handled {
        frames: Frames {
            inner: body,
            counter: Count {
                metrics: metrics.clone(),
                index,
                sent: true,
            },
            state: FrameState::default(),
        },
        code_in_headers,
        started,
        recorded: false,
    });
    Response::from_parts(parts, body)
}

/// Which counter a body's messages go to.
struct Count {
    metrics: Arc<GrpcMetrics>,
    index: usize,
    sent: bool,
}

impl Count {
    fn add(&self, n: u64) {
        let m = &self.metrics.methods[self.index];
        if self.sent { &m.sent } else { &m.received }.add(n);
    }
}

/// Where a body is in its length-prefixed gRPC frames: bytes of the next header seen,
/// and bytes of the current message still to come.
#[derive(Default)]
struct FrameState {
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
}

impl FrameState {
    /// Walks `data`; returns how many messages began in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                messages += 1;
                self.header_len = 0;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
            }
        }
        messages
    }
}

/// A body whose gRPC messages are counted as they pass.
struct Frames {
    inner: Body,
    counter: Count,
    state: FrameState,
}

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = self.state.feed(data.chunk());
            if n > 0 {
                self.counter.add(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records how the call ended: its code (from the trailers, or
/// the headers of a trailers-only answer, or `Canceled` if dropped before its end) and,
/// with `--metrics extensive`, how long it took.
struct Handled {
    frames: Frames,
    code_in_headers: Option<usize>,
    started: Instant,
    recorded: bool,
}

impl Handled {
    fn record(&mut self, code: usize) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let metrics = &self.frames.counter.metrics;
        let m = &metrics.methods[self.frames.counter.index];
        m.handled[code.min(CODES.len() - 1)].inc();
        if metrics.extensive {
            m.seconds.observe(self.started.elapsed());
        }
    }
}

impl http_body::Body for Handled {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.frames).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                {
                    self.record(code);
                }
            }
            Poll::Ready(None) => {
                let code = self.code_in_headers.unwrap_or(0);
                self.record(code);
            }
            Poll::Ready(Some(Err(_))) => self.record(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.frames.size_hint()
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or a trailers-only answer whose
        // empty body was never polled).
        let code = self.code_in_headers.unwrap_or(1);
        self.record(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: messages are counted from the length prefixes, however the bytes are cut.
    #[test]
    fn frames_are_counted_across_chunks() {
        let mut wire = Vec::new();
        for len in [0u32, 3, 70_000] {
            wire.push(0);
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for cut in [1, 2, 5, 6, 1000, wire.len()] {
            let mut state = FrameState::default();
            let total: u64 = wire.chunks(cut).map(|c| state.feed(c)).sum();
            assert_eq!(total, 3, "chunks of {cut}");
        }
    }

    // Goal: every method is listed with zeros from the start, handled under each code,
    // and the histogram only with --metrics extensive.
    #[test]
    fn families_are_preregistered() {
        let m = GrpcMetrics::new(false);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0\n"
        ));
        assert!(out.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"
        ));
        assert!(!out.contains("grpc_server_handling_seconds"));
        let mut out = String::new();
        GrpcMetrics::new(true).render(&mut out);
        assert!(out.contains("grpc_server_handling_seconds_bucket{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\",le=\"0.005\"} 0\n"));
        assert_eq!(m.lookup("/etcdserverpb.KV/Txn"), Some(3));
        assert_eq!(m.lookup("/etcdserverpb.KV/Nope"), None);
        assert_eq!(m.lookup("/health"), None);
    }
}
