//! Crash safety of the real `retcd` binary (issue 3, acceptance 5).
//!
//! # SIGKILL under load
//! `sigkill_cycles_under_write_load` kills the server `RETCD_CRASH_CYCLES` times (default
//! 20) while several `etcd-client` clients put, delete and run txns on distinct and
//! shared keys. The moment of each kill is "after N acknowledged operations", N drawn
//! from the seed, so it lands under load rather than after a sleep. After every restart
//! the whole keyspace is compared with a model built only from what the clients were told:
//! every acknowledged write is there (unless an operation still in flight at the kill,
//! which may or may not have landed, overwrote it), nothing deleted comes back, mod
//! revisions are those acknowledged, and the revision never goes backwards.
//!
//! # Damaged files
//! With the server stopped (SIGKILL or SIGTERM), the tests damage its files, restart it,
//! and require exactly the outcome that `docs/wal-format.md` ("Recovery") and the
//! start-up checks call for. A refusal is exit code 1 with the reason in the log; no
//! outcome may be a panic. A start must serve exactly the expected keys, mod revisions and
//! revision (for the WAL, decoded by the test from the segment itself, independently of
//! the WAL crate), take a write, and survive a clean restart.
//!
//! | damage | outcome |
//! |---|---|
//! | WAL segment truncated, in its records or in the zeros after them | refused: "corrupt file <segment> at byte offset <new length>", shorter than preallocated |
//! | bytes flipped in a WAL record that a later record proves was fsynced | refused: corruption at that record's offset |
//! | bytes flipped in the segment prologue | refused: corruption "inside the segment prologue" at that record's offset |
//! | last N bytes of the records zeroed, or bytes of the last record flipped | a torn tail, dropped; then see the next two rows |
//! | ... dropping a hard state whose commit the backend already holds | refused: "backend consistent index C (<db>) is beyond the WAL's commit index W (<wal dir>)". After SIGTERM the backend holds the last commit, so this is certain; after SIGKILL it lags by up to 100 ms, so either this or the next row, each checked exactly |
//! | ... otherwise | starts with exactly the records before the damage: the writes in the dropped records are lost (a single member cannot tell this from a crash before they were written; wal-format.md, "Limits of detection") |
//! | backend file truncated | refused: "backend ..." (redb's reason) |
//! | backend header or a data page flipped or zeroed | refused, or, if redb can roll back to an older commit that verifies (or the damage hit no live page), starts with everything: the WAL replays the rest |
//! | snapshot files broken | skipped with a warning naming each; starts with everything, from an older snapshot or the start of the WAL |
//! | all snapshot files broken after the WAL below them was purged | refused: no snapshot marker to replay the WAL from |
//!
//! # Seeds
//! Each test prints its seed at the start and again on failure; `RETCD_CRASH_SEED=<n>`
//! replays it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{DEADLINE, Refusal, Retcd};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message as _;
use retcd_api::etcdserverpb::InternalRaftRequest;
use retcd_prng::SplitMix64;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Seeds and a small deterministic PRNG.

/// The test's seed: `RETCD_CRASH_SEED` if set, else the clock. Printed at the start, and
/// again with the command that replays it if the test fails.
struct Seed {
    test: &'static str,
    base: u64,
}

impl Seed {
    fn new(test: &'static str) -> Seed {
        let base = match std::env::var("RETCD_CRASH_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("RETCD_CRASH_SEED={s:?} is not a u64")),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {base}");
        Seed { test, base }
    }

