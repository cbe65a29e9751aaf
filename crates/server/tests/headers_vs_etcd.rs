//! Differential test of response headers: the same scripted session of RPCs, over raw
//! gRPC, against a real etcd 3.4.23 and against retcd, compared RPC by RPC.
//!
//! What is compared is a normalized form of every `ResponseHeader` (nested ones in a
//! Txn's responses included): whether it is present at all; for a present one, whether
//! `cluster_id` and `raft_term` are set (their values differ between the servers),
//! whether `member_id` is the member that served the call, another one or 0; and the
//! revision exactly. Both servers start empty and run the same writes one at a time, so
//! every revision etcd reports, "the current revision" included, is determined by the
//! session, and retcd must report the same one. The rest of each response is compared
//! too where it is deterministic (keys, counts, flags, member lists with their ids and
//! URLs replaced by names); errors compare by code and message.
//!
//! `every_rpc_header_matches_etcd` runs the session on one member each (`twins`);
//! `move_leader_and_follower_headers_match_etcd` runs a short one on three members each,
//! for MoveLeader to another member and for calls served by a follower. Needs `etcd`
//! (Debian's `etcd-server`); skips with a printed reason without it, fails under `CI=true`.
//!
//! etcd 3.4.23's rules, which the session walks through (from its source, `v3rpc/` and
//! `clientv3/concurrency/`, and checked against a live etcd):
//!
//! | response | header |
//! |---|---|
//! | Range, read-only Txn | the read view's revision (not a requested older one) |
//! | Put, DeleteRange, write Txn | the revision written; the current one if nothing changed |
//! | Txn's nested range/put/delete | only `revision` (as the op saw it), other fields 0 |
//! | Txn's nested txn | present but all 0, at every depth |
//! | Compact | the current revision after it |
//! | Lease Grant, TimeToLive, Leases, KeepAlive | the current revision (unknown leases are no error) |
//! | Lease Revoke | the revision after deleting its keys |
//! | Watch created, progress, cancel | the current revision |
//! | Watch events | live: the event's revision; from history: the revision when caught up |
//! | Watch canceled as compacted | revision 0 |
//! | Cluster, every RPC | revision 0 |
//! | Status, Hash, HashKV | the current revision (HashKV also when asked for an older one) |
//! | Alarm, Defragment, MoveLeader | none at all |
//! | Lock | its Txn's when free at once; after a wait, the current revision when it ended |
//! | Unlock, Resign, Proclaim | their write's (the current revision if nothing changed) |
//! | Campaign | its first Txn's, even after a wait or a proclaim of a new value |
//! | Leader; Observe's message after a read | the current revision |
//! | Observe's message after a change it watched | the change's revision |
//! | any error | no response message |

mod common;

use std::fmt::{Debug, Write as _};
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::etcd::twins;
use retcd_api::etcdserverpb::cluster_client::ClusterClient;
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::lease_client::LeaseClient;
use retcd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use retcd_api::etcdserverpb::watch_client::WatchClient;
use retcd_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, Compare,
    DefragmentRequest, DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, alarm_request, compare, request_op,
    response_op, watch_request,
};
use retcd_api::v3electionpb::election_client::ElectionClient;
use retcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use retcd_api::v3lockpb::lock_client::LockClient;
use retcd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use retcd_testkit::cluster::{Cluster, ClusterSpec, free_ports};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Bound on every wait: a response, a stream message, a condition.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Normal forms

/// One RPC (or one stream message) of the session as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    rpc: String,
    /// The normalized header(s), or the error.
    header: String,
    /// The rest of the response, normalized; empty for an error.
    body: String,
}

/// `c+ m=self r7 t+`: cluster id set (`c0` if 0), member id the serving member's (`other`,
/// `0`), revision 7, raft term set. `absent` when the message has no header.
fn norm_header(h: Option<&ResponseHeader>, self_id: u64) -> String {
    let Some(h) = h else {
        return "absent".to_string();
    };
    let set = |v: u64| if v == 0 { "0" } else { "+" };
    let member = match h.member_id {
        0 => "0",
        id if id == self_id => "self",
        _ => "other",
    };
    format!(
        "c{} m={member} r{} t{}",
        set(h.cluster_id),
        h.revision,
        set(h.raft_term)
    )
}

/// A response whose header(s) this test compares.
trait Headed: Debug + Clone {
    fn header(&self) -> Option<&ResponseHeader>;
    /// Appends the normalized headers of nested responses (a Txn's).
    fn nested(&self, _self_id: u64, _out: &mut String) {}
    /// The response without its header(s), as compared.
    fn body(&self) -> String;
}

macro_rules! headed {
    ($($t:ty),* $(,)?) => {$(
        impl Headed for $t {
            fn header(&self) -> Option<&ResponseHeader> {
                self.header.as_ref()
            }
            fn body(&self) -> String {
                let mut c = self.clone();
                c.header = None;
                format!("{c:?}")
            }
        }
    )*};
}

headed!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    CompactionResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    LeaseLeasesResponse,
    LeaseKeepAliveResponse,
    WatchResponse,
    AlarmResponse,
    DefragmentResponse,
    MoveLeaderResponse,
    LockResponse,
    UnlockResponse,
    CampaignResponse,
    ProclaimResponse,
    LeaderResponse,
    ResignResponse,
);

/// Member lists compare sorted by name and peer URLs: both servers sort by id, and the
/// ids differ.
macro_rules! headed_members {
    ($($t:ty),* $(,)?) => {$(
        impl Headed for $t {
            fn header(&self) -> Option<&ResponseHeader> {
                self.header.as_ref()
            }
            fn body(&self) -> String {
                let mut c = self.clone();
                c.header = None;
                c.members
                    .sort_by(|a, b| (&a.name, &a.peer_ur_ls).cmp(&(&b.name, &b.peer_ur_ls)));
                format!("{c:?}")
            }
        }
    )*};
}

headed_members!(
    MemberAddResponse,
    MemberRemoveResponse,
    MemberUpdateResponse,
    MemberListResponse,
    MemberPromoteResponse,
);

