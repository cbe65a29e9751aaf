//! The Watch service: one bidirectional stream carries many watchers (etcd's
//! `v3rpc/watch.go`).
//!
//! Each call opens a [`WatchStream`] on the member's watchable store (followers serve
//! watches from their own applied state). A receive task turns requests into creates,
//! cancels and progress requests; it reads the next request only while the stream's
//! outbox has room, so a client that sends but does not read is held back by HTTP/2 flow
//! control instead of growing the queue. The response side drains the outbox in order
//! and turns each entry into one `WatchResponse`, or several when the watcher asked for
//! `fragment` and the response is larger than `--max-request-bytes` plus 512 KiB (etcd's
//! limit with gRPC overhead).
//!
//! Responses are encoded by hand ([`EncodedWatchResponse`]): the fields before `events`
//! per response, and each event once per change (cached on the shared event), however
//! many watchers receive it. The bytes are what prost would write for the same
//! `WatchResponse`; a test decodes them back with prost to check.
//!
//! A stream opened with `hasleader=true` (Go clients' `WithRequireLeader`, which etcdctl
//! uses for watch) is refused without a leader, and ended with "no leader" once this
//! member has had none for three election timeouts, as etcd's stream interceptor does.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::watch_request::RequestUnion;
use retcd_api::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request,
};
use retcd_backend::RedbBackend;
use retcd_mvcc::watch::{EventList, IdBuildHasher, Out};
use retcd_mvcc::{WatchOptions, WatchStream};
use tokio::sync::{Notify, oneshot};
use tonic::codegen::{Body, BoxFuture, BoxStream, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Credentials, StreamCredentials};
use crate::errors::{RequestError, grpc_go_text};

mod encode;
use crate::grpc::require_leader;
use crate::node::{Node, NodeStatus};
pub use encode::EncodedWatchResponse;
use encode::{encode_event, header_field};

/// Responses taken from the outbox at once; within them, a watcher's consecutive event
/// responses are merged (see [`coalesce`]). Large enough to hold a few batches for a
/// thousand watchers, so that lingering (below) has something to merge.
const SEND_BATCH: usize = 4096;
/// How long a busy stream waits between drains of its outbox. A stream whose previous
/// drain was longer ago sends at once, so a quiet watcher's latency is unchanged; one that
/// receives events more often than this gets them every LINGER, one response per watcher
/// holding every revision since (whole revisions, still in order). Each response costs
/// the server and the client a fixed amount beside its events: with 1,000 watchers and
/// writes committing every millisecond or so, merging cut responses 3.5x and raised
/// delivered events per second by about a third, for ~1 ms more median latency
/// (BENCHMARKS.md). etcd batches only a watcher that has fallen behind, after its
/// 100 ms sync interval.
const LINGER: Duration = Duration::from_millis(2);
/// Merged responses stop growing at this many events, or about this many bytes (below
/// tonic clients' default 4 MiB message limit).
const MERGE_MAX_EVENTS: usize = 512;
const MERGE_MAX_BYTES: usize = 1 << 20;

/// etcd's `minWatchProgressInterval`.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// etcd's default progress notify interval.
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// How often a stream looks whether the auth store changed under its watchers.
const AUTH_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct WatchService {
    status: Arc<NodeStatus>,
    watch: Arc<retcd_mvcc::WatchableStore<RedbBackend>>,
    progress_interval: Duration,
    /// Responses above this are fragmented for watchers that asked
    /// (`--max-request-bytes` plus gRPC's overhead, as etcd).
    fragment_bytes: usize,
    /// A `hasleader` stream ends after this long without a leader.
    no_leader_grace: Duration,
    auth: Arc<Auth>,
}

impl WatchService {
    pub fn new(
        node: &Node,
        progress_interval: Duration,
        fragment_bytes: usize,
        election_timeout: Duration,
    ) -> Self {
        let progress_interval = if progress_interval.is_zero() {
            DEFAULT_PROGRESS_INTERVAL
        } else {
            progress_interval.max(MIN_PROGRESS_INTERVAL)
        };
        WatchService {
            status: node.status.clone(),
            watch: node.store.watch.clone(),
            progress_interval,
            fragment_bytes,
            no_leader_grace: 3 * election_timeout,
            auth: node.auth.clone(),
        }
    }
}