    /// An independent stream of randomness for one part of the test.
    fn rng(&self, stream: u64) -> Rng {
        let a = SplitMix64::new(self.base ^ fnv1a(self.test.as_bytes())).next_u64();
        let s = a ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(SplitMix64::new(SplitMix64::new(s).next_u64()))
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {}; replay: RETCD_CRASH_SEED={} cargo test -p retcd-server --release --test crash {}",
                self.test, self.base, self.base, self.test
            );
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

struct Rng(SplitMix64);

impl Rng {
    /// Uniform in `0..n`; `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "range({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A byte to XOR with: never zero, so it always changes the byte.
    fn flip(&mut self) -> u8 {
        self.range(1, 255) as u8
    }
}

// ---------------------------------------------------------------------------------------
// Reading the store.

/// Every key as (value, mod revision), and the header's revision.
type Dump = (BTreeMap<String, (String, i64)>, i64);

async fn dump(c: &mut Client) -> Dump {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("range over all keys");
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8 key").to_owned(),
                (
                    kv.value_str().expect("utf-8 value").to_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect();
    (kvs, r.header().expect("header").revision())
}

/// Asserts that a server that refused to start did so cleanly: exit code 1 (not a
/// panic's 101, not a signal), no panic message, and every one of `needles` in its log.
fn assert_clean_refusal(refusal: &Refusal, needles: &[String], ctx: &str) {
    let log = &refusal.log;
    assert!(
        !log.contains("panicked at"),
        "{ctx}: the server panicked instead of refusing cleanly:\n{log}"
    );
    assert_eq!(
        refusal.status.code(),
        Some(1),
        "{ctx}: expected exit code 1, got {:?}; log:\n{log}",
        refusal.status
    );
    for needle in needles {
        assert!(
            log.contains(needle.as_str()),
            "{ctx}: the refusal does not mention {needle:?}; log:\n{log}"
        );
    }
}

fn assert_no_panic(log: &str, ctx: &str) {
    assert!(
        !log.contains("panicked at"),
        "{ctx}: the server panicked:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// SIGKILL cycles under write load.

const CLIENTS: u64 = 4;
const SHARED_KEYS: u64 = 12;
const OWN_KEYS: u64 = 40;
/// The kill comes after between 1 and this many acknowledged operations.
const MAX_ACKS_BEFORE_KILL: u64 = 300;
/// A small snapshot count, so that Raft snapshots (and crashes around them) happen too.
const KILL_CYCLE_ARGS: &[&str] = &["--snapshot-count", "400"];
/// How long a request in flight at the kill may take to fail before it is abandoned
/// (as "in flight", which the checks allow for). A bound, not a wait: requests fail as
/// soon as their connection drops.
const IN_FLIGHT_BOUND: Duration = Duration::from_secs(5);

/// What one outcome of an operation does to keys: a value, or `None` for a deletion.
type Effects = Vec<(String, Option<String>)>;

/// An operation a client sent.
#[derive(Clone, Debug)]
struct Op {
    client: u64,
    request: Request,
    /// The effects of each way the operation can go (a compare-and-swap txn has two).
    /// Once acknowledged, only the one that happened.
    outcomes: Vec<Effects>,
    /// The response's header revision, if the response was received.
    revision: Option<i64>,
}

#[derive(Clone, Debug)]
enum Request {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// A txn without compares: put one key and delete another at one revision.
    PutAndDelete {
        put: String,
        value: String,
        delete: String,
    },
    /// If the key does not exist put `if_absent`, else put `if_present`.
    CompareAndSwap {
        key: String,
        if_absent: String,
        if_present: String,
    },
    Compact {
        revision: i64,
    },
}

impl Request {
    fn outcomes(&self) -> Vec<Effects> {
        match self {
            Request::Put { key, value } => vec![vec![(key.clone(), Some(value.clone()))]],
            Request::Delete { key } => vec![vec![(key.clone(), None)]],
            Request::PutAndDelete { put, value, delete } => vec![vec![
                (put.clone(), Some(value.clone())),
                (delete.clone(), None),
            ]],
            Request::CompareAndSwap {
                key,
                if_absent,
                if_present,
            } => vec![
                vec![(key.clone(), Some(if_absent.clone()))],
                vec![(key.clone(), Some(if_present.clone()))],
            ],
            Request::Compact { .. } => Vec::new(),
        }
    }
}

/// A received response: its revision and which outcome happened.
struct Ack {
    revision: i64,
    outcome: usize,
}

fn pick_key(rng: &mut Rng, client: u64) -> String {
    if rng.chance(30) {
        format!("shared/{:02}", rng.below(SHARED_KEYS))
    } else {
        format!("c{client}/{:02}", rng.below(OWN_KEYS))
    }
}

/// The next request of `client`. Values are unique across the whole test, so a value
/// read back names the operation that wrote it.
fn next_request(rng: &mut Rng, client: u64, cycle: u64, n: u64, last_revision: i64) -> Request {
    let value = format!("v{cycle}.{client}.{n}");
    match rng.below(100) {
        0..=44 => Request::Put {
            key: pick_key(rng, client),
            value,
        },
        45..=59 => Request::Delete {
            key: pick_key(rng, client),
        },
        60..=79 => {
            let put = pick_key(rng, client);
            let mut delete = pick_key(rng, client);
            while delete == put {
                delete = pick_key(rng, client);
            }
            Request::PutAndDelete { put, value, delete }
        }
        80..=97 => Request::CompareAndSwap {
            key: pick_key(rng, client),
            if_absent: format!("{value}.new"),
            if_present: format!("{value}.over"),
        },
        _ if last_revision > 20 => Request::Compact {
            revision: last_revision - 10,
        },
        _ => Request::Put {
            key: pick_key(rng, client),
            value,
        },
    }
}

async fn issue(c: &mut Client, request: &Request) -> Result<Option<Ack>, etcd_client::Error> {
    fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
        h.expect("response header").revision()
    }
    let ack = |revision, outcome| Some(Ack { revision, outcome });
    match request {
        Request::Put { key, value } => {
            let r = c.put(key.as_str(), value.as_str(), None).await?;
            Ok(ack(rev(r.header()), 0))
        }
        Request::Delete { key } => {
            let r = c.delete(key.as_str(), None).await?;
            Ok(ack(rev(r.header()), 0))
        }
        Request::PutAndDelete { put, value, delete } => {
            let txn = Txn::new().and_then(vec![
                TxnOp::put(put.as_str(), value.as_str(), None),
                TxnOp::delete(delete.as_str(), None),
            ]);
            let r = c.txn(txn).await?;
            assert!(r.succeeded(), "a txn without compares succeeds");
            Ok(ack(rev(r.header()), 0))
        }
        Request::CompareAndSwap {
            key,
            if_absent,
            if_present,
        } => {
            let txn = Txn::new()
                .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key.as_str(), if_absent.as_str(), None)])
                .or_else(vec![TxnOp::put(key.as_str(), if_present.as_str(), None)]);
            let r = c.txn(txn).await?;
            Ok(ack(rev(r.header()), if r.succeeded() { 0 } else { 1 }))
        }
        Request::Compact { revision } => match c.compact(*revision, None).await {
            Ok(_) => Ok(None),
            // Another client compacted further already: an answer, not a failure.
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange => {
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// What a client did in one cycle.
struct ClientReport {
    /// Every operation with key effects it sent, acknowledged or not.
    ops: Vec<Op>,
    acked: u64,
    /// An error received while the server was still alive: a failure of the test.
    error_before_kill: Option<String>,
}

async fn in_flight_bound(mut killed: watch::Receiver<bool>) {
    let _ = killed.wait_for(|k| *k).await;
    tokio::time::sleep(IN_FLIGHT_BOUND).await;
}

/// One client's load: requests one after another until the server is killed.
async fn run_client(
    endpoint: String,
    client: u64,
    cycle: u64,
    mut rng: Rng,
    acks: Arc<watch::Sender<u64>>,
    killed: watch::Receiver<bool>,
) -> ClientReport {
    let mut report = ClientReport {
        ops: Vec::new(),
        acked: 0,
        error_before_kill: None,
    };
    let mut c = match Client::connect([endpoint], None).await {
        Ok(c) => c,
        Err(e) => {
            if !*killed.borrow() {
                report.error_before_kill = Some(format!("connect: {e}"));
            }
            return report;
        }
    };
    let mut last_revision = 0;
    for n in 0.. {
        if *killed.borrow() {
            break;
        }
        let request = next_request(&mut rng, client, cycle, n, last_revision);
        let outcomes = request.outcomes();
        let slot = (!outcomes.is_empty()).then(|| {
            report.ops.push(Op {
                client,
                request: request.clone(),
                outcomes,
                revision: None,
            });
            report.ops.len() - 1
        });
        let result = tokio::select! {
            biased;
            r = issue(&mut c, &request) => Some(r),
            () = in_flight_bound(killed.clone()) => None,
        };
        match result {
            Some(Ok(ack)) => {
                if let (Some(Ack { revision, outcome }), Some(i)) = (ack, slot) {
                    let op = &mut report.ops[i];
                    op.outcomes = vec![op.outcomes.swap_remove(outcome)];
                    op.revision = Some(revision);
                    last_revision = last_revision.max(revision);
                }
                report.acked += 1;
                acks.send_modify(|n| *n += 1);
            }
            Some(Err(e)) => {
                if !*killed.borrow() {
                    report.error_before_kill = Some(format!("{request:?}: {e}"));
                }
                break;
            }
            None => break,
        }
    }
    report
}

/// What the clients were told, checked against what a restarted server serves.
#[derive(Default)]
struct Model {
    /// The store as observed (and checked) after the last restart.
    confirmed: BTreeMap<String, (String, i64)>,
    /// The highest revision acknowledged or observed so far: no restart may show less.
    floor_revision: i64,
    /// Keys found holding the effect of an operation that was in flight at a kill.
    landed_in_flight: u64,
}

/// Per key, from one cycle's operations.
#[derive(Default)]
struct KeyHistory<'a> {
    /// The acknowledged write with the highest revision, and that revision.
    last_acked: Option<(i64, Option<String>, &'a Op)>,
    /// What operations in flight at the kill may have left in the key.
    in_flight: Vec<(Option<String>, &'a Op)>,
}

impl Model {
    /// Checks the restarted server against the model and the operations of the cycle
    /// before the kill, then adopts what it serves (every part of which was checked).
    async fn check_after_restart(&mut self, c: &mut Client, ops: &[Op], ctx: &str) {
        self.check(dump(c).await, ops, ctx);
    }

    fn check(&mut self, (actual, revision): Dump, ops: &[Op], ctx: &str) {
        let max_acked = ops.iter().filter_map(|o| o.revision).max().unwrap_or(0);
        let floor = self.floor_revision.max(max_acked);
        // (b) No revision goes backwards.
        assert!(
            revision >= floor,
            "{ctx}: the revision went backwards: the server says {revision}, but revision {floor} was acknowledged or observed before the kill"
        );

        let mut history: BTreeMap<&str, KeyHistory> = BTreeMap::new();
        for op in ops {
            match op.revision {
                Some(rev) => {
                    for (key, value) in &op.outcomes[0] {
                        let h = history.entry(key.as_str()).or_default();
                        match &h.last_acked {
                            // Two acknowledged operations can share a revision on one key
                            // only if both left it deleted (the second deleted nothing).
                            Some((r, v, other)) if *r == rev => assert_eq!(
                                v, value,
                                "{ctx}: test model: {other:?} and {op:?} both acknowledged at revision {rev} with different effects on {key}"
                            ),
                            Some((r, _, _)) if *r > rev => {}
                            _ => h.last_acked = Some((rev, value.clone(), op)),
                        }
                    }
                }
                None => {
                    for outcome in &op.outcomes {
                        for (key, value) in outcome {
                            history
                                .entry(key.as_str())
                                .or_default()
                                .in_flight
                                .push((value.clone(), op));
                        }
                    }
                }
            }
        }

        let keys: BTreeSet<&str> = self
            .confirmed
            .keys()
            .map(String::as_str)
            .chain(history.keys().copied())
            .chain(actual.keys().map(String::as_str))
            .collect();
        let none = KeyHistory::default();
        for key in keys {
            let h = history.get(key).unwrap_or(&none);
            // What the key must hold if nothing in flight landed after the last
            // acknowledged write, and the revision any later write must exceed.
            let (expected, after) = match &h.last_acked {
                Some((rev, Some(v), _)) => (Some((v.clone(), *rev)), *rev),
                Some((rev, None, _)) => (None, *rev),
                None => {
                    let e = self.confirmed.get(key).cloned();
                    let after = e.as_ref().map_or(0, |(_, r)| *r);
                    (e, after)
                }
            };
            let got = actual.get(key);
            let landed = |v: &Option<String>| h.in_flight.iter().any(|(w, _)| w == v);
            let explain = || {
                format!(
                    "last acknowledged: {:?}; in flight at the kill: {:?}",
                    h.last_acked
                        .as_ref()
                        .map(|(r, v, op)| (r, v, op.client, &op.request)),
                    h.in_flight
                        .iter()
                        .map(|(v, op)| (v, op.client, &op.request))
                        .collect::<Vec<_>>()
                )
            };
            match (got, &expected) {
                (Some((v, m)), Some((ev, er))) if v == ev => {
                    // (d) The last acknowledged write is the key's last write.
                    assert_eq!(
                        m,
                        er,
                        "{ctx}: {key} holds its last acknowledged value {v:?} with mod revision {m}, acknowledged at {er}; {}",
                        explain()
                    );
                }
                (None, None) => {}
                (None, Some(_)) if landed(&None) => self.landed_in_flight += 1,
                (None, Some((ev, er))) => panic!(
                    "{ctx}: acknowledged write lost: {key} is absent, it must hold {ev:?} (revision {er}); {}",
                    explain()
                ),
                (Some((v, m)), _) if landed(&Some(v.clone())) => {
                    assert!(
                        *m > after && *m <= revision,
                        "{ctx}: {key} holds {v:?} from an operation in flight at the kill, at mod revision {m}, not after the last acknowledged write ({after}) and at most the current revision {revision}; {}",
                        explain()
                    );
                    self.landed_in_flight += 1;
                }
                (Some((v, m)), None) => panic!(
                    "{ctx}: resurrected: {key} holds {v:?} (mod revision {m}) but its last acknowledged operation deleted it or it was never written; {}",
                    explain()
                ),
                (Some((v, m)), Some((ev, er))) => panic!(
                    "{ctx}: {key} holds {v:?} (mod revision {m}), which no operation in flight wrote, instead of its last acknowledged value {ev:?} (revision {er}); {}",
                    explain()
                ),
            }
            if let Some((_, m)) = got {
                assert!(
                    *m <= revision,
                    "{ctx}: {key} has mod revision {m} beyond the current revision {revision}"
                );
            }
        }
        self.confirmed = actual;
        self.floor_revision = revision;
    }
}

// Goal: SIGKILL at random moments under concurrent puts, deletes and txns never loses an
// acknowledged write, never resurrects a deleted key, keeps acknowledged mod revisions,
// and never moves the revision backwards, across many crash/restart cycles on one data
// directory (some of them crashing again during recovery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_cycles_under_write_load() {
    let seed = Seed::new("sigkill_cycles_under_write_load");
    let cycles: u64 = std::env::var("RETCD_CRASH_CYCLES").map_or(20, |s| {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("RETCD_CRASH_CYCLES={s:?} is not a number"))
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = seed.rng(0);
    let mut model = Model::default();
    let mut before_kill: Vec<Op> = Vec::new();
    let (mut total_acked, mut total_in_flight, mut recovery_kills) = (0u64, 0u64, 0u64);
    for cycle in 0..=cycles {
        if cycle > 0 && rng.chance(25) {
            // Crash again while recovering from the last crash.
            let mut s = Retcd::spawn(&data, KILL_CYCLE_ARGS);
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            s.kill();
            assert_no_panic(&s.log(), &format!("cycle {cycle}, killed in recovery"));
            recovery_kills += 1;
        }
        let mut s = Retcd::start(&data, KILL_CYCLE_ARGS);
        let ctx = format!("cycle {cycle} (seed {})", seed.base);
        {
            let mut c = s.client().await;
            model.check_after_restart(&mut c, &before_kill, &ctx).await;
        }
        if cycle == cycles {
            let status = s.terminate();
            assert!(
                status.success(),
                "{ctx}: exit {status:?}; log:\n{}",
                s.log()
            );
            break;
        }

        let target = rng.range(1, MAX_ACKS_BEFORE_KILL);
        let (acks_tx, mut acks) = watch::channel(0u64);
        let acks_tx = Arc::new(acks_tx);
        let (killed_tx, killed) = watch::channel(false);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|w| {
                tokio::spawn(run_client(
                    s.endpoint(),
                    w,
                    cycle,
                    seed.rng(1 + cycle * CLIENTS + w),
                    acks_tx.clone(),
                    killed.clone(),
                ))
            })
            .collect();
        drop(acks_tx);
        // Ends early (with an error) only if every client stopped.
        // The guard `wait_for` returns holds the channel's lock: drop it at once.
        let reached = tokio::time::timeout(DEADLINE, acks.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        killed_tx.send_replace(true);
        s.kill();
        assert_no_panic(&s.log(), &ctx);
        before_kill.clear();
        let mut acked = 0;
        for (w, task) in clients.into_iter().enumerate() {
            let report = task.await.expect("client task");
            assert!(
                report.error_before_kill.is_none(),
                "{ctx}: client {w} failed while the server was up: {}; log:\n{}",
                report.error_before_kill.unwrap_or_default(),
                s.log()
            );
            acked += report.acked;
            before_kill.extend(report.ops);
        }
        assert!(
            reached,
            "{ctx}: the clients did not reach {target} acknowledged operations ({acked} did)"
        );
        total_acked += acked;
        total_in_flight += before_kill.iter().filter(|o| o.revision.is_none()).count() as u64;
    }
    eprintln!(
        "{cycles} kills under load ({recovery_kills} more during recovery): {total_acked} acknowledged operations, {total_in_flight} in flight at a kill, {} keys holding their effect; final revision {}",
        model.landed_in_flight, model.floor_revision
    );
    assert!(total_acked >= cycles, "every cycle acknowledged something");
}

// ---------------------------------------------------------------------------------------
// The WAL's last segment, read independently of the WAL crate (docs/wal-format.md).

const FRAME_HEADER_BYTES: usize = 20;
const RECORD_ENTRY: u8 = 3;
const RECORD_HARD_STATE: u8 = 4;

#[derive(Clone, Debug)]
struct Frame {
    start: usize,
    /// Past the padding: where the next frame starts.
    end: usize,
    rtype: u8,
    /// Bytes of the segment fsynced when this frame was written.
    durable: u64,
    payload: std::ops::Range<usize>,
}

struct Segment {
    path: PathBuf,
    bytes: Vec<u8>,
    frames: Vec<Frame>,
    prealloc_bytes: u64,
}

impl Segment {
    /// The only segment of a freshly written data directory.
    fn read(data: &Path) -> Segment {
        let wal_dir = data.join("member/wal");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 1, "expected one segment: {names:?}");
        let path = names.pop().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut frames = Vec::new();
        let mut off = 0;
        while off + FRAME_HEADER_BYTES <= bytes.len()
            && bytes[off..off + FRAME_HEADER_BYTES].iter().any(|b| *b != 0)
        {
            let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
            let durable = u64::from_le_bytes(bytes[off + 12..off + 20].try_into().unwrap());
            let end = (off + FRAME_HEADER_BYTES + len).next_multiple_of(8);
            frames.push(Frame {
                start: off,
                end,
                rtype: bytes[off + 8],
                durable,
                payload: off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len,
            });
            off = end;
        }
        assert!(
            frames.len() > 2,
            "a segment starts with header and metadata"
        );
        // Segment header payload: seq u64, first_index u64, salt u32, prealloc_bytes u64.
        let p = &bytes[frames[0].payload.clone()];
        let prealloc_bytes = u64::from_le_bytes(p[20..28].try_into().unwrap());
        Segment {
            path,
            bytes,
            frames,
            prealloc_bytes,
        }
    }

    /// End of the last record: where the preallocated zeros begin.
    fn written_end(&self) -> usize {
        self.frames.last().unwrap().end
    }

    fn prologue_end(&self) -> usize {
        self.frames[1].end
    }

    fn commit_in(&self, frames: &[Frame]) -> u64 {
        frames
            .iter()
            .rev()
            .find(|f| f.rtype == RECORD_HARD_STATE)
            .map_or(0, |f| {
                let p = &self.bytes[f.payload.clone()];
                u64::from_le_bytes(p[16..24].try_into().unwrap())
            })
    }

    /// The store that replaying the entries of `frames` builds: every entry, since a
    /// restarted single member commits its whole log.
    fn replay(&self, frames: &[Frame]) -> Dump {
        let mut kvs: BTreeMap<String, (String, i64)> = BTreeMap::new();
        let mut revision = 1;
        for f in frames.iter().filter(|f| f.rtype == RECORD_ENTRY) {
            // Entry payload: term u64, index u64, entry_type u8, data.
            let p = &self.bytes[f.payload.clone()];
            let index = u64::from_le_bytes(p[8..16].try_into().unwrap());
            if p[16] != 0 {
                // The bootstrap configuration change, the log's first entry.
                assert_eq!(index, 1, "only normal entries after the bootstrap entry");
                continue;
            }
            let data = &p[17..];
            if data.is_empty() {
                continue;
            }
            let req = InternalRaftRequest::decode(data).expect("entry decodes as a request");
            if let Some(put) = req.put {
                revision += 1;
                kvs.insert(
                    String::from_utf8(put.key.to_vec()).unwrap(),
                    (String::from_utf8(put.value.to_vec()).unwrap(), revision),
                );
            } else if let Some(del) = req.delete_range {
                assert!(del.range_end.is_empty(), "single-key deletes only");
                if kvs
                    .remove(&String::from_utf8(del.key.to_vec()).unwrap())
                    .is_some()
                {
                    revision += 1;
                }
            } else if req.cluster_member_attr_set.is_none() {
                // (A member publishing its attributes changes no key.)
                panic!("unexpected request in the WAL: {req:?}");
            }
        }
        (kvs, revision)
    }

    /// The frames that start before `offset`.
    fn frames_before(&self, offset: usize) -> &[Frame] {
        let n = self.frames.iter().take_while(|f| f.end <= offset).count();
        &self.frames[..n]
    }
}

/// How the server was stopped before its files were damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

/// Writes puts and deletes one at a time, each acknowledged, then stops the server.
/// Returns what the server served just before the stop.
async fn write_then_stop(data: &Path, rng: &mut Rng, stop: Stop, args: &[&str], ops: u64) -> Dump {
    let mut s = Retcd::start(data, args);
    let mut c = s.client().await;
    let mut live: Vec<String> = Vec::new();
    for i in 0..ops {
        if !live.is_empty() && rng.chance(20) {
            let key = live.swap_remove(rng.below(live.len() as u64) as usize);
            let r = c.delete(key, None).await.unwrap();
            assert_eq!(r.deleted(), 1);
        } else {
            let key = format!("d/{:02}", rng.below(12));
            c.put(key.as_str(), format!("v{i}.{}", rng.below(1000)), None)
                .await
                .unwrap();
            if !live.contains(&key) {
                live.push(key);
            }
        }
    }
    let before = dump(&mut c).await;
    drop(c);
    match stop {
        Stop::Kill => s.kill(),
        Stop::Term => {
            let status = s.terminate();
            assert!(status.success(), "exit {status:?}; log:\n{}", s.log());
        }
    }
    before
}

/// What a restart after damage must do.
#[derive(Debug)]
enum Expect {
    /// Exit 1 with all of these in the log.
    Refused(Vec<String>),
    /// Start and serve exactly this.
    Started(Dump),
    /// Either exit 1 with all of these in the log, or start and serve exactly `state`.
    RefusedOrStarted { needles: Vec<String>, state: Dump },
    /// After SIGKILL, when the damage took the hard state recording commit index
    /// `last_commit` and left `wal_commit`: the outcome depends on the backend's last
    /// durable commit. If it is ahead of `wal_commit`, a refusal naming both indexes;
    /// otherwise start and serve exactly `state`.
    DependsOnBackend {
        state: Dump,
        wal_commit: u64,
        last_commit: u64,
    },
}

fn backend_ahead_needle(wal_commit: u64) -> String {
    format!("is beyond the WAL's commit index {wal_commit} (")
}

/// Restarts after damage and checks the outcome against `expect`; a start must also log
/// each of `warnings`, take a write, and survive a clean restart.
async fn restart_and_check(
    data: &Path,
    args: &[&str],
    expect: &Expect,
    warnings: &[String],
    ctx: &str,
) {
    let result = Retcd::try_start(data, args);
    let (mut s, expected) = match (result, expect) {
        (Err(refusal), Expect::Refused(needles) | Expect::RefusedOrStarted { needles, .. }) => {
            assert_clean_refusal(&refusal, needles, ctx);
            eprintln!(
                "{ctx}: refused as expected: {}",
                refusal.log.lines().last().unwrap_or_default()
            );
            return;
        }
        (
            Err(refusal),
            Expect::DependsOnBackend {
                wal_commit,
                last_commit,
                ..
            },
        ) => {
            assert_clean_refusal(&refusal, &[backend_ahead_needle(*wal_commit)], ctx);
            let ci = refusal
                .log
                .split("backend consistent index ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{ctx}: no consistent index in:\n{}", refusal.log));
            assert!(
                ci > *wal_commit && ci <= *last_commit,
                "{ctx}: backend consistent index {ci} not in ({wal_commit}, {last_commit}]"
            );
            eprintln!("{ctx}: refused: the backend is at {ci}, beyond the WAL's {wal_commit}");
            return;
        }
        (Err(refusal), Expect::Started(_)) => panic!(
            "{ctx}: expected a start, the server exited with {:?}; log:\n{}",
            refusal.status, refusal.log
        ),
        (Ok(s), Expect::Refused(needles)) => panic!(
            "{ctx}: expected a refusal mentioning {needles:?}, the server started; log:\n{}",
            s.log()
        ),
        (
            Ok(s),
            Expect::Started(state)
            | Expect::RefusedOrStarted { state, .. }
            | Expect::DependsOnBackend { state, .. },
        ) => (s, state),
    };
    let (kvs, revision) = expected.clone();
    eprintln!("{ctx}: started as expected, at revision {revision}");
    let log = s.log();
    for w in warnings {
        assert!(
            log.contains(w.as_str()),
            "{ctx}: the log does not mention {w:?}:\n{log}"
        );
    }
    let mut c = s.client().await;
    let got = dump(&mut c).await;
    assert_eq!(
        got,
        (kvs.clone(), revision),
        "{ctx}: the restarted server does not serve exactly the surviving records"
    );
    // The repaired log takes new writes and survives a clean restart.
    let r = c.put("after-damage", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), revision + 1, "{ctx}");
    drop(c);
    let status = s.terminate();
    assert!(
        status.success(),
        "{ctx}: exit {status:?}; log:\n{}",
        s.log()
    );
    assert_no_panic(&s.log(), ctx);
    let s = Retcd::start(data, args);
    let mut c = s.client().await;
    let mut want = kvs;
    want.insert("after-damage".into(), ("x".into(), revision + 1));
    assert_eq!(
        dump(&mut c).await,
        (want, revision + 1),
        "{ctx}: after a clean restart"
    );
}

/// Damage to the last WAL segment.
#[derive(Clone, Copy, Debug)]
enum WalDamage {
    /// Truncate somewhere in the preallocated zeros after the last record.
    TruncateAfterRecords,
    /// Truncate somewhere inside the records (after the prologue).
    TruncateInRecords,
    /// Zero the last N bytes of the records.
    ZeroTail,
    /// Flip bytes of the last record.
    FlipLastRecord,
    /// Flip bytes of a record that later records prove was fsynced, or of the prologue.
    FlipMiddle,
}

/// Damages `seg` on disk and says what a restart must do.
fn damage_wal(seg: &Segment, damage: WalDamage, stop: Stop, rng: &mut Rng) -> (Expect, String) {
    let file = seg.path.display().to_string();
    let w = seg.written_end();
    let mut bytes = seg.bytes.clone();
    let truncated = |len: usize| {
        vec![
            format!("corrupt file {file} at byte offset {len}"),
            format!("shorter than the {} bytes", seg.prealloc_bytes),
        ]
    };
    let (expect, what) = match damage {
        WalDamage::TruncateAfterRecords | WalDamage::TruncateInRecords => {
            let len = match damage {
                WalDamage::TruncateAfterRecords => rng.range(w as u64, seg.prealloc_bytes - 1),
                _ => rng.range(seg.prologue_end() as u64, w as u64 - 1),
            } as usize;
            bytes.truncate(len);
            (
                Expect::Refused(truncated(len)),
                format!("truncated to {len} bytes (records end at {w})"),
            )
        }
        WalDamage::ZeroTail | WalDamage::FlipLastRecord => {
            let what = if let WalDamage::ZeroTail = damage {
                let n = rng.range(1, 600.min((w - seg.prologue_end()) as u64)) as usize;
                bytes[w - n..w].fill(0);
                format!("zeroed the last {n} bytes of records (ending at {w})")
            } else {
                let last = seg.frames.last().unwrap();
                let mut at = Vec::new();
                for _ in 0..rng.range(1, 3) {
                    let p = rng.range(last.start as u64, last.end as u64 - 1) as usize;
                    bytes[p] ^= rng.flip();
                    at.push(p);
                }
                format!(
                    "flipped bytes {at:?} of the last record [{}, {})",
                    last.start, last.end
                )
            };
            // Reading stops at the first frame with a changed byte; everything from
            // there is a torn tail: no later frame survives to prove it was fsynced.
            let first_changed = (0..w).find(|&i| bytes[i] != seg.bytes[i]).unwrap_or(w);
            let torn_at = seg
                .frames
                .iter()
                .find(|f| f.end > first_changed)
                .map_or(w, |f| f.start);
            let surviving = seg.frames_before(torn_at);
            let wal_commit = seg.commit_in(surviving);
            let last_commit = seg.commit_in(&seg.frames);
            let state = seg.replay(surviving);
            let expect = match stop {
                // A clean stop made the backend durable at the last commit.
                Stop::Term if last_commit > wal_commit => {
                    let member = seg.path.parent().and_then(Path::parent).unwrap();
                    Expect::Refused(vec![
                        format!(
                            "backend consistent index {last_commit} ({})",
                            member.join("snap/db").display()
                        ),
                        format!(
                            "{}{})",
                            backend_ahead_needle(wal_commit),
                            member.join("wal").display()
                        ),
                    ])
                }
                Stop::Kill if last_commit > wal_commit => Expect::DependsOnBackend {
                    state,
                    wal_commit,
                    last_commit,
                },
                _ => Expect::Started(state),
            };
            (expect, format!("{what}; torn from offset {torn_at}"))
        }
        WalDamage::FlipMiddle => {
            let prologue = rng.chance(25);
            // A frame is provably fsynced if a later frame says so.
            let candidates: Vec<&Frame> = seg
                .frames
                .iter()
                .enumerate()
                .filter(|(i, f)| {
                    if prologue {
                        *i < 2
                    } else {
                        *i >= 2
                            && seg.frames[i + 1..]
                                .iter()
                                .any(|g| g.durable > f.start as u64)
                    }
                })
                .map(|(_, f)| f)
                .collect();
            let f = candidates[rng.below(candidates.len() as u64) as usize];
            let p = rng.range(f.start as u64, f.end as u64 - 1) as usize;
            bytes[p] ^= rng.flip();
            let reason = if prologue {
                "inside the segment prologue"
            } else {
                "was written after this offset had been fsynced"
            };
            (
                Expect::Refused(vec![
                    format!("corrupt file {file} at byte offset {}", f.start),
                    reason.to_owned(),
                ]),
                format!("flipped byte {p} of the record at {}", f.start),
            )
        }
    };
    std::fs::write(&seg.path, &bytes).unwrap();
    (expect, what)
}

async fn wal_damage_case(test: &'static str, damage: WalDamage) {
    let seed = Seed::new(test);
    let stops = [Stop::Kill, Stop::Term, Stop::Kill, Stop::Term];
    for (round, stop) in stops.into_iter().enumerate() {
        let mut rng = seed.rng(round as u64);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let served = write_then_stop(&data, &mut rng, stop, &[], 40).await;
        let seg = Segment::read(&data);
        // The test's own reading of the segment agrees with what the server served.
        assert_eq!(seg.replay(&seg.frames), served, "decoding the WAL");
        let (expect, what) = damage_wal(&seg, damage, stop, &mut rng);
        let ctx = format!("{test} after {stop:?}: {what} (seed {})", seed.base);
        restart_and_check(&data, &[], &expect, &[], &ctx).await;
    }
}

// Goal: a WAL segment cut short anywhere after its records is refused (segments never
// shrink below their preallocated size), naming the file and the new length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_truncated_after_records_is_refused() {
    wal_damage_case(
        "wal_truncated_after_records_is_refused",
        WalDamage::TruncateAfterRecords,
    )
    .await;
}

// Goal: a WAL segment cut short inside its records is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_truncated_in_records_is_refused() {
    wal_damage_case(
        "wal_truncated_in_records_is_refused",
        WalDamage::TruncateInRecords,
    )
    .await;
}