impl Headed for TxnResponse {
    fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    fn nested(&self, self_id: u64, out: &mut String) {
        out.push_str(" [");
        for (i, op) in self.responses.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match &op.response {
                Some(response_op::Response::ResponseRange(r)) => {
                    write!(out, "range({})", norm_header(r.header.as_ref(), self_id))
                }
                Some(response_op::Response::ResponsePut(r)) => {
                    write!(out, "put({})", norm_header(r.header.as_ref(), self_id))
                }
                Some(response_op::Response::ResponseDeleteRange(r)) => {
                    write!(out, "del({})", norm_header(r.header.as_ref(), self_id))
                }
                Some(response_op::Response::ResponseTxn(t)) => {
                    write!(out, "txn({})", norm_header(t.header.as_ref(), self_id)).unwrap();
                    t.nested(self_id, out);
                    Ok(())
                }
                None => write!(out, "none"),
            }
            .unwrap();
        }
        out.push(']');
    }
    fn body(&self) -> String {
        fn strip(t: &mut TxnResponse) {
            t.header = None;
            for op in &mut t.responses {
                match &mut op.response {
                    Some(response_op::Response::ResponseRange(r)) => r.header = None,
                    Some(response_op::Response::ResponsePut(r)) => r.header = None,
                    Some(response_op::Response::ResponseDeleteRange(r)) => r.header = None,
                    Some(response_op::Response::ResponseTxn(t)) => strip(t),
                    None => {}
                }
            }
        }
        let mut c = self.clone();
        strip(&mut c);
        format!("{c:?}")
    }
}

impl Headed for LeaseTimeToLiveResponse {
    fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    /// The remaining TTL depends on the clock: compared as "positive, at most granted".
    fn body(&self) -> String {
        let ttl = if self.ttl > 0 && self.ttl <= self.granted_ttl {
            "0<ttl<=granted".to_string()
        } else {
            self.ttl.to_string()
        };
        format!(
            "id={} ttl={ttl} granted={} keys={:?}",
            self.id, self.granted_ttl, self.keys
        )
    }
}

impl Headed for StatusResponse {
    fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    /// Sizes, indexes and the version string differ by design; the leader (named by the
    /// recorder), the learner flag and the errors do not.
    fn body(&self) -> String {
        format!(
            "leader={} learner={} errors={:?}",
            self.leader, self.is_learner, self.errors
        )
    }
}

impl Headed for HashResponse {
    fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    /// A hash of the whole backend file: the files differ by design.
    fn body(&self) -> String {
        String::new()
    }
}

impl Headed for HashKvResponse {
    fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    /// Not the hash: the session's keys include leased ones, whose lease ids each server
    /// draws itself (the number is etcd's for the same history; `etcdctl_tls_vs_etcd.rs`
    /// compares one). Nor
    /// `hash_revision`: etcd 3.6's field, which 3.4 does not send.
    fn body(&self) -> String {
        format!("compact_revision={}", self.compact_revision)
    }
}

/// An error as compared: code and message.
fn norm_status(s: &Status) -> String {
    format!("error {:?}: {}", s.code(), s.message())
}

/// Records a session's steps, normalizing ids and URLs that differ between the servers.
struct Recorder {
    /// The member the next calls go to (`m=self` in headers).
    self_id: u64,
    /// Replaced in bodies, longest first: ids and URLs by the names the session gives them.
    names: Vec<(String, String)>,
    steps: Vec<Step>,
}

impl Recorder {
    fn new(self_id: u64) -> Recorder {
        Recorder {
            self_id,
            names: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn name(&mut self, value: impl ToString, name: &str) {
        self.names.push((value.to_string(), name.to_string()));
        self.names.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    fn record<T: Headed>(&mut self, rpc: &str, r: Result<T, String>) -> Option<T> {
        let step = match &r {
            Ok(m) => {
                let mut header = norm_header(m.header(), self.self_id);
                m.nested(self.self_id, &mut header);
                let mut body = m.body();
                for (value, name) in &self.names {
                    body = body.replace(value.as_str(), name);
                }
                Step {
                    rpc: rpc.to_string(),
                    header,
                    body,
                }
            }
            Err(e) => Step {
                rpc: rpc.to_string(),
                header: e.clone(),
                body: String::new(),
            },
        };
        self.steps.push(step);
        r.ok()
    }

    /// Records a unary call's answer.
    async fn call<T: Headed>(
        &mut self,
        rpc: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Option<T> {
        let r = match tokio::time::timeout(WAIT, call).await {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|s| norm_status(&s)),
            Err(_) => Err(format!("no answer within {WAIT:?}")),
        };
        self.record(rpc, r)
    }

    /// Records the next message of a stream.
    async fn next<T: Headed>(&mut self, rpc: &str, s: &mut Streaming<T>) -> Option<T> {
        let r = next(s).await;
        self.record(rpc, r)
    }
}

async fn next<T>(s: &mut Streaming<T>) -> Result<T, String> {
    match tokio::time::timeout(WAIT, s.message()).await {
        Err(_) => Err(format!("no message within {WAIT:?}")),
        Ok(Err(st)) => Err(norm_status(&st)),
        Ok(Ok(None)) => Err("stream ended".to_string()),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// The two sessions side by side: a table of every step (`*` where the header differs,
/// `~` where only the body does), then each differing step in full. Empty when equal.
fn diff(etcd: &[Step], retcd: &[Step]) -> String {
    let differs = etcd.len() != retcd.len() || etcd.iter().zip(retcd).any(|(a, b)| a != b);
    if !differs {
        return String::new();
    }
    let mut table = String::new();
    let mut details = String::new();
    writeln!(
        table,
        "  {:>3}  {:<52} {:<34} retcd",
        "#", "rpc", "etcd 3.4.23"
    )
    .unwrap();
    for i in 0..etcd.len().max(retcd.len()) {
        let (e, r) = (etcd.get(i), retcd.get(i));
        let mark = match (e, r) {
            (Some(e), Some(r)) if e.header != r.header || e.rpc != r.rpc => '*',
            (Some(e), Some(r)) if e.body != r.body => '~',
            (Some(_), Some(_)) => ' ',
            _ => '*',
        };
        let rpc = e.or(r).map_or("", |s| s.rpc.as_str());
        let eh = e.map_or("(missing)", |s| s.header.as_str());
        let rh = r.map_or("(missing)", |s| s.header.as_str());
        let rh = if mark == ' ' || eh == rh { "=" } else { rh };
        writeln!(table, "{mark} {i:>3}  {rpc:<52} {eh:<34} {rh}").unwrap();
        if mark != ' ' {
            writeln!(details, "#{i} {rpc}").unwrap();
            for (who, s) in [("etcd ", e), ("retcd", r)] {
                match s {
                    Some(s) => writeln!(
                        details,
                        "  {who} rpc:    {}\n  {who} header: {}\n  {who} body:   {}",
                        s.rpc, s.header, s.body
                    )
                    .unwrap(),
                    None => writeln!(details, "  {who}: (missing)").unwrap(),
                }
            }
        }
    }
    format!("{table}\n{details}")
}

/// Goal: the comparison itself tells apart what it must: an absent header from an empty
/// one, the serving member from another, each revision, a body-only difference.
#[test]
fn the_comparison_catches_each_kind_of_difference() {
    let h = |c, m, r, t| ResponseHeader {
        cluster_id: c,
        member_id: m,
        revision: r,
        raft_term: t,
    };
    assert_eq!(norm_header(None, 9), "absent");
    assert_eq!(norm_header(Some(&h(0, 0, 0, 0)), 9), "c0 m=0 r0 t0");
    assert_eq!(norm_header(Some(&h(5, 9, 7, 2)), 9), "c+ m=self r7 t+");
    assert_eq!(norm_header(Some(&h(5, 8, 7, 2)), 9), "c+ m=other r7 t+");
    let step = |header: &str, body: &str| Step {
        rpc: "KV.Put".to_string(),
        header: header.to_string(),
        body: body.to_string(),
    };
    let etcd = [step("c+ m=self r7 t+", "b")];
    assert_eq!(diff(&etcd, &etcd), "");
    let report = diff(&etcd, &[step("c+ m=self r8 t+", "b")]);
    assert!(report.contains("*   0  KV.Put"), "{report}");
    let report = diff(&etcd, &[step("c+ m=self r7 t+", "c")]);
    assert!(report.contains("~   0  KV.Put"), "{report}");
    let report = diff(&etcd, &[]);
    assert!(report.contains("(missing)"), "{report}");
    // A nested txn's empty header is not an absent one.
    let txn = TxnResponse {
        header: Some(h(5, 9, 7, 2)),
        succeeded: true,
        responses: vec![retcd_api::etcdserverpb::ResponseOp {
            response: Some(response_op::Response::ResponseTxn(TxnResponse {
                header: Some(ResponseHeader::default()),
                ..Default::default()
            })),
        }],
    };
    let mut nested = String::new();
    txn.nested(9, &mut nested);
    assert_eq!(nested, " [txn(c0 m=0 r0 t0) []]");
}

// ---------------------------------------------------------------------------------------
// Clients and request builders

#[derive(Clone)]
struct Clients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    cluster: ClusterClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
}

impl Clients {
    async fn connect(endpoint: String) -> Clients {
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .expect("endpoint")
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect");
        Clients {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            lock: LockClient::new(channel.clone()),
            election: ElectionClient::new(channel),
        }
    }

    /// This member's id, from its Status (not recorded).
    async fn member_id(&mut self) -> u64 {
        let s = self.maintenance.status(StatusRequest {}).await.unwrap();
        s.into_inner().header.expect("status header").member_id
    }

    /// Waits until `key` exists (a waiter's key, say); not recorded, changes nothing.
    async fn wait_key(&mut self, key: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.kv.range(range(key)).await.unwrap().into_inner();
            if r.count > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{key} did not appear in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

fn delete(key: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        ..Default::default()
    }
}

fn op_range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range(key))),
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

fn op_delete(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(d)),
    }
}

fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

/// `version(key) > 0`: true once the key exists.
fn exists(key: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Version as i32,
        key: b(key),
        target_union: Some(compare::TargetUnion::Version(0)),
        range_end: Bytes::new(),
    }
}

