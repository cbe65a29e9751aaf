//! The HTTP/JSON gateway: every v3 RPC as JSON over HTTP/1.1 on the client port, at
//! the paths etcd 3.4's grpc-gateway serves (`/v3/kv/range`, `/v3/watch`, ...; the
//! `/v3beta/` prefix too, and etcd 3.3's `/v3alpha/`), streams included.
//!
//! Like etcd's gateway, which dials its own gRPC server, each request becomes a gRPC call:
//! the JSON is read into the method's input message through the descriptors
//! ([`json`]), framed, and handed to the member's gRPC router in-process with the
//! request's `Authorization` token, its `Grpc-Metadata-*` headers and the connection's
//! [`ClientIdentity`]. The services, their auth checks and their size limits are the ones
//! gRPC clients meet; the answer's messages are written back as JSON. Nothing here is
//! written per message or per method beyond the path table.
//!
//! HTTP behaviour is upstream etcd 3.4.23's (grpc-gateway v1.9.5): POST only (405
//! otherwise), 404 for unknown paths, errors as `{"error","code","message"}` with the
//! status of [`http_status`], streams as one `{"result":...}` line per message.

pub mod json;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::Value as Json;
use tonic::{Code, Status};
use tower::ServiceExt as _;

use crate::listen::ClientIdentity;