// Goal: zeroing the end of the records is a torn tail: the zeroed records are dropped;
// if that loses a commit the backend already holds, the start is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_zeroed_tail_is_dropped_or_refused() {
    wal_damage_case("wal_zeroed_tail_is_dropped_or_refused", WalDamage::ZeroTail).await;
}

// Goal: a damaged last record is a torn tail, with the same outcomes as a zeroed tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_damaged_last_record_is_dropped_or_refused() {
    wal_damage_case(
        "wal_damaged_last_record_is_dropped_or_refused",
        WalDamage::FlipLastRecord,
    )
    .await;
}

// Goal: damage in the middle of the log (or in the prologue) is corruption: refused,
// naming the file and the damaged record's offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_damage_in_the_middle_is_refused() {
    wal_damage_case("wal_damage_in_the_middle_is_refused", WalDamage::FlipMiddle).await;
}

// ---------------------------------------------------------------------------------------
// The backend file and the snapshot files.

/// Damage to the backend's redb file (`member/snap/db`).
#[derive(Clone, Copy, Debug)]
enum DbDamage {
    /// Cut the file short (but not to nothing).
    Truncate,
    /// Flip bytes of redb's header: magic, god byte and the two commit slots.
    FlipHeader,
    /// Zero a whole 4 KiB page that holds data.
    ZeroPage,
    /// Flip bytes in a 4 KiB page that holds data.
    FlipInPage,
}

