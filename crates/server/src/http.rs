//! The plain HTTP endpoints on the client port (and, a subset, on metrics listeners): `/version`, `/health`, `/livez`,
//! `/readyz` and `/metrics`, with etcd 3.5's paths, bodies and status codes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use retcd_api::etcdserverpb::AlarmType;
use retcd_mvcc::RangeOptions;

use crate::apply::Alarms;
use crate::config::{CLUSTER_VERSION, SERVER_VERSION};
use crate::errors::RequestError;
use crate::metrics::ScrapeValues;
use crate::node::Node;

/// How long a health check's read may take before the member counts as unhealthy.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
pub struct HttpState {
    pub node: Node,
}

/// Which HTTP endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// A client listener's: `/version`, `/health`, `/livez`, `/readyz`, `/metrics`.
    Client,
    /// A `--listen-metrics-urls` listener's: `/metrics` and the health probes, as etcd's
    /// metrics listener (which kubeadm's probes hit).
    Metrics,
}

/// Adds the HTTP endpoints to `router` (the gRPC services' router, or an empty one), and
/// answers unknown paths: gRPC calls with gRPC's `Unimplemented`, anything else with 404.
pub fn add_routes(router: Router, state: Arc<HttpState>, endpoints: Endpoints) -> Router {
    let s = state.clone();
    let health = move |uri: Uri| {
        let s = s.clone();
        async move { health(&s, &uri).await }
    };
    let s = state.clone();
    let livez = move |uri: Uri| {
        let s = s.clone();
        async move { probe(&s, &uri, "livez", false).await }
    };
    let s = state.clone();
    let readyz = move |uri: Uri| {
        let s = s.clone();
        async move { probe(&s, &uri, "readyz", true).await }
    };
    let s = state;
    let metrics = move || {
        let s = s.clone();
        async move { metrics(&s).await }
    };
    let router = match endpoints {
        Endpoints::Client => router.route("/version", get(version)),
        Endpoints::Metrics => router,
    };
    router
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(fallback)
}

/// A gRPC-only router (client URLs when `--listen-client-http-urls` takes the HTTP
/// endpoints elsewhere): every non-gRPC path answers 404.
pub fn grpc_only(router: Router) -> Router {
    router.fallback(fallback)
}

/// Whether a request says it is gRPC (its content type).
fn grpc_content_type(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn fallback(req: axum::extract::Request) -> Response {
    if grpc_content_type(&req) {
        let status = tonic::Status::from(RequestError::Unimplemented(
            "unknown service or method".into(),
        ));
        let (parts, ()) = status.into_http::<()>().into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        format!("{{\"etcdserver\":\"{SERVER_VERSION}\",\"etcdcluster\":\"{CLUSTER_VERSION}\"}}"),
    )
}

fn query_flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k == name && (v.is_empty() || v == "true")
        })
    })
}

/// A read of the key "health" through the KV read path: serializable (local) or
/// linearizable (after a ReadIndex).
async fn read_check(s: &HttpState, linearizable: bool) -> Result<(), &'static str> {
    if !s.node.status.is_running() {
        return Err("RAFT LOOP STOPPED");
    }
    if linearizable {
        match tokio::time::timeout(HEALTH_READ_TIMEOUT, s.node.handle.read_index()).await {
            Ok(Ok(())) => {}
            _ => return Err("QGET ERROR"),
        }
    }
    let opts = RangeOptions {
        count_only: true,
        ..Default::default()
    };
    s.node
        .store
        .kv
        .range(b"health", b"", opts)
        .map(|_| ())
        .map_err(|_| "QGET ERROR")
}

/// The first raised alarm that `?exclude=<TYPE>` (repeatable) does not name, as etcd
/// 3.5's health reason.
fn alarm_reason(alarms: &Alarms, uri: &Uri) -> Option<&'static str> {
    let excluded: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .collect();
    alarms
        .list(AlarmType::None)
        .iter()
        .filter_map(|a| AlarmType::try_from(a.alarm).ok())
        .find(|t| !excluded.contains(&t.as_str_name()))
        .map(|t| match t {
            AlarmType::Nospace => "ALARM NOSPACE",
            AlarmType::Corrupt => "ALARM CORRUPT",
            AlarmType::None => "ALARM UNKNOWN",
        })
}