/// HTTP path (after `/v3/`) to gRPC service and method, as etcd 3.4's gateway registers
/// them. HashKV shares Hash's path there and is never reached; it is left out.
const ROUTES: &[(&str, &str, &str)] = &[
    ("kv/range", "etcdserverpb.KV", "Range"),
    ("kv/put", "etcdserverpb.KV", "Put"),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("kv/txn", "etcdserverpb.KV", "Txn"),
    ("kv/compaction", "etcdserverpb.KV", "Compact"),
    ("watch", "etcdserverpb.Watch", "Watch"),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    (
        "kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    (
        "cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    ("cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    (
        "cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("maintenance/status", "etcdserverpb.Maintenance", "Status"),
    (
        "maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    (
        "maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("lock/lock", "v3lockpb.Lock", "Lock"),
    ("lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("election/campaign", "v3electionpb.Election", "Campaign"),
    ("election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("election/leader", "v3electionpb.Election", "Leader"),
    ("election/observe", "v3electionpb.Election", "Observe"),
    ("election/resign", "v3electionpb.Election", "Resign"),
];

/// One gateway path's method.
struct Route {
    /// `/etcdserverpb.KV/Range`.
    grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    client_streaming: bool,
    server_streaming: bool,
}

/// The gateway of one listener: the path table and the gRPC router it calls.
pub struct Gateway {
    routes: HashMap<&'static str, Route>,
    grpc: axum::Router,
    /// The largest request body read: JSON of a message at the gRPC limit, with room for
    /// base64 and whitespace. Above it the request is refused as gRPC refuses a message
    /// over its limit.
    max_body_bytes: usize,
    max_message_bytes: usize,
}

/// gRPC codes to HTTP statuses, as grpc-gateway v1.9.5 (`HTTPStatusFromCode`) maps them.
/// (Debian's build of etcd 3.4.23 links an older grpc-gateway that answers 412 for
/// FailedPrecondition; upstream's answers 400.)
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

const APPLICATION_JSON: &str = "application/json";

impl Gateway {
    /// The gateway over `grpc` (the member's gRPC router, without HTTP routes).
    /// `max_message_bytes` is the gRPC decoding limit.
    pub fn new(grpc: axum::Router, max_message_bytes: usize) -> anyhow::Result<Gateway> {
        let pool = DescriptorPool::decode(retcd_api::FILE_DESCRIPTOR_SET)?;
        let mut routes = HashMap::new();
        for &(path, service, method) in ROUTES {
            let service_desc = pool
                .get_service_by_name(service)
                .ok_or_else(|| anyhow::anyhow!("no service {service} in the schema"))?;
            let method_desc = service_desc
                .methods()
                .find(|m| m.name() == method)
                .ok_or_else(|| anyhow::anyhow!("no method {service}.{method}"))?;
            routes.insert(
                path,
                Route {
                    grpc_path: format!("/{service}/{method}"),
                    input: method_desc.input(),
                    output: method_desc.output(),
                    client_streaming: method_desc.is_client_streaming(),
                    server_streaming: method_desc.is_server_streaming(),
                },
            );
        }
        Ok(Gateway {
            routes,
            grpc,
            max_body_bytes: max_message_bytes.saturating_mul(4),
            max_message_bytes,
        })
    }

    /// Adds the gateway's paths to `router`.
    pub fn add_routes(self: Arc<Self>, router: axum::Router) -> axum::Router {
        let handler = move |req: Request<Body>| {
            let gateway = self.clone();
            async move { gateway.serve(req).await }
        };
        router
            .route("/v3/{*rest}", axum::routing::any(handler.clone()))
            .route("/v3beta/{*rest}", axum::routing::any(handler.clone()))
            // etcd 3.3's prefix, which 3.4 dropped: clients written for 3.3 (older
            // Patroni releases among them) still work.
            .route("/v3alpha/{*rest}", axum::routing::any(handler))
    }

    async fn serve(&self, req: Request<Body>) -> Response {
        let path = req.uri().path();
        let rest = path
            .strip_prefix("/v3/")
            .or_else(|| path.strip_prefix("/v3beta/"))
            .or_else(|| path.strip_prefix("/v3alpha/"))
            .unwrap_or_default();
        let Some(route) = self.routes.get(rest) else {
            return text(StatusCode::NOT_FOUND, "Not Found\n");
        };
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        }
        let (parts, body) = req.into_parts();
        let call = CallParts::of(&parts.headers, parts.extensions.get::<ClientIdentity>());
        if route.client_streaming {
            self.bidi(route, call, body).await
        } else {
            let message = match self.read_unary(route, body).await {
                Ok(m) => m,
                Err(status) => return error_response(&status),
            };
            self.unary_or_server_stream(route, call, message).await
        }
    }

    /// A unary or server-streaming call's one request: the body's first JSON value (an
    /// empty body is the empty message; what follows the value is ignored, as in Go).
    async fn read_unary(&self, route: &Route, body: Body) -> Result<Bytes, Status> {
        let bytes = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "grpc: received message larger than max (more than {} bytes of JSON vs. {})",
                    self.max_body_bytes, self.max_message_bytes
                ))
            })?;
        let value = first_whole_value(&bytes)
            .map_err(Status::invalid_argument)?
            .unwrap_or(Json::Null);
        let message = json::decode(&route.input, &value)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(message.encode_to_vec().into())
    }

    async fn unary_or_server_stream(
        &self,
        route: &Route,
        call: CallParts,
        message: Bytes,
    ) -> Response {
        let body = Body::from(frame(&message));
        let response = self.call(route, &call, body).await;
        let mut messages = Messages::new(response);
        let first = match messages.next().await {
            Ok(first) => first,
            Err(status) if route.server_streaming => return stream_error_response(&status),
            Err(status) => return error_response(&status),
        };
        if route.server_streaming {
            return stream_response(route.output.clone(), first, messages);
        }
        // A unary call: its one message, then the status in the trailers.
        if let Err(status) = messages.finish().await {
            return error_response(&status);
        }
        let Some(first) = first else {
            return error_response(&Status::internal("the call answered no message"));
        };
        match DynamicMessage::decode(route.output.clone(), first) {
            Ok(m) => success(json::encode(&m)),
            Err(e) => error_response(&Status::internal(format!("bad response: {e}"))),
        }
    }

    /// A bidirectional stream (watch, keep-alive): each JSON value in the request body is
    /// one request message, sent as it arrives; the first must parse before the call starts.
    async fn bidi(&self, route: &Route, call: CallParts, body: Body) -> Response {
        let mut reader = JsonValues::new(body, self.max_body_bytes);
        // etcd's gateway returns the first request's decoding error raw, which makes it
        // Unknown and a 500; bad input is the client's error, so here it is
        // InvalidArgument (400), as on the unary paths.
        let first = match reader.next().await {
            Ok(first) => first,
            Err(e) => return error_response(&Status::invalid_argument(e)),
        };
        let first = match first.map(|v| json::decode(&route.input, &v)).transpose() {
            Ok(first) => first,
            Err(e) => return error_response(&Status::invalid_argument(e.to_string())),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(4);
        if let Some(first) = first {
            let _ = tx.send(Ok(frame(&first.encode_to_vec()))).await;
            let input = route.input.clone();
            tokio::spawn(async move {
                // Later requests: sent while they parse; a bad one ends the sending side
                // (the stream stays open for what the server still has to say).
                while let Ok(Some(value)) = reader.next().await {
                    let Ok(message) = json::decode(&input, &value) else {
                        break;
                    };
                    if tx.send(Ok(frame(&message.encode_to_vec()))).await.is_err() {
                        break;
                    }
                }
            });
        } else {
            drop(tx);
        }
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let response = self.call(route, &call, body).await;
        let mut messages = Messages::new(response);
        match messages.next().await {
            Ok(first) => stream_response(route.output.clone(), first, messages),
            Err(status) => stream_error_response(&status),
        }
    }

    /// Calls the gRPC method in-process.
    async fn call(&self, route: &Route, call: &CallParts, body: Body) -> Response {
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match route.grpc_path.parse() {
            Ok(uri) => uri,
            Err(_) => return error_response(&Status::internal("bad method path")),
        };
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        for (name, value) in &call.metadata {
            headers.append(name.clone(), value.clone());
        }
        if let Some(identity) = &call.identity {
            request.extensions_mut().insert(identity.clone());
        }
        match self.grpc.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// What a gateway request passes on to its gRPC call.
struct CallParts {
    /// `authorization` (the token) and each `Grpc-Metadata-<name>` header as `<name>`.
    metadata: Vec<(HeaderName, HeaderValue)>,
    identity: Option<ClientIdentity>,
}

impl CallParts {
    fn of(headers: &HeaderMap, identity: Option<&ClientIdentity>) -> CallParts {
        let mut metadata = Vec::new();
        for (name, value) in headers {
            if name == header::AUTHORIZATION {
                metadata.push((name.clone(), value.clone()));
            } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-")
                && let Ok(key) = HeaderName::from_bytes(key.as_bytes())
                // Reserved gRPC and HTTP/2 names stay the gateway's own, and retcd's
                // internal metadata is never a client's to give.
                && !key.as_str().starts_with("grpc-")
                && !key.as_str().starts_with("retcd-")
                && !matches!(key.as_str(), "content-type" | "te" | "host" | "connection")
            {
                metadata.push((key, value.clone()));
            }
        }
        CallParts {
            metadata,
            identity: identity.cloned(),
        }
    }
}

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The messages of a gRPC response, read frame by frame, and its final status.
struct Messages {
    /// Set when the response's headers already said how the call ended.
    ended: Option<Status>,
    body: Body,
    buf: BytesMut,
    done: bool,
    trailers: Option<HeaderMap>,
}

impl Messages {
    fn new(response: Response) -> Messages {
        let (parts, body) = response.into_parts();
        // A trailers-only response: the status is in the headers and there is no message.
        let ended = Status::from_header_map(&parts.headers);
        Messages {
            ended,
            body,
            buf: BytesMut::new(),
            done: false,
            trailers: None,
        }
    }

    /// The next message, `None` at the end of a successful stream, or the call's error.
    async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some(status) = &self.ended
            && status.code() != Code::Ok
        {
            return Err(status.clone());
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf[0] != 0 {
                    return Err(Status::internal("compressed gRPC message"));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            if self.done {
                return match self.trailers.as_ref().and_then(Status::from_header_map) {
                    Some(status) if status.code() != Code::Ok => Err(status),
                    Some(_) => Ok(None),
                    None if self.ended.is_some() => Ok(None),
                    None => Err(Status::internal("the call ended without a status")),
                };
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None => self.done = true,
                Some(Err(e)) => return Err(Status::internal(format!("gRPC body: {e}"))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    /// Reads to the end: the call's status.
    async fn finish(&mut self) -> Result<(), Status> {
        while self.next().await?.is_some() {}
        Ok(())
    }
}

/// `{"result":...}` per message, each followed by a newline; an error ends the stream
/// as an `{"error":{...}}` object.
fn stream_response(
    output: MessageDescriptor,
    first: Option<Bytes>,
    messages: Messages,
) -> Response {
    let chunk = move |message: Bytes| -> Bytes {
        match DynamicMessage::decode(output.clone(), message) {
            Ok(m) => Bytes::from(format!("{{\"result\":{}}}\n", json::encode(&m))),
            Err(e) => stream_error(&Status::internal(format!("bad response: {e}"))),
        }
    };
    let state = (first, messages, chunk, false);
    let stream =
        futures_util::stream::unfold(state, |(pending, mut messages, chunk, ended)| async move {
            if ended {
                return None;
            }
            if let Some(message) = pending {
                let out = chunk(message);
                return Some((
                    Ok::<_, std::convert::Infallible>(out),
                    (None, messages, chunk, false),
                ));
            }
            match messages.next().await {
                Ok(Some(message)) => {
                    let out = chunk(message);
                    Some((Ok(out), (None, messages, chunk, false)))
                }
                Ok(None) => None,
                Err(status) => Some((Ok(stream_error(&status)), (None, messages, chunk, true))),
            }
        });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(APPLICATION_JSON),
    );
    headers.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A stream that failed before its first message: the error's HTTP status, and the
/// stream's error object as the body.
fn stream_error_response(status: &Status) -> Response {
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, APPLICATION_JSON)],
        stream_error(status),
    )
        .into_response()
}

/// grpc-gateway's stream error object.
fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let mut out = String::from("{\"error\":{\"grpc_code\":");
    out.push_str(&(status.code() as i32).to_string());
    out.push_str(",\"http_code\":");
    out.push_str(&http.as_u16().to_string());
    out.push_str(",\"message\":");
    json::encode_string(status.message(), &mut out);
    out.push_str(",\"http_status\":");
    json::encode_string(http.canonical_reason().unwrap_or(""), &mut out);
    out.push_str("}}");
    Bytes::from(out)
}

fn success(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, APPLICATION_JSON),
            (
                HeaderName::from_static("grpc-metadata-content-type"),
                "application/grpc",
            ),
        ],
        body,
    )
        .into_response()
}