/// Damages the backend file. Returns whether a refusal is the only acceptable outcome.
fn damage_db(db: &Path, damage: DbDamage, rng: &mut Rng) -> (bool, String) {
    const PAGE: usize = 4096;
    let mut bytes = std::fs::read(db).unwrap();
    let len = bytes.len();
    // Pages after the header page that hold anything; some may hold only freed data.
    let used: Vec<usize> = (1..len / PAGE)
        .filter(|p| bytes[p * PAGE..(p + 1) * PAGE].iter().any(|b| *b != 0))
        .collect();
    assert!(!used.is_empty(), "a backend with data has used pages");
    let mut page = || used[rng.below(used.len() as u64) as usize];
    let (refusal_only, what) = match damage {
        DbDamage::Truncate => {
            let n = rng.range(1, len as u64 - 1) as usize;
            bytes.truncate(n);
            (true, format!("truncated to {n} of {len} bytes"))
        }
        DbDamage::FlipHeader => {
            let at: Vec<usize> = (0..2).map(|_| rng.below(512) as usize).collect();
            for &p in &at {
                bytes[p] ^= rng.flip();
            }
            (false, format!("flipped header bytes {at:?}"))
        }
        DbDamage::ZeroPage => {
            let p = page();
            bytes[p * PAGE..(p + 1) * PAGE].fill(0);
            (
                false,
                format!("zeroed page {p} (pages with data: {used:?})"),
            )
        }
        DbDamage::FlipInPage => {
            let p = page();
            let at: Vec<usize> = (0..2)
                .map(|_| p * PAGE + rng.below(PAGE as u64) as usize)
                .collect();
            for &i in &at {
                bytes[i] ^= rng.flip();
            }
            (
                false,
                format!("flipped bytes {at:?} in page {p} (pages with data: {used:?})"),
            )
        }
    };
    std::fs::write(db, &bytes).unwrap();
    (refusal_only, what)
}

