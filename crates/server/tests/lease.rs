//! The Lease service against the binary with the etcd-client crate: every call, the
//! minimum TTL rule, etcd's errors, key attachment, and leases across a restart.

mod common;

use std::time::{Duration, Instant};

use common::store::lease_ids;
use common::{Retcd, status_of};
use etcd_client::{
    Compare, CompareOp, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};

const WAIT: Duration = Duration::from_secs(10);

// Goal: grant with a chosen or server-chosen id, the minimum TTL (1.5 election timeouts,
// rounded up: 2 s at the defaults), and etcd's errors for a too large TTL and an id in
// use.
#[tokio::test]
async fn grant_rules_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(dir.path(), &[]);
    let mut c = server.client().await;
    let g = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
        .await
        .unwrap();
    assert_eq!((g.id(), g.ttl()), (42, 30));
    let a = c.lease_grant(1, None).await.unwrap();
    let b = c.lease_grant(0, None).await.unwrap();
    assert!(a.id() > 0 && b.id() > 0 && a.id() != b.id());
    assert_eq!((a.ttl(), b.ttl()), (2, 2), "raised to the minimum TTL");
    let e = status_of(
        c.lease_grant(9_000_000_001, None)
            .await
            .expect_err("too large"),
    );
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let e = status_of(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
            .await
            .expect_err("id in use"),
    );
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    let mut want = vec![42, a.id(), b.id()];
    want.sort_unstable();
    assert_eq!(lease_ids(&mut c).await, want);
}

// Goal: keys attach and detach as etcd's: put with a lease attaches, ignore_lease keeps
// it, a put without one or a delete detaches; TimeToLive lists the keys (sorted) and
// answers -1 for an unknown lease; a put or txn with an unknown lease fails.
#[tokio::test]
async fn keys_attach_and_detach() {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(dir.path(), &[]);
    let mut c = server.client().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    for k in ["b", "a", "c", "d"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
    }
    c.put("a", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    c.put("c", "plain", None).await.unwrap();
    c.delete("d", None).await.unwrap();
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(ttl.granted_ttl(), 60);
    assert!((58..=60).contains(&ttl.ttl()), "{}", ttl.ttl());
    let unknown = c.lease_time_to_live(777, None).await.unwrap();
    assert_eq!(unknown.ttl(), -1);
    let e = status_of(
        c.put("x", "v", Some(PutOptions::new().with_lease(777)))
            .await
            .expect_err("unknown lease"),
    );
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let txn = Txn::new()
        .when([Compare::lease("a", CompareOp::Equal, id)])
        .and_then([TxnOp::put(
            "y",
            "v",
            Some(PutOptions::new().with_lease(777)),
        )]);
    let e = status_of(c.txn(txn).await.expect_err("txn with an unknown lease"));
    assert_eq!(e.message(), "etcdserver: requested lease not found");
    let txn = Txn::new()
        .when([Compare::lease("a", CompareOp::Equal, id)])
        .and_then([TxnOp::put("y", "v", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded(), "lease compare holds");

    // Revoke deletes the attached keys in one revision, with DELETE events; "c" stays.
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let mut w = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .unwrap();
    c.lease_revoke(id).await.unwrap();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let r = w.message().await.unwrap().unwrap();
            if !r.events().is_empty() {
                return r;
            }
        }
    })
    .await
    .unwrap();
    let deleted: Vec<(&[u8], i64)> = r
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e.event_type(), EventType::Delete);
            (e.kv().unwrap().key(), e.kv().unwrap().mod_revision())
        })
        .collect();
    assert_eq!(
        deleted,
        [(b"a".as_slice(), rev + 1), (b"b".as_slice(), rev + 1)]
    );
    assert_eq!(c.get("c", None).await.unwrap().kvs().len(), 1);
    let e = status_of(c.lease_revoke(id).await.expect_err("revoked already"));
    assert_eq!(e.message(), "etcdserver: requested lease not found");
}

// Goal: keep-alive renews (the answer carries the TTL) and keeps keys past the TTL;
// a keep-alive of an unknown lease answers TTL 0; an unrenewed lease expires.
#[tokio::test]
async fn keep_alive_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(
        dir.path(),
        &["--heartbeat-interval", "10", "--election-timeout", "100"],
    );
    let mut c = server.client().await;
    let kept = c.lease_grant(1, None).await.unwrap().id();
    let left = c.lease_grant(1, None).await.unwrap().id();
    c.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    c.put("left", "v", Some(PutOptions::new().with_lease(left)))
        .await
        .unwrap();
    let (mut keeper, mut answers) = c.lease_keep_alive(kept).await.unwrap();
    let start = Instant::now();
    let mut left_gone = false;
    while start.elapsed() < Duration::from_secs(3) {
        keeper.keep_alive().await.unwrap();
        let a = tokio::time::timeout(WAIT, answers.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((a.id(), a.ttl()), (kept, 1));
        left_gone |= c.get("left", None).await.unwrap().kvs().is_empty();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(left_gone, "the unrenewed lease's key outlived 3 x its TTL");
    assert_eq!(c.get("kept", None).await.unwrap().kvs().len(), 1);
    // etcd-client reads the first answer and turns TTL 0 (unknown lease) into an error.
    match c.lease_keep_alive(999).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!(
            "expected TTL 0 for an unknown lease, got {:?}",
            other.map(|_| ())
        ),
    }
}

// Goal: leases and their keys survive a restart (clean and SIGKILL).
#[tokio::test]
async fn leases_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Retcd::start(dir.path(), &[]);
    let port = server.port;
    let mut c = server.client().await;
    let id = c.lease_grant(600, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    for kill in [false, true] {
        if kill {
            server.kill();
        } else {
            server.terminate();
        }
        server = Retcd::start_with(dir.path(), port, &[], &[]);
        let mut c = server.client().await;
        let ttl = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 600, "after restart (kill: {kill})");
        assert_eq!(ttl.keys(), [b"k".to_vec()]);
    }
}
