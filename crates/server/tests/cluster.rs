//! Multi-member behaviour (issue 4): membership changes with etcd's answers, learners,
//! MoveLeader, catch-up by snapshot, a new member joining a loaded cluster, and a
//! minority that never answers a write or a linearizable read with success, and
//! defragmentation of every member under writes, and the NOSPACE alarm as cluster state.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{UNHEALTHY, blocking, when_healthy};
use etcd_client::{Client, GetOptions, MemberAddOptions, Txn, TxnOp};
use retcd_testkit::cluster::{Cluster, ClusterSpec};

fn spec(size: usize) -> ClusterSpec {
    ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(size)
        .heartbeat_ms(50)
        .election_ms(500)
        .proxied_peers(true)
}

fn message(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

async fn member_id(client: &mut Client) -> u64 {
    client.status().await.unwrap().header().unwrap().member_id()
}

/// Polls `f` every 20 ms until it returns true; fails after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Goal: MemberList, MemberAdd (learner), MemberPromote, MoveLeader and MemberRemove
// behave as etcd's, errors included, and a learner serves only serializable reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_answer_as_etcd() {
    let mut cluster = blocking(|| Cluster::start(spec(3))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    c.put("k", "v", None).await.unwrap();

    // Every member lists the three, with the names and client URLs they published.
    eventually(
        "members publish their client URLs",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                let list = c.member_list().await.unwrap();
                list.members().len() == 3
                    && list.members().iter().all(|m| !m.client_urls().is_empty())
            }
        },
    )
    .await;
    let list = c.member_list().await.unwrap();
    let mut names: Vec<&str> = list.members().iter().map(|m| m.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m0", "m1", "m2"]);

    // Bad and duplicate peer URLs.
    let e = c.member_add(["not a url"], None).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: given member URLs are invalid");
    // Refused as etcd refuses it until this member's peers have been connected 5 s
    // (--strict-reconfig-check), then for the URL.
    let e = when_healthy(|| {
        let mut c = c.clone();
        let url = cluster.peer_url(0);
        async move { c.member_add([url], None).await }
    })
    .await
    .unwrap_err();
    assert_eq!(message(e), "etcdserver: Peer URLs already exists");

    // MemberUpdate: through Raft (an UpdateNode change), checked like etcd's.
    let m0 = list
        .members()
        .iter()
        .find(|m| m.name() == "m0")
        .unwrap()
        .id();
    let updated = c.member_update(m0, [cluster.peer_url(0)]).await.unwrap();
    assert_eq!(updated.members().len(), 3);
    let e = c
        .member_update(m0, [cluster.peer_url(1)])
        .await
        .unwrap_err();
    assert_eq!(message(e), "etcdserver: Peer URLs already exists");
    let e = c
        .member_update(42, ["http://127.0.0.1:1".to_string()])
        .await
        .unwrap_err();
    assert_eq!(message(e), "etcdserver: member not found");

    // A learner: added, refused promotion while it has not caught up, started.
    let (peer_url, index) = cluster.add_member("learner").unwrap();
    let added = when_healthy(|| {
        let mut c = c.clone();
        let url = peer_url.clone();
        async move {
            c.member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                .await
        }
    })
    .await
    .unwrap();
    let learner_id = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());
    assert_eq!(added.member_list().len(), 4);
    let e = c
        .member_add(
            ["http://127.0.0.1:1"],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "etcdserver: too many learner members in cluster"
    );
    let e = c.member_promote(learner_id).await.unwrap_err();
    assert_eq!(
        message(e),
        "etcdserver: can only promote a learner member which is in sync with leader"
    );
    let initial = format!(
        "{},learner={peer_url}",
        cluster.initial_cluster_of(&[0, 1, 2])
    );
    blocking(|| cluster.start_added(index, &initial)).unwrap();
    // A learner's /health is false, as etcd's (its linearizable read check is refused):
    // wait for its serializable reads instead.
    let url = cluster.client_url(index);
    eventually("the learner replicates", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let Ok(mut l) = Client::connect([url], None).await else {
                return false;
            };
            l.get("k", Some(GetOptions::new().with_serializable()))
                .await
                .is_ok_and(|r| r.kvs().first().is_some_and(|kv| kv.value() == b"v"))
        }
    })
    .await;
    let mut learner = cluster.client(index).await.unwrap();
    eventually(
        "the learner knows it is one",
        Duration::from_secs(10),
        || {
            let mut l = learner.clone();
            async move { l.status().await.is_ok_and(|s| s.is_learner()) }
        },
    )
    .await;
    let e = learner.put("k", "w", None).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: rpc not supported for learner");
    let e = learner.get("k", None).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: rpc not supported for learner");

    // Promotion, through a follower (forwarded to the leader), then it is a voter.
    let follower = (leader + 1) % 3;
    let mut f = cluster.client(follower).await.unwrap();
    eventually(
        "the learner can be promoted",
        Duration::from_secs(10),
        || {
            let mut f = f.clone();
            async move { f.member_promote(learner_id).await.is_ok() }
        },
    )
    .await;
    let e = c.member_promote(learner_id).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: can only promote a learner member");
    eventually(
        "the promoted member knows it votes",
        Duration::from_secs(10),
        || {
            let mut l = learner.clone();
            async move { l.status().await.is_ok_and(|s| !s.is_learner()) }
        },
    )
    .await;
    learner.put("k", "from-new-voter", None).await.unwrap();

    // MoveLeader: only on the leader, only to a voter.
    let e = f.move_leader(learner_id).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: not leader");
    let e = c.move_leader(12345).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: bad leader transferee");
    c.move_leader(learner_id).await.unwrap();
    let status = learner.status().await.unwrap();
    assert_eq!(status.leader(), learner_id);

    // Removal: the removed member stops; a second removal finds nobody.
    // The new voter's own connections may be younger than etcd's 5 s.
    when_healthy(|| {
        let mut l = learner.clone();
        async move { l.member_remove(learner_id).await }
    })
    .await
    .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.is_running(index) {
        assert!(Instant::now() < deadline, "the removed member did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = cluster
        .client(cluster.leader(Duration::from_secs(10)).await.unwrap())
        .await
        .unwrap();
    let e = c.member_remove(learner_id).await.unwrap_err();
    assert_eq!(message(e), "etcdserver: member not found");
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members().len(), 3);
    let r = c.get("k", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"from-new-voter");
}