// Goal: a damaged backend file never makes the server panic (redb panics on damaged
// pages of a file it trusts, so every open verifies page checksums). A truncated file is
// refused; other damage is either refused as corruption or, if redb can roll back to an
// older commit that verifies (or the damage hit no live page), repaired: the WAL then
// replays the rest and the server serves exactly what it served before the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backend_is_refused_or_rolled_back_never_a_panic() {
    let test = "damaged_backend_is_refused_or_rolled_back_never_a_panic";
    let seed = Seed::new(test);
    let kinds = [
        DbDamage::Truncate,
        DbDamage::FlipHeader,
        DbDamage::ZeroPage,
        DbDamage::FlipInPage,
    ];
    // Twice each: whether damage hits a live page is down to the seed.
    for (round, (kind, stop)) in kinds
        .iter()
        .flat_map(|k| [(*k, Stop::Kill), (*k, Stop::Term)])
        .flat_map(|c| [c, c])
        .enumerate()
    {
        let mut rng = seed.rng(round as u64);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let served = write_then_stop(&data, &mut rng, stop, &[], 40).await;
        let (refusal_only, what) = damage_db(&data.join("member/snap/db"), kind, &mut rng);
        let ctx = format!("{test} after {stop:?}: {what} (seed {})", seed.base);
        // "backend data is corrupted: ...", or for a damaged magic number "backend I/O
        // error: Not a redb database".
        let needles = vec!["cannot start the member: backend ".to_owned()];
        let expect = if refusal_only {
            Expect::Refused(needles)
        } else {
            Expect::RefusedOrStarted {
                needles,
                state: served,
            }
        };
        restart_and_check(&data, &[], &expect, &[], &ctx).await;
    }
}

