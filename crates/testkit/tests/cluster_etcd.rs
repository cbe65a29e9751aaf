//! The cluster launcher and the peer proxies against real etcd 3.4 processes: isolate the
//! leader, kill and restart a follower, SIGSTOP and SIGCONT the leader, add a member.
//! Each test needs an etcd binary (`retcd_testkit::etcd_bin`: skips with a printed reason
//! without one, fails under `CI=true`).
//!
//! What is asserted is what must hold whatever the timing: a write succeeds through a
//! majority, an isolated or stopped member does not answer a linearizable read, a member
//! cut off from replication still serves the old value to a serializable read, and after
//! healing every member answers a linearizable read with the newest value.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, GetOptions};
use retcd_testkit::cluster::{Cluster, ClusterSpec};
use retcd_testkit::etcd_bin::etcd;

/// Bound on waiting for a cluster to do what it must do (elect, replicate, catch up).
const CONVERGE: Duration = Duration::from_secs(30);
/// Bound on one request the test expects to fail or hang.
const REFUSED: Duration = Duration::from_secs(3);

fn spec(etcd: PathBuf) -> ClusterSpec {
    ClusterSpec::new(etcd)
        .size(3)
        .proxied_peers(true)
        .token("testkit-etcd")
}

/// Starts the cluster off the async threads (it blocks while members boot).
async fn start(spec: ClusterSpec) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(spec))
        .await
        .expect("start task")
        .expect("start the cluster")
}

/// Bound on one attempt of a request that is retried: a proposal that reached a leader
/// which lost its quorum hangs until the server's own timeout (7 s in etcd), and a new
/// attempt gets through sooner once there is a new leader.
const ATTEMPT: Duration = Duration::from_secs(2);

async fn put(client: &mut Client, key: &str, value: &str) -> anyhow::Result<()> {
    tokio::time::timeout(ATTEMPT, client.put(key, value, None))
        .await
        .context("put timed out")?
        .context("put failed")?;
    Ok(())
}

/// A linearizable read (etcd-client's default).
async fn get(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let resp = tokio::time::timeout(ATTEMPT, client.get(key, None))
        .await
        .context("get timed out")?
        .context("get failed")?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string()))
}

async fn get_serializable(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let options = GetOptions::new().with_serializable();
    let resp = tokio::time::timeout(Duration::from_secs(6), client.get(key, Some(options)))
        .await
        .context("get timed out")?
        .context("get failed")?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string()))
}

/// The `raft_term` member `i` reports in Status (0 if it does not answer). etcd 3.4
/// reports the term of its last applied entry there, not its current Raft term: an
/// isolated member campaigning at ever higher terms still reports the old one.
async fn term(cluster: &Cluster, i: usize) -> u64 {
    let mut client = cluster.client(i).await.expect("client");
    match tokio::time::timeout(ATTEMPT, client.status()).await {
        Ok(Ok(status)) => status.raft_term(),
        _ => 0,
    }
}

/// Retries a put through `member` until it succeeds, or fails after `CONVERGE`.
async fn put_eventually(cluster: &Cluster, member: usize, key: &str, value: &str) {
    let deadline = Instant::now() + CONVERGE;
    let mut client = cluster.client(member).await.expect("client");
    loop {
        match put(&mut client, key, value).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("put {key}={value} through m{member}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "put {key}={value} through m{member} never succeeded: {e:#}\n{}",
                cluster.log_tails()
            ),
        }
    }
}

/// Waits until a linearizable read on `member` returns `value`.
async fn wait_value(cluster: &Cluster, member: usize, key: &str, value: &str) {
    let deadline = Instant::now() + CONVERGE;
    let mut client = cluster.client(member).await.expect("client");
    loop {
        let got = get(&mut client, key).await;
        match &got {
            Ok(Some(v)) if v == value => return,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!(
                "m{member} never read {key}={value}; last answer {got:?}\n{}",
                cluster.log_tails()
            ),
        }
    }
}

