//! The raft loop: one OS thread that owns the Raft core, the WAL and the write side of
//! the store, and the handle the async side talks to it through.
//!
//! # Why one thread
//! The Raft core is a synchronous state machine, WAL writes and fsyncs block, and MVCC's
//! write batch holds a lock guard (it is `!Send`). Giving all three to one dedicated
//! thread keeps blocking I/O off the async reactor, needs no lock around the core, and
//! makes the order of the host's duties (persist, send, apply, advance) a plain sequence
//! of statements. The thread also owns the clock: it turns elapsed monotonic time into
//! `tick`s, so the core never sees time.
//!
//! # Inputs and batching
//! Requests arrive on a bounded channel ([`Input`]). Each turn of the loop takes every
//! queued input before asking for a `Ready`, so many concurrent proposals share one WAL
//! fsync and one backend transaction, and every linearizable read queued in that turn
//! shares one ReadIndex request (etcd's `linearizableReadLoop` does the same batching).
//! The channel is bounded by a semaphore on the async side: a sender first takes a permit,
//! which the loop releases when it dequeues the input, so a full queue makes callers wait
//! instead of failing or growing memory.
//!
//! # A turn, in order (`retcd_raft`'s host duties)
//! 1. persist the `Ready`'s entries and hard state to the WAL (fsync when `must_sync`),
//!    then to `MemStorage`;
//! 2. send messages (a single member has no peers; the code path stays);
//! 3. apply committed entries in one MVCC write batch that also records the consistent
//!    index, then answer their proposers (only now: after the fsync and the apply);
//! 4. release linearizable reads whose read index is applied;
//! 5. advance.
//!
//! # Durability without an fsync per batch
//! The WAL holds every committed entry durably, so the backend need not fsync each apply
//! batch: ordinary batches commit non-durably and a durable commit follows at least every
//! [`BACKEND_BATCH_INTERVAL`] or [`BACKEND_BATCH_LIMIT`] entries (etcd's batch interval and
//! limit), on compaction, before a Raft snapshot and at shutdown. After a crash the
//! backend is at its last durable consistent index and Raft re-delivers everything after
//! it; apply skips what the backend already has, so replay is idempotent. Two rules keep
//! this sound:
//! - Invariant: the backend's durable consistent index never exceeds the WAL's durable
//!   commit index (the WAL is synced before every durable backend commit).
//! - Invariant: WAL segments are purged only below min(latest Raft snapshot, durable
//!   backend consistent index), so replay always finds its entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AlarmRequest, AlarmType, InternalRaftRequest, RequestHeader, ResponseHeader,
    alarm_request::AlarmAction,
};
use retcd_backend::{Backend, ConsistentIndex, RedbBackend, RedbConfig, WriteTx};
use retcd_mvcc::{KvStore, MvccError, WatchConfig, WatchableStore};
use retcd_raft::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, EntryType, MemStorage, Message,
    MessageType, RawNode, Snapshot, SnapshotStatus, StateRole,
};
use retcd_wal::{SnapshotMarker, Snapshotter, StdVfs, Wal, WalOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::alarms::{self, Alarms};
use crate::apply::{self, ApplyResponse, ApplyResult};
use crate::errors::RequestError;
use crate::ids::{ClusterId, MemberId};
use crate::lease::{self, Lessor};
use crate::membership::{Member, Membership};
use crate::metrics::Metrics;
use crate::peer::transport::{Transport, TransportEvent};

/// Longest a non-durable backend commit may stay the newest (etcd's batch interval).
pub const BACKEND_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Most applied entries between two durable backend commits (etcd's batch limit).
pub const BACKEND_BATCH_LIMIT: u64 = 10_000;
/// Entries kept in memory behind a Raft snapshot for followers that lag a little
/// (etcd's `SnapshotCatchUpEntries`).
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Snapshot files kept (etcd's `--max-snapshots` default).
const MAX_SNAPSHOT_FILES: usize = 5;
/// How long a measurement of the backend's bytes in use is reused.
pub const DB_IN_USE_REFRESH: Duration = Duration::from_secs(10);
/// How long defragmentation waits for reads already under way to end (no new one begins
/// meanwhile) before it gives up.
const DEFRAG_PATIENCE: Duration = Duration::from_secs(5);
/// Inputs queued for the loop at most; callers beyond it wait for a permit.
const INPUT_QUEUE_CAPACITY: usize = 4096;

/// What the async side sends the loop.
enum Input {
    /// An encoded `InternalRaftRequest` whose header carries `id`.
    Propose {
        id: u64,
        data: Bytes,
        reply: oneshot::Sender<ApplyResult>,
        _permit: OwnedSemaphorePermit,
    },
    /// A configuration change (its `id` is the waiter's request id).
    ConfChange {
        cc: ConfChange,
        reply: oneshot::Sender<ApplyResult>,
        _permit: OwnedSemaphorePermit,
    },
    /// A Raft message from a peer (boxed: it is much larger than the other inputs).
    Step {
        message: Box<Message>,
        _permit: OwnedSemaphorePermit,
    },
    /// Hand leadership to this member (Maintenance.MoveLeader).
    TransferLeader {
        to: u64,
        _permit: OwnedSemaphorePermit,
    },
    /// A linearizable read: answered with the read index once it is applied.
    ReadIndex {
        reply: oneshot::Sender<Result<u64, EtcdError>>,
        _permit: OwnedSemaphorePermit,
    },
    /// Return the backend's free space to the file system (Maintenance.Defragment).
    Defragment {
        reply: oneshot::Sender<Result<(), String>>,
        _permit: OwnedSemaphorePermit,
    },
    /// Finish the current turn, make everything durable, and exit.
    Stop,
}

/// A fatal error of the loop: the node stops and answers nobody.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Wal(#[from] retcd_wal::WalError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Backend(#[from] retcd_backend::BackendError),
    #[error("raft: {0}")]
    Raft(#[from] retcd_raft::Error),
    #[error("raft storage: {0}")]
    RaftStorage(#[from] retcd_raft::StorageError),
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// State the loop publishes for the async side (headers, status, health, metrics).
pub struct Shared {
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub kv: Arc<KvStore<RedbBackend>>,
    /// Watchers over `kv`, fed by apply.
    pub watch: Arc<WatchableStore<RedbBackend>>,
    /// Leases, changed by apply; deadlines acted on by the leader.
    pub lessor: Mutex<Lessor>,
    pub metrics: Arc<Metrics>,
    term: AtomicU64,
    leader: AtomicU64,
    committed_index: AtomicU64,
    applied_index: AtomicU64,
    /// The loop is running (false once it stopped, cleanly or not).
    running: AtomicBool,
    /// Becomes true when the loop thread exits, cleanly or not.
    stopped: tokio::sync::watch::Sender<bool>,
    /// The last measured bytes in use and when they were measured.
    db_in_use_cache: Mutex<Option<(Instant, u64)>>,
    /// The membership as of the applied index.
    membership: RwLock<Membership>,
    /// The raised alarms as of the applied index.
    alarms: RwLock<Alarms>,
    /// The backend quota in bytes.
    quota_backend_bytes: u64,
    /// The backend file's size as of the last commit the loop made (what the quota
    /// check compares, without a `stat` per request).
    db_file_bytes: AtomicU64,
    /// Raft role of this member.
    role: AtomicU64,
    /// Where received snapshot images are kept until installed.
    pub snap_dir: PathBuf,
    /// This member was removed from the cluster (the loop stops).
    removed: AtomicBool,
    /// On the leader: each member's match index, refreshed every turn.
    progress: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Acquire)
    }
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
    /// Whether the loop stopped because this member was removed from the cluster.
    pub fn was_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
    pub fn is_leader(&self) -> bool {
        self.role.load(Ordering::Acquire) == 1
    }
    /// The backend quota in bytes (`--quota-backend-bytes`, etcd's default for 0).
    pub fn quota_backend_bytes(&self) -> u64 {
        self.quota_backend_bytes
    }
    /// The raised alarms as of the applied index.
    pub fn alarms(&self) -> Alarms {
        self.alarms.read().expect("alarms lock").clone()
    }
    /// The membership as of the applied index.
    pub fn membership(&self) -> Membership {
        self.membership.read().expect("membership lock").clone()
    }
    /// Whether `id` was removed from the cluster (as of the applied index).
    pub fn member_removed(&self, id: MemberId) -> bool {
        self.membership
            .read()
            .expect("membership lock")
            .removed
            .contains(&id)
    }
    /// Whether this member is a learner (as of the applied index).
    pub fn is_learner(&self) -> bool {
        self.membership
            .read()
            .expect("membership lock")
            .get(self.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// The backend's size and the bytes of it in use. Blocking: call off the reactor.
    ///
    /// Measuring the bytes in use walks every page of the database inside a backend
    /// write transaction, which holds up apply for that long, so the figure is measured
    /// at most every [`DB_IN_USE_REFRESH`] and cached.
    pub fn db_sizes(&self) -> Result<(u64, u64), retcd_backend::BackendError> {
        let backend = self.kv.backend();
        let total = backend.size_bytes()?;
        let mut cache = self.db_in_use_cache.lock().expect("db size cache lock");
        let in_use = match *cache {
            Some((at, v)) if at.elapsed() < DB_IN_USE_REFRESH => v,
            _ => {
                let v = backend.size_in_use_bytes()?;
                *cache = Some((Instant::now(), v));
                v
            }
        };
        Ok((total, in_use.min(total)))
    }

    /// A response header as etcd fills it: this member and cluster, the current term, and
    /// `revision` (the store's current revision when the request did not set one).
    pub fn header(&self, revision: Option<i64>) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id.0,
            member_id: self.member_id.0,
            revision: revision
                .filter(|&r| r != 0)
                .unwrap_or_else(|| self.kv.current_revision()),
            raft_term: self.term(),
        }
    }
}

/// The async side's handle on the raft loop.
pub struct NodeHandle {
    tx: SyncSender<Input>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    max_request_bytes: usize,
    request_timeout: Duration,
    election_timeout: Duration,
    thread: Mutex<Option<std::thread::JoinHandle<Result<(), NodeError>>>>,
}

/// What the loop needs to start.
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub election_ticks: u64,
    pub heartbeat_interval: Duration,
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub bootstrap: Bootstrap,
    pub pre_vote: bool,
    /// `--quota-backend-bytes`, the default already filled in.
    pub quota_backend_bytes: u64,
    /// Where the transport's tasks run.
    pub runtime: tokio::runtime::Handle,
}

/// How a member with an empty data directory starts.
pub enum Bootstrap {
    /// A new cluster of these members (this one among them): `--initial-cluster-state new`.
    New { members: Vec<Member> },
    /// Joining a running cluster that already added this member (`existing`): the
    /// membership as a peer reported it.
    Existing { membership: Membership },
}

/// `<data-dir>/member/wal`, `<data-dir>/member/snap` and `<data-dir>/member/snap/db`.
pub struct DataLayout {
    pub wal_dir: PathBuf,
    pub snap_dir: PathBuf,
    pub db_path: PathBuf,
}

impl DataLayout {
    pub fn new(data_dir: &Path) -> Self {
        let member = data_dir.join("member");
        DataLayout {
            wal_dir: member.join("wal"),
            snap_dir: member.join("snap"),
            db_path: member.join("snap").join("db"),
        }
    }
}

/// The WAL's metadata record: member id and cluster id, 8 bytes each, big-endian.
fn encode_wal_metadata(member: MemberId, cluster: ClusterId) -> Vec<u8> {
    let mut m = member.0.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster.0.to_be_bytes());
    m
}

fn decode_wal_metadata(m: &[u8]) -> Result<(MemberId, ClusterId), NodeError> {
    let bad = || NodeError::Invalid(format!("WAL metadata has {} bytes, want 16", m.len()));
    if m.len() != 16 {
        return Err(bad());
    }
    let word = |i: usize| u64::from_be_bytes(m[i..i + 8].try_into().expect("8 bytes"));
    Ok((MemberId(word(0)), ClusterId(word(8))))
}

/// Meta key of the peers a member joining an existing cluster learned at its start,
/// which it can reach before its log tells it the membership.
const JOIN_PEERS_KEY: &[u8] = b"retcd_join_peers";

/// The first entries of a new cluster's log, the same on every member: one
/// configuration change adding each initial member (sorted by id), at term 1, committed.
/// A member that joins later replays them like any other entry, so every member derives
/// the configuration from the log alone (etcd bootstraps the same way).
fn bootstrap_entries(members: &[Member]) -> Vec<retcd_raft::Entry> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    sorted
        .iter()
        .zip(1u64..)
        .map(|(m, index)| retcd_raft::Entry {
            term: 1,
            index,
            entry_type: EntryType::ConfChange,
            data: ConfChange {
                id: 0,
                change_type: ConfChangeType::AddNode,
                node_id: m.id.0,
                context: Bytes::from(m.encode()),
            }
            .encode(),
        })
        .collect()
}