/// etcd 3.5's `/health`: `{"health":"true","reason":""}`, or "false" with a reason and
/// 503: a raised alarm (unless `?exclude=` names its type), no leader, or a failed read.
/// `?serializable=true` skips the ReadIndex.
async fn health(s: &HttpState, uri: &Uri) -> Response {
    let status = &s.node.status;
    let alarm = alarm_reason(&status.alarms(), uri);
    let result = if !status.is_running() {
        Err("RAFT LOOP STOPPED")
    } else if let Some(reason) = alarm {
        Err(reason)
    } else if status.leader() == 0 {
        Err("RAFT NO LEADER")
    } else {
        read_check(s, !query_flag(uri, "serializable")).await
    };
    match result {
        Ok(()) => {
            s.node.metrics.health_success.inc();
            json(
                StatusCode::OK,
                "{\"health\":\"true\",\"reason\":\"\"}".to_string(),
            )
        }
        Err(reason) => {
            s.node.metrics.health_failures.inc();
            tracing::warn!(reason, "serving /health false");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}"),
            )
        }
    }
}

/// etcd 3.5.11's `/livez` (checks: serializable_read) and `/readyz` (data_corruption,
/// serializable_read, linearizable_read, non_learner). Plain text, "ok" when all pass;
/// `?verbose` lists each check.
async fn probe(s: &HttpState, uri: &Uri, name: &str, ready: bool) -> Response {
    let mut checks: Vec<(&str, bool)> = Vec::new();
    if ready {
        // A CORRUPT alarm raised anywhere in the cluster (by the periodic check,
        // `corrupt::periodic`, or by hand), as etcd's check reads it.
        checks.push(("data_corruption", !s.node.status.alarms().corrupt()));
    }
    checks.push(("serializable_read", read_check(s, false).await.is_ok()));
    if ready {
        checks.push(("linearizable_read", read_check(s, true).await.is_ok()));
        checks.push(("non_learner", !s.node.status.is_learner()));
    }
    let verbose = query_flag(uri, "verbose");
    let passed = checks.iter().all(|(_, ok)| *ok);
    let mut body = String::new();
    for (check, ok) in &checks {
        if *ok && verbose {
            body.push_str(&format!("[+]{check} ok\n"));
        } else if !*ok {
            body.push_str(&format!("[-]{check} failed: reason withheld\n"));
        }
    }
    if passed {
        if verbose {
            body.push_str(&format!("{name} check passed\n"));
            (StatusCode::OK, body).into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        }
    } else {
        body.push_str(&format!("{name} check failed\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(s: &HttpState) -> Response {
    let node = &s.node;
    let measure = node.status.clone();
    let sizes = tokio::task::spawn_blocking(move || measure.db_sizes().unwrap_or((0, 0)))
        .await
        .unwrap_or((0, 0));
    let stats = node.store.watch.stats();
    let scrape = ScrapeValues {
        server_id: node.status.member_id().0,
        is_learner: node.status.is_learner(),
        db_total_size_bytes: sizes.0 as i64,
        db_total_size_in_use_bytes: sizes.1 as i64,
        quota_backend_bytes: node.status.quota_backend_bytes() as i64,
        current_revision: node.store.kv.current_revision(),
        compact_revision: node.store.kv.compact_revision(),
        watch_streams: stats.streams.load(Ordering::Relaxed),
        watchers: stats.watchers.load(Ordering::Relaxed),
        slow_watchers: stats.slow_watchers.load(Ordering::Relaxed),
        watch_events: stats.events_delivered.load(Ordering::Relaxed),
        watch_outbox_bytes: node.store.watch.pending_bytes() as u64,
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(scrape),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: `?serializable=true`, `?serializable`, and other spellings of query flags.
    #[test]
    fn query_flags() {
        let u: Uri = "/health?serializable=true".parse().unwrap();
        assert!(query_flag(&u, "serializable"));
        let u: Uri = "/readyz?verbose".parse().unwrap();
        assert!(query_flag(&u, "verbose"));
        let u: Uri = "/health?serializable=false".parse().unwrap();
        assert!(!query_flag(&u, "serializable"));
        let u: Uri = "/health".parse().unwrap();
        assert!(!query_flag(&u, "serializable"));
    }
}

/// etcd's access rules for HTTP requests on a client port (`accessController`): the
/// Host header against `--host-whitelist` on plain HTTP (a DNS-rebinding guard), CORS
/// headers from `--cors`, and `OPTIONS` answered at once. gRPC requests pass untouched.
#[derive(Clone, Debug)]
pub struct AccessRules {
    /// `--cors`: empty or `*` allows any origin.
    pub cors: Vec<String>,
    /// `--host-whitelist`: empty or `*` allows any host.
    pub host_whitelist: Vec<String>,
}

impl AccessRules {
    fn any_origin(&self) -> bool {
        self.cors.is_empty() || self.cors.iter().any(|c| c == "*")
    }

    /// The `Access-Control-Allow-Origin` to send, if any.
    fn allowed_origin(&self, origin: Option<&str>) -> Option<String> {
        if self.any_origin() {
            return Some("*".into());
        }
        let origin = origin?;
        self.cors
            .iter()
            .any(|c| c == origin)
            .then(|| origin.to_string())
    }

    fn host_allowed(&self, host: &str) -> bool {
        if self.host_whitelist.is_empty() || self.host_whitelist.iter().any(|h| h == "*") {
            return true;
        }
        // The host without its port, as Go's net.SplitHostPort (or as given).
        let bare = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                h.trim_start_matches('[').trim_end_matches(']')
            }
            _ => host,
        };
        self.host_whitelist.iter().any(|h| h == bare)
    }
}

/// etcd's answer to a Host header it does not know (CVE-2018-5702).
const MISDIRECTED: &str = "\netcd received your request, but the Host header was unrecognized.\n\nTo fix this, choose one of the following options:\n- Enable TLS, then any HTTPS request will be allowed.\n- Add the hostname you want to use to the whitelist in settings.\n  - e.g. etcd --host-whitelist \"evil.example\"\n\nThis requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n";

/// Wraps `router` in the access rules.
pub fn with_access_rules(router: Router, rules: AccessRules) -> Router {
    let rules = Arc::new(rules);
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let rules = rules.clone();
            async move { access(&rules, req, next).await }
        },
    ))
}

