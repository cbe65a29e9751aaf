//! The initial corruption check (`--experimental-initial-corrupt-check`) on real
//! members: a healthy cluster restarted with it starts, one member at a time (each
//! compared with two serving peers) and all at once; a member whose backend was altered
//! while it was stopped refuses to start with etcd's "found data inconsistency with
//! peers", naming the peers that disagree, and starts (serving the altered value) when
//! the flag is off. The periodic check (`--experimental-corrupt-check-time`) finds a
//! member altered the same way while the cluster runs, and raises CORRUPT.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use common::blocking;
use etcd_client::{Client, GetOptions};
use retcd_backend::{Backend, Bucket, ReadTx, RedbBackend, RedbConfig, WriteTx};
use retcd_mvcc::RevisionKey;
use retcd_testkit::cluster::{Cluster, ClusterSpec};

const CHECK: &str = "--experimental-initial-corrupt-check";
/// What a member logs when its check passes.
const PASSED: &str = "initial corruption checking passed";
/// The start of the error a member that refuses to start logs.
const INCONSISTENT: &str = "found data inconsistency with peers";
/// What a member logs once it serves.
const READY: &str = "ready to serve client requests";
/// Bound on every wait below. A check waits at most the request timeout (5 s plus two
/// election timeouts: 6 s here) for a peer that does not answer.
const DEADLINE: Duration = Duration::from_secs(30);

fn spec() -> ClusterSpec {
    ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(3)
        .heartbeat_ms(50)
        .election_ms(500)
}