/// A call's error as grpc-gateway writes it.
fn error_response(status: &Status) -> Response {
    let mut body = String::from("{\"error\":");
    json::encode_string(status.message(), &mut body);
    body.push_str(",\"code\":");
    body.push_str(&(status.code() as i32).to_string());
    body.push_str(",\"message\":");
    json::encode_string(status.message(), &mut body);
    body.push('}');
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, APPLICATION_JSON)],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_whitespace())
}

/// The first JSON value of `bytes` and where it ends; `None` when the bytes hold no
/// whole value yet (blank, or cut short).
fn first_value(bytes: &[u8]) -> Result<Option<(Json, usize)>, String> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Json>();
    match values.next() {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some((value, values.byte_offset()))),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(go_syntax_error(bytes, &e)),
    }
}

/// serde_json's syntax error in the words of Go's `encoding/json`, where it has them.
fn go_syntax_error(bytes: &[u8], e: &serde_json::Error) -> String {
    // The offending byte: line and column are 1-based, the column counted in bytes.
    let line_start = bytes
        .split(|b| *b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = (line_start + e.column()).saturating_sub(1);
    let c = bytes.get(at).map_or(' ', |b| char::from(*b));
    let text = e.to_string();
    let context = if text.starts_with("key must be a string") {
        "looking for beginning of object key string"
    } else if text.starts_with("expected value") || text.starts_with("expected ident") {
        "looking for beginning of value"
    } else if text.starts_with("expected `:`") {
        "after object key"
    } else if text.starts_with("expected `,` or `}`") {
        "after object key:value pair"
    } else if text.starts_with("expected `,` or `]`") {
        "after array element"
    } else {
        return text;
    };
    let quoted = match c {
        '\'' => "'\\''".to_string(),
        '"' => "'\"'".to_string(),
        c => format!("'{c}'"),
    };
    format!("invalid character {quoted} {context}")
}

/// The most JSON tokens (`{`, `[`, `,`, `:` outside strings) one request may hold. A
/// real request has a few hundred at most (a Txn of 128 operations); the cap bounds the
/// memory a parsed request takes, which a body of tiny values (`[0,0,...]`) would
/// otherwise make tens of times the body's size.
const MAX_TOKENS: usize = 100_000;

/// Finds where the first JSON value of a growing buffer ends, looking at each byte once,
/// so a value that arrives in many small pieces costs linear time. It checks nesting and
/// strings only; the value's grammar is serde_json's to check once it is whole.
#[derive(Default)]
struct ValueEnd {
    /// Bytes looked at so far.
    pos: usize,
    /// The value's first byte, once seen.
    first: Option<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    tokens: usize,
}

enum Scanned {
    /// The value ends before this offset.
    End(usize),
    /// Not whole yet.
    More,
    TooManyTokens,
}

impl ValueEnd {
    fn scan(&mut self, bytes: &[u8]) -> Scanned {
        while self.pos < bytes.len() {
            let b = bytes[self.pos];
            self.pos += 1;
            let Some(first) = self.first else {
                if !b.is_ascii_whitespace() {
                    self.first = Some(b);
                    match b {
                        b'{' | b'[' => self.depth = 1,
                        b'"' => self.in_string = true,
                        _ => {}
                    }
                }
                continue;
            };
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Scanned::End(self.pos);
                    }
                }
                continue;
            }
            if self.depth == 0 {
                // A bare number or literal ends where something else begins.
                if first != b'"' && (b.is_ascii_whitespace() || b"{}[],:\"".contains(&b)) {
                    return Scanned::End(self.pos - 1);
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    self.tokens += 1;
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Scanned::End(self.pos);
                    }
                }
                b',' | b':' => self.tokens += 1,
                _ => {}
            }
            if self.tokens > MAX_TOKENS {
                return Scanned::TooManyTokens;
            }
        }
        Scanned::More
    }
}

