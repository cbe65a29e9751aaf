//! Apply against hostile logs: arbitrary and mutated `InternalRaftRequest`s (and entries
//! that do not decode at all) applied to two fresh replicas never panic, and the replicas
//! answer every entry alike and end with the same store (HashKV, Hash) and leases.
//!
//! The replicas differ in everything apply must not depend on: the batches the log is
//! cut into, and the time (`BatchContext::now`) each batch is applied at.
//!
//! 5,000 cases by default (CI); `RETCD_APPLY_CASES=100000` for the soak,
//! `RETCD_APPLY_SEED` to replay. A failure prints the seed and the case.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use retcd_api::etcdserverpb::{
    AlarmRequest, AuthEnableRequest, CompactionRequest, Compare, DeleteRangeRequest,
    InternalRaftRequest, LeaseCheckpoint, LeaseCheckpointRequest, LeaseExpireRequest, LeaseExpiry,
    LeaseGrantRequest, LeaseRenewRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare, request_op,
};
use retcd_api::membershippb::{Attributes, ClusterMemberAttrSetRequest};
use retcd_backend::MemBackend;
use retcd_lease::Time;
use retcd_mvcc::KvStore;
use retcd_prng::SplitMix64;
use retcd_raft::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};

use super::*;
use crate::ids::MemberId;
use crate::membership::{Member, Membership};

const DEFAULT_CASES: u64 = 5_000;
const DEFAULT_SEED: u64 = 20_261_207;

/// The generator, with this test's keys, values and ids on top of `SplitMix64`'s hostile
/// numbers.
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
    /// Hostile numbers, or small ones that hit real state (revisions, lease ids).
    fn i64(&mut self) -> i64 {
        self.hostile_i64(12)
    }
    fn u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            _ => self.below(40),
        }
    }
    fn enum_value(&mut self) -> i32 {
        self.hostile_enum()
    }
    fn lease(&mut self) -> i64 {
        match self.below(6) {
            0 => 0,
            1 => self.i64(),
            _ => 1 + self.below(4) as i64,
        }
    }
    fn key(&mut self) -> Bytes {
        match self.below(8) {
            0 => Bytes::new(),
            1 => Bytes::from_static(b"\0"),
            2 => Bytes::from(vec![0xff; 1 + self.below(3) as usize]),
            _ => Bytes::from(format!("k{}", self.below(8))),
        }
    }
    fn range_end(&mut self) -> Bytes {
        match self.below(4) {
            0 => Bytes::new(),
            _ => self.key(),
        }
    }
    fn value(&mut self) -> Bytes {
        Bytes::from(vec![b'v'; self.below(16) as usize])
    }
}

fn range(r: &mut Rng) -> RangeRequest {
    RangeRequest {
        key: r.key(),
        range_end: r.range_end(),
        limit: r.i64(),
        revision: r.i64(),
        sort_order: r.enum_value(),
        sort_target: r.enum_value(),
        serializable: r.flag(),
        keys_only: r.flag(),
        count_only: r.flag(),
        min_mod_revision: r.i64(),
        max_mod_revision: r.i64(),
        min_create_revision: r.i64(),
        max_create_revision: r.i64(),
    }
}

fn put(r: &mut Rng) -> PutRequest {
    PutRequest {
        key: r.key(),
        value: if r.below(6) == 0 {
            Bytes::new()
        } else {
            r.value()
        },
        lease: r.lease(),
        prev_kv: r.flag(),
        ignore_value: r.below(5) == 0,
        ignore_lease: r.below(5) == 0,
    }
}

fn delete(r: &mut Rng) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: r.key(),
        range_end: r.range_end(),
        prev_kv: r.flag(),
    }
}

