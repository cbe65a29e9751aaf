//! What the raft loop publishes about this member for everyone else: Raft's view (term,
//! leader, indexes, role), the membership and alarms as applied, the backend's size, and
//! the response header etcd fills from them. Read-only outside the `node` module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use retcd_api::etcdserverpb::ResponseHeader;
use retcd_backend::{Backend, RedbBackend};
use retcd_mvcc::KvStore;

use crate::apply::{Alarms, Published};
use crate::ids::{ClusterId, MemberId};
use crate::membership::Membership;
use crate::published::AppliedIndex;

/// How long a measurement of the backend's bytes in use is reused.
pub const DB_IN_USE_REFRESH: Duration = Duration::from_secs(10);

/// This member's published state.
pub struct NodeStatus {
    member_id: MemberId,
    cluster_id: ClusterId,
    term: AtomicU64,
    leader: AtomicU64,
    committed_index: AtomicU64,
    applied_index: Arc<AppliedIndex>,
    /// This member leads.
    leader_role: AtomicBool,
    /// The loop is running (false once it stopped, cleanly or not).
    running: AtomicBool,
    /// This member was removed from the cluster (the loop stops).
    removed: AtomicBool,
    /// Becomes true when the loop thread exits, cleanly or not.
    stopped: tokio::sync::watch::Sender<bool>,
    membership: Published<Membership>,
    alarms: Published<Alarms>,
    /// The backend quota in bytes (`--quota-backend-bytes`, etcd's default for 0).
    quota_backend_bytes: u64,
    /// The backend file's size as of the last commit the loop made (what the quota
    /// check compares, without a `stat` per request).
    db_file_bytes: AtomicU64,
    /// The last measured bytes in use and when they were measured.
    db_in_use_cache: Mutex<Option<(Instant, u64)>>,
    /// On the leader: each member's match index, refreshed every tick.
    progress: Mutex<HashMap<u64, u64>>,
    /// Where received snapshot images wait until they are installed.
    snap_dir: PathBuf,
    /// For the header's revision and the backend's sizes.
    kv: Arc<KvStore<RedbBackend>>,
}

/// What [`NodeStatus::new`] starts from.
pub(super) struct StatusInit {
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub term: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub membership: Published<Membership>,
    pub alarms: Published<Alarms>,
    pub quota_backend_bytes: u64,
    pub snap_dir: PathBuf,
    pub kv: Arc<KvStore<RedbBackend>>,
}

impl NodeStatus {
    pub(super) fn new(init: StatusInit) -> Result<NodeStatus, retcd_backend::BackendError> {
        let db_file_bytes = init.kv.backend().size_bytes()?;
        Ok(NodeStatus {
            member_id: init.member_id,
            cluster_id: init.cluster_id,
            term: AtomicU64::new(init.term),
            leader: AtomicU64::new(0),
            committed_index: AtomicU64::new(init.committed_index),
            applied_index: Arc::new(AppliedIndex::new(init.applied_index)),
            leader_role: AtomicBool::new(false),
            running: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            stopped: tokio::sync::watch::Sender::new(false),
            membership: init.membership,
            alarms: init.alarms,
            quota_backend_bytes: init.quota_backend_bytes,
            db_file_bytes: AtomicU64::new(db_file_bytes),
            db_in_use_cache: Mutex::new(None),
            progress: Mutex::new(HashMap::new()),
            snap_dir: init.snap_dir,
            kv: init.kv,
        })
    }

    pub fn member_id(&self) -> MemberId {
        self.member_id
    }
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    /// The leader's id, 0 when none is known.
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Acquire)
    }
    pub fn applied_index(&self) -> u64 {
        self.applied_index.get()
    }
    /// The applied index, for those who wait on it.
    pub fn applied(&self) -> &Arc<AppliedIndex> {
        &self.applied_index
    }
    pub fn is_leader(&self) -> bool {
        self.leader_role.load(Ordering::Acquire)
    }
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
    /// Whether the loop stopped because this member was removed from the cluster.
    pub fn was_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
    /// The backend quota in bytes (`--quota-backend-bytes`, etcd's default for 0).
    pub fn quota_backend_bytes(&self) -> u64 {
        self.quota_backend_bytes
    }
    /// The backend file's size as of the loop's last commit.
    pub fn db_file_bytes(&self) -> u64 {
        self.db_file_bytes.load(Ordering::Acquire)
    }
    /// The raised alarms as of the applied index.
    pub fn alarms(&self) -> Alarms {
        self.alarms.get()
    }
    /// The membership as of the applied index.
    pub fn membership(&self) -> Membership {
        self.membership.get()
    }
    /// Whether `id` was removed from the cluster (as of the applied index).
    pub fn member_removed(&self, id: MemberId) -> bool {
        self.membership.read(|m| m.removed.contains(&id))
    }
    /// Whether this member is a learner (as of the applied index).
    pub fn is_learner(&self) -> bool {
        self.membership
            .read(|m| m.get(self.member_id).is_some_and(|m| m.is_learner))
    }
    /// On the leader, each member's match index as of the last tick (empty elsewhere).
    pub fn progress(&self) -> HashMap<u64, u64> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Where received snapshot images wait until they are installed.
    pub fn snap_dir(&self) -> &PathBuf {
        &self.snap_dir
    }

    /// Resolves once the loop thread has exited (cleanly or on a fatal error).
    pub async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// A response header as etcd fills it (`v3rpc/header.go`): this member and cluster,
    /// the current term, and `revision`, or the store's current revision when it is
    /// `None` or 0.
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

    /// The header of etcd's Cluster service responses, which carry no revision.
    pub fn header_without_revision(&self) -> ResponseHeader {
        ResponseHeader {
            revision: 0,
            ..self.header(None)
        }
    }

    /// The backend's size and the bytes of it in use. Blocking: call off the reactor.
    ///
    /// Measuring the bytes in use walks every page of the database inside a backend
    /// write transaction, which holds up apply for that long, so the figure is measured
    /// at most every [`DB_IN_USE_REFRESH`] and cached.
    pub fn db_sizes(&self) -> Result<(u64, u64), retcd_backend::BackendError> {
        let backend = self.kv.backend();
        let total = backend.size_bytes()?;
        let mut cache = self
            .db_in_use_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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

    // The loop's side.

    pub(super) fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::Release);
    }
    /// Returns the previous leader.
    pub(super) fn swap_leader(&self, leader: u64) -> u64 {
        self.leader.swap(leader, Ordering::AcqRel)
    }
    /// Returns whether this member led before.
    pub(super) fn swap_leader_role(&self, leads: bool) -> bool {
        self.leader_role.swap(leads, Ordering::AcqRel)
    }
    pub(super) fn set_committed_index(&self, index: u64) {
        self.committed_index.store(index, Ordering::Release);
    }
    pub(super) fn set_applied_index(&self, index: u64) {
        self.applied_index.set(index);
    }
    pub(super) fn set_db_file_bytes(&self, bytes: u64) {
        self.db_file_bytes.store(bytes, Ordering::Release);
    }
    pub(super) fn forget_db_in_use(&self) {
        *self
            .db_in_use_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
    pub(super) fn set_progress(&self, progress: HashMap<u64, u64>) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }
    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }
    /// The loop thread ended (cleanly or not).
    pub(super) fn mark_stopped(&self) {
        self.running.store(false, Ordering::Release);
        self.applied_index.stop();
        self.stopped.send_replace(true);
    }
}
