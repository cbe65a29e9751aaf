//! Hostile inputs for the Watch, Lease, Lock, Election, Cluster and Maintenance services
//! (issue 13, acceptance 4), as `hostile_inputs.rs` does for KV: for each service a seeded
//! generator sends thousands of well-formed requests with hostile fields (unknown enum
//! numbers, negative, zero and huge numbers, empty and inverted ranges, `"\0"` range ends,
//! ids that exist and ids that do not, malformed URLs) through our raw tonic clients to a
//! real `retcd`, one fresh server per service.
//!
//! The oracle is etcd 3.4.23: a model of what the test did so far (the keys it wrote, the
//! leases, locks, leaders, members and alarms it made) says what etcd answers each
//! request, and every answer is checked against it: the gRPC code and the exact message
//! of every error, and the parts of every success the model pins down (for Watch, every
//! response of the stream: created, canceled, compact revision, cancel reason, header
//! revision, and each watcher's events, exactly). After the barrage the server must be
//! healthy, serve a put and a linearizable get, and its log must hold no panic; and each
//! service's generator must have produced both successes and errors.
//!
//! Where retcd deliberately answers otherwise, a comment at that input class says why,
//! because etcd crashes or damages itself there, or because retcd follows etcd 3.5 (the
//! project's target), which changed the answer:
//! - Watch, a negative start revision: created and canceled at once with ErrCompacted
//!   (etcd main). 3.4.23 registers the watcher and cancels it with compact_revision -1,
//!   except -1 before any compaction, which breaks catch-up for the stream's other
//!   watchers (etcd PR 20693).
//! - Watch, a progress request: answered once every watcher is synced, not at all on a
//!   stream without watchers (etcd 3.5.8+); 3.4.23 answers at once, always.
//! - HashKV at the compact revision: hashed (etcd 3.5.5+; 3.4.23 says compacted). At a
//!   negative revision both succeed; 3.4.23 hashes only the bucket name, retcd the
//!   current revision.
//! - Alarm with an unknown action, or ACTIVATE NONE for member 0: InvalidArgument (etcd
//!   3.4.23 dies, the second at every start).
//! - MemberUpdate with URLs Go cannot parse: MemberBadUrls (etcd stores them, and every
//!   other member panics applying the update); of a learner: it stays a learner (etcd
//!   3.4 drops the flag from its store).
//! - With CORRUPT and NOSPACE both raised, writes get CORRUPT's answer (etcd's order
//!   after a restart; at run time etcd answers for whichever was raised last).
//!
//! `RETCD_HOSTILE_SEED` replays a seed (every failure prints it); `RETCD_HOSTILE_REQUESTS`
//! sets the requests per service (default 2,000); `RETCD_HOSTILE_TRACE=1` prints every
//! request and answer.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::cluster_client::ClusterClient;
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::lease_client::LeaseClient;
use retcd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use retcd_api::etcdserverpb::watch_client::WatchClient;
use retcd_api::etcdserverpb::{
    AlarmMember, AlarmRequest, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    HashKvRequest, HashRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest,
    MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
    MoveLeaderRequest, PutRequest, RangeRequest, StatusRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse, watch_request,
};
use retcd_api::mvccpb::{Event, KeyValue, event::EventType};
use retcd_api::v3electionpb::election_client::ElectionClient;
use retcd_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use retcd_api::v3lockpb::lock_client::LockClient;
use retcd_api::v3lockpb::{LockRequest, UnlockRequest};
use retcd_prng::SplitMix64;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::{Retcd, env_u64, http_get};

/// The message of the status a call gets when the test's own deadline passes first.
const CLIENT_DEADLINE: &str = "the test's deadline passed";
/// How long a call that must answer may take (generous: a loaded machine is not a bug).
const ANSWER: Duration = Duration::from_secs(10);
/// How long a call expected to block (a Lock on a held lock) is given.
const BLOCKED: Duration = Duration::from_millis(100);
/// A lease the test keeps for its whole run (it never expires meanwhile).
const STABLE_TTL: i64 = 3600;
/// A lock or leadership on a lease nobody keeps alive (lease 0: etcd grants a 60 s
/// session) is released by the test before this age, so that it never expires under it.
const SESSION_SAFE_AGE: Duration = Duration::from_secs(40);

// ---- the oracle's vocabulary

/// One answer etcd 3.4.23 gives (or, where noted, retcd's deliberate answer).
#[derive(Clone, Debug, PartialEq)]
enum Want {
    Ok,
    /// One of etcd's errors: its code and its exact message.
    Etcd(EtcdError),
    /// An error of the Lock and Election services: etcd runs a client inside the server,
    /// so every error reaches the wire as `Unknown` with etcd's message.
    Embedded(EtcdError),
    /// retcd's clean refusal where etcd crashes or damages itself (no etcd message).
    Refused(Code, String),
    /// The call blocks: the test's deadline passes first.
    Blocked,
}

impl Want {
    fn matches<T>(&self, got: &Result<T, Status>) -> bool {
        match (self, got) {
            (Want::Ok, Ok(_)) => true,
            (Want::Etcd(e), Err(s)) => s.code() == e.code() && s.message() == e.message(),
            (Want::Embedded(e), Err(s)) => s.code() == Code::Unknown && s.message() == e.message(),
            (Want::Refused(code, msg), Err(s)) => s.code() == *code && s.message() == msg,
            (Want::Blocked, Err(s)) => {
                s.code() == Code::DeadlineExceeded && s.message() == CLIENT_DEADLINE
            }
            _ => false,
        }
    }
}

/// Awaits `call` for at most `limit`; the test's deadline becomes a `DeadlineExceeded`
/// status with [`CLIENT_DEADLINE`] as its message (dropping the call cancels it).
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(CLIENT_DEADLINE)),
    }
}

/// The generator: `SplitMix64`, with percentages and this test's values on top.
struct Rng(SplitMix64);

impl std::ops::Deref for Rng {
    type Target = SplitMix64;
    fn deref(&self) -> &SplitMix64 {
        &self.0
    }
}

impl std::ops::DerefMut for Rng {
    fn deref_mut(&mut self) -> &mut SplitMix64 {
        &mut self.0
    }
}

impl Rng {
    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn value(&mut self) -> Bytes {
        let len = self.below(12) as usize;
        Bytes::from((0..len).map(|_| self.below(256) as u8).collect::<Vec<u8>>())
    }
}

/// One service's run: its server, seed, and the tally of answers by input class.
struct Run {
    service: &'static str,
    seed: u64,
    requests: u64,
    server: Retcd,
    _dir: tempfile::TempDir,
    step: u64,
    /// Input class -> (successes, errors). Classes starting with "kv:" are the test's
    /// own writes, not requests to the service.
    tally: BTreeMap<String, (u64, u64)>,
    /// `RETCD_HOSTILE_TRACE=1`: print every request and answer.
    trace: bool,
}

impl Run {
    /// Starts a fresh server for `service`; the generator's seed is the run's seed plus
    /// `salt`, so each service draws its own sequence from one seed.
    fn start(service: &'static str, salt: u64, extra: &[&str]) -> (Run, Rng) {
        let seed = env_u64("RETCD_HOSTILE_SEED").unwrap_or(20261207);
        let requests = env_u64("RETCD_HOSTILE_REQUESTS").unwrap_or(2000);
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Retcd::start(&dir.path().join("data"), extra);
        eprintln!("{service}: seed {seed}, {requests} requests");
        let run = Run {
            service,
            seed,
            requests,
            server,
            _dir: dir,
            step: 0,
            tally: BTreeMap::new(),
            trace: env_u64("RETCD_HOSTILE_TRACE").is_some_and(|t| t != 0),
        };
        (run, Rng(SplitMix64::new(seed.wrapping_add(salt))))
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let log = self.server.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{}: seed {} (RETCD_HOSTILE_SEED={} replays it), step {}: {what}\n\
             server log (last lines):\n{}",
            self.service,
            self.seed,
            self.seed,
            self.step,
            tail.join("\n")
        )
    }

    fn ensure(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    fn count(&mut self, class: &str, ok: bool) {
        let e = self.tally.entry(class.to_string()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Checks an answer against the answers etcd may give; tallies it under `class`.
    fn check<T: Debug>(
        &mut self,
        class: &str,
        req: &dyn Debug,
        wants: &[Want],
        got: Result<T, Status>,
    ) -> Option<T> {
        self.step += 1;
        if self.trace {
            eprintln!("{} {class}: {req:?}\n  -> {got:?}", self.step);
        }
        if !wants.iter().any(|w| w.matches(&got)) {
            self.fail(format!(
                "{class}: {req:?}\n  want one of {wants:?}\n  got {got:?}"
            ));
        }
        self.count(class, got.is_ok());
        got.ok()
    }

    /// (successes, errors) of the service's requests.
    fn totals(&self) -> (u64, u64) {
        self.tally
            .iter()
            .filter(|(class, _)| !class.starts_with("kv:"))
            .fold((0, 0), |(o, e), (_, &(ok, err))| (o + ok, e + err))
    }

    fn service_requests(&self) -> u64 {
        let (ok, err) = self.totals();
        ok + err
    }

    /// Prints the tally, requires both outcomes, then that the server still serves a put
    /// and a linearizable get and never panicked.
    async fn finish(&mut self) {
        let mut table = String::new();
        for (class, (ok, err)) in &self.tally {
            table.push_str(&format!("  {class:<48} ok {ok:>5}  err {err:>5}\n"));
        }
        let (ok, err) = self.totals();
        eprintln!(
            "{}: {} requests ({ok} ok, {err} errors), seed {}:\n{table}",
            self.service,
            ok + err,
            self.seed
        );
        self.ensure(ok + err >= self.requests, || {
            format!("only {} requests were sent", ok + err)
        });
        // The generator must reach both outcomes, or it proves little.
        self.ensure(ok * 20 >= ok + err && err * 20 >= ok + err, || {
            format!("ok/err {ok}/{err}: the generator is lopsided\n{table}")
        });
        let (status, body) = http_get(self.server.port, "/health").expect("health");
        self.ensure(status == 200 && body.contains("\"true\""), || {
            format!("unhealthy after the barrage: {status} {body}")
        });
        let mut kv = KvClient::connect(self.server.endpoint())
            .await
            .expect("connect");
        let put = PutRequest {
            key: "after".into(),
            value: "fine".into(),
            ..Default::default()
        };
        let put = within(ANSWER, kv.put(put)).await;
        self.ensure(put.is_ok(), || format!("put after the barrage: {put:?}"));
        let got = within(
            ANSWER,
            kv.range(RangeRequest {
                key: "after".into(),
                ..Default::default()
            }),
        )
        .await;
        let value = got
            .as_ref()
            .ok()
            .and_then(|g| g.kvs.first())
            .map(|kv| kv.value.clone());
        self.ensure(value.as_deref() == Some(b"fine".as_slice()), || {
            format!("linearizable get after the barrage: {got:?}")
        });
        self.ensure(!self.server.log().contains("panicked"), || {
            "the server log holds a panic".to_string()
        });
    }
}

async fn kv_client(run: &Run) -> KvClient<Channel> {
    KvClient::connect(run.server.endpoint())
        .await
        .expect("connect KV")
}

/// (cluster id, member id) of the server, as its responses carry them.
async fn ids(run: &Run) -> (u64, u64) {
    let mut m = MaintenanceClient::connect(run.server.endpoint())
        .await
        .expect("connect maintenance");
    let s = within(ANSWER, m.status(StatusRequest {}))
        .await
        .expect("status");
    let h = s.header.expect("status header");
    (h.cluster_id, h.member_id)
}

/// etcd's prefix end.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The lease part of a lock or election key, as etcd (Go's `%x` of the signed id).
fn lease_hex(lease: i64) -> String {
    if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    }
}

// ---- Watch

/// Keys the watchers ask for ("" is the key "\0" to etcd) and keys the test writes.
const WATCH_KEYS: &[&[u8]] = &[
    b"",
    b"\0",
    b"a",
    b"b",
    b"c",
    b"foo",
    b"foo/",
    b"foo/x",
    b"zz",
    b"\xff",
    b"\xff\xff",
];
const WRITE_KEYS: &[&[u8]] = &[
    b"\0",
    b"a",
    b"b",
    b"c",
    b"foo",
    b"foo/x",
    b"foo/y",
    b"zz",
    b"\xff",
    b"\xff\xff",
];

const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The keyspace as the test wrote it: every change, so each watcher's events are known.
#[derive(Default)]
struct Keyspace {
    rev: i64,
    compact: i64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    /// Every change in revision order, with `prev_kv` whenever the key existed before.
    history: Vec<Event>,
    /// Revisions that were a put (a compaction there keeps that revision's change).
    put_revs: Vec<i64>,
}

impl Keyspace {
    fn put(&mut self, key: &[u8], value: Bytes) {
        self.rev += 1;
        let prev = self.kvs.get(key).cloned();
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease: 0,
        };
        self.kvs.insert(key.to_vec(), kv.clone());
        self.history.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        self.put_revs.push(self.rev);
    }

    /// Deletes the existing keys in `[start, end)` (`end` empty: `start` alone; `"\0"`:
    /// from `start` on) at one revision; returns how many.
    fn delete(&mut self, start: &[u8], end: &[u8]) -> i64 {
        let doomed: Vec<Vec<u8>> = self
            .kvs
            .keys()
            .filter(|k| in_range(start, end, k))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return 0;
        }
        self.rev += 1;
        for k in &doomed {
            let prev = self.kvs.remove(k);
            self.history.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: Bytes::copy_from_slice(k),
                    mod_revision: self.rev,
                    ..Default::default()
                }),
                prev_kv: prev,
            });
        }
        doomed.len() as i64
    }
}