/// Where a received snapshot image waits until it is installed.
pub fn snapshot_image_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("{index:016x}.snap.db"))
}

/// The WAL and the Raft log a member starts from.
struct Recovered {
    wal: Wal,
    storage: MemStorage,
    member_id: MemberId,
    cluster_id: ClusterId,
    snapshot_index: u64,
    /// The Raft configuration as of the snapshot (or the bootstrap).
    conf_state: ConfState,
}

/// Restarts from the newest snapshot the WAL has a marker for and the log after it, or
/// creates a new WAL for a new member. Checks that the backend and the WAL belong
/// together. A snapshot image received from the leader but not yet installed when the
/// member stopped is installed now.
fn recover_or_bootstrap(
    cfg: &NodeConfig,
    layout: &DataLayout,
    snapshotter: &Snapshotter,
    kv: &KvStore<RedbBackend>,
) -> Result<Recovered, NodeError> {
    let wal_opts = WalOptions::default();
    let ci = kv.consistent_index();
    if Wal::exists(&layout.wal_dir, &StdVfs)? {
        let markers = retcd_wal::valid_snapshot_markers(&layout.wal_dir, &wal_opts)?;
        let load = snapshotter.load_matching(&markers)?;
        let snapshot = load.snapshot;
        let from = snapshot.as_ref().map_or(SnapshotMarker::new(0, 0), |s| {
            SnapshotMarker::new(s.metadata.index, s.metadata.term)
        });
        let (wal, recovered) = Wal::open(&layout.wal_dir, &from)?;
        let (member_id, cluster_id) = decode_wal_metadata(&recovered.metadata)?;
        if member_id != cfg.member_id || cluster_id != cfg.cluster_id {
            tracing::warn!(
                wal_member_id = %member_id,
                flags_member_id = %cfg.member_id,
                "the data directory belongs to another member id than the flags give; using the data directory's"
            );
        }
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.metadata.index);
        // Without a snapshot the configuration is rebuilt from the log's entries.
        let conf_state = snapshot
            .as_ref()
            .map_or(ConfState::default(), |s| s.metadata.conf_state.clone());
        let storage = MemStorage::new();
        if let Some(s) = snapshot {
            storage.apply_snapshot(s)?;
        }
        storage.set_hard_state(recovered.hard_state);
        storage.append(&recovered.entries)?;
        let hs = recovered.hard_state;
        let mut ci = ci;
        if ci.index < snapshot_index {
            // The member stopped between saving a received snapshot and installing it.
            let image = snapshot_image_path(&layout.snap_dir, snapshot_index);
            if image.exists() {
                install_image(kv, &image)?;
                ci = kv.consistent_index();
                tracing::info!(
                    index = snapshot_index,
                    "installed a received snapshot image left from before the restart"
                );
            }
        }
        // Invariant: a durable backend commit never covers more than the WAL's
        // durable commit index (see the module docs); anything else means the
        // backend and the WAL do not belong together. A snapshot from the leader may
        // carry a backend ahead of its own index (etcd's rule too), which the WAL's
        // snapshot marker vouches for.
        if ci.index > hs.commit && ci.index > snapshot_index {
            return Err(NodeError::Invalid(format!(
                "backend consistent index {} ({}) is beyond the WAL's commit index {} ({}): the WAL lost records it had fsynced, or the two do not belong together",
                ci.index,
                layout.db_path.display(),
                hs.commit,
                layout.wal_dir.display()
            )));
        }
        if ci.index < snapshot_index {
            return Err(NodeError::Invalid(format!(
                "backend consistent index {} is behind the raft snapshot at {}: entries between them are gone",
                ci.index, snapshot_index
            )));
        }
        tracing::info!(
            member_id = %member_id,
            cluster_id = %cluster_id,
            term = hs.term,
            commit = hs.commit,
            consistent_index = ci.index,
            snapshot_index,
            entries = recovered.entries.len(),
            "restarting member from its data directory"
        );
        return Ok(Recovered {
            wal,
            storage,
            member_id,
            cluster_id,
            snapshot_index,
            conf_state,
        });
    }
    if ci.index != 0 {
        return Err(NodeError::Invalid(format!(
            "{} holds applied data (consistent index {}) but {} holds no WAL",
            layout.db_path.display(),
            ci.index,
            layout.wal_dir.display()
        )));
    }
    // A joining member records whom it can reach first; should it stop before the WAL
    // exists, the next start bootstraps again and writes the same record.
    if let Bootstrap::Existing { membership } = &cfg.bootstrap {
        let peers = retcd_api::peerpb::MembersResponse {
            cluster_id: cfg.cluster_id.0,
            member_id: cfg.member_id.0,
            members: membership.members.values().map(Member::to_proto).collect(),
            removed: membership.removed.iter().map(|id| id.0).collect(),
        };
        let mut tx = kv.backend().begin_write()?;
        tx.put(
            retcd_backend::Bucket::Meta,
            JOIN_PEERS_KEY,
            &peers.encode_to_vec(),
        )?;
        tx.commit()?;
    }
    let mut wal = Wal::create(
        &layout.wal_dir,
        &encode_wal_metadata(cfg.member_id, cfg.cluster_id),
    )?;
    let storage = MemStorage::new();
    let joining = match &cfg.bootstrap {
        Bootstrap::New { members } => {
            let entries = bootstrap_entries(members);
            let hs = retcd_raft::HardState {
                term: 1,
                vote: 0,
                commit: entries.len() as u64,
            };
            wal.save(&hs, &entries)?;
            storage.append(&entries)?;
            storage.set_hard_state(hs);
            false
        }
        Bootstrap::Existing { .. } => true,
    };
    tracing::info!(
        member_id = %cfg.member_id,
        cluster_id = %cfg.cluster_id,
        joining,
        data_dir = %cfg.data_dir.display(),
        "starting a new member"
    );
    Ok(Recovered {
        wal,
        storage,
        member_id: cfg.member_id,
        cluster_id: cfg.cluster_id,
        snapshot_index: 0,
        conf_state: ConfState::default(),
    })
}

