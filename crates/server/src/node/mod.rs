//! The member's core: one OS thread (the raft loop) that owns the Raft core, the WAL and
//! the write side of the store, and the handles the async side uses.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | configuration, start, and the handles a started member hands out ([`Node`]) |
//! | `handle.rs` | [`NodeHandle`]: inputs into the loop (proposals, reads, peer messages) |
//! | `status.rs` | [`NodeStatus`]: what the loop publishes (term, leader, indexes, membership, alarms) |
//! | `event_loop.rs` | the loop: a turn's duties in order, apply, durability, defragmentation |
//! | `reads.rs` | linearizable reads, batched per turn on one ReadIndex |
//! | `snapshot.rs` | Raft snapshots: taken, sent to a lagging member, installed |
//! | `recover.rs` | the data directory: recovery at start, bootstrap of a new member |
//! | `network.rs` | what the loop needs of the network, and whom it talks to |
//!
//! # Why one thread
//! The Raft core is a synchronous state machine, WAL writes and fsyncs block, and MVCC's
//! write batch holds a lock guard (it is `!Send`). Giving all three to one dedicated
//! thread keeps blocking I/O off the async reactor, needs no lock around the core, and
//! makes the order of the host's duties (persist, send, apply, advance) a plain sequence
//! of statements. The loop turns elapsed monotonic time into `tick`s, so the core never
//! sees time, and hands apply the time as an input, so apply never reads it.
//!
//! # Inputs and batching
//! Requests arrive on a bounded channel ([`Input`]). Each turn of the loop takes every
//! queued input before asking for a `Ready`, so many concurrent proposals share one WAL
//! fsync and one backend transaction, and every linearizable read queued in that turn
//! shares one ReadIndex request. A turn's time is its argument ([`RaftLoop::turn`]): the
//! thread passes the clock, a test harness may pass simulated time and route messages
//! itself ([`open`], [`Network`]).
//!
//! # A turn, in order (`retcd_raft`'s host duties)
//! 1. persist the `Ready`'s snapshot, entries and hard state to the WAL (fsync when
//!    `must_sync`), then to `MemStorage`;
//! 2. send messages to peers;
//! 3. apply committed entries in one MVCC write batch that also records the consistent
//!    index (`crate::apply`), tell the watchers, then answer their proposers (only now:
//!    after the fsync and the apply);
//! 4. release linearizable reads whose read index is applied;
//! 5. advance.
//!
//! # Durability without an fsync per batch
//! The WAL holds every committed entry durably, so the backend need not fsync each apply
//! batch: ordinary batches commit non-durably and a durable commit follows at least every
//! `--backend-batch-interval` or `--backend-batch-limit` applied entries (etcd's batch
//! interval and limit: [`NodeConfig::backend_batch_interval`],
//! [`NodeConfig::backend_batch_limit`]), on compaction and configuration changes, before
//! a Raft snapshot and at shutdown. After a crash the backend is at its last durable
//! consistent index and Raft re-delivers everything after it; apply skips what the
//! backend already has, so replay is idempotent. The rules that keep this sound, asserted
//! after every turn:
//! - Invariant: the backend's durable consistent index never exceeds the WAL's durable
//!   commit index (the WAL is synced before every durable backend commit).
//! - Invariant: snapshot index <= durable index <= applied index = the backend's
//!   consistent index <= the commit index.
//! - Invariant: WAL segments are purged only below min(latest Raft snapshot, durable
//!   backend consistent index), so replay always finds its entries; and only while more
//!   than `--max-wals` segments exist (none with 0, etcd's "unlimited").
//!
//! After each Raft snapshot the loop keeps `--experimental-snapshot-catchup-entries` of
//! log in memory behind it for followers that lag a little (a follower further behind
//! gets the backend as a snapshot), and deletes the snapshot files beyond the newest
//! `--max-snapshots` (0 keeps every one).
//!
//! # The data directory
//! `<data-dir>/member/{wal,snap}` as etcd's, or the WAL in `--wal-dir` ([`DataLayout`]).
//! Everything the member creates there is private to its owner, as etcd's: directories
//! `0700`, files `0600`; an existing directory with another mode is used as it is, with
//! etcd's warning ("check file permission").