// Goal: --strict-reconfig-check decides whether a member removes a voter while another
// voter is down. With it (etcd's default) the leader refuses with etcd's "unhealthy
// cluster" and proposes nothing, but removes the member that is down; without it the
// removal goes through, as in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_check_refuses_a_removal_that_breaks_the_active_quorum() {
    for strict in [true, false] {
        let spec = spec(3).extra_arg(format!("--strict-reconfig-check={strict}"));
        let cluster = blocking(|| Cluster::start(spec)).unwrap();
        let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (up, down) = (others[0], others[1]);
        let up_id = member_id(&mut cluster.client(up).await.unwrap()).await;
        let down_id = member_id(&mut cluster.client(down).await.unwrap()).await;
        let c = cluster.client(leader).await.unwrap();
        // A change the leader refuses without proposing it: "unhealthy cluster" while
        // some voter has not been connected to it for 5 s, else the duplicate URL.
        let probe = || {
            let mut c = c.clone();
            let url = cluster.peer_url(leader);
            async move { message(c.member_add([url], None).await.unwrap_err()) }
        };
        if strict {
            // Every voter connected for 5 s: a refusal below is down to the kill.
            assert_eq!(
                message(
                    when_healthy(|| {
                        let mut c = c.clone();
                        let url = cluster.peer_url(leader);
                        async move { c.member_add([url], None).await }
                    })
                    .await
                    .unwrap_err()
                ),
                "etcdserver: Peer URLs already exists"
            );
        }
        blocking(|| cluster.kill(down)).unwrap();
        if strict {
            // The leader's transport notices the connection is gone.
            eventually(
                "the leader sees a voter down",
                Duration::from_secs(10),
                || {
                    let probe = probe();
                    async move { probe.await == UNHEALTHY }
                },
            )
            .await;
            let e = c.clone().member_remove(up_id).await.unwrap_err();
            assert_eq!(message(e), UNHEALTHY);
            assert_eq!(c.clone().member_list().await.unwrap().members().len(), 3);
            // The member that is down is not part of the active quorum: it may go.
            let left = c.clone().member_remove(down_id).await.unwrap();
            assert_eq!(left.members().len(), 2);
        } else {
            assert_ne!(probe().await, UNHEALTHY);
            let left = c.clone().member_remove(up_id).await.unwrap();
            assert_eq!(left.members().len(), 2);
        }
    }
}