/// `value(key) == value`.
fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: b(key),
        target_union: Some(compare::TargetUnion::Value(b(value))),
        range_end: Bytes::new(),
    }
}

fn watch_create(key: &str, f: impl FnOnce(&mut WatchCreateRequest)) -> WatchRequest {
    let mut c = WatchCreateRequest {
        key: b(key),
        ..Default::default()
    };
    f(&mut c);
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
    }
}

fn watch_cancel(watch_id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id },
        )),
    }
}

fn watch_progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    }
}

/// A Watch stream whose first request is `first` (sent before the call, since a server
/// may send its response headers only with its first message).
async fn open_watch(
    c: &mut Clients,
    first: WatchRequest,
) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let resp = tokio::time::timeout(WAIT, c.watch.watch(ReceiverStream::new(rx)))
        .await
        .expect("watch call in time")
        .expect("watch call");
    (tx, resp.into_inner())
}

fn revision_of(h: Option<&ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

// ---------------------------------------------------------------------------------------
// The single-member session

/// Lease ids the session grants explicitly, so both servers use the same ones (and the
/// lock and election keys, `<name>/<lease hex>`, agree).
const LEASE_KEYS: i64 = 1000;
const LEASE_PLAIN: i64 = 2000;
const LEASE_LOCK_A: i64 = 5000;
const LEASE_LOCK_B: i64 = 5001;
const LEASE_ELECT_A: i64 = 6000;
const LEASE_ELECT_B: i64 = 6001;
const LEASE_ELECT_C: i64 = 6002;

/// Runs the session on the single member at `endpoint`. `learner_urls` are two peer
/// URLs nobody listens on, for the learner that is added, updated and removed.
async fn session(endpoint: String, learner_urls: [String; 2]) -> Vec<Step> {
    let mut c = Clients::connect(endpoint.clone()).await;
    let self_id = c.member_id().await;
    let mut rec = Recorder::new(self_id);
    rec.name(self_id, "SELF");
    rec.name(&endpoint, "CLIENT_URL");

    kv_steps(&mut c, &mut rec).await;
    lease_steps(&mut c, &mut rec).await;
    watch_steps(&mut c, &mut rec).await;
    lock_steps(&mut c, &mut rec).await;
    election_steps(&mut c, &mut rec).await;
    cluster_steps(&mut c, &mut rec, self_id, learner_urls).await;
    maintenance_steps(&mut c, &mut rec, self_id).await;
    rec.steps
}

/// KV: every RPC, the header revision rules of each (write revision, read view, current
/// revision after a compaction), and the nested headers of Txn.
async fn kv_steps(c: &mut Clients, rec: &mut Recorder) {
    let kv = &mut c.kv.clone();
    // Range: the read view's revision (1 on a fresh store).
    rec.call("KV.Range missing key", kv.range(range("nokey")))
        .await;
    // Put: the revision it created.
    rec.call("KV.Put foo", kv.put(put("foo", "bar"))).await;
    let mut p = put("foo", "baz");
    p.prev_kv = true;
    rec.call("KV.Put foo prev_kv", kv.put(p)).await;
    // Range at an older revision: the header still has the current revision.
    let mut r = range("foo");
    r.revision = 2;
    rec.call("KV.Range foo at revision 2", kv.range(r)).await;
    let mut r = range("foo");
    r.serializable = true;
    r.count_only = true;
    rec.call("KV.Range serializable count_only", kv.range(r))
        .await;
    let mut r = range("a");
    r.range_end = b("z");
    r.keys_only = true;
    r.limit = 1;
    rec.call("KV.Range a..z keys_only limit 1", kv.range(r))
        .await;
    // DeleteRange of nothing: no new revision, the current one.
    rec.call(
        "KV.DeleteRange missing key",
        kv.delete_range(delete("missing")),
    )
    .await;
    rec.call("KV.Put a", kv.put(put("a", "1"))).await;
    let mut d = delete("a");
    d.prev_kv = true;
    rec.call("KV.DeleteRange a prev_kv", kv.delete_range(d))
        .await;

    // Read-only Txn: no Raft round, the read view's revision; nested headers carry only
    // the revision.
    let ro = TxnRequest {
        compare: vec![exists("foo")],
        success: vec![op_range("foo")],
        failure: vec![],
    };
    rec.call("KV.Txn read-only", kv.txn(ro)).await;
    let mut ser = range("foo");
    ser.serializable = true;
    let ro_nested = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(ser)),
            },
            op_txn(TxnRequest {
                compare: vec![],
                success: vec![op_range("foo")],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    rec.call(
        "KV.Txn read-only with nested read-only txn",
        kv.txn(ro_nested),
    )
    .await;
    // A write Txn: nested ranges before the first write read at the old revision, after
    // it at the new one; a nested txn's header is present but empty, at every depth.
    let mut put_prev = put("foo", "t1");
    put_prev.prev_kv = true;
    let big = TxnRequest {
        compare: vec![exists("foo")],
        success: vec![
            op_range("foo"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(put_prev)),
            },
            op_range("foo"),
            op_delete(delete("missing")),
            op_put("x", "1"),
            op_txn(TxnRequest {
                compare: vec![],
                success: vec![
                    op_put("y", "1"),
                    op_range("y"),
                    op_txn(TxnRequest {
                        compare: vec![],
                        success: vec![op_range("foo")],
                        failure: vec![],
                    }),
                ],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    rec.call("KV.Txn write with nested txns", kv.txn(big)).await;
    let only_delete = TxnRequest {
        compare: vec![],
        success: vec![op_delete(delete("missing"))],
        failure: vec![],
    };
    rec.call("KV.Txn deleting nothing", kv.txn(only_delete))
        .await;
    let failing_empty = TxnRequest {
        compare: vec![value_is("foo", "nope")],
        success: vec![op_put("z", "1")],
        failure: vec![],
    };
    rec.call("KV.Txn compare false, empty failure", kv.txn(failing_empty))
        .await;
    let mut del_prev = delete("x");
    del_prev.prev_kv = true;
    let failing = TxnRequest {
        compare: vec![value_is("foo", "nope")],
        success: vec![],
        failure: vec![op_delete(del_prev), op_range("x")],
    };
    rec.call(
        "KV.Txn compare false, failure delete+range",
        kv.txn(failing),
    )
    .await;
    let nested_only = TxnRequest {
        compare: vec![],
        success: vec![op_txn(TxnRequest {
            compare: vec![],
            success: vec![op_range("foo")],
            failure: vec![],
        })],
        failure: vec![],
    };
    rec.call(
        "KV.Txn nested read-only txn in a write txn",
        kv.txn(nested_only),
    )
    .await;
    let two_puts = TxnRequest {
        compare: vec![],
        success: vec![op_put("p1", "1"), op_put("p2", "2"), op_range("p1")],
        failure: vec![],
    };
    rec.call("KV.Txn two puts and a range", kv.txn(two_puts))
        .await;

    // Compact: the current revision after it (a compaction makes no revision).
    rec.call(
        "KV.Compact 3",
        kv.compact(CompactionRequest {
            revision: 3,
            physical: false,
        }),
    )
    .await;
    rec.call(
        "KV.Compact 4 physical",
        kv.compact(CompactionRequest {
            revision: 4,
            physical: true,
        }),
    )
    .await;

    // Errors carry no response at all.
    rec.call(
        "KV.Compact 3 again (error)",
        kv.compact(CompactionRequest {
            revision: 3,
            physical: false,
        }),
    )
    .await;
    let mut r = range("foo");
    r.revision = 2;
    rec.call("KV.Range compacted revision (error)", kv.range(r))
        .await;
    let mut r = range("foo");
    r.revision = 999;
    rec.call("KV.Range future revision (error)", kv.range(r))
        .await;
    let mut p = put("nokey", "");
    p.ignore_value = true;
    rec.call("KV.Put ignore_value on missing key (error)", kv.put(p))
        .await;
    rec.call("KV.Range empty key (error)", kv.range(range("")))
        .await;
}

/// Lease: grant and TimeToLive at the current revision, revoke at the revision of the
/// deletion of its keys, keep-alive at the current revision, unknown leases answered
/// without an error by TimeToLive and KeepAlive.
async fn lease_steps(c: &mut Clients, rec: &mut Recorder) {
    let lease = &mut c.lease.clone();
    let grant = |id: i64, ttl: i64| LeaseGrantRequest { ttl, id };
    rec.call("Lease.Grant 1000", lease.lease_grant(grant(LEASE_KEYS, 60)))
        .await;
    let mut p = put("lk", "v");
    p.lease = LEASE_KEYS;
    rec.call("KV.Put lk with lease 1000", c.kv.put(p)).await;
    rec.call(
        "Lease.TimeToLive 1000 keys",
        lease.lease_time_to_live(LeaseTimeToLiveRequest {
            id: LEASE_KEYS,
            keys: true,
        }),
    )
    .await;
    rec.call(
        "Lease.TimeToLive unknown lease",
        lease.lease_time_to_live(LeaseTimeToLiveRequest {
            id: 424242,
            keys: false,
        }),
    )
    .await;
    rec.call("Lease.Leases", lease.lease_leases(LeaseLeasesRequest {}))
        .await;

    let (tx, rx) = mpsc::channel(4);
    tx.send(LeaseKeepAliveRequest { id: LEASE_KEYS })
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, lease.lease_keep_alive(ReceiverStream::new(rx))).await {
        Ok(Ok(resp)) => {
            let mut s = resp.into_inner();
            rec.next("Lease.KeepAlive 1000", &mut s).await;
            tx.send(LeaseKeepAliveRequest { id: 777 }).await.unwrap();
            rec.next("Lease.KeepAlive unknown lease", &mut s).await;
        }
        Ok(Err(e)) => {
            rec.record::<LeaseKeepAliveResponse>("Lease.KeepAlive call", Err(norm_status(&e)));
        }
        Err(_) => {
            rec.record::<LeaseKeepAliveResponse>("Lease.KeepAlive call", Err("no answer".into()));
        }
    }
    drop(tx);

    rec.call(
        "Lease.Revoke 1000 (deletes lk)",
        lease.lease_revoke(LeaseRevokeRequest { id: LEASE_KEYS }),
    )
    .await;
    rec.call(
        "Lease.Revoke 1000 again (error)",
        lease.lease_revoke(LeaseRevokeRequest { id: LEASE_KEYS }),
    )
    .await;
    rec.call(
        "Lease.Grant 2000",
        lease.lease_grant(grant(LEASE_PLAIN, 60)),
    )
    .await;
    rec.call(
        "Lease.Grant 2000 again (error)",
        lease.lease_grant(grant(LEASE_PLAIN, 60)),
    )
    .await;
    rec.call(
        "Lease.Revoke 2000 (no keys)",
        lease.lease_revoke(LeaseRevokeRequest { id: LEASE_PLAIN }),
    )
    .await;
    rec.call(
        "Lease.Grant TTL too large (error)",
        lease.lease_grant(grant(3000, 9_000_000_001)),
    )
    .await;
}

/// Watch: created (the current revision, not the start revision), live events (their
/// revision), events from history (the revision when the watcher caught up), progress
/// and cancel (the current revision), a failed create, the compacted cancel (revision 0),
/// and no answer at all to the cancel of an unknown watch id.
async fn watch_steps(c: &mut Clients, rec: &mut Recorder) {
    let kv = &mut c.kv.clone();
    rec.call("KV.Put seed", kv.put(put("seed", "1"))).await;

    let (tx, mut s) = open_watch(c, watch_create("w", |_| {})).await;
    rec.next("Watch created w", &mut s).await;
    rec.call("KV.Put w=1", kv.put(put("w", "1"))).await;
    rec.next("Watch event w=1", &mut s).await;
    rec.call("KV.Put w=2", kv.put(put("w", "2"))).await;
    rec.next("Watch event w=2", &mut s).await;
    tx.send(watch_progress()).await.unwrap();
    rec.next("Watch progress (requested)", &mut s).await;
    // No response to an unknown id: the next message is the progress asked after it.
    tx.send(watch_cancel(99)).await.unwrap();
    tx.send(watch_progress()).await.unwrap();
    rec.next("Watch cancel unknown id, then progress", &mut s)
        .await;
    tx.send(watch_create("w", |c| c.watch_id = 7))
        .await
        .unwrap();
    rec.next("Watch created id 7", &mut s).await;
    tx.send(watch_create("w", |c| c.watch_id = 7))
        .await
        .unwrap();
    rec.next("Watch create duplicate id 7 (refused)", &mut s)
        .await;
    tx.send(watch_create("w", |c| c.prev_kv = true))
        .await
        .unwrap();
    rec.next("Watch created w prev_kv", &mut s).await;
    rec.call("KV.Put w=3", kv.put(put("w", "3"))).await;
    // Watchers 0, 7 and the prev_kv one (1) each get the event, in no set order
    // (etcd walks a Go map): recorded by watch id.
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next(&mut s).await);
    }
    events.sort_by_key(|r| r.as_ref().map_or(i64::MAX, |r| r.watch_id));
    for (i, r) in events.into_iter().enumerate() {
        rec.record(&format!("Watch event w=3 ({} of 3, by id)", i + 1), r);
    }
    tx.send(watch_cancel(0)).await.unwrap();
    rec.next("Watch cancel 0", &mut s).await;
    drop(tx);
    drop(s);

    // From history: created at the current revision, the events at the revision when the
    // watcher caught up (after them).
    let first = rec
        .call("KV.Put h=1", kv.put(put("h", "1")))
        .await
        .map_or(0, |p| revision_of(p.header.as_ref()));
    rec.call("KV.Put h=2", kv.put(put("h", "2"))).await;
    rec.call("KV.Put other=x", kv.put(put("other", "x"))).await;
    let last = rec
        .call("KV.Put other=y", kv.put(put("other", "y")))
        .await
        .map_or(0, |p| revision_of(p.header.as_ref()));
    let (tx, mut s) = open_watch(c, watch_create("h", |c| c.start_revision = first)).await;
    rec.next("Watch created h from history", &mut s).await;
    rec.next("Watch events h from history", &mut s).await;
    drop(tx);
    drop(s);

    // From a compacted revision: created, then canceled with the compact revision and a
    // header without a revision.
    rec.call(
        "KV.Compact to other=x",
        kv.compact(CompactionRequest {
            revision: last - 1,
            physical: true,
        }),
    )
    .await;
    let (tx, mut s) = open_watch(c, watch_create("w", |c| c.start_revision = 2)).await;
    rec.next("Watch created from compacted revision", &mut s)
        .await;
    rec.next("Watch canceled: compacted", &mut s).await;
    drop(tx);
    drop(s);
}

/// Lock: uncontended at its put's revision; contended at the current revision when the
/// wait ended; Unlock at its delete's revision, or the current one if nothing was there.
async fn lock_steps(c: &mut Clients, rec: &mut Recorder) {
    for id in [LEASE_LOCK_A, LEASE_LOCK_B] {
        rec.call(
            &format!("Lease.Grant {id}"),
            c.lease.lease_grant(LeaseGrantRequest { ttl: 300, id }),
        )
        .await;
    }
    let lock = |lease: i64| LockRequest {
        name: b("mylock"),
        lease,
    };
    let first = rec
        .call(
            "Lock.Lock mylock uncontended",
            c.lock.lock(lock(LEASE_LOCK_A)),
        )
        .await;
    let mut waiter = c.lock.clone();
    let second = tokio::spawn(async move {
        tokio::time::timeout(WAIT, waiter.lock(lock(LEASE_LOCK_B)))
            .await
            .map_err(|_| "no answer".to_string())
            .and_then(|r| r.map(|r| r.into_inner()).map_err(|s| norm_status(&s)))
    });
    c.wait_key(&format!("mylock/{LEASE_LOCK_B:x}")).await;
    rec.call("KV.Put unrelated=1", c.kv.put(put("unrelated", "1")))
        .await;
    let first_key = first.map_or_else(Bytes::new, |l| l.key);
    rec.call(
        "Lock.Unlock first holder",
        c.lock.unlock(UnlockRequest { key: first_key }),
    )
    .await;
    let second = rec.record("Lock.Lock mylock contended", second.await.unwrap());
    rec.call(
        "Lock.Unlock second holder",
        c.lock.unlock(UnlockRequest {
            key: second.map_or_else(Bytes::new, |l| l.key),
        }),
    )
    .await;
    rec.call(
        "Lock.Unlock missing key",
        c.lock.unlock(UnlockRequest {
            key: b("mylock/doesnotexist"),
        }),
    )
    .await;
    rec.call(
        "Lock.Lock with unknown lease (error)",
        c.lock.lock(lock(31337)),
    )
    .await;
}

/// Election: Campaign at its put's revision (stale when it had to wait, and the current
/// revision when the key already existed), Proclaim and Resign at their Txn's revision,
/// Leader and Observe's first message at the current revision, Observe's later messages
/// at the change's revision.
async fn election_steps(c: &mut Clients, rec: &mut Recorder) {
    for id in [LEASE_ELECT_A, LEASE_ELECT_B, LEASE_ELECT_C] {
        rec.call(
            &format!("Lease.Grant {id}"),
            c.lease.lease_grant(LeaseGrantRequest { ttl: 300, id }),
        )
        .await;
    }
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: b("el"),
        lease,
        value: b(value),
    };
    let leader_a = rec
        .call(
            "Election.Campaign el uncontended",
            c.election.campaign(campaign(LEASE_ELECT_A, "v1")),
        )
        .await
        .and_then(|r| r.leader)
        .unwrap_or_default();
    rec.call("KV.Put unrelated=2", c.kv.put(put("unrelated", "2")))
        .await;
    rec.call(
        "Election.Leader el",
        c.election.leader(LeaderRequest { name: b("el") }),
    )
    .await;
    let proclaim = |leader: &LeaderKey, value: &str| ProclaimRequest {
        leader: Some(leader.clone()),
        value: b(value),
    };
    rec.call(
        "Election.Proclaim v2",
        c.election.proclaim(proclaim(&leader_a, "v2")),
    )
    .await;

    let mut obs = c
        .election
        .observe(LeaderRequest { name: b("el") })
        .await
        .expect("observe")
        .into_inner();
    rec.next("Election.Observe el first message", &mut obs)
        .await;
    rec.call(
        "Election.Proclaim v3",
        c.election.proclaim(proclaim(&leader_a, "v3")),
    )
    .await;
    rec.next("Election.Observe el after proclaim", &mut obs)
        .await;

    let mut waiter = c.election.clone();
    let second = tokio::spawn(async move {
        tokio::time::timeout(WAIT, waiter.campaign(campaign(LEASE_ELECT_B, "c2")))
            .await
            .map_err(|_| "no answer".to_string())
            .and_then(|r| r.map(|r| r.into_inner()).map_err(|s| norm_status(&s)))
    });
    c.wait_key(&format!("el/{LEASE_ELECT_B:x}")).await;
    rec.call("KV.Put unrelated=3", c.kv.put(put("unrelated", "3")))
        .await;
    let resign = |leader: &LeaderKey| ResignRequest {
        leader: Some(leader.clone()),
    };
    rec.call(
        "Election.Resign first leader",
        c.election.resign(resign(&leader_a)),
    )
    .await;
    let leader_b = rec
        .record("Election.Campaign el contended", second.await.unwrap())
        .and_then(|r| r.leader)
        .unwrap_or_default();
    rec.next("Election.Observe el new leader", &mut obs).await;
    drop(obs);
    rec.call(
        "Election.Resign stale leader key",
        c.election.resign(resign(&leader_a)),
    )
    .await;
    rec.call(
        "Election.Proclaim stale leader key (error)",
        c.election.proclaim(proclaim(&leader_a, "x")),
    )
    .await;
    rec.call("KV.Put unrelated=4", c.kv.put(put("unrelated", "4")))
        .await;
    // The key exists with this value: no write, the current revision.
    rec.call(
        "Election.Campaign again, same value",
        c.election.campaign(campaign(LEASE_ELECT_B, "c2")),
    )
    .await;
    // The key exists with another value: proclaimed, but the header is the first Txn's.
    rec.call(
        "Election.Campaign again, new value",
        c.election.campaign(campaign(LEASE_ELECT_B, "c3")),
    )
    .await;
    rec.call(
        "KV.Range el/ leader value",
        c.kv.range(RangeRequest {
            key: b("el/"),
            range_end: b("el0"),
            ..Default::default()
        }),
    )
    .await;
    rec.call(
        "Election.Resign second leader",
        c.election.resign(resign(&leader_b)),
    )
    .await;
    rec.call(
        "Election.Leader el, none (error)",
        c.election.leader(LeaderRequest { name: b("el") }),
    )
    .await;
    rec.call(
        "Election.Proclaim without leader (error)",
        c.election.proclaim(ProclaimRequest {
            leader: None,
            value: b("x"),
        }),
    )
    .await;

    // Observe with no leader yet: the first message comes from the first campaign, at
    // that put's revision.
    let mut observer = c.election.clone();
    let first = tokio::spawn(async move {
        let mut s = tokio::time::timeout(WAIT, observer.observe(LeaderRequest { name: b("el2") }))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|s| norm_status(&s))?
            .into_inner();
        next(&mut s).await
    });
    // Whether the observer's first read comes before the campaign or after it, etcd's
    // header has the campaign's revision here (the put's, or the current one, equal).
    let leader_c = rec
        .call(
            "Election.Campaign el2",
            c.election.campaign(CampaignRequest {
                name: b("el2"),
                lease: LEASE_ELECT_C,
                value: b("only"),
            }),
        )
        .await
        .and_then(|r| r.leader)
        .unwrap_or_default();
    rec.record(
        "Election.Observe el2 first message (waited for a leader)",
        first.await.unwrap(),
    );
    rec.call("Election.Resign el2", c.election.resign(resign(&leader_c)))
        .await;
}