fn too_many_tokens() -> String {
    format!("a request of more than {MAX_TOKENS} JSON values")
}

/// The first JSON value of a whole body: `None` for a blank body. What follows the value
/// is ignored, as Go's decoder ignores it.
fn first_whole_value(bytes: &[u8]) -> Result<Option<Json>, String> {
    let mut end = ValueEnd::default();
    let stop = match end.scan(bytes) {
        Scanned::End(stop) => stop,
        Scanned::More => bytes.len(),
        Scanned::TooManyTokens => return Err(too_many_tokens()),
    };
    if is_blank(&bytes[..stop]) {
        return Ok(None);
    }
    match first_value(&bytes[..stop])? {
        Some((value, _)) => Ok(Some(value)),
        None => Err("unexpected EOF".into()),
    }
}

/// The JSON values of a streaming request body, one at a time as they arrive.
struct JsonValues {
    body: Body,
    buf: Vec<u8>,
    /// Where the value being read starts in `buf` (what is before it was returned).
    start: usize,
    end: ValueEnd,
    limit: usize,
    done: bool,
}

impl JsonValues {
    fn new(body: Body, limit: usize) -> JsonValues {
        JsonValues {
            body,
            buf: Vec::new(),
            start: 0,
            end: ValueEnd::default(),
            limit,
            done: false,
        }
    }