/// Writes `n` keys `prefix{i}` in txns of 100 puts from 8 concurrent clients.
async fn load(cluster: &Cluster, member: usize, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut kv = cluster.client(member).await?.kv_client();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = t * 100;
            while i < n {
                let ops: Vec<TxnOp> = (i..(i + 100).min(n))
                    .map(|k| TxnOp::put(format!("{prefix}{k:07}"), format!("value-{k}"), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await?;
                i += 800;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn count_serializable(client: &mut Client, prefix: &str) -> anyhow::Result<(i64, i64)> {
    let r = client
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_serializable(),
            ),
        )
        .await?;
    Ok((r.count(), r.header().context("header")?.revision()))
}

// Goal: a member that was down while the others wrote past their in-memory log catches
// up by a snapshot of the backend, and answers serializable reads like the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_by_snapshot() {
    let cluster = blocking(|| Cluster::start(spec(3).snapshot_count(500))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let follower = (leader + 1) % 3;
    blocking(|| cluster.kill(follower)).unwrap();
    // A lease with two keys, which the follower learns from the snapshot.
    let mut c = cluster.client(leader).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for k in ["leased/a", "leased/b"] {
        c.put(
            k,
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    // 7,000 entries: past the 5,000 the leader keeps behind its snapshot.
    for i in 0..7_000 {
        if i % 1000 == 0 {
            // Some keys in txns, most as single puts so the log grows.
            load(&cluster, leader, &format!("bulk{i}/"), 1_000)
                .await
                .unwrap();
        }
        c.put(format!("single/{i:05}"), "x", None).await.unwrap();
    }
    blocking(|| cluster.restart(follower)).unwrap();
    blocking(|| cluster.wait_healthy(follower)).unwrap();
    let mut f = cluster.client(follower).await.unwrap();
    let want = count_serializable(&mut c, "").await.unwrap();
    eventually("the follower catches up", Duration::from_secs(20), || {
        let mut f = f.clone();
        async move { count_serializable(&mut f, "").await.ok() == Some(want) }
    })
    .await;
    assert!(
        cluster
            .log(follower)
            .contains("installed a snapshot from the leader"),
        "the follower caught up without a snapshot:\n{}",
        cluster.log(follower)
    );
    let hashes = (
        c.hash_kv(want.1).await.unwrap().hash(),
        f.hash_kv(want.1).await.unwrap().hash(),
    );
    assert_eq!(hashes.0, hashes.1);
    let _ = member_id(&mut f).await;

    // The lease came with the snapshot: its record and its keys.
    let ttl = f
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 600);
    assert_eq!(ttl.keys(), [b"leased/a".to_vec(), b"leased/b".to_vec()]);
    c.lease_revoke(lease).await.unwrap();
    eventually(
        "the revoke reaches the follower",
        Duration::from_secs(10),
        || {
            let mut f = f.clone();
            async move {
                f.get(
                    "leased/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .is_ok_and(|r| r.kvs().is_empty())
            }
        },
    )
    .await;
}

// Goal: a member added to a cluster holding 100,000 keys catches up and its serializable
// reads match the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_catches_up_with_100k_keys() {
    let mut cluster = blocking(|| Cluster::start(spec(3).snapshot_count(2_000))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    load(&cluster, leader, "big/", 100_000).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    let (peer_url, index) = cluster.add_member("new").unwrap();
    when_healthy(|| {
        let mut c = c.clone();
        let url = peer_url.clone();
        async move { c.member_add([url], None).await }
    })
    .await
    .unwrap();
    let initial = format!("{},new={peer_url}", cluster.initial_cluster_of(&[0, 1, 2]));
    blocking(|| cluster.start_added(index, &initial)).unwrap();
    blocking(|| cluster.wait_healthy(index)).unwrap();
    let mut n = cluster.client(index).await.unwrap();
    let want = count_serializable(&mut c, "big/").await.unwrap();
    assert_eq!(want.0, 100_000);
    eventually("the new member catches up", Duration::from_secs(30), || {
        let mut n = n.clone();
        async move { count_serializable(&mut n, "big/").await.ok() == Some(want) }
    })
    .await;
    for k in [0, 1, 49_999, 99_999] {
        let key = format!("big/{k:07}");
        let r = n
            .get(key.as_str(), Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), format!("value-{k}").as_bytes(), "{key}");
    }
}

// Goal: a member cut off from the majority (a follower, then an old leader) never
// answers a write or a linearizable read with success, while the majority does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_never_answers_success() {
    let cluster = blocking(|| Cluster::start(spec(3))).unwrap();
    for victim_is_leader in [false, true] {
        let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
        let victim = if victim_is_leader {
            leader
        } else {
            (leader + 1) % 3
        };
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_millis(1500));
        let mut m = Client::connect([cluster.client_url(victim)], Some(options))
            .await
            .unwrap();
        blocking(|| cluster.isolate(victim)).unwrap();
        let majority = (victim + 1) % 3;
        let mut ok = cluster.client(majority).await.unwrap();
        for i in 0..10 {
            let key = format!("minority/{victim_is_leader}/{i}");
            assert!(
                m.put(key.as_str(), "x", None).await.is_err(),
                "the minority acknowledged a write"
            );
            assert!(
                m.get(key.as_str(), None).await.is_err(),
                "the minority answered a linearizable read"
            );
        }
        // Status still answers on the minority and says why it cannot serve (etcd's
        // StatusResponse.errors).
        eventually(
            "the isolated member reports no leader",
            Duration::from_secs(10),
            || {
                let mut m = m.clone();
                async move {
                    m.status().await.is_ok_and(|s| {
                        s.leader() == 0 && s.errors() == ["etcdserver: no leader".to_string()]
                    })
                }
            },
        )
        .await;
        // The majority elects a leader if it lost one and takes writes.
        eventually("the majority takes writes", Duration::from_secs(10), || {
            let mut ok = ok.clone();
            async move { ok.put("majority", "x", None).await.is_ok() }
        })
        .await;
        ok.put("majority", "y", None).await.unwrap();
        blocking(|| cluster.heal()).unwrap();
        eventually(
            "the healed member reads the majority's write",
            Duration::from_secs(10),
            || {
                let mut m = m.clone();
                async move {
                    m.get("majority", None)
                        .await
                        .is_ok_and(|r| r.kvs().first().is_some_and(|kv| kv.value() == b"y"))
                }
            },
        )
        .await;
    }
}

// Goal: a five-member cluster starts from etcd's flags, and every member serves
// linearizable reads of a write made through any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_start_and_serve() {
    let cluster = blocking(|| Cluster::start(spec(5).proxied_peers(false))).unwrap();
    let mut writer = cluster.client(3).await.unwrap();
    writer.put("five", "members", None).await.unwrap();
    for i in 0..5 {
        let mut c = cluster.client(i).await.unwrap();
        let r = c.get("five", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"members", "member {i}");
        assert_eq!(c.member_list().await.unwrap().members().len(), 5);
    }
}