/// What the receive task and the response stream share.
struct StreamShared {
    stream: WatchStream<RedbBackend>,
    /// Signalled when a response is queued or the stream ends.
    data: Arc<Notify>,
    /// Why the stream ended, if the server ended it.
    ended: Mutex<Option<Status>>,
    ended_flag: std::sync::atomic::AtomicBool,
    /// The stream's credentials, for its create requests.
    permits: StreamCredentials,
}

impl StreamShared {
    fn end(&self, status: Option<Status>) {
        *self.ended.lock().expect("watch stream end lock") = status;
        self.ended_flag
            .store(true, std::sync::atomic::Ordering::Release);
        self.data.notify_one();
    }

    fn is_ended(&self) -> bool {
        self.ended_flag.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<EncodedWatchResponse>>, Status> {
        require_leader(&req, &self.status).map_err(Status::from)?;
        let wants_leader = req
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        let creds = Credentials::of(&req);
        let inbound = req.into_inner();
        let status = self.status.clone();
        let data = Arc::new(Notify::new());
        let room = Arc::new(Notify::new());
        let stream = self.watch.open_stream(
            Box::new({
                let data = data.clone();
                move || data.notify_one()
            }),
            Box::new({
                let room = room.clone();
                move || room.notify_one()
            }),
        );
        let ss = Arc::new(StreamShared {
            stream,
            data,
            ended: Mutex::new(None),
            ended_flag: std::sync::atomic::AtomicBool::new(false),
            permits: StreamCredentials::new(self.auth.clone(), creds),
        });
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        let leader_grace = wants_leader.then_some(self.no_leader_grace);
        tokio::spawn(receive(
            ss.clone(),
            inbound,
            room,
            closed_rx,
            self.progress_interval,
            leader_grace,
            status.clone(),
        ));
        let sender = Sender {
            ss,
            status,
            pending: VecDeque::new(),
            header_cache: None,
            last_drain: None,
            fragment_bytes: self.fragment_bytes,
            _closed: closed_tx,
        };
        let out = futures_util::stream::unfold(sender, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// gRPC path of the one Watch method.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

/// The Watch service as a route: what tonic generates for a service, with the response
/// type swapped for [`EncodedWatchResponse`].
#[derive(Clone)]
pub struct WatchRoute {
    svc: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchRoute {
    pub fn new(svc: WatchService, max_decoding_message_size: usize) -> Self {
        WatchRoute {
            svc: Arc::new(svc),
            max_decoding_message_size,
        }
    }
}

impl NamedService for WatchRoute {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> tower::Service<http::Request<B>> for WatchRoute
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return Box::pin(async {
                Ok(
                    Status::from(RequestError::Unimplemented("unknown Watch method".into()))
                        .into_http(),
                )
            });
        }
        let method = WatchMethod(self.svc.clone());
        let max_decoding = self.max_decoding_message_size;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<EncodedWatchResponse, WatchRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(max_decoding), Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

struct WatchMethod(Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = EncodedWatchResponse;
    type ResponseStream = BoxStream<EncodedWatchResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.watch(request).await })
    }
}

/// Reads requests until the client goes away or the response stream is dropped; ticks
/// progress notifications and watches for a lost leader.
async fn receive(
    ss: Arc<StreamShared>,
    mut inbound: Streaming<WatchRequest>,
    room: Arc<Notify>,
    mut closed: oneshot::Receiver<()>,
    progress_interval: Duration,
    leader_grace: Option<Duration>,
    status: Arc<NodeStatus>,
) {
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + progress_interval,
        progress_interval,
    );
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let leader_check_every = leader_grace.map_or(Duration::from_secs(3600), |g| {
        (g / 6).max(MIN_PROGRESS_INTERVAL)
    });
    let mut leader_check = tokio::time::interval(leader_check_every);
    // Auth changes are looked at once a second: a stream that may no longer read what
    // it watches ends within about that.
    let mut auth_check = tokio::time::interval(AUTH_RECHECK_INTERVAL);
    let mut leaderless_since: Option<Instant> = None;
    let mut half_closed = false;
    // Backpressure: after a request, the next one waits until the client has read
    // enough of the outbox (the other branches go on meanwhile).
    let mut waiting_for_room = false;
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = progress.tick() => ss.stream.progress_tick(),
            _ = leader_check.tick(), if leader_grace.is_some() => {
                if status.leader() != 0 {
                    leaderless_since = None;
                } else {
                    let since = *leaderless_since.get_or_insert_with(Instant::now);
                    if leader_grace.is_some_and(|g| since.elapsed() >= g) {
                        ss.end(Some(RequestError::from(EtcdError::NoLeader).into()));
                        break;
                    }
                }
            }
            _ = auth_check.tick() => {
                if let Err(e) = ss.permits.recheck().await {
                    ss.end(Some(e.into()));
                    break;
                }
            }
            _ = room.notified(), if waiting_for_room => {
                waiting_for_room = !ss.stream.outbox().has_room_or_notify();
            }
            msg = inbound.message(), if !half_closed && !waiting_for_room => match msg {
                Ok(Some(req)) => {
                    // etcd's `isWatchPermitted`: read on the whole watched range.
                    if let Some(RequestUnion::CreateRequest(c)) = &req.request_union
                        && let Err(e) = ss.permits.check_read(&c.key, &c.range_end).await
                    {
                        ss.stream.refuse_create(&grpc_go_text(&Status::from(e)));
                    } else {
                        handle(&ss.stream, req);
                    }
                    waiting_for_room = !ss.stream.outbox().has_room_or_notify();
                }
                // The client closed its side; it may still read (etcd keeps serving).
                Ok(None) => half_closed = true,
                Err(status) => {
                    ss.end(Some(status));
                    break;
                }
            },
        }
    }
}