/// Snapshot files (`member/snap/*.snap`), newest first.
fn snapshot_files(data: &Path) -> Vec<PathBuf> {
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(data.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    snaps.reverse();
    snaps
}

/// Flips a byte of the file or truncates it.
fn damage_file(path: &Path, rng: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let what = if rng.chance(50) {
        let p = rng.below(bytes.len() as u64) as usize;
        bytes[p] ^= rng.flip();
        format!("flipped byte {p} of {}", path.display())
    } else {
        let n = rng.below(bytes.len() as u64) as usize;
        bytes.truncate(n);
        format!("truncated {} to {n} bytes", path.display())
    };
    std::fs::write(path, &bytes).unwrap();
    what
}

// Goal: broken snapshot files are skipped with a warning naming each one, and the member
// restarts from an older snapshot, or from the start of the WAL, with all its data (a
// snapshot holds only Raft metadata; the backend holds the state, and WAL segments are
// purged only below the newest snapshot, so the log reaches back far enough).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_snapshot_files_are_skipped() {
    let test = "broken_snapshot_files_are_skipped";
    let seed = Seed::new(test);
    let args = &["--snapshot-count", "20"];
    for (round, (all, stop)) in [
        (false, Stop::Kill),
        (false, Stop::Term),
        (true, Stop::Kill),
        (true, Stop::Term),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = seed.rng(round as u64);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let served = write_then_stop(&data, &mut rng, stop, args, 100).await;
        let snaps = snapshot_files(&data);
        assert!(
            snaps.len() >= 2,
            "expected several snapshot files: {snaps:?}"
        );
        let damaged = if all { &snaps[..] } else { &snaps[..1] };
        let what: Vec<String> = damaged.iter().map(|p| damage_file(p, &mut rng)).collect();
        let warnings: Vec<String> = damaged
            .iter()
            .map(|p| format!("skipping a broken snapshot file file={}", p.display()))
            .collect();
        let ctx = format!("{test} after {stop:?}: {what:?} (seed {})", seed.base);
        restart_and_check(&data, args, &Expect::Started(served), &warnings, &ctx).await;
    }
}