fn txn(r: &mut Rng, depth: u32) -> TxnRequest {
    let compare = (0..r.below(4))
        .map(|_| Compare {
            result: r.enum_value(),
            target: r.enum_value(),
            key: r.key(),
            range_end: r.range_end(),
            target_union: match r.below(6) {
                0 => None,
                1 => Some(compare::TargetUnion::Version(r.i64())),
                2 => Some(compare::TargetUnion::CreateRevision(r.i64())),
                3 => Some(compare::TargetUnion::ModRevision(r.i64())),
                4 => Some(compare::TargetUnion::Lease(r.lease())),
                _ => Some(compare::TargetUnion::Value(r.value())),
            },
        })
        .collect();
    let ops = |r: &mut Rng| -> Vec<RequestOp> {
        (0..r.below(5))
            .map(|_| RequestOp {
                request: match r.below(6) {
                    0 => None,
                    1 => Some(request_op::Request::RequestRange(range(r))),
                    2 | 3 => Some(request_op::Request::RequestPut(put(r))),
                    4 => Some(request_op::Request::RequestDeleteRange(delete(r))),
                    _ if depth < 4 => Some(request_op::Request::RequestTxn(txn(r, depth + 1))),
                    _ => Some(request_op::Request::RequestPut(put(r))),
                },
            })
            .collect()
    };
    TxnRequest {
        compare,
        success: ops(r),
        failure: ops(r),
    }
}

/// One request, mostly of one kind; sometimes several kinds at once, or none.
fn request(r: &mut Rng) -> InternalRaftRequest {
    let mut req = InternalRaftRequest {
        wall_clock_ms: r.i64(),
        ..Default::default()
    };
    let kinds = match r.below(20) {
        0 => 0,
        1 => 2 + r.below(3),
        _ => 1,
    };
    for _ in 0..kinds {
        match r.below(15) {
            0 => req.range = Some(range(r)),
            1 | 2 => req.put = Some(put(r)),
            3 => req.delete_range = Some(delete(r)),
            4 | 5 => req.txn = Some(txn(r, 0)),
            6 => {
                req.compaction = Some(CompactionRequest {
                    revision: r.i64(),
                    physical: r.flag(),
                })
            }
            7 => {
                req.lease_grant = Some(LeaseGrantRequest {
                    ttl: r.i64(),
                    id: r.lease(),
                })
            }
            8 => req.lease_revoke = Some(LeaseRevokeRequest { id: r.lease() }),
            9 => {
                req.lease_renew = Some(LeaseRenewRequest {
                    ids: (0..r.below(4)).map(|_| r.lease()).collect(),
                })
            }
            10 => {
                req.lease_expire = Some(LeaseExpireRequest {
                    leases: (0..r.below(4))
                        .map(|_| LeaseExpiry {
                            id: r.lease(),
                            renewed_index: r.u64(),
                        })
                        .collect(),
                })
            }
            11 => {
                req.alarm = Some(AlarmRequest {
                    action: r.enum_value(),
                    member_id: r.u64(),
                    alarm: r.enum_value(),
                })
            }
            12 => {
                req.cluster_member_attr_set = Some(ClusterMemberAttrSetRequest {
                    member_id: r.pick(&[0, 1, 2, 3, u64::MAX]),
                    member_attributes: r.flag().then(|| Attributes {
                        name: format!("n{}", r.below(3)),
                        client_urls: vec![format!("http://c{}", r.below(3))],
                    }),
                })
            }
            13 => {
                req.lease_checkpoint = Some(LeaseCheckpointRequest {
                    checkpoints: vec![LeaseCheckpoint {
                        id: r.lease(),
                        remaining_ttl: r.i64(),
                    }],
                })
            }
            _ => req.auth_enable = Some(AuthEnableRequest {}),
        }
    }
    req
}

/// Flips, drops or inserts a few bytes of an encoded request.
fn mutate(r: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(3) {
        match r.below(3) {
            0 if !bytes.is_empty() => {
                let i = r.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << r.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = r.below(bytes.len() as u64) as usize;
                bytes.truncate(i);
            }
            _ => {
                let i = r.below(bytes.len() as u64 + 1) as usize;
                bytes.insert(i, r.below(256) as u8);
            }
        }
    }
    bytes
}