fn handle(stream: &WatchStream<RedbBackend>, req: WatchRequest) {
    match req.request_union {
        Some(RequestUnion::CreateRequest(c)) => stream.create(create_options(c)),
        Some(RequestUnion::CancelRequest(c)) => stream.cancel(c.watch_id),
        Some(RequestUnion::ProgressRequest(_)) => stream.request_progress(),
        None => {}
    }
}

fn create_options(c: WatchCreateRequest) -> WatchOptions {
    let filter = |f: watch_create_request::FilterType| c.filters.contains(&(f as i32));
    WatchOptions {
        watch_id: c.watch_id,
        filter_put: filter(watch_create_request::FilterType::Noput),
        filter_delete: filter(watch_create_request::FilterType::Nodelete),
        key: c.key.to_vec(),
        range_end: c.range_end.to_vec(),
        start_revision: c.start_revision,
        prev_kv: c.prev_kv,
        progress_notify: c.progress_notify,
        fragment: c.fragment,
    }
}

/// The response side: drains the outbox.
struct Sender {
    ss: Arc<StreamShared>,
    status: Arc<NodeStatus>,
    pending: VecDeque<EncodedWatchResponse>,
    /// The encoded header of the last event response, by (revision, term): the responses
    /// of one batch to many watchers share it.
    header_cache: Option<((i64, u64), Bytes)>,
    fragment_bytes: usize,
    /// When the sender last emptied a non-empty outbox.
    last_drain: Option<Instant>,
    /// Dropped with the response stream: tells the receive task to stop.
    _closed: oneshot::Sender<()>,
}

