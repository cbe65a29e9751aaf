//! No input makes the server panic (issue 3, acceptance 3). A seeded generator sends
//! thousands of well-formed but hostile KV requests: unknown enum values, negative and
//! huge numbers, empty and inverted ranges, deep and wide nested txns, oversized values.
//! Any gRPC answer is acceptable except one that means the server broke (Internal,
//! Unknown, or a dropped connection); afterwards the process must still be running,
//! healthy, serving reads and writes, and its log must hold no panic.
//!
//! `RETCD_HOSTILE_SEED` replays a seed; `RETCD_HOSTILE_REQUESTS` changes the count.

mod common;

use bytes::Bytes;
use common::{Retcd, http_get};
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare, request_op,
};
use retcd_prng::SplitMix64;
use tonic::Code;

/// The generator, with this test's keys and values on top of `SplitMix64`'s hostile
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
    fn nasty_i64(&mut self) -> i64 {
        self.hostile_i64(50)
    }
    fn nasty_enum(&mut self) -> i32 {
        self.hostile_enum()
    }
    fn key(&mut self) -> Bytes {
        match self.below(6) {
            0 => Bytes::new(),
            1 => Bytes::from_static(b"\0"),
            2 => Bytes::from(vec![0xff; 1 + self.below(3) as usize]),
            _ => Bytes::from(format!("k{}", self.below(20))),
        }
    }
    fn value(&mut self) -> Bytes {
        match self.below(40) {
            0 => Bytes::from(vec![b'v'; 1_572_864 + 10]),
            1..=3 => Bytes::new(),
            _ => Bytes::from(vec![b'v'; self.below(64) as usize]),
        }
    }
}

fn range(r: &mut Rng) -> RangeRequest {
    RangeRequest {
        key: r.key(),
        range_end: r.key(),
        limit: r.nasty_i64(),
        revision: r.nasty_i64(),
        sort_order: r.nasty_enum(),
        sort_target: r.nasty_enum(),
        serializable: r.flag(),
        keys_only: r.flag(),
        count_only: r.flag(),
        min_mod_revision: r.nasty_i64(),
        max_mod_revision: r.nasty_i64(),
        min_create_revision: r.nasty_i64(),
        max_create_revision: r.nasty_i64(),
    }
}

fn put(r: &mut Rng) -> PutRequest {
    PutRequest {
        key: r.key(),
        value: r.value(),
        lease: if r.below(10) == 0 { r.nasty_i64() } else { 0 },
        prev_kv: r.flag(),
        ignore_value: r.below(8) == 0,
        ignore_lease: r.below(8) == 0,
    }
}

fn delete(r: &mut Rng) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: r.key(),
        range_end: r.key(),
        prev_kv: r.flag(),
    }
}

fn txn(r: &mut Rng, depth: u32) -> TxnRequest {
    let compare = (0..r.below(4))
        .map(|_| Compare {
            result: r.nasty_enum(),
            target: r.nasty_enum(),
            key: r.key(),
            range_end: if r.flag() { r.key() } else { Bytes::new() },
            target_union: match r.below(6) {
                0 => None,
                1 => Some(compare::TargetUnion::Version(r.nasty_i64())),
                2 => Some(compare::TargetUnion::CreateRevision(r.nasty_i64())),
                3 => Some(compare::TargetUnion::ModRevision(r.nasty_i64())),
                4 => Some(compare::TargetUnion::Lease(r.nasty_i64())),
                _ => Some(compare::TargetUnion::Value(r.value())),
            },
        })
        .collect();
    // Mostly a few ops; sometimes more than --max-txn-ops allows.
    let width = if r.below(20) == 0 { 130 } else { r.below(4) };
    let ops = |r: &mut Rng| -> Vec<RequestOp> {
        (0..width)
            .map(|_| RequestOp {
                request: match r.below(5) {
                    0 => None,
                    1 => Some(request_op::Request::RequestRange(range(r))),
                    2 => Some(request_op::Request::RequestPut(put(r))),
                    3 => Some(request_op::Request::RequestDeleteRange(delete(r))),
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

fn broken(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kv_requests_never_break_the_server() {
    let seed = std::env::var("RETCD_HOSTILE_SEED").map_or(20261122, |s| s.parse().expect("seed"));
    let count: u64 =
        std::env::var("RETCD_HOSTILE_REQUESTS").map_or(2000, |s| s.parse().expect("count"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Retcd::start(&dir.path().join("data"), &[]);
    let mut kv = KvClient::connect(server.endpoint())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let mut r = Rng(SplitMix64::new(seed));
    let mut answered = [0u64; 2];
    for i in 0..count {
        let kind = r.below(5);
        let result = match kind {
            0 => kv.range(range(&mut r)).await.map(|_| ()),
            1 => kv.put(put(&mut r)).await.map(|_| ()),
            2 => kv.delete_range(delete(&mut r)).await.map(|_| ()),
            3 => kv.txn(txn(&mut r, 0)).await.map(|_| ()),
            _ => kv
                .compact(CompactionRequest {
                    revision: r.nasty_i64(),
                    physical: r.flag(),
                })
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => answered[0] += 1,
            Err(status) => {
                assert!(
                    !broken(status.code()),
                    "seed {seed}, request {i} (kind {kind}): {status:?}\nserver log:\n{}",
                    server.log()
                );
                answered[1] += 1;
            }
        }
    }
    // The generator must exercise both outcomes, or it proves little.
    assert!(
        answered[0] > count / 10 && answered[1] > count / 10,
        "ok/err: {answered:?}"
    );

    let (status, body) = http_get(server.port, "/health").expect("health");
    assert_eq!((status, body.contains("\"true\"")), (200, true), "{body}");
    kv.put(PutRequest {
        key: "after".into(),
        value: "fine".into(),
        ..Default::default()
    })
    .await
    .expect("put after the barrage");
    let got = kv
        .range(RangeRequest {
            key: "after".into(),
            ..Default::default()
        })
        .await
        .expect("range after the barrage")
        .into_inner();
    assert_eq!(got.kvs[0].value.as_ref(), b"fine");
    assert!(
        !server.log().contains("panicked"),
        "server log:\n{}",
        server.log()
    );
}
