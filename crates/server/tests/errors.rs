//! RELIABILITY.md T2 rows 1-19: each bad request gets exactly etcd's gRPC code and
//! message (row 17: the code). Raw requests go through our generated client, which can
//! express what well-behaved clients cannot (sort order 99, empty keys).

mod common;

use bytes::Bytes;
use common::Retcd;
use retcd_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, compare, request_op,
};
use tonic::Code;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Retcd,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(&dir.path().join("data"), &[]);
    Fixture { _dir: dir, server }
}

fn expect<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    let st = r.expect_err("the request must fail");
    assert_eq!((st.code(), st.message()), (code, message), "got {st:?}");
}

fn key(k: &str) -> Bytes {
    Bytes::from(k.to_string())
}

fn put_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key(k),
            value: key("v"),
            ..Default::default()
        })),
    }
}

fn range(k: &str) -> RangeRequest {
    RangeRequest {
        key: key(k),
        ..Default::default()
    }
}

/// Puts `k` `n` times, then compacts at the last revision.
async fn write_and_compact(f: &Fixture, n: usize) -> i64 {
    let mut kv = f.server.raw_kv().await;
    let mut rev = 0;
    for _ in 0..n {
        let r = kv
            .put(PutRequest {
                key: key("k"),
                value: key("v"),
                ..Default::default()
            })
            .await
            .unwrap();
        rev = r.into_inner().header.unwrap().revision;
    }
    kv.compact(CompactionRequest {
        revision: rev,
        physical: false,
    })
    .await
    .unwrap();
    rev
}

#[tokio::test]
async fn row01_range_empty_key() {
    let f = start();
    let r = f.server.raw_kv().await.range(range("")).await;
    expect(r, Code::InvalidArgument, "etcdserver: key is not provided");
}

#[tokio::test]
async fn row02_range_bad_sort_order() {
    let f = start();
    let mut req = range("k");
    req.sort_order = 99;
    let r = f.server.raw_kv().await.range(req).await;
    expect(r, Code::InvalidArgument, "etcdserver: invalid sort option");
}

#[tokio::test]
async fn row03_range_bad_sort_target() {
    let f = start();
    let mut req = range("k");
    req.sort_target = 99;
    let r = f.server.raw_kv().await.range(req).await;
    expect(r, Code::InvalidArgument, "etcdserver: invalid sort option");
}

#[tokio::test]
async fn row04_range_future_revision() {
    let f = start();
    let mut req = range("k");
    req.revision = 1000;
    let r = f.server.raw_kv().await.range(req).await;
    expect(
        r,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
}

#[tokio::test]
async fn row05_range_compacted_revision() {
    let f = start();
    let rev = write_and_compact(&f, 3).await;
    let mut req = range("k");
    req.revision = rev - 1;
    let r = f.server.raw_kv().await.range(req).await;
    expect(
        r,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

#[tokio::test]
async fn row06_put_empty_key() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            value: key("v"),
            ..Default::default()
        })
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: key is not provided");
}

#[tokio::test]
async fn row07_put_ignore_value_with_value() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("k"),
            value: key("v"),
            ignore_value: true,
            ..Default::default()
        })
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: value is provided");
}

#[tokio::test]
async fn row08_put_ignore_lease_with_lease() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("k"),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        })
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: lease is provided");
}

#[tokio::test]
async fn row09_put_ignore_value_missing_key() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("missing"),
            ignore_value: true,
            ..Default::default()
        })
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: key not found");
}

#[tokio::test]
async fn row10_put_unknown_lease() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("k"),
            value: key("v"),
            lease: 0x1234,
            ..Default::default()
        })
        .await;
    expect(r, Code::NotFound, "etcdserver: requested lease not found");
}

#[tokio::test]
async fn row11_delete_empty_key() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .delete_range(DeleteRangeRequest::default())
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: key is not provided");
}

#[tokio::test]
async fn row12_txn_too_many_ops() {
    let f = start();
    let txn = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    let r = f.server.raw_kv().await.txn(txn).await;
    expect(
        r,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    // 128 is the limit, not beyond it.
    let txn = TxnRequest {
        success: (0..128).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    f.server.raw_kv().await.txn(txn).await.unwrap();
}

#[tokio::test]
async fn row13_txn_duplicate_put() {
    let f = start();
    let txn = TxnRequest {
        success: vec![put_op("k"), put_op("k")],
        ..Default::default()
    };
    let r = f.server.raw_kv().await.txn(txn).await;
    expect(
        r,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
}

#[tokio::test]
async fn row14_txn_put_and_overlapping_delete_including_nested() {
    let f = start();
    let mut kv = f.server.raw_kv().await;
    let del = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key("a"),
                range_end: key("c"),
                ..Default::default()
            },
        )),
    };
    let flat = TxnRequest {
        failure: vec![put_op("b"), del.clone()],
        ..Default::default()
    };
    let nested = TxnRequest {
        success: vec![
            del,
            RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![put_op("b")],
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    for txn in [flat, nested] {
        expect(
            kv.txn(txn).await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
    }
}

#[tokio::test]
async fn row15_txn_compare_empty_key() {
    let f = start();
    let txn = TxnRequest {
        compare: vec![Compare {
            target: compare::CompareTarget::Version as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![put_op("k")],
        ..Default::default()
    };
    let r = f.server.raw_kv().await.txn(txn).await;
    expect(r, Code::InvalidArgument, "etcdserver: key is not provided");
}

#[tokio::test]
async fn row16_request_too_large() {
    let f = start();
    // Over --max-request-bytes (1.5 MiB), under that plus 512 KiB.
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("big"),
            value: Bytes::from(vec![b'x'; 1_600_000]),
            ..Default::default()
        })
        .await;
    expect(r, Code::InvalidArgument, "etcdserver: request is too large");
}

#[tokio::test]
async fn row17_request_over_grpc_limit() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .put(PutRequest {
            key: key("huge"),
            value: Bytes::from(vec![b'x'; 1_572_864 + 512 * 1024 + 1]),
            ..Default::default()
        })
        .await;
    let st = r.expect_err("must fail");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    // The server survives it.
    f.server.raw_kv().await.range(range("k")).await.unwrap();
}

#[tokio::test]
async fn row18_compact_future_revision() {
    let f = start();
    let r = f
        .server
        .raw_kv()
        .await
        .compact(CompactionRequest {
            revision: 100,
            physical: false,
        })
        .await;
    expect(
        r,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
}

#[tokio::test]
async fn row19_compact_already_compacted() {
    let f = start();
    let rev = write_and_compact(&f, 3).await;
    for at in [rev, rev - 1] {
        let r = f
            .server
            .raw_kv()
            .await
            .compact(CompactionRequest {
                revision: at,
                physical: true,
            })
            .await;
        expect(
            r,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
}