async fn wait_all(cluster: &Cluster, key: &str, value: &str) {
    for i in 0..cluster.size() {
        wait_value(cluster, i, key, value).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_moves_writes_to_the_majority() {
    let Some(etcd) = etcd() else { return };
    let began = Instant::now();
    let cluster = start(spec(etcd)).await;
    eprintln!("started in {:?}", began.elapsed());
    put_eventually(&cluster, 0, "k", "v1").await;
    wait_all(&cluster, "k", "v1").await;

    let old = cluster.leader(CONVERGE).await.expect("a leader");
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let before = cluster.proxy(old).unwrap().stats();
    cluster.isolate(old).unwrap();
    let isolated_at = Instant::now();

    put_eventually(&cluster, majority[0], "k", "v2").await;
    eprintln!(
        "majority took a write {:?} after the isolation",
        isolated_at.elapsed()
    );
    let new = cluster.leader(CONVERGE).await.expect("a new leader");
    assert_ne!(
        new, old,
        "the isolated member is still named leader by a majority"
    );

    let mut isolated = cluster.client(old).await.unwrap();
    let read = tokio::time::timeout(REFUSED, get(&mut isolated, "k")).await;
    assert!(
        matches!(read, Err(_) | Ok(Err(_))),
        "the isolated member answered a linearizable read: {read:?}"
    );
    assert_eq!(
        get_serializable(&mut isolated, "k")
            .await
            .unwrap()
            .as_deref(),
        Some("v1"),
        "the isolated member learned the new value: the isolation leaked"
    );
    // Its peers' connections were cut at once; their new ones were held.
    let during = cluster.proxy(old).unwrap().stats();
    assert!(
        during.closed_by_blackhole > before.closed_by_blackhole,
        "{during:?}"
    );
    assert!(during.held > before.held, "{during:?}");

    let term_before_heal = term(&cluster, new).await;
    let isolated_term = term(&cluster, old).await;
    cluster.heal().unwrap();
    let healed_at = Instant::now();
    wait_all(&cluster, "k", "v2").await;
    let leader_after = cluster
        .leader(CONVERGE)
        .await
        .expect("a leader after the heal");
    eprintln!(
        "all members read the new value {:?} after the heal; leaders m{old} -> m{new} \
         (status term {term_before_heal}; the isolated member's {isolated_term}) -> m{leader_after} \
         (status term {}); test took {:?}",
        healed_at.elapsed(),
        term(&cluster, leader_after).await,
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_restarts_and_catches_up() {
    let Some(etcd) = etcd() else { return };
    let began = Instant::now();
    let cluster = start(spec(etcd)).await;
    let leader = cluster.leader(CONVERGE).await.expect("a leader");
    let follower = (leader + 1) % 3;
    put_eventually(&cluster, leader, "k", "before").await;
    wait_value(&cluster, follower, "k", "before").await;

    let old_pid = cluster.pid(follower).unwrap();
    let status = cluster.kill(follower).unwrap();
    assert!(!status.success(), "SIGKILL ended it with {status}");
    assert!(!cluster.is_running(follower));
    assert_eq!(cluster.pid(follower), None);
    assert!(cluster.kill(follower).is_err(), "killed twice");

    put_eventually(&cluster, leader, "k", "during").await;

    let from_follower = |c: &Cluster| {
        c.proxy(leader)
            .unwrap()
            .stats()
            .accepted_by_source
            .get(&Some(follower))
            .copied()
            .unwrap_or(0)
    };
    let dialed_before = from_follower(&cluster);
    assert!(
        dialed_before > 0,
        "the follower never dialed the leader's proxy"
    );
    let new_pid = cluster.restart(follower).unwrap();
    assert_ne!(new_pid, old_pid);
    tokio::task::block_in_place(|| cluster.wait_healthy(follower)).expect("healthy again");
    wait_value(&cluster, follower, "k", "during").await;
    // The restarted process is attributed under its index on the leader's proxy.
    cluster
        .proxy(leader)
        .unwrap()
        .wait_for_async(CONVERGE, |s| {
            s.accepted_by_source
                .get(&Some(follower))
                .copied()
                .unwrap_or(0)
                > dialed_before
        })
        .await
        .expect("the restarted follower's connections attributed to it");
    let log = cluster.log(follower);
    assert_eq!(log.matches("=== retcd-testkit: start").count(), 2, "{log}");
    eprintln!("test took {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_catches_up_when_continued() {
    let Some(etcd) = etcd() else { return };
    let began = Instant::now();
    let cluster = start(spec(etcd)).await;
    put_eventually(&cluster, 0, "k", "v1").await;
    let old = cluster.leader(CONVERGE).await.expect("a leader");
    let other = (old + 1) % 3;

    cluster.stop(old).unwrap();
    assert!(cluster.is_stopped(old) && cluster.is_running(old));
    let stopped_at = Instant::now();
    put_eventually(&cluster, other, "k", "v2").await;
    eprintln!("a write succeeded {:?} after SIGSTOP", stopped_at.elapsed());
    let mut paused = cluster.client(old).await.unwrap();
    let read = tokio::time::timeout(REFUSED, get_serializable(&mut paused, "k")).await;
    assert!(
        matches!(read, Err(_) | Ok(Err(_))),
        "a stopped process answered: {read:?}"
    );

    cluster.cont(old).unwrap();
    assert!(!cluster.is_stopped(old));
    wait_all(&cluster, "k", "v2").await;
    let new = cluster.leader(CONVERGE).await.expect("a leader");
    eprintln!(
        "leader m{old} stopped, m{new} leads after SIGCONT; test took {:?}",
        began.elapsed()
    );
    let status = cluster.terminate(old).unwrap();
    assert!(
        !cluster.is_running(old),
        "SIGTERM left it running ({status})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_joins_through_its_proxy() {
    let Some(etcd) = etcd() else { return };
    let began = Instant::now();
    let mut cluster = start(spec(etcd)).await;
    put_eventually(&cluster, 0, "k", "v1").await;

    let (peer_url, added) = cluster.add_member("m3").unwrap();
    assert_eq!(added, 3);
    assert_eq!(peer_url, cluster.proxy(3).unwrap().url());
    // etcd refuses to add a voter until its peers have been connected for 5 s (strict
    // reconfiguration check); only that clean refusal is retried, as MemberAdd is not
    // idempotent.
    let mut client = cluster.client(0).await.unwrap();
    let deadline = Instant::now() + CONVERGE;
    let resp = loop {
        let add = client.member_add([peer_url.as_str()], None);
        match tokio::time::timeout(Duration::from_secs(10), add)
            .await
            .expect("member add in time")
        {
            Ok(resp) => break resp,
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message() == "etcdserver: unhealthy cluster" && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("member add: {e:?}"),
        }
    };
    assert_eq!(resp.member_list().len(), 4);
    let initial = cluster.initial_cluster_of(&[0, 1, 2, 3]);
    cluster.start_added(added, &initial).unwrap();
    tokio::task::block_in_place(|| cluster.wait_healthy(added)).expect("the new member healthy");
    wait_value(&cluster, added, "k", "v1").await;
    put_eventually(&cluster, added, "k", "v2").await;
    wait_all(&cluster, "k", "v2").await;
    // The new member's dial-ins are attributed on the old members' proxies.
    cluster
        .proxy(0)
        .unwrap()
        .wait_for_async(CONVERGE, |s| s.accepted_by_source.contains_key(&Some(3)))
        .await
        .expect("m3's connections attributed");
    eprintln!("test took {:?}", began.elapsed());
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let Some(etcd) = etcd() else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let cluster = Cluster::start(spec(etcd).size(2)).expect("start the cluster");
        let pids: Vec<u32> = (0..2).map(|i| cluster.pid(i).unwrap()).collect();
        let proxies: Vec<_> = (0..2).map(|i| cluster.proxy(i).unwrap().addr()).collect();
        cluster.stop(1).unwrap(); // a stopped member must die too
        tx.send((pids, proxies, cluster.root().to_path_buf()))
            .unwrap();
        panic!("the test fails with the cluster running");
    });
    assert!(test.join().is_err(), "the thread was meant to panic");
    let (pids, proxies, root) = rx.recv().expect("the cluster started");
    for pid in pids {
        // Drop reaped them, so not even a zombie is left.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "member process {pid} survived"
        );
    }
    for addr in proxies {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "proxy {addr} survived"
        );
    }
    assert!(!root.exists(), "{} survived", root.display());
}