/// The peers a joining member learned at its start (empty for everyone else).
fn join_peers(kv: &KvStore<RedbBackend>) -> Result<Vec<(MemberId, Vec<String>)>, NodeError> {
    use retcd_backend::ReadTx as _;
    let Some(bytes) = kv
        .backend()
        .begin_read()?
        .get(retcd_backend::Bucket::Meta, JOIN_PEERS_KEY)?
    else {
        return Ok(Vec::new());
    };
    let resp = retcd_api::peerpb::MembersResponse::decode(bytes.as_slice())
        .map_err(|e| NodeError::Invalid(format!("join peers record: {e}")))?;
    Ok(resp
        .members
        .into_iter()
        .map(Member::from_proto)
        .map(|m| (m.id, m.peer_urls))
        .collect())
}

/// Replaces the store with a snapshot image file, then deletes the file.
fn install_image(kv: &KvStore<RedbBackend>, image: &Path) -> Result<(), NodeError> {
    let file = std::fs::File::open(image)?;
    let mut reader = std::io::BufReader::new(file);
    kv.restore_snapshot(&mut reader)?;
    if let Err(e) = std::fs::remove_file(image) {
        tracing::warn!(path = %image.display(), error = %e, "cannot remove an installed snapshot image");
    }
    Ok(())
}