/// Whether `key` is in etcd's range `[start, end)`: `end` empty = `start` alone, `"\0"` =
/// every key from `start` on.
fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

/// The test's writes for the watchers, checked against the model as they go.
async fn watch_write(run: &mut Run, r: &mut Rng, kv: &mut KvClient<Channel>, ks: &mut Keyspace) {
    let key = r.pick(WRITE_KEYS);
    match r.below(5) {
        0..=2 => {
            let value = r.value();
            let req = PutRequest {
                key: Bytes::from_static(key),
                value: value.clone(),
                ..Default::default()
            };
            let got = within(ANSWER, kv.put(req.clone())).await;
            if let Some(resp) = run.check("kv: put", &req, &[Want::Ok], got) {
                ks.put(key, value);
                let rev = resp.header.map_or(0, |h| h.revision);
                run.ensure(rev == ks.rev, || format!("put at {rev}, model {}", ks.rev));
            }
        }
        n => {
            let end: Vec<u8> = if n == 3 {
                Vec::new()
            } else {
                r.pick(&[
                    b"\0".to_vec(),
                    prefix_end(key),
                    b"zz".to_vec(),
                    b"\xff".to_vec(),
                ])
            };
            let req = DeleteRangeRequest {
                key: Bytes::from_static(key),
                range_end: end.clone().into(),
                prev_kv: false,
            };
            let got = within(ANSWER, kv.delete_range(req.clone())).await;
            // An inverted range deletes nothing, as etcd.
            if let Some(resp) = run.check("kv: delete", &req, &[Want::Ok], got) {
                let deleted = ks.delete(key, &end);
                run.ensure(resp.deleted == deleted, || {
                    format!("{req:?} deleted {}, model {deleted}", resp.deleted)
                });
                let rev = resp.header.map_or(0, |h| h.revision);
                run.ensure(rev == ks.rev, || {
                    format!("delete at {rev}, model {}", ks.rev)
                });
            }
        }
    }
}

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    /// First revision it is owed.
    from: i64,
    noput: bool,
    nodelete: bool,
    prev_kv: bool,
    /// Its start revision is compacted: the server cancels it with the compact revision.
    doomed: bool,
    /// Its created response was read: responses read before it were sent before it
    /// existed.
    announced: bool,
    got: Vec<Event>,
}

impl Watcher {
    /// Every event it is owed up to `upto`.
    fn owed(&self, ks: &Keyspace, upto: i64) -> Vec<Event> {
        ks.history
            .iter()
            .filter(|e| {
                let kv = e.kv.as_ref().expect("kv");
                let put = e.r#type == EventType::Put as i32;
                kv.mod_revision >= self.from
                    && kv.mod_revision <= upto
                    && in_range(&self.key, &self.end, &kv.key)
                    && if put { !self.noput } else { !self.nodelete }
            })
            .map(|e| Event {
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
                ..e.clone()
            })
            .collect()
    }
}

/// Events equal, but an event at the compact revision may lack `prev_kv`: the version
/// before it is compacted (etcd then sends none).
fn same_events(got: &[Event], owed: &[Event], compact: i64) -> bool {
    got.len() == owed.len()
        && got.iter().zip(owed).all(|(g, o)| {
            g == o
                || (o.kv.as_ref().is_some_and(|kv| kv.mod_revision == compact)
                    && g.prev_kv.is_none()
                    && Event {
                        prev_kv: None,
                        ..o.clone()
                    } == *g)
        })
}

/// A control response the stream owes, in order.
#[derive(Debug)]
enum Ctl {
    Created { id: i64, rev: i64 },
    Failed { reason: &'static str, rev: i64 },
    Canceled { id: i64, rev: i64 },
}

/// One Watch stream and the model of its watchers.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
    ids: (u64, u64),
    watchers: BTreeMap<i64, Watcher>,
    /// Canceled by the client, cancel response not read yet (events may precede it).
    canceling: BTreeMap<i64, Watcher>,
    next_auto: i64,
    control: VecDeque<Ctl>,
    progress_asked: u64,
    progress_got: u64,
    last_progress: i64,
    requests: u64,
}

impl Stream {
    async fn open(run: &Run, client: &mut WatchClient<Channel>, ids: (u64, u64)) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let resp = within(ANSWER, client.watch(ReceiverStream::new(rx))).await;
        let rx = resp.unwrap_or_else(|e| run.fail(format!("open a watch stream: {e:?}")));
        Stream {
            tx,
            rx,
            ids,
            watchers: BTreeMap::new(),
            canceling: BTreeMap::new(),
            next_auto: 0,
            control: VecDeque::new(),
            progress_asked: 0,
            progress_got: 0,
            last_progress: 0,
            requests: 0,
        }
    }

    async fn send(&mut self, run: &Run, req: WatchRequest) {
        self.requests += 1;
        if self.tx.send(req).await.is_err() {
            run.fail("the watch stream's request side closed");
        }
    }

    /// Reads every response already there, and then, while the stream owes control
    /// responses, waits for them.
    async fn pump(&mut self, run: &mut Run, ks: &Keyspace) {
        loop {
            let next = if self.control.is_empty() {
                match self.rx.message().now_or_never() {
                    Some(m) => m,
                    None => return,
                }
            } else {
                match tokio::time::timeout(ANSWER, self.rx.message()).await {
                    Ok(m) => m,
                    Err(_) => run.fail(format!("no answer; the stream owes {:?}", self.control)),
                }
            };
            match next {
                Ok(Some(resp)) => self.on_response(run, ks, resp),
                other => run.fail(format!("the watch stream ended: {other:?}")),
            }
        }
    }

    fn on_response(&mut self, run: &mut Run, ks: &Keyspace, resp: WatchResponse) {
        let h = resp.header.unwrap_or_default();
        run.ensure(
            resp.header.is_some() && (h.cluster_id, h.member_id) == self.ids,
            || format!("a response without this member's header: {resp:?}"),
        );
        run.ensure(!resp.fragment, || {
            format!("fragment on a small response: {resp:?}")
        });
        let id = resp.watch_id;
        if resp.created {
            let bare = resp.events.is_empty() && resp.compact_revision == 0;
            match self.control.pop_front() {
                Some(Ctl::Created { id: want, rev }) => {
                    run.ensure(
                        bare && id == want
                            && !resp.canceled
                            && resp.cancel_reason.is_empty()
                            && h.revision == rev,
                        || format!("want created {want} at {rev}, got {resp:?}"),
                    );
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.announced = true;
                    }
                }
                Some(Ctl::Failed { reason, rev }) => run.ensure(
                    bare && id == -1
                        && resp.canceled
                        && resp.cancel_reason == reason
                        && h.revision == rev,
                    || format!("want a failed create ({reason}) at {rev}, got {resp:?}"),
                ),
                other => run.fail(format!("want {other:?}, got {resp:?}")),
            }
        } else if resp.canceled && resp.compact_revision != 0 {
            // The server's cancel of a watcher whose start revision is compacted: no
            // reason (etcd 3.4 says it with compact_revision alone), header revision 0.
            let doomed = self.watchers.get(&id).is_some_and(|w| w.doomed);
            run.ensure(
                doomed
                    && resp.compact_revision == ks.compact
                    && h.revision == 0
                    && resp.cancel_reason.is_empty()
                    && resp.events.is_empty(),
                || {
                    format!(
                        "an unexpected compaction cancel (compact {}): {resp:?}",
                        ks.compact
                    )
                },
            );
            self.watchers.remove(&id);
        } else if resp.canceled {
            match self.control.pop_front() {
                Some(Ctl::Canceled { id: want, rev }) => run.ensure(
                    id == want
                        && h.revision == rev
                        && resp.cancel_reason.is_empty()
                        && resp.events.is_empty(),
                    || format!("want canceled {want} at {rev}, got {resp:?}"),
                ),
                other => run.fail(format!("want {other:?}, got {resp:?}")),
            }
            self.canceling.remove(&id);
        } else if !resp.events.is_empty() {
            let last = resp
                .events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map_or(0, |kv| kv.mod_revision);
            run.ensure(h.revision >= last && h.revision <= ks.rev, || {
                format!(
                    "events up to {last} under header revision {}: {resp:?}",
                    h.revision
                )
            });
            let Some(w) = self
                .watchers
                .get_mut(&id)
                .or_else(|| self.canceling.get_mut(&id))
            else {
                run.fail(format!(
                    "events for watcher {id}, which does not exist: {resp:?}"
                ));
            };
            run.ensure(!w.doomed, || {
                format!("events for a compacted watcher: {resp:?}")
            });
            w.got.extend(resp.events);
            let owed = w.owed(ks, ks.rev);
            let n = w.got.len();
            run.ensure(n <= owed.len() && same_events(&w.got, &owed[..n], ks.compact), || {
                format!(
                    "watcher {id} (key {:?}, end {:?}, from {}) got events it is not owed:\n  got {:?}\n  owed {:?}",
                    w.key, w.end, w.from, w.got, owed
                )
            });
        } else if id == -1 {
            // A progress response: every watcher has had every event up to its revision
            // (retcd waits until all are synced, as etcd 3.5 does).
            self.progress_got += 1;
            run.ensure(self.progress_got <= self.progress_asked, || {
                format!("a progress response nobody asked for: {resp:?}")
            });
            run.ensure(
                h.revision <= ks.rev && h.revision >= self.last_progress,
                || {
                    format!(
                        "progress at {} (store {}, last {})",
                        h.revision, ks.rev, self.last_progress
                    )
                },
            );
            self.last_progress = h.revision;
            let live = self.watchers.iter().chain(&self.canceling);
            for (wid, w) in live.filter(|(_, w)| w.announced) {
                let owed = w.owed(ks, h.revision);
                run.ensure(!w.doomed && same_events(&w.got, &owed, ks.compact), || {
                    format!(
                        "progress at {} but watcher {wid} (from {}, doomed {}) has\n  {:?}\n  owed {:?}",
                        h.revision, w.from, w.doomed, w.got, owed
                    )
                });
            }
        } else {
            run.fail(format!("an unexpected response: {resp:?}"));
        }
    }

    /// Ends the stream: waits until a progress response at the current revision proved
    /// that every watcher got exactly its events.
    async fn close(mut self, run: &mut Run, ks: &Keyspace) {
        if self.watchers.is_empty() {
            // A stream without watchers is answered no progress (etcd 3.5): add one.
            let id = self.auto_id();
            self.watchers.insert(
                id,
                Watcher {
                    key: b"a".to_vec(),
                    end: Vec::new(),
                    from: ks.rev + 1,
                    noput: false,
                    nodelete: false,
                    prev_kv: false,
                    doomed: false,
                    announced: false,
                    got: Vec::new(),
                },
            );
            self.control.push_back(Ctl::Created { id, rev: ks.rev });
            let create = WatchCreateRequest {
                key: "a".into(),
                ..Default::default()
            };
            let req = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            };
            self.send(run, req).await;
        }
        self.progress_asked += 1;
        let req = WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        };
        self.send(run, req).await;
        let deadline = Instant::now() + ANSWER;
        while !(self.control.is_empty() && self.last_progress == ks.rev && self.progress_got > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.message()).await {
                Ok(Ok(Some(resp))) => self.on_response(run, ks, resp),
                other => run.fail(format!(
                    "no progress at {} before closing the stream: {other:?}",
                    ks.rev
                )),
            }
        }
        run.ensure(self.canceling.is_empty(), || {
            "a cancel went unanswered".into()
        });
    }

    fn auto_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_auto) {
            self.next_auto += 1;
        }
        self.next_auto += 1;
        self.next_auto - 1
    }
}