// Goal: etcd's peer network metrics on the leader: bytes sent to and received from each
// follower, and the round trip of the probes on each connection, labelled by member id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_metrics_have_etcds_names() {
    let cluster = blocking(|| Cluster::start(spec(3).proxied_peers(false))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let mut c = cluster.client(leader).await.unwrap();
    c.put("peer", "metrics", None).await.unwrap();
    let mut followers = Vec::new();
    for i in (0..3).filter(|&i| i != leader) {
        followers.push(member_id(&mut cluster.client(i).await.unwrap()).await);
    }
    let url = cluster.client_url(leader);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    eventually("every follower measured", Duration::from_secs(20), || {
        let followers = followers.clone();
        async move {
            followers.iter().all(|id| {
                let m = |family: &str, label: &str| {
                    common::metric(port, &format!("{family}{{{label}=\"{id:x}\"}}"))
                        .is_some_and(|v| v > 0.0)
                };
                m("etcd_network_peer_sent_bytes_total", "To")
                    && m("etcd_network_peer_received_bytes_total", "From")
                    && m("etcd_network_peer_round_trip_time_seconds_count", "To")
            })
        }
    })
    .await;
}

// Goal: many linearizable reads at once on every member all succeed. (ReadIndex
// contexts must be unique in the cluster: when each member numbered its own from 1, the
// leader confused followers' requests and some reads waited until their timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_on_every_member_succeed() {
    let cluster = blocking(|| Cluster::start(spec(3).proxied_peers(false))).unwrap();
    cluster
        .client(0)
        .await
        .unwrap()
        .put("r", "1", None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..24 {
        let url = cluster.client_url(t % 3);
        tasks.push(tokio::spawn(async move {
            let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3));
            let mut c = Client::connect([url], Some(options)).await.unwrap();
            for _ in 0..50 {
                let r = c.get("r", None).await.expect("a linearizable read");
                assert_eq!(r.kvs()[0].value(), b"1");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

// Goal: a follower serves watches from its own applied state; a stream that asked for a
// leader (`hasleader`, as etcdctl's watch does) ends with etcd's "no leader" once the
// member has had none for a while, and a new one is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watch_follows_writes_and_requires_a_leader_when_asked() {
    use retcd_api::etcdserverpb::watch_client::WatchClient;
    use retcd_api::etcdserverpb::watch_request::RequestUnion;
    use retcd_api::etcdserverpb::{WatchCreateRequest, WatchRequest};

    let cluster = blocking(|| Cluster::start(spec(3))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let follower = (leader + 1) % 3;
    let open = || async {
        let mut client = WatchClient::connect(cluster.client_url(follower))
            .await
            .unwrap();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: "w/".into(),
                range_end: "w0".into(),
                ..Default::default()
            })),
        };
        let mut req =
            tonic::Request::new(tokio_stream::iter(vec![create]).chain(tokio_stream::pending()));
        req.metadata_mut()
            .insert("hasleader", "true".parse().unwrap());
        client.watch(req).await
    };
    use tokio_stream::StreamExt as _;
    let mut stream = open().await.expect("watch on a follower").into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);

    let mut c = cluster.client(leader).await.unwrap();
    let put = c.put("w/1", "v", None).await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(
        r.events[0].kv.as_ref().unwrap().mod_revision,
        put.header().unwrap().revision()
    );

    // The follower loses its leader: the stream ends with "no leader".
    for m in (0..3).filter(|&m| m != follower) {
        blocking(|| cluster.stop(m)).unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("a hasleader stream ends after losing the leader");
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    assert_eq!(ended.message(), "etcdserver: no leader");
    let refused = open().await.expect_err("no leader: refused");
    assert_eq!(refused.message(), "etcdserver: no leader");
    for m in (0..3).filter(|&m| m != follower) {
        blocking(|| cluster.cont(m)).unwrap();
    }
}

