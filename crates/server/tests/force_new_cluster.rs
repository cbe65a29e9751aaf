//! `--force-new-cluster` (issue 16, acceptance 8): a cluster that lost two of its three
//! members is recovered from the survivor, which restarts as a one-member cluster with
//! every write it had applied, takes writes again, and stays a one-member cluster when
//! restarted without the flag.

mod common;

use std::time::{Duration, Instant};

use common::blocking;
use etcd_client::{Client, GetOptions};
use retcd_testkit::cluster::{Cluster, ClusterSpec};

const DEADLINE: Duration = Duration::from_secs(30);

/// Every key member `c` serves (serializable: its own applied state), with revisions.
async fn keys(c: &mut Client) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64)>) {
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_serializable()),
        )
        .await
        .unwrap();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
        .collect();
    (r.header().unwrap().revision(), kvs)
}

// Goal: the survivor of a lost quorum becomes a one-member cluster with all it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_lost_quorum_starts_alone() {
    let spec = ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(3)
        .heartbeat_ms(50)
        .election_ms(500);
    let cluster = blocking(|| Cluster::start(spec)).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    for i in 0..100 {
        c.put(format!("k{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k050", None).await.unwrap();
    let last = c
        .put("last", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // The survivor: a follower, once it has applied everything.
    let survivor = (leader + 1) % 3;
    let mut s = cluster.client(survivor).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let want = loop {
        let (rev, kvs) = keys(&mut s).await;
        if rev == last {
            break kvs;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor did not apply revision {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let survivor_id = s.status().await.unwrap().header().unwrap().member_id();

    blocking(|| {
        for i in (0..3).filter(|&i| i != survivor) {
            cluster.kill(i).unwrap();
        }
        assert!(cluster.terminate(survivor).unwrap().success());
        cluster
            .restart_with(survivor, &["--force-new-cluster"])
            .unwrap();
        cluster.wait_healthy(survivor).unwrap();
    });
    assert!(
        cluster
            .log(survivor)
            .contains("--force-new-cluster: starting as a one-member cluster"),
        "{}",
        cluster.log(survivor)
    );
    let mut s = cluster.client(survivor).await.unwrap();
    let members = s.member_list().await.unwrap();
    let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids, [survivor_id]);
    assert_eq!(keys(&mut s).await.1, want);
    let put = s.put("after", "recovery", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), last + 1);

    // Restarted without the flag, it is still alone and has the new write.
    blocking(|| {
        assert!(cluster.terminate(survivor).unwrap().success());
        cluster.restart(survivor).unwrap();
        cluster.wait_healthy(survivor).unwrap();
    });
    let mut s = cluster.client(survivor).await.unwrap();
    assert_eq!(s.member_list().await.unwrap().members().len(), 1);
    let got = s.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"recovery");
}