/// Cluster: every response at revision 0, errors without a response.
async fn cluster_steps(c: &mut Clients, rec: &mut Recorder, self_id: u64, urls: [String; 2]) {
    let cl = &mut c.cluster.clone();
    let own_peer_urls = rec
        .call(
            "Cluster.MemberList",
            cl.member_list(MemberListRequest {
                linearizable: false,
            }),
        )
        .await
        .and_then(|l| l.members.into_iter().find(|m| m.id == self_id))
        .map(|m| m.peer_ur_ls)
        .unwrap_or_default();
    let added = match tokio::time::timeout(
        WAIT,
        cl.member_add(MemberAddRequest {
            peer_ur_ls: vec![urls[0].clone()],
            is_learner: true,
        }),
    )
    .await
    {
        Ok(r) => r.map(|r| r.into_inner()).map_err(|s| norm_status(&s)),
        Err(_) => Err("no answer".into()),
    };
    if let Ok(a) = &added {
        rec.name(a.member.as_ref().map_or(0, |m| m.id), "LEARNER");
    }
    let learner = rec
        .record("Cluster.MemberAdd learner", added)
        .and_then(|a| a.member)
        .map_or(0, |m| m.id);
    rec.call(
        "Cluster.MemberAdd same peer URL (error)",
        cl.member_add(MemberAddRequest {
            peer_ur_ls: vec![urls[0].clone()],
            is_learner: true,
        }),
    )
    .await;
    rec.call(
        "Cluster.MemberPromote learner not in sync (error)",
        cl.member_promote(MemberPromoteRequest { id: learner }),
    )
    .await;
    // Not compared: MoveLeader to a learner. etcd 3.4.23 does not refuse it, asks Raft
    // for a transfer Raft ignores, and waits for the learner to lead until the client
    // gives up; retcd refuses it at once with "bad leader transferee" (etcd 3.5's check).
    rec.call(
        "Cluster.MemberList with learner",
        cl.member_list(MemberListRequest {
            linearizable: false,
        }),
    )
    .await;
    // MemberUpdate of this member (and back). Not of the learner: etcd 3.4.23 replaces
    // a member's Raft attributes whole on an update, so a learner's update drops its
    // learner flag from the member list (Raft still has it as a learner); retcd keeps it.
    rec.call(
        "Cluster.MemberUpdate self",
        cl.member_update(MemberUpdateRequest {
            id: self_id,
            peer_ur_ls: vec![urls[1].clone()],
        }),
    )
    .await;
    rec.call(
        "Cluster.MemberUpdate self back",
        cl.member_update(MemberUpdateRequest {
            id: self_id,
            peer_ur_ls: own_peer_urls,
        }),
    )
    .await;
    rec.call(
        "Cluster.MemberUpdate unknown (error)",
        cl.member_update(MemberUpdateRequest {
            id: 4242,
            peer_ur_ls: vec![urls[1].clone()],
        }),
    )
    .await;
    rec.call(
        "Cluster.MemberRemove learner",
        cl.member_remove(MemberRemoveRequest { id: learner }),
    )
    .await;
    rec.call(
        "Cluster.MemberRemove unknown (error)",
        cl.member_remove(MemberRemoveRequest { id: 4242 }),
    )
    .await;
    rec.call(
        "Cluster.MemberPromote self (error)",
        cl.member_promote(MemberPromoteRequest { id: self_id }),
    )
    .await;
}