// Goal: once WAL segments below the newest snapshots are purged, broken snapshot files
// leave no position to replay the WAL from: the start is refused, with a warning naming
// the broken file and an error naming the WAL directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_snapshots_after_wal_purge_are_refused() {
    let test = "broken_snapshots_after_wal_purge_are_refused";
    let seed = Seed::new(test);
    let mut rng = seed.rng(0);
    // --max-wals 1: etcd's default keeps 5 segments (320 MiB here) past their release.
    let args = &["--snapshot-count", "10", "--max-wals", "1"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let wal_dir = data.join("member/wal");
    let segments = || {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    {
        let mut s = Retcd::start(&data, args);
        let mut c = s.client().await;
        // One-MiB values fill the first 64 MiB segment after some 64 puts; snapshots
        // every 10 entries then let it be purged.
        let value = "x".repeat(1 << 20);
        let mut first_segment = true;
        for i in 0.. {
            assert!(i < 200, "the first WAL segment was never purged");
            c.put(format!("big/{:03}", rng.below(1000)), value.as_str(), None)
                .await
                .unwrap();
            if i % 8 == 0 {
                first_segment = wal_dir
                    .join("0000000000000000-0000000000000000.wal")
                    .exists();
                if !first_segment {
                    break;
                }
            }
        }
        assert!(!first_segment && segments() >= 1);
        drop(c);
        let status = s.terminate();
        assert!(status.success(), "exit {status:?}; log:\n{}", s.log());
    }
    let snaps = snapshot_files(&data);
    assert!(!snaps.is_empty());
    let what: Vec<String> = snaps.iter().map(|p| damage_file(p, &mut rng)).collect();
    // Only snapshots whose marker is in a remaining segment are candidates; the newest
    // one is, and its warning names it.
    let mut needles = vec![format!(
        "skipping a broken snapshot file file={}",
        snaps[0].display()
    )];
    needles.push(format!(
        "wal: no snapshot marker for index 0 term 0 in {}",
        wal_dir.display()
    ));
    let ctx = format!("{test}: {what:?} (seed {})", seed.base);
    restart_and_check(&data, args, &Expect::Refused(needles), &[], &ctx).await;
}

// Goal: the checker of the kill cycles catches what it is there to catch: a lost
// acknowledged write, a resurrected key, a wrong mod revision, a revision that went
// backwards, and a value nobody wrote; and it accepts writes in flight at the kill.
#[test]
fn the_kill_cycle_checker_catches_violations() {
    let put = |key: &str, value: &str, revision: Option<i64>| Op {
        client: 0,
        request: Request::Put {
            key: key.into(),
            value: value.into(),
        },
        outcomes: vec![vec![(key.into(), Some(value.into()))]],
        revision,
    };
    let delete = |key: &str, revision: Option<i64>| Op {
        client: 1,
        request: Request::Delete { key: key.into() },
        outcomes: vec![vec![(key.into(), None)]],
        revision,
    };
    let ops = vec![
        put("a", "a1", Some(2)),
        put("b", "b1", Some(3)),
        delete("b", Some(4)),
        put("a", "a2", None),
        put("c", "c1", None),
    ];
    let state = |kvs: &[(&str, &str, i64)], revision: i64| -> Dump {
        (
            kvs.iter()
                .map(|(k, v, r)| (k.to_string(), (v.to_string(), *r)))
                .collect(),
            revision,
        )
    };
    let passes =
        |d: Dump| std::panic::catch_unwind(|| Model::default().check(d, &ops, "self-test")).is_ok();
    // Nothing in flight landed; or both writes in flight landed.
    assert!(passes(state(&[("a", "a1", 2)], 4)));
    assert!(passes(state(&[("a", "a2", 5), ("c", "c1", 6)], 6)));
    // Violations.
    assert!(!passes(state(&[], 4)), "lost write");
    assert!(
        !passes(state(&[("a", "a1", 2), ("b", "b1", 3)], 4)),
        "resurrected"
    );
    assert!(!passes(state(&[("a", "a1", 3)], 4)), "mod revision");
    assert!(!passes(state(&[("a", "a1", 2)], 3)), "revision backwards");
    assert!(!passes(state(&[("a", "zz", 4)], 4)), "invented value");
    assert!(
        !passes(state(&[("a", "a2", 2)], 4)),
        "in-flight write before the acknowledged one"
    );
}