impl Sender {
    async fn next(&mut self) -> Option<Result<EncodedWatchResponse, Status>> {
        loop {
            if let Some(resp) = self.pending.pop_front() {
                return Some(Ok(resp));
            }
            // A busy stream (it drained the outbox less than LINGER ago) lets the next
            // batches gather first, so each watcher gets them in one merged response.
            if let Some(last) = self.last_drain
                && last.elapsed() < LINGER
            {
                tokio::time::sleep_until((last + LINGER).into()).await;
            }
            let batch = self.ss.stream.outbox().pop_batch(SEND_BATCH);
            if !batch.is_empty() {
                // A full batch may have left more behind: take it without waiting.
                self.last_drain = (batch.len() < SEND_BATCH).then(Instant::now);
                for merged in coalesce(batch) {
                    self.convert(merged);
                }
                continue;
            }
            if self.ss.is_ended() {
                return self
                    .ss
                    .ended
                    .lock()
                    .expect("watch stream end lock")
                    .take()
                    .map(Err);
            }
            if self.ss.stream.outbox().is_closed() {
                // The member stopped: end the stream as etcd does when it shuts down.
                return Some(Err(RequestError::from(EtcdError::Stopped).into()));
            }
            self.ss.data.notified().await;
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.status.cluster_id().0,
            member_id: self.status.member_id().0,
            revision,
            raft_term: self.status.term(),
        })
    }

    fn convert(&mut self, merged: Merged) {
        let Merged { out, more } = merged;
        let resp = match out {
            Out::Created {
                watch_id,
                revision,
                cancel_reason,
            } => WatchResponse {
                header: self.header(revision),
                watch_id,
                created: true,
                canceled: cancel_reason.is_some(),
                cancel_reason: cancel_reason.unwrap_or_default(),
                ..Default::default()
            },
            Out::Canceled {
                watch_id,
                revision,
                compact_revision,
                cancel_reason,
            } => WatchResponse {
                header: self.header(revision),
                watch_id,
                canceled: true,
                compact_revision,
                cancel_reason: cancel_reason.unwrap_or_default(),
                ..Default::default()
            },
            Out::Progress { watch_id, revision } => WatchResponse {
                header: self.header(revision),
                watch_id,
                ..Default::default()
            },
            Out::Events {
                watch_id,
                revision,
                events,
                prev_kv,
                fragment,
            } => {
                let head = WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    ..Default::default()
                };
                let key = (revision, head.header.as_ref().map_or(0, |h| h.raft_term));
                if self.header_cache.as_ref().is_none_or(|(k, _)| *k != key) {
                    let encoded = header_field(head.header.as_ref().expect("set above"));
                    self.header_cache = Some((key, encoded));
                }
                let header = self.header_cache.as_ref().expect("filled above").1.clone();
                let limit = fragment.then_some(self.fragment_bytes);
                if more.is_empty() || limit.is_some() {
                    // Fragmenting walks one list: join the merged ones (a watcher that
                    // asked for fragments and lagged; rare).
                    let events = if more.is_empty() {
                        events
                    } else {
                        events
                            .iter()
                            .chain(more.iter().flat_map(|l| l.iter()))
                            .cloned()
                            .collect()
                    };
                    fragments(&head, header, events, prev_kv, limit, &mut self.pending);
                } else {
                    // Merged lists go out as they are: no event is copied or re-counted.
                    self.pending.push_back(EncodedWatchResponse {
                        head: header,
                        watch_id,
                        range: 0..events.len(),
                        events: Some(events),
                        more,
                        prev_kv,
                    });
                }
                return;
            }
        };
        self.pending.push_back(EncodedWatchResponse::control(&resp));
    }
}

/// An outbox item after [`coalesce`]: `more` holds the event lists of the watcher's
/// later responses merged into this one, in order (empty for anything else).
struct Merged {
    out: Out,
    more: Vec<EventList>,
}

/// Merges each watcher's event responses within `batch` into its first one, so a client
/// that reads slower than the writes come gets fewer, larger responses (whole revisions
/// still, in order). Moving a watcher's later events earlier never passes its own
/// created or canceled response, nor any progress response, so a progress revision is
/// never below an event delivered before it. Lists are kept as they are (shared with the
/// other watchers of the batch), not copied event by event.
fn coalesce(batch: Vec<Out>) -> Vec<Merged> {
    let mut out: Vec<Merged> = Vec::with_capacity(batch.len());
    // Watch id -> index in `out` of its open event response, its events and bytes.
    // Watch ids are the client's, but the map holds at most one batch (SEND_BATCH).
    let mut open: HashMap<i64, (usize, usize, usize), IdBuildHasher> =
        HashMap::with_capacity_and_hasher(batch.len(), IdBuildHasher::default());
    let size = |events: &EventList| -> usize {
        events
            .iter()
            .map(|e| {
                e.kv.key.len()
                    + e.kv.value.len()
                    + e.prev_kv
                        .as_ref()
                        .map_or(0, |p| p.key.len() + p.value.len())
                    + 48
            })
            .sum()
    };
    let single = |out: Out| Merged {
        out,
        more: Vec::new(),
    };
    for item in batch {
        match item {
            Out::Events {
                watch_id,
                revision,
                events,
                ..
            } if open.contains_key(&watch_id) => {
                let (i, count, bytes) = open.get_mut(&watch_id).expect("checked");
                let Merged {
                    out:
                        Out::Events {
                            revision: merged_rev,
                            ..
                        },
                    more,
                } = &mut out[*i]
                else {
                    unreachable!("open entries are event responses");
                };
                *merged_rev = revision;
                *count += events.len();
                *bytes += size(&events);
                more.push(events);
                if *count >= MERGE_MAX_EVENTS || *bytes >= MERGE_MAX_BYTES {
                    open.remove(&watch_id);
                }
            }
            Out::Events {
                watch_id,
                ref events,
                ..
            } => {
                let bytes = size(events);
                if events.len() < MERGE_MAX_EVENTS && bytes < MERGE_MAX_BYTES {
                    open.insert(watch_id, (out.len(), events.len(), bytes));
                }
                out.push(single(item));
            }
            Out::Created { watch_id, .. } | Out::Canceled { watch_id, .. } => {
                open.remove(&watch_id);
                out.push(single(item));
            }
            Out::Progress { .. } => {
                open.clear();
                out.push(single(item));
            }
        }
    }
    out
}

