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
use retcd_raft::{Message, Storage as _};
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
    /// Snapshots members sent one another (delivered or not).
    snapshots_sent: usize,
}

/// A new member `id` of a cluster of `ids`, with data under `dir` and etcd's defaults
/// for everything the tests here do not turn.
fn node_config(dir: &std::path::Path, id: u64, ids: &[u64]) -> NodeConfig {
    let members = ids
        .iter()
        .map(|&id| crate::membership::Member {
            id: MemberId(id),
            name: format!("m{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{}", 20000 + id)],
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    NodeConfig {
        data_dir: dir.join(format!("m{id}")),
        wal_dir: None,
        member_id: MemberId(id),
        cluster_id: ClusterId(77),
        election_ticks: 10,
        heartbeat_interval: HEARTBEAT,
        snapshot_count: 100_000,
        max_request_bytes: 1 << 20,
        request_timeout: Duration::from_secs(5),
        bootstrap: Bootstrap::New { members },
        pre_vote: true,
        quota_backend_bytes: 1 << 30,
        max_snapshots: 5,
        max_wals: 5,
        wal_segment_size_bytes: retcd_wal::DEFAULT_SEGMENT_SIZE_BYTES,
        backend_batch_interval: Duration::from_millis(100),
        backend_batch_limit: 10_000,
        snapshot_catchup_entries: 5_000,
        auth_token_ttl: Duration::from_secs(300),
        bcrypt_cost: 4,
        client_cert_auth: false,
        jwt: None,
        force_new_cluster: false,
    }
}

impl Harness {
    fn new(ids: &[u64], snapshot_count: u64) -> Harness {
        Harness::with(ids, |cfg| cfg.snapshot_count = snapshot_count)
    }

    /// Members `ids`, each with [`node_config`] as `tune` changes it.
    fn with(ids: &[u64], tune: impl Fn(&mut NodeConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let configs: BTreeMap<u64, NodeConfig> = ids
            .iter()
            .map(|&id| {
                let mut cfg = node_config(dir.path(), id, ids);
                tune(&mut cfg);
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
            snapshots_sent: 0,
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
            self.snapshots_sent += 1;
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

/// The names in `dir` that end in `suffix`, sorted; none if `dir` does not exist.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Proposes `rounds` rounds of `per_round` puts on `on`, each answered before the next.
fn put_rounds(h: &mut Harness, on: u64, rounds: usize, per_round: usize) {
    for round in 0..rounds {
        assert_eq!(h.puts(on, &format!("r{round}/"), per_round, 50), per_round);
    }
}

// Goal: --max-snapshots and --max-wals bound the snapshot files and WAL segments a
// member keeps after a snapshot (the newest ones), 0 keeps every one, and a member
// restarts from what was kept.
#[test]
fn max_snapshots_and_max_wals_bound_the_files_kept() {
    for (max_snapshots, max_wals) in [(2, 3), (0, 0)] {
        let mut h = Harness::with(&[1], |cfg| {
            cfg.snapshot_count = 50;
            cfg.wal_segment_size_bytes = 1024;
            cfg.max_snapshots = max_snapshots;
            cfg.max_wals = max_wals;
        });
        h.run_until(100, "a leader", |h| h.leader().is_some());
        put_rounds(&mut h, 1, 12, 50);
        // A last snapshot at the last entry, so every older segment is released.
        h.members.get_mut(&1).unwrap().raft_loop.force_snapshot = true;
        h.step();
        let member_dir = h.configs[&1].data_dir.join("member");
        let snaps = files_ending(&member_dir.join("snap"), ".snap");
        let wals = files_ending(&member_dir.join("wal"), ".wal");
        if max_snapshots == 0 {
            assert!(snaps.len() >= 13, "every snapshot is kept: {snaps:?}");
            assert!(wals.len() >= 10, "every segment is kept: {wals:?}");
            assert!(wals[0].starts_with("0000000000000000-"), "{wals:?}");
        } else {
            assert_eq!(snaps.len(), 2, "{snaps:?}");
            assert_eq!(wals.len(), 3, "{wals:?}");
        }
        let revision = h.hash(1);
        h.restart(1);
        assert_eq!(h.hash(1), revision, "restarted from the files kept");
        h.run_until(100, "a leader again", |h| h.leader().is_some());
        assert_eq!(h.puts(1, "after", 1, 50), 1);
    }
}

// Goal: --experimental-snapshot-catchup-entries is how much log a snapshot leaves
// behind: a follower cut off for 400 entries catches up from the log when 1,000 are
// kept, and needs a snapshot when 50 are.
#[test]
fn snapshot_catchup_entries_decide_between_log_and_snapshot() {
    for catchup in [1_000, 50] {
        let mut h = Harness::with(&[1, 2, 3], |cfg| {
            cfg.snapshot_count = 100;
            cfg.snapshot_catchup_entries = catchup;
        });
        h.run_until(100, "a leader", |h| h.leader().is_some());
        let leader = h.leader().unwrap();
        let lagging = *h.members.keys().find(|&&id| id != leader).unwrap();
        h.isolated.push(lagging);
        put_rounds(&mut h, leader, 4, 100);
        let l = &h.members[&leader].raft_loop;
        let (snapshot_index, first) = (l.snapshot_index, l.storage.first_index().unwrap());
        assert!(snapshot_index >= 400, "snapshot index {snapshot_index}");
        if catchup == 50 {
            assert_eq!(first, snapshot_index - catchup + 1, "the log kept");
        } else {
            assert!(first <= 2, "nothing compacted: first index {first}");
        }
        h.isolated.clear();
        h.settle(leader, 200);
        assert_eq!(h.assert_stores_equal(), 401);
        let by_snapshot = h.snapshots_sent > 0;
        assert_eq!(by_snapshot, catchup == 50, "catch-up entries {catchup}");
    }
}

// Goal: --backend-batch-limit bounds the applied entries a durable backend commit may
// lag, and --backend-batch-interval how long: with both large, commits stay
// non-durable; the limit or the interval alone makes them durable.
#[test]
fn backend_batch_limit_and_interval_decide_durable_commits() {
    const LONG: Duration = Duration::from_secs(3600);
    let lag = |h: &Harness| {
        let l = &h.members[&1].raft_loop;
        l.applied_index - l.durable_index
    };
    // Neither: every put stays non-durable, a simulated second later too.
    let mut h = Harness::with(&[1], |cfg| {
        cfg.backend_batch_interval = LONG;
        cfg.backend_batch_limit = 1_000_000;
    });
    h.run_until(100, "a leader", |h| h.leader().is_some());
    let before = lag(&h);
    put_rounds(&mut h, 1, 10, 3);
    for _ in 0..10 {
        h.step();
    }
    assert_eq!(lag(&h), before + 30, "no durable commit");

    // The limit: never 10 entries behind, yet behind between durable commits.
    let mut h = Harness::with(&[1], |cfg| {
        cfg.backend_batch_interval = LONG;
        cfg.backend_batch_limit = 10;
    });
    h.run_until(100, "a leader", |h| h.leader().is_some());
    let mut lagged = false;
    for round in 0..10 {
        h.puts(1, &format!("r{round}/"), 3, 50);
        assert!(lag(&h) < 10, "lag {}", lag(&h));
        lagged |= lag(&h) > 0;
    }
    assert!(lagged, "some commits were not durable");

    // The interval: caught up within half a simulated second of the last put.
    let mut h = Harness::with(&[1], |cfg| {
        cfg.backend_batch_interval = Duration::from_millis(500);
        cfg.backend_batch_limit = 1_000_000;
    });
    h.run_until(100, "a leader", |h| h.leader().is_some());
    put_rounds(&mut h, 1, 10, 3);
    h.run_until(6, "a durable commit", |h| lag(h) == 0);
}

// Goal: with --wal-dir the WAL lives there (nothing under <data-dir>/member/wal), is
// private, and the member restarts from it.
#[test]
fn a_dedicated_wal_dir_holds_the_wal_and_the_member_restarts_from_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let wal_root = tempfile::tempdir().unwrap();
    let wal_dir = wal_root.path().join("deep").join("wal");
    let mut h = Harness::with(&[1], |cfg| cfg.wal_dir = Some(wal_dir.clone()));
    h.run_until(100, "a leader", |h| h.leader().is_some());
    put_rounds(&mut h, 1, 2, 10);
    let data_dir = h.configs[&1].data_dir.clone();
    assert!(!data_dir.join("member").join("wal").exists());
    assert!(!files_ending(&wal_dir, ".wal").is_empty());
    for dir in [wal_dir.as_path(), wal_dir.parent().unwrap()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", dir.display());
    }
    let revision = h.hash(1);
    h.restart(1);
    assert_eq!(h.hash(1), revision);
    assert!(!data_dir.join("member").join("wal").exists());
    h.run_until(100, "a leader again", |h| h.leader().is_some());
    assert_eq!(h.puts(1, "after", 1, 50), 1);
}

/// What `f` logs at warn level and above, as text.
fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

// Goal: a new data directory is private to its owner, as etcd's: directories 0700 and
// files 0600 (no group or other bit whatever the umask); an existing data directory
// with another mode is used, with etcd's warning.
#[test]
fn the_data_directory_is_private_and_a_loose_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let (mut h, warnings) = warnings_of(|| Harness::with(&[1], |_| {}));
    assert!(warnings.is_empty(), "{warnings}");
    h.run_until(100, "a leader", |h| h.leader().is_some());
    put_rounds(&mut h, 1, 1, 10);
    h.members.get_mut(&1).unwrap().raft_loop.force_snapshot = true;
    h.step();
    let data_dir = h.configs[&1].data_dir.clone();
    let mut seen = vec![data_dir.clone()];
    let mut dirs = vec![data_dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            seen.push(path);
        }
    }
    for path in &seen {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }
    let names: Vec<String> = seen
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in ["member", "snap", "wal", "db", ".snap", ".wal"] {
        assert!(
            names.iter().any(|n| n == wanted || n.ends_with(wanted)),
            "no {wanted} in {names:?}"
        );
    }

    // An existing directory readable by everyone: used, with a warning naming it.
    let (mut h, warnings) = warnings_of(|| {
        Harness::with(&[1], |cfg| {
            std::fs::create_dir(&cfg.data_dir).unwrap();
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o755))
                .unwrap();
        })
    });
    let data_dir = h.configs[&1].data_dir.clone();
    assert!(warnings.contains("check file permission"), "{warnings}");
    assert!(warnings.contains("drwxr-xr-x"), "{warnings}");
    assert!(
        warnings.contains(&data_dir.display().to_string()),
        "{warnings}"
    );
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "etcd warns, it does not change the mode");
    h.run_until(100, "a leader", |h| h.leader().is_some());
    assert_eq!(h.puts(1, "k", 1, 50), 1);
}