/// Maintenance: Alarm, Defragment and MoveLeader without a header; Status, Hash and
/// HashKV at the current revision (HashKV also when asked for an older one).
async fn maintenance_steps(c: &mut Clients, rec: &mut Recorder, self_id: u64) {
    let m = &mut c.maintenance.clone();
    rec.call("Maintenance.Status", m.status(StatusRequest {}))
        .await;
    let alarm = |action: alarm_request::AlarmAction, alarm: AlarmType| AlarmRequest {
        action: action as i32,
        member_id: if action == alarm_request::AlarmAction::Get {
            0
        } else {
            self_id
        },
        alarm: alarm as i32,
    };
    use alarm_request::AlarmAction::{Activate, Deactivate, Get};
    rec.call(
        "Maintenance.Alarm GET (none)",
        m.alarm(alarm(Get, AlarmType::None)),
    )
    .await;
    rec.call(
        "Maintenance.Alarm ACTIVATE NOSPACE",
        m.alarm(alarm(Activate, AlarmType::Nospace)),
    )
    .await;
    rec.call(
        "Maintenance.Alarm GET (NOSPACE)",
        m.alarm(alarm(Get, AlarmType::None)),
    )
    .await;
    rec.call("KV.Put under NOSPACE (error)", c.kv.put(put("k", "v")))
        .await;
    rec.call("KV.Range under NOSPACE", c.kv.range(range("foo")))
        .await;
    rec.call(
        "Maintenance.Status under NOSPACE",
        m.status(StatusRequest {}),
    )
    .await;
    rec.call(
        "Maintenance.Alarm DEACTIVATE NOSPACE",
        m.alarm(alarm(Deactivate, AlarmType::Nospace)),
    )
    .await;
    rec.call("KV.Put after DEACTIVATE", c.kv.put(put("k", "v")))
        .await;
    rec.call("Maintenance.Hash", m.hash(HashRequest {})).await;
    rec.call(
        "Maintenance.HashKV current",
        m.hash_kv(HashKvRequest { revision: 0 }),
    )
    .await;
    let now = m
        .status(StatusRequest {})
        .await
        .ok()
        .and_then(|s| s.into_inner().header)
        .map_or(0, |h| h.revision);
    rec.call(
        "Maintenance.HashKV older revision",
        m.hash_kv(HashKvRequest { revision: now - 1 }),
    )
    .await;
    rec.call(
        "Maintenance.HashKV compacted revision (error)",
        m.hash_kv(HashKvRequest { revision: 2 }),
    )
    .await;
    rec.call("Maintenance.Defragment", m.defragment(DefragmentRequest {}))
        .await;
    rec.call(
        "Maintenance.MoveLeader to self",
        m.move_leader(MoveLeaderRequest { target_id: self_id }),
    )
    .await;
    rec.call(
        "Maintenance.MoveLeader to unknown (error)",
        m.move_leader(MoveLeaderRequest { target_id: 4242 }),
    )
    .await;
    rec.call("Maintenance.Status at the end", m.status(StatusRequest {}))
        .await;
}