mod event_loop;
mod handle;
mod network;
mod reads;
mod recover;
pub(crate) use recover::{JOIN_PEERS_KEY, create_bootstrap_wal};
mod snapshot;
mod status;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use retcd_backend::{RedbBackend, RedbConfig};
use retcd_lease::Lessor;
use retcd_mvcc::{KvHash, KvStore, MvccError, WatchConfig, WatchableStore};
use retcd_raft::RawNode;
use retcd_wal::Snapshotter;

pub use event_loop::RaftLoop;
pub use handle::NodeHandle;
pub use network::{Network, NetworkEvent};
pub use recover::{DataLayout, snapshot_image_path};
pub use status::NodeStatus;

use crate::apply::{Applier, ApplyError};
use crate::auth::tokens::SimpleTokens;
use crate::auth::{Auth, AuthConfig};
use crate::clock;
use crate::errors::RequestError;
use crate::ids::{ClusterId, MemberId};
use crate::membership::{Member, Membership};
use crate::metrics::Metrics;

/// How long defragmentation waits for reads already under way to end (no new one begins
/// meanwhile) before it gives up.
const DEFRAG_PATIENCE: Duration = Duration::from_secs(5);

/// A fatal error of the loop: the node stops and answers nobody.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Wal(#[from] retcd_wal::WalError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Backend(#[from] retcd_backend::BackendError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("raft: {0}")]
    Raft(#[from] retcd_raft::Error),
    #[error("raft storage: {0}")]
    RaftStorage(#[from] retcd_raft::StorageError),
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What the loop needs to start.
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// `--wal-dir`: the WAL there instead of `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
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
    /// Raft snapshot files kept (`--max-snapshots`, etcd's default 5; 0 keeps all).
    pub max_snapshots: u64,
    /// WAL segments kept once a snapshot released them (`--max-wals`, etcd's default 5;
    /// 0 keeps all).
    pub max_wals: u64,
    /// A WAL segment is cut at this size (etcd's 64 MiB,
    /// [`retcd_wal::DEFAULT_SEGMENT_SIZE_BYTES`]; tests make it small).
    pub wal_segment_size_bytes: u64,
    /// Longest a non-durable backend commit may stay the newest
    /// (`--backend-batch-interval`, etcd's 100 ms).
    pub backend_batch_interval: Duration,
    /// Most applied entries between two durable backend commits
    /// (`--backend-batch-limit`, etcd's 10,000).
    pub backend_batch_limit: u64,
    /// Entries kept in memory behind a Raft snapshot for followers that lag a little
    /// (`--experimental-snapshot-catchup-entries`, etcd's 5,000).
    pub snapshot_catchup_entries: u64,
    /// How long a simple token lives after its last use (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of new passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified client certificate's CN authenticates a request
    /// without a token.
    pub client_cert_auth: bool,
    /// `--auth-token jwt,...`, its keys loaded.
    pub jwt: Option<Arc<crate::auth::jwt::Jwt>>,
    /// `--force-new-cluster`: restart as the only member of the cluster (a member with
    /// no WAL ignores it, as etcd's does).
    pub force_new_cluster: bool,
}

/// How a member with an empty data directory starts.
pub enum Bootstrap {
    /// A new cluster of these members (this one among them): `--initial-cluster-state new`.
    New { members: Vec<Member> },
    /// Joining a running cluster that already added this member (`existing`): the
    /// membership as a peer reported it.
    Existing { membership: Membership },
}

/// The store, for reads and watches.
#[derive(Clone)]
pub struct Store {
    pub kv: Arc<KvStore<RedbBackend>>,
    /// Watchers over `kv`, fed by apply.
    pub watch: Arc<WatchableStore<RedbBackend>>,
}

impl Store {
    /// etcd's HashKV at `revision` (0 or less: the current revision), off the reactor.
    /// The one way the server hashes the key space: Maintenance.HashKV answers clients
    /// with it, `Peer.HashKv` answers peers, and the initial corruption check
    /// (`crate::corrupt`) hashes this member with it.
    pub async fn hash_kv(&self, revision: i64) -> Result<KvHash, RequestError> {
        let kv = self.kv.clone();
        Ok(
            tokio::task::spawn_blocking(move || kv.hash_by_rev(revision))
                .await
                .map_err(|e| RequestError::Internal(e.to_string()))??,
        )
    }
}

/// The lessor as the Lease service reads it (apply changes it).
#[derive(Clone)]
pub struct LeaseView {
    lessor: Arc<Mutex<Lessor>>,
}

/// A lease as LeaseTimeToLive answers it.
pub struct LeaseTtl {
    /// Seconds left, truncated (etcd's `Remaining().Seconds()`).
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

impl LeaseView {
    fn lessor(&self) -> std::sync::MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease's time to live as of now, with its keys if asked; `None` if it does not
    /// exist.
    pub fn time_to_live(&self, id: i64, with_keys: bool) -> Option<LeaseTtl> {
        let now = clock::lease_now();
        let lessor = self.lessor();
        let lease = lessor.get(retcd_lease::LeaseId(id))?;
        Some(LeaseTtl {
            remaining: i64::try_from(lease.remaining(now).as_secs()).unwrap_or(i64::MAX),
            granted: lease.ttl(),
            keys: if with_keys {
                lease.keys().iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// The keys attached to lease `id` (none if it does not exist).
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.lessor()
            .get(retcd_lease::LeaseId(id))
            .map(|l| l.keys().iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys attached to any lease.
    pub fn all_keys(&self) -> Vec<Vec<u8>> {
        let lessor = self.lessor();
        lessor
            .ids()
            .into_iter()
            .filter_map(|id| lessor.get(id))
            .flat_map(|l| l.keys().iter().cloned())
            .collect()
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        self.lessor().ids().into_iter().map(|id| id.0).collect()
    }
}

/// A started member: the handles its services use, each as narrow as it can be.
#[derive(Clone)]
pub struct Node {
    /// Inputs into the loop.
    pub handle: Arc<NodeHandle>,
    /// What the loop publishes.
    pub status: Arc<NodeStatus>,
    pub store: Store,
    pub leases: LeaseView,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
}

/// An opened member whose loop is not running yet: [`start`] gives it a thread; a test
/// harness drives [`RaftLoop`] itself.
pub struct Opened {
    pub raft_loop: RaftLoop,
    pub status: Arc<NodeStatus>,
    pub store: Store,
    pub leases: LeaseView,
    pub auth: Arc<Auth>,
}

/// Opens (or creates) the data directory and recovers: the loop, ready for its first
/// turn at `now`. `network` builds the loop's network once the member's ids are known
/// (from the data directory, or from `cfg` for a new member). `raft_seed` seeds the
/// election timeout jitter.
pub fn open(
    cfg: &NodeConfig,
    metrics: Arc<Metrics>,
    now: Instant,
    raft_seed: u64,
    network: impl FnOnce(MemberId, ClusterId) -> Box<dyn Network>,
) -> Result<Opened, NodeError> {
    let layout = DataLayout::new(&cfg.data_dir, cfg.wal_dir.as_deref());
    layout.prepare()?;
    let backend = RedbBackend::open(&layout.db_path, &RedbConfig::default())?;
    let kv = Arc::new(KvStore::open(backend)?);
    let snapshotter = Snapshotter::new(&layout.snap_dir)?;
    let recover::Recovered {
        wal,
        storage,
        member_id,
        cluster_id,
        snapshot_index,
        snapshot_data,
        conf_state,
    } = recover::recover_or_bootstrap(cfg, &layout, &snapshotter, &kv)?;
    // The membership Raft's replay starts from: none before the first entry, else what
    // the snapshot recorded (nothing, for a snapshot written before it did).
    let replay_from = if snapshot_index == 0 {
        Some(Membership::default())
    } else {
        Some(snapshot_data)
            .filter(|d| !d.is_empty())
            .and_then(|d| Membership::decode(&d).ok())
    };
    let tokens = Arc::new(SimpleTokens::new(cfg.auth_token_ttl));
    let applier = Applier::open(
        kv.clone(),
        member_id,
        metrics.clone(),
        clock::lease_time(now),
        replay_from,
        tokens.clone(),
    )?;

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
    raft_cfg.seed = raft_seed;
    let raw = RawNode::new(&raft_cfg, storage.clone())?;
    let join_peers = recover::join_peers(&kv)?;
    let mut network = network(member_id, cluster_id);
    network.set_peers(&network::peer_list(
        &applier.membership().get(),
        member_id,
        &join_peers,
    ));
    let status = Arc::new(NodeStatus::new(status::StatusInit {
        member_id,
        cluster_id,
        term: raw.raft.term,
        committed_index: raw.raft.raft_log.committed,
        applied_index: kv.consistent_index().index,
        membership: applier.membership().clone(),
        alarms: applier.alarms().clone(),
        quota_backend_bytes: cfg.quota_backend_bytes,
        snap_dir: layout.snap_dir.clone(),
        kv: kv.clone(),
    })?);
    let store = Store {
        kv: kv.clone(),
        watch: WatchableStore::new(kv.clone(), WatchConfig::default()),
    };
    let leases = LeaseView {
        lessor: applier.lessor().clone(),
    };
    let auth = Arc::new(Auth::new(
        applier.auth().clone(),
        tokens,
        status.applied().clone(),
        AuthConfig {
            bcrypt_cost: cfg.bcrypt_cost,
            wait: cfg.request_timeout,
            client_cert_auth: cfg.client_cert_auth,
            jwt: cfg.jwt.clone(),
        },
    ));
    let raft_loop = RaftLoop::new(event_loop::LoopParts {
        raw,
        storage,
        wal,
        snapshotter,
        applier,
        kv,
        watch: store.watch.clone(),
        status: status.clone(),
        metrics,
        network,
        join_peers,
        snapshot_index,
        limits: event_loop::LoopLimits {
            snapshot_count: cfg.snapshot_count,
            snapshot_catchup_entries: cfg.snapshot_catchup_entries,
            max_snapshots: cfg.max_snapshots,
            max_wals: cfg.max_wals,
            backend_batch_interval: cfg.backend_batch_interval,
            backend_batch_limit: cfg.backend_batch_limit,
        },
        conf_state,
        heartbeat_interval: cfg.heartbeat_interval,
        election_ticks: cfg.election_ticks,
        now,
    });
    Ok(Opened {
        raft_loop,
        status,
        store,
        leases,
        auth,
    })
}

/// Opens the data directory, recovers, and starts the raft loop on its own thread.
/// `network` builds the loop's network once the member's ids are known; what it reports
/// goes on the sender it is given.
pub fn start(
    cfg: NodeConfig,
    metrics: Arc<Metrics>,
    network: impl FnOnce(MemberId, ClusterId, Sender<NetworkEvent>) -> Box<dyn Network>,
) -> Result<Node, NodeError> {
    let now = Instant::now();
    let (events_tx, events) = std::sync::mpsc::channel();
    let wall = clock::wall_clock_ms() as u64;
    let opened = open(
        &cfg,
        metrics.clone(),
        now,
        cfg.member_id.0 ^ wall,
        |member_id, cluster_id| network(member_id, cluster_id, events_tx),
    )?;
    let Opened {
        raft_loop,
        status,
        store,
        leases,
        auth,
    } = opened;
    let (tx, rx) = std::sync::mpsc::sync_channel(handle::INPUT_QUEUE_CAPACITY);
    let thread = std::thread::Builder::new().name("raft-loop".into()).spawn({
        let status = status.clone();
        let watch = store.watch.clone();
        let metrics = metrics.clone();
        move || {
            let result = raft_loop.run(rx, events);
            if let Err(e) = &result {
                tracing::error!(error = %e, "raft loop stopped on a fatal error; the member stops");
            }
            watch.stop();
            metrics.has_leader.set(0);
            metrics.is_leader.set(0);
            status.mark_stopped();
            result
        }
    })?;
    // Request ids must be unique among proposals in flight and never match an entry
    // replayed from the WAL: etcd's scheme of member bits, start time and a counter.
    let id_base = ((status.member_id().0 & 0xffff) << 48) | ((wall & 0xff_ffff_ffff) << 8);
    let handle = Arc::new(NodeHandle::new(
        tx,
        status.clone(),
        metrics.clone(),
        handle::HandleLimits {
            max_request_bytes: cfg.max_request_bytes,
            request_timeout: cfg.request_timeout,
            election_timeout: cfg
                .heartbeat_interval
                .saturating_mul(u32::try_from(cfg.election_ticks).unwrap_or(u32::MAX)),
            id_base,
        },
        thread,
    ));
    Ok(Node {
        handle,
        status,
        store,
        leases,
        auth,
        metrics,
    })
}
