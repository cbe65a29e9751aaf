//! The raft loop driven one turn at a time, in process: three members with temp data
//! directories, a network that is a queue this test routes by hand, and a simulated
//! clock. No thread, no socket, no sleep: each step is a turn of every member at the
//! same simulated time, then delivery of what they sent. This is the harness a
//! deterministic multi-member simulation builds on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use retcd_api::etcdserverpb::{InternalRaftRequest, PutRequest, RequestHeader};
use retcd_raft::Message;
use tokio::sync::oneshot;

use super::event_loop::Control;
use super::handle::Input;
use super::*;
use crate::apply::{ApplyResponse, ApplyResult};

const HEARTBEAT: Duration = Duration::from_millis(100);

/// What a member sent, for the test to deliver.
#[derive(Default)]
struct Outbox {
    messages: Vec<Message>,
    snapshots: Vec<(Message, PathBuf)>,
}

#[derive(Clone, Default)]
struct QueueNetwork(Arc<Mutex<Outbox>>);

impl Network for QueueNetwork {
    fn set_peers(&mut self, _peers: &[(MemberId, Vec<String>)]) {}
    fn send(&mut self, messages: Vec<Message>) -> Vec<MemberId> {
        self.0.lock().unwrap().messages.extend(messages);
        Vec::new()
    }
    fn send_snapshot(&mut self, message: Message, image: PathBuf) {
        self.0.lock().unwrap().snapshots.push((message, image));
    }
    fn shutdown(&mut self) {}
}

struct Member {
    raft_loop: RaftLoop,
    status: Arc<NodeStatus>,
    store: Store,
    outbox: QueueNetwork,
}