/// A configuration change adding, removing, updating or promoting one of a few members.
fn conf_change(r: &mut Rng) -> (EntryType, Bytes) {
    let node_id = 1 + r.below(4);
    let member = Member {
        id: MemberId(if r.below(8) == 0 { 9 } else { node_id }),
        name: String::new(),
        peer_urls: vec![format!("http://p{}:2380", r.below(3))],
        client_urls: Vec::new(),
        is_learner: r.flag(),
    };
    let change_type = r.pick(&[
        ConfChangeType::AddNode,
        ConfChangeType::AddLearnerNode,
        ConfChangeType::RemoveNode,
        ConfChangeType::UpdateNode,
    ]);
    if r.below(5) == 0 {
        let v2 = ConfChangeV2::from(ConfChange {
            id: r.u64(),
            change_type,
            node_id,
            context: Bytes::new(),
        });
        return (EntryType::ConfChangeV2, v2.encode());
    }
    let cc = ConfChange {
        id: r.u64(),
        change_type,
        node_id,
        context: if r.below(6) == 0 {
            Bytes::from_static(b"\x01\x02garbage")
        } else {
            Bytes::from(member.encode())
        },
    };
    (EntryType::ConfChange, cc.encode())
}

/// A log of `n` entries: requests, mutated requests, undecodable bytes, empty entries
/// and configuration changes.
fn log(r: &mut Rng, n: u64) -> Vec<Entry> {
    (1..=n)
        .map(|index| {
            let (entry_type, data) = match r.below(12) {
                0 => (EntryType::Normal, Bytes::new()),
                1 => conf_change(r),
                2 | 3 => {
                    let encoded = request(r).encode_to_vec();
                    let raw = mutate(r, encoded);
                    (EntryType::Normal, Bytes::from(raw))
                }
                _ => (EntryType::Normal, Bytes::from(request(r).encode_to_vec())),
            };
            Entry {
                term: 1,
                index,
                entry_type,
                data,
            }
        })
        .collect()
}

/// Raft's side of configuration changes, as a replica sees it: every change the
/// membership accepts is taken (the membership's rules are what is under test).
struct AcceptAll;

impl RaftConfig for AcceptAll {
    fn apply_conf_change(&mut self, _cc: &ConfChangeV2) -> Result<(), String> {
        Ok(())
    }
}

struct Replica {
    kv: Arc<KvStore<MemBackend>>,
    applier: Applier<MemBackend>,
}

impl Replica {
    fn new() -> Replica {
        let kv = Arc::new(KvStore::open(MemBackend::new()).unwrap());
        let applier = Applier::open(
            kv.clone(),
            MemberId(1),
            Arc::new(Metrics::default()),
            Time::ZERO,
            Some(Membership::default()),
            Arc::new(crate::auth::tokens::SimpleTokens::new(
                std::time::Duration::from_secs(300),
            )),
        )
        .unwrap();
        Replica { kv, applier }
    }

    /// Applies `log` cut into batches of the given sizes, each at its own time; returns
    /// every answer in log order.
    fn apply(&mut self, log: &[Entry], cuts: &[usize], times: &[u64]) -> Vec<(u64, ApplyResult)> {
        let mut answers = Vec::new();
        let mut at = 0;
        for (i, &n) in cuts.iter().enumerate() {
            let batch = &log[at..(at + n).min(log.len())];
            at += n;
            if batch.is_empty() {
                continue;
            }
            let ctx = BatchContext {
                now: Time::ZERO + Duration::from_millis(times[i % times.len()]),
            };
            if let Some(b) = self.applier.apply(batch, ctx, &mut AcceptAll).unwrap() {
                let durable = i % 2 == 0;
                answers.extend(b.commit(durable).unwrap().results);
            }
        }
        answers
    }