impl NodeHandle {
    /// Opens (or creates) the data directory, recovers, and starts the raft loop thread.
    pub fn start(cfg: NodeConfig, metrics: Arc<Metrics>) -> Result<Arc<NodeHandle>, NodeError> {
        let layout = DataLayout::new(&cfg.data_dir);
        std::fs::create_dir_all(&layout.snap_dir)?;
        let backend = RedbBackend::open(&layout.db_path, &RedbConfig::default())?;
        let kv = Arc::new(KvStore::open(backend)?);
        let snapshotter = Snapshotter::new(&layout.snap_dir)?;

        let Recovered {
            wal,
            storage,
            member_id,
            cluster_id,
            snapshot_index,
            conf_state,
        } = recover_or_bootstrap(&cfg, &layout, &snapshotter, &kv)?;
        let ci = kv.consistent_index();
        let (membership, alarms) = {
            let tx = kv.backend().begin_read()?;
            (Membership::load(&tx)?, Alarms::load(&tx)?)
        };

        let mut raft_cfg = retcd_raft::Config::new(member_id.0);
        raft_cfg.election_tick = cfg.election_ticks;
        raft_cfg.heartbeat_tick = 1;
        // Raft re-delivers every entry after the snapshot: apply skips the data the
        // backend already has but re-applies configuration changes, which live only in
        // memory in the Raft core.
        raft_cfg.applied = snapshot_index;
        raft_cfg.pre_vote = cfg.pre_vote;
        raft_cfg.check_quorum = true;
        // etcd's server: 4096 / 8 messages in flight to a follower.
        raft_cfg.max_inflight_msgs = 512;
        // Jitter seed only; never reaches the state machine.
        raft_cfg.seed = member_id.0 ^ wall_clock_nanos();
        let raw = RawNode::new(&raft_cfg, storage.clone())?;
        let (events_tx, events) = std::sync::mpsc::channel();
        let transport = Transport::new(cfg.runtime.clone(), member_id, cluster_id, events_tx);
        let join_peers = join_peers(&kv)?;
        transport.set_peers(&peer_list(&membership, member_id, &join_peers));

        let shared = Arc::new(Shared {
            member_id,
            cluster_id,
            kv: kv.clone(),
            watch: WatchableStore::new(kv.clone(), WatchConfig::default()),
            lessor: Mutex::new(Lessor::load(&kv)?),
            metrics: metrics.clone(),
            term: AtomicU64::new(raw.raft.term),
            leader: AtomicU64::new(0),
            committed_index: AtomicU64::new(raw.raft.raft_log.committed),
            applied_index: AtomicU64::new(ci.index),
            running: AtomicBool::new(true),
            stopped: tokio::sync::watch::Sender::new(false),
            db_in_use_cache: Mutex::new(None),
            membership: RwLock::new(membership),
            alarms: RwLock::new(alarms),
            quota_backend_bytes: cfg.quota_backend_bytes,
            db_file_bytes: AtomicU64::new(kv.backend().size_bytes()?),
            role: AtomicU64::new(0),
            snap_dir: layout.snap_dir.clone(),
            progress: Mutex::new(HashMap::new()),
            removed: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(INPUT_QUEUE_CAPACITY);
        let now = Instant::now();
        let raft_loop = RaftLoop {
            raw,
            storage,
            wal,
            snapshotter,
            kv,
            shared: shared.clone(),
            metrics,
            rx,
            pending_membership: None,
            join_peers,
            campaigned: false,
            force_snapshot: false,
            transport,
            events,
            waiters: HashMap::new(),
            defrag_requests: Vec::new(),
            read_batch: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: Vec::new(),
            next_read_ctx: 1,
            applied_index: ci.index,
            durable_index: ci.index,
            last_durable_commit: now,
            entries_since_durable: 0,
            snapshot_index,
            snapshot_count: cfg.snapshot_count,
            conf_state,
            heartbeat_interval: cfg.heartbeat_interval,
            election_ticks: cfg.election_ticks,
            next_tick: now + cfg.heartbeat_interval,
            last_waiter_sweep: now,
            stopping: false,
        };
        let thread = std::thread::Builder::new()
            .name("raft-loop".into())
            .spawn(move || {
                let shared = raft_loop.shared.clone();
                let result = raft_loop.run();
                if let Err(e) = &result {
                    tracing::error!(error = %e, "raft loop stopped on a fatal error; the member stops");
                }
                shared.running.store(false, Ordering::Release);
                shared.watch.stop();
                shared.metrics.has_leader.set(0);
                shared.metrics.is_leader.set(0);
                shared.stopped.send_replace(true);
                result
            })?;
        // Request ids must be unique among proposals in flight and never match an entry
        // replayed from the WAL: etcd's scheme of member bits, start time and a counter.
        let id_base =
            ((member_id.0 & 0xffff) << 48) | ((wall_clock_millis() & 0xff_ffff_ffff) << 8);
        Ok(Arc::new(NodeHandle {
            tx,
            permits: Arc::new(Semaphore::new(INPUT_QUEUE_CAPACITY)),
            shared,
            next_id: AtomicU64::new(id_base),
            max_request_bytes: cfg.max_request_bytes,
            request_timeout: cfg.request_timeout,
            election_timeout: cfg.heartbeat_interval * cfg.election_ticks as u32,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, RequestError> {
        if !self.shared.is_running() {
            return Err(EtcdError::Stopped.into());
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EtcdError::Stopped.into())
    }

    fn send(&self, input: Input) -> Result<(), RequestError> {
        match self.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(EtcdError::Stopped.into()),
            // The permit makes this unreachable; if it ever happens, refuse politely.
            Err(TrySendError::Full(_)) => Err(EtcdError::TooManyRequests.into()),
        }
    }

    /// Proposes `req` through Raft and waits until it is committed, durable in the WAL and
    /// applied; returns what apply answered.
    pub async fn propose(
        &self,
        req: InternalRaftRequest,
    ) -> Result<apply::ApplyResponse, RequestError> {
        // A learner takes no client writes (its own attribute publication excepted).
        if self.shared.is_learner() && req.cluster_member_attr_set.is_none() {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        self.propose_any(req).await
    }

    async fn propose_any(
        &self,
        mut req: InternalRaftRequest,
    ) -> Result<apply::ApplyResponse, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.header = Some(RequestHeader {
            id,
            ..Default::default()
        });
        let data = req.encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        let metrics = &self.shared.metrics;
        self.send(Input::Propose {
            id,
            data: Bytes::from(data),
            reply,
            _permit: permit,
        })?;
        metrics.proposals_pending.add(1);
        let outcome = tokio::time::timeout(self.request_timeout, rx).await;
        metrics.proposals_pending.add(-1);
        match outcome {
            Ok(Ok(result)) => result.map_err(RequestError::from),
            Ok(Err(_)) => Err(EtcdError::Stopped.into()),
            Err(_) => {
                metrics.proposals_failed.inc();
                Err(EtcdError::Timeout.into())
            }
        }
    }

    /// Hands a Raft message from a peer to the loop (waits for room in the queue).
    pub async fn step(&self, message: Message) -> Result<(), RequestError> {
        let permit = self.permit().await?;
        self.send(Input::Step {
            message: Box::new(message),
            _permit: permit,
        })
    }

    /// Proposes a membership change and waits until it is applied. `change` gets the
    /// request id to use as the change's id.
    pub async fn propose_conf_change(
        &self,
        change: impl FnOnce(u64) -> ConfChange,
    ) -> Result<ApplyResponse, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cc = change(id);
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Input::ConfChange {
            cc,
            reply,
            _permit: permit,
        })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result.map_err(RequestError::from),
            Ok(Err(_)) => Err(EtcdError::Stopped.into()),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// etcd's quota check, before proposing a request that adds `cost` bytes (by etcd's
    /// estimate): if the backend would reach the quota, this member raises NOSPACE
    /// (unless it already has) and the request is refused with "database space
    /// exceeded". The alarm then stays until an operator disarms it.
    pub async fn check_quota(&self, cost: u64) -> Result<(), RequestError> {
        let size = self.shared.db_file_bytes.load(Ordering::Acquire);
        if alarms::fits(size, cost, self.shared.quota_backend_bytes) {
            return Ok(());
        }
        let me = self.shared.member_id.0;
        let raised = self
            .shared
            .alarms()
            .list(AlarmType::Nospace)
            .iter()
            .any(|a| a.member_id == me);
        if !raised {
            tracing::warn!(
                size,
                quota = self.shared.quota_backend_bytes,
                "the backend reached its quota: raising NOSPACE"
            );
            // As in etcd, the refusal does not depend on the alarm's own outcome.
            let _ = self
                .propose(InternalRaftRequest {
                    alarm: Some(AlarmRequest {
                        action: AlarmAction::Activate as i32,
                        member_id: me,
                        alarm: AlarmType::Nospace as i32,
                    }),
                    ..Default::default()
                })
                .await;
        }
        Err(EtcdError::NoSpace.into())
    }

    /// Defragments this member's backend and waits until it is done (no timeout: a large
    /// backend takes as long as it takes, as with etcd).
    pub async fn defragment(&self) -> Result<(), RequestError> {
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Input::Defragment {
            reply,
            _permit: permit,
        })?;
        match rx.await {
            Ok(result) => result.map_err(|e| RequestError::Internal(format!("defragment: {e}"))),
            Err(_) => Err(EtcdError::Stopped.into()),
        }
    }

    /// Asks Raft to hand leadership to `to` (effective only on the leader).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RequestError> {
        let permit = self.permit().await?;
        self.send(Input::TransferLeader {
            to,
            _permit: permit,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A fresh id, unique among this member's requests (lease ids are drawn from it, as
    /// etcd draws them from its request ids).
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// The Raft progress of every peer, on the leader (match index per member).
    pub fn progress(&self) -> HashMap<u64, u64> {
        self.shared.progress.lock().expect("progress lock").clone()
    }

    /// Waits until this member has applied everything committed when the call began,
    /// as confirmed by Raft's ReadIndex: a read after this is linearizable.
    pub async fn read_index(&self) -> Result<(), RequestError> {
        if self.shared.is_learner() {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Input::ReadIndex {
            reply,
            _permit: permit,
        })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(Ok(_index))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(EtcdError::Stopped.into()),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// Asks the loop to stop after its current turn and waits for it (blocking: call from
    /// a blocking context). Returns the loop's outcome.
    pub fn stop_and_join(&self) -> Result<(), NodeError> {
        // If the queue is full the loop is busy and will see the disconnect or the stop
        // soon enough; the Stop input is only a wake-up.
        let _ = self.tx.try_send(Input::Stop);
        let thread = self.thread.lock().expect("node thread lock").take();
        match thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(NodeError::Invalid("raft loop panicked".into()))),
            None => Ok(()),
        }
    }

    /// Resolves once the loop thread has exited (cleanly or on a fatal error).
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Everyone but `local`, with their peer URLs: the members, plus the peers a joining
/// member learned at start that are neither members (yet) nor removed.
fn peer_list(
    m: &Membership,
    local: MemberId,
    join_peers: &[(MemberId, Vec<String>)],
) -> Vec<(MemberId, Vec<String>)> {
    let mut peers: Vec<(MemberId, Vec<String>)> = m
        .members
        .values()
        .filter(|p| p.id != local)
        .map(|p| (p.id, p.peer_urls.clone()))
        .collect();
    for (id, urls) in join_peers {
        if *id != local && !m.members.contains_key(id) && !m.removed.contains(id) {
            peers.push((*id, urls.clone()));
        }
    }
    peers
}

fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn wall_clock_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type ReadReply = oneshot::Sender<Result<u64, EtcdError>>;

/// A configuration-change entry as a `ConfChangeV2` (None for other entries and for
/// undecodable ones, which every member skips alike).
fn decode_conf_change(e: &retcd_raft::Entry) -> Option<ConfChangeV2> {
    match e.entry_type {
        EntryType::ConfChange => ConfChange::decode(&e.data).ok().map(ConfChangeV2::from),
        EntryType::ConfChangeV2 => ConfChangeV2::decode(&e.data).ok(),
        EntryType::Normal => None,
    }
}

struct RaftLoop {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    wal: Wal,
    snapshotter: Snapshotter,
    kv: Arc<KvStore<RedbBackend>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    rx: Receiver<Input>,
    /// Membership edits of the apply batch in progress.
    pending_membership: Option<Membership>,
    /// Peers a joining member knew of at its start (see `JOIN_PEERS_KEY`).
    join_peers: Vec<(MemberId, Vec<String>)>,
    /// Whether the lone-voter campaign at start was made.
    campaigned: bool,
    /// Take a Raft snapshot at the next chance, whatever `--snapshot-count` says.
    force_snapshot: bool,
    transport: Transport,
    events: Receiver<TransportEvent>,
    /// Proposers waiting for their entry to be applied, by request id.
    waiters: HashMap<u64, oneshot::Sender<ApplyResult>>,
    /// Callers of Maintenance.Defragment waiting for the next run.
    defrag_requests: Vec<oneshot::Sender<Result<(), String>>>,
    /// Reads received this turn; they share one ReadIndex request.
    read_batch: Vec<ReadReply>,
    /// Reads whose ReadIndex request is with Raft, by request context.
    reads_in_flight: HashMap<u64, Vec<ReadReply>>,
    /// Reads with a read index, waiting for it to be applied.
    reads_ready: Vec<(u64, Vec<ReadReply>)>,
    next_read_ctx: u64,
    // Invariant: applied_index <= the Raft log's commit index; it is the backend's
    // consistent index (published, maybe not durable).
    applied_index: u64,
    // Invariant: durable_index <= applied_index; the backend's consistent index as of its
    // last durable commit.
    durable_index: u64,
    last_durable_commit: Instant,
    entries_since_durable: u64,
    // Invariant: snapshot_index <= durable_index.
    snapshot_index: u64,
    snapshot_count: u64,
    conf_state: ConfState,
    heartbeat_interval: Duration,
    election_ticks: u64,
    next_tick: Instant,
    last_waiter_sweep: Instant,
    stopping: bool,
}

impl RaftLoop {
    fn run(mut self) -> Result<(), NodeError> {
        let result = self.turns();
        self.transport.shutdown();
        // Whatever happened, nobody waits forever: dropping the replies tells every
        // waiter the server stopped.
        self.fail_pending();
        result?;
        self.durable_commit()?;
        tracing::info!(
            applied_index = self.applied_index,
            "raft loop stopped; backend and WAL are durable"
        );
        Ok(())
    }

    fn turns(&mut self) -> Result<(), NodeError> {
        loop {
            // A pending Ready (the first campaign, say) is handled without waiting.
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                self.next_tick.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(input) => self.take(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            // Everything queued now joins this turn, bounded by the queue's capacity.
            for _ in 0..INPUT_QUEUE_CAPACITY {
                match self.rx.try_recv() {
                    Ok(input) => self.take(input),
                    Err(_) => break,
                }
            }
            while let Ok(event) = self.events.try_recv() {
                match event {
                    TransportEvent::Unreachable(id) => self.raw.report_unreachable(id.0),
                    TransportEvent::Removed(by) => {
                        tracing::warn!(peer = %by, "a peer refuses this member as removed");
                        self.stop_as_removed();
                    }
                    TransportEvent::SnapshotDone(id, ok) => self.raw.report_snapshot(
                        id.0,
                        if ok {
                            SnapshotStatus::Finish
                        } else {
                            SnapshotStatus::Failure
                        },
                    ),
                }
            }
            self.flush_read_batch();
            self.tick_if_due();
            while self.raw.has_ready() {
                self.handle_ready()?;
            }
            // A lone voter need not wait an election timeout to learn nobody else leads.
            if !self.campaigned && self.conf_state.voters == [self.shared.member_id.0] {
                self.campaigned = true;
                if self.raw.raft.state != StateRole::Leader {
                    self.raw.campaign()?;
                }
                continue;
            }
            if self.durable_index < self.applied_index
                && self.last_durable_commit.elapsed() >= BACKEND_BATCH_INTERVAL
            {
                self.durable_commit()?;
            }
            self.maybe_snapshot()?;
            if !self.defrag_requests.is_empty() {
                self.defragment()?;
            }
            self.sweep_abandoned_waiters();
            if self.stopping {
                return Ok(());
            }
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Propose {
                id, data, reply, ..
            } => match self.raw.propose(data) {
                Ok(()) => {
                    self.waiters.insert(id, reply);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "proposal dropped");
                    self.metrics.proposals_failed.inc();
                    let _ = reply.send(Err(EtcdError::NoLeader));
                }
            },
            Input::ReadIndex { reply, .. } => self.read_batch.push(reply),
            Input::Step { message, .. } => {
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
            }
            Input::ConfChange { cc, reply, .. } => {
                let id = cc.id;
                match self.raw.propose_conf_change(&cc) {
                    Ok(()) => {
                        self.waiters.insert(id, reply);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "configuration change dropped");
                        let _ = reply.send(Err(EtcdError::NoLeader));
                    }
                }
            }
            Input::TransferLeader { to, .. } => self.raw.transfer_leader(to),
            Input::Defragment { reply, .. } => self.defrag_requests.push(reply),
            Input::Stop => self.stopping = true,
        }
    }

    fn flush_read_batch(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let batch = std::mem::take(&mut self.read_batch);
        // The leader keeps pending reads by context, from every member at once: the
        // context must be unique in the cluster, not only here (member id + counter).
        let mut key = self.shared.member_id.0.to_be_bytes().to_vec();
        key.extend_from_slice(&ctx.to_be_bytes());
        match self.raw.read_index(Bytes::from(key)) {
            Ok(()) => {
                self.reads_in_flight.insert(ctx, batch);
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index refused");
                for r in batch {
                    let _ = r.send(Err(EtcdError::NoLeader));
                }
            }
        }
    }

    /// Turns elapsed monotonic time into ticks. After a long stall at most one election
    /// timeout's worth is replayed: the core needs to know time passed, not how much.
    fn tick_if_due(&mut self) {
        let now = Instant::now();
        let mut ticks = 0;
        while now >= self.next_tick {
            self.next_tick += self.heartbeat_interval;
            ticks += 1;
        }
        if ticks > self.election_ticks {
            self.next_tick = now + self.heartbeat_interval;
            ticks = self.election_ticks;
        }
        for _ in 0..ticks {
            self.raw.tick();
        }
        if ticks > 0 {
            // Once a heartbeat: what MemberPromote checks a learner against.
            let progress: HashMap<u64, u64> = if self.raw.raft.state == StateRole::Leader {
                self.raw
                    .raft
                    .prs
                    .progress
                    .iter()
                    .map(|(id, p)| (*id, p.matched))
                    .collect()
            } else {
                HashMap::new()
            };
            *self.shared.progress.lock().expect("progress lock") = progress;
            if self.raw.raft.state == StateRole::Leader {
                self.propose_lease_expiries(now);
            }
        }
    }

    /// On the leader, once a tick: proposes the revocation of leases past their deadline
    /// (at most [`lease::REVOKES_PER_TICK`]), each naming the renewal it expired after.
    fn propose_lease_expiries(&mut self, now: Instant) {
        let expired = self
            .shared
            .lessor
            .lock()
            .expect("lessor lock")
            .take_expired(now, lease::REVOKES_PER_TICK);
        if expired.is_empty() {
            return;
        }
        let ids: Vec<i64> = expired.iter().map(|e| e.id).collect();
        let req = InternalRaftRequest {
            lease_expire: Some(retcd_api::etcdserverpb::LeaseExpireRequest { leases: expired }),
            ..Default::default()
        };
        if let Err(e) = self.raw.propose(Bytes::from(req.encode_to_vec())) {
            tracing::debug!(error = %e, "lease expiry proposal dropped; retried next tick");
            let mut lessor = self.shared.lessor.lock().expect("lessor lock");
            for id in ids {
                lessor.expiry_done(id);
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.soft_state {
            let old = self.shared.leader.swap(ss.leader_id, Ordering::AcqRel);
            if old != ss.leader_id {
                if ss.leader_id != 0 {
                    self.metrics.leader_changes_seen.inc();
                }
                // A ReadIndex request sent to the old leader will never be answered;
                // tell its readers now rather than at their timeout, as etcd does.
                if old != 0 {
                    for r in self.reads_in_flight.drain().flat_map(|(_, b)| b) {
                        let _ = r.send(Err(EtcdError::LeaderChanged));
                    }
                }
                tracing::info!(
                    leader = %MemberId(ss.leader_id),
                    term = self.raw.raft.term,
                    "raft leader changed"
                );
            }
            let is_leader = ss.role == StateRole::Leader;
            let was_leader = self
                .shared
                .role
                .swap(u64::from(is_leader), Ordering::AcqRel)
                == 1;
            if is_leader != was_leader {
                let mut lessor = self.shared.lessor.lock().expect("lessor lock");
                if is_leader {
                    let election_timeout =
                        self.heartbeat_interval * u32::try_from(self.election_ticks).unwrap_or(10);
                    lessor.on_promotion(Instant::now(), lease::wall_clock_ms(), election_timeout);
                } else {
                    lessor.on_demotion();
                }
            }
            self.metrics.has_leader.set(i64::from(ss.leader_id != 0));
            self.metrics
                .is_leader
                .set(i64::from(ss.role == StateRole::Leader));
        }
        // 1. Persist: WAL first, then the core's storage.
        if let Some(snap) = rd.snapshot.take() {
            self.install_snapshot(snap, rd.hard_state)?;
        }
        if !rd.entries.is_empty() || rd.hard_state.is_some() {
            let hs = rd.hard_state.unwrap_or_else(|| self.wal.hard_state());
            if rd.must_sync {
                let start = Instant::now();
                self.wal.save(&hs, &rd.entries)?;
                self.metrics.wal_fsync_duration.observe(start.elapsed());
            } else {
                self.wal.save_no_sync(&hs, &rd.entries)?;
            }
            self.storage.append(&rd.entries)?;
            if let Some(hs) = rd.hard_state {
                self.storage.set_hard_state(hs);
                self.metrics.proposals_committed.set(hs.commit as i64);
                self.shared
                    .committed_index
                    .store(hs.commit, Ordering::Release);
            }
        }
        self.shared
            .term
            .store(self.raw.raft.term, Ordering::Release);

        // 2. Send, now that the above is durable.
        let messages = rd.take_messages();
        self.send_messages(messages)?;

        // 3. Apply.
        let committed = std::mem::take(&mut rd.committed_entries);
        self.apply_entries(&committed)?;

        // 4. Reads.
        for rs in std::mem::take(&mut rd.read_states) {
            let (Some(member), Some(ctx)) = (rs.request_ctx.get(..8), rs.request_ctx.get(8..))
            else {
                continue;
            };
            let (Ok(member), Ok(ctx)) = (<[u8; 8]>::try_from(member), <[u8; 8]>::try_from(ctx))
            else {
                continue;
            };
            if u64::from_be_bytes(member) != self.shared.member_id.0 {
                continue;
            }
            if let Some(batch) = self.reads_in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.reads_ready.push((rs.index, batch));
            }
        }
        self.release_reads();

        // 5. Advance.
        self.raw.advance();
        Ok(())
    }

    fn send_messages(&mut self, messages: Vec<Message>) -> Result<(), NodeError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (snaps, rest): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| m.msg_type == MessageType::Snapshot);
        for id in self.transport.send(rest) {
            self.raw.report_unreachable(id.0);
        }
        for m in snaps {
            self.send_snapshot(m)?;
        }
        Ok(())
    }

    /// Sends a follower that is too far behind the whole backend. The image is written
    /// here, on the loop, so it is exactly the applied state; the message's snapshot
    /// metadata is rewritten to that applied index (with its term and configuration),
    /// which is at or after the snapshot Raft picked, so the follower never installs an
    /// image older than the log the leader will send after it.
    fn send_snapshot(&mut self, mut m: Message) -> Result<(), NodeError> {
        use retcd_backend::ReadTx as _;
        use retcd_raft::Storage as _;
        let index = self.applied_index;
        let term = match self.storage.term(index) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, index, "cannot send a snapshot at the applied index");
                self.raw.report_snapshot(m.to, SnapshotStatus::Failure);
                return Ok(());
            }
        };
        let path = self
            .shared
            .snap_dir
            .join(format!("outgoing-{:016x}-{index:016x}.img", m.to));
        let start = Instant::now();
        let info = {
            let file = std::fs::File::create(&path)?;
            let mut out = std::io::BufWriter::new(file);
            let tx = self.kv.backend().begin_read()?;
            let info = tx.write_snapshot(&mut out)?;
            std::io::Write::flush(&mut out)?;
            info
        };
        if let Some(snap) = m.snapshot.as_mut() {
            snap.metadata.index = index;
            snap.metadata.term = term;
            snap.metadata.conf_state = self.conf_state.clone();
        }
        tracing::info!(
            to = %MemberId(m.to),
            index,
            bytes = info.bytes,
            took_ms = start.elapsed().as_millis() as u64,
            "sending a snapshot to a member that is behind"
        );
        self.transport.send_snapshot(m, path);
        Ok(())
    }

