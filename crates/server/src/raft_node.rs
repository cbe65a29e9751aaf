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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{InternalRaftRequest, RequestHeader, ResponseHeader};
use retcd_backend::{Backend, ConsistentIndex, RedbBackend, RedbConfig, WriteTx};
use retcd_mvcc::{KvStore, MvccError};
use retcd_raft::{
    ConfChange, ConfChangeV2, ConfState, EntryType, MemStorage, RawNode, Snapshot, StateRole,
};
use retcd_wal::{SnapshotMarker, Snapshotter, StdVfs, Wal, WalOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::apply::{self, ApplyResult};
use crate::errors::RequestError;
use crate::ids::{ClusterId, MemberId};
use crate::metrics::Metrics;

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
    /// A linearizable read: answered with the read index once it is applied.
    ReadIndex {
        reply: oneshot::Sender<Result<u64, EtcdError>>,
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

fn encode_wal_metadata(member: MemberId, cluster: ClusterId) -> Vec<u8> {
    let mut m = member.0.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster.0.to_be_bytes());
    m
}

fn decode_wal_metadata(m: &[u8]) -> Result<(MemberId, ClusterId), NodeError> {
    let bad = || NodeError::Invalid(format!("WAL metadata has {} bytes, want 16", m.len()));
    let member = u64::from_be_bytes(m.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let cluster = u64::from_be_bytes(
        m.get(8..16)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    Ok((MemberId(member), ClusterId(cluster)))
}

/// The WAL and the Raft log a member starts from.
struct Recovered {
    wal: Wal,
    storage: MemStorage,
    member_id: MemberId,
    cluster_id: ClusterId,
    snapshot_index: u64,
}

/// Restarts from the newest snapshot the WAL has a marker for and the log after it, or
/// creates a new WAL for a new member. Checks that the backend (at `ci`) and the WAL
/// belong together.
fn recover_or_bootstrap(
    cfg: &NodeConfig,
    layout: &DataLayout,
    snapshotter: &Snapshotter,
    ci: ConsistentIndex,
) -> Result<Recovered, NodeError> {
    let wal_opts = WalOptions::default();
    let recovered = if Wal::exists(&layout.wal_dir, &StdVfs)? {
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
        let storage = MemStorage::new_with_conf_state(single_member_conf_state(member_id));
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.metadata.index);
        if let Some(s) = snapshot {
            storage.apply_snapshot(s)?;
        }
        storage.set_hard_state(recovered.hard_state);
        storage.append(&recovered.entries)?;
        let hs = recovered.hard_state;
        // Invariant: a durable backend commit never covers more than the WAL's
        // durable commit index (see the module docs); anything else means the
        // backend and the WAL do not belong together.
        if ci.index > hs.commit {
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
        Recovered {
            wal,
            storage,
            member_id,
            cluster_id,
            snapshot_index,
        }
    } else {
        if ci.index != 0 {
            return Err(NodeError::Invalid(format!(
                "{} holds applied data (consistent index {}) but {} holds no WAL",
                layout.db_path.display(),
                ci.index,
                layout.wal_dir.display()
            )));
        }
        let wal = Wal::create(
            &layout.wal_dir,
            &encode_wal_metadata(cfg.member_id, cfg.cluster_id),
        )?;
        tracing::info!(
            member_id = %cfg.member_id,
            cluster_id = %cfg.cluster_id,
            data_dir = %cfg.data_dir.display(),
            "starting a new single-member cluster"
        );
        let storage = MemStorage::new_with_conf_state(single_member_conf_state(cfg.member_id));
        Recovered {
            wal,
            storage,
            member_id: cfg.member_id,
            cluster_id: cfg.cluster_id,
            snapshot_index: 0,
        }
    };
    Ok(recovered)
}

impl NodeHandle {
    /// Opens (or creates) the data directory, recovers, and starts the raft loop thread.
    pub fn start(cfg: NodeConfig, metrics: Arc<Metrics>) -> Result<Arc<NodeHandle>, NodeError> {
        let layout = DataLayout::new(&cfg.data_dir);
        std::fs::create_dir_all(&layout.snap_dir)?;
        let backend = RedbBackend::open(&layout.db_path, &RedbConfig::default())?;
        let kv = Arc::new(KvStore::open(backend)?);
        let ci = kv.consistent_index();
        let snapshotter = Snapshotter::new(&layout.snap_dir)?;

        let Recovered {
            wal,
            storage,
            member_id,
            cluster_id,
            snapshot_index,
        } = recover_or_bootstrap(&cfg, &layout, &snapshotter, ci)?;

        let mut raft_cfg = retcd_raft::Config::new(member_id.0);
        raft_cfg.election_tick = cfg.election_ticks;
        raft_cfg.heartbeat_tick = 1;
        raft_cfg.applied = ci.index;
        raft_cfg.pre_vote = true;
        raft_cfg.check_quorum = true;
        // Jitter seed only; never reaches the state machine.
        raft_cfg.seed = member_id.0 ^ wall_clock_nanos();
        let mut raw = RawNode::new(&raft_cfg, storage.clone())?;
        let conf_state = single_member_conf_state(member_id);
        // A lone voter need not wait an election timeout to learn nobody else leads.
        if conf_state.voters == [member_id.0] {
            raw.campaign()?;
        }

        let shared = Arc::new(Shared {
            member_id,
            cluster_id,
            kv: kv.clone(),
            metrics: metrics.clone(),
            term: AtomicU64::new(raw.raft.term),
            leader: AtomicU64::new(0),
            committed_index: AtomicU64::new(raw.raft.raft_log.committed),
            applied_index: AtomicU64::new(ci.index),
            running: AtomicBool::new(true),
            stopped: tokio::sync::watch::Sender::new(false),
            db_in_use_cache: Mutex::new(None),
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
            waiters: HashMap::new(),
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

    /// Waits until this member has applied everything committed when the call began,
    /// as confirmed by Raft's ReadIndex: a read after this is linearizable.
    pub async fn read_index(&self) -> Result<(), RequestError> {
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

fn single_member_conf_state(id: MemberId) -> ConfState {
    ConfState {
        voters: vec![id.0],
        ..Default::default()
    }
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

struct RaftLoop {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    wal: Wal,
    snapshotter: Snapshotter,
    kv: Arc<KvStore<RedbBackend>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    rx: Receiver<Input>,
    /// Proposers waiting for their entry to be applied, by request id.
    waiters: HashMap<u64, oneshot::Sender<ApplyResult>>,
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
            self.flush_read_batch();
            self.tick_if_due();
            while self.raw.has_ready() {
                self.handle_ready()?;
            }
            if self.durable_index < self.applied_index
                && self.last_durable_commit.elapsed() >= BACKEND_BATCH_INTERVAL
            {
                self.durable_commit()?;
            }
            self.maybe_snapshot()?;
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
        match self
            .raw
            .read_index(Bytes::copy_from_slice(&ctx.to_be_bytes()))
        {
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
    }

    fn handle_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.soft_state {
            let old = self.shared.leader.swap(ss.leader_id, Ordering::AcqRel);
            if old != ss.leader_id {
                if ss.leader_id != 0 {
                    self.metrics.leader_changes_seen.inc();
                }
                tracing::info!(
                    leader = %MemberId(ss.leader_id),
                    term = self.raw.raft.term,
                    "raft leader changed"
                );
            }
            self.metrics.has_leader.set(i64::from(ss.leader_id != 0));
            self.metrics
                .is_leader
                .set(i64::from(ss.role == StateRole::Leader));
        }
        if rd.snapshot.is_some() {
            return Err(NodeError::Invalid(
                "received a raft snapshot, which a single member cannot install".into(),
            ));
        }

        // 1. Persist: WAL first, then the core's storage.
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

        // 2. Send, now that the above is durable. A single member has no peers.
        let messages = rd.take_messages();
        if !messages.is_empty() {
            tracing::debug!(count = messages.len(), "dropping raft messages: no peers");
        }

        // 3. Apply.
        let committed = std::mem::take(&mut rd.committed_entries);
        self.apply_entries(&committed)?;

        // 4. Reads.
        for rs in std::mem::take(&mut rd.read_states) {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_ref()) else {
                continue;
            };
            if let Some(batch) = self.reads_in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.reads_ready.push((rs.index, batch));
            }
        }
        self.release_reads();

        // 5. Advance.
        self.raw.advance();
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
        let todo: Vec<&retcd_raft::Entry> =
            entries.iter().filter(|e| e.index > consistent).collect();
        if todo.is_empty() {
            // Replayed entries the backend already holds.
            self.set_applied(last.index.max(self.applied_index));
            return Ok(());
        }
        let mut results: Vec<(u64, ApplyResult)> = Vec::new();
        let mut compacted = false;
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
                    let result = if let Some(c) = &req.compaction {
                        compacted = true;
                        apply::apply_compaction(&mut batch, c.revision)?
                    } else {
                        let mut txn = batch.txn();
                        apply::apply_request(&mut txn, &req, &self.metrics)?
                    };
                    results.push((id, result));
                }
                EntryType::ConfChange | EntryType::ConfChangeV2 => {
                    let cc = if e.entry_type == EntryType::ConfChange {
                        ConfChange::decode(&e.data).map(ConfChangeV2::from)
                    } else {
                        ConfChangeV2::decode(&e.data)
                    };
                    // An undecodable or invalid change is refused identically everywhere.
                    if let Ok(cc) = cc
                        && let Ok(cs) = self.raw.apply_conf_change(&cc)
                    {
                        self.conf_state = cs;
                    }
                }
            }
        }
        batch.set_consistent_index(ConsistentIndex {
            index: last.index,
            term: last.term,
        })?;
        let n = todo.len() as u64;
        let durable = compacted
            || self.stopping
            || self.last_durable_commit.elapsed() >= BACKEND_BATCH_INTERVAL
            || self.entries_since_durable + n >= BACKEND_BATCH_LIMIT;
        if durable {
            // Invariant: the WAL's commit index is durable before the backend's is.
            self.wal.sync()?;
        }
        batch.backend_tx().set_durable(durable)?;
        let start = Instant::now();
        batch.commit()?;
        self.metrics
            .backend_commit_duration
            .observe(start.elapsed());
        if durable {
            self.durable_index = last.index;
            self.last_durable_commit = Instant::now();
            self.entries_since_durable = 0;
        } else {
            self.entries_since_durable += n;
        }
        self.set_applied(last.index);
        // Only now, after the WAL fsync and the apply, do proposers hear back.
        for (id, result) in results {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(result);
            }
        }
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

    /// After `--snapshot-count` applied entries: a Raft snapshot (metadata only; the
    /// backend is the state), the WAL marker, log compaction, and purging of old files.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        if self.applied_index < self.snapshot_index + self.snapshot_count {
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