    fn digest(&self) -> Digest {
        let view = self.kv.view().unwrap();
        let hash_kv = self.kv.hash_by_rev(0).unwrap();
        let lessor = self.applier.lessor().lock().unwrap();
        let records = lessor
            .ids()
            .into_iter()
            .map(|id| {
                let r = lessor.get(id).unwrap().record();
                (r.ttl, r.wall_ms, r.renewed_index)
            })
            .collect();
        Digest {
            revision: view.revision(),
            hash_kv: hash_kv.hash,
            hash: view.hash_all().unwrap(),
            leases: lessor.ids().into_iter().map(|id| id.0).collect(),
            records,
        }
    }
}

/// What two replicas must agree on after the same log.
#[derive(Debug, PartialEq, Eq)]
struct Digest {
    revision: i64,
    hash_kv: u32,
    hash: u32,
    leases: Vec<i64>,
    /// Each lease's (TTL, wall clock, renewed index).
    records: Vec<(i64, i64, u64)>,
}

/// Batch sizes that cover `n` entries.
fn cuts(r: &mut Rng, n: u64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n as usize;
    while left > 0 {
        let c = 1 + r.below(left as u64) as usize;
        out.push(c);
        left -= c;
    }
    out
}

fn run_case(seed: u64) {
    let mut r = Rng(SplitMix64::new(seed));
    let n = 1 + r.below(30);
    let log = log(&mut r, n);
    let (cuts_a, cuts_b) = (cuts(&mut r, n), cuts(&mut r, n));
    let times_a: Vec<u64> = (0..4).map(|_| r.below(1 << 40)).collect();
    let times_b: Vec<u64> = (0..4).map(|_| r.below(1 << 20)).collect();
    let (mut a, mut b) = (Replica::new(), Replica::new());
    let answers_a = a.apply(&log, &cuts_a, &times_a);
    let answers_b = b.apply(&log, &cuts_b, &times_b);
    assert_eq!(answers_a, answers_b, "the replicas answered differently");
    assert_eq!(a.digest(), b.digest(), "the replicas' stores differ");
    assert_eq!(
        a.applier.membership().get(),
        b.applier.membership().get(),
        "the replicas' memberships differ"
    );
    assert_eq!(
        a.applier.alarms().get(),
        b.applier.alarms().get(),
        "the replicas' alarms differ"
    );
    // Replaying the whole log changes nothing: every entry is at or below the
    // consistent index now.
    let before = a.digest();
    assert!(
        a.applier
            .apply(&log, BatchContext { now: Time::MAX }, &mut AcceptAll)
            .unwrap()
            .is_none()
    );
    assert_eq!(a.digest(), before, "a replay changed the store");
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

// Goal: no committed entry, however malformed, makes apply panic, and every replica
// decides every entry alike (issue 13, acceptance 2).
#[test]
fn hostile_logs_never_panic_and_replicas_agree() {
    let seed = env_u64("RETCD_APPLY_SEED", DEFAULT_SEED);
    let cases = env_u64("RETCD_APPLY_CASES", DEFAULT_CASES);
    for case in 0..cases {
        let case_seed = SplitMix64::new(seed ^ case).next_u64();
        let outcome = std::panic::catch_unwind(|| run_case(case_seed));
        if let Err(panic) = outcome {
            eprintln!(
                "apply property failed: RETCD_APPLY_SEED={seed}, case {case} (case seed {case_seed})"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

// Goal: the generator reaches what it is meant to, over the cases the property test
// runs: every request kind is answered, both with successes and with etcd's errors, and
// some entries are skipped as undecodable (a property test that never gets there proves
// little).
#[test]
fn the_generator_covers_every_kind_and_outcome() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut errors = std::collections::BTreeSet::new();
    let (mut entries, mut answered) = (0, 0);
    for case in 0..500 {
        let mut r = Rng(SplitMix64::new(
            SplitMix64::new(DEFAULT_SEED ^ case).next_u64(),
        ));
        let n = 1 + r.below(30);
        let log = log(&mut r, n);
        let answers = Replica::new().apply(&log, &[n as usize], &[0]);
        entries += log.len();
        answered += answers.len();
        for (_, answer) in &answers {
            match answer {
                Ok(resp) => {
                    let name = format!("{resp:?}");
                    kinds.insert(
                        name.split(['(', ' '])
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                Err(e) => {
                    errors.insert(e.message());
                }
            }
        }
    }
    assert_eq!(kinds.len(), 12, "every response kind comes up: {kinds:?}");
    for expected in [
        EtcdError::EmptyKey,
        EtcdError::KeyNotFound,
        EtcdError::ValueProvided,
        EtcdError::LeaseNotFound,
        EtcdError::LeaseExist,
        EtcdError::LeaseTtlTooLarge,
        EtcdError::Compacted,
        EtcdError::FutureRev,
        EtcdError::DuplicateKey,
        EtcdError::NoSpace,
        EtcdError::NotCapable,
        EtcdError::MemberNotFound,
        EtcdError::MemberExist,
    ] {
        assert!(
            errors.contains(expected.message()),
            "{expected:?} never came up: {errors:?}"
        );
    }
    assert!(
        answered < entries,
        "some entries are empty or undecodable and get no answer"
    );
}

/// Raft's side, recording every change handed to it.
#[derive(Default)]
struct Recorder(Vec<ConfChangeV2>);

impl RaftConfig for Recorder {
    fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<(), String> {
        self.0.push(cc.clone());
        Ok(())
    }
}

fn member_change(index: u64, change_type: ConfChangeType, id: u64, url: &str) -> Entry {
    let member = Member {
        id: MemberId(id),
        name: String::new(),
        peer_urls: vec![url.to_string()],
        client_urls: Vec::new(),
        is_learner: false,
    };
    let cc = ConfChange {
        id: index,
        change_type,
        node_id: id,
        context: Bytes::from(member.encode()),
    };
    Entry {
        term: 1,
        index,
        entry_type: EntryType::ConfChange,
        data: cc.encode(),
    }
}

// Goal: after a restart, Raft gets back exactly the configuration changes the membership
// accepted when they were first applied, in order: a change refused then (a learner add
// of a voter would demote it in Raft) is refused again on replay.
#[test]
fn replayed_conf_changes_reach_raft_as_first_decided() {
    use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    let log = vec![
        member_change(1, AddNode, 1, "http://p1"),
        member_change(2, AddNode, 2, "http://p2"),
        member_change(3, AddLearnerNode, 2, "http://p2"),
        member_change(4, AddNode, 3, "http://p1"),
        member_change(5, RemoveNode, 1, "http://p1"),
    ];
    let mut first = Replica::new();
    let mut raft = Recorder::default();
    let batch = first
        .applier
        .apply(&log, BatchContext { now: Time::ZERO }, &mut raft)
        .unwrap()
        .unwrap();
    let answers = batch.commit(true).unwrap().results;
    assert_eq!(answers[2].1, Err(EtcdError::MemberExist));
    assert_eq!(answers[3].1, Err(EtcdError::PeerUrlExist));
    let accepted: Vec<u64> = [0, 1, 4].map(|i| log[i].index).to_vec();
    assert_eq!(raft.0.len(), accepted.len());

    // The restart: the store holds all five entries; Raft re-delivers them from index 1.
    let replay = |from: Option<Membership>| {
        let mut applier = Applier::open(
            first.kv.clone(),
            MemberId(1),
            Arc::new(Metrics::default()),
            Time::ZERO,
            from,
            Arc::new(crate::auth::tokens::SimpleTokens::new(
                std::time::Duration::from_secs(300),
            )),
        )
        .unwrap();
        let mut raft = Recorder::default();
        let nothing_new = applier
            .apply(&log, BatchContext { now: Time::ZERO }, &mut raft)
            .unwrap();
        assert!(nothing_new.is_none());
        raft.0
    };
    let again = replay(Some(Membership::default()));
    let expected: Vec<ConfChangeV2> = accepted
        .iter()
        .map(|&i| DecodedConfChange::of(&log[i as usize - 1]).unwrap().change)
        .collect();
    assert_eq!(again, expected, "only the accepted changes, in order");
    // Without the membership the snapshot records (an older data directory), every
    // change goes to Raft, as before.
    assert_eq!(replay(None).len(), log.len());
}

fn entry(index: u64, req: InternalRaftRequest) -> Entry {
    Entry {
        term: 1,
        index,
        entry_type: EntryType::Normal,
        data: Bytes::from(req.encode_to_vec()),
    }
}

// Goal: a lease's revocation deletes every key attached to it at one new revision (one
// event each, all at that revision), whether revoked by a client or expired by the
// leader; an expiry the lease was renewed after is void and deletes nothing.
#[test]
fn revocation_deletes_the_leases_keys_at_one_revision() {
    let mut replica = Replica::new();
    let grant = |id| InternalRaftRequest {
        lease_grant: Some(LeaseGrantRequest { ttl: 10, id }),
        ..Default::default()
    };
    let put = |k: &str, lease| InternalRaftRequest {
        put: Some(PutRequest {
            key: Bytes::from(k.to_string()),
            lease,
            ..Default::default()
        }),
        ..Default::default()
    };
    let expire = |id, renewed_index| InternalRaftRequest {
        lease_expire: Some(LeaseExpireRequest {
            leases: vec![LeaseExpiry { id, renewed_index }],
        }),
        ..Default::default()
    };
    let log = vec![
        entry(1, grant(7)),
        entry(2, grant(8)),
        entry(3, put("a", 7)),
        entry(4, put("b", 7)),
        entry(5, put("c", 8)),
        entry(6, put("b", 8)), // moves "b" to lease 8
        entry(
            7,
            InternalRaftRequest {
                lease_revoke: Some(LeaseRevokeRequest { id: 7 }),
                ..Default::default()
            },
        ),
        // Lease 8 was granted at index 2 and renewed at 8: the expiry seen at 2 is void.
        entry(
            8,
            InternalRaftRequest {
                lease_renew: Some(LeaseRenewRequest { ids: vec![8] }),
                ..Default::default()
            },
        ),
        entry(9, expire(8, 2)),
        entry(10, expire(8, 8)),
    ];
    let mut events = Vec::new();
    for e in &log {
        let batch = replica
            .applier
            .apply(
                std::slice::from_ref(e),
                BatchContext { now: Time::ZERO },
                &mut AcceptAll,
            )
            .unwrap()
            .unwrap();
        let applied = batch.commit(false).unwrap();
        events.push((e.index, applied.revision, applied.events));
    }
    let deletes = |index: u64| -> Vec<(String, i64)> {
        events
            .iter()
            .find(|(i, _, _)| *i == index)
            .unwrap()
            .2
            .iter()
            .map(|ev| {
                (
                    String::from_utf8(ev.kv.key.clone()).unwrap(),
                    ev.kv.mod_revision,
                )
            })
            .collect()
    };
    // Revision 1 at start; puts at 2..=5; the revocation at 6 deletes only "a".
    assert_eq!(deletes(7), [("a".to_string(), 6)]);
    assert!(deletes(9).is_empty(), "the void expiry deleted something");
    // The real expiry deletes "b" and "c" together, at revision 7.
    assert_eq!(deletes(10), [("b".to_string(), 7), ("c".to_string(), 7)]);
    assert!(replica.applier.lessor().lock().unwrap().is_empty());
    assert_eq!(replica.kv.current_revision(), 7);
}