async fn access(
    rules: &AccessRules,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // gRPC (HTTP/2 with gRPC's content type) is not HTTP in etcd's sense and passes, as
    // etcd's listener hands HTTP/2 to its gRPC server. An HTTP/1.1 request passes through
    // the rules whatever its content type: a browser page may set that header freely.
    if req.version() == axum::http::Version::HTTP_2 && grpc_content_type(&req) {
        return next.run(req).await;
    }
    let tls = req
        .extensions()
        .get::<crate::listen::ClientIdentity>()
        .is_some_and(|i| i.tls);
    if !tls {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if !rules.host_allowed(host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                MISDIRECTED,
            )
                .into_response();
        }
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let allowed = rules.allowed_origin(origin);
    let mut response = if req.method() == axum::http::Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = allowed
        && let Ok(origin) = header::HeaderValue::from_str(&origin)
    {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
    response
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn origins_and_hosts() {
        let any = AccessRules {
            cors: vec!["*".into()],
            host_whitelist: vec!["*".into()],
        };
        assert_eq!(any.allowed_origin(None).as_deref(), Some("*"));
        assert!(any.host_allowed("evil.example:2379"));
        let listed = AccessRules {
            cors: vec!["http://example.com:8080".into()],
            host_whitelist: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        };
        assert_eq!(listed.allowed_origin(None), None);
        assert_eq!(listed.allowed_origin(Some("http://evil.com")), None);
        assert_eq!(
            listed
                .allowed_origin(Some("http://example.com:8080"))
                .as_deref(),
            Some("http://example.com:8080")
        );
        assert!(listed.host_allowed("127.0.0.1:2379"));
        assert!(listed.host_allowed("localhost"));
        assert!(listed.host_allowed("[::1]:2379"));
        assert!(!listed.host_allowed("evil.example:2379"));
    }
}