/// A create with hostile fields, and the class of input it is.
fn hostile_create(r: &mut Rng, ks: &Keyspace, s: &Stream) -> (WatchCreateRequest, &'static str) {
    let key = r.pick(WATCH_KEYS).to_vec();
    let range_end = match r.below(20) {
        0..=7 => Vec::new(),
        8..=10 => b"\0".to_vec(),
        11..=13 => prefix_end(&key),
        14 => key.clone(),
        15 => b"\0\0".to_vec(),
        _ => r.pick(WATCH_KEYS).to_vec(),
    };
    let (start_revision, class) = match r.below(20) {
        0..=6 => (0, "create: from now"),
        7 => (ks.compact, "create: at the compact revision"),
        8 | 9 if ks.compact > 1 => (
            1 + r.below((ks.compact - 1) as u64) as i64,
            "create: compacted start",
        ),
        10 | 11 => (
            ks.compact + r.below((ks.rev - ks.compact + 1) as u64) as i64,
            "create: past start",
        ),
        12 | 13 => (r.pick(&[-1, -5, -1000, i64::MIN]), "create: negative start"),
        14..=16 => (
            r.pick(&[ks.rev + 1, ks.rev + 3, ks.rev + 20, 1_000_000, i64::MAX]),
            "create: future start",
        ),
        _ => (ks.rev, "create: current start"),
    };
    let doomed = start_revision > 0 && start_revision < ks.compact;
    let active: Vec<i64> = s
        .watchers
        .iter()
        .filter(|(_, w)| !w.doomed)
        .map(|(&id, _)| id)
        .collect();
    let watch_id = match r.below(10) {
        // A compacted watcher is canceled at a time of the server's choosing: an
        // automatic id (below the counter forever) keeps its id out of every later pick.
        _ if doomed => 0,
        0..=5 => 0,
        6 | 7 => r.pick(&[1, 2, 3, 7, 100, -1, -5, i64::MAX, i64::MIN]),
        _ if !active.is_empty() => r.pick(&active),
        _ => 0,
    };
    let watch_id = if s.watchers.get(&watch_id).is_some_and(|w| w.doomed) {
        0
    } else {
        watch_id
    };
    let filters = if r.chance(70) {
        Vec::new()
    } else {
        (0..1 + r.below(3))
            .map(|_| r.pick(&[0, 1, 1, 0, 2, 99, -3, i32::MAX, i32::MIN]))
            .collect()
    };
    let req = WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        start_revision,
        progress_notify: r.flag(),
        filters,
        prev_kv: r.flag(),
        watch_id,
        fragment: r.chance(30),
    };
    (req, class)
}

