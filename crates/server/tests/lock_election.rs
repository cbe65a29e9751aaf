//! The Lock and Election services against the binary, with the etcd-client crate: etcd's
//! semantics for ordering, lease loss while waiting, and the election calls.

mod common;

use std::time::Duration;

use common::{Retcd, status_of};
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

/// Bound on any wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (tempfile::TempDir, Retcd, etcd_client::Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(dir.path(), &[]);
    let client = server.client().await;
    (dir, server, client)
}

async fn lease(c: &mut etcd_client::Client) -> i64 {
    c.lease_grant(60, None).await.unwrap().id()
}

// Goal: the lock key is <name>/<lease hex>; a second contender is granted only after
// the first unlocks, and waiters are granted in the order they asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_are_granted_in_order() {
    let (_d, _s, mut c) = start().await;
    let l1 = lease(&mut c).await;
    let first = c
        .lock("l", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    assert_eq!(first.key(), format!("l/{l1:x}").as_bytes());
    let mut waiters = Vec::new();
    for i in 0..3 {
        let mut probe = c.clone();
        let mut c = c.clone();
        let id = lease(&mut c).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiters.push((
            rx,
            tokio::spawn(async move {
                let r = c
                    .lock("l", Some(LockOptions::new().with_lease(id)))
                    .await
                    .unwrap();
                let _ = tx.send(());
                (i, r.key().to_vec(), c)
            }),
        ));
        // Each waiter's key exists before the next asks (so the order is defined).
        let key = format!("l/{id:x}");
        tokio::time::timeout(WAIT, async {
            while probe
                .get(key.as_str(), None)
                .await
                .unwrap()
                .kvs()
                .is_empty()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the waiter's key appears");
    }
    // Nobody is granted while the first holds.
    for (rx, _) in &mut waiters {
        assert!(rx.try_recv().is_err(), "granted while the lock was held");
    }
    c.unlock(first.key()).await.unwrap();
    for (i, (_, task)) in waiters.into_iter().enumerate() {
        let (n, key, mut c) = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert_eq!(n, i, "waiters are granted in order");
        c.unlock(key).await.unwrap();
    }
}

// Goal: a waiter whose lease is revoked while it waits is never granted (its Lock call
// fails with clientv3's session error), and the next waiter is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_lost_its_lease_is_never_granted() {
    let (_d, _s, mut c) = start().await;
    let l1 = lease(&mut c).await;
    let held = c
        .lock("m", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    let l2 = lease(&mut c).await;
    let mut c2 = c.clone();
    let doomed =
        tokio::spawn(async move { c2.lock("m", Some(LockOptions::new().with_lease(l2))).await });
    let key2 = format!("m/{l2:x}");
    tokio::time::timeout(WAIT, async {
        while c.get(key2.as_str(), None).await.unwrap().kvs().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let l3 = lease(&mut c).await;
    let mut c3 = c.clone();
    let next =
        tokio::spawn(async move { c3.lock("m", Some(LockOptions::new().with_lease(l3))).await });
    c.lease_revoke(l2).await.unwrap();
    c.unlock(held.key()).await.unwrap();
    let err = tokio::time::timeout(WAIT, doomed)
        .await
        .unwrap()
        .unwrap()
        .expect_err("a waiter without its key is not granted");
    assert_eq!(status_of(err).message(), "session: session is expired");
    let granted = tokio::time::timeout(WAIT, next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(granted.key(), format!("m/{l3:x}").as_bytes());
}

// Goal: a holder's lease expiring releases the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(
        dir.path(),
        &["--heartbeat-interval", "10", "--election-timeout", "100"],
    );
    let mut c = server.client().await;
    let short = c.lease_grant(1, None).await.unwrap().id();
    c.lock("e", Some(LockOptions::new().with_lease(short)))
        .await
        .unwrap();
    let l2 = lease(&mut c).await;
    let got = tokio::time::timeout(WAIT, c.lock("e", Some(LockOptions::new().with_lease(l2))))
        .await
        .expect("granted once the holder's lease expired")
        .unwrap();
    assert_eq!(got.key(), format!("e/{l2:x}").as_bytes());
}

// Goal: Campaign, Leader, Proclaim, Observe and Resign as etcd's; errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_calls() {
    let (_d, _s, mut c) = start().await;
    let err = c.leader("vote").await.expect_err("no leader yet");
    assert_eq!(status_of(err).message(), "election: no leader");

    let l1 = lease(&mut c).await;
    let won = c.campaign("vote", "alpha", l1).await.unwrap();
    let leader = won.leader().unwrap().clone();
    assert_eq!(leader.key(), format!("vote/{l1:x}").as_bytes());
    assert_eq!(leader.lease(), l1);
    let now = c.leader("vote").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"alpha");
    assert_eq!(now.kv().unwrap().create_revision(), leader.rev());

    let mut observe = c.observe("vote").await.unwrap();
    let first = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kv().unwrap().value(), b"alpha");

    // A second candidate waits; the leader proclaims a new value.
    let l2 = lease(&mut c).await;
    let mut c2 = c.clone();
    let second = tokio::spawn(async move { c2.campaign("vote", "beta", l2).await });
    c.proclaim(
        "alpha2",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .unwrap();
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"alpha2");

    // Resign: the second candidate leads, and observers see it.
    c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.leader().unwrap().key(),
        format!("vote/{l2:x}").as_bytes()
    );
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"beta");

    // The old leader key can no longer proclaim.
    let err = c
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
        .await
        .expect_err("a resigned leader cannot proclaim");
    assert_eq!(status_of(err).message(), "election: not leader");
}