impl Member {
    fn open(cfg: &NodeConfig, now: Instant) -> Member {
        let outbox = QueueNetwork::default();
        let net = outbox.clone();
        let opened = open(
            cfg,
            Arc::new(Metrics::default()),
            now,
            cfg.member_id.0,
            move |_, _| Box::new(net),
        )
        .unwrap();
        Member {
            raft_loop: opened.raft_loop,
            status: opened.status,
            store: opened.store,
            outbox,
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    configs: BTreeMap<u64, NodeConfig>,
    members: BTreeMap<u64, Member>,
    now: Instant,
    /// Members whose messages, both ways, are dropped.
    isolated: Vec<u64>,
    next_request: u64,
}

impl Harness {
    fn new(ids: &[u64], snapshot_count: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<crate::membership::Member> = ids
            .iter()
            .map(|&id| crate::membership::Member {
                id: MemberId(id),
                name: format!("m{id}"),
                peer_urls: vec![format!("http://127.0.0.1:{}", 20000 + id)],
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let now = Instant::now();
        let configs: BTreeMap<u64, NodeConfig> = ids
            .iter()
            .map(|&id| {
                let cfg = NodeConfig {
                    data_dir: dir.path().join(format!("m{id}")),
                    member_id: MemberId(id),
                    cluster_id: ClusterId(77),
                    election_ticks: 10,
                    heartbeat_interval: HEARTBEAT,
                    snapshot_count,
                    max_request_bytes: 1 << 20,
                    request_timeout: Duration::from_secs(5),
                    bootstrap: Bootstrap::New {
                        members: all.clone(),
                    },
                    pre_vote: true,
                    quota_backend_bytes: 1 << 30,
                };
                (id, cfg)
            })
            .collect();
        let members = configs
            .iter()
            .map(|(&id, cfg)| (id, Member::open(cfg, now)))
            .collect();
        Harness {
            _dir: dir,
            configs,
            members,
            now,
            isolated: Vec::new(),
            next_request: 1,
        }
    }

    /// One step: every member turns at the current time, then what they sent is
    /// delivered (dropped for isolated members), then time moves on by a heartbeat.
    fn step(&mut self) {
        for m in self.members.values_mut() {
            assert_eq!(m.raft_loop.turn(self.now).unwrap(), Control::Continue);
        }
        let mut deliveries = Vec::new();
        let mut snapshots = Vec::new();
        for (&id, m) in &self.members {
            let mut out = m.outbox.0.lock().unwrap();
            deliveries.append(&mut out.messages);
            snapshots.extend(out.snapshots.drain(..).map(|s| (id, s)));
        }
        for message in deliveries {
            if self.isolated.contains(&message.to) || self.isolated.contains(&message.from) {
                continue;
            }
            if let Some(m) = self.members.get_mut(&message.to) {
                m.raft_loop.take(Input::Step {
                    message: Box::new(message),
                    _permit: None,
                });
            }
        }
        for (from, (message, image)) in snapshots {
            let to = message.to;
            let delivered = !self.isolated.contains(&to) && !self.isolated.contains(&from);
            if delivered {
                // What the peer service does with a received snapshot: the image first,
                // then the message.
                let receiver = &mut self.members.get_mut(&to).unwrap();
                let index = message.snapshot.as_ref().unwrap().metadata.index;
                std::fs::copy(
                    &image,
                    snapshot_image_path(receiver.status.snap_dir(), index),
                )
                .unwrap();
                receiver.raft_loop.take(Input::Step {
                    message: Box::new(message),
                    _permit: None,
                });
            }
            std::fs::remove_file(&image).unwrap();
            self.members
                .get_mut(&from)
                .unwrap()
                .raft_loop
                .on_transport_event(NetworkEvent::SnapshotDone(MemberId(to), delivered));
        }
        self.now += HEARTBEAT;
    }

    /// Steps until `done` holds, at most `max` steps.
    fn run_until(&mut self, max: usize, what: &str, mut done: impl FnMut(&Harness) -> bool) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("{what}: not reached in {max} steps");
    }

    /// Stops member `id` cleanly (its loop finishes) and opens it again from its data
    /// directory.
    fn restart(&mut self, id: u64) {
        let Member {
            raft_loop,
            status,
            store,
            outbox,
        } = self.members.remove(&id).unwrap();
        store.watch.stop();
        raft_loop.finish(self.now).unwrap();
        let kv = store.kv.clone();
        drop((status, store, outbox));
        // The watch-sync thread may hold the store for a moment while it exits; the
        // backend file can be opened again once this is the last reference.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&kv) > 1 {
            assert!(Instant::now() < deadline, "the store is still referenced");
            std::thread::yield_now();
        }
        drop(kv);
        self.members
            .insert(id, Member::open(&self.configs[&id], self.now));
    }

    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.status.is_leader())
            .map(|(id, _)| *id)
    }

