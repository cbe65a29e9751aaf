//! The gRPC services, one file per service (as etcd's `v3rpc`), and the router that
//! serves them all.
//!
//! Every service accepts requests up to `--max-request-bytes` plus 512 KiB of
//! gRPC decoding (larger ones fail with `ResourceExhausted` before any handler runs);
//! the handlers refuse anything over `--max-request-bytes` themselves with etcd's
//! "request is too large". Responses are unbounded, as etcd's `math.MaxInt32` send limit.

mod auth;
mod cluster;
mod election;
mod health;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod peer_urls;
mod watch;

use std::sync::Arc;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use retcd_api::health::health_server::HealthServer;
use retcd_api::v3electionpb::election_server::ElectionServer;
use retcd_api::v3lockpb::lock_server::LockServer;
use tonic::service::Routes;

use crate::errors::RequestError;
use crate::node::{Node, NodeStatus};
use crate::peer::activity::PeerActivity;
use crate::peer::dial::Dialer;
use crate::quota::Quota;

/// gRPC decoding headroom above `--max-request-bytes` (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Limits the services enforce.
#[derive(Clone, Copy, Debug)]
pub struct ServiceLimits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: std::time::Duration,
    /// `--election-timeout`, for watch streams that require a leader.
    pub election_timeout: std::time::Duration,
    /// etcd's minimum lease TTL for this member's timing, seconds.
    pub min_lease_ttl: i64,
    /// `--strict-reconfig-check`: membership changes that would cost the quorum are
    /// refused.
    pub strict_reconfig_check: bool,
}

/// Refuses a request that asked for a leader (`hasleader=true` metadata, set by Go
/// clients' `WithRequireLeader`) when this member knows none.
fn require_leader<T>(req: &tonic::Request<T>, status: &NodeStatus) -> Result<(), RequestError> {
    let wants_leader = req
        .metadata()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true");
    if wants_leader && status.leader() == 0 {
        return Err(EtcdError::NoLeader.into());
    }
    Ok(())
}

/// Every service as an axum router, with oversized requests reported as gRPC-Go (and
/// so etcd) reports them.
pub fn router(
    node: &Node,
    limits: ServiceLimits,
    peers: Arc<PeerActivity>,
    dialer: Dialer,
) -> axum::Router {
    routes(node, limits, peers, dialer)
        .into_axum_router()
        .layer(axum::middleware::map_response(
            oversize_is_resource_exhausted,
        ))
}

/// `Cluster.MemberPromote` alone, for the peer listener: a member that is not the
/// leader forwards a promotion there (only the leader knows how far the learner is),
/// with the peer transport's TLS, as etcd forwards to the leader's peer URLs.
pub fn promote_route(
    node: &Node,
    strict_reconfig_check: bool,
    peers: Arc<PeerActivity>,
    dialer: Dialer,
) -> axum::Router {
    let cluster = ClusterServer::new(
        cluster::ClusterService::new(node, strict_reconfig_check, peers, dialer)
            .for_peer_listener(),
    );
    axum::Router::new().route_service(cluster::PROMOTE_PATH, cluster)
}

/// tonic refuses a request above its decoding limit with `OutOfRange`; gRPC-Go, which
/// etcd clients expect, says `ResourceExhausted` ("received message larger than max").
/// The status travels in the response headers or in the trailers; both are rewritten.
async fn oversize_is_resource_exhausted(
    resp: axum::response::Response,
) -> axum::response::Response {
    let (mut parts, body) = resp.into_parts();
    fix_oversize_status(&mut parts.headers);
    axum::response::Response::from_parts(parts, axum::body::Body::new(FixTrailers { inner: body }))
}

fn fix_oversize_status(headers: &mut axum::http::HeaderMap) {
    const TONIC_PREFIX: &str = "Error, decoded message length too large";
    if headers.get("grpc-status").is_none_or(|v| v != "11") {
        return;
    }
    // The message is percent-encoded on the wire (tonic encodes spaces, too).
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .filter(|m| m.starts_with(TONIC_PREFIX))
    else {
        return;
    };
    // "...: found N bytes, the limit is: M bytes" -> "(N vs. M)", as gRPC-Go words it.
    let numbers: Vec<&str> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit] => {
            format!("grpc: received message larger than max ({found} vs. {limit})")
        }
        _ => "grpc: received message larger than max".to_string(),
    };
    headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&message.replace(' ', "%20")) {
        headers.insert("grpc-message", v);
    }
}

/// A response body whose trailers go through [`fix_oversize_status`].
struct FixTrailers {
    inner: axum::body::Body,
}

impl http_body::Body for FixTrailers {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        fix_oversize_status(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Every service, ready to become an axum router.
fn routes(node: &Node, limits: ServiceLimits, peers: Arc<PeerActivity>, dialer: Dialer) -> Routes {
    let max_decoding = limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    macro_rules! limited {
        ($server:ident, $svc:expr) => {
            $server::new($svc)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let quota = Quota::new(node.handle.clone(), node.status.clone());
    Routes::new(limited!(
        KvServer,
        kv::KvService::new(node, quota.clone(), limits.max_txn_ops)
    ))
    .add_service(limited!(
        MaintenanceServer,
        maintenance::MaintenanceService::new(node)
    ))
    .add_service(watch::WatchRoute::new(
        watch::WatchService::new(
            node,
            limits.watch_progress_notify_interval,
            // etcd fragments above the request limit plus gRPC's overhead.
            limits.max_request_bytes + GRPC_OVERHEAD_BYTES,
            limits.election_timeout,
        ),
        max_decoding,
    ))
    .add_service(limited!(
        LeaseServer,
        lease::LeaseService::new(node, quota, limits.min_lease_ttl)
    ))
    .add_service(limited!(
        ClusterServer,
        cluster::ClusterService::new(node, limits.strict_reconfig_check, peers, dialer)
    ))
    .add_service(limited!(AuthServer, auth::AuthService::new(node)))
    .add_service(limited!(
        LockServer,
        lock::LockService::new(node, limits.min_lease_ttl)
    ))
    .add_service(limited!(
        ElectionServer,
        election::ElectionService::new(node, limits.min_lease_ttl)
    ))
    .add_service(limited!(
        HealthServer,
        health::HealthService::new(node.status.clone())
    ))
}