/// Polls `f` every 20 ms until it returns `Some`; fails after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A history with overwrites, a deletion and a compaction, ending with a put; returns
/// once every member has applied all of it and hashes it the same (the check's
/// precondition: equal revision, compaction and hash). Returns each member's id and
/// the index of the leader that took the writes.
async fn write_history(cluster: &Cluster) -> (Vec<u64>, usize) {
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    for i in 0..20 {
        c.put(format!("key{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..5 {
        c.put(format!("key{i:02}"), "again", None).await.unwrap();
    }
    c.delete("key19", None).await.unwrap();
    c.compact(10, None).await.unwrap();
    let last = c.put("last", "value", None).await.unwrap();
    let revision = last.header().unwrap().revision();

    let mut ids = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..cluster.size() {
        let c = cluster.client(i).await.unwrap();
        let (id, hash) = eventually(&format!("member {i} applies revision {revision}"), || {
            let mut c = c.clone();
            async move {
                let h = c.hash_kv(0).await.ok()?;
                let header = h.header()?;
                (header.revision() == revision && h.compact_version() == 10)
                    .then(|| (header.member_id(), h.hash()))
            }
        })
        .await;
        ids.push(id);
        hashes.push(hash);
    }
    assert!(
        hashes.iter().all(|&h| h == hashes[0]),
        "members hash the same history differently before any tampering: {hashes:?}"
    );
    (ids, leader)
}

/// Number of times member `i`'s log says its check passed.
fn passes(cluster: &Cluster, i: usize) -> usize {
    cluster.log(i).matches(PASSED).count()
}

/// Rewrites the value of the newest put in the `key` bucket of the backend at
/// `data_dir` (member stopped): same key, same revisions, another value, which is what
/// a corrupted disk would leave and what no Raft entry can explain.
fn tamper(data_dir: &Path) {
    let db = data_dir.join("member").join("snap").join("db");
    let backend = RedbBackend::open(&db, &RedbConfig::default()).unwrap();
    let mut newest_put = None;
    {
        let tx = backend.begin_read().unwrap();
        tx.scan(Bucket::Key, &[], None, &mut |key, value| {
            if !RevisionKey::from_bytes(key).unwrap().tombstone {
                newest_put = Some((key.to_vec(), value.to_vec()));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    let (key, mut value) = newest_put.expect("the key bucket holds a put");
    // A record ends with the value (`docs/storage-format.md`): this appends to it.
    value.extend_from_slice(b"-tampered");
    let mut tx = backend.begin_write().unwrap();
    tx.put(Bucket::Key, &key, &value).unwrap();
    tx.commit().unwrap();
}

async fn get(c: &mut Client, key: &str) -> String {
    let r = c
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    r.kvs()[0].value_str().unwrap().to_string()
}

// Goal: a healthy cluster restarted with the check starts: member by member, each one
// compared with its two serving peers and passing; then all three at once, when no peer
// serves while the others check (they are skipped, as etcd skips peers that do not
// answer), and the data is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_restarted_with_the_check_starts() {
    let cluster = blocking(|| Cluster::start(spec())).unwrap();
    write_history(&cluster).await;

    for i in 0..cluster.size() {
        blocking(|| {
            assert!(cluster.terminate(i).unwrap().success());
            cluster.restart_with(i, &[CHECK]).unwrap();
            cluster.wait_healthy(i).unwrap();
        });
        assert_eq!(passes(&cluster, i), 1, "member {i}:\n{}", cluster.log(i));
        let log = cluster.log(i);
        assert!(
            log.contains("peers_compared=2"),
            "member {i} should have compared with both serving peers:\n{log}"
        );
        assert!(!log.contains(INCONSISTENT), "member {i}:\n{log}");
    }

    blocking(|| {
        for i in 0..cluster.size() {
            assert!(cluster.terminate(i).unwrap().success());
        }
        for i in 0..cluster.size() {
            cluster.restart_with(i, &[CHECK]).unwrap();
        }
        cluster.wait_healthy_all_of(&[0, 1, 2], DEADLINE).unwrap();
    });
    for i in 0..cluster.size() {
        assert_eq!(passes(&cluster, i), 2, "member {i}:\n{}", cluster.log(i));
        let mut c = cluster.client(i).await.unwrap();
        assert_eq!(get(&mut c, "last").await, "value");
        assert_eq!(get(&mut c, "key00").await, "again");
    }
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    c.put("after", "restart", None).await.unwrap();
}

// Goal: a member whose backend holds another value at a revision its peers hold
// refuses to start with the check on (etcd's message, the disagreeing peers named, a
// failed exit), and starts with it off, serving the altered value: the check is what
// stands between the damage and the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_altered_data_refuses_to_start_with_the_check() {
    let cluster = blocking(|| Cluster::start(spec())).unwrap();
    // The leader: its peers must answer the check while they elect another.
    let (ids, victim) = write_history(&cluster).await;
    let peers: Vec<usize> = (0..cluster.size()).filter(|&p| p != victim).collect();

    let served_before = cluster.log(victim).matches(READY).count();
    blocking(|| {
        assert!(cluster.terminate(victim).unwrap().success());
        tamper(cluster.data_dir(victim));
        cluster.restart_with(victim, &[CHECK]).unwrap();
    });
    let deadline = Instant::now() + DEADLINE;
    while cluster.is_running(victim) {
        assert!(
            Instant::now() < deadline,
            "the altered member still runs after {DEADLINE:?}:\n{}",
            cluster.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = cluster.last_exit(victim).unwrap();
    let log = cluster.log(victim);
    assert!(!exit.success(), "exit {exit:?}:\n{log}");
    let refusal = log
        .lines()
        .find(|l| l.contains(INCONSISTENT))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        refusal.contains(&format!("{:x} {INCONSISTENT}", ids[victim])),
        "the refusal names this member first, as etcd's: {refusal}"
    );
    for &peer in &peers {
        assert!(
            refusal.contains(&format!("member {:x}", ids[peer])),
            "the refusal names peer {peer} ({:x}): {refusal}",
            ids[peer]
        );
    }
    assert_eq!(
        log.matches(READY).count(),
        served_before,
        "the refused start never served:\n{log}"
    );

    // The peers go on serving (electing a new leader first if the victim led).
    blocking(|| cluster.wait_healthy_all_of(&peers, DEADLINE)).unwrap();

    // Without the check the same data starts and serves the altered value.
    blocking(|| {
        cluster.restart(victim).unwrap();
        cluster.wait_healthy(victim).unwrap();
    });
    let mut c = cluster.client(victim).await.unwrap();
    assert_eq!(get(&mut c, "last").await, "value-tampered");
    let mut healthy = cluster.client(peers[0]).await.unwrap();
    assert_eq!(get(&mut healthy, "last").await, "value");
}

// Goal: issue 16, acceptance 4. The periodic check: a follower whose backend was altered
// while it was stopped is found by the leader within a few periods of its restart;
// CORRUPT is raised (member 0, as etcd 3.4.23 raises it) and listed by every member,
// writes are refused with etcd's "corrupt cluster", Status lists it among the errors,
// and /readyz fails its data_corruption check. With the altered member stopped and the alarm disarmed, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_raises_corrupt() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let spec = spec().extra_arg("--experimental-corrupt-check-time=500ms");
    let cluster = blocking(|| Cluster::start(spec)).unwrap();
    let (_ids, leader) = write_history(&cluster).await;
    // Healthy, the cluster passes checks while it takes writes.
    let mut c = cluster.client(leader).await.unwrap();
    let passed = |cluster: &Cluster| {
        cluster
            .log(leader)
            .matches("periodic corruption check passed")
            .count()
    };
    let before = passed(&cluster);
    let mut n = 0;
    while passed(&cluster) < before + 3 {
        n += 1;
        c.put("busy", n.to_string(), None).await.unwrap();
        assert!(n < 10_000, "the leader did not pass three checks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty(), "{alarms:?}");
    let victim = (leader + 1) % cluster.size();
    blocking(|| {
        assert!(cluster.terminate(victim).unwrap().success());
        tamper(cluster.data_dir(victim));
        // Not waited healthy: /health fails as soon as the check raises CORRUPT.
        cluster.restart(victim).unwrap();
    });
    let healthy: Vec<usize> = (0..cluster.size()).filter(|&i| i != victim).collect();
    let c = cluster.client(healthy[0]).await.unwrap();
    eventually("CORRUPT is raised", || {
        let mut c = c.clone();
        async move {
            let alarms = c
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await
                .ok()?;
            alarms
                .alarms()
                .iter()
                .any(|a| a.alarm() == AlarmType::Corrupt && a.member_id() == 0)
                .then_some(())
        }
    })
    .await;
    for i in 0..cluster.size() {
        let mut c = cluster.client(i).await.unwrap();
        eventually(&format!("member {i} lists CORRUPT"), || {
            let mut c = c.clone();
            async move {
                let alarms = c
                    .alarm(AlarmAction::Get, AlarmType::None, None)
                    .await
                    .ok()?;
                (!alarms.alarms().is_empty()).then_some(())
            }
        })
        .await;
        let err = c.put("after", "x", None).await.unwrap_err();
        assert!(
            err.to_string().contains("etcdserver: corrupt cluster"),
            "{err}"
        );
        // `etcdctl endpoint status` shows it in the member's errors.
        let status = c.status().await.unwrap();
        assert!(
            status.errors().iter().any(|e| e.contains("alarm:CORRUPT")),
            "{:?}",
            status.errors()
        );
        let port: u16 = cluster
            .client_url(i)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (code, body) = common::http_get(port, "/readyz").unwrap();
        assert_ne!(code, 200, "{body}");
        assert!(body.contains("data_corruption"), "{body}");
    }

    // The altered member out, the alarm disarmed: writes go on.
    blocking(|| assert!(cluster.terminate(victim).unwrap().success()));
    let mut c = c.clone();
    let mut disarm = AlarmOptions::new();
    disarm.with_member(0);
    c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(disarm))
        .await
        .unwrap();
    eventually("a write after disarming", || {
        let mut c = c.clone();
        async move { c.put("after", "x", None).await.ok() }
    })
    .await;
}
