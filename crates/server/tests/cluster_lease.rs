//! Issue 6, acceptance 2: lease expiry across a leader failure and a full restart.
//!
//! Leases are granted with seeded TTLs, each with one key; half are kept alive, half are
//! left to expire. The leader is killed while they are live and restarted later. A watch
//! on a surviving member records when each key's DELETE arrives. Checked:
//! - no key goes before its TTL: a DELETE never arrives earlier than the grant request
//!   was sent plus the TTL;
//! - a kept-alive lease's key is never deleted;
//! - every other key is gone within TTL + election timeout + 2 s of the grant's answer.
//!
//! And a single member stopped for longer than a lease's TTL does not count the downtime
//! as lease time: the key goes within an election timeout + 2 s of the restart.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{blocking, env_u64};
use etcd_client::{EventType, PutOptions, WatchOptions};
use retcd_prng::SplitMix64;
use retcd_testkit::cluster::{Cluster, ClusterSpec};

const ELECTION_MS: u64 = 500;
const SLACK: Duration = Duration::from_secs(2);

struct Granted {
    id: i64,
    ttl: Duration,
    sent: Instant,
    answered: Instant,
    kept_alive: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_survive_a_leader_kill_without_early_or_late_expiry() {
    let seed = env_u64("RETCD_LEASE_SEED").unwrap_or(7);
    eprintln!("seed {seed} (RETCD_LEASE_SEED)");
    let mut rng = SplitMix64::new(seed);
    let spec = ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(3)
        .heartbeat_ms(50)
        .election_ms(ELECTION_MS)
        .proxied_peers(true);
    let cluster = blocking(|| Cluster::start(spec)).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let survivor = (leader + 1) % 3;
    let mut client = cluster.client(survivor).await.unwrap();

    // Record DELETE arrival times from the start.
    let start_rev = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut stream = client
        .watch(
            "lease/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_rev),
            ),
        )
        .await
        .unwrap();
    let (del_tx, mut del_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(async move {
        loop {
            let r = match stream.message().await {
                Ok(Some(r)) => r,
                other => {
                    eprintln!("lease watch ended: {other:?}");
                    return;
                }
            };
            let now = Instant::now();
            for e in r.events() {
                if e.event_type() == EventType::Delete {
                    let key = String::from_utf8_lossy(e.kv().unwrap().key()).to_string();
                    let _ = del_tx.send((key, now));
                }
            }
        }
    });

    // Twelve leases, TTLs 2-5 s, one key each; every other one kept alive.
    let mut leases: HashMap<String, Granted> = HashMap::new();
    for i in 0..12 {
        let ttl = 2 + rng.below(4) as i64;
        let sent = Instant::now();
        let g = client.lease_grant(ttl, None).await.unwrap();
        let answered = Instant::now();
        assert_eq!(g.ttl(), ttl);
        let key = format!("lease/{i}");
        client
            .put(
                key.as_str(),
                "v",
                Some(PutOptions::new().with_lease(g.id())),
            )
            .await
            .unwrap();
        leases.insert(
            key,
            Granted {
                id: g.id(),
                ttl: Duration::from_secs(ttl as u64),
                sent,
                answered,
                kept_alive: i % 2 == 0,
            },
        );
    }
    // Keep-alives through the survivor for the kept half, every 500 ms.
    let kept: Vec<i64> = leases
        .values()
        .filter(|g| g.kept_alive)
        .map(|g| g.id)
        .collect();
    // As a real client does: when a keep-alive stream fails (no leader for a moment,
    // which ends it as in etcd), open a new one.
    let mut keepers = Vec::new();
    for id in kept {
        let ka_client = cluster.client(survivor).await.unwrap();
        keepers.push(tokio::spawn(async move {
            let mut ka_client = ka_client;
            loop {
                let Ok((mut keeper, mut responses)) = ka_client.lease_keep_alive(id).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(500), responses.message())
                        .await
                    {
                        Ok(Ok(Some(r))) => {
                            assert!(r.ttl() > 0, "lease {id:x} lost while kept alive")
                        }
                        Ok(_) => break,
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }));
    }

    // Kill the leader while every lease is live; restart it after a while.
    tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    blocking(|| cluster.kill(leader)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500 + rng.below(1000))).await;
    blocking(|| cluster.restart(leader)).unwrap();

    // Every unkept lease's key must be gone within its bound; collect until then.
    let last_bound = leases
        .values()
        .filter(|g| !g.kept_alive)
        .map(|g| g.answered + g.ttl + Duration::from_millis(ELECTION_MS) + SLACK)
        .max()
        .unwrap();
    // Watch until the last bound has passed: a kept lease must not go meanwhile.
    let mut deleted: HashMap<String, Instant> = HashMap::new();
    let until = last_bound + Duration::from_millis(500);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, del_rx.recv()).await {
            Ok(Some((key, at))) => {
                deleted.insert(key, at);
            }
            Ok(None) => panic!("the watch on the survivor ended"),
            Err(_) => break,
        }
    }
    for k in keepers {
        k.abort();
    }
    for (key, g) in &leases {
        eprintln!(
            "{key}: ttl {:?} kept {} deleted after {:?}",
            g.ttl,
            g.kept_alive,
            deleted.get(key).map(|at| *at - g.sent)
        );
    }
    for (key, g) in &leases {
        match (g.kept_alive, deleted.get(key)) {
            (true, Some(_)) => panic!("{key}: kept alive, yet deleted"),
            (true, None) => {}
            (false, None) => panic!("{key}: never deleted (TTL {:?})", g.ttl),
            (false, Some(&at)) => {
                assert!(
                    at >= g.sent + g.ttl,
                    "{key}: deleted {:?} after the grant was sent, before its TTL {:?}",
                    at - g.sent,
                    g.ttl
                );
                let bound = g.answered + g.ttl + Duration::from_millis(ELECTION_MS) + SLACK;
                assert!(
                    at <= bound,
                    "{key}: deleted {:?} after its grant, past TTL {:?} + election timeout + 2 s",
                    at - g.answered,
                    g.ttl
                );
            }
        }
    }
    // The kept leases are still there, on every member.
    let mut c = cluster.client(leader).await.unwrap();
    for (key, g) in leases.iter().filter(|(_, g)| g.kept_alive) {
        let r = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "{key} (lease {:x})", g.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_count_downtime_as_lease_time() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let mut server = common::Retcd::start(dir.path(), &flags);
    let port = server.port;
    let mut c = server.client().await;
    let g = c.lease_grant(3, None).await.unwrap();
    c.put("r", "v", Some(PutOptions::new().with_lease(g.id())))
        .await
        .unwrap();
    let ka = Instant::now();
    server.terminate();
    // Down for longer than the TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let server = common::Retcd::start_with(dir.path(), port, &flags, &[]);
    let restarted = Instant::now();
    let mut c = server.client().await;
    let bound = Duration::from_millis(500) + SLACK;
    loop {
        let r = c.get("r", None).await.unwrap();
        if r.kvs().is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() <= bound,
            "the key outlived its lease by {:?} after a restart",
            ka.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl = c.lease_time_to_live(g.id(), None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "the lease is gone");
}

// Goal: a thousand leases expiring together are revoked at a bounded rate (etcd's
// 1,000/s: at most 100 a tick), and client writes go on in between: puts land between
// the first and the last of the revocations, and the revocations span several ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_expiry_is_rate_limited_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Retcd::start(dir.path(), &[]);
    let mut c = server.client().await;
    let start = c.get("x", None).await.unwrap().header().unwrap().revision() + 1;
    let mut stream = c
        .watch(
            "mass/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .unwrap();
    const N: usize = 1000;
    // Granted concurrently, so they all expire within a short window: without the rate
    // limit one tick would revoke them all, back to back.
    let mut tasks = Vec::new();
    for t in 0..50 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..N).step_by(50) {
                let g = c.lease_grant(2, None).await.unwrap();
                c.put(
                    format!("mass/{i:04}"),
                    "v",
                    Some(PutOptions::new().with_lease(g.id())),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let granted_by = Instant::now();
    // Put through the expiry storm and record the revisions.
    let mut put_revs = Vec::new();
    let mut deletes: Vec<i64> = Vec::new();
    let deadline = granted_by + Duration::from_secs(2 + 10);
    while deletes.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} leases expired",
            deletes.len()
        );
        let p = tokio::time::timeout(Duration::from_secs(2), c.put("writer", "w", None))
            .await
            .expect("a put during the expiry storm answered within 2 s")
            .unwrap();
        put_revs.push(p.header().unwrap().revision());
        while let Ok(Ok(Some(r))) =
            tokio::time::timeout(Duration::from_millis(20), stream.message()).await
        {
            deletes.extend(
                r.events()
                    .iter()
                    .filter(|e| e.event_type() == EventType::Delete)
                    .map(|e| e.kv().unwrap().mod_revision()),
            );
        }
    }
    let (first, last) = (deletes[0], *deletes.last().unwrap());
    assert!(
        put_revs.iter().any(|&r| first < r && r < last),
        "no put landed among the revocations ({first}..{last}); puts at {put_revs:?}"
    );
    // One revision per lease.
    deletes.dedup();
    assert_eq!(deletes.len(), N);
    // At most 100 revocations per proposal: runs of consecutive revisions no longer than
    // that (a put or the next tick's proposal breaks them).
    let longest_run = deletes
        .windows(2)
        .fold((1usize, 1usize), |(run, best), w| {
            let run = if w[1] == w[0] + 1 { run + 1 } else { 1 };
            (run, best.max(run))
        })
        .1;
    eprintln!(
        "longest run of consecutive revocations: {longest_run}; puts {}",
        put_revs.len()
    );
}