    /// The next value; `None` once the body ended; an error for bad JSON, a value cut
    /// short by the end of the body, one longer than the limit, or one of too many
    /// tokens.
    async fn next(&mut self) -> Result<Option<Json>, String> {
        loop {
            let pending = &self.buf[self.start..];
            match self.end.scan(pending) {
                Scanned::End(len) => {
                    let value = &pending[..len];
                    let parsed = if is_blank(value) {
                        None
                    } else {
                        first_value(value)?
                    };
                    self.start += len;
                    self.end = ValueEnd::default();
                    // Forget what was read once it is most of the buffer (amortized).
                    if self.start > 4096 && self.start * 2 > self.buf.len() {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    match parsed {
                        Some((value, _)) => return Ok(Some(value)),
                        None => return Err("unexpected EOF".into()),
                    }
                }
                Scanned::TooManyTokens => return Err(too_many_tokens()),
                Scanned::More => {}
            }
            if self.done {
                let rest = &self.buf[self.start..];
                return if is_blank(rest) {
                    Ok(None)
                } else {
                    // A bare number or literal at the very end, or a value cut short.
                    match first_value(rest)? {
                        Some((value, _)) => {
                            self.start = self.buf.len();
                            Ok(Some(value))
                        }
                        None => Err("unexpected EOF".into()),
                    }
                };
            }
            if self.buf.len() - self.start > self.limit {
                return Err(format!(
                    "a streamed request over {} bytes of JSON",
                    self.limit
                ));
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None => self.done = true,
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_in_gos_words() {
        let err = |s: &str| first_value(s.as_bytes()).unwrap_err();
        assert_eq!(
            err("{key:1}"),
            "invalid character 'k' looking for beginning of object key string"
        );
        assert_eq!(err("{\"a\" 1}"), "invalid character '1' after object key");
        assert_eq!(
            err("{\"a\":1 \"b\":2}"),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(first_value(b"{\"key\":").unwrap(), None, "cut short");
        let (v, end) = first_value(b"{\"a\":1} garbage").unwrap().unwrap();
        assert_eq!((v, end), (serde_json::json!({"a": 1}), 7));
    }

    // Goal: the end of the first value is found whatever pieces it arrives in, strings
    // and escapes included, and a body of too many tokens is refused before parsing.
    #[test]
    fn value_ends_are_found_incrementally() {
        let body = br#" {"a":"x}\"]","b":[1,{"c":2}]} {"next":1}"#;
        let mut end = ValueEnd::default();
        let mut found = None;
        for n in 1..=body.len() {
            if let Scanned::End(e) = end.scan(&body[..n]) {
                found = Some(e);
                break;
            }
        }
        let e = found.expect("an end");
        assert_eq!(&body[..e], br#" {"a":"x}\"]","b":[1,{"c":2}]}"#);
        assert_eq!(
            first_whole_value(b"{\"key\":\"eA==\"} trailing").unwrap(),
            Some(serde_json::json!({"key": "eA=="}))
        );
        assert_eq!(first_whole_value(b"  ").unwrap(), None);
        assert_eq!(
            first_whole_value(b"{\"key\":").unwrap_err(),
            "unexpected EOF"
        );
        let many = format!("[{}0]", "0,".repeat(MAX_TOKENS + 1));
        assert_eq!(
            first_whole_value(many.as_bytes()).unwrap_err(),
            too_many_tokens()
        );
        assert!(first_whole_value(b"17 ").unwrap() == Some(serde_json::json!(17)));
    }

    #[test]
    fn every_route_is_in_the_schema() {
        let grpc = axum::Router::new();
        let gateway = Gateway::new(grpc, 2 << 20).unwrap();
        assert_eq!(gateway.routes.len(), ROUTES.len());
        assert!(gateway.routes["watch"].client_streaming);
        assert!(gateway.routes["maintenance/snapshot"].server_streaming);
        assert!(!gateway.routes["kv/range"].server_streaming);
    }

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], b"\0\0\0\0\x03abc");
    }
}
