//! Issue 6, acceptance 3: lock safety under faults.
//!
//! Five clients contend for one lock through the Lock service (each attempt with its own
//! lease, kept alive while it waits and holds) on a three-member cluster while the leader
//! is killed and restarted and a member is paused. Each grant is recorded with its
//! fencing token (the lock key's create revision) and the revision it was granted at
//! (the Lock response's header). At the end a watch from the start gives every lock
//! key's life, [create revision, delete revision). Checked for every grant of key K at
//! revision g:
//! - K was alive at g (a lock whose lease expired or was revoked while waiting is never
//!   granted);
//! - every key created before K (a lower token) was deleted at or before g: holders never
//!   overlap in the store's history, and a higher token never holds while a lower one
//!   does.
//!
//! Also, every fenced write (a Txn on "fenced" guarded by the holder's key's create
//! revision) that succeeded did so while its holder's key was alive.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{blocking, env_u64};
use etcd_client::{Compare, CompareOp, LockOptions, Txn, TxnOp};
use retcd_prng::SplitMix64;
use retcd_testkit::cluster::{Cluster, ClusterSpec};
use retcd_testkit::watch_checker::{EventKind, Response};
use retcd_testkit::watch_recorder::{self, Finish, WatchSpec};

const CLIENTS: usize = 5;
const NAME: &str = "lk";

#[derive(Clone, Debug)]
struct Grant {
    client: usize,
    key: Vec<u8>,
    /// The key's create revision as the holder read it (for its fenced write), and the
    /// revision of that read, if it could read.
    token: Option<i64>,
    held_at: Option<i64>,
    /// Revisions of fenced writes that succeeded while holding.
    fenced: Vec<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_holders_never_overlap_under_faults() {
    let seed = env_u64("RETCD_LOCK_SEED").unwrap_or(11);
    eprintln!("seed {seed} (RETCD_LOCK_SEED)");
    let mut rng = SplitMix64::new(seed);
    let spec = ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(3)
        .heartbeat_ms(50)
        .election_ms(500)
        .proxied_peers(true)
        // The watch recorder pings every 500 ms (see cluster_faults.rs).
        .extra_arg("--grpc-keepalive-min-time=250ms");
    let cluster = blocking(|| Cluster::start(spec)).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    let start_rev = c.get("x", None).await.unwrap().header().unwrap().revision() + 1;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let url = cluster.client_url(i % 3);
        let stop = stop.clone();
        let client_seed = rng.next_u64();
        tasks.push(tokio::spawn(contend(i, url, stop, client_seed)));
    }

