//! The async side's handle on the raft loop: proposals, configuration changes,
//! linearizable reads, peer messages, leader transfer and defragmentation go in as
//! [`Input`]s; answers come back on oneshot channels once the loop has acted.
//!
//! The queue is bounded by a semaphore: a sender first takes a permit, which the loop
//! releases when it dequeues the input, so a full queue makes callers wait instead of
//! failing or growing memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{InternalRaftRequest, RequestHeader};
use retcd_raft::{ConfChange, Message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::NodeError;
use super::status::NodeStatus;
use crate::apply::{ApplyResponse, ApplyResult};
use crate::errors::RequestError;
use crate::metrics::Metrics;

/// Inputs queued for the loop at most; callers beyond it wait for a permit.
pub(super) const INPUT_QUEUE_CAPACITY: usize = 4096;

/// A linearizable read's answer: the read index once it is applied.
pub(super) type ReadReply = oneshot::Sender<Result<u64, EtcdError>>;

/// What the async side sends the loop. Each holds its queue permit until the loop takes
/// it.
pub enum Input {
    /// An encoded `InternalRaftRequest` whose header carries `id`.
    Propose {
        id: u64,
        data: Bytes,
        reply: oneshot::Sender<ApplyResult>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// A configuration change (its `id` is the waiter's request id).
    ConfChange {
        cc: ConfChange,
        reply: oneshot::Sender<ApplyResult>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// A Raft message from a peer (boxed: it is much larger than the other inputs).
    Step {
        message: Box<Message>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Hand leadership to this member (Maintenance.MoveLeader).
    TransferLeader {
        to: u64,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// A linearizable read: answered with the read index once it is applied.
    ReadIndex {
        reply: ReadReply,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Return the backend's free space to the file system (Maintenance.Defragment).
    Defragment {
        reply: oneshot::Sender<Result<(), String>>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Finish the current turn, make everything durable, and exit.
    Stop,
}

/// The async side's handle on the raft loop.
pub struct NodeHandle {
    tx: SyncSender<Input>,
    permits: Arc<Semaphore>,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    max_request_bytes: usize,
    request_timeout: Duration,
    election_timeout: Duration,
    thread: Mutex<Option<std::thread::JoinHandle<Result<(), NodeError>>>>,
}

/// What [`NodeHandle::new`] needs besides the queue.
pub(super) struct HandleLimits {
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    /// The first request id (see `super::request_id_base`).
    pub id_base: u64,
}

impl NodeHandle {
    pub(super) fn new(
        tx: SyncSender<Input>,
        status: Arc<NodeStatus>,
        metrics: Arc<Metrics>,
        limits: HandleLimits,
        thread: std::thread::JoinHandle<Result<(), NodeError>>,
    ) -> NodeHandle {
        NodeHandle {
            tx,
            permits: Arc::new(Semaphore::new(INPUT_QUEUE_CAPACITY)),
            status,
            metrics,
            next_id: AtomicU64::new(limits.id_base),
            max_request_bytes: limits.max_request_bytes,
            request_timeout: limits.request_timeout,
            election_timeout: limits.election_timeout,
            thread: Mutex::new(Some(thread)),
        }
    }

    async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, RequestError> {
        if !self.status.is_running() {
            return Err(EtcdError::Stopped.into());
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map(Some)
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
    pub async fn propose(&self, req: InternalRaftRequest) -> Result<ApplyResponse, RequestError> {
        // A learner takes no client writes (its own attribute publication excepted).
        if self.status.is_learner() && req.cluster_member_attr_set.is_none() {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        let (id, data) = self.encode(req)?;
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose {
            id,
            data,
            reply,
            _permit: permit,
        })?;
        self.wait(rx).await
    }

    /// Gives `req` a fresh request id (keeping the proposer's credentials in its header)
    /// and encodes it, within `--max-request-bytes`.
    fn encode(&self, mut req: InternalRaftRequest) -> Result<(u64, Bytes), RequestError> {
        let id = self.new_id();
        req.header = Some(RequestHeader {
            id,
            ..req.header.unwrap_or_default()
        });
        let data = req.encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        Ok((id, Bytes::from(data)))
    }

    /// Waits for apply's answer, up to the request timeout.
    async fn wait(
        &self,
        rx: oneshot::Receiver<ApplyResult>,
    ) -> Result<ApplyResponse, RequestError> {
        let metrics = &self.metrics;
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
        let cc = change(self.new_id());
        let permit = self.permit().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Input::ConfChange {
            cc,
            reply,
            _permit: permit,
        })?;
        self.wait(rx).await
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

    /// Waits until this member has applied everything committed when the call began,
    /// as confirmed by Raft's ReadIndex: a read after this is linearizable.
    pub async fn read_index(&self) -> Result<(), RequestError> {
        if self.status.is_learner() {
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

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// A fresh id, unique among this member's requests (lease ids are drawn from it, as
    /// etcd draws them from its request ids).
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks the loop to stop after its current turn and waits for it (blocking: call from
    /// a blocking context). Returns the loop's outcome.
    pub fn stop_and_join(&self) -> Result<(), NodeError> {
        // If the queue is full the loop is busy and will see the disconnect or the stop
        // soon enough; the Stop input is only a wake-up.
        let _ = self.tx.try_send(Input::Stop);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(NodeError::Invalid("raft loop panicked".into()))),
            None => Ok(()),
        }
    }
}