/// Queues `events` as one response, or, when `limit` is set (the watcher asked for
/// `fragment`) and the response is at least `limit` bytes, as parts of at most `limit`
/// bytes (at least one event each) with `fragment = true` on all but the last, as etcd's
/// `sendFragments`.
fn fragments(
    head: &WatchResponse,
    header: Bytes,
    events: EventList,
    prev_kv: bool,
    limit: Option<usize>,
    out: &mut VecDeque<EncodedWatchResponse>,
) {
    debug_assert_eq!(
        head.header.as_ref().map(header_field),
        Some(header.clone()),
        "`header` is the encoding of `head.header`"
    );
    let whole = EncodedWatchResponse {
        head: header,
        watch_id: head.watch_id,
        range: 0..events.len(),
        events: Some(events.clone()),
        more: Vec::new(),
        prev_kv,
    };
    let Some(limit) = limit.filter(|&l| events.len() >= 2 && whole.encoded_len() >= l) else {
        out.push_back(whole);
        return;
    };
    let part_head: Bytes = WatchResponse {
        fragment: true,
        ..head.clone()
    }
    .encode_to_vec()
    .into();
    let sizes: Vec<usize> = events
        .iter()
        .map(|e| e.encoded(prev_kv, encode_event).len())
        .collect();
    let mut start = 0;
    let mut size = part_head.len();
    for (i, &add) in sizes.iter().enumerate() {
        if i > start && size + add >= limit {
            out.push_back(EncodedWatchResponse {
                head: part_head.clone(),
                events: Some(events.clone()),
                range: start..i,
                prev_kv,
                ..Default::default()
            });
            start = i;
            size = part_head.len();
        }
        size += add;
    }
    out.push_back(EncodedWatchResponse {
        head: head.encode_to_vec().into(),
        events: Some(events.clone()),
        range: start..events.len(),
        prev_kv,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::encode::event_to_pb;
    use super::*;
    use retcd_api::mvccpb;
    use retcd_mvcc::KeyValue;
    use retcd_mvcc::watch::WatchEvent;
    use retcd_mvcc::{Event, EventKind};

    fn events(n: usize, value_len: usize) -> EventList {
        (0..n)
            .map(|i| {
                Arc::new(WatchEvent::new(Event {
                    kind: if i % 3 == 2 {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    kv: KeyValue {
                        key: format!("k{i}").into_bytes(),
                        value: vec![b'v'; value_len],
                        create_revision: 2,
                        mod_revision: 5 + i as i64,
                        version: 1 + (i % 2) as i64,
                        lease: 7,
                    },
                    prev_kv: Some(KeyValue {
                        key: format!("k{i}").into_bytes(),
                        value: b"old".to_vec(),
                        create_revision: 2,
                        mod_revision: 4,
                        version: 1,
                        lease: 0,
                    }),
                }))
            })
            .collect()
    }

    fn head() -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 99,
                raft_term: 3,
            }),
            watch_id: 4,
            ..Default::default()
        }
    }

    fn test_header() -> Bytes {
        header_field(head().header.as_ref().unwrap())
    }

    fn decode(r: &EncodedWatchResponse) -> WatchResponse {
        let bytes = r.encode_to_vec();
        assert_eq!(bytes.len(), r.encoded_len());
        WatchResponse::decode(bytes.as_slice()).unwrap()
    }

    // Goal: the hand encoding is exactly prost's encoding of the same response, with and
    // without prev_kv (left out of create events either way).
    #[test]
    fn hand_encoding_matches_prost() {
        for (prev_kv, watch_id) in [(false, 4), (true, 4), (false, 0), (true, i64::MAX)] {
            let list = events(5, 10);
            let mut out = VecDeque::new();
            let head = WatchResponse { watch_id, ..head() };
            fragments(&head, test_header(), list.clone(), prev_kv, None, &mut out);
            assert_eq!(out.len(), 1);
            let expected = WatchResponse {
                events: list.iter().map(|e| event_to_pb(e, prev_kv)).collect(),
                ..head
            };
            assert_eq!(out[0].encode_to_vec(), expected.encode_to_vec());
            assert_eq!(decode(&out[0]), expected);
        }
    }

    // Goal: a merged response (a list, then whole later lists) is prost's encoding of all
    // its events in order.
    #[test]
    fn merged_lists_encode_as_one_response() {
        let (a, b, c) = (events(3, 10), events(1, 20), events(2, 5));
        let merged = EncodedWatchResponse {
            head: test_header(),
            watch_id: 4,
            range: 1..3,
            events: Some(a.clone()),
            more: vec![b.clone(), c.clone()],
            prev_kv: true,
        };
        let all = a[1..].iter().chain(b.iter()).chain(c.iter());
        let expected = WatchResponse {
            events: all.map(|e| event_to_pb(e, true)).collect(),
            ..head()
        };
        assert_eq!(merged.encode_to_vec(), expected.encode_to_vec());
        assert_eq!(decode(&merged), expected);
    }

    // Goal: fragments stay under the limit, keep every event in order, and only the last
    // part has fragment = false.
    #[test]
    fn fragments_split_under_the_limit_in_order() {
        let list = events(50, 100);
        let mut out = VecDeque::new();
        fragments(
            &head(),
            test_header(),
            list.clone(),
            true,
            Some(1000),
            &mut out,
        );
        assert!(out.len() > 5);
        let parts: Vec<WatchResponse> = out.iter().map(decode).collect();
        for (i, (p, raw)) in parts.iter().zip(&out).enumerate() {
            assert!(
                raw.encoded_len() < 1000,
                "part {i} is {} bytes",
                raw.encoded_len()
            );
            assert_eq!(p.fragment, i + 1 < parts.len());
            assert_eq!(p.watch_id, 4);
        }
        let joined: Vec<mvccpb::Event> = parts.into_iter().flat_map(|p| p.events).collect();
        let all: Vec<mvccpb::Event> = list.iter().map(|e| event_to_pb(e, true)).collect();
        assert_eq!(joined, all);
    }

    fn ev_out(watch_id: i64, list: &EventList, range: Range<usize>) -> Out {
        Out::Events {
            watch_id,
            revision: list[range.end - 1].kv.mod_revision,
            events: list[range].iter().cloned().collect(),
            prev_kv: false,
            fragment: false,
        }
    }

    // Goal: a watcher's consecutive event responses merge (in order, last revision as the
    // header), but never across a progress response or its own cancel.
    #[test]
    fn coalesce_merges_per_watcher_up_to_barriers() {
        let list = events(6, 1);
        let batch = vec![
            ev_out(1, &list, 0..1),
            ev_out(2, &list, 0..1),
            ev_out(1, &list, 1..2),
            ev_out(2, &list, 1..2),
            Out::Progress {
                watch_id: -1,
                revision: 6,
            },
            ev_out(1, &list, 2..3),
            ev_out(1, &list, 3..4),
            Out::Canceled {
                watch_id: 1,
                revision: 8,
                compact_revision: 0,
                cancel_reason: None,
            },
            ev_out(1, &list, 4..6),
        ];
        let out = coalesce(batch);
        let shape: Vec<(i64, Vec<i64>, i64)> = out
            .iter()
            .map(|Merged { out, more }| match out {
                Out::Events {
                    watch_id,
                    revision,
                    events,
                    ..
                } => (
                    *watch_id,
                    events
                        .iter()
                        .chain(more.iter().flat_map(|l| l.iter()))
                        .map(|e| e.kv.mod_revision)
                        .collect(),
                    *revision,
                ),
                Out::Progress { .. } => (-1, vec![], 0),
                Out::Canceled { watch_id, .. } => (*watch_id, vec![], -1),
                Out::Created { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, vec![5, 6], 6),
                (2, vec![5, 6], 6),
                (-1, vec![], 0),
                (1, vec![7, 8], 8),
                (1, vec![], -1),
                (1, vec![9, 10], 10),
            ]
        );
    }

    // Goal: a small response, a single large event, or a watcher that did not ask for
    // fragments gets the response whole.
    #[test]
    fn small_single_or_unrequested_responses_are_whole() {
        for (list, limit) in [
            (events(2, 10), Some(1000)),
            (events(1, 5000), Some(1000)),
            (events(50, 100), None),
        ] {
            let mut out = VecDeque::new();
            fragments(&head(), test_header(), list.clone(), false, limit, &mut out);
            assert_eq!(out.len(), 1);
            let r = decode(&out[0]);
            assert!(!r.fragment);
            assert_eq!(r.events.len(), list.len());
        }
    }
}