    // Faults: kill the leader, restart it; then pause a member, resume it.
    tokio::time::sleep(Duration::from_millis(1500 + rng.below(1000))).await;
    blocking(|| cluster.kill(leader)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500 + rng.below(1000))).await;
    blocking(|| cluster.restart(leader)).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paused = rng.below(3) as usize;
    blocking(|| cluster.stop(paused)).unwrap();
    tokio::time::sleep(Duration::from_millis(1000 + rng.below(1000))).await;
    blocking(|| cluster.cont(paused)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    let mut grants = Vec::new();
    for t in tasks {
        grants.extend(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a contender stops")
                .unwrap(),
        );
    }
    blocking(|| cluster.wait_healthy_all_of(&[0, 1, 2], Duration::from_secs(20))).unwrap();

    // Every lock key's life from the history, by a watch from the start.
    let mut c = cluster.client(0).await.unwrap();
    let end_rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let finish = Finish::new();
    finish.at(end_rev);
    let spec = WatchSpec {
        name: "locks".into(),
        key: format!("{NAME}/").into_bytes(),
        range_end: format!("{NAME}0").into_bytes(),
        start_revision: start_rev,
        prev_kv: false,
        filter_put: false,
        filter_delete: false,
        progress_notify: false,
        user: None,
    };
    let recorded =
        watch_recorder::record(spec, cluster.client_url(0), finish, Duration::from_secs(20)).await;
    let mut life: HashMap<Vec<u8>, (i64, i64)> = HashMap::new();
    for r in recorded.sessions.iter().flat_map(|s| &s.responses) {
        let Response::Events { events, .. } = r else {
            continue;
        };
        for e in events {
            match e.kind {
                EventKind::Put => {
                    life.entry(e.kv.key.clone())
                        .or_insert((e.kv.create_revision, i64::MAX));
                }
                EventKind::Delete => {
                    if let Some(l) = life.get_mut(&e.kv.key) {
                        l.1 = e.kv.mod_revision;
                    }
                }
            }
        }
    }

    assert!(!grants.is_empty(), "nobody ever got the lock");
    let mut per_client = [0usize; CLIENTS];
    for g in &grants {
        per_client[g.client] += 1;
    }
    eprintln!(
        "{} grants (per client {per_client:?}), {} lock keys, {} fenced writes",
        grants.len(),
        life.len(),
        grants.iter().map(|g| g.fenced.len()).sum::<usize>()
    );
    for g in &grants {
        let (created, deleted) = life
            .get(&g.key)
            .unwrap_or_else(|| panic!("granted key {:?} not in the history", g.key));
        if let Some(token) = g.token {
            assert_eq!(*created, token, "token of {g:?}");
        }
        if let Some(at) = g.held_at {
            assert!(
                *created <= at && at < *deleted,
                "{g:?} held while its key was not alive ({created}..{deleted})"
            );
            for (other, (oc, od)) in &life {
                if oc < created {
                    assert!(
                        *od <= at,
                        "{g:?} held at {at} while the older key {:?} ({oc}..{od}) still held or waited",
                        String::from_utf8_lossy(other)
                    );
                }
            }
        }
        for &f in &g.fenced {
            assert!(
                *created <= f && f < *deleted,
                "fenced write at {f} by {g:?} outside its key's life"
            );
        }
    }
}

/// One contender: lease, lock, fenced write, unlock, until told to stop.
async fn contend(i: usize, url: String, stop: Arc<AtomicBool>, seed: u64) -> Vec<Grant> {
    let mut rng = SplitMix64::new(seed);
    let mut grants = Vec::new();
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(3));
    while !stop.load(Ordering::Acquire) {
        let Ok(mut client) =
            etcd_client::Client::connect([url.as_str()], Some(options.clone())).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(lease) = client.lease_grant(2, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let id = lease.id();
        // Keep the lease alive while this attempt lasts.
        let alive = Arc::new(AtomicBool::new(true));
        let keeper = {
            let alive = alive.clone();
            let mut client = client.clone();
            tokio::spawn(async move {
                while alive.load(Ordering::Acquire) {
                    if let Ok((mut k, mut s)) = client.lease_keep_alive(id).await {
                        while alive.load(Ordering::Acquire) {
                            if k.keep_alive().await.is_err() {
                                break;
                            }
                            match tokio::time::timeout(Duration::from_millis(500), s.message())
                                .await
                            {
                                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                                Ok(Ok(Some(_))) => return,
                                Ok(_) => break,
                                Err(_) => {}
                            }
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let locked = tokio::time::timeout(
            Duration::from_secs(4),
            client.lock(NAME, Some(LockOptions::new().with_lease(id))),
        )
        .await;
        if let Ok(Ok(resp)) = locked {
            let key = resp.key().to_vec();
            let (token, held_at) = match client.get(key.clone(), None).await {
                Ok(r) => (
                    r.kvs().first().map(|kv| kv.create_revision()),
                    r.header().map(|h| h.revision()),
                ),
                Err(_) => (None, None),
            };
            let mut grant = Grant {
                client: i,
                key: key.clone(),
                token,
                held_at: token.and(held_at),
                fenced: Vec::new(),
            };
            tokio::time::sleep(Duration::from_millis(20 + rng.below(100))).await;
            if let Some(token) = token {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        token,
                    )])
                    .and_then([TxnOp::put("fenced", format!("c{i}"), None)]);
                if let Ok(r) = client.txn(txn).await
                    && r.succeeded()
                {
                    grant.fenced.push(r.header().map_or(0, |h| h.revision()));
                }
            }
            grants.push(grant);
            let _ = client.unlock(key).await;
        }
        alive.store(false, Ordering::Release);
        keeper.abort();
        let _ = client.lease_revoke(id).await;
    }
    grants
}