// Goal: defragmenting every member in turn, the leader last, while a client writes
// without pause loses no acknowledged write, and leaves every member with the same data
// (HashKV and Hash equal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_every_member_under_writes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = blocking(|| Cluster::start(spec(3))).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let mut c = cluster.client(leader).await.unwrap();
        let done = done.clone();
        async move {
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) && n < 50_000 {
                c.put(format!("w/{n:05}"), "v", None).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    });
    for m in [(leader + 1) % 3, (leader + 2) % 3, leader] {
        let mut mc = cluster.client(m).await.unwrap();
        mc.defragment()
            .await
            .unwrap_or_else(|e| panic!("defragment member {m}: {}", message(e)));
    }
    done.store(true, Ordering::Release);
    let written = writer.await.unwrap().unwrap();
    assert!(written > 0);
    let mut c = cluster.client(leader).await.unwrap();
    let want = count_serializable(&mut c, "w/").await.unwrap();
    assert_eq!(want.0, i64::from(written));
    let mut hashes = Vec::new();
    for m in 0..3 {
        let f = cluster.client(m).await.unwrap();
        eventually(
            &format!("member {m} catches up"),
            Duration::from_secs(10),
            || {
                let mut f = f.clone();
                async move { count_serializable(&mut f, "w/").await.ok() == Some(want) }
            },
        )
        .await;
        hashes.push(f.clone().hash_kv(want.1).await.unwrap().hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // Hash covers the whole backend (members, leases, ...): the members agree once each
    // applied everything, members' own entries included.
    let mut clients = Vec::new();
    for m in 0..3 {
        clients.push(cluster.client(m).await.unwrap());
    }
    eventually(
        "every member has the same Hash",
        Duration::from_secs(10),
        || {
            let clients = clients.clone();
            async move {
                let mut hashes = Vec::new();
                for mut c in clients {
                    match c.hash().await {
                        Ok(h) => hashes.push(h.hash()),
                        Err(_) => return false,
                    }
                }
                hashes.windows(2).all(|w| w[0] == w[1])
            }
        },
    )
    .await;
}

// Goal: NOSPACE is cluster state. Once a member's backend reaches the quota, writes through
// any member are refused and every member lists the alarm; after the space is freed on
// every member (delete, compact, defragment) and the alarms are disarmed through another
// member, writes go through everywhere again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_is_cluster_wide_until_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions};
    let cluster = blocking(|| {
        Cluster::start(
            spec(3)
                .extra_arg("--quota-backend-bytes")
                .extra_arg("4194304"),
        )
    })
    .unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(leader).await.unwrap();
    let (_, refusal) = common::put_until_refused(&mut c, 200).await;
    assert!(refusal.message().contains("database space exceeded"));
    let mut f = cluster.client(follower).await.unwrap();
    let err = f.put("small", "x", None).await.unwrap_err();
    assert_eq!(message(err), "etcdserver: mvcc: database space exceeded");
    for m in 0..3 {
        let mc = cluster.client(m).await.unwrap();
        eventually(
            &format!("member {m} lists NOSPACE"),
            Duration::from_secs(10),
            || {
                let mut mc = mc.clone();
                async move {
                    mc.alarm(AlarmAction::Get, AlarmType::None, None)
                        .await
                        .is_ok_and(|r| r.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace))
                }
            },
        )
        .await;
    }

    let del = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = del.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for m in 0..3 {
        let mut mc = cluster.client(m).await.unwrap();
        // A follower may not have applied the compaction yet: defragment once it has.
        eventually(
            &format!("member {m} applied the compaction"),
            Duration::from_secs(10),
            || {
                let mut mc = mc.clone();
                async move {
                    count_serializable(&mut mc, "big/")
                        .await
                        .ok()
                        .is_some_and(|c| c.0 == 0 && c.1 >= rev)
                }
            },
        )
        .await;
        mc.defragment().await.unwrap();
    }
    let alarms = f
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    for a in alarms.alarms() {
        let mut opts = AlarmOptions::new();
        opts.with_member(a.member_id());
        f.alarm(AlarmAction::Deactivate, a.alarm(), Some(opts))
            .await
            .unwrap();
    }
    for m in 0..3 {
        let mc = cluster.client(m).await.unwrap();
        eventually(
            &format!("member {m} takes writes again"),
            Duration::from_secs(10),
            || {
                let mut mc = mc.clone();
                async move { mc.put(format!("after/{m}"), "x", None).await.is_ok() }
            },
        )
        .await;
    }
}