/// Goal: every RPC's response header, nested Txn headers and stream messages included,
/// is the one etcd 3.4.23 sends in the same session on one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_header_matches_etcd() {
    let Some(etcd_bin) = retcd_testkit::etcd_bin::etcd() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, retcd) = common::blocking(|| twins(&etcd_bin, dir.path()));
    let learner_urls: [String; 2] = free_ports(2)
        .expect("ports")
        .into_iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("two URLs");
    let want = session(
        format!("http://127.0.0.1:{}", etcd.port),
        learner_urls.clone(),
    )
    .await;
    let got = session(retcd.endpoint(), learner_urls).await;
    let report = diff(&want, &got);
    assert!(
        report.is_empty(),
        "retcd's responses differ from etcd 3.4.23's (* header, ~ body only):\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// Three members: MoveLeader to another member, calls served by a follower

/// Runs the three-member session on `cluster`; returns its steps.
async fn cluster_session(cluster: &Cluster) -> Vec<Step> {
    let mut clients = Vec::new();
    for i in 0..cluster.size() {
        clients.push(Clients::connect(cluster.client_url(i)).await);
    }
    let mut ids = Vec::new();
    for c in &mut clients {
        ids.push(c.member_id().await);
    }
    // Wait for a leader every member agrees on (not recorded).
    let deadline = Instant::now() + WAIT;
    let leader_id = loop {
        let mut seen = Vec::new();
        for c in &mut clients {
            seen.push(
                c.maintenance
                    .status(StatusRequest {})
                    .await
                    .map_or(0, |s| s.into_inner().leader),
            );
        }
        if seen[0] != 0 && seen.iter().all(|&l| l == seen[0]) {
            break seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader in time: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Members publish their client URLs through Raft after they start (not recorded).
    let deadline = Instant::now() + WAIT;
    while clients[0]
        .cluster
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .map_or(true, |l| {
            l.into_inner()
                .members
                .iter()
                .any(|m| m.client_ur_ls.is_empty())
        })
    {
        assert!(
            Instant::now() < deadline,
            "client URLs not published in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = ids.iter().position(|&id| id == leader_id).expect("leader");
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let mut rec = Recorder::new(ids[leader]);
    rec.name(ids[leader], "FIRST_LEADER");
    rec.name(ids[f1], "FOLLOWER_1");
    rec.name(ids[f2], "FOLLOWER_2");
    for i in 0..3 {
        rec.name(cluster.client_url(i), &format!("CLIENT_URL_{i}"));
        rec.name(cluster.peer_url(i), &format!("PEER_URL_{i}"));
    }

    rec.self_id = ids[leader];
    rec.call(
        "leader: Maintenance.Status",
        clients[leader].maintenance.status(StatusRequest {}),
    )
    .await;
    rec.self_id = ids[f1];
    rec.call(
        "follower: Maintenance.Status",
        clients[f1].maintenance.status(StatusRequest {}),
    )
    .await;
    rec.call("follower: KV.Put", clients[f1].kv.put(put("k", "v")))
        .await;
    rec.call("follower: KV.Range", clients[f1].kv.range(range("k")))
        .await;
    rec.call(
        "follower: Lease.Grant 77",
        clients[f1]
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 100, id: 77 }),
    )
    .await;
    rec.call(
        "follower: Lease.TimeToLive 77",
        clients[f1]
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: 77,
                keys: false,
            }),
    )
    .await;
    // Which member leads is up to the election: the list compares by names, not ids.
    let list = async {
        let mut l = clients[f1]
            .cluster
            .clone()
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await?;
        for m in &mut l.get_mut().members {
            m.id = 0;
        }
        Ok(l)
    };
    rec.call("follower: Cluster.MemberList", list).await;
    rec.call(
        "follower: Maintenance.MoveLeader (error)",
        clients[f1]
            .maintenance
            .move_leader(MoveLeaderRequest { target_id: ids[f2] }),
    )
    .await;
    rec.self_id = ids[leader];
    rec.call(
        "leader: Maintenance.MoveLeader to itself",
        clients[leader].maintenance.move_leader(MoveLeaderRequest {
            target_id: ids[leader],
        }),
    )
    .await;
    rec.call(
        "leader: Maintenance.MoveLeader to unknown (error)",
        clients[leader]
            .maintenance
            .move_leader(MoveLeaderRequest { target_id: 4242 }),
    )
    .await;
    rec.call(
        "leader: Maintenance.MoveLeader to follower 1",
        clients[leader]
            .maintenance
            .move_leader(MoveLeaderRequest { target_id: ids[f1] }),
    )
    .await;
    // MoveLeader returns once the target leads; every member learns it soon after.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = true;
        for c in &mut clients {
            let l = c
                .maintenance
                .status(StatusRequest {})
                .await
                .map_or(0, |s| s.into_inner().leader);
            all &= l == ids[f1];
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every member saw the new leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rec.self_id = ids[f1];
    rec.call(
        "new leader: Maintenance.Status",
        clients[f1].maintenance.status(StatusRequest {}),
    )
    .await;
    rec.call("new leader: KV.Put", clients[f1].kv.put(put("k", "v2")))
        .await;
    rec.self_id = ids[leader];
    rec.call("old leader: KV.Range", clients[leader].kv.range(range("k")))
        .await;
    rec.call(
        "old leader: Maintenance.MoveLeader (error)",
        clients[leader].maintenance.move_leader(MoveLeaderRequest {
            target_id: ids[leader],
        }),
    )
    .await;
    rec.self_id = ids[f1];
    rec.call(
        "new leader: Maintenance.MoveLeader back",
        clients[f1].maintenance.move_leader(MoveLeaderRequest {
            target_id: ids[leader],
        }),
    )
    .await;
    rec.steps
}

/// Goal: MoveLeader to another member answers without a header, as etcd 3.4.23's, and a
/// follower fills headers with its own member id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_and_follower_headers_match_etcd() {
    let Some(etcd_bin) = retcd_testkit::etcd_bin::etcd() else {
        return;
    };
    let run = |binary: std::path::PathBuf| async move {
        let spec = ClusterSpec::new(binary)
            .size(3)
            .heartbeat_ms(50)
            .election_ms(500);
        let cluster = common::blocking(|| Cluster::start(spec)).expect("start the cluster");
        let steps = cluster_session(&cluster).await;
        common::blocking(move || drop(cluster));
        steps
    };
    let want = run(etcd_bin).await;
    let got = run(env!("CARGO_BIN_EXE_retcd").into()).await;
    let report = diff(&want, &got);
    assert!(
        report.is_empty(),
        "retcd's responses differ from etcd 3.4.23's (* header, ~ body only):\n{report}"
    );
}