    /// Installs a snapshot received from the leader: the WAL marker and snapshot file
    /// first (so a restart knows of it), then the backend image the transport saved,
    /// then the core's storage.
    fn install_snapshot(
        &mut self,
        snap: Snapshot,
        hard_state: Option<retcd_raft::HardState>,
    ) -> Result<(), NodeError> {
        let index = snap.metadata.index;
        let image = snapshot_image_path(&self.shared.snap_dir, index);
        if !image.exists() {
            return Err(NodeError::Invalid(format!(
                "raft accepted a snapshot at {index} but its image {} is missing",
                image.display()
            )));
        }
        // Nothing applied may stay non-durable under the new image.
        self.durable_commit()?;
        // The marker before the hard state: a hard state whose commit index is past the
        // log's end without the marker would not restart.
        self.snapshotter.save(&snap)?;
        self.wal.save_snapshot_marker(&SnapshotMarker {
            index,
            term: snap.metadata.term,
            conf_state: snap.metadata.conf_state.clone(),
        })?;
        if let Some(hs) = hard_state {
            self.wal.save(&hs, &[])?;
        }
        install_image(&self.kv, &image)?;
        self.shared.watch.restored();
        *self.shared.lessor.lock().expect("lessor lock") = Lessor::load(&self.kv)?;
        *self.shared.alarms.write().expect("alarms lock") =
            Alarms::load(&self.kv.backend().begin_read()?)?;
        self.note_db_size()?;
        let ci = self.kv.consistent_index();
        self.storage.apply_snapshot(snap.clone())?;
        self.conf_state = snap.metadata.conf_state.clone();
        self.snapshot_index = index;
        self.reload_membership()?;
        // The image may be ahead of the snapshot's index (the leader's applied state).
        self.applied_index = self.applied_index.max(ci.index).max(index);
        self.durable_index = self.applied_index;
        self.shared
            .applied_index
            .store(self.applied_index, Ordering::Release);
        self.metrics
            .proposals_applied
            .set(self.applied_index as i64);
        tracing::info!(
            index,
            term = snap.metadata.term,
            consistent_index = ci.index,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Publishes the backend file's size for the quota check.
    fn note_db_size(&self) -> Result<(), NodeError> {
        let size = self.kv.backend().size_bytes()?;
        self.shared.db_file_bytes.store(size, Ordering::Release);
        Ok(())
    }

    fn reload_membership(&mut self) -> Result<(), NodeError> {
        let m = Membership::load(&self.kv.backend().begin_read()?)?;
        self.transport
            .set_peers(&peer_list(&m, self.shared.member_id, &self.join_peers));
        *self.shared.membership.write().expect("membership lock") = m;
        Ok(())
    }

    fn release_reads(&mut self) {
        let applied = self.applied_index;
        self.reads_ready.retain_mut(|(index, batch)| {
            if *index > applied {
                return true;
            }
            for r in batch.drain(..) {
                let _ = r.send(Ok(*index));
            }
            false
        });
    }

    fn apply_entries(&mut self, entries: &[retcd_raft::Entry]) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let kv = self.kv.clone();
        let consistent = kv.consistent_index().index;
        // Replayed configuration changes the backend already holds still go to the Raft
        // core, whose configuration lives in memory only.
        for e in entries.iter().filter(|e| e.index <= consistent) {
            if let Some(cc) = decode_conf_change(e) {
                self.apply_conf_change_to_raft(&cc);
            }
        }
        let todo: Vec<&retcd_raft::Entry> =
            entries.iter().filter(|e| e.index > consistent).collect();
        if todo.is_empty() {
            // Replayed entries the backend already holds.
            self.set_applied(last.index.max(self.applied_index));
            return Ok(());
        }
        let mut results: Vec<(u64, ApplyResult)> = Vec::new();
        let shared = self.shared.clone();
        let mut lessor = shared.lessor.lock().expect("lessor lock");
        let mut compacted = false;
        let mut alarms = self.shared.alarms();
        let no_space_before = alarms.no_space();
        let mut alarms_changed = false;
        let mut membership_changed = false;
        let mut conf_changed = false;
        let mut batch = kv.begin_batch()?;
        for (expected, e) in (consistent + 1..).zip(&todo) {
            // Invariant: entries are applied once each, in log order, without gaps.
            assert_eq!(e.index, expected, "entries must be applied in order");
            match e.entry_type {
                EntryType::Normal if e.data.is_empty() => {}
                EntryType::Normal => {
                    let req = InternalRaftRequest::decode(e.data.as_ref()).map_err(|err| {
                        NodeError::Invalid(format!(
                            "committed entry {} does not decode as a request: {err}",
                            e.index
                        ))
                    })?;
                    let id = req.header.as_ref().map_or(req.id, |h| h.id);
                    let result = if let Some(attrs) = &req.cluster_member_attr_set {
                        self.apply_member_attrs(batch.backend_tx(), attrs)?;
                        membership_changed = true;
                        continue;
                    } else if let Some(c) = &req.compaction {
                        compacted = true;
                        apply::apply_compaction(&mut batch, c.revision)?
                    } else if let Some(a) = &req.alarm {
                        let changed = alarms.apply(batch.backend_tx(), a)?;
                        alarms_changed |= !changed.is_empty();
                        Ok(ApplyResponse::Alarm(changed))
                    } else if alarms.no_space() && alarms::grows_store(&req) {
                        // etcd's capped applier: nothing that grows the store while
                        // NOSPACE is raised.
                        Err(EtcdError::NoSpace)
                    } else if let Some(result) =
                        lease::apply_lease_request(&mut batch, &mut lessor, &req, e.index)?
                    {
                        result
                    } else {
                        let mut txn = apply::LeasedTxn {
                            txn: batch.txn(),
                            lessor: &mut lessor,
                        };
                        apply::apply_request(&mut txn, &req, &self.metrics)?
                    };
                    results.push((id, result));
                }
                EntryType::ConfChange | EntryType::ConfChangeV2 => {
                    if let Some((id, result)) = self.apply_conf_change(batch.backend_tx(), e)? {
                        results.push((id, result));
                    }
                    membership_changed = true;
                    conf_changed = true;
                }
            }
        }
        lessor.write_dirty(batch.backend_tx())?;
        drop(lessor);
        batch.set_consistent_index(ConsistentIndex {
            index: last.index,
            term: last.term,
        })?;
        let n = todo.len() as u64;
        let durable = compacted
            || conf_changed
            || self.stopping
            || self.last_durable_commit.elapsed() >= BACKEND_BATCH_INTERVAL
            || self.entries_since_durable + n >= BACKEND_BATCH_LIMIT;
        if durable {
            // Invariant: the WAL's commit index is durable before the backend's is.
            self.wal.sync()?;
        }
        batch.backend_tx().set_durable(durable)?;
        let start = Instant::now();
        let committed = batch.commit()?;
        self.metrics
            .backend_commit_duration
            .observe(start.elapsed());
        self.note_db_size()?;
        // Watchers hear of the batch before its proposers do, as in etcd.
        self.shared
            .watch
            .notify(committed.revision, committed.events);
        if durable {
            self.durable_index = last.index;
            self.last_durable_commit = Instant::now();
            self.entries_since_durable = 0;
        } else {
            self.entries_since_durable += n;
        }
        self.set_applied(last.index);
        if alarms_changed {
            if alarms.no_space() != no_space_before {
                tracing::warn!(
                    raised = alarms.no_space(),
                    "NOSPACE alarm changed: writes that grow the store are {}",
                    if alarms.no_space() {
                        "refused"
                    } else {
                        "allowed again"
                    }
                );
            }
            *self.shared.alarms.write().expect("alarms lock") = alarms;
        }
        if membership_changed {
            let m = self
                .pending_membership
                .take()
                .unwrap_or_else(|| self.shared.membership());
            self.transport
                .set_peers(&peer_list(&m, self.shared.member_id, &self.join_peers));
            *self.shared.membership.write().expect("membership lock") = m;
        }
        if conf_changed {
            // A member added now may need a snapshot that includes it (see
            // `Storage::snapshot`): take one at the applied index right away.
            self.force_snapshot = true;
        }
        // Only now, after the WAL fsync and the apply, do proposers hear back.
        for (id, result) in results {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(result);
            }
        }
        Ok(())
    }