    /// Proposes a put on member `on`; the receiver gets apply's answer.
    fn put(&mut self, on: u64, key: &str, value: &str) -> oneshot::Receiver<ApplyResult> {
        let id = self.next_request;
        self.next_request += 1;
        let req = InternalRaftRequest {
            header: Some(RequestHeader {
                id,
                ..Default::default()
            }),
            put: Some(PutRequest {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (reply, rx) = oneshot::channel();
        self.members
            .get_mut(&on)
            .unwrap()
            .raft_loop
            .take(Input::Propose {
                id,
                data: Bytes::from(req.encode_to_vec()),
                reply,
                _permit: None,
            });
        rx
    }

    /// Proposes `n` puts of `{prefix}{i}` on member `on` and steps until every one is
    /// answered; returns how many were applied (answered with a put response).
    fn puts(&mut self, on: u64, prefix: &str, n: usize, max_steps: usize) -> usize {
        let mut replies: Vec<_> = (0..n)
            .map(|i| self.put(on, &format!("{prefix}{i}"), "v"))
            .collect();
        let mut applied = 0;
        self.run_until(max_steps, "every put answered", |_| {
            replies.retain_mut(|rx| match rx.try_recv() {
                Ok(Ok(ApplyResponse::Put(_))) => {
                    applied += 1;
                    false
                }
                Ok(other) => panic!("a put answered {other:?}"),
                Err(oneshot::error::TryRecvError::Empty) => true,
                Err(e) => panic!("a put was dropped: {e}"),
            });
            replies.is_empty()
        });
        applied
    }

    /// Steps until every member applied what `leader` has.
    fn settle(&mut self, leader: u64, max_steps: usize) {
        let target = self.applied(leader);
        self.run_until(max_steps, "every member applied", |h| {
            h.members.keys().all(|&id| h.applied(id) >= target)
        });
    }

    /// Every member's store is the same; returns its revision.
    fn assert_stores_equal(&self) -> i64 {
        let hashes: Vec<_> = self.members.keys().map(|&id| self.hash(id)).collect();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
        hashes[0].0
    }

    fn applied(&self, id: u64) -> u64 {
        self.members[&id].status.applied_index()
    }

    fn hash(&self, id: u64) -> (i64, u32) {
        let h = self.members[&id].store.kv.hash_by_rev(0).unwrap();
        (h.revision, h.hash)
    }
}

// Goal: three loops driven by hand elect one leader, replicate and apply a hundred
// puts, answer each proposer after apply, and end with equal stores.
#[test]
fn three_loops_driven_by_hand_agree() {
    let mut h = Harness::new(&[1, 2, 3], 10_000);
    h.run_until(100, "a leader", |h| h.leader().is_some());
    let leader = h.leader().unwrap();
    assert_eq!(h.puts(leader, "k", 100, 50), 100);
    h.settle(leader, 20);
    assert_eq!(
        h.assert_stores_equal(),
        101,
        "a hundred puts after revision 1"
    );
}

// Goal: a member cut off while the others compact their log past it catches up by a
// snapshot the leader writes on its loop and the member installs on its own, then
// applies what follows; all three end equal.
#[test]
fn a_member_cut_off_catches_up_by_snapshot() {
    let mut h = Harness::new(&[1, 2, 3], 100);
    h.run_until(100, "a leader", |h| h.leader().is_some());
    let leader = h.leader().unwrap();
    let lagging = *h.members.keys().find(|&&id| id != leader).unwrap();
    h.isolated.push(lagging);
    // Enough entries that the log kept behind a snapshot (5,000) does not reach back.
    for round in 0..6 {
        h.puts(leader, &format!("r{round}/"), 1_000, 200);
    }
    assert!(h.applied(lagging) < 10, "the cut-off member saw nothing");
    h.isolated.clear();
    h.settle(leader, 500);
    h.puts(leader, "after", 1, 50);
    h.settle(leader, 50);
    assert_eq!(h.assert_stores_equal(), 6_002);
    // It caught up by a snapshot, not by the log (which the others compacted).
    let installed = h.members[&lagging].raft_loop.snapshot_index;
    assert!(installed > 1_000, "snapshot index {installed}");
}

// Goal: a member restarted from its data directory (a Raft snapshot with the membership
// in it, the log after it, a backend ahead of the snapshot) replays to the same
// configuration and store, and goes on with the others.
#[test]
fn a_restarted_member_replays_and_goes_on() {
    let mut h = Harness::new(&[1, 2, 3], 100);
    h.run_until(100, "a leader", |h| h.leader().is_some());
    let leader = h.leader().unwrap();
    h.puts(leader, "k", 450, 100);
    let follower = *h.members.keys().find(|&&id| id != leader).unwrap();
    h.settle(leader, 20);
    h.restart(follower);
    let restarted = &h.members[&follower];
    assert!(
        restarted.raft_loop.snapshot_index >= 400,
        "it restarts from a snapshot"
    );
    assert_eq!(
        restarted.raft_loop.conf_state.voters,
        [1, 2, 3],
        "the configuration is rebuilt"
    );
    h.puts(leader, "after", 1, 100);
    h.settle(leader, 100);
    assert_eq!(h.assert_stores_equal(), 452);
}