/// What the stream owes for `create`: the model's decision, as etcd's `recvLoop` and
/// `watchStream.Watch` make it.
fn expect_create(
    run: &mut Run,
    s: &mut Stream,
    ks: &Keyspace,
    c: &WatchCreateRequest,
    class: &str,
) {
    let key = if c.key.is_empty() {
        vec![0]
    } else {
        c.key.to_vec()
    };
    let end = c.range_end.to_vec();
    let reason = if c.start_revision < 0 {
        // etcd 3.4.23 registers the watcher and cancels it at once with compact_revision
        // -1 (or the compact revision), except -1 before any compaction, which then
        // silently breaks catch-up for the stream's other watchers (etcd PR 20693).
        // retcd refuses it at once, as etcd main's recvLoop does.
        Some(ERR_COMPACTED)
    } else if !matches!(end.as_slice(), [] | [0]) && key >= end {
        Some(ERR_EMPTY_RANGE)
    } else if c.watch_id != 0 && s.watchers.contains_key(&c.watch_id) {
        Some(ERR_DUPLICATE_ID)
    } else {
        None
    };
    if let Some(reason) = reason {
        s.control.push_back(Ctl::Failed {
            reason,
            rev: ks.rev,
        });
        run.count(&format!("{class} [{reason}]"), false);
        return;
    }
    let id = if c.watch_id == 0 {
        s.auto_id()
    } else {
        c.watch_id
    };
    let doomed = c.start_revision > 0 && c.start_revision < ks.compact;
    let from = if c.start_revision == 0 {
        ks.rev + 1
    } else {
        c.start_revision
    };
    s.watchers.insert(
        id,
        Watcher {
            key,
            end,
            from,
            noput: c.filters.contains(&0),
            nodelete: c.filters.contains(&1),
            prev_kv: c.prev_kv,
            doomed,
            announced: false,
            got: Vec::new(),
        },
    );
    s.control.push_back(Ctl::Created { id, rev: ks.rev });
    // A compacted start is an error delivered in-band, after the created response.
    run.count(class, !doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_watch_requests() {
    let (mut run, mut r) = Run::start("watch", 1, &[]);
    let ids = ids(&run).await;
    let mut kv = kv_client(&run).await;
    let mut client = WatchClient::connect(run.server.endpoint())
        .await
        .expect("connect watch");
    let mut ks = Keyspace {
        rev: 1,
        compact: -1,
        ..Default::default()
    };
    // History to watch from, then a compaction in the middle of it (at a put, so the
    // change at the compact revision stays readable).
    while ks.rev < 40 {
        watch_write(&mut run, &mut r, &mut kv, &mut ks).await;
    }
    compact_watch_store(&mut run, &mut r, &mut kv, &mut ks).await;

    let mut stream = Stream::open(&run, &mut client, ids).await;
    let mut stream_len = 100 + r.below(300);
    let mut sent = 0;
    while sent < run.requests {
        let union = match r.below(100) {
            0..=31 => {
                let (c, class) = hostile_create(&mut r, &ks, &stream);
                expect_create(&mut run, &mut stream, &ks, &c, class);
                Some(watch_request::RequestUnion::CreateRequest(c))
            }
            32..=37 => {
                // Every field at its default: the key "\0" from now.
                let c = WatchCreateRequest::default();
                expect_create(&mut run, &mut stream, &ks, &c, "create: all defaults");
                Some(watch_request::RequestUnion::CreateRequest(c))
            }
            38..=51 => {
                let known: Vec<i64> = stream
                    .watchers
                    .iter()
                    .filter(|(_, w)| !w.doomed)
                    .map(|(&id, _)| id)
                    .collect();
                let watch_id = if !known.is_empty() && r.chance(55) {
                    r.pick(&known)
                } else {
                    r.pick(&[0, -1, 5, 12345, i64::MAX, i64::MIN, stream.next_auto])
                };
                match stream.watchers.get(&watch_id).map(|w| w.doomed) {
                    Some(false) => {
                        let w = stream.watchers.remove(&watch_id).expect("known");
                        stream.canceling.insert(watch_id, w);
                        let rev = ks.rev;
                        stream
                            .control
                            .push_back(Ctl::Canceled { id: watch_id, rev });
                        run.count("cancel: known id", true);
                    }
                    // A compacted watcher's cancel races the server's: not sent.
                    Some(true) => continue,
                    // etcd answers nothing (its Cancel error is dropped).
                    None => run.count("cancel: unknown id", true),
                }
                let cancel = WatchCancelRequest { watch_id };
                Some(watch_request::RequestUnion::CancelRequest(cancel))
            }
            52..=59 => {
                // Answered once every watcher is synced; not at all on a stream without
                // watchers (etcd 3.5; etcd 3.4.23 answers at once, watchers or not).
                if !stream.watchers.is_empty() {
                    stream.progress_asked += 1;
                }
                run.count("progress request", true);
                let p = WatchProgressRequest {};
                Some(watch_request::RequestUnion::ProgressRequest(p))
            }
            60..=64 => {
                // No request set: ignored, no answer, the stream stays open.
                run.count("request with no union set", true);
                None
            }
            _ => {
                watch_write(&mut run, &mut r, &mut kv, &mut ks).await;
                stream.pump(&mut run, &ks).await;
                continue;
            }
        };
        let req = WatchRequest {
            request_union: union,
        };
        stream.send(&run, req).await;
        sent += 1;
        stream.pump(&mut run, &ks).await;
        if stream.requests >= stream_len {
            stream.close(&mut run, &ks).await;
            if r.chance(60) {
                compact_watch_store(&mut run, &mut r, &mut kv, &mut ks).await;
            }
            stream = Stream::open(&run, &mut client, ids).await;
            stream_len = 100 + r.below(300);
        }
    }
    stream.close(&mut run, &ks).await;
    run.finish().await;
}

/// Compacts at a put revision past the current compaction (when there is one), between
/// streams: no watcher is catching up then, so none is canceled at a time the model
/// cannot know.
async fn compact_watch_store(
    run: &mut Run,
    r: &mut Rng,
    kv: &mut KvClient<Channel>,
    ks: &mut Keyspace,
) {
    let candidates: Vec<i64> = ks
        .put_revs
        .iter()
        .copied()
        .filter(|&rev| rev > ks.compact && rev + 3 <= ks.rev)
        .collect();
    if candidates.is_empty() {
        return;
    }
    let revision = r.pick(&candidates);
    let req = CompactionRequest {
        revision,
        physical: r.flag(),
    };
    let got = within(ANSWER, kv.compact(req)).await;
    if run.check("kv: compact", &req, &[Want::Ok], got).is_some() {
        ks.compact = revision;
    }
}

// ---- Lease

/// A lease the test granted: `stable` ones outlive the run; the others have the minimum
/// TTL and may be gone at any time.
#[derive(Clone, Debug)]
struct LeaseModel {
    granted: i64,
    stable: bool,
    keys: BTreeSet<Vec<u8>>,
}

/// What the server knows of lease `id`, as far as the model can tell.
enum Known {
    Stable,
    Volatile,
    Absent,
}

fn known(leases: &BTreeMap<i64, LeaseModel>, id: i64) -> Known {
    match leases.get(&id) {
        Some(l) if l.stable => Known::Stable,
        Some(_) => Known::Volatile,
        None => Known::Absent,
    }
}

/// An id to ask about: granted (stable or not), revoked, or never granted.
fn lease_id(r: &mut Rng, leases: &BTreeMap<i64, LeaseModel>, revoked: &[i64]) -> i64 {
    let granted: Vec<i64> = leases.keys().copied().collect();
    match r.below(10) {
        0..=4 if !granted.is_empty() => r.pick(&granted),
        5 if !revoked.is_empty() => r.pick(revoked),
        _ => {
            let id = r.pick(&[0, -1, -424242, 999_999_999, i64::MIN + 1, 77]);
            if leases.contains_key(&id) { 0 } else { id }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lease_requests() {
    let (mut run, mut r) = Run::start("lease", 2, &[]);
    let min_ttl = 2; // ceil(1.5 x the default 1 s election timeout), as etcd
    let mut kv = kv_client(&run).await;
    let mut lease = LeaseClient::connect(run.server.endpoint())
        .await
        .expect("connect lease");
    let mut leases: BTreeMap<i64, LeaseModel> = BTreeMap::new();
    let mut revoked: Vec<i64> = Vec::new();
    let mut next_id = 0i64;
    let mut keep_alive: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        tonic::Streaming<LeaseKeepAliveResponse>,
    )> = None;

    while run.service_requests() < run.requests {
        match r.below(100) {
            0..=29 => {
                next_id += 1;
                let id = match r.below(10) {
                    0..=3 => 0,
                    4 | 5 if !leases.is_empty() => {
                        r.pick(&leases.keys().copied().collect::<Vec<_>>())
                    }
                    6 if !revoked.is_empty() => r.pick(&revoked),
                    7 => -(1000 + next_id),
                    8 => r.pick(&[i64::MIN, i64::MAX, -1]),
                    _ => 10_000 + next_id,
                };
                let ttl = r.pick(&[
                    -5,
                    0,
                    i64::MIN,
                    1,
                    2,
                    5,
                    STABLE_TTL,
                    86_400,
                    9_000_000_000,
                    9_000_000_001,
                    i64::MAX,
                ]);
                let req = LeaseGrantRequest { ttl, id };
                let (class, wants) = if ttl > 9_000_000_000 {
                    // Checked before the id, as etcd's apply does.
                    (
                        "grant: TTL above 9e9",
                        vec![Want::Etcd(EtcdError::LeaseTtlTooLarge)],
                    )
                } else {
                    match known(&leases, id) {
                        Known::Stable => {
                            ("grant: id in use", vec![Want::Etcd(EtcdError::LeaseExist)])
                        }
                        Known::Volatile => (
                            "grant: id of an expiring lease",
                            vec![Want::Ok, Want::Etcd(EtcdError::LeaseExist)],
                        ),
                        Known::Absent if ttl < 1 => ("grant: TTL negative or 0", vec![Want::Ok]),
                        Known::Absent if id < 0 => ("grant: negative id", vec![Want::Ok]),
                        Known::Absent if id == 0 => ("grant: automatic id", vec![Want::Ok]),
                        Known::Absent => ("grant: chosen id", vec![Want::Ok]),
                    }
                };
                let got = within(ANSWER, lease.lease_grant(req)).await;
                if let Some(resp) = run.check(class, &req, &wants, got) {
                    let granted = ttl.max(min_ttl);
                    run.ensure(
                        resp.ttl == granted && (resp.id == id || (id == 0 && resp.id > 0)),
                        || format!("{req:?} granted {resp:?}, want TTL {granted}"),
                    );
                    leases.insert(
                        resp.id,
                        LeaseModel {
                            granted,
                            stable: granted >= STABLE_TTL,
                            keys: BTreeSet::new(),
                        },
                    );
                    revoked.retain(|&x| x != resp.id);
                }
            }
            30..=44 => {
                let id = lease_id(&mut r, &leases, &revoked);
                let req = LeaseRevokeRequest { id };
                let (class, wants) = match known(&leases, id) {
                    Known::Stable => ("revoke: granted", vec![Want::Ok]),
                    Known::Volatile => (
                        "revoke: expiring",
                        vec![Want::Ok, Want::Etcd(EtcdError::LeaseNotFound)],
                    ),
                    Known::Absent if revoked.contains(&id) => (
                        "revoke: revoked",
                        vec![Want::Etcd(EtcdError::LeaseNotFound)],
                    ),
                    Known::Absent => (
                        "revoke: unknown, 0 or negative",
                        vec![Want::Etcd(EtcdError::LeaseNotFound)],
                    ),
                };
                let got = within(ANSWER, lease.lease_revoke(req)).await;
                if run.check(class, &req, &wants, got).is_some() {
                    let gone = leases.remove(&id).expect("granted");
                    revoked.push(id);
                    // Its keys went with it.
                    for key in gone.keys {
                        let got = within(
                            ANSWER,
                            kv.range(RangeRequest {
                                key: key.clone().into(),
                                ..Default::default()
                            }),
                        )
                        .await;
                        run.ensure(got.as_ref().is_ok_and(|g| g.kvs.is_empty()), || {
                            format!("key {key:?} of revoked lease {id} is still there: {got:?}")
                        });
                    }
                } else if matches!(known(&leases, id), Known::Volatile) {
                    leases.remove(&id);
                }
            }
            45..=64 => {
                if keep_alive.is_none() || r.chance(3) {
                    let (tx, rx) = mpsc::channel(4);
                    let got = within(ANSWER, lease.lease_keep_alive(ReceiverStream::new(rx))).await;
                    let stream = run
                        .check(
                            "keep-alive: open a stream",
                            &"LeaseKeepAlive",
                            &[Want::Ok],
                            got,
                        )
                        .expect("checked");
                    keep_alive = Some((tx, stream));
                }
                let (tx, stream) = keep_alive.as_mut().expect("opened");
                let id = lease_id(&mut r, &leases, &revoked);
                let req = LeaseKeepAliveRequest { id };
                if tx.send(req).await.is_err() {
                    run.fail("the keep-alive stream's request side closed");
                }
                let got = match tokio::time::timeout(ANSWER, stream.message()).await {
                    Ok(Ok(Some(resp))) => resp,
                    other => run.fail(format!("keep-alive {id}: {other:?}")),
                };
                // An unknown lease is answered TTL 0, not an error; the stream stays.
                let (class, ttls) = match known(&leases, id) {
                    Known::Stable => ("keep-alive: granted", vec![leases[&id].granted]),
                    Known::Volatile => ("keep-alive: expiring", vec![leases[&id].granted, 0]),
                    Known::Absent => ("keep-alive: unknown, 0 or negative", vec![0]),
                };
                run.step += 1;
                run.ensure(
                    got.id == id && ttls.contains(&got.ttl) && got.header.is_some(),
                    || format!("{class}: keep-alive {id} answered {got:?}, want TTL in {ttls:?}"),
                );
                run.count(class, true);
            }
            65..=79 => {
                let id = lease_id(&mut r, &leases, &revoked);
                let keys = r.flag();
                let req = LeaseTimeToLiveRequest { id, keys };
                let got = within(ANSWER, lease.lease_time_to_live(req)).await;
                // An unknown lease is answered TTL -1, not an error.
                let class = match known(&leases, id) {
                    Known::Stable => "time-to-live: granted",
                    Known::Volatile => "time-to-live: expiring",
                    Known::Absent => "time-to-live: unknown, 0 or negative",
                };
                let resp = run.check(class, &req, &[Want::Ok], got).expect("checked");
                let ok = match known(&leases, id) {
                    Known::Stable => {
                        let l = &leases[&id];
                        let got_keys: BTreeSet<Vec<u8>> =
                            resp.keys.iter().map(|k| k.to_vec()).collect();
                        let want_keys = if keys {
                            l.keys.clone()
                        } else {
                            BTreeSet::new()
                        };
                        resp.id == id
                            && resp.ttl > 0
                            && resp.ttl <= l.granted
                            && resp.granted_ttl == l.granted
                            && got_keys == want_keys
                    }
                    Known::Volatile => resp.id == id,
                    Known::Absent => {
                        resp.id == id
                            && resp.ttl == -1
                            && resp.granted_ttl == 0
                            && resp.keys.is_empty()
                    }
                };
                run.ensure(ok, || format!("{req:?} answered {resp:?}"));
            }
            80..=84 => {
                let got = within(ANSWER, lease.lease_leases(LeaseLeasesRequest {})).await;
                let resp = run
                    .check("leases", &"LeaseLeases", &[Want::Ok], got)
                    .expect("checked");
                let listed: BTreeSet<i64> = resp.leases.iter().map(|l| l.id).collect();
                run.ensure(
                    leases
                        .iter()
                        .filter(|(_, l)| l.stable)
                        .all(|(id, _)| listed.contains(id))
                        && revoked.iter().all(|id| !listed.contains(id)),
                    || {
                        format!(
                            "leases {listed:?}; model {:?}, revoked {revoked:?}",
                            leases.keys()
                        )
                    },
                );
            }
            _ => {
                // A key on a lease (for TimeToLive's keys and Revoke's deletes).
                let key = format!("lk/{}", r.below(10)).into_bytes();
                let id = lease_id(&mut r, &leases, &revoked);
                if matches!(known(&leases, id), Known::Volatile) {
                    continue;
                }
                let req = PutRequest {
                    key: key.clone().into(),
                    value: "v".into(),
                    lease: id,
                    ..Default::default()
                };
                let want = match known(&leases, id) {
                    _ if id == 0 => Want::Ok,
                    Known::Stable => Want::Ok,
                    _ => Want::Etcd(EtcdError::LeaseNotFound),
                };
                let got = within(ANSWER, kv.put(req.clone())).await;
                if run
                    .check("kv: put with a lease", &req, &[want], got)
                    .is_some()
                {
                    for l in leases.values_mut() {
                        l.keys.remove(&key);
                    }
                    if let Some(l) = leases.get_mut(&id) {
                        l.keys.insert(key);
                    }
                }
            }
        }
    }
    drop(keep_alive);
    run.finish().await;
}

// ---- Lock

const LOCK_NAMES: &[&[u8]] = &[b"", b"l", b"m", b"\0", b"\xff", b"lock me"];

/// Who holds a lock (or leads an election), as the model knows.
#[derive(Clone, Debug)]
struct Holder {
    /// The lease the caller sent (0: a session lease the server granted).
    lease: i64,
    key: Vec<u8>,
    since: Instant,
}

/// Leases for the Lock and Election runs: three granted ones and a granted negative id.
async fn stable_leases(run: &mut Run) -> Vec<i64> {
    let mut lease = LeaseClient::connect(run.server.endpoint())
        .await
        .expect("connect lease");
    let mut ids = Vec::new();
    for id in [0, 0, 0, -7] {
        let req = LeaseGrantRequest {
            ttl: STABLE_TTL,
            id,
        };
        let got = within(ANSWER, lease.lease_grant(req)).await;
        let resp = run
            .check("kv: setup lease", &req, &[Want::Ok], got)
            .expect("granted");
        ids.push(resp.id);
    }
    ids
}

/// Leases that were never granted.
const UNKNOWN_LEASES: &[i64] = &[999_999, -1, -77, i64::MIN, i64::MAX, 123_456_789];

/// Waits until no key under `prefix` but `keep` exists: a waiter the test gave up on
/// deletes its key when its call goes away (etcd does the same; neither waits for it
/// before the client sees its deadline).
async fn wait_waiter_gone(run: &Run, kv: &mut KvClient<Channel>, prefix: &[u8], keep: &[u8]) {
    let deadline = Instant::now() + ANSWER;
    loop {
        let got = within(
            ANSWER,
            kv.range(RangeRequest {
                key: Bytes::copy_from_slice(prefix),
                range_end: prefix_end(prefix).into(),
                keys_only: true,
                ..Default::default()
            }),
        )
        .await;
        match got {
            Ok(g) if g.kvs.iter().all(|kv| kv.key.as_ref() == keep) => return,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => run.fail(format!(
                "the waiter key under {prefix:?} stays after its call went: {other:?}"
            )),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lock_requests() {
    let (mut run, mut r) = Run::start("lock", 3, &[]);
    let stable = stable_leases(&mut run).await;
    let mut kv = kv_client(&run).await;
    let mut lock = LockClient::connect(run.server.endpoint())
        .await
        .expect("connect lock");
    let mut held: BTreeMap<Vec<u8>, Holder> = BTreeMap::new();
    let mut released: Vec<Vec<u8>> = Vec::new();

    while run.service_requests() < run.requests {
        // A lock on a session lease (60 s, never renewed) is released before it could
        // expire under the model.
        let old: Vec<Vec<u8>> = held
            .iter()
            .filter(|(_, h)| h.lease == 0 && h.since.elapsed() > SESSION_SAFE_AGE)
            .map(|(name, _)| name.clone())
            .collect();
        for name in old {
            let h = held.remove(&name).expect("held");
            let req = UnlockRequest { key: h.key.into() };
            let got = within(ANSWER, lock.unlock(req.clone())).await;
            run.check("unlock: held (aged session)", &req, &[Want::Ok], got);
        }
        if r.chance(55) {
            let name = r.pick(LOCK_NAMES).to_vec();
            let lease = match r.below(4) {
                0 => 0,
                1 => r.pick(UNKNOWN_LEASES),
                _ => r.pick(&stable),
            };
            let holder = held.get(&name).cloned();
            let blocks = holder
                .as_ref()
                .is_some_and(|h| h.lease != lease || lease == 0);
            let unknown = UNKNOWN_LEASES.contains(&lease);
            if blocks && !unknown && !r.chance(25) {
                // Mostly release the holder instead: each blocked call costs a deadline.
                let h = held.remove(&name).expect("held");
                let req = UnlockRequest {
                    key: h.key.clone().into(),
                };
                let got = within(ANSWER, lock.unlock(req.clone())).await;
                run.check("unlock: held", &req, &[Want::Ok], got);
                released.push(h.key);
                continue;
            }
            let req = LockRequest {
                name: name.clone().into(),
                lease,
            };
            let (class, want, limit) = if unknown {
                // The key's put fails at apply, whoever holds the lock.
                (
                    "lock: unknown or negative lease",
                    Want::Embedded(EtcdError::LeaseNotFound),
                    ANSWER,
                )
            } else if blocks {
                ("lock: held by another lease", Want::Blocked, BLOCKED)
            } else if holder.is_some() {
                ("lock: again with the holder's lease", Want::Ok, ANSWER)
            } else if lease == 0 {
                ("lock: free, no lease (session)", Want::Ok, ANSWER)
            } else if lease < 0 {
                ("lock: free, negative lease", Want::Ok, ANSWER)
            } else {
                ("lock: free", Want::Ok, ANSWER)
            };
            let class = if name.is_empty() && want == Want::Ok {
                "lock: empty name"
            } else {
                class
            };
            let got = within(limit, lock.lock(req.clone())).await;
            let resp = run.check(class, &req, std::slice::from_ref(&want), got);
            let prefix = [name.as_slice(), b"/"].concat();
            if want == Want::Blocked {
                let keep = holder.map(|h| h.key).unwrap_or_default();
                wait_waiter_gone(&run, &mut kv, &prefix, &keep).await;
            }
            if let Some(resp) = resp {
                let key = resp.key.to_vec();
                let suffix = key.strip_prefix(prefix.as_slice()).unwrap_or_default();
                let ok = match (&held.get(&name), lease) {
                    (Some(h), _) => key == h.key,
                    (None, 0) => std::str::from_utf8(suffix)
                        .ok()
                        .and_then(|s| i64::from_str_radix(s, 16).ok())
                        .is_some_and(|id| id > 0 && lease_hex(id).as_bytes() == suffix),
                    (None, lease) => suffix == lease_hex(lease).as_bytes(),
                };
                run.ensure(ok && resp.header.is_some(), || {
                    format!("{req:?} locked {resp:?} (held: {:?})", held.get(&name))
                });
                held.insert(
                    name,
                    Holder {
                        lease,
                        key,
                        since: Instant::now(),
                    },
                );
            }
        } else {
            let names: Vec<Vec<u8>> = held.keys().cloned().collect();
            let (class, key) = match r.below(10) {
                0..=3 if !names.is_empty() => {
                    let name = r.pick(&names);
                    ("unlock: held", held.remove(&name).expect("held").key)
                }
                4 | 5 => ("unlock: empty key", Vec::new()),
                6 if !released.is_empty() => ("unlock: released", r.pick(&released)),
                _ => ("unlock: unknown key", b"nope/7".to_vec()),
            };
            let want = if key.is_empty() {
                Want::Embedded(EtcdError::EmptyKey)
            } else {
                // A plain delete: an unknown key is not an error.
                Want::Ok
            };
            // A released key can be held again (a lease locks the same key each time):
            // unlocking it releases that holder.
            held.retain(|_, h| h.key != key);
            let req = UnlockRequest {
                key: key.clone().into(),
            };
            let got = within(ANSWER, lock.unlock(req.clone())).await;
            run.check(class, &req, &[want], got);
            if !key.is_empty() {
                released.push(key);
            }
        }
    }
    run.finish().await;
}

// ---- Election

const ELECTION_NAMES: &[&[u8]] = &[b"", b"e", b"f", b"\0", b"x y"];

/// An election's leader as the model knows it.
#[derive(Clone, Debug)]
struct Leader {
    holder: Holder,
    rev: i64,
    value: Bytes,
    /// The lease on the leader key now (`None`: a session lease the server granted).
    key_lease: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_election_requests() {
    let (mut run, mut r) = Run::start("election", 4, &[]);
    let stable = stable_leases(&mut run).await;
    let mut kv = kv_client(&run).await;
    let mut el = ElectionClient::connect(run.server.endpoint())
        .await
        .expect("connect election");
    let mut leaders: BTreeMap<Vec<u8>, Leader> = BTreeMap::new();

    while run.service_requests() < run.requests {
        let old: Vec<Vec<u8>> = leaders
            .iter()
            .filter(|(_, l)| l.key_lease.is_none() && l.holder.since.elapsed() > SESSION_SAFE_AGE)
            .map(|(name, _)| name.clone())
            .collect();
        for name in old {
            let l = leaders.remove(&name).expect("leads");
            let req = ResignRequest {
                leader: Some(leader_key(&name, &l, l.holder.lease)),
            };
            let got = within(ANSWER, el.resign(req.clone())).await;
            run.check("resign: leader (aged session)", &req, &[Want::Ok], got);
        }
        let name = r.pick(ELECTION_NAMES).to_vec();
        let leader = leaders.get(&name).cloned();
        match r.below(100) {
            0..=26 => {
                let lease = match r.below(4) {
                    0 => 0,
                    1 => r.pick(UNKNOWN_LEASES),
                    _ => r.pick(&stable),
                };
                let unknown = UNKNOWN_LEASES.contains(&lease);
                let blocks = leader
                    .as_ref()
                    .is_some_and(|l| l.holder.lease != lease || lease == 0);
                if blocks && !unknown && !r.chance(25) {
                    let l = leaders.remove(&name).expect("leads");
                    let req = ResignRequest {
                        leader: Some(leader_key(&name, &l, l.holder.lease)),
                    };
                    let got = within(ANSWER, el.resign(req.clone())).await;
                    run.check("resign: leader", &req, &[Want::Ok], got);
                    continue;
                }
                let value = r.value();
                let req = CampaignRequest {
                    name: name.clone().into(),
                    lease,
                    value: value.clone(),
                };
                let (class, want, limit) = if unknown {
                    (
                        "campaign: unknown or negative lease",
                        Want::Embedded(EtcdError::LeaseNotFound),
                        ANSWER,
                    )
                } else if blocks {
                    ("campaign: led by another lease", Want::Blocked, BLOCKED)
                } else if leader.is_some() {
                    ("campaign: again with the leader's lease", Want::Ok, ANSWER)
                } else if lease == 0 {
                    ("campaign: no leader, no lease (session)", Want::Ok, ANSWER)
                } else if name.is_empty() {
                    ("campaign: empty name", Want::Ok, ANSWER)
                } else {
                    ("campaign: no leader", Want::Ok, ANSWER)
                };
                let got = within(limit, el.campaign(req.clone())).await;
                let resp = run.check(class, &req, std::slice::from_ref(&want), got);
                let prefix = [name.as_slice(), b"/"].concat();
                if want == Want::Blocked {
                    let keep = leader
                        .as_ref()
                        .map(|l| l.holder.key.clone())
                        .unwrap_or_default();
                    wait_waiter_gone(&run, &mut kv, &prefix, &keep).await;
                }
                if let Some(resp) = resp {
                    let got_leader = resp.leader.clone().unwrap_or_default();
                    let ok = match &leader {
                        // Same key and create revision; the value is proclaimed.
                        Some(l) => {
                            got_leader.key.as_ref() == l.holder.key.as_slice()
                                && got_leader.rev == l.rev
                        }
                        None => {
                            let lease_ok = if lease == 0 {
                                got_leader.lease > 0
                            } else {
                                got_leader.lease == lease
                            };
                            lease_ok
                                && got_leader.key.as_ref()
                                    == [prefix.as_slice(), lease_hex(got_leader.lease).as_bytes()]
                                        .concat()
                                        .as_slice()
                                && got_leader.rev > 0
                        }
                    };
                    run.ensure(
                        ok && got_leader.name == req.name && resp.header.is_some(),
                        || format!("{req:?} answered {resp:?}; model {leader:?}"),
                    );
                    let entry = leaders.entry(name).or_insert(Leader {
                        holder: Holder {
                            lease,
                            key: got_leader.key.to_vec(),
                            since: Instant::now(),
                        },
                        rev: got_leader.rev,
                        value: Bytes::new(),
                        key_lease: (lease != 0).then_some(lease),
                    });
                    entry.value = value;
                    if lease != 0 {
                        entry.key_lease = Some(lease);
                    }
                }
            }
            27..=46 => {
                let value = r.value();
                let (class, leader_key_sent, want) = match r.below(10) {
                    0 => (
                        "proclaim: no leader field",
                        None,
                        Want::Embedded(EtcdError::ElectionMissingLeaderKey),
                    ),
                    1 => (
                        "proclaim: empty leader",
                        Some(LeaderKey::default()),
                        Want::Embedded(EtcdError::EmptyKey),
                    ),
                    2 => (
                        "proclaim: bogus key",
                        Some(LeaderKey {
                            name: name.clone().into(),
                            key: "nope/1".into(),
                            rev: 3,
                            lease: r.pick(&stable),
                        }),
                        Want::Embedded(EtcdError::ElectionNotLeader),
                    ),
                    n => match &leader {
                        None => (
                            "proclaim: nobody leads",
                            Some(LeaderKey {
                                name: name.clone().into(),
                                key: [name.as_slice(), b"/1"].concat().into(),
                                rev: 2,
                                lease: r.pick(&stable),
                            }),
                            Want::Embedded(EtcdError::ElectionNotLeader),
                        ),
                        Some(l) if n == 3 => (
                            "proclaim: leader key, wrong revision",
                            Some(LeaderKey {
                                rev: l.rev + 1000,
                                ..leader_key(&name, l, l.holder.lease)
                            }),
                            Want::Embedded(EtcdError::ElectionNotLeader),
                        ),
                        Some(l) if n == 4 => (
                            "proclaim: leader key, unknown lease",
                            Some(leader_key(&name, l, r.pick(UNKNOWN_LEASES))),
                            Want::Embedded(EtcdError::LeaseNotFound),
                        ),
                        Some(l) if n == 5 && l.holder.since.elapsed() < SESSION_SAFE_AGE / 2 => (
                            // etcd moves the key onto a new, orphaned 60 s session lease.
                            "proclaim: leader key, lease 0",
                            Some(leader_key(&name, l, 0)),
                            Want::Ok,
                        ),
                        Some(l) => (
                            "proclaim: leader",
                            Some(leader_key(&name, l, l.key_lease.unwrap_or(l.holder.lease))),
                            Want::Ok,
                        ),
                    },
                };
                let session = leader_key_sent.as_ref().is_some_and(|k| k.lease == 0);
                let req = ProclaimRequest {
                    leader: leader_key_sent,
                    value: value.clone(),
                };
                let got = within(ANSWER, el.proclaim(req.clone())).await;
                if run.check(class, &req, &[want], got).is_some() {
                    let l = leaders.get_mut(&name).expect("leads");
                    l.value = value;
                    if session {
                        // The key (still named after the campaign's lease, which a
                        // campaign with that lease finds again) is now on a lease
                        // nobody keeps alive.
                        l.key_lease = None;
                        l.holder.since = Instant::now();
                    } else if let Some(k) = &req.leader {
                        l.key_lease = Some(k.lease);
                    }
                }
            }
            47..=61 => {
                let (class, sent, want) = match r.below(8) {
                    0 => (
                        "resign: no leader field",
                        None,
                        Want::Embedded(EtcdError::ElectionMissingLeaderKey),
                    ),
                    1 => (
                        "resign: empty leader",
                        Some(LeaderKey::default()),
                        Want::Embedded(EtcdError::EmptyKey),
                    ),
                    2 | 3 => (
                        // The compare fails: nothing is deleted, and that is success.
                        "resign: bogus key",
                        Some(LeaderKey {
                            name: name.clone().into(),
                            key: [name.as_slice(), b"/nope"].concat().into(),
                            rev: r.pick(&[0, 1, -1, i64::MAX]),
                            lease: r.pick(UNKNOWN_LEASES),
                        }),
                        Want::Ok,
                    ),
                    _ => match &leader {
                        Some(l) => (
                            "resign: leader",
                            Some(leader_key(&name, l, l.holder.lease)),
                            Want::Ok,
                        ),
                        None => (
                            "resign: nobody leads",
                            Some(LeaderKey {
                                name: name.clone().into(),
                                key: [name.as_slice(), b"/2a"].concat().into(),
                                rev: 9,
                                lease: 42,
                            }),
                            Want::Ok,
                        ),
                    },
                };
                let req = ResignRequest { leader: sent };
                let got = within(ANSWER, el.resign(req.clone())).await;
                if run.check(class, &req, &[want], got).is_some() && class == "resign: leader" {
                    leaders.remove(&name);
                }
            }
            62..=95 => {
                let req = LeaderRequest {
                    name: name.clone().into(),
                };
                let (class, want) = match &leader {
                    Some(_) => ("leader: led", Want::Ok),
                    None => (
                        "leader: nobody leads",
                        Want::Embedded(EtcdError::ElectionNoLeader),
                    ),
                };
                let got = within(ANSWER, el.leader(req.clone())).await;
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    let l = leader.as_ref().expect("leads");
                    let kv = resp.kv.clone().unwrap_or_default();
                    let lease_ok =
                        l.key_lease.is_none_or(|lease| kv.lease == lease) && kv.lease != 0;
                    run.ensure(
                        kv.key.as_ref() == l.holder.key.as_slice()
                            && kv.create_revision == l.rev
                            && kv.value == l.value
                            && lease_ok,
                        || format!("{req:?} answered {resp:?}; model {l:?}"),
                    );
                }
            }
            _ => {
                // Observe: the leader at once if there is one; otherwise nothing, until
                // the client gives up (etcd sends no "no leader" error).
                let req = LeaderRequest {
                    name: name.clone().into(),
                };
                let limit = if leader.is_some() { ANSWER } else { BLOCKED };
                let first = tokio::time::timeout(limit, async {
                    let mut stream = el.observe(req.clone()).await?.into_inner();
                    stream.message().await
                })
                .await;
                let got: Result<_, Status> = match first {
                    Ok(Ok(Some(resp))) => Ok(resp),
                    Ok(Ok(None)) => Err(Status::internal("observe ended without a message")),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Status::deadline_exceeded(CLIENT_DEADLINE)),
                };
                let (class, want) = match &leader {
                    Some(_) => ("observe: led", Want::Ok),
                    None => ("observe: nobody leads", Want::Blocked),
                };
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    let l = leader.as_ref().expect("leads");
                    let kv = resp.kv.clone().unwrap_or_default();
                    run.ensure(
                        kv.key.as_ref() == l.holder.key.as_slice() && kv.value == l.value,
                        || format!("observe {name:?} saw {resp:?}; model {l:?}"),
                    );
                }
            }
        }
    }
    run.finish().await;
}

fn leader_key(name: &[u8], l: &Leader, lease: i64) -> LeaderKey {
    LeaderKey {
        name: Bytes::copy_from_slice(name),
        key: l.holder.key.clone().into(),
        rev: l.rev,
        lease,
    }
}

// ---- Cluster

/// Peer URLs etcd refuses (`types.NewURLs`), each checked against etcd 3.4.23.
const BAD_URLS: &[&str] = &[
    "",
    "127.0.0.1:2380",
    "http://127.0.0.1",
    "http://",
    "ftp://127.0.0.1:2380",
    "http://127.0.0.1:2380/path",
    "http://127.0.0.1:2380/",
    "not a url",
    "http://[::1]",
    "http://h:abc",
    "http://h:1:2",
    "http://h h:6",
    "http:127.0.0.1:16",
    "http:///h:18",
    "http://h%zz:20",
    "http://h:21\0",
    "1http://h:30",
];

#[derive(Clone, Debug, PartialEq)]
struct MemberModel {
    urls: Vec<String>,
    learner: bool,
}

/// A valid peer URL nobody uses: (as sent, as etcd stores it). Ports are unique per call
/// (many are out of range: etcd does not check, and nobody can be dialled there).
fn fresh_url(r: &mut Rng, n: &mut u32) -> (String, String) {
    *n += 1;
    let n = *n;
    match r.below(8) {
        0 => (
            format!("  http://127.0.0.1:{}  ", 70000 + n),
            format!("http://127.0.0.1:{}", 70000 + n),
        ),
        1 => (
            format!("HTTP://127.0.0.1:{}", 70000 + n),
            format!("http://127.0.0.1:{}", 70000 + n),
        ),
        2 => (
            format!("http://h{n}.invalid:"),
            format!("http://h{n}.invalid:"),
        ),
        3 => (
            format!("https://127.0.0.1:{}?q=1", 70000 + n),
            format!("https://127.0.0.1:{}?q=1", 70000 + n),
        ),
        4 => (format!("unix://u{n}:1"), format!("unix://u{n}:1")),
        5 => (
            format!("http://[::1]:{}", 70000 + n),
            format!("http://[::1]:{}", 70000 + n),
        ),
        _ => (
            format!("http://127.0.0.1:{}", 70000 + n),
            format!("http://127.0.0.1:{}", 70000 + n),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cluster_requests() {
    let (mut run, mut r) = Run::start("cluster", 5, &[]);
    let mut cluster = ClusterClient::connect(run.server.endpoint())
        .await
        .expect("connect cluster");
    let (_, me) = ids(&run).await;
    let list = within(
        ANSWER,
        cluster.member_list(MemberListRequest {
            linearizable: false,
        }),
    )
    .await
    .expect("member list");
    let mut members: BTreeMap<u64, MemberModel> = list
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                MemberModel {
                    urls: m.peer_ur_ls.clone(),
                    learner: m.is_learner,
                },
            )
        })
        .collect();
    let mut removed: Vec<u64> = Vec::new();
    let mut port = 0u32;

    while run.service_requests() < run.requests {
        let learner = members.iter().find(|(_, m)| m.learner).map(|(&id, _)| id);
        let some_id = |r: &mut Rng, removed: &[u64]| -> u64 {
            match r.below(10) {
                0..=2 => me,
                3..=5 if learner.is_some() => learner.expect("learner"),
                6 if !removed.is_empty() => r.pick(removed),
                _ => r.pick(&[0, 12345, u64::MAX, me ^ 1]),
            }
        };
        match r.below(100) {
            0..=11 => {
                let req = MemberListRequest {
                    linearizable: r.flag(),
                };
                let got = within(ANSWER, cluster.member_list(req)).await;
                let resp = run.check("list", &req, &[Want::Ok], got).expect("checked");
                let listed: BTreeMap<u64, MemberModel> = resp
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.id,
                            MemberModel {
                                urls: m.peer_ur_ls.clone(),
                                learner: m.is_learner,
                            },
                        )
                    })
                    .collect();
                run.ensure(
                    listed == members && resp.header.is_some_and(|h| h.revision == 0),
                    || format!("members {listed:?}, model {members:?}"),
                );
            }
            12..=49 => {
                let is_learner = r.chance(80);
                let (class, urls, stored, want): (&str, Vec<String>, Vec<String>, Want) =
                    match r.below(10) {
                        0 => (
                            "add: no URLs",
                            Vec::new(),
                            Vec::new(),
                            Want::Etcd(EtcdError::MemberBadUrls),
                        ),
                        1..=3 => {
                            let mut urls: Vec<String> = (0..r.below(2))
                                .map(|_| fresh_url(&mut r, &mut port).0)
                                .collect();
                            urls.insert(
                                r.below(urls.len() as u64 + 1) as usize,
                                r.pick(BAD_URLS).to_string(),
                            );
                            (
                                "add: malformed URL",
                                urls,
                                Vec::new(),
                                Want::Etcd(EtcdError::MemberBadUrls),
                            )
                        }
                        4 | 5 => {
                            // A URL a member has (with another, so the member id is new).
                            let taken: Vec<String> =
                                members.values().flat_map(|m| m.urls.clone()).collect();
                            let urls = vec![r.pick(&taken), fresh_url(&mut r, &mut port).1];
                            (
                                "add: URL in use",
                                urls,
                                Vec::new(),
                                Want::Etcd(EtcdError::PeerUrlExist),
                            )
                        }
                        _ if !is_learner => {
                            // A voter that can never start would cost this one-member
                            // cluster its quorum for good (etcd accepts it); sent at the end.
                            (
                                "add: voter with a malformed URL",
                                vec![r.pick(BAD_URLS).to_string()],
                                Vec::new(),
                                Want::Etcd(EtcdError::MemberBadUrls),
                            )
                        }
                        n => {
                            let (mut sent, mut stored) = (Vec::new(), Vec::new());
                            for _ in 0..1 + r.below(2) {
                                let (a, b) = fresh_url(&mut r, &mut port);
                                sent.push(a);
                                stored.push(b);
                            }
                            if n == 9 {
                                // The same URL twice: accepted, kept twice.
                                sent.push(sent[0].clone());
                                stored.push(stored[0].clone());
                            }
                            stored.sort();
                            if learner.is_some() {
                                (
                                    "add: second learner",
                                    sent,
                                    stored,
                                    Want::Etcd(EtcdError::TooManyLearners),
                                )
                            } else {
                                ("add: learner", sent, stored, Want::Ok)
                            }
                        }
                    };
                let req = MemberAddRequest {
                    peer_ur_ls: urls,
                    is_learner,
                };
                let got = within(ANSWER, cluster.member_add(req.clone())).await;
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    let m = resp.member.clone().unwrap_or_default();
                    run.ensure(
                        m.peer_ur_ls == stored
                            && m.is_learner
                            && m.id != 0
                            && m.name.is_empty()
                            && !members.contains_key(&m.id),
                        || format!("{req:?} added {resp:?}, want URLs {stored:?}"),
                    );
                    members.insert(
                        m.id,
                        MemberModel {
                            urls: stored,
                            learner: true,
                        },
                    );
                    let listed: BTreeSet<u64> = resp.members.iter().map(|m| m.id).collect();
                    run.ensure(listed == members.keys().copied().collect(), || {
                        format!("{resp:?}")
                    });
                }
            }
            50..=64 => {
                let id = some_id(&mut r, &removed);
                let req = MemberRemoveRequest { id };
                let (class, want) = if id == me {
                    // Removing the only voter leaves no quorum: etcd's strict
                    // reconfiguration check refuses it, with code Unknown.
                    (
                        "remove: the only voter",
                        Want::Etcd(EtcdError::MemberNotEnoughStarted),
                    )
                } else if Some(id) == learner {
                    ("remove: learner", Want::Ok)
                } else if removed.contains(&id) {
                    (
                        "remove: removed member",
                        Want::Etcd(EtcdError::MemberNotFound),
                    )
                } else {
                    (
                        "remove: unknown or 0",
                        Want::Etcd(EtcdError::MemberNotFound),
                    )
                };
                let got = within(ANSWER, cluster.member_remove(req)).await;
                if run.check(class, &req, &[want], got).is_some() {
                    members.remove(&id);
                    removed.push(id);
                }
            }
            65..=84 => {
                let id = some_id(&mut r, &removed);
                let other: Vec<String> = members
                    .iter()
                    .filter(|(m, _)| **m != id)
                    .flat_map(|(_, m)| m.urls.clone())
                    .collect();
                let (urls, kind) = match r.below(6) {
                    0 => (Vec::new(), "no URLs"),
                    1 | 2 => (vec![r.pick(BAD_URLS).to_string()], "malformed URL"),
                    3 if !other.is_empty() => (
                        vec![r.pick(&other), r.pick(BAD_URLS).to_string()],
                        "URL of another member",
                    ),
                    _ => (vec![fresh_url(&mut r, &mut port).1], "new URL"),
                };
                let (class, want) = if !members.contains_key(&id) {
                    // etcd looks for the member first, whatever the URLs.
                    (
                        "update: unknown, 0 or removed",
                        Want::Etcd(EtcdError::MemberNotFound),
                    )
                } else if kind == "URL of another member" {
                    (
                        "update: URL of another member",
                        Want::Etcd(EtcdError::PeerUrlExist),
                    )
                } else if kind == "new URL" {
                    (
                        if id == me {
                            "update: self"
                        } else {
                            "update: learner"
                        },
                        Want::Ok,
                    )
                } else {
                    // etcd stores anything; applying URLs Go cannot parse for another
                    // member panics every member but that one, at every restart. retcd
                    // refuses them (etcd's MemberAdd error), for every member alike.
                    (
                        "update: malformed or no URLs",
                        Want::Etcd(EtcdError::MemberBadUrls),
                    )
                };
                let req = MemberUpdateRequest {
                    id,
                    peer_ur_ls: urls.clone(),
                };
                let got = within(ANSWER, cluster.member_update(req.clone())).await;
                if run.check(class, &req, &[want], got).is_some() {
                    // Stored as sent; a learner stays a learner (etcd 3.4 drops the
                    // flag from its membership store, and later changes misjudge it).
                    members.get_mut(&id).expect("member").urls = urls;
                }
            }
            _ => {
                let id = some_id(&mut r, &removed);
                let req = MemberPromoteRequest { id };
                let (class, want) = if id == me {
                    ("promote: voter", Want::Etcd(EtcdError::MemberNotLearner))
                } else if Some(id) == learner {
                    // It never started, so it is not in sync with the leader.
                    (
                        "promote: learner not in sync",
                        Want::Etcd(EtcdError::LearnerNotReady),
                    )
                } else {
                    (
                        "promote: unknown, 0 or removed",
                        Want::Etcd(EtcdError::MemberNotFound),
                    )
                };
                let got = within(ANSWER, cluster.member_promote(req)).await;
                run.check(class, &req, &[want], got);
            }
        }
    }
    run.finish().await;

    // Last, the one change that breaks a one-member cluster, as it breaks etcd's: a
    // voter that never starts. etcd accepts it (its special case for a second member of
    // a one-member cluster) and has no quorum from then on; so must retcd, without a
    // panic.
    if let Some(id) = members.iter().find(|(_, m)| m.learner).map(|(&id, _)| id) {
        let req = MemberRemoveRequest { id };
        let got = within(ANSWER, cluster.member_remove(req)).await;
        run.check("remove: learner", &req, &[Want::Ok], got);
    }
    let req = MemberAddRequest {
        peer_ur_ls: vec![fresh_url(&mut r, &mut port).0],
        is_learner: false,
    };
    let got = within(ANSWER, cluster.member_add(req.clone())).await;
    run.check("add: voter (last)", &req, &[Want::Ok], got);
    let mut m = MaintenanceClient::connect(run.server.endpoint())
        .await
        .expect("connect maintenance");
    let deadline = Instant::now() + ANSWER;
    loop {
        let s = within(ANSWER, m.status(StatusRequest {})).await;
        let no_leader = s
            .as_ref()
            .is_ok_and(|s| s.errors.iter().any(|e| e == "etcdserver: no leader"));
        if no_leader {
            break;
        }
        run.ensure(Instant::now() < deadline, || {
            format!("still led after adding a voter that never starts: {s:?}")
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.ensure(!run.server.log().contains("panicked"), || {
        "the server log holds a panic".to_string()
    });
}

// ---- Maintenance

const ALARM_TYPES: &[i32] = &[0, 1, 2, 3, 99, -1, i32::MAX];
const NOSPACE: i32 = 1;
const CORRUPT: i32 = 2;

/// An alarm as etcd's Status lists it: gogoproto's text form, zero fields left out, an
/// unknown type as its number.
fn alarm_text(member: u64, alarm: i32) -> String {
    let mut text = String::new();
    if member != 0 {
        text.push_str(&format!("memberID:{member} "));
    }
    match alarm {
        0 => {}
        NOSPACE => text.push_str("alarm:NOSPACE "),
        CORRUPT => text.push_str("alarm:CORRUPT "),
        n => text.push_str(&format!("alarm:{n} ")),
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_maintenance_requests() {
    let (mut run, mut r) = Run::start("maintenance", 6, &[]);
    let (_, me) = ids(&run).await;
    let mut kv = kv_client(&run).await;
    let mut m = MaintenanceClient::connect(run.server.endpoint())
        .await
        .expect("connect maintenance");
    let mut alarms: BTreeSet<(u64, i32)> = BTreeSet::new();
    let (mut rev, mut compact) = (1i64, -1i64);
    // Hashes seen per revision (0 and positive): the same revision hashes the same until
    // the next compaction.
    let mut hashes: BTreeMap<i64, u32> = BTreeMap::new();
    let mut next_key = 0u64;
    while rev < 30 {
        let req = PutRequest {
            key: format!("mk/{rev}").into(),
            value: "v".into(),
            ..Default::default()
        };
        let got = within(ANSWER, kv.put(req.clone())).await;
        run.check("kv: setup put", &req, &[Want::Ok], got);
        rev += 1;
    }
    let req = CompactionRequest {
        revision: 15,
        physical: true,
    };
    let got = within(ANSWER, kv.compact(req)).await;
    run.check("kv: setup compaction", &req, &[Want::Ok], got);
    compact = compact.max(15);

    while run.service_requests() < run.requests {
        let corrupt = alarms.iter().any(|&(_, a)| a == CORRUPT);
        let no_space = alarms.iter().any(|&(_, a)| a == NOSPACE);
        match r.below(100) {
            0..=39 => {
                let mut member = r.pick(&[0, me, 123, 777, u64::MAX]);
                let mut alarm = r.pick(ALARM_TYPES);
                // Raised alarms are mostly cleared soon, so writes get through between.
                let action = match r.below(10) {
                    0..=2 => 0,
                    3 | 4 => 1,
                    5..=8 => {
                        if !alarms.is_empty() && r.chance(80) {
                            (member, alarm) = r.pick(&alarms.iter().copied().collect::<Vec<_>>());
                        }
                        2
                    }
                    _ => r.pick(&[3, 99, -1, i32::MAX, i32::MIN]),
                };
                let req = AlarmRequest {
                    action,
                    member_id: member,
                    alarm,
                };
                let this = AlarmMember {
                    member_id: member,
                    alarm,
                };
                let (class, want, answer): (&str, Want, Vec<AlarmMember>) = match action {
                    0 => {
                        let listed = alarms
                            .iter()
                            .filter(|&&(_, a)| alarm == 0 || a == alarm)
                            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                            .collect();
                        let class = if alarm == 0 {
                            "alarm: GET all"
                        } else {
                            "alarm: GET one type"
                        };
                        (class, Want::Ok, listed)
                    }
                    1 if (member, alarm) == (0, 0) => (
                        // etcd stores this alarm under an empty key, which its backend
                        // refuses: the member exits, and again at every start.
                        "alarm: ACTIVATE NONE for member 0",
                        Want::Refused(
                            Code::InvalidArgument,
                            "alarm NONE of member 0 cannot be activated".into(),
                        ),
                        Vec::new(),
                    ),
                    1 => {
                        let class = match alarm {
                            0 => "alarm: ACTIVATE NONE",
                            NOSPACE => "alarm: ACTIVATE NOSPACE",
                            CORRUPT => "alarm: ACTIVATE CORRUPT",
                            _ => "alarm: ACTIVATE an unknown type",
                        };
                        // The alarm, whether it was raised now or before.
                        (class, Want::Ok, vec![this])
                    }
                    2 if alarms.contains(&(member, alarm)) => {
                        ("alarm: DEACTIVATE raised", Want::Ok, vec![this])
                    }
                    2 => ("alarm: DEACTIVATE not raised", Want::Ok, Vec::new()),
                    _ => (
                        // etcd's apply answers nothing and its handler then dereferences
                        // the missing response: the process dies.
                        "alarm: unknown action",
                        Want::Refused(
                            Code::InvalidArgument,
                            format!("unknown alarm action {action}"),
                        ),
                        Vec::new(),
                    ),
                };
                let got = within(ANSWER, m.alarm(req)).await;
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    let got: BTreeSet<(u64, i32)> =
                        resp.alarms.iter().map(|a| (a.member_id, a.alarm)).collect();
                    let want: BTreeSet<(u64, i32)> =
                        answer.iter().map(|a| (a.member_id, a.alarm)).collect();
                    run.ensure(
                        got == want && resp.alarms.len() == answer.len() && resp.header.is_none(),
                        || format!("{req:?} answered {resp:?}, want {answer:?}"),
                    );
                    match action {
                        1 => {
                            alarms.insert((member, alarm));
                        }
                        2 => {
                            alarms.remove(&(member, alarm));
                        }
                        _ => {}
                    }
                }
            }
            40..=49 => {
                let got = within(ANSWER, m.status(StatusRequest {})).await;
                let resp = run
                    .check("status", &"Status", &[Want::Ok], got)
                    .expect("checked");
                let mut errors = resp.errors.clone();
                errors.sort();
                let mut want: Vec<String> = alarms.iter().map(|&(m, a)| alarm_text(m, a)).collect();
                want.sort();
                run.ensure(
                    errors == want
                        && resp.leader == me
                        && resp.header.is_some_and(|h| h.revision == rev)
                        && !resp.version.is_empty(),
                    || format!("status {resp:?}, want errors {want:?} at {rev}"),
                );
            }
            50..=54 => {
                let got = within(ANSWER, m.hash(HashRequest {})).await;
                let resp = run
                    .check("hash", &"Hash", &[Want::Ok], got)
                    .expect("checked");
                run.ensure(resp.header.is_some_and(|h| h.revision == rev), || {
                    format!("{resp:?}")
                });
            }
            55..=74 => {
                let (revision, class) = match r.below(10) {
                    0 => (0, "hash-kv: 0 (current)"),
                    // etcd 3.4.23 hashes nothing but the bucket name; retcd the current
                    // revision. Both succeed.
                    1 => (r.pick(&[-1, -5, i64::MIN]), "hash-kv: negative"),
                    2 if compact > 1 => {
                        (1 + r.below(compact as u64 - 1) as i64, "hash-kv: compacted")
                    }
                    // etcd 3.4.23 refuses the compact revision itself; etcd 3.5.5 and
                    // later (retcd's target) hash it.
                    3 => (compact, "hash-kv: at the compact revision"),
                    4 | 5 if rev > compact => (
                        compact + 1 + r.below((rev - compact) as u64) as i64,
                        "hash-kv: past",
                    ),
                    6 => (rev, "hash-kv: current"),
                    7 => (rev + 1 + r.below(10) as i64, "hash-kv: future"),
                    8 => (i64::MAX, "hash-kv: future"),
                    _ => (rev, "hash-kv: current"),
                };
                let want = if revision > rev {
                    Want::Etcd(EtcdError::FutureRev)
                } else if revision > 0 && revision < compact {
                    Want::Etcd(EtcdError::Compacted)
                } else {
                    Want::Ok
                };
                let req = HashKvRequest { revision };
                let got = within(ANSWER, m.hash_kv(req)).await;
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    run.ensure(
                        resp.compact_revision == compact
                            && resp.header.is_some_and(|h| h.revision == rev),
                        || format!("{req:?} answered {resp:?} (compact {compact}, rev {rev})"),
                    );
                    if revision >= 0 {
                        let at = if revision == 0 { rev } else { revision };
                        let seen = *hashes.entry(at).or_insert(resp.hash);
                        run.ensure(seen == resp.hash, || {
                            format!("HashKV at {at}: {} then {}", seen, resp.hash)
                        });
                    }
                }
            }
            75..=79 => {
                let target_id = r.pick(&[0, me, 12345, u64::MAX, me ^ 1]);
                let req = MoveLeaderRequest { target_id };
                let (class, want) = if target_id == me {
                    ("move-leader: to itself", Want::Ok)
                } else {
                    (
                        "move-leader: 0 or unknown",
                        Want::Etcd(EtcdError::BadLeaderTransferee),
                    )
                };
                let got = within(ANSWER, m.move_leader(req)).await;
                if let Some(resp) = run.check(class, &req, &[want], got) {
                    run.ensure(resp.header.is_none(), || format!("{resp:?}"));
                }
            }
            80..=81 => {
                let got = within(ANSWER, m.defragment(DefragmentRequest {})).await;
                if let Some(resp) = run.check("defragment", &"Defragment", &[Want::Ok], got) {
                    run.ensure(resp.header.is_none(), || format!("{resp:?}"));
                }
            }
            82..=93 => {
                next_key += 1;
                let req = PutRequest {
                    key: format!("mk/{}", next_key % 40).into(),
                    value: "w".into(),
                    ..Default::default()
                };
                // With both raised, CORRUPT answers (etcd's order at a restart).
                let want = if corrupt {
                    Want::Etcd(EtcdError::Corrupt)
                } else if no_space {
                    Want::Etcd(EtcdError::NoSpace)
                } else {
                    Want::Ok
                };
                let got = within(ANSWER, kv.put(req.clone())).await;
                if let Some(resp) = run.check("kv: put under alarms", &req, &[want], got) {
                    rev += 1;
                    run.ensure(resp.header.is_some_and(|h| h.revision == rev), || {
                        format!("{resp:?}")
                    });
                }
            }
            _ => {
                let revision = match r.below(4) {
                    0 => compact,
                    1 => rev + 1,
                    _ if rev > compact => compact + 1 + r.below((rev - compact) as u64) as i64,
                    _ => rev,
                };
                let req = CompactionRequest {
                    revision,
                    physical: r.flag(),
                };
                let want = if corrupt {
                    Want::Etcd(EtcdError::Corrupt)
                } else if revision <= compact {
                    Want::Etcd(EtcdError::Compacted)
                } else if revision > rev {
                    Want::Etcd(EtcdError::FutureRev)
                } else {
                    Want::Ok
                };
                let got = within(ANSWER, kv.compact(req)).await;
                if run
                    .check("kv: compaction under alarms", &req, &[want], got)
                    .is_some()
                {
                    compact = revision;
                    hashes.clear();
                }
            }
        }
    }
    // Disarm everything: writes and /health come back.
    for (member_id, alarm) in std::mem::take(&mut alarms) {
        let req = AlarmRequest {
            action: 2,
            member_id,
            alarm,
        };
        let got = within(ANSWER, m.alarm(req)).await;
        run.check("alarm: DEACTIVATE raised", &req, &[Want::Ok], got);
    }
    run.finish().await;
}