    /// The membership being changed by the batch in progress (published after commit).
    fn membership_mut(&mut self) -> &mut Membership {
        if self.pending_membership.is_none() {
            self.pending_membership = Some(self.shared.membership());
        }
        self.pending_membership.as_mut().expect("just set")
    }

    fn apply_conf_change_to_raft(&mut self, cc: &ConfChangeV2) -> bool {
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                self.conf_state = cs;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "raft refused a configuration change");
                false
            }
        }
    }

    /// Applies a configuration-change entry: checked against the membership exactly as
    /// at proposal time (so every member decides the same), then recorded in the
    /// backend and handed to the Raft core. A refused change leaves both untouched.
    fn apply_conf_change(
        &mut self,
        tx: &mut retcd_backend::RedbWriteTx,
        e: &retcd_raft::Entry,
    ) -> Result<Option<(u64, ApplyResult)>, NodeError> {
        let Some(cc2) = decode_conf_change(e) else {
            tracing::warn!(index = e.index, "undecodable configuration change skipped");
            return Ok(None);
        };
        let (id, member) = match ConfChange::decode(&e.data) {
            Ok(cc) if e.entry_type == EntryType::ConfChange => {
                (cc.id, Member::decode(&cc.context).ok())
            }
            _ => (0, None),
        };
        let local = self.shared.member_id;
        let mut outcome: Result<(), EtcdError> = Ok(());
        for change in &cc2.changes {
            let target = MemberId(change.node_id);
            let m = self.membership_mut();
            let check = match change.change_type {
                ConfChangeType::AddNode if m.get(target).is_some_and(|x| x.is_learner) => {
                    m.check_promote(target)
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => match &member {
                    Some(mem) if mem.id == target => m.check_add(mem),
                    _ => Err(crate::membership::Refusal::NotFound),
                },
                ConfChangeType::RemoveNode => m.check_remove(target),
                ConfChangeType::UpdateNode => match &member {
                    Some(mem) if mem.id == target => m.check_update(target, &mem.peer_urls),
                    _ => Err(crate::membership::Refusal::NotFound),
                },
            };
            if let Err(r) = check {
                outcome = Err(r.to_error());
                break;
            }
        }
        if let Err(err) = outcome {
            tracing::info!(index = e.index, error = %err, "configuration change refused");
            return Ok(Some((id, Err(err))));
        }
        if !self.apply_conf_change_to_raft(&cc2) {
            return Ok(Some((id, Err(EtcdError::Corrupt))));
        }
        // Edited in place and published once the batch commits.
        let mut m = self
            .pending_membership
            .take()
            .unwrap_or_else(|| self.shared.membership());
        let mut removed_self = false;
        for change in &cc2.changes {
            let target = MemberId(change.node_id);
            match change.change_type {
                ConfChangeType::AddNode if m.get(target).is_some() => {
                    let mut promoted = m.get(target).expect("checked").clone();
                    promoted.is_learner = false;
                    m.put(tx, promoted)?;
                    tracing::info!(member = %target, "promoted learner to voter");
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let mut added = member.clone().expect("checked");
                    added.is_learner = change.change_type == ConfChangeType::AddLearnerNode;
                    tracing::info!(member = %target, learner = added.is_learner, peer_urls = ?added.peer_urls, "added member");
                    m.put(tx, added)?;
                }
                ConfChangeType::UpdateNode => {
                    let mut updated = m.get(target).expect("checked").clone();
                    updated.peer_urls = member.as_ref().expect("checked").peer_urls.clone();
                    tracing::info!(member = %target, peer_urls = ?updated.peer_urls, "updated member");
                    m.put(tx, updated)?;
                }
                ConfChangeType::RemoveNode => {
                    m.remove(tx, target)?;
                    tracing::info!(member = %target, "removed member");
                    removed_self |= target == local;
                }
            }
        }
        let list = m.members.values().map(Member::to_api).collect();
        self.pending_membership = Some(m);
        if removed_self {
            self.stop_as_removed();
        }
        Ok(Some((id, Ok(ApplyResponse::Members(list)))))
    }

    /// This member is out of the cluster: finish the turn and stop serving.
    fn stop_as_removed(&mut self) {
        tracing::warn!("the local member has been permanently removed from the cluster; stopping");
        self.shared.removed.store(true, Ordering::Release);
        self.stopping = true;
    }

    /// A member publishes its name and client URLs (etcd's ClusterMemberAttrSet).
    fn apply_member_attrs(
        &mut self,
        tx: &mut retcd_backend::RedbWriteTx,
        req: &retcd_api::membershippb::ClusterMemberAttrSetRequest,
    ) -> Result<(), NodeError> {
        let id = MemberId(req.member_id);
        let attrs = req.member_attributes.clone().unwrap_or_default();
        let m = self.membership_mut();
        let Some(existing) = m.get(id).cloned() else {
            return Ok(());
        };
        let mut updated = existing;
        updated.name = attrs.name;
        updated.client_urls = attrs.client_urls;
        m.put(tx, updated)?;
        Ok(())
    }

    fn set_applied(&mut self, index: u64) {
        assert!(
            index >= self.applied_index,
            "applied index went back from {} to {index}",
            self.applied_index
        );
        self.applied_index = index;
        self.shared.applied_index.store(index, Ordering::Release);
        self.metrics.proposals_applied.set(index as i64);
    }

    /// Makes the backend durable up to the applied index (an empty durable commit makes
    /// the earlier non-durable ones durable).
    fn durable_commit(&mut self) -> Result<(), NodeError> {
        if self.durable_index == self.applied_index {
            return Ok(());
        }
        self.wal.sync()?;
        let start = Instant::now();
        let tx = self.kv.backend().begin_write()?;
        tx.commit()?;
        self.metrics
            .backend_commit_duration
            .observe(start.elapsed());
        self.durable_index = self.applied_index;
        self.last_durable_commit = Instant::now();
        self.entries_since_durable = 0;
        Ok(())
    }

    /// Defragments the backend for everyone who asked this turn (one run serves them all).
    /// Like etcd's, it holds up this member: no entry is applied, and no backend
    /// transaction begins, until it ends.
    fn defragment(&mut self) -> Result<(), NodeError> {
        // Invariant: compaction commits durably, so everything applied is made durable
        // first, behind the WAL (see the module docs).
        self.durable_commit()?;
        let start = Instant::now();
        let result = self
            .kv
            .backend()
            .defragment(DEFRAG_PATIENCE)
            .map_err(|e| e.to_string());
        let took = start.elapsed();
        self.metrics.backend_defrag_duration.observe(took);
        self.note_db_size()?;
        // Keep-alives waited in the queue meanwhile: leases must not expire for that.
        self.shared
            .lessor
            .lock()
            .expect("lessor lock")
            .postpone(took);
        *self
            .shared
            .db_in_use_cache
            .lock()
            .expect("db size cache lock") = None;
        match &result {
            Ok(()) => tracing::info!(took = ?took, "backend defragmented"),
            Err(e) => tracing::warn!(error = %e, "backend defragmentation failed"),
        }
        for reply in self.defrag_requests.drain(..) {
            let _ = reply.send(result.clone());
        }
        Ok(())
    }

    /// After `--snapshot-count` applied entries: a Raft snapshot (metadata only; the
    /// backend is the state), the WAL marker, log compaction, and purging of old files.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        if self.applied_index < self.snapshot_index + self.snapshot_count && !self.force_snapshot {
            return Ok(());
        }
        self.force_snapshot = false;
        if self.applied_index == self.snapshot_index {
            return Ok(());
        }
        // Invariant: a snapshot never claims more than the durable backend holds.
        self.durable_commit()?;
        let index = self.applied_index;
        let snap: Snapshot =
            self.storage
                .create_snapshot(index, Some(self.conf_state.clone()), Bytes::new())?;
        self.snapshotter.save(&snap)?;
        self.wal.save_snapshot_marker(&SnapshotMarker {
            index,
            term: snap.metadata.term,
            conf_state: self.conf_state.clone(),
        })?;
        let compact_to = index.saturating_sub(SNAPSHOT_CATCH_UP_ENTRIES);
        if compact_to >= self.storage_first_index() {
            self.storage.compact(compact_to)?;
        }
        self.snapshot_index = index;
        let purge_below = self.snapshot_index.min(self.durable_index);
        let purged = match self.wal.purge_to(purge_below) {
            Ok(files) => files.len(),
            Err(e) => {
                tracing::warn!(error = %e, "could not purge old WAL segments; will retry");
                0
            }
        };
        if let Err(e) = self.snapshotter.purge(MAX_SNAPSHOT_FILES) {
            tracing::warn!(error = %e, "could not purge old snapshot files; will retry");
        }
        tracing::info!(
            snapshot_index = index,
            term = snap.metadata.term,
            compacted_to = compact_to,
            purged_wal_segments = purged,
            "saved raft snapshot"
        );
        Ok(())
    }

    fn storage_first_index(&self) -> u64 {
        use retcd_raft::Storage;
        self.storage.first_index().unwrap_or(1)
    }

    /// Drops waiters whose caller gave up (timed out or went away), so entries that will
    /// never be applied (dropped with a lost leadership) cannot grow the map forever.
    fn sweep_abandoned_waiters(&mut self) {
        if self.last_waiter_sweep.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_waiter_sweep = Instant::now();
        self.waiters.retain(|_, w| !w.is_closed());
        for batch in self.reads_in_flight.values_mut() {
            batch.retain(|r| !r.is_closed());
        }
        self.reads_in_flight.retain(|_, b| !b.is_empty());
    }

    fn fail_pending(&mut self) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(EtcdError::Stopped));
        }
        let reads = self
            .read_batch
            .drain(..)
            .chain(self.reads_in_flight.drain().flat_map(|(_, b)| b))
            .chain(self.reads_ready.drain(..).flat_map(|(_, b)| b));
        for r in reads {
            let _ = r.send(Err(EtcdError::Stopped));
        }
        // Inputs still queued: their replies are dropped, which their callers read as
        // "server stopped".
        while let Ok(input) = self.rx.try_recv() {
            drop(input);
        }
    }
}