// Goal: with peer mTLS, a promotion sent to a follower reaches the leader over the peer
// transport (TLS, peer certificates), as etcd forwards it to the leader's peer URL, and
// the learner becomes a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_is_forwarded_over_peer_tls() {
    use retcd_testkit::pki::{Ca, Leaf};
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::new(dir.path(), "peer-ca");
    let (pair, _) = ca.issue("peer", &Leaf::default());
    let mut spec = spec(3).peer_https(true);
    for arg in [
        format!("--peer-cert-file={}", pair.cert()),
        format!("--peer-key-file={}", pair.key()),
        format!("--peer-trusted-ca-file={}", ca.cert()),
        "--peer-client-cert-auth".to_string(),
    ] {
        spec = spec.extra_arg(arg);
    }
    let mut cluster = blocking(|| Cluster::start(spec)).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).await.unwrap();
    let c = cluster.client(leader).await.unwrap();
    let (peer_url, index) = cluster.add_member("learner").unwrap();
    assert!(peer_url.starts_with("https://"), "{peer_url}");
    let added = when_healthy(|| {
        let mut c = c.clone();
        let url = peer_url.clone();
        async move {
            c.member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                .await
        }
    })
    .await
    .unwrap();
    let learner_id = added.member().unwrap().id();
    let initial = format!(
        "{},learner={peer_url}",
        cluster.initial_cluster_of(&[0, 1, 2])
    );
    blocking(|| cluster.start_added(index, &initial)).unwrap();
    let follower = (leader + 1) % 3;
    let f = cluster.client(follower).await.unwrap();
    eventually(
        "the learner is promoted through a follower",
        Duration::from_secs(20),
        || {
            let mut f = f.clone();
            async move { f.member_promote(learner_id).await.is_ok() }
        },
    )
    .await;
    let mut c = c.clone();
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members().len(), 4);
    assert!(list.members().iter().all(|m| !m.is_learner()));
    // The follower answered the client; the leader never saw the call on its client
    // listener (its gRPC metrics count only client listeners): it came over the peer one.
    let promotions = |member: usize| {
        let port = cluster
            .client_url(member)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (_, text) = common::http_get(port, "/metrics").unwrap();
        text.lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter(|l| {
                l.contains(r#"grpc_method="MemberPromote""#) && l.contains(r#"grpc_code="OK""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(promotions(follower) >= 1.0);
    assert_eq!(promotions(leader), 0.0);
}
